//! Kept versions: the custodian shares and client shares that a newer one replaced.
//!
//! A replaced share moves, sealed as it was, to the versions table under
//! `(client id, "KIND/METHOD/NUMBER")`: `KIND` is `custodian` or `client`, `NUMBER` counts
//! up per key (20 digits, so that key order is age order). Its envelope still opens with the
//! associated data of the table it came from. A version is removed by retention when it is
//! older than the newest [`Retention::keep`] of its key **and** was replaced more than
//! [`Retention::keep_days`] ago, or when its key holds more than [`Retention::max`], or, oldest
//! first, when its client holds more than [`Retention::max_per_client`] across all its keys
//! (keys whose current share was deleted included). Whatever the limits, the newest
//! *completed* version of a key that holds a share stays: a custodian version whose pair is
//! completed, or a client version that completed a pair still completed. A custodian version's
//! pair goes with it once no share refers to that pair any more. Retention runs on a client
//! when a share is stored or a version restored.
//!
//! Value layout: `1 | superseded_at_ms u64 | share record` (see [`super::codec`]).

use super::codec::{self, SealedRecord};
use super::records::{self, MethodRecord};
use super::status::PairStatus;
use crate::store::{Key, Range, Reader, StoreError, TableId, Writer};
use std::collections::HashSet;

/// How many versions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At least this many versions per key, whatever their age.
    pub keep: u32,
    /// And every version replaced less than this many days ago.
    pub keep_days: u32,
    /// But never more than this many per key: a caller storing in a loop cannot grow a key
    /// without bound.
    pub max: u32,
    /// Nor more than this many across all of a client's keys, so that one client, and the
    /// cost of its every fetch and write, stays bounded.
    pub max_per_client: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: 5,
            keep_days: 90,
            max: 100,
            max_per_client: 200,
        }
    }
}

/// Which kind of share a version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShareKind {
    Custodian,
    Client,
}

impl ShareKind {
    pub fn name(self) -> &'static str {
        match self {
            ShareKind::Custodian => "custodian",
            ShareKind::Client => "client",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "custodian" => Some(ShareKind::Custodian),
            "client" => Some(ShareKind::Client),
            _ => None,
        }
    }

    /// The table its current shares live in, whose name the envelope is bound to.
    pub fn table(self) -> TableId {
        match self {
            ShareKind::Custodian => TableId::Custodian,
            ShareKind::Client => TableId::Client,
        }
    }
}

/// One kept version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub kind: ShareKind,
    pub backup_method: String,
    pub number: u64,
    pub superseded_at_ms: u64,
    pub record: SealedRecord,
}

/// The second part of a version's key.
pub fn key(kind: ShareKind, backup_method: &str, number: u64) -> String {
    format!("{}/{backup_method}/{number:020}", kind.name())
}

/// Parses the second part of a version's key.
pub fn parse_key(second: &str) -> Option<(ShareKind, &str, u64)> {
    let (kind, rest) = second.split_once('/')?;
    let (method, number) = rest.rsplit_once('/')?;
    if number.len() != 20 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((ShareKind::from_name(kind)?, method, number.parse().ok()?))
}

pub fn encode(superseded_at_ms: u64, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + record.len());
    out.push(1);
    out.extend_from_slice(&superseded_at_ms.to_be_bytes());
    out.extend_from_slice(record);
    out
}

/// Decodes a version row.
pub fn decode(second: &str, value: &[u8]) -> Result<Version, StoreError> {
    const BAD: StoreError = StoreError::Corrupt("share version");
    let (kind, method, number) = parse_key(second).ok_or(BAD)?;
    if value.len() < 9 || value[0] != 1 {
        return Err(BAD);
    }
    let superseded_at_ms = u64::from_be_bytes(value[1..9].try_into().map_err(|_| BAD)?);
    Ok(Version {
        kind,
        backup_method: method.to_owned(),
        number,
        superseded_at_ms,
        record: codec::decode_record(&value[9..])?,
    })
}

