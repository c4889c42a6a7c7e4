//! The JSON API for backends without gRPC, on the private listener
//! (`Authorization: Bearer <token>`, the same roles as the BackupService).

use super::webhook::finish;
use super::{
    HttpError, Source, json, method_not_allowed, not_found, read_object, required, rfc3339,
};
use crate::api::Ready;
use crate::api::observe::Call;
use crate::auth::{Principal, Role};
use crate::error::Field;
use crate::vault::Vault;
use crate::vault::status::parse_status;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

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
    fn authorize(
        &self,
        headers: &HeaderMap,
        role: Role,
        from: Option<std::net::IpAddr>,
    ) -> Result<(&Arc<Vault>, Principal), HttpError> {
        let vault = self.ready.get()?;
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let who = vault.authorize(authorization, role, from)?;
        Ok((vault, who))
    }
}

/// The JSON routes of the private listener.
/// The private listener's JSON API; it counts its calls into `calls` and serves `scrape` at
/// `GET /metrics`.
pub fn router(
    ready: Ready,
    calls: crate::metrics::CallMetrics,
    scrape: crate::metrics::ScrapeMetrics,
    max_body: usize,
    timeout: Duration,
) -> Router {
    let share = "/v1/clients/{client_id}/client-backup-shares/{backup_method}";
    Router::new()
        .route(
            share,
            put(put_client_share)
                .get(get_client_share)
                .delete(delete_client_share)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/clients/{client_id}/backups",
            get(list_backups).fallback(method_not_allowed),
        )
        .route(
            "/v1/clients/{client_id}/custodian-backup-shares/{backup_method}",
            get(get_custodian_share).fallback(method_not_allowed),
        )
        .route(
            "/v1/clients/{client_id}/backup-share-pairs",
            get(list_pairs)
                .patch(update_pairs)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/clients/{client_id}",
            delete(delete_client).fallback(method_not_allowed),
        )
        .route("/healthz", get(healthz).fallback(method_not_allowed))
        .route("/readyz", get(readyz).fallback(method_not_allowed))
        .route("/metrics", get(metrics).fallback(method_not_allowed))
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
        let (vault, who) = state.authorize(&headers, Role::Backend, from)?;
        let object = read_object(&headers, body, state.max_body).await?;
        let cipher_text = required(&object, Field::CipherText)?;
        let completed = vault
            .store_client_share(&client_id, &backup_method, cipher_text, &who.name)
            .await?;
        Ok(json(
            StatusCode::OK,
            json!({
                "clientId": client_id,
                "backupMethod": crate::validate::backup_method(&backup_method).unwrap_or_default(),
                "completedBackupSharePairIds": completed,
            }),
        ))
    }
    .await;
    finish(call, result)
}

async fn get_client_share(
    State(state): State<ApiState>,
    ApiPath((client_id, backup_method)): ApiPath<(String, String)>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "GetClientBackupShare");
    call.client(&client_id).backup_method(&backup_method);
    let result = async {
        let (vault, who) = state.authorize(&headers, Role::Backend, from)?;
        let share = vault
            .client_share(&client_id, &backup_method, &who.name)
            .await?;
        Ok(json(
            StatusCode::OK,
            json!({
                "cipherText": share.cipher_text.as_str(),
                "backupMethod": share.backup_method,
                "createdAt": rfc3339(share.created_at_ms),
            }),
        ))
    }
    .await;
    finish(call, result)
}

