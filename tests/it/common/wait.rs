//! Waiting for a condition a test checks: polled, returning as soon as it holds, failing only
//! after a generous bound (never a fixed sleep followed by an assertion).

use std::time::{Duration, Instant};

/// The bound of [`wait_for`].
pub const BOUND: Duration = Duration::from_secs(20);

/// Polls `done` until it holds, or panics naming `what` after [`BOUND`].
pub async fn wait_for(what: &str, done: impl AsyncFnMut() -> bool) {
    wait_within(what, BOUND, done).await;
}

/// Polls `done` until it holds, or panics naming `what` after `within`.
pub async fn wait_within(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
