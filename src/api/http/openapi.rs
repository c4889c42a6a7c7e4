//! The JSON API's OpenAPI 3.1 document, and the bodies it describes.
//!
//! The document is generated from the code: each handler of [`super::json_api`] carries a
//! `#[utoipa::path]`, the router is built from those handlers with `utoipa_axum` (so a route
//! cannot be served without being described), and the answers below are the types the handlers
//! serialize (a member that may be null is always present, so it is `required` too).
//! [`complete`] adds what is common to every route: the bearer-token scheme and the
//! error answers, whose body is [`ErrorBody`], the one shape [`super::HttpError`] writes.
//! The daemon serves it at `GET /openapi.json` (no token: it holds no secret); it is committed
//! as `docs/openapi.json`, written by the hidden `sharevault openapi` command.

use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa::{PartialSchema, ToSchema};

/// The name of the bearer-token security scheme in the document (as each secured
/// `#[utoipa::path]` names it: the macro takes a literal).
const BEARER: &str = "bearer";

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

/// What went wrong: a stable code and a message that names the field at fault (never a
/// secret or the value sent).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// `invalid_argument`, `unauthenticated`, `permission_denied`, `not_found`,
    /// `method_not_allowed`, `failed_precondition`, `already_exists`, `payload_too_large`,
    /// `unsupported_media_type`, `rate_limited`, `not_ready`, `unavailable`, `timeout`,
    /// `data_loss` or `internal`.
    #[schema(example = "invalid_argument")]
    pub code: &'a str,
    #[schema(example = "clientId: is required")]
    pub message: &'a str,
}

/// `PUT .../client-backup-shares/{backupMethod}`: the client share, encrypted by the client.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // read field by field from the parsed object (duplicate keys are refused)
pub struct StoreClientShareRequest {
    cipher_text: String,
}

/// A client share stored, and the pairs it completed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientShareStored<'a> {
    pub client_id: &'a str,
    pub backup_method: &'a str,
    pub completed_backup_share_pair_ids: Vec<String>,
}

/// A client share, as stored.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientShareBody<'a> {
    pub cipher_text: &'a str,
    pub backup_method: &'a str,
    /// RFC 3339.
    pub created_at: String,
    /// The backup share pairs this cipherText completed when it was stored: its backup.
    pub backup_share_pair_ids: &'a [String],
}

/// A client's client shares, current and kept, without cipherTexts.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientShares<'a> {
    pub client_id: &'a str,
    /// Current shares first, in method order, then kept ones, newest first.
    pub client_backup_shares: Vec<ClientShareInfo>,
}

/// One held client share, without its cipherText.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientShareInfo {
    pub backup_method: String,
    /// Whether it is the current share of its method.
    pub current: bool,
    /// The kept version's number; absent for the current share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// RFC 3339.
    pub created_at: String,
    /// The backup share pairs it completed when it was stored.
    pub backup_share_pair_ids: Vec<String>,
}

/// What a client holds, per bare backup method.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backups<'a> {
    pub client_id: &'a str,
    pub methods: Vec<MethodBackups>,
}

/// One bare backup method of `Backups`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MethodBackups {
    pub backup_method: String,
    /// `completed` or `incomplete`.
    pub status: &'static str,
    pub has_client_backup_share: bool,
    /// RFC 3339; null when no client share is held.
    #[schema(required = true)]
    pub client_backup_share_created_at: Option<String>,
    pub custodian_shares: Vec<CustodianShareInfo>,
}

/// One custodian share of a `MethodBackups` (never its bytes).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustodianShareInfo {
    pub backup_method: String,
    pub curve: String,
    /// RFC 3339.
    pub stored_at: String,
    #[schema(required = true)]
    pub backup_share_pair_id: Option<String>,
    /// Portal's status name of the pair; null when the share names no pair.
    #[schema(required = true)]
    pub pair_status: Option<&'static str>,
    /// `completed` or `incomplete`.
    pub status: &'static str,
    /// Whether a client share covering this curve is held (under the bare method or under
    /// this `METHOD-CURVE`).
    pub has_client_backup_share: bool,
}

/// A custodian share, for the eject role.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustodianShareBody<'a> {
    pub org_share: &'a str,
    /// The pair the share belongs to; absent for a share stored without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_share_pair_id: Option<&'a str>,
}

/// A client's backup share pairs.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pairs {
    pub backup_share_pairs: Vec<Pair>,
}

