//! The root key at start: from the master key file, or unsealed by the token (generated and
//! sealed on a vault's first start), checked against what the database says its seal is.

use super::{Hsm, SEALED_ROOT_KEY, SEALED_ROOT_KEY_NEXT, SealError, WrapKey};
use crate::crypto::MasterKey;
use crate::store::{Reader, Store};
use crate::vault::{KEY_CHECK, WriteOp, records, rules};
use std::sync::Arc;

/// The seal the daemon starts with.
pub enum Seal {
    /// The master key file (and, to finish an interrupted rotation, the previous one).
    File {
        key: Box<MasterKey>,
        old: Option<Box<MasterKey>>,
    },
    /// The token and its wrapping key.
    Pkcs11 { hsm: Arc<Hsm>, key: WrapKey },
}

/// The root keys a vault opens with: the primary, and older ones that only open records.
pub struct RootKeys {
    pub primary: MasterKey,
    pub older: Vec<MasterKey>,
}

/// Why the root key could not be had at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "this vault's root key is sealed by the PKCS#11 key labelled {0:?}: start with --seal \
         pkcs11 and the token's settings (or move it back with `sharevault seal migrate --to \
         file`)"
    )]
    SealedByToken(String),
    #[error(
        "this vault's root key is its master key file, not a PKCS#11 token: start with --seal \
         file, or move it under the token with `sharevault seal migrate --to pkcs11` (daemon \
         stopped)"
    )]
    SealedByFile,
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("cannot read or write the sealed root key: {0}")]
    Store(String),
}

fn meta(store: &dyn Store, name: &str) -> Result<Option<Vec<u8>>, StartError> {
    let reader = store.read().map_err(|e| StartError::Store(e.to_string()))?;
    records::meta(&*reader, name).map_err(|e| StartError::Store(e.to_string()))
}

/// The root keys of the vault in `store` under `seal`. A new vault under a pkcs11 seal gets a
/// fresh root key, sealed and recorded before anything is sealed under it.
pub async fn root_keys(store: &dyn Store, seal: Seal) -> Result<RootKeys, StartError> {
    let sealed = meta(store, SEALED_ROOT_KEY)?;
    match seal {
        Seal::File { key, old } => match sealed {
            Some(sealed) => Err(StartError::SealedByToken(super::sealed_by(&sealed))),
            None => Ok(RootKeys {
                primary: *key,
                older: old.into_iter().map(|k| *k).collect(),
            }),
        },
        Seal::Pkcs11 { hsm, key } => {
            let Some(sealed) = sealed else {
                if meta(store, KEY_CHECK)?.is_some() {
                    return Err(StartError::SealedByFile);
                }
                let root = super::generate_root_key()?;
                let sealed = super::seal(&hsm, &key, &root)?;
                // Read back through the token before it is relied on.
                super::unseal(&hsm, &key, &sealed)?;
                // A compare-and-set: of daemons starting at once on a new vault, one root
                // key wins, and the others unseal it.
                let outcome = rules::write(
                    store,
                    WriteOp::MetaIfAbsent {
                        set: vec![(SEALED_ROOT_KEY.into(), sealed)],
                        unless: SEALED_ROOT_KEY.into(),
                    },
                    None,
                    None,
                )
                .await
                .map_err(|e| StartError::Store(e.to_string()))?;
                if outcome == crate::vault::WriteOutcome::Repeat {
                    let sealed = meta(store, SEALED_ROOT_KEY)?
                        .ok_or_else(|| StartError::Store("the sealed root key vanished".into()))?;
                    return Ok(RootKeys {
                        primary: super::unseal(&hsm, &key, &sealed)?,
                        older: Vec::new(),
                    });
                }
                tracing::info!(
                    root_key_id = %root.id(),
                    token = hsm.token_label(),
                    key = key.label(),
                    "generated the vault's root key and sealed it with the token's key"
                );
                return Ok(RootKeys {
                    primary: root,
                    older: Vec::new(),
                });
            };
            let primary = super::unseal(&hsm, &key, &sealed)?;
            // The target of an unfinished rotation opens the records already moved to it.
            let older = match meta(store, SEALED_ROOT_KEY_NEXT)? {
                Some(next) => vec![super::unseal(&hsm, &key, &next)?],
                None => Vec::new(),
            };
            Ok(RootKeys { primary, older })
        }
    }
}

