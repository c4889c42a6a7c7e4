//! The synthetic client and its shares, and what each answer must be for Portal to go on.
//!
//! Pure functions of the answers, so that each verdict can be tested without a server.

use super::http::Outcome;
use hyper::StatusCode;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// The prefix of every synthetic client id, reserved for them.
pub use crate::validate::SELFTEST_CLIENT_PREFIX as CLIENT_PREFIX;
/// The backup method the synthetic shares are stored under.
pub const METHOD: &str = "PASSWORD";
/// The two curves of a Portal wallet.
pub const CURVES: [&str; 2] = ["SECP256K1", "ED25519"];
/// What Portal shows the user when its call to the webhook fails.
pub const PORTAL_FAILURE: &str = "a real Portal call would have seen WEBHOOK_FAILED";

/// One check's line.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    pub millis: u64,
    /// Why it failed, or what it found.
    pub detail: String,
}

/// A run's synthetic client: a fresh id, so runs never meet each other's data.
pub struct Synthetic {
    pub client_id: String,
    /// Random bytes the shares are made of.
    seed: [u8; 32],
}

impl Synthetic {
    pub fn new() -> Result<Self, String> {
        let mut random = [0u8; 40];
        getrandom::fill(&mut random).map_err(|e| format!("no random numbers: {e}"))?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&random[8..]);
        Ok(Self {
            client_id: format!("{CLIENT_PREFIX}{}", hex::encode(&random[..8])),
            seed,
        })
    }

    /// `METHOD-CURVE`, the key Portal stores a custodian share under.
    pub fn method(curve: &str) -> String {
        format!("{METHOD}-{curve}")
    }

    /// A custodian share shaped like Portal's (about 2 KB of JSON around hex numbers), for
    /// `curve` and the backup `version`. It is written with a space after each `:` but none
    /// after `,`, and its keys out of alphabetical order, so that a webhook that parses and
    /// re-serialises it (rather than keeping the string) answers other bytes, whatever its
    /// JSON library (compact as in JavaScript, Go or serde, `, `/`: ` as Python's default,
    /// keys sorted or not).
    pub fn share(&self, curve: &str, version: u32) -> String {
        let mut hex = Hex::new(&self.seed, curve, version);
        let mut take = |n: usize| hex.take(n);
        let (ssid, chain, px, py, share) = (take(64), take(64), take(64), take(64), take(1600));
        format!(
            "{{\"backupSharePairId\": \"{pair}\",\"clientId\": \"{client}\",\"curve\": \
             \"{curve}\",\"ssid\": \"{ssid}\",\"share\": \"{share}\",\"pubkey\": {{\"X\": \
             \"{px}\",\"Y\": \"{py}\"}},\"bip32ChainCode\": \"{chain}\",\"version\": {version}}}",
            pair = self.pair_id(curve, version),
            client = self.client_id,
        )
    }

    pub fn pair_id(&self, curve: &str, version: u32) -> String {
        format!("{}-{curve}-{version}", self.client_id)
    }

    /// The body of Portal's `/backup`, its fields in Portal's order.
    pub fn backup_body(&self, curve: &str, share: &str) -> Vec<u8> {
        format!(
            "{{\"clientId\":{},\"backupMethod\":{},\"share\":{}}}",
            quote(&self.client_id),
            quote(&Self::method(curve)),
            quote(share)
        )
        .into_bytes()
    }

    /// The body of Portal's `/backup/fetch`.
    pub fn fetch_body(&self) -> Vec<u8> {
        format!("{{\"clientId\":{}}}", quote(&self.client_id)).into_bytes()
    }

    /// A `/backup` body of about `bytes` bytes: a share far larger than Portal's.
    pub fn oversized_body(&self, bytes: usize) -> Vec<u8> {
        let share = "0".repeat(bytes);
        self.backup_body(CURVES[0], &share)
    }
}

fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// Hex digits drawn from SHA-256 of the seed, the curve, the version and a counter.
struct Hex {
    seed: Vec<u8>,
    counter: u64,
    buffer: String,
}

impl Hex {
    fn new(seed: &[u8; 32], curve: &str, version: u32) -> Self {
        let mut material = seed.to_vec();
        material.extend_from_slice(curve.as_bytes());
        material.extend_from_slice(&version.to_be_bytes());
        Self {
            seed: material,
            counter: 0,
            buffer: String::new(),
        }
    }

    fn take(&mut self, n: usize) -> String {
        use sha2::Digest;
        while self.buffer.len() < n {
            let mut hasher = sha2::Sha256::new();
            hasher.update(&self.seed);
            hasher.update(self.counter.to_be_bytes());
            self.counter += 1;
            self.buffer.push_str(&hex::encode(hasher.finalize()));
        }
        self.buffer.drain(..n).collect()
    }
}

