//! The breaker actors and the handle callers use.
//!
//! ```text
//! BreakerSupervisor ── VendorBreaker per vendor (owns the Breaker, arms the half-open timer)
//! ```
//!
//! Asking permission must not become the bottleneck: the actor publishes a read-only view
//! (state, open-until, period, probe pool) in atomics, and [`BreakerHandle::acquire`] decides
//! from it without a round trip. Only outcomes travel as messages (fire and forget). Half-open
//! probes are a pool the actor fills when it enters half-open; the handle takes from it with
//! one atomic decrement, so no more than `half_open_probes` calls go out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

use super::machine::{
    Breaker, BreakerConfig, BreakerSnapshot, BreakerState, CallOutcome, Permit, Rejected,
    Transition, TransitionReason,
};
use crate::ports::Clock;

/// How much of its open wait a breaker may have left when a caller that waited out the same
/// Retry-After asks again (see [`BreakerHandle::acquire_after_wait`]): the time between the
/// caller's receiving the 429 and the breaker's actor recording it, generously.
const AFTER_WAIT_SLACK: chrono::Duration = chrono::Duration::seconds(2);

/// IACE's breakers: one per vendor it calls, plus `groq_classify`, a bulkhead for Groq's
/// optional classifications (caller sentiment) kept apart from `groq`, the conversation's
/// replies, so that slow or failing optional work never fails the reply path.
pub const VENDORS: [&str; 8] = [
    "telnyx",
    "deepgram",
    "cartesia",
    "groq",
    "groq_classify",
    "google",
    "stripe",
    "hubspot",
];

/// Breaker metrics (one set for every vendor).
#[derive(Clone)]
pub struct BreakerMetrics {
    state: IntGaugeVec,
    transitions: IntCounterVec,
    calls: IntCounterVec,
    latency: HistogramVec,
}

impl BreakerMetrics {
    /// Registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = BreakerMetrics {
            state: IntGaugeVec::new(
                Opts::new(
                    "iace_breaker_state",
                    "Breaker state per vendor: 0 closed, 1 open, 2 half_open, 3 forced_open, 4 disabled",
                ),
                &["vendor"],
            )?,
            transitions: IntCounterVec::new(
                Opts::new("iace_breaker_transitions_total", "Breaker transitions"),
                &["vendor", "from", "to", "reason"],
            )?,
            calls: IntCounterVec::new(
                Opts::new(
                    "iace_vendor_calls_total",
                    "Vendor calls by outcome (success, failure, rate_limited, cancelled, rejected = failed fast by the breaker)",
                ),
                &["vendor", "outcome"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new("iace_vendor_call_seconds", "Latency of permitted vendor calls")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["vendor"],
            )?,
        };
        registry.register(Box::new(m.state.clone()))?;
        registry.register(Box::new(m.transitions.clone()))?;
        registry.register(Box::new(m.calls.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        Ok(m)
    }
}

const NO_DEADLINE: i64 = i64::MIN;

/// What the actor publishes for the fast path.
struct View {
    state: AtomicU8,
    open_until_ms: AtomicI64,
    generation: AtomicU64,
    probes: AtomicI64,
    /// The last opening was a 429's Retry-After: its callers are waiting out the same time,
    /// so [`BreakerHandle::acquire_after_wait`] lets them wait out the breaker's rest of it.
    rate_limited: AtomicBool,
}

impl View {
    fn closed() -> Self {
        View {
            state: AtomicU8::new(BreakerState::Closed.code()),
            open_until_ms: AtomicI64::new(NO_DEADLINE),
            generation: AtomicU64::new(0),
            probes: AtomicI64::new(0),
            rate_limited: AtomicBool::new(false),
        }
    }

