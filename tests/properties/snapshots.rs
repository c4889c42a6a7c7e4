//! Snapshot files: they round-trip, damage is refused, and arbitrary bytes never panic the parser
//! or the reader.

use proptest::prelude::*;
use sharevault::snapshot::{self, Header, RecordReader, TABLES, TableId};

use super::{CASES, config};

fn table() -> impl Strategy<Value = TableId> {
    prop::sample::select(TABLES.to_vec())
}

fn snapshot_records() -> impl Strategy<Value = Vec<snapshot::Record>> {
    prop::collection::vec(
        (
            table(),
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), 0..120),
        ),
        0..12,
    )
}

/// A snapshot file of `records`, as the daemon writes it.
fn snapshot_file(created_at_ms: u64, key_id: [u8; 8], records: &[snapshot::Record]) -> Vec<u8> {
    let mut counts = [0u64; snapshot::TABLE_COUNT];
    for (table, _, _) in records {
        counts[*table as usize - 1] += 1;
    }
    let mut out = Header {
        version: snapshot::VERSION,
        created_at_ms,
        key_id,
        sealed_integrity_key: vec![9; 117],
        counts,
    }
    .encode();
    for (table, key, value) in records {
        out.extend(snapshot::record(*table, key, value));
    }
    out.extend(snapshot::end());
    with_checksum(out)
}

/// The MAC of a snapshot under a fixed key.
fn mac() -> snapshot::Trailer {
    use hmac::Mac;
    snapshot::Trailer::Mac(Box::new(
        sharevault::integrity::HmacSha256::new_from_slice(b"property key").unwrap(),
    ))
}

fn with_checksum(mut body: Vec<u8>) -> Vec<u8> {
    let mut sum = mac();
    sum.update(&body);
    body.extend_from_slice(&sum.finish());
    body
}

/// Reads every record a reader yields, until the end or the first error.
fn drain<R: std::io::Read>(input: R) -> Result<usize, snapshot::SnapshotError> {
    let mut reader = RecordReader::new(input)?;
    let mut n = 0;
    while reader.next_record()?.is_some() {
        n += 1;
    }
    Ok(n)
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn snapshots_round_trip(
        created_at_ms in any::<u64>(),
        key_id in any::<[u8; 8]>(),
        records in snapshot_records(),
    ) {
        let file = snapshot_file(created_at_ms, key_id, &records);
        prop_assert_eq!(snapshot::parse(&file, mac()).unwrap(), records.clone());
        let reader = RecordReader::new(&file[..file.len() - 32]).unwrap();
        prop_assert_eq!(reader.header.created_at_ms, created_at_ms);
        prop_assert_eq!(reader.header.key_id, key_id);
        prop_assert_eq!(drain(&file[..file.len() - 32]).unwrap(), records.len());
    }

    #[test]
    fn damaged_snapshots_are_refused(
        records in snapshot_records(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let file = snapshot_file(1, [2; 8], &records);
        let mut flipped = file.clone();
        flipped[at.index(file.len())] ^= mask;
        prop_assert!(snapshot::parse(&flipped, mac()).is_err());
        prop_assert!(snapshot::parse(&file[..cut.index(file.len())], mac()).is_err());
    }

    /// Arbitrary bytes, and arbitrary bytes behind a valid magic and before a valid checksum
    /// (so that the structure is parsed), never panic the parser or the reader.
    #[test]
    fn arbitrary_bytes_never_panic_the_snapshot_parser(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        records in snapshot_records(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let _ = snapshot::parse(&bytes, mac());
        let _ = drain(&bytes[..]);
        let mut framed = snapshot::MAGIC.to_vec();
        framed.extend_from_slice(&bytes);
        let _ = drain(&framed[..]);
        let _ = snapshot::parse(&with_checksum(framed), mac());

        // A structural edit with a recomputed checksum: refused or parsed, never a panic.
        let file = snapshot_file(3, [4; 8], &records);
        let mut body = file[..file.len() - 32].to_vec();
        let i = at.index(body.len());
        body[i] = byte;
        let _ = snapshot::parse(&with_checksum(body), mac());
    }

    #[test]
    fn client_keys_round_trip(client in "\\PC{0,140}", second in "\\PC{0,70}") {
        let key = snapshot::client_key(&client, &second);
        prop_assert_eq!(
            snapshot::split_client_key(&key),
            Some((client.as_str(), second.as_str()))
        );
    }
}
