//! The contract of [`Store`], as tests every backend runs: each function takes a fresh, empty
//! store and panics when the backend breaks the contract.

use super::{
    ExportItem, Key, KeyBuf, Range, Reader, Staged, Store, StoreError, TableId, WriteClass,
    WriteJob, Writer,
};

/// A job that applies `f`.
pub fn job(
    class: WriteClass,
    f: impl FnMut(&mut dyn Writer) -> Result<(), StoreError> + Send + 'static,
) -> WriteJob {
    WriteJob {
        class,
        apply: Box::new(f),
        client: None,
    }
}

fn rows(r: &dyn Reader, table: TableId, range: Range<'_>) -> Vec<(KeyBuf, Vec<u8>)> {
    let mut out = Vec::new();
    r.scan(table, range, &mut |k, v| {
        out.push((k.to_buf(), v.to_vec()));
        Ok(true)
    })
    .unwrap();
    out
}

fn client(c: &str, s: &str) -> KeyBuf {
    KeyBuf::Client(c.into(), s.into())
}

/// Rows written by a committed job are read back; keys of every kind are ordered as the
/// contract says, and a client's range holds exactly that client's rows.
pub async fn keys_are_ordered_and_ranges_are_exact(store: &dyn Store) {
    store
        .write(job(WriteClass::AddsData, |w| {
            for (c, s) in [("ab", "X"), ("a", "Z"), ("a", "B-2"), ("b", ""), ("a", "B")] {
                w.put(TableId::Custodian, Key::Client(c, s), c.as_bytes())?;
            }
            for n in ["tok-b", "tok-a", "tok-c"] {
                w.put(TableId::Tokens, Key::Name(n), n.as_bytes())?;
            }
            for h in [[2u8; 32], [1u8; 32], [0xFF; 32]] {
                w.put(TableId::TokenHashes, Key::Bytes(&h), b"name")?;
            }
            for seq in [300u64, 2, 1 << 40] {
                w.put(TableId::Audit, Key::Seq(seq), &seq.to_be_bytes())?;
            }
            Ok(())
        }))
        .await
        .unwrap();
    let r = store.read().unwrap();
    let keys = |table, range| -> Vec<KeyBuf> {
        rows(&*r, table, range)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(
        keys(TableId::Custodian, Range::Client("a")),
        [client("a", "B"), client("a", "B-2"), client("a", "Z")]
    );
    assert_eq!(keys(TableId::Custodian, Range::Client("zz")), []);
    assert_eq!(
        keys(
            TableId::Custodian,
            Range::After(Some(Key::Client("a", "Z")))
        ),
        [client("ab", "X"), client("b", "")]
    );
    assert_eq!(
        keys(TableId::Tokens, Range::After(Some(Key::Name("tok-a")))),
        [KeyBuf::Name("tok-b".into()), KeyBuf::Name("tok-c".into())]
    );
    assert_eq!(
        keys(TableId::TokenHashes, Range::After(None)),
        [
            KeyBuf::Bytes(vec![1; 32]),
            KeyBuf::Bytes(vec![2; 32]),
            KeyBuf::Bytes(vec![0xFF; 32])
        ]
    );
    assert_eq!(
        keys(TableId::Audit, Range::After(Some(Key::Seq(2)))),
        [KeyBuf::Seq(300), KeyBuf::Seq(1 << 40)]
    );
    assert_eq!(
        r.get(TableId::Custodian, Key::Client("ab", "X")).unwrap(),
        Some(b"ab".to_vec())
    );
    assert_eq!(
        r.get(TableId::Custodian, Key::Client("a", "X")).unwrap(),
        None
    );
    assert_eq!(r.len(TableId::Custodian).unwrap(), 5);
    assert_eq!(r.len(TableId::Client).unwrap(), 0);
    // A scan stops when the visitor says so.
    let mut seen = 0;
    r.scan(TableId::Custodian, Range::After(None), &mut |_, _| {
        seen += 1;
        Ok(seen < 2)
    })
    .unwrap();
    assert_eq!(seen, 2);
    // A key of the wrong kind is refused, not misread.
    assert!(r.get(TableId::Audit, Key::Name("x")).is_err());
}

/// Puts replace, deletes say whether there was a row, and a reader opened before a write
/// keeps the state it saw while a later one sees the write.
pub async fn writes_replace_delete_and_readers_are_consistent(store: &dyn Store) {
    let put = |value: &'static [u8]| {
        job(WriteClass::AddsData, move |w| {
            w.put(TableId::Meta, Key::Name("k"), value)
        })
    };
    store.write(put(b"one")).await.unwrap();
    let before = store.read().unwrap();
    store.write(put(b"two")).await.unwrap();
    assert_eq!(
        before.get(TableId::Meta, Key::Name("k")).unwrap(),
        Some(b"one".to_vec())
    );
    let after = store.read().unwrap();
    assert_eq!(
        after.get(TableId::Meta, Key::Name("k")).unwrap(),
        Some(b"two".to_vec())
    );
    let deleted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&deleted);
    store
        .write(job(WriteClass::Changes, move |w| {
            let first = w.delete(TableId::Meta, Key::Name("k"))?;
            let second = w.delete(TableId::Meta, Key::Name("k"))?;
            seen.lock().unwrap().extend([first, second]);
            Ok(())
        }))
        .await
        .unwrap();
    assert_eq!(*deleted.lock().unwrap(), [true, false]);
    assert_eq!(
        store
            .read()
            .unwrap()
            .get(TableId::Meta, Key::Name("k"))
            .unwrap(),
        None
    );
}