    fn open_until(&self) -> Option<DateTime<Utc>> {
        match self.open_until_ms.load(Ordering::Acquire) {
            NO_DEADLINE => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }
}

/// Messages of a [`VendorBreaker`].
pub(crate) enum BreakerMsg {
    /// A permitted call ended.
    Record {
        permit: Permit,
        outcome: CallOutcome,
    },
    /// The open wait may have ended (own timer, or a caller saw an expired deadline).
    Tick,
    /// A half-open period that has not concluded in time (probes lost by their callers).
    ProbeDeadline {
        generation: u64,
    },
    /// Operator commands; each answers with the new snapshot.
    ForceOpen(RpcReplyPort<BreakerSnapshot>),
    Disable(RpcReplyPort<BreakerSnapshot>),
    Reset(RpcReplyPort<BreakerSnapshot>),
    Snapshot(RpcReplyPort<BreakerSnapshot>),
}

struct VendorBreaker;

struct VendorBreakerArgs {
    vendor: Arc<str>,
    config: BreakerConfig,
    view: Arc<View>,
    clock: Arc<dyn Clock>,
    metrics: BreakerMetrics,
}

struct VendorBreakerState {
    args: VendorBreakerArgs,
    breaker: Breaker,
}

impl Actor for VendorBreaker {
    type Msg = BreakerMsg;
    type State = VendorBreakerState;
    type Arguments = VendorBreakerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<BreakerMsg>,
        args: VendorBreakerArgs,
    ) -> Result<VendorBreakerState, ActorProcessingErr> {
        let state = VendorBreakerState {
            breaker: Breaker::new(args.config.clone()),
            args,
        };
        // A (re)started breaker starts closed; publish that.
        state.publish();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<BreakerMsg>,
        msg: BreakerMsg,
        state: &mut VendorBreakerState,
    ) -> Result<(), ActorProcessingErr> {
        let now = state.args.clock.now();
        match msg {
            BreakerMsg::Record { permit, outcome } => {
                let was_probe = permit.probe && permit.generation == state.breaker.generation();
                let before = state.breaker.probes_left();
                let tr = state.breaker.record(permit, outcome, now);
                if tr.is_none() && was_probe && state.breaker.probes_left() > before {
                    // A cancelled probe gave its slot back: put it back in the pool.
                    state.args.view.probes.fetch_add(1, Ordering::AcqRel);
                    let _ = state.breaker.try_acquire(now);
                }
                state.after(&myself, tr, now);
            }
            BreakerMsg::Tick => {
                let tr = state.breaker.on_timer(now);
                state.after(&myself, tr, now);
            }
            BreakerMsg::ProbeDeadline { generation } => {
                if state.breaker.state() == BreakerState::HalfOpen
                    && state.breaker.generation() == generation
                {
                    warn!(vendor = %state.args.vendor, "half-open probes did not report in time; re-opening");
                    let tr = state.breaker.probe_timeout(now);
                    state.after(&myself, tr, now);
                }
            }
            BreakerMsg::ForceOpen(reply) => {
                let tr = state.breaker.force_open();
                state.after(&myself, tr, now);
                let _ = reply.send(state.snapshot());
            }
            BreakerMsg::Disable(reply) => {
                let tr = state.breaker.disable();
                state.after(&myself, tr, now);
                let _ = reply.send(state.snapshot());
            }
            BreakerMsg::Reset(reply) => {
                let tr = state.breaker.reset();
                state.after(&myself, tr, now);
                let _ = reply.send(state.snapshot());
            }
            BreakerMsg::Snapshot(reply) => {
                let _ = reply.send(state.snapshot());
            }
        }
        Ok(())
    }
}

impl VendorBreakerState {
    fn snapshot(&self) -> BreakerSnapshot {
        self.breaker.snapshot(&self.args.vendor)
    }

    /// Publishes a transition: log, metrics, view, timers.
    fn after(&mut self, myself: &ActorRef<BreakerMsg>, tr: Option<Transition>, now: DateTime<Utc>) {
        let Some(tr) = tr else { return };
        let vendor = &*self.args.vendor;
        let m = &self.args.metrics;
        m.transitions
            .with_label_values(&[vendor, tr.from.as_str(), tr.to.as_str(), tr.reason.as_str()])
            .inc();
        let snap = self.breaker.snapshot(vendor);
        match tr.to {
            BreakerState::Open | BreakerState::ForcedOpen => {
                warn!(vendor, from = tr.from.as_str(), to = tr.to.as_str(), reason = tr.reason.as_str(), open_until = ?snap.open_until, "breaker opened");
            }
            _ => info!(
                vendor,
                from = tr.from.as_str(),
                to = tr.to.as_str(),
                reason = tr.reason.as_str(),
                "breaker transition"
            ),
        }
        if tr.to == BreakerState::HalfOpen {
            // Fill the probe pool the handles draw from.
            let mut issued = 0;
            while self.breaker.try_acquire(now).0.is_ok() {
                issued += 1;
            }
            self.args.view.probes.store(issued, Ordering::Release);
            let generation = self.breaker.generation();
            let wait = self
                .breaker
                .config()
                .open_wait
                .max(self.breaker.config().slow_call * 2);
            myself.send_after(wait, move || BreakerMsg::ProbeDeadline { generation });
        }
        if tr.to == BreakerState::Open {
            self.args.view.rate_limited.store(
                tr.reason == TransitionReason::RateLimited,
                Ordering::Release,
            );
        }
        if let (BreakerState::Open, Some(until)) = (tr.to, snap.open_until) {
            let wait = (until - now).to_std().unwrap_or(Duration::ZERO);
            myself.send_after(wait, || BreakerMsg::Tick);
        }
        self.publish();
    }

