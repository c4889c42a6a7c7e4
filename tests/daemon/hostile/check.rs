//! Sending a hostile case and checking its answer against what the case expects.

use super::table::{Case, Expect, Request, To};
use crate::http_client::{Http, RawReply};

/// Sends `case` on a new connection to its listener.
pub async fn exchange(case: &Case, webhook: &str, api: &str) -> RawReply {
    let addr = match case.to {
        To::Webhook => webhook,
        To::Api => api,
    };
    let http = Http::plain(addr);
    match &case.request {
        Request::Raw(bytes) if matches!(case.expect, Expect::StatusThenClosed(_)) => {
            http.send_raw_until_close(bytes).await
        }
        Request::Raw(bytes) => http.send_raw(bytes).await,
        Request::Http {
            method,
            path,
            headers,
            body,
        } => {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            http.send(method, path, &headers, Some(body)).await.into()
        }
    }
}

/// Checks that `outcome` is a JSON error with `status` and `code`; answers its message.
fn json_error(outcome: &RawReply, status: u16, code: &str) -> Result<String, String> {
    let body = String::from_utf8_lossy(&outcome.body);
    if outcome.status != Some(status) {
        return Err(format!(
            "expected {status}, got {:?}: {body}",
            outcome.status
        ));
    }
    if outcome.content_type.as_deref() != Some("application/json") {
        return Err(format!(
            "expected a JSON error, got {:?}: {body}",
            outcome.content_type
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&outcome.body).map_err(|_| format!("not JSON: {body}"))?;
    if value["error"]["code"] != code {
        return Err(format!("expected error.code {code}: {body}"));
    }
    value["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no error.message: {body}"))
}

/// Checks an outcome against its expectation; answers what was wrong.
pub fn check(case: &Case, outcome: &RawReply) -> Result<(), String> {
    let body = String::from_utf8_lossy(&outcome.body);
    if body.contains("PLANTED") {
        return Err(format!("the answer carries a planted marker: {body}"));
    }
    let status_is = |status: u16| {
        if outcome.status == Some(status) {
            Ok(())
        } else {
            Err(format!(
                "expected {status}, got {:?}: {body}",
                outcome.status
            ))
        }
    };
    match &case.expect {
        Expect::Error(status, code) => {
            json_error(outcome, *status, code)?;
        }
        Expect::Invalid(prefix) => {
            let message = json_error(outcome, 400, "invalid_argument")?;
            if !message.starts_with(prefix.as_str()) {
                return Err(format!("expected a message on {prefix:?}, got {message:?}"));
            }
        }
        Expect::StatusThenClosed(status) => {
            status_is(*status)?;
            match &outcome.after {
                Some(after) if after.is_empty() => {}
                Some(after) => {
                    return Err(format!(
                        "more came after the answer: {}",
                        String::from_utf8_lossy(after)
                    ));
                }
                None => return Err("the connection stayed open after the answer".into()),
            }
        }
        Expect::StatusOrClosed(statuses) => {
            if let Some(status) = outcome.status
                && !statuses.contains(&status)
            {
                return Err(format!(
                    "expected one of {statuses:?} or a close, got {status}"
                ));
            }
        }
    }
    Ok(())
}
