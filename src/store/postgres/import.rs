//! Bulk imports (a restore, a migration): one transaction under the write lock.

use super::session::{CallFuture, Session};
use super::{PgStore, rows};
use crate::store::{Key, KeyBuf, Range, Reader, StoreError, TableId, Visit};
use std::cell::RefCell;

/// Rows written per statement.
const CHUNK: usize = 1000;

/// Shown the vault an import would replace (`None`: there is none) before it is removed.
pub type ReplaceCheck<'c> = dyn FnMut(Option<&dyn Reader>) -> Result<(), StoreError> + 'c;

/// An import under way: nothing is visible until [`PgImport::commit`]; dropped, it is rolled
/// back.
pub struct PgImport {
    session: Session,
}

impl PgStore {
    /// Starts an import: takes the write lock (daemons' writes wait, or fail after their
    /// timeout, until it ends) and checks that the database holds no vault, or with
    /// `replace` removes the one it holds (in the same transaction). `check` is shown the
    /// vault it replaces (`None` when the database holds none) under the lock and before
    /// anything is removed; an error from it abandons the import, leaving the database as it
    /// was.
    pub fn begin_import(
        &self,
        replace: bool,
        check: &mut ReplaceCheck<'_>,
    ) -> Result<PgImport, StoreError> {
        let mut session = Session::open(&self.shared, super::writer::BEGIN_SQL)?;
        let occupied = session.call(|c| -> CallFuture<'_, bool> {
            Box::pin(async move {
                c.query_one("SELECT EXISTS (SELECT 1 FROM sharevault_records)", &[])
                    .await?
                    .try_get(0)
            })
        })?;
        // A daemon serving this database would go on with the keys and the state it read
        // before: refused while any is live, and the rows of those gone removed with it.
        let live = PgStore::live_in(&mut session)?;
        if !live.is_empty() {
            let names: Vec<String> = live.iter().map(|m| m.describe()).collect();
            return Err(StoreError::Backend(format!(
                "{} sharevault daemon(s) serve the database {} ({}): stop every daemon on it \
                 first (a daemon counts as live until {} s after its last heartbeat)",
                live.len(),
                self.describe,
                names.join(", "),
                crate::store::cluster::LIVE_WITHIN.as_secs()
            )));
        }
        session.call(|c| -> CallFuture<'_, ()> {
            Box::pin(async move { c.batch_execute("DELETE FROM sharevault_daemons").await })
        })?;
        if occupied && !replace {
            return Err(StoreError::Backend(format!(
                "the database {} already holds a vault; pass --replace to replace it",
                self.describe
            )));
        }
        if occupied {
            let live = Live(RefCell::new(&mut session));
            check(Some(&live))?;
            session.call(|c| -> CallFuture<'_, ()> {
                Box::pin(async move { c.batch_execute("DELETE FROM sharevault_records").await })
            })?;
        } else {
            check(None)?;
        }
        Ok(PgImport { session })
    }
}

/// The vault an import replaces, read in the import's transaction before it is removed.
struct Live<'s>(RefCell<&'s mut Session>);

impl Reader for Live<'_> {
    fn get(&self, table: TableId, key: Key<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        rows::get(&mut self.0.borrow_mut(), table, &rows::encode(table, key)?)
    }

    fn scan(
        &self,
        table: TableId,
        range: Range<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        rows::scan(&mut self.0.borrow_mut(), table, &range, &mut |k, v| {
            visit(rows::decode(table, k)?.as_key(), v)
        })
    }

    fn len(&self, table: TableId) -> Result<u64, StoreError> {
        rows::count(&mut self.0.borrow_mut(), table)
    }
}

impl PgImport {
    /// Writes `rows` (a row met twice keeps its last value); returns how many were written.
    pub fn write(
        &mut self,
        rows: &mut dyn Iterator<Item = Result<(TableId, KeyBuf, Vec<u8>), StoreError>>,
    ) -> Result<u64, StoreError> {
        let mut written = 0u64;
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            match rows.next() {
                Some(row) => {
                    let (table, key, value) = row?;
                    chunk.push((
                        i16::from(table as u8),
                        rows::encode(table, key.as_key())?,
                        value,
                    ));
                    written += 1;
                    if chunk.len() == CHUNK {
                        rows::apply(&mut self.session, std::mem::take(&mut chunk), Vec::new())?;
                    }
                }
                None => {
                    rows::apply(&mut self.session, chunk, Vec::new())?;
                    return Ok(written);
                }
            }
        }
    }

    /// Makes the import visible, durably.
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.session.call(|c| -> CallFuture<'_, ()> {
            Box::pin(async move { c.batch_execute("COMMIT").await })
        })?;
        self.session.committed();
        Ok(())
    }
}
