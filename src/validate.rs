//! Validation of every field that comes from outside.
//!
//! Each check names the field and what is allowed, never the value it was given.

use crate::error::{Field, VaultError};

/// Longest accepted client id.
pub const MAX_CLIENT_ID_LEN: usize = 128;
/// Longest accepted backup method, with or without its curve.
pub const MAX_BACKUP_METHOD_LEN: usize = 64;
/// Longest accepted backup share pair id.
pub const MAX_PAIR_ID_LEN: usize = 128;
/// Most share pair ids one update may name.
pub const MAX_PAIR_IDS: usize = 64;
/// Longest accepted token name.
pub const MAX_TOKEN_NAME_LEN: usize = 64;
/// Most custodian shares, and most client shares, one client may hold (one per backup
/// method each).
pub const MAX_METHODS_PER_CLIENT: usize = 64;
/// The most a share or cipherText limit may be raised to.
pub const MAX_SECRET_LIMIT: usize = 1024 * 1024;
/// The method stored when a custodian share arrives without one, as Portal does.
pub const UNKNOWN_METHOD: &str = "UNKNOWN";

/// Size limits that operators may tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_share_bytes: usize,
    pub max_cipher_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_share_bytes: 64 * 1024,
            max_cipher_text_bytes: 64 * 1024,
        }
    }
}

fn identifier(
    field: Field,
    value: &str,
    max: usize,
    extra: &[u8],
    allowed: &str,
) -> Result<(), VaultError> {
    if value.is_empty() {
        return Err(VaultError::invalid(field, "is required"));
    }
    if value.len() > max {
        return Err(VaultError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    {
        return Err(VaultError::invalid(
            field,
            format!("may contain only {allowed}"),
        ));
    }
    Ok(())
}

/// The prefix of the synthetic client ids `sharevault selftest` writes through the webhook
/// (then random hex). Reserved: Portal's own client ids (cuids such as `clx3k...`) never
/// start with it, so an operator or a report can tell the synthetic clients apart.
pub const SELFTEST_CLIENT_PREFIX: &str = "sharevault-selftest-";

/// A Portal client id: 1 to 128 of `A-Z a-z 0-9 . _ - : @`, not only dots (`.` and `..` are
/// path segments, which a proxy in front of the JSON API might resolve).
pub fn client_id(value: &str) -> Result<(), VaultError> {
    identifier(
        Field::ClientId,
        value,
        MAX_CLIENT_ID_LEN,
        b"._-:@",
        "letters, digits and . _ - : @",
    )?;
    if value.bytes().all(|b| b == b'.') {
        return Err(VaultError::invalid(
            Field::ClientId,
            "must not be made of dots only",
        ));
    }
    Ok(())
}

/// A backup method (`PASSWORD`, `PASSWORD-SECP256K1`, ...). Portal calls it a generic string,
/// subject to change, so any printable ASCII is taken (1 to 64 bytes, space to `~`), and a
/// new method is stored, not refused. An empty method means `UNKNOWN`, as in Portal's
/// webhook. It is a storage key only as one part of a tuple key, so no value reaches
/// another's.
pub fn backup_method(value: &str) -> Result<&str, VaultError> {
    if value.is_empty() {
        return Ok(UNKNOWN_METHOD);
    }
    if value.len() > MAX_BACKUP_METHOD_LEN {
        return Err(VaultError::invalid(
            Field::BackupMethod,
            format!("must be at most {MAX_BACKUP_METHOD_LEN} bytes"),
        ));
    }
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(VaultError::invalid(
            Field::BackupMethod,
            "may contain only printable ASCII characters (no control characters)",
        ));
    }
    Ok(value)
}

/// A backup share pair id: 1 to 128 of `A-Z a-z 0-9 . _ - :`.
pub fn pair_id(field: Field, value: &str) -> Result<(), VaultError> {
    identifier(
        field,
        value,
        MAX_PAIR_ID_LEN,
        b"._-:",
        "letters, digits and . _ - :",
    )
}

/// A token name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn token_name(value: &str) -> Result<(), VaultError> {
    identifier(
        Field::Name,
        value,
        MAX_TOKEN_NAME_LEN,
        b"._-",
        "letters, digits and . _ -",
    )
}

