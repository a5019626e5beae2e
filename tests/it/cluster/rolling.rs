//! A rolling restart: each node in turn gets SIGTERM (it answers `/ready` 503, hands its
//! shards to the others and exits), is started again under the same node id, and takes
//! shards back, while clients keep creating and reading calls through the balancer. Not one
//! of their requests may fail: no client retries here, a `503` counts as a failure.

use std::time::{Duration, Instant};

use super::{Cluster, Load, LoadConfig};

const MEMBERS: [&str; 3] = ["node-1", "node-2", "node-3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_sigterm_restart_of_every_node_fails_no_request() {
    let _one = super::one_at_a_time().await;
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_settled(&MEMBERS).await;

    let load = Load::start(
        &cluster,
        "rolling",
        LoadConfig {
            workers: 3,
            calls: None,
            pace: Duration::from_millis(100),
            read_back: true,
            retry_creates: false,
        },
    );
    load.wait_created(20).await;
    let mut marks = Vec::new();
    for node in MEMBERS {
        let at = load.started.elapsed();
        let term = Instant::now();
        cluster.node(node).server.sigterm();
        let exit = cluster
            .node_mut(node)
            .server
            .wait_exit(Duration::from_secs(60))
            .await;
        let drained = term.elapsed();
        assert!(exit.success(), "{node} exited with {exit} after SIGTERM");
        cluster.node_mut(node).server.spawn().await;
        let view = cluster.wait_settled(&MEMBERS).await;
        let back = term.elapsed();
        println!(
            "{node}: SIGTERM at {:.2} s, exited {:.2} s later, shards settled again {:.2} s after the signal ({:?})",
            at.as_secs_f64(),
            drained.as_secs_f64(),
            back.as_secs_f64(),
            super::shard_counts(&view)
        );
        marks.push(format!(
            "{node}: SIGTERM {:.2} s, exit {:.2} s, settled {:.2} s",
            at.as_secs_f64(),
            (at + drained).as_secs_f64(),
            (at + back).as_secs_f64()
        ));
    }
    let report = load.finish(true).await;
    let lb = cluster.lb.stats();
    println!(
        "rolling restart: {} requests ({} calls created), {} failed; the balancer sent {} on to another backend before writing them, answered {} with a 5xx",
        report.requests,
        report.ids.len(),
        report.failures.len(),
        lb.retries,
        lb.server_errors
    );
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed during the rolling restart ({}):\n{}",
        report.failures.len(),
        report.requests,
        marks.join("; "),
        report
            .failures
            .iter()
            .map(|f| format!(
                "  at {:.3} s: {} -> {} {}",
                f.at.as_secs_f64(),
                f.request,
                f.status.map_or("no answer".to_owned(), |s| s.to_string()),
                f.body
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    cluster.check_calls(&report.ids).await;
    cluster.cleanup().await;
}
