//! Several engines on one store: the shards are shared, handed over on join and leave, taken
//! over after a lapse, and a node cut off from the store stops acting before its lease ends.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::*;
use crate::ports::{Claimed, ClusterStore, Lease, Member, NodeInfo, StoreError, StoreResult};

const TTL: Duration = Duration::from_secs(10);

impl World {
    async fn node(&self, id: &str, cluster: Arc<dyn ClusterStore>) -> Engine {
        let config = EngineConfig {
            node_id: id.into(),
            node_url: format!("http://{id}.test"),
            inbox_sweep_every: Duration::from_secs(2),
            lease_ttl: TTL,
            lease_renew_every: Duration::from_secs(2),
            ..EngineConfig::default()
        };
        let ports = Ports {
            cluster,
            ..self.ports.clone()
        };
        Engine::start(ports, config, &prometheus::Registry::new())
            .await
            .unwrap()
    }

    /// Lets time run until `done` holds (bounded by ten minutes of paused time).
    async fn wait(&self, what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..6000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never happened: {what}");
    }
}

fn owned(e: &Engine) -> i64 {
    e.metrics().shards_owned.get()
}

fn handoffs(e: &Engine, reason: &str) -> u64 {
    e.metrics()
        .shard_handoffs
        .with_label_values(&[reason])
        .get()
}

