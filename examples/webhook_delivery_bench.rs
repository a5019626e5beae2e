//! Benchmark: outbound webhook delivery latency. The real server (simulated carrier) runs
//! `--calls` calls at once with an endpoint subscribed to every call event, delivering to a
//! local receiver that answers 204 at once. Prints, from the outbox's own record, the time from
//! an event's write (in its journal entry's transaction) to its first attempt, p50/p99, per
//! event type and in all (`call.transcript_ready` waits 10 s by design and is left out of the
//! total), and the receiver's count.
//!
//! ```text
//! eval "$(scripts/services env)"
//! cargo run --release --example webhook_delivery_bench -- --calls 200 --talk-ms 3000
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use iace::config::ServeArgs;
use serde_json::json;

mod common;
use common::arg;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls = arg("--calls", 200).max(1);
    let ring_ms = arg("--ring-ms", 300) as u64;
    let talk_ms = arg("--talk-ms", 3000) as u64;
    let database_url = std::env::var("DATABASE_URL")?;
    let redis_url = std::env::var("REDIS_URL")?;

    // The receiver: 204 at once, every webhook-id counted.
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let counted = seen.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let counted = counted.clone();
            async move {
                if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                    counted.lock().expect("lock").insert(id.to_owned());
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut args = ServeArgs::local(
        &database_url,
        &redis_url,
        format!("127.0.0.1:{port}").parse()?,
    );
    args.sim_ring_ms = ring_ms;
    args.sim_talk_ms = talk_ms;
    args.allow_private_urls = true;
    args.max_live_calls = Some(0);
    args.security.plan_limits = false;
    let running = iace::app::start(args).await?;
    let (org, key) = iace::app::create_org(&database_url, "Delivery bench").await?;
    let http = reqwest::Client::new();
    let post_json = |path: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let agent: serde_json::Value = post_json("/v1/agents", json!({"name": "Bench agent"}))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let agent_id = agent["id"].as_str().unwrap_or_default().to_owned();
    post_json(
        "/v1/webhook-endpoints",
        json!({"url": hook, "event_types": [
            "call.created", "call.ringing", "call.answered", "call.ended",
            "call.transcript_ready"
        ]}),
    )
    .await?
    .error_for_status()?;

    let started = Instant::now();
    let placed = futures::future::join_all((0..calls).map(|_| {
        post_json(
            "/v1/calls",
            json!({"to": "+14155550100", "from": "+14155550199", "agent_id": agent_id}),
        )
    }))
    .await;
    let creates = started.elapsed();
    let failed = placed
        .iter()
        .filter(|r| !r.as_ref().is_ok_and(|r| r.status().is_success()))
        .count();
    anyhow::ensure!(failed == 0, "{failed} calls were not placed");

    let pool = iace::store::connect(&database_url).await?;
    let org = org.id;
    let deadline = Instant::now() + Duration::from_secs(120 + talk_ms / 1000 * 2);
    loop {
        let (live, pending): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM call WHERE organization_id = $1 \
                       AND status IN ('pending', 'ringing', 'in_progress')), \
                    (SELECT count(*) FROM webhook_delivery WHERE organization_id = $1 \
                       AND status = 'pending')",
        )
        .bind(org)
        .fetch_one(&pool)
        .await?;
        if live == 0 && pending == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{live} calls live, {pending} deliveries pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = started.elapsed();
    let rows: Vec<(String, i64, f64, f64, f64)> = sqlx::query_as(
        "SELECT coalesce(e.type, 'all but transcript_ready'), count(*), \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), \
           percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), max(lag) \
         FROM (SELECT d.event_id, extract(epoch FROM a.at - d.created_at)::float8 * 1000 AS lag \
               FROM webhook_delivery d \
               JOIN webhook_attempt a ON a.delivery_id = d.id AND a.attempt = 1 \
               WHERE d.organization_id = $1) l \
         JOIN webhook_event e ON e.id = l.event_id \
         WHERE e.type <> 'call.transcript_ready' \
         GROUP BY ROLLUP (e.type) ORDER BY 1",
    )
    .bind(org)
    .fetch_all(&pool)
    .await?;
    println!(
        "{calls} calls at once (ring {ring_ms} ms, talk {talk_ms} ms; the creates took {} ms), \
         all delivered in {:.1} s; the receiver saw {} distinct events",
        creates.as_millis(),
        wall.as_secs_f64(),
        seen.lock().expect("lock").len()
    );
    println!("commit -> first attempt, ms:");
    for (kind, n, p50, p99, max) in rows {
        println!("  {kind:<26} n={n:<5} p50 {p50:>7.2}  p99 {p99:>7.2}  max {max:>7.2}");
    }
    running.shutdown().await;
    Ok(())
}
