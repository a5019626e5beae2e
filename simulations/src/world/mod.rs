//! The world: builds the engines (one node, or a cluster of them) over the simulated ports,
//! plays the workload and the fault schedule (`churn` for the cluster's), then lets everything
//! settle and runs the end-of-run checks (`settle`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::DateTime;
use iace_actors::breaker::{BreakerConfig, Breakers, GuardedTelephony};
use iace_actors::catalog::NewAgent;
use iace_actors::engine::Ports;
use iace_actors::engine::{Engine, EngineConfig, EngineError, EngineMetrics, NewCall};
use iace_actors::machine::CallId;
use iace_actors::ports::{CallStore, Peers, QueryStore, Telephony};
use iace_actors::testkit::SeqIds;
use uuid::Uuid;

use crate::carrier::SimCarrier;
use crate::cluster::{Node, NodeTelephony, Nodes, SimPeers, MAX_NODES};
use crate::core::{Core, Violation};
use crate::store::SimStore;
use crate::workload::{plan, CallPlan};
use crate::{Report, SimConfig};
use settle::{final_checks, recovery, shards_owned};

mod churn;
mod settle;

/// Vendor name of the simulated carrier (its breaker's name).
const CARRIER: &str = "telephony";

/// Ring timeout of the simulated engine (seconds).
pub const RING_TIMEOUT_SECS: u32 = 30;
/// Max duration of the simulated engine (seconds).
pub const MAX_DURATION_SECS: u32 = 300;
/// Once faults stop, every call must be terminal within this long.
pub const SETTLE_BOUND_MS: u64 = (RING_TIMEOUT_SECS as u64 + MAX_DURATION_SECS as u64 + 180) * 1000;

/// Lease TTL of the simulated nodes.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the simulated nodes renew their leases.
pub const LEASE_RENEW: Duration = Duration::from_secs(2);
/// Once faults stop, every shard must have a live owner within this long: a dead node's
/// lease lapses within a TTL, a node cut off until then needs another to rejoin, and the
/// next rounds claim what is free.
pub const OWNER_BOUND: Duration =
    Duration::from_secs(2 * LEASE_TTL.as_secs() + 3 * LEASE_RENEW.as_secs());

struct World {
    core: Arc<Core>,
    /// The store as the world itself sees it (never cut off).
    store: Arc<SimStore>,
    carrier: Arc<SimCarrier>,
    /// Every node, up or down (one in single-node runs).
    nodes: Arc<Nodes>,
    /// Pokes between nodes (cluster runs).
    peers: Option<Arc<dyn Peers>>,
    ids: Arc<SeqIds>,
    org: Uuid,
    agent: Uuid,
    metrics: Mutex<Vec<EngineMetrics>>,
    engines_started: AtomicI64,
    created: Mutex<BTreeMap<usize, CallId>>,
    /// The carrier's circuit breaker (profiles with `breakers`).
    breakers: Breakers,
}

/// Breaker of the simulated carrier: quick to open, a short first open wait.
fn carrier_breaker() -> BreakerConfig {
    BreakerConfig {
        window: 20,
        min_calls: 10,
        consecutive_failures: 5,
        slow_call: Duration::from_secs(15),
        open_wait: Duration::from_secs(10),
        open_wait_cap: Duration::from_secs(60),
        half_open_probes: 2,
        ..BreakerConfig::default()
    }
}

fn engine_config(node: &Node) -> EngineConfig {
    EngineConfig {
        node_id: node.id.clone(),
        node_url: node.url.clone(),
        lease_ttl: LEASE_TTL,
        lease_renew_every: LEASE_RENEW,
        drain_deadline: Duration::from_secs(60),
        ring_timeout_secs: RING_TIMEOUT_SECS,
        max_duration_secs: MAX_DURATION_SECS,
        inbox_sweep_every: Duration::from_secs(2),
        orphan_sweep_every: Duration::from_secs(15),
        // The workloads are sized by their own settings; a node's capacity (tested in the
        // engine's tests) would turn some of their creates away.
        max_live_calls: 0,
        ..EngineConfig::default()
    }
}

