//! A real PostgreSQL server for tests: `initdb` into a temporary directory, started on a free
//! loopback port (as the unprivileged user `nobody` when the tests run as root, since
//! PostgreSQL refuses to run as root), with password (SCRAM) authentication over TCP.
//!
//! It needs PostgreSQL 15's server binaries: Debian's `postgresql-15` package (or set
//! `SHAREVAULT_TEST_PG_BIN` to a directory holding `initdb`, `pg_ctl` and `psql`). Without
//! them a test fails and says how to install them: it never passes silently.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The superuser the tests connect as, and its password.
pub const USER: &str = "sharevault";
pub const PASSWORD: &str = "test-database-password-0123456789";

fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("SHAREVAULT_TEST_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    assert!(
        dir.join("initdb").exists() && dir.join("pg_ctl").exists() && dir.join("psql").exists(),
        "these tests need PostgreSQL 15's server binaries in {}: install them with \
         `apt-get install postgresql-15` (Debian 12), or set SHAREVAULT_TEST_PG_BIN to a \
         directory holding initdb, pg_ctl and psql",
        dir.display()
    );
    dir
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A command run as the server's owner.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL server in a temporary directory. Stopped (immediately) when dropped, and by a
/// watchdog when the test process exits without dropping it.
pub struct PgServer {
    pub port: u16,
    /// The address it listens on: 127.0.0.1, or its address in a network namespace.
    pub host: String,
    /// The network namespace it runs in, if not this process's.
    netns: Option<String>,
    dir: PathBuf,
    bin: PathBuf,
    /// Extra `-c` settings (TLS).
    options: String,
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

impl PgServer {
    /// A new server of the test's own, running.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A new server that also accepts TLS with this certificate and key (PEM files).
    pub fn start_with_tls(cert: &Path, key: &Path) -> Self {
        Self::start_with(Some((cert, key)))
    }

    /// A new server running in the network namespace `netns`, listening on `host` (its
    /// address there), reached from this process over that namespace's veth pair.
    pub fn start_in_netns(netns: &str, host: &str) -> Self {
        Self::start_at(None, Some((netns, host)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> Self {
        Self::start_at(tls, None)
    }

    fn start_at(tls: Option<(&Path, &Path)>, place: Option<(&str, &str)>) -> Self {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "sharevault-pg-{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if is_root() {
            for path in [&dir, &pwfile] {
                std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
            }
        }
        run(
            as_owner(&bin.join("initdb"))
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-U", USER, "-E", "UTF8", "--no-sync", "--no-instructions"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        let mut options = String::new();
        if let Some((cert, key)) = tls {
            for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                let to = dir.join(name);
                std::fs::copy(from, &to).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
                if is_root() {
                    std::os::unix::fs::chown(&to, Some(65534), Some(65534)).unwrap();
                }
            }
            options = format!(
                " -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
                dir.join("server.crt").display(),
                dir.join("server.key").display()
            );
        }
        if place.is_some() {
            // Password logins from the namespace's own subnet (the host's end of the veth).
            let hba = dir.join("data").join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).unwrap();
            rules.push_str("host all all 0.0.0.0/0 scram-sha-256\n");
            std::fs::write(&hba, rules).unwrap();
        }
        let server = Self {
            port: free_port(),
            host: place.map_or("127.0.0.1", |p| p.1).to_owned(),
            netns: place.map(|p| p.0.to_owned()),
            dir,
            bin,
            options,
        };
        server.start_again();
        server.watch();
        server
    }

    /// Stops the server and removes its directory once this process is gone, even if it
    /// exits without dropping the server.
    fn watch(&self) {
        let server = self;
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; \
             '{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = server.bin.join("pg_ctl").display(),
            data = server.dir.join("data").display(),
            dir = server.dir.display(),
        );
        // Not waited for: it outlives this process on purpose.
        #[allow(clippy::zombie_processes)]
        as_owner(Path::new("/bin/sh"))
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL watchdog");
    }

