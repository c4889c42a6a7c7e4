//! The registry of live daemons (`sharevault_daemons`), cluster-wide locks (session-level
//! advisory locks, each held on a connection of its own) and the server settings checked at
//! start.

use super::session::{CallFuture, Session, block, connect, store_error};
use super::{PgStore, Shared};
use crate::store::StoreError;
use crate::store::cluster::{Cluster, ClusterLock, LIVE_WITHIN, LockGuard, Member};
use deadpool_postgres::Object;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The advisory lock key of each cluster lock ("svinit..", "svprune.").
fn lock_key(lock: ClusterLock) -> i64 {
    match lock {
        ClusterLock::Init => 0x7376_696e_6974_0000,
        ClusterLock::Pruner => 0x7376_7072_756e_6500,
    }
}

/// A session-level advisory lock: held as long as its connection lives. Dropped, the
/// connection is closed (never returned to the pool), which releases the lock.
struct PgLock {
    shared: Arc<Shared>,
    conn: Mutex<Option<Object>>,
}

impl LockGuard for PgLock {
    fn held(&self) -> bool {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(conn) = slot.take() else {
            return false;
        };
        let answered = block(&self.shared, async {
            conn.batch_execute("SELECT 1")
                .await
                .map_err(|e| store_error(&e))
        });
        match answered {
            Ok(()) => {
                *slot = Some(conn);
                true
            }
            Err(_) => {
                drop(Object::take(conn));
                false
            }
        }
    }
}

impl Drop for PgLock {
    fn drop(&mut self) {
        let slot = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(conn) = slot.take() {
            let _entered = self.shared.runtime.enter();
            drop(Object::take(conn));
        }
    }
}

fn member(row: &tokio_postgres::Row) -> Result<Member, tokio_postgres::Error> {
    let pid: i32 = row.try_get(2)?;
    let held: String = row.try_get(4)?;
    Ok(Member {
        id: row.try_get(0)?,
        host: row.try_get(1)?,
        pid: u32::try_from(pid).unwrap_or_default(),
        primary_key: row.try_get(3)?,
        held_keys: held
            .split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// The live daemons, by `session`.
pub(super) fn live_members(session: &mut Session) -> Result<Vec<Member>, StoreError> {
    let within = LIVE_WITHIN.as_secs_f64();
    session.call(move |c| -> CallFuture<'_, Vec<Member>> {
        Box::pin(async move {
            let rows = c
                .query(
                    "SELECT id, host, pid, primary_key, held_keys FROM sharevault_daemons \
                     WHERE heartbeat > now() - $1::float8 * interval '1 second' ORDER BY host, pid",
                    &[&within],
                )
                .await?;
            rows.iter().map(member).collect()
        })
    })
}

impl Cluster for PgStore {
    fn register(&self, me: &Member) -> Result<(), StoreError> {
        self.shared.check_reachable()?;
        let mut session = Session::autocommit(&self.shared)?;
        let me = me.clone();
        let id = me.id.clone();
        session.call(move |c| -> CallFuture<'_, ()> {
            Box::pin(async move {
                let pid = i32::try_from(me.pid).unwrap_or_default();
                let held = me.held_keys.join(",");
                c.execute(
                    "INSERT INTO sharevault_daemons (id, host, pid, primary_key, held_keys) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
                     heartbeat = now(), primary_key = EXCLUDED.primary_key, \
                     held_keys = EXCLUDED.held_keys",
                    &[&me.id, &me.host, &pid, &me.primary_key, &held],
                )
                .await
                .map(|_| ())
            })
        })?;
        let _ = self.shared.member.set(id);
        Ok(())
    }

    fn heartbeat(&self, me: &Member) -> Result<bool, StoreError> {
        self.shared.check_reachable()?;
        let mut session = Session::autocommit(&self.shared)?;
        let me = me.clone();
        session.call(move |c| -> CallFuture<'_, bool> {
            Box::pin(async move {
                let held = me.held_keys.join(",");
                c.execute(
                    "UPDATE sharevault_daemons SET heartbeat = now(), primary_key = $2, \
                     held_keys = $3 WHERE id = $1",
                    &[&me.id, &me.primary_key, &held],
                )
                .await
                .map(|n| n == 1)
            })
        })
    }

    fn leave(&self, id: &str) -> Result<(), StoreError> {
        let mut session = Session::autocommit(&self.shared)?;
        let id = id.to_owned();
        session.call(move |c| -> CallFuture<'_, ()> {
            Box::pin(async move {
                c.execute("DELETE FROM sharevault_daemons WHERE id = $1", &[&id])
                    .await
                    .map(|_| ())
            })
        })
    }

    fn live(&self) -> Result<Vec<Member>, StoreError> {
        self.shared.check_reachable()?;
        live_members(&mut Session::autocommit(&self.shared)?)
    }

    fn lock(
        &self,
        lock: ClusterLock,
        wait: Duration,
    ) -> Result<Option<Box<dyn LockGuard>>, StoreError> {
        self.shared.check_reachable()?;
        let conn = connect(&self.shared)?;
        let key = lock_key(lock);
        let started = Instant::now();
        loop {
            let got = block(&self.shared, async {
                conn.query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                    .await
                    .and_then(|row| row.try_get::<_, bool>(0))
                    .map_err(|e| store_error(&e))
            });
            match got {
                Ok(true) => {
                    return Ok(Some(Box::new(PgLock {
                        shared: Arc::clone(&self.shared),
                        conn: Mutex::new(Some(conn)),
                    })));
                }
                Ok(false) if started.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(false) => return Ok(None),
                Err(err) => {
                    let _entered = self.shared.runtime.enter();
                    drop(Object::take(conn));
                    return Err(err);
                }
            }
        }
    }
}

