//! The file operations the page journal uses, for the database file and its journals alike.
//!
//! In production they are `std::fs::File`'s positioned reads and writes and `fdatasync`; the
//! journal's crash-simulation tests put a simulated disk in their place (`disk_sim`), which
//! keeps what is synced apart from what is not and can "crash" at any write or sync.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// One file, as the journal uses it.
pub trait Disk: Send + Sync + 'static {
    /// Fills `out` from `at`; fails if the file ends first.
    fn read_at(&self, out: &mut [u8], at: u64) -> io::Result<()>;
    /// Writes all of `data` at `at`.
    fn write_at(&self, data: &[u8], at: u64) -> io::Result<()>;
    /// Makes the file `len` bytes long (new bytes read as zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every write and length change so far durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
}

impl Disk for File {
    fn read_at(&self, out: &mut [u8], at: u64) -> io::Result<()> {
        self.read_exact_at(out, at)
    }

    fn write_at(&self, data: &[u8], at: u64) -> io::Result<()> {
        self.write_all_at(data, at)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// A file in memory, for stores that keep nothing (tests, the bench's stand-ins).
#[derive(Debug, Default)]
pub struct MemDisk(std::sync::Mutex<Vec<u8>>);

impl MemDisk {
    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Disk for MemDisk {
    fn read_at(&self, out: &mut [u8], at: u64) -> io::Result<()> {
        let bytes = self.bytes();
        let from = usize::try_from(at).map_err(io::Error::other)?;
        let src = bytes
            .get(from..from + out.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&self, data: &[u8], at: u64) -> io::Result<()> {
        let mut bytes = self.bytes();
        let from = usize::try_from(at).map_err(io::Error::other)?;
        if bytes.len() < from + data.len() {
            bytes.resize(from + data.len(), 0);
        }
        bytes[from..from + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.bytes().resize(len, 0);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.bytes().len() as u64)
    }
}
