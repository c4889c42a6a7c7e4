//! `sharevault migrate`: copies a vault between the embedded database (a data dir) and
//! PostgreSQL, with every daemon on both stopped.
//!
//! The source is read from one consistent state into a snapshot, a private file in the data
//! dir, which is restored into the target exactly as `sharevault restore` restores one: every
//! record is checked as it is written (shares and cipherTexts open under the master key,
//! tokens match their hashes, the audit chain is intact), all or nothing (one transaction on
//! PostgreSQL, a new file swapped in on the embedded database). The target is then read back
//! and compared with the source: the rows of every table, and the audit trail's head. A run
//! that fails changes nothing, so it is simply run again; a target that already holds a
//! vault is replaced only with `--replace`.

use super::CliError;
use super::database::DatabaseArgs;
use super::progress::Progress;
use crate::crypto::MasterKey;
use crate::integrity::{INTEGRITY_KEY, IntegrityKey};
use crate::secrets::DATABASE_FILE;
use crate::snapshot::restore::{RestoreOptions, Step, restore_into_postgres, restore_with};
use crate::store::redb::RedbStore;
use crate::store::{Store, TABLES};
use crate::vault::records;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the vault goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// From the data dir's embedded database into PostgreSQL.
    Postgres,
    /// From PostgreSQL into the data dir's embedded database.
    Embedded,
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// Where the vault goes: `postgres` (from the data dir) or `embedded` (into the data dir).
    #[arg(long, value_enum)]
    pub to: Target,
    /// The data dir of the embedded database.
    #[arg(
        long,
        env = "SHAREVAULT_DATA_DIR",
        default_value = "./sharevault-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// The vault's master key.
    #[arg(long, env = "SHAREVAULT_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: PathBuf,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Replace a vault the target already holds.
    #[arg(long)]
    pub replace: bool,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// What the comparison of source and target looks at: rows per table, the audit head.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    rows: Vec<u64>,
    audit_head: Option<(u64, [u8; 32])>,
}

fn summary(store: &dyn Store) -> Result<Summary, CliError> {
    let fail = |e: crate::store::StoreError| CliError::Local(format!("cannot read the vault: {e}"));
    let r = store.read().map_err(fail)?;
    let rows = TABLES
        .iter()
        .map(|t| r.len(*t))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    Ok(Summary {
        rows,
        audit_head: crate::audit::head(&*r).map_err(fail)?,
    })
}

/// Checks that `key` is the vault's master key and opens its integrity key.
fn integrity(store: &dyn Store, key: &MasterKey) -> Result<IntegrityKey, CliError> {
    let fail = |e: String| CliError::Local(e);
    let r = store
        .read()
        .map_err(|e| fail(format!("cannot read the vault: {e}")))?;
    let check = records::meta(&*r, "key_check")
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("the source holds no vault".into()))?;
    crate::vault::verify_key_check(key, &check)
        .map_err(|e| fail(format!("master key {}: {e}", key.id())))?;
    let sealed = records::meta(&*r, INTEGRITY_KEY)
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| {
            fail("the vault has no integrity key yet: start a daemon on it once first".into())
        })?;
    IntegrityKey::open(key, &sealed).map_err(|e| fail(format!("the integrity key: {e}")))
}

