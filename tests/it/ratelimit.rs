//! The shared rate limiter against real Redis: two limiters on separate connections (two
//! server nodes) enforce one limit together; windows slide; keys are independent; a Redis
//! that stops answering makes the limiter fail open or closed as configured. Requires
//! `REDIS_URL`.

use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use iace::ratelimit::{Decision, FailMode, RateLimiter};

async fn limiter(prefix: &str, fail: FailMode) -> RateLimiter {
    let url = crate::common::db::redis_url();
    let client = iace::redis::connect(&url).await.unwrap();
    RateLimiter::new(client, prefix, fail, &prometheus::Registry::new()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_limit_and_the_window_slides() {
    let prefix = format!("iace:test:rl:{}:", uuid::Uuid::new_v4().simple());
    let a = limiter(&prefix, FailMode::Closed).await;
    let b = limiter(&prefix, FailMode::Closed).await;
    let window = Duration::from_millis(1500);
    let started = Instant::now();
    let mut allowed = 0;
    let mut remaining = Vec::new();
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        match node.check("key-1", 10, window).await {
            Decision::Allowed {
                limit,
                remaining: r,
            } => {
                assert_eq!(limit, 10);
                allowed += 1;
                remaining.push(r);
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    assert_eq!(allowed, 10);
    assert_eq!(remaining, (0..10).rev().collect::<Vec<u32>>());
    // The 11th, on either node, is over the limit until the oldest leaves the window.
    for node in [&a, &b] {
        match node.check("key-1", 10, window).await {
            Decision::Limited { limit, retry_after } => {
                assert_eq!(limit, 10);
                assert!(
                    retry_after <= window && retry_after > Duration::ZERO,
                    "{retry_after:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // Another key has its own window.
    assert!(matches!(
        a.check("key-2", 10, window).await,
        Decision::Allowed { remaining: 9, .. }
    ));
    // Refused requests are not recorded: once the window has slid, the limit is free again.
    let elapsed = started.elapsed();
    tokio::time::sleep(window.saturating_sub(elapsed) + Duration::from_millis(100)).await;
    assert!(matches!(
        b.check("key-1", 10, window).await,
        Decision::Allowed { remaining: 9, .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_limiter_fails_open_or_closed_as_configured() {
    let prefix = format!("iace:test:rl:{}:", uuid::Uuid::new_v4().simple());
    for (mode, expected) in [
        (FailMode::Open, Decision::Unchecked),
        (FailMode::Closed, Decision::Unavailable),
    ] {
        let url = crate::common::db::redis_url();
        let client = iace::redis::connect(&url).await.unwrap();
        let registry = prometheus::Registry::new();
        let l = RateLimiter::new(client.clone(), prefix.as_str(), mode, &registry).unwrap();
        assert!(matches!(
            l.check("k", 5, Duration::from_secs(60)).await,
            Decision::Allowed { .. }
        ));
        // The connection goes away (and stays away: no reconnect after QUIT).
        client.quit().await.unwrap();
        assert_eq!(l.check("k", 5, Duration::from_secs(60)).await, expected);
        let label = if mode == FailMode::Open {
            "open"
        } else {
            "closed"
        };
        let counted = registry
            .gather()
            .iter()
            .find(|f| f.name() == "iace_ratelimit_redis_errors_total")
            .map(|f| {
                f.get_metric()
                    .iter()
                    .filter(|m| m.get_label().iter().any(|l| l.value() == label))
                    .map(|m| m.get_counter().get_value())
                    .sum::<f64>()
            })
            .unwrap_or(0.0);
        assert_eq!(counted, 1.0, "{label}");
    }
}

/// Several budgets in one check: admitted only if every one has room, and a request refused by
/// one budget consumes none of the others.
#[tokio::test]
async fn several_budgets_are_checked_together_all_or_nothing() {
    let prefix = format!("iace:test:rl:{}:", uuid::Uuid::new_v4().simple());
    let l = limiter(&prefix, FailMode::Closed).await;
    let window = Duration::from_secs(60);
    let budgets = [("{o}:key:k", 2), ("{o}:org", 5)];
    for want in [(1, 4), (0, 3)] {
        let d = l.check_all(&budgets, window).await;
        assert_eq!(
            d,
            vec![
                Decision::Allowed {
                    limit: 2,
                    remaining: want.0
                },
                Decision::Allowed {
                    limit: 5,
                    remaining: want.1
                },
            ]
        );
    }
    // The key's budget is spent: refused, and the organization's is not charged for it.
    let d = l.check_all(&budgets, window).await;
    assert!(matches!(d[0], Decision::Limited { limit: 2, .. }), "{d:?}");
    assert!(
        matches!(d[1], Decision::Allowed { remaining: 2, .. }),
        "{d:?}"
    );
    let d = l
        .check_all(&[("{o}:key:other", 10), ("{o}:org", 5)], window)
        .await;
    assert!(
        matches!(d[1], Decision::Allowed { remaining: 2, .. }),
        "{d:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_checked_together_keep_windows_of_their_own() {
    let prefix = format!("iace:test:rl:{}:", uuid::Uuid::new_v4().simple());
    let l = limiter(&prefix, FailMode::Closed).await;
    // A short window with room for one, and a long one with room for three.
    let short = ("{s}:short", 1, Duration::from_millis(300));
    let long = ("{s}:long", 3, Duration::from_secs(600));
    let d = l.check_windows(&[short, long]).await;
    assert!(
        d.iter().all(|d| matches!(d, Decision::Allowed { .. })),
        "{d:?}"
    );
    let d = l.check_windows(&[short, long]).await;
    assert!(matches!(d[0], Decision::Limited { limit: 1, .. }), "{d:?}");
    match d[0] {
        Decision::Limited { retry_after, .. } => {
            assert!(retry_after <= Duration::from_millis(300), "{retry_after:?}")
        }
        _ => unreachable!(),
    }
    // Once the short window has slid past, the pair is admitted again; the long one
    // remembers both admissions (and not the refusal).
    let deadline = Instant::now() + Duration::from_secs(30);
    let d = loop {
        let d = l.check_windows(&[short, long]).await;
        if matches!(d[0], Decision::Allowed { .. }) {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the short window never slid: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        d[1],
        Decision::Allowed {
            limit: 3,
            remaining: 1
        }
    );
}
