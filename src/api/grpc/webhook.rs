//! `sharevault.v1.WebhookService`: Portal's webhook over gRPC.

use super::{Call, metadata, reply};
use crate::api::Ready;
use crate::pb::webhook_service_server::WebhookService;
use crate::pb::{BackupRequest, BackupResponse, FetchRequest, FetchResponse};
use crate::vault::BackupInput;
use tonic::{Request, Response, Status};

/// The metadata entry carrying the webhook secret.
pub const SECRET_METADATA: &str = "x-webhook-secret";

pub struct WebhookApi {
    pub ready: Ready,
    pub calls: crate::metrics::CallMetrics,
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