/// Live calls of the store that have an actor on `e`.
async fn actors(e: &Engine) -> usize {
    e.live_call_actors().await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_joining_node_gets_its_share_and_a_leaving_node_hands_its_calls_over() {
    let w = World::new(21).await;
    let a = w.node("node-a", w.store.clone()).await;
    assert_eq!(owned(&a), 256, "a lone node holds every shard");
    let mut calls = Vec::new();
    for _ in 0..6 {
        calls.push(w.placed(&a).await.0);
    }

    let b = w.node("node-b", w.store.clone()).await;
    w.wait("the shards are split", || {
        owned(&a) + owned(&b) == 256 && owned(&b) >= 120
    })
    .await;
    assert!((120..=136).contains(&owned(&a)), "a holds {}", owned(&a));
    assert_eq!(handoffs(&a, "rebalance"), u64::try_from(owned(&b)).unwrap());
    assert_eq!(handoffs(&b, "free"), u64::try_from(owned(&b)).unwrap());
    // The calls of the moved shards run on b now, the others still on a: one actor each.
    let total = actors(&a).await + actors(&b).await;
    assert_eq!(total, calls.len(), "every live call has exactly one actor");

    // New calls start on the node that took the request, in a shard it runs.
    for _ in 0..4 {
        calls.push(w.placed(&b).await.0);
    }
    assert_eq!(actors(&a).await + actors(&b).await, calls.len());

    // A clean stop hands everything to b at once (no lease has to lapse).
    let before = tokio::time::Instant::now();
    a.shutdown().await;
    w.wait("b holds every shard", || owned(&b) == 256).await;
    assert!(
        before.elapsed() < TTL,
        "a released its leases instead of letting them lapse"
    );
    w.wait("b runs every call", || true).await;
    assert_eq!(actors(&b).await, calls.len());
    assert_eq!(handoffs(&b, "takeover"), 0);
    // Every call still runs to its end on b.
    for id in &calls {
        w.carrier_event(&b, *id, CarrierEvent::Answered).await;
        w.carrier_event(
            &b,
            *id,
            CarrierEvent::HungUp {
                cause: HangupCause::NormalClearing,
            },
        )
        .await;
    }
    for id in &calls {
        w.until(*id, "completed", |c| c.status == CallStatus::Completed)
            .await;
        w.assert_contiguous(*id);
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_nodes_calls_are_taken_over_once_its_leases_lapse() {
    let w = World::new(22).await;
    let a = w.node("node-a", w.store.clone()).await;
    let b = w.node("node-b", w.store.clone()).await;
    w.wait("the shards are split", || {
        owned(&a) + owned(&b) == 256 && owned(&b) >= 120
    })
    .await;
    let mut on_a = Vec::new();
    for _ in 0..5 {
        on_a.push(w.placed(&a).await.0);
    }
    for id in &on_a {
        w.carrier_event(&a, *id, CarrierEvent::Answered).await;
    }
    for id in &on_a {
        w.until(*id, "answered", |c| c.status == CallStatus::InProgress)
            .await;
        w.carrier.set_status(*id, LegStatus::Answered);
    }
    let a_shards = owned(&a);

    let killed = tokio::time::Instant::now();
    a.kill().await;
    w.wait("b takes a's shards over", || owned(&b) == 256).await;
    let took = killed.elapsed();
    assert!(
        took >= TTL - Duration::from_secs(2),
        "taken over after {took:?}: before the lease could lapse"
    );
    assert!(
        took <= TTL + Duration::from_secs(5),
        "taken over after {took:?}"
    );
    assert_eq!(handoffs(&b, "takeover"), u64::try_from(a_shards).unwrap());
    assert_eq!(actors(&b).await, on_a.len(), "a's live calls run on b");
    // b acts for them: a hangup through b ends each call and releases its leg.
    for id in &on_a {
        b.hangup(w.org, *id).await.unwrap();
    }
    for id in &on_a {
        let call = w
            .until(*id, "ended and released", |c| {
                c.status.is_terminal() && !c.release_pending
            })
            .await;
        assert_eq!(call.status, CallStatus::Completed);
        assert_eq!(w.carrier.hangups(*id).len(), 1, "one hangup, by b");
        w.assert_contiguous(*id);
    }
}

/// A cluster port that can be cut, as a network partition between one node and the store.
struct Cuttable {
    inner: Arc<MemoryStore>,
    cut: AtomicBool,
}

impl Cuttable {
    fn check(&self) -> StoreResult<()> {
        if self.cut.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("cut off".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ClusterStore for Cuttable {
    async fn register(&self, node: &NodeInfo) -> StoreResult<()> {
        self.check()?;
        self.inner.register(node).await
    }
    async fn live_call_counts(&self) -> StoreResult<Vec<(u16, i64)>> {
        self.check()?;
        self.inner.live_call_counts().await
    }
    async fn heartbeat(&self, node: &NodeInfo, alive_within: Duration) -> StoreResult<Vec<Member>> {
        self.check()?;
        self.inner.heartbeat(node, alive_within).await
    }
    async fn members(&self, alive_within: Duration) -> StoreResult<Vec<Member>> {
        self.check()?;
        self.inner.members(alive_within).await
    }
    async fn leases(&self) -> StoreResult<Vec<Lease>> {
        self.check()?;
        self.inner.leases().await
    }
    async fn claim_shards(
        &self,
        node: &str,
        shards: &[u16],
        ttl: Duration,
    ) -> StoreResult<Vec<Claimed>> {
        self.check()?;
        self.inner.claim_shards(node, shards, ttl).await
    }
    async fn renew_shards(
        &self,
        node: &str,
        held: &[(u16, i64)],
        ttl: Duration,
    ) -> StoreResult<Vec<u16>> {
        self.check()?;
        self.inner.renew_shards(node, held, ttl).await
    }
    async fn release_shards(&self, node: &str, held: &[(u16, i64)]) -> StoreResult<()> {
        self.check()?;
        self.inner.release_shards(node, held).await
    }
    async fn leave(&self, node: &str) -> StoreResult<()> {
        self.check()?;
        self.inner.leave(node).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_cut_off_from_the_store_stops_acting_before_its_lease_can_lapse() {
    let w = World::new(23).await;
    let port = Arc::new(Cuttable {
        inner: w.store.clone(),
        cut: AtomicBool::new(false),
    });
    let a = w.node("node-a", port.clone()).await;
    let b = w.node("node-b", w.store.clone()).await;
    w.wait("the shards are split", || {
        owned(&a) + owned(&b) == 256 && owned(&b) >= 120
    })
    .await;
    let (id, _leg) = w.placed(&a).await;
    w.carrier_event(&a, id, CarrierEvent::Answered).await;
    w.until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    w.carrier.set_status(id, LegStatus::Answered);

    port.cut.store(true, Ordering::SeqCst);
    let cut = tokio::time::Instant::now();
    w.wait("a stops acting", || owned(&a) == 0).await;
    let stopped = cut.elapsed();
    assert_eq!(actors(&a).await, 0, "a stopped its calls' actors");
    assert!(handoffs(&a, "lapsed") > 0);
    // a's commands for the call are withheld from now on, even though its call writes are
    // not fenced yet (nobody has bumped the epoch).
    assert!(a.inner.shared.shards.begin_effect(id).is_none());

    w.wait("b takes a's shards over", || owned(&b) == 256).await;
    let taken = cut.elapsed();
    assert!(
        stopped < taken,
        "a stopped at {stopped:?}, b took over at {taken:?}"
    );
    assert!(
        stopped <= TTL,
        "a must stop within its TTL, stopped after {stopped:?}"
    );
    // The call goes on under b: b hangs it up, once.
    b.hangup(w.org, id).await.unwrap();
    w.until(id, "ended and released", |c| {
        c.status.is_terminal() && !c.release_pending
    })
    .await;
    assert_eq!(w.carrier.hangups(id).len(), 1);
    w.assert_contiguous(id);

    // Back in touch, a gets a share again (with new epochs).
    port.cut.store(false, Ordering::SeqCst);
    w.wait("the shards are split again", || {
        owned(&a) >= 120 && owned(&a) + owned(&b) == 256
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_second_process_under_the_same_node_id_supersedes_the_first_for_good() {
    let w = World::new(24).await;
    let old = w.node("node-a", w.store.clone()).await;
    let (id, _) = w.placed(&old).await;
    w.carrier_event(&old, id, CarrierEvent::Answered).await;
    w.until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    w.carrier.set_status(id, LegStatus::Answered);
    // A restart while the old process still runs (or a node id configured twice): the new
    // process takes the node's shards back at once, as its own.
    let new = w.node("node-a", w.store.clone()).await;
    assert_eq!(owned(&new), 256);
    assert_eq!(handoffs(&new, "restart"), 256);
    w.wait("the old process gives up", || owned(&old) == 0)
        .await;
    assert!(
        old.ready().await.is_err(),
        "the old process is not ready any more"
    );
    assert_eq!(actors(&old).await, 0);
    // No tug of war: a minute later the new process still holds everything, claimed once.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(owned(&new), 256);
    assert_eq!(handoffs(&new, "restart"), 256);
    assert_eq!(handoffs(&old, "superseded"), 256);
    assert_eq!(
        actors(&new).await,
        1,
        "the live call runs in the new process"
    );
    new.hangup(w.org, id).await.unwrap();
    w.until(id, "ended", |c| c.status.is_terminal()).await;
    w.assert_contiguous(id);
}

/// A cluster port whose next heartbeat can be made slow (a database under load).
struct Slow {
    inner: Arc<MemoryStore>,
    /// Milliseconds the next heartbeat takes (0: none).
    heartbeat_ms: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl ClusterStore for Slow {
    async fn register(&self, node: &NodeInfo) -> StoreResult<()> {
        self.inner.register(node).await
    }
    async fn live_call_counts(&self) -> StoreResult<Vec<(u16, i64)>> {
        self.inner.live_call_counts().await
    }
    async fn heartbeat(&self, node: &NodeInfo, alive_within: Duration) -> StoreResult<Vec<Member>> {
        let slow = self.heartbeat_ms.swap(0, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(slow)).await;
        self.inner.heartbeat(node, alive_within).await
    }
    async fn members(&self, alive_within: Duration) -> StoreResult<Vec<Member>> {
        self.inner.members(alive_within).await
    }
    async fn leases(&self) -> StoreResult<Vec<Lease>> {
        self.inner.leases().await
    }
    async fn claim_shards(
        &self,
        node: &str,
        shards: &[u16],
        ttl: Duration,
    ) -> StoreResult<Vec<Claimed>> {
        self.inner.claim_shards(node, shards, ttl).await
    }
    async fn renew_shards(
        &self,
        node: &str,
        held: &[(u16, i64)],
        ttl: Duration,
    ) -> StoreResult<Vec<u16>> {
        self.inner.renew_shards(node, held, ttl).await
    }
    async fn release_shards(&self, node: &str, held: &[(u16, i64)]) -> StoreResult<()> {
        self.inner.release_shards(node, held).await
    }
    async fn leave(&self, node: &str) -> StoreResult<()> {
        self.inner.leave(node).await
    }
}

/// A renewal sent only after the node's own validity ended (its round was held up) must not
/// revive the shard: a carrier command refused meanwhile would be forgotten (a dial never placed, a leg
/// never released). The shard is dropped and claimed again, and its calls start afresh.
#[tokio::test(start_paused = true)]
async fn a_command_refused_while_a_round_was_late_is_carried_out_after_all() {
    let w = World::new(25).await;
    let port = Arc::new(Slow {
        inner: w.store.clone(),
        heartbeat_ms: Default::default(),
    });
    let config = EngineConfig {
        node_id: "node-a".into(),
        node_url: "http://node-a.test".into(),
        lease_ttl: TTL,
        lease_renew_every: Duration::from_secs(2),
        // The slow renewal answers (late) rather than timing out.
        call_timeout: Duration::from_secs(30),
        ..EngineConfig::default()
    };
    let ports = Ports {
        cluster: port.clone(),
        ..w.ports.clone()
    };
    // Under paused time the rounds run at exactly 0, 2, 4, ... s after the start.
    let started = tokio::time::Instant::now();
    let a = Engine::start(ports, config, &prometheus::Registry::new())
        .await
        .unwrap();
    let (id, _leg) = w.placed(&a).await;
    // The heartbeat of the 22 s round takes 8.5 s: the node's validity (from the 20 s round's
    // renewal) ends at 29 s, and the renewal that follows the heartbeat, at 30.5 s, answers at
    // once and would make it valid until 39.5 s. The call's ring timeout (30 s) falls in the
    // gap: it is journaled (the epoch stands) but the release of its leg is refused.
    tokio::time::sleep_until(started + Duration::from_secs(21)).await;
    port.heartbeat_ms.store(8_500, Ordering::SeqCst);
    w.wait("leg released", || {
        w.store
            .snapshot(id)
            .is_some_and(|c| c.status.is_terminal() && !c.release_pending)
    })
    .await;
    let call = w.store.snapshot(id).unwrap();
    eprintln!(
        "DEBUG at={:?} withheld={} lapsed={} restart={} {:?}",
        started.elapsed(),
        a.metrics().effects_withheld.get(),
        handoffs(&a, "lapsed"),
        handoffs(&a, "restart"),
        call.ended_at
    );
    assert_eq!(call.end_reason, Some(EndReason::RingTimeout));
    assert!(
        a.metrics().effects_withheld.get() > 0,
        "the release was refused once"
    );
    assert_eq!(w.carrier.hangups(id).len(), 1, "the leg released once");
    assert!(handoffs(&a, "lapsed") > 0 && handoffs(&a, "restart") > 0);
    w.assert_contiguous(id);
}
