//! `sharevault bench`: starts a daemon on loopback, fills it with clients, and measures the
//! throughput, latency, CPU and memory of the webhook and gRPC operations.

mod daemon;
mod http;
mod load;
mod payload;
pub mod standin;

use anyhow::{Context, bail};
use daemon::{Daemon, Usage, Workspace};
use load::{Op, Outcome, Target};
use sharevault::pb::admin_service_client::AdminServiceClient;
use sharevault::pb::{CreateTokenRequest, GetStatusRequest, RevokeTokenRequest, Role};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Requests per operation at most, whatever the duration.
const MAX_REQUESTS: u64 = 5_000_000;
/// Error messages printed per operation.
const SHOWN_ERRORS: usize = 5;
const MIB: f64 = 1024.0 * 1024.0;

/// The settings of `sharevault bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Clients to store and address (each holds 8 custodian shares and 4 client shares).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
    /// Concurrent connections: keep-alive HTTP/1.1 connections or gRPC channels.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    connections: u16,
    /// Seconds each operation runs (each also stops after 5,000,000 requests).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Use this data dir, and keep it, instead of a temp dir; its secrets live in DIR.keys/.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Do not store the clients first: the data dir already holds them (same --clients).
    #[arg(long)]
    skip_populate: bool,
    /// Operations to run, comma-separated [default: all, in this order].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "OPS")]
    ops: Vec<Op>,
    /// Size of each custodian share, in bytes.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1024..=65536))]
    share_bytes: u32,
    /// An extra flag for the daemon, e.g. `--daemon-arg=--read-audit=deferred` (repeatable).
    #[arg(long = "daemon-arg", value_name = "ARG", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Drive an in-memory stand-in instead of sharevault: same wire, same connection stack,
    /// nothing sealed, written, fsynced or audited. Its figures are this machine's ceiling
    /// for the load generator and HTTP stack, to set sharevault's against.
    #[arg(long, conflicts_with_all = ["data_dir", "skip_populate", "daemon_args"])]
    stand_in: bool,
}

/// Runs the bench; fails if the daemon could not be driven or any request failed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let workspace = Workspace::new(args.data_dir.as_deref())?;
    let daemon = if args.stand_in {
        Daemon::start_stand_in(&workspace)?
    } else {
        Daemon::start(&workspace, &args.daemon_args)?
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    let result = runtime.block_on(bench(&args, &workspace, &daemon));
    // Close the client connections before asking the daemon to stop.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let stopped = daemon.stop();
    result?;
    stopped
}

async fn admin(daemon: &Daemon) -> anyhow::Result<AdminServiceClient<Channel>> {
    let channel = Channel::from_shared(daemon.grpc_endpoint.clone())?
        .connect()
        .await
        .context("gRPC connect")?;
    Ok(AdminServiceClient::new(channel))
}

fn with_token<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

async fn bench(args: &Args, workspace: &Workspace, daemon: &Daemon) -> anyhow::Result<()> {
    let connections = usize::from(args.connections);
    let pid = daemon.pid().to_string();
    println!(
        "sharevault bench: {} clients, {connections} connections, {} s per operation, {}-byte shares",
        args.clients, args.seconds, args.share_bytes
    );
    println!("machine: {}", daemon::machine());
    if args.stand_in {
        println!(
            "stand-in (in memory, nothing durable): pid {pid}, gRPC {}, webhook http://{}",
            daemon.grpc_endpoint, daemon.webhook_addr
        );
    } else {
        println!(
            "daemon: pid {pid}, data dir {}, gRPC {}, webhook http://{}",
            workspace.data_dir.display(),
            daemon.grpc_endpoint,
            daemon.webhook_addr
        );
    }

    if args.stand_in {
        // The stand-in checks no token, but the bench sends one as it would to the daemon.
        let token = format!("svt_{}", "0".repeat(64));
        let failed = drive(args, workspace, daemon, token).await?;
        return finish(failed);
    }
    // A token of its own for the run, revoked at the end whether its requests failed or not,
    // so that runs on a kept data dir leave none behind.
    let mut admin = admin(daemon).await?;
    let name = format!("bench-{pid}-{}", std::process::id());
    let mut created = admin
        .create_token(with_token(
            CreateTokenRequest {
                name: name.clone(),
                role: Role::Eject as i32,
            },
            &workspace.admin_token,
        )?)
        .await
        .context("CreateToken")?
        .into_inner();
    let token = std::mem::take(&mut created.token);
    let driven = drive(args, workspace, daemon, token).await;
    let revoked = admin
        .revoke_token(with_token(
            RevokeTokenRequest { name },
            &workspace.admin_token,
        )?)
        .await
        .context("RevokeToken");
    let failed = driven?;
    revoked?;
    print_vault(args, workspace, &mut admin).await?;
    finish(failed)
}

