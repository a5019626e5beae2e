//! What the vendor-client tests share: the wall clock breakers run on, a retry policy fast
//! enough for tests, and a server with a fixed answer for checks of what a client makes of it.

use std::time::Duration;

use iace::clients::retry::RetryPolicy;

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

/// A breaker for `vendor` alone, configured as given, on the wall clock.
pub async fn breakers_for(
    vendor: &str,
    config: iace_actors::breaker::BreakerConfig,
) -> iace_actors::breaker::Breakers {
    iace_actors::breaker::Breakers::start(
        [(vendor.to_owned(), config)].into(),
        std::sync::Arc::new(Wall),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap()
}

/// Lets a breaker actor take in the outcomes just recorded: for checks that a breaker stayed
/// as it was (a wrong answer here can only pass, never flake).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Waits (up to 5 s) until `vendor`'s breaker is in `state`: outcomes reach the breaker actor
/// as messages, so a loaded machine may take a moment to apply them.
pub async fn breaker_reaches(
    breakers: &iace_actors::breaker::Breakers,
    vendor: &str,
    state: iace_actors::breaker::BreakerState,
) {
    let breaker = breakers.get(vendor).expect("breaker");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while breaker.state() != state {
        assert!(
            std::time::Instant::now() < deadline,
            "{vendor}'s breaker is {:?}, never {state:?}",
            breaker.state()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A server that answers every request with `body` (status 200, JSON), counting requests;
/// returns its `http://127.0.0.1:PORT`.
pub async fn canned_server(
    body: std::sync::Arc<std::sync::Mutex<String>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    let app = axum::Router::new().fallback(move || {
        let body = body.lock().unwrap().clone();
        hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { ([("content-type", "application/json")], body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}
