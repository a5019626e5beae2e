//! What every part of the simulated world shares: the fault stream, the trace, the step
//! counter and the first violation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use iace_actors::machine::CallId;

use crate::checks::Checker;
use crate::faults::Rates;
use crate::rng::Rng;
use crate::trace::Trace;

/// An invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Step (trace line) at which it was seen.
    pub step: u64,
    /// Simulated milliseconds since the start.
    pub at_ms: u64,
    /// Which invariant.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

pub(crate) struct Core {
    rng: Mutex<Rng>,
    pub rates: Rates,
    faults_on: AtomicBool,
    injected: Mutex<BTreeMap<&'static str, u64>>,
    tallies: Mutex<BTreeMap<String, u64>>,
    trace: Mutex<Trace>,
    pub checker: Mutex<Checker>,
    origin: tokio::time::Instant,
    violation: Mutex<Option<Violation>>,
    pending_deliveries: AtomicU64,
    /// Every append the store answered as written: (call, seq, kind).
    answered: Mutex<Vec<(CallId, i64, &'static str)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Core {
    pub fn new(seed: u64, rates: Rates, keep_trace: bool) -> Self {
        Core {
            rng: Mutex::new(Rng::new(seed, 2)),
            rates,
            faults_on: AtomicBool::new(true),
            injected: Mutex::new(BTreeMap::new()),
            tallies: Mutex::new(BTreeMap::new()),
            trace: Mutex::new(Trace::new(keep_trace)),
            checker: Mutex::new(Checker::default()),
            origin: tokio::time::Instant::now(),
            violation: Mutex::new(None),
            pending_deliveries: AtomicU64::new(0),
            answered: Mutex::new(Vec::new()),
        }
    }

    /// The store answered an append as written.
    pub fn answered(&self, call: CallId, seq: i64, kind: &'static str) {
        lock(&self.answered).push((call, seq, kind));
    }

    /// Every append answered as written so far.
    pub fn answered_writes(&self) -> Vec<(CallId, i64, &'static str)> {
        lock(&self.answered).clone()
    }

    /// Simulated milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        u64::try_from((tokio::time::Instant::now() - self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// Records a trace line (one step of the world).
    pub fn log(&self, line: impl AsRef<str>) {
        let at = self.now_ms();
        lock(&self.trace).record(at, line.as_ref());
    }

    /// Number of steps so far.
    pub fn steps(&self) -> u64 {
        lock(&self.trace).len()
    }

    /// Trace hash so far.
    pub fn trace_hash(&self) -> u64 {
        lock(&self.trace).hash()
    }

    pub fn take_trace(&self) -> Vec<String> {
        lock(&self.trace).take_lines()
    }

    /// Whether faults are being injected (they stop when the workload is done).
    pub fn faults_on(&self) -> bool {
        self.faults_on.load(Ordering::SeqCst)
    }

    /// Stops injecting faults.
    pub fn heal(&self) {
        self.faults_on.store(false, Ordering::SeqCst);
        self.log("heal: faults stop");
    }

    /// Decides whether to inject fault `kind` (probability per mille); counts and traces it.
    pub fn fault(&self, kind: &'static str, per_mille: u32) -> bool {
        if per_mille == 0 || !self.faults_on() {
            return false;
        }
        let hit = lock(&self.rng).chance(per_mille);
        if hit {
            self.count(kind);
        }
        hit
    }

    /// Counts and traces an injected fault decided elsewhere.
    pub fn count(&self, kind: &'static str) {
        *lock(&self.injected).entry(kind).or_default() += 1;
        self.log(format!("fault {kind}"));
    }

    /// A draw from the fault stream, uniform in `lo..hi`.
    pub fn draw(&self, lo: u64, hi: u64) -> u64 {
        lock(&self.rng).range(lo, hi)
    }

    /// Counts something the world saw happen (not a fault): a takeover, a command by a node.
    pub fn tally(&self, what: impl Into<String>) {
        *lock(&self.tallies).entry(what.into()).or_default() += 1;
    }

    pub fn tallies(&self) -> BTreeMap<String, u64> {
        lock(&self.tallies).clone()
    }

    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.injected).clone()
    }

    /// Records a violation (the first one wins) and traces it.
    pub fn violate(&self, invariant: &'static str, detail: impl Into<String>) {
        let detail = detail.into();
        self.log(format!("VIOLATION {invariant}: {detail}"));
        let mut v = lock(&self.violation);
        if v.is_none() {
            *v = Some(Violation {
                step: self.steps(),
                at_ms: self.now_ms(),
                invariant,
                detail,
            });
        }
    }

    pub fn violation(&self) -> Option<Violation> {
        lock(&self.violation).clone()
    }

    pub fn checker(&self) -> MutexGuard<'_, Checker> {
        lock(&self.checker)
    }

    pub fn delivery_started(&self) {
        self.pending_deliveries.fetch_add(1, Ordering::SeqCst);
    }

    pub fn delivery_finished(&self) {
        self.pending_deliveries.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn pending_deliveries(&self) -> u64 {
        self.pending_deliveries.load(Ordering::SeqCst)
    }
}
