//! Offline restore of a snapshot into a data dir.
//!
//! Nothing in the data dir is touched until the snapshot is authenticated: the integrity key in
//! its header is opened with the master key, and the HMAC over the whole file is checked. Then
//! the data dir is locked for the whole restore (the lock every running daemon holds,
//! [`crate::data_dir::DataDirLock`], and the journal's, which earlier versions held), and every
//! record is checked while it is written into a new database file beside the live one: shares
//! and cipherTexts must open with the master key under their own table, client and method;
//! pairs, tokens and audit events must decode, every token's hash entry must name a token
//! that carries that hash, and the audit chain must be intact. The bytes imported are
//! authenticated again as they are read, so a file changed after the first check is refused.
//! Only when everything passed is the new file swapped in (rename, then the directory
//! fsynced). On any failure the new file is removed and the live vault is left exactly as it
//! was, byte for byte.

use crate::audit::{Anchor, AuditEvent, ChainCheck, PruneAnchor};
use crate::crypto::{MasterKey, RecordAad};
use crate::integrity::{INTEGRITY_KEY, IntegrityKey};
use crate::secrets::DATABASE_FILE;
use crate::snapshot::{self, RecordReader, SnapshotError, TRAILER, TableId, Tee, Trailer};
use crate::store::journal::journal_paths;
use crate::store::{StoreError, redb::RedbStore};
use crate::vault::{codec, records};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

mod freshness;
pub use freshness::{Freshness, Live, Newest, SnapshotMark};

/// What a restore wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub records: u64,
    pub custodian_shares: u64,
    pub client_shares: u64,
    /// Kept earlier shares and cipherTexts.
    pub versions: u64,
    pub audit_events: u64,
}

/// How a restore may proceed.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreOptions {
    /// Replace a vault already in the data dir (it is kept beside, renamed).
    pub replace: bool,
    /// Accept a format 1 snapshot, whose plain checksum proves nothing against an attacker.
    pub accept_unauthenticated: bool,
    /// Replace a vault that holds writes the snapshot lacks ([`Freshness::older`]).
    pub allow_older: bool,
}

/// What the records checked so far have shown.
#[derive(Default)]
struct Checks {
    /// The audit chain's check, made at the first event (the meta table, with the anchor,
    /// comes before the audit table).
    chain: Option<ChainCheck>,
    /// The key check's version, once seen (2: the vault has an integrity key).
    key_check: Option<u8>,
    /// The audit trail's anchor, if the snapshot holds one.
    anchor: Option<Vec<u8>>,
    /// The anchor a pruned trail starts from, if it was pruned.
    pruned: Option<Vec<u8>>,
    /// The integrity key record, if the snapshot holds one.
    integrity_key: Option<Vec<u8>>,
    /// Each token's hash, by name.
    tokens: HashMap<String, [u8; 32]>,
    token_hashes: u64,
}

