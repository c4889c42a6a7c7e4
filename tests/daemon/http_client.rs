//! The tests' one HTTP client: HTTP/1.1 over hyper, with optional TLS trusting one test
//! certificate; HTTP/2 with prior knowledge; and raw bytes on a fresh connection, for requests
//! a well-behaved client cannot send and requests that never finish.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The body type of an HTTP/2 request sent with [`Http::h2`].
pub type H2Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "status {}: body is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error.message` of a JSON error answer.
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// A client for one listener.
#[derive(Clone)]
pub struct Http {
    pub addr: String,
    tls: Option<tokio_rustls::TlsConnector>,
    /// A loopback address to connect from (any of 127.0.0.0/8).
    source: Option<std::net::IpAddr>,
}

/// A test certificate for `localhost` and `127.0.0.1`, and its PEM files.
pub struct TestCert {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    pub fn new(dir: &std::path::Path) -> Self {
        Self::for_names(dir, &["localhost", "127.0.0.1"])
    }

    /// A test certificate for `names` (host names and IP addresses).
    pub fn for_names(dir: &std::path::Path, names: &[&str]) -> Self {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let cert = rcgen::generate_simple_self_signed(names).unwrap();
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
        Self {
            cert_file,
            key_file,
            der: cert.cert.der().clone(),
        }
    }

    /// The certificate, as the daemon presents it in a handshake.
    pub fn der(&self) -> &rustls::pki_types::CertificateDer<'static> {
        &self.der
    }

    pub fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Http {
    pub fn plain(addr: &str) -> Self {
        Self {
            addr: addr.trim_start_matches("http://").to_owned(),
            tls: None,
            source: None,
        }
    }

    pub fn tls(addr: &str, cert: &TestCert) -> Self {
        Self {
            addr: addr.trim_start_matches("http://").to_owned(),
            tls: Some(cert.connector(&[b"http/1.1"])),
            source: None,
        }
    }

    /// The same client, connecting from `source`.
    pub fn bound_to(self, source: &str) -> Self {
        Self {
            source: Some(source.parse().unwrap()),
            ..self
        }
    }

    /// Connects from `source` (a loopback address other than 127.0.0.1, say).
    pub fn from_source(addr: &str, source: &str) -> Self {
        Self {
            source: Some(source.parse().unwrap()),
            ..Self::plain(addr)
        }
    }

    async fn try_connect(&self) -> std::io::Result<TcpStream> {
        let Some(source) = self.source else {
            return TcpStream::connect(&self.addr).await;
        };
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        socket.connect(self.addr.parse().unwrap()).await
    }

    /// A new TCP connection (from the source, if any), on which nothing is sent yet: for
    /// connections that are only held open, or written to byte by byte.
    pub async fn connect(&self) -> TcpStream {
        self.try_connect().await.unwrap()
    }

    /// A new TCP connection, or `None` if connecting fails or takes longer than `within` (as it
    /// does once the listener stops accepting): for connections that are only held open.
    pub async fn connect_within(&self, within: Duration) -> Option<TcpStream> {
        match tokio::time::timeout(within, self.try_connect()).await {
            Ok(Ok(stream)) => Some(stream),
            _ => None,
        }
    }

    /// Writes `bytes` as they are on a new connection and leaves it open: a request that
    /// never finishes, or the start of one that the caller trickles on.
    pub async fn open(&self, bytes: &[u8]) -> TcpStream {
        let mut stream = self.connect().await;
        stream.write_all(bytes).await.unwrap();
        stream
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        self.try_send(method, path, headers, body).await.unwrap()
    }

    /// The same, answering hyper's error when no HTTP answer comes back.
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply, hyper::Error> {
        let stream = self.connect().await;
        match &self.tls {
            None => self.exchange(stream, method, path, headers, body).await,
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let stream = connector.connect(name, stream).await.unwrap();
                self.exchange(stream, method, path, headers, body).await
            }
        }
    }

    async fn exchange<IO>(
        &self,
        io: IO,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply, hyper::Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
            .unwrap();
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes().to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// POSTs a JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send("POST", path, &all, Some(body.to_string().as_bytes()))
            .await
    }
}

impl Http {
    /// An HTTP/2 connection with prior knowledge (as gRPC clients make), whose driver runs,
    /// and answers pings, until the connection closes.
    pub async fn h2(
        &self,
    ) -> (
        hyper::client::conn::http2::SendRequest<H2Body>,
        tokio::task::JoinHandle<()>,
    ) {
        let stream = self.connect().await;
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        (sender, driver)
    }

    /// Writes `request` as it is on a new connection and reads one answer, or until the
    /// daemon closes the connection (or 10 s pass): for what a well-behaved client cannot send.
    pub async fn send_raw(&self, request: &[u8]) -> RawReply {
        self.exchange_raw(request, false).await
    }

    /// The same, then reads on until the daemon closes the connection.
    pub async fn send_raw_until_close(&self, request: &[u8]) -> RawReply {
        self.exchange_raw(request, true).await
    }

    async fn exchange_raw(&self, request: &[u8], await_close: bool) -> RawReply {
        let mut stream = self.connect().await;
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
        let mut reply = parse_answer(&buf);
        if await_close && reply.status.is_some() {
            let mut after = Vec::new();
            loop {
                let mut chunk = [0u8; 4096];
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, stream.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        reply.after = Some(after);
                        break;
                    }
                    Ok(Ok(n)) => after.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                }
            }
        }
        reply
    }
}

/// What came back for raw bytes.
pub struct RawReply {
    /// `None` when the connection closed without an answer.
    pub status: Option<u16>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// With [`Http::send_raw_until_close`]: what came after the first answer, if the
    /// connection then closed.
    pub after: Option<Vec<u8>>,
}

impl From<Reply> for RawReply {
    fn from(reply: Reply) -> Self {
        Self {
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

fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn header<'a>(head: &'a str, wanted: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case(wanted)
            .then(|| value.trim())
    })
}

fn content_length(head: &str) -> Option<usize> {
    header(head, "content-length")?.parse().ok()
}

fn answer_complete(buf: &[u8]) -> bool {
    let Some(end) = header_end(buf) else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    content_length(&head).is_some_and(|len| buf.len() >= end + len)
}

fn parse_answer(buf: &[u8]) -> RawReply {
    let Some(end) = header_end(buf) else {
        return RawReply {
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
    let content_type = header(&head, "content-type").map(str::to_owned);
    let len = content_length(&head).unwrap_or(buf.len() - end);
    RawReply {
        status,
        content_type,
        body: buf[end..].iter().take(len).copied().collect(),
        after: None,
    }
}
