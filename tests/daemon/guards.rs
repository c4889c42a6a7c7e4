//! Single-host guards: the gRPC webhook only on request and behind the allow-list; refusals
//! and timeouts counted and logged; the allow-list and the per-source cap applied when a
//! connection is accepted; failures from a limited source answered late.

use crate::harness::{Daemon, Sandbox, Started, command, with_secret};
use sharevault::pb;
use sharevault::pb::webhook_service_client::WebhookServiceClient;
use tonic::Code;

const WEBHOOK: &str = "sharevault.v1.WebhookService";

/// Starts a daemon of `sandbox` with `extra` flags and none of the harness's defaults for the
/// gRPC webhook.
fn start_without_grpc_webhook_default(sandbox: &Sandbox, extra: &[&str]) -> Daemon {
    let mut args = Daemon::tcp_args(&sandbox.keys);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = command(&sandbox.data_dir, &args);
    cmd.env_remove("SHAREVAULT_GRPC_WEBHOOK");
    match Daemon::launch(cmd) {
        Started::Ready(daemon) => daemon,
        Started::Exited { status, logs } => panic!("daemon exited ({status}):\n{logs}"),
    }
}

fn backup(client: &str, share: &str) -> pb::BackupRequest {
    pb::BackupRequest {
        client_id: client.into(),
        backup_method: "PASSWORD-SECP256K1".into(),
        share: share.into(),
        backup_share_pair_id: None,
    }
}

fn fetch(client: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        client_id: client.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_webhook_is_served_only_on_request_and_only_to_the_allow_list() {
    let sandbox = Sandbox::new(110);
    let secret = sandbox.keys.webhook_secret.as_str();

    // By default the private listener does not serve it, and health does not report it.
    let mut daemon = start_without_grpc_webhook_default(&sandbox, &[]);
    let err = daemon
        .webhook()
        .await
        .backup(with_secret(backup("grpc-hook", "s0"), secret))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(daemon.channel().await);
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: WEBHOOK.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(daemon.signal("TERM").success());

    // With --grpc-webhook, only the allowed source is served, by its connection's address.
    let daemon = start_without_grpc_webhook_default(
        &sandbox,
        &["--grpc-webhook", "--webhook-allow-cidrs", "127.0.0.2/32"],
    );
    let mut outsider = daemon.webhook().await;
    for call in [
        outsider
            .backup(with_secret(backup("grpc-hook", "s1"), secret))
            .await
            .map(|_| ()),
        outsider
            .fetch(with_secret(fetch("grpc-hook"), secret))
            .await
            .map(|_| ()),
    ] {
        let err = call.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    let mut allowed = WebhookServiceClient::new(daemon.channel_from("127.0.0.2").await);
    allowed
        .backup(with_secret(backup("grpc-hook", "s2"), secret))
        .await
        .unwrap();
    let shares = allowed
        .fetch(with_secret(fetch("grpc-hook"), secret))
        .await
        .unwrap()
        .into_inner()
        .backup_shares;
    assert_eq!(shares, ["s2"], "the refused backup stored nothing");
}
