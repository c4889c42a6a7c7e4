//! Custodian shares (the webhook) and client shares (cipherTexts): sealed on the way in,
//! opened on the way out, every read of share material audited before it is answered.

use super::records::{self, SealedRecord};
use super::rules::{WriteOp, WriteOutcome};
use super::{Vault, crypto_failure, entry, now_ms};
use super::{codec, versions};
use crate::crypto::RecordAad;
use crate::error::{Field, VaultError};
use crate::store::TableId;
use crate::validate::{self, UNKNOWN_METHOD};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A custodian share as the webhook delivers it.
pub struct BackupInput<'a> {
    pub client_id: &'a str,
    pub backup_method: &'a str,
    pub share: &'a str,
    pub backup_share_pair_id: Option<&'a str>,
}

/// A custodian share as read back.
pub struct FetchedShare {
    pub share: Zeroizing<String>,
    pub stored_at_ms: u64,
}

/// A client share as read back.
pub struct ClientShare {
    pub backup_method: String,
    pub cipher_text: Zeroizing<String>,
    pub created_at_ms: u64,
    /// The pairs it completed when it was stored: its backup.
    pub backup_share_pair_ids: Vec<String>,
}

/// A custodian share read for eject, with the pair it belongs to.
pub struct EjectedShare {
    pub share: Zeroizing<String>,
    pub backup_share_pair_id: Option<String>,
}

pub use super::versions::ClientShareInfo;

/// The `backupSharePairId` a share's JSON carries, if any.
fn embedded_pair_id(share: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "backupSharePairId")]
        id: Option<String>,
    }
    serde_json::from_str::<Probe>(share).ok()?.id
}

impl Vault {
    /// Stores a custodian share durably. Returns the id of the pair it started, if any.
    pub async fn backup(
        &self,
        input: BackupInput<'_>,
        actor: &str,
    ) -> Result<Option<String>, VaultError> {
        validate::client_id(input.client_id)?;
        let method = validate::backup_method(input.backup_method)?;
        validate::secret_text(Field::Share, input.share, self.limits.max_share_bytes)?;
        let pair_id = match input.backup_share_pair_id.filter(|id| !id.is_empty()) {
            Some(id) => {
                validate::pair_id(Field::BackupSharePairId, id)?;
                Some(id.to_owned())
            }
            None => embedded_pair_id(input.share).filter(|id| {
                let ok = validate::pair_id(Field::BackupSharePairId, id).is_ok();
                if !ok {
                    tracing::warn!(
                        client = input.client_id,
                        "the share's backupSharePairId is not a valid id; storing the share \
                         without a pair"
                    );
                }
                ok
            }),
        };
        let aad = RecordAad {
            table: TableId::Custodian.name(),
            client_id: input.client_id,
            backup_method: method,
        };
        let envelope = self
            .primary()
            .seal(&aad, input.share.as_bytes())
            .map_err(crypto_failure)?;
        self.warm_for_write(TableId::Custodian, input.client_id, method)
            .await;
        let unchanged = self
            .unchanged(
                TableId::Custodian,
                input.client_id,
                method,
                input.share,
                pair_id.as_deref(),
            )
            .await;
        self.write(
            WriteOp::PutCustodianShare {
                client_id: input.client_id.to_owned(),
                backup_method: method.to_owned(),
                record: SealedRecord {
                    created_at_ms: now_ms(),
                    seq: 0,
                    pair_id: pair_id.clone(),
                    covers: Vec::new(),
                    envelope,
                },
                unchanged,
                retention: self.retention,
            },
            Some(entry(actor, "backup", input.client_id, method)),
        )
        .await?;
        Ok(pair_id)
    }

    /// The stored bytes of the current share under (client, method) if it holds exactly
    /// `text` (compared in constant time) with the same pair: a write of `text` would then be
    /// a repeat. A current share that does not open is not a match.
    async fn unchanged(
        &self,
        table: TableId,
        client_id: &str,
        method: &str,
        text: &str,
        pair_id: Option<&str>,
    ) -> Option<Vec<u8>> {
        let (id, wanted) = (client_id.to_owned(), method.to_owned());
        // A store that cannot be read now is the write's to report (and a failed write is
        // what makes the store recover), so a failed read here is simply no match.
        let current = self
            .read_store(client_id, None, move |store| {
                store.get(table, crate::store::Key::Client(&id, &wanted))
            })
            .await;
        let Ok(Some(bytes)) = current else {
            return None;
        };
        let record = codec::decode_record(&bytes).ok()?;
        if record.pair_id.as_deref() != pair_id {
            return None;
        }
        let aad = RecordAad {
            table: table.name(),
            client_id,
            backup_method: method,
        };
        let plain = self
            .key_for(&record.envelope)
            .and_then(|key| key.open(&aad, &record.envelope))
            .ok()?;
        let same: bool = plain.as_slice().ct_eq(text.as_bytes()).into();
        same.then_some(bytes)
    }

