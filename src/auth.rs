//! Who may call what: webhook secrets, API tokens and their roles.
//!
//! Secrets are never compared directly: both sides are hashed with SHA-256 and the digests are
//! compared in constant time, so neither the content nor the length of a secret leaks through
//! timing. API tokens are stored only as their SHA-256 hash.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The BackupService, except reading custodian shares.
    Backend,
    /// The BackupService, including `GetCustodianBackupShare` (eject).
    Eject,
    /// The AdminService.
    Admin,
}

impl Role {
    pub fn as_u8(self) -> u8 {
        match self {
            Role::Backend => 1,
            Role::Eject => 2,
            Role::Admin => 3,
        }
    }

    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Role::Backend),
            2 => Some(Role::Eject),
            3 => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Backend => "backend",
            Role::Eject => "eject",
            Role::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Role::Backend, Role::Eject, Role::Admin]
            .into_iter()
            .find(|r| r.name() == name)
    }

    /// Whether this role includes `needed`.
    pub fn allows(self, needed: Role) -> bool {
        match needed {
            Role::Backend => matches!(self, Role::Backend | Role::Eject),
            Role::Eject => self == Role::Eject,
            Role::Admin => self == Role::Admin,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// The prefix of every API token, so that leaked tokens are easy to search for.
pub const TOKEN_PREFIX: &str = "svt_";

/// SHA-256 of a secret, the only form in which sharevault keeps or compares secrets.
pub fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Constant-time equality of two digests.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// `bytes` random bytes, base64url encoded without padding.
pub fn random_secret(bytes: usize) -> Result<Zeroizing<String>, crate::crypto::CryptoError> {
    let mut raw = Zeroizing::new(vec![0u8; bytes]);
    getrandom::fill(&mut raw).map_err(|_| crate::crypto::CryptoError::Random)?;
    Ok(Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*raw),
    ))
}

/// A new API token: `svt_` and 32 random bytes.
pub fn generate_token() -> Result<Zeroizing<String>, crate::crypto::CryptoError> {
    let secret = random_secret(32)?;
    Ok(Zeroizing::new(format!("{TOKEN_PREFIX}{}", *secret)))
}

/// The shortest secret accepted for the webhook or the admin token.
pub const MIN_SECRET_LEN: usize = 16;

/// The configured webhook secrets, several at once so that one can be rotated.
pub struct WebhookSecrets {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecrets({} configured)", self.digests.len())
    }
}

impl WebhookSecrets {
    /// One secret per non-empty line; surrounding whitespace is ignored.
    pub fn from_file_contents(contents: &str) -> Result<Self, String> {
        let digests: Vec<_> = contents
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| {
                if l.len() < MIN_SECRET_LEN {
                    Err(format!(
                        "every webhook secret must be at least {MIN_SECRET_LEN} characters"
                    ))
                } else {
                    Ok(digest(l.as_bytes()))
                }
            })
            .collect::<Result<_, _>>()?;
        if digests.is_empty() {
            return Err("the webhook secret file holds no secret".into());
        }
        Ok(Self { digests })
    }

    /// Whether `presented` is one of the secrets. Checks every secret, in constant time.
    pub fn verify(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, d| {
                found | d.ct_eq(&presented)
            })
            .into()
    }
}

