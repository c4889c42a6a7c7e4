//! `sharevault snapshot`, `rekey`, `verify` and `audit export|verify`: operations on a running
//! daemon through the admin API.

use super::client::{CliError, Client, ConnectArgs};
use super::progress::Progress;
use crate::pb;
use crate::snapshot::{self, TABLES};
use serde::Serialize;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use tokio_stream::StreamExt;

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Where to write the snapshot (written to a temporary name, fsynced, then renamed).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct RekeyArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// File holding the new master key (64 hex characters, mode 0600). Omit it when the
    /// daemon's root key is sealed by a PKCS#11 token: the daemon then makes the new root key
    /// and seals it with the token.
    #[arg(long, value_name = "FILE")]
    pub new_master_key_file: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Print audit events as JSON lines.
    Export(AuditExportArgs),
    /// Check the audit trail's hash chain; exits non-zero if an event was removed or edited.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct AuditExportArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Only events after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// At most this many events (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: u64,
    #[arg(long)]
    pub client_id: Option<String>,
    #[arg(long)]
    pub actor: Option<String>,
    #[arg(long)]
    pub action: Option<String>,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

fn local(what: &str, path: &Path, err: impl std::fmt::Display) -> CliError {
    CliError::Local(format!("{what} {}: {err}", path.display()))
}

#[derive(Serialize)]
struct SnapshotSummary {
    file: String,
    bytes: u64,
    master_key_id: String,
    records: std::collections::BTreeMap<&'static str, u64>,
}

pub async fn snapshot(args: SnapshotArgs) -> Result<(), CliError> {
    let client = Client::connect(&args.connect).await?;
    let dir = match args.to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = args
        .to
        .file_name()
        .ok_or_else(|| CliError::Local("--to must name a file".into()))?;
    let temp = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = async {
        // Readable by the operator only, like the data dir; never through a file or link that
        // is already there.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| local("cannot create", &temp, e))?;
        let mut stream = client
            .admin()
            .snapshot(client.request(pb::SnapshotRequest {})?)
            .await
            .map_err(|s| client.error(&s))?
            .into_inner();
        let mut bytes = 0u64;
        let mut progress = Progress::new("snapshot", "records", args.json || args.quiet)?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| client.error(&s))?;
            file.write_all(&chunk.data)
                .map_err(|e| local("cannot write", &temp, e))?;
            bytes += chunk.data.len() as u64;
            progress.set(chunk.records_done, chunk.records_total);
        }
        progress.finish();
        file.sync_all()
            .map_err(|e| local("cannot sync", &temp, e))?;
        drop(file);
        // Whole and well formed; its MAC needs the master key, and restore checks it.
        let check = std::fs::File::open(&temp).map_err(|e| local("cannot read", &temp, e))?;
        let header = snapshot::check_structure(std::io::BufReader::new(check), bytes)
            .map_err(|e| CliError::Local(format!("the received snapshot is damaged: {e}")))?;
        std::fs::rename(&temp, &args.to).map_err(|e| local("cannot rename to", &args.to, e))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| local("cannot sync", &dir, e))?;
        Ok::<_, CliError>((bytes, header))
    }
    .await;
    let (bytes, header) = match result {
        Ok(done) => done,
        Err(err) => {
            let _ = std::fs::remove_file(&temp);
            return Err(err);
        }
    };
    let summary = SnapshotSummary {
        file: args.to.display().to_string(),
        bytes,
        master_key_id: hex::encode(header.key_id),
        records: TABLES
            .iter()
            .zip(header.counts)
            .map(|(t, n)| (t.name(), n))
            .collect(),
    };
    if args.json {
        return super::print(&super::json_line(&summary)?);
    }
    let mut out = format!(
        "snapshot written to {} ({} bytes), sealed under master key {}\n",
        summary.file, summary.bytes, summary.master_key_id
    );
    for (table, n) in &summary.records {
        out.push_str(&format!("  {table:<20} {n}\n"));
    }
    out.push_str("keep the master key: the snapshot is useless without it\n");
    super::print(&out)
}

