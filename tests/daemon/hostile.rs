//! Hostile requests over the wire: a table of malformed requests to the webhook listener and
//! the JSON API, each with its documented status and `error.code`, then proof that none of
//! them stored anything or leaked what it carried, and that the daemon still serves.
//!
//! Every case that can carries a marker (`PLANTED-SECRET-<n>`) in a share, a cipherText, a
//! webhook secret or a token; no answer, log line or metric may contain one.

use crate::harness::{Daemon, Sandbox, create_token, with_secret, with_token};
use crate::http_client::Http;
use serde_json::json;
use sharevault::pb::{self, Role};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MARKER: &str = "PLANTED-SECRET-";
const MAX_REQUEST_BYTES: usize = 64 * 1024;
const MAX_SECRET_BYTES: usize = 2048;
const WEBHOOK_VICTIM: &str = "victim-w";
const API_VICTIM: &str = "victim-a";
const JSON: (&str, &str) = ("content-type", "application/json");

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum To {
    Webhook,
    Api,
}

enum Request {
    /// Sent with the test suite's HTTP/1.1 client (hyper).
    Http {
        method: &'static str,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Bytes written as they are on a fresh TCP connection: for what a well-behaved client
    /// cannot send.
    Raw(Vec<u8>),
}

enum Expect {
    /// A JSON error answer with this status and `error.code`.
    Error(u16, &'static str),
    /// A JSON 400 `invalid_argument` whose message starts with this (the field's name and a
    /// colon, or `body: `).
    Invalid(String),
    /// One of these statuses, or the connection closed without an answer: protocol errors
    /// that hyper handles before the daemon sees a request.
    StatusOrClosed(&'static [u16]),
    /// This status, then the connection closed with nothing more (a raw request).
    StatusThenClosed(u16),
}

struct Case {
    name: String,
    to: To,
    request: Request,
    expect: Expect,
}

/// What came back.
struct Outcome {
    /// `None` when the connection closed without an answer.
    status: Option<u16>,
    content_type: Option<String>,
    body: Vec<u8>,
    /// For a raw request whose close is awaited: what came after the first answer, if the
    /// connection then closed.
    after: Option<Vec<u8>>,
}

struct Table {
    cases: Vec<Case>,
    secret: String,
    bearer: String,
}

impl Table {
    /// Adds a case; `make` gets the case's own marker.
    fn add(&mut self, name: &str, to: To, expect: Expect, make: impl FnOnce(&str) -> Request) {
        let marker = format!("{MARKER}{}", self.cases.len() + 1);
        let request = make(&marker);
        self.cases.push(Case {
            name: name.to_owned(),
            to,
            request,
            expect,
        });
    }

    /// `POST /backup` with the right secret, `Content-Type: application/json` and `body`.
    fn backup(&mut self, name: &str, expect: Expect, body: impl FnOnce(&str) -> Vec<u8>) {
        let secret = self.secret.clone();
        self.add(name, To::Webhook, expect, |m| {
            http(
                "POST",
                "/backup",
                &[JSON, ("x-webhook-secret", &secret)],
                body(m),
            )
        });
    }

    /// `PUT` the victim's PASSWORD client share with the right token and `body`.
    fn put_share(&mut self, name: &str, expect: Expect, body: impl FnOnce(&str) -> Vec<u8>) {
        let bearer = self.bearer.clone();
        self.add(name, To::Api, expect, |m| {
            http(
                "PUT",
                &format!("/v1/clients/{API_VICTIM}/client-backup-shares/PASSWORD"),
                &[JSON, ("authorization", &bearer)],
                body(m),
            )
        });
    }

    /// A request to the JSON API with the right token.
    fn api(
        &mut self,
        name: &str,
        expect: Expect,
        method: &'static str,
        path: &str,
        body: Option<Vec<u8>>,
    ) {
        let bearer = self.bearer.clone();
        let mut headers = vec![("authorization", bearer.as_str())];
        if body.is_some() {
            headers.push(JSON);
        }
        let request = http(method, path, &headers, body.unwrap_or_default());
        self.add(name, To::Api, expect, |_| request);
    }
}

fn invalid(prefix: &str) -> Expect {
    Expect::Invalid(prefix.to_owned())
}

fn http(method: &'static str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Request {
    Request::Http {
        method,
        path: path.to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body,
    }
}

fn bytes(value: serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// A webhook backup body for the victim with `share`.
fn share_body(share: &str) -> Vec<u8> {
    bytes(json!({"clientId": WEBHOOK_VICTIM, "backupMethod": "PASSWORD-SECP256K1", "share": share}))
}

/// A raw HTTP/1.1 request with the given header lines and a `Content-Length` body.
fn raw_request(head: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{head}\r\nhost: localhost\r\n").into_bytes();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// The same, with raw header bytes (for bytes a `&str` cannot hold).
fn raw_request_bytes(head: &str, header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{head}\r\nhost: localhost\r\n").into_bytes();
    out.extend_from_slice(header);
    out.extend_from_slice(format!("\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// A chunked body in chunks of at most 4 KiB, with its terminating chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(4096) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn nested(depth: usize, open: &str, inner: &str, close: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

/// Writes `request` on a new connection and reads one answer, or until the daemon closes the
/// connection (or 10 s pass); with `await_close`, then reads on until it closes.
async fn exchange_raw(addr: &str, request: &[u8], await_close: bool) -> Outcome {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The daemon may answer and close before the whole request is written.
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut chunk = [0u8; 16 * 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if answer_complete(&buf) {
            break;
        }
    }
    let mut outcome = parse_answer(&buf);
    if await_close && outcome.status.is_some() {
        let mut after = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    outcome.after = Some(after);
                    break;
                }
                Ok(Ok(n)) => after.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
    }
    outcome
}

fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn answer_complete(buf: &[u8]) -> bool {
    let Some(end) = header_end(buf) else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    content_length(&head).is_some_and(|len| buf.len() >= end + len)
}

fn parse_answer(buf: &[u8]) -> Outcome {
    let Some(end) = header_end(buf) else {
        return Outcome {
            status: None,
            content_type: None,
            body: buf.to_vec(),
            after: None,
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    let content_type = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    });
    let len = content_length(&head).unwrap_or(buf.len() - end);
    Outcome {
        status,
        content_type,
        body: buf[end..].iter().take(len).copied().collect(),
        after: None,
    }
}

async fn exchange(case: &Case, webhook: &str, api: &str) -> Outcome {
    let addr = match case.to {
        To::Webhook => webhook,
        To::Api => api,
    };
    match &case.request {
        Request::Raw(bytes) => {
            let await_close = matches!(case.expect, Expect::StatusThenClosed(_));
            exchange_raw(addr, bytes, await_close).await
        }
        Request::Http {
            method,
            path,
            headers,
            body,
        } => {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let reply = Http::plain(addr)
                .send(method, path, &headers, Some(body))
                .await;
            Outcome {
                status: Some(reply.status),
                content_type: reply
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: reply.body,
                after: None,
            }
        }
    }
}

/// Checks that `outcome` is a JSON error with `status` and `code`; answers its message.
fn json_error(outcome: &Outcome, status: u16, code: &str) -> Result<String, String> {
    let body = String::from_utf8_lossy(&outcome.body);
    if outcome.status != Some(status) {
        return Err(format!(
            "expected {status}, got {:?}: {body}",
            outcome.status
        ));
    }
    if outcome.content_type.as_deref() != Some("application/json") {
        return Err(format!(
            "expected a JSON error, got {:?}: {body}",
            outcome.content_type
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&outcome.body).map_err(|_| format!("not JSON: {body}"))?;
    if value["error"]["code"] != code {
        return Err(format!("expected error.code {code}: {body}"));
    }
    value["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no error.message: {body}"))
}

/// Checks an outcome against its expectation; answers what was wrong.
fn check(case: &Case, outcome: &Outcome) -> Result<(), String> {
    let body = String::from_utf8_lossy(&outcome.body);
    if body.contains("PLANTED") {
        return Err(format!("the answer carries a planted marker: {body}"));
    }
    let status_is = |status: u16| {
        if outcome.status == Some(status) {
            Ok(())
        } else {
            Err(format!(
                "expected {status}, got {:?}: {body}",
                outcome.status
            ))
        }
    };
    match &case.expect {
        Expect::Error(status, code) => {
            json_error(outcome, *status, code)?;
        }
        Expect::Invalid(prefix) => {
            let message = json_error(outcome, 400, "invalid_argument")?;
            if !message.starts_with(prefix.as_str()) {
                return Err(format!("expected a message on {prefix:?}, got {message:?}"));
            }
        }
        Expect::StatusThenClosed(status) => {
            status_is(*status)?;
            match &outcome.after {
                Some(after) if after.is_empty() => {}
                Some(after) => {
                    return Err(format!(
                        "more came after the answer: {}",
                        String::from_utf8_lossy(after)
                    ));
                }
                None => return Err("the connection stayed open after the answer".into()),
            }
        }
        Expect::StatusOrClosed(statuses) => {
            if let Some(status) = outcome.status
                && !statuses.contains(&status)
            {
                return Err(format!(
                    "expected one of {statuses:?} or a close, got {status}"
                ));
            }
        }
    }
    Ok(())
}

/// Malformed webhook calls: every field with the wrong type, empty, too large, with control
/// characters; bodies that are not JSON objects; wrong content types, credentials, methods
/// and paths; bodies over the limit.
fn webhook_cases(t: &mut Table) {
    use Expect::Error;
    let bad = invalid;
    let secret = t.secret.clone();

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

    // Bodies that are not one JSON object.
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

    // Content types.
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

    // Credentials.
    let unauthenticated = || Error(401, "unauthenticated");
    t.add("no secret", To::Webhook, unauthenticated(), |m| {
        http("POST", "/backup", &[JSON], share_body(m))
    });
    t.add("wrong secret", To::Webhook, unauthenticated(), |m| {
        http(
            "POST",
            "/backup",
            &[JSON, ("x-webhook-secret", &format!("{m}-0123456789"))],
            share_body(m),
        )
    });
    t.add("empty secret", To::Webhook, unauthenticated(), |m| {
        http(
            "POST",
            "/backup",
            &[JSON, ("x-webhook-secret", "")],
            share_body(m),
        )
    });
    t.add(
        "secret with a suffix",
        To::Webhook,
        unauthenticated(),
        |m| {
            http(
                "POST",
                "/backup",
                &[JSON, ("x-webhook-secret", &format!("{secret}{m}"))],
                share_body(m),
            )
        },
    );
    t.add(
        "secret in another header",
        To::Webhook,
        unauthenticated(),
        |m| {
            http(
                "POST",
                "/backup",
                &[JSON, ("authorization", &format!("Bearer {secret}"))],
                share_body(m),
            )
        },
    );
    t.add(
        "a wrong secret before the right one",
        To::Webhook,
        unauthenticated(),
        |m| {
            http(
                "POST",
                "/backup",
                &[
                    JSON,
                    ("x-webhook-secret", &format!("{m}-0123456789")),
                    ("x-webhook-secret", &secret),
                ],
                share_body(m),
            )
        },
    );
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

    // Bodies over the limit, declared and streamed.
    let too_large = || Error(413, "payload_too_large");
    t.backup("body over the limit", too_large(), |m| {
        share_body(&format!("{m}{}", "x".repeat(MAX_REQUEST_BYTES)))
    });
    t.add(
        "chunked body over the limit",
        To::Webhook,
        too_large(),
        |m| {
            let mut request = format!(
                "POST /backup HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                 x-webhook-secret: {secret}\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            .into_bytes();
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
            let mut request = format!(
                "POST /backup HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                 x-webhook-secret: {secret}\r\ncontent-length: 999999999\r\n\r\n"
            )
            .into_bytes();
            request.extend(share_body(m));
            Request::Raw(request)
        },
    );

    // Methods and paths.
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

/// Requests that are not valid HTTP, or push its limits. hyper answers most of them itself,
/// before the daemon sees a request: 400 (or 431 for headers over 64 KiB, or too many of them)
/// with an empty body, then it closes the connection.
fn protocol_cases(t: &mut Table) {
    use Expect::StatusOrClosed;
    let secret = t.secret.clone();
    let bad_request: &'static [u16] = &[400];
    t.add(
        "garbage request line",
        To::Webhook,
        StatusOrClosed(bad_request),
        |m| Request::Raw(format!("HELLO {m}\r\n\r\n").into_bytes()),
    );
    t.add(
        "space in a header name",
        To::Webhook,
        StatusOrClosed(bad_request),
        |m| {
            Request::Raw(raw_request(
                "POST /backup HTTP/1.1",
                &[format!("x-webhook secret: {m}")],
                b"{}",
            ))
        },
    );
    t.add(
        "control character in the secret header",
        To::Webhook,
        StatusOrClosed(bad_request),
        |m| {
            Request::Raw(raw_request_bytes(
                "POST /backup HTTP/1.1",
                format!("x-webhook-secret: {m}\x01").as_bytes(),
                &share_body(m),
            ))
        },
    );
    t.add(
        "invalid content-length",
        To::Webhook,
        StatusOrClosed(bad_request),
        |m| {
            Request::Raw(
                format!(
                    "POST /backup HTTP/1.1\r\nhost: x\r\nx-webhook-secret: {secret}\r\n\
                 content-type: application/json\r\ncontent-length: ten\r\n\r\n{}",
                    String::from_utf8(share_body(m)).unwrap()
                )
                .into_bytes(),
            )
        },
    );
    t.add(
        "two different content-lengths",
        To::Webhook,
        StatusOrClosed(bad_request),
        |m| {
            let body = String::from_utf8(share_body(m)).unwrap();
            Request::Raw(
                format!(
                    "POST /backup HTTP/1.1\r\nhost: x\r\nx-webhook-secret: {secret}\r\n\
                     content-type: application/json\r\ncontent-length: {}\r\n\
                     content-length: 3\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        },
    );
    // Both framings: hyper goes by Transfer-Encoding alone and closes the connection after
    // answering, as RFC 9112 (6.3) requires, so that a request smuggled behind it is never
    // read. The body is a read (a fetch of a client that has nothing).
    t.add(
        "content-length beside chunked, then a pipelined request",
        To::Webhook,
        Expect::StatusThenClosed(200),
        |m| {
            let mut request = format!(
                "POST /backup/fetch HTTP/1.1\r\nhost: x\r\nx-webhook-secret: {secret}\r\n\
                 content-type: application/json\r\ncontent-length: 5\r\n\
                 transfer-encoding: chunked\r\n\r\n"
            )
            .into_bytes();
            request.extend(chunked(br#"{"clientId":"nobody"}"#));
            request.extend(raw_request(
                "POST /backup HTTP/1.1",
                &[
                    format!("x-webhook-secret: {secret}"),
                    "content-type: application/json".into(),
                ],
                &share_body(m),
            ));
            Request::Raw(request)
        },
    );
    // A chunked body that breaks off reaches the daemon, which answers its own JSON error.
    t.add(
        "invalid chunk size",
        To::Webhook,
        Expect::Error(400, "invalid_argument"),
        |m| {
            Request::Raw(
                format!(
                    "POST /backup HTTP/1.1\r\nhost: x\r\nx-webhook-secret: {secret}\r\n\
                 content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
                 zz\r\n{m}\r\n0\r\n\r\n"
                )
                .into_bytes(),
            )
        },
    );
    t.add(
        "HTTP/2.0 on an HTTP/1 request line",
        To::Webhook,
        StatusOrClosed(&[400, 505]),
        |m| {
            Request::Raw(raw_request(
                "POST /backup HTTP/2.0",
                &[format!("x-webhook-secret: {m}")],
                b"{}",
            ))
        },
    );
    t.add(
        "a header value of 70 KiB",
        To::Webhook,
        StatusOrClosed(&[431]),
        |m| {
            Request::Raw(raw_request(
                "POST /backup HTTP/1.1",
                &[format!("x-webhook-secret: {m}{}", "s".repeat(70 * 1024))],
                &share_body(m),
            ))
        },
    );
    t.add("500 headers", To::Webhook, StatusOrClosed(&[431]), |m| {
        let headers: Vec<String> = (0..500).map(|i| format!("x-filler-{i}: {m}")).collect();
        Request::Raw(raw_request(
            "POST /backup HTTP/1.1",
            &headers,
            &share_body(m),
        ))
    });
    t.add(
        "a URI of 80 KiB",
        To::Webhook,
        StatusOrClosed(&[414, 431]),
        |m| {
            Request::Raw(raw_request(
                &format!("GET /{m}{} HTTP/1.1", "a".repeat(80 * 1024)),
                &[],
                b"",
            ))
        },
    );
}

/// Malformed calls to the JSON API on the private listener.
fn api_cases(t: &mut Table) {
    use Expect::Error;
    let bad = invalid;
    let share = format!("/v1/clients/{API_VICTIM}/client-backup-shares/PASSWORD");

    // The cipherText: wrong types, empty, too large, control characters.
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

    // Bearer formats.
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

    // Client ids and methods in the path: traversal and percent-encoded junk.
    let long_client = format!("/v1/clients/{}/backups", "c".repeat(129));
    let spaced_method = format!("/v1/clients/{API_VICTIM}/client-backup-shares/PASS%20WORD");
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
        ("encoded space in the method", spaced_method.as_str()),
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

    // Share-pair updates.
    let pairs = format!("/v1/clients/{API_VICTIM}/backup-share-pairs");
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

    // Methods and paths.
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

/// Sends the request head byte by byte, slower than anyone would, until dropped.
async fn slow_loris(addr: String, secret_marker: String) {
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /backup HTTP/1.1\r\nhost: x\r\nx-webhook-secret: {secret_marker}\r\n\
         content-type: application/json\r\n"
    );
    for byte in head.bytes() {
        if stream.write_all(&[byte]).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn list_backups(daemon: &Daemon, token: &str, client: &str) -> Vec<pb::MethodBackups> {
    daemon
        .backup()
        .await
        .list_backups(with_token(
            pb::ListBackupsRequest {
                client_id: client.into(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .methods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_store_nothing_and_leak_nothing() {
    let sandbox = Sandbox::new(60);
    let max_request = MAX_REQUEST_BYTES.to_string();
    let max_secret = MAX_SECRET_BYTES.to_string();
    let daemon = sandbox.start_with(&[
        "--max-request-bytes",
        &max_request,
        "--max-share-bytes",
        &max_secret,
        "--max-cipher-text-bytes",
        &max_secret,
        // Every wrong credential below is answered 401 rather than rate limited.
        "--auth-failure-limit",
        "0",
    ]);
    let webhook = daemon.webhook_addr.clone().unwrap();
    let api = daemon.endpoint.trim_start_matches("http://").to_owned();
    let secret = sandbox.keys.webhook_secret.clone();
    let token = create_token(
        &daemon,
        &sandbox.keys.admin_token,
        "backend",
        Role::Backend as i32,
    )
    .await;

    let mut table = Table {
        cases: Vec::new(),
        secret: secret.clone(),
        bearer: format!("Bearer {token}"),
    };
    webhook_cases(&mut table);
    protocol_cases(&mut table);
    api_cases(&mut table);

    // Slow-loris connections trickle their headers to both listeners while the table runs
    // (the daemon drops them after its 10 s header timeout; the table takes far less).
    let lorises: Vec<_> = (0..8)
        .map(|i| {
            let addr = if i % 2 == 0 { &webhook } else { &api };
            tokio::spawn(slow_loris(addr.clone(), format!("{MARKER}loris-{i}")))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut failures = Vec::new();
    let mut statuses: BTreeMap<(To, String), usize> = BTreeMap::new();
    let mut answers = Vec::new();
    for (n, case) in table.cases.iter().enumerate() {
        let outcome = exchange(case, &webhook, &api).await;
        let status = outcome
            .status
            .map_or_else(|| "closed".to_owned(), |s| s.to_string());
        if let Expect::StatusOrClosed(_) = case.expect {
            eprintln!(
                "hostile: case {} ({}): {status} {}",
                n + 1,
                case.name,
                outcome.content_type.as_deref().unwrap_or("")
            );
        }
        if let Err(problem) = check(case, &outcome) {
            failures.push(format!("case {} ({}): {problem}", n + 1, case.name));
        }
        *statuses.entry((case.to, status)).or_default() += 1;
        answers.push(outcome.body);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing was stored for the victims.
    let hook = Http::plain(&webhook);
    let fetched = hook
        .post_json(
            "/backup/fetch",
            &[("x-webhook-secret", &secret)],
            &json!({ "clientId": WEBHOOK_VICTIM }),
        )
        .await;
    assert_eq!(fetched.json(), json!({"backupShares": []}));
    let fetched = daemon
        .webhook()
        .await
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: API_VICTIM.into(),
            },
            &secret,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.backup_shares.is_empty());
    for client in [WEBHOOK_VICTIM, API_VICTIM, "other", "victim"] {
        assert!(
            list_backups(&daemon, &token, client).await.is_empty(),
            "{client} has backups"
        );
    }
    let private = Http::plain(&api);
    let pairs = private
        .send(
            "GET",
            &format!("/v1/clients/{API_VICTIM}/backup-share-pairs"),
            &[("authorization", &table.bearer)],
            None,
        )
        .await;
    assert_eq!(pairs.json(), json!({"backupSharePairs": []}));
    let status = daemon.status(&sandbox.keys.admin_token).await;
    assert_eq!(
        (status.custodian_shares, status.client_shares),
        (0, 0),
        "no share of any client was stored"
    );

    // The daemon still serves good requests, on both listeners, while the slow client trickles.
    let good = hook
        .post_json(
            "/backup",
            &[("x-webhook-secret", &secret)],
            &json!({"clientId": "survivor", "backupMethod": "PASSWORD-SECP256K1", "share": "fine"}),
        )
        .await;
    assert_eq!(good.status, 200, "{}", String::from_utf8_lossy(&good.body));
    let fetched = hook
        .post_json(
            "/backup/fetch",
            &[("x-webhook-secret", &secret)],
            &json!({"clientId": "survivor"}),
        )
        .await;
    assert_eq!(fetched.json(), json!({"backupShares": ["fine"]}));
    let stored = private
        .send(
            "PUT",
            "/v1/clients/survivor/client-backup-shares/PASSWORD",
            &[JSON, ("authorization", &table.bearer)],
            Some(br#"{"cipherText":"also fine"}"#),
        )
        .await;
    assert_eq!(stored.status, 200);
    for loris in lorises {
        loris.abort();
    }

    // No planted marker in any answer, the logs or the metrics.
    let metrics = private.send("GET", "/metrics", &[], None).await;
    assert_eq!(metrics.status, 200);
    let metrics = String::from_utf8(metrics.body).unwrap();
    assert!(metrics.contains("sharevault_calls_total"), "{metrics}");
    let logs = daemon.logs();
    for (what, text) in [
        ("the logs", logs.as_str()),
        ("the metrics", metrics.as_str()),
    ] {
        assert!(
            !text.contains("PLANTED"),
            "a planted marker reached {what}:\n{text}"
        );
        assert!(!text.contains(&secret), "the webhook secret reached {what}");
        assert!(!text.contains(&token), "the token reached {what}");
    }
    for answer in &answers {
        assert!(!String::from_utf8_lossy(answer).contains("PLANTED"));
    }

    let summary: Vec<String> = statuses
        .iter()
        .map(|((to, status), n)| format!("{to:?} {status}: {n}"))
        .collect();
    eprintln!(
        "hostile: {} malformed requests answered as expected ({}); nothing stored, nothing leaked",
        table.cases.len(),
        summary.join(", ")
    );
}