/// Checks one record.
fn check_record(
    key: &MasterKey,
    integrity: Option<&IntegrityKey>,
    table: TableId,
    k: &[u8],
    v: &[u8],
    checks: &mut Checks,
    report: &mut RestoreReport,
) -> Result<(), String> {
    let bad = |what: &str| format!("{} record {what}", table.name());
    match table {
        TableId::Custodian | TableId::Client | TableId::Versions => {
            let (client, second) =
                snapshot::split_client_key(k).ok_or_else(|| bad("has a malformed key"))?;
            let record =
                records::decode_sealed(table, second, v).map_err(|_| bad("is malformed"))?;
            let (name, method) = records::envelope_binding(table, second)
                .ok_or_else(|| bad("has a malformed key"))?;
            let aad = RecordAad {
                table: name,
                client_id: client,
                backup_method: method,
            };
            let plain = key
                .open(&aad, &record.envelope)
                .map_err(|e| format!("{}/{client}/{method} does not open: {e}", table.name()))?;
            std::str::from_utf8(&plain)
                .map_err(|_| format!("{}/{client}/{method} is not text", table.name()))?;
            match table {
                TableId::Custodian => report.custodian_shares += 1,
                TableId::Client => report.client_shares += 1,
                _ => report.versions += 1,
            }
        }
        TableId::Pairs => {
            let (_, id) =
                snapshot::split_client_key(k).ok_or_else(|| bad("has a malformed key"))?;
            codec::decode_pair(id, v).map_err(|_| bad("is malformed"))?;
        }
        TableId::Tokens => {
            let name = std::str::from_utf8(k).map_err(|_| bad("has a malformed key"))?;
            let token = codec::decode_token(name, v).map_err(|_| bad("is malformed"))?;
            checks.tokens.insert(token.name, token.hash);
        }
        TableId::TokenHashes => {
            let name = std::str::from_utf8(v).map_err(|_| bad("is malformed"))?;
            // Tokens come before their hashes: each hash must be the one its token carries.
            match checks.tokens.get(name) {
                Some(hash) if hash.as_slice() == k => {}
                _ => {
                    return Err(format!(
                        "token_hashes record for token {name:?} does not match a token with \
                         that hash"
                    ));
                }
            }
            checks.token_hashes += 1;
        }
        TableId::Meta => {
            if k == b"key_check" {
                let version = crate::vault::verify_key_check(key, v).map_err(|e| {
                    format!(
                        "the snapshot was not sealed with this master key (id {}): {e}",
                        key.id()
                    )
                })?;
                checks.key_check = Some(version);
            } else if k == INTEGRITY_KEY.as_bytes() {
                checks.integrity_key = Some(v.to_vec());
            } else if k == Anchor::META.as_bytes() {
                checks.anchor = Some(v.to_vec());
            } else if k == PruneAnchor::META.as_bytes() {
                checks.pruned = Some(v.to_vec());
            }
        }
        TableId::Audit => {
            let event = AuditEvent::decode(v).ok_or_else(|| bad("is malformed"))?;
            let chain = checks.chain.get_or_insert_with(|| match integrity {
                // A format 1 snapshot: a trail from before the audit MAC.
                None => ChainCheck::plain(),
                Some(integrity) => crate::audit::check_from_anchors(
                    integrity.audit_key(),
                    checks.anchor.as_deref(),
                    checks.pruned.as_deref(),
                ),
            });
            if !chain.push(Ok(event)) {
                let (seq, problem) = chain.problem().cloned().unwrap_or_default();
                return Err(format!(
                    "the audit chain is broken at event {seq}: {problem}"
                ));
            }
            report.audit_events += 1;
        }
    }
    report.records += 1;
    Ok(())
}

/// The lock a running daemon holds on its data dir (an exclusive `flock` on the database's
/// first journal), taken without waiting. Answers the locked file and whether it was created.
fn lock(live: &Path, data_dir: &Path) -> Result<(File, bool), String> {
    let [journal, _] = journal_paths(live);
    let created = !journal.exists();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&journal)
        .map_err(|e| format!("cannot lock {}: {e}", data_dir.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok((file, created)),
        Err(err) => {
            if created {
                let _ = std::fs::remove_file(&journal);
            }
            if err == rustix::io::Errno::WOULDBLOCK {
                Err(format!(
                    "the vault in {} is in use: stop the daemon before restoring",
                    data_dir.display()
                ))
            } else {
                Err(format!("cannot lock {}: {err}", data_dir.display()))
            }
        }
    }
}

/// Restores the snapshot at `from` into `data_dir` (which must not be in use). An existing
/// vault there is replaced only if `options.replace` is set; it is kept beside as
/// `sharevault.redb.replaced-<unix ms>`, with what its journals held replayed into it.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    key: &MasterKey,
    options: RestoreOptions,
) -> Result<RestoreReport, String> {
    restore_with(from, data_dir, key, options, &mut |_, _, _| {}, &mut |_| {})
}

/// A step of a restore that takes as long as the snapshot is large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The whole file is read to check its MAC: counts MiB.
    Authenticate,
    /// Every record is checked and written: counts records.
    Import,
}

/// Counts the bytes read through it, telling `progress` every 16 MiB.
struct Counted<'p, R> {
    input: R,
    read: u64,
    total: u64,
    progress: &'p mut dyn FnMut(Step, u64, u64),
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        const MIB: u64 = 1 << 20;
        let n = self.input.read(buf)?;
        let before = self.read / (16 * MIB);
        self.read += n as u64;
        if self.read / (16 * MIB) != before || self.read == self.total {
            (self.progress)(Step::Authenticate, self.read / MIB, self.total / MIB);
        }
        Ok(n)
    }
}

/// A snapshot whose MAC has been checked over the whole file.
struct Authenticated {
    body: u64,
    header: snapshot::Header,
    integrity: Option<IntegrityKey>,
    /// When it was taken and its newest event, read in the same pass.
    mark: SnapshotMark,
}

impl Authenticated {
    fn trailer(&self) -> Trailer {
        trailer(self.integrity.as_ref())
    }
}

