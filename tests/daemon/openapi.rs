//! The JSON API's OpenAPI document (`docs/openapi.json`): the committed file is what the code
//! generates and a real validator accepts it; the daemon serves it; and every route, method,
//! answer and error the daemon gives is in it, with a body of the documented shape.

use crate::http_api::JsonApi;
use crate::http_client::Reply;
use serde_json::{Value, json};
use std::process::Command;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
const REGENERATE: &str = "regenerate it with `cargo run -- openapi > docs/openapi.json`";
const METHODS: [&str; 5] = ["GET", "PUT", "POST", "PATCH", "DELETE"];

fn committed() -> String {
    std::fs::read_to_string(COMMITTED).unwrap_or_else(|e| panic!("{COMMITTED}: {e}; {REGENERATE}"))
}

/// Runs `openapi-spec-validator` on `file`: whether it accepted it, and what it said.
fn validate(file: &std::path::Path) -> (bool, String) {
    let out = Command::new("openapi-spec-validator")
        .args(["--schema", "3.1"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "openapi-spec-validator cannot run ({e}): install it with \
                 `pip install openapi-spec-validator==0.9.0` (.ci/run does)"
            )
        });
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

#[test]
fn the_committed_document_is_current_and_a_valid_openapi_3_1_document() {
    let out = Command::new(env!("CARGO_BIN_EXE_sharevault"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == committed().as_bytes(),
        "docs/openapi.json is not the document the code generates: {REGENERATE}"
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (&bearer["type"], &bearer["scheme"]),
        (&json!("http"), &json!("bearer"))
    );

    let (ok, said) = validate(COMMITTED.as_ref());
    assert!(
        ok,
        "openapi-spec-validator refused docs/openapi.json:\n{said}"
    );
    // The validator does look: a reference to a schema that does not exist is refused.
    let mut broken = doc.clone();
    broken["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] =
        json!({"$ref": "#/components/schemas/Missing"});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.json");
    std::fs::write(&file, broken.to_string()).unwrap();
    assert!(!validate(&file).0, "the validator accepted a dangling $ref");
}

/// Checks `value` against `schema` as the document states it: types (nullable ones too), the
/// required members, and no member the document does not name.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(name) = schema["$ref"].as_str() {
        let name = name.strip_prefix("#/components/schemas/").unwrap();
        return conforms(doc, &doc["components"]["schemas"][name], value, at);
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    assert!(
        types.is_empty() || types.contains(&actual),
        "{at}: the daemon answered {actual} where the document says {types:?}"
    );
    match value {
        Value::Object(members) => {
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                assert!(
                    members.contains_key(name),
                    "{at}: `{name}` is required but absent"
                );
            }
            let Some(properties) = schema["properties"].as_object() else {
                return;
            };
            for (name, member) in members {
                let property = properties
                    .get(name)
                    .unwrap_or_else(|| panic!("{at}.{name}: answered but not in the document"));
                conforms(doc, property, member, &format!("{at}.{name}"));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                conforms(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

/// Checks that the document lists `reply`'s status for `method` on `route` (a path of the
/// document), and that its body is of the documented shape.
fn answered_as_documented(doc: &Value, method: &str, route: &str, reply: &Reply) {
    let what = format!("{method} {route} answered {}", reply.status);
    let operation = &doc["paths"][route][method.to_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {route} is not in the document"
    );
    let response = &operation["responses"][reply.status.to_string()];
    assert!(
        response.is_object(),
        "{what}, a status the document does not list"
    );
    let content_type = reply
        .headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    match response["content"].as_object() {
        None => assert!(
            reply.body.is_empty(),
            "{what} with a body the document does not have"
        ),
        Some(content) if content.contains_key("application/json") => {
            assert_eq!(content_type, "application/json", "{what}");
            let schema = &content["application/json"]["schema"];
            conforms(doc, schema, &reply.json(), &what);
        }
        Some(content) => {
            let media = content_type.split(';').next().unwrap_or_default();
            assert!(
                content.contains_key(media),
                "{what} as {content_type}, not documented"
            );
        }
    }
}

/// A daemon holding u1's PASSWORD custodian shares, with the document it serves.
struct Served {
    json: JsonApi,
    doc: Value,
}

impl std::ops::Deref for Served {
    type Target = JsonApi;

    fn deref(&self) -> &JsonApi {
        &self.json
    }
}

impl Served {
    async fn start() -> Self {
        let json = JsonApi::start().await;
        json.store_custodian_shares().await;
        let served = json.api.send("GET", "/openapi.json", &[], None).await;
        assert_eq!(served.status, 200, "GET /openapi.json needs no token");
        assert!(
            served.body == committed().as_bytes(),
            "the daemon serves another document than docs/openapi.json: {REGENERATE}"
        );
        let doc = served.json();
        Self { json, doc }
    }

    /// PATCHes u1's pairs `ids` to `status`.
    async fn patch(&self, ids: &[&str], status: &str) -> Reply {
        let body = json!({"backupSharePairIds": ids, "status": status}).to_string();
        self.call("PATCH", PAIRS, Some(&self.eject), Some(body.as_bytes()))
            .await
    }

    /// Sends `method` on `route` (a path of the document, its parameters filled in for u1).
    async fn call(
        &self,
        method: &str,
        route: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Reply {
        let method_name = if route.contains("custodian") {
            "PASSWORD-SECP256K1"
        } else {
            "PASSWORD"
        };
        let path = route
            .replace("{clientId}", "u1")
            .replace("{backupMethod}", method_name)
            .replace("{backupSharePairId}", "pair-SECP256K1");
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(token.map(|t| ("authorization", t)));
        self.api.send(method, &path, &headers, body).await
    }
}

/// A valid body for each operation that takes one.
fn sample_body(operation_id: &str) -> Value {
    match operation_id {
        "storeClientBackupShare" => json!({"cipherText": "Y2lwaGVy"}),
        "updateBackupSharePairs" => json!({
            "backupSharePairIds": ["pair-SECP256K1", "pair-ED25519"],
            "status": "STORED_CLIENT_BACKUP_SHARE",
        }),
        other => panic!("no sample body for {other}: add one here"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_as_documented_and_no_other_method_does() {
    let served = Served::start().await;
    let doc = &served.doc;
    let mut operations = Vec::new();
    for (route, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations.push((method.to_uppercase(), route.clone(), operation.clone()));
        }
    }
    // Writes first, then reads, then deletes, the client itself last.
    let rank = |m: &str| {
        ["PUT", "PATCH", "GET", "DELETE"]
            .iter()
            .position(|x| *x == m)
    };
    operations.sort_by_key(|(m, route, _)| (rank(m), std::cmp::Reverse(route.len())));
    assert_eq!(
        operations.len(),
        15,
        "the document's operations: {operations:?}"
    );
    for (method, route, operation) in &operations {
        let body = operation["requestBody"].is_object().then(|| {
            sample_body(operation["operationId"].as_str().unwrap())
                .to_string()
                .into_bytes()
        });
        let reply = served
            .call(method, route, Some(&served.eject), body.as_deref())
            .await;
        assert!(
            (200..300).contains(&reply.status),
            "{method} {route}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        answered_as_documented(doc, method, route, &reply);
    }
    for (route, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS
            .iter()
            .filter(|m| !item.as_object().unwrap().contains_key(&m.to_lowercase()))
        {
            let reply = served.call(method, route, Some(&served.eject), None).await;
            assert_eq!(
                reply.status, 405,
                "{method} {route}: the server answers a method the document does not list"
            );
            let documented = item
                .as_object()
                .unwrap()
                .keys()
                .next()
                .unwrap()
                .to_uppercase();
            answered_as_documented(doc, &documented, route, &reply);
        }
    }
    let unknown = served
        .call("GET", "/v1/clients/{clientId}/nothing", None, None)
        .await;
    assert_eq!(unknown.status, 404);
    conforms(
        doc,
        &json!({"$ref": "#/components/schemas/ErrorBody"}),
        &unknown.json(),
        "GET unknown route",
    );
}

const SHARE: &str = "/v1/clients/{clientId}/client-backup-shares/{backupMethod}";
const PAIRS: &str = "/v1/clients/{clientId}/backup-share-pairs";

/// Checks that `reply` has `status`, that the document lists it for the route with the shape
/// the body has, and that an error says what was wrong.
fn expect(doc: &Value, status: u16, method: &str, route: &str, reply: Reply) {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, status, "{method} {route}: {body}");
    answered_as_documented(doc, method, route, &reply);
    if status >= 400 {
        assert!(
            !reply.error_message().is_empty(),
            "{method} {route}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_and_record_errors_are_documented_with_their_shape() {
    let served = Served::start().await;
    let (doc, eject) = (&served.doc, Some(served.eject.as_str()));
    let custodian = "/v1/clients/{clientId}/custodian-backup-shares/{backupMethod}";
    let reply = served.call("GET", SHARE, None, None).await;
    expect(doc, 401, "GET", SHARE, reply);
    let reply = served
        .call("GET", SHARE, Some("Bearer wrong-token"), None)
        .await;
    expect(doc, 401, "GET", SHARE, reply);
    let reply = served
        .call("GET", custodian, Some(&served.backend), None)
        .await;
    expect(doc, 403, "GET", custodian, reply);
    let reply = served.call("GET", SHARE, eject, None).await;
    expect(doc, 404, "GET", SHARE, reply);
    let reply = served.call("DELETE", SHARE, eject, None).await;
    expect(doc, 404, "DELETE", SHARE, reply);
    let headers = [("authorization", served.eject.as_str())];
    let reply = served
        .api
        .send("GET", "/v1/clients/u%20u/backups", &headers, None)
        .await;
    expect(doc, 400, "GET", "/v1/clients/{clientId}/backups", reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_and_transition_errors_are_documented_with_their_shape() {
    let served = Served::start().await;
    let (doc, eject) = (&served.doc, Some(served.eject.as_str()));
    let share = sample_body("storeClientBackupShare").to_string();
    let reply = served
        .call("PUT", SHARE, eject, Some(b"{\"cipherText\": 1}"))
        .await;
    expect(doc, 400, "PUT", SHARE, reply);
    let reply = served.call("PUT", SHARE, eject, Some(b"[1]")).await;
    expect(doc, 400, "PUT", SHARE, reply);
    let headers = [("authorization", served.eject.as_str())];
    let path = "/v1/clients/u1/client-backup-shares/PASSWORD";
    let reply = served
        .api
        .send("PUT", path, &headers, Some(share.as_bytes()))
        .await;
    expect(doc, 415, "PUT", SHARE, reply);
    let reply = served
        .call("PUT", SHARE, eject, Some(&[b' '; 300 * 1024]))
        .await;
    expect(doc, 413, "PUT", SHARE, reply);
    let reply = served
        .call("PUT", SHARE, eject, Some(share.as_bytes()))
        .await;
    expect(doc, 200, "PUT", SHARE, reply);
    let reply = served
        .patch(&["pair-ED25519"], "STORED_CUSTODIAN_BACKUP_SHARE")
        .await;
    expect(doc, 409, "PATCH", PAIRS, reply);
    let reply = served
        .patch(&["pair-NONE"], "STORED_CLIENT_BACKUP_SHARE")
        .await;
    expect(doc, 404, "PATCH", PAIRS, reply);
}
