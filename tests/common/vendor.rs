//! What the vendor-client tests share: the wall clock breakers run on, and a retry policy fast
//! enough for tests.

use std::time::Duration;

use iace::vendor::retry::RetryPolicy;

/// The real time, for breakers in tests against live fakes.
pub struct Wall;

impl iace_actors::ports::Clock for Wall {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}

/// Three attempts, 50-200 ms apart, 3 s each, 10 s in all, Retry-After up to 5 s.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(50),
        cap: Duration::from_millis(200),
        attempt_timeout: Duration::from_secs(3),
        deadline: Duration::from_secs(10),
        max_retry_after: Duration::from_secs(5),
    }
}
