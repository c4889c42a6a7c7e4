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

/// What per-source limits count by: an IPv4 address, or the /64 network of an IPv6 address
/// (one host is usually handed a whole /64, so counting its single addresses would be no
/// limit at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(std::net::Ipv4Addr),
    V6Network(u64),
}

impl SourceKey {
    pub fn of(addr: std::net::IpAddr) -> Self {
        match addr {
            std::net::IpAddr::V4(v4) => SourceKey::V4(v4),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4),
                None => SourceKey::V6Network((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// What a failed authentication is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKey {
    /// The caller's address: an IPv4 address, or the /64 network of an IPv6 address (one
    /// host usually holds a whole /64).
    Source(SourceKey),
    /// The credential presented (a prefix of its SHA-256), wherever it comes from.
    Credential([u8; 8]),
}

impl FailureKey {
    pub fn source(addr: std::net::IpAddr) -> Self {
        FailureKey::Source(SourceKey::of(addr))
    }

    pub fn credential(presented: &[u8]) -> Self {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&digest(presented)[..8]);
        FailureKey::Credential(prefix)
    }
}

/// What a failed authentication by `source` with `presented` is counted against.
pub fn failure_keys(source: Option<std::net::IpAddr>, presented: Option<&[u8]>) -> Vec<FailureKey> {
    source
        .map(FailureKey::source)
        .into_iter()
        .chain(presented.map(FailureKey::credential))
        .collect()
}

/// The most sources, and separately the most credentials, whose failures are remembered;
/// beyond it the least recently failed one is forgotten. About 64 bytes each.
pub const MAX_TRACKED: usize = 65_536;

/// When a key's window began, and how many failures it has seen since.
#[derive(Debug, Clone, Copy)]
struct Window {
    since: std::time::Instant,
    failures: u32,
}

type Counts = std::sync::Mutex<lru::LruCache<FailureKey, Window, std::hash::RandomState>>;

/// What each failure past the limit adds to the delay of its answer, up to the limiter's
/// most (`--auth-failure-max-delay-ms`, [`MAX_PENALTY`] by default) per request.
pub const PENALTY_STEP: std::time::Duration = std::time::Duration::from_millis(100);

/// The default most delay of one answer.
pub const MAX_PENALTY: std::time::Duration = std::time::Duration::from_secs(2);

/// The most answers held back at once, so that delayed answers cannot take the in-flight
/// slots (256 per listener by default) that other callers need; past it, failures are
/// answered at once.
pub const MAX_PENALIZED: usize = 32;

/// The delay of the answer to a failure that is `over` failures past the limit, at most `max`.
pub fn penalty_for(over: u32, max: std::time::Duration) -> std::time::Duration {
    PENALTY_STEP.saturating_mul(over).min(max)
}

/// The late answer of a failure past the limit: imposed by [`FailureLimiter::fail`] on the
/// request being served, waited out by the front end ([`penalty::served`]) before the answer
/// goes out. Holds one of the [`MAX_PENALIZED`] places until then.
pub struct Penalty {
    delay: std::time::Duration,
    _held: tokio::sync::OwnedSemaphorePermit,
}

/// Where the penalty of the request being served is kept until its answer goes out.
pub mod penalty {
    use super::Penalty;
    use std::cell::RefCell;

    tokio::task_local! {
        static SLOT: RefCell<Option<Penalty>>;
    }

    /// Records `penalty` for the request being served (nothing outside [`served`]).
    pub(super) fn impose(penalty: Penalty) {
        let _ = SLOT.try_with(|slot| *slot.borrow_mut() = Some(penalty));
    }

    /// Serves a request with `serve`, then waits out the penalty it was given, if any,
    /// before its answer is returned.
    pub async fn served<F: std::future::Future>(serve: F) -> F::Output {
        SLOT.scope(RefCell::new(None), async {
            let answer = serve.await;
            if let Some(penalty) = SLOT.with(|slot| slot.borrow_mut().take()) {
                tokio::time::sleep(penalty.delay).await;
            }
            answer
        })
        .await
    }
}

/// Counts failed authentications. Once a source address or a credential has failed `limit`
/// times within `window`, its further *failures* are answered "rate limited" (429 /
/// RESOURCE_EXHAUSTED) until the window has passed, each later than the one before
/// ([`penalty_for`]: [`PENALTY_STEP`] more per failure past the limit, at most `max_delay`), so that guessing on past the limit costs the guesser time. A valid
/// credential is never refused nor delayed, whatever its source or anyone else did: only
/// failures are counted, and only failures are ever limited. Memory is bounded (at most
/// [`MAX_TRACKED`] sources and as many credentials, least recently failed forgotten first;
/// at most [`MAX_PENALIZED`] answers held back) and every operation is O(1).
pub struct FailureLimiter {
    limit: u32,
    window: std::time::Duration,
    /// Sources and credentials apart, so that a flood of guessed credentials cannot push
    /// out the count of the source guessing them.
    sources: Counts,
    credentials: Counts,
    max_delay: std::time::Duration,
    penalized: std::sync::Arc<tokio::sync::Semaphore>,
}

impl FailureLimiter {
    /// Limits failures to `limit` per `window`; past it, answers are held back up to
    /// `max_delay` each (zero: answered at once).
    pub fn new(limit: u32, window: std::time::Duration, max_delay: std::time::Duration) -> Self {
        Self::with_capacity(limit, window, max_delay, MAX_TRACKED)
    }

    fn with_capacity(
        limit: u32,
        window: std::time::Duration,
        max_delay: std::time::Duration,
        capacity: usize,
    ) -> Self {
        let capacity = std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        let counts = || {
            std::sync::Mutex::new(lru::LruCache::with_hasher(
                capacity,
                std::hash::RandomState::new(),
            ))
        };
        Self {
            limit,
            window,
            sources: counts(),
            credentials: counts(),
            max_delay,
            penalized: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PENALIZED)),
        }
    }

