//! Retention of the audit trail: events beyond a count or older than an age are first written
//! to an archive file (fsynced), then deleted from the store in a write job that also moves
//! the [`PruneAnchor`] to the last of them, so that the kept part still verifies from a MAC
//! under the audit key. A range is pruned only if it verifies, so that pruning never vouches
//! for events that were edited.

use super::trail::{HEAD, events, head};
use super::{Anchor, AuditEvent, AuditKey, PruneAnchor, check_from_anchors};
use crate::store::{Key, Store, StoreError, TableId, WriteClass, WriteJob, Writer};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Events pruned, archived and deleted in one write job.
pub const BATCH: usize = 4096;

/// What the audit trail keeps, and where pruned events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many events (the newest).
    pub keep_events: Option<u64>,
    /// Keep events younger than this.
    pub keep_age: Option<Duration>,
    /// Receives one JSON-lines file per pruned range.
    pub archive_dir: PathBuf,
    /// Time between two prunes.
    pub interval: Duration,
}

/// What a prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    /// The archive files written, in order.
    pub files: Vec<PathBuf>,
    /// The trail now starts after this sequence number (0: nothing was ever pruned).
    pub pruned_to: u64,
}

/// Why a prune stopped.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The range to prune does not verify: it is kept, for the operator to look at.
    #[error("the audit trail does not verify at event {0} ({1}); nothing more is pruned")]
    Broken(u64, String),
    #[error("cannot write the audit archive {0}: {1}")]
    Archive(PathBuf, std::io::Error),
}

/// The next range `retention` no longer keeps, read and checked: the prune anchor it starts
/// after (as stored), the sequence number that anchor names, and the events (at most
/// [`BATCH`]). `None` once the trail is empty.
type Batch = (Option<Vec<u8>>, u64, Vec<AuditEvent>);

fn next_batch(
    store: &dyn Store,
    key: &AuditKey,
    retention: &Retention,
    now_ms: u64,
) -> Result<Option<Batch>, PruneError> {
    let r = store.read()?;
    let anchor = r.get(TableId::Meta, Key::Name(PruneAnchor::META))?;
    let keyed = r.get(TableId::Meta, Key::Name(Anchor::META))?;
    let Some((head_seq, _)) = head(&*r)? else {
        return Ok(None);
    };
    let mut check = check_from_anchors(key.clone(), keyed.as_deref(), anchor.as_deref());
    if let Some((seq, problem)) = check.problem() {
        return Err(PruneError::Broken(*seq, problem.clone()));
    }
    let start = anchor
        .as_deref()
        .and_then(|a| PruneAnchor::decode(key, a))
        .map_or(0, |(seq, _)| seq);
    let by_count = retention
        .keep_events
        .map_or(0, |keep| head_seq.saturating_sub(keep));
    let by_age = retention.keep_age.map_or(0, |age| {
        now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
    });
    let mut batch = Vec::new();
    for event in events(&*r, start, BATCH)? {
        let prunable = match &event {
            Ok(e) => e.seq <= by_count || e.time_ms < by_age,
            Err(_) => true,
        };
        if !prunable {
            break;
        }
        if !check.push(event.clone()) {
            let (seq, problem) = check.problem().cloned().unwrap_or_default();
            return Err(PruneError::Broken(seq, problem));
        }
        batch.extend(event.ok());
    }
    Ok(Some((anchor, start, batch)))
}

