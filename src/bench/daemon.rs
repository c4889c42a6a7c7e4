//! The daemon under test: a `sharevault serve` child on loopback, its secrets, and its
//! resource usage read from `/proc`.

use anyhow::{Context, bail};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the bench keeps the vault and its secrets. A temp dir is removed when dropped.
pub struct Workspace {
    pub data_dir: PathBuf,
    keys_dir: PathBuf,
    temp: Option<PathBuf>,
    pub webhook_secret: String,
    pub admin_token: String,
}

fn private_dir(path: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(hex::encode(buf))
}

/// Reads a secret file, or creates it (mode 0600) with `make()`.
fn secret(path: &Path, make: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<String> {
    if path.exists() {
        let text = fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        return Ok(text.trim().to_owned());
    }
    let value = make()?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut file, value.as_bytes())?;
    Ok(value)
}

impl Workspace {
    /// `data_dir` with its secrets in `DIR.keys/`, or a fresh temp dir.
    pub fn new(data_dir: Option<&Path>) -> anyhow::Result<Self> {
        let (data_dir, keys_dir, temp) = match data_dir {
            Some(dir) => {
                let mut keys = dir.as_os_str().to_owned();
                keys.push(".keys");
                (dir.to_owned(), PathBuf::from(keys), None)
            }
            None => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                let base = std::env::temp_dir()
                    .join(format!("sharevault-bench-{}-{nanos}", std::process::id()));
                (base.join("data"), base.join("keys"), Some(base))
            }
        };
        if let Some(base) = &temp {
            private_dir(base)?;
        }
        private_dir(&keys_dir)?;
        secret(&keys_dir.join("master-key"), || random_hex(32))?;
        let webhook_secret = secret(&keys_dir.join("webhook-secret"), || {
            Ok(format!("bench-{}", random_hex(16)?))
        })?;
        let admin_token = secret(&keys_dir.join("admin-token"), || {
            Ok(format!("svt_{}", random_hex(32)?))
        })?;
        Ok(Self {
            data_dir,
            keys_dir,
            temp,
            webhook_secret,
            admin_token,
        })
    }

    pub fn database_bytes(&self) -> u64 {
        fs::metadata(self.data_dir.join("sharevault.redb"))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Some(base) = &self.temp {
            let _ = fs::remove_dir_all(base);
        }
    }
}

/// A running `sharevault serve`. Killed if dropped before [`Daemon::stop`].
pub struct Daemon {
    child: Child,
    /// `http://127.0.0.1:PORT` of the gRPC listener.
    pub grpc_endpoint: String,
    pub webhook_addr: SocketAddr,
}

/// The text after `what` in a log line, up to the next space.
fn logged<'a>(line: &'a str, what: &str) -> Option<&'a str> {
    line.split(what).nth(1)?.split_whitespace().next()
}

impl Daemon {
    /// Starts the daemon on ephemeral loopback ports and waits until it is ready.
    pub fn start(workspace: &Workspace, extra_args: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the sharevault binary")?;
        let keys = &workspace.keys_dir;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&workspace.data_dir)
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "text"])
            // Every bench connection comes from 127.0.0.1: no limit per source.
            .env("SHAREVAULT_MAX_CONNECTIONS_PER_SOURCE", "65536")
            .arg("--master-key-file")
            .arg(keys.join("master-key"))
            .arg("--webhook-secret-file")
            .arg(keys.join("webhook-secret"))
            .arg("--admin-token-file")
            .arg(keys.join("admin-token"))
            .args(extra_args);
        Self::spawn(cmd)
    }

    /// Starts the in-memory stand-in (see `standin`) in place of the daemon.
    pub fn start_stand_in(workspace: &Workspace) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the sharevault binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("bench-stand-in")
            .arg("--webhook-secret-file")
            .arg(workspace.keys_dir.join("webhook-secret"));
        Self::spawn(cmd)
    }

    /// Runs `cmd` and waits until it logs that it is ready, with its listeners' addresses.
    fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SHAREVAULT_") {
                cmd.env_remove(name);
            }
        }
        // Warnings only, except the startup lines that name the bound addresses.
        cmd.env("RUST_LOG", "warn,sharevault::server=info")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot start the daemon")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, rx) = mpsc::channel::<String>();
        // Forwards lines until the receiver is gone, then keeps draining so the child never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            let mut forward = true;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if forward && tx.send(line).is_err() {
                    forward = false;
                }
            }
        });
        let mut daemon = Self {
            child,
            grpc_endpoint: String::new(),
            webhook_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let (mut grpc, mut webhook, mut log) = (None, None, Vec::new());
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(line) => {
                    if let Some(addr) = logged(&line, "grpc listener bound addr=") {
                        grpc = Some(addr.to_owned());
                    }
                    if let Some(addr) = logged(&line, "webhook listener bound addr=") {
                        webhook = Some(addr.parse::<SocketAddr>()?);
                    }
                    let ready = line.contains("sharevault is ready");
                    log.push(line);
                    if ready {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("the daemon was not ready within {STARTUP_TIMEOUT:?}");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = daemon.child.wait()?;
                    bail!("the daemon exited ({status}):\n{}", log.join("\n"));
                }
            }
        }
        daemon.grpc_endpoint = format!("http://{}", grpc.context("no gRPC address logged")?);
        daemon.webhook_addr = webhook.context("no webhook address logged")?;
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the exit; kills it after the bound.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while sent && Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the daemon exited with {status}");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !sent {
            bail!("cannot send SIGTERM to the daemon; killed it");
        }
        bail!("the daemon did not stop on SIGTERM within {STOP_TIMEOUT:?}; killed it")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU time and peak memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User plus system CPU time, all threads.
    pub cpu: Duration,
    /// Peak resident set size (`VmHWM`), in bytes.
    pub peak_rss: u64,
}

/// Clock ticks per second of `/proc/*/stat`.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// The usage of `pid` (`"self"` for this process).
pub fn usage(pid: &str) -> anyhow::Result<Usage> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short stat")?.parse::<u64>()?)
    };
    let ticks = tick(11)? + tick(12)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(Usage {
        cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64),
        peak_rss: peak_kb * 1024,
    })
}

/// Cores and kernel, for the report.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}
