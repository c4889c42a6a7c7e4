//! Kept versions: the custodian shares and client shares that a newer one replaced.
//!
//! A replaced share moves, sealed as it was, to the versions table under
//! `(client id, "KIND/METHOD/NUMBER")`: `KIND` is `custodian` or `client`, `NUMBER` counts
//! up per key (20 digits, so that key order is age order). Its envelope still opens with the
//! associated data of the table it came from. A version is removed by retention when it is
//! older than the newest [`Retention::keep`] of its key **and** was replaced more than
//! [`Retention::keep_days`] ago, or when its key holds more than [`Retention::max`]; a
//! custodian version's pair goes with it once no share refers to that pair any more.
//! Retention runs on a key when a share is stored under it.
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
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: 5,
            keep_days: 90,
            max: 100,
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

/// The versions of one key, oldest first.
fn of_key(
    w: &dyn Writer,
    client_id: &str,
    kind: ShareKind,
    backup_method: &str,
) -> Result<Vec<Version>, StoreError> {
    let mut ignored = Vec::new();
    Ok(of_client(w, client_id, Some(kind), &mut ignored)?
        .into_iter()
        .filter(|v| v.backup_method == backup_method)
        .collect())
}

/// Keeps `replaced` (the encoded share record that was current) as the newest version of its
/// key, then applies retention to that key. Returns the pair ids of the custodian versions
/// retention removed.
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
    prune(w, client_id, &existing, now_ms, retention)
}

/// Removes the versions of one key (oldest first) that retention no longer keeps; returns the
/// pair ids of the custodian versions it removed.
fn prune(
    w: &mut dyn Writer,
    client_id: &str,
    versions: &[Version],
    now_ms: u64,
    retention: Retention,
) -> Result<Vec<String>, StoreError> {
    let keep_from = versions.len().saturating_sub(retention.keep as usize);
    let over_max = versions
        .len()
        .saturating_sub(retention.max.max(retention.keep) as usize);
    let young = now_ms.saturating_sub(u64::from(retention.keep_days) * 86_400_000);
    let mut pairs = Vec::new();
    for (i, v) in versions[..keep_from].iter().enumerate() {
        if v.superseded_at_ms >= young && i >= over_max {
            continue;
        }
        w.delete(
            TableId::Versions,
            Key::Client(client_id, &key(v.kind, &v.backup_method, v.number)),
        )?;
        if v.kind == ShareKind::Custodian
            && let Some(pair) = &v.record.pair_id
        {
            pairs.push(pair.clone());
        }
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

/// What `/backup/fetch` answers: every current custodian share, and for every `METHOD-CURVE`
/// whose current share's pair is not completed, the newest earlier share of that key whose
/// pair was completed. Portal picks the share by its pair id, so a backup that never
/// completed does not cost the user the last one that did.
/// The tables [`fetch_rows`] reads.
pub const FETCH_TABLES: &[TableId] = &[TableId::Custodian, TableId::Pairs, TableId::Versions];

pub fn fetch_rows(r: &(impl Reader + ?Sized), client_id: &str) -> Result<FetchRows, StoreError> {
    let (rows, damaged) = records::shares_skipping_damaged(r, TableId::Custodian, client_id)?;
    let mut out = FetchRows { rows, damaged };
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
    let is_completed =
        |r: &SealedRecord| r.pair_id.as_ref().is_some_and(|id| completed.contains(id));
    let wanting: Vec<String> = out
        .rows
        .iter()
        .filter(|m| !is_completed(&m.record))
        .map(|m| m.backup_method.clone())
        .chain(out.damaged.iter().cloned())
        .collect();
    if wanting.is_empty() {
        return Ok(out);
    }
    let kept = of_client(r, client_id, Some(ShareKind::Custodian), &mut out.damaged)?;
    let mut wanting = wanting;
    wanting.sort();
    for method in wanting {
        let newest = kept
            .iter()
            .rev()
            .find(|v| v.backup_method == method && is_completed(&v.record));
        if let Some(v) = newest {
            out.rows.push(MethodRecord {
                backup_method: method,
                record: v.record.clone(),
            });
        }
    }
    Ok(out)
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
            pair_id: Some("p".into()),
            envelope: vec![1, 2, 3],
        };
        let k = key(ShareKind::Client, "PASSWORD", 3);
        let v = decode(&k, &encode(42, &codec::encode_record(&record))).unwrap();
        assert_eq!((v.number, v.superseded_at_ms, v.record), (3, 42, record));
        assert!(decode(&k, &[1, 0]).is_err());
        assert!(decode("client/PASSWORD/x", &encode(1, &[])).is_err());
    }
}