/// The common part of every verdict: an answer within the limit, with `expected` status.
fn answered(
    name: &str,
    outcome: &Outcome,
    limit: Duration,
    expected: impl Fn(StatusCode) -> bool,
    expected_text: &str,
    consequence: &str,
) -> Result<(Check, Vec<u8>), Check> {
    let millis = outcome.elapsed.as_millis() as u64;
    let fail = |status: Option<u16>, why: String| Check {
        name: name.to_owned(),
        ok: false,
        status,
        millis,
        detail: format!("{why}; {consequence}"),
    };
    let answer = match &outcome.result {
        Ok(answer) => answer,
        Err(why) if outcome.elapsed >= limit => {
            return Err(fail(None, format!("{why}, the time Portal waits")));
        }
        Err(why) => return Err(fail(None, why.clone())),
    };
    let status = answer.status.as_u16();
    if outcome.elapsed > limit {
        return Err(fail(
            Some(status),
            format!("answered in {millis} ms, over Portal's limit"),
        ));
    }
    if !expected(answer.status) {
        let hint = match answer.status {
            StatusCode::NOT_FOUND => " (is the URL's path prefix right?)",
            StatusCode::UNAUTHORIZED => " (is it the secret registered in Portal?)",
            StatusCode::FORBIDDEN => " (is this host outside the webhook's allow-list?)",
            _ => "",
        };
        return Err(fail(
            Some(status),
            format!("answered {status} instead of {expected_text}{hint}"),
        ));
    }
    Ok((
        Check {
            name: name.to_owned(),
            ok: true,
            status: Some(status),
            millis,
            detail: if outcome.elapsed > limit / 2 {
                format!("{status} in {millis} ms, over half of Portal's limit")
            } else {
                format!("{status} in {millis} ms")
            },
        },
        answer.body.to_vec(),
    ))
}

/// A `/backup` (or a retry of one): any 2xx within the limit.
pub fn backup(name: &str, outcome: &Outcome, limit: Duration) -> Check {
    match answered(
        name,
        outcome,
        limit,
        |s| s.is_success(),
        "2xx",
        PORTAL_FAILURE,
    ) {
        Ok((check, _)) => check,
        Err(check) => check,
    }
}

/// A `/backup/fetch`: 200 with `{"backupShares": [...]}` holding each of `expected` (the
/// `METHOD-CURVE` it was stored under, the share) byte for byte. `replaced` are shares an overwrite replaced: answered too is no failure (Portal
/// picks by pair id), only noted.
pub fn fetch(
    name: &str,
    outcome: &Outcome,
    limit: Duration,
    expected: &[(&str, &str)],
    replaced: &[&str],
) -> Check {
    let (mut check, body) = match answered(
        name,
        outcome,
        limit,
        |s| s == StatusCode::OK,
        "200",
        PORTAL_FAILURE,
    ) {
        Ok(found) => found,
        Err(check) => return check,
    };
    match shares_in(&body, expected) {
        Ok(answered) => {
            check.detail = format!(
                "{}, {} share{}, {} byte-exact",
                check.detail,
                answered.len(),
                if answered.len() == 1 { "" } else { "s" },
                if expected.len() == 1 {
                    "ours".to_owned()
                } else {
                    format!("our {}", expected.len())
                },
            );
            if replaced.iter().any(|r| answered.iter().any(|a| a == r)) {
                check
                    .detail
                    .push_str(" (the replaced share is answered too)");
            }
        }
        Err(why) => {
            check.ok = false;
            check.detail = format!("{}: {why}; {PORTAL_FAILURE}", check.detail);
        }
    }
    check
}

/// The `backupShares` of a fetch answer, once each of `expected` is found in it exactly.
fn shares_in(body: &[u8], expected: &[(&str, &str)]) -> Result<Vec<String>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_owned())?;
    let Some(object) = value.as_object() else {
        return Err("the answer is not a JSON object".into());
    };
    let Some(list) = object.get("backupShares") else {
        return Err(if object.contains_key("backupShare") {
            "the answer has only the pre-multi-backup `backupShare`, no `backupShares` list".into()
        } else {
            "the answer has no `backupShares` list".into()
        });
    };
    let Some(list) = list.as_array() else {
        return Err("`backupShares` is not a list".into());
    };
    let mut shares = Vec::with_capacity(list.len());
    for item in list {
        match item.as_str() {
            Some(share) => shares.push(share.to_owned()),
            None => return Err("`backupShares` holds something other than strings".into()),
        }
    }
    for (key, want) in expected {
        if shares.iter().any(|s| s.as_str() == *want) {
            continue;
        }
        let parsed: Option<Value> = serde_json::from_str(want).ok();
        let rewritten = shares.iter().any(|s| {
            serde_json::from_str::<Value>(s)
                .ok()
                .is_some_and(|v| Some(v) == parsed)
        });
        return Err(if rewritten {
            format!(
                "the {key} share came back re-serialised (the same JSON in other bytes); \
                 Portal needs the string exactly as sent"
            )
        } else {
            format!("the {key} share is missing from the answer")
        });
    }
    Ok(shares)
}

