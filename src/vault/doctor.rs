//! The recoverability report: for every client and backup method, can the user recover today,
//! and if not, why. Read a page of clients at a time, so memory stays bounded at any size.
//!
//! A method is recoverable when, for every expected curve, the share a fetch answers for that
//! curve (the current one, or the last completed one it falls back to, see
//! [`super::versions::fetch_rows`]) opens, its pair is completed, and the cipherText stored for
//! that backup is held and opens.

use super::codec::{self, PairRecord, SealedRecord};
use super::records;
use super::status::PairStatus;
use super::versions::{self, ShareKind, Version};
use super::{Vault, entry, now_ms};
use crate::crypto::RecordAad;
use crate::error::VaultError;
use crate::store::{Key, Range, Reader, StoreError, TableId};
use crate::validate::covers;
use crate::validate::split_curve;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the report checks against.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// The curves every method must hold a custodian share for.
    pub curves: Vec<String>,
    /// A pair at `STORED_CLIENT_BACKUP_SHARE_KEY` longer than this is stuck: the device said
    /// it encrypted its share, but the cipherText never arrived.
    pub stuck_after_ms: u64,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        Self {
            curves: vec!["SECP256K1".into(), "ED25519".into()],
            stuck_after_ms: 24 * 3600 * 1000,
        }
    }
}

/// Why a method cannot recover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// No custodian share for an expected curve.
    CurveMissing,
    /// A cipherText but no custodian share at all.
    CustodianShareMissing,
    /// No cipherText covers the curve.
    CipherTextMissing,
    /// The only cipherText is older than the custodian share: it belongs to an earlier backup.
    StaleCipherText,
    /// The pair never completed.
    PairIncomplete,
    /// The pair has waited at `STORED_CLIENT_BACKUP_SHARE_KEY` longer than the setting.
    PairStuck,
    /// A custodian share or cipherText fails its integrity check.
    DamagedRecord,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::CurveMissing => "curve_missing",
            Reason::CustodianShareMissing => "custodian_share_missing",
            Reason::CipherTextMissing => "cipher_text_missing",
            Reason::StaleCipherText => "stale_cipher_text",
            Reason::PairIncomplete => "pair_incomplete",
            Reason::PairStuck => "pair_stuck",
            Reason::DamagedRecord => "damaged_record",
        }
    }
}

/// One method of one client that cannot recover, with every reason (`code:CURVE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub client_id: String,
    pub backup_method: String,
    pub reasons: Vec<(Reason, String)>,
}

/// The totals of a report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DoctorTotals {
    pub clients: u64,
    pub recoverable_clients: u64,
    /// Bare method -> (recoverable, not recoverable).
    pub methods: BTreeMap<String, (u64, u64)>,
    /// Reason -> methods it was found in.
    pub reasons: BTreeMap<Reason, u64>,
}

/// Everything held for one client.
#[derive(Default)]
struct ClientState {
    custodian: Vec<(String, Option<SealedRecord>)>,
    client: Vec<(String, Option<SealedRecord>)>,
    pairs: HashMap<String, PairRecord>,
    versions: Vec<Version>,
    /// Kept client shares.
    client_versions: Vec<Version>,
}

fn read_client(r: &dyn Reader, client_id: &str) -> Result<ClientState, StoreError> {
    let mut state = ClientState::default();
    for (table, into) in [
        (TableId::Custodian, &mut state.custodian),
        (TableId::Client, &mut state.client),
    ] {
        for (method, value) in records::client_rows(r, table, client_id)? {
            into.push((method, codec::decode_record(&value).ok()));
        }
    }
    for (id, value) in records::client_rows(r, TableId::Pairs, client_id)? {
        if let Ok(pair) = codec::decode_pair(&id, &value) {
            state.pairs.insert(id, pair);
        }
    }
    let mut damaged = Vec::new();
    state.versions = versions::of_client(r, client_id, Some(ShareKind::Custodian), &mut damaged)?;
    state.client_versions =
        versions::of_client(r, client_id, Some(ShareKind::Client), &mut damaged)?;
    Ok(state)
}

