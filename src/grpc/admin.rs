//! `sharevault.v1.AdminService`: tokens and status.

use super::{Call, Ready, metadata, reply};
use crate::auth::Role;
use crate::error::{Field, VaultError};
use crate::pb::admin_service_server::AdminService;
use crate::pb::{self, timestamp};
use crate::vault::Vault;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminApi {
    pub ready: Ready,
}

impl AdminApi {
    fn authorize<T>(&self, request: &Request<T>) -> Result<&Arc<Vault>, VaultError> {
        let vault = self.ready.get()?;
        vault.authorize(metadata(request, "authorization"), Role::Admin)?;
        Ok(vault)
    }
}

fn role_to_proto(role: Role) -> i32 {
    match role {
        Role::Backend => pb::Role::Backend as i32,
        Role::Eject => pb::Role::Eject as i32,
        Role::Admin => pb::Role::Admin as i32,
    }
}

fn role_from_proto(value: i32) -> Result<Role, VaultError> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Backend) => Ok(Role::Backend),
        Ok(pb::Role::Eject) => Ok(Role::Eject),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        _ => Err(VaultError::invalid(
            Field::Role,
            "must be ROLE_BACKEND, ROLE_EJECT or ROLE_ADMIN",
        )),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let req = request.get_ref();
        let call = Call::new("AdminService", "CreateToken");
        let result = async {
            let vault = self.authorize(&request)?;
            let role = role_from_proto(req.role)?;
            let token = vault.create_token(&req.name, role).await?;
            Ok(pb::CreateTokenResponse {
                name: req.name.clone(),
                role: role_to_proto(role),
                token: token.as_str().to_owned(),
            })
        }
        .await;
        reply(call, result)
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let call = Call::new("AdminService", "ListTokens");
        let result = (|| {
            let vault = self.authorize(&request)?;
            Ok(pb::ListTokensResponse {
                tokens: vault
                    .list_tokens()?
                    .into_iter()
                    .map(|t| pb::TokenInfo {
                        role: role_to_proto(t.role),
                        created_at: Some(timestamp(t.created_at_ms)),
                        name: t.name,
                    })
                    .collect(),
            })
        })();
        reply(call, result)
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let call = Call::new("AdminService", "RevokeToken");
        let result = async {
            let vault = self.authorize(&request)?;
            vault.revoke_token(&request.get_ref().name).await?;
            Ok(pb::RevokeTokenResponse {})
        }
        .await;
        reply(call, result)
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let call = Call::new("AdminService", "GetStatus");
        let result = (|| {
            let vault = self.authorize(&request)?;
            let status = vault.status()?;
            Ok(pb::GetStatusResponse {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                custodian_shares: status.counts.custodian_shares,
                client_shares: status.counts.client_shares,
                backup_share_pairs: status.counts.backup_share_pairs,
                tokens: status.counts.tokens,
                master_key_id: status.key_id.to_string(),
                uptime_seconds: status.uptime_secs,
            })
        })();
        reply(call, result)
    }
}