/// What [`root_keys`] would refuse in the vault `reader` shows under `seal`, checked without
/// writing (the token may be asked to unseal): answers the root keys the vault opens with,
/// or `None` for a vault whose root key is still to be made (nothing to check against).
pub fn check(reader: &dyn Reader, seal: &Seal) -> Result<Option<RootKeys>, StartError> {
    let meta =
        |name: &str| records::meta(reader, name).map_err(|e| StartError::Store(e.to_string()));
    let sealed = meta(SEALED_ROOT_KEY)?;
    let copy = |key: &MasterKey| {
        MasterKey::from_file_contents(&key.to_raw()).map_err(|e| SealError::Token {
            operation: "copy the root key",
            code: e.to_string(),
        })
    };
    match seal {
        Seal::File { key, old } => match sealed {
            Some(sealed) => Err(StartError::SealedByToken(super::sealed_by(&sealed))),
            None => Ok(Some(RootKeys {
                primary: copy(key)?,
                older: old.iter().map(|k| copy(k)).collect::<Result<_, _>>()?,
            })),
        },
        Seal::Pkcs11 { hsm, key } => match sealed {
            None if meta(KEY_CHECK)?.is_some() => Err(StartError::SealedByFile),
            None => Ok(None),
            Some(sealed) => {
                let primary = super::unseal(hsm, key, &sealed)?;
                let older = match meta(SEALED_ROOT_KEY_NEXT)? {
                    Some(next) => vec![super::unseal(hsm, key, &next)?],
                    None => Vec::new(),
                };
                Ok(Some(RootKeys { primary, older }))
            }
        },
    }
}

/// The running daemon's token seal: seals the root key of a rotation, and knows whether the
/// token still answers ([`TokenSeal::watch`]).
#[derive(Clone)]
pub struct TokenSeal {
    hsm: Arc<Hsm>,
    key: WrapKey,
    reachable: Arc<std::sync::atomic::AtomicBool>,
}

impl TokenSeal {
    pub fn new(hsm: Arc<Hsm>, key: WrapKey) -> Self {
        Self {
            hsm,
            key,
            reachable: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Opens root keys sealed by the token, through this daemon's own session: the new root
    /// key of a rotation another daemon started.
    pub fn unsealer(&self) -> crate::vault::cluster::Unsealer {
        let (hsm, key) = (Arc::clone(&self.hsm), self.key.clone());
        Arc::new(move |sealed: &[u8]| super::unseal(&hsm, &key, sealed).map_err(|e| e.to_string()))
    }

    /// Whether the token answered the last check.
    pub fn reachable(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Seals a new root key (on the blocking pool: the token may be slow).
    pub async fn seal(&self, root: &MasterKey) -> Result<Vec<u8>, SealError> {
        let (hsm, key) = (Arc::clone(&self.hsm), self.key.clone());
        let raw = root.to_raw();
        tokio::task::spawn_blocking(move || {
            let root = MasterKey::from_file_contents(&raw).map_err(|e| SealError::Token {
                operation: "seal the root key",
                code: e.to_string(),
            })?;
            let sealed = super::seal(&hsm, &key, &root)?;
            super::unseal(&hsm, &key, &sealed)?;
            Ok(sealed)
        })
        .await
        .map_err(|e| SealError::Token {
            operation: "seal the root key",
            code: e.to_string(),
        })?
    }

    /// Checks the token every `interval`, for ever: the root key stays in memory and the
    /// vault keeps serving whatever the token does, but a lost token is logged (once per
    /// change), shown by [`TokenSeal::reachable`], and the next start would fail.
    pub async fn watch(self, interval: std::time::Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let (hsm, key) = (Arc::clone(&self.hsm), self.key.clone());
            let probe = tokio::task::spawn_blocking(move || hsm.probe(&key));
            let result =
                match tokio::time::timeout(interval.max(std::time::Duration::from_secs(5)), probe)
                    .await
                {
                    Ok(Ok(result)) => result.map_err(|e| e.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the token did not answer in time".into()),
                };
            let was = self
                .reachable
                .swap(result.is_ok(), std::sync::atomic::Ordering::Relaxed);
            match result {
                Err(err) if was => tracing::error!(
                    error = %err,
                    "the PKCS#11 token is unreachable: the vault keeps serving with the root \
                     key in memory, but cannot start again until the token is back"
                ),
                Ok(()) if !was => tracing::info!("the PKCS#11 token answers again"),
                _ => {}
            }
        }
    }
}

/// The seal the configuration names, opened: the token logged in and its key checked, or the
/// master key taken from `secrets`.
pub fn open(
    config: &crate::config::Config,
    secrets: &mut crate::secrets::Secrets,
) -> Result<Seal, String> {
    match (config.seal, &config.pkcs11) {
        (super::SealKind::Pkcs11, Some(settings)) => {
            let hsm = Hsm::open(settings).map_err(|e| e.to_string())?;
            let key = hsm.key(&settings.key_label).map_err(|e| e.to_string())?;
            Ok(Seal::Pkcs11 {
                hsm: Arc::new(hsm),
                key,
            })
        }
        (super::SealKind::Pkcs11, None) => Err("seal = pkcs11 needs the token's settings".into()),
        (super::SealKind::File, _) => Ok(Seal::File {
            key: Box::new(
                secrets
                    .master_key
                    .take()
                    .ok_or("the file seal needs a master key")?,
            ),
            old: secrets.old_master_key.take().map(Box::new),
        }),
    }
}
