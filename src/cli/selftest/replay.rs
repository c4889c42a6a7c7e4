//! Portal's calls, in the order Portal makes them, each followed by its check.

use super::checks::{self, CURVES, Check, Synthetic};
use super::http::{Secret, Webhook};
use super::{CliError, Lines};
use hyper::StatusCode;
use zeroize::Zeroizing;

/// A wrong secret of the same form as a real one.
fn wrong_secret() -> Result<Zeroizing<String>, CliError> {
    let mut random = [0u8; 24];
    getrandom::fill(&mut random).map_err(|e| CliError::Local(format!("no random numbers: {e}")))?;
    Ok(Zeroizing::new(format!(
        "selftest-wrong-secret-{}",
        hex::encode(random)
    )))
}

/// A check and whether its call reached the webhook at all.
pub(super) type Step = (Check, bool);

/// A backup followed by its check.
async fn backup(
    webhook: &Webhook,
    synthetic: &Synthetic,
    name: &str,
    curve: &str,
    share: &str,
) -> Step {
    let body = synthetic.backup_body(curve, share);
    let outcome = webhook.post("/backup", body, Secret::Ours).await;
    (
        checks::backup(name, &outcome, webhook.limit),
        outcome.reached,
    )
}

/// A fetch followed by its check.
async fn fetch(
    webhook: &Webhook,
    synthetic: &Synthetic,
    name: &str,
    expected: &[(&str, &str)],
    replaced: &[&str],
) -> Step {
    let outcome = webhook
        .post("/backup/fetch", synthetic.fetch_body(), Secret::Ours)
        .await;
    let check = checks::fetch(name, &outcome, webhook.limit, expected, replaced);
    (check, outcome.reached)
}

/// Portal's calls, in the order Portal makes them, each followed by its check. Stops at the
/// first call that cannot connect: the others would fail the same way.
pub(super) async fn replay(
    webhook: &Webhook,
    synthetic: &Synthetic,
    oversized_bytes: u64,
    lines: &mut Lines,
) -> Result<(), CliError> {
    let (w, s) = (webhook, synthetic);
    let (first, second) = (CURVES[0], CURVES[1]);
    let (key1, key2) = (Synthetic::method(first), Synthetic::method(second));
    let v1 = [s.share(first, 1), s.share(second, 1)];
    let v2 = s.share(first, 2);
    let first_v1 = (key1.as_str(), v1[0].as_str());
    let second_v1 = (key2.as_str(), v1[1].as_str());
    let both = [first_v1, second_v1];
    let overwritten = [(key1.as_str(), v2.as_str()), second_v1];

    // Each step is printed as it ends; the replay stops at a call that cannot connect.
    macro_rules! step {
        ($call:expr) => {
            if !lines.step($call.await)? {
                return Ok(());
            }
        };
    }
    step!(backup(w, s, &format!("backup {first}"), first, &v1[0]));
    step!(fetch(
        w,
        s,
        &format!("fetch after backup {first}"),
        &[first_v1],
        &[]
    ));
    step!(backup(w, s, &format!("backup {second}"), second, &v1[1]));
    step!(fetch(
        w,
        s,
        &format!("fetch after backup {second}"),
        &both,
        &[]
    ));
    step!(backup(
        w,
        s,
        &format!("retry of backup {first}"),
        first,
        &v1[0]
    ));
    step!(fetch(w, s, "fetch after retry", &both, &[]));
    step!(backup(w, s, &format!("overwrite {first}"), first, &v2));
    step!(fetch(
        w,
        s,
        "fetch after overwrite",
        &overwritten,
        &[&v1[0]]
    ));

    let wrong = wrong_secret()?;
    let body = s.backup_body(first, &s.share(first, 3));
    let outcome = w.post("/backup", body, Secret::Other(&wrong)).await;
    lines.push(checks::refused(
        "backup with a wrong secret",
        &outcome,
        w.limit,
        StatusCode::UNAUTHORIZED,
        "a webhook that does not answer 401 to a wrong secret lets anyone who reaches it \
         overwrite shares",
    ))?;
    let outcome = w
        .post("/backup/fetch", s.fetch_body(), Secret::Missing)
        .await;
    lines.push(checks::refused(
        "fetch without a secret",
        &outcome,
        w.limit,
        StatusCode::UNAUTHORIZED,
        "a webhook that does not answer 401 to a missing secret hands every share to anyone \
         who reaches it",
    ))?;
    let bytes = usize::try_from(oversized_bytes).unwrap_or(usize::MAX);
    let outcome = w.post_refused("/backup", s.oversized_body(bytes)).await;
    lines.push(checks::refused(
        &format!("oversized body ({} KiB)", oversized_bytes / 1024),
        &outcome,
        w.limit,
        StatusCode::PAYLOAD_TOO_LARGE,
        "a webhook should refuse a body far larger than any share with 413",
    ))?;
    Ok(())
}
