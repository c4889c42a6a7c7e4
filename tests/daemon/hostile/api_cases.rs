//! Malformed calls to the JSON API on the private listener.

use super::table::Expect::Error;
use super::table::{
    API_VICTIM, JSON, MAX_REQUEST_BYTES, MAX_SECRET_BYTES, Request, Table, To, bytes, chunked,
    http, invalid as bad, nested, raw_request_bytes,
};
use serde_json::json;

/// The victim's PASSWORD client share.
fn share_path() -> String {
    format!("/v1/clients/{API_VICTIM}/client-backup-shares/PASSWORD")
}

/// The victim's share pairs.
fn pairs_path() -> String {
    format!("/v1/clients/{API_VICTIM}/backup-share-pairs")
}

/// Malformed calls to the JSON API on the private listener.
pub fn api_cases(t: &mut Table) {
    cipher_texts(t);
    bearers(t);
    path_segments(t);
    pair_updates(t);
    methods_and_paths(t);
}

/// The cipherText: wrong types, empty, too large, control characters; bodies over the
/// limit and of the wrong type.
fn cipher_texts(t: &mut Table) {
    let share = share_path();
    for (name, value) in [
        ("cipherText as a number", json!(1)),
        ("cipherText as true", json!(true)),
        ("cipherText empty", json!("")),
    ] {
        t.put_share(name, bad("cipherText: "), |_| {
            bytes(json!({ "cipherText": value }))
        });
    }
    t.put_share("cipherText as an object", bad("cipherText: "), |m| {
        bytes(json!({"cipherText": {"c": m}}))
    });
    t.put_share("cipherText as an array", bad("cipherText: "), |m| {
        bytes(json!({"cipherText": [m]}))
    });
    t.put_share("cipherText missing", bad("cipherText: "), |m| {
        bytes(json!({"cipher_text": m}))
    });
    t.put_share("cipherText over its limit", bad("cipherText: "), |m| {
        bytes(json!({"cipherText": format!("{m}{}", "c".repeat(MAX_SECRET_BYTES))}))
    });
    t.put_share(
        "control character in cipherText",
        bad("cipherText: "),
        |m| bytes(json!({"cipherText": format!("{m}\u{2}")})),
    );
    t.put_share("invalid UTF-8 in cipherText", bad("body: "), |m| {
        let mut body = format!(r#"{{"cipherText":"{m}"#).into_bytes();
        body.extend_from_slice(b"\xc0\xaf\"}");
        body
    });
    t.put_share("duplicate cipherText", bad("body: "), |m| {
        format!(r#"{{"cipherText":"a","cipherText":"{m}"}}"#).into_bytes()
    });
    t.put_share("10,000 nested arrays in cipherText", bad("body: "), |m| {
        format!(
            r#"{{"cipherText":{}}}"#,
            nested(10_000, "[", &format!("\"{m}\""), "]")
        )
        .into_bytes()
    });
    t.put_share("an array body", bad("body: "), |m| bytes(json!([m])));
    t.put_share("an empty body", bad("body: "), |_| Vec::new());
    t.put_share(
        "body over the limit",
        Error(413, "payload_too_large"),
        |m| bytes(json!({"cipherText": format!("{m}{}", "c".repeat(MAX_REQUEST_BYTES))})),
    );
    let bearer = t.bearer.clone();
    t.add(
        "chunked body over the limit",
        To::Api,
        Error(413, "payload_too_large"),
        |m| {
            let mut request = format!(
                "PUT {share} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                 authorization: {bearer}\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            .into_bytes();
            let body =
                bytes(json!({"cipherText": format!("{m}{}", "c".repeat(MAX_REQUEST_BYTES))}));
            request.extend(chunked(&body));
            Request::Raw(request)
        },
    );
    {
        let bearer = bearer.clone();
        t.add(
            "cipherText sent as text/plain",
            To::Api,
            Error(415, "unsupported_media_type"),
            |m| {
                http(
                    "PUT",
                    &share,
                    &[("content-type", "text/plain"), ("authorization", &bearer)],
                    bytes(json!({ "cipherText": m })),
                )
            },
        );
    }
}

/// Bearer formats.
fn bearers(t: &mut Table) {
    let share = share_path();
    let unauthenticated = || Error(401, "unauthenticated");
    for (name, value) in [
        ("no authorization", None),
        ("Basic credentials", Some("Basic {m}")),
        ("Bearer without a token", Some("Bearer")),
        ("Bearer and spaces", Some("Bearer    ")),
        ("a wrong token", Some("Bearer svt_{m}")),
        ("a token without its scheme", Some("svt_{m}")),
        ("the token twice", Some("Bearer svt_{m} svt_{m}")),
        ("another scheme", Some("Token svt_{m}")),
    ] {
        let path = share.clone();
        t.add(
            &format!("authorization: {name}"),
            To::Api,
            unauthenticated(),
            |m| {
                let value = value.map(|v| v.replace("{m}", m));
                let mut headers = vec![JSON];
                headers.extend(value.as_deref().map(|v| ("authorization", v)));
                http("PUT", &path, &headers, bytes(json!({ "cipherText": m })))
            },
        );
    }
    t.add(
        "authorization with bytes outside ASCII",
        To::Api,
        unauthenticated(),
        |m| {
            let mut header = format!("authorization: Bearer svt_{m}").into_bytes();
            header.extend_from_slice(b"\xe9\r\ncontent-type: application/json");
            Request::Raw(raw_request_bytes(
                &format!("PUT {share} HTTP/1.1"),
                &header,
                &bytes(json!({ "cipherText": m })),
            ))
        },
    );
}

/// Client ids and methods in the path: traversal and percent-encoded junk.
fn path_segments(t: &mut Table) {
    let long_client = format!("/v1/clients/{}/backups", "c".repeat(129));
    let spaced_method = format!("/v1/clients/{API_VICTIM}/client-backup-shares/PASS%09WORD");
    let long_method = format!(
        "/v1/clients/{API_VICTIM}/client-backup-shares/{}",
        "M".repeat(65)
    );
    for (name, path) in [
        (
            "encoded slash in the client id",
            "/v1/clients/victim%2Fa/backups",
        ),
        (
            "encoded traversal in the client id",
            "/v1/clients/..%2F..%2Fetc/backups",
        ),
        (
            "encoded NUL in the client id",
            "/v1/clients/victim%00a/backups",
        ),
        (
            "encoded newline in the client id",
            "/v1/clients/victim%0Aa/backups",
        ),
        (
            "encoded space in the client id",
            "/v1/clients/victim%20a/backups",
        ),
        (
            "invalid percent-encoding in the client id",
            "/v1/clients/victim%zz/backups",
        ),
        ("non-ASCII client id", "/v1/clients/v%C3%ADctim/backups"),
        ("client id of 129 characters", long_client.as_str()),
        ("encoded tab in the method", spaced_method.as_str()),
        ("method of 65 characters", long_method.as_str()),
    ] {
        let field = if name.contains("method") {
            "backupMethod: "
        } else {
            "clientId: "
        };
        t.api(name, bad(field), "GET", path, None);
    }
    // A percent-encoding that is not UTF-8 gets the documented JSON error.
    t.api(
        "client id that decodes to invalid UTF-8",
        bad("path: "),
        "GET",
        "/v1/clients/%FF%FE/backups",
        None,
    );
    // `.` and `..` are path segments, not client ids: refused, so that a proxy that
    // normalises paths and the daemon never disagree on which client a request is for.
    t.api(
        "client id `..`",
        bad("clientId: "),
        "GET",
        "/v1/clients/../backups",
        None,
    );
    t.api(
        "client id `.`",
        bad("clientId: "),
        "GET",
        "/v1/clients/./backups",
        None,
    );
    t.api(
        "empty client id",
        bad("clientId: "),
        "GET",
        "/v1/clients//backups",
        None,
    );
    t.api(
        "traversal out of the API",
        Error(404, "not_found"),
        "GET",
        "/v1/clients/../../metrics",
        None,
    );
}

/// Share-pair updates.
fn pair_updates(t: &mut Table) {
    let pairs = pairs_path();
    for (name, body) in [
        (
            "pair ids as a string",
            json!({"backupSharePairIds": "p1", "status": "STORED_CLIENT_BACKUP_SHARE_KEY"}),
        ),
        (
            "pair ids as numbers",
            json!({"backupSharePairIds": [1, 2], "status": "STORED_CLIENT_BACKUP_SHARE_KEY"}),
        ),
        (
            "pair ids missing",
            json!({"status": "STORED_CLIENT_BACKUP_SHARE_KEY"}),
        ),
        (
            "status as a number",
            json!({"backupSharePairIds": ["p1"], "status": 2}),
        ),
        (
            "status unknown",
            json!({"backupSharePairIds": ["p1"], "status": "completed"}),
        ),
        (
            "65 pair ids",
            json!({"backupSharePairIds": (0..65).map(|i| format!("p{i}")).collect::<Vec<_>>(), "status": "STORED_CLIENT_BACKUP_SHARE_KEY"}),
        ),
        (
            "pair id with a slash",
            json!({"backupSharePairIds": ["../p1"], "status": "STORED_CLIENT_BACKUP_SHARE_KEY"}),
        ),
    ] {
        let field = if name.starts_with("status") {
            "status: "
        } else {
            "backupSharePairIds: "
        };
        t.api(name, bad(field), "PATCH", &pairs, Some(bytes(body)));
    }
}

/// Wrong methods and unknown paths.
fn methods_and_paths(t: &mut Table) {
    let share = share_path();
    let pairs = pairs_path();
    let wrong_method = || Error(405, "method_not_allowed");
    let unknown = || Error(404, "not_found");
    for (name, method, path, expect) in [
        (
            "POST a client share",
            "POST",
            share.as_str(),
            wrong_method(),
        ),
        (
            "PATCH a client share",
            "PATCH",
            share.as_str(),
            wrong_method(),
        ),
        (
            "PUT backups",
            "PUT",
            "/v1/clients/victim-a/backups",
            wrong_method(),
        ),
        ("POST pairs", "POST", pairs.as_str(), wrong_method()),
        (
            "GET a client",
            "GET",
            "/v1/clients/victim-a",
            wrong_method(),
        ),
        ("POST metrics", "POST", "/metrics", wrong_method()),
        ("the clients collection", "GET", "/v1/clients", unknown()),
        (
            "another version",
            "GET",
            "/v2/clients/victim-a/backups",
            unknown(),
        ),
        ("the webhook route", "POST", "/backup", unknown()),
        (
            "a trailing slash",
            "GET",
            "/v1/clients/victim-a/backups/",
            unknown(),
        ),
    ] {
        t.api(name, expect, method, path, Some(b"{}".to_vec()));
    }
}