    /// Counts a failure against every key. `Err(seconds to wait)` if any of them had already
    /// failed `limit` times within the window: the failure is then to be answered "rate
    /// limited" rather than "unauthenticated", and late ([`penalty`]).
    pub fn fail(&self, keys: &[FailureKey]) -> Result<(), u64> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let mut wait = None;
        let mut over = 0;
        for key in keys {
            let counts = match key {
                FailureKey::Source(_) => &self.sources,
                FailureKey::Credential(_) => &self.credentials,
            };
            let mut counts = counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry = counts.get_or_insert_mut(*key, || Window {
                since: now,
                failures: 0,
            });
            let elapsed = now.duration_since(entry.since);
            if elapsed >= self.window {
                *entry = Window {
                    since: now,
                    failures: 0,
                };
            }
            if entry.failures >= self.limit {
                let left = self.window.saturating_sub(elapsed).as_secs().max(1);
                wait = Some(wait.map_or(left, |w: u64| w.max(left)));
                over = over.max(entry.failures - self.limit + 1);
            }
            entry.failures = entry.failures.saturating_add(1);
        }
        if over > 0
            && !self.max_delay.is_zero()
            && let Ok(held) = std::sync::Arc::clone(&self.penalized).try_acquire_owned()
        {
            penalty::impose(Penalty {
                delay: penalty_for(over, self.max_delay),
                _held: held,
            });
        }
        wait.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn source(addr: &str) -> FailureKey {
        FailureKey::source(addr.parse().unwrap())
    }