fn trailer(integrity: Option<&IntegrityKey>) -> Trailer {
    match integrity {
        Some(integrity) => Trailer::Mac(Box::new(integrity.snapshot_mac())),
        None => Trailer::sha256(),
    }
}

fn refused(message: String) -> String {
    format!("restore refused, nothing was changed: {message}")
}

fn open_snapshot(from: &Path) -> Result<File, String> {
    File::open(from).map_err(|e| format!("cannot open {}: {e}", from.display()))
}

/// Step 1: authenticates the whole file before anything else, reading its records' structure
/// and its newest audit event in the same pass. A file whose structure does not read is
/// checked byte by byte instead, so that the refusal names what the MAC shows (altered or
/// truncated).
fn authenticate(
    from: &Path,
    key: &MasterKey,
    options: RestoreOptions,
    progress: &mut dyn FnMut(Step, u64, u64),
) -> Result<Authenticated, String> {
    let len = open_snapshot(from)?
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", from.display()))?
        .len();
    let body = len.saturating_sub(TRAILER);
    let header = RecordReader::new(BufReader::new(open_snapshot(from)?).take(body))
        .map_err(|e| refused(e.to_string()))?
        .header;
    let integrity = match header.version {
        1 if options.accept_unauthenticated => None,
        1 => return Err(refused(SnapshotError::Unauthenticated.to_string())),
        _ => Some(
            IntegrityKey::open(key, &header.sealed_integrity_key).map_err(|e| {
                refused(format!(
                    "the snapshot's integrity key does not open with master key {}: {e}",
                    key.id()
                ))
            })?,
        ),
    };
    let mut mark = SnapshotMark {
        created_at_ms: header.created_at_ms,
        newest: None,
    };
    let counted = Counted {
        input: open_snapshot(from)?,
        read: 0,
        total: len,
        progress: &mut *progress,
    };
    let structured = (|| -> Result<bool, SnapshotError> {
        if len < TRAILER {
            return Err(SnapshotError::Truncated);
        }
        let input = Tee {
            input: BufReader::new(counted).take(body),
            trailer: trailer(integrity.as_ref()),
        };
        let mut reader = RecordReader::new(input)?;
        while let Some((table, _, value)) = reader.next_record()? {
            mark.see(table, &value);
        }
        reader.finish()?;
        let Tee { input, trailer } = reader.into_inner();
        let mut sum = [0u8; TRAILER as usize];
        input
            .into_inner()
            .read_exact(&mut sum)
            .map_err(|e| SnapshotError::Io(e.to_string()))?;
        Ok(trailer.matches(&sum))
    })();
    match structured {
        Ok(true) => {}
        // Whole records ending in the end marker: the file is complete, and altered.
        Ok(false) => {
            return Err(refused(match &integrity {
                Some(_) => SnapshotError::Mac.to_string(),
                None => SnapshotError::Checksum.to_string(),
            }));
        }
        Err(structure) => {
            let input = BufReader::new(open_snapshot(from)?);
            snapshot::verify_trailer(input, len, trailer(integrity.as_ref()))
                .map_err(|e| refused(e.to_string()))?;
            // Authentic but malformed: only the holder of the key could have written it.
            return Err(refused(structure.to_string()));
        }
    }
    Ok(Authenticated {
        body,
        header,
        integrity,
        mark,
    })
}

/// Rows checked one by one as they are read, for a backend to import.
pub type CheckedRows<'r> =
    dyn Iterator<Item = Result<(TableId, crate::store::KeyBuf, Vec<u8>), StoreError>> + 'r;

