//! Finding, checking and (on a first start) generating the daemon's secrets.
//!
//! Each secret comes from, in order: its `--*-file` setting; a file of the same name in
//! `$CREDENTIALS_DIRECTORY` (systemd credentials: `master-key`, `webhook-secret`,
//! `admin-token`); or a file of that name in the data dir, generated with mode 0600 if it does
//! not exist yet (written, and the data dir fsynced, only once the start's checks passed). A master key is never generated for a data dir that already holds a
//! database. The data dir and every secret file must not be accessible to other users.

use crate::auth::{self, MIN_SECRET_LEN, WebhookSecrets};
use crate::crypto::MasterKey;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The name of the database file inside the data dir.
pub const DATABASE_FILE: &str = "sharevault.redb";

/// The secrets the daemon runs with.
pub struct Secrets {
    /// The master key; `None` when a token seal keeps the root key ([`crate::seal`]).
    pub master_key: Option<MasterKey>,
    /// The previous master key, to finish an interrupted rotation.
    pub old_master_key: Option<MasterKey>,
    pub webhook: WebhookSecrets,
    /// Where the webhook secrets are read from, again at each reload (SIGHUP).
    pub webhook_file: PathBuf,
    /// SHA-256 of the admin token.
    pub admin_token: [u8; 32],
    /// Secrets generated for a first start, not yet written to the data dir: they are
    /// written ([`Generated::persist`]) only once the start's checks have passed, so that a
    /// refused start leaves the data dir as it was.
    pub generated: Generated,
}

/// Secrets generated in memory for the data dir, to be written at the start they belong to.
#[derive(Default)]
pub struct Generated {
    files: Vec<(PathBuf, Zeroizing<String>)>,
}

impl Generated {
    /// Whether the master key is among them (it was never written).
    pub fn has_master_key(&self) -> bool {
        self.files
            .iter()
            .any(|(path, _)| path.file_name() == Some(Kind::MasterKey.file_name().as_ref()))
    }

    /// Writes each generated secret (mode 0600, never over an existing file), then fsyncs the
    /// data dir, so that the files survive a crash before the database is created.
    pub fn persist(&mut self, data_dir: &Path) -> Result<(), String> {
        if self.files.is_empty() {
            return Ok(());
        }
        for (path, value) in self.files.drain(..) {
            write_new_secret(&path, &value)?;
            let what = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into());
            if what == Kind::MasterKey.file_name() {
                tracing::warn!(
                    path = %path.display(),
                    "generated a new master key in the data dir; in production keep the master \
                     key away from the data (systemd credentials or --master-key-file)"
                );
            } else {
                tracing::warn!(path = %path.display(), "generated a new {what} in the data dir");
            }
        }
        crate::data_dir::sync_dir(data_dir)
            .map_err(|e| format!("cannot sync the data dir {}: {e}", data_dir.display()))
    }
}

#[derive(Clone, Copy)]
enum Kind {
    MasterKey,
    WebhookSecret,
    AdminToken,
}

impl Kind {
    fn file_name(self) -> &'static str {
        match self {
            Kind::MasterKey => "master-key",
            Kind::WebhookSecret => "webhook-secret",
            Kind::AdminToken => "admin-token",
        }
    }

    fn generate(self) -> Result<Zeroizing<String>, String> {
        match self {
            Kind::MasterKey => MasterKey::generate_hex(),
            Kind::WebhookSecret => auth::random_secret(32),
            Kind::AdminToken => auth::generate_token(),
        }
        .map_err(|e| e.to_string())
    }
}

/// Creates the data dir (mode 0700) or checks that other users cannot reach it.
pub fn prepare_data_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
    }
    let meta = fs::metadata(dir).map_err(|e| format!("data dir {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("data dir {} is not a directory", dir.display()));
    }
    private(dir, &meta, "data dir")
}

