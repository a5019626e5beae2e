//! Benchmark: webhook-to-ack latency of `POST /v1/webhooks/telnyx` under call load.
//!
//! Runs the real server (Telnyx adapter, real Postgres and Redis) against the fake Telnyx,
//! places `--calls` outbound calls, `--concurrency` at a time, and reports the latency the
//! fake measured for every acknowledged webhook delivery (send -> response head), i.e. what
//! Telnyx would see: signature check, parse, inbox insert (a Postgres commit), routing.
//!
//! ```text
//! scripts/services up && eval "$(scripts/services env)"
//! cargo run --release --example telnyx_webhooks -- --calls 300 --concurrency 30
//! ```

use std::time::{Duration, Instant};

mod common;
use common::{arg, percentile};
#[path = "common/telnyx.rs"]
mod telnyx;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls = arg("--calls", 300);
    let concurrency = arg("--concurrency", 30).max(1);
    let base_url = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("DATABASE_URL is not set: eval \"$(scripts/services env)\"")
    })?;
    let redis_url = std::env::var("REDIS_URL")
        .map_err(|_| anyhow::anyhow!("REDIS_URL is not set: eval \"$(scripts/services env)\""))?;

    // A fresh database for the run.
    let name = format!("iace_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&base_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let database_url = format!("{}/{name}", &base_url[..base_url.rfind('/').unwrap()]);

    let telnyx::Bench {
        fake,
        running,
        public,
        key,
        agent_id,
        http,
    } = telnyx::start(
        &database_url,
        &redis_url,
        telnyx::Setup {
            signing_seed: [3u8; 32],
            ring: Duration::from_millis(100),
            talk: Duration::from_millis(500),
            amd: "detect",
            media_echo: true,
            node_id: "bench".into(),
            journal_writers: 4,
        },
    )
    .await?;

    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for n in 0..calls {
        let permit = sem.clone().acquire_owned().await?;
        let (http, public, key, agent_id) =
            (http.clone(), public.clone(), key.clone(), agent_id.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let call: serde_json::Value = http
                .post(format!("{public}/v1/calls"))
                .bearer_auth(&key)
                .json(&serde_json::json!({
                    "to": format!("+1415{:07}", n), "from": "+14155550199", "agent_id": agent_id
                }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let id = call["id"].as_str().unwrap_or_default().to_owned();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let c: serde_json::Value = http
                    .get(format!("{public}/v1/calls/{id}"))
                    .bearer_auth(&key)
                    .send()
                    .await?
                    .json()
                    .await?;
                if c["status"] == "completed" || c["status"] == "failed" {
                    return anyhow::Ok(c["status"] == "completed");
                }
                anyhow::ensure!(Instant::now() < deadline, "call {id} did not end");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let mut completed = 0;
    for t in tasks {
        if t.await?? {
            completed += 1;
        }
    }
    let elapsed = started.elapsed();
    // Let trailing deliveries (streaming.stopped after hangup) settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deliveries = fake.deliveries();
    let mut acked: Vec<Duration> = deliveries
        .iter()
        .filter(|d| d.succeeded())
        .map(|d| d.latency)
        .collect();
    acked.sort();
    let failed = deliveries.iter().filter(|d| !d.succeeded()).count();
    println!(
        "calls: {calls} placed, {completed} completed in {:.1} s (concurrency {concurrency})",
        elapsed.as_secs_f64()
    );
    println!(
        "webhooks acknowledged: {} (failed attempts: {failed})",
        acked.len()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "webhook-to-ack latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&acked, 50.0)),
        ms(percentile(&acked, 90.0)),
        ms(percentile(&acked, 99.0)),
        ms(acked.last().copied().unwrap_or_default()),
    );
    running.shutdown().await;
    fake.shutdown().await;
    Ok(())
}