/// Checks one client; `opens` tells whether a record opens under the master key.
fn check_client(
    client_id: &str,
    state: &ClientState,
    options: &DoctorOptions,
    now: u64,
    opens: &Opens<'_>,
) -> (Vec<String>, Vec<Finding>) {
    let mut methods = BTreeSet::new();
    for (key, _) in &state.custodian {
        methods.insert(split_curve(key).0.to_owned());
    }
    for (key, _) in &state.client {
        let bare = split_curve(key).0;
        // A per-curve cipherText belongs to its bare method; a bare one names it.
        let known = state.custodian.iter().any(|(c, _)| covers(key, c));
        methods.insert(if known { bare } else { key.as_str() }.to_owned());
    }
    let mut findings = Vec::new();
    for method in &methods {
        let mut reasons = Vec::new();
        let has_custodian = state
            .custodian
            .iter()
            .any(|(k, _)| split_curve(k).0 == method);
        let check = Check {
            client_id,
            state,
            options,
            now,
            opens,
        };
        // A method held only under its own name has no curve (legacy `UNKNOWN`, a bare
        // `GDRIVE`, a method Portal added since): it is its own key, and no curve is expected.
        let curveless = state
            .custodian
            .iter()
            .all(|(k, _)| k == method || split_curve(k).0 != method);
        if !has_custodian {
            reasons.push((Reason::CustodianShareMissing, String::new()));
        } else if curveless {
            if let Some(reason) = check_key(&check, method) {
                reasons.push((reason, String::new()));
            }
        } else {
            let mut curves: BTreeSet<String> = options.curves.iter().cloned().collect();
            for (key, _) in &state.custodian {
                if let (bare, Some(curve)) = split_curve(key)
                    && bare == method
                {
                    curves.insert(curve.to_owned());
                }
            }
            for curve in curves {
                if let Some(reason) = check_key(&check, &format!("{method}-{curve}")) {
                    reasons.push((reason, curve));
                }
            }
        }
        if !reasons.is_empty() {
            findings.push(Finding {
                client_id: client_id.to_owned(),
                backup_method: method.clone(),
                reasons,
            });
        }
    }
    (methods.into_iter().collect(), findings)
}

/// One client being checked.
struct Check<'a> {
    client_id: &'a str,
    state: &'a ClientState,
    options: &'a DoctorOptions,
    now: u64,
    opens: &'a Opens<'a>,
}

/// Why the custodian share under `key` cannot recover, if it cannot.
fn check_key(c: &Check<'_>, key: &str) -> Option<Reason> {
    let (client_id, state, opens) = (c.client_id, c.state, c.opens);
    let Some((_, current)) = state.custodian.iter().find(|(k, _)| k == key) else {
        return Some(Reason::CurveMissing);
    };
    let verdict = match current {
        Some(share) if opens(TableId::Custodian, client_id, key, share) => {
            check_share(c, key, share, None)
        }
        _ => Some(Reason::DamagedRecord),
    };
    verdict?;
    // The last completed backup a fetch falls back to, with the cipherText stored for it.
    let fallback = state.versions.iter().rev().find(|v| {
        v.backup_method == key
            && v.record
                .pair_id
                .as_ref()
                .and_then(|id| state.pairs.get(id))
                .is_some_and(|p| p.status == PairStatus::StoredClientBackupShare)
    });
    match fallback {
        Some(v)
            if opens(TableId::Custodian, client_id, key, &v.record)
                && check_share(c, key, &v.record, Some(v.superseded_at_ms)).is_none() =>
        {
            None
        }
        _ => verdict,
    }
}

/// Why `share` (current, or kept until `superseded`) cannot recover, if it cannot.
fn check_share(
    c: &Check<'_>,
    key: &str,
    share: &SealedRecord,
    superseded: Option<u64>,
) -> Option<Reason> {
    let (client_id, state, options, now, opens) = (c.client_id, c.state, c.options, c.now, c.opens);
    let bare = split_curve(key).0;
    // The client share that completed this share's pair, current or kept, answers for it.
    if let Some(id) = &share.pair_id {
        let current = state
            .client
            .iter()
            .filter_map(|(k, r)| Some((k.as_str(), r.as_ref()?)));
        let kept = state
            .client_versions
            .iter()
            .map(|v| (v.backup_method.as_str(), &v.record));
        if let Some((cover_key, cover)) = current
            .chain(kept)
            .find(|(_, r)| r.covers.iter().any(|c| c == id))
        {
            if !opens(TableId::Client, client_id, cover_key, cover) {
                return Some(Reason::DamagedRecord);
            }
            return match state.pairs.get(id).map(|p| p.status) {
                Some(PairStatus::StoredClientBackupShare) => None,
                _ => Some(Reason::PairIncomplete),
            };
        }
    }
    let cover = [key, bare]
        .into_iter()
        .find_map(|m| state.client.iter().find(|(k, _)| k == m));
    let stuck = share
        .pair_id
        .as_ref()
        .and_then(|id| state.pairs.get(id))
        .is_some_and(|p| {
            p.status == PairStatus::StoredClientBackupShareKey
                && now.saturating_sub(p.updated_at_ms) > options.stuck_after_ms
        });
    let Some((cover_key, cover)) = cover else {
        // The device said it encrypted its share, and the cipherText never arrived.
        return Some(if stuck {
            Reason::PairStuck
        } else {
            Reason::CipherTextMissing
        });
    };
    let Some(cover) = cover
        .as_ref()
        .filter(|c| opens(TableId::Client, client_id, cover_key, c))
    else {
        return Some(Reason::DamagedRecord);
    };
    if !cover.stored_after(share) || superseded.is_some_and(|until| cover.created_at_ms > until) {
        return Some(Reason::StaleCipherText);
    }
    let Some(id) = &share.pair_id else {
        // A share stored without a pair (an older SDK): the cipherText is all it needs.
        return None;
    };
    match state.pairs.get(id).map(|p| p.status) {
        Some(PairStatus::StoredClientBackupShare) => None,
        _ if stuck => Some(Reason::PairStuck),
        _ => Some(Reason::PairIncomplete),
    }
}

