//! Changes held back until a job decides to keep them.

use super::{Key, KeyBuf, Range, Reader, StoreError, TableId, Visit, Writer};
use std::collections::BTreeMap;

/// A [`Writer`] over another that holds every change in memory until [`Staged::keep`]: a
/// job refused half-way by the vault's rules drops its `Staged` and leaves the transaction
/// exactly as it found it, on every backend. Reads see the staged changes over the state
/// below.
pub struct Staged<'w> {
    below: &'w mut dyn Writer,
    /// (table, key) → the new value, or `None` for a removal.
    changes: BTreeMap<(TableId, KeyBuf), Option<Vec<u8>>>,
}

impl<'w> Staged<'w> {
    pub fn new(below: &'w mut dyn Writer) -> Self {
        Self {
            below,
            changes: BTreeMap::new(),
        }
    }

    /// Applies the staged changes to the writer below, in key order.
    pub fn keep(self) -> Result<(), StoreError> {
        for ((table, key), value) in self.changes {
            match value {
                Some(value) => self.below.put(table, key.as_key(), &value)?,
                None => {
                    self.below.delete(table, key.as_key())?;
                }
            }
        }
        Ok(())
    }

    fn staged(&self, table: TableId) -> impl Iterator<Item = (&KeyBuf, &Option<Vec<u8>>)> {
        self.changes
            .range((table, KeyBuf::Client(String::new(), String::new()))..)
            .take_while(move |((t, _), _)| *t == table)
            .map(|((_, k), v)| (k, v))
    }
}

impl Reader for Staged<'_> {
    fn get(&self, table: TableId, key: Key<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        match self.changes.get(&(table, key.to_buf())) {
            Some(value) => Ok(value.clone()),
            None => self.below.get(table, key),
        }
    }

    fn scan(
        &self,
        table: TableId,
        range: Range<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let staged: Vec<_> = self
            .staged(table)
            .filter(|(k, _)| range.contains(k))
            .collect();
        if staged.is_empty() {
            return self.below.scan(table, range, visit);
        }
        // Merge the rows below with the staged ones; jobs scan a client's rows, a bounded
        // number.
        let mut rows: BTreeMap<KeyBuf, Option<Vec<u8>>> = BTreeMap::new();
        self.below.scan(table, range, &mut |key, value| {
            rows.insert(key.to_buf(), Some(value.to_vec()));
            Ok(true)
        })?;
        for (key, value) in staged {
            rows.insert(key.clone(), value.clone());
        }
        for (key, value) in &rows {
            if let Some(value) = value
                && !visit(key.as_key(), value)?
            {
                break;
            }
        }
        Ok(())
    }

    fn len(&self, table: TableId) -> Result<u64, StoreError> {
        let mut len = self.below.len(table)?;
        for (key, value) in self.staged(table) {
            let below = self.below.get(table, key.as_key())?.is_some();
            match (below, value.is_some()) {
                (false, true) => len += 1,
                (true, false) => len -= 1,
                _ => {}
            }
        }
        Ok(len)
    }
}

impl Writer for Staged<'_> {
    fn put(&mut self, table: TableId, key: Key<'_>, value: &[u8]) -> Result<(), StoreError> {
        self.changes
            .insert((table, key.to_buf()), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: TableId, key: Key<'_>) -> Result<bool, StoreError> {
        let existed = self.get(table, key)?.is_some();
        self.changes.insert((table, key.to_buf()), None);
        Ok(existed)
    }
}