/// One backup share pair.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pair {
    pub id: String,
    pub backup_method: String,
    #[schema(required = true)]
    pub curve: Option<String>,
    /// `completed` or `incomplete`.
    pub status: &'static str,
    /// `STORED_CUSTODIAN_BACKUP_SHARE`, `STORED_CLIENT_BACKUP_SHARE_KEY` or
    /// `STORED_CLIENT_BACKUP_SHARE`.
    pub internal_status: &'static str,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// `PATCH .../backup-share-pairs`: move pairs forward to a status.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // read field by field from the parsed object (duplicate keys are refused)
pub struct UpdatePairsRequest {
    backup_share_pair_ids: Vec<String>,
    /// `STORED_CUSTODIAN_BACKUP_SHARE`, `STORED_CLIENT_BACKUP_SHARE_KEY` or
    /// `STORED_CLIENT_BACKUP_SHARE`.
    status: String,
}

/// The records a client's erasure deleted.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientDeleted {
    pub custodian_shares_deleted: u64,
    pub client_shares_deleted: u64,
    pub backup_share_pairs_deleted: u64,
}

/// The answer of `/healthz` (`ok`) and `/readyz` (`ready`). Under a PKCS#11 seal, `/readyz`
/// also says whether the token answered its last check (`seal`: `reachable` or
/// `unreachable`); the vault serves from the root key in memory either way.
#[derive(Serialize, ToSchema)]
pub struct Probe {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal: Option<&'static str>,
}

/// The error answers every operation may give, and when. Those of one route alone (a record
/// that is absent, an illegal transition) are in its own `#[utoipa::path]`.
fn common_errors(operation: &Operation) -> Vec<(&'static str, &'static str)> {
    let mut out = vec![
        ("404", "no such route"),
        (
            "405",
            "a known route with the wrong method (`method_not_allowed`)",
        ),
        ("500", "an internal error; nothing was changed"),
        (
            "503",
            "starting, stopping, storage unavailable, or the request ran past the request timeout",
        ),
    ];
    if operation.security.is_some() {
        out.extend([
            (
                "400",
                "a path segment or body field is malformed or outside its rules; the message names the field",
            ),
            ("401", "missing or wrong bearer token"),
            ("403", "the token's role does not allow the call"),
            (
                "429",
                "too many failed authentications from this source; see `Retry-After`",
            ),
        ]);
    }
    if operation.request_body.is_some() {
        out.extend([
            ("413", "the body is over the request size limit"),
            (
                "415",
                "the body was not sent as `Content-Type: application/json`",
            ),
        ]);
    }
    out
}

/// Completes the document generated from the router: the bearer scheme, the error body, and
/// the error answers of every operation.
pub fn complete(mut doc: OpenApi) -> OpenApi {
    doc.info.title = "sharevault JSON API".to_owned();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.info.description = Some(
        "The JSON API of sharevault's private listener, beside gRPC. Authenticate with \
         `Authorization: Bearer <token>` (tokens from `sharevault token create`). Every error \
         is `{\"error\": {\"code\", \"message\"}}` and changes nothing."
            .to_owned(),
    );
    doc.info.license = None;
    doc.info.contact = None;
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        BEARER.to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token; its role decides the routes it may call.",
                ))
                .build(),
        )
        .into(),
    );
    let error_schema = ErrorBody::name().into_owned();
    let mut schemas = Vec::new();
    <ErrorBody as ToSchema>::schemas(&mut schemas);
    schemas.push((error_schema.clone(), ErrorBody::schema()));
    components.schemas.extend(schemas);
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
            &mut item.post,
        ]
        .into_iter()
        .flatten()
        {
            for (status, when) in common_errors(operation) {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| {
                        ResponseBuilder::new()
                            .description(when)
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(Ref::from_schema_name(&error_schema)))
                                    .build(),
                            )
                            .build()
                            .into()
                    });
            }
        }
    }
    doc
}

/// The document as committed in `docs/openapi.json`: pretty JSON and a final newline.
pub fn document() -> String {
    let doc = super::json_api::openapi();
    let mut text = doc.to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// A client's shares, current and kept (never their bytes).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Versions {
    pub versions: Vec<ShareVersion>,
}

/// One share of `Versions`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShareVersion {
    /// `custodian` or `client`.
    pub kind: &'static str,
    pub backup_method: String,
    /// 0 for the current share, else the version's number.
    pub version: u64,
    pub current: bool,
    #[schema(required = true)]
    pub backup_share_pair_id: Option<String>,
    /// Portal's status name of the pair; null when the share names no pair.
    #[schema(required = true)]
    pub pair_status: Option<&'static str>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; null for the current share.
    #[schema(required = true)]
    pub superseded_at: Option<String>,
}
