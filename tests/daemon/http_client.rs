//! A small HTTP/1.1 client over hyper, with optional TLS trusting one test certificate.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

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
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
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

    /// Connects from `source` (a loopback address other than 127.0.0.1, say).
    pub fn from_source(addr: &str, source: &str) -> Self {
        Self {
            source: Some(source.parse().unwrap()),
            ..Self::plain(addr)
        }
    }

    async fn connect(&self) -> tokio::net::TcpStream {
        let Some(source) = self.source else {
            return tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        };
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        socket.connect(self.addr.parse().unwrap()).await.unwrap()
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
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
    ) -> Reply
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
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
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
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
