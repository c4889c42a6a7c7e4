//! One webhook call as Portal makes it: a fresh connection (TLS for `https://`), `POST` of a
//! JSON body with `X-Webhook-Secret`, the whole answer read, all within a time limit.

use super::url::WebhookUrl;
use crate::cli::CliError;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The most of an answer that is read; a webhook's answers are a few kilobytes.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// What a call got back.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// How a call went: its answer or why there was none, and how long it took.
pub struct Outcome {
    pub result: Result<Answer, String>,
    pub elapsed: Duration,
    /// False when no connection (TCP and TLS) could be made at all.
    pub reached: bool,
}

/// Why a call got no answer.
enum Failure {
    /// No connection could be made (TCP or TLS).
    Unreached(String),
    Other(String),
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Failure::Other(why)
    }
}

impl Outcome {
    fn new(result: Result<Answer, Failure>, start: Instant) -> Self {
        let (result, reached) = match result {
            Ok(answer) => (Ok(answer), true),
            Err(Failure::Unreached(why)) => (Err(why), false),
            Err(Failure::Other(why)) => (Err(why), true),
        };
        Self {
            result,
            elapsed: start.elapsed(),
            reached,
        }
    }
}

/// The secret a call presents.
#[derive(Clone, Copy)]
pub enum Secret<'a> {
    /// The webhook's, from `--webhook-secret-file`.
    Ours,
    Other(&'a Zeroizing<String>),
    /// No `X-Webhook-Secret` header at all.
    Missing,
}

/// Calls one webhook: its URL, the secret to present, TLS, and Portal's time limit.
pub struct Webhook {
    pub url: WebhookUrl,
    secret: HeaderValue,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub limit: Duration,
}

impl Webhook {
    pub fn new(
        url: WebhookUrl,
        secret: &Zeroizing<String>,
        ca_file: Option<&Path>,
        limit: Duration,
    ) -> Result<Self, CliError> {
        let tls = if url.tls {
            Some(tls(&url.host, ca_file)?)
        } else if ca_file.is_some() {
            return Err(CliError::Local(
                "--ca-file: the webhook URL is http://, without TLS; use https://".into(),
            ));
        } else {
            None
        };
        Ok(Self {
            secret: header_secret(secret)?,
            url,
            tls,
            limit,
        })
    }

    /// POSTs `body` to `route`, presenting `secret`.
    pub async fn post(&self, route: &str, body: Vec<u8>, secret: Secret<'_>) -> Outcome {
        let start = Instant::now();
        let secret = match secret {
            Secret::Ours => Ok(Some(self.secret.clone())),
            Secret::Other(other) => header_secret(other).map(Some),
            Secret::Missing => Ok(None),
        };
        let secret = match secret {
            Ok(secret) => secret,
            Err(err) => return Outcome::new(Err(err.to_string().into()), start),
        };
        let connected = AtomicBool::new(false);
        let exchange = self.exchange(route, body, secret, &connected);
        self.within_limit(start, &connected, exchange).await
    }

    /// Runs `call` within Portal's limit; one cut short before it had connected did not
    /// reach the webhook.
    async fn within_limit(
        &self,
        start: Instant,
        connected: &AtomicBool,
        call: impl Future<Output = Result<Answer, Failure>>,
    ) -> Outcome {
        let ms = self.limit.as_millis();
        let result = match tokio::time::timeout(self.limit, call).await {
            Ok(result) => result,
            Err(_) if connected.load(Ordering::Relaxed) => {
                Err(Failure::Other(format!("no complete answer within {ms} ms")))
            }
            Err(_) => Err(Failure::Unreached(format!(
                "no connection to {} within {ms} ms",
                self.url.addr
            ))),
        };
        Outcome::new(result, start)
    }

