//! The cluster's faults, while faults are on: membership changes (a node joins, leaves by
//! shutdown or by drain, is killed and maybe restarted under its id), partitions (a running
//! node cut off from the store, then healed) and slow links (a node's membership and lease
//! calls delayed). Every task stops at its next step once faults stop, finishing the change
//! it is in, and undoes its partition or slow link.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::World;
use crate::cluster::{Node, MAX_NODES};
use crate::core::Core;

/// Starts the cluster's fault tasks of the profile (none for a single node).
pub(super) fn start(world: &Arc<World>) -> Vec<JoinHandle<()>> {
    let rates = world.core.rates;
    let mut tasks = Vec::new();
    if world.nodes.list.len() < 2 {
        return tasks;
    }
    if let Some(every) = rates.membership_every_s {
        tasks.push(tokio::spawn(membership(world.clone(), every)));
    }
    if let Some(every) = rates.partition_every_s {
        tasks.push(tokio::spawn(partitions(world.clone(), every)));
    }
    if let Some(every) = rates.slow_link_every_s {
        tasks.push(tokio::spawn(slow_links(world.clone(), every)));
    }
    tasks
}

/// Sleeps `ms` of simulated time, cut short when faults stop; whether faults are still on.
async fn nap(core: &Core, ms: u64) -> bool {
    let until = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        if !core.faults_on() {
            return false;
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return true;
        }
        tokio::time::sleep((until - now).min(Duration::from_secs(1))).await;
    }
}

fn pick<T: Clone>(core: &Core, from: &[T]) -> Option<T> {
    match from.len() {
        0 => None,
        n => from
            .get(usize::try_from(core.draw(0, n as u64)).unwrap_or(0))
            .cloned(),
    }
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Join,
    Shutdown,
    Drain,
    Kill,
}

async fn membership(w: Arc<World>, (lo, hi): (u64, u64)) {
    let core = w.core.clone();
    while nap(&core, core.draw(lo * 1000, hi * 1000)).await {
        let up = w.nodes.up();
        let down: Vec<Arc<Node>> = w
            .nodes
            .list
            .iter()
            .filter(|n| !n.is_up())
            .cloned()
            .collect();
        let mut changes = Vec::new();
        if !down.is_empty() && up.len() < MAX_NODES {
            changes.push(Change::Join);
        }
        // One node always stays up (the workload needs somewhere to go).
        if up.len() >= 2 {
            changes.extend([Change::Shutdown, Change::Drain, Change::Kill]);
        }
        let Some(change) = pick(&core, &changes) else {
            continue;
        };
        match change {
            Change::Join => {
                let Some(node) = pick(&core, &down) else {
                    continue;
                };
                core.count("node_join");
                core.log(format!("{} joins", node.id));
                if !w.start_engine(&node, Some(30)).await {
                    core.log(format!("{} could not join", node.id));
                }
            }
            Change::Shutdown => {
                let Some(node) = pick(&core, &up) else {
                    continue;
                };
                core.count("node_shutdown");
                core.log(format!("{} shuts down", node.id));
                if let Some(engine) = node.take() {
                    engine.shutdown().await;
                }
                core.log(format!("{} is down", node.id));
            }
            Change::Drain => {
                let Some(node) = pick(&core, &up) else {
                    continue;
                };
                let Some(engine) = node.engine() else {
                    continue;
                };
                core.count("node_drain");
                core.log(format!("{} drains", node.id));
                // Still reachable while it drains: requests that reach it are sent on.
                engine.drain().await;
                core.log(format!("{} drained; shuts down", node.id));
                if let Some(engine) = node.take() {
                    engine.shutdown().await;
                }
                core.log(format!("{} is down", node.id));
            }
            Change::Kill => {
                let Some(node) = pick(&core, &up) else {
                    continue;
                };
                core.count("node_kill");
                core.log(format!("{} killed (kill -9)", node.id));
                w.crash(&node).await;
                // Restarted under the same id a little later, or left down (a join may
                // bring it back).
                if core.draw(0, 2) == 0 && nap(&core, core.draw(0, 30_000)).await {
                    core.count("node_restart");
                    core.log(format!("{} restarts", node.id));
                    if !w.start_engine(&node, Some(30)).await {
                        core.log(format!("{} could not restart", node.id));
                    }
                }
            }
        }
    }
}

/// Running nodes that still reach the store; one of them is always left reaching it.
fn connected(w: &World) -> Vec<Arc<Node>> {
    w.nodes
        .up()
        .into_iter()
        .filter(|n| !n.link.is_cut())
        .collect()
}

async fn partitions(w: Arc<World>, (lo, hi): (u64, u64)) {
    let core = w.core.clone();
    let (min_ms, max_ms) = core.rates.partition_ms;
    while nap(&core, core.draw(lo * 1000, hi * 1000)).await {
        let reachable = connected(&w);
        if reachable.len() < 2 {
            continue;
        }
        let Some(node) = pick(&core, &reachable) else {
            continue;
        };
        let ms = core.draw(min_ms, max_ms);
        // Half of the partitions drop packets (requests hang until the engine's timeout),
        // the other half refuse connections (requests fail at once).
        let blackhole = core.draw(0, 2) == 0;
        core.count("partition");
        core.log(format!(
            "{} cut off from the store for {ms} ms ({})",
            node.id,
            if blackhole { "black hole" } else { "refused" }
        ));
        node.link.set_cut(true, blackhole);
        nap(&core, ms).await;
        node.link.set_cut(false, false);
        core.log(format!("{} reaches the store again", node.id));
    }
}

async fn slow_links(w: Arc<World>, (lo, hi): (u64, u64)) {
    let core = w.core.clone();
    let (min_ms, max_ms) = core.rates.partition_ms;
    let (min_lag, max_lag) = core.rates.slow_link_ms;
    while nap(&core, core.draw(lo * 1000, hi * 1000)).await {
        let Some(node) = pick(&core, &w.nodes.up()) else {
            continue;
        };
        let ms = core.draw(min_ms, max_ms);
        let lag = core.draw(min_lag, max_lag);
        core.count("slow_link");
        core.log(format!(
            "{}'s membership and lease calls take {lag} ms for {ms} ms",
            node.id
        ));
        node.link.set_slow_ms(lag);
        nap(&core, ms).await;
        node.link.set_slow_ms(0);
        core.log(format!("{}'s link is fast again", node.id));
    }
}