    /// Every custodian share of a client, byte for byte, ordered by backup method, and the
    /// last completed backup of any method whose newest one is not completed (see
    /// [`versions::fetch_rows`]). A record that fails its integrity check is left out (its
    /// ids logged and counted); only when none opens is the answer `DataLoss`.
    pub async fn fetch(
        &self,
        client_id: &str,
        actor: &str,
    ) -> Result<Vec<FetchedShare>, VaultError> {
        validate::client_id(client_id)?;
        let id = client_id.to_owned();
        let read = self
            .read_store(client_id, Some(versions::FETCH_TABLES), move |store| {
                versions::fetch_rows(store, &id)
            })
            .await
            .and_then(|rows| self.open_custodian_shares(client_id, rows));
        let mut audit = entry(actor, "fetch", client_id, "");
        let read = read.map(|(shares, damaged)| {
            if damaged > 0 {
                audit.outcome = Some(format!("ok: {damaged} damaged record(s) left out"));
            }
            shares
        });
        self.audited(read, audit).await
    }

    /// Opens the rows of a fetch; answers the shares and how many were damaged.
    fn open_custodian_shares(
        &self,
        client_id: &str,
        rows: versions::FetchRows,
    ) -> Result<(Vec<FetchedShare>, u64), VaultError> {
        for method in &rows.damaged {
            tracing::error!(
                client = client_id,
                key = %method,
                "a stored custodian share record is malformed; it is not served"
            );
        }
        let mut damaged = rows.damaged.len() as u64;
        let mut shares = Vec::with_capacity(rows.rows.len());
        for m in &rows.rows {
            match self.open_record(
                TableId::Custodian.name(),
                client_id,
                &m.backup_method,
                &m.record,
            ) {
                Ok(share) => shares.push(FetchedShare {
                    share,
                    stored_at_ms: m.record.created_at_ms,
                }),
                Err(VaultError::Corrupt) => damaged += 1,
                Err(err) => return Err(err),
            }
        }
        if damaged > 0 {
            self.metrics.damaged_records(damaged);
            if shares.is_empty() {
                return Err(VaultError::Corrupt);
            }
        }
        Ok((shares, damaged))
    }

    /// One custodian share, for eject (the caller must hold the eject role). With `pair_id`,
    /// the share of that pair, current or kept; without, the current share unless its pair is
    /// not completed and a kept share of a completed pair is held, then the newest such (the
    /// way [`Vault::fetch`] falls back).
    pub async fn custodian_share(
        &self,
        client_id: &str,
        backup_method: &str,
        pair_id: Option<&str>,
        actor: &str,
    ) -> Result<EjectedShare, VaultError> {
        validate::client_id(client_id)?;
        let method = validate::backup_method(backup_method)?;
        let pair_id = pair_id.filter(|id| !id.is_empty());
        if let Some(id) = pair_id {
            validate::pair_id(Field::BackupSharePairId, id)?;
        }
        let (id, wanted, pair) = (
            client_id.to_owned(),
            method.to_owned(),
            pair_id.map(str::to_owned),
        );
        let read = self
            .read_store(client_id, Some(versions::FETCH_TABLES), move |store| {
                versions::eject_row(store, &id, &wanted, pair.as_deref())
            })
            .await
            .and_then(|record| {
                record.ok_or_else(|| {
                    VaultError::NotFound(match pair_id {
                        Some(_) => "no custodian backup share of this backup share pair is held \
                                    for this client and method"
                            .into(),
                        None => {
                            "no custodian backup share is held for this client and method".into()
                        }
                    })
                })
            })
            .and_then(|record| {
                let share =
                    self.open_record(TableId::Custodian.name(), client_id, method, &record)?;
                Ok(EjectedShare {
                    share,
                    backup_share_pair_id: record.pair_id,
                })
            });
        self.audited(read, entry(actor, "get_custodian_share", client_id, method))
            .await
    }

    /// Stores a client share durably; returns the pairs it completed.
    pub async fn store_client_share(
        &self,
        client_id: &str,
        backup_method: &str,
        cipher_text: &str,
        actor: &str,
    ) -> Result<Vec<String>, VaultError> {
        validate::client_id(client_id)?;
        let method = validate::backup_method(backup_method)?;
        validate::secret_text(
            Field::CipherText,
            cipher_text,
            self.limits.max_cipher_text_bytes,
        )?;
        let aad = RecordAad {
            table: TableId::Client.name(),
            client_id,
            backup_method: method,
        };
        let envelope = self
            .primary()
            .seal(&aad, cipher_text.as_bytes())
            .map_err(crypto_failure)?;
        self.warm_for_write(TableId::Client, client_id, method)
            .await;
        let unchanged = self
            .unchanged(TableId::Client, client_id, method, cipher_text, None)
            .await;
        let outcome = self
            .write(
                WriteOp::PutClientShare {
                    client_id: client_id.to_owned(),
                    backup_method: method.to_owned(),
                    record: SealedRecord {
                        created_at_ms: now_ms(),
                        seq: 0,
                        pair_id: None,
                        covers: Vec::new(),
                        envelope,
                    },
                    unchanged,
                    retention: self.retention,
                },
                Some(entry(actor, "store_client_share", client_id, method)),
            )
            .await?;
        Ok(match outcome {
            WriteOutcome::PairsCompleted(ids) => ids,
            _ => Vec::new(),
        })
    }

