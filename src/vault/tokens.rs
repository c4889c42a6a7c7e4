//! API tokens: created (shown once), listed (metadata only) and revoked.

use super::records::{self, TokenRecord};
use super::rules::WriteOp;
use super::{Vault, crypto_failure, entry, now_ms};
use crate::auth::{self, Role};
use crate::error::{Field, VaultError};
use crate::validate;
use zeroize::Zeroizing;

impl Vault {
    /// Creates a token; the returned secret is shown once and stored only as a hash.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        actor: &str,
    ) -> Result<Zeroizing<String>, VaultError> {
        validate::token_name(name)?;
        if name == "admin" || name == "webhook" {
            return Err(VaultError::invalid(
                Field::Name,
                "`admin` and `webhook` are reserved",
            ));
        }
        let token = auth::generate_token().map_err(crypto_failure)?;
        self.write(
            WriteOp::CreateToken(TokenRecord {
                name: name.to_owned(),
                role,
                hash: auth::digest(token.as_bytes()),
                created_at_ms: now_ms(),
            }),
            Some(entry(
                actor,
                "create_token",
                &format!("token:{name}"),
                role.name(),
            )),
        )
        .await?;
        Ok(token)
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>, VaultError> {
        Ok(records::tokens(&*self.store.read()?)?)
    }

    pub async fn revoke_token(&self, name: &str, actor: &str) -> Result<(), VaultError> {
        validate::token_name(name)?;
        self.write(
            WriteOp::RevokeToken {
                name: name.to_owned(),
            },
            Some(entry(actor, "revoke_token", &format!("token:{name}"), "")),
        )
        .await?;
        Ok(())
    }
}