/// A job that fails fails its write, and nothing it changed is visible; concurrent jobs that
/// succeed are unaffected once they resolve.
pub async fn a_failed_job_changes_nothing(store: &dyn Store) {
    let failing = job(WriteClass::AddsData, |w| {
        w.put(TableId::Meta, Key::Name("half"), b"x")?;
        Err(StoreError::Backend("refused by the test".into()))
    });
    let ok = job(WriteClass::AddsData, |w| {
        w.put(TableId::Meta, Key::Name("whole"), b"y")
    });
    let (failed, _) = tokio::join!(store.write(failing), async {
        // Written after the failed job's transaction, or in it and failed with it.
        let _ = store.write(ok).await;
    });
    assert!(failed.is_err());
    let r = store.read().unwrap();
    assert_eq!(r.get(TableId::Meta, Key::Name("half")).unwrap(), None);
    drop(r);
    store
        .write(job(WriteClass::AddsData, |w| {
            w.put(TableId::Meta, Key::Name("after"), b"z")
        }))
        .await
        .unwrap();
    assert!(
        store
            .read()
            .unwrap()
            .get(TableId::Meta, Key::Name("after"))
            .unwrap()
            .is_some(),
        "writes go on after a failed job"
    );
}

/// Changes staged over a writer are seen by reads through it, merged into scans, and reach
/// the store only when kept.
pub async fn staged_changes_are_kept_or_dropped_whole(store: &dyn Store) {
    store
        .write(job(WriteClass::AddsData, |w| {
            w.put(TableId::Pairs, Key::Client("c", "p1"), b"1")?;
            w.put(TableId::Pairs, Key::Client("c", "p3"), b"3")
        }))
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = std::sync::Arc::clone(&seen);
    store
        .write(job(WriteClass::AddsData, move |w| {
            {
                let mut dropped = Staged::new(w);
                dropped.put(TableId::Pairs, Key::Client("c", "dropped"), b"d")?;
                dropped.delete(TableId::Pairs, Key::Client("c", "p1"))?;
            }
            let mut staged = Staged::new(w);
            staged.put(TableId::Pairs, Key::Client("c", "p2"), b"2")?;
            assert!(staged.delete(TableId::Pairs, Key::Client("c", "p3"))?);
            let mut listed = Vec::new();
            staged.scan(TableId::Pairs, Range::Client("c"), &mut |k, v| {
                listed.push((k.to_buf(), v.to_vec()));
                Ok(true)
            })?;
            out.lock().unwrap().push(listed);
            assert_eq!(staged.len(TableId::Pairs)?, 2);
            staged.keep()
        }))
        .await
        .unwrap();
    let expected = vec![
        (client("c", "p1"), b"1".to_vec()),
        (client("c", "p2"), b"2".to_vec()),
    ];
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        std::slice::from_ref(&expected)
    );
    let r = store.read().unwrap();
    assert_eq!(rows(&*r, TableId::Pairs, Range::Client("c")), expected);
}

