//! `sharevault.v1.AdminService`: tokens, status, the audit trail, snapshots, rekey and verify
//! (the long ones stream their progress).

use super::{Call, metadata, reply};
use crate::api::LocalAdmin;
use crate::api::Ready;
use crate::audit::{AuditEvent, ChainReport};
use crate::auth::{Principal, Role};
use crate::crypto::MasterKey;
use crate::error::{Field, VaultError};
use crate::pb::admin_service_server::AdminService;
use crate::pb::{self, timestamp};
use crate::store::StoreError;
use crate::vault::doctor::{DoctorOptions, DoctorTotals, Finding};
use crate::vault::{Vault, VerifyReport};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

pub struct AdminApi {
    pub ready: Ready,
    pub calls: crate::metrics::CallMetrics,
}

impl AdminApi {
    /// What the call's credential allows; a token lookup waits off the async workers.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(&Arc<Vault>, Principal), VaultError> {
        let vault = self.ready.get()?;
        let authorization = metadata(request, "authorization").map(str::to_owned);
        // On the local admin socket the kernel vouches for the caller.
        if authorization.is_none() && request.extensions().get::<LocalAdmin>().is_some() {
            return Ok((
                vault,
                Principal {
                    name: "local-admin".into(),
                    role: Role::Admin,
                },
            ));
        }
        let source = super::source(request);
        let who = vault
            .authorize(authorization.as_deref(), Role::Admin, source)
            .await?;
        Ok((vault, who))
    }
}

fn role_to_proto(role: Role) -> i32 {
    match role {
        Role::Backend => pb::Role::Backend as i32,
        Role::Eject => pb::Role::Eject as i32,
        Role::Admin => pb::Role::Admin as i32,
    }
}

