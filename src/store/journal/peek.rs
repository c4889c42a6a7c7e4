//! The database as the next open will see it, without writing a byte: the database file, read
//! only, with the whole records of its journals replayed over it in memory.
//!
//! The daemon checks what would refuse its start (the seal, the master key) on this view
//! before it opens the database for writing, since an open replays and clears the journals
//! and gives the file a fresh identity: a refused start changes no byte of the data dir.

use super::*;

/// A copy-on-write view of a read-only file: writes stay in memory, page by page.
#[derive(Debug)]
pub struct Overlay {
    base: Option<File>,
    /// The base file's bytes that still show through (a shorter length cuts them).
    base_len: AtomicU64,
    len: AtomicU64,
    pages: Mutex<BTreeMap<u64, Box<[u8]>>>,
}

impl Overlay {
    fn new(base: Option<File>) -> io::Result<Self> {
        let len = match &base {
            Some(file) => file.metadata()?.len(),
            None => 0,
        };
        Ok(Self {
            base,
            base_len: AtomicU64::new(len),
            len: AtomicU64::new(len),
            pages: Mutex::new(BTreeMap::new()),
        })
    }

    /// Page `index` as it reads now (zeros past the base file).
    fn page(&self, pages: &BTreeMap<u64, Box<[u8]>>, index: u64) -> io::Result<Box<[u8]>> {
        if let Some(page) = pages.get(&index) {
            return Ok(page.clone());
        }
        let mut page = vec![0u8; ALIGN as usize].into_boxed_slice();
        let at = index * ALIGN;
        let base_len = self.base_len.load(Ordering::SeqCst);
        if let Some(base) = &self.base
            && at < base_len
        {
            let n = (base_len - at).min(ALIGN) as usize;
            base.read_at(&mut page[..n], at)?;
        }
        Ok(page)
    }
}

impl Disk for Overlay {
    fn read_at(&self, out: &mut [u8], at: u64) -> io::Result<()> {
        let end = at + out.len() as u64;
        if end > self.len.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the database file",
            ));
        }
        let pages = guard(&self.pages);
        let mut done = 0usize;
        while done < out.len() {
            let pos = at + done as u64;
            let (index, within) = (pos / ALIGN, (pos % ALIGN) as usize);
            let n = (ALIGN as usize - within).min(out.len() - done);
            let page = self.page(&pages, index)?;
            out[done..done + n].copy_from_slice(&page[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, data: &[u8], at: u64) -> io::Result<()> {
        let mut pages = guard(&self.pages);
        let mut done = 0usize;
        while done < data.len() {
            let pos = at + done as u64;
            let (index, within) = (pos / ALIGN, (pos % ALIGN) as usize);
            let n = (ALIGN as usize - within).min(data.len() - done);
            let mut page = self.page(&pages, index)?;
            page[within..within + n].copy_from_slice(&data[done..done + n]);
            pages.insert(index, page);
            done += n;
        }
        self.len.fetch_max(at + data.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut pages = guard(&self.pages);
        if len < self.len.load(Ordering::SeqCst) {
            // What lies past the new end reads as zeros if the file grows again.
            self.base_len.fetch_min(len, Ordering::SeqCst);
            let first_past = len.div_ceil(ALIGN);
            pages.split_off(&first_past);
            if !len.is_multiple_of(ALIGN)
                && let Some(page) = pages.get_mut(&(len / ALIGN))
            {
                page[(len % ALIGN) as usize..].fill(0);
            }
        }
        self.len.store(len, Ordering::SeqCst);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len.load(Ordering::SeqCst))
    }
}

impl StorageBackend for Overlay {
    fn len(&self) -> io::Result<u64> {
        Disk::size(self)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.read_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        Disk::set_len(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_at(data, offset)
    }

    fn close(&self) -> io::Result<()> {
        Ok(())
    }
}

fn read_only(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The database file at `path` with its journals' records replayed over it, in memory; `None`
/// if it holds no database yet (absent, empty, or only its identity). Nothing is written.
pub fn peek(path: &Path) -> io::Result<Option<Overlay>> {
    let main = Overlay::new(read_only(path)?)?;
    let [j0, j1] = journal_paths(path);
    let journals: [Box<dyn Disk>; 2] = [
        Box::new(Overlay::new(read_only(&j0)?)?),
        Box::new(Overlay::new(read_only(&j1)?)?),
    ];
    replay(&main, &journals)?;
    if main.size()? == 0 || holds_only_identity(&main)? {
        return Ok(None);
    }
    Ok(Some(main))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_reads_its_writes_over_the_file_and_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 10_000]).unwrap();
        let view = Overlay::new(read_only(&path).unwrap()).unwrap();
        view.write_at(&[2u8; 5000], 3000).unwrap();
        let mut out = vec![0u8; 10_000];
        view.read_at(&mut out, 0).unwrap();
        assert!(out[..3000].iter().all(|&b| b == 1));
        assert!(out[3000..8000].iter().all(|&b| b == 2));
        assert!(out[8000..].iter().all(|&b| b == 1));
        Disk::set_len(&view, 4000).unwrap();
        Disk::set_len(&view, 9000).unwrap();
        view.read_at(&mut out[..9000], 0).unwrap();
        assert!(out[3000..4000].iter().all(|&b| b == 2));
        assert!(out[4000..9000].iter().all(|&b| b == 0));
        assert!(view.read_at(&mut [0u8; 2], 8999).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), vec![1u8; 10_000]);
    }
}
