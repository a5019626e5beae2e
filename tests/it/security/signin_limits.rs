//! Sign-in budgets checked before any password is: per client address (and behind trusted
//! proxies, per forwarded client), for the whole deployment, and the bounded password pool.

use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use super::{answer, email, login, refresh, s, send, server, Answer, PASSWORD};
use crate::common;
use crate::common::metrics::series;
use crate::common::server::{create_org, create_user};

/// `iace_signin_refused_total{reason}`, read on the server's metrics listener.
async fn signin_refused(metrics_base: &str, reason: &str) -> u64 {
    let name = format!("iace_signin_refused_total{{reason=\"{reason}\"}}");
    series(metrics_base, &name).await as u64
}

/// A sign-in sent with `X-Forwarded-For: forwarded`.
async fn login_via(base: &str, email: &str, forwarded: &str) -> Answer {
    answer(
        reqwest::Client::new()
            .post(format!("{base}/v1/auth/login"))
            .header("x-forwarded-for", forwarded)
            .json(&json!({"email": email, "password": PASSWORD})),
    )
    .await
}

fn assert_rate_limited(a: &Answer, what: &str) {
    assert_eq!(
        a.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{what}: {}",
        a.body
    );
    assert_eq!(a.body["error"]["code"], "rate_limited", "{what}");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=600).contains(&retry), "{what}: Retry-After {retry}");
}

#[tokio::test]
async fn sign_ins_per_client_address_are_budgeted_before_any_password_check() {
    let db = common::db::fresh_database().await;
    let srv = server(
        &db,
        &[
            ("IACE_SIGNIN_ADDRESS_LIMIT", "3"),
            ("IACE_SIGNIN_GLOBAL_LIMIT", "0"),
            ("IACE_SIGNIN_WINDOW_SECS", "600"),
        ],
    )
    .await;
    let base = &srv.base;
    let (org, _) = create_org(&db, "Addresses");
    let user = email();
    create_user(&db, &org, &user, "member", PASSWORD);

    // Distinct unknown emails from one address: each account's own budget never applies.
    for _ in 0..3 {
        assert_eq!(
            login(base, &email(), PASSWORD).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let refused = login(base, &email(), PASSWORD).await;
    assert_rate_limited(&refused, "the 4th sign-in from the address");
    // The right password does not get past it, and a forged X-Forwarded-For is not trusted
    // (no trusted proxy is configured).
    assert_rate_limited(&login(base, &user, PASSWORD).await, "a good password");
    assert_rate_limited(
        &login_via(base, &email(), "198.51.100.1").await,
        "a forged X-Forwarded-For",
    );
    assert_eq!(signin_refused(&srv.metrics_base, "address").await, 3);
    assert_eq!(signin_refused(&srv.metrics_base, "global").await, 0);
    drop(srv);

    // Behind a trusted proxy each forwarded client has a budget of its own.
    let srv = server(
        &db,
        &[
            ("IACE_SIGNIN_ADDRESS_LIMIT", "2"),
            ("IACE_SIGNIN_GLOBAL_LIMIT", "0"),
            ("IACE_SIGNIN_WINDOW_SECS", "600"),
            ("IACE_TRUSTED_PROXIES", "127.0.0.0/8,::1"),
            (
                "IACE_RATE_LIMIT_PREFIX",
                &format!("iace:test:rl:{}:", Uuid::new_v4().simple()),
            ),
        ],
    )
    .await;
    let base = &srv.base;
    for _ in 0..2 {
        let a = login_via(base, &email(), "198.51.100.1").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    }
    assert_rate_limited(
        &login_via(base, &email(), "198.51.100.1").await,
        "the forwarded client's 3rd",
    );
    // Forged entries left of what the proxy appended do not help.
    assert_rate_limited(
        &login_via(base, &email(), "203.0.113.5, 198.51.100.1").await,
        "a forged entry before the client's",
    );
    let other = login_via(base, &user, "198.51.100.2").await;
    assert_eq!(
        other.status,
        StatusCode::OK,
        "another client: {}",
        other.body
    );
}

#[tokio::test]
async fn the_global_sign_in_budget_refuses_before_any_password_check() {
    let db = common::db::fresh_database().await;
    let srv = server(
        &db,
        &[
            ("IACE_SIGNIN_ADDRESS_LIMIT", "0"),
            ("IACE_SIGNIN_GLOBAL_LIMIT", "4"),
            ("IACE_SIGNIN_WINDOW_SECS", "600"),
        ],
    )
    .await;
    let base = &srv.base;
    let (org, _) = create_org(&db, "Global");
    let user = email();
    create_user(&db, &org, &user, "member", PASSWORD);
    let first = login(base, &user, PASSWORD).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    for _ in 0..3 {
        assert_eq!(
            login(base, &email(), PASSWORD).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_rate_limited(&login(base, &email(), PASSWORD).await, "the 5th sign-in");
    assert_rate_limited(&login(base, &user, PASSWORD).await, "a good password");
    assert_eq!(signin_refused(&srv.metrics_base, "global").await, 2);
    // Sessions already open are unaffected: refresh does not count as a sign-in.
    let rotated = refresh(base, &s(&first.body, "refresh_token")).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
}

#[tokio::test]
async fn a_full_password_pool_refuses_fast_with_retry_after_and_nothing_else_fails() {
    let db = common::db::fresh_database().await;
    let srv = server(
        &db,
        &[
            ("IACE_SIGNIN_ADDRESS_LIMIT", "0"),
            ("IACE_SIGNIN_GLOBAL_LIMIT", "0"),
            ("IACE_PASSWORD_WORKERS", "1"),
            ("IACE_PASSWORD_QUEUE", "1"),
        ],
    )
    .await;
    let base = srv.base.clone();
    let (org, key) = create_org(&db, "Pool");
    let user = email();
    create_user(&db, &org, &user, "member", PASSWORD);

    // Bursts of concurrent sign-ins with distinct unknown emails until one finds the pool
    // full (one check running, one waiting: the rest of a burst is refused).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut overloaded = 0;
    while overloaded == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no sign-in was refused by a full pool within 60 s"
        );
        let burst: Vec<_> = (0..16)
            .map(|_| {
                let base = base.clone();
                tokio::spawn(async move { login(&base, &email(), PASSWORD).await })
            })
            .collect();
        for a in burst {
            let a = a.await.unwrap();
            match a.status {
                StatusCode::UNAUTHORIZED => {}
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(a.body["error"]["code"], "overloaded", "{}", a.body);
                    assert_eq!(a.headers["retry-after"], "1");
                    overloaded += 1;
                }
                other => panic!(
                    "only 401 or the explicit 503 refusal, got {other}: {}",
                    a.body
                ),
            }
        }
    }
    assert_eq!(
        signin_refused(&srv.metrics_base, "overloaded").await,
        overloaded
    );
    // API requests never wait for the pool.
    let agents = send(&base, Method::GET, "/v1/agents", Some(&key), None).await;
    assert_eq!(agents.status, StatusCode::OK);
    // Once the burst is over, sign-in works.
    let ok = login(&base, &user, PASSWORD).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}
