//! Deterministic call-flow simulations of the IACE engine, in the spirit of FoundationDB's
//! simulator and TigerBeetle's VOPR.
//!
//! A run drives the REAL engine (call actors, supervisor, machine) on a current-thread tokio
//! runtime with paused time. Every port is simulated: the store is the engine's in-memory store
//! (same compare-and-set fencing as Postgres) behind a fault injector, the carrier is a model
//! of the phone network ([`carrier`]), the clock is tokio's paused clock plus a skew the faults
//! can jump, ids come from the seed. One seed drives the workload plan and every fault
//! decision; no wall clock, no global RNG, no iteration over hash maps where order matters.
//! The trace of a run (store writes, carrier commands, webhooks, faults, crashes) hashes to the
//! same value for the same seed and commit.
//!
//! Invariants are checked at every committed write ([`checks`]) and at the end of the run.
//!
//! Modules, in reading order: [`workload`] plans the calls of a seed, [`faults`] decides what
//! goes wrong ([`rng`] is the only randomness), [`carrier`] models the phone network, `store`
//! wraps the engine's in-memory store with the fault injector and feeds every committed write
//! to the invariant [`checks`], `core` holds what the parts of the world share (fault stream,
//! trace, step counter, first violation), `world` builds the engine over these ports and plays
//! a run (one node, or in the cluster profiles several nodes sharing the shards, each with its
//! own clock, store link and tagged carrier client: `cluster`), [`trace`] records and hashes
//! what happened.
//!
//! The wire-level vendor fakes (real sockets, real time) live in the `iace-fakes` crate.

pub mod carrier;
pub mod checks;
mod cluster;
mod core;
pub mod faults;
pub mod rng;
mod store;
pub mod trace;
pub mod workload;
mod world;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub use crate::core::Violation;
pub use faults::Profile;

/// One run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Drives everything.
    pub seed: u64,
    /// Calls in the workload.
    pub calls: usize,
    /// Fault profile.
    pub faults: Profile,
    /// Mean time between call arrivals (simulated ms).
    pub mean_gap_ms: u64,
    /// Keep the trace lines (for `--trace`).
    pub keep_trace: bool,
}

impl SimConfig {
    /// `calls` calls under `faults`, one arrival every 2 s on average.
    pub fn new(seed: u64, calls: usize, faults: Profile) -> Self {
        SimConfig {
            seed,
            calls,
            faults,
            mean_gap_ms: 2_000,
            keep_trace: false,
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run -p iace-sim --release -- --seed {} --calls {} --faults {}",
            self.seed, self.calls, self.faults
        )
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Calls in the plan.
    pub calls_planned: usize,
    /// Calls the store holds.
    pub calls_stored: usize,
    /// Carrier legs created.
    pub legs: usize,
    /// Final calls by `direction status/end_reason`.
    pub outcomes: BTreeMap<String, usize>,
    /// Planned calls by scenario.
    pub scenarios: BTreeMap<String, usize>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// What the nodes did: shard claims by kind (`claims free`; `claims lapsed`, the
    /// takeovers; `claims own`, the same node id again after a restart or a lapse nobody
    /// took), carrier commands by sending node (`commands by node-2`), pokes delivered.
    pub cluster: BTreeMap<String, u64>,
    /// Engines started (1 + restarts after crashes).
    pub engine_starts: u64,
    /// Simulated time covered.
    pub simulated_ms: u64,
    /// Simulated time from the end of faults until everything settled.
    pub settle_ms: u64,
    /// Wall-clock time of the run.
    pub wall: Duration,
    /// Steps (trace lines).
    pub steps: u64,
    /// FNV-1a 64 of the trace: equal for equal seeds on the same commit.
    pub trace_hash: u64,
    /// Trace lines, when kept.
    pub trace: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hours = self.simulated_ms as f64 / 3_600_000.0;
        let secs = self.wall.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "seed {}: {} calls stored ({} planned), {} carrier legs, {} steps, trace {:016x}",
            self.seed,
            self.calls_stored,
            self.calls_planned,
            self.legs,
            self.steps,
            self.trace_hash
        )?;
        writeln!(
            f,
            "  simulated {:.2} h in {:.2} s wall: {:.0} calls/s, {:.1} simulated h/s; settled {} s after faults stopped; {} engine starts",
            hours,
            secs,
            self.calls_planned as f64 / secs,
            hours / secs,
            self.settle_ms / 1000,
            self.engine_starts
        )?;
        writeln!(f, "  workload:")?;
        for (k, v) in &self.scenarios {
            writeln!(f, "    {v:>6}  {k}")?;
        }
        writeln!(f, "  outcomes:")?;
        for (k, v) in &self.outcomes {
            writeln!(f, "    {v:>6}  {k}")?;
        }
        if !self.cluster.is_empty() {
            writeln!(f, "  cluster:")?;
            for (k, v) in &self.cluster {
                writeln!(f, "    {v:>6}  {k}")?;
            }
        }
        if self.faults.is_empty() {
            writeln!(f, "  faults: none")?;
        } else {
            writeln!(f, "  faults injected:")?;
            for (k, v) in &self.faults {
                writeln!(f, "    {v:>6}  {k}")?;
            }
        }
        Ok(())
    }
}

/// A failed run: the violation, the report up to it, and how to replay it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The first invariant that broke.
    pub violation: Violation,
    /// What the run did up to then.
    pub report: Report,
    /// `cargo run ...` that replays it.
    pub replay: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.violation;
        writeln!(
            f,
            "VIOLATION of \"{}\" at step {} ({} ms simulated), seed {}:\n  {}",
            v.invariant, v.step, v.at_ms, self.report.seed, v.detail
        )?;
        writeln!(f, "replay: {}", self.replay)?;
        write!(f, "{}", self.report)
    }
}

/// Runs one simulation on a fresh current-thread runtime with paused time.
pub fn run(cfg: &SimConfig) -> Result<Report, Box<Failure>> {
    quiet_injected_panics();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("building the simulation runtime: {e}"));
    runtime
        .block_on(world::simulate(cfg))
        .map_err(|(violation, report)| {
            Box::new(Failure {
                violation,
                report,
                replay: cfg.replay_command(),
            })
        })
}

/// Injected panics are expected; keep them out of stderr. Any other panic prints as usual.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.starts_with(store::INJECTED_PANIC));
            if !injected {
                default(info);
            }
        }));
    });
}
