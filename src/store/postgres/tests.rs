//! The store contract on a real PostgreSQL server, and what only a shared database adds:
//! several stores (daemons) on one database.

use super::*;
use crate::store::WriteClass;
use crate::store::conformance::job;

#[path = "../../../tests/support/pg_server.rs"]
mod pg_server;
use pg_server::PgServer;

/// A fresh database of the shared test server: its name and the settings that reach it.
fn fresh_database() -> (String, PgSettings) {
    let server = PgServer::shared();
    let db = server.create_database();
    let settings =
        PgSettings::parse(&server.url(&db))
            .unwrap()
            .with_password(zeroize::Zeroizing::new(
                pg_server::PASSWORD.as_bytes().to_vec(),
            ));
    (db, settings)
}

/// A store on a fresh database of the shared test server.
fn fresh() -> (PgSettings, PgStore) {
    let (_, settings) = fresh_database();
    let store = PgStore::open(&settings, Default::default()).unwrap();
    (settings, store)
}

/// Runs a conformance test of the store contract on a fresh PostgreSQL database.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_, store) = fresh();
            crate::store::conformance::$name(&store).await;
            store.close();
        }
    )*};
}

conformance!(
    keys_are_ordered_and_ranges_are_exact,
    writes_replace_delete_and_readers_are_consistent,
    a_failed_job_changes_nothing,
    staged_changes_are_kept_or_dropped_whole,
    exports_visit_every_row_in_order,
    a_client_reader_reads_the_client_whole,
);

#[test]
fn the_write_lock_key_is_the_one_every_transaction_takes() {
    assert!(writer::BEGIN_SQL.contains(&writer::WRITE_LOCK.to_string()));
}

/// Two stores on one database (two daemons) increment one counter concurrently, each
/// increment a read-modify-write job: no increment is lost, and a write through one is seen
/// at once by a reader of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_database_lose_no_write() {
    let (settings, a) = fresh();
    let b = PgStore::open(&settings, Default::default()).unwrap();
    let increment = || {
        job(WriteClass::Changes, |w| {
            let n = w
                .get(TableId::Meta, Key::Name("counter"))?
                .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
            w.put(TableId::Meta, Key::Name("counter"), &(n + 1).to_be_bytes())
        })
    };
    const EACH: usize = 200;
    let on = |store: &PgStore| {
        let writes: Vec<_> = (0..EACH).map(|_| store.write(increment())).collect();
        futures_join_all(writes)
    };
    let (ra, rb) = tokio::join!(on(&a), on(&b));
    assert!(ra.iter().chain(&rb).all(Result::is_ok));
    for store in [&a, &b] {
        let value = store
            .read()
            .unwrap()
            .get(TableId::Meta, Key::Name("counter"))
            .unwrap()
            .unwrap();
        assert_eq!(
            u64::from_be_bytes(value.try_into().unwrap()),
            2 * EACH as u64
        );
    }
    a.close();
    b.close();
}

async fn futures_join_all(writes: Vec<crate::store::WriteFuture>) -> Vec<Result<(), StoreError>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, w) in writes.into_iter().enumerate() {
        set.spawn(async move { (i, w.await) });
    }
    let mut out: Vec<(usize, Result<(), StoreError>)> = Vec::new();
    while let Some(done) = set.join_next().await {
        out.push(done.unwrap());
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// The migrations run once: a second store on the same database finds them applied, and a
/// database from a newer sharevault is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_newer_schemas_are_refused() {
    let server = PgServer::shared();
    let (db, settings) = fresh_database();
    let opened: Vec<_> = (0..3)
        .map(|_| {
            let s = settings.clone();
            std::thread::spawn(move || PgStore::open(&s, Default::default()).map(|_| ()))
        })
        .collect();
    for o in opened {
        o.join().unwrap().unwrap();
    }
    assert_eq!(
        server.psql(
            &db,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM sharevault_migrations"
        ),
        "1,2"
    );
    server.psql(
        &db,
        "INSERT INTO sharevault_migrations (version, name) VALUES (99, 'future')",
    );
    let err = PgStore::open(&settings, Default::default()).err().unwrap();
    assert!(
        err.to_string().contains("newer than this sharevault"),
        "{err}"
    );
}