    #[test]
    fn failures_over_the_limit_are_limited_per_key_until_the_window_passes() {
        let limiter = FailureLimiter::new(3, Duration::from_millis(200), MAX_PENALTY);
        let attacker = source("203.0.113.9");
        let other = source("198.51.100.1");
        for _ in 0..3 {
            assert!(limiter.fail(&[attacker]).is_ok());
        }
        assert_eq!(limiter.fail(&[attacker]), Err(1));
        assert!(
            limiter.fail(&[other]).is_ok(),
            "other sources are unaffected"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(limiter.fail(&[attacker]).is_ok());
        let token = FailureKey::credential(b"svt_guess");
        assert_eq!(token, FailureKey::credential(b"svt_guess"));
        assert_ne!(token, FailureKey::credential(b"svt_other"));
        let off = FailureLimiter::new(0, Duration::from_secs(1), MAX_PENALTY);
        for _ in 0..10 {
            assert!(off.fail(&[attacker]).is_ok());
        }
    }

    #[test]
    fn the_penalty_grows_per_failure_past_the_limit_and_is_bounded() {
        assert_eq!(penalty_for(1, MAX_PENALTY), PENALTY_STEP);
        assert_eq!(penalty_for(3, MAX_PENALTY), 3 * PENALTY_STEP);
        assert_eq!(penalty_for(u32::MAX, MAX_PENALTY), MAX_PENALTY);
        assert_eq!(penalty_for(3, Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn failures_past_the_limit_are_answered_late_and_few_are_held_at_once() {
        let limiter =
            std::sync::Arc::new(FailureLimiter::new(1, Duration::from_secs(60), MAX_PENALTY));
        let guesser = source("192.0.2.1");
        let fail = |limiter: std::sync::Arc<FailureLimiter>| {
            penalty::served(async move {
                let _ = limiter.fail(&[guesser]);
                tokio::task::yield_now().await;
            })
        };
        // Within the limit: no penalty.
        fail(Arc::clone(&limiter)).await;
        assert_eq!(limiter.penalized.available_permits(), MAX_PENALIZED);
        // Far past it (outside a request being served, nothing is held)...
        for _ in 0..30 {
            assert!(limiter.fail(&[guesser]).is_err());
        }
        assert_eq!(limiter.penalized.available_permits(), MAX_PENALIZED);
        // ...each answer is held for the longest penalty, and holds a place until it goes
        // out; past MAX_PENALIZED held at once, failures are answered at once.
        let started = std::time::Instant::now();
        let answers: Vec<_> = (0..MAX_PENALIZED + 8)
            .map(|_| tokio::spawn(fail(Arc::clone(&limiter))))
            .collect();
        tokio::time::sleep(MAX_PENALTY / 10).await;
        assert_eq!(limiter.penalized.available_permits(), 0);
        assert_eq!(answers.iter().filter(|a| a.is_finished()).count(), 8);
        for answer in answers {
            answer.await.unwrap();
        }
        assert!(started.elapsed() >= MAX_PENALTY);
        assert_eq!(limiter.penalized.available_permits(), MAX_PENALIZED);
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64_network() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60), MAX_PENALTY);
        assert!(limiter.fail(&[source("2001:db8:1:2::1")]).is_ok());
        assert!(limiter.fail(&[source("2001:db8:1:2:ffff::7")]).is_ok());
        assert!(limiter.fail(&[source("2001:db8:1:2::9")]).is_err());
        assert!(limiter.fail(&[source("2001:db8:1:3::1")]).is_ok());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_distinct_sources_and_credentials() {
        let limiter = FailureLimiter::with_capacity(1, Duration::from_secs(60), MAX_PENALTY, 1000);
        let guesser = source("192.0.2.1");
        assert!(limiter.fail(&[guesser]).is_ok());
        assert!(limiter.fail(&[guesser]).is_err());
        // A flood of distinct credentials does not push out the guessing source's count.
        for n in 0..5000u32 {
            let _ = limiter.fail(&[FailureKey::credential(&n.to_le_bytes())]);
        }
        assert!(limiter.fail(&[guesser]).is_err());
        for n in 0..5000u32 {
            let v6: std::net::Ipv6Addr = (0x2001_0db8_u128 << 96 | u128::from(n) << 64).into();
            let _ = limiter.fail(&[FailureKey::source(v6.into())]);
        }
        let len = |c: &Counts| c.lock().unwrap().len();
        assert_eq!(len(&limiter.sources), 1000);
        assert_eq!(len(&limiter.credentials), 1000);
    }
}
