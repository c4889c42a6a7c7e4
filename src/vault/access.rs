//! Who may call: webhook secrets, the admin token and API tokens, with failed attempts
//! counted per source and per credential.

use super::{Vault, records};
use crate::auth::{self, Principal, Role, WebhookSecrets};
use crate::error::VaultError;
use std::net::IpAddr;

/// The webhook secrets in force: replaced as a whole by a reload (SIGHUP), while every
/// check reads the set in force when it began.
pub type SharedWebhookSecrets = std::sync::Arc<arc_swap::ArcSwap<WebhookSecrets>>;

/// Everything about a credential check that the vault needs.
pub struct Credentials {
    pub webhook: SharedWebhookSecrets,
    /// SHA-256 of the admin token.
    pub admin_token: [u8; 32],
    /// Failed authentications, per source address and per credential.
    pub failures: auth::FailureLimiter,
}

impl Vault {
    /// Counts a failed authentication against `keys`: `err`, or "rate limited" once any of
    /// them has failed too often. Only failures are ever limited, so a caller with a valid
    /// credential is always served, whatever its source (a shared egress address, or
    /// 127.0.0.1 in a sidecar deployment) or anyone else did.
    fn failed(&self, keys: &[auth::FailureKey], err: VaultError) -> VaultError {
        self.metrics.auth_failure();
        match self.credentials.failures.fail(keys) {
            Ok(()) => err,
            Err(retry_after_secs) => VaultError::RateLimited { retry_after_secs },
        }
    }

    /// Checks the webhook secret presented by `source`.
    pub fn verify_webhook_secret(
        &self,
        presented: Option<&[u8]>,
        source: Option<IpAddr>,
    ) -> Result<(), VaultError> {
        match presented {
            Some(secret) if self.credentials.webhook.load().verify(secret) => Ok(()),
            None => Err(self.failed(
                &auth::failure_keys(source, None),
                VaultError::Unauthenticated("the webhook secret is missing"),
            )),
            Some(secret) => Err(self.failed(
                &auth::failure_keys(source, Some(secret)),
                VaultError::Unauthenticated("the webhook secret is wrong"),
            )),
        }
    }

    /// Authenticates an `authorization` header value presented by `source` and checks that
    /// its role allows `needed`.
    ///
    /// A token other than the admin token is looked up in the store off the async workers,
    /// within the store deadline: a slow database holds up this request only.
    pub async fn authorize(
        &self,
        authorization: Option<&str>,
        needed: Role,
        source: Option<IpAddr>,
    ) -> Result<Principal, VaultError> {
        let keys = || auth::failure_keys(source, authorization.map(str::as_bytes));
        let Some(header) = authorization else {
            return Err(self.failed(
                &keys(),
                VaultError::Unauthenticated("a bearer token is required"),
            ));
        };
        let Some(token) = auth::bearer(header) else {
            return Err(self.failed(
                &keys(),
                VaultError::Unauthenticated("the authorization header must be `Bearer <token>`"),
            ));
        };
        let hash = auth::digest(token.as_bytes());
        let principal = if auth::digests_equal(&hash, &self.credentials.admin_token) {
            Principal {
                name: "admin".into(),
                role: Role::Admin,
            }
        } else {
            let found = self
                .read_store("", None, move |r| records::token_by_hash(r, &hash))
                .await?;
            match found {
                Some(record) => Principal {
                    name: record.name,
                    role: record.role,
                },
                None => {
                    return Err(self.failed(
                        &keys(),
                        VaultError::Unauthenticated("the token is not valid"),
                    ));
                }
            }
        };
        if principal.role.allows(needed) {
            Ok(principal)
        } else {
            Err(VaultError::PermissionDenied(match needed {
                Role::Backend => "this token's role may not use the BackupService",
                Role::Eject => "reading a custodian backup share needs a token with the eject role",
                Role::Admin => "this call needs the admin token or a token with the admin role",
            }))
        }
    }
}