pub async fn rekey(args: RekeyArgs) -> Result<(), CliError> {
    let key = args
        .new_master_key_file
        .as_deref()
        .map(crate::secrets::read_master_key)
        .transpose()
        .map_err(CliError::Local)?;
    let client = match key {
        Some(_) => Client::connect_to_send_keys(&args.connect).await?,
        None => Client::connect(&args.connect).await?,
    };
    let mut progress = Progress::new("rekey", "records", args.quiet)?;
    let mut stream = client
        .admin()
        .rekey(
            client.request(pb::RekeyRequest {
                // The key's one plain copy, moved out of its `Zeroizing` (no copy is left
                // behind) into the request, which wipes it when dropped once sent.
                new_master_key: key
                    .as_ref()
                    .map(|k| std::mem::take(&mut *k.to_raw()))
                    .unwrap_or_default(),
            })?,
        )
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    let mut last = None;
    while let Some(step) = stream.next().await {
        let step = step.map_err(|s| client.error(&s))?;
        progress.set(step.done, step.total);
        last = Some(step);
    }
    progress.finish();
    match last {
        Some(step) if step.finished && key.is_none() => super::print(&format!(
            "every record's data key is now wrapped by root key {} ({} records), sealed by the \
             daemon's PKCS#11 token.\n",
            step.new_master_key_id, step.total
        )),
        Some(step) if step.finished => super::print(&format!(
            "every record's data key is now wrapped by master key {} ({} records).\n\
             Point --master-key-file (or the master-key credential) at the new key before the \
             next restart; the old key is no longer needed.\n",
            step.new_master_key_id, step.total
        )),
        _ => Err(CliError::Local(
            "the rotation did not finish; run the same command again to resume it".into(),
        )),
    }
}

pub async fn verify(args: VerifyArgs) -> Result<(), CliError> {
    let client = Client::connect_for_long_calls(&args.connect).await?;
    let progress = Progress::new("verify", "records", args.json || args.quiet)?;
    let streamed = client
        .admin()
        .verify_with_progress(client.request(pb::VerifyRequest {})?)
        .await;
    let split = |step: pb::VerifyProgress| (step.done, step.total, step.result);
    let unary = async || {
        let request = client.request(pb::VerifyRequest {})?;
        let answer = client.admin().verify(request).await;
        answer
            .map(tonic::Response::into_inner)
            .map_err(|s| client.error(&s))
    };
    let report = follow(&client, streamed, progress, split, unary).await?;
    if args.json {
        #[derive(Serialize)]
        struct Out<'a> {
            custodian_shares: u64,
            client_shares: u64,
            versions: u64,
            failed: u64,
            failures: &'a [String],
            master_key_id: &'a str,
        }
        super::print(
            &(super::json_line(&Out {
                custodian_shares: report.custodian_shares,
                client_shares: report.client_shares,
                versions: report.versions,
                failed: report.failed,
                failures: &report.failures,
                master_key_id: &report.master_key_id,
            })?),
        )?;
    } else {
        let mut out = format!(
            "custodian_shares  {}\nclient_shares     {}\nversions          {}\nfailed            {}\nmaster_key_id     {}\n",
            report.custodian_shares,
            report.client_shares,
            report.versions,
            report.failed,
            report.master_key_id
        );
        for failure in &report.failures {
            out.push_str(&format!("FAILED {failure}\n"));
        }
        super::print(&out)?;
    }
    if report.failed > 0 {
        return Err(CliError::Local(format!(
            "{} records failed to open with the master key",
            report.failed
        )));
    }
    Ok(())
}

