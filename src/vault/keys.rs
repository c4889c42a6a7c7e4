//! The master key: rotation (re-wrapping every data key) and verification of every record.

use super::cluster::{ACK_WITHIN, REKEY_HANDOVER, REKEY_SWITCH};
use super::rules::{Rewrap, WriteOp};
use super::{
    KEY_CHECK, KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT, KEY_CHECK_PLAINTEXT_V2, REKEY_TARGET,
    REKEY_TARGET_AAD, Vault, crypto_failure, entry, records,
};
use crate::crypto::{MasterKey, RecordAad};
use crate::error::VaultError;
use crate::integrity::INTEGRITY_KEY;
use crate::seal::{SEALED_ROOT_KEY, SEALED_ROOT_KEY_NEXT};
use crate::store::cluster::Member;
use crate::store::{Store, StoreError, TableId};
use records::{SealedRecord, SealedRow};
use std::sync::{Arc, PoisonError};

/// `HOST (pid N), ...`, for messages.
fn describe(daemons: &[Member]) -> String {
    let names: Vec<String> = daemons.iter().map(Member::describe).collect();
    names.join(", ")
}

/// Every sealed record of a share table, a page at a time, in key order.
struct Pages<'a> {
    store: &'a dyn Store,
    table: TableId,
    after: Option<(String, String)>,
    size: usize,
}

impl<'a> Pages<'a> {
    fn new(store: &'a dyn Store, table: TableId, size: usize) -> Self {
        Self {
            store,
            table,
            after: None,
            size,
        }
    }

    fn next(&mut self) -> Result<Option<Vec<SealedRow>>, StoreError> {
        let page = records::sealed_records(
            &*self.store.read()?,
            self.table,
            self.after.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
            self.size,
        )?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        self.after = Some((last.0.clone(), last.1.clone()));
        Ok(Some(page))
    }
}

/// What [`Vault::verify_records`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub custodian_shares: u64,
    pub client_shares: u64,
    /// Kept earlier shares and cipherTexts.
    pub versions: u64,
    pub failed: u64,
    /// `table/client/method: reason`, for the first 100 failures.
    pub failures: Vec<String>,
}