/// Every version of a client, ordered by kind, method and age (oldest first). Rows that do
/// not decode are reported in `damaged` by key, not returned.
pub fn of_client(
    r: &(impl Reader + ?Sized),
    client_id: &str,
    kind: Option<ShareKind>,
    damaged: &mut Vec<String>,
) -> Result<Vec<Version>, StoreError> {
    let mut out = Vec::new();
    r.scan(
        TableId::Versions,
        Range::Client(client_id),
        &mut |key, value| {
            if let Key::Client(_, second) = key {
                match decode(second, value) {
                    Ok(v) if kind.is_none_or(|k| k == v.kind) => out.push(v),
                    Ok(_) => {}
                    Err(_) => damaged.push(second.to_owned()),
                }
            }
            Ok(true)
        },
    )?;
    Ok(out)
}

/// The versions of one key, oldest first. Only that key's rows are decoded.
fn of_key(
    w: &dyn Writer,
    client_id: &str,
    kind: ShareKind,
    backup_method: &str,
) -> Result<Vec<Version>, StoreError> {
    let mut out = Vec::new();
    w.scan(
        TableId::Versions,
        Range::Client(client_id),
        &mut |key, value| {
            if let Key::Client(_, second) = key
                && parse_key(second).is_some_and(|(k, m, _)| k == kind && m == backup_method)
                && let Ok(v) = decode(second, value)
            {
                out.push(v);
            }
            Ok(true)
        },
    )?;
    Ok(out)
}

/// Keeps `replaced` (the encoded share record that was current) as the newest version of its
/// key, then applies retention to that key and to the client. Returns the pair ids of the
/// custodian versions retention removed.
pub fn keep(
    w: &mut dyn Writer,
    client_id: &str,
    kind: ShareKind,
    backup_method: &str,
    replaced: &[u8],
    now_ms: u64,
    retention: Retention,
) -> Result<Vec<String>, StoreError> {
    let mut existing = of_key(w, client_id, kind, backup_method)?;
    let number = existing.last().map_or(1, |v| v.number + 1);
    w.put(
        TableId::Versions,
        Key::Client(client_id, &key(kind, backup_method, number)),
        &encode(now_ms, replaced),
    )?;
    existing.push(Version {
        kind,
        backup_method: backup_method.to_owned(),
        number,
        superseded_at_ms: now_ms,
        record: codec::decode_record(replaced)?,
    });
    let completed = completed_pairs(w, client_id)?;
    let mut dropped = prune(w, client_id, &existing, &completed, now_ms, retention)?;
    dropped.extend(cap_client(w, client_id, &completed, retention)?);
    Ok(dropped)
}

/// The ids of a client's completed pairs.
fn completed_pairs(
    r: &(impl Reader + ?Sized),
    client_id: &str,
) -> Result<HashSet<String>, StoreError> {
    let mut completed = HashSet::new();
    r.scan(
        TableId::Pairs,
        Range::Client(client_id),
        &mut |key, value| {
            if let Key::Client(_, id) = key
                && codec::decode_pair(id, value)
                    .is_ok_and(|p| p.status == PairStatus::StoredClientBackupShare)
            {
                completed.insert(id.to_owned());
            }
            Ok(true)
        },
    )?;
    Ok(completed)
}

/// Whether a kept share belongs to a completed backup: a custodian share whose pair is
/// completed, or a client share that completed a pair still completed.
fn is_completed(v: &Version, completed: &HashSet<String>) -> bool {
    match v.kind {
        ShareKind::Custodian => v
            .record
            .pair_id
            .as_ref()
            .is_some_and(|id| completed.contains(id)),
        ShareKind::Client => v.record.covers.iter().any(|id| completed.contains(id)),
    }
}

/// Deletes one version; returns its pair id if it was a custodian share's.
fn remove(w: &mut dyn Writer, client_id: &str, v: &Version) -> Result<Option<String>, StoreError> {
    w.delete(
        TableId::Versions,
        Key::Client(client_id, &key(v.kind, &v.backup_method, v.number)),
    )?;
    Ok(match v.kind {
        ShareKind::Custodian => v.record.pair_id.clone(),
        ShareKind::Client => None,
    })
}

