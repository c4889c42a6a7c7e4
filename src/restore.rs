//! Offline restore of a snapshot into a data dir.
//!
//! The snapshot's checksum is verified first, then every record is checked while it is
//! written into a new database file beside the live one: shares and cipherTexts must open
//! with the master key under their own table, client and method; pairs, tokens and audit
//! events must decode, and the audit chain must be intact. Only when everything passed is
//! the new file swapped in (rename, then the directory fsynced). On any failure the new file
//! is removed and the data dir is left exactly as it was.

use crate::audit::{AuditEvent, ChainCheck};
use crate::crypto::{MasterKey, RecordAad};
use crate::secrets::DATABASE_FILE;
use crate::snapshot::{self, RecordReader, TableId};
use crate::store::{StoreError, redb::RedbStore};
use crate::vault::codec;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// What a restore wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub records: u64,
    pub custodian_shares: u64,
    pub client_shares: u64,
    pub audit_events: u64,
}

/// Checks one record; `chain` checks the audit events in the order they come.
fn check_record(
    key: &MasterKey,
    table: TableId,
    k: &[u8],
    v: &[u8],
    chain: &mut ChainCheck,
    report: &mut RestoreReport,
    key_checked: &mut bool,
) -> Result<(), String> {
    let bad = |what: &str| format!("{} record {what}", table.name());
    match table {
        TableId::Custodian | TableId::Client => {
            let (client, method) =
                snapshot::split_client_key(k).ok_or_else(|| bad("has a malformed key"))?;
            let record = codec::decode_record(v).map_err(|_| bad("is malformed"))?;
            let aad = RecordAad {
                table: table.name(),
                client_id: client,
                backup_method: method,
            };
            let plain = key
                .open(&aad, &record.envelope)
                .map_err(|e| format!("{}/{client}/{method} does not open: {e}", table.name()))?;
            std::str::from_utf8(&plain)
                .map_err(|_| format!("{}/{client}/{method} is not text", table.name()))?;
            if table == TableId::Custodian {
                report.custodian_shares += 1;
            } else {
                report.client_shares += 1;
            }
        }
        TableId::Pairs => {
            let (_, id) =
                snapshot::split_client_key(k).ok_or_else(|| bad("has a malformed key"))?;
            codec::decode_pair(id, v).map_err(|_| bad("is malformed"))?;
        }
        TableId::Tokens => {
            let name = std::str::from_utf8(k).map_err(|_| bad("has a malformed key"))?;
            codec::decode_token(name, v).map_err(|_| bad("is malformed"))?;
        }
        TableId::TokenHashes => {
            if k.len() != 32 || std::str::from_utf8(v).is_err() {
                return Err(bad("is malformed"));
            }
        }
        TableId::Meta => {
            if k == b"key_check" {
                crate::vault::verify_key_check(key, v).map_err(|e| {
                    format!(
                        "the snapshot was not sealed with this master key (id {}): {e}",
                        key.id()
                    )
                })?;
                *key_checked = true;
            }
        }
        TableId::Audit => {
            let event = AuditEvent::decode(v).ok_or_else(|| bad("is malformed"))?;
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

/// Restores the snapshot at `from` into `data_dir` (which must not be in use). An existing
/// vault there is replaced only if `replace` is set; it is kept beside as
/// `sharevault.redb.replaced-<unix ms>`.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    key: &MasterKey,
    replace: bool,
) -> Result<RestoreReport, String> {
    crate::secrets::prepare_data_dir(data_dir)?;
    let live = data_dir.join(DATABASE_FILE);
    if live.exists() {
        // What the journals hold is replayed into the file before it is moved aside; a
        // running daemon holds the journal's lock.
        match crate::store::journal::JournaledFile::settle(&live) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(format!(
                    "the vault in {} is in use: stop the daemon before restoring",
                    data_dir.display()
                ));
            }
            Err(err) => return Err(format!("cannot replay the vault's journal: {err}")),
            Ok(()) => {}
        }
        match redb::Database::open(&live) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(format!(
                    "the vault in {} is in use: stop the daemon before restoring",
                    data_dir.display()
                ));
            }
            _ if !replace => {
                return Err(format!(
                    "{} already holds a vault; pass --replace to swap it for the snapshot \
                     (the current file is kept beside it)",
                    data_dir.display()
                ));
            }
            _ => {}
        }
    }
    let open = || File::open(from).map_err(|e| format!("cannot open {}: {e}", from.display()));
    let len = open()?
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", from.display()))?
        .len();
    snapshot::verify_checksum(BufReader::new(open()?), len).map_err(|e| e.to_string())?;
    let mut reader = RecordReader::new(BufReader::new(open()?).take(len.saturating_sub(32)))
        .map_err(|e| e.to_string())?;

    let temp = data_dir.join(format!("{DATABASE_FILE}.restoring"));
    let _ = std::fs::remove_file(&temp);
    let mut report = RestoreReport::default();
    let mut chain = ChainCheck::default();
    let mut key_checked = false;
    let mut failure: Option<String> = None;
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
                    table,
                    &k,
                    &v,
                    &mut chain,
                    &mut report,
                    &mut key_checked,
                ) {
                    Ok(()) => match snapshot::decode_key(table, &k) {
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
    let imported = RedbStore::import(&temp, &mut records);
    let outcome = match (imported, failure) {
        (_, Some(message)) => Err(message),
        (Err(err), None) => Err(format!("cannot write the restored database: {err}")),
        (Ok(_), None) if !key_checked => Err("the snapshot has no key check record".into()),
        (Ok(_), None) => Ok(()),
    };
    if let Err(message) = outcome {
        let _ = std::fs::remove_file(&temp);
        return Err(format!("restore refused, nothing was changed: {message}"));
    }
    if live.exists() {
        let aside = data_dir.join(format!(
            "{DATABASE_FILE}.replaced-{}",
            crate::vault::now_ms()
        ));
        std::fs::rename(&live, &aside)
            .map_err(|e| format!("cannot move the old vault aside: {e}"))?;
    }
    std::fs::rename(&temp, &live).map_err(|e| format!("cannot swap the restored vault in: {e}"))?;
    File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", data_dir.display()))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEntry;
    use sha2::{Digest, Sha256};

    /// A snapshot of nothing but `events`, under `key`'s id.
    fn snapshot_of(key: &MasterKey, events: &[AuditEvent]) -> Vec<u8> {
        let header = snapshot::Header {
            created_at_ms: 1,
            key_id: key.id().to_bytes(),
            counts: [0, 0, 0, 0, 0, 0, events.len() as u64],
        };
        let mut out = header.encode();
        for e in events {
            out.extend(snapshot::record(
                TableId::Audit,
                &e.seq.to_be_bytes(),
                &e.encode(),
            ));
        }
        out.extend(snapshot::end());
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    #[test]
    fn an_edited_audit_event_is_refused_by_its_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::from_file_contents(&[7u8; 32]).unwrap();
        let mut events: Vec<AuditEvent> = Vec::new();
        for _ in 0..3 {
            let entry = AuditEntry {
                time_ms: 1,
                actor: "webhook".into(),
                action: "backup",
                client_id: "c1".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                outcome: None,
            };
            let (seq, hash) = events.last().map_or((0, [0; 32]), |e| (e.seq, e.hash));
            events.push(AuditEvent::chain(&entry, "ok", seq, hash));
        }
        events[1].actor = "mallory".into();
        let file = dir.path().join("edited.snapshot");
        std::fs::write(&file, snapshot_of(&key, &events)).unwrap();
        let data_dir = dir.path().join("data");
        let err = restore(&file, &data_dir, &key, false).unwrap_err();
        assert!(
            err.contains("the audit chain is broken at event 2: its content does not match"),
            "{err}"
        );
        assert!(
            !data_dir.join(DATABASE_FILE).exists(),
            "nothing was restored"
        );
    }
}
