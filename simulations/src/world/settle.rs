//! The end of a run: once the workload and its faults are done, the world must recover (the
//! carrier is healthy again, so new calls are accepted and run to completion) and every call
//! must settle into a state the journal explains (replays to its snapshot, every accepted
//! event processed, no timer reached an ended call).

use std::sync::Arc;
use std::time::Duration;

use iace_actors::engine::NewCall;
use iace_actors::machine::{replay, CallId};
use iace_actors::ports::{CallStore, ClusterStore, SHARD_COUNT};

use super::{carrier_breaker, World, CARRIER};
use crate::workload::CallPlan;

/// After the outages: the carrier is healthy, so once the breaker's longest wait has passed new
/// calls must be accepted again and run to completion.
pub(super) async fn recovery(world: &Arc<World>, planned: usize) {
    let core = &world.core;
    tokio::time::sleep(carrier_breaker().open_wait_cap + Duration::from_secs(1)).await;
    for k in 0..3 {
        let n = planned + k;
        let agent = crate::workload::number(crate::workload::AGENT_NUMBER);
        let p = CallPlan {
            n,
            at_ms: core.now_ms(),
            scenario: crate::workload::Scenario::Answered,
            from: agent,
            to: crate::workload::number(&format!("+1425{:07}", n % 10_000_000)),
            ring_ms: 2_000,
            talk_ms: Some(5_000),
            client_hangup_ms: None,
            repeat_create_ms: None,
        };
        world.carrier.expect_dial(&p);
        let req = NewCall {
            to: p.to.clone(),
            from: p.from.clone(),
            agent_id: world.agent,
            customer_id: None,
            metadata: None,
        };
        // A breaker whose wait is over opens its probes on the first request it refuses. A
        // trip in the last moments of the outage's tail (a release retried into it) can hold
        // it open for up to one more capped wait: try for that long.
        let mut created = None;
        let tries = carrier_breaker().open_wait_cap.as_secs() + 5;
        for _ in 0..tries {
            let Some(engine) = world.nodes.pick() else {
                break;
            };
            match engine.create_call(world.org, req.clone(), None).await {
                Ok(c) => {
                    created = Some(c.call.spec.id);
                    break;
                }
                Err(e) => core.log(format!("recovery create {n}: {e}")),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let Some(id) = created else {
            let breaker = match world.breakers.get(CARRIER) {
                Some(b) => b.snapshot().await,
                None => None,
            };
            core.violate(
                "calls recover when the carrier comes back",
                format!("recovery call {n} was never accepted; breaker {breaker:?}"),
            );
            return;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let call = world.store.inner.snapshot(id);
            if call
                .as_ref()
                .is_some_and(|c| c.status.is_terminal() && !c.release_pending)
            {
                let call = call.unwrap_or_else(|| unreachable!());
                if call.status != iace_actors::machine::CallStatus::Completed {
                    core.violate(
                        "calls recover when the carrier comes back",
                        format!(
                            "recovery call {n} ended {}/{:?}",
                            call.status, call.end_reason
                        ),
                    );
                    return;
                }
                core.count("recovery_call_completed");
                break;
            }
            if tokio::time::Instant::now() > deadline {
                core.violate(
                    "calls recover when the carrier comes back",
                    format!(
                        "recovery call {n} did not end within 60 s: {:?}",
                        call.map(|c| c.status)
                    ),
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Whether every shard is held, by the store's clock, by a node whose process runs:
/// `Err` says which are not.
pub(super) async fn shards_owned(world: &World) -> Result<(), String> {
    let leases = world
        .store
        .inner
        .leases()
        .await
        .map_err(|e| format!("leases unreadable: {e}"))?;
    let up: Vec<String> = world.nodes.up().iter().map(|n| n.id.clone()).collect();
    let unowned: Vec<String> = (0..SHARD_COUNT)
        .filter_map(|shard| {
            let lease = leases.iter().find(|l| l.shard == shard);
            let ok = lease
                .is_some_and(|l| l.is_held() && l.owner.as_ref().is_some_and(|o| up.contains(o)));
            (!ok).then(|| match lease {
                None => format!("{shard}: never leased"),
                Some(l) => format!(
                    "{shard}: owner {:?} epoch {} expires in {} ms",
                    l.owner, l.epoch, l.expires_in_ms
                ),
            })
        })
        .collect();
    if unowned.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {SHARD_COUNT} shards have no live owner (nodes up: {up:?}); first: {}",
            unowned.len(),
            unowned
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }
}

/// End of run: the whole journal of every call replays to its snapshot, every accepted
/// event was processed, no timer reached an ended call.
pub(super) async fn final_checks(world: &World) {
    let core = &world.core;
    let ids: Vec<CallId> = core.checker().calls().keys().copied().collect();
    for id in ids {
        let Some(call) = world.store.inner.snapshot(id) else {
            core.violate(
                "snapshot equals fold of journal",
                format!("call {id} vanished"),
            );
            return;
        };
        if !call.status.is_terminal() {
            core.violate(
                "every call reaches a terminal state once faults stop",
                format!("call {id} is {}", call.status),
            );
            return;
        }
        let journal = world.store.inner.journal(id);
        if journal
            .iter()
            .enumerate()
            .any(|(i, e)| e.seq != i64::try_from(i + 1).unwrap_or(-1))
        {
            core.violate("no journal gap", format!("call {id}"));
            return;
        }
        match replay(journal.iter().map(|e| (e.event.clone(), e.at))) {
            Ok(mut folded) => {
                folded.owner_epoch = call.owner_epoch;
                if folded != call {
                    core.violate(
                        "snapshot equals fold of journal",
                        format!("call {id}: final snapshot differs from its replayed journal"),
                    );
                    return;
                }
            }
            Err(e) => {
                core.violate("no illegal transition", format!("call {id}: replay: {e}"));
                return;
            }
        }
    }
    // Every append answered as written is in the journal, as answered (a batch is durable
    // before any of its callers hears so); an append answered with an error may or may not
    // be, but never twice (no gap above means one entry per version).
    for (id, seq, kind) in core.answered_writes() {
        let journal = world.store.inner.journal(id);
        let stored = usize::try_from(seq - 1)
            .ok()
            .and_then(|i| journal.get(i))
            .map(|e| e.event.kind());
        if stored != Some(kind) {
            core.violate(
                "every answered write is durable",
                format!("call {id} seq {seq} `{kind}` answered as written, journal has {stored:?}"),
            );
            return;
        }
    }
    match world.store.inner.inbox_pending(10).await {
        Ok(rows) if rows.is_empty() => {}
        Ok(rows) => core.violate(
            "no lost event",
            format!(
                "{} accepted carrier events never processed, e.g. {}/{} for {}",
                rows.len(),
                rows[0].vendor,
                rows[0].event_id,
                rows[0].call_id
            ),
        ),
        Err(e) => core.violate("no lost event", format!("inbox unreadable: {e}")),
    }
    if world.timers_after_end() > 0 {
        core.violate(
            "timers never fire for terminal calls",
            "a deadline timer reached an ended call",
        );
    }
}