async fn delete_client_share(
    State(state): State<ApiState>,
    ApiPath((client_id, backup_method)): ApiPath<(String, String)>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "DeleteClientBackupShare");
    call.client(&client_id).backup_method(&backup_method);
    let result = async {
        let (vault, who) = state.authorize(&headers, Role::Backend, from)?;
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

async fn list_backups(
    State(state): State<ApiState>,
    ApiPath(client_id): ApiPath<String>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "ListBackups");
    call.client(&client_id);
    let result = async {
        let (vault, _) = state.authorize(&headers, Role::Backend, from)?;
        let methods: Vec<Value> = vault
            .list_backups(&client_id)
            .await?
            .into_iter()
            .map(|m| {
                json!({
                    "backupMethod": m.backup_method,
                    "status": m.status(),
                    "hasClientBackupShare": m.client_share_created_at_ms.is_some(),
                    "clientBackupShareCreatedAt": m.client_share_created_at_ms.map(rfc3339),
                    "custodianShares": m.custodian_shares.iter().map(|c| json!({
                        "backupMethod": c.backup_method,
                        "curve": c.curve,
                        "storedAt": rfc3339(c.stored_at_ms),
                        "backupSharePairId": c.pair_id,
                        "pairStatus": c.pair_status.map(|s| s.name()),
                        "status": c.pair_status.map_or("incomplete", |s| s.public()),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json(
            StatusCode::OK,
            json!({"clientId": client_id, "methods": methods}),
        ))
    }
    .await;
    finish(call, result)
}

async fn get_custodian_share(
    State(state): State<ApiState>,
    ApiPath((client_id, backup_method)): ApiPath<(String, String)>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "GetCustodianBackupShare");
    call.client(&client_id).backup_method(&backup_method);
    let result = async {
        let (vault, who) = state.authorize(&headers, Role::Eject, from)?;
        let share = vault
            .custodian_share(&client_id, &backup_method, &who.name)
            .await?;
        Ok(json(StatusCode::OK, json!({"orgShare": share.as_str()})))
    }
    .await;
    finish(call, result)
}

async fn list_pairs(
    State(state): State<ApiState>,
    ApiPath(client_id): ApiPath<String>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "ListBackupSharePairs");
    call.client(&client_id);
    let result = async {
        let (vault, _) = state.authorize(&headers, Role::Backend, from)?;
        let pairs: Vec<Value> = vault
            .list_pairs(&client_id)
            .await?
            .into_iter()
            .map(|p| {
                let (method, curve) = crate::validate::split_curve(&p.backup_method);
                json!({
                    "id": p.id,
                    "backupMethod": method,
                    "curve": curve,
                    "status": p.status.public(),
                    "internalStatus": p.status.name(),
                    "createdAt": rfc3339(p.created_at_ms),
                    "updatedAt": rfc3339(p.updated_at_ms),
                })
            })
            .collect();
        Ok(json(StatusCode::OK, json!({"backupSharePairs": pairs})))
    }
    .await;
    finish(call, result)
}

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
        let (vault, who) = state.authorize(&headers, Role::Backend, from)?;
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

async fn delete_client(
    State(state): State<ApiState>,
    ApiPath(client_id): ApiPath<String>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(&state.calls, "ApiHttp", "DeleteClient");
    call.client(&client_id);
    let result = async {
        let (vault, who) = state.authorize(&headers, Role::Backend, from)?;
        let (custodian, client, pairs) = vault.delete_client(&client_id, &who.name).await?;
        Ok(json(
            StatusCode::OK,
            json!({
                "custodianSharesDeleted": custodian,
                "clientSharesDeleted": client,
                "backupSharePairsDeleted": pairs,
            }),
        ))
    }
    .await;
    finish(call, result)
}

/// Liveness: answers only if the database answers.
async fn healthz(State(state): State<ApiState>) -> Response {
    let result = state
        .ready
        .get()
        .and_then(|vault| vault.status())
        .map_err(HttpError::from);
    match result {
        Ok(_) => json(StatusCode::OK, json!({"status": "ok"})),
        Err(err) => err.into_response(),
    }
}

/// Prometheus metrics (text exposition format).
async fn metrics(State(state): State<ApiState>) -> Response {
    let status = state.ready.get().ok().and_then(|v| v.status().ok());
    let gauges = crate::metrics::Gauges {
        custodian_shares: status.as_ref().map_or(0, |s| s.counts.custodian_shares),
        client_shares: status.as_ref().map_or(0, |s| s.counts.client_shares),
        backup_share_pairs: status.as_ref().map_or(0, |s| s.counts.backup_share_pairs),
        tokens: status.as_ref().map_or(0, |s| s.counts.tokens),
        database_bytes: status.as_ref().and_then(|s| s.database_bytes).unwrap_or(0),
        uptime_seconds: status.as_ref().map_or(0, |s| s.uptime_secs),
        ready: status.is_some(),
    };
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.scrape.render(&gauges),
    )
        .into_response()
}

/// Readiness: the database is open and the master key verified.
async fn readyz(State(state): State<ApiState>) -> Response {
    match state.ready.get() {
        Ok(_) => json(StatusCode::OK, json!({"status": "ready"})),
        Err(err) => HttpError::from(err).into_response(),
    }
}
