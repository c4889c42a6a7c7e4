//! The audit trail: one event per write and per read of share material, appended in the
//! same transaction as the write (or committed before a read's answer is sent), and
//! hash-chained so that a removed or edited event is detected.
//!
//! Each event's hash is `HMAC-SHA256(audit key, previous hash | encoded event without its
//! hash)` (event format 2), with the audit key derived from the vault's integrity key (see
//! [`crate::integrity`]), so that someone who can write the database file or a snapshot but
//! holds no master key cannot rewrite events and their chain together. The first event's
//! previous hash is 32 zero bytes. The store also keeps the head (last sequence number and
//! hash), so that events cut from the end are detected too. Events never hold payloads: time,
//! actor, action, client, method and outcome only.
//!
//! Trails written before the audit MAC existed are chained with a plain SHA-256 (event
//! format 1). Such a vault, once opened by this version, records the sequence number of its
//! first keyed event in a MAC-protected anchor ([`Anchor`]): events from there on must be
//! keyed, and events before it may be plain.

pub use crate::integrity::AuditKey;
use crate::integrity::HmacSha256;
use hmac::Mac;
use sha2::{Digest, Sha256};

/// What the caller records; the store assigns the sequence number and the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub time_ms: u64,
    /// A token name, `admin` or `webhook`.
    pub actor: String,
    pub action: &'static str,
    pub client_id: String,
    pub backup_method: String,
    /// Filled by the store from the write's result when `None`.
    pub outcome: Option<String>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// 2 (keyed) for events this version writes; 1 for older ones.
    pub version: u8,
    pub seq: u64,
    pub time_ms: u64,
    pub actor: String,
    pub action: String,
    pub client_id: String,
    pub backup_method: String,
    pub outcome: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// Event format 1: chained with a plain SHA-256.
const VERSION_PLAIN: u8 = 1;
/// Event format 2: chained with HMAC-SHA256 under the audit key.
const VERSION_KEYED: u8 = 2;

/// Where a trail's keyed events start, and a MAC of that under the audit key, so that it
/// cannot be moved without the key: `seq u64 | HMAC(audit key, "audit keyed from" | seq)`.
pub struct Anchor;

impl Anchor {
    /// The meta record that holds the anchor.
    pub const META: &'static str = "audit_keyed_from";

    fn tag(key: &AuditKey, seq: u64) -> HmacSha256 {
        key.mac()
            .chain_update(b"audit keyed from")
            .chain_update(seq.to_be_bytes())
    }

    pub fn encode(key: &AuditKey, seq: u64) -> Vec<u8> {
        let mut out = seq.to_be_bytes().to_vec();
        out.extend_from_slice(&Self::tag(key, seq).finalize().into_bytes());
        out
    }

    /// The first keyed sequence number, if `bytes` is an anchor made with `key`.
    pub fn decode(key: &AuditKey, bytes: &[u8]) -> Option<u64> {
        let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        Self::tag(key, seq).verify_slice(bytes.get(8..)?).ok()?;
        Some(seq)
    }
}

/// Where a pruned trail now starts: the sequence number and hash of the last pruned event,
/// with a MAC of both under the audit key, so that neither can be changed (nor more events
/// cut from the start) without the key: `seq u64 | hash | HMAC(audit key, "audit pruned to" |
/// seq | hash)`. The kept events chain from it as from an event.
pub struct PruneAnchor;

impl PruneAnchor {
    /// The meta record that holds the anchor (absent until the first prune).
    pub const META: &'static str = "audit_pruned_to";

    fn tag(key: &AuditKey, seq: u64, hash: &[u8; 32]) -> HmacSha256 {
        key.mac()
            .chain_update(b"audit pruned to")
            .chain_update(seq.to_be_bytes())
            .chain_update(hash)
    }

    pub fn encode(key: &AuditKey, seq: u64, hash: &[u8; 32]) -> Vec<u8> {
        let mut out = seq.to_be_bytes().to_vec();
        out.extend_from_slice(hash);
        out.extend_from_slice(&Self::tag(key, seq, hash).finalize().into_bytes());
        out
    }

    /// The last pruned event's (sequence number, hash), if `bytes` is an anchor made with
    /// `key`.
    pub fn decode(key: &AuditKey, bytes: &[u8]) -> Option<(u64, [u8; 32])> {
        let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let hash: [u8; 32] = bytes.get(8..40)?.try_into().ok()?;
        Self::tag(key, seq, &hash)
            .verify_slice(bytes.get(40..)?)
            .ok()?;
        Some((seq, hash))
    }
}

