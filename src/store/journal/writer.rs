//! The journal's threads: sealing and appending records, writing their pages into the
//! database file, and checkpoints.

use super::*;

impl Inner {
    pub(super) fn failure(&self) -> Option<String> {
        guard(&self.queue).failed.clone()
    }

    /// Seals the record being filled, appends it to the active journal and fsyncs that: once
    /// this returns, the commit is durable. The record then waits for the journal thread to
    /// write its pages to the database file.
    pub(super) fn seal(&self) -> io::Result<()> {
        let mut pending = guard(&self.pending);
        if pending.buf.len() == HEADER {
            return self.failure().map_or(Ok(()), |f| Err(io::Error::other(f)));
        }
        let spare = {
            let mut queue = guard(&self.queue);
            while queue.queued_bytes > MAX_QUEUED_BYTES && queue.failed.is_none() {
                queue = wait(&self.queue_changed, queue);
            }
            if let Some(failure) = &queue.failed {
                return Err(io::Error::other(failure.clone()));
            }
            queue.spare.pop().unwrap_or_default()
        };
        let mut record = std::mem::replace(&mut pending.buf, fresh_buffer(spare));
        let seq = pending.seq;
        pending.seq += 1;
        drop(pending);
        let appended = if (record.len() - HEADER) as u64 > MAX_RECORD {
            Err(io::Error::other(format!(
                "a commit of more than {MAX_RECORD} bytes of pages"
            )))
        } else {
            self.append(seq, &mut record)
        };
        if let Err(err) = appended {
            self.fail(&err);
            return Err(err);
        }
        let mut queue = guard(&self.queue);
        queue.queued_bytes += record.len() as u64;
        queue.records.push_back((seq, record));
        self.queue_changed.notify_all();
        Ok(())
    }

    /// Fails every later commit. The journals are kept for the next open to replay.
    pub(super) fn fail(&self, err: &io::Error) {
        tracing::error!(error = %err, "journal write failed");
        let mut queue = guard(&self.queue);
        queue.failed = Some(format!("journal write failed: {err}"));
        queue.records.clear();
        self.queue_changed.notify_all();
    }

    /// Writes the pages of durable records to the database file, in order, and drops them
    /// from the overlay; until the store closes.
    pub(super) fn run_apply(&self) {
        let mut batch = Vec::new();
        loop {
            let mut queue = guard(&self.queue);
            while queue.records.is_empty() && !queue.closing && queue.failed.is_none() {
                queue = wait(&self.queue_changed, queue);
            }
            if queue.records.is_empty() || queue.failed.is_some() {
                return;
            }
            batch.extend(queue.records.drain(..));
            drop(queue);
            let last = batch.last().map_or(0, |(seq, _)| *seq);
            let applied = batch
                .iter()
                .try_for_each(|(_, record)| apply(self.main.as_ref(), &record[HEADER..]));
            if let Err(err) = applied {
                self.main_lost.store(true, Ordering::SeqCst);
                self.fail(&err);
                return;
            }
            // The pages are in the database file now: readers find them there.
            self.overlay
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|_, page| page.record > last);
            let mut queue = guard(&self.queue);
            queue.applied = last;
            for (_, record) in batch.drain(..) {
                queue.queued_bytes -= record.len() as u64;
                if queue.spare.len() < 4 {
                    queue.spare.push(record);
                }
            }
            self.queue_changed.notify_all();
        }
    }

    /// Appends record `seq` to the active journal (switching journals when it is full) and
    /// fsyncs it.
    pub(super) fn append(&self, seq: u64, record: &mut Vec<u8>) -> io::Result<()> {
        let mut log = guard(&self.log);
        let len = padded(record.len() as u64);
        if log.tail > 0 && log.tail + len > self.capacity {
            // Switch journals once the other one's records are all in the database file.
            while !log.other_free && log.failed.is_none() {
                log = wait(&self.log_changed, log);
            }
            if let Some(failure) = &log.failed {
                return Err(io::Error::other(failure.clone()));
            }
            log.active ^= 1;
            log.generation += 1;
            log.tail = 0;
            log.other_free = false;
            log.checkpoint_due = true;
            log.checkpoint_upto = seq - 1;
            self.log_changed.notify_all();
        }
        let journal = &self.journals[log.active];
        let payload_len = (record.len() - HEADER) as u64;
        let crc = checksum(log.generation, &record[HEADER..]);
        record[..8].copy_from_slice(MAGIC);
        record[8..24].copy_from_slice(&self.id);
        record[24..32].copy_from_slice(&log.generation.to_le_bytes());
        record[32..40].copy_from_slice(&payload_len.to_le_bytes());
        record[40..44].copy_from_slice(&crc.to_le_bytes());
        let header_crc = header_checksum(record);
        record[44..48].copy_from_slice(&header_crc.to_le_bytes());
        let unpadded = record.len();
        record.resize(len as usize, 0);
        let written = journal.write_at(record, log.tail);
        record.truncate(unpadded);
        written?;
        log.tail += len;
        journal.sync()
    }

    /// Fsyncs the database file whenever a journal has been filled, then frees that journal.
    pub(super) fn run_checkpointer(&self) {
        let mut log = guard(&self.log);
        loop {
            while !log.checkpoint_due && !log.closing {
                log = wait(&self.log_changed, log);
            }
            if log.closing {
                return;
            }
            log.checkpoint_due = false;
            let upto = log.checkpoint_upto;
            drop(log);
            // Every record of the full journal must be in the database file before the fsync.
            let mut queue = guard(&self.queue);
            while queue.applied < upto && queue.failed.is_none() {
                queue = wait(&self.queue_changed, queue);
            }
            let failed = queue.failed.clone();
            drop(queue);
            let synced = match failed {
                Some(failure) => Err(io::Error::other(failure)),
                None => self.main.sync(),
            };
            if let Err(err) = &synced {
                // After a failed fsync the kernel may have dropped the file's dirty pages, so
                // the file can no longer be read for what it was written: every later commit
                // fails at once, and the reopen replays both journals into the file.
                tracing::error!(error = %err, "checkpoint of the database file failed");
                self.main_lost.store(true, Ordering::SeqCst);
                self.fail(&io::Error::other(format!("checkpoint failed: {err}")));
            }
            log = guard(&self.log);
            match synced {
                Ok(()) => log.other_free = true,
                Err(err) => log.failed = Some(format!("checkpoint failed: {err}")),
            }
            self.log_changed.notify_all();
        }
    }
}
