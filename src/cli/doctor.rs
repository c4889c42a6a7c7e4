//! `sharevault doctor`: which clients can recover today, and why the others cannot.
//!
//! The daemon streams every method that cannot recover, then the totals. The totals are printed
//! first, so the findings wait in an unlinked temporary file meanwhile: memory stays bounded
//! whatever the number of clients.

use super::client::{CliError, Client, ConnectArgs};
use super::progress::Progress;
use crate::pb;
use serde::Serialize;
use std::io::{BufRead, BufReader, Seek, Write};
use tokio_stream::StreamExt;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON lines: the totals first, then one line per method that cannot recover.
    #[arg(long)]
    pub json: bool,
    /// Show at most this many clients that cannot recover; 0 shows all.
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
    /// The curves every method must hold (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "SECP256K1,ED25519")]
    pub curves: Vec<String>,
    /// Report a pair stuck at STORED_CLIENT_BACKUP_SHARE_KEY for longer than this many
    /// seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
    pub stuck_after: u64,
    /// Show no progress on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Serialize)]
struct Totals<'a> {
    r#type: &'static str,
    clients: u64,
    recoverable_clients: u64,
    unrecoverable_clients: u64,
    methods: Vec<MethodTotals<'a>>,
    reasons: &'a std::collections::HashMap<String, u64>,
}

#[derive(Serialize)]
struct MethodTotals<'a> {
    backup_method: &'a str,
    recoverable: u64,
    unrecoverable: u64,
}

#[derive(Serialize, serde::Deserialize)]
struct Finding {
    r#type: String,
    client_id: String,
    backup_method: String,
    reasons: Vec<String>,
}

/// A file for the findings, unlinked at once: it disappears with the process.
fn spool() -> Result<std::fs::File, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path =
        std::env::temp_dir().join(format!("sharevault-doctor-{}-{nanos}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| CliError::Local(format!("cannot create {}: {e}", path.display())))?;
    let _ = std::fs::remove_file(&path);
    Ok(file)
}

pub async fn run(args: DoctorArgs) -> Result<(), CliError> {
    let client = Client::connect_for_long_calls(&args.connect).await?;
    let mut progress = Progress::new("doctor", "custodian shares", args.json || args.quiet)?;
    let request = client.request(pb::DoctorRequest {
        curves: args.curves.clone(),
        stuck_after_seconds: args.stuck_after.max(1),
    })?;
    let mut stream = client
        .admin()
        .doctor(request)
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    let local = |e: std::io::Error| CliError::Local(format!("cannot spool the findings: {e}"));
    let mut spooled = std::io::BufWriter::new(spool()?);
    let mut totals = None;
    while let Some(message) = stream.next().await {
        match message.map_err(|s| client.error(&s))?.item {
            Some(pb::doctor_message::Item::Progress(p)) => progress.set(p.done, p.total),
            Some(pb::doctor_message::Item::Finding(f)) => {
                let line = super::json_line(&Finding {
                    r#type: "finding".into(),
                    client_id: f.client_id,
                    backup_method: f.backup_method,
                    reasons: f.reasons,
                })?;
                spooled.write_all(line.as_bytes()).map_err(local)?;
            }
            Some(pb::doctor_message::Item::Totals(t)) => totals = Some(t),
            None => {}
        }
    }
    progress.finish();
    let totals =
        totals.ok_or_else(|| CliError::Local("the daemon ended the report early".into()))?;
    let mut file = spooled.into_inner().map_err(|e| local(e.into_error()))?;
    file.rewind().map_err(local)?;
    let unrecoverable = totals.clients - totals.recoverable_clients;
    let mut out = if args.json {
        super::json_line(&Totals {
            r#type: "totals",
            clients: totals.clients,
            recoverable_clients: totals.recoverable_clients,
            unrecoverable_clients: unrecoverable,
            methods: totals
                .methods
                .iter()
                .map(|m| MethodTotals {
                    backup_method: &m.backup_method,
                    recoverable: m.recoverable,
                    unrecoverable: m.unrecoverable,
                })
                .collect(),
            reasons: &totals.reasons,
        })?
    } else {
        render_totals(&totals)
    };
    let mut shown = 0u64;
    let mut more = 0u64;
    let mut rows = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(local)?;
        if args.limit != 0 && shown == args.limit {
            more += 1;
            continue;
        }
        shown += 1;
        if args.json {
            out.push_str(&line);
            out.push('\n');
        } else {
            let f: Finding = serde_json::from_str(&line)
                .map_err(|e| CliError::Local(format!("cannot read the findings back: {e}")))?;
            rows.push(vec![f.client_id, f.backup_method, f.reasons.join(" ")]);
        }
    }
    if !args.json && !rows.is_empty() {
        out.push('\n');
        out.push_str(&super::table::render(
            Some(&["CLIENT", "METHOD", "WHY IT CANNOT RECOVER"]),
            &rows,
        ));
        if more > 0 {
            out.push_str(&format!(
                "... and {more} more (--limit 0 shows all, --json writes JSON lines)\n"
            ));
        }
    }
    super::print(&out)?;
    if unrecoverable > 0 {
        return Err(CliError::Local(format!(
            "{unrecoverable} of {} clients cannot recover",
            totals.clients
        )));
    }
    Ok(())
}

fn render_totals(totals: &pb::DoctorTotals) -> String {
    let mut out = super::table::render(
        None,
        &[
            vec!["clients".into(), totals.clients.to_string()],
            vec!["recoverable".into(), totals.recoverable_clients.to_string()],
            vec![
                "cannot recover".into(),
                (totals.clients - totals.recoverable_clients).to_string(),
            ],
        ],
    );
    if !totals.methods.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = totals
            .methods
            .iter()
            .map(|m| {
                vec![
                    m.backup_method.clone(),
                    m.recoverable.to_string(),
                    m.unrecoverable.to_string(),
                ]
            })
            .collect();
        out.push_str(&super::table::render(
            Some(&["METHOD", "RECOVERABLE", "CANNOT RECOVER"]),
            &rows,
        ));
    }
    if !totals.reasons.is_empty() {
        out.push('\n');
        let mut reasons: Vec<(&String, &u64)> = totals.reasons.iter().collect();
        reasons.sort();
        let rows: Vec<Vec<String>> = reasons
            .into_iter()
            .map(|(r, n)| vec![r.clone(), n.to_string()])
            .collect();
        out.push_str(&super::table::render(Some(&["REASON", "METHODS"]), &rows));
    }
    out
}
