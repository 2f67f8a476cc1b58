//! Turning one attempt into an outcome: success, final failure, or a retry at a jittered,
//! capped, deadline-aware time.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryPolicy;
use crate::model::{ClaimedRequest, Outcome, RequestError, Timestamp};
use crate::upstream::Attempt;

/// Decides the outcome of `attempt` for `req` at time `now`.
pub(crate) fn classify(
    attempt: Attempt,
    req: &ClaimedRequest,
    policy: &RetryPolicy,
    now: Timestamp,
) -> Outcome {
    let (error, retry_after) = match attempt {
        Attempt::Answered {
            status,
            body,
            request_id,
            ..
        } if (200..300).contains(&status) => {
            return Outcome::Completed {
                status_code: status,
                body,
                upstream_request_id: request_id,
            };
        }
        Attempt::Answered {
            status,
            body,
            retry_after,
            ..
        } => {
            let error = RequestError {
                code: "upstream_status".into(),
                message: format!("the upstream answered HTTP {status}"),
                status_code: Some(status),
                body: Some(body),
            };
            if !retryable_status(status) {
                return Outcome::Failed(error);
            }
            (error, retry_after)
        }
        Attempt::Transport { code, message } => {
            let error = RequestError {
                code: code.into(),
                message,
                status_code: None,
                body: None,
            };
            if matches!(code, "response_too_large" | "invalid_request") {
                return Outcome::Failed(error);
            }
            (error, None)
        }
    };
    schedule_retry(error, retry_after, req, policy, now)
}

/// 408, 429 and 5xx may succeed later; any other status will not.
pub(crate) fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

fn schedule_retry(
    error: RequestError,
    retry_after: Option<Duration>,
    req: &ClaimedRequest,
    policy: &RetryPolicy,
    now: Timestamp,
) -> Outcome {
    let attempts_made = req.attempts + 1;
    if attempts_made >= policy.max_attempts {
        return Outcome::Failed(exhausted(error, attempts_made));
    }
    let delay = match retry_after {
        Some(after) => after.min(policy.max_retry_after),
        None => backoff(attempts_made, policy),
    };
    let not_before = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    if req.deadline.is_some_and(|d| not_before >= d) {
        return Outcome::Failed(RequestError {
            message: format!(
                "{} (not retried: the next attempt would start after the batch deadline)",
                error.message
            ),
            ..error
        });
    }
    Outcome::Retry { not_before, error }
}

fn exhausted(error: RequestError, attempts: u32) -> RequestError {
    RequestError {
        message: format!("{} (gave up after {attempts} attempts)", error.message),
        ..error
    }
}

/// Full-jitter exponential backoff: uniform in [0, min(max, base · 2^(n-1))], so that many
/// requests failing together do not retry together.
fn backoff(attempts_made: u32, policy: &RetryPolicy) -> Duration {
    let exp = attempts_made.saturating_sub(1).min(30);
    let ceiling = policy
        .base_backoff
        .saturating_mul(1u32 << exp)
        .min(policy.max_backoff);
    let millis = ceiling.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=millis))
}
