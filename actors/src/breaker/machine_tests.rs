//! Breaker state machine: every transition, window edges, probe accounting, open-wait backoff.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;

fn t(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap() + chrono::Duration::milliseconds(ms)
}

fn config() -> BreakerConfig {
    BreakerConfig {
        window: 10,
        min_calls: 4,
        failure_rate: 0.5,
        consecutive_failures: 5,
        slow_call: Duration::from_millis(500),
        slow_rate: 0.8,
        open_wait: Duration::from_secs(30),
        open_wait_cap: Duration::from_secs(100),
        half_open_probes: 2,
        max_retry_after: Duration::from_secs(60),
    }
}

const FAST: Duration = Duration::from_millis(10);
const SLOW: Duration = Duration::from_millis(600);

fn ok() -> CallOutcome {
    CallOutcome::Success { elapsed: FAST }
}
fn fail() -> CallOutcome {
    CallOutcome::Failure { elapsed: FAST }
}

/// Acquires and records one call; returns the transition of either step.
fn call(b: &mut Breaker, outcome: CallOutcome, now: DateTime<Utc>) -> Option<Transition> {
    let (permit, t1) = b.try_acquire(now);
    let permit = permit.expect("permitted");
    let t2 = b.record(permit, outcome, now);
    t2.or(t1)
}