/// The check of a keyed trail from its anchors as stored: `keyed` the [`Anchor`] (required),
/// `pruned` the [`PruneAnchor`] (present once the trail has been pruned).
pub fn check_from_anchors(
    key: AuditKey,
    keyed: Option<&[u8]>,
    pruned: Option<&[u8]>,
) -> ChainCheck {
    let Some(keyed) = keyed else {
        return ChainCheck::failed("the audit trail's anchor is missing".into());
    };
    let Some(keyed_from) = Anchor::decode(&key, keyed) else {
        return ChainCheck::failed("the audit trail's anchor was altered".into());
    };
    let start = match pruned.map(|p| PruneAnchor::decode(&key, p)) {
        None => None,
        Some(Some(start)) => Some(start),
        Some(None) => {
            return ChainCheck::failed("the audit trail's prune anchor was altered".into());
        }
    };
    let check = ChainCheck::new(Some(key), keyed_from);
    match start {
        Some((seq, hash)) => check.after(seq, hash),
        None => check,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl AuditEvent {
    /// Chains `entry` after `(prev_seq, prev_hash)`, with the audit MAC under `key` (or, with
    /// no key, a plain SHA-256, as before the MAC existed).
    pub fn chain(
        entry: &AuditEntry,
        outcome: &str,
        prev_seq: u64,
        prev_hash: [u8; 32],
        key: Option<&AuditKey>,
    ) -> Self {
        let mut event = AuditEvent {
            version: if key.is_some() {
                VERSION_KEYED
            } else {
                VERSION_PLAIN
            },
            seq: prev_seq + 1,
            time_ms: entry.time_ms,
            actor: entry.actor.clone(),
            action: entry.action.to_owned(),
            client_id: entry.client_id.clone(),
            backup_method: entry.backup_method.clone(),
            outcome: outcome.to_owned(),
            prev_hash,
            hash: [0; 32],
        };
        event.hash = event.compute_hash(key).unwrap_or_default();
        event
    }

    /// Whether the event is chained with the audit MAC.
    pub fn keyed(&self) -> bool {
        self.version == VERSION_KEYED
    }

    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.client_id.len());
        out.push(self.version);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        for s in [
            &self.actor,
            &self.action,
            &self.client_id,
            &self.backup_method,
            &self.outcome,
        ] {
            put_str(&mut out, s);
        }
        out
    }

    /// The hash this event should carry: its MAC under `key` for a keyed event (`None`
    /// without a key), its SHA-256 for a plain one.
    pub fn compute_hash(&self, key: Option<&AuditKey>) -> Option<[u8; 32]> {
        if self.keyed() {
            Some(
                key?.mac()
                    .chain_update(self.prev_hash)
                    .chain_update(self.body())
                    .finalize()
                    .into_bytes()
                    .into(),
            )
        } else {
            Some(
                Sha256::new()
                    .chain_update(self.prev_hash)
                    .chain_update(self.body())
                    .finalize()
                    .into(),
            )
        }
    }

    /// `body | prev_hash | hash`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.body();
        out.extend_from_slice(&self.prev_hash);
        out.extend_from_slice(&self.hash);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut rest = bytes;
        let mut take = |n: usize| -> Option<&[u8]> {
            if rest.len() < n {
                return None;
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Some(head)
        };
        let version = take(1)?[0];
        if version != VERSION_PLAIN && version != VERSION_KEYED {
            return None;
        }
        let seq = u64::from_be_bytes(take(8)?.try_into().ok()?);
        let time_ms = u64::from_be_bytes(take(8)?.try_into().ok()?);
        let mut strings = Vec::with_capacity(5);
        for _ in 0..5 {
            let len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
            strings.push(String::from_utf8(take(len)?.to_vec()).ok()?);
        }
        let prev_hash = take(32)?.try_into().ok()?;
        let hash = take(32)?.try_into().ok()?;
        if !rest.is_empty() {
            return None;
        }
        let mut s = strings.into_iter();
        Some(AuditEvent {
            version,
            seq,
            time_ms,
            actor: s.next()?,
            action: s.next()?,
            client_id: s.next()?,
            backup_method: s.next()?,
            outcome: s.next()?,
            prev_hash,
            hash,
        })
    }
}

/// The result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub events: u64,
    /// The first problem found, with the sequence number where it was seen.
    pub problem: Option<(u64, String)>,
}

