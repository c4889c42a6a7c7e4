//! Writing a snapshot of a running vault.

use super::{Header, Trailer, VERSION, encode_key, end, record};
use crate::error::VaultError;
use crate::integrity::INTEGRITY_KEY;
use crate::store::{ExportItem, Key, StoreError, TableId};
use crate::vault::{REKEY_TARGET, Vault, now_ms, records};

/// Records written so far and how many the snapshot holds, handed to the sink with each chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub records: u64,
    pub total: u64,
}

/// Writes a snapshot of the whole vault from one read transaction, in chunks handed to
/// `sink` with how far it got (see [`crate::snapshot`] for the format). Refused while a master
/// key rotation is unfinished: its records would be under two keys.
pub fn write(
    vault: &Vault,
    sink: &mut dyn FnMut(Vec<u8>, Written) -> Result<(), StoreError>,
) -> Result<(), VaultError> {
    const CHUNK: usize = 256 * 1024;
    let rotating = || {
        VaultError::FailedPrecondition(
            "a master key rotation is unfinished: run `sharevault rekey` to finish it, \
             then take the snapshot"
                .into(),
        )
    };
    let reader = vault.store().read()?;
    if records::meta(&*reader, REKEY_TARGET)?.is_some() {
        return Err(rotating());
    }
    let sealed = records::meta(&*reader, INTEGRITY_KEY)?.ok_or(VaultError::Corrupt)?;
    drop(reader);
    let key_id = vault.key_id().to_bytes();
    let mut mac = Trailer::Mac(Box::new(vault.integrity().snapshot_mac()));
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    // Set when the export shows a rotation, or an integrity key re-wrapped since `sealed`
    // was read: the snapshot is abandoned.
    let mut changed: Option<VaultError> = None;
    let mut written = Written::default();
    let mut emit = |bytes: &[u8], buf: &mut Vec<u8>, mac: &mut Trailer, written: Written| {
        mac.update(bytes);
        buf.extend_from_slice(bytes);
        if buf.len() >= CHUNK {
            sink(std::mem::take(buf), written)
        } else {
            Ok(())
        }
    };
    let exported = vault.store().export(&mut |item| match item {
        ExportItem::Counts(counts) => {
            let header = Header {
                version: VERSION,
                created_at_ms: now_ms(),
                key_id,
                sealed_integrity_key: sealed.clone(),
                counts,
            };
            written.total = counts.iter().sum();
            emit(&header.encode(), &mut buf, &mut mac, written)
        }
        ExportItem::Record(TableId::Meta, Key::Name(name), value)
            if name == REKEY_TARGET || (name == INTEGRITY_KEY && value != sealed.as_slice()) =>
        {
            changed = Some(if name == REKEY_TARGET {
                rotating()
            } else {
                VaultError::FailedPrecondition(
                    "the master key changed while the snapshot was taken; take it again".into(),
                )
            });
            Err(StoreError::Closed)
        }
        ExportItem::Record(table, key, value) => {
            written.records += 1;
            let bytes = record(table, &encode_key(key), value);
            emit(&bytes, &mut buf, &mut mac, written)
        }
    });
    if let Some(err) = changed {
        return Err(err);
    }
    exported?;
    emit(&end(), &mut buf, &mut mac, written)?;
    buf.extend_from_slice(&mac.finish());
    sink(buf, written)?;
    Ok(())
}