fn private(path: &Path, meta: &fs::Metadata, what: &str) -> Result<(), String> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what} {} is accessible by other users (mode {mode:o}); run `chmod go-rwx {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

fn read_secret(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let meta = fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    private(path, &meta, what)?;
    fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

pub(crate) fn write_new_secret(path: &Path, value: &str) -> Result<(), String> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(value.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Where the secret `name` (`master-key`, `webhook-secret`, `admin-token`) is read from: the
/// configured file; else `$CREDENTIALS_DIRECTORY/<name>` if it exists; else `<data_dir>/<name>`.
pub fn secret_path(configured: Option<&Path>, name: &str, data_dir: &Path) -> PathBuf {
    if let Some(path) = configured {
        return path.to_owned();
    }
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|dir| PathBuf::from(dir).join(name))
        .filter(|path| path.exists())
        .unwrap_or_else(|| data_dir.join(name))
}

fn locate(
    kind: Kind,
    configured: Option<&Path>,
    data_dir: &Path,
    generated: &mut Generated,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let what = kind.file_name();
    let path = secret_path(configured, what, data_dir);
    if configured.is_some() || path.parent() != Some(data_dir) {
        return read_secret(&path, what);
    }
    if !path.exists() {
        if matches!(kind, Kind::MasterKey) && data_dir.join(DATABASE_FILE).exists() {
            return Err(format!(
                "the data dir {} holds a vault but no master key was given; pass \
                 --master-key-file with the key it was created with (or, if its root key is \
                 sealed by a PKCS#11 token, start with --seal pkcs11 and the token's settings)",
                data_dir.display()
            ));
        }
        let value = kind.generate()?;
        let raw = Zeroizing::new(value.as_bytes().to_vec());
        generated.files.push((path, value));
        return Ok(raw);
    }
    read_secret(&path, what)
}

/// The PostgreSQL password: from the configured file, else the systemd credential
/// `database-password` if there is one, else none (the server then authenticates otherwise).
pub fn database_password(configured: Option<&Path>) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    let path = match configured {
        Some(path) => path.to_owned(),
        None => match std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|dir| PathBuf::from(dir).join("database-password"))
            .filter(|path| path.exists())
        {
            Some(path) => path,
            None => return Ok(None),
        },
    };
    read_secret(&path, "database password").map(Some)
}

fn parse_webhook_secrets(raw: &[u8]) -> Result<WebhookSecrets, String> {
    WebhookSecrets::from_file_contents(
        std::str::from_utf8(raw).map_err(|_| "webhook secret: must be UTF-8 text")?,
    )
    .map_err(|e| format!("webhook secret: {e}"))
}

/// Reads the webhook secrets file again (a reload): private to its owner, one secret of at
/// least [`MIN_SECRET_LEN`] characters per line. Errors never quote the file's contents.
pub fn read_webhook_secrets(path: &Path) -> Result<WebhookSecrets, String> {
    parse_webhook_secrets(&read_secret(path, "webhook secret")?)
        .map_err(|e| format!("{e} ({})", path.display()))
}

/// Reads a master key file (which must be private to its owner).
pub fn read_master_key(path: &Path) -> Result<MasterKey, String> {
    MasterKey::from_file_contents(&read_secret(path, "master key")?)
        .map_err(|e| format!("master key {}: {e}", path.display()))
}

/// Where each secret comes from.
#[derive(Debug, Default, Clone, Copy)]
pub struct SecretFiles<'a> {
    pub master_key: Option<&'a Path>,
    pub old_master_key: Option<&'a Path>,
    pub webhook_secret: Option<&'a Path>,
    pub admin_token: Option<&'a Path>,
    /// The root key is sealed by a token: no master key is read or generated.
    pub sealed: bool,
}

/// Finds or generates every secret.
pub fn load(data_dir: &Path, files: SecretFiles<'_>) -> Result<Secrets, String> {
    let SecretFiles {
        master_key: master_key_file,
        old_master_key,
        webhook_secret: webhook_secret_file,
        admin_token: admin_token_file,
        sealed,
    } = files;
    let mut generated = Generated::default();
    let master_key = if sealed {
        None
    } else {
        Some(
            MasterKey::from_file_contents(&locate(
                Kind::MasterKey,
                master_key_file,
                data_dir,
                &mut generated,
            )?)
            .map_err(|e| format!("master key: {e}"))?,
        )
    };
    let webhook_raw = locate(
        Kind::WebhookSecret,
        webhook_secret_file,
        data_dir,
        &mut generated,
    )?;
    let webhook = parse_webhook_secrets(&webhook_raw)?;
    let webhook_file = secret_path(
        webhook_secret_file,
        Kind::WebhookSecret.file_name(),
        data_dir,
    );
    let admin_raw = locate(Kind::AdminToken, admin_token_file, data_dir, &mut generated)?;
    let admin = admin_raw.trim_ascii();
    if admin.len() < MIN_SECRET_LEN {
        return Err(format!(
            "admin token: must be at least {MIN_SECRET_LEN} characters"
        ));
    }
    Ok(Secrets {
        master_key,
        old_master_key: old_master_key.map(read_master_key).transpose()?,
        webhook,
        webhook_file,
        admin_token: auth::digest(admin),
        generated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_start_generates_private_secrets_and_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        prepare_data_dir(&data).unwrap();
        let mut first = load(&data, SecretFiles::default()).unwrap();
        // Nothing is written until the start persists them.
        assert_eq!(fs::read_dir(&data).unwrap().count(), 0);
        assert!(first.generated.has_master_key());
        first.generated.persist(&data).unwrap();
        for name in ["master-key", "webhook-secret", "admin-token"] {
            let mode = fs::metadata(data.join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let again = load(&data, SecretFiles::default()).unwrap();
        assert_eq!(
            first.master_key.unwrap().id(),
            again.master_key.unwrap().id()
        );
        assert_eq!(first.admin_token, again.admin_token);
    }

    #[test]
    fn secrets_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        fs::write(&key, "00".repeat(32)).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let files = SecretFiles {
            master_key: Some(&key),
            ..SecretFiles::default()
        };
        let err = load(dir.path(), files).err().unwrap();
        assert!(err.contains("accessible by other users"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(prepare_data_dir(dir.path()).is_err());
    }

    #[test]
    fn no_master_key_is_invented_for_an_existing_vault() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(DATABASE_FILE), b"").unwrap();
        let err = load(dir.path(), SecretFiles::default()).err().unwrap();
        assert!(err.contains("no master key was given"), "{err}");
        assert!(!dir.path().join("master-key").exists());
    }

    #[test]
    fn a_sealed_root_key_needs_no_master_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = SecretFiles {
            sealed: true,
            ..SecretFiles::default()
        };
        let mut secrets = load(dir.path(), files).unwrap();
        assert!(!secrets.generated.has_master_key());
        secrets.generated.persist(dir.path()).unwrap();
        assert!(secrets.master_key.is_none());
        assert!(!dir.path().join("master-key").exists());
        assert!(dir.path().join("admin-token").exists());
    }
}
