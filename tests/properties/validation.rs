//! Validation of identifiers, shares and cipher texts: accepted exactly by their rule, refused
//! with a fixed reason that never echoes the value.

use proptest::prelude::*;
use sharevault::error::{Field, VaultError};
use sharevault::validate;

use super::config;

/// Strings near the rules: mostly allowed characters with a few that are not, around the
/// length limits, plus arbitrary Unicode.
fn identifier_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._:@-]{0,70}",
        "[A-Za-z0-9._:@-]{120,135}",
        "[A-Za-z0-9._:@ /%\\\\\u{0}\u{7f}é€-]{0,80}",
        any::<String>(),
    ]
}

fn share_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~\t\r\n]{0,300}",
        "[ -~\t\r\n\u{0}-\u{1f}\u{7f}\u{80}-\u{9f}é]{0,300}",
        any::<String>(),
    ]
}

/// The fixed reasons a field's check may give, none depending on the value.
fn identifier_reasons(max: usize, allowed: &str) -> [String; 3] {
    [
        "is required".to_owned(),
        format!("must be at most {max} characters"),
        format!("may contain only {allowed}"),
    ]
}

/// Checks that `err` is an invalid-argument error for `field` whose reason is one of
/// `reasons`, and that it does not echo `input`.
fn assert_clean_refusal(err: &VaultError, field: Field, reasons: &[String], input: &str) {
    let VaultError::InvalidArgument {
        field: named,
        reason,
    } = err
    else {
        panic!("not an invalid-argument error: {err:?}");
    };
    assert_eq!(*named, field);
    assert!(reasons.contains(reason), "unexpected reason {reason:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{}: ", field.proto_name())),
        "{message}"
    );
    let fixed = format!("{}: {}", field.proto_name(), reasons.join(" "));
    if input.chars().count() >= 4 && !fixed.contains(input) {
        assert!(!message.contains(input), "{message:?} echoes the input");
    }
}

fn only(value: &str, extra: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn client_ids_are_accepted_exactly_by_their_rule(value in identifier_like()) {
        let expected = (1..=128).contains(&value.len())
            && only(&value, "._-:@")
            && !value.bytes().all(|b| b == b'.');
        match validate::client_id(&value) {
            Ok(()) => prop_assert!(expected, "accepted {value:?}"),
            Err(err) => {
                prop_assert!(!expected, "refused {value:?}: {err}");
                let mut reasons = identifier_reasons(128, "letters, digits and . _ - : @").to_vec();
                reasons.push("must not be made of dots only".to_owned());
                assert_clean_refusal(&err, Field::ClientId, &reasons, &value);
            }
        }
    }

    #[test]
    fn backup_methods_are_accepted_exactly_by_their_rule(value in identifier_like()) {
        // Portal's methods are free-form: printable ASCII, up to 64 bytes.
        let expected = value.len() <= 64 && value.bytes().all(|b| (0x20..=0x7e).contains(&b));
        match validate::backup_method(&value) {
            Ok(method) if value.is_empty() => prop_assert_eq!(method, "UNKNOWN"),
            Ok(method) => {
                prop_assert!(expected, "accepted {value:?}");
                prop_assert_eq!(method, value.as_str());
            }
            Err(err) => {
                prop_assert!(!expected, "refused {value:?}: {err}");
                assert_clean_refusal(
                    &err,
                    Field::BackupMethod,
                    &[
                        "must be at most 64 bytes".to_owned(),
                        "may contain only printable ASCII characters (no control characters)"
                            .to_owned(),
                    ],
                    &value,
                );
            }
        }
    }

    #[test]
    fn pair_ids_are_accepted_exactly_by_their_rule(value in identifier_like()) {
        let expected = (1..=128).contains(&value.len()) && only(&value, "._-:");
        match validate::pair_id(Field::BackupSharePairId, &value) {
            Ok(()) => prop_assert!(expected, "accepted {value:?}"),
            Err(err) => {
                prop_assert!(!expected, "refused {value:?}: {err}");
                assert_clean_refusal(
                    &err,
                    Field::BackupSharePairId,
                    &identifier_reasons(128, "letters, digits and . _ - :"),
                    &value,
                );
            }
        }
    }

    #[test]
    fn token_names_are_accepted_exactly_by_their_rule(value in identifier_like()) {
        let expected = (1..=64).contains(&value.len()) && only(&value, "._-");
        match validate::token_name(&value) {
            Ok(()) => prop_assert!(expected, "accepted {value:?}"),
            Err(err) => {
                prop_assert!(!expected, "refused {value:?}: {err}");
                assert_clean_refusal(
                    &err,
                    Field::Name,
                    &identifier_reasons(64, "letters, digits and . _ -"),
                    &value,
                );
            }
        }
    }

    /// Control characters (C0, DEL and C1) are refused, but for tab, line feed and return.
    #[test]
    fn shares_and_cipher_texts_are_accepted_exactly_by_their_rule(
        value in share_like(),
        max in 1usize..400,
        field in prop::sample::select(vec![Field::Share, Field::CipherText]),
    ) {
        let control = value
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
        let expected = !value.is_empty() && value.len() <= max && !control;
        match validate::secret_text(field, &value, max) {
            Ok(()) => prop_assert!(expected, "accepted {value:?}"),
            Err(err) => {
                prop_assert!(!expected, "refused {value:?}: {err}");
                let reasons = [
                    "is required".to_owned(),
                    format!("must be at most {max} bytes"),
                    "must not contain control characters".to_owned(),
                ];
                assert_clean_refusal(&err, field, &reasons, &value);
            }
        }
    }

    #[test]
    fn refusals_never_carry_a_planted_value(
        prefix in "[ -~]{0,20}",
        suffix in "[ -~\u{0}]{0,20}",
    ) {
        let value = format!("{prefix}PLANTED-SECRET {suffix}\u{1}");
        let errors = [
            validate::client_id(&value).unwrap_err(),
            validate::backup_method(&value).unwrap_err(),
            validate::pair_id(Field::BackupSharePairId, &value).unwrap_err(),
            validate::token_name(&value).unwrap_err(),
            validate::secret_text(Field::Share, &value, 1 << 20).unwrap_err(),
            validate::secret_text(Field::CipherText, &value, 4).unwrap_err(),
        ];
        for err in errors {
            let message = err.to_string();
            prop_assert!(!message.contains("PLANTED"), "{message}");
            let http = sharevault::api::http::HttpError::from(err);
            prop_assert_eq!(http.status.as_u16(), 400);
            prop_assert!(!http.message.contains("PLANTED"), "{}", http.message);
        }
    }

    #[test]
    fn curves_split_into_parts_that_rebuild_the_method(value in identifier_like()) {
        let (method, curve) = validate::split_curve(&value);
        match curve {
            Some(curve) => {
                prop_assert!(!method.is_empty() && !curve.is_empty() && !curve.contains('-'));
                prop_assert_eq!(format!("{method}-{curve}"), value);
            }
            None => prop_assert_eq!(method, value.as_str()),
        }
    }
}