    fn publish(&self) {
        let view = &self.args.view;
        let state = self.breaker.state();
        if state != BreakerState::HalfOpen {
            view.probes.store(0, Ordering::Release);
        }
        view.open_until_ms.store(
            self.breaker
                .open_until()
                .map_or(NO_DEADLINE, |t| t.timestamp_millis()),
            Ordering::Release,
        );
        view.generation
            .store(self.breaker.generation(), Ordering::Release);
        view.state.store(state.code(), Ordering::Release);
        self.args
            .metrics
            .state
            .with_label_values(&[&*self.args.vendor])
            .set(i64::from(state.code()));
    }
}

/// The vendor's metric series, resolved once (a label lookup per call would cost more than
/// the breaker itself).
#[derive(Clone)]
struct Series {
    success: prometheus::IntCounter,
    failure: prometheus::IntCounter,
    rate_limited: prometheus::IntCounter,
    cancelled: prometheus::IntCounter,
    rejected: prometheus::IntCounter,
    latency: prometheus::Histogram,
}

impl Series {
    fn new(m: &BreakerMetrics, vendor: &str) -> Self {
        let calls = |outcome: &str| m.calls.with_label_values(&[vendor, outcome]);
        Series {
            success: calls("success"),
            failure: calls("failure"),
            rate_limited: calls("rate_limited"),
            cancelled: calls("cancelled"),
            rejected: calls("rejected"),
            latency: m.latency.with_label_values(&[vendor]),
        }
    }
}

/// How callers use one vendor's breaker. Cheap to clone.
#[derive(Clone)]
pub struct BreakerHandle {
    vendor: Arc<str>,
    view: Arc<View>,
    actor: Arc<RwLock<ActorRef<BreakerMsg>>>,
    clock: Arc<dyn Clock>,
    metrics: BreakerMetrics,
    series: Series,
    rpc_timeout: Duration,
}

impl std::fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("vendor", &self.vendor)
            .field("state", &self.state())
            .finish()
    }
}

impl BreakerHandle {
    /// The vendor.
    pub fn vendor(&self) -> &str {
        &self.vendor
    }

