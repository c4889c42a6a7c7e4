//! JSON bodies: objects round-trip, duplicate keys and non-objects are refused, and refusals
//! never echo the body.

use proptest::prelude::*;
use serde_json::{Map, Value};
use sharevault::api::http::{parse_object, required, text};
use sharevault::error::Field;

use super::config;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        prop_oneof![
            prop::sample::select(vec![
                "clientId".to_owned(),
                "backupMethod".to_owned(),
                "share".to_owned(),
                "cipherText".to_owned(),
                "backupSharePairId".to_owned(),
                "backupSharePairIds".to_owned(),
                "status".to_owned(),
            ]),
            any::<String>(),
        ],
        json_value(),
        0..8,
    )
    .prop_map(|m| m.into_iter().collect())
}

/// `value` with every floating-point number replaced by null.
fn without_floats(value: Value) -> Value {
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

const FIELDS: [Field; 7] = [
    Field::ClientId,
    Field::BackupMethod,
    Field::Share,
    Field::CipherText,
    Field::BackupSharePairId,
    Field::Status,
    Field::Name,
];

/// Fragments of JSON, and of things that are not, with a planted marker among them.
fn junk_body() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop::sample::select(vec![
        &b"{"[..],
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b" ",
        b"\\",
        b"\\u00",
        b"1e999",
        b"-",
        b"true",
        b"null",
        b"\"clientId\"",
        b"\"share\"",
        b"PLANTED-MARKER",
        b"\"PLANTED-MARKER\"",
        b"\"PLANTED-MARKER",
        b"\x00",
        b"\xff",
        b"\xc3",
        b"\xe2\x82",
        b"\n",
    ]);
    prop::collection::vec(fragment, 0..40).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn json_objects_round_trip(object in json_object(), pretty in any::<bool>()) {
        let value = Value::Object(object.clone());
        let bytes = if pretty {
            serde_json::to_vec_pretty(&value).unwrap()
        } else {
            serde_json::to_vec(&value).unwrap()
        };
        let parsed = parse_object(&bytes).unwrap();
        prop_assert_eq!(&parsed, &object);
        for field in FIELDS {
            match (object.get(field.json_name()), text(&parsed, field)) {
                (None | Some(Value::Null), Ok(None)) => {
                    let err = required(&parsed, field).unwrap_err();
                    prop_assert_eq!(err.message, format!("{}: is required", field.json_name()));
                }
                (Some(Value::String(s)), Ok(Some(got))) => {
                    prop_assert_eq!(s.as_str(), got);
                    prop_assert_eq!(required(&parsed, field).unwrap(), got);
                }
                (Some(_), Err(err)) => {
                    prop_assert_eq!(err.status.as_u16(), 400);
                    prop_assert_eq!(err.message, format!("{}: must be a string", field.json_name()));
                }
                (given, got) => prop_assert!(false, "{given:?} gave {got:?}"),
            }
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_the_top_level(
        object in json_object(),
        key in "\\PC{0,12}",
        first in json_value(),
        second in json_value(),
    ) {
        let mut body = serde_json::to_string(&Value::Object(object)).unwrap();
        body.pop();
        let sep = if body.len() > 1 { "," } else { "" };
        let key = serde_json::to_string(&key).unwrap();
        body.push_str(&format!("{sep}{key}:{first},{key}:{second}}}"));
        let err = parse_object(body.as_bytes()).unwrap_err();
        prop_assert_eq!(err.status.as_u16(), 400);
        prop_assert_eq!(err.code, "invalid_argument");
        prop_assert_eq!(err.message, "body: a key appears more than once");
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_body_parser(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..200), junk_body()],
    ) {
        match parse_object(&bytes) {
            Ok(object) => {
                // What parses is a JSON object, and serialises back to an equal object (but
                // for the last digit of a float: serde_json's float parsing is not exact).
                let again = serde_json::to_vec(&Value::Object(object.clone())).unwrap();
                prop_assert_eq!(
                    without_floats(Value::Object(parse_object(&again).unwrap())),
                    without_floats(Value::Object(object.clone()))
                );
                for field in FIELDS {
                    if let Err(err) = required(&object, field) {
                        prop_assert!(!err.message.contains("PLANTED"), "{}", err.message);
                    }
                }
            }
            Err(err) => {
                prop_assert_eq!(err.status.as_u16(), 400);
                prop_assert!(err.message.starts_with("body: "), "{}", err.message);
                prop_assert!(!err.message.contains("PLANTED"), "{}", err.message);
            }
        }
    }

    #[test]
    fn values_that_are_not_objects_are_refused(value in json_value(), planted in any::<bool>()) {
        let value = match (planted, value) {
            (true, Value::Object(_)) | (true, Value::Null) => Value::String("PLANTED-MARKER".into()),
            (_, Value::Object(_)) => Value::Array(vec![Value::from("PLANTED-MARKER")]),
            (_, other) => other,
        };
        let err = parse_object(value.to_string().as_bytes()).unwrap_err();
        prop_assert_eq!(err.message.as_str(), "body: must be a JSON object");
    }

    #[test]
    fn nesting_beyond_the_parser_limit_is_refused(depth in 100usize..5000, object in any::<bool>()) {
        let (open, close) = if object { ("{\"a\":", "}") } else { ("[", "]") };
        let body = format!(
            "{{\"clientId\":{}\"PLANTED-MARKER\"{}}}",
            open.repeat(depth),
            close.repeat(depth)
        );
        match parse_object(body.as_bytes()) {
            Ok(parsed) => prop_assert!(depth < 128, "depth {depth} parsed: {}", parsed.len()),
            Err(err) => {
                prop_assert!(err.message.starts_with("body: "), "{}", err.message);
                prop_assert!(!err.message.contains("PLANTED"));
            }
        }
    }
}