/// Checks a trail one event at a time, in order, so that a trail of any length is checked in
/// constant memory.
#[derive(Debug)]
pub struct ChainCheck {
    /// The last good event's sequence number and hash (0 and zeros before the first).
    seq: u64,
    hash: [u8; 32],
    events: u64,
    problem: Option<(u64, String)>,
    key: Option<AuditKey>,
    /// Events from this sequence number on must be keyed (`u64::MAX`: none need be).
    keyed_from: u64,
}

impl Default for ChainCheck {
    /// A check of a trail with no keyed events.
    fn default() -> Self {
        Self {
            seq: 0,
            hash: [0; 32],
            events: 0,
            problem: None,
            key: None,
            keyed_from: u64::MAX,
        }
    }
}

impl ChainCheck {
    /// A check of a trail whose events from `keyed_from` on are keyed under `key`. Without a
    /// key (a trail from before the audit MAC), every event must be plain.
    pub fn new(key: Option<AuditKey>, keyed_from: u64) -> Self {
        Self {
            keyed_from: if key.is_some() { keyed_from } else { u64::MAX },
            key,
            ..Self::default()
        }
    }

    /// The same check of a trail whose events up to `seq` were pruned, the last of them with
    /// `hash`: the first event must be `seq + 1` and chain from `hash`.
    pub fn after(self, seq: u64, hash: [u8; 32]) -> Self {
        Self { seq, hash, ..self }
    }

    /// A check of a trail with no keyed events.
    pub fn plain() -> Self {
        Self::new(None, u64::MAX)
    }

    /// A check that finds `problem` before any event (a missing or altered anchor).
    pub fn failed(problem: String) -> Self {
        Self {
            problem: Some((0, problem)),
            ..Self::default()
        }
    }

    /// Checks the next event (or the sequence number of one that cannot be decoded) against
    /// the one before it. Returns false once a problem is found; later events are ignored.
    pub fn push(&mut self, event: Result<AuditEvent, u64>) -> bool {
        if self.problem.is_some() {
            return false;
        }
        let event = match event {
            Ok(e) => e,
            Err(at) => {
                self.problem = Some((at, "the event cannot be decoded".into()));
                return false;
            }
        };
        self.events += 1;
        let problem = if event.seq != self.seq + 1 {
            Some(format!(
                "expected event {} here: events were removed",
                self.seq + 1
            ))
        } else if event.prev_hash != self.hash {
            Some("its previous hash does not match the event before it".into())
        } else if event.seq >= self.keyed_from && !event.keyed() {
            Some("it is not keyed where the trail is: the event was rewritten".into())
        } else if event.seq < self.keyed_from && event.keyed() {
            Some("it is keyed before the trail's keyed events start: the trail was altered".into())
        } else if !event
            .compute_hash(self.key.as_ref())
            .is_some_and(|hash| crate::auth::digests_equal(&hash, &event.hash))
        {
            Some("its content does not match its hash: the event was edited".into())
        } else {
            None
        };
        if let Some(problem) = problem {
            self.problem = Some((event.seq, problem));
            return false;
        }
        (self.seq, self.hash) = (event.seq, event.hash);
        true
    }

    /// The first problem found so far, with the sequence number where it was seen.
    pub fn problem(&self) -> Option<&(u64, String)> {
        self.problem.as_ref()
    }

    /// The report, once every event up to the stored `head` has been pushed (or a problem
    /// was found).
    pub fn finish(self, head: Option<(u64, [u8; 32])>) -> ChainReport {
        let (seq, hash) = (self.seq, self.hash);
        let problem = self.problem.or(match head {
            Some((head_seq, head_hash)) if head_seq != seq || head_hash != hash => Some((
                seq + 1,
                format!(
                    "the trail ends at event {seq} but its head says {head_seq}: events were removed from the end"
                ),
            )),
            None if seq != 0 => Some((seq, "the trail has events but no head".into())),
            _ => None,
        });
        ChainReport {
            events: self.events,
            problem,
        }
    }
}

/// Checks events in order against each other and against the stored head.
pub fn verify(
    mut check: ChainCheck,
    events: impl Iterator<Item = Result<AuditEvent, u64>>,
    head: Option<(u64, [u8; 32])>,
) -> ChainReport {
    for event in events {
        if !check.push(event) {
            break;
        }
    }
    check.finish(head)
}

mod retention;
#[cfg(test)]
mod tests;
mod trail;

pub use retention::{ExportLine, PruneError, Pruned, Retention, prune};

pub use trail::{
    HEAD, Head, PAGE, SCAN, append, events, find, head, verify_trail, verify_trail_with,
};