/// Whether a record of (table, client id, method) opens under the master key.
type Opens<'a> = dyn Fn(TableId, &str, &str, &SealedRecord) -> bool + 'a;

/// How many clients are read per page.
const PAGE: usize = 256;

impl Vault {
    /// Checks every client, a page at a time: `found` gets each method that cannot recover,
    /// `progress` (clients done, clients with custodian shares when it started) after each
    /// page. Answers the totals. Opens every share, so it takes as long as `verify`.
    pub fn doctor(
        &self,
        options: &DoctorOptions,
        found: &mut dyn FnMut(Finding) -> Result<(), VaultError>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<DoctorTotals, VaultError> {
        let now = now_ms();
        let total = self.store().read()?.len(TableId::Custodian)?;
        let mut totals = DoctorTotals::default();
        let opens = |table: TableId, client_id: &str, method: &str, record: &SealedRecord| {
            let aad = RecordAad {
                table: table.name(),
                client_id,
                backup_method: method,
            };
            self.key_for(&record.envelope)
                .and_then(|key| key.open(&aad, &record.envelope))
                .is_ok()
        };
        let mut done_records = 0u64;
        // Clients with custodian shares, then clients holding only cipherTexts.
        for (table, only_without_custodian) in
            [(TableId::Custodian, false), (TableId::Client, true)]
        {
            let mut after: Option<String> = None;
            loop {
                let reader = self.store().read()?;
                let clients = next_clients(&*reader, table, after.as_deref(), PAGE)?;
                let Some(last) = clients.last() else {
                    break;
                };
                after = Some(last.clone());
                for client_id in &clients {
                    // `sharevault selftest`'s synthetic clients are nobody's wallet.
                    if client_id.starts_with(crate::validate::SELFTEST_CLIENT_PREFIX) {
                        continue;
                    }
                    if only_without_custodian && has_rows(&*reader, TableId::Custodian, client_id)?
                    {
                        continue;
                    }
                    let state = read_client(&*reader, client_id)?;
                    if !only_without_custodian {
                        done_records += state.custodian.len() as u64;
                    }
                    let (methods, findings) = check_client(client_id, &state, options, now, &opens);
                    totals.clients += 1;
                    if findings.is_empty() {
                        totals.recoverable_clients += 1;
                    }
                    for method in methods {
                        let bad = findings.iter().any(|f| f.backup_method == method);
                        let entry = totals.methods.entry(method).or_default();
                        if bad {
                            entry.1 += 1;
                        } else {
                            entry.0 += 1;
                        }
                    }
                    for finding in findings {
                        let distinct: BTreeSet<Reason> =
                            finding.reasons.iter().map(|(r, _)| *r).collect();
                        for reason in distinct {
                            *totals.reasons.entry(reason).or_default() += 1;
                        }
                        found(finding)?;
                    }
                }
                progress(done_records.min(total), total);
            }
        }
        Ok(totals)
    }

    /// Records that the report was run.
    pub async fn audit_doctor(&self, actor: &str, outcome: &str) -> Result<(), VaultError> {
        let mut audit = entry(actor, "doctor", "", "");
        audit.outcome = Some(outcome.to_owned());
        self.write(
            super::rules::WriteOp::AuditOnly { deferred: false },
            Some(audit),
        )
        .await
        .map(|_| ())
    }
}

/// Up to `limit` distinct client ids of a per-client table after `after`, in order.
fn next_clients(
    r: &dyn Reader,
    table: TableId,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut out: Vec<String> = Vec::new();
    // Every key of `after` sorts before (after, "\u{10FFFF}..."), so starting past the largest
    // second part skips that client whole.
    let skip = after.map(|c| (c.to_owned(), char::MAX.to_string()));
    let from = skip.as_ref().map(|(c, s)| Key::Client(c, s));
    r.scan(table, Range::After(from), &mut |key, _| {
        if let Key::Client(client, _) = key
            && out.last().map(String::as_str) != Some(client)
        {
            if out.len() == limit {
                return Ok(false);
            }
            out.push(client.to_owned());
        }
        Ok(true)
    })?;
    Ok(out)
}

fn has_rows(r: &dyn Reader, table: TableId, client_id: &str) -> Result<bool, StoreError> {
    let mut any = false;
    r.scan(table, Range::Client(client_id), &mut |_, _| {
        any = true;
        Ok(false)
    })?;
    Ok(any)
}
