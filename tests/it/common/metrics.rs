//! Reading a server's Prometheus metrics on its metrics listener (`Server::metrics_base`).

use std::time::{Duration, Instant};

/// How long a series may take to reach the value a test waits for.
const BOUND: Duration = Duration::from_secs(30);

/// The whole `/metrics` page.
pub async fn scrape(metrics_base: &str) -> String {
    reqwest::get(format!("{metrics_base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series, named with its labels as the page prints them (e.g.
/// `iace_webhooks_total{outcome="stored",vendor="stripe"}`); 0 when absent.
pub async fn series(metrics_base: &str, name: &str) -> f64 {
    let text = scrape(metrics_base).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Polls until `series >= at_least`, or panics after 30 s.
pub async fn wait_series(metrics_base: &str, name: &str, at_least: f64) {
    let deadline = Instant::now() + BOUND;
    loop {
        let v = series(metrics_base, name).await;
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {v}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
