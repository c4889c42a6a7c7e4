//! What each fuzz target checks, for any input: the decoder never panics, what it refuses it
//! refuses with a message that names the problem and never echoes the input, and what it
//! accepts is canonical (encoding it again gives the same bytes back).
//!
//! The fuzz targets in `fuzz_targets/` call these functions; the root crate's
//! `tests/fuzz_corpus.rs` runs them over the committed corpus in `corpus/<target>/`.

use serde_json::Value;
use sharevault::api::http::{parse_object, required, text};
use sharevault::audit::AuditEvent;
use sharevault::error::Field;
use sharevault::snapshot::{self, RecordReader};
use sharevault::validate;
use sharevault::vault::codec;

/// A byte string planted in inputs that no error message may carry.
pub const MARKER: &[u8] = b"PLANTED";

fn carries_marker(message: &str) -> bool {
    message
        .as_bytes()
        .windows(MARKER.len())
        .any(|w| w == MARKER)
}

/// A webhook body as the daemon reads it: the JSON object, then its fields and their rules.
pub fn webhook_body(data: &[u8]) {
    let object = match parse_object(data) {
        Ok(object) => object,
        Err(err) => {
            assert_eq!(err.status.as_u16(), 400);
            assert!(err.message.starts_with("body: "), "{}", err.message);
            assert!(!carries_marker(&err.message), "{}", err.message);
            return;
        }
    };
    // What parses serialises back to an equal object (but for the last digit of a float:
    // serde_json's float parsing is fast, not exact; the daemon reads strings only).
    let again = serde_json::to_vec(&Value::Object(object.clone())).expect("serialise");
    let reparsed = Value::Object(parse_object(&again).expect("reparse"));
    assert_eq!(
        without_floats(reparsed),
        without_floats(Value::Object(object.clone()))
    );

    for field in [
        Field::ClientId,
        Field::BackupMethod,
        Field::Share,
        Field::BackupSharePairId,
    ] {
        let name = field.json_name();
        match text(&object, field) {
            Ok(value) => {
                assert!(matches!(
                    (object.get(name), value),
                    (None | Some(Value::Null), None) | (Some(Value::String(_)), Some(_))
                ));
                if value.is_none() {
                    let err = required(&object, field).expect_err("missing field");
                    assert_eq!(err.message, format!("{name}: is required"));
                }
            }
            Err(err) => assert_eq!(err.message, format!("{name}: must be a string")),
        }
    }
    let checks = [
        text(&object, Field::ClientId)
            .ok()
            .flatten()
            .map(validate::client_id),
        text(&object, Field::BackupMethod)
            .ok()
            .flatten()
            .map(|m| validate::backup_method(m).map(drop)),
        text(&object, Field::Share)
            .ok()
            .flatten()
            .map(|s| validate::secret_text(Field::Share, s, 64 * 1024)),
        text(&object, Field::BackupSharePairId)
            .ok()
            .flatten()
            .map(|p| validate::pair_id(Field::BackupSharePairId, p)),
    ];
    for err in checks.into_iter().flatten().filter_map(Result::err) {
        assert!(!carries_marker(&err.to_string()), "{err}");
    }
}

/// `value` with every floating-point number replaced by null.
pub fn without_floats(value: Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => Value::Null,
        Value::Array(items) => Value::Array(items.into_iter().map(without_floats).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, without_floats(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Stored values: share records, pair records and token records.
pub fn record(data: &[u8]) {
    if let Ok(record) = codec::decode_record(data) {
        assert_eq!(codec::encode_record(&record), data);
    }
    if let Ok(pair) = codec::decode_pair("pair", data) {
        assert_eq!(codec::encode_pair(&pair), data);
    }
    if let Ok(token) = codec::decode_token("token", data) {
        let again = codec::encode_token(token.role, token.created_at_ms, &token.hash);
        assert_eq!(again, data);
    }
}

/// Stored audit events.
pub fn audit_event(data: &[u8]) {
    if let Some(event) = AuditEvent::decode(data) {
        assert_eq!(event.encode(), data);
    }
}

/// Snapshot files, as given and with a valid checksum appended so that the structure behind
/// the checksum is parsed too; and the streaming reader on the same bytes.
pub fn snapshot(data: &[u8]) {
    let _ = snapshot::parse(data, snapshot::Trailer::sha256());
    drain(data);
    let mut checked = data.to_vec();
    let mut sum = snapshot::Trailer::sha256();
    sum.update(data);
    checked.extend_from_slice(&sum.finish());
    if let Ok(records) = snapshot::parse(&checked, snapshot::Trailer::sha256()) {
        // An accepted snapshot is its header, the records it declares and the end marker.
        let Ok(reader) = RecordReader::new(data) else {
            unreachable!("an accepted snapshot has a header")
        };
        let mut rebuilt = reader.header.encode();
        for (table, key, value) in &records {
            rebuilt.extend(snapshot::record(*table, key, value));
        }
        rebuilt.extend(snapshot::end());
        assert_eq!(rebuilt, data);
    }
}

fn drain(data: &[u8]) {
    let Ok(mut reader) = RecordReader::new(data) else {
        return;
    };
    while let Ok(Some(_)) = reader.next_record() {}
}
