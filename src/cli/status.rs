//! `sharevault status`: is the daemon healthy, which key does it hold, how much does it keep.

use super::client::{CliError, Client, ConnectArgs};
use crate::pb;
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `status` reports, also its JSON form.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The overall gRPC health: `SERVING` when the vault is open.
    pub health: String,
    pub version: String,
    pub master_key_id: String,
    pub uptime_seconds: u64,
    pub custodian_shares: u64,
    pub client_shares: u64,
    pub backup_share_pairs: u64,
    pub tokens: u64,
}

impl Report {
    fn new(health: String, status: pb::GetStatusResponse) -> Self {
        Self {
            health,
            version: status.version,
            master_key_id: status.master_key_id,
            uptime_seconds: status.uptime_seconds,
            custodian_shares: status.custodian_shares,
            client_shares: status.client_shares,
            backup_share_pairs: status.backup_share_pairs,
            tokens: status.tokens,
        }
    }

    /// The table for people.
    pub fn render(&self) -> String {
        let rows: Vec<Vec<String>> = [
            ("health", self.health.clone()),
            ("version", self.version.clone()),
            ("master key id", self.master_key_id.clone()),
            ("uptime", uptime(self.uptime_seconds)),
            ("custodian shares", self.custodian_shares.to_string()),
            ("client shares", self.client_shares.to_string()),
            ("backup share pairs", self.backup_share_pairs.to_string()),
            ("tokens", self.tokens.to_string()),
        ]
        .into_iter()
        .map(|(name, value)| vec![name.to_owned(), value])
        .collect();
        super::table::render(None, &rows)
    }
}

/// `3723` as `1h 2m 3s`.
fn uptime(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// Asks for overall health, then for the status. Fails unless the daemon is serving.
pub async fn run(args: StatusArgs) -> Result<(), CliError> {
    let client = Client::connect(&args.connect).await?;
    let health = client
        .health()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| client.error(&s))?
        .into_inner()
        .status();
    if health != ServingStatus::Serving {
        return Err(CliError::NotServing {
            target: client.target().to_owned(),
            health: health.as_str_name().to_owned(),
        });
    }
    let status = client
        .admin()
        .get_status(client.request(pb::GetStatusRequest {})?)
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    let report = Report::new(health.as_str_name().to_owned(), status);
    if args.json {
        super::print(&super::json_line(&report)?)
    } else {
        super::print(&report.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_in_units() {
        assert_eq!(uptime(0), "0s");
        assert_eq!(uptime(61), "1m 1s");
        assert_eq!(uptime(3723), "1h 2m 3s");
        assert_eq!(uptime(90_061), "1d 1h 1m 1s");
    }

    #[test]
    fn the_table_aligns_values() {
        let report = Report {
            health: "SERVING".into(),
            version: "0.1.0".into(),
            master_key_id: "ab12".into(),
            uptime_seconds: 5,
            custodian_shares: 1,
            client_shares: 2,
            backup_share_pairs: 3,
            tokens: 4,
        };
        let table = report.render();
        assert!(
            table.starts_with("health              SERVING\n"),
            "{table}"
        );
        assert!(table.contains("\nuptime              5s\n"), "{table}");
        assert!(table.ends_with("\ntokens              4\n"), "{table}");
    }
}
