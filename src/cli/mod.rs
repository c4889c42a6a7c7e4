//! The operator's command line, beside `serve`: commands that talk to a running daemon over
//! gRPC (`status`, `token create|list|revoke`, `versions list|restore`, `doctor`, `snapshot`,
//! `rekey`, `verify`, `audit`), `selftest`, which replays Portal's webhook calls, the rendering
//! of `check-config`, the offline `restore` and `seal` commands, and the settings reference of
//! `docs/configuration.md` ([`config_reference`]).
//!
//! [`client`] holds what every client command shares: where the daemon is, TLS, the admin
//! token and the wording of errors. Each command renders for people (aligned columns) or, with
//! `--json`, as one JSON object on stdout. Errors are [`CliError`]s; the binary turns them into
//! a message on stderr and exit code 1. Long commands show their [`progress`] on stderr.

pub mod check_config;
pub mod client;
pub mod config_reference;
pub mod database;
pub mod doctor;
pub mod migrate;
pub mod ops;
pub mod progress;
pub mod restore;
pub mod seal;
pub mod selftest;
pub mod status;
mod table;
pub mod token;
pub mod versions;

pub use client::{CliError, ConnectArgs};

/// Runs a client command to completion on a small single-threaded runtime.
pub fn block_on<F>(command: F) -> Result<(), CliError>
where
    F: std::future::Future<Output = Result<(), CliError>>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Local(format!("cannot start the runtime: {e}")))?
        .block_on(command)
}

/// Runs a local command's async part to completion on a small single-threaded runtime.
pub fn block_on_value<T>(work: impl std::future::Future<Output = T>) -> Result<T, CliError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Local(format!("cannot start the runtime: {e}")))?
        .block_on(work))
}

/// Prints `text` (which ends with a newline) to stdout, reporting a closed pipe as an error.
pub(crate) fn print(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Local(format!("cannot write to stdout: {e}")))
}

/// Serializes `value` as one line of JSON.
pub(crate) fn json_line<T: serde::Serialize>(value: &T) -> Result<String, CliError> {
    serde_json::to_string(value)
        .map(|mut line| {
            line.push('\n');
            line
        })
        .map_err(|e| CliError::Local(format!("cannot encode JSON: {e}")))
}