/// An export visits the counts, then every row of every table in table and key order.
pub async fn exports_visit_every_row_in_order(store: &dyn Store) {
    store
        .write(job(WriteClass::AddsData, |w| {
            w.put(TableId::Audit, Key::Seq(2), b"e2")?;
            w.put(TableId::Audit, Key::Seq(1), b"e1")?;
            w.put(TableId::Client, Key::Client("c", "PASSWORD"), b"s")?;
            w.put(TableId::Meta, Key::Name("m"), b"v")
        }))
        .await
        .unwrap();
    let mut counts = None;
    let mut seen = Vec::new();
    store
        .export(&mut |item| {
            match item {
                ExportItem::Counts(c) => counts = Some(c),
                ExportItem::Record(table, key, value) => {
                    seen.push((table, key.to_buf(), value.to_vec()));
                }
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(counts, Some([0, 1, 0, 0, 0, 1, 2, 0]));
    assert_eq!(
        seen,
        [
            (TableId::Client, client("c", "PASSWORD"), b"s".to_vec()),
            (TableId::Meta, KeyBuf::Name("m".into()), b"v".to_vec()),
            (TableId::Audit, KeyBuf::Seq(1), b"e1".to_vec()),
            (TableId::Audit, KeyBuf::Seq(2), b"e2".to_vec()),
        ]
    );
}

/// A reader of one client answers that client's rows in every per-client table exactly as a
/// full reader does, keeps the state it saw when it opened, and still serves other reads.
pub async fn a_client_reader_reads_the_client_whole(store: &dyn Store) {
    store
        .write(job(WriteClass::AddsData, |w| {
            for (c, s) in [("a", "B"), ("a", "Z"), ("ab", "X"), ("b", "")] {
                w.put(TableId::Custodian, Key::Client(c, s), c.as_bytes())?;
                w.put(TableId::Pairs, Key::Client(c, s), s.as_bytes())?;
            }
            w.put(TableId::Meta, Key::Name("m"), b"meta")
        }))
        .await
        .unwrap();
    let r = store
        .read_client("a", &[TableId::Custodian, TableId::Pairs, TableId::Client])
        .unwrap();
    store
        .write(job(WriteClass::Changes, |w| {
            w.put(TableId::Custodian, Key::Client("a", "C"), b"later")?;
            w.delete(TableId::Custodian, Key::Client("a", "B"))?;
            Ok(())
        }))
        .await
        .unwrap();
    assert_eq!(
        rows(&*r, TableId::Custodian, Range::Client("a")),
        [
            (client("a", "B"), b"a".to_vec()),
            (client("a", "Z"), b"a".to_vec())
        ]
    );
    assert_eq!(
        rows(&*r, TableId::Pairs, Range::Client("a")),
        [
            (client("a", "B"), b"B".to_vec()),
            (client("a", "Z"), b"Z".to_vec())
        ]
    );
    assert_eq!(rows(&*r, TableId::Client, Range::Client("a")), []);
    assert_eq!(
        r.get(TableId::Custodian, Key::Client("a", "B")).unwrap(),
        Some(b"a".to_vec())
    );
    assert_eq!(
        r.get(TableId::Custodian, Key::Client("a", "C")).unwrap(),
        None
    );
    // Other clients, other tables and whole-table scans are served too.
    assert_eq!(
        r.get(TableId::Custodian, Key::Client("ab", "X")).unwrap(),
        Some(b"ab".to_vec())
    );
    assert_eq!(
        rows(&*r, TableId::Custodian, Range::Client("b")),
        [(client("b", ""), b"b".to_vec())]
    );
    assert_eq!(
        r.get(TableId::Meta, Key::Name("m")).unwrap(),
        Some(b"meta".to_vec())
    );
    // Four rows before the second write and four after it (one added, one removed).
    assert_eq!(r.len(TableId::Custodian).unwrap(), 4);
    let later = store.read_client("a", &[TableId::Custodian]).unwrap();
    assert_eq!(
        rows(&*later, TableId::Custodian, Range::Client("a")),
        [
            (client("a", "C"), b"later".to_vec()),
            (client("a", "Z"), b"a".to_vec())
        ]
    );
}
