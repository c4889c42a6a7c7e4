//! Whether a snapshot is older than the vault it would replace.
//!
//! A vault's last write is the newest event of its audit trail that records a change: every
//! change appends one in the transaction that makes it. Events of reads (a fetch, a read of a
//! share, a snapshot, doctor) and of refused writes changed nothing and do not count. A
//! snapshot is older than the vault it replaces when that vault holds a write it lacks:
//!
//! - **The same trail** (the live vault holds the snapshot's newest event, same sequence
//!   number and same hash: it is the snapshot's vault, moved on): older when the live vault's
//!   last write comes after that event. Decided by commit order, whatever the clocks.
//! - **Another trail** (another vault, a trail that went another way after an earlier
//!   restore, or one pruned past the snapshot's newest event): older when the live vault's
//!   last write is later than the snapshot was taken.
//!
//! Restoring into a data dir or a database that holds no vault is never older. A vault whose
//! newest event cannot be read is treated as older: nothing shows what a restore would lose.

use crate::audit::{self, AuditEvent};
use crate::store::{Key, Range, Reader, StoreError, TableId};

/// The actions whose events record no change. Any other action, known or not, is a write.
const READS: [&str; 5] = [
    "fetch",
    "get_custodian_share",
    "get_client_share",
    "snapshot",
    "doctor",
];

/// Whether `event` records a change: a write that was made.
fn is_write(event: &AuditEvent) -> bool {
    event.outcome == "ok" && !READS.contains(&event.action.as_str())
}

/// Events looked at a time while the trail is searched backwards for its last write.
const WINDOW: u64 = 4096;

/// The newest write of the trail whose head is `head`, searched backwards a window at a time
/// (stopping below the first event kept, in a pruned trail).
fn last_write(reader: &dyn Reader, head: u64) -> Result<Option<AuditEvent>, StoreError> {
    let mut end = head;
    loop {
        let start = end.saturating_sub(WINDOW);
        let (mut found, mut any) = (None, false);
        reader.scan(
            TableId::Audit,
            Range::After(Some(Key::Seq(start))),
            &mut |key, value| {
                let Key::Seq(seq) = key else {
                    return Err(StoreError::Corrupt("audit"));
                };
                if seq > end {
                    return Ok(false);
                }
                any = true;
                let event = AuditEvent::decode(value).ok_or(StoreError::Corrupt("audit"))?;
                if is_write(&event) {
                    found = Some(event);
                }
                Ok(true)
            },
        )?;
        if found.is_some() || !any || start == 0 {
            return Ok(found);
        }
        end = start;
    }
}

/// The newest event of a trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newest {
    pub seq: u64,
    pub time_ms: u64,
    pub action: String,
    hash: [u8; 32],
}

impl Newest {
    /// The event as the freshness check names it.
    pub fn of(event: &AuditEvent) -> Self {
        Self {
            seq: event.seq,
            time_ms: event.time_ms,
            action: event.action.clone(),
            hash: event.hash,
        }
    }
}

impl std::fmt::Display for Newest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event #{} ({}) at {}",
            self.seq,
            self.action,
            time(self.time_ms)
        )
    }
}

/// Milliseconds since the epoch as RFC 3339, UTC.
pub fn time(ms: u64) -> String {
    crate::pb::timestamp(ms).to_string()
}

/// What a snapshot shows of its vault's history: when it was taken, and its newest event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotMark {
    pub created_at_ms: u64,
    pub newest: Option<Newest>,
}

impl SnapshotMark {
    /// Notes a record of the snapshot, read in order (the audit table in sequence order).
    pub fn see(&mut self, table: TableId, value: &[u8]) {
        if table == TableId::Audit
            && let Some(event) = AuditEvent::decode(value)
        {
            self.newest = Some(Newest::of(&event));
        }
    }
}

/// What the vault a restore would replace shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// Nothing to replace: the data dir or the database holds no vault.
    Empty,
    /// A vault, its last write (`None` when its trail records none), and whether its trail
    /// holds the snapshot's newest event.
    Vault {
        last_write: Option<Newest>,
        same_trail: bool,
    },
    /// A vault whose newest event cannot be read, and why.
    Unreadable(String),
}

impl Live {
    /// Reads the live vault's last write, and whether it holds `snapshot`'s newest event.
    pub fn read(reader: &dyn Reader, snapshot: &SnapshotMark) -> Self {
        match Self::try_read(reader, snapshot) {
            Ok(live) => live,
            Err(err) => Live::Unreadable(err.to_string()),
        }
    }

