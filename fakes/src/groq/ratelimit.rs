//! The `x-ratelimit-*` headers Groq puts on every response (section 4): limits, what remains
//! and when it is fully replenished. They are reported, never enforced — a client's 429
//! handling is exercised with [`super::FakeGroq::fail_next`] instead, so tests stay
//! deterministic however many requests earlier tests made.
//!
//! Each limit is modelled as a leaky bucket: usage drains linearly at `limit / window`, so
//! `reset` is the time until the bucket is empty again. That reproduces the observed shape of
//! the values (`x-ratelimit-reset-requests: 2m59.56s` after ~30 requests against 14,400 a day).

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};

/// Requests are limited per day (RPD), tokens per minute (TPM).
const REQUEST_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
const TOKEN_WINDOW: Duration = Duration::from_secs(60);

/// Both buckets.
pub(crate) struct RateLimits {
    requests: Bucket,
    tokens: Bucket,
}

impl RateLimits {
    pub(crate) fn new(limit_requests: u32, limit_tokens: u32, now: Instant) -> Self {
        RateLimits {
            requests: Bucket::new(limit_requests, REQUEST_WINDOW, now),
            tokens: Bucket::new(limit_tokens, TOKEN_WINDOW, now),
        }
    }

    /// Counts one request.
    pub(crate) fn take_request(&mut self, now: Instant) {
        self.requests.take(now, 1);
    }

    /// Counts `n` tokens (prompt plus completion, as Groq charges both).
    pub(crate) fn take_tokens(&mut self, now: Instant, n: u32) {
        self.tokens.take(now, n);
    }

    /// The six headers as they stand at `now`.
    pub(crate) fn headers(&mut self, now: Instant) -> HeaderMap {
        self.requests.drain(now);
        self.tokens.drain(now);
        let mut h = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        };
        put(
            "x-ratelimit-limit-requests",
            self.requests.limit.to_string(),
        );
        put("x-ratelimit-limit-tokens", self.tokens.limit.to_string());
        put(
            "x-ratelimit-remaining-requests",
            self.requests.remaining().to_string(),
        );
        put(
            "x-ratelimit-remaining-tokens",
            self.tokens.remaining().to_string(),
        );
        put(
            "x-ratelimit-reset-requests",
            go_duration(self.requests.reset()),
        );
        put("x-ratelimit-reset-tokens", go_duration(self.tokens.reset()));
        h
    }
}

/// A leaky bucket of `limit` per `window`.
struct Bucket {
    limit: u32,
    window: Duration,
    used: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: u32, window: Duration, now: Instant) -> Self {
        Bucket {
            limit,
            window,
            used: 0.0,
            at: now,
        }
    }

    /// Units replenished per second; a zero limit is treated as 1 so nothing divides by zero.
    fn rate(&self) -> f64 {
        f64::from(self.limit.max(1)) / self.window.as_secs_f64()
    }

    fn drain(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.used = (self.used - elapsed * self.rate()).max(0.0);
        self.at = self.at.max(now);
    }

    fn take(&mut self, now: Instant, n: u32) {
        self.drain(now);
        self.used += f64::from(n);
    }

    fn remaining(&self) -> u32 {
        let left = f64::from(self.limit) - self.used.ceil();
        // `as` saturates for floats; the clamp keeps the intent visible.
        left.clamp(0.0, f64::from(u32::MAX)) as u32
    }

    fn reset(&self) -> Duration {
        Duration::from_secs_f64(self.used / self.rate())
    }
}

/// Formats like Go's `time.Duration.String()` after rounding to 10 ms, which is what the
/// documented values (`2m59.56s`, `7.66s`) look like: `0s`, `560ms`, `7.66s`, `7.6s`,
/// `2m59.56s`, `1h0m0s`. [UNVERIFIED] beyond those two examples.
pub(crate) fn go_duration(d: Duration) -> String {
    let cs = (d.as_nanos() + 5_000_000) / 10_000_000;
    if cs == 0 {
        return "0s".to_owned();
    }
    if cs < 100 {
        return format!("{}ms", cs * 10);
    }
    let hours = cs / 360_000;
    let minutes = (cs / 6_000) % 60;
    let secs_cs = cs % 6_000;
    let (whole, frac) = (secs_cs / 100, secs_cs % 100);
    let secs = if frac == 0 {
        whole.to_string()
    } else if frac % 10 == 0 {
        format!("{whole}.{}", frac / 10)
    } else {
        format!("{whole}.{frac:02}")
    };
    if hours > 0 {
        format!("{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_like_go() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(4)), "0s");
        assert_eq!(go_duration(Duration::from_millis(560)), "560ms");
        assert_eq!(go_duration(Duration::from_millis(7_660)), "7.66s");
        assert_eq!(go_duration(Duration::from_millis(7_600)), "7.6s");
        assert_eq!(go_duration(Duration::from_millis(7_000)), "7s");
        assert_eq!(go_duration(Duration::from_millis(179_560)), "2m59.56s");
        assert_eq!(go_duration(Duration::from_secs(3_600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(1_005)), "1.01s");
    }

    #[test]
    fn buckets_drain_and_report() {
        let t0 = Instant::now();
        let mut limits = RateLimits::new(14_400, 6_000, t0);
        for _ in 0..30 {
            limits.take_request(t0);
        }
        limits.take_tokens(t0, 600);
        let h = limits.headers(t0);
        assert_eq!(h["x-ratelimit-remaining-requests"], "14370");
        assert_eq!(h["x-ratelimit-reset-requests"], "3m0s");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "5400");
        assert_eq!(h["x-ratelimit-reset-tokens"], "6s");
        let h = limits.headers(t0 + Duration::from_secs(3));
        assert_eq!(h["x-ratelimit-remaining-tokens"], "5700");
        assert_eq!(h["x-ratelimit-reset-tokens"], "3s");
        assert_eq!(h["x-ratelimit-limit-requests"], "14400");
        assert_eq!(h["x-ratelimit-limit-tokens"], "6000");
    }
}