/// Removes the versions of one key (oldest first) that retention no longer keeps, except the
/// newest completed one; returns the pair ids of the custodian versions it removed.
fn prune(
    w: &mut dyn Writer,
    client_id: &str,
    versions: &[Version],
    completed: &HashSet<String>,
    now_ms: u64,
    retention: Retention,
) -> Result<Vec<String>, StoreError> {
    let keep_from = versions.len().saturating_sub(retention.keep as usize);
    let over_max = versions
        .len()
        .saturating_sub(retention.max.max(retention.keep) as usize);
    let young = now_ms.saturating_sub(u64::from(retention.keep_days) * 86_400_000);
    let newest_completed = versions.iter().rposition(|v| is_completed(v, completed));
    let mut pairs = Vec::new();
    for (i, v) in versions[..keep_from].iter().enumerate() {
        if (v.superseded_at_ms >= young && i >= over_max) || Some(i) == newest_completed {
            continue;
        }
        pairs.extend(remove(w, client_id, v)?);
    }
    Ok(pairs)
}

/// Removes a client's oldest versions, across its keys, while it holds more than
/// [`Retention::max_per_client`]; the newest completed version of each key that holds a share
/// stays. Returns the pair ids of the custodian versions removed.
fn cap_client(
    w: &mut dyn Writer,
    client_id: &str,
    completed: &HashSet<String>,
    retention: Retention,
) -> Result<Vec<String>, StoreError> {
    let cap = retention.max_per_client.max(1) as usize;
    let mut held = 0usize;
    w.scan(TableId::Versions, Range::Client(client_id), &mut |_, _| {
        held += 1;
        Ok(true)
    })?;
    if held <= cap {
        return Ok(Vec::new());
    }
    let mut ignored = Vec::new();
    let all = of_client(w, client_id, None, &mut ignored)?;
    // The newest completed version of each key whose share is still held.
    let mut protected = HashSet::new();
    for v in all.iter().rev() {
        let slot = (v.kind, v.backup_method.as_str());
        if is_completed(v, completed)
            && !protected.iter().any(|(k, m, _)| (*k, *m) == slot)
            && w.get(v.kind.table(), Key::Client(client_id, &v.backup_method))?
                .is_some()
        {
            protected.insert((v.kind, v.backup_method.as_str(), v.number));
        }
    }
    let mut oldest: Vec<&Version> = all
        .iter()
        .filter(|v| !protected.contains(&(v.kind, v.backup_method.as_str(), v.number)))
        .collect();
    oldest.sort_by_key(|v| (v.superseded_at_ms, v.record.seq, v.number));
    let mut pairs = Vec::new();
    for v in oldest.into_iter().take(held - cap) {
        pairs.extend(remove(w, client_id, v)?);
    }
    Ok(pairs)
}

/// The custodian shares a fetch answers, before they are opened.
#[derive(Debug, Default)]
pub struct FetchRows {
    /// The current shares, then the fallbacks, each in method order.
    pub rows: Vec<MethodRecord>,
    /// Keys of rows that do not decode, left out.
    pub damaged: Vec<String>,
}

/// The tables [`fetch_rows`] reads.
pub const FETCH_TABLES: &[TableId] = &[TableId::Custodian, TableId::Pairs, TableId::Versions];

