//! Breaker actors on paused tokio time: the fast path, the timer to half-open, probe pool,
//! operator commands, metrics.

use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use prometheus::Registry;

use super::*;
use crate::testkit::TokioClock;

fn config() -> BreakerConfig {
    BreakerConfig {
        window: 10,
        min_calls: 4,
        consecutive_failures: 3,
        open_wait: Duration::from_secs(30),
        half_open_probes: 2,
        ..BreakerConfig::default()
    }
}

async fn breakers(registry: &Registry) -> Breakers {
    let clock = Arc::new(TokioClock::new(
        DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
    ));
    let configs = ["telnyx", "groq"]
        .into_iter()
        .map(|v| (v.to_owned(), config()))
        .collect();
    Breakers::start(configs, clock, registry).await.unwrap()
}

const FAST: Duration = Duration::from_millis(5);

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn outage_opens_fails_fast_then_half_opens_and_closes() {
    let registry = Registry::new();
    let b = breakers(&registry).await;
    let telnyx = b.get("telnyx").unwrap().clone();
    assert!(b.get("nobody").is_none());
    for _ in 0..3 {
        let p = telnyx.acquire().unwrap();
        telnyx.record(p, CallOutcome::Failure { elapsed: FAST });
    }
    settle().await;
    assert_eq!(telnyx.state(), BreakerState::Open);
    // Other vendors are unaffected.
    assert_eq!(b.get("groq").unwrap().state(), BreakerState::Closed);
    let rejected = telnyx.acquire().unwrap_err();
    assert_eq!(rejected.state, BreakerState::Open);
    assert!(telnyx.check().is_err());
    // The actor's own timer moves it to half-open after the open wait.
    tokio::time::sleep(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(telnyx.state(), BreakerState::HalfOpen);
    assert!(telnyx.check().is_ok());
    let p1 = telnyx.acquire().unwrap();
    let p2 = telnyx.acquire().unwrap();
    assert!(p1.probe && p2.probe);
    assert!(telnyx.acquire().is_err(), "only two probes");
    telnyx.record(p1, CallOutcome::Success { elapsed: FAST });
    settle().await;
    assert_eq!(telnyx.state(), BreakerState::HalfOpen);
    telnyx.record(p2, CallOutcome::Success { elapsed: FAST });
    settle().await;
    assert_eq!(telnyx.state(), BreakerState::Closed);
    assert!(telnyx.acquire().is_ok());

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(text.contains(
        r#"iace_breaker_transitions_total{from="closed",reason="consecutive_failures",to="open",vendor="telnyx"} 1"#
    ), "{text}");
    assert!(text.contains(r#"iace_breaker_transitions_total{from="half_open",reason="probes_succeeded",to="closed",vendor="telnyx"} 1"#));
    assert!(
        text.contains(r#"iace_vendor_calls_total{outcome="rejected",vendor="telnyx"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"iace_breaker_state{vendor="telnyx"} 0"#));
    b.stop();
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_returns_to_the_pool_and_lost_probes_reopen() {
    let registry = Registry::new();
    let b = breakers(&registry).await;
    let h = b.get("groq").unwrap().clone();
    for _ in 0..3 {
        let p = h.acquire().unwrap();
        h.record(p, CallOutcome::Failure { elapsed: FAST });
    }
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(h.state(), BreakerState::HalfOpen);
    let p1 = h.acquire().unwrap();
    let _p2 = h.acquire().unwrap();
    assert!(h.acquire().is_err());
    h.record(p1, CallOutcome::Cancelled);
    settle().await;
    let p3 = h.acquire().expect("the cancelled probe's slot is back");
    let _ = p3;
    // The remaining probes never report: the half-open period times out and re-opens.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let snap = h.snapshot().await.unwrap();
    assert_eq!(snap.state, BreakerState::Open);
    assert_eq!(snap.trips, 2);
    b.stop();
}

#[tokio::test(start_paused = true)]
async fn operators_force_open_and_reset_through_the_handle() {
    let registry = Registry::new();
    let b = breakers(&registry).await;
    let h = b.get("telnyx").unwrap().clone();
    let snap = h.force_open().await.unwrap();
    assert_eq!(snap.state, BreakerState::ForcedOpen);
    assert_eq!(h.state(), BreakerState::ForcedOpen);
    assert!(h.acquire().is_err());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(h.acquire().is_err(), "forced open stays open");
    let snap = h.reset().await.unwrap();
    assert_eq!(snap.state, BreakerState::Closed);
    assert!(h.acquire().is_ok());
    let all = b.snapshots().await;
    assert_eq!(
        all.iter().map(|s| s.vendor.as_str()).collect::<Vec<_>>(),
        ["groq", "telnyx"]
    );
    b.stop();
}

#[tokio::test(start_paused = true)]
async fn rate_limited_opens_for_retry_after() {
    let registry = Registry::new();
    let b = breakers(&registry).await;
    let h = b.get("telnyx").unwrap().clone();
    let p = h.acquire().unwrap();
    h.record(
        p,
        CallOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
        },
    );
    settle().await;
    let rejected = h.acquire().unwrap_err();
    assert_eq!(rejected.state, BreakerState::Open);
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(h.state(), BreakerState::HalfOpen);
    b.stop();
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_waited_out_retry_after_is_not_beaten_by_the_breakers_later_start() {
    let registry = Registry::new();
    let b = breakers(&registry).await;
    let h = b.get("telnyx").unwrap().clone();
    let p = h.acquire().unwrap();
    // Paused time, no sockets: every sleep below moves the virtual clock (the breakers read
    // it through TokioClock) by exactly that much, whatever the machine's load.
    // The caller starts its wait now; the breaker records the 429 half a second later (a busy
    // actor), so its open wait ends half a second after the caller's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.record(
        p,
        CallOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(1)),
        },
    );
    settle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.state(), BreakerState::Open);
    let permit = h.acquire_after_wait().await.expect("goes out as the probe");
    assert!(permit.probe);
    h.record(permit, CallOutcome::Success { elapsed: FAST });
    settle().await;

    // A breaker open for longer than the slack still refuses at once.
    let p = h.acquire().unwrap();
    h.record(
        p,
        CallOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        },
    );
    settle().await;
    let rejected = h.acquire_after_wait().await.unwrap_err();
    assert_eq!(rejected.state, BreakerState::Open);

    // Opened by failures, a breaker refuses until its wait is over, also a moment before.
    let g = b.get("groq").unwrap().clone();
    for _ in 0..3 {
        let p = g.acquire().unwrap();
        g.record(p, CallOutcome::Failure { elapsed: FAST });
    }
    settle().await;
    tokio::time::sleep(Duration::from_millis(29_500)).await;
    assert_eq!(g.state(), BreakerState::Open);
    let rejected = g.acquire_after_wait().await.unwrap_err();
    assert_eq!(rejected.state, BreakerState::Open);
    b.stop();
}
