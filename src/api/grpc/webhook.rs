//! `sharevault.v1.WebhookService`: Portal's webhook over gRPC, served on the private listener
//! only with `--grpc-webhook`, and only to the sources the webhook allow-list admits.

use super::{Call, metadata, reply};
use crate::api::{Peer, Ready};
use crate::error::VaultError;
use crate::pb::webhook_service_server::WebhookService;
use crate::pb::{BackupRequest, BackupResponse, FetchRequest, FetchResponse};
use crate::vault::BackupInput;
use tonic::{Request, Response, Status};

/// The metadata entry carrying the webhook secret.
pub const SECRET_METADATA: &str = "x-webhook-secret";

pub struct WebhookApi {
    pub ready: Ready,
    pub calls: crate::metrics::CallMetrics,
    /// The webhook allow-list (`--webhook-allow-cidrs`); empty admits any source.
    pub allow: std::sync::Arc<Vec<ipnet::IpNet>>,
}

impl WebhookApi {
    /// Refuses a call whose connection does not come from the allow-list. The connection's own
    /// peer decides, never `X-Forwarded-For`: Portal never calls gRPC, so no proxy forwards
    /// its calls here. As on the HTTP webhook, a Unix-socket peer has no address and is
    /// refused once there is an allow-list.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), VaultError> {
        if self.allow.is_empty() {
            return Ok(());
        }
        let peer = request.extensions().get::<Peer>().and_then(|p| p.0);
        if peer.is_some_and(|ip| self.allow.iter().any(|net| net.contains(&ip))) {
            Ok(())
        } else {
            Err(VaultError::PermissionDenied(
                "this source address may not call the webhook",
            ))
        }
    }
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<BackupResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "WebhookService", "Backup");
        call.client(&req.client_id)
            .backup_method(&req.backup_method);
        let result = async {
            self.admit(&request)?;
            let vault = self.ready.get()?;
            vault.verify_webhook_secret(
                metadata(&request, SECRET_METADATA).map(str::as_bytes),
                super::source(&request),
            )?;
            let pair = vault
                .backup(
                    BackupInput {
                        client_id: &req.client_id,
                        backup_method: &req.backup_method,
                        share: &req.share,
                        backup_share_pair_id: req.backup_share_pair_id.as_deref(),
                    },
                    "webhook",
                )
                .await?;
            Ok(BackupResponse {
                backup_share_pair_id: pair.unwrap_or_default(),
            })
        }
        .await;
        reply(call, result)
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "WebhookService", "Fetch");
        call.client(&req.client_id);
        let result = async {
            self.admit(&request)?;
            let vault = self.ready.get()?;
            vault.verify_webhook_secret(
                metadata(&request, SECRET_METADATA).map(str::as_bytes),
                super::source(&request),
            )?;
            let shares = vault.fetch(&req.client_id, "webhook").await?;
            Ok(FetchResponse {
                backup_shares: shares.iter().map(|s| s.share.as_str().to_owned()).collect(),
            })
        }
        .await;
        reply(call, result)
    }
}
