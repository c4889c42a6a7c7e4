//! A simulated disk for crash tests: each file keeps what has been synced apart from what has
//! not, and the disk can "crash" at its N-th write, length change or sync. From then on every
//! change fails (the process is gone), and [`SimDisk::crash_image`] gives what the disk would
//! hold: the synced state, plus none, all or some of the changes made since the last sync.

use super::disk::Disk;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Clone)]
enum Change {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Clone, Default)]
struct SimFile {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    /// Changes since the last sync, in order.
    unsynced: Vec<Change>,
}

fn apply(bytes: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write(at, data) => {
            let end = *at as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*at as usize..end].copy_from_slice(data);
        }
        Change::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

/// What survives of the changes not yet synced when the disk crashes.
#[derive(Clone, Copy, Debug)]
pub enum Survivors {
    /// None (a power loss that wrote nothing back).
    None,
    /// All (a process crash: the OS keeps them).
    All,
    /// None, except the first half of the very last write, which is torn.
    TornLast,
    /// Each one independently, by the bits of this seed, in order.
    Some(u64),
}

struct State {
    files: Vec<SimFile>,
    changes: u64,
    crash_at: Option<u64>,
    crashed: bool,
    /// The last change made, by file.
    last: Option<usize>,
    /// (file, n): the n-th sync of that file (counting from 1) fails and drops the file's
    /// unsynced changes, as Linux may after a failed fsync.
    fail_sync: Option<(usize, u64)>,
    /// The failed sync's unsynced changes stay readable until [`SimDisk::evict_lost`] (the
    /// kernel evicts the pages later), instead of vanishing at once.
    defer_loss: bool,
    /// A file whose failed sync lost changes not yet evicted, and whether that sync ran on
    /// the journal's checkpoint thread (whose caller learns of it later).
    lost: Option<(usize, bool)>,
    syncs: Vec<u64>,
    largest_read: usize,
    /// Crash at the change after the next sync of file 1 or 2.
    crash_after_journal_sync: bool,
}

/// A set of simulated files sharing one crash point.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

/// One simulated file.
pub struct SimFileHandle {
    state: Arc<Mutex<State>>,
    index: usize,
}

