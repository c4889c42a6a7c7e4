//! The views of what a client holds, and Portal's share-pair status model.

use super::records::{self, MethodRecord, PairRecord};
use super::rules::{WriteOp, WriteOutcome};
use super::{Vault, entry, now_ms};
use crate::error::{Field, VaultError};
use crate::store::TableId;
use crate::validate::{self, split_curve};
use crate::vault::status::PairStatus;
use std::collections::BTreeMap;

/// One custodian share in the [`Vault::list_backups`] view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodianView {
    pub backup_method: String,
    pub curve: String,
    pub stored_at_ms: u64,
    pub pair_id: Option<String>,
    pub pair_status: Option<PairStatus>,
}

/// What a client holds for one bare method.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MethodView {
    pub backup_method: String,
    pub client_share_created_at_ms: Option<u64>,
    pub custodian_shares: Vec<CustodianView>,
}

impl MethodView {
    /// `completed` when the client share is held and every custodian share's pair is
    /// completed; `incomplete` otherwise.
    pub fn status(&self) -> &'static str {
        let complete = self.client_share_created_at_ms.is_some()
            && !self.custodian_shares.is_empty()
            && self
                .custodian_shares
                .iter()
                .all(|c| c.pair_status == Some(PairStatus::StoredClientBackupShare));
        if complete { "completed" } else { "incomplete" }
    }
}

impl Vault {
    /// What a client holds, per bare method. Reads no secret bytes.
    pub async fn list_backups(&self, client_id: &str) -> Result<Vec<MethodView>, VaultError> {
        validate::client_id(client_id)?;
        let id = client_id.to_owned();
        let (pairs, client_shares, custodian_shares) = self
            .read_store(move |store| {
                Ok((
                    records::pairs(store, &id)?,
                    records::shares(store, TableId::Client, &id)?,
                    records::shares(store, TableId::Custodian, &id)?,
                ))
            })
            .await?;
        let pairs: BTreeMap<String, PairRecord> =
            pairs.into_iter().map(|p| (p.id.clone(), p)).collect();
        let mut methods: BTreeMap<String, MethodView> = BTreeMap::new();
        fn view<'m>(
            methods: &'m mut BTreeMap<String, MethodView>,
            method: &str,
        ) -> &'m mut MethodView {
            methods
                .entry(method.to_owned())
                .or_insert_with(|| MethodView {
                    backup_method: method.to_owned(),
                    ..MethodView::default()
                })
        }
        for MethodRecord {
            backup_method,
            record,
        } in client_shares
        {
            view(&mut methods, &backup_method).client_share_created_at_ms =
                Some(record.created_at_ms);
        }
        for MethodRecord {
            backup_method,
            record,
        } in custodian_shares
        {
            let (bare, curve) = split_curve(&backup_method);
            let pair_status = record
                .pair_id
                .as_ref()
                .and_then(|id| pairs.get(id))
                .map(|p| p.status);
            let entry = CustodianView {
                curve: curve.unwrap_or("").to_owned(),
                stored_at_ms: record.created_at_ms,
                pair_id: record.pair_id,
                pair_status,
                backup_method: backup_method.clone(),
            };
            view(&mut methods, bare).custodian_shares.push(entry);
        }
        Ok(methods.into_values().collect())
    }

    pub async fn list_pairs(&self, client_id: &str) -> Result<Vec<PairRecord>, VaultError> {
        validate::client_id(client_id)?;
        let id = client_id.to_owned();
        self.read_store(move |store| records::pairs(store, &id))
            .await
    }

    /// Moves pairs to `status`, all or none.
    pub async fn update_pairs(
        &self,
        client_id: &str,
        ids: &[String],
        status: PairStatus,
        actor: &str,
    ) -> Result<(), VaultError> {
        validate::client_id(client_id)?;
        if ids.is_empty() {
            return Err(VaultError::invalid(
                Field::BackupSharePairIds,
                "is required",
            ));
        }
        if ids.len() > validate::MAX_PAIR_IDS {
            return Err(VaultError::invalid(
                Field::BackupSharePairIds,
                format!("may name at most {} pairs", validate::MAX_PAIR_IDS),
            ));
        }
        for id in ids {
            validate::pair_id(Field::BackupSharePairIds, id)?;
        }
        self.write(
            WriteOp::UpdatePairs {
                client_id: client_id.to_owned(),
                ids: ids.to_vec(),
                status,
                now_ms: now_ms(),
            },
            Some(entry(actor, "update_pairs", client_id, "")),
        )
        .await?;
        Ok(())
    }

    /// Erases everything held for a client, kept versions included; answers (custodian,
    /// client, pairs) deleted.
    pub async fn delete_client(
        &self,
        client_id: &str,
        actor: &str,
    ) -> Result<(u64, u64, u64), VaultError> {
        validate::client_id(client_id)?;
        match self
            .write(
                WriteOp::DeleteClient {
                    client_id: client_id.to_owned(),
                },
                Some(entry(actor, "delete_client", client_id, "")),
            )
            .await?
        {
            WriteOutcome::ClientDeleted {
                custodian_shares,
                client_shares,
                backup_share_pairs,
                versions: _,
            } => Ok((custodian_shares, client_shares, backup_share_pairs)),
            _ => Err(VaultError::Internal),
        }
    }
}
