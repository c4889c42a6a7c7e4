//! `sharevault versions list|restore`: a client's kept versions, by metadata, and restoring one
//! as current (admin token; share material is never shown).

use super::client::{CliError, Client, ConnectArgs};
use crate::pb;
use serde::Serialize;

#[derive(Debug, clap::Subcommand)]
pub enum VersionsCommand {
    /// List a client's shares, current and kept: kind, method, version, pair, dates.
    List(ListArgs),
    /// Make a kept version current again; the share it replaces is kept as a version.
    Restore(RestoreArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub client_id: String,
    /// Print {"versions": [...]} as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub client_id: String,
    /// `custodian` (a custodian backup share) or `client` (a cipherText).
    #[arg(long)]
    pub kind: String,
    /// The key: `METHOD-CURVE` for a custodian share, the method for a cipherText.
    #[arg(long)]
    pub backup_method: String,
    /// The version's number, as `versions list` shows it.
    #[arg(long)]
    pub version: u64,
}

/// One row of `versions list`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Listed {
    pub kind: String,
    pub backup_method: String,
    /// 0 for the current share.
    pub version: u64,
    pub current: bool,
    pub backup_share_pair_id: String,
    pub pair_status: &'static str,
    pub created_at: String,
    pub superseded_at: String,
}

#[derive(Serialize)]
struct Listing<'a> {
    versions: &'a [Listed],
}

pub async fn run(command: VersionsCommand) -> Result<(), CliError> {
    match command {
        VersionsCommand::List(args) => list(args).await,
        VersionsCommand::Restore(args) => restore(args).await,
    }
}

fn pair_status(value: i32, pair: &str) -> &'static str {
    use pb::BackupSharePairStatus as S;
    match S::try_from(value) {
        _ if pair.is_empty() => "",
        Ok(S::StoredCustodianBackupShare) => "STORED_CUSTODIAN_BACKUP_SHARE",
        Ok(S::StoredClientBackupShareKey) => "STORED_CLIENT_BACKUP_SHARE_KEY",
        Ok(S::StoredClientBackupShare) => "STORED_CLIENT_BACKUP_SHARE",
        _ => "unknown",
    }
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let client = Client::connect(&args.connect).await?;
    let versions: Vec<Listed> = client
        .admin()
        .list_versions(client.request(pb::ListVersionsRequest {
            client_id: args.client_id,
        })?)
        .await
        .map_err(|s| client.error(&s))?
        .into_inner()
        .versions
        .into_iter()
        .map(|v| Listed {
            pair_status: pair_status(v.pair_status, &v.backup_share_pair_id),
            kind: v.kind,
            backup_method: v.backup_method,
            version: v.version,
            current: v.current,
            backup_share_pair_id: v.backup_share_pair_id,
            created_at: v.created_at.map(|c| c.to_string()).unwrap_or_default(),
            superseded_at: v.superseded_at.map(|c| c.to_string()).unwrap_or_default(),
        })
        .collect();
    if args.json {
        super::print(&super::json_line(&Listing {
            versions: &versions,
        })?)
    } else {
        super::print(&render_list(&versions))
    }
}

fn render_list(versions: &[Listed]) -> String {
    if versions.is_empty() {
        return "no shares held for this client\n".into();
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                v.kind.clone(),
                v.backup_method.clone(),
                if v.current {
                    "current".into()
                } else {
                    v.version.to_string()
                },
                v.backup_share_pair_id.clone(),
                v.pair_status.to_owned(),
                v.created_at.clone(),
                v.superseded_at.clone(),
            ]
        })
        .collect();
    super::table::render(
        Some(&[
            "KIND",
            "METHOD",
            "VERSION",
            "PAIR",
            "PAIR STATUS",
            "CREATED",
            "SUPERSEDED",
        ]),
        &rows,
    )
}

async fn restore(args: RestoreArgs) -> Result<(), CliError> {
    let client = Client::connect(&args.connect).await?;
    client
        .admin()
        .restore_version(client.request(pb::RestoreVersionRequest {
            client_id: args.client_id.clone(),
            kind: args.kind.clone(),
            backup_method: args.backup_method.clone(),
            version: args.version,
        })?)
        .await
        .map_err(|s| client.error(&s))?;
    super::print(&format!(
        "restored {} version {} of {} as current for client {}\n",
        args.kind, args.version, args.backup_method, args.client_id
    ))
}