    /// The published state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_code(self.view.state.load(Ordering::Acquire))
    }

    /// Permission for one call, decided from the published view (no round trip). A call that
    /// gets a permit must report it with [`BreakerHandle::record`].
    pub fn acquire(&self) -> Result<Permit, Rejected> {
        let generation = self.view.generation.load(Ordering::Acquire);
        let result = match self.state() {
            BreakerState::Closed | BreakerState::Disabled => Ok(Permit {
                generation,
                probe: false,
            }),
            BreakerState::ForcedOpen => Err(Rejected {
                state: BreakerState::ForcedOpen,
                until: None,
            }),
            BreakerState::Open => {
                let until = self.view.open_until();
                if until.is_some_and(|u| self.clock.now() >= u) {
                    // The actor's timer is due; nudge it (probes open right after).
                    self.send(BreakerMsg::Tick);
                }
                Err(Rejected {
                    state: BreakerState::Open,
                    until,
                })
            }
            BreakerState::HalfOpen => {
                if self.view.probes.fetch_sub(1, Ordering::AcqRel) > 0 {
                    Ok(Permit {
                        generation,
                        probe: true,
                    })
                } else {
                    self.view.probes.fetch_add(1, Ordering::AcqRel);
                    Err(Rejected {
                        state: BreakerState::HalfOpen,
                        until: None,
                    })
                }
            }
        };
        if result.is_err() {
            self.series.rejected.inc();
        }
        result
    }

    /// Like [`BreakerHandle::acquire`], for a retry that has just waited out a Retry-After:
    /// the breaker it finds is open with its wait just over, and goes half-open on the first
    /// refused request; ask again briefly (the call then goes out as a probe) instead of
    /// failing. When a 429 opened it, its wait began when its actor recorded the 429, a moment
    /// after the caller began waiting out the same Retry-After, so it may still have up to
    /// [`AFTER_WAIT_SLACK`] to run: the call waits that out too rather than losing the race
    /// between the two timers. A breaker opened by failures still refuses until its wait is
    /// over (never retry while it is open).
    pub async fn acquire_after_wait(&self) -> Result<Permit, Rejected> {
        let mut tries = 0;
        loop {
            match self.acquire() {
                Err(r) if tries < 5 && r.state == BreakerState::Open => {
                    let now = self.clock.now();
                    let slack = if self.view.rate_limited.load(Ordering::Acquire) {
                        AFTER_WAIT_SLACK
                    } else {
                        chrono::Duration::zero()
                    };
                    let left = match r.until {
                        Some(until) if until <= now + slack => {
                            (until - now).to_std().unwrap_or_default()
                        }
                        _ => return Err(r),
                    };
                    tries += 1;
                    tokio::time::sleep(left.max(Duration::from_millis(10))).await;
                }
                other => return other,
            }
        }
    }

    /// Whether a new piece of work should start at all (no probe is taken): `Err` while the
    /// breaker is open or forced open, and while half-open with every probe taken (the work
    /// would only fail at its first vendor call).
    pub fn check(&self) -> Result<(), Rejected> {
        match self.state() {
            BreakerState::ForcedOpen => Err(Rejected {
                state: BreakerState::ForcedOpen,
                until: None,
            }),
            BreakerState::Open => {
                let until = self.view.open_until();
                if until.is_some_and(|u| self.clock.now() >= u) {
                    // Due: the actor opens the probe pool on this nudge (or its own timer).
                    self.send(BreakerMsg::Tick);
                }
                Err(Rejected {
                    state: BreakerState::Open,
                    until,
                })
            }
            BreakerState::HalfOpen if self.view.probes.load(Ordering::Acquire) <= 0 => {
                Err(Rejected {
                    state: BreakerState::HalfOpen,
                    until: None,
                })
            }
            _ => Ok(()),
        }
    }

    /// Reports how a permitted call ended.
    pub fn record(&self, permit: Permit, outcome: CallOutcome) {
        let s = &self.series;
        let elapsed = match outcome {
            CallOutcome::Success { elapsed } => {
                s.success.inc();
                Some(elapsed)
            }
            CallOutcome::Failure { elapsed } => {
                s.failure.inc();
                Some(elapsed)
            }
            CallOutcome::RateLimited { .. } => {
                s.rate_limited.inc();
                None
            }
            CallOutcome::Cancelled => {
                s.cancelled.inc();
                None
            }
        };
        if let Some(elapsed) = elapsed {
            s.latency.observe(elapsed.as_secs_f64());
        }
        // While closed, successes change nothing a caller can see; they still feed the
        // window, so every outcome goes to the actor.
        self.send(BreakerMsg::Record { permit, outcome });
    }

    /// The breaker as the actor sees it.
    pub async fn snapshot(&self) -> Option<BreakerSnapshot> {
        self.rpc(BreakerMsg::Snapshot).await
    }

    /// Operator: hold the breaker open until reset.
    pub async fn force_open(&self) -> Option<BreakerSnapshot> {
        self.rpc(BreakerMsg::ForceOpen).await
    }

    /// Operator: let every call through, judge nothing.
    pub async fn disable(&self) -> Option<BreakerSnapshot> {
        self.rpc(BreakerMsg::Disable).await
    }

    /// Operator: a fresh closed breaker.
    pub async fn reset(&self) -> Option<BreakerSnapshot> {
        self.rpc(BreakerMsg::Reset).await
    }

    fn actor(&self) -> ActorRef<BreakerMsg> {
        self.actor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn send(&self, msg: BreakerMsg) {
        let sent = self
            .actor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .send_message(msg);
        if sent.is_err() {
            // Only while the supervisor restarts the actor; the outcome is lost, which the
            // window tolerates (it is statistics, not a ledger).
            warn!(vendor = %self.vendor, "breaker actor unavailable; outcome dropped");
        }
    }

    async fn rpc(
        &self,
        build: impl FnOnce(RpcReplyPort<BreakerSnapshot>) -> BreakerMsg,
    ) -> Option<BreakerSnapshot> {
        match self.actor().call(build, Some(self.rpc_timeout)).await {
            Ok(ractor::rpc::CallResult::Success(s)) => Some(s),
            _ => None,
        }
    }
}

/// Supervisor messages.
pub(crate) enum SupervisorMsg {}

struct BreakerSupervisor;

struct SupervisorState {
    children: BTreeMap<ractor::ActorId, (String, BreakerHandle, BreakerConfig)>,
}