    fn try_read(reader: &dyn Reader, snapshot: &SnapshotMark) -> Result<Self, StoreError> {
        let event = |seq: u64| -> Result<Option<AuditEvent>, StoreError> {
            Ok(reader
                .get(TableId::Audit, Key::Seq(seq))?
                .and_then(|v| AuditEvent::decode(&v)))
        };
        let last_write = match audit::head(reader)? {
            None => None,
            Some((head, _)) => last_write(reader, head)?.as_ref().map(Newest::of),
        };
        let same_trail = match &snapshot.newest {
            Some(theirs) => event(theirs.seq)?.is_some_and(|e| e.hash == theirs.hash),
            None => false,
        };
        Ok(Live::Vault {
            last_write,
            same_trail,
        })
    }
}

/// The snapshot and the vault it would replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    pub snapshot: SnapshotMark,
    pub live: Live,
}

impl Freshness {
    /// Whether the live vault holds writes the snapshot lacks (see the module documentation).
    pub fn older(&self) -> bool {
        match &self.live {
            Live::Empty => false,
            Live::Unreadable(_) => true,
            Live::Vault {
                last_write: None, ..
            } => false,
            Live::Vault {
                last_write: Some(live),
                same_trail,
            } => match &self.snapshot.newest {
                None => true,
                Some(theirs) if *same_trail => live.seq > theirs.seq,
                Some(_) => live.time_ms > self.snapshot.created_at_ms,
            },
        }
    }

    /// The snapshot, in one line.
    pub fn describe_snapshot(&self) -> String {
        let newest = match &self.snapshot.newest {
            Some(newest) => format!("its newest {newest}"),
            None => "it holds no audit event".into(),
        };
        format!(
            "the snapshot was taken at {}; {newest}",
            time(self.snapshot.created_at_ms)
        )
    }

    /// The live vault's last write, in one line (`None` when there is nothing to replace).
    pub fn describe_live(&self) -> Option<String> {
        Some(match &self.live {
            Live::Empty => return None,
            Live::Vault {
                last_write: None, ..
            } => "the vault it replaces records no write".into(),
            Live::Vault {
                last_write: Some(newest),
                ..
            } => format!("the vault it replaces last wrote at {newest}"),
            Live::Unreadable(why) => {
                format!("the last write of the vault it replaces cannot be read: {why}")
            }
        })
    }

    /// Why a restore of an older snapshot is refused.
    pub fn refusal(&self) -> String {
        format!(
            "the snapshot is older than the vault it would replace: {}, and {}; restoring it \
             would lose what was written since. Pass --allow-older to restore it anyway",
            self.describe_snapshot(),
            self.describe_live().unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newest(seq: u64, time_ms: u64, hash: u8) -> Newest {
        Newest {
            seq,
            time_ms,
            action: "backup".into(),
            hash: [hash; 32],
        }
    }

    fn freshness(snapshot: Option<Newest>, created_at_ms: u64, live: Live) -> Freshness {
        Freshness {
            snapshot: SnapshotMark {
                created_at_ms,
                newest: snapshot,
            },
            live,
        }
    }

    fn vault(last_write: Option<Newest>, same_trail: bool) -> Live {
        Live::Vault {
            last_write,
            same_trail,
        }
    }

    #[test]
    fn nothing_to_replace_is_never_older() {
        assert!(!freshness(None, 0, Live::Empty).older());
        assert!(!freshness(Some(newest(9, 9, 1)), 9, vault(None, false)).older());
    }

    #[test]
    fn the_same_trail_is_ordered_by_sequence_whatever_the_clocks() {
        // The live vault moved on, though its clock says it wrote before the snapshot.
        let f = freshness(
            Some(newest(5, 500, 1)),
            600,
            vault(Some(newest(6, 1, 2)), true),
        );
        assert!(f.older());
        // The same event: nothing was written since.
        let f = freshness(
            Some(newest(5, 500, 1)),
            600,
            vault(Some(newest(5, 500, 1)), true),
        );
        assert!(!f.older());
    }

    #[test]
    fn another_trail_is_ordered_by_time() {
        let snap = Some(newest(50, 500, 1));
        assert!(freshness(snap.clone(), 600, vault(Some(newest(3, 601, 2)), false)).older());
        assert!(!freshness(snap, 600, vault(Some(newest(3, 599, 2)), false)).older());
    }

    #[test]
    fn an_unreadable_vault_or_an_empty_snapshot_over_a_written_vault_is_older() {
        assert!(freshness(None, 0, Live::Unreadable("damaged".into())).older());
        assert!(freshness(None, 10, vault(Some(newest(1, 1, 1)), false)).older());
    }

    #[test]
    fn the_refusal_names_both_times_and_the_flag() {
        let f = freshness(
            Some(newest(5, 1_700_000_000_000, 1)),
            1_700_000_001_000,
            vault(Some(newest(7, 1_700_000_002_000, 2)), true),
        );
        let message = f.refusal();
        for part in [
            "taken at 2023-11-14T22:13:21Z",
            "event #5 (backup) at 2023-11-14T22:13:20Z",
            "last wrote at event #7 (backup) at 2023-11-14T22:13:22Z",
            "--allow-older",
        ] {
            assert!(message.contains(part), "{message}");
        }
    }
}
