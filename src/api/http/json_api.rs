//! The JSON API for backends without gRPC, on the private listener
//! (`Authorization: Bearer <token>`, the same roles as the BackupService).

use super::openapi::{
    Backups, ClientDeleted, ClientShareBody, ClientShareInfo, ClientShareStored, ClientShares,
    CustodianShareBody, CustodianShareInfo, ErrorBody, MethodBackups, Pair, Pairs, Probe,
    ShareVersion, StoreClientShareRequest, UpdatePairsRequest, Versions,
};
use super::webhook::finish;
use super::{
    HttpError, Source, json, json_bytes, method_not_allowed, not_found, read_object, required,
    rfc3339,
};
use crate::api::Ready;
use crate::api::observe::Call;
use crate::auth::{Principal, Role};
use crate::error::Field;
use crate::vault::Vault;
use crate::vault::status::parse_status;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Path parameters, with a JSON 400 when a segment does not decode to UTF-8.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for ApiPath<T>
{
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|_| HttpError::bad_request("path: a segment is not valid UTF-8 once decoded"))
    }
}

#[derive(Clone)]
struct ApiState {
    ready: Ready,
    calls: crate::metrics::CallMetrics,
    scrape: crate::metrics::ScrapeMetrics,
    max_body: usize,
}

impl ApiState {
    /// What the request's token allows; a token lookup waits off the async workers.
    async fn authorize(
        &self,
        headers: &HeaderMap,
        role: Role,
        from: Option<std::net::IpAddr>,
    ) -> Result<(&Arc<Vault>, Principal), HttpError> {
        let vault = self.ready.get()?;
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let who = vault.authorize(authorization, role, from).await?;
        Ok((vault, who))
    }
}

/// The JSON routes, each with its description; the router and the document come from this
/// one list, so the server answers no route its document does not describe.
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(
            put_client_share,
            get_client_share,
            delete_client_share
        ))
        .routes(routes!(list_client_shares))
        .routes(routes!(get_pair_client_share))
        .routes(routes!(list_backups))
        .routes(routes!(get_custodian_share))
        .routes(routes!(list_pairs, update_pairs))
        .routes(routes!(list_versions))
        .routes(routes!(delete_client))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// The OpenAPI document of the JSON API (see [`super::openapi`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    super::openapi::complete(routes().split_for_parts().1)
}

/// The private listener's JSON API; it counts its calls into `calls` and serves `scrape` at
/// `GET /metrics`.
pub fn router(
    ready: Ready,
    calls: crate::metrics::CallMetrics,
    scrape: crate::metrics::ScrapeMetrics,
    max_body: usize,
    timeout: Duration,
) -> Router {
    let (routes, _) = routes().split_for_parts();
    routes
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn(move |req, next| {
            super::with_timeout(timeout, req, next)
        }))
        .with_state(ApiState {
            ready,
            calls,
            scrape,
            max_body,
        })
}

const TAG: &str = "JSON API";
const SHARE_PATH: &str = "/v1/clients/{clientId}/client-backup-shares/{backupMethod}";

#[utoipa::path(
    put,
    path = SHARE_PATH,
    tag = TAG,
    operation_id = "storeClientBackupShare",
    summary = "Store a client's encrypted client share for a bare backup method",
    description = "Replaces any share held; completes the method's pairs whose key is stored. Backend role.",
    params(ClientMethod),
    request_body(content = StoreClientShareRequest, content_type = "application/json"),
    responses((status = 200, description = "stored", body = ClientShareStored)),
    security(("bearer" = [])),
)]
async fn put_client_share(
    State(state): State<ApiState>,
    ApiPath((client_id, backup_method)): ApiPath<(String, String)>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "StoreClientBackupShare");
    call.client(&client_id).backup_method(&backup_method);
    let result = async {
        let (vault, who) = state.authorize(&headers, Role::Backend, from).await?;
        let object = read_object(&headers, body, state.max_body).await?;
        let cipher_text = required(&object, Field::CipherText)?;
        let completed = vault
            .store_client_share(&client_id, &backup_method, cipher_text, &who.name)
            .await?;
        let backup_method = crate::validate::backup_method(&backup_method).unwrap_or_default();
        Ok(json(
            StatusCode::OK,
            ClientShareStored {
                client_id: &client_id,
                backup_method,
                completed_backup_share_pair_ids: completed,
            },
        ))
    }
    .await;
    finish(call, result)
}

