//! `sharevault check-config`: the effective settings, once they and the secrets have been
//! validated. Secrets appear only as the files they were read from, and the master key only
//! by its id.

use super::client::CliError;
use crate::config::{Config, LogFormat, ServeArgs, TlsFiles};
use crate::seal::SealKind;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Print the effective settings as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Tls {
    cert_file: String,
    key_file: String,
}

impl From<&TlsFiles> for Tls {
    fn from(files: &TlsFiles) -> Self {
        Self {
            cert_file: files.cert.display().to_string(),
            key_file: files.key.display().to_string(),
        }
    }
}

/// The JSON form of `check-config`.
#[derive(Debug, Serialize)]
struct Effective {
    data_dir: String,
    /// `embedded` (redb, in the data dir), or `postgres USER@HOST:PORT/DB`.
    database: String,
    grpc_listen: String,
    /// `null` when the public listener is off.
    http_listen: Option<String>,
    grpc_tls: Option<Tls>,
    http_tls: Option<Tls>,
    webhook_path_prefix: String,
    webhook_legacy_backup_share: bool,
    webhook_allow_cidrs: Vec<String>,
    grpc_webhook: bool,
    trusted_proxies: Vec<String>,
    request_timeout_seconds: u64,
    max_request_bytes: usize,
    max_share_bytes: usize,
    max_cipher_text_bytes: usize,
    max_connections: usize,
    max_connections_per_source: usize,
    max_in_flight: usize,
    connection_idle_seconds: u64,
    shutdown_grace_seconds: u64,
    log_format: &'static str,
    seal: String,
    /// Under the pkcs11 seal: the token, its key and the mechanism (never the PIN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pkcs11: Option<Pkcs11View>,
    /// Under the file seal: the master key's file.
    #[serde(skip_serializing_if = "Option::is_none")]
    master_key_file: Option<String>,
    webhook_secret_file: String,
    admin_token_file: String,
    master_key_id: String,
}

#[derive(Debug, Serialize)]
struct Pkcs11View {
    module: String,
    token_label: String,
    key_label: String,
    mechanism: &'static str,
    pin_file: String,
}

/// The file a secret was read from (see [`crate::secrets::secret_path`]).
fn secret_file(configured: Option<&Path>, name: &str, data_dir: &Path) -> String {
    crate::secrets::secret_path(configured, name, data_dir)
        .display()
        .to_string()
}

fn effective(config: &Config, master_key_id: &str) -> Effective {
    let cidrs = |nets: &[ipnet::IpNet]| nets.iter().map(ToString::to_string).collect();
    Effective {
        data_dir: config.data_dir.display().to_string(),
        database: database(config),
        grpc_listen: config.grpc_listen.to_string(),
        http_listen: config.http_listen.as_ref().map(ToString::to_string),
        grpc_tls: config.grpc_tls.as_ref().map(Tls::from),
        http_tls: config.http_tls.as_ref().map(Tls::from),
        webhook_path_prefix: config.webhook.path_prefix.clone(),
        webhook_legacy_backup_share: config.webhook.legacy_backup_share,
        webhook_allow_cidrs: cidrs(&config.webhook.allow),
        grpc_webhook: config.webhook.grpc,
        trusted_proxies: cidrs(&config.webhook.trusted_proxies),
        request_timeout_seconds: config.request_timeout.as_secs(),
        max_request_bytes: config.max_request_bytes,
        max_share_bytes: config.limits.max_share_bytes,
        max_cipher_text_bytes: config.limits.max_cipher_text_bytes,
        max_connections: config.limits_per_listener.max_connections,
        max_connections_per_source: config.limits_per_listener.max_connections_per_source,
        max_in_flight: config.limits_per_listener.max_in_flight,
        connection_idle_seconds: config.limits_per_listener.connection_idle.as_secs(),
        shutdown_grace_seconds: config.shutdown_grace.as_secs(),
        log_format: match config.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        },
        seal: config.seal.to_string(),
        pkcs11: match (config.seal, &config.pkcs11) {
            (SealKind::Pkcs11, Some(p)) => Some(Pkcs11View {
                module: p.module.display().to_string(),
                token_label: p.token_label.clone(),
                key_label: p.key_label.clone(),
                mechanism: p.mechanism.name(),
                pin_file: p
                    .pin_path()
                    .map_or_else(|e| e.to_string(), |path| path.display().to_string()),
            }),
            _ => None,
        },
        master_key_file: (config.seal == SealKind::File).then(|| {
            secret_file(
                config.master_key_file.as_deref(),
                "master-key",
                &config.data_dir,
            )
        }),
        webhook_secret_file: secret_file(
            config.webhook_secret_file.as_deref(),
            "webhook-secret",
            &config.data_dir,
        ),
        admin_token_file: secret_file(
            config.admin_token_file.as_deref(),
            "admin-token",
            &config.data_dir,
        ),
        master_key_id: master_key_id.to_owned(),
    }
}

/// Where the vault is kept: never with a password.
fn database(config: &Config) -> String {
    config.database.as_ref().map_or_else(
        || "embedded".to_owned(),
        |db| format!("postgres {}", db.describe()),
    )
}

fn render(config: &Config, master_key_id: &str) -> String {
    let http_listen = config
        .http_listen
        .as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    format!(
        "configuration is valid\n\
         data_dir        {}\n\
         database        {}\n\
         grpc_listen     {}\n\
         http_listen     {http_listen}\n\
         seal            {}\n\
         master_key_id   {master_key_id}\n\
         max_share_bytes {}\n\
         max_cipher_text_bytes {}\n",
        config.data_dir.display(),
        database(config),
        config.grpc_listen,
        config.seal,
        config.limits.max_share_bytes,
        config.limits.max_cipher_text_bytes,
    )
}

/// Prints the validated `config`, for people or (`json`) as one JSON object.
pub fn print(config: &Config, master_key_id: &str, json: bool) -> Result<(), CliError> {
    if json {
        super::print(&super::json_line(&effective(config, master_key_id))?)
    } else {
        super::print(&render(config, master_key_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_secret_files_and_the_key_id_only() {
        let dir = tempfile::tempdir().unwrap();
        let args = ServeArgs {
            data_dir: Some(dir.path().join("data")),
            http_listen: Some("none".into()),
            master_key_file: Some("/etc/sharevault/master-key".into()),
            webhook_allow_cidrs: Some(vec!["10.0.0.0/8".into()]),
            ..ServeArgs::default()
        };
        let config = Config::load(&args).unwrap();
        let value = serde_json::to_value(effective(&config, "ab12")).unwrap();
        assert_eq!(value["master_key_file"], "/etc/sharevault/master-key");
        assert_eq!(value["master_key_id"], "ab12");
        assert_eq!(value["http_listen"], serde_json::Value::Null);
        assert_eq!(value["grpc_listen"], "127.0.0.1:7450");
        assert_eq!(value["webhook_allow_cidrs"][0], "10.0.0.0/8");
        assert_eq!(value["log_format"], "text");
        assert_eq!(value["max_connections"], 1024);
        assert_eq!(value["max_connections_per_source"], 64);
        assert_eq!(value["connection_idle_seconds"], 60);
        assert_eq!(value["database"], "embedded");
        let on_pg = Config::load(&ServeArgs {
            database_url: Some("postgres://vault@127.0.0.1:5432/sv".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            effective(&on_pg, "ab12").database,
            "postgres vault@127.0.0.1:5432/sv"
        );
    }
}