/// Extracts the token from an `authorization: Bearer <token>` value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_configured_webhook_secret_is_accepted_and_nothing_else() {
        let secrets = WebhookSecrets::from_file_contents(
            "old-secret-0123456789\n\n new-secret-9876543210 \n",
        )
        .unwrap();
        assert!(secrets.verify(b"old-secret-0123456789"));
        assert!(secrets.verify(b"new-secret-9876543210"));
        assert!(!secrets.verify(b"new-secret-987654321"));
        assert!(!secrets.verify(b""));
        assert!(!format!("{secrets:?}").contains("secret-"));
    }

    #[test]
    fn short_or_missing_webhook_secrets_are_refused() {
        assert!(WebhookSecrets::from_file_contents("short").is_err());
        assert!(WebhookSecrets::from_file_contents("\n \n").is_err());
    }

    #[test]
    fn roles_nest_as_documented() {
        assert!(Role::Eject.allows(Role::Backend));
        assert!(Role::Eject.allows(Role::Eject));
        assert!(!Role::Backend.allows(Role::Eject));
        assert!(!Role::Admin.allows(Role::Backend));
        assert!(!Role::Backend.allows(Role::Admin));
    }

    #[test]
    fn bearer_values_are_parsed_strictly() {
        assert_eq!(bearer("Bearer svt_abc"), Some("svt_abc"));
        assert_eq!(bearer("bearer svt_abc"), Some("svt_abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("svt_abc"), None);
    }

    #[test]
    fn tokens_are_unique_and_prefixed() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 4 + 43);
        assert_ne!(*a, *b);
    }
}

/// What a failed authentication is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKey {
    /// The caller's address.
    Source(std::net::IpAddr),
    /// The credential presented (a prefix of its SHA-256), wherever it comes from.
    Credential([u8; 8]),
}

impl FailureKey {
    pub fn credential(presented: &[u8]) -> Self {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&digest(presented)[..8]);
        FailureKey::Credential(prefix)
    }
}

/// Limits failed authentications: once a source address or a credential has failed `limit`
/// times within `window`, further attempts with it are refused, without being checked, until
/// the window has passed. Successful callers are never counted.
pub struct FailureLimiter {
    limit: u32,
    window: std::time::Duration,
    counts: std::sync::Mutex<std::collections::HashMap<FailureKey, (std::time::Instant, u32)>>,
}

/// The most keys tracked; beyond it expired entries are dropped, then the oldest.
const MAX_TRACKED: usize = 100_000;

impl FailureLimiter {
    pub fn new(limit: u32, window: std::time::Duration) -> Self {
        Self {
            limit,
            window,
            counts: std::sync::Mutex::default(),
        }
    }

    /// `Err(seconds to wait)` if any key is over its limit.
    pub fn check(&self, keys: &[FailureKey]) -> Result<(), u64> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in keys {
            if let Some((since, n)) = counts.get(key)
                && *n >= self.limit
                && now.duration_since(*since) < self.window
            {
                let left = self.window - now.duration_since(*since);
                return Err(left.as_secs().max(1));
            }
        }
        Ok(())
    }

    /// Counts a failure against every key.
    pub fn fail(&self, keys: &[FailureKey]) {
        if self.limit == 0 {
            return;
        }
        let now = std::time::Instant::now();
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.len() >= MAX_TRACKED {
            let window = self.window;
            counts.retain(|_, (since, _)| now.duration_since(*since) < window);
            if counts.len() >= MAX_TRACKED
                && let Some(oldest) = counts
                    .iter()
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(k, _)| *k)
            {
                counts.remove(&oldest);
            }
        }
        for key in keys {
            let entry = counts.entry(*key).or_insert((now, 0));
            if now.duration_since(entry.0) >= self.window {
                *entry = (now, 0);
            }
            entry.1 += 1;
        }
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn failures_over_the_limit_are_refused_per_key_until_the_window_passes() {
        let limiter = FailureLimiter::new(3, Duration::from_millis(200));
        let attacker = FailureKey::Source("203.0.113.9".parse().unwrap());
        let other = FailureKey::Source("198.51.100.1".parse().unwrap());
        for _ in 0..3 {
            assert!(limiter.check(&[attacker]).is_ok());
            limiter.fail(&[attacker]);
        }
        assert_eq!(limiter.check(&[attacker]), Err(1));
        assert!(
            limiter.check(&[other]).is_ok(),
            "other sources are unaffected"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(limiter.check(&[attacker]).is_ok());
        let token = FailureKey::credential(b"svt_guess");
        assert_eq!(token, FailureKey::credential(b"svt_guess"));
        assert_ne!(token, FailureKey::credential(b"svt_other"));
        assert!(
            FailureLimiter::new(0, Duration::from_secs(1))
                .check(&[attacker])
                .is_ok()
        );
    }
}