    /// The client share for a method, or, with `pair_id`, the client share (current or kept)
    /// of that backup share pair, under whichever method covers it (`backup_method` may then
    /// be empty). Like Portal's example server, a share stored under the legacy method
    /// `UNKNOWN` answers when the method itself has none.
    pub async fn client_share(
        &self,
        client_id: &str,
        backup_method: &str,
        pair_id: Option<&str>,
        actor: &str,
    ) -> Result<ClientShare, VaultError> {
        validate::client_id(client_id)?;
        let pair_id = pair_id.filter(|id| !id.is_empty());
        if let Some(pair) = pair_id {
            validate::pair_id(Field::BackupSharePairId, pair)?;
            if !backup_method.is_empty() {
                validate::backup_method(backup_method)?;
            }
            let (id, pair) = (client_id.to_owned(), pair.to_owned());
            let read = self
                .read_store(
                    client_id,
                    Some(versions::CLIENT_SHARE_TABLES),
                    move |store| versions::client_share_of_pair(store, &id, &pair),
                )
                .await
                .and_then(|found| {
                    let (method, record) = found.ok_or_else(|| {
                        VaultError::NotFound(
                            "no client backup share of this backup share pair is held for this \
                             client"
                                .into(),
                        )
                    })?;
                    self.client_share_from(client_id, &method, record)
                });
            let method = read.as_ref().map_or("", |s| s.backup_method.as_str());
            let audit = entry(actor, "get_client_share", client_id, method);
            return self.audited(read, audit).await;
        }
        let method = validate::backup_method(backup_method)?;
        let (id, wanted) = (client_id.to_owned(), method.to_owned());
        let read = self
            .read_store(client_id, Some(&[TableId::Client]), move |store| {
                let mut found =
                    records::share(store, TableId::Client, &id, &wanted)?.map(|r| (false, r));
                if found.is_none() && wanted != UNKNOWN_METHOD {
                    found = records::share(store, TableId::Client, &id, UNKNOWN_METHOD)?
                        .map(|r| (true, r));
                }
                Ok(found)
            })
            .await
            .and_then(|found| {
                let (legacy, record) = found.ok_or_else(|| {
                    VaultError::NotFound(
                        "no client backup share is held for this client and method".into(),
                    )
                })?;
                self.client_share_from(
                    client_id,
                    if legacy { UNKNOWN_METHOD } else { method },
                    record,
                )
            });
        self.audited(read, entry(actor, "get_client_share", client_id, method))
            .await
    }

    /// Opens a client share found under `method`.
    fn client_share_from(
        &self,
        client_id: &str,
        method: &str,
        record: SealedRecord,
    ) -> Result<ClientShare, VaultError> {
        Ok(ClientShare {
            backup_method: method.to_owned(),
            cipher_text: self.open_record(TableId::Client.name(), client_id, method, &record)?,
            created_at_ms: record.created_at_ms,
            backup_share_pair_ids: record.covers,
        })
    }

    /// Every client share held for a client, current and kept, with the pairs each belongs
    /// to; no cipherText. Current shares first, in method order, then kept ones, newest first.
    pub async fn client_shares(&self, client_id: &str) -> Result<Vec<ClientShareInfo>, VaultError> {
        validate::client_id(client_id)?;
        let id = client_id.to_owned();
        self.read_store(
            client_id,
            Some(versions::CLIENT_SHARE_TABLES),
            move |store| versions::client_shares(store, &id),
        )
        .await
    }

    /// Deletes a client share; answers whether there was one.
    pub async fn delete_client_share(
        &self,
        client_id: &str,
        backup_method: &str,
        actor: &str,
    ) -> Result<bool, VaultError> {
        validate::client_id(client_id)?;
        let method = validate::backup_method(backup_method)?;
        let outcome = self
            .write(
                WriteOp::DeleteClientShare {
                    client_id: client_id.to_owned(),
                    backup_method: method.to_owned(),
                    now_ms: now_ms(),
                },
                Some(entry(actor, "delete_client_share", client_id, method)),
            )
            .await?;
        Ok(outcome == WriteOutcome::Deleted(true))
    }
}