fn role_from_proto(value: i32) -> Result<Role, VaultError> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Backend) => Ok(Role::Backend),
        Ok(pb::Role::Eject) => Ok(Role::Eject),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        _ => Err(VaultError::invalid(
            Field::Role,
            "must be ROLE_BACKEND, ROLE_EJECT or ROLE_ADMIN",
        )),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let req = request.get_ref();
        let call = Call::new(&self.calls, "AdminService", "CreateToken");
        let result = async {
            let (vault, who) = self.authorize(&request).await?;
            let role = role_from_proto(req.role)?;
            let token = vault.create_token(&req.name, role, &who.name).await?;
            Ok(pb::CreateTokenResponse {
                name: req.name.clone(),
                role: role_to_proto(role),
                token: token.as_str().to_owned(),
            })
        }
        .await;
        reply(call, result)
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let call = Call::new(&self.calls, "AdminService", "ListTokens");
        let result = async {
            let (vault, _) = self.authorize(&request).await?;
            Ok(pb::ListTokensResponse {
                tokens: vault
                    .list_tokens()?
                    .into_iter()
                    .map(|t| pb::TokenInfo {
                        role: role_to_proto(t.role),
                        created_at: Some(timestamp(t.created_at_ms)),
                        name: t.name,
                    })
                    .collect(),
            })
        }
        .await;
        reply(call, result)
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let call = Call::new(&self.calls, "AdminService", "RevokeToken");
        let result = async {
            let (vault, who) = self.authorize(&request).await?;
            vault
                .revoke_token(&request.get_ref().name, &who.name)
                .await?;
            Ok(pb::RevokeTokenResponse {})
        }
        .await;
        reply(call, result)
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "AdminService", "ListVersions");
        call.client(&req.client_id);
        let result = async {
            let (vault, _) = self.authorize(&request).await?;
            let versions = vault.list_versions(&req.client_id).await?;
            Ok(pb::ListVersionsResponse {
                versions: versions
                    .into_iter()
                    .map(|v| pb::ShareVersion {
                        kind: v.kind.name().to_owned(),
                        backup_method: v.backup_method,
                        version: v.number,
                        current: v.superseded_at_ms.is_none(),
                        backup_share_pair_id: v.pair_id.unwrap_or_default(),
                        pair_status: v.pair_status.map_or(0, super::backup::pair_status_to_proto),
                        created_at: Some(timestamp(v.created_at_ms)),
                        superseded_at: v.superseded_at_ms.map(timestamp),
                    })
                    .collect(),
            })
        }
        .await;
        reply(call, result)
    }

    async fn restore_version(
        &self,
        request: Request<pb::RestoreVersionRequest>,
    ) -> Result<Response<pb::RestoreVersionResponse>, Status> {
        let req = request.get_ref();
        let mut call = Call::new(&self.calls, "AdminService", "RestoreVersion");
        call.client(&req.client_id);
        let result = async {
            let (vault, who) = self.authorize(&request).await?;
            vault
                .restore_version(
                    &req.client_id,
                    &req.kind,
                    &req.backup_method,
                    req.version,
                    &who.name,
                )
                .await?;
            Ok(pb::RestoreVersionResponse {})
        }
        .await;
        reply(call, result)
    }

    type DoctorStream = ReceiverStream<Result<pb::DoctorMessage, Status>>;

    async fn doctor(
        &self,
        request: Request<pb::DoctorRequest>,
    ) -> Result<Response<Self::DoctorStream>, Status> {
        let call = Call::new(&self.calls, "AdminService", "Doctor");
        let result = self.authorize(&request).await.and_then(|(vault, who)| {
            let req = request.get_ref();
            let mut options = DoctorOptions::default();
            if !req.curves.is_empty() {
                for curve in &req.curves {
                    crate::validate::backup_method(curve)?;
                }
                options.curves = req.curves.clone();
            }
            if req.stuck_after_seconds > 0 {
                options.stuck_after_ms = req.stuck_after_seconds.saturating_mul(1000);
            }
            Ok((Arc::clone(vault), who, options))
        });
        let (vault, who, options) = reply(call, result)?.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let worker = Arc::clone(&vault);
            let sender = tx.clone();
            let report = tokio::task::spawn_blocking(move || {
                let mut progress = |done, total| {
                    let item =
                        pb::doctor_message::Item::Progress(pb::DoctorProgress { done, total });
                    let _ = sender.try_send(Ok(pb::DoctorMessage { item: Some(item) }));
                };
                worker.doctor(
                    &options,
                    &mut |finding: Finding| {
                        let item = pb::doctor_message::Item::Finding(finding_to_proto(finding));
                        sender
                            .blocking_send(Ok(pb::DoctorMessage { item: Some(item) }))
                            .map_err(|_| VaultError::Unavailable)
                    },
                    &mut progress,
                )
            })
            .await
            .unwrap_or(Err(VaultError::Internal));
            let outcome = match &report {
                Ok(t) => format!(
                    "ok: {} of {} clients can recover",
                    t.recoverable_clients, t.clients
                ),
                Err(err) => err.outcome().to_owned(),
            };
            let _ = vault.audit_doctor(&who.name, &outcome).await;
            let last = report.map(|totals| pb::DoctorMessage {
                item: Some(pb::doctor_message::Item::Totals(totals_to_proto(totals))),
            });
            let _ = tx.send(last.map_err(Status::from)).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let call = Call::new(&self.calls, "AdminService", "GetStatus");
        let result = async {
            let (vault, _) = self.authorize(&request).await?;
            let status = vault.status().await?;
            Ok(pb::GetStatusResponse {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                custodian_shares: status.counts.custodian_shares,
                client_shares: status.counts.client_shares,
                backup_share_pairs: status.counts.backup_share_pairs,
                tokens: status.counts.tokens,
                master_key_id: status.key_id.to_string(),
                uptime_seconds: status.uptime_secs,
                audit_head_seq: vault.audit_head_seq()?,
            })
        }
        .await;
        reply(call, result)
    }

    type ListAuditEventsStream = ReceiverStream<Result<pb::AuditEvent, Status>>;

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<Self::ListAuditEventsStream>, Status> {
        let call = Call::new(&self.calls, "AdminService", "ListAuditEvents");
        let result = self
            .authorize(&request)
            .await
            .map(|(vault, _)| Arc::clone(vault));
        let vault = reply(call, result)?.into_inner();
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut remaining = if req.limit == 0 { u64::MAX } else { req.limit };
            let mut after = req.after_seq;
            let req = Arc::new(req);
            while remaining > 0 && !tx.is_closed() {
                let page = remaining.min(1024) as usize;
                let (v, r) = (Arc::clone(&vault), Arc::clone(&req));
                // Each step reads up to `AUDIT_SCAN` events from the store: on the blocking
                // pool, not on a worker that serves requests.
                let found = tokio::task::spawn_blocking(move || {
                    v.audit_events(after, page, |e| audit_matches(&r, e))
                })
                .await;
                let (events, cursor) = match found {
                    Ok(Ok(found)) => found,
                    Ok(Err(err)) => {
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                    Err(_) => {
                        let _ = tx
                            .send(Err(Status::internal("the audit scan failed")))
                            .await;
                        return;
                    }
                };
                if events.is_empty() && cursor == after {
                    return;
                }
                after = cursor;
                remaining = remaining.saturating_sub(events.len() as u64);
                for event in events {
                    if tx.send(Ok(audit_to_proto(event))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let call = Call::new(&self.calls, "AdminService", "VerifyAudit");
        let result = async {
            let (vault, _) = self.authorize(&request).await?;
            let vault = Arc::clone(vault);
            let report = tokio::task::spawn_blocking(move || vault.verify_audit())
                .await
                .map_err(|_| VaultError::Internal)??;
            Ok(audit_report_to_proto(report))
        }
        .await;
        reply(call, result)
    }

    type VerifyAuditWithProgressStream = ReceiverStream<Result<pb::VerifyAuditProgress, Status>>;

    async fn verify_audit_with_progress(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<Self::VerifyAuditWithProgressStream>, Status> {
        let call = Call::new(&self.calls, "AdminService", "VerifyAuditWithProgress");
        let result = self
            .authorize(&request)
            .await
            .map(|(vault, _)| Arc::clone(vault));
        let vault = reply(call, result)?.into_inner();
        Ok(Response::new(stream_progress(
            move |progress| vault.verify_audit_with(progress),
            |done, total, result| pb::VerifyAuditProgress {
                done,
                total,
                result: result.map(audit_report_to_proto),
            },
        )))
    }

    type SnapshotStream = ReceiverStream<Result<pb::SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let call = Call::new(&self.calls, "AdminService", "Snapshot");
        let result = self
            .authorize(&request)
            .await
            .map(|(vault, who)| (Arc::clone(vault), who));
        let (vault, who) = reply(call, result)?.into_inner();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let writer = Arc::clone(&vault);
            let sender = tx.clone();
            let written = tokio::task::spawn_blocking(move || {
                crate::snapshot::write(&writer, &mut |data, written| {
                    sender
                        .blocking_send(Ok(pb::SnapshotChunk {
                            data,
                            records_done: written.records,
                            records_total: written.total,
                        }))
                        .map_err(|_| StoreError::Closed)
                })
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    if let Err(err) = vault.record_admin(&who.name, "snapshot").await {
                        let _ = tx.send(Err(Status::from(err))).await;
                    }
                }
                Ok(Err(err)) => {
                    let _ = tx.send(Err(Status::from(err))).await;
                }
                Err(_) => {
                    let _ = tx.send(Err(Status::internal("the snapshot failed"))).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type RekeyStream = ReceiverStream<Result<pb::RekeyProgress, Status>>;

    async fn rekey(
        &self,
        request: Request<pb::RekeyRequest>,
    ) -> Result<Response<Self::RekeyStream>, Status> {
        let call = Call::new(&self.calls, "AdminService", "Rekey");
        let result = async {
            // A key that crossed a network in clear is refused before anything else, so that
            // it never seals anything.
            // The connection's own peer: a forwarded header, even from a trusted proxy, says
            // nothing about the wire the key crossed to reach this daemon.
            let transport = request.extensions().get::<crate::api::Transport>().copied();
            let peer = request
                .extensions()
                .get::<crate::api::Peer>()
                .copied()
                .unwrap_or(crate::api::Peer(None));
            let carries_key = !request.get_ref().new_master_key.is_empty();
            if carries_key && !transport.is_some_and(|t| t.may_carry_keys(peer)) {
                return Err(VaultError::FailedPrecondition(
                    "a rekey carries the new master key: send it over TLS or the local admin \
                     socket, not plain TCP from another host; this key travelled in clear, \
                     so generate another one"
                        .into(),
                ));
            }
            let (vault, who) = self.authorize(&request).await?;
            // Under a token seal the daemon makes the new root key itself, and seals it.
            if let Some(seal) = self.ready.token_seal() {
                if carries_key {
                    return Err(VaultError::FailedPrecondition(
                        "the root key is sealed by a PKCS#11 token: send no key, the daemon \
                         makes the new root key and seals it with the token"
                            .into(),
                    ));
                }
                let key = crate::seal::generate_root_key().map_err(|_| VaultError::Internal)?;
                let sealed = seal.seal(&key).await.map_err(|err| {
                    VaultError::FailedPrecondition(format!(
                        "the token could not seal the new root key ({err}); nothing was changed"
                    ))
                })?;
                return Ok((Arc::clone(vault), who, key, Some(sealed)));
            }
            let raw = Zeroizing::new(request.get_ref().new_master_key.clone());
            if raw.len() != crate::crypto::KEY_LEN {
                return Err(VaultError::invalid(Field::NewMasterKey, "must be 32 bytes"));
            }
            let key = MasterKey::from_file_contents(&raw)
                .map_err(|_| VaultError::invalid(Field::NewMasterKey, "must be 32 bytes"))?;
            Ok((Arc::clone(vault), who, key, None))
        }
        .await;
        let (vault, who, key, sealed) = reply(call, result)?.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let new_id = key.id().to_string();
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let id = new_id.clone();
            let result = vault
                .rekey(key, sealed, &who.name, move |done, total| {
                    let _ = progress_tx.try_send(Ok(pb::RekeyProgress {
                        done,
                        total,
                        new_master_key_id: id.clone(),
                        finished: false,
                    }));
                })
                .await;
            let last = match result {
                Ok(total) => {
                    tracing::info!(master_key_id = %new_id, "master key rotation finished");
                    Ok(pb::RekeyProgress {
                        done: total,
                        total,
                        new_master_key_id: new_id,
                        finished: true,
                    })
                }
                Err(err) => Err(Status::from(err)),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let call = Call::new(&self.calls, "AdminService", "Verify");
        let result = async {
            let (vault, _) = self.authorize(&request).await?;
            let vault = Arc::clone(vault);
            let key_id = vault.key_id().to_string();
            let report = tokio::task::spawn_blocking(move || vault.verify_records())
                .await
                .map_err(|_| VaultError::Internal)??;
            Ok(verify_report_to_proto(report, key_id))
        }
        .await;
        reply(call, result)
    }

    type VerifyWithProgressStream = ReceiverStream<Result<pb::VerifyProgress, Status>>;

    async fn verify_with_progress(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<Self::VerifyWithProgressStream>, Status> {
        let call = Call::new(&self.calls, "AdminService", "VerifyWithProgress");
        let result = self
            .authorize(&request)
            .await
            .map(|(vault, _)| Arc::clone(vault));
        let vault = reply(call, result)?.into_inner();
        let key_id = vault.key_id().to_string();
        Ok(Response::new(stream_progress(
            move |progress| vault.verify_records_with(progress),
            move |done, total, result| pb::VerifyProgress {
                done,
                total,
                result: result.map(|report| verify_report_to_proto(report, key_id.clone())),
            },
        )))
    }
}

/// Runs `work` on the blocking pool and streams what it tells its progress callback, then
/// its result, each as `message(done, total, result)`. Progress messages are dropped while
/// the client is behind (the next one says more); the result is always sent.
fn stream_progress<R, M>(
    work: impl FnOnce(&mut dyn FnMut(u64, u64)) -> Result<R, VaultError> + Send + 'static,
    message: impl Fn(u64, u64, Option<R>) -> M + Send + 'static,
) -> ReceiverStream<Result<M, Status>>
where
    R: Send + 'static,
    M: Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::task::spawn_blocking(move || {
        let mut last = (0, 0);
        let result = work(&mut |done, total| {
            last = (done, total);
            let _ = tx.try_send(Ok(message(done, total, None)));
        });
        let _ = tx.blocking_send(match result {
            Ok(report) => Ok(message(last.0, last.1, Some(report))),
            Err(err) => Err(Status::from(err)),
        });
    });
    ReceiverStream::new(rx)
}

fn finding_to_proto(finding: Finding) -> pb::DoctorFinding {
    pb::DoctorFinding {
        client_id: finding.client_id,
        backup_method: finding.backup_method,
        reasons: finding
            .reasons
            .into_iter()
            .map(|(reason, curve)| {
                if curve.is_empty() {
                    reason.code().to_owned()
                } else {
                    format!("{}:{curve}", reason.code())
                }
            })
            .collect(),
    }
}

fn totals_to_proto(totals: DoctorTotals) -> pb::DoctorTotals {
    pb::DoctorTotals {
        clients: totals.clients,
        recoverable_clients: totals.recoverable_clients,
        methods: totals
            .methods
            .into_iter()
            .map(
                |(backup_method, (recoverable, unrecoverable))| pb::DoctorMethodTotals {
                    backup_method,
                    recoverable,
                    unrecoverable,
                },
            )
            .collect(),
        reasons: totals
            .reasons
            .into_iter()
            .map(|(reason, n)| (reason.code().to_owned(), n))
            .collect(),
    }
}

fn verify_report_to_proto(report: VerifyReport, master_key_id: String) -> pb::VerifyResponse {
    pb::VerifyResponse {
        custodian_shares: report.custodian_shares,
        client_shares: report.client_shares,
        versions: report.versions,
        failed: report.failed,
        failures: report.failures,
        master_key_id,
    }
}

fn audit_report_to_proto(report: ChainReport) -> pb::VerifyAuditResponse {
    let (first_bad_seq, problem) = report.problem.unwrap_or_default();
    pb::VerifyAuditResponse {
        events: report.events,
        ok: problem.is_empty(),
        first_bad_seq,
        problem,
    }
}

/// Whether an event passes a listing's filters (an empty filter passes everything).
fn audit_matches(req: &pb::ListAuditEventsRequest, e: &AuditEvent) -> bool {
    (req.client_id.is_empty() || e.client_id == req.client_id)
        && (req.actor.is_empty() || e.actor == req.actor)
        && (req.action.is_empty() || e.action == req.action)
}

fn audit_to_proto(event: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        seq: event.seq,
        time: Some(timestamp(event.time_ms)),
        actor: event.actor,
        action: event.action,
        client_id: event.client_id,
        backup_method: event.backup_method,
        outcome: event.outcome,
        hash: hex::encode(event.hash),
        prev_hash: hex::encode(event.prev_hash),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Peer, Transport};

    /// What a rekey request over `transport` from `peer` is answered, before the vault is
    /// open: NOT_READY (UNAVAILABLE) once the transport is accepted.
    async fn rekey_over(transport: Transport, peer: Peer) -> tonic::Code {
        rekey_attributed(transport, peer, None).await
    }

    /// As [`rekey_over`], with the request attributed to `source` (as behind a trusted proxy
    /// whose `X-Forwarded-For` named it).
    async fn rekey_attributed(
        transport: Transport,
        peer: Peer,
        source: Option<crate::api::http::Source>,
    ) -> tonic::Code {
        let api = AdminApi {
            ready: Ready::default(),
            calls: Default::default(),
        };
        let mut request = Request::new(pb::RekeyRequest {
            new_master_key: vec![7; 32],
        });
        request.extensions_mut().insert(transport);
        request.extensions_mut().insert(peer);
        if let Some(source) = source {
            request.extensions_mut().insert(source);
        }
        match api.rekey(request).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    }

    #[tokio::test]
    async fn a_rekey_over_plain_tcp_from_another_host_is_refused() {
        let remote = Peer(Some("192.0.2.7".parse().unwrap()));
        let loopback = Peer(Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            rekey_over(Transport::Tcp, remote).await,
            tonic::Code::FailedPrecondition
        );
        for (transport, peer) in [
            (Transport::Tcp, loopback),
            (Transport::Tls, remote),
            (Transport::Unix, Peer(None)),
        ] {
            assert_eq!(
                rekey_over(transport, peer).await,
                tonic::Code::Unavailable,
                "{transport:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_forwarded_loopback_address_does_not_make_plain_tcp_safe_for_a_key() {
        // A trusted proxy on another host forwards a request whose X-Forwarded-For names
        // 127.0.0.1: the key still crossed the network in clear between proxy and daemon.
        let proxy = Peer(Some("10.0.0.5".parse().unwrap()));
        let forwarded = crate::api::http::Source(Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            rekey_attributed(Transport::Tcp, proxy, Some(forwarded)).await,
            tonic::Code::FailedPrecondition
        );
        // And a forwarded remote address does not refuse a loopback connection.
        let remote = crate::api::http::Source(Some("192.0.2.7".parse().unwrap()));
        let loopback = Peer(Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            rekey_attributed(Transport::Tcp, loopback, Some(remote)).await,
            tonic::Code::Unavailable
        );
    }
}