fn finish(failed: u64) -> anyhow::Result<()> {
    if failed > 0 {
        bail!("{failed} requests failed");
    }
    Ok(())
}

/// Populates the vault (unless told not to) and runs the operations, printing a row for
/// each; returns how many requests failed.
async fn drive(
    args: &Args,
    workspace: &Workspace,
    daemon: &Daemon,
    token: String,
) -> anyhow::Result<u64> {
    let connections = usize::from(args.connections);
    let pid = daemon.pid().to_string();
    let target = Arc::new(Target {
        webhook_addr: daemon.webhook_addr,
        grpc_endpoint: daemon.grpc_endpoint.clone(),
        webhook_secret: workspace.webhook_secret.clone(),
        token,
        clients: args.clients,
        share_bytes: args.share_bytes as usize,
        fresh_prefix: format!(
            "bench-new-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ),
        fresh: std::sync::atomic::AtomicU64::new(0),
    });

    if !args.skip_populate {
        let before = daemon::usage(&pid)?;
        let filled = load::populate(&target, connections).await?;
        let after = daemon::usage(&pid)?;
        print_errors("populate", &filled);
        if filled.errors > 0 {
            bail!(
                "{} of {} writes failed while populating",
                filled.errors,
                filled.requests
            );
        }
        let secs = filled.elapsed.as_secs_f64();
        println!(
            "populated {} clients: {} writes in {secs:.1} s ({:.0} writes/s, daemon CPU {:.0} % of one core)",
            args.clients,
            filled.requests,
            filled.requests as f64 / secs,
            cpu_percent(before, after, filled.elapsed),
        );
    }

    println!();
    print_row(&HEADER.map(String::from));
    print_row(&WIDTHS.map(|w| "-".repeat(w)));
    let ops = if args.ops.is_empty() {
        Op::ALL.to_vec()
    } else {
        args.ops.clone()
    };
    let mut failed = 0;
    for op in ops {
        let parts = op.parts(connections);
        let (daemon_before, self_before) = (daemon::usage(&pid)?, daemon::usage("self")?);
        let outcomes = load::run(
            &target,
            &parts,
            Duration::from_secs(args.seconds),
            MAX_REQUESTS,
        )
        .await?;
        let (daemon_after, self_after) = (daemon::usage(&pid)?, daemon::usage("self")?);
        for (i, ((part, conns), outcome)) in parts.iter().zip(&outcomes).enumerate() {
            // A part run alongside the first is labelled by what it is.
            let label = if i == 0 {
                op.label().to_owned()
            } else {
                format!("{} alongside", part.label())
            };
            print_row(&row(
                label,
                *conns,
                outcome,
                (daemon_before, daemon_after),
                (self_before, self_after),
            ));
            print_errors(&format!("{} ({})", op.label(), part.label()), outcome);
            failed += outcome.errors;
        }
    }

    Ok(failed)
}

/// What the vault holds, and the size of its database file against the payload.
async fn print_vault(
    args: &Args,
    workspace: &Workspace,
    admin: &mut AdminServiceClient<Channel>,
) -> anyhow::Result<()> {
    let status = admin
        .get_status(with_token(GetStatusRequest {}, &workspace.admin_token)?)
        .await
        .context("GetStatus")?
        .into_inner();
    let payload = status.custodian_shares * u64::from(args.share_bytes)
        + status.client_shares * payload::cipher_text(0, 0).len() as u64;
    println!();
    println!(
        "vault: {} clients addressed; {} custodian shares, {} client shares, {} share pairs, {} API tokens",
        args.clients,
        status.custodian_shares,
        status.client_shares,
        status.backup_share_pairs,
        status.tokens
    );
    match workspace.database_bytes() {
        0 => println!(
            "database: not in the data dir (a --database-url daemon); {:.1} MiB of share and \
             cipherText payload",
            payload as f64 / MIB
        ),
        bytes => println!(
            "database file {:.1} MiB for {:.1} MiB of share and cipherText payload",
            bytes as f64 / MIB,
            payload as f64 / MIB
        ),
    }
    Ok(())
}

const HEADER: [&str; 12] = [
    "operation",
    "conns",
    "requests",
    "errors",
    "req/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "daemon CPU s",
    "daemon CPU %",
    "bench CPU %",
    "daemon peak RSS MiB",
];
const WIDTHS: [usize; 12] = [28, 5, 8, 6, 7, 6, 6, 8, 12, 12, 11, 19];

/// A table row: an outcome and the CPU and memory the daemon and the bench used meanwhile
/// (for operations run side by side, the CPU of both together).
fn row(
    label: String,
    conns: usize,
    outcome: &Outcome,
    (daemon_before, daemon_after): (Usage, Usage),
    (self_before, self_after): (Usage, Usage),
) -> [String; 12] {
    let secs = outcome.elapsed.as_secs_f64();
    let lat = &outcome.latencies_us;
    [
        label,
        conns.to_string(),
        outcome.requests.to_string(),
        outcome.errors.to_string(),
        format!("{:.0}", (outcome.requests - outcome.errors) as f64 / secs),
        format!("{:.2}", percentile_ms(lat, 0.50)),
        format!("{:.2}", percentile_ms(lat, 0.99)),
        format!("{:.2}", percentile_ms(lat, 0.999)),
        format!(
            "{:.2}",
            daemon_after
                .cpu
                .saturating_sub(daemon_before.cpu)
                .as_secs_f64()
        ),
        format!(
            "{:.0}",
            cpu_percent(daemon_before, daemon_after, outcome.elapsed)
        ),
        format!(
            "{:.0}",
            cpu_percent(self_before, self_after, outcome.elapsed)
        ),
        format!("{:.0}", daemon_after.peak_rss as f64 / MIB),
    ]
}

fn print_row(cells: &[String; 12]) {
    let mut line = String::from("|");
    for (i, (cell, width)) in cells.iter().zip(WIDTHS).enumerate() {
        if i == 0 {
            line.push_str(&format!(" {cell:<width$} |"));
        } else {
            line.push_str(&format!(" {cell:>width$} |"));
        }
    }
    println!("{line}");
}

fn print_errors(what: &str, outcome: &Outcome) {
    for err in outcome.first_errors.iter().take(SHOWN_ERRORS) {
        eprintln!("{what}: error: {err}");
    }
}

/// The `q` quantile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (sorted_us.len() as f64 * q).ceil() as usize;
    f64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]) / 1000.0
}

/// CPU time between two readings, as a percentage of one core over `wall`.
fn cpu_percent(before: Usage, after: Usage, wall: Duration) -> f64 {
    (after.cpu.saturating_sub(before.cpu)).as_secs_f64() / wall.as_secs_f64().max(1e-9) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_rank() {
        let us: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile_ms(&us, 0.5), 0.5);
        assert_eq!(percentile_ms(&us, 0.99), 0.99);
        assert_eq!(percentile_ms(&us, 0.999), 0.999);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }
}
