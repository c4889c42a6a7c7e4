//! Schema migrations, versioned in the repository and applied at start.
//!
//! Each migration runs once, in order, in one transaction with its row in
//! `sharevault_migrations`; the daemons that start at once on one database take an advisory
//! lock first, so exactly one applies what is missing and the others find it done. A database
//! migrated by a newer sharevault (a version this one does not know) is refused.

use super::Shared;
use super::session::{CallFuture, Session};
use crate::store::StoreError;
use std::sync::Arc;

/// The migrations, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "records", include_str!("migrations/0001_records.sql")),
    (2, "daemons", include_str!("migrations/0002_daemons.sql")),
];

/// The advisory lock key of migrations ("svmigrat").
const MIGRATE_LOCK: &str = "SELECT pg_advisory_xact_lock(8319957661088113012)";

/// Applies the migrations the database lacks; returns the schema version.
pub fn migrate(shared: &Arc<Shared>) -> Result<i32, StoreError> {
    let mut session = Session::open(shared, "BEGIN")?;
    let applied = session.call(|c| -> CallFuture<'_, Vec<i32>> {
        Box::pin(async move {
            c.batch_execute(MIGRATE_LOCK).await?;
            c.batch_execute(
                "CREATE TABLE IF NOT EXISTS sharevault_migrations (\
                 version integer PRIMARY KEY, name text NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
            let rows = c
                .query(
                    "SELECT version FROM sharevault_migrations ORDER BY version",
                    &[],
                )
                .await?;
            rows.iter().map(|r| r.try_get(0)).collect()
        })
    })?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(newer) = applied.iter().find(|v| **v > known) {
        return Err(StoreError::Backend(format!(
            "the database's schema is at version {newer}, newer than this sharevault knows \
             ({known}); run a newer sharevault"
        )));
    }
    let missing: Vec<(i32, &'static str, &'static str)> = MIGRATIONS
        .iter()
        .filter(|m| !applied.contains(&m.0))
        .copied()
        .collect();
    for (version, name, _) in &missing {
        tracing::info!(version, name, "applying a database migration");
    }
    session.call(move |c| -> CallFuture<'_, ()> {
        Box::pin(async move {
            for (version, name, sql) in missing {
                c.batch_execute(sql).await?;
                c.execute(
                    "INSERT INTO sharevault_migrations (version, name) VALUES ($1, $2)",
                    &[&version, &name],
                )
                .await?;
            }
            c.batch_execute("COMMIT").await
        })
    })?;
    session.committed();
    Ok(known)
}
