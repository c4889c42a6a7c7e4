//! Slow and idle clients on both listeners: idle HTTP/2 connections, per-source connection
//! limits, gRPC calls whose request never finishes, and gRPC messages over the share limits.

use crate::harness::{Sandbox, with_secret};
use crate::http_client::{H2Body, Http};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use serde_json::json;
use sharevault::pb;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The HTTP/2 client preface and an empty SETTINGS frame: a connection that opens no stream.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Opens up to `count` idle HTTP/2 connections to `addr` from `source`; stops early (and
/// says so) if connecting takes over 2 s, as it does once the listener stops accepting.
async fn idle_connections(addr: &str, source: &str, count: usize) -> Vec<tokio::net::TcpStream> {
    let http = Http::from_source(addr, source);
    let mut held = Vec::new();
    for _ in 0..count {
        let Some(mut stream) = http.connect_within(Duration::from_secs(2)).await else {
            eprintln!(
                "{addr}: connecting stalled after {} connections",
                held.len()
            );
            break;
        };
        // The daemon may already have closed it (over the per-source limit).
        let _ = stream.write_all(H2_PREFACE).await;
        held.push(stream);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_from_one_source_do_not_keep_others_out() {
    let sandbox = Sandbox::new(90);
    let daemon = sandbox.start();
    let hook = daemon.webhook_addr.clone().unwrap();
    let grpc = daemon.endpoint.trim_start_matches("http://").to_owned();
    let secret = sandbox.keys.webhook_secret.clone();

    let mut held = idle_connections(&hook, "127.0.0.2", 2000).await;
    held.extend(idle_connections(&grpc, "127.0.0.2", 2000).await);

    // Meanwhile a correct webhook request and gRPC calls from 127.0.0.1 are served at once.
    let within = Duration::from_secs(1);
    let reply = tokio::time::timeout(
        within,
        Http::plain(&hook).post_json(
            "/backup",
            &[("x-webhook-secret", &secret)],
            &json!({"clientId": "idle", "share": "s"}),
        ),
    )
    .await
    .expect("the webhook answers within a second");
    assert_eq!(reply.status, 200);
    let health = tokio::time::timeout(within, async {
        HealthClient::new(daemon.channel().await)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
    })
    .await
    .expect("gRPC health answers within a second")
    .unwrap()
    .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let shares = tokio::time::timeout(within, async {
        daemon
            .webhook()
            .await
            .fetch(with_secret(
                pb::FetchRequest {
                    client_id: "idle".into(),
                },
                &secret,
            ))
            .await
    })
    .await
    .expect("a gRPC fetch answers within a second")
    .unwrap()
    .into_inner()
    .backup_shares
    .clone();
    assert_eq!(shares, ["s"]);
    drop(held);
}

fn empty() -> H2Body {
    http_body_util::Empty::new().boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_no_open_request_is_closed_once_idle() {
    let sandbox = Sandbox::new(91);
    let daemon = sandbox.start_with(&["--connection-idle-seconds", "2"]);
    for addr in [
        daemon.webhook_addr.clone().unwrap(),
        daemon.endpoint.trim_start_matches("http://").to_owned(),
    ] {
        let (mut sender, driver) = Http::plain(&addr).h2().await;
        // In use every second, the connection stays open past the idle limit.
        for _ in 0..4 {
            let request = hyper::Request::get(format!("http://{addr}/healthz"))
                .body(empty())
                .unwrap();
            let reply = sender.send_request(request).await.unwrap();
            assert_eq!(reply.status(), 200);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Left idle, it is closed, although the client answers every ping.
        tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .unwrap_or_else(|_| panic!("{addr}: an idle HTTP/2 connection was kept open"))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_whose_request_never_finishes_is_answered_deadline_exceeded() {
    let sandbox = Sandbox::new(92);
    let daemon = sandbox.start_with(&["--request-timeout-seconds", "1"]);
    let addr = daemon.endpoint.trim_start_matches("http://").to_owned();
    for path in [
        "/sharevault.v1.WebhookService/Backup",
        "/sharevault.v1.AdminService/Verify",
    ] {
        let (mut sender, _driver) = Http::plain(&addr).h2().await;
        let (frames, body) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        // A message header announcing 1,000 bytes, then ten of them, then nothing.
        let mut start = vec![0u8, 0, 0, 0x03, 0xe8];
        start.extend_from_slice(&[0u8; 10]);
        frames
            .send(Ok(Frame::data(Bytes::from(start))))
            .await
            .unwrap();
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(body)).boxed();
        let request = hyper::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-webhook-secret", sandbox.keys.webhook_secret.as_str())
            .body(body)
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .unwrap_or_else(|_| panic!("{path}: a stalled request was never answered"))
            .unwrap();
        assert_eq!(
            reply.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"4"[..]),
            "{path}: DEADLINE_EXCEEDED"
        );
        drop(frames);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_over_the_share_limits_are_refused_before_decoding() {
    let sandbox = Sandbox::new(93);
    let daemon = sandbox.start();
    let secret = sandbox.keys.webhook_secret.as_str();
    let mut webhook = daemon.webhook().await;
    let backup = |share: String| {
        with_secret(
            pb::BackupRequest {
                client_id: "big".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share,
                backup_share_pair_id: None,
            },
            secret,
        )
    };
    let err = webhook
        .backup(backup("S".repeat(1024 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    // A share of the largest size allowed still fits.
    webhook.backup(backup("S".repeat(64 * 1024))).await.unwrap();
    let shares = crate::harness::fetch_shares(&mut webhook, secret, "big".into()).await;
    assert_eq!(shares, ["S".repeat(64 * 1024)]);
}
