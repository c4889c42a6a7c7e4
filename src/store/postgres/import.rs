//! Bulk imports (a restore, a migration): one transaction under the write lock.

use super::session::{CallFuture, Session};
use super::{PgStore, rows};
use crate::store::{KeyBuf, StoreError, TableId};

/// Rows written per statement.
const CHUNK: usize = 1000;

/// An import under way: nothing is visible until [`PgImport::commit`]; dropped, it is rolled
/// back.
pub struct PgImport {
    session: Session,
}

impl PgStore {
    /// Starts an import: takes the write lock (daemons' writes wait, or fail after their
    /// timeout, until it ends) and checks that the database holds no vault, or with
    /// `replace` removes the one it holds (in the same transaction).
    pub fn begin_import(&self, replace: bool) -> Result<PgImport, StoreError> {
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
            session.call(|c| -> CallFuture<'_, ()> {
                Box::pin(async move { c.batch_execute("DELETE FROM sharevault_records").await })
            })?;
        }
        Ok(PgImport { session })
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
