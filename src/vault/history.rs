//! A client's kept versions, for operators: listed by metadata, restored as current.

use super::records::{self, PairRecord};
use super::rules::WriteOp;
use super::versions::{self, ShareKind};
use super::{Vault, entry, now_ms};
use crate::error::{Field, VaultError};
use crate::validate;
use crate::vault::status::PairStatus;

/// One share, current or kept, as [`Vault::list_versions`] shows it: no share material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionView {
    pub kind: ShareKind,
    pub backup_method: String,
    /// 0 for the current share.
    pub number: u64,
    pub pair_id: Option<String>,
    pub pair_status: Option<PairStatus>,
    pub created_at_ms: u64,
    /// `None` for the current share.
    pub superseded_at_ms: Option<u64>,
}

impl Vault {
    /// Every share of a client, current and kept: per kind and method, the current one first,
    /// then its versions, newest first. Reads no secret bytes.
    pub async fn list_versions(&self, client_id: &str) -> Result<Vec<VersionView>, VaultError> {
        validate::client_id(client_id)?;
        let id = client_id.to_owned();
        let (current, kept, pairs) = self
            .read_store(
                client_id,
                Some(&[
                    crate::store::TableId::Custodian,
                    crate::store::TableId::Client,
                    crate::store::TableId::Versions,
                    crate::store::TableId::Pairs,
                ]),
                move |store| {
                    let mut current = Vec::new();
                    for kind in [ShareKind::Custodian, ShareKind::Client] {
                        for share in records::shares(store, kind.table(), &id)? {
                            current.push((kind, share));
                        }
                    }
                    let mut damaged = Vec::new();
                    let kept = versions::of_client(store, &id, None, &mut damaged)?;
                    Ok((current, kept, records::pairs(store, &id)?))
                },
            )
            .await?;
        let status = |pair: &Option<String>| {
            pair.as_ref().and_then(|id| {
                pairs
                    .iter()
                    .find(|p: &&PairRecord| &p.id == id)
                    .map(|p| p.status)
            })
        };
        let mut out: Vec<VersionView> = current
            .into_iter()
            .map(|(kind, share)| VersionView {
                kind,
                pair_status: status(&share.record.pair_id),
                pair_id: share.record.pair_id,
                backup_method: share.backup_method,
                number: 0,
                created_at_ms: share.record.created_at_ms,
                superseded_at_ms: None,
            })
            .chain(kept.into_iter().map(|v| VersionView {
                kind: v.kind,
                pair_status: status(&v.record.pair_id),
                pair_id: v.record.pair_id,
                backup_method: v.backup_method,
                number: v.number,
                created_at_ms: v.record.created_at_ms,
                superseded_at_ms: Some(v.superseded_at_ms),
            }))
            .collect();
        // Current (0) first, then newest first.
        out.sort_by(|a, b| {
            (
                a.kind,
                &a.backup_method,
                a.number != 0,
                std::cmp::Reverse(a.number),
            )
                .cmp(&(
                    b.kind,
                    &b.backup_method,
                    b.number != 0,
                    std::cmp::Reverse(b.number),
                ))
        });
        Ok(out)
    }

    /// Makes a kept version current again; the share it replaces is kept as a version.
    pub async fn restore_version(
        &self,
        client_id: &str,
        kind: &str,
        backup_method: &str,
        number: u64,
        actor: &str,
    ) -> Result<(), VaultError> {
        validate::client_id(client_id)?;
        let kind = ShareKind::from_name(kind)
            .ok_or_else(|| VaultError::invalid(Field::Kind, "must be custodian or client"))?;
        let method = validate::backup_method(backup_method)?;
        if number == 0 {
            return Err(VaultError::invalid(
                Field::Version,
                "must name a kept version (1 or more); 0 is the current share",
            ));
        }
        let what = format!("{}:{method}#{number}", kind.name());
        self.write(
            WriteOp::RestoreVersion {
                client_id: client_id.to_owned(),
                kind,
                backup_method: method.to_owned(),
                number,
                now_ms: now_ms(),
                retention: self.retention,
            },
            Some(entry(actor, "restore_version", client_id, &what)),
        )
        .await?;
        Ok(())
    }
}
