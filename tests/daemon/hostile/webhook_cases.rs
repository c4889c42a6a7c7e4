//! Malformed calls to the public webhook listener.

use super::table::Expect::Error;
use super::table::{
    JSON, MAX_REQUEST_BYTES, MAX_SECRET_BYTES, Request, Table, To, WEBHOOK_VICTIM, bytes, chunked,
    http, invalid as bad, nested, raw_request_bytes, share_body,
};
use serde_json::json;

/// Malformed webhook calls: every field with the wrong type, empty, too large, with control
/// characters; bodies that are not JSON objects; wrong content types, credentials, methods
/// and paths; bodies over the limit.
pub fn webhook_cases(t: &mut Table) {
    fields(t);
    bodies_that_are_not_one_json_object(t);
    content_types(t);
    credentials(t);
    bodies_over_the_limit(t);
    methods_and_paths(t);
}

/// Every field with the wrong type, missing or empty, too large, with characters outside
/// the rules.
fn fields(t: &mut Table) {
    // Wrong JSON types, field by field.
    for (field, value) in [
        ("clientId", json!(7)),
        ("clientId", json!(["victim-w"])),
        ("clientId", json!({"id": "victim-w"})),
        ("clientId", json!(true)),
        ("backupMethod", json!(1)),
        ("backupMethod", json!({"m": "PASSWORD"})),
        ("backupSharePairId", json!(12)),
        ("backupSharePairId", json!(["pair"])),
    ] {
        t.backup(&format!("{field} as {value}"), bad(&format!("{field}: ")), |m| {
            let mut body = json!({"clientId": WEBHOOK_VICTIM, "backupMethod": "PASSWORD-SECP256K1", "share": m});
            body[field] = value;
            bytes(body)
        });
    }
    t.backup("share as a number", bad("share: "), |_| {
        bytes(json!({"clientId": WEBHOOK_VICTIM, "share": 42}))
    });
    t.backup("share as an object", bad("share: "), |m| {
        bytes(json!({"clientId": WEBHOOK_VICTIM, "share": {"share": m}}))
    });
    t.backup("share as an array", bad("share: "), |m| {
        bytes(json!({"clientId": WEBHOOK_VICTIM, "share": [m]}))
    });
    t.backup("share as true", bad("share: "), |_| {
        bytes(json!({"clientId": WEBHOOK_VICTIM, "share": true}))
    });

    // Missing and empty fields.
    t.backup("clientId null", bad("clientId: "), |m| {
        bytes(json!({"clientId": null, "share": m}))
    });
    t.backup("clientId empty", bad("clientId: "), |m| {
        bytes(json!({"clientId": "", "share": m}))
    });
    t.backup("share empty", bad("share: "), |_| share_body("").to_vec());
    t.backup("share missing", bad("share: "), |_| {
        bytes(json!({"clientId": WEBHOOK_VICTIM}))
    });
    t.backup("empty object", bad("clientId: "), |_| b"{}".to_vec());
    t.backup("empty body", bad("body: "), |_| Vec::new());
    t.backup("whitespace body", bad("body: "), |_| b" \r\n\t ".to_vec());

    // Huge fields.
    t.backup("clientId of 129 characters", bad("clientId: "), |m| {
        bytes(json!({"clientId": "c".repeat(129), "share": m}))
    });
    t.backup("clientId of 60 KiB", bad("clientId: "), |m| {
        bytes(json!({"clientId": "c".repeat(60 * 1024), "share": m}))
    });
    t.backup(
        "backupMethod of 65 characters",
        bad("backupMethod: "),
        |m| bytes(json!({"clientId": WEBHOOK_VICTIM, "backupMethod": "M".repeat(65), "share": m})),
    );
    t.backup("share over its limit", bad("share: "), |m| {
        share_body(&format!("{m}{}", "s".repeat(MAX_SECRET_BYTES)))
    });
    t.backup("backupSharePairId of 129 characters", bad("backupSharePairId: "), |m| {
        bytes(json!({"clientId": WEBHOOK_VICTIM, "share": m, "backupSharePairId": "p".repeat(129)}))
    });

    // Characters outside the rules.
    t.backup("control character in share", bad("share: "), |m| {
        share_body(&format!("{m}\u{1}"))
    });
    t.backup("NUL in share", bad("share: "), |m| {
        share_body(&format!("{m}\u{0}"))
    });
    t.backup("DEL in share", bad("share: "), |m| {
        share_body(&format!("{m}\u{7f}"))
    });
    t.backup("escape sequence in share", bad("share: "), |m| {
        share_body(&format!("\u{1b}[31m{m}"))
    });
    t.backup("newline in clientId", bad("clientId: "), |m| {
        bytes(json!({"clientId": "victim\nw", "share": m}))
    });
    t.backup("slash in clientId", bad("clientId: "), |m| {
        bytes(json!({"clientId": "../victim-w", "share": m}))
    });
    t.backup("unicode in backupMethod", bad("backupMethod: "), |m| {
        bytes(json!({"clientId": WEBHOOK_VICTIM, "backupMethod": "PASSWÖRD", "share": m}))
    });
    t.backup(
        "space in backupSharePairId",
        bad("backupSharePairId: "),
        |m| bytes(json!({"clientId": WEBHOOK_VICTIM, "share": m, "backupSharePairId": "pair 1"})),
    );
}