    /// One server shared by every test of this process (each test takes a database of its
    /// own).
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(PgServer::start)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        run(
            self.owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-p {} -c listen_addresses={} -c unix_socket_directories='{}' \
                     -c max_connections=300 -c shared_buffers=32MB{}",
                    self.port,
                    self.host,
                    self.dir.display(),
                    self.options
                ))
                .arg("start"),
            "pg_ctl start",
        );
    }

    /// Stops the server: `fast` (sessions ended cleanly) or `immediate` (as a crash).
    pub fn stop(&self, mode: &str) {
        run(
            self.owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-t", "60", "-m", mode, "stop"]),
            "pg_ctl stop",
        );
    }

    /// Runs SQL as the superuser on `db` and returns psql's unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
            ])
            .args(["-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new, empty database; returns its name.
    pub fn create_database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// `postgres://USER@127.0.0.1:PORT/DB`: no password (it comes from a file).
    pub fn url(&self, db: &str) -> String {
        if self.netns.is_some() {
            // Not a loopback address: TLS is needed unless refused in so many words.
            format!(
                "postgres://{USER}@{}:{}/{db}?sslmode=disable",
                self.host, self.port
            )
        } else {
            format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
        }
    }

    /// A command run as the server's owner, in the server's network namespace.
    fn owner(&self, program: &Path) -> Command {
        match &self.netns {
            None => as_owner(program),
            Some(netns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", netns]);
                if is_root() {
                    cmd.args([
                        "setpriv",
                        "--reuid=65534",
                        "--regid=65534",
                        "--clear-groups",
                    ]);
                    cmd.arg("--");
                }
                cmd.arg(program);
                cmd
            }
        }
    }

    /// Writes the password to a private file in `dir`; returns its path.
    pub fn password_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("database-password");
        std::fs::write(&path, format!("{PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The processes of a server: its postmaster (the first line of `postmaster.pid`) and every
/// process it started (backends, checkpointer, WAL writer...).
fn cluster_pids(data: &Path) -> Vec<u32> {
    let Some(postmaster) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return Vec::new();
    };
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // `pid (comm) state ppid ...`: the comm may hold spaces, so read after its `)`.
        let parent = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let rest = stat.rsplit_once(')')?.1.to_owned();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if parent == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

impl PgServer {
    /// Sends `signal` (`STOP`, `CONT`) to the server's postmaster and every one of its
    /// processes: with `STOP`, PostgreSQL still accepts TCP connections (the kernel does) but
    /// answers nothing, as a server that hangs; `CONT` lets it go on where it was.
    pub fn signal_all(&self, signal: &str) -> usize {
        let pids = cluster_pids(&self.dir.join("data"));
        assert!(!pids.is_empty(), "the server is not running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(pids.iter().map(u32::to_string))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        pids.len()
    }
}

impl PgServer {
    /// A synchronous streaming standby of `primary`: a base backup (`pg_basebackup -R`, which
    /// writes `standby.signal` and `primary_conninfo`) started on a port of its own; the
    /// primary then waits for it at each commit (`synchronous_standby_names = '*'`, with
    /// `synchronous_commit = on`, the default), so a commit that has returned is on both.
    pub fn standby_of(primary: &PgServer) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sharevault-pg-{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        if is_root() {
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        }
        run(
            as_owner(&primary.bin.join("pg_basebackup"))
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-X", "stream", "-R", "--no-sync", "-c", "fast", "-d"])
                .arg(format!(
                    "host=127.0.0.1 port={} user={USER} password={PASSWORD} \
                     application_name=standby",
                    primary.port
                )),
            "pg_basebackup",
        );
        let standby = Self {
            port: free_port(),
            host: "127.0.0.1".into(),
            netns: None,
            dir,
            bin: primary.bin.clone(),
            options: String::new(),
        };
        standby.start_again();
        standby.watch();
        primary.psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
        );
        primary.psql("postgres", "SELECT pg_reload_conf()");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while primary.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
        ) != "1"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the standby did not become synchronous:\n{}",
                standby.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        standby
    }

    /// Promotes a standby to primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) {
        run(
            as_owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-t", "60", "promote"]),
            "pg_ctl promote",
        );
    }
}
