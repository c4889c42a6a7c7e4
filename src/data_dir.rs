//! The data dir as a whole: the one lock every process that uses it holds, whether it holds a
//! vault, and the directory fsync that makes a new file in it durable.
//!
//! - **One lock.** Every daemon holds an exclusive `flock` on the data dir itself (the
//!   directory, so that taking it creates nothing) for as long as it runs, whatever its
//!   settings (journals on or off, the embedded database or PostgreSQL); `restore`, `seal
//!   migrate`/`reseal` and `migrate` take the same lock, so that none of them changes a data
//!   dir under a running daemon, nor two of them at once.
//! - **A vault's files.** A data dir whose database is missing but which still holds another
//!   file of a vault (its journals, or the secrets a first start generated there) is a vault
//!   that lost its database, not a new one: the daemon refuses it rather than start an empty
//!   vault there ([`check_vault_files`]).

use std::fs::File;
use std::path::Path;

/// The files, other than the database, that only a vault's data dir holds: its log (or the
/// journals of an earlier version), the
/// database of a restore under way, and the secrets a first start generates in the data dir.
/// Each with the role named when the database is missing.
const VAULT_FILES: [(&str, &str); 7] = [
    ("sharevault.redb.log", "the database's log"),
    ("sharevault.redb.journal0", "the database's journal"),
    ("sharevault.redb.journal1", "the database's journal"),
    ("sharevault.redb.restoring", "a restore's new database"),
    ("master-key", "the vault's generated master key"),
    ("webhook-secret", "the vault's generated webhook secret"),
    ("admin-token", "the vault's generated admin token"),
];

/// An exclusive lock on a data dir, held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _dir: File,
}

impl DataDirLock {
    /// Takes the lock on `dir` (which must exist) without waiting; fails, naming the data
    /// dir, if another process holds it. `what` says what the caller is about to do, for the
    /// message (`"restoring"`).
    pub fn acquire(dir: &Path, what: &str) -> Result<Self, String> {
        let file = File::open(dir).map_err(|e| format!("cannot lock {}: {e}", dir.display()))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Self { _dir: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(format!(
                "the data dir {} is in use by another sharevault process (a running daemon, or \
                 a restore, migrate or seal command): stop it before {what}",
                dir.display()
            )),
            Err(err) => Err(format!("cannot lock {}: {err}", dir.display())),
        }
    }
}

/// Refuses a data dir whose database (`database`, a file name inside it) is missing while it
/// still holds another of a vault's files, unless `init` says that a new vault is meant
/// there. Answers whether the vault is new (no database yet).
pub fn check_vault_files(dir: &Path, database: &str, init: bool) -> Result<bool, String> {
    if dir.join(database).exists() {
        return Ok(false);
    }
    let found: Vec<String> = VAULT_FILES
        .iter()
        .filter(|(name, _)| dir.join(name).exists())
        .map(|(name, role)| format!("{name} ({role})"))
        .collect();
    if found.is_empty() || init {
        return Ok(true);
    }
    Err(format!(
        "the database is missing: the data dir {} holds no {database} but holds {}, so a vault \
         lived here. Put its database back (or restore the last snapshot with `sharevault \
         restore`); to start a new, empty vault in this data dir anyway, pass --init",
        dir.display(),
        found.join(", ")
    ))
}

/// Makes the entries of `dir` durable: a file just created, renamed or removed in it survives
/// a crash only once its directory is fsynced.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_data_dir_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), "restoring").unwrap();
        let err = DataDirLock::acquire(dir.path(), "restoring").unwrap_err();
        assert!(
            err.contains("in use by another sharevault process"),
            "{err}"
        );
        drop(first);
        DataDirLock::acquire(dir.path(), "restoring").unwrap();
        // Taking the lock created nothing.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_data_dir_with_a_vaults_files_but_no_database_is_refused_without_init() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_vault_files(dir.path(), "db", false), Ok(true));
        std::fs::write(dir.path().join("unrelated"), b"").unwrap();
        assert_eq!(check_vault_files(dir.path(), "db", false), Ok(true));
        std::fs::write(dir.path().join("sharevault.redb.journal0"), b"").unwrap();
        let err = check_vault_files(dir.path(), "db", false).unwrap_err();
        assert!(err.starts_with("the database is missing"), "{err}");
        assert!(err.contains("the database's journal"), "{err}");
        assert_eq!(check_vault_files(dir.path(), "db", true), Ok(true));
        std::fs::write(dir.path().join("db"), b"").unwrap();
        assert_eq!(check_vault_files(dir.path(), "db", false), Ok(false));
    }
}
