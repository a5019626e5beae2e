//! The world: builds the engine over the simulated ports, plays the workload and the fault
//! schedule, then lets everything settle and runs the end-of-run checks (`settle`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use iace_actors::breaker::{BreakerConfig, Breakers, GuardedTelephony};
use iace_actors::catalog::NewAgent;
use iace_actors::engine::Ports;
use iace_actors::engine::{Engine, EngineConfig, EngineError, EngineMetrics, NewCall};
use iace_actors::machine::CallId;
use iace_actors::ports::{Clock, QueryStore, Telephony};
use iace_actors::testkit::{SeqIds, TokioClock};
use uuid::Uuid;

use crate::carrier::{current, SimCarrier, Slot};
use crate::core::{Core, Violation};
use crate::store::SimStore;
use crate::workload::{plan, CallPlan};
use crate::{Report, SimConfig};
use settle::{final_checks, recovery};

mod settle;

/// Vendor name of the simulated carrier (its breaker's name).
const CARRIER: &str = "telephony";

/// Ring timeout of the simulated engine (seconds).
pub const RING_TIMEOUT_SECS: u32 = 30;
/// Max duration of the simulated engine (seconds).
pub const MAX_DURATION_SECS: u32 = 300;
/// Once faults stop, every call must be terminal within this long.
pub const SETTLE_BOUND_MS: u64 = (RING_TIMEOUT_SECS as u64 + MAX_DURATION_SECS as u64 + 180) * 1000;

/// Wall clock of the world: tokio's paused clock plus a skew the faults can jump.
struct SimClock {
    base: TokioClock,
    skew_ms: AtomicI64,
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        self.base.now() + chrono::Duration::milliseconds(self.skew_ms.load(Ordering::SeqCst))
    }
}

struct World {
    core: Arc<Core>,
    store: Arc<SimStore>,
    carrier: Arc<SimCarrier>,
    clock: Arc<SimClock>,
    ids: Arc<SeqIds>,
    slot: Slot,
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

fn engine_config() -> EngineConfig {
    EngineConfig {
        node_id: "sim-node".into(),
        ring_timeout_secs: RING_TIMEOUT_SECS,
        max_duration_secs: MAX_DURATION_SECS,
        inbox_sweep_every: Duration::from_secs(2),
        orphan_sweep_every: Duration::from_secs(15),
        ..EngineConfig::default()
    }
}

impl World {
    fn ports(&self) -> Ports {
        let telephony: Arc<dyn Telephony> = match self.breakers.get(CARRIER) {
            Some(breaker) => Arc::new(GuardedTelephony::new(self.carrier.clone(), breaker.clone())),
            None => self.carrier.clone(),
        };
        Ports {
            calls: self.store.clone(),
            cluster: self.store.clone(),
            peers: None,
            queries: self.store.clone(),
            telephony,
            clock: self.clock.clone(),
            ids: self.ids.clone(),
            breakers: self.breakers.clone(),
            voice: None,
            recall: None,
            accounts: None,
        }
    }

    /// Starts an engine (retrying while the store refuses) and publishes it.
    async fn start_engine(&self) {
        loop {
            let registry = prometheus::Registry::new();
            match Engine::start(self.ports(), engine_config(), &registry).await {
                Ok(engine) => {
                    let n = self.engines_started.fetch_add(1, Ordering::SeqCst) + 1;
                    self.core.log(format!("engine #{n} started"));
                    self.metrics
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(engine.metrics().clone());
                    *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(engine);
                    return;
                }
                Err(e) => {
                    self.core.log(format!("engine start failed: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Kills the running engine (no clean-up, like `kill -9`).
    async fn crash(&self) {
        let engine = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(engine) = engine {
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

    /// Runs an API call against the current engine, retrying what a client retries (503,
    /// 504, engine down) a few times with backoff. `None` when it kept failing.
    async fn engine_call<T, F, Fut>(&self, f: F) -> Option<Result<T, EngineError>>
    where
        F: Fn(Engine) -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        let mut backoff = 500;
        for _ in 0..10 {
            if let Some(engine) = current(&self.slot) {
                match f(engine).await {
                    Err(
                        e @ (EngineError::Unavailable(_)
                        | EngineError::StoreUnavailable(_)
                        | EngineError::Timeout(_)),
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
    let slot: Slot = Arc::new(Mutex::new(None));
    let ids = Arc::new(SeqIds::new(cfg.seed));
    let org = iace_actors::ports::IdGen::next_id(&*ids);
    let agent = iace_actors::ports::IdGen::next_id(&*ids);
    let store = Arc::new(SimStore::new(core.clone()));
    let carrier = SimCarrier::new(core.clone(), epoch, slot.clone(), org, agent);
    let clock = Arc::new(SimClock {
        base: TokioClock::new(epoch),
        skew_ms: AtomicI64::new(0),
    });
    let breakers = if rates.breakers {
        let configs = [(CARRIER.to_owned(), carrier_breaker())].into();
        let breakers = Breakers::start(configs, clock.clone(), &prometheus::Registry::new())
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
        clock,
        ids,
        slot,
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
    world.start_engine().await;

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
                if w.core.draw(0, 2) == 0 {
                    w.crash().await;
                    tokio::time::sleep(Duration::from_millis(w.core.draw(0, 5_000))).await;
                    if current(&w.slot).is_none() {
                        w.start_engine().await;
                    }
                } else {
                    // Takeover: a new node takes the shards while the old one still runs (a
                    // paused VM, a partition); the old one's writes must be fenced. It dies
                    // a little later.
                    let old = w.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    w.core.count("takeover");
                    w.start_engine().await;
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
                if !w.core.faults_on() || current(&w.slot).is_none() {
                    continue;
                }
                w.core.log("engine killed mid-dial");
                w.core.count("crash_mid_dial");
                w.crash().await;
                tokio::time::sleep(Duration::from_millis(w.core.draw(0, 8_000))).await;
                // The periodic crashes may have restarted it meanwhile.
                if current(&w.slot).is_none() {
                    w.start_engine().await;
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
                w.clock.skew_ms.fetch_add(jump, Ordering::SeqCst);
                w.core.count("clock_jump");
                w.core.log(format!("clock jumps {jump} ms"));
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
    for c in chaos {
        // A crash task may be between kill and restart; the engine is restarted below.
        c.abort();
        let _ = c.await;
    }
    if current(&world.slot).is_none() {
        world.start_engine().await;
    }

    // Settle: once faults stop, everything must end within the bound.
    let healed = tokio::time::Instant::now();
    loop {
        if core.violation().is_some() {
            break;
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
        if live.is_empty() && legs.is_empty() && core.pending_deliveries() == 0 {
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
    // Taking the engine out of the slot also breaks the carrier -> slot -> engine -> ports ->
    // carrier cycle, so a sweep does not keep every finished world alive.
    let engine = world.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(engine) = engine {
        engine.shutdown().await;
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
