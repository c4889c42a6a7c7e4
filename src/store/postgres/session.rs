//! One pooled connection, driven from synchronous code.
//!
//! The store's [`crate::store::Reader`] and [`crate::store::Writer`] are synchronous: the
//! vault calls them inline on its async workers, on the blocking pool, and the write jobs on
//! the writer thread. A [`Session`] polls each statement's future on the calling thread and
//! parks it until the answer is in ([`block_on`]), which any thread may do (as a `pread`
//! waits for the disk): the connections are driven by the store's own runtime, which never
//! waits on them.
//! Every call is bounded by a timeout; a connection that timed out or failed is dropped, not
//! returned to the pool, so no half-finished transaction is ever reused.

use super::Shared;
use crate::store::StoreError;
use deadpool_postgres::{Object, Pool};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A future borrowing the connection.
pub type CallFuture<'c, T> =
    Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>>;

/// Wakes a thread parked in [`block_on`].
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` on this thread, parking it between polls, with the store's runtime entered:
/// the connections' tasks and the timers run on that runtime, and wake this thread when the
/// answer is in. Any thread may wait so but the store runtime's own.
pub fn block_on<T>(shared: &Shared, fut: impl Future<Output = T>) -> T {
    let _entered = shared.runtime.enter();
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Runs `fut` and waits for it, for at most the store's timeout.
pub fn block<T>(
    shared: &Shared,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    block_on(shared, async {
        tokio::time::timeout(shared.timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Backend(
                    "PostgreSQL did not answer in time".into(),
                ))
            })
    })
}

/// Whether an error is one a retried transaction gets past: a serialisation failure, a
/// deadlock, a unique-key conflict.
pub fn retriable(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    err.code().is_some_and(|code| {
        *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::UNIQUE_VIOLATION
    })
}

/// A driver error as a store error: its SQLSTATE, or the driver's words for a connection
/// failure. Never the statement's parameters (PostgreSQL's DETAIL may quote them).
pub fn store_error(err: &tokio_postgres::Error) -> StoreError {
    match err.code() {
        Some(code) => {
            StoreError::Backend(format!("PostgreSQL refused a statement ({})", code.code()))
        }
        None if err.is_closed() => {
            StoreError::Backend("the connection to PostgreSQL was lost".into())
        }
        None => {
            // The causes (a refused connection, an untrusted certificate) say what to fix.
            let mut message = format!("PostgreSQL: {err}");
            let mut cause = std::error::Error::source(err);
            while let Some(inner) = cause {
                message.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            StoreError::Backend(message)
        }
    }
}

/// Takes a connection from the pool.
pub fn connect(shared: &Arc<Shared>) -> Result<Object, StoreError> {
    let pool: Pool = shared.pool.clone();
    let health = Arc::clone(shared);
    block(shared, async move {
        pool.get().await.map_err(|e| {
            let err = match e {
                deadpool_postgres::PoolError::Timeout(_) => StoreError::Backend(
                    "no connection to PostgreSQL could be had in time".to_owned(),
                ),
                deadpool_postgres::PoolError::Backend(e) => store_error(&e),
                other => StoreError::Backend(format!("cannot connect to PostgreSQL: {other}")),
            };
            health.set_unreachable(&err);
            err
        })
    })
}

/// One connection, in a transaction once [`Session::call`] has sent `begin`.
pub struct Session {
    shared: Arc<Shared>,
    conn: Option<Object>,
    /// Statements sent ahead of the next call, in the same round trip.
    begin: Option<&'static str>,
    /// The last error was a conflict a retry gets past.
    pub conflicted: bool,
    /// The last call's answer never came (the connection broke, or the timeout passed):
    /// what it sent may or may not have been carried out.
    pub lost: bool,
    /// The transaction was committed: nothing to roll back.
    done: bool,
}

impl Session {
    /// A connection from the pool; `begin` is sent with the first call.
    pub fn open(shared: &Arc<Shared>, begin: &'static str) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Some(connect(shared)?),
            shared: Arc::clone(shared),
            begin: Some(begin),
            conflicted: false,
            lost: false,
            done: false,
        })
    }

    /// A connection from the pool with no transaction: each statement is its own.
    pub fn autocommit(shared: &Arc<Shared>) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Some(connect(shared)?),
            shared: Arc::clone(shared),
            begin: None,
            conflicted: false,
            lost: false,
            done: true,
        })
    }

    /// Runs `f` on the connection (after the pending `begin`) and waits for it.
    pub fn call<T>(
        &mut self,
        f: impl for<'c> FnOnce(&'c Object) -> CallFuture<'c, T>,
    ) -> Result<T, StoreError> {
        let conn = self
            .conn
            .take()
            .ok_or_else(|| StoreError::Backend("the connection to PostgreSQL was lost".into()))?;
        let begin = self.begin.take();
        let timeout = self.shared.timeout;
        let answer = block_on(&self.shared, async {
            let work = async {
                if let Some(begin) = begin {
                    // Pipelined: both go out before either answer comes back.
                    let (begun, out) = tokio::join!(conn.batch_execute(begin), f(&conn));
                    begun?;
                    out
                } else {
                    f(&conn).await
                }
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(err)) => Err(Some(err)),
                Err(_) => Err(None),
            }
        });
        // A connection that failed or timed out is dropped: it may be mid-transaction.
        match &answer {
            Ok(_) => self.conn = Some(conn),
            Err(Some(err)) if err.code().is_some() => self.conn = Some(conn),
            Err(_) => drop(Object::take(conn)),
        }
        match answer {
            Ok(value) => {
                self.shared.set_reachable(true);
                Ok(value)
            }
            Err(Some(err)) => {
                self.conflicted = retriable(&err);
                if err.code().is_none() {
                    self.lost = true;
                    self.shared.set_reachable(false);
                }
                Err(store_error(&err))
            }
            Err(None) => {
                self.lost = true;
                Err(StoreError::Backend(
                    "PostgreSQL did not answer in time".into(),
                ))
            }
        }
    }

    /// Marks the transaction committed.
    pub fn committed(&mut self) {
        self.done = true;
    }

    /// Ends the transaction with `ROLLBACK` in the background and returns the connection to
    /// the pool (or drops it if that fails).
    pub fn release(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.begin.is_some() || self.done {
            // Never began, or committed: back to the pool as it is.
            return;
        }
        self.shared.runtime.spawn(async move {
            if conn.batch_execute("ROLLBACK").await.is_err() {
                drop(Object::take(conn));
            }
        });
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.release();
    }
}