    /// POSTs a body the webhook should refuse unread, listening for the answer while the
    /// body is still being sent: a server that answers 413 from the `Content-Length` alone
    /// and closes is heard, as an HTTP client that reads while it writes hears it. Only the
    /// answer's status is read.
    pub async fn post_refused(&self, route: &str, body: Vec<u8>) -> Outcome {
        let start = Instant::now();
        let mut head = Zeroizing::new(Vec::with_capacity(512));
        head.extend_from_slice(
            format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Accept: application/json\r\nUser-Agent: sharevault-selftest/{}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n{}: ",
                self.url.path(route),
                self.url.authority,
                env!("CARGO_PKG_VERSION"),
                body.len(),
                crate::api::http::webhook::SECRET_HEADER,
            )
            .as_bytes(),
        );
        head.extend_from_slice(self.secret.as_bytes());
        head.extend_from_slice(b"\r\n\r\n");
        let connected = AtomicBool::new(false);
        let exchange = async {
            Ok::<_, Failure>(match self.open(&connected).await? {
                Stream::Plain(tcp) => status_while_sending(tcp, head, body).await?,
                Stream::Tls(tls) => status_while_sending(*tls, head, body).await?,
            })
        };
        self.within_limit(start, &connected, exchange).await
    }

    /// A connection to the webhook, TLS done for `https://`; sets `connected` once made.
    async fn open(&self, connected: &AtomicBool) -> Result<Stream, Failure> {
        let tcp = tokio::net::TcpStream::connect(self.url.addr.as_str())
            .await
            .map_err(|e| Failure::Unreached(format!("cannot connect to {}: {e}", self.url.addr)))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => connector
                .connect(name.clone(), tcp)
                .await
                .map(|tls| Stream::Tls(Box::new(tls)))
                .map_err(|e| {
                    Failure::Unreached(format!("TLS handshake with {}: {e}", self.url.addr))
                })?,
        };
        connected.store(true, Ordering::Relaxed);
        Ok(stream)
    }

    async fn exchange(
        &self,
        route: &str,
        body: Vec<u8>,
        secret: Option<HeaderValue>,
        connected: &AtomicBool,
    ) -> Result<Answer, Failure> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.url.path(route))
            .header(HOST, self.url.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("sharevault-selftest/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(secret) = secret {
            request = request.header(crate::api::http::webhook::SECRET_HEADER, secret);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = match self.open(connected).await? {
            Stream::Plain(tcp) => send(TokioIo::new(tcp), request).await?,
            Stream::Tls(tls) => send(TokioIo::new(*tls), request).await?,
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("the answer's body could not be read: {e}"))?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// Sends `head` and `body` while reading the answer's head; answers its status as soon as it
/// is read, whether or not the body could be sent whole.
async fn status_while_sending<S>(
    stream: S,
    head: Zeroizing<Vec<u8>>,
    body: Vec<u8>,
) -> Result<Answer, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = tokio::io::split(stream);
    let send = async move {
        writer.write_all(&head).await?;
        writer.write_all(&body).await?;
        writer.flush().await
    };
    let read = async move {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = reader
                .read(&mut chunk)
                .await
                .map_err(|e| format!("no answer: {e}"))?;
            if n == 0 {
                return Err("the connection closed without an answer".to_owned());
            }
            buffer.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buffer) {
                Ok(httparse::Status::Complete(len)) => {
                    let code = response.code.unwrap_or_default();
                    if (100..200).contains(&code) {
                        buffer.drain(..len);
                        continue;
                    }
                    return StatusCode::from_u16(code)
                        .map_err(|_| format!("an answer with status {code}"));
                }
                Ok(httparse::Status::Partial) if buffer.len() < 64 * 1024 => {}
                Ok(httparse::Status::Partial) => return Err("an answer head over 64 KiB".into()),
                Err(e) => return Err(format!("not an HTTP answer: {e}")),
            }
        }
    };
    tokio::pin!(send, read);
    let mut send_error = None;
    loop {
        tokio::select! {
            status = &mut read => {
                return match (status, send_error) {
                    (Ok(status), _) => Ok(Answer { status, body: Bytes::new() }),
                    (Err(why), Some(send)) => Err(format!("{why} ({send})")),
                    (Err(why), None) => Err(why),
                };
            }
            sent = &mut send, if send_error.is_none() => {
                send_error = Some(match sent {
                    Ok(()) => "the body was sent whole".to_owned(),
                    Err(e) => format!("sending the body failed: {e}"),
                });
            }
        }
    }
}

async fn send<T>(
    io: TokioIo<T>,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("no answer: {e}"))
}

fn header_secret(secret: &Zeroizing<String>) -> Result<HeaderValue, CliError> {
    let mut value = HeaderValue::from_str(secret.as_str()).map_err(|_| {
        CliError::Local("the webhook secret holds characters a header cannot carry".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn tls(
    host: &str,
    ca_file: Option<&Path>,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ),
    CliError,
> {
    let roots = match ca_file {
        Some(ca_file) => crate::cli::client::roots_from_file(ca_file)?,
        None => crate::cli::client::system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::Local(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| CliError::Local(format!("--webhook-url: `{host}` is not a host name")))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}
