//! `sharevault.v1.BackupService`: the company backend's API.

use super::{Call, metadata, reply};
use crate::api::Ready;
use crate::auth::{Principal, Role};
use crate::error::{Field, VaultError};
use crate::pb::backup_service_server::BackupService;
use crate::pb::{self, timestamp};
use crate::vault::PairRecord;
use crate::vault::status::PairStatus;
use crate::vault::{MethodView, Vault};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct BackupApi {
    pub ready: Ready,
    pub calls: crate::metrics::CallMetrics,
}

impl BackupApi {
    /// What the call's credential allows; a token lookup waits off the async workers.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        role: Role,
    ) -> Result<(&Arc<Vault>, Principal), VaultError> {
        let vault = self.ready.get()?;
        let authorization = metadata(request, "authorization").map(str::to_owned);
        let source = super::source(request);
        let who = vault
            .authorize(authorization.as_deref(), role, source)
            .await?;
        Ok((vault, who))
    }
}

pub(super) fn pair_status_to_proto(status: PairStatus) -> i32 {
    match status {
        PairStatus::StoredCustodianBackupShare => {
            pb::BackupSharePairStatus::StoredCustodianBackupShare as i32
        }
        PairStatus::StoredClientBackupShareKey => {
            pb::BackupSharePairStatus::StoredClientBackupShareKey as i32
        }
        PairStatus::StoredClientBackupShare => {
            pb::BackupSharePairStatus::StoredClientBackupShare as i32
        }
    }
}

fn pair_status_from_proto(value: i32) -> Result<PairStatus, VaultError> {
    match pb::BackupSharePairStatus::try_from(value) {
        Ok(pb::BackupSharePairStatus::StoredCustodianBackupShare) => {
            Ok(PairStatus::StoredCustodianBackupShare)
        }
        Ok(pb::BackupSharePairStatus::StoredClientBackupShareKey) => {
            Ok(PairStatus::StoredClientBackupShareKey)
        }
        Ok(pb::BackupSharePairStatus::StoredClientBackupShare) => {
            Ok(PairStatus::StoredClientBackupShare)
        }
        _ => Err(VaultError::invalid(
            Field::Status,
            "must be STORED_CUSTODIAN_BACKUP_SHARE, STORED_CLIENT_BACKUP_SHARE_KEY or \
             STORED_CLIENT_BACKUP_SHARE",
        )),
    }
}

fn method_to_proto(view: MethodView) -> pb::MethodBackups {
    let status = view.status().to_owned();
    pb::MethodBackups {
        backup_method: view.backup_method,
        has_client_backup_share: view.client_share_created_at_ms.is_some(),
        client_backup_share_created_at: view.client_share_created_at_ms.map(timestamp),
        custodian_shares: view
            .custodian_shares
            .into_iter()
            .map(|c| pb::CustodianShareInfo {
                backup_method: c.backup_method,
                curve: c.curve,
                stored_at: Some(timestamp(c.stored_at_ms)),
                has_client_backup_share: c.client_share_held,
                backup_share_pair_id: c.pair_id.unwrap_or_default(),
                pair_status: c.pair_status.map(pair_status_to_proto).unwrap_or_default(),
                status: c
                    .pair_status
                    .map(PairStatus::public)
                    .unwrap_or("incomplete")
                    .to_owned(),
            })
            .collect(),
        status,
    }
}

fn pair_to_proto(pair: PairRecord) -> pb::BackupSharePair {
    let (method, curve) = crate::validate::split_curve(&pair.backup_method);
    pb::BackupSharePair {
        backup_method: method.to_owned(),
        curve: curve.unwrap_or("").to_owned(),
        internal_status: pair_status_to_proto(pair.status),
        status: pair.status.public().to_owned(),
        created_at: Some(timestamp(pair.created_at_ms)),
        updated_at: Some(timestamp(pair.updated_at_ms)),
        id: pair.id,
    }
}