/// Fails calls until the breaker opens (4 with this config: the failure rate at min_calls).
fn open(b: &mut Breaker, now: DateTime<Utc>) {
    while b.state() == BreakerState::Closed {
        call(b, fail(), now);
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn failure_rate_opens_only_once_the_window_has_min_calls() {
    let mut b = Breaker::new(config());
    // 2 failures out of 3: above the rate, below min_calls -> still closed.
    assert_eq!(call(&mut b, fail(), t(0)), None);
    assert_eq!(call(&mut b, ok(), t(1)), None);
    assert_eq!(call(&mut b, fail(), t(2)), None);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        b.snapshot("x").failure_rate,
        None,
        "not judged below min_calls"
    );
    // The 4th outcome makes the window judgeable: 2 failures of 4 = 50% >= 50%.
    let tr = call(&mut b, ok(), t(3)).unwrap();
    assert_eq!(tr.from, BreakerState::Closed);
    assert_eq!(tr.to, BreakerState::Open);
    assert_eq!(tr.reason, TransitionReason::FailureRate);
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn failure_rate_below_threshold_stays_closed_and_old_outcomes_slide_out() {
    let mut b = Breaker::new(config());
    // Window 10: 4 failures, 6 successes = 40%.
    for i in 0..6 {
        call(&mut b, ok(), t(i));
    }
    for i in 0..3 {
        call(&mut b, fail(), t(10 + i));
        call(&mut b, ok(), t(20 + i));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    let snap = b.snapshot("x");
    assert_eq!(snap.calls_in_window, 10);
    assert_eq!(snap.failure_rate, Some(0.3));
    // Ten successes push every failure out of the window.
    for i in 0..10 {
        call(&mut b, ok(), t(100 + i));
    }
    assert_eq!(b.snapshot("x").failure_rate, Some(0.0));
}

#[test]
fn consecutive_failures_trip_fast_even_in_a_long_healthy_window() {
    let mut b = Breaker::new(BreakerConfig {
        window: 100,
        min_calls: 100,
        ..config()
    });
    for i in 0..50 {
        call(&mut b, ok(), t(i));
    }
    for i in 0..4 {
        assert_eq!(call(&mut b, fail(), t(100 + i)), None);
    }
    let tr = call(&mut b, fail(), t(200)).unwrap();
    assert_eq!(tr.from, BreakerState::Closed);
    assert_eq!(tr.to, BreakerState::Open);
    assert_eq!(tr.reason, TransitionReason::ConsecutiveFailures);
    assert_eq!(b.open_until(), Some(t(200) + chrono::Duration::seconds(30)));
}

#[test]
fn a_success_resets_the_consecutive_count() {
    let mut b = Breaker::new(BreakerConfig {
        min_calls: 100,
        ..config()
    });
    for round in 0..3 {
        for i in 0..4 {
            call(&mut b, fail(), t(round * 10 + i));
        }
        call(&mut b, ok(), t(round * 10 + 5));
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn slow_calls_trip_the_slow_rate() {
    let mut b = Breaker::new(config());
    let slow = CallOutcome::Success { elapsed: SLOW };
    for i in 0..3 {
        assert_eq!(call(&mut b, slow, t(i)), None);
    }
    // 4 of 4 slow = 100% >= 80%.
    let tr = call(&mut b, slow, t(3)).unwrap();
    assert_eq!(tr.reason, TransitionReason::SlowRate);
    // Exactly the threshold: a call as slow as `slow_call` counts as slow.
    let mut b = Breaker::new(config());
    let edge = CallOutcome::Success {
        elapsed: Duration::from_millis(500),
    };
    for i in 0..4 {
        call(&mut b, edge, t(i));
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn open_fails_fast_until_the_wait_ends_then_probes_close_it() {
    let mut b = Breaker::new(config());
    open(&mut b, t(0));
    let until = b.open_until().unwrap();
    let (r, _) = b.try_acquire(t(29_000));
    assert_eq!(
        r,
        Err(Rejected {
            state: BreakerState::Open,
            until: Some(until)
        })
    );
    // The wait ends: half-open, exactly `half_open_probes` permits.
    let (p1, tr) = b.try_acquire(until);
    assert_eq!(tr.unwrap().to, BreakerState::HalfOpen);
    let p1 = p1.unwrap();
    assert!(p1.probe);
    let (p2, _) = b.try_acquire(until);
    let p2 = p2.unwrap();
    let (p3, _) = b.try_acquire(until);
    assert_eq!(
        p3,
        Err(Rejected {
            state: BreakerState::HalfOpen,
            until: None
        })
    );
    assert_eq!(b.probes_left(), 0);
    assert_eq!(b.record(p1, ok(), until), None, "one probe is not enough");
    let tr = b.record(p2, ok(), until).unwrap();
    assert_eq!(tr.to, BreakerState::Closed);
    assert_eq!(tr.reason, TransitionReason::ProbesSucceeded);
    assert_eq!(b.snapshot("x").trips, 0);
    assert_eq!(
        b.snapshot("x").calls_in_window,
        0,
        "a closed breaker starts afresh"
    );
}

#[test]
fn a_failed_probe_reopens_with_a_doubled_wait_up_to_the_cap() {
    let mut b = Breaker::new(config());
    open(&mut b, t(0));
    let mut now = b.open_until().unwrap();
    let mut waits = vec![30];
    for _ in 0..4 {
        let (p, _) = b.try_acquire(now);
        let tr = b.record(p.unwrap(), fail(), now).unwrap();
        assert_eq!(tr.reason, TransitionReason::ProbeFailed);
        assert_eq!(tr.to, BreakerState::Open);
        let until = b.open_until().unwrap();
        waits.push((until - now).num_seconds());
        now = until;
    }
    assert_eq!(waits, [30, 60, 100, 100, 100], "doubling, capped at 100 s");
    // Closing resets the backoff: the next trip waits the base again.
    let (p1, _) = b.try_acquire(now);
    let (p2, _) = b.try_acquire(now);
    b.record(p1.unwrap(), ok(), now);
    assert_eq!(
        b.record(p2.unwrap(), ok(), now).unwrap().to,
        BreakerState::Closed
    );
    open(&mut b, now);
    assert_eq!((b.open_until().unwrap() - now).num_seconds(), 30);
    now = b.open_until().unwrap();
    // A slow probe is a failed probe.
    let (p, _) = b.try_acquire(now);
    let tr = b
        .record(p.unwrap(), CallOutcome::Success { elapsed: SLOW }, now)
        .unwrap();
    assert_eq!(tr.reason, TransitionReason::ProbeFailed);
}

#[test]
fn a_cancelled_probe_frees_its_slot_and_stale_outcomes_are_ignored() {
    let mut b = Breaker::new(config());
    // A call permitted while closed, still in flight when the breaker opens.
    let (early, _) = b.try_acquire(t(0));
    let early = early.unwrap();
    open(&mut b, t(1));
    let until = b.open_until().unwrap();
    let (p1, _) = b.try_acquire(until);
    let (p2, _) = b.try_acquire(until);
    let (p1, _p2) = (p1.unwrap(), p2.unwrap());
    // The early call's failure is not a probe result.
    assert_eq!(b.record(early, fail(), until), None);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    // Cancelling a probe lets another through.
    assert_eq!(b.record(p1, CallOutcome::Cancelled, until), None);
    assert_eq!(b.probes_left(), 1);
    assert!(b.try_acquire(until).0.is_ok());
}

#[test]
fn rate_limited_opens_for_retry_after_without_growing_the_backoff_base() {
    let mut b = Breaker::new(config());
    let tr = call(
        &mut b,
        CallOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        },
        t(0),
    )
    .unwrap();
    assert_eq!(tr.reason, TransitionReason::RateLimited);
    assert_eq!(b.open_until(), Some(t(7_000)));
    // A Retry-After beyond the cap is capped.
    let mut b = Breaker::new(config());
    call(
        &mut b,
        CallOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(3600)),
        },
        t(0),
    );
    assert_eq!(b.open_until(), Some(t(60_000)));
    // No Retry-After: the open wait.
    let mut b = Breaker::new(config());
    call(&mut b, CallOutcome::RateLimited { retry_after: None }, t(0));
    assert_eq!(b.open_until(), Some(t(30_000)));
}

#[test]
fn four_xx_and_cancelled_are_not_failures() {
    let mut b = Breaker::new(BreakerConfig {
        min_calls: 100,
        ..config()
    });
    // Clients classify 4xx as Success (the vendor is up); cancellations say nothing.
    for i in 0..20 {
        call(&mut b, CallOutcome::Cancelled, t(i));
    }
    assert_eq!(b.snapshot("x").calls_in_window, 0);
    for i in 0..4 {
        call(&mut b, fail(), t(100 + i));
        call(&mut b, CallOutcome::Cancelled, t(200 + i));
    }
    assert_eq!(
        b.snapshot("x").consecutive_failures,
        4,
        "cancellations do not reset the run"
    );
}

#[test]
fn operators_force_open_disable_and_reset() {
    let mut b = Breaker::new(config());
    assert_eq!(b.force_open().unwrap().to, BreakerState::ForcedOpen);
    assert_eq!(b.force_open(), None);
    let (r, _) = b.try_acquire(t(10_000_000));
    assert_eq!(
        r,
        Err(Rejected {
            state: BreakerState::ForcedOpen,
            until: None
        })
    );
    assert_eq!(b.disable().unwrap().to, BreakerState::Disabled);
    // Disabled lets everything through and judges nothing.
    for i in 0..50 {
        call(&mut b, fail(), t(i));
    }
    assert_eq!(b.state(), BreakerState::Disabled);
    let tr = b.reset().unwrap();
    assert_eq!(
        (tr.from, tr.to),
        (BreakerState::Disabled, BreakerState::Closed)
    );
    assert_eq!(b.reset(), None);
}

#[test]
fn state_codes_round_trip() {
    for s in [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
        BreakerState::ForcedOpen,
        BreakerState::Disabled,
    ] {
        assert_eq!(BreakerState::from_code(s.code()), s);
    }
}
