//! `sharevault selftest --webhook-url URL`: replays Portal's calls against a deployed webhook,
//! through whatever TLS terminator, proxy and path prefix sit in front of it, and says which
//! call a real Portal would have seen fail.
//!
//! A synthetic client (id [`checks::CLIENT_PREFIX`] and random hex) gets a custodian share for
//! each curve, each followed by the immediate `/backup/fetch` Portal makes; then a retry of
//! the same `/backup`, an overwrite, a wrong and a missing secret, and an oversized body
//! ([`replay`]). Each call is timed against Portal's 10 s. With `--token-file` the client is
//! deleted at the end over the backend API ([`cleanup`]); without, the output says how.

pub mod checks;
mod cleanup;
pub mod http;
mod replay;
mod url;

use super::client::CliError;
use checks::{Check, Synthetic};
use cleanup::{backend, delete, how_to_delete};
use http::Webhook;
use replay::{Step, replay};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::WebhookUrl;
use zeroize::Zeroizing;

/// The secret file a trial daemon started from the same directory generates.
const DEFAULT_SECRET_FILE: &str = "./sharevault-data/webhook-secret";
/// Width of the check names in the lines for people.
const NAME_WIDTH: usize = 30;

#[derive(Debug, clap::Args)]
pub struct SelftestArgs {
    /// The webhook's base URL as registered in Portal's dashboard: http(s)://HOST[:PORT][/PREFIX].
    #[arg(long, value_name = "URL")]
    pub webhook_url: String,
    /// File holding the webhook secret Portal sends (its first line is used).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_SECRET_FILE)]
    pub webhook_secret_file: PathBuf,
    /// Trust the PEM certificate(s) in FILE (and no others) for an https:// webhook URL
    /// [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding a backend token: the synthetic client is deleted at the end, over
    /// --connect (DeleteClient). Without it the output says how to delete it.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The daemon's private listener, for the deletion (the forms of other commands'
    /// --connect).
    #[arg(
        long,
        env = "SHAREVAULT_CONNECT",
        value_name = "ADDR",
        default_value = "127.0.0.1:7450"
    )]
    pub connect: String,
    /// Use TLS towards --connect, trusting the PEM certificate(s) in FILE.
    #[arg(long, value_name = "FILE")]
    pub connect_ca_file: Option<PathBuf>,
    /// Size in bytes of the oversized body, which must be answered 413.
    #[arg(long, value_name = "BYTES", default_value_t = 2 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub oversized_bytes: u64,
    /// How long Portal waits for each call, in milliseconds.
    #[arg(long, hide = true, default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
    /// Print one JSON object instead of a line per check.
    #[arg(long)]
    pub json: bool,
}

/// The JSON form of a run.
#[derive(Serialize)]
struct Report<'a> {
    webhook_url: &'a str,
    client_id: &'a str,
    checks: &'a [Check],
    passed: usize,
    failed: usize,
    /// The webhook could not be reached, and the checks after that call were not run.
    stopped_unreachable: bool,
    /// How to delete the synthetic client, when it was not deleted.
    note: Option<String>,
}

/// Prints each check as it ends (unless `--json`) and keeps them for the report.
struct Lines {
    json: bool,
    checks: Vec<Check>,
    /// A call could not connect, and the replay stopped there.
    unreachable: bool,
}

impl Lines {
    /// Prints and keeps a step's check; answers whether the replay goes on (the call
    /// reached the webhook).
    fn step(&mut self, (check, reached): Step) -> Result<bool, CliError> {
        self.push(check)?;
        self.unreachable |= !reached;
        Ok(reached)
    }

    fn push(&mut self, check: Check) -> Result<(), CliError> {
        if !self.json {
            let mark = if check.ok { "ok" } else { "FAIL" };
            let line = format!("{mark:<4}  {:<NAME_WIDTH$}  {}\n", check.name, check.detail);
            super::print(&line)?;
        }
        self.checks.push(check);
        Ok(())
    }
}

/// The first non-empty line of the secret file, trimmed.
fn read_secret(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let what = || format!("--webhook-secret-file {}", path.display());
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|e| CliError::Local(format!("{}: {e}", what())))?,
    );
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| CliError::Local(format!("{}: must be UTF-8 text", what())))?;
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => Ok(Zeroizing::new(line.to_owned())),
        None => Err(CliError::Local(format!("{}: holds no secret", what()))),
    }
}

pub async fn run(args: SelftestArgs) -> Result<(), CliError> {
    let url = WebhookUrl::parse(&args.webhook_url)?;
    let secret = read_secret(&args.webhook_secret_file)?;
    let limit = Duration::from_millis(args.timeout_ms);
    let webhook = Webhook::new(url, &secret, args.ca_file.as_deref(), limit)?;
    let synthetic = Synthetic::new().map_err(CliError::Local)?;
    let client_id = synthetic.client_id.clone();
    let backend = match &args.token_file {
        Some(file) => Some(backend(&args, file, &client_id).await?),
        None => None,
    };
    if !args.json {
        super::print(&format!(
            "selftest of {} as Portal calls it, with the synthetic client {client_id}\n",
            args.webhook_url
        ))?;
    }
    let mut lines = Lines {
        json: args.json,
        checks: Vec::new(),
        unreachable: false,
    };
    replay(&webhook, &synthetic, args.oversized_bytes, &mut lines).await?;
    let stored = lines
        .checks
        .iter()
        .any(|c| c.ok && c.name.starts_with("backup"));
    let note = match &backend {
        Some(client) => {
            lines.push(delete(client, &client_id, stored).await)?;
            None
        }
        // Nothing was written when the first call could not connect.
        None if lines.unreachable && lines.checks.len() == 1 => None,
        None => Some(format!(
            "the synthetic client {client_id} stays in the vault; {}",
            how_to_delete(&client_id)
        )),
    };
    let failed: Vec<&str> = lines
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    let total = lines.checks.len();
    if args.json {
        super::print(&super::json_line(&Report {
            webhook_url: &args.webhook_url,
            client_id: &client_id,
            checks: &lines.checks,
            passed: total - failed.len(),
            failed: failed.len(),
            stopped_unreachable: lines.unreachable,
            note: note.clone(),
        })?)?;
    } else {
        let mut tail = String::new();
        if let Some(note) = &note {
            tail.push_str(&format!("note: {note}\n"));
        }
        if failed.is_empty() {
            tail.push_str(&format!("all {total} checks passed\n"));
        }
        super::print(&tail)?;
    }
    let stopped = if lines.unreachable {
        "; the webhook could not be reached, so the other checks were not run"
    } else {
        ""
    };
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Local(format!(
            "{} of {total} checks failed: {}{stopped}",
            failed.len(),
            failed.join(", ")
        )))
    }
}
