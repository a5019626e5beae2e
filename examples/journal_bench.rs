//! Benchmark: the journal's write path — `--calls` call actors, each appending `--events`
//! journal entries one after another (as a conversing call journals its transcript), against
//! the real Postgres store, first with one transaction per append, then through group commit
//! (`--writers` batches in flight), in the same run on the same database.
//!
//! Prints, per mode: appends per second, the latency of one append (what a call actor waits
//! for) p50/p99, and for group commit the batch sizes. The figure only means something with
//! the database flushing its commits to disk (`fsync` and `synchronous_commit` on): the dev
//! services run without, a durable instance runs with `IACE_PG_DURABLE=1`.
//!
//! ```text
//! IACE_PG_PORT=55434 IACE_PG_DURABLE=1 scripts/services up
//! eval "$(IACE_PG_PORT=55434 scripts/services env)"
//! cargo run --release --example journal_bench -- --calls 400 --events 40 --writers 4
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use iace::store::PgStore;
use iace_actors::engine::{GroupCommit, GroupCommitConfig};
use iace_actors::machine::record::{ConversationRecord, Speaker};
use iace_actors::machine::{start, step, Call, CallSpec, Direction, Event};
use iace_actors::ports::{shard_of, CallStore, InsertOutcome, JournalEntry, SHARD_COUNT};
use uuid::Uuid;

mod common;
use common::{arg, percentile};

/// One call actor: appends `events` transcript segments to its call, one after another.
async fn converse(store: Arc<dyn CallStore>, mut call: Call, events: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(events);
    for turn in 0..events {
        let event = Event::Conversation {
            record: ConversationRecord::Segment {
                speaker: if turn % 2 == 0 {
                    Speaker::Caller
                } else {
                    Speaker::Agent
                },
                text: "I would like to move my appointment to Thursday afternoon.".into(),
                start_ms: turn as u64 * 3000,
                end_ms: turn as u64 * 3000 + 2500,
                confidence: 0.9,
                interrupted: false,
                turn: u32::try_from(turn / 2).unwrap_or(u32::MAX),
            },
        };
        let before = call.version;
        let mut next = call.clone();
        step(&mut next, event.clone(), Utc::now()).expect("a segment is always legal");
        let entry = JournalEntry {
            call_id: call.spec.id,
            seq: next.version,
            at: next.updated_at,
            event,
        };
        let t = Instant::now();
        store
            .append(&next, before, &entry, None)
            .await
            .expect("the append is written");
        took.push(t.elapsed());
        call = next;
    }
    took
}

/// Creates `n` calls of `org`/`agent` under the shards' `epochs`.
async fn calls(store: &PgStore, org: Uuid, agent: Uuid, epochs: &[i64], n: usize) -> Vec<Call> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = Uuid::new_v4();
        let spec = CallSpec {
            id,
            organization_id: org,
            direction: Direction::Outbound,
            from: "+14155550199".parse().expect("number"),
            to: "+14155550100".parse().expect("number"),
            agent_id: agent,
            customer_id: None,
            metadata: serde_json::json!({}),
            ring_timeout_secs: 30,
            max_duration_secs: 3600,
            inbound_leg_id: None,
        };
        let (mut call, _) = start(spec.clone(), Utc::now());
        call.owner_epoch = epochs[usize::from(shard_of(id))];
        let created = JournalEntry {
            call_id: id,
            seq: 1,
            at: call.created_at,
            event: Event::Created { spec },
        };
        let outcome = store
            .insert_call(&call, &created, None, None)
            .await
            .expect("insert");
        assert_eq!(outcome, InsertOutcome::Created);
        out.push(call);
    }
    out
}

/// Runs every call actor at once through `store`; returns (wall, every append's latency).
async fn run(store: Arc<dyn CallStore>, calls: Vec<Call>, events: usize) -> (Duration, Vec<u64>) {
    let started = Instant::now();
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|call| tokio::spawn(converse(store.clone(), call, events)))
        .collect();
    let mut us = Vec::new();
    for t in tasks {
        us.extend(
            t.await
                .expect("a call actor")
                .into_iter()
                .map(|d| d.as_micros() as u64),
        );
    }
    let wall = started.elapsed();
    us.sort_unstable();
    (wall, us)
}

fn report(label: &str, wall: Duration, us: &[u64]) {
    println!(
        "{label}: {} appends in {:.2} s = {:.0} appends/s; one append p50 {:.2} ms, p99 {:.2} ms",
        us.len(),
        wall.as_secs_f64(),
        us.len() as f64 / wall.as_secs_f64(),
        percentile(us, 50.0) as f64 / 1000.0,
        percentile(us, 99.0) as f64 / 1000.0
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = arg("--calls", 400).max(1);
    let events = arg("--events", 40).max(1);
    let writers = arg("--writers", 4).max(1);
    let base_url = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("DATABASE_URL is not set: eval \"$(scripts/services env)\"")
    })?;
    let name = format!("iace_journal_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&base_url).await?;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings \
         WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes') ORDER BY name",
    )
    .fetch_all(&admin)
    .await?;
    println!(
        "database: {}",
        settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let url = format!("{}/{name}", &base_url[..base_url.rfind('/').unwrap()]);
    let pool = iace::store::connect(&url).await?;
    iace::store::migrate(&pool).await?;
    let (org, agent) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query("INSERT INTO organization (id, name, created_at) VALUES ($1, 'Bench', now())")
        .bind(org)
        .execute(&pool)
        .await?;
    sqlx::query(
        "INSERT INTO agent (id, organization_id, name, status, agent_type, created_at, updated_at) \
         VALUES ($1, $2, 'Bench agent', 'active', 'outbound', now(), now())",
    )
    .bind(agent)
    .bind(org)
    .execute(&pool)
    .await?;
    let store = Arc::new(PgStore::new(pool.clone()));
    let shards: Vec<u16> = (0..SHARD_COUNT).collect();
    let epochs = store.acquire_shards("bench", &shards).await?;
    println!(
        "{n} call actors x {events} appends each, pool of {} connections",
        pool.options().get_max_connections()
    );

    let direct = calls(&store, org, agent, &epochs, n).await;
    let (wall, us) = run(store.clone(), direct, events).await;
    report("one transaction per append", wall, &us);

    let registry = prometheus::Registry::new();
    let group = GroupCommit::start(
        store.clone(),
        GroupCommitConfig {
            writers,
            ..GroupCommitConfig::default()
        },
        Some(&registry),
    )?;
    let batched = calls(&store, org, agent, &epochs, n).await;
    let (wall, us) = run(group, batched, events).await;
    report(&format!("group commit, {writers} writers"), wall, &us);
    for family in registry.gather() {
        if family.name() == "iace_journal_batch_size" {
            let h = family.get_metric()[0].get_histogram();
            let count = h.get_sample_count();
            println!(
                "  batches: {count}, mean size {:.1}",
                h.get_sample_sum() / count.max(1) as f64
            );
        }
    }

    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    Ok(())
}