/// Share material (a custodian share or a cipherText): non-empty, within the size limit,
/// and free of control characters other than tab, line feed and carriage return.
pub fn secret_text(field: Field, value: &str, max: usize) -> Result<(), VaultError> {
    if value.is_empty() {
        return Err(VaultError::invalid(field, "is required"));
    }
    if value.len() > max {
        return Err(VaultError::invalid(
            field,
            format!("must be at most {max} bytes"),
        ));
    }
    // ASCII controls are found a byte at a time; only text with other characters needs
    // decoding, for the C1 controls (U+0080 to U+009F).
    let ascii_control = |b: u8| matches!(b, 0x00..=0x08 | 0x0b | 0x0c | 0x0e..=0x1f | 0x7f);
    if value.bytes().any(ascii_control)
        || (!value.is_ascii() && value.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)))
    {
        return Err(VaultError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// The curves Portal makes backup share pairs for: a backup method ends in `-CURVE` only
/// with one of these.
pub const CURVES: &[&str] = &["SECP256K1", "ED25519"];

/// Splits `METHOD-CURVE` into the bare method and the curve, when the method ends in a hyphen
/// and a known curve ([`CURVES`]); any other method (`GDRIVE`, `UNKNOWN`, a future
/// `PASSKEY-ENCLAVE`) is a bare method with no curve.
pub fn split_curve(backup_method: &str) -> (&str, Option<&str>) {
    match backup_method.rsplit_once('-') {
        Some((method, curve)) if !method.is_empty() && CURVES.contains(&curve) => {
            (method, Some(curve))
        }
        _ => (backup_method, None),
    }
}

/// Whether a client share stored under `client_method` covers the custodian share under
/// `custodian_method` (`METHOD-CURVE`): the same key, or its bare method.
pub fn covers(client_method: &str, custodian_method: &str) -> bool {
    client_method == custodian_method || split_curve(custodian_method).0 == client_method
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_accept_portal_shapes_and_reject_the_rest() {
        for ok in ["clx1y2z3", "user_42", "a.b-c:d@e", &"x".repeat(128)] {
            assert!(client_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "slash/",
            "ünï",
            "new\nline",
            &"x".repeat(129),
        ] {
            let err = client_id(bad).unwrap_err();
            assert!(err.to_string().starts_with("client_id: "), "{err}");
        }
    }

    #[test]
    fn an_empty_method_means_unknown_and_bad_methods_are_named() {
        assert_eq!(backup_method("").unwrap(), "UNKNOWN");
        assert_eq!(
            backup_method("PASSWORD-SECP256K1").unwrap(),
            "PASSWORD-SECP256K1"
        );
        // Portal's methods are free-form: a new one is stored as sent.
        for ok in ["PASSKEY-ENCLAVE", "PASS WORD", "A/B:c.d~", &"M".repeat(64)] {
            assert_eq!(backup_method(ok).unwrap(), ok);
        }
        for bad in ["PASS\nWORD", "TAB\t", "DEL\u{7f}", "ÜBER", &"M".repeat(65)] {
            let err = backup_method(bad).unwrap_err();
            assert!(err.to_string().starts_with("backup_method: "), "{err}");
            assert!(!err.to_string().contains(bad), "the value is not echoed");
        }
    }

    #[test]
    fn secret_text_limits_size_and_control_characters_without_echoing() {
        assert!(secret_text(Field::Share, "{\"a\":\n\t1}", 100).is_ok());
        let err = secret_text(Field::Share, "secret\u{0}", 100).unwrap_err();
        for control in ['\u{1}', '\u{b}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}'] {
            assert!(secret_text(Field::Share, &format!("é{control}"), 100).is_err());
            assert!(secret_text(Field::Share, &format!("a{control}"), 100).is_err());
        }
        assert!(secret_text(Field::Share, "é✓\u{a0}", 100).is_ok());
        assert!(!err.to_string().contains("secret"));
        assert!(secret_text(Field::CipherText, "", 100).is_err());
        let err = secret_text(Field::CipherText, &"a".repeat(101), 100).unwrap_err();
        assert_eq!(err.to_string(), "cipher_text: must be at most 100 bytes");
    }

    #[test]
    fn curves_split_at_the_last_hyphen() {
        assert_eq!(
            split_curve("PASSWORD-SECP256K1"),
            ("PASSWORD", Some("SECP256K1"))
        );
        assert_eq!(split_curve("GDRIVE"), ("GDRIVE", None));
        assert_eq!(split_curve("A-B-ED25519"), ("A-B", Some("ED25519")));
        assert_eq!(split_curve("-ED25519"), ("-ED25519", None));
        // Only a known curve is split off: a future method with a hyphen stays whole.
        assert_eq!(split_curve("PASSKEY-ENCLAVE"), ("PASSKEY-ENCLAVE", None));
        assert_eq!(split_curve("UNKNOWN"), ("UNKNOWN", None));
        assert!(covers("PASSWORD", "PASSWORD-ED25519"));
        assert!(!covers("PASSKEY", "PASSKEY-ENCLAVE"));
    }
}
