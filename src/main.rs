//! The `sharevault` command.

mod bench;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sharevault::config::{Config, LogFormat, ServeArgs};
use sharevault::net::{Listener, tls_acceptor};
use sharevault::server::{self, Listeners, Settings};
use std::io::IsTerminal;

#[derive(Parser)]
#[command(
    name = "sharevault",
    version,
    about = "A vault for Portal MPC wallet backup shares"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Check the configuration and secrets without starting, and print the settings.
    CheckConfig(ServeArgs),
    /// Start a daemon on loopback, fill it with clients, and measure its operations.
    Bench(bench::Args),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn settings(config: &Config) -> anyhow::Result<Settings> {
    sharevault::secrets::prepare_data_dir(&config.data_dir).map_err(anyhow::Error::msg)?;
    let secrets = sharevault::secrets::load(
        &config.data_dir,
        config.master_key_file.as_deref(),
        config.webhook_secret_file.as_deref(),
        config.admin_token_file.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    Ok(Settings {
        data_dir: config.data_dir.clone(),
        secrets,
        limits: config.limits,
        shutdown_grace: config.shutdown_grace,
        webhook: config.webhook.clone(),
        request_timeout: config.request_timeout,
        max_request_bytes: config.max_request_bytes,
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(&args).map_err(anyhow::Error::msg)?;
            init_logging(config.log_format);
            let settings = settings(&config)?;
            let tls = |files: &Option<sharevault::config::TlsFiles>| {
                files
                    .as_ref()
                    .map(|f| tls_acceptor(&f.cert, &f.key))
                    .transpose()
                    .map_err(anyhow::Error::msg)
            };
            let (grpc_tls, http_tls) = (tls(&config.grpc_tls)?, tls(&config.http_tls)?);
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(async {
                let grpc = Listener::bind(&config.grpc_listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.grpc_listen))?;
                let http = match &config.http_listen {
                    Some(addr) => Some(
                        Listener::bind(addr)
                            .await
                            .with_context(|| format!("cannot listen on {addr}"))?,
                    ),
                    None => None,
                };
                let listeners = Listeners {
                    grpc,
                    grpc_tls,
                    http,
                    http_tls,
                };
                server::run(listeners, settings, shutdown_signal()).await?;
                Ok(())
            })
        }
        Command::CheckConfig(args) => {
            let config = Config::load(&args).map_err(anyhow::Error::msg)?;
            init_logging(config.log_format);
            let settings = settings(&config)?;
            println!("configuration is valid");
            println!("data_dir        {}", config.data_dir.display());
            println!("grpc_listen     {}", config.grpc_listen);
            match &config.http_listen {
                Some(addr) => println!("http_listen     {addr}"),
                None => println!("http_listen     none"),
            }
            for files in [&config.grpc_tls, &config.http_tls].into_iter().flatten() {
                tls_acceptor(&files.cert, &files.key).map_err(anyhow::Error::msg)?;
            }
            println!("master_key_id   {}", settings.secrets.master_key.id());
            println!("max_share_bytes {}", config.limits.max_share_bytes);
            println!(
                "max_cipher_text_bytes {}",
                config.limits.max_cipher_text_bytes
            );
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
    }
}