/// What `/backup/fetch` answers: every current custodian share (in method order), then every
/// kept custodian share whose pair was completed, newest first. Portal picks the share by its
/// pair id, and the backup it considers current may be older than the newest one completed
/// here (the app's notification to Portal can fail after the cipherText was stored), so every
/// completed backup that retention keeps is answered. A kept share of a pair already answered
/// is left out.
pub fn fetch_rows(r: &(impl Reader + ?Sized), client_id: &str) -> Result<FetchRows, StoreError> {
    let (rows, damaged) = records::shares_skipping_damaged(r, TableId::Custodian, client_id)?;
    let mut out = FetchRows { rows, damaged };
    let mut kept = Vec::new();
    r.scan(
        TableId::Versions,
        Range::Client(client_id),
        &mut |key, value| {
            if let Key::Client(_, second) = key
                && parse_key(second).is_some_and(|(kind, _, _)| kind == ShareKind::Custodian)
            {
                match decode(second, value) {
                    Ok(v) => kept.push(v),
                    Err(_) => out.damaged.push(second.to_owned()),
                }
            }
            Ok(true)
        },
    )?;
    if kept.is_empty() {
        return Ok(out);
    }
    let completed = completed_pairs(r, client_id)?;
    let mut answered: HashSet<String> = out
        .rows
        .iter()
        .filter_map(|m| m.record.pair_id.clone())
        .collect();
    kept.retain(|v| is_completed(v, &completed));
    kept.sort_by_key(|v| std::cmp::Reverse((v.record.seq, v.superseded_at_ms, v.number)));
    for v in kept {
        let Some(id) = &v.record.pair_id else {
            continue;
        };
        if answered.insert(id.clone()) {
            out.rows.push(MethodRecord {
                backup_method: v.backup_method,
                record: v.record,
            });
        }
    }
    Ok(out)
}

/// The custodian share an eject of (client, `METHOD-CURVE`) reads: see
/// [`crate::vault::Vault::custodian_share`].
pub fn eject_row(
    r: &(impl Reader + ?Sized),
    client_id: &str,
    backup_method: &str,
    pair_id: Option<&str>,
) -> Result<Option<SealedRecord>, StoreError> {
    let current = records::share(r, TableId::Custodian, client_id, backup_method)?;
    let mut ignored = Vec::new();
    let mut kept = of_client(r, client_id, Some(ShareKind::Custodian), &mut ignored)?;
    kept.retain(|v| v.backup_method == backup_method);
    if let Some(pair_id) = pair_id {
        if current
            .as_ref()
            .is_some_and(|c| c.pair_id.as_deref() == Some(pair_id))
        {
            return Ok(current);
        }
        return Ok(kept
            .into_iter()
            .rev()
            .find(|v| v.record.pair_id.as_deref() == Some(pair_id))
            .map(|v| v.record));
    }
    let completed = completed_pairs(r, client_id)?;
    let done = |rec: &SealedRecord| rec.pair_id.as_ref().is_none_or(|id| completed.contains(id));
    if current.as_ref().is_none_or(done) {
        return Ok(current);
    }
    let newest_completed = kept
        .into_iter()
        .rev()
        .find(|v| is_completed(v, &completed))
        .map(|v| v.record);
    Ok(newest_completed.or(current))
}

/// A held client share, current or kept, without its cipherText.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientShareInfo {
    pub backup_method: String,
    /// `None` for the current share, else its version number.
    pub version: Option<u64>,
    pub created_at_ms: u64,
    pub backup_share_pair_ids: Vec<String>,
}

/// The tables [`client_share_of_pair`] and [`client_shares`] read.
pub const CLIENT_SHARE_TABLES: &[TableId] = &[TableId::Client, TableId::Pairs, TableId::Versions];