/// Bodies that are not one JSON object.
fn bodies_that_are_not_one_json_object(t: &mut Table) {
    t.backup("invalid UTF-8 in the share", bad("body: "), |m| {
        let mut body = format!(r#"{{"clientId":"{WEBHOOK_VICTIM}","share":"{m}"#).into_bytes();
        body.extend_from_slice(b"\xff\xfe\"}");
        body
    });
    t.backup("invalid UTF-8 in a key", bad("body: "), |m| {
        let mut body = format!(r#"{{"clientId":"{WEBHOOK_VICTIM}","share":"{m}","#).into_bytes();
        body.extend_from_slice(b"\"\xc3\x28\":1}");
        body
    });
    t.backup("lone surrogate escape in share", bad("body: "), |m| {
        format!(r#"{{"clientId":"{WEBHOOK_VICTIM}","share":"{m}\ud800"}}"#).into_bytes()
    });
    t.backup("duplicate clientId", bad("body: "), |m| {
        format!(r#"{{"clientId":"{WEBHOOK_VICTIM}","clientId":"other","share":"{m}"}}"#)
            .into_bytes()
    });
    t.backup("duplicate share", bad("body: "), |m| {
        format!(r#"{{"clientId":"{WEBHOOK_VICTIM}","share":"a","share":"{m}"}}"#).into_bytes()
    });
    t.backup("10,000 nested arrays in share", bad("body: "), |m| {
        format!(
            r#"{{"clientId":"{WEBHOOK_VICTIM}","share":{}}}"#,
            nested(10_000, "[", &format!("\"{m}\""), "]")
        )
        .into_bytes()
    });
    t.backup("10,000 nested objects in share", bad("body: "), |m| {
        format!(
            r#"{{"clientId":"{WEBHOOK_VICTIM}","share":{}}}"#,
            nested(10_000, r#"{"a":"#, &format!("\"{m}\""), "}")
        )
        .into_bytes()
    });
    t.backup("an array", bad("body: "), |m| {
        bytes(json!([WEBHOOK_VICTIM, m]))
    });
    t.backup("a string", bad("body: "), |m| bytes(json!(m)));
    t.backup("null", bad("body: "), |_| b"null".to_vec());
    t.backup("trailing data after the object", bad("body: "), |m| {
        let mut body = share_body("s");
        body.extend_from_slice(format!(" {m}").as_bytes());
        body
    });
    t.backup("two objects", bad("body: "), |m| {
        let mut body = share_body(m);
        body.extend(share_body(m));
        body
    });
    t.backup("truncated JSON", bad("body: "), |m| {
        let body = share_body(m);
        body[..body.len() - 3].to_vec()
    });
    t.backup("byte order mark", bad("body: "), |m| {
        let mut body = b"\xef\xbb\xbf".to_vec();
        body.extend(share_body(m));
        body
    });
    t.backup("single quotes", bad("body: "), |m| {
        format!("{{'clientId':'{WEBHOOK_VICTIM}','share':'{m}'}}").into_bytes()
    });
    t.backup("number out of range", bad("body: "), |m| {
        format!(r#"{{"clientId":"{WEBHOOK_VICTIM}","share":"{m}","n":1e999}}"#).into_bytes()
    });
}

/// Content types other than JSON.
fn content_types(t: &mut Table) {
    let secret = t.secret.clone();
    for (name, content_type) in [
        ("text/plain", Some("text/plain")),
        ("no content type", None),
        (
            "application/json-patch+json",
            Some("application/json-patch+json"),
        ),
        ("form encoded", Some("application/x-www-form-urlencoded")),
        ("multipart", Some("multipart/form-data; boundary=x")),
    ] {
        let secret = secret.clone();
        t.add(
            &format!("content type: {name}"),
            To::Webhook,
            Error(415, "unsupported_media_type"),
            |m| {
                let mut headers = vec![("x-webhook-secret", secret.as_str())];
                headers.extend(content_type.map(|c| ("content-type", c)));
                http("POST", "/backup", &headers, share_body(m))
            },
        );
    }
}

/// Missing, wrong and misplaced secrets.
fn credentials(t: &mut Table) {
    let secret = t.secret.clone();
    let unauthenticated = || Error(401, "unauthenticated");
    // Secret headers, where `{m}` stands for the case's marker and `{secret}` for the secret.
    for (name, secret_headers) in [
        ("no secret", &[][..]),
        ("wrong secret", &[("x-webhook-secret", "{m}-0123456789")]),
        ("empty secret", &[("x-webhook-secret", "")]),
        (
            "secret with a suffix",
            &[("x-webhook-secret", "{secret}{m}")],
        ),
        (
            "secret in another header",
            &[("authorization", "Bearer {secret}")],
        ),
        (
            "a wrong secret before the right one",
            &[
                ("x-webhook-secret", "{m}-0123456789"),
                ("x-webhook-secret", "{secret}"),
            ],
        ),
    ] {
        t.add(name, To::Webhook, unauthenticated(), |m| {
            let values: Vec<(&str, String)> = secret_headers
                .iter()
                .map(|(k, v)| (*k, v.replace("{m}", m).replace("{secret}", &secret)))
                .collect();
            let mut headers = vec![JSON];
            headers.extend(values.iter().map(|(k, v)| (*k, v.as_str())));
            http("POST", "/backup", &headers, share_body(m))
        });
    }
    t.add(
        "fetch without a secret",
        To::Webhook,
        unauthenticated(),
        |_| {
            http(
                "POST",
                "/backup/fetch",
                &[JSON],
                bytes(json!({"clientId": WEBHOOK_VICTIM})),
            )
        },
    );
    t.add(
        "secret with bytes outside ASCII",
        To::Webhook,
        unauthenticated(),
        |m| {
            let mut header = format!("x-webhook-secret: {m}").into_bytes();
            header.extend_from_slice(b"\xff\xfe");
            header.extend_from_slice(b"\r\ncontent-type: application/json");
            Request::Raw(raw_request_bytes(
                "POST /backup HTTP/1.1",
                &header,
                &share_body(m),
            ))
        },
    );
}

/// The head of a raw `POST /backup` with the secret, a JSON content type and `framing` (a
/// `Content-Length` or `Transfer-Encoding` line).
fn backup_head(secret: &str, framing: &str) -> Vec<u8> {
    format!(
        "POST /backup HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         x-webhook-secret: {secret}\r\n{framing}\r\n\r\n"
    )
    .into_bytes()
}

/// Bodies over the limit, declared and streamed.
fn bodies_over_the_limit(t: &mut Table) {
    let secret = t.secret.clone();
    let too_large = || Error(413, "payload_too_large");
    t.backup("body over the limit", too_large(), |m| {
        share_body(&format!("{m}{}", "x".repeat(MAX_REQUEST_BYTES)))
    });
    t.add(
        "chunked body over the limit",
        To::Webhook,
        too_large(),
        |m| {
            let mut request = backup_head(&secret, "transfer-encoding: chunked");
            request.extend(chunked(&share_body(&format!(
                "{m}{}",
                "x".repeat(MAX_REQUEST_BYTES)
            ))));
            Request::Raw(request)
        },
    );
    t.add(
        "declared length over the limit, short body",
        To::Webhook,
        too_large(),
        |m| {
            let mut request = backup_head(&secret, "content-length: 999999999");
            request.extend(share_body(m));
            Request::Raw(request)
        },
    );
}

/// Wrong methods and unknown paths, and fetches with a bad client id.
fn methods_and_paths(t: &mut Table) {
    let secret = t.secret.clone();
    let wrong_method = || Error(405, "method_not_allowed");
    let unknown = || Error(404, "not_found");
    for (method, path, expect) in [
        ("GET", "/backup", wrong_method()),
        ("DELETE", "/backup", wrong_method()),
        ("PUT", "/backup/fetch", wrong_method()),
        ("POST", "/healthz", wrong_method()),
        ("POST", "/backup/", unknown()),
        ("POST", "/BACKUP", unknown()),
        ("POST", "/backup/fetch/more", unknown()),
        ("POST", "/%62ackup", unknown()),
        ("POST", "/../backup", unknown()),
        (
            "POST",
            "/v1/clients/victim-w/client-backup-shares/PASSWORD",
            unknown(),
        ),
        ("GET", "/metrics", unknown()),
    ] {
        let secret = secret.clone();
        t.add(&format!("{method} {path}"), To::Webhook, expect, |m| {
            http(
                method,
                path,
                &[JSON, ("x-webhook-secret", &secret)],
                share_body(m),
            )
        });
    }
    // Fetch with a bad client id.
    for (name, client) in [
        ("fetch with a numeric clientId", json!(1)),
        ("fetch with a traversal clientId", json!("../../etc/passwd")),
        ("fetch with an empty clientId", json!("")),
    ] {
        let secret = secret.clone();
        t.add(name, To::Webhook, bad("clientId: "), |_| {
            http(
                "POST",
                "/backup/fetch",
                &[JSON, ("x-webhook-secret", &secret)],
                bytes(json!({ "clientId": client })),
            )
        });
    }
}
