//! One retry policy for every vendor request: exponential backoff with full jitter, a bound
//! on attempts, a timeout per attempt and a deadline for the whole operation, and the
//! vendor's `Retry-After` honoured when it is reasonable.
//!
//! It only retries what the caller classifies as retryable; the caller must only do that for
//! idempotent requests (or ones carrying an idempotency key, like Telnyx `command_id`).

use std::future::Future;
use std::time::Duration;

use rand::Rng as _;
use reqwest::header::HeaderMap;
use tokio::time::Instant;

/// How a request is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (the first one included).
    pub max_attempts: u32,
    /// First backoff ceiling; doubles per attempt.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
    /// Bound on one attempt.
    pub attempt_timeout: Duration,
    /// Bound on the whole operation, waits included.
    pub deadline: Duration,
    /// A `Retry-After` longer than this is not waited for (the operation fails instead).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Mirrors the vendors' own SDKs (vendor-protocols.md 1.1: 0.5 s doubling, 8 s cap,
        // Retry-After up to 60 s) with one more attempt; bounded well under the engine's
        // per-command timeout multiplied by its own attempts.
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
            attempt_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// What one attempt amounted to.
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// Finished (successfully or with a final error the caller maps itself).
    Done(Result<T, E>),
    /// Worth another attempt, after `after` if the vendor said so.
    Retry {
        /// The vendor's `Retry-After`, if any.
        after: Option<Duration>,
        /// What went wrong (kept for the final error).
        error: E,
    },
}

/// Why the operation gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted<E> {
    /// The last attempt's error, after `attempts` attempts.
    #[error("gave up after {attempts} attempts: {last}")]
    Attempts {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: E,
    },
    /// The vendor asked to wait longer than the policy allows.
    #[error("the vendor asked to retry after {0:?}, beyond the policy's limit: {1}")]
    TooLong(Duration, E),
}

impl<E> Exhausted<E> {
    /// The last error seen.
    pub fn into_last(self) -> E {
        match self {
            Exhausted::Attempts { last, .. } | Exhausted::TooLong(_, last) => last,
        }
    }
}

impl RetryPolicy {
    /// The backoff before attempt `n + 1` (n >= 1): uniform in `[0, min(cap, base * 2^(n-1))]`
    /// ("full jitter": spreads a thundering herd of retries).
    pub fn backoff(&self, n: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
            .min(self.cap);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }

    /// Runs `attempt` until it is done, retries are exhausted or the deadline passes. Each
    /// attempt is bounded by `attempt_timeout`; `on_timeout` builds the error of an attempt
    /// that timed out (it counts as retryable).
    pub async fn run<T, E, F, Fut>(
        &self,
        mut attempt: F,
        on_timeout: impl Fn(Duration) -> E,
    ) -> Result<T, Exhausted<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Attempt<T, E>>,
    {
        let started = Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            let left = self.deadline.saturating_sub(started.elapsed());
            let bound = self.attempt_timeout.min(left);
            let outcome = match tokio::time::timeout(bound, attempt(n)).await {
                Ok(outcome) => outcome,
                Err(_) => Attempt::Retry {
                    after: None,
                    error: on_timeout(bound),
                },
            };
            let (after, error) = match outcome {
                Attempt::Done(result) => {
                    return result.map_err(|last| Exhausted::Attempts { attempts: n, last })
                }
                Attempt::Retry { after, error } => (after, error),
            };
            if n >= self.max_attempts {
                return Err(Exhausted::Attempts {
                    attempts: n,
                    last: error,
                });
            }
            let wait = match after {
                Some(after) if after > self.max_retry_after => {
                    return Err(Exhausted::TooLong(after, error));
                }
                Some(after) => after,
                None => self.backoff(n),
            };
            if started.elapsed() + wait >= self.deadline {
                return Err(Exhausted::Attempts {
                    attempts: n,
                    last: error,
                });
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// The vendor's requested wait: `retry-after-ms` (milliseconds), else `retry-after` (seconds
/// or an HTTP date). Zero and unparseable values count as absent.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms > 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let raw = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
        .filter(|d| !d.is_zero())
}

/// The vendor's explicit retry advice (`x-should-retry: true|false`), if any.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    match headers.get("x-should-retry")?.to_str().ok()?.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Whether an HTTP status is worth retrying (vendor-protocols.md 1.1): 408, 409, 429, 5xx.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            attempt_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_is_bounded_by_the_doubling_ceiling() {
        let p = policy();
        for _ in 0..200 {
            assert!(p.backoff(1) <= Duration::from_millis(100));
            assert!(p.backoff(2) <= Duration::from_millis(200));
            assert!(p.backoff(5) <= Duration::from_millis(400));
        }
    }

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("0"));
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
        assert_eq!(should_retry(&h), None);
        h.insert("x-should-retry", HeaderValue::from_static("false"));
        assert_eq!(should_retry(&h), Some(false));
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 409, 429, 500, 502, 503, 504] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!retryable_status(s), "{s}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_done_and_honours_retry_after() {
        let started = Instant::now();
        let result: Result<u32, Exhausted<String>> = policy()
            .run(
                |n| async move {
                    if n < 3 {
                        Attempt::Retry {
                            after: Some(Duration::from_secs(2)),
                            error: format!("attempt {n}"),
                        }
                    } else {
                        Attempt::Done(Ok(n))
                    }
                },
                |_| "timeout".to_owned(),
            )
            .await;
        assert_eq!(result, Ok(3));
        assert_eq!(started.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_and_on_long_retry_after() {
        let result: Result<(), Exhausted<String>> = policy()
            .run(
                |n| async move {
                    Attempt::Retry {
                        after: None,
                        error: format!("attempt {n}"),
                    }
                },
                |_| "timeout".to_owned(),
            )
            .await;
        assert_eq!(
            result,
            Err(Exhausted::Attempts {
                attempts: 3,
                last: "attempt 3".into()
            })
        );
        let result: Result<(), Exhausted<String>> = policy()
            .run(
                |_| async move {
                    Attempt::Retry {
                        after: Some(Duration::from_secs(30)),
                        error: "busy".to_owned(),
                    }
                },
                |_| "timeout".to_owned(),
            )
            .await;
        assert!(matches!(result, Err(Exhausted::TooLong(_, _))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_times_out_and_is_retried() {
        let result: Result<u32, Exhausted<String>> = policy()
            .run(
                |n| async move {
                    if n == 1 {
                        std::future::pending::<()>().await;
                    }
                    Attempt::Done(Ok(n))
                },
                |d| format!("timed out after {d:?}"),
            )
            .await;
        assert_eq!(result, Ok(2));
    }
}