/// Follows a call that streams progress messages, each split into (done, total, result), to
/// the result its last message carries; from a daemon older than such calls (UNIMPLEMENTED),
/// makes the `unary` call instead. Clears the progress shown.
async fn follow<M, R>(
    client: &Client,
    streamed: Result<tonic::Response<tonic::Streaming<M>>, tonic::Status>,
    mut progress: Progress,
    split: impl Fn(M) -> (u64, u64, Option<R>),
    unary: impl AsyncFnOnce() -> Result<R, CliError>,
) -> Result<R, CliError> {
    let mut stream = match streamed {
        Ok(stream) => stream.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => return unary().await,
        Err(status) => return Err(client.error(&status)),
    };
    let mut result = None;
    while let Some(step) = stream.next().await {
        let (done, total, last) = split(step.map_err(|s| client.error(&s))?);
        progress.set(done, total);
        result = last.or(result);
    }
    progress.finish();
    result.ok_or_else(|| CliError::Local("the daemon ended the call without a result".into()))
}

pub async fn audit(command: AuditCommand) -> Result<(), CliError> {
    match command {
        AuditCommand::Export(args) => audit_export(args).await,
        AuditCommand::Verify(args) => audit_verify(args).await,
    }
}

async fn audit_export(args: AuditExportArgs) -> Result<(), CliError> {
    let client = Client::connect(&args.connect).await?;
    let mut progress = Progress::new("audit export", "events", args.quiet)?;
    // The trail's head, for a total (0 from a daemon that does not say: no total).
    let head = if args.quiet {
        0
    } else {
        client
            .admin()
            .get_status(client.request(pb::GetStatusRequest {})?)
            .await
            .map_err(|s| client.error(&s))?
            .into_inner()
            .audit_head_seq
    };
    let total = head.saturating_sub(args.after);
    let request = pb::ListAuditEventsRequest {
        after_seq: args.after,
        limit: args.limit,
        client_id: args.client_id.unwrap_or_default(),
        actor: args.actor.unwrap_or_default(),
        action: args.action.unwrap_or_default(),
    };
    let mut stream = client
        .admin()
        .list_audit_events(client.request(request)?)
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    while let Some(event) = stream.next().await {
        let e = event.map_err(|s| client.error(&s))?;
        progress.set(e.seq.saturating_sub(args.after), total);
        let line = crate::audit::ExportLine {
            seq: e.seq,
            time: e.time.map(|t| t.to_string()).unwrap_or_default(),
            actor: &e.actor,
            action: &e.action,
            client_id: &e.client_id,
            backup_method: &e.backup_method,
            outcome: &e.outcome,
            hash: &e.hash,
            prev_hash: &e.prev_hash,
        };
        super::print(&super::json_line(&line)?)?;
    }
    progress.finish();
    Ok(())
}

async fn audit_verify(args: VerifyArgs) -> Result<(), CliError> {
    let client = Client::connect_for_long_calls(&args.connect).await?;
    let progress = Progress::new("audit verify", "events", args.json || args.quiet)?;
    let streamed = client
        .admin()
        .verify_audit_with_progress(client.request(pb::VerifyAuditRequest {})?)
        .await;
    let split = |step: pb::VerifyAuditProgress| (step.done, step.total, step.result);
    let unary = async || {
        let request = client.request(pb::VerifyAuditRequest {})?;
        let answer = client.admin().verify_audit(request).await;
        answer
            .map(tonic::Response::into_inner)
            .map_err(|s| client.error(&s))
    };
    let report = follow(&client, streamed, progress, split, unary).await?;
    if args.json {
        #[derive(Serialize)]
        struct Out<'a> {
            events: u64,
            ok: bool,
            first_bad_seq: u64,
            problem: &'a str,
        }
        super::print(
            &(super::json_line(&Out {
                events: report.events,
                ok: report.ok,
                first_bad_seq: report.first_bad_seq,
                problem: &report.problem,
            })?),
        )?;
    } else if report.ok {
        super::print(&format!("audit trail intact: {} events\n", report.events))?;
    }
    if !report.ok {
        return Err(CliError::Local(format!(
            "the audit trail is broken at event {}: {}",
            report.first_bad_seq, report.problem
        )));
    }
    Ok(())
}
