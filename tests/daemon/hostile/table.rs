//! The table of hostile cases: what each sends, to which listener, and what it must get back;
//! and the request builders the case lists share.

use serde_json::json;

pub const MARKER: &str = "PLANTED-SECRET-";
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
pub const MAX_SECRET_BYTES: usize = 2048;
pub const WEBHOOK_VICTIM: &str = "victim-w";
pub const API_VICTIM: &str = "victim-a";
pub const JSON: (&str, &str) = ("content-type", "application/json");

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum To {
    Webhook,
    Api,
}

pub enum Request {
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

pub enum Expect {
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

pub struct Case {
    pub name: String,
    pub to: To,
    pub request: Request,
    pub expect: Expect,
}

pub struct Table {
    pub cases: Vec<Case>,
    pub secret: String,
    pub bearer: String,
}

impl Table {
    /// Adds a case; `make` gets the case's own marker.
    pub fn add(&mut self, name: &str, to: To, expect: Expect, make: impl FnOnce(&str) -> Request) {
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
    pub fn backup(&mut self, name: &str, expect: Expect, body: impl FnOnce(&str) -> Vec<u8>) {
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
    pub fn put_share(&mut self, name: &str, expect: Expect, body: impl FnOnce(&str) -> Vec<u8>) {
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
    pub fn api(
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

pub fn invalid(prefix: &str) -> Expect {
    Expect::Invalid(prefix.to_owned())
}

pub fn http(method: &'static str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Request {
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

pub fn bytes(value: serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// A webhook backup body for the victim with `share`.
pub fn share_body(share: &str) -> Vec<u8> {
    bytes(json!({"clientId": WEBHOOK_VICTIM, "backupMethod": "PASSWORD-SECP256K1", "share": share}))
}

/// A raw HTTP/1.1 request with the given header lines and a `Content-Length` body.
pub fn raw_request(head: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
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
pub fn raw_request_bytes(head: &str, header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{head}\r\nhost: localhost\r\n").into_bytes();
    out.extend_from_slice(header);
    out.extend_from_slice(format!("\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// A chunked body in chunks of at most 4 KiB, with its terminating chunk.
pub fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(4096) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

pub fn nested(depth: usize, open: &str, inner: &str, close: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}