/// Prunes what `retention` no longer keeps as of `now_ms`, at most `max_batches` ranges of
/// [`BATCH`] events (call again for the rest). The reads of the trail and the archive's
/// writes and fsyncs run on the blocking pool, never on the async workers that serve calls.
pub async fn prune(
    store: Arc<dyn Store>,
    key: &AuditKey,
    retention: &Retention,
    now_ms: u64,
    max_batches: usize,
) -> Result<Pruned, PruneError> {
    let mut done = Pruned::default();
    for _ in 0..max_batches {
        let (reading, key_copy, settings) = (Arc::clone(&store), key.clone(), retention.clone());
        let read = tokio::task::spawn_blocking(move || {
            let Some((anchor, start, batch)) =
                next_batch(reading.as_ref(), &key_copy, &settings, now_ms)?
            else {
                return Ok(None);
            };
            let file = match batch.is_empty() {
                true => None,
                false => Some(archive(&settings.archive_dir, &batch)?),
            };
            Ok::<_, PruneError>(Some((anchor, start, batch, file)))
        })
        .await
        .map_err(|e| {
            PruneError::Store(StoreError::Backend(format!("the pruner stopped: {e}")))
        })??;
        let Some((anchor, start, batch, file)) = read else {
            break;
        };
        done.pruned_to = start;
        let (Some(last), Some(file)) = (batch.last(), file) else {
            break;
        };
        let (last_seq, last_hash) = (last.seq, last.hash);
        let seqs: Vec<u64> = batch.iter().map(|e| e.seq).collect();
        let new_anchor = PruneAnchor::encode(key, last_seq, &last_hash);
        let moved = Arc::new(AtomicBool::new(false));
        let moved_in_job = Arc::clone(&moved);
        store
            .write(WriteJob {
                client: None,
                class: WriteClass::Changes,
                apply: Box::new(move |w: &mut dyn Writer| {
                    // Only from the anchor this range was read after (one pruner runs at a
                    // time; this keeps a second one from cutting a range twice).
                    if w.get(TableId::Meta, Key::Name(PruneAnchor::META))? != anchor
                        || w.get(TableId::Meta, Key::Name(HEAD))?.is_none()
                    {
                        moved_in_job.store(true, Ordering::SeqCst);
                        return Ok(());
                    }
                    for &seq in &seqs {
                        w.delete(TableId::Audit, Key::Seq(seq))?;
                    }
                    w.put(TableId::Meta, Key::Name(PruneAnchor::META), &new_anchor)
                }),
            })
            .await?;
        if moved.load(Ordering::SeqCst) {
            break;
        }
        done.events += batch.len() as u64;
        done.files.push(file);
        done.pruned_to = last_seq;
        if batch.len() < BATCH {
            break;
        }
    }
    Ok(done)
}

/// One event as a JSON line: what `sharevault audit export` prints and an archive file of
/// pruned events holds, so that the two read alike.
#[derive(serde::Serialize)]
pub struct ExportLine<'a> {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub actor: &'a str,
    pub action: &'a str,
    pub client_id: &'a str,
    pub backup_method: &'a str,
    pub outcome: &'a str,
    /// Hex.
    pub hash: &'a str,
    pub prev_hash: &'a str,
}

/// The time of an event as `audit export` writes it (RFC 3339, UTC).
fn rfc3339(time_ms: u64) -> String {
    prost_types::Timestamp {
        seconds: i64::try_from(time_ms / 1000).unwrap_or(i64::MAX),
        nanos: ((time_ms % 1000) * 1_000_000) as i32,
    }
    .to_string()
}

/// Writes `events` to `audit-<first seq>-<last seq>.jsonl` in `dir`, durably: a new temp file
/// at a random name (created exclusively, never through a symlink), fsynced, renamed into
/// place, and the directory fsynced. A file left by an earlier prune whose commit failed is
/// replaced (the rename replaces a symlink there too, never following it).
/// Creates a new private file at `path`: never through a symlink (`O_NOFOLLOW`), never over
/// a file already there (`O_EXCL`), so that someone who can write the directory cannot make
/// the daemon write to a file of their choosing.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32)
        .mode(0o600)
        .open(path)
}

/// The temp file an archive is written to before it is renamed into place: a random name,
/// which nobody can plant anything at in advance.
fn temp_name(name: &str) -> Result<String, std::io::Error> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random)
        .map_err(|e| std::io::Error::other(format!("the system random number generator: {e}")))?;
    Ok(format!(".{name}.{}.tmp", hex::encode(random)))
}

/// Removes the temp files an earlier prune of the same range left (it stopped before the
/// rename). `remove_file` removes a symlink itself, never what it points to.
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if file.starts_with(&prefix) && file.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn archive(dir: &Path, events: &[AuditEvent]) -> Result<PathBuf, PruneError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(PruneError::Archive(
            dir.to_path_buf(),
            std::io::Error::other("nothing to archive"),
        ));
    };
    let name = format!("audit-{:020}-{:020}.jsonl", first.seq, last.seq);
    let path = dir.join(&name);
    let failed = |e: std::io::Error| PruneError::Archive(path.clone(), e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    remove_stale_temps(dir, &name);
    let temp = dir.join(temp_name(&name).map_err(failed)?);
    let file = create_private(&temp).map_err(failed)?;
    let mut out = std::io::BufWriter::new(file);
    for e in events {
        let (hash, prev_hash) = (hex::encode(e.hash), hex::encode(e.prev_hash));
        let line = ExportLine {
            seq: e.seq,
            time: rfc3339(e.time_ms),
            actor: &e.actor,
            action: &e.action,
            client_id: &e.client_id,
            backup_method: &e.backup_method,
            outcome: &e.outcome,
            hash: &hash,
            prev_hash: &prev_hash,
        };
        serde_json::to_writer(&mut out, &line).map_err(|e| failed(e.into()))?;
        out.write_all(b"\n").map_err(failed)?;
    }
    let file = out.into_inner().map_err(|e| failed(e.into_error()))?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temp, &path).map_err(failed)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed)?;
    Ok(path)
}

#[cfg(test)]
mod tests;
