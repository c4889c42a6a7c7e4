//! One long-lived keep-alive HTTP/1.1 connection to the webhook listener.

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// A webhook client that reconnects after a failed exchange.
pub struct Webhook {
    addr: SocketAddr,
    secret: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Webhook {
    pub fn new(addr: SocketAddr, secret: &str) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            secret: HeaderValue::from_str(secret).context("webhook secret")?,
            sender: None,
        })
    }

    /// Opens the connection if it is not open.
    pub async fn connect(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.is_none() {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP handshake")?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        self.sender.as_mut().context("no connection")
    }

    /// POSTs a JSON body to `path` and reads the whole answer.
    pub async fn post(&mut self, path: &str, body: Vec<u8>) -> anyhow::Result<(StatusCode, Bytes)> {
        let result = self.exchange(path, body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, path: &str, body: Vec<u8>) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, "localhost")
            .header(CONTENT_TYPE, "application/json")
            .header("x-webhook-secret", self.secret.clone())
            .body(Full::new(Bytes::from(body)))?;
        let sender = self.connect().await?;
        sender.ready().await.context("connection closed")?;
        let response = sender.send_request(request).await.context("request")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("answer body")?
            .to_bytes();
        Ok((status, body))
    }
}
