//! Requests that are not valid HTTP, or push its limits, to the public webhook listener.

use super::table::Expect::{self, StatusOrClosed};
use super::table::{Request, Table, To, chunked, raw_request, raw_request_bytes, share_body};

/// Requests that are not valid HTTP, or push its limits. hyper answers most of them itself,
/// before the daemon sees a request: 400 (or 431 for headers over 64 KiB, or too many of them)
/// with an empty body, then it closes the connection.
pub fn protocol_cases(t: &mut Table) {
    malformed_heads(t);
    framing_and_limits(t);
}

/// Request lines, header names and values, and lengths that are not valid HTTP/1.1.
fn malformed_heads(t: &mut Table) {
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
}

/// Conflicting and broken framing, another protocol version, and heads over the limits.
fn framing_and_limits(t: &mut Table) {
    let secret = t.secret.clone();
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