/// Refuses a server whose settings would acknowledge a write its synchronous standby does
/// not have: `synchronous_commit` `off` or `local` while `synchronous_standby_names` names a
/// standby (a failover to that standby would lose acknowledged writes).
pub(super) fn check_settings(shared: &Arc<Shared>) -> Result<(), StoreError> {
    let mut session = Session::autocommit(shared)?;
    let (commit, standbys) = session.call(|c| -> CallFuture<'_, (String, String)> {
        Box::pin(async move {
            let row = c
                .query_one(
                    "SELECT current_setting('synchronous_commit'), \
                     current_setting('synchronous_standby_names')",
                    &[],
                )
                .await?;
            Ok((row.try_get(0)?, row.try_get(1)?))
        })
    })?;
    settings_refusal(&commit, &standbys).map_or(Ok(()), |why| Err(StoreError::Backend(why)))
}

/// Why these settings are refused, if they are.
fn settings_refusal(commit: &str, standbys: &str) -> Option<String> {
    let weak = matches!(commit.trim(), "off" | "local");
    (weak && !standbys.trim().is_empty()).then(|| {
        format!(
            "the server's synchronous_commit is {commit:?} while synchronous_standby_names is \
             set ({standbys:?}): a write would be acknowledged before the standby has it, and a \
             failover would lose it; set synchronous_commit = on (or remote_apply) for the \
             sharevault role or database"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::settings_refusal;

    #[test]
    fn a_standby_with_a_local_commit_is_refused() {
        assert!(settings_refusal("on", "").is_none());
        assert!(settings_refusal("on", "standby1").is_none());
        assert!(settings_refusal("remote_apply", "FIRST 1 (a, b)").is_none());
        assert!(settings_refusal("off", "").is_none());
        for commit in ["off", "local"] {
            let why = settings_refusal(commit, "standby1").unwrap();
            assert!(why.contains("synchronous_commit"), "{why}");
            assert!(why.contains("synchronous_standby_names"), "{why}");
        }
    }
}
