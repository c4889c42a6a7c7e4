//! The log's format: records read back in order, torn or stale ones never.

use super::*;
use crate::store::disk_sim::{SimDisk, Survivors};
use crate::store::{Key, TableId};

fn log_of(disk: &SimDisk, epoch: u64, next: u64) -> Log {
    Log::reset(disk.file(0), epoch, next).unwrap()
}

fn lsns(disk: &dyn Disk) -> Vec<u64> {
    scan(disk)
        .unwrap()
        .map(|s| s.records.iter().map(|(l, _)| *l).collect())
        .unwrap_or_default()
}

#[test]
fn records_are_read_back_in_order_with_their_payloads() {
    let disk = SimDisk::new(vec![Vec::new()], None);
    let mut log = log_of(&disk, 7, 10);
    for i in 0..5u8 {
        assert_eq!(
            log.append(&vec![i; 100 * i as usize], true).unwrap(),
            10 + i as u64
        );
    }
    let found = scan(disk.file(0).as_ref()).unwrap().unwrap();
    assert_eq!((found.epoch, found.first_lsn), (7, 10));
    for (i, (lsn, payload)) in found.records.iter().enumerate() {
        assert_eq!(*lsn, 10 + i as u64);
        assert_eq!(payload, &vec![i as u8; 100 * i]);
    }
}

#[test]
fn a_torn_or_unsynced_last_record_is_not_read_and_synced_ones_are() {
    for survivors in [Survivors::None, Survivors::TornLast, Survivors::All] {
        let disk = SimDisk::new(vec![Vec::new()], None);
        let mut log = log_of(&disk, 1, 1);
        log.append(b"first", true).unwrap();
        log.append(b"second", true).unwrap();
        log.append(&[9u8; 3000], false).unwrap();
        let after = SimDisk::new(disk.crash_image(survivors), None);
        let found = lsns(after.file(0).as_ref());
        match survivors {
            Survivors::All => assert_eq!(found, [1, 2, 3]),
            _ => assert_eq!(found, [1, 2], "{survivors:?}"),
        }
    }
}

#[test]
fn a_restart_hides_the_records_of_the_epoch_before() {
    let disk = SimDisk::new(vec![Vec::new()], None);
    let mut log = log_of(&disk, 1, 1);
    for _ in 0..4 {
        log.append(&[1u8; 500], true).unwrap();
    }
    log.restart(2, false).unwrap();
    log.append(&[2u8; 10], true).unwrap();
    let found = scan(disk.file(0).as_ref()).unwrap().unwrap();
    assert_eq!((found.epoch, found.first_lsn), (2, 5));
    assert_eq!(found.records, vec![(5, vec![2u8; 10])]);
}

#[test]
fn a_file_without_a_whole_header_holds_no_log() {
    let disk = SimDisk::new(vec![vec![0u8; 100]], None);
    assert!(scan(disk.file(0).as_ref()).unwrap().is_none());
    let disk = SimDisk::new(vec![Vec::new()], None);
    let mut log = log_of(&disk, 3, 1);
    log.append(b"x", true).unwrap();
    let mut bytes = disk.contents().swap_remove(0);
    bytes[9] ^= 1;
    let disk = SimDisk::new(vec![bytes], None);
    assert!(scan(disk.file(0).as_ref()).unwrap().is_none());
}

#[test]
fn effects_round_trip_and_garbage_is_corrupt() {
    let mut payload = Vec::new();
    encode_put(
        &mut payload,
        TableId::Custodian,
        Key::Client("c", "M"),
        b"v",
    )
    .unwrap();
    encode_delete(&mut payload, TableId::Meta, Key::Name("n")).unwrap();
    encode_put(&mut payload, TableId::Audit, Key::Seq(42), b"e").unwrap();
    encode_put(
        &mut payload,
        TableId::TokenHashes,
        Key::Bytes(&[1, 2]),
        b"t",
    )
    .unwrap();
    let mut seen = Vec::new();
    decode(&payload, &mut |e| {
        seen.push(format!("{e:?}"));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.len(), 4);
    assert_eq!(
        seen[0],
        format!(
            "{:?}",
            Effect::Put(TableId::Custodian, Key::Client("c", "M"), b"v")
        )
    );
    assert!(encode_put(&mut payload, TableId::Audit, Key::Name("x"), b"").is_err());
    for cut in 1..payload.len() {
        let truncated = &payload[..cut];
        // Every cut either ends on an effect's boundary or fails to decode.
        let _ = decode(truncated, &mut |_| Ok(()));
    }
    assert!(decode(&[9, 1, 0], &mut |_| Ok(())).is_err());
}
