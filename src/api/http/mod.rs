//! The HTTP/JSON front end: Portal's webhook on the public listener ([`webhook`]) and the
//! JSON API for backends on the private one ([`json_api`]). Both call the same vault as gRPC.
//!
//! Errors are JSON, `{"error": {"code", "message"}}`, with the status mapped once from
//! [`VaultError`] (or from the protocol problem: 413, 415, 405, 404). The JSON API's OpenAPI
//! document is generated from its handlers ([`openapi`]).

pub mod json_api;
pub mod jsonout;
pub mod openapi;
pub mod webhook;
pub mod wiped;

use crate::error::{Field, VaultError};
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::time::Duration;

/// An error answer.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
}

impl From<VaultError> for HttpError {
    fn from(err: VaultError) -> Self {
        let status = match &err {
            VaultError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            VaultError::NotFound(_) => StatusCode::NOT_FOUND,
            VaultError::FailedPrecondition(_) | VaultError::AlreadyExists(_) => {
                StatusCode::CONFLICT
            }
            VaultError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            VaultError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            VaultError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            VaultError::NotReady | VaultError::Unavailable | VaultError::Unsettled => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            VaultError::Corrupt | VaultError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &err {
            VaultError::InvalidArgument { field, reason } => {
                format!("{}: {reason}", field.json_name())
            }
            other => other.to_string(),
        };
        let mut out = Self::new(status, err.outcome(), message);
        if let VaultError::RateLimited { retry_after_secs } = err {
            out.retry_after = Some(retry_after_secs);
        }
        out
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = openapi::ErrorBody {
            error: openapi::ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, body: impl serde::Serialize) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A JSON answer already serialized; its bytes are wiped once sent (it may carry shares).
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        wiped::response_body(body),
    )
        .into_response()
}

/// A JSON answer that carries a share or a cipherText: serialized into a buffer that is wiped,
/// as are the bytes sent.
pub fn secret_json(status: StatusCode, body: impl serde::Serialize) -> Response {
    match wiped::to_json(&body) {
        Ok(mut bytes) => json_bytes(status, std::mem::take(&mut *bytes)),
        Err(_) => HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the answer could not be encoded",
        )
        .into_response(),
    }
}

/// Answers 404 for any unknown path.
pub async fn not_found() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Answers 405 for a known path with the wrong verb.
pub async fn method_not_allowed() -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// The address a request is attributed to (the peer, or behind a trusted proxy the
/// forwarding header's client); inserted by [`attribute_source`].
#[derive(Debug, Clone, Copy)]
pub struct Source(pub Option<std::net::IpAddr>);

/// Attributes each request to its source, believing `X-Forwarded-For` only from `proxies`.
pub async fn attribute_source(
    proxies: std::sync::Arc<Vec<ipnet::IpNet>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<crate::api::Peer>()
        .and_then(|p| p.0);
    let source = webhook::source(peer, request.headers(), &proxies);
    request.extensions_mut().insert(Source(source));
    next.run(request).await
}

/// Holds back the answer of a request given a penalty (an authentication failure past the
/// limit, [`crate::auth::penalty`]) until the penalty is over. Outside the request timeout.
pub async fn answer_late(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    crate::auth::penalty::served(next.run(request)).await
}

/// Answers 503 when a request takes longer than `limit`; the call it cut is logged and counted
/// as `timeout` ([`crate::api::observe::within_deadline`]).
pub async fn with_timeout(
    limit: Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let served = tokio::time::timeout(limit, next.run(request));
    match crate::api::observe::within_deadline(limit, served).await {
        Ok(response) => response,
        Err(_) => HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; try again",
        )
        .into_response(),
    }
}

/// Reads a JSON object body: `application/json` (415 otherwise), at most `limit` bytes (413),
/// one object without duplicate keys (400). Messages never echo the body. The body's bytes
/// and the object's strings are wiped when dropped ([`wiped`]).
pub async fn read_object(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<wiped::Object, HttpError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with Content-Type: application/json",
        ));
    }
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body must be at most {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                HttpError::bad_request("body: could not be read")
            }
        })?
        .to_bytes();
    let bytes = wiped::body(bytes);
    parse_object(&bytes).map(wiped::Object)
}