impl SimDisk {
    /// Files with these synced contents, crashing at change number `crash_at` (from 1).
    pub fn new(files: Vec<Vec<u8>>, crash_at: Option<u64>) -> Self {
        let n = files.len();
        let files = files
            .into_iter()
            .map(|bytes| SimFile {
                durable: bytes.clone(),
                volatile: bytes,
                unsynced: Vec::new(),
            })
            .collect();
        Self {
            state: Arc::new(Mutex::new(State {
                files,
                changes: 0,
                crash_at,
                crashed: false,
                last: None,
                fail_sync: None,
                defer_loss: false,
                lost: None,
                syncs: vec![0; n],
                largest_read: 0,
                crash_after_journal_sync: false,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn file(&self, index: usize) -> Box<dyn Disk> {
        Box::new(SimFileHandle {
            state: Arc::clone(&self.state),
            index,
        })
    }

    pub fn fail_sync(&self, file: usize, nth: u64) {
        self.state().fail_sync = Some((file, nth));
    }

    /// Like [`Self::fail_sync`], but what the failed sync loses stays readable until
    /// [`Self::evict_lost`].
    pub fn fail_sync_deferred(&self, file: usize, nth: u64) {
        let mut state = self.state();
        state.fail_sync = Some((file, nth));
        state.defer_loss = true;
    }

    /// Whether a failed sync lost changes that are still readable: Some(true) when that sync
    /// was a checkpoint's.
    pub fn lost(&self) -> Option<bool> {
        self.state().lost.map(|(_, checkpoint)| checkpoint)
    }

    /// The pages a failed sync lost are evicted: reads find the synced contents, with the
    /// changes made since the failure.
    pub fn evict_lost(&self) {
        let mut state = self.state();
        if let Some((i, _)) = state.lost.take() {
            let file = &mut state.files[i];
            let mut bytes = file.durable.clone();
            for change in &file.unsynced {
                apply(&mut bytes, change);
            }
            file.volatile = bytes;
        }
    }

    pub fn crash_after_next_sync_of_a_journal(&self) {
        self.state().crash_after_journal_sync = true;
    }

    pub fn syncs(&self, file: usize) -> u64 {
        self.state().syncs[file]
    }

    pub fn changes(&self) -> u64 {
        self.state().changes
    }

    pub fn crashed(&self) -> bool {
        self.state().crashed
    }

    pub fn largest_read(&self) -> usize {
        self.state().largest_read
    }

    /// The contents of every file as the process sees them.
    pub fn contents(&self) -> Vec<Vec<u8>> {
        self.state()
            .files
            .iter()
            .map(|f| f.volatile.clone())
            .collect()
    }

    /// What the disk holds after a crash now.
    pub fn crash_image(&self, survivors: Survivors) -> Vec<Vec<u8>> {
        let state = self.state();
        let mut bit = 0u32;
        state
            .files
            .iter()
            .enumerate()
            .map(|(i, file)| {
                let mut bytes = file.durable.clone();
                let n = file.unsynced.len();
                for (j, change) in file.unsynced.iter().enumerate() {
                    let keep = match survivors {
                        Survivors::None => false,
                        Survivors::All => true,
                        Survivors::TornLast => {
                            if state.last == Some(i)
                                && j + 1 == n
                                && let Change::Write(at, data) = change
                            {
                                let half = Change::Write(*at, data[..data.len() / 2].to_vec());
                                apply(&mut bytes, &half);
                            }
                            false
                        }
                        Survivors::Some(seed) => {
                            bit = (bit + 1) % 64;
                            seed >> bit & 1 == 1
                        }
                    };
                    if keep {
                        apply(&mut bytes, change);
                    }
                }
                bytes
            })
            .collect()
    }
}

impl SimFileHandle {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a change; fails once the disk has crashed.
    fn change(&self, state: &mut State) -> io::Result<()> {
        if !state.crashed {
            state.changes += 1;
            state.crashed = state.crash_at.is_some_and(|at| state.changes >= at);
        }
        if state.crashed {
            return Err(io::Error::other("simulated crash"));
        }
        Ok(())
    }

    fn record(&self, change: Change) -> io::Result<()> {
        let mut state = self.state();
        self.change(&mut state)?;
        state.last = Some(self.index);
        let file = &mut state.files[self.index];
        apply(&mut file.volatile, &change);
        file.unsynced.push(change);
        Ok(())
    }
}

impl Disk for SimFileHandle {
    fn read_at(&self, out: &mut [u8], at: u64) -> io::Result<()> {
        let mut state = self.state();
        state.largest_read = state.largest_read.max(out.len());
        let bytes = &state.files[self.index].volatile;
        let end = at as usize + out.len();
        if end > bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&bytes[at as usize..end]);
        Ok(())
    }

    fn write_at(&self, data: &[u8], at: u64) -> io::Result<()> {
        self.record(Change::Write(at, data.to_vec()))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.record(Change::SetLen(len))
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.state();
        self.change(&mut state)?;
        state.syncs[self.index] += 1;
        let nth = state.syncs[self.index];
        let fails = state.fail_sync == Some((self.index, nth));
        if fails {
            // The changes not yet synced are lost: marked clean, a later sync does not write
            // them, and once evicted they read as the synced contents.
            let checkpoint = std::thread::current().name() == Some("sharevault-checkpoint");
            state.lost = Some((self.index, checkpoint));
            state.files[self.index].unsynced.clear();
            if !state.defer_loss {
                drop(state);
                SimDisk {
                    state: Arc::clone(&self.state),
                }
                .evict_lost();
            }
            return Err(io::Error::other("simulated fsync failure"));
        }
        let file = &mut state.files[self.index];
        for change in std::mem::take(&mut file.unsynced) {
            apply(&mut file.durable, &change);
        }
        if state.crash_after_journal_sync && self.index > 0 {
            state.crash_at = Some(state.changes + 1);
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.state().files[self.index].volatile.len() as u64)
    }
}
