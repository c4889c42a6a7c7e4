//! Portal's webhook, as Portal calls it: `POST {prefix}/backup` and `POST {prefix}/backup/fetch`
//! with `X-Webhook-Secret`, plus `GET /healthz`. Nothing else is served on this listener.

use super::{
    HttpError, Source, json, json_bytes, jsonout, method_not_allowed, not_found, read_object,
    required, text,
};
use crate::api::Peer;
use crate::api::Ready;
use crate::api::observe::Call;
use crate::config::WebhookConfig;
use crate::error::Field;
use crate::vault::BackupInput;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ipnet::IpNet;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The header Portal sends the secret in.
pub const SECRET_HEADER: &str = "x-webhook-secret";

#[derive(Clone)]
struct WebhookState {
    ready: Ready,
    calls: crate::metrics::CallMetrics,
    config: Arc<WebhookConfig>,
    max_body: usize,
}

/// The public listener's routes.
pub fn router(
    ready: Ready,
    calls: crate::metrics::CallMetrics,
    config: WebhookConfig,
    max_body: usize,
    timeout: Duration,
) -> Router {
    let prefix = config.path_prefix.clone();
    let proxies = Arc::new(config.trusted_proxies.clone());
    let state = WebhookState {
        ready,
        calls,
        config: Arc::new(config),
        max_body,
    };
    Router::new()
        .route(
            &format!("{prefix}/backup"),
            post(backup).fallback(method_not_allowed),
        )
        .route(
            &format!("{prefix}/backup/fetch"),
            post(fetch).fallback(method_not_allowed),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), allow_list))
        .route("/healthz", get(health).fallback(method_not_allowed))
        .fallback(not_found)
        .layer(middleware::from_fn(move |req, next| {
            super::with_timeout(timeout, req, next)
        }))
        .layer(middleware::from_fn(super::answer_late))
        .layer(middleware::from_fn(move |req, next| {
            super::attribute_source(Arc::clone(&proxies), req, next)
        }))
        .with_state(state)
}

/// The address a request is attributed to: the peer, or, when the peer is a trusted proxy,
/// the nearest address in `X-Forwarded-For` that is not itself a trusted proxy. The header is
/// read from its end (each proxy appends the address it received from), so what a client
/// wrote at its start never counts for more than the client's own address. A hop that cannot
/// be read ends the walk at the nearest trusted address met: the request is then counted
/// against that proxy rather than against no one.
pub(super) fn source(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let trusted = |ip: &IpAddr| proxies.iter().any(|p| p.contains(ip));
    if !trusted(&peer) {
        return Some(peer);
    }
    let mut nearest = peer;
    let values: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    for value in values.into_iter().rev() {
        let Ok(value) = value.to_str() else {
            return Some(nearest);
        };
        for hop in value.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) if trusted(&ip) => nearest = ip,
                Ok(ip) => return Some(ip),
                Err(_) => return Some(nearest),
            }
        }
    }
    Some(nearest)
}

/// Refuses (403) a webhook call from a source outside the allow-list; the refusal is logged
/// and counted as the call's outcome `forbidden`. A source that is not a trusted proxy never
/// gets this far when the allow-list is set: its connection is closed when accepted
/// ([`crate::server::serve`]); here the forwarded address of a proxied call decides.
async fn allow_list(State(state): State<WebhookState>, request: Request, next: Next) -> Response {
    let allow = &state.config.allow;
    if allow.is_empty() {
        return next.run(request).await;
    }
    let peer = request.extensions().get::<Peer>().and_then(|p| p.0);
    let from = request.extensions().get::<Source>().and_then(|s| s.0);
    // Behind a proxy whose `X-Forwarded-For` could not name the client, the client is unknown.
    let proxies = &state.config.trusted_proxies;
    let unknown = from.is_some_and(|ip| proxies.iter().any(|p| p.contains(&ip)))
        && request.headers().contains_key("x-forwarded-for");
    if !unknown && from.is_some_and(|ip| allow.iter().any(|net| net.contains(&ip))) {
        next.run(request).await
    } else {
        let method = if request.uri().path().ends_with("/fetch") {
            "Fetch"
        } else {
            "Backup"
        };
        let mut call = Call::new(&state.calls, "WebhookHttp", method);
        call.source(peer, from);
        call.finish_with("forbidden");
        HttpError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this source address may not call the webhook",
        )
        .into_response()
    }
}