#[utoipa::path(
    get,
    path = SHARE_PATH,
    tag = TAG,
    operation_id = "getClientBackupShare",
    summary = "Fetch a client's client share for a bare backup method",
    description = "Backend role.",
    params(ClientMethod),
    responses(
        (status = 200, description = "the share", body = ClientShareBody),
        (status = 404, description = "no such route, or no client share is held (`not_found`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn get_client_share(
    State(state): State<ApiState>,
    ApiPath((client_id, backup_method)): ApiPath<(String, String)>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "GetClientBackupShare");
    call.client(&client_id).backup_method(&backup_method);
    let result = async {
        let (vault, who) = state.authorize(&headers, Role::Backend, from).await?;
        let share = vault
            .client_share(&client_id, &backup_method, None, &who.name)
            .await?;
        Ok(client_share_body(&share))
    }
    .await;
    finish(call, result)
}

fn client_share_body(share: &crate::vault::ClientShare) -> Response {
    super::secret_json(
        StatusCode::OK,
        ClientShareBody {
            cipher_text: share.cipher_text.as_str(),
            backup_method: &share.backup_method,
            created_at: rfc3339(share.created_at_ms),
            backup_share_pair_ids: &share.backup_share_pair_ids,
        },
    )
}

#[utoipa::path(
    get,
    path = "/v1/clients/{clientId}/backup-share-pairs/{backupSharePairId}/client-backup-share",
    tag = TAG,
    operation_id = "getPairClientBackupShare",
    summary = "Fetch the client share of one backup share pair, current or kept",
    description = "The cipherText stored for the backup that pair belongs to, under whichever method covers it: at recovery, ask for the pair Portal reports completed, which may be older than the newest backup stored here. Backend role.",
    params(ClientPair),
    responses(
        (status = 200, description = "the share", body = ClientShareBody),
        (status = 404, description = "no such route, or no client share of that pair is held (`not_found`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn get_pair_client_share(
    State(state): State<ApiState>,
    ApiPath((client_id, pair_id)): ApiPath<(String, String)>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "GetClientBackupShare");
    call.client(&client_id);
    let result = async {
        let (vault, who) = state.authorize(&headers, Role::Backend, from).await?;
        let share = vault
            .client_share(&client_id, "", Some(&pair_id), &who.name)
            .await?;
        Ok(client_share_body(&share))
    }
    .await;
    finish(call, result)
}

#[utoipa::path(
    get,
    path = "/v1/clients/{clientId}/client-backup-shares",
    tag = TAG,
    operation_id = "listClientBackupShares",
    summary = "A client's client shares, current and kept, with their pairs",
    description = "Metadata only, never a cipherText: current shares first, in method order, then kept ones, newest first. Backend role.",
    params(Client),
    responses((status = 200, description = "the client shares", body = ClientShares)),
    security(("bearer" = [])),
)]
async fn list_client_shares(
    State(state): State<ApiState>,
    ApiPath(client_id): ApiPath<String>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "ListClientBackupShares");
    call.client(&client_id);
    let result = async {
        let (vault, _) = state.authorize(&headers, Role::Backend, from).await?;
        let shares = vault.client_shares(&client_id).await?;
        let client_backup_shares = shares
            .into_iter()
            .map(|s| ClientShareInfo {
                backup_method: s.backup_method,
                current: s.version.is_none(),
                version: s.version,
                created_at: rfc3339(s.created_at_ms),
                backup_share_pair_ids: s.backup_share_pair_ids,
            })
            .collect();
        Ok(json(
            StatusCode::OK,
            ClientShares {
                client_id: &client_id,
                client_backup_shares,
            },
        ))
    }
    .await;
    finish(call, result)
}

#[utoipa::path(
    delete,
    path = SHARE_PATH,
    tag = TAG,
    operation_id = "deleteClientBackupShare",
    summary = "Delete a client's client share for a bare backup method",
    description = "The method's completed pairs move back to `STORED_CLIENT_BACKUP_SHARE_KEY`. Backend role.",
    params(ClientMethod),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such route, or no client share is held (`not_found`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn delete_client_share(
    State(state): State<ApiState>,
    ApiPath((client_id, backup_method)): ApiPath<(String, String)>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "DeleteClientBackupShare");
    call.client(&client_id).backup_method(&backup_method);
    let result = async {
        let (vault, who) = state.authorize(&headers, Role::Backend, from).await?;
        if vault
            .delete_client_share(&client_id, &backup_method, &who.name)
            .await?
        {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Err(HttpError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no client backup share is held for this client and method",
            ))
        }
    }
    .await;
    finish(call, result)
}