/// A call that must be refused with `expected` (401, 413) within the limit.
pub fn refused(
    name: &str,
    outcome: &Outcome,
    limit: Duration,
    expected: StatusCode,
    consequence: &str,
) -> Check {
    match answered(
        name,
        outcome,
        limit,
        |s| s == expected,
        expected.as_str(),
        consequence,
    ) {
        Ok((check, _)) => check,
        Err(check) => check,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::selftest::http::Answer;

    fn answer(status: u16, body: &str, millis: u64) -> Outcome {
        Outcome {
            result: Ok(Answer {
                status: StatusCode::from_u16(status).unwrap(),
                body: body.to_owned().into(),
            }),
            elapsed: Duration::from_millis(millis),
            reached: true,
        }
    }

    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn synthetic_clients_pass_the_daemons_validation_and_look_like_portals() {
        let synthetic = Synthetic::new().unwrap();
        assert!(synthetic.client_id.starts_with(CLIENT_PREFIX));
        assert_ne!(synthetic.client_id, Synthetic::new().unwrap().client_id);
        crate::validate::client_id(&synthetic.client_id).unwrap();
        for curve in CURVES {
            crate::validate::backup_method(&Synthetic::method(curve)).unwrap();
            let pair = synthetic.pair_id(curve, 2);
            crate::validate::pair_id(crate::error::Field::BackupSharePairId, &pair).unwrap();
            let share = synthetic.share(curve, 2);
            assert!((1900..2300).contains(&share.len()), "{}", share.len());
            let json: Value = serde_json::from_str(&share).unwrap();
            assert_eq!(json["backupSharePairId"], pair.as_str());
            // Re-serialising changes the bytes, compact or in Python's default style.
            assert_ne!(json.to_string(), share);
            assert!(share.contains("\": \"") && !share.contains(", "));
            assert_eq!(share, synthetic.share(curve, 2));
            assert_ne!(share, synthetic.share(curve, 1));
        }
        let body: Value = serde_json::from_slice(&synthetic.backup_body("ED25519", "s")).unwrap();
        assert_eq!(body["backupMethod"], "PASSWORD-ED25519");
        assert_eq!(body["clientId"], synthetic.client_id.as_str());
    }

    #[test]
    fn a_fetch_must_answer_every_share_byte_for_byte() {
        let share = r#"{"backupSharePairId": "p1", "share": "ab"}"#;
        let expected = [("PASSWORD-SECP256K1", share)];
        let body = json_list("backupShares", &[share, "other"]);
        let check = fetch("f", &answer(200, &body, 5), LIMIT, &expected, &[]);
        assert!(check.ok, "{}", check.detail);
        assert_eq!(check.detail, "200 in 5 ms, 2 shares, ours byte-exact");

        let compact = json_list(
            "backupShares",
            &[r#"{"share":"ab","backupSharePairId":"p1"}"#],
        );
        let check = fetch("f", &answer(200, &compact, 5), LIMIT, &expected, &[]);
        assert!(!check.ok);
        assert!(
            check
                .detail
                .contains("the PASSWORD-SECP256K1 share came back re-serialised"),
            "{}",
            check.detail
        );
        assert!(check.detail.ends_with(PORTAL_FAILURE));

        for (body, why) in [
            (json_list("backupShares", &[]), "share is missing"),
            (r#"{"backupShare": "x"}"#.to_owned(), "pre-multi-backup"),
            (r#"{"backupShares": [1]}"#.to_owned(), "other than strings"),
            ("[]".to_owned(), "not a JSON object"),
            ("<html>".to_owned(), "not JSON"),
        ] {
            let check = fetch("f", &answer(200, &body, 5), LIMIT, &expected, &[]);
            assert!(
                !check.ok && check.detail.contains(why),
                "{why}: {}",
                check.detail
            );
        }
        let check = fetch("f", &answer(404, "", 5), LIMIT, &expected, &[]);
        assert!(
            check
                .detail
                .contains("answered 404 instead of 200 (is the URL's path prefix")
        );
    }

    fn json_list(key: &str, items: &[&str]) -> String {
        serde_json::json!({ key: items }).to_string()
    }

    #[test]
    fn calls_must_answer_within_portals_limit() {
        let check = backup("b", &answer(204, "", 5), LIMIT);
        assert!(check.ok && check.status == Some(204), "{}", check.detail);
        let check = backup("b", &answer(200, "", 6000), LIMIT);
        assert!(check.ok, "{}", check.detail);
        assert_eq!(check.detail, "200 in 6000 ms, over half of Portal's limit");
        let check = backup("b", &answer(200, "", 10_001), LIMIT);
        assert!(!check.ok && check.detail.contains("over Portal's limit"));
        let timed_out = Outcome {
            result: Err("no complete answer within 10000 ms".into()),
            elapsed: LIMIT,
            reached: true,
        };
        let check = backup("b", &timed_out, LIMIT);
        assert!(
            !check.ok && check.detail.ends_with(PORTAL_FAILURE),
            "{}",
            check.detail
        );
        let check = refused(
            "r",
            &answer(200, "", 5),
            LIMIT,
            StatusCode::UNAUTHORIZED,
            "why",
        );
        assert_eq!(check.detail, "answered 200 instead of 401; why");
        assert!(
            refused(
                "r",
                &answer(401, "", 5),
                LIMIT,
                StatusCode::UNAUTHORIZED,
                ""
            )
            .ok
        );
    }
}
