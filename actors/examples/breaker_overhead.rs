//! Benchmark: what a vendor breaker costs a permitted call.
//!
//! Measures `acquire()` + `record()` (the fast path every vendor call pays: atomics plus one
//! fire-and-forget message) on one task and on several tasks at once, and compares it with an
//! actor round trip per call (what asking the breaker actor directly would cost).
//!
//! ```text
//! cargo run --release -p iace-actors --example breaker_overhead
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iace_actors::breaker::{BreakerConfig, Breakers, CallOutcome};
use iace_actors::testkit::TokioClock;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let registry = prometheus::Registry::new();
    let configs: BTreeMap<String, BreakerConfig> =
        [("telnyx".to_owned(), BreakerConfig::default())].into();
    // The engine crate reads time only through its Clock port; tokio's clock is real here.
    let epoch = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let breakers = Breakers::start(configs, Arc::new(TokioClock::new(epoch)), &registry)
        .await
        .expect("breakers");
    let handle = breakers.get("telnyx").unwrap().clone();
    let outcome = CallOutcome::Success {
        elapsed: Duration::from_millis(20),
    };

    // Warm up.
    for _ in 0..100_000 {
        let p = handle.acquire().unwrap();
        handle.record(p, outcome);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let n = 2_000_000u32;
    let started = Instant::now();
    for _ in 0..n {
        let p = handle.acquire().unwrap();
        handle.record(p, outcome);
    }
    let one = started.elapsed();
    println!(
        "acquire + record, 1 task:  {:>6.0} ns/op ({n} ops in {:.2} s)",
        one.as_nanos() as f64 / f64::from(n),
        one.as_secs_f64()
    );

    let acquire_only = Instant::now();
    for _ in 0..n {
        let _ = handle.acquire().unwrap();
    }
    let a = acquire_only.elapsed();
    println!(
        "acquire only, 1 task:      {:>6.1} ns/op",
        a.as_nanos() as f64 / f64::from(n)
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let tasks = 4u32;
    let per = n / tasks;
    let started = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..tasks {
        let h = handle.clone();
        joins.push(tokio::spawn(async move {
            for _ in 0..per {
                let p = h.acquire().unwrap();
                h.record(p, outcome);
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let many = started.elapsed();
    println!(
        "acquire + record, {tasks} tasks: {:>6.0} ns/op wall ({} ops on 2 worker threads)",
        many.as_nanos() as f64 / f64::from(per * tasks),
        per * tasks
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let rpcs = 100_000u32;
    let started = Instant::now();
    for _ in 0..rpcs {
        let _ = handle.snapshot().await.unwrap();
    }
    let rt = started.elapsed();
    println!(
        "actor round trip (call):   {:>6.0} ns/op ({rpcs} ops) - what the fast path avoids",
        rt.as_nanos() as f64 / f64::from(rpcs)
    );
    breakers.stop();
}