#[utoipa::path(
    get,
    path = "/v1/clients/{clientId}/backups",
    tag = TAG,
    operation_id = "listBackups",
    summary = "What a client holds, per bare backup method (never share bytes)",
    description = "Backend role.",
    params(Client),
    responses((status = 200, description = "the client's backups", body = Backups)),
    security(("bearer" = [])),
)]
async fn list_backups(
    State(state): State<ApiState>,
    ApiPath(client_id): ApiPath<String>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "ListBackups");
    call.client(&client_id);
    let result = async {
        let (vault, _) = state.authorize(&headers, Role::Backend, from).await?;
        let methods = vault
            .list_backups(&client_id)
            .await?
            .into_iter()
            .map(|m| MethodBackups {
                status: m.status(),
                has_client_backup_share: m.client_share_created_at_ms.is_some(),
                client_backup_share_created_at: m.client_share_created_at_ms.map(rfc3339),
                custodian_shares: m
                    .custodian_shares
                    .into_iter()
                    .map(|c| CustodianShareInfo {
                        backup_method: c.backup_method,
                        curve: c.curve,
                        stored_at: rfc3339(c.stored_at_ms),
                        has_client_backup_share: c.client_share_held,
                        backup_share_pair_id: c.pair_id,
                        pair_status: c.pair_status.map(|s| s.name()),
                        status: c.pair_status.map_or("incomplete", |s| s.public()),
                    })
                    .collect(),
                backup_method: m.backup_method,
            })
            .collect();
        let client_id = client_id.as_str();
        Ok(json(StatusCode::OK, Backups { client_id, methods }))
    }
    .await;
    finish(call, result)
}

#[utoipa::path(
    get,
    path = "/v1/clients/{clientId}/custodian-backup-shares/{backupMethod}",
    tag = TAG,
    operation_id = "getCustodianBackupShare",
    summary = "Fetch a custodian share (eject)",
    description = "Eject role only; `backupMethod` is the full `METHOD-CURVE`.",
    params(ClientMethod, PairQuery),
    responses(
        (status = 200, description = "the custodian share", body = CustodianShareBody),
        (status = 400, description = "a malformed client id, method, pair id or query (`invalid_argument`)", body = ErrorBody),
        (status = 404, description = "no such route, or no custodian share is held (`not_found`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn get_custodian_share(
    State(state): State<ApiState>,
    ApiPath((client_id, backup_method)): ApiPath<(String, String)>,
    query: Result<Query<PairQuery>, axum::extract::rejection::QueryRejection>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "GetCustodianBackupShare");
    call.client(&client_id).backup_method(&backup_method);
    let result = async {
        let Query(query) = query.map_err(|_| {
            HttpError::bad_request("query: the only parameter taken is backupSharePairId")
        })?;
        let (vault, who) = state.authorize(&headers, Role::Eject, from).await?;
        let share = vault
            .custodian_share(
                &client_id,
                &backup_method,
                query.backup_share_pair_id.as_deref(),
                &who.name,
            )
            .await?;
        let body = CustodianShareBody {
            org_share: share.share.as_str(),
            backup_share_pair_id: share.backup_share_pair_id.as_deref(),
        };
        Ok(super::secret_json(StatusCode::OK, body))
    }
    .await;
    finish(call, result)
}

#[utoipa::path(
    get,
    path = "/v1/clients/{clientId}/backup-share-pairs",
    tag = TAG,
    operation_id = "listBackupSharePairs",
    summary = "A client's backup share pairs",
    description = "Backend role.",
    params(Client),
    responses((status = 200, description = "the pairs", body = Pairs)),
    security(("bearer" = [])),
)]
async fn list_pairs(
    State(state): State<ApiState>,
    ApiPath(client_id): ApiPath<String>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "ListBackupSharePairs");
    call.client(&client_id);
    let result = async {
        let (vault, _) = state.authorize(&headers, Role::Backend, from).await?;
        let backup_share_pairs = vault
            .list_pairs(&client_id)
            .await?
            .into_iter()
            .map(|p| {
                let (method, curve) = crate::validate::split_curve(&p.backup_method);
                Pair {
                    backup_method: method.to_owned(),
                    curve: curve.map(str::to_owned),
                    status: p.status.public(),
                    internal_status: p.status.name(),
                    created_at: rfc3339(p.created_at_ms),
                    updated_at: rfc3339(p.updated_at_ms),
                    id: p.id,
                }
            })
            .collect();
        Ok(json(StatusCode::OK, Pairs { backup_share_pairs }))
    }
    .await;
    finish(call, result)
}

