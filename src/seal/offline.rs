//! Moving a stopped vault between seals, and re-sealing its root key under another token key.
//! None of these re-encrypts a record: only the root key's wrapping changes, in one commit
//! that also appends an audit event (actor `seal`, action `seal_to_pkcs11`, `seal_to_file` or
//! `seal_rewrap`, the token key's label as its method).

use super::{Hsm, SEALED_ROOT_KEY, SEALED_ROOT_KEY_NEXT, WrapKey};
use crate::audit::AuditEntry;
use crate::crypto::{KeyId, MasterKey};
use crate::integrity::{INTEGRITY_KEY, IntegrityKey};
use crate::store::Store;
use crate::vault::{KEY_CHECK, REKEY_TARGET, WriteOp, now_ms, records, rules};

/// What a seal command changed, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub root_key_id: KeyId,
}

fn meta(store: &dyn Store, name: &str) -> Result<Option<Vec<u8>>, String> {
    let reader = store
        .read()
        .map_err(|e| format!("cannot read the vault: {e}"))?;
    records::meta(&*reader, name).map_err(|e| format!("cannot read the vault: {e}"))
}

/// Refuses a vault that has no key check, or an unfinished rotation; checks that `key` is
/// the vault's root key.
fn check_vault(store: &dyn Store, key: &MasterKey) -> Result<(), String> {
    let check = meta(store, KEY_CHECK)?
        .ok_or("the data dir holds no vault (start the daemon once to create one)")?;
    if meta(store, REKEY_TARGET)?.is_some() {
        return Err(
            "a root key rotation is unfinished: finish it with `sharevault rekey` \
                    before changing the seal"
                .into(),
        );
    }
    crate::vault::verify_key_check(key, &check).map_err(|e| {
        format!(
            "the key (id {}) is not this vault's root key: {e}",
            key.id()
        )
    })?;
    Ok(())
}

/// What a change of seal records in the audit trail.
struct Event {
    action: &'static str,
    key_label: String,
}

/// Applies the change with its audit event, chained with the vault's audit key (which `key`,
/// the root key, opens).
async fn set_meta(
    store: &dyn Store,
    key: &MasterKey,
    set: Vec<(String, Vec<u8>)>,
    remove: Vec<String>,
    event: Event,
) -> Result<(), String> {
    let sealed = meta(store, INTEGRITY_KEY)?.ok_or(
        "the vault has no integrity key yet: start the daemon on it once, then change its seal",
    )?;
    let audit_key = IntegrityKey::open(key, &sealed)
        .map_err(|e| format!("the vault's integrity key does not open: {e}"))?
        .audit_key();
    let entry = AuditEntry {
        time_ms: now_ms(),
        actor: "seal".into(),
        action: event.action,
        client_id: String::new(),
        backup_method: event.key_label,
        outcome: None,
    };
    rules::write(
        store,
        WriteOp::Meta { set, remove },
        Some(entry),
        Some(&audit_key),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("cannot write the vault: {e}"))
}

fn sealed_root_key(store: &dyn Store) -> Result<Vec<u8>, String> {
    meta(store, SEALED_ROOT_KEY)?.ok_or_else(|| {
        "this vault's root key is its master key file, not a PKCS#11 token's: nothing to \
         unseal"
            .into()
    })
}

/// Seals the file-sealed vault's root key `key` with the token key `wrap`.
pub async fn to_pkcs11(
    store: &dyn Store,
    key: &MasterKey,
    hsm: &Hsm,
    wrap: &WrapKey,
) -> Result<Outcome, String> {
    if let Some(sealed) = meta(store, SEALED_ROOT_KEY)? {
        return Err(format!(
            "this vault's root key is already sealed by the PKCS#11 key labelled {:?}",
            super::sealed_by(&sealed)
        ));
    }
    check_vault(store, key)?;
    let sealed = super::seal(hsm, wrap, key).map_err(|e| e.to_string())?;
    super::unseal(hsm, wrap, &sealed).map_err(|e| e.to_string())?;
    let event = Event {
        action: "seal_to_pkcs11",
        key_label: wrap.label().to_owned(),
    };
    set_meta(
        store,
        key,
        vec![(SEALED_ROOT_KEY.into(), sealed)],
        Vec::new(),
        event,
    )
    .await?;
    Ok(Outcome {
        root_key_id: key.id(),
    })
}

/// Unseals the pkcs11-sealed vault's root key and removes its sealed form: from then on the
/// vault opens with the key answered, which the caller writes to a key file first (`write`
/// runs before the database changes; if it fails nothing is changed).
pub async fn to_file(
    store: &dyn Store,
    hsm: &Hsm,
    wrap: &WrapKey,
    write: impl FnOnce(&MasterKey) -> Result<(), String>,
) -> Result<Outcome, String> {
    let sealed = sealed_root_key(store)?;
    let key = super::unseal(hsm, wrap, &sealed).map_err(|e| e.to_string())?;
    check_vault(store, &key)?;
    write(&key)?;
    let event = Event {
        action: "seal_to_file",
        key_label: wrap.label().to_owned(),
    };
    set_meta(store, &key, Vec::new(), vec![SEALED_ROOT_KEY.into()], event).await?;
    Ok(Outcome {
        root_key_id: key.id(),
    })
}

/// Re-seals the root key from the token key `old` to the token key `new`.
pub async fn rewrap(
    store: &dyn Store,
    hsm: &Hsm,
    old: &WrapKey,
    new: &WrapKey,
) -> Result<Outcome, String> {
    let sealed = sealed_root_key(store)?;
    if meta(store, SEALED_ROOT_KEY_NEXT)?.is_some() {
        return Err(
            "a root key rotation is unfinished: finish it with `sharevault rekey` \
                    before re-sealing"
                .into(),
        );
    }
    let key = super::unseal(hsm, old, &sealed).map_err(|e| e.to_string())?;
    check_vault(store, &key)?;
    let resealed = super::seal(hsm, new, &key).map_err(|e| e.to_string())?;
    super::unseal(hsm, new, &resealed).map_err(|e| e.to_string())?;
    let event = Event {
        action: "seal_rewrap",
        key_label: new.label().to_owned(),
    };
    set_meta(
        store,
        &key,
        vec![(SEALED_ROOT_KEY.into(), resealed)],
        Vec::new(),
        event,
    )
    .await?;
    Ok(Outcome {
        root_key_id: key.id(),
    })
}
