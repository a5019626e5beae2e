//! Benchmark: signalling throughput — signed Telnyx webhooks per second that the server
//! verifies (Ed25519), parses and stores durably in its inbox before answering 200, with one
//! transaction per event and then with group commit, in the same run on the same database.
//!
//! Each phase starts the real server (Telnyx adapter, Postgres, Redis) against the fake
//! Telnyx, places `--calls` calls so their legs exist, then posts `--events` webhooks about
//! those legs (`call.speak.ended`: stored and acknowledged, nothing for a call to act on) from
//! `--concurrency` senders at once, and counts what was acknowledged per second. Run it on a
//! database that flushes its commits (`IACE_PG_DURABLE=1`); the dev services do not.
//!
//! The senders share the box's cores with the server. With `--presign` every webhook's body
//! and Ed25519 signature are made before the clock starts (the timestamps stay within the
//! server's 300 s tolerance), so the senders only post: the server's own cost per webhook is
//! then most of what the box spends.
//!
//! ```text
//! IACE_PG_PORT=55434 IACE_REDIS_PORT=56381 IACE_PG_DURABLE=1 scripts/services up
//! eval "$(IACE_PG_PORT=55434 IACE_REDIS_PORT=56381 scripts/services env)"
//! cargo run --release --example webhook_flood -- --events 20000 --concurrency 100
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use iace_fakes::telnyx::sign_webhook;
use serde_json::json;

mod common;
use common::{arg, percentile};
#[path = "common/telnyx.rs"]
mod telnyx;

const SEED: [u8; 32] = [4u8; 32];

/// One phase: a server with `journal_writers`, flooded. Returns (events/s, ack latencies).
async fn phase(
    database_url: &str,
    redis_url: &str,
    journal_writers: u16,
    calls: usize,
    events: usize,
    concurrency: usize,
    presign: bool,
) -> anyhow::Result<(f64, Vec<Duration>, usize)> {
    let telnyx::Bench {
        fake,
        running,
        public,
        key,
        agent_id,
        http,
    } = telnyx::start(
        database_url,
        redis_url,
        telnyx::Setup {
            signing_seed: SEED,
            ring: Duration::from_millis(50),
            talk: Duration::from_millis(200),
            amd: "disabled",
            media_echo: false,
            node_id: format!("flood-{journal_writers}"),
            journal_writers,
        },
    )
    .await?;
    for n in 0..calls {
        http.post(format!("{public}/v1/calls"))
            .bearer_auth(&key)
            .json(&json!({"to": format!("+1415{n:07}"), "from": "+14155550199", "agent_id": agent_id}))
            .send()
            .await?
            .error_for_status()?;
    }
    anyhow::ensure!(
        fake.wait_for(Duration::from_secs(60), |f| f.legs().len() >= calls)
            .await,
        "the calls were not dialled"
    );
    let legs: Arc<Vec<(String, Option<String>)>> = Arc::new(
        fake.legs()
            .into_iter()
            .map(|l| (l.call_control_id, l.client_state))
            .collect(),
    );

    let url = format!("{public}/v1/webhooks/telnyx");
    let webhook = move |n: usize| -> (String, String, String) {
        let (leg, state) = &legs[n % legs.len()];
        let body = json!({
            "data": {"record_type": "event", "event_type": "call.speak.ended",
                     "id": format!("flood-{journal_writers}-{n}"),
                     "occurred_at": chrono::Utc::now().to_rfc3339(),
                     "payload": {"call_control_id": leg, "client_state": state,
                                 "status": "completed"}},
            "meta": {"attempt": 1, "delivered_to": "bench"}
        })
        .to_string();
        let ts = chrono::Utc::now().timestamp().to_string();
        let signature = sign_webhook(&SEED, &ts, body.as_bytes());
        (body, ts, signature)
    };
    let signed: Arc<Vec<(String, String, String)>> = Arc::new(if presign {
        (0..events).map(&webhook).collect()
    } else {
        Vec::new()
    });
    let webhook = Arc::new(webhook);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let senders: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, next) = (http.clone(), url.clone(), next.clone());
            let (signed, webhook) = (signed.clone(), webhook.clone());
            tokio::spawn(async move {
                let mut took = Vec::new();
                let mut failed = 0usize;
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= events {
                        return (took, failed);
                    }
                    let (body, ts, signature) = match signed.get(n) {
                        Some(made) => made.clone(),
                        None => webhook(n),
                    };
                    let t = Instant::now();
                    let ok = http
                        .post(&url)
                        .header("telnyx-signature-ed25519", signature)
                        .header("telnyx-timestamp", ts)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        took.push(t.elapsed());
                    } else {
                        failed += 1;
                    }
                }
            })
        })
        .collect();
    let mut took = Vec::new();
    let mut failed = 0;
    for s in senders {
        let (t, f) = s.await?;
        took.extend(t);
        failed += f;
    }
    let rate = took.len() as f64 / started.elapsed().as_secs_f64();
    took.sort();
    running.shutdown().await;
    fake.shutdown().await;
    Ok((rate, took, failed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls = arg("--calls", 50).max(1);
    let events = arg("--events", 20_000).max(1);
    let concurrency = arg("--concurrency", 100).max(1);
    let writers = u16::try_from(arg("--writers", 4).max(1)).unwrap_or(4);
    let presign = std::env::args().any(|a| a == "--presign");
    let base_url = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("DATABASE_URL is not set: eval \"$(scripts/services env)\"")
    })?;
    let redis_url = std::env::var("REDIS_URL")
        .map_err(|_| anyhow::anyhow!("REDIS_URL is not set: eval \"$(scripts/services env)\""))?;
    let name = format!("iace_flood_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&base_url).await?;
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(&admin).await?;
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let database_url = format!("{}/{name}", &base_url[..base_url.rfind('/').unwrap()]);
    println!(
        "database: fsync={fsync}, synchronous_commit={sync}; {events} webhooks from {concurrency} senders about {calls} calls' legs{}", if presign { ", signed before the clock starts" } else { "" }
    );
    for journal_writers in [0, writers] {
        let (rate, took, failed) = phase(
            &database_url,
            &redis_url,
            journal_writers,
            calls,
            events,
            concurrency,
            presign,
        )
        .await?;
        let label = if journal_writers == 0 {
            "one transaction per event".to_owned()
        } else {
            format!("group commit, {journal_writers} writers")
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{label}: {:.0} webhooks/s acknowledged ({} ok, {failed} failed); ack p50 {:.2} ms, p99 {:.2} ms",
            rate,
            took.len(),
            ms(percentile(&took, 50.0)),
            ms(percentile(&took, 99.0))
        );
    }
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    Ok(())
}
