//! Benchmark: what the shared rate limiter adds to a request — one atomic Lua check per
//! request against the local Redis, sequential and with concurrent callers.
//!
//! ```text
//! scripts/services up && eval "$(scripts/services env)"
//! cargo run --release --example ratelimit_bench -- --checks 20000 --concurrency 32
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use iace::ratelimit::{Decision, FailMode, RateLimiter};

mod common;
use common::{arg, percentile};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let checks = arg("--checks", 20_000);
    let concurrency = arg("--concurrency", 32).max(1);
    let url = std::env::var("REDIS_URL")
        .map_err(|_| anyhow::anyhow!("REDIS_URL is not set: eval \"$(scripts/services env)\""))?;
    let client = iace::redis::connect(&url).await?;
    let prefix = format!("iace:bench:rl:{}:", uuid::Uuid::new_v4().simple());
    let limiter = Arc::new(RateLimiter::new(
        client,
        prefix,
        FailMode::Closed,
        &prometheus::Registry::new(),
    )?);
    // Realistic keys: 1,000 API keys at 600 requests/minute (most requests are admitted).
    let window = Duration::from_secs(60);

    let mut lat = Vec::with_capacity(checks);
    let started = Instant::now();
    for i in 0..checks {
        let key = format!("key:{}", i % 1000);
        let at = Instant::now();
        let d = limiter.check(&key, 600, window).await;
        lat.push(at.elapsed());
        assert!(!matches!(d, Decision::Unavailable), "redis did not answer");
    }
    let seq = started.elapsed();
    lat.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "sequential: {checks} checks in {:.2} s = {:.1} us/check; p50 {:.1} us, p99 {:.1} us",
        seq.as_secs_f64(),
        us(seq) / checks as f64,
        us(percentile(&lat, 50.0)),
        us(percentile(&lat, 99.0))
    );

    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let limiter = limiter.clone();
        let per = checks / concurrency;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let key = format!("key:{}", (t * per + i) % 1000);
                let at = Instant::now();
                limiter.check(&key, 600, window).await;
                lat.push(at.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let wall = started.elapsed();
    lat.sort_unstable();
    println!(
        "{concurrency} concurrent callers: {} checks in {:.2} s = {:.0} checks/s; p50 {:.1} us, p99 {:.1} us",
        lat.len(),
        wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64(),
        us(percentile(&lat, 50.0)),
        us(percentile(&lat, 99.0))
    );
    Ok(())
}
