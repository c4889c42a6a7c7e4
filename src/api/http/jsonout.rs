//! JSON string output for the answers that carry shares.
//!
//! A fetch answers with eight shares of about 2 KB each, and every share is itself JSON, so
//! the whole answer is a string to escape. serde_json looks at one byte at a time; this scans
//! eight at a time for the bytes that need an escape (`"`, `\` and controls) and copies the
//! runs between them whole. The output is byte for byte what serde_json writes.

/// Every byte of a word set to `b`.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// Whether any byte of `word` is `"`, `\` or below 0x20. (A byte is below `n` (`n` ≤ 128)
/// exactly when `byte - n` borrows into its top bit while the byte's own top bit is clear; a
/// byte equals `c` when `byte ^ c` is below 1.)
fn needs_escape(word: u64) -> bool {
    const HIGH: u64 = splat(0x80);
    let below = |x: u64, n: u8| x.wrapping_sub(splat(n)) & !x & HIGH;
    (below(word, 0x20) | below(word ^ splat(b'"'), 1) | below(word ^ splat(b'\\'), 1)) != 0
}

/// Appends `s` to `out` as a JSON string, quotes included.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0; // first byte not yet written
    let mut at = 0;
    while at < bytes.len() {
        if let Some(chunk) = bytes.get(at..at + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !needs_escape(u64::from_ne_bytes(word)) {
                at += 8;
                continue;
            }
        }
        // A word with a byte to escape, or the tail: byte by byte up to the word's end.
        let end = (at + 8).min(bytes.len());
        for (i, &b) in bytes.iter().enumerate().take(end).skip(at) {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let unicode;
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => {
                    unicode = [
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 0xf)],
                    ];
                    &unicode
                }
                _ => continue,
            };
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(escape);
            start = i + 1;
        }
        at = end;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `{"key":["a","b",...]}` with `extra` string members after it, as one JSON object.
pub fn object_of_strings(key: &str, items: &[&str], extra: &[(&str, &str)]) -> Vec<u8> {
    let size: usize = items
        .iter()
        .chain(extra.iter().map(|(_, v)| v))
        .map(|s| s.len() + 3)
        .sum();
    let mut out = Vec::with_capacity(size + size / 8 + 64);
    out.push(b'{');
    push_str(&mut out, key);
    out.extend_from_slice(b":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(&mut out, item);
    }
    out.push(b']');
    for (name, value) in extra {
        out.push(b',');
        push_str(&mut out, name);
        out.push(b':');
        push_str(&mut out, value);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        push_str(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn matches_serde_json_on_every_byte_that_needs_an_escape() {
        for b in 0u8..0x80 {
            let c = char::from(b);
            for s in [
                c.to_string(),
                format!("abcdefg{c}"),
                format!("abcdefgh{c}ij"),
                format!("{c}{c}{c}{c}{c}{c}{c}{c}{c}"),
            ] {
                assert_eq!(
                    escaped(&s),
                    serde_json::to_string(&s).unwrap(),
                    "byte {b:#04x}"
                );
            }
        }
        let share = r#"{"share":"0a1b2c","ssid":"x\y","note":"tab	é✓"}"#;
        assert_eq!(escaped(share), serde_json::to_string(share).unwrap());
        assert_eq!(escaped(""), "\"\"");
    }

    #[test]
    fn objects_parse_back_to_their_members() {
        let body = object_of_strings(
            "backupShares",
            &["a\"b", "{\"x\":1}"],
            &[("backupShare", "z")],
        );
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"backupShares": ["a\"b", "{\"x\":1}"], "backupShare": "z"})
        );
        let empty: serde_json::Value =
            serde_json::from_slice(&object_of_strings("backupShares", &[], &[])).unwrap();
        assert_eq!(empty, serde_json::json!({"backupShares": []}));
    }

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(s in any::<String>()) {
            prop_assert_eq!(escaped(&s), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn json_like_strings_too(s in r#"[\x00-\x7f"\\{}:,a-f0-9]{0,200}"#) {
            prop_assert_eq!(escaped(&s), serde_json::to_string(&s).unwrap());
        }
    }
}