impl World {
    fn ports(&self, node: &Node) -> Ports {
        let tagged: Arc<dyn Telephony> = Arc::new(NodeTelephony {
            node: node.id.clone(),
            carrier: self.carrier.clone(),
        });
        let telephony: Arc<dyn Telephony> = match self.breakers.get(CARRIER) {
            Some(breaker) => Arc::new(GuardedTelephony::new(tagged, breaker.clone())),
            None => tagged,
        };
        Ports {
            calls: Arc::new(node.store.with_group_commit()),
            cluster: node.store.clone(),
            peers: self.peers.clone(),
            queries: node.store.clone(),
            telephony,
            clock: node.clock.clone(),
            ids: self.ids.clone(),
            breakers: self.breakers.clone(),
            voice: None,
            recall: None,
            accounts: None,
            outbox: None,
            analysis: None,
            traces: None,
        }
    }

    /// Starts an engine for `node` (retrying while the store refuses, at most `tries` times
    /// when given) and publishes it. Whether it started.
    async fn start_engine(&self, node: &Node, tries: Option<u32>) -> bool {
        let mut tried = 0;
        loop {
            let registry = prometheus::Registry::new();
            match Engine::start(self.ports(node), engine_config(node), &registry).await {
                Ok(engine) => {
                    let n = self.engines_started.fetch_add(1, Ordering::SeqCst) + 1;
                    node.starts.fetch_add(1, Ordering::SeqCst);
                    if self.nodes.list.len() == 1 {
                        self.core.log(format!("engine #{n} started"));
                    } else {
                        self.core.log(format!("engine #{n} started as {}", node.id));
                    }
                    self.metrics
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(engine.metrics().clone());
                    node.set(engine);
                    return true;
                }
                Err(e) => {
                    self.core
                        .log(format!("engine start failed on {}: {e}", node.id));
                    tried += 1;
                    if tries.is_some_and(|t| tried >= t) {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Kills `node`'s running engine (no clean-up, like `kill -9`).
    async fn crash(&self, node: &Node) {
        if let Some(engine) = node.take() {
            self.core.count("engine_crash");
            engine.kill().await;
        }
    }

    fn timers_after_end(&self) -> u64 {
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|m| m.timer_fires.with_label_values(&["after_end"]).get())
            .sum()
    }

    /// The API client of one outbound call.
    async fn client(self: Arc<Self>, plan: CallPlan) {
        let key = format!("plan-{}", plan.n);
        let req = NewCall {
            to: plan.to.clone(),
            from: plan.from.clone(),
            agent_id: self.agent,
            customer_id: None,
            metadata: Some(serde_json::json!({ "plan": plan.n })),
        };
        if let Some(after) = plan.repeat_create_ms {
            let me = self.clone();
            let (req, key) = (req.clone(), key.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                let first = me.create(req.clone(), &key).await;
                let mut other = req;
                other.metadata = Some(serde_json::json!({ "plan": "different body" }));
                let org = me.org;
                let attempt = move |e: Engine| {
                    let (other, key) = (other.clone(), key.clone());
                    async move { e.create_call(org, other, Some(key)).await }
                };
                match me.engine_call(attempt).await {
                    Some(Err(EngineError::IdempotencyMismatch)) | None => {}
                    Some(Err(EngineError::VendorUnavailable { .. })) if me.core.rates.breakers => {
                        me.core.count("create_refused_breaker_open");
                    }
                    Some(other) => me.core.violate(
                        "idempotent create",
                        format!("plan {}: same key, other body answered {other:?}", plan.n),
                    ),
                }
                me.check_same(plan.n, first);
            });
        }
        let id = self.create(req, &key).await;
        self.check_same(plan.n, id);
        let (Some(id), Some(after)) = (id, plan.client_hangup_ms) else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(after)).await;
        let org = self.org;
        let attempt = move |e: Engine| async move { e.hangup(org, id).await };
        match self.engine_call(attempt).await {
            Some(Ok(call)) => self.core.log(format!("api hangup {id} -> {}", call.status)),
            Some(Err(EngineError::IllegalTransition { status, .. })) => {
                self.core.log(format!("api hangup {id} refused: {status}"))
            }
            Some(Err(e)) => self
                .core
                .violate("API answers", format!("hangup of {id}: {e}")),
            None => self.core.log(format!("api hangup {id} gave up")),
        }
    }

    /// Creates a call with the client's retry policy (same key every time).
    async fn create(&self, req: NewCall, key: &str) -> Option<CallId> {
        let org = self.org;
        let attempt = move |e: Engine| {
            let (req, key) = (req.clone(), key.to_owned());
            async move { e.create_call(org, req, Some(key)).await }
        };
        let result = self.engine_call(attempt).await;
        match result {
            Some(Ok(created)) => {
                self.core.log(format!(
                    "api create {key} -> {} (replayed: {})",
                    created.call.spec.id, created.replayed
                ));
                Some(created.call.spec.id)
            }
            Some(Err(EngineError::VendorUnavailable { vendor, .. }))
                if self.core.rates.breakers =>
            {
                // Failing fast is the point: nothing was stored, no dial will come.
                self.core.count("create_refused_breaker_open");
                self.core
                    .log(format!("api create {key} refused: {vendor} breaker open"));
                None
            }
            Some(Err(e)) => {
                self.core
                    .violate("API answers", format!("create {key}: {e}"));
                None
            }
            None => {
                self.core.log(format!("api create {key} gave up"));
                None
            }
        }
    }

    /// Runs an API call against a running engine (any one, as through a load balancer),
    /// forwarding it once to the node that runs the call when told so, and retrying what a
    /// client retries (503, 504, engine down) a few times with backoff. `None` when it kept
    /// failing.
    async fn engine_call<T, F, Fut>(&self, f: F) -> Option<Result<T, EngineError>>
    where
        F: Fn(Engine) -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        let mut backoff = 500;
        for _ in 0..10 {
            if let Some(engine) = self.nodes.pick() {
                let mut answer = f(engine).await;
                if let Err(EngineError::Elsewhere { peer }) = &answer {
                    self.core
                        .log(format!("api call forwarded to {}", peer.node_id));
                    if let Some(there) = self.nodes.by_url(&peer.url) {
                        answer = f(there).await;
                    }
                }
                match answer {
                    Err(
                        e @ (EngineError::Unavailable(_)
                        | EngineError::StoreUnavailable(_)
                        | EngineError::Timeout(_)
                        | EngineError::Elsewhere { .. }),
                    ) => {
                        self.core.log(format!("api call failed: {e}"));
                    }
                    other => return Some(other),
                }
            }
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            backoff = (backoff * 2).min(10_000);
        }
        None
    }

    /// Every create of plan `n` (first or repeated) must name the same call.
    fn check_same(&self, n: usize, id: Option<CallId>) {
        let Some(id) = id else { return };
        let mut seen = self.created.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(n).or_insert(id);
        if *entry != id {
            self.core.violate(
                "idempotent create",
                format!("plan {n}: the same Idempotency-Key created {entry} and {id}"),
            );
        }
    }
}

/// Runs one simulation on the current (paused, current-thread) runtime.
pub(crate) async fn simulate(cfg: &SimConfig) -> Result<Report, (Violation, Report)> {
    let wall = std::time::Instant::now();
    let rates = cfg.faults.rates();
    let core = Arc::new(Core::new(cfg.seed, rates, cfg.keep_trace));
    let epoch = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or(DateTime::UNIX_EPOCH);
    let ids = Arc::new(SeqIds::new(cfg.seed));
    let org = iace_actors::ports::IdGen::next_id(&*ids);
    let agent = iace_actors::ports::IdGen::next_id(&*ids);
    let store = Arc::new(SimStore::new(core.clone()));
    let (node_count, first_nodes) = match rates.cluster_nodes {
        Some((lo, hi)) => (
            MAX_NODES,
            usize::try_from(core.draw(lo, hi + 1)).unwrap_or(2),
        ),
        None => (1, 1),
    };
    let nodes = Nodes::new(core.clone(), &store, epoch, node_count, rates.clock_skew_ms);
    let carrier = SimCarrier::new(
        core.clone(),
        epoch,
        nodes.clone(),
        store.inner.clone(),
        org,
        agent,
    );
    let peers: Option<Arc<dyn Peers>> = (node_count > 1).then(|| {
        Arc::new(SimPeers {
            nodes: Arc::downgrade(&nodes),
            core: core.clone(),
        }) as Arc<dyn Peers>
    });
    let breakers = if rates.breakers {
        let configs = [(CARRIER.to_owned(), carrier_breaker())].into();
        let clock = nodes.first().clock.clone();
        let breakers = Breakers::start(configs, clock, &prometheus::Registry::new())
            .await
            .unwrap_or_else(|e| panic!("starting the breakers: {e}"));
        if let Some(b) = breakers.get(CARRIER) {
            carrier.watch_breaker(b.clone());
        }
        breakers
    } else {
        Breakers::none()
    };
    let world = Arc::new(World {
        core: core.clone(),
        store: store.clone(),
        carrier: carrier.clone(),
        nodes: nodes.clone(),
        peers,
        ids,
        org,
        agent,
        metrics: Mutex::new(Vec::new()),
        engines_started: AtomicI64::new(0),
        created: Mutex::new(BTreeMap::new()),
        breakers,
    });
    let new: NewAgent = serde_json::from_value(serde_json::json!({
        "name": "Simulated agent",
        "agent_type": "both",
    }))
    .unwrap_or_else(|e| panic!("agent fixture: {e}"));
    let agent_row = new
        .validate(agent, org, epoch)
        .unwrap_or_else(|e| panic!("agent fixture: {e}"));
    if let Err(e) = store.insert_agent(&agent_row).await {
        panic!("agent fixture: {e}");
    }
    core.log(format!(
        "seed {} calls {} faults {}",
        cfg.seed, cfg.calls, cfg.faults
    ));
    for node in &nodes.list[..first_nodes] {
        world.start_engine(node, None).await;
    }

    // The fault schedule: crashes, clock jumps, carrier outages, while faults are on.
    let mut chaos = Vec::new();
    if let Some((lo, hi)) = rates.crash_every_s {
        let w = world.clone();
        chaos.push(tokio::spawn(async move {
            while w.core.faults_on() {
                tokio::time::sleep(Duration::from_millis(w.core.draw(lo * 1000, hi * 1000))).await;
                if !w.core.faults_on() {
                    break;
                }
                let node = w.nodes.first().clone();
                if w.core.draw(0, 2) == 0 {
                    w.crash(&node).await;
                    tokio::time::sleep(Duration::from_millis(w.core.draw(0, 5_000))).await;
                    if !node.is_up() {
                        w.start_engine(&node, None).await;
                    }
                } else {
                    // Takeover: a new node takes the shards while the old one still runs (a
                    // paused VM, a partition); the old one's writes must be fenced. It dies
                    // a little later.
                    let old = node.take();
                    w.core.count("takeover");
                    w.start_engine(&node, None).await;
                    tokio::time::sleep(Duration::from_millis(w.core.draw(0, 10_000))).await;
                    if let Some(old) = old {
                        old.kill().await;
                        w.core.log("old engine killed");
                    }
                }
            }
        }));
    }
    if rates.crash_on_dial > 0 {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        carrier.crash_requests(tx);
        let w = world.clone();
        chaos.push(tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let node = w.nodes.first().clone();
                if !w.core.faults_on() || !node.is_up() {
                    continue;
                }
                w.core.log("engine killed mid-dial");
                w.core.count("crash_mid_dial");
                w.crash(&node).await;
                tokio::time::sleep(Duration::from_millis(w.core.draw(0, 8_000))).await;
                // The periodic crashes may have restarted it meanwhile.
                if !node.is_up() {
                    w.start_engine(&node, None).await;
                }
            }
        }));
    }
    if let Some((lo, hi)) = rates.clock_jump_every_s {
        let w = world.clone();
        chaos.push(tokio::spawn(async move {
            while w.core.faults_on() {
                tokio::time::sleep(Duration::from_millis(w.core.draw(lo * 1000, hi * 1000))).await;
                if !w.core.faults_on() {
                    break;
                }
                // Mostly forward (NTP step after a stall: timers fire late), sometimes back
                // (timers fire early and must be re-armed).
                let jump = if w.core.draw(0, 4) == 0 {
                    -i64::try_from(w.core.draw(500, 3_000)).unwrap_or(0)
                } else {
                    i64::try_from(w.core.draw(1_000, 20_000)).unwrap_or(0)
                };
                let node = match w.nodes.list.len() {
                    1 => w.nodes.first().clone(),
                    n => {
                        w.nodes.list[usize::try_from(w.core.draw(0, n as u64)).unwrap_or(0)].clone()
                    }
                };
                node.clock.jump(jump);
                w.core.count("clock_jump");
                if w.nodes.list.len() == 1 {
                    w.core.log(format!("clock jumps {jump} ms"));
                } else {
                    w.core.log(format!(
                        "{} clock jumps {jump} ms (skew now {} ms)",
                        node.id,
                        node.clock.skew_ms()
                    ));
                }
            }
        }));
    }
    if let Some((lo, hi)) = rates.carrier_outage_every_s {
        let w = world.clone();
        chaos.push(tokio::spawn(async move {
            while w.core.faults_on() {
                tokio::time::sleep(Duration::from_millis(w.core.draw(lo * 1000, hi * 1000))).await;
                if !w.core.faults_on() {
                    break;
                }
                w.core.count("carrier_outage");
                let (lo, hi) = w.core.rates.carrier_outage_ms.unwrap_or((2_000, 40_000));
                w.carrier.outage(w.core.draw(lo, hi));
            }
        }));
    }

    let churn = churn::start(&world);

    // The workload.
    let plans = plan(cfg.seed, cfg.calls, cfg.mean_gap_ms);
    let origin = tokio::time::Instant::now();
    let mut clients = Vec::new();
    for p in plans.iter().cloned() {
        tokio::time::sleep_until(origin + Duration::from_millis(p.at_ms)).await;
        if core.violation().is_some() {
            break;
        }
        core.log(format!("plan {} {:?}", p.n, p.scenario));
        if p.scenario.inbound() {
            carrier.offer(p);
        } else {
            carrier.expect_dial(&p);
            clients.push(tokio::spawn(world.clone().client(p)));
        }
    }
    for c in clients {
        let _ = c.await;
    }
    core.heal();
    // The cluster's fault tasks stop at their next step (each finishes the membership change
    // it is in, so no node is left half stopped).
    for c in churn {
        let _ = c.await;
    }
    for c in chaos {
        // A crash task may be between kill and restart; the engine is restarted below.
        c.abort();
        let _ = c.await;
    }
    for node in &world.nodes.list {
        node.link.set_cut(false, false);
        node.link.set_slow_ms(0);
    }
    if world.nodes.up().is_empty() {
        let first = world.nodes.first().clone();
        world.start_engine(&first, None).await;
    }

    // Settle: once faults stop, everything must end within the bound.
    let healed = tokio::time::Instant::now();
    let mut owners_seen = false;
    loop {
        if core.violation().is_some() {
            break;
        }
        if !owners_seen {
            match shards_owned(&world).await {
                Ok(()) => {
                    owners_seen = true;
                    core.log(format!(
                        "every shard owned {} ms after faults stopped",
                        healed.elapsed().as_millis()
                    ));
                }
                Err(why) if healed.elapsed() > OWNER_BOUND => {
                    core.violate(
                        "every shard has a live owner within 2 TTL + 3 rounds once faults stop",
                        format!("{} s after faults stopped: {why}", OWNER_BOUND.as_secs()),
                    );
                    break;
                }
                Err(_) => {}
            }
        }
        if world.timers_after_end() > 0 {
            core.violate(
                "timers never fire for terminal calls",
                "a deadline timer reached an ended call",
            );
            break;
        }
        let live = core.checker().live();
        let legs = carrier.unreleased();
        // An accepted event whose call ended meanwhile (by reconciliation with the carrier)
        // is marked processed by the next inbox sweep of the call's node: wait for it too.
        let unprocessed = match store.inner.inbox_pending(1).await {
            Ok(rows) => rows
                .first()
                .map(|r| format!("{}/{} for {}", r.vendor, r.event_id, r.call_id)),
            Err(e) => Some(format!("inbox unreadable: {e}")),
        };
        if owners_seen
            && live.is_empty()
            && legs.is_empty()
            && core.pending_deliveries() == 0
            && unprocessed.is_none()
        {
            break;
        }
        if healed.elapsed() > Duration::from_millis(SETTLE_BOUND_MS) {
            if let Some(id) = live.first() {
                let call = store.inner.snapshot(*id);
                core.violate(
                    "every call reaches a terminal state once faults stop",
                    format!(
                        "{} calls still live {} s after faults stopped; first {id}: {:?}, journal {:?}",
                        live.len(),
                        SETTLE_BOUND_MS / 1000,
                        call.map(|c| (c.status, c.version, c.deadline)),
                        store.inner.journal(*id).iter().map(|e| e.event.kind()).collect::<Vec<_>>()
                    ),
                );
            } else if let Some((leg, call, state)) = legs.first() {
                core.violate(
                    "every carrier leg is released",
                    format!(
                        "{} legs still up after faults stopped; first {leg} of call {call:?} is {state:?}",
                        legs.len()
                    ),
                );
            } else if let Some(row) = unprocessed {
                core.violate(
                    "no lost event",
                    format!(
                        "accepted carrier event {row} still unprocessed {} s after faults stopped",
                        SETTLE_BOUND_MS / 1000
                    ),
                );
            } else {
                core.violate(
                    "every accepted event is delivered",
                    format!(
                        "{} webhook deliveries never finished",
                        core.pending_deliveries()
                    ),
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settle_ms = u64::try_from(healed.elapsed().as_millis()).unwrap_or(u64::MAX);
    if rates.breakers && core.violation().is_none() {
        recovery(&world, cfg.calls).await;
    }
    if core.violation().is_none() {
        // Still owned at the end (nothing handed back and forth without end).
        if let Err(why) = shards_owned(&world).await {
            core.violate(
                "every shard has a live owner within 2 TTL + 3 rounds once faults stop",
                format!("at the end of the run: {why}"),
            );
        }
    }
    // Taking the engines out of their nodes also breaks the carrier -> nodes -> engine ->
    // ports -> carrier cycle, so a sweep does not keep every finished world alive.
    for (id, engine) in world.nodes.take_all() {
        engine.shutdown().await;
        if world.nodes.list.len() > 1 {
            core.log(format!("{id} shut down"));
        }
    }
    world.breakers.stop();
    if core.violation().is_none() {
        final_checks(&world).await;
    }

    // Summary.
    let mut outcomes = BTreeMap::new();
    for (id, model) in core.checker().calls() {
        let c = store
            .inner
            .snapshot(*id)
            .unwrap_or_else(|| model.folded.clone());
        let key = format!(
            "{} {}/{}",
            c.spec.direction.as_str(),
            c.status,
            c.end_reason.map_or("-", |r| r.as_str())
        );
        *outcomes.entry(key).or_insert(0usize) += 1;
    }
    let mut scenarios = BTreeMap::new();
    for p in &plans {
        *scenarios
            .entry(format!("{:?}", p.scenario))
            .or_insert(0usize) += 1;
    }
    let report = Report {
        seed: cfg.seed,
        calls_planned: cfg.calls,
        calls_stored: core.checker().calls().len(),
        legs: carrier.legs(),
        outcomes,
        scenarios,
        faults: core
            .injected()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        cluster: core.tallies(),
        engine_starts: u64::try_from(world.engines_started.load(Ordering::SeqCst)).unwrap_or(0),
        simulated_ms: core.now_ms(),
        settle_ms,
        wall: wall.elapsed(),
        steps: core.steps(),
        trace_hash: core.trace_hash(),
        trace: core.take_trace(),
    };
    match core.violation() {
        None => Ok(report),
        Some(v) => Err((v, report)),
    }
}
