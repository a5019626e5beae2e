//! `kill -9` of a node while calls are being created: the other nodes take its shards once
//! its leases lapse and re-activate its live calls; every call ends, with a gap-free journal
//! and one carrier leg.
//!
//! The simulated carrier plays a leg's script in the process that dialed it: the dead node's
//! legs go silent. The new owner re-activates each call and asks the carrier (the shared
//! Redis) where its leg stands; what comes after (a hangup the script would have sent) is
//! ended by the call's own deadline (`IACE_MAX_CALL_SECS`). The ring timeout stays longer
//! than a takeover: a call created just before the kill is dialed by its new node, not
//! ended unringing by its ring deadline.

use std::time::{Duration, Instant};

use super::{owners, summary, Cluster, Load, LoadConfig, BOUND};

const MEMBERS: [&str; 3] = ["node-1", "node-2", "node-3"];
const VICTIM: &str = "node-2";
const SURVIVORS: [&str; 2] = ["node-1", "node-3"];
const LIVE_ACTIVATIONS: &str = "iace_call_activations_total{kind=\"live\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_mid_load_ends_every_call_and_dials_none_twice() {
    let _one = super::one_at_a_time().await;
    let mut cluster = Cluster::start(3, &[("IACE_MAX_CALL_SECS", "10")]).await;
    cluster.wait_settled(&MEMBERS).await;

    let load = Load::start(
        &cluster,
        "crash",
        LoadConfig {
            workers: 4,
            calls: Some(200),
            pace: Duration::from_millis(100),
            read_back: false,
            // A create in flight to the killed node may be cut after it was sent (the
            // balancer answers 502 and never resends it): the client sends it again with
            // the same Idempotency-Key, which is what the key is for.
            retry_creates: true,
        },
    );
    load.wait_created(60).await;
    let activations_before = cluster.metric_sum(&SURVIVORS, LIVE_ACTIVATIONS).await;

    let killed = Instant::now();
    cluster.node_mut(VICTIM).server.kill9();
    // The dead node's live calls, as the store sees them (its leases still count as held
    // until they lapse; after that its calls count as unowned).
    let view = cluster.status().await;
    let victim = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == VICTIM)
        .cloned()
        .unwrap_or_default();
    let orphaned = victim["live_calls"].as_i64().unwrap_or(0)
        + view["unowned_live_calls"].as_i64().unwrap_or(0);
    println!(
        "killed {VICTIM} after {} calls; {orphaned} of its calls were live",
        load.created()
    );

    // Takeover: every shard held again, by the survivors; then every live call of the dead
    // node re-activated by them.
    let deadline = Instant::now() + BOUND;
    let mut shards_back = None;
    let mut calls_back = None;
    while shards_back.is_none() || calls_back.is_none() {
        if shards_back.is_none() {
            let view = cluster.status().await;
            let held = owners(&view);
            if held.len() == super::SHARDS && held.values().all(|o| SURVIVORS.contains(&o.as_str()))
            {
                shards_back = Some(killed.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "the dead node's shards were not taken over within {BOUND:?}: {}",
                summary(&view)
            );
        }
        if calls_back.is_none() {
            let now = cluster.metric_sum(&SURVIVORS, LIVE_ACTIVATIONS).await;
            if now - activations_before >= orphaned as f64 {
                calls_back = Some(killed.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "{} of {orphaned} live calls of the dead node re-activated within {BOUND:?}",
                now - activations_before
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (shards_back, calls_back) = (shards_back.unwrap(), calls_back.unwrap());
    println!(
        "takeover: all 256 shards held again {:.2} s after the kill, its {orphaned} live calls re-activated after {:.2} s (lease TTL 6 s)",
        shards_back.as_secs_f64(),
        calls_back.as_secs_f64()
    );

    let report = load.finish(false).await;
    println!(
        "load: {} calls created with {} requests; {} answers were not 2xx and were sent again: {:?}",
        report.ids.len(),
        report.requests,
        report.failures.len(),
        report
            .failures
            .iter()
            .map(|f| (f.at, f.status, f.body.chars().take(120).collect::<String>()))
            .collect::<Vec<_>>()
    );
    let lb = cluster.lb.stats();
    println!(
        "balancer: {} requests sent on to another backend before being written, {} answered 5xx",
        lb.retries, lb.server_errors
    );
    assert_eq!(report.ids.len(), 200, "every planned call was created");
    let mut unique = report.ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 200, "one call per Idempotency-Key");

    // Every call ends (those of the dead node too), journals gap-free, one leg each.
    cluster.check_calls(&report.ids).await;
    cluster.cleanup().await;
}