#[tonic::async_trait]
impl BackupService for BackupApi {
    async fn store_client_backup_share(
        &self,
        request: Request<pb::StoreClientBackupShareRequest>,
    ) -> Result<Response<pb::StoreClientBackupShareResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "BackupService", "StoreClientBackupShare");
        call.client(&req.client_id)
            .backup_method(&req.backup_method);
        let result = async {
            let (vault, who) = self.authorize(&request, Role::Backend).await?;
            let completed = vault
                .store_client_share(
                    &req.client_id,
                    &req.backup_method,
                    &req.cipher_text,
                    &who.name,
                )
                .await?;
            Ok(pb::StoreClientBackupShareResponse {
                completed_backup_share_pair_ids: completed,
            })
        }
        .await;
        reply(call, result)
    }

    async fn get_client_backup_share(
        &self,
        request: Request<pb::GetClientBackupShareRequest>,
    ) -> Result<Response<pb::GetClientBackupShareResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "BackupService", "GetClientBackupShare");
        call.client(&req.client_id)
            .backup_method(&req.backup_method);
        let result = async {
            let (vault, who) = self.authorize(&request, Role::Backend).await?;
            let share = vault
                .client_share(
                    &req.client_id,
                    &req.backup_method,
                    Some(req.backup_share_pair_id.as_str()),
                    &who.name,
                )
                .await?;
            Ok(pb::GetClientBackupShareResponse {
                cipher_text: share.cipher_text.as_str().to_owned(),
                created_at: Some(timestamp(share.created_at_ms)),
                backup_method: share.backup_method,
                backup_share_pair_ids: share.backup_share_pair_ids,
            })
        }
        .await;
        reply(call, result)
    }

    async fn list_client_backup_shares(
        &self,
        request: Request<pb::ListClientBackupSharesRequest>,
    ) -> Result<Response<pb::ListClientBackupSharesResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "BackupService", "ListClientBackupShares");
        call.client(&req.client_id);
        let result = async {
            let (vault, _) = self.authorize(&request, Role::Backend).await?;
            let shares = vault.client_shares(&req.client_id).await?;
            Ok(pb::ListClientBackupSharesResponse {
                client_backup_shares: shares
                    .into_iter()
                    .map(|s| pb::ClientBackupShareInfo {
                        backup_method: s.backup_method,
                        current: s.version.is_none(),
                        version: s.version.unwrap_or(0),
                        created_at: Some(timestamp(s.created_at_ms)),
                        backup_share_pair_ids: s.backup_share_pair_ids,
                    })
                    .collect(),
            })
        }
        .await;
        reply(call, result)
    }

    async fn delete_client_backup_share(
        &self,
        request: Request<pb::DeleteClientBackupShareRequest>,
    ) -> Result<Response<pb::DeleteClientBackupShareResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "BackupService", "DeleteClientBackupShare");
        call.client(&req.client_id)
            .backup_method(&req.backup_method);
        let result = async {
            let (vault, who) = self.authorize(&request, Role::Backend).await?;
            let deleted = vault
                .delete_client_share(&req.client_id, &req.backup_method, &who.name)
                .await?;
            Ok(pb::DeleteClientBackupShareResponse { deleted })
        }
        .await;
        reply(call, result)
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "BackupService", "ListBackups");
        call.client(&req.client_id);
        let result = async {
            let (vault, _) = self.authorize(&request, Role::Backend).await?;
            let methods = vault.list_backups(&req.client_id).await?;
            Ok(pb::ListBackupsResponse {
                methods: methods.into_iter().map(method_to_proto).collect(),
            })
        }
        .await;
        reply(call, result)
    }

    async fn get_custodian_backup_share(
        &self,
        request: Request<pb::GetCustodianBackupShareRequest>,
    ) -> Result<Response<pb::GetCustodianBackupShareResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "BackupService", "GetCustodianBackupShare");
        call.client(&req.client_id)
            .backup_method(&req.backup_method);
        let result = async {
            let (vault, who) = self.authorize(&request, Role::Eject).await?;
            let share = vault
                .custodian_share(
                    &req.client_id,
                    &req.backup_method,
                    Some(req.backup_share_pair_id.as_str()),
                    &who.name,
                )
                .await?;
            Ok(pb::GetCustodianBackupShareResponse {
                share: share.share.as_str().to_owned(),
                backup_share_pair_id: share.backup_share_pair_id.unwrap_or_default(),
            })
        }
        .await;
        reply(call, result)
    }

    async fn list_backup_share_pairs(
        &self,
        request: Request<pb::ListBackupSharePairsRequest>,
    ) -> Result<Response<pb::ListBackupSharePairsResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "BackupService", "ListBackupSharePairs");
        call.client(&req.client_id);
        let result = async {
            let (vault, _) = self.authorize(&request, Role::Backend).await?;
            let pairs = vault.list_pairs(&req.client_id).await?;
            Ok(pb::ListBackupSharePairsResponse {
                backup_share_pairs: pairs.into_iter().map(pair_to_proto).collect(),
            })
        }
        .await;
        reply(call, result)
    }

    async fn update_backup_share_pairs(
        &self,
        request: Request<pb::UpdateBackupSharePairsRequest>,
    ) -> Result<Response<pb::UpdateBackupSharePairsResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "BackupService", "UpdateBackupSharePairs");
        call.client(&req.client_id);
        let result = async {
            let (vault, who) = self.authorize(&request, Role::Backend).await?;
            let status = pair_status_from_proto(req.status)?;
            vault
                .update_pairs(
                    &req.client_id,
                    &req.backup_share_pair_ids,
                    status,
                    &who.name,
                )
                .await?;
            Ok(pb::UpdateBackupSharePairsResponse {})
        }
        .await;
        reply(call, result)
    }

    async fn delete_client(
        &self,
        request: Request<pb::DeleteClientRequest>,
    ) -> Result<Response<pb::DeleteClientResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "BackupService", "DeleteClient");
        call.client(&req.client_id);
        let result = async {
            let (vault, who) = self.authorize(&request, Role::Backend).await?;
            let (custodian, client, pairs) = vault.delete_client(&req.client_id, &who.name).await?;
            Ok(pb::DeleteClientResponse {
                custodian_shares_deleted: custodian,
                client_shares_deleted: client,
                backup_share_pairs_deleted: pairs,
            })
        }
        .await;
        reply(call, result)
    }
}
