//! The trail in a store: appended in the transaction of each write job, read a page at a
//! time, searched in bounded steps, and checked against its head.

use super::{AuditEntry, AuditEvent, AuditKey, ChainCheck, ChainReport};
use crate::store::{Key, Range, Reader, Store, StoreError, TableId, Writer};

/// The meta value holding the head: the last event's sequence number and hash.
pub const HEAD: &str = "audit_head";
/// Events read at a time when the chain is checked.
pub const PAGE: usize = 4096;
/// Events one [`find`] call looks at, at most.
#[cfg(not(test))]
pub const SCAN: u64 = 65_536;
#[cfg(test)]
pub const SCAN: u64 = 300;

/// The last event: (sequence number, hash).
pub type Head = (u64, [u8; 32]);

fn decode_head(bytes: &[u8]) -> Result<Head, StoreError> {
    let (seq, hash) = bytes
        .split_first_chunk::<8>()
        .filter(|(_, hash)| hash.len() == 32)
        .ok_or(StoreError::Corrupt("audit head"))?;
    let mut head = [0u8; 32];
    head.copy_from_slice(hash);
    Ok((u64::from_be_bytes(*seq), head))
}

fn encode_head(head: &Head) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&head.0.to_be_bytes());
    out[8..].copy_from_slice(&head.1);
    out
}

/// The stored head, if the trail has events.
pub fn head(r: &(impl Reader + ?Sized)) -> Result<Option<Head>, StoreError> {
    r.get(TableId::Meta, Key::Name(HEAD))?
        .map(|v| decode_head(&v))
        .transpose()
}

/// Appends `entry` with `outcome` to the trail, in the transaction of `w`, chained with the
/// audit MAC under `key` (or plain, without one).
pub fn append(
    w: &mut dyn Writer,
    entry: &AuditEntry,
    outcome: &str,
    key: Option<&AuditKey>,
) -> Result<(), StoreError> {
    let (seq, hash) = head(w)?.unwrap_or((0, [0; 32]));
    let event = AuditEvent::chain(entry, outcome, seq, hash, key);
    w.put(TableId::Audit, Key::Seq(event.seq), &event.encode())?;
    w.put(
        TableId::Meta,
        Key::Name(HEAD),
        &encode_head(&(event.seq, event.hash)),
    )
}

/// Up to `limit` events with a sequence number above `after`, in order. An event that cannot
/// be decoded is reported by its sequence number.
pub fn events(
    r: &(impl Reader + ?Sized),
    after: u64,
    limit: usize,
) -> Result<Vec<Result<AuditEvent, u64>>, StoreError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    r.scan(
        TableId::Audit,
        Range::After(Some(Key::Seq(after))),
        &mut |key, value| {
            let seq = match key {
                Key::Seq(seq) => seq,
                _ => return Err(StoreError::Corrupt("audit event")),
            };
            out.push(AuditEvent::decode(value).ok_or(seq));
            Ok(out.len() < limit)
        },
    )?;
    Ok(out)
}

/// Events after `after` that match `filter`: at most `limit` of them, from at most [`SCAN`]
/// events looked at, so that a rare filter on a long trail answers in steps. Returns them
/// with the last sequence number looked at; the trail has ended when that is still `after`.
pub fn find(
    store: &dyn Store,
    after: u64,
    limit: usize,
    filter: &dyn Fn(&AuditEvent) -> bool,
) -> Result<(Vec<AuditEvent>, u64), StoreError> {
    let mut out = Vec::new();
    let mut cursor = after;
    while out.len() < limit && cursor - after < SCAN {
        let want = (SCAN - (cursor - after)).min(PAGE as u64) as usize;
        let page = events(&*store.read()?, cursor, want)?;
        if page.is_empty() {
            break;
        }
        for event in page {
            let event = event.map_err(|_| StoreError::Corrupt("audit event"))?;
            cursor = event.seq;
            if filter(&event) {
                out.push(event);
                if out.len() == limit {
                    break;
                }
            }
        }
    }
    Ok((out, cursor))
}

/// Checks the chain with `check` up to the head it has when the check starts, a page of
/// events at a time (events appended meanwhile are left for the next check).
pub fn verify_trail(store: &dyn Store, check: ChainCheck) -> Result<ChainReport, StoreError> {
    verify_trail_with(store, check, &mut |_, _| {})
}

/// As [`verify_trail`], telling `progress` (last sequence number checked, head) after each
/// page.
pub fn verify_trail_with(
    store: &dyn Store,
    mut check: ChainCheck,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ChainReport, StoreError> {
    let head = head(&*store.read()?)?;
    let end = head.map_or(0, |h| h.0);
    let mut cursor = 0;
    progress(0, end);
    'pages: while cursor < end {
        let page = events(&*store.read()?, cursor, PAGE)?;
        if page.is_empty() {
            break;
        }
        for event in page {
            cursor = match &event {
                Ok(e) => e.seq,
                Err(seq) => *seq,
            };
            if cursor > end || !check.push(event) {
                break 'pages;
            }
        }
        progress(cursor.min(end), end);
    }
    Ok(check.finish(head))
}
