//! The `sharevault` command.

mod bench;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sharevault::cli::check_config::CheckConfigArgs;
use sharevault::cli::status::StatusArgs;
use sharevault::cli::token::TokenCommand;
use sharevault::config::{Config, LogFormat, ServeArgs};
use sharevault::server::{self, Listeners, Settings};
use sharevault::server::{Listener, TlsIdentity, tls_acceptor};
use std::io::IsTerminal;

/// Threads for store reads, which may wait on the disk.
const BLOCKING_THREADS: usize = 16;

/// mimalloc: the daemon allocates and frees small buffers on every request from several
/// threads, where glibc's arenas contend on their locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sharevault",
    version,
    about = "A vault for Portal MPC wallet backup shares"
)]
struct Cli {
    /// On an error, print its causes one per line and, with RUST_BACKTRACE=1, where it arose
    /// (as when RUST_LOG is set).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Check the configuration and secrets without starting, and print the settings.
    CheckConfig(CheckConfigArgs),
    /// Show a running daemon's health, version, master key id, uptime and record counts.
    Status(StatusArgs),
    /// Create, list or revoke the API tokens of a running daemon.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Report which clients can recover today and why the others cannot (exit 1 if any cannot).
    Doctor(sharevault::cli::doctor::DoctorArgs),
    /// List a client's kept versions, or restore one as current.
    Versions {
        #[command(subcommand)]
        command: sharevault::cli::versions::VersionsCommand,
    },
    /// Write a consistent snapshot of a running daemon's vault to a file.
    Snapshot(sharevault::cli::ops::SnapshotArgs),
    /// Restore a snapshot into a data dir (with the daemon stopped, or into a new data dir).
    Restore(sharevault::cli::restore::RestoreArgs),
    /// The root key's seal: create the token's key, move a stopped vault between the file and
    /// PKCS#11 seals, or re-seal it under another token key.
    Seal {
        #[command(subcommand)]
        command: sharevault::cli::seal::SealCommand,
    },
    /// Replay Portal's webhook calls against a deployed webhook and report each check.
    Selftest(sharevault::cli::selftest::SelftestArgs),
    /// Copy a vault between the data dir's embedded database and PostgreSQL, checked record
    /// by record (with every daemon on both stopped).
    Migrate(sharevault::cli::migrate::MigrateArgs),
    /// Start a daemon on loopback, fill it with clients, and measure its operations.
    Bench(bench::Args),
    /// The in-memory stand-in `bench --stand-in` measures in place of the daemon.
    #[command(hide = true)]
    BenchStandIn(bench::standin::Args),
    /// Re-wrap every record's data key under a new master key, while the daemon serves.
    Rekey(sharevault::cli::ops::RekeyArgs),
    /// Open every record with the master key and report any that fails.
    Verify(sharevault::cli::ops::VerifyArgs),
    /// Export or verify the audit trail.
    Audit {
        #[command(subcommand)]
        command: sharevault::cli::ops::AuditCommand,
    },
    /// Print the shell completions for bash, zsh or fish (or elvish, powershell) on stdout:
    /// `sharevault completions bash > ~/.local/share/bash-completion/completions/sharevault`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the shell completions and man pages of this command line into a directory, for
    /// packaging (`packaging/deb`).
    #[command(hide = true)]
    PackageFiles {
        #[arg(long, value_name = "DIR")]
        out_dir: std::path::PathBuf,
    },
    /// Print the JSON API's OpenAPI document (`sharevault openapi > docs/openapi.json`).
    #[command(hide = true)]
    Openapi,
    /// Print the settings table of `docs/configuration.md`, generated from the definitions of
    /// `serve`; with `--write FILE`, replace the table between FILE's markers instead.
    #[command(hide = true)]
    ConfigReference {
        #[arg(long, value_name = "FILE")]
        write: Option<std::path::PathBuf>,
    },
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

/// SIGTERM or SIGINT. The handlers are installed when this is called, before the daemon starts,
/// so a signal that arrives while it starts up (even as it logs that it is ready) stops it
/// cleanly rather than killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (mut term, mut int) = match (term, int) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(err), _) | (_, Err(err)) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM and SIGINT");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

fn settings(config: &Config) -> anyhow::Result<Settings> {
    sharevault::secrets::prepare_data_dir(&config.data_dir).map_err(anyhow::Error::msg)?;
    let mut secrets = sharevault::secrets::load(
        &config.data_dir,
        sharevault::secrets::SecretFiles {
            master_key: config.master_key_file.as_deref(),
            old_master_key: config.old_master_key_file.as_deref(),
            webhook_secret: config.webhook_secret_file.as_deref(),
            admin_token: config.admin_token_file.as_deref(),
            sealed: config.seal == sharevault::seal::SealKind::Pkcs11,
        },
    )
    .map_err(anyhow::Error::msg)?;
    let mut config = config.clone();
    if let Some(database) = config.database.take() {
        let password =
            sharevault::secrets::database_password(config.database_password_file.as_deref())
                .map_err(anyhow::Error::msg)?;
        config.database = Some(match password {
            Some(password) => database.with_password(password),
            None => database,
        });
    }
    let seal = sharevault::seal::start::open(&config, &mut secrets).map_err(anyhow::Error::msg)?;
    Ok(Settings {
        config,
        secrets,
        seal,
    })
}

/// The command line that completions offer: the visible commands only (clap_complete would
/// offer hidden ones too).
fn completed_command() -> clap::Command {
    use clap::CommandFactory;
    let full = Cli::command();
    clap::Command::new("sharevault")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned())
}