fn secret(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(SECRET_HEADER).map(|v| v.as_bytes())
}

async fn backup(
    State(state): State<WebhookState>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut call = Call::new(&state.calls, "WebhookHttp", "Backup");
    let result: Result<Response, HttpError> = async {
        let vault = state.ready.get()?;
        vault.verify_webhook_secret(secret(&headers), from)?;
        let object = read_object(&headers, body, state.max_body).await?;
        let client_id = required(&object, Field::ClientId)?;
        let backup_method = text(&object, Field::BackupMethod)?.unwrap_or("");
        call.client(client_id).backup_method(backup_method);
        let share = required(&object, Field::Share)?;
        let pair = text(&object, Field::BackupSharePairId)?;
        let stored = vault
            .backup(
                BackupInput {
                    client_id,
                    backup_method,
                    share,
                    backup_share_pair_id: pair,
                },
                "webhook",
            )
            .await?;
        let mut body = json!({"message": "backup share stored"});
        if let Some(pair) = stored {
            body["backupSharePairId"] = pair.into();
        }
        Ok(json(StatusCode::OK, body))
    }
    .await;
    finish(call, result)
}

async fn fetch(
    State(state): State<WebhookState>,
    Extension(Source(from)): Extension<Source>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut call = Call::new(&state.calls, "WebhookHttp", "Fetch");
    let result: Result<Response, HttpError> = async {
        let vault = state.ready.get()?;
        vault.verify_webhook_secret(secret(&headers), from)?;
        let object = read_object(&headers, body, state.max_body).await?;
        let client_id = required(&object, Field::ClientId)?;
        call.client(client_id);
        let shares = vault.fetch(client_id, "webhook").await?;
        let items: Vec<&str> = shares.iter().map(|s| s.share.as_str()).collect();
        let latest = shares
            .iter()
            .filter(|_| state.config.legacy_backup_share)
            .max_by_key(|s| s.stored_at_ms)
            .map(|s| ("backupShare", s.share.as_str()));
        let body = jsonout::object_of_strings("backupShares", &items, latest.as_slice());
        Ok(json_bytes(StatusCode::OK, body))
    }
    .await;
    finish(call, result)
}

async fn health(State(state): State<WebhookState>) -> Response {
    match state.ready.get() {
        Ok(_) => json(StatusCode::OK, json!({"status": "ok"})),
        Err(err) => HttpError::from(err).into_response(),
    }
}

/// Logs the call and answers.
pub(super) fn finish(call: Call, result: Result<Response, HttpError>) -> Response {
    match result {
        Ok(response) => {
            call.finish_with("ok");
            response
        }
        Err(err) => {
            call.finish_with(err.code);
            err.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "1.2.3.4, 35.203.150.117, 10.0.0.7".parse().unwrap(),
        );
        let portal: IpAddr = "35.203.150.117".parse().unwrap();
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(source(Some(proxy), &headers, &proxies), Some(portal));
        assert_eq!(source(Some(stranger), &headers, &proxies), Some(stranger));
        assert_eq!(source(Some(stranger), &headers, &[]), Some(stranger));
        assert_eq!(source(None, &HeaderMap::new(), &proxies), None);
    }

    #[test]
    fn an_unreadable_forwarded_hop_never_turns_attribution_off() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-for", value.parse().unwrap());
            headers
        };
        // What the client wrote before its own address, which the proxy appended, is ignored.
        assert_eq!(
            source(Some(proxy), &with("garbage, 203.0.113.9"), &proxies),
            Some(client)
        );
        // A hop written by a trusted proxy that cannot be read: counted against the nearest
        // trusted proxy.
        assert_eq!(
            source(Some(proxy), &with("unknown, 10.0.0.7"), &proxies),
            Some("10.0.0.7".parse().unwrap())
        );
        assert_eq!(
            source(Some(proxy), &with("not an address"), &proxies),
            Some(proxy)
        );
        let mut bytes = HeaderMap::new();
        bytes.insert(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        assert_eq!(source(Some(proxy), &bytes, &proxies), Some(proxy));
    }
}