impl Vault {
    /// Re-wraps every record's data key under `new`, while serving: new writes are sealed
    /// under `new` from the start; records are re-wrapped page by page (a record rewritten
    /// meanwhile is left as written). Resumable: records already under `new` are skipped, and
    /// the rotation is recorded so that an interrupted one is noticed at start. When it
    /// finishes, the data dir's key check is sealed under `new` and the old key is no longer
    /// needed. `sealed` is the new key's sealed form under a token seal ([`crate::seal`]):
    /// recorded as the rotation's target at its start, and as the vault's sealed root key when
    /// it finishes, in the commit that moves the key check. `progress` is told (done, total)
    /// after each page; answers the total.
    pub async fn rekey(
        &self,
        new: MasterKey,
        sealed: Option<Vec<u8>>,
        actor: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, VaultError> {
        let _one_at_a_time = self.rekeying.lock().await;
        let new = Arc::new(new);
        let new_id = new.id();
        let target = new
            .seal(&REKEY_TARGET_AAD, KEY_CHECK_PLAINTEXT)
            .map_err(crypto_failure)?;
        let several = self.store.cluster().is_some();
        let resuming = records::meta(&*self.store.read()?, REKEY_TARGET)?.is_some();
        let mut set = vec![(REKEY_TARGET.into(), target)];
        match &sealed {
            // Under a token seal the other daemons unseal the new root key with their token.
            Some(sealed) => set.push((SEALED_ROOT_KEY_NEXT.into(), sealed.clone())),
            None if several => set.push((REKEY_HANDOVER.into(), self.handover(&new)?)),
            None => {}
        }
        self.write(
            WriteOp::Meta {
                set,
                remove: Vec::new(),
            },
            Some(entry(actor, "rekey_start", "", &new_id.to_string())),
        )
        .await?;
        if several {
            // Every live daemon holds the new key before anything is sealed under it.
            self.hold(Arc::clone(&new));
            let id = new_id.to_string();
            if let Err(lagging) = self.await_daemons(move |m| m.held_keys.contains(&id)).await {
                return Err(self.call_off(new_id, resuming, actor, &lagging).await);
            }
            self.write(
                WriteOp::Meta {
                    set: vec![(REKEY_SWITCH.into(), new_id.to_string().into_bytes())],
                    remove: Vec::new(),
                },
                None,
            )
            .await?;
        }
        {
            let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
            if keys.primary.id() != new.id() {
                let old = std::mem::replace(&mut keys.primary, Arc::clone(&new));
                keys.older.retain(|k| k.id() != new.id());
                keys.older.push(old);
            }
        }
        if several {
            // ... and every live daemon seals under it before the records are re-wrapped, so
            // that the sweeps end.
            let id = new_id.to_string();
            if let Err(lagging) = self.await_daemons(move |m| m.primary_key == id).await {
                tracing::error!(
                    daemons = %describe(&lagging),
                    "a master key rotation stopped: these daemons did not switch to the new key \
                     in time; run `sharevault rekey` again with the same key to finish it"
                );
                return Err(VaultError::Unavailable);
            }
        }
        let counts = records::counts(&*self.store.read()?)?;
        let total = counts.custodian_shares + counts.client_shares + counts.versions;
        // Sweep until a sweep finds nothing under another key: a write sealed just before the
        // switch may land after its page was re-wrapped, and the next sweep catches it.
        for sweep in 0.. {
            let stale = self
                .rewrap_sweep(&new, sweep == 0, total, &mut progress)
                .await?;
            if stale == 0 {
                break;
            }
            if sweep == 8 {
                return Err(VaultError::Unavailable);
            }
        }
        let check = new
            .seal(&KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT_V2)
            .map_err(crypto_failure)?;
        let integrity = self.integrity.seal(&new).map_err(crypto_failure)?;
        let mut set = vec![(KEY_CHECK.into(), check), (INTEGRITY_KEY.into(), integrity)];
        let mut remove = vec![
            REKEY_TARGET.to_owned(),
            REKEY_HANDOVER.to_owned(),
            REKEY_SWITCH.to_owned(),
        ];
        match sealed {
            Some(sealed) => {
                set.push((SEALED_ROOT_KEY.into(), sealed));
                remove.push(SEALED_ROOT_KEY_NEXT.into());
            }
            None => remove.push(SEALED_ROOT_KEY.into()),
        }
        self.write(
            WriteOp::Meta { set, remove },
            Some(entry(actor, "rekey_finish", "", &new.id().to_string())),
        )
        .await?;
        progress(total, total);
        Ok(total)
    }

    /// Calls off a rotation that a live daemon did not follow in time: nothing was sealed
    /// under the new key yet, so the rotation's records are removed (unless it resumes an
    /// interrupted one, which stays to be finished) and the vault goes on under its key.
    async fn call_off(
        &self,
        new: crate::crypto::KeyId,
        resuming: bool,
        actor: &str,
        lagging: &[Member],
    ) -> VaultError {
        if !resuming {
            let removed = self
                .write(
                    WriteOp::Meta {
                        set: Vec::new(),
                        remove: vec![
                            REKEY_TARGET.into(),
                            REKEY_HANDOVER.into(),
                            SEALED_ROOT_KEY_NEXT.into(),
                        ],
                    },
                    Some(entry(actor, "rekey_abort", "", &new.to_string())),
                )
                .await;
            if removed.is_ok() {
                self.forget(new);
            }
        }
        let who = if lagging.is_empty() {
            "the registry of daemons could not be read".to_owned()
        } else {
            format!("{} did not take it", describe(lagging))
        };
        tracing::error!(master_key_id = %new, %who, "a master key rotation was called off");
        VaultError::FailedPrecondition(format!(
            "the new master key did not reach every live daemon within {} s ({who}); the \
             rotation was called off before any record was re-wrapped",
            ACK_WITHIN.as_secs()
        ))
    }

    /// Re-wraps every record not yet under `new`; answers how many it found.
    async fn rewrap_sweep(
        &self,
        new: &MasterKey,
        report: bool,
        total: u64,
        progress: &mut impl FnMut(u64, u64),
    ) -> Result<u64, VaultError> {
        let (mut done, mut stale) = (0u64, 0u64);
        for table in [TableId::Custodian, TableId::Client, TableId::Versions] {
            let mut pages = Pages::new(self.store.as_ref(), table, 512);
            while let Some(page) = pages.next()? {
                done += page.len() as u64;
                let mut batch = Vec::new();
                for (client_id, backup_method, record) in page {
                    let current = MasterKey::envelope_key_id(&record.envelope)
                        .map_err(|_| VaultError::Corrupt)?;
                    if current == new.id() {
                        continue;
                    }
                    let (name, method) = records::envelope_binding(table, &backup_method)
                        .ok_or(VaultError::Corrupt)?;
                    let aad = RecordAad {
                        table: name,
                        client_id: &client_id,
                        backup_method: method,
                    };
                    let envelope = self
                        .key_for(&record.envelope)
                        .and_then(|old| old.rewrap(&aad, &record.envelope, new))
                        .map_err(|err| {
                            tracing::error!(table = name, client = %client_id, %backup_method, error = %err, "cannot re-wrap a record");
                            crypto_failure(err)
                        })?;
                    let replacement = SealedRecord {
                        envelope,
                        ..record.clone()
                    };
                    batch.push(Rewrap {
                        table,
                        client_id,
                        backup_method,
                        expected: record,
                        replacement,
                    });
                }
                stale += batch.len() as u64;
                if !batch.is_empty() {
                    self.write(WriteOp::Rewrap(batch), None).await?;
                }
                if report {
                    progress(done.min(total), total);
                }
            }
        }
        Ok(stale)
    }

    /// Opens every share and cipherText; answers the counts per table and what failed.
    pub fn verify_records(&self) -> Result<VerifyReport, VaultError> {
        self.verify_records_with(&mut |_, _| {})
    }

    /// As [`Vault::verify_records`], telling `progress` (done, total) after each page; the
    /// total is the record count when the check starts.
    pub fn verify_records_with(
        &self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport, VaultError> {
        let counts = records::counts(&*self.store.read()?)?;
        let total = counts.custodian_shares + counts.client_shares + counts.versions;
        progress(0, total);
        let mut report = VerifyReport::default();
        for table in [TableId::Custodian, TableId::Client, TableId::Versions] {
            let mut pages = Pages::new(self.store.as_ref(), table, 1024);
            while let Some(page) = pages.next()? {
                for (client_id, backup_method, record) in page {
                    let Some((name, method)) = records::envelope_binding(table, &backup_method)
                    else {
                        continue;
                    };
                    let aad = RecordAad {
                        table: name,
                        client_id: &client_id,
                        backup_method: method,
                    };
                    let opened = self
                        .key_for(&record.envelope)
                        .and_then(|key| key.open(&aad, &record.envelope));
                    let name = table.name();
                    match table {
                        TableId::Custodian => report.custodian_shares += 1,
                        TableId::Client => report.client_shares += 1,
                        _ => report.versions += 1,
                    }
                    if let Err(err) = opened {
                        report.failed += 1;
                        if report.failures.len() < 100 {
                            report
                                .failures
                                .push(format!("{name}/{client_id}/{backup_method}: {err}"));
                        }
                    }
                }
                let done = report.custodian_shares + report.client_shares + report.versions;
                progress(done, total.max(done));
            }
        }
        Ok(report)
    }
}