#[utoipa::path(
    get,
    path = "/v1/clients/{clientId}/versions",
    tag = TAG,
    operation_id = "listVersions",
    summary = "A client's shares, current and kept as versions",
    description = "Metadata only, never share material: per kind and method, the current share first, then its versions, newest first. Backend role.",
    params(Client),
    responses((status = 200, description = "the shares", body = Versions)),
    security(("bearer" = [])),
)]
async fn list_versions(
    State(state): State<ApiState>,
    ApiPath(client_id): ApiPath<String>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "ListVersions");
    call.client(&client_id);
    let result = async {
        let (vault, _) = state.authorize(&headers, Role::Backend, from).await?;
        let versions = vault
            .list_versions(&client_id)
            .await?
            .into_iter()
            .map(|v| ShareVersion {
                kind: v.kind.name(),
                backup_method: v.backup_method,
                version: v.number,
                current: v.superseded_at_ms.is_none(),
                backup_share_pair_id: v.pair_id,
                pair_status: v.pair_status.map(|s| s.name()),
                created_at: rfc3339(v.created_at_ms),
                superseded_at: v.superseded_at_ms.map(rfc3339),
            })
            .collect();
        Ok(json(StatusCode::OK, Versions { versions }))
    }
    .await;
    finish(call, result)
}

#[utoipa::path(
    patch,
    path = "/v1/clients/{clientId}/backup-share-pairs",
    tag = TAG,
    operation_id = "updateBackupSharePairs",
    summary = "Move backup share pairs forward to a status",
    description = "All or none: an unknown pair or an illegal transition changes nothing. Backend role.",
    params(Client),
    request_body(content = UpdatePairsRequest, content_type = "application/json"),
    responses(
        (status = 204, description = "updated"),
        (status = 404, description = "no such route, or no such pair (`not_found`)", body = ErrorBody),
        (status = 409, description = "an illegal transition (`failed_precondition`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn update_pairs(
    State(state): State<ApiState>,
    ApiPath(client_id): ApiPath<String>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "UpdateBackupSharePairs");
    call.client(&client_id);
    let result = async {
        let (vault, who) = state.authorize(&headers, Role::Backend, from).await?;
        let object = read_object(&headers, body, state.max_body).await?;
        let ids = match object.get(Field::BackupSharePairIds.json_name()) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| {
                    HttpError::bad_request("backupSharePairIds: must be an array of strings")
                })?,
            None | Some(Value::Null) => {
                return Err(HttpError::bad_request("backupSharePairIds: is required"));
            }
            Some(_) => {
                return Err(HttpError::bad_request(
                    "backupSharePairIds: must be an array of strings",
                ));
            }
        };
        let status = parse_status(required(&object, Field::Status)?)?;
        vault
            .update_pairs(&client_id, &ids, status, &who.name)
            .await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    finish(call, result)
}

#[utoipa::path(
    delete,
    path = "/v1/clients/{clientId}",
    tag = TAG,
    operation_id = "deleteClient",
    summary = "Erase everything held for a client",
    description = "Custodian shares, client shares and pairs. Backend role.",
    params(Client),
    responses((status = 200, description = "the counts erased", body = ClientDeleted)),
    security(("bearer" = [])),
)]
async fn delete_client(
    State(state): State<ApiState>,
    ApiPath(client_id): ApiPath<String>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "DeleteClient");
    call.client(&client_id);
    let result = async {
        let (vault, who) = state.authorize(&headers, Role::Backend, from).await?;
        let (custodian, client, pairs) = vault.delete_client(&client_id, &who.name).await?;
        Ok(json(
            StatusCode::OK,
            ClientDeleted {
                custodian_shares_deleted: custodian,
                client_shares_deleted: client,
                backup_share_pairs_deleted: pairs,
            },
        ))
    }
    .await;
    finish(call, result)
}

