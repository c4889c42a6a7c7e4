//! Deleting the synthetic client over the backend API (`DeleteClient`), and what to say when
//! that cannot be done.

use super::SelftestArgs;
use super::checks::Check;
use crate::cli::client::{CliError, Client, ConnectArgs};
use crate::pb;
use std::path::Path;

/// Connects to the backend API and checks the token can read the synthetic client, so that
/// a wrong token or address is reported before anything is written.
pub(super) async fn backend(
    args: &SelftestArgs,
    token_file: &Path,
    client_id: &str,
) -> Result<Client, CliError> {
    let connect = ConnectArgs {
        connect: args.connect.clone(),
        ca_file: args.connect_ca_file.clone(),
        tls_server_name: None,
        admin_token_file: Some(token_file.to_owned()),
    };
    let client = Client::connect(&connect).await?;
    let token_hint = |status: &tonic::Status| match (status.code(), client.error(status)) {
        (
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied,
            CliError::Rpc { code, message, .. },
        ) => CliError::Rpc {
            code,
            message,
            hint: " (--token-file must hold a backend token of the vault at --connect)",
        },
        (_, other) => other,
    };
    client
        .backup()
        .list_backups(client.request(pb::ListBackupsRequest {
            client_id: client_id.to_owned(),
        })?)
        .await
        .map_err(|s| token_hint(&s))?;
    Ok(client)
}

/// Deletes the synthetic client over the backend API.
pub(super) async fn delete(client: &Client, client_id: &str, stored: bool) -> Check {
    let start = std::time::Instant::now();
    let result = match client.request(pb::DeleteClientRequest {
        client_id: client_id.to_owned(),
    }) {
        Ok(request) => client
            .backup()
            .delete_client(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| client.error(&s).to_string()),
        Err(err) => Err(err.to_string()),
    };
    let (ok, detail) = match result {
        Ok(erased) if stored && erased.custodian_shares_deleted == 0 => (
            false,
            format!(
                "the vault at {} held nothing for the synthetic client: is it the vault \
                 behind the webhook?",
                client.target()
            ),
        ),
        Ok(erased) => (
            true,
            format!(
                "{} custodian shares, {} share pairs erased",
                erased.custodian_shares_deleted, erased.backup_share_pairs_deleted
            ),
        ),
        Err(why) => (false, format!("{why}; {}", how_to_delete(client_id))),
    };
    Check {
        name: "delete the synthetic client".into(),
        ok,
        status: None,
        millis: start.elapsed().as_millis() as u64,
        detail,
    }
}

pub(super) fn how_to_delete(client_id: &str) -> String {
    format!(
        "delete it with a backend token: DELETE /v1/clients/{client_id} on the private \
         listener, or BackupService/DeleteClient {{\"client_id\": \"{client_id}\"}}, or run \
         selftest with --token-file"
    )
}