/// Prints the completions for `shell` on stdout: the same script the package installs.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut completed_command(), "sharevault", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// Writes `completions/` (bash, zsh, fish) and `man/` (a page per visible command) under `dir`,
/// generated from the command line's own definitions.
fn package_files(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let (completions, man) = (dir.join("completions"), dir.join("man"));
    for sub in [&completions, &man] {
        std::fs::create_dir_all(sub).with_context(|| format!("cannot create {}", sub.display()))?;
    }
    let mut visible = completed_command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut visible, "sharevault", &completions)
            .with_context(|| format!("cannot write the {shell} completions"))?;
    }
    clap_mangen::generate_to(Cli::command(), &man).context("cannot write the man pages")?;
    Ok(())
}

/// Prints the settings table, or writes it between the markers of `file`.
fn config_reference(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    use sharevault::cli::config_reference::{splice, table};
    let Some(file) = file else {
        print!("{}", table().map_err(anyhow::Error::msg)?);
        return Ok(());
    };
    let doc =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let spliced = splice(&doc).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    std::fs::write(file, spliced).with_context(|| format!("cannot write {}", file.display()))
}

/// Prints a failed command's error on stderr: on one line, its causes joined with `: `; with
/// `--debug` or `RUST_LOG` set, one cause per line and the backtrace if one was captured
/// (RUST_BACKTRACE=1).
fn report(err: &anyhow::Error, debug: bool) {
    if debug {
        eprintln!("error: {err:?}");
    } else {
        eprintln!("error: {err:#}");
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let debug = cli.debug || std::env::var_os("RUST_LOG").is_some();
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            report(&err, debug);
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let config = Config::load(&args).map_err(anyhow::Error::msg)?;
            init_logging(config.log_format);
            // One lock on the data dir for the daemon's whole run, whatever its settings, so
            // that no restore or offline command changes it underneath.
            sharevault::secrets::prepare_data_dir(&config.data_dir).map_err(anyhow::Error::msg)?;
            let _lock = sharevault::data_dir::DataDirLock::acquire(
                &config.data_dir,
                "starting another daemon on it",
            )
            .map_err(anyhow::Error::msg)?;
            if config.database.is_none() {
                sharevault::data_dir::check_vault_files(
                    &config.data_dir,
                    sharevault::secrets::DATABASE_FILE,
                    config.init,
                )
                .map_err(anyhow::Error::msg)?;
            }
            let settings = settings(&config)?;
            let tls = |files: &Option<sharevault::config::TlsFiles>| {
                files
                    .as_ref()
                    .map(TlsIdentity::load)
                    .transpose()
                    .map_err(anyhow::Error::msg)
            };
            let (grpc_tls, http_tls) = (tls(&config.grpc_tls)?, tls(&config.http_tls)?);
            // Store reads run on the blocking threads (see `Vault`): enough of
            // them to keep the disk's queue busy, few enough to keep memory bounded.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(BLOCKING_THREADS)
                .build()
                .context("cannot start the runtime")?;
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
                let admin_socket = match &config.admin_socket {
                    Some(path) => {
                        let addr = sharevault::config::ListenAddr::Unix(path.clone());
                        let socket = Listener::bind(&addr)
                            .await
                            .with_context(|| format!("cannot listen on {addr}"))?;
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                            .with_context(|| format!("cannot restrict {}", path.display()))?;
                        Some(socket)
                    }
                    None => None,
                };
                let listeners = Listeners {
                    admin_socket,
                    grpc,
                    grpc_tls,
                    http,
                    http_tls,
                };
                server::run(listeners, settings, shutdown_signal()).await?;
                Ok(())
            })
        }
        Command::Snapshot(args) => Ok(sharevault::cli::block_on(sharevault::cli::ops::snapshot(
            args,
        ))?),
        Command::Rekey(args) => Ok(sharevault::cli::block_on(sharevault::cli::ops::rekey(
            args,
        ))?),
        Command::Verify(args) => Ok(sharevault::cli::block_on(sharevault::cli::ops::verify(
            args,
        ))?),
        Command::Audit { command } => Ok(sharevault::cli::block_on(sharevault::cli::ops::audit(
            command,
        ))?),
        Command::Restore(args) => Ok(sharevault::cli::restore::run(args)?),
        Command::Seal { command } => Ok(sharevault::cli::seal::run(command)?),
        Command::Migrate(args) => Ok(sharevault::cli::migrate::run(args)?),
        Command::CheckConfig(args) => {
            let config = Config::load(&args.serve).map_err(anyhow::Error::msg)?;
            init_logging(config.log_format);
            let settings = settings(&config)?;
            for files in [&config.grpc_tls, &config.http_tls].into_iter().flatten() {
                tls_acceptor(&files.cert, &files.key).map_err(anyhow::Error::msg)?;
            }
            let key_id = match &settings.seal {
                sharevault::seal::Seal::File { .. }
                    if settings.secrets.generated.has_master_key() =>
                {
                    "none yet: a new master key is generated in the data dir at the first start"
                        .to_string()
                }
                sharevault::seal::Seal::File { key, .. } => key.id().to_string(),
                sharevault::seal::Seal::Pkcs11 { hsm, key } => format!(
                    "sealed by key {:?} of PKCS#11 token {:?} (both found, PIN accepted)",
                    key.label(),
                    hsm.token_label()
                ),
            };
            sharevault::cli::check_config::print(&config, &key_id, args.json)?;
            Ok(())
        }
        Command::Status(args) => Ok(sharevault::cli::block_on(sharevault::cli::status::run(
            args,
        ))?),
        Command::Token { command } => Ok(sharevault::cli::block_on(sharevault::cli::token::run(
            command,
        ))?),
        Command::Doctor(args) => Ok(sharevault::cli::block_on(sharevault::cli::doctor::run(
            args,
        ))?),
        Command::Versions { command } => Ok(sharevault::cli::block_on(
            sharevault::cli::versions::run(command),
        )?),
        Command::Selftest(args) => Ok(sharevault::cli::block_on(sharevault::cli::selftest::run(
            args,
        ))?),
        Command::Bench(args) => bench::run(args),
        Command::BenchStandIn(args) => bench::standin::run(args),
        Command::Completions { shell } => completions(shell),
        Command::PackageFiles { out_dir } => package_files(&out_dir),
        Command::Openapi => {
            print!("{}", sharevault::api::http::openapi::document());
            Ok(())
        }
        Command::ConfigReference { write } => config_reference(write.as_deref()),
    }
}