/// Liveness: answers only if the database answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = TAG,
    operation_id = "healthz",
    summary = "Liveness: 200 when the database answers; no token",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Probe)),
)]
async fn healthz(State(state): State<ApiState>) -> Response {
    let result = match state.ready.get() {
        Ok(vault) => vault.status().await.map_err(HttpError::from),
        Err(err) => Err(HttpError::from(err)),
    };
    match result {
        Ok(_) => json(
            StatusCode::OK,
            Probe {
                status: "ok",
                seal: None,
            },
        ),
        Err(err) => err.into_response(),
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = TAG,
    operation_id = "metrics",
    summary = "Prometheus metrics (text exposition format 0.0.4); no token",
    responses((status = 200, description = "the metrics", body = String, content_type = "text/plain")),
)]
async fn metrics(State(state): State<ApiState>) -> Response {
    let status = match state.ready.get() {
        Ok(vault) => vault.status().await.ok(),
        Err(_) => None,
    };
    let gauges = crate::metrics::Gauges {
        custodian_shares: status.as_ref().map_or(0, |s| s.counts.custodian_shares),
        client_shares: status.as_ref().map_or(0, |s| s.counts.client_shares),
        backup_share_pairs: status.as_ref().map_or(0, |s| s.counts.backup_share_pairs),
        tokens: status.as_ref().map_or(0, |s| s.counts.tokens),
        database_bytes: status.as_ref().and_then(|s| s.database_bytes).unwrap_or(0),
        uptime_seconds: status.as_ref().map_or(0, |s| s.uptime_secs),
        ready: status.is_some(),
        seal_reachable: state.ready.seal_reachable(),
    };
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.scrape.render(&gauges),
    )
        .into_response()
}

/// Readiness: the database is open, the master key verified, and the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = TAG,
    operation_id = "readyz",
    summary = "Readiness: 200 while the vault is open and its database answers (with whether a PKCS#11 seal's token answers); no token",
    responses((status = 200, description = "`{\"status\": \"ready\"}`", body = Probe)),
)]
async fn readyz(State(state): State<ApiState>) -> Response {
    match state.ready.get().and_then(|vault| vault.ready()) {
        Ok(()) => json(
            StatusCode::OK,
            Probe {
                status: "ready",
                seal: state.ready.token_seal().map(|seal| {
                    if seal.reachable() {
                        "reachable"
                    } else {
                        "unreachable"
                    }
                }),
            },
        ),
        Err(err) => HttpError::from(err).into_response(),
    }
}

/// This document: it holds no secret, so it needs no token.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = TAG,
    operation_id = "openapi",
    summary = "This OpenAPI document; no token (it holds no secret)",
    responses((status = 200, description = "the document", body = Object, content_type = "application/json")),
)]
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(super::openapi::document);
    json_bytes(StatusCode::OK, DOCUMENT.as_bytes().to_vec())
}

/// The `{clientId}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by position with `ApiPath`
struct Client {
    /// 1-128 of `A-Z a-z 0-9 . _ - : @`, not only dots.
    #[param(rename = "clientId")]
    client_id: String,
}

/// The `{clientId}` and `{backupSharePairId}` path parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by position with `ApiPath`
struct ClientPair {
    /// 1-128 of `A-Z a-z 0-9 . _ - : @`, not only dots.
    #[param(rename = "clientId")]
    client_id: String,
    /// 1-128 of `A-Z a-z 0-9 . _ - :`.
    #[param(rename = "backupSharePairId")]
    backup_share_pair_id: String,
}

/// The optional `backupSharePairId` query of an eject.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PairQuery {
    /// The share of this backup share pair, current or kept. Without it: the current share,
    /// unless its pair is not completed and a kept share of a completed pair is held.
    #[serde(rename = "backupSharePairId")]
    #[param(rename = "backupSharePairId")]
    backup_share_pair_id: Option<String>,
}

/// The `{clientId}` and `{backupMethod}` path parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by position with `ApiPath`
struct ClientMethod {
    /// 1-128 of `A-Z a-z 0-9 . _ - : @`, not only dots.
    #[param(rename = "clientId")]
    client_id: String,
    /// 1-64 printable ASCII characters (percent-encoded in the path).
    #[param(rename = "backupMethod")]
    backup_method: String,
}