/// Step 3: checks every record while `import` writes it, authenticating the same bytes
/// again. An error means the import must be abandoned; its message says why.
fn import_checked(
    from: &Path,
    auth: &Authenticated,
    key: &MasterKey,
    progress: &mut dyn FnMut(Step, u64, u64),
    import: &mut dyn FnMut(&mut CheckedRows<'_>) -> Result<u64, StoreError>,
) -> Result<RestoreReport, String> {
    let Authenticated {
        body,
        header,
        integrity,
        ..
    } = auth;
    let mut report = RestoreReport::default();
    let mut checks = Checks::default();
    let mut failure: Option<String> = None;
    let input = Tee {
        input: BufReader::new(open_snapshot(from)?).take(*body),
        trailer: auth.trailer(),
    };
    let mut reader = RecordReader::new(input).map_err(|e| e.to_string())?;
    let total: u64 = header.counts.iter().sum();
    progress(Step::Import, 0, total);
    let mut records = std::iter::from_fn(|| {
        if failure.is_some() {
            return None;
        }
        match reader.next_record() {
            Ok(None) => match reader.finish() {
                Ok(()) => None,
                Err(err) => {
                    failure = Some(err.to_string());
                    Some(Err(StoreError::Closed))
                }
            },
            Ok(Some((table, k, v))) => {
                match check_record(
                    key,
                    integrity.as_ref(),
                    table,
                    &k,
                    &v,
                    &mut checks,
                    &mut report,
                ) {
                    Ok(()) => match snapshot::decode_key(table, &k) {
                        Some(key) if report.records.is_multiple_of(1024) => {
                            progress(Step::Import, report.records, total.max(report.records));
                            Some(Ok((table, key, v)))
                        }
                        Some(key) => Some(Ok((table, key, v))),
                        None => {
                            failure = Some(format!("{} record has a malformed key", table.name()));
                            Some(Err(StoreError::Closed))
                        }
                    },
                    Err(message) => {
                        failure = Some(message);
                        Some(Err(StoreError::Closed))
                    }
                }
            }
            Err(err) => {
                failure = Some(err.to_string());
                Some(Err(StoreError::Closed))
            }
        }
    });
    let imported = import(&mut records);
    if imported.is_ok() {
        progress(Step::Import, report.records, total.max(report.records));
    }
    let Tee { input, trailer } = reader.into_inner();
    let mut sum = [0u8; TRAILER as usize];
    let same_bytes = input
        .into_inner()
        .read_exact(&mut sum)
        .is_ok_and(|()| trailer.matches(&sum));
    match (imported, failure) {
        (_, Some(message)) => Err(message),
        (Err(err), None) => Err(format!("cannot write the restored database: {err}")),
        (Ok(_), None) if !same_bytes => {
            Err("the snapshot file changed while it was restored".into())
        }
        (Ok(_), None) if checks.key_check.is_none() => {
            Err("the snapshot has no key check record".into())
        }
        (Ok(_), None) if integrity.is_none() && checks.key_check != Some(1) => Err(
            "the snapshot is in format 1 but its vault has an integrity key: it was converted \
             from an authenticated one"
                .into(),
        ),
        (Ok(_), None) if checks.token_hashes != checks.tokens.len() as u64 => {
            Err("a token has no token_hashes record".into())
        }
        (Ok(_), None)
            if integrity.is_some()
                && checks.integrity_key.as_deref() != Some(&header.sealed_integrity_key[..]) =>
        {
            Err("the snapshot's integrity key record does not match its header".into())
        }
        (Ok(_), None) if integrity.is_some() && checks.anchor.is_none() => {
            Err("the snapshot has no audit anchor record".into())
        }
        (Ok(_), None) => Ok(report),
    }
}

/// Checks what a restore would replace against the snapshot, once both are known and before
/// anything is written: tells `shown`, and refuses an older snapshot unless allowed.
fn check_freshness(
    auth: &Authenticated,
    live: Live,
    options: RestoreOptions,
    shown: &mut dyn FnMut(&Freshness),
) -> Result<(), String> {
    let freshness = Freshness {
        snapshot: auth.mark.clone(),
        live,
    };
    shown(&freshness);
    if freshness.older() && !options.allow_older {
        return Err(refused(freshness.refusal()));
    }
    Ok(())
}

/// Restores the snapshot at `from` into the PostgreSQL database of `store`, in one
/// transaction that holds the database's write lock: every record is checked before it
/// commits, and a refused snapshot leaves the database as it was. A database that already
/// holds a vault is replaced only with `options.replace`, and one that holds writes the
/// snapshot lacks only with `options.allow_older`; `shown` is told what is replaced before
/// anything is.
pub fn restore_into_postgres(
    from: &Path,
    store: &crate::store::postgres::PgStore,
    key: &MasterKey,
    options: RestoreOptions,
    progress: &mut dyn FnMut(Step, u64, u64),
    shown: &mut dyn FnMut(&Freshness),
) -> Result<RestoreReport, String> {
    let auth = authenticate(from, key, options, progress)?;
    let mut stale: Option<String> = None;
    let begun = store.begin_import(options.replace, &mut |live| {
        let live = match live {
            None => Live::Empty,
            Some(reader) => Live::read(reader, &auth.mark),
        };
        check_freshness(&auth, live, options, &mut *shown).map_err(|message| {
            stale = Some(message);
            StoreError::Closed
        })
    });
    let mut import = match (begun, stale) {
        (_, Some(message)) => return Err(message),
        (begun, None) => begun.map_err(|e| e.to_string())?,
    };
    let report = import_checked(from, &auth, key, progress, &mut |rows| import.write(rows))
        .map_err(refused)?;
    import
        .commit()
        .map_err(|e| format!("cannot commit the restored vault: {e}"))?;
    Ok(report)
}

/// As [`restore`], telling `progress` (step, done, total) as the file is authenticated and as
/// the records are imported, and `shown` what is replaced before anything is. A vault that
/// holds writes the snapshot lacks is replaced only with `options.allow_older`.
pub fn restore_with(
    from: &Path,
    data_dir: &Path,
    key: &MasterKey,
    options: RestoreOptions,
    progress: &mut dyn FnMut(Step, u64, u64),
    shown: &mut dyn FnMut(&Freshness),
) -> Result<RestoreReport, String> {
    let auth = authenticate(from, key, options, progress)?;

    // 2. Lock the data dir for the rest of the restore.
    crate::secrets::prepare_data_dir(data_dir)?;
    let dir_lock = crate::data_dir::DataDirLock::acquire(data_dir, "restoring")?;
    let live = data_dir.join(DATABASE_FILE);
    // And the journal's lock, which daemons of earlier versions hold.
    let (lock, lock_created) = lock(&live, data_dir)?;
    let [journal0, journal1] = journal_paths(&live);
    let unlock = |lock: File| {
        drop(lock);
        if lock_created {
            let _ = std::fs::remove_file(&journal0);
        }
    };
    if live.exists() && !options.replace {
        unlock(lock);
        return Err(format!(
            "{} already holds a vault; pass --replace to swap it for the snapshot \
             (the current file is kept beside it)",
            data_dir.display()
        ));
    }
    // The vault it replaces, as its next open would see it (journals replayed in memory).
    let live_vault = if live.exists() {
        match RedbStore::peek(&live) {
            Ok(Some(peeked)) => match peeked.read() {
                Ok(reader) => Live::read(&*reader, &auth.mark),
                Err(err) => Live::Unreadable(err.to_string()),
            },
            Ok(None) => Live::Empty,
            Err(err) => Live::Unreadable(err.to_string()),
        }
    } else {
        Live::Empty
    };
    if let Err(message) = check_freshness(&auth, live_vault, options, shown) {
        unlock(lock);
        return Err(message);
    }

    // 3. Check every record while importing it into a new file beside the live one.
    let temp = data_dir.join(format!("{DATABASE_FILE}.restoring"));
    let _ = std::fs::remove_file(&temp);
    let report = match import_checked(from, &auth, key, progress, &mut |rows| {
        RedbStore::import(&temp, rows)
    }) {
        Ok(report) => report,
        Err(message) => {
            let _ = std::fs::remove_file(&temp);
            unlock(lock);
            return Err(refused(message));
        }
    };

    // 4. Swap the new file in. The replaced file takes its journals with it, so that what they
    // hold is never replayed into the restored vault; the lock is held until the end.
    let aside = live.exists().then(|| {
        data_dir.join(format!(
            "{DATABASE_FILE}.replaced-{}",
            crate::vault::now_ms()
        ))
    });
    let journals_aside = aside.as_deref().map(journal_paths);
    let move_journal = |from: &Path, to: Option<&Path>| -> Result<(), String> {
        let moved = match to {
            Some(to) => std::fs::rename(from, to),
            None => std::fs::remove_file(from),
        };
        match moved {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot move the old vault's journal aside: {e}"))
            }
            _ => Ok(()),
        }
    };
    if let Some(aside) = &aside {
        std::fs::rename(&live, aside)
            .map_err(|e| format!("cannot move the old vault aside: {e}"))?;
    }
    move_journal(&journal1, journals_aside.as_ref().map(|j| j[1].as_path()))?;
    // The log holds records of the replaced file only: it goes with it.
    move_journal(
        &crate::store::wal::log_path(&live),
        aside.as_deref().map(crate::store::wal::log_path).as_deref(),
    )?;
    std::fs::rename(&temp, &live).map_err(|e| format!("cannot swap the restored vault in: {e}"))?;
    move_journal(&journal0, journals_aside.as_ref().map(|j| j[0].as_path()))?;
    File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", data_dir.display()))?;
    drop(lock);
    drop(dir_lock);
    // What the replaced vault's journals and log held goes into its file, so that it stands
    // alone.
    if let Some(aside) = &aside
        && let Err(err) = crate::store::redb::RedbStore::settle(aside)
    {
        tracing::warn!(error = %err, "the replaced vault's log could not be replayed into it");
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
