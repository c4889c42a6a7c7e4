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
    /// Whether a client share that covers this curve (stored under the bare method or under
    /// this `METHOD-CURVE`) is held.
    pub client_share_held: bool,
}

/// What a client holds for one bare method.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MethodView {
    pub backup_method: String,
    /// When the newest client share of the method (bare or per curve) was stored.
    pub client_share_created_at_ms: Option<u64>,
    pub custodian_shares: Vec<CustodianView>,
}

impl MethodView {
    /// `completed` when every custodian share is covered by a client share and its pair is
    /// completed; `incomplete` otherwise.
    pub fn status(&self) -> &'static str {
        let complete = !self.custodian_shares.is_empty()
            && self.custodian_shares.iter().all(|c| {
                c.client_share_held && c.pair_status == Some(PairStatus::StoredClientBackupShare)
            });
        if complete { "completed" } else { "incomplete" }
    }
}

/// Every decodable share of a client in `table`; rows that do not decode are logged (ids only)
/// and counted.
fn shares_skipping_damaged(
    store: &dyn crate::store::Reader,
    table: TableId,
    client_id: &str,
    damaged: &mut u64,
) -> Result<Vec<MethodRecord>, crate::store::StoreError> {
    let (shares, left_out) = records::shares_skipping_damaged(store, table, client_id)?;
    for key in &left_out {
        tracing::error!(
            table = table.name(),
            client = client_id,
            key = %key,
            "a stored share record is malformed; it is left out"
        );
    }
    *damaged += left_out.len() as u64;
    Ok(shares)
}

impl Vault {
    /// What a client holds, per bare method. Reads no secret bytes. A record that does not
    /// decode is left out (logged and counted).
    pub async fn list_backups(&self, client_id: &str) -> Result<Vec<MethodView>, VaultError> {
        validate::client_id(client_id)?;
        let id = client_id.to_owned();
        let (pairs, client_shares, custodian_shares, damaged) = self
            .read_store(
                client_id,
                Some(&[TableId::Pairs, TableId::Client, TableId::Custodian]),
                move |store| {
                    let mut damaged = 0;
                    let pairs = records::client_rows(store, TableId::Pairs, &id)?
                        .into_iter()
                        .filter_map(|(pid, bytes)| super::codec::decode_pair(&pid, &bytes).ok())
                        .collect::<Vec<_>>();
                    let client =
                        shares_skipping_damaged(store, TableId::Client, &id, &mut damaged)?;
                    let custodian =
                        shares_skipping_damaged(store, TableId::Custodian, &id, &mut damaged)?;
                    Ok((pairs, client, custodian, damaged))
                },
            )
            .await?;
        if damaged > 0 {
            self.metrics.damaged_records(damaged);
        }
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
        let custodian_methods: Vec<&str> = custodian_shares
            .iter()
            .map(|c| c.backup_method.as_str())
            .collect();
        for MethodRecord {
            backup_method,
            record,
        } in &client_shares
        {
            // A per-curve client share belongs to its bare method's view when the client holds
            // that curve's custodian share.
            let bare = if custodian_methods.contains(&backup_method.as_str()) {
                split_curve(backup_method).0
            } else {
                backup_method.as_str()
            };
            let newest = &mut view(&mut methods, bare).client_share_created_at_ms;
            *newest = Some(newest.map_or(record.created_at_ms, |t| t.max(record.created_at_ms)));
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
            let client_share_held = client_shares
                .iter()
                .any(|c| crate::validate::covers(&c.backup_method, &backup_method));
            let entry = CustodianView {
                curve: curve.unwrap_or("").to_owned(),
                stored_at_ms: record.created_at_ms,
                pair_id: record.pair_id,
                pair_status,
                client_share_held,
                backup_method: backup_method.clone(),
            };
            view(&mut methods, bare).custodian_shares.push(entry);
        }
        Ok(methods.into_values().collect())
    }

    pub async fn list_pairs(&self, client_id: &str) -> Result<Vec<PairRecord>, VaultError> {
        validate::client_id(client_id)?;
        let id = client_id.to_owned();
        self.read_store(client_id, Some(&[TableId::Pairs]), move |store| {
            records::pairs(store, &id)
        })
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
