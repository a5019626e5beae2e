//! Request rate limits shared by every node: a sliding-window log per key in Redis, checked
//! and recorded by one Lua script (atomic on the server, on the server's clock, so nodes with
//! skewed clocks still agree). It stands in front of the API per key / user and per
//! organization, by plan tier.
//!
//! If Redis cannot answer within [`CHECK_TIMEOUT`], the limiter fails open (the request goes through, unchecked) or
//! closed (the request is refused as unavailable), as configured; either way it is logged and
//! counted in `iace_ratelimit_redis_errors_total{mode}`.

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use tracing::warn;

/// Checks and records one request against every key's budget: prunes entries older than the
/// key's window, and admits the request only if every key has room, recording it under all of
/// them (a request refused by one budget consumes none). Returns {admitted, remaining,
/// retry_after_ms} per key. ARGV: member, then a limit and a window (ms) per key.
const SCRIPT: &str = r"
local member = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local all = true
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local n = redis.call('ZCARD', key)
  if n < limit then
    out[#out + 1] = 1
    out[#out + 1] = limit - n - 1
    out[#out + 1] = 0
  else
    all = false
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local retry = window
    if oldest[2] then retry = tonumber(oldest[2]) + window - now end
    if retry < 1 then retry = 1 end
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = retry
  end
end
if all then
  for i, key in ipairs(KEYS) do
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 1]))
  end
end
return out
";

/// What to do when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Let the request through unchecked.
    Open,
    /// Refuse it as unavailable.
    Closed,
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; `remaining` more fit in the current window.
    Allowed {
        /// The limit.
        limit: u32,
        /// Requests left in the window.
        remaining: u32,
    },
    /// Over the limit: retry after this long.
    Limited {
        /// The limit.
        limit: u32,
        /// When the oldest request in the window leaves it.
        retry_after: Duration,
    },
    /// Redis did not answer and the limiter fails open: let it through.
    Unchecked,
    /// Redis did not answer and the limiter fails closed: refuse (503).
    Unavailable,
}

/// A limiter over one Redis.
#[derive(Clone)]
pub struct RateLimiter {
    redis: Client,
    prefix: String,
    fail: FailMode,
    errors: prometheus::IntCounterVec,
}

/// Longest a check waits for Redis before failing open or closed: a limiter must never be
/// the slow part of a request.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(250);

impl RateLimiter {
    /// A limiter keeping its windows under `prefix` (e.g. `iace:rl:`).
    pub fn new(
        redis: Client,
        prefix: impl Into<String>,
        fail: FailMode,
        registry: &prometheus::Registry,
    ) -> Result<RateLimiter, prometheus::Error> {
        let errors = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "iace_ratelimit_redis_errors_total",
                "Rate-limit checks Redis could not answer, by what the limiter did (open: let through, closed: refused)",
            ),
            &["mode"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        Ok(RateLimiter {
            redis,
            prefix: prefix.into(),
            fail,
            errors,
        })
    }

    /// Checks and records one request under `key`: at most `limit` per `window`.
    pub async fn check(&self, key: &str, limit: u32, window: Duration) -> Decision {
        self.check_all(&[(key, limit)], window)
            .await
            .pop()
            .unwrap_or(Decision::Unavailable)
    }

    /// Checks one request against several budgets in one round trip (one decision per key, in
    /// order); it is recorded under all of them only if all admit it. In a Redis Cluster the
    /// keys must share a hash tag (`{org}`).
    pub async fn check_all(&self, checks: &[(&str, u32)], window: Duration) -> Vec<Decision> {
        let checks: Vec<(&str, u32, Duration)> =
            checks.iter().map(|(k, l)| (*k, *l, window)).collect();
        self.check_windows(&checks).await
    }

    /// [`RateLimiter::check_all`] with a window of its own per budget: `(key, limit, window)`.
    pub async fn check_windows(&self, checks: &[(&str, u32, Duration)]) -> Vec<Decision> {
        let mut args = vec![
            Value::from(SCRIPT),
            Value::Integer(i64::try_from(checks.len()).unwrap_or(0)),
        ];
        args.extend(
            checks
                .iter()
                .map(|(key, _, _)| Value::from(format!("{}{key}", self.prefix))),
        );
        args.push(Value::from(uuid::Uuid::new_v4().simple().to_string()));
        for (_, limit, window) in checks {
            let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
            args.push(Value::Integer(i64::from(*limit)));
            args.push(Value::Integer(window_ms));
        }
        let reply = tokio::time::timeout(
            CHECK_TIMEOUT,
            self.redis.custom::<Value, Value>(
                CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false),
                args,
            ),
        )
        .await;
        let parsed = reply.ok().and_then(Result::ok).and_then(|v| match v {
            Value::Array(items) if items.len() == 3 * checks.len() => {
                let n: Vec<i64> = items.iter().filter_map(Value::as_i64).collect();
                (n.len() == items.len()).then_some(n)
            }
            _ => None,
        });
        match parsed {
            Some(n) => checks
                .iter()
                .zip(n.chunks(3))
                .map(|((_, limit, _), r)| match r {
                    [1, remaining, _] => Decision::Allowed {
                        limit: *limit,
                        remaining: u32::try_from(*remaining).unwrap_or(0),
                    },
                    [_, _, retry_ms] => Decision::Limited {
                        limit: *limit,
                        retry_after: Duration::from_millis(u64::try_from(*retry_ms).unwrap_or(1)),
                    },
                    _ => Decision::Unavailable,
                })
                .collect(),
            None => {
                let mode = match self.fail {
                    FailMode::Open => "open",
                    FailMode::Closed => "closed",
                };
                self.errors.with_label_values(&[mode]).inc();
                let keys: Vec<&str> = checks.iter().map(|(k, _, _)| *k).collect();
                warn!(
                    keys = ?keys,
                    mode,
                    connected = self.redis.is_connected(),
                    "rate limit not checked: Redis did not answer"
                );
                let decision = match self.fail {
                    FailMode::Open => Decision::Unchecked,
                    FailMode::Closed => Decision::Unavailable,
                };
                vec![decision; checks.len()]
            }
        }
    }
}