struct SupervisorArgs {
    children: Vec<(BreakerHandle, BreakerConfig)>,
}

impl Actor for BreakerSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut children = BTreeMap::new();
        for (handle, config) in args.children {
            let actor = spawn_child(&myself, &handle, &config).await?;
            children.insert(actor.get_id(), (handle.vendor.to_string(), handle, config));
        }
        Ok(SupervisorState { children })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Never the default (it would stop every breaker with one): restart the one that
        // failed, closed, behind the same handle.
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some((vendor, handle, config)) = state.children.remove(&cell.get_id()) {
                    error!(vendor = %vendor, error = %err, "breaker actor failed; restarting it closed");
                    let actor = spawn_child(&myself, &handle, &config).await?;
                    state
                        .children
                        .insert(actor.get_id(), (vendor, handle, config));
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.children.remove(&cell.get_id());
            }
            SupervisionEvent::ActorStarted(_) | SupervisionEvent::ProcessGroupChanged(_) => {}
        }
        Ok(())
    }
}

async fn spawn_child(
    supervisor: &ActorRef<SupervisorMsg>,
    handle: &BreakerHandle,
    config: &BreakerConfig,
) -> Result<ActorRef<BreakerMsg>, ActorProcessingErr> {
    let args = VendorBreakerArgs {
        vendor: handle.vendor.clone(),
        config: config.clone(),
        view: handle.view.clone(),
        clock: handle.clock.clone(),
        metrics: handle.metrics.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, VendorBreaker, args, supervisor.get_cell()).await?;
    *handle.actor.write().unwrap_or_else(|p| p.into_inner()) = actor.clone();
    Ok(actor)
}

/// Every vendor's breaker. Cheap to clone; an empty set (tests, simulations without vendors)
/// answers `None` for every vendor.
#[derive(Clone, Default)]
pub struct Breakers {
    handles: Arc<BTreeMap<String, BreakerHandle>>,
    supervisor: Option<ActorRef<SupervisorMsg>>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.handles.values()).finish()
    }
}

impl Breakers {
    /// No breakers at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Starts one breaker actor per vendor under a supervisor.
    pub async fn start(
        configs: BTreeMap<String, BreakerConfig>,
        clock: Arc<dyn Clock>,
        registry: &Registry,
    ) -> Result<Self, ActorProcessingErr> {
        let metrics = BreakerMetrics::register(registry)?;
        // Placeholder refs are replaced by the supervisor before anyone can use a handle.
        let (placeholder, placeholder_handle) = Actor::spawn(None, Placeholder, ()).await?;
        let mut handles = BTreeMap::new();
        let mut children = Vec::new();
        for (vendor, config) in configs {
            let handle = BreakerHandle {
                vendor: Arc::from(vendor.as_str()),
                view: Arc::new(View::closed()),
                actor: Arc::new(RwLock::new(placeholder.clone())),
                clock: clock.clone(),
                series: Series::new(&metrics, &vendor),
                metrics: metrics.clone(),
                rpc_timeout: Duration::from_secs(2),
            };
            children.push((handle.clone(), config));
            handles.insert(vendor, handle);
        }
        let (supervisor, _) =
            Actor::spawn(None, BreakerSupervisor, SupervisorArgs { children }).await?;
        placeholder.stop(None);
        let _ = placeholder_handle.await;
        Ok(Breakers {
            handles: Arc::new(handles),
            supervisor: Some(supervisor),
        })
    }

    /// One vendor's breaker.
    pub fn get(&self, vendor: &str) -> Option<&BreakerHandle> {
        self.handles.get(vendor)
    }

    /// Every breaker, by vendor name.
    pub fn handles(&self) -> impl Iterator<Item = &BreakerHandle> {
        self.handles.values()
    }

    /// Every breaker's snapshot, by vendor name (a breaker that does not answer is left out).
    pub async fn snapshots(&self) -> Vec<BreakerSnapshot> {
        let mut out = Vec::new();
        for handle in self.handles.values() {
            if let Some(s) = handle.snapshot().await {
                out.push(s);
            }
        }
        out
    }

    /// Stops every breaker actor.
    pub fn stop(&self) {
        if let Some(s) = &self.supervisor {
            s.stop(None);
        }
    }
}

/// Stands in for a breaker actor between handle creation and the supervisor's spawn.
struct Placeholder;

impl Actor for Placeholder {
    type Msg = BreakerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<BreakerMsg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