/// The snapshot file, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes a snapshot of `source` into a new private file in `dir`.
fn snapshot(
    source: &dyn Store,
    key: &MasterKey,
    dir: &Path,
    progress: &mut Progress,
) -> Result<Scratch, CliError> {
    let integrity = integrity(source, key)?;
    let path = dir.join(format!(".migrate-{}.snapshot", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| CliError::Local(format!("cannot create {}: {e}", path.display())))?;
    let scratch = Scratch(path);
    crate::snapshot::write_store(source, key.id(), &integrity, &mut |chunk, written| {
        progress.set(written.records, written.total);
        file.write_all(&chunk).map_err(|e| {
            crate::store::StoreError::Backend(format!("cannot write the snapshot: {e}"))
        })
    })
    .map_err(|e| CliError::Local(format!("cannot read the source vault: {e}")))?;
    file.sync_all()
        .map_err(|e| CliError::Local(format!("cannot write the snapshot: {e}")))?;
    Ok(scratch)
}

pub fn run(args: MigrateArgs) -> Result<(), CliError> {
    let key = crate::secrets::read_master_key(&args.master_key_file).map_err(CliError::Local)?;
    let settings = args
        .database
        .settings()?
        .ok_or_else(|| CliError::Local("--database-url names the PostgreSQL side".into()))?;
    crate::secrets::prepare_data_dir(&args.data_dir).map_err(CliError::Local)?;
    let redb_path = args.data_dir.join(DATABASE_FILE);
    // The data dir's lock is held while its database is open (`restore_with` takes it itself).
    let lock = || {
        crate::data_dir::DataDirLock::acquire(&args.data_dir, "migrating its vault")
            .map_err(CliError::Local)
    };
    let open_redb = || {
        RedbStore::open(&redb_path, 0, 32 << 20, Default::default()).map_err(|e| {
            CliError::Local(format!(
                "cannot open {} (is a daemon running on it?): {e}",
                redb_path.display()
            ))
        })
    };
    let pg = DatabaseArgs::open(&settings)?;
    let mut progress = Progress::new("migrate, reading", "records", args.quiet)?;
    let options = RestoreOptions {
        replace: args.replace,
        accept_unauthenticated: false,
        // A copy made a moment ago of the other side: `--replace` already says to replace.
        allow_older: true,
    };
    let mut restoring = false;
    let (expected, report) = match args.to {
        Target::Postgres => {
            if !redb_path.exists() {
                return Err(CliError::Local(format!(
                    "{} holds no vault",
                    args.data_dir.display()
                )));
            }
            let _lock = lock()?;
            let source = open_redb()?;
            let scratch = snapshot(&source, &key, &args.data_dir, &mut progress)?;
            let expected = summary(&source)?;
            source.close();
            drop(source);
            let report = restore_into_postgres(
                &scratch.0,
                &pg,
                &key,
                options,
                &mut |step, d, t| {
                    if step == Step::Import && !restoring {
                        restoring = true;
                        progress.restart("migrate, writing", "records");
                    }
                    progress.set(d, t);
                },
                &mut |_| {},
            );
            (expected, report)
        }
        Target::Embedded => {
            let scratch = snapshot(&pg, &key, &args.data_dir, &mut progress)?;
            let expected = summary(&pg)?;
            let report = restore_with(
                &scratch.0,
                &args.data_dir,
                &key,
                options,
                &mut |step, d, t| {
                    if step == Step::Import && !restoring {
                        restoring = true;
                        progress.restart("migrate, writing", "records");
                    }
                    progress.set(d, t);
                },
                &mut |_| {},
            );
            (expected, report)
        }
    };
    progress.finish();
    let report = report.map_err(CliError::Local)?;
    // Read the target back: every table's rows and the audit head as in the source.
    let found = match args.to {
        Target::Postgres => summary(&pg)?,
        Target::Embedded => {
            let _lock = lock()?;
            let target = open_redb()?;
            let found = summary(&target)?;
            target.close();
            found
        }
    };
    pg.close();
    if found != expected {
        return Err(CliError::Local(format!(
            "the copy differs from the source (rows per table {:?}, expected {:?}); the source \
             is unchanged: run the migration again with --replace",
            found.rows, expected.rows
        )));
    }
    let (from, to) = match args.to {
        Target::Postgres => (
            args.data_dir.display().to_string(),
            format!("postgres {}", settings.describe()),
        ),
        Target::Embedded => (
            format!("postgres {}", settings.describe()),
            args.data_dir.display().to_string(),
        ),
    };
    super::print(&format!(
        "migrated {} records from {from} to {to}: {} custodian shares, {} client shares, {} \
         audit events, every record checked under master key {}; rows per table and the audit \
         head equal\n",
        report.records,
        report.custodian_shares,
        report.client_shares,
        report.audit_events,
        key.id()
    ))
}