const DUPLICATE: &str = "duplicate key";

struct UniqueObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UniqueObject;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueObject, A::Error> {
                let mut out = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.contains_key(&key) {
                        return Err(de::Error::custom(DUPLICATE));
                    }
                    let value: Value = map.next_value()?;
                    out.insert(key, value);
                }
                Ok(UniqueObject(out))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Parses one JSON object, refusing duplicate keys at its top level.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, HttpError> {
    serde_json::from_slice::<UniqueObject>(bytes)
        .map(|o| o.0)
        .map_err(|err| {
            use serde_json::error::Category;
            HttpError::bad_request(match err.classify() {
                Category::Data if err.to_string().starts_with(DUPLICATE) => {
                    "body: a key appears more than once".to_owned()
                }
                Category::Data => "body: must be a JSON object".to_owned(),
                Category::Eof => "body: the JSON is truncated".to_owned(),
                Category::Syntax | Category::Io => format!(
                    "body: is not valid JSON (line {}, column {})",
                    err.line(),
                    err.column()
                ),
            })
        })
}

/// A string field: `None` when missing or null; 400 naming the field when of another type.
pub fn text(object: &Map<String, Value>, field: Field) -> Result<Option<&str>, HttpError> {
    match object.get(field.json_name()) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(HttpError::bad_request(format!(
            "{}: must be a string",
            field.json_name()
        ))),
    }
}

/// A required string field.
pub fn required(object: &Map<String, Value>, field: Field) -> Result<&str, HttpError> {
    text(object, field)?
        .ok_or_else(|| HttpError::bad_request(format!("{}: is required", field.json_name())))
}

/// Milliseconds since the epoch as RFC 3339.
pub fn rfc3339(ms: u64) -> String {
    crate::pb::timestamp(ms).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_parse_and_bad_bodies_never_echo() {
        let ok = parse_object(br#"{"clientId":"c","share":"{\"a\":1}"}"#).unwrap();
        assert_eq!(text(&ok, Field::Share).unwrap(), Some("{\"a\":1}"));
        for (body, expected) in [
            (
                &br#"{"clientId":"a","clientId":"b"}"#[..],
                "body: a key appears more than once",
            ),
            (br#""SECRET-VALUE""#, "body: must be a JSON object"),
            (br#"["SECRET-VALUE"]"#, "body: must be a JSON object"),
            (
                br#"{"clientId":"SECRET-VALUE""#,
                "body: the JSON is truncated",
            ),
        ] {
            let err = parse_object(body).unwrap_err();
            assert_eq!(err.message, expected);
        }
        let err = parse_object(br#"{"a": SECRET}"#).unwrap_err();
        assert!(err.message.starts_with("body: is not valid JSON"));
        assert!(!err.message.contains("SECRET"));
        let wrong = parse_object(br#"{"clientId": 42}"#).unwrap();
        assert_eq!(
            text(&wrong, Field::ClientId).unwrap_err().message,
            "clientId: must be a string"
        );
        assert_eq!(
            required(&wrong, Field::Share).unwrap_err().message,
            "share: is required"
        );
    }

    #[test]
    fn vault_errors_map_to_statuses_with_json_field_names() {
        let err = HttpError::from(VaultError::invalid(Field::ClientId, "is required"));
        assert_eq!(
            (err.status, err.message.as_str()),
            (StatusCode::BAD_REQUEST, "clientId: is required")
        );
        let err = HttpError::from(VaultError::FailedPrecondition("x".into()));
        assert_eq!(err.status, StatusCode::CONFLICT);
        let err = HttpError::from(VaultError::Unauthenticated("x"));
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            HttpError::from(VaultError::NotReady).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