/// The client share of a backup share pair: the current or kept client share that completed
/// it, newest first; for shares stored before client shares recorded their pairs, the first
/// one stored at or after the pair's custodian share under a method that covers it. Answers
/// the method it is stored under and the record.
pub fn client_share_of_pair(
    r: &(impl Reader + ?Sized),
    client_id: &str,
    pair_id: &str,
) -> Result<Option<(String, SealedRecord)>, StoreError> {
    let (current, _) = records::shares_skipping_damaged(r, TableId::Client, client_id)?;
    let mut ignored = Vec::new();
    let kept = of_client(r, client_id, Some(ShareKind::Client), &mut ignored)?;
    let mut all: Vec<(String, SealedRecord)> = current
        .into_iter()
        .map(|m| (m.backup_method, m.record))
        .chain(kept.into_iter().rev().map(|v| (v.backup_method, v.record)))
        .collect();
    if let Some(i) = all
        .iter()
        .position(|(_, rec)| rec.covers.iter().any(|id| id == pair_id))
    {
        return Ok(Some(all.swap_remove(i)));
    }
    let Some(pair) = records::pair(r, client_id, pair_id)? else {
        return Ok(None);
    };
    Ok(all
        .into_iter()
        .filter(|(method, rec)| {
            rec.seq == 0
                && rec.covers.is_empty()
                && rec.created_at_ms >= pair.created_at_ms
                && crate::validate::covers(method, &pair.backup_method)
        })
        .min_by_key(|(_, rec)| rec.created_at_ms))
}

/// Every client share of a client, current (in method order) then kept (newest first),
/// without its cipherText.
pub fn client_shares(
    r: &(impl Reader + ?Sized),
    client_id: &str,
) -> Result<Vec<ClientShareInfo>, StoreError> {
    let (current, _) = records::shares_skipping_damaged(r, TableId::Client, client_id)?;
    let mut ignored = Vec::new();
    let kept = of_client(r, client_id, Some(ShareKind::Client), &mut ignored)?;
    let mut kept: Vec<Version> = kept;
    kept.sort_by_key(|v| std::cmp::Reverse((v.record.seq, v.superseded_at_ms, v.number)));
    Ok(current
        .into_iter()
        .map(|m| ClientShareInfo {
            backup_method: m.backup_method,
            version: None,
            created_at_ms: m.record.created_at_ms,
            backup_share_pair_ids: m.record.covers,
        })
        .chain(kept.into_iter().map(|v| ClientShareInfo {
            backup_method: v.backup_method,
            version: Some(v.number),
            created_at_ms: v.record.created_at_ms,
            backup_share_pair_ids: v.record.covers,
        }))
        .collect())
}

/// Whether any custodian share of the client, current or kept, belongs to `pair_id`.
pub fn pair_referenced(w: &dyn Writer, client_id: &str, pair_id: &str) -> Result<bool, StoreError> {
    let mut found = false;
    w.scan(
        TableId::Custodian,
        Range::Client(client_id),
        &mut |_, value| {
            found = codec::record_pair_id(value)? == Some(pair_id);
            Ok(!found)
        },
    )?;
    if found {
        return Ok(true);
    }
    let mut ignored = Vec::new();
    Ok(
        of_client(w, client_id, Some(ShareKind::Custodian), &mut ignored)?
            .iter()
            .any(|v| v.record.pair_id.as_deref() == Some(pair_id)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_age_and_parse_back() {
        let a = key(ShareKind::Custodian, "PASSWORD-SECP256K1", 9);
        let b = key(ShareKind::Custodian, "PASSWORD-SECP256K1", 10);
        assert!(a < b, "version 9 sorts before version 10");
        assert_eq!(
            parse_key(&b),
            Some((ShareKind::Custodian, "PASSWORD-SECP256K1", 10))
        );
        assert_eq!(parse_key("client/PASSWORD/1"), None);
        assert_eq!(parse_key("other/PASSWORD/00000000000000000001"), None);
    }

    #[test]
    fn versions_round_trip_and_damage_is_detected() {
        let record = SealedRecord {
            created_at_ms: 7,
            seq: 3,
            pair_id: Some("p".into()),
            covers: Vec::new(),
            envelope: vec![1, 2, 3],
        };
        let k = key(ShareKind::Client, "PASSWORD", 3);
        let v = decode(&k, &encode(42, &codec::encode_record(&record))).unwrap();
        assert_eq!((v.number, v.superseded_at_ms, v.record), (3, 42, record));
        assert!(decode(&k, &[1, 0]).is_err());
        assert!(decode("client/PASSWORD/x", &encode(1, &[])).is_err());
    }
}
