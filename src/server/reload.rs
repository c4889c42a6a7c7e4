//! Reloading without a restart: on SIGHUP (`systemctl reload`) the daemon reads the webhook
//! secrets file and every TLS listener's certificate and key again.
//!
//! A reload is all or nothing: every file is read and checked first, as at start, and only
//! if all of them are good are the new secrets and certificates put in force. A bad file
//! (missing, unreadable, readable by other users, a short secret, a certificate that does not
//! match its key) refuses the whole reload: the daemon keeps serving with what it had, logs
//! which file was wrong (never its contents) and counts
//! `sharevault_reloads_total{outcome="refused"}`. Requests already running finish with the
//! secrets they were checked with; connections already open keep their certificate.

use super::tls::TlsIdentity;
use crate::metrics::ReloadMetrics;
use crate::vault::SharedWebhookSecrets;
use std::path::PathBuf;
use std::sync::Arc;

/// What a reload reads again, and where it puts it.
pub struct Reloader {
    pub webhook_file: PathBuf,
    pub webhook: SharedWebhookSecrets,
    /// Each TLS listener's certificate, with the listener's name for logs.
    pub tls: Vec<(&'static str, Arc<TlsIdentity>)>,
    pub metrics: ReloadMetrics,
}

impl Reloader {
    /// Reads every file again and puts them in force, or none of them.
    pub fn reload(&self) -> Result<(), String> {
        let result = self.read_all().map(|(webhook, certs)| {
            self.webhook.store(Arc::new(webhook));
            for ((_, identity), key) in self.tls.iter().zip(certs) {
                identity.install(key);
            }
        });
        self.metrics.reload(result.is_ok());
        result
    }

    fn read_all(
        &self,
    ) -> Result<(crate::auth::WebhookSecrets, Vec<rustls::sign::CertifiedKey>), String> {
        let webhook = crate::secrets::read_webhook_secrets(&self.webhook_file)?;
        let certs = self
            .tls
            .iter()
            .map(|(listener, identity)| {
                identity
                    .read_again()
                    .map_err(|e| format!("{listener} listener: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((webhook, certs))
    }
}

/// Reloads at every SIGHUP, until the daemon stops. The handler is installed by the caller
/// ([`hangups`]) before anything else, so that a SIGHUP during the start does not end the
/// daemon (its default action).
pub async fn on_hangup(mut hangups: tokio::signal::unix::Signal, reloader: Reloader) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received: reading the webhook secrets and TLS certificates again");
        match reloader.reload() {
            Ok(()) => tracing::info!(
                webhook_secrets = ?**reloader.webhook.load(),
                tls_listeners = reloader.tls.len(),
                "reloaded the webhook secrets and TLS certificates"
            ),
            Err(err) => tracing::error!(
                error = %err,
                "reload refused: a file is not valid; still serving with the previous webhook \
                 secrets and TLS certificates"
            ),
        }
    }
}

/// The SIGHUP stream, or `None` (logged) if it cannot be installed.
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGHUP; reloads need a restart");
            None
        }
    }
}
