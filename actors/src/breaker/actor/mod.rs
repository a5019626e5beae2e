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
//!
//! This file holds the vendor breaker actor and the view it publishes; `handle` the handle
//! callers use, `supervisor` the set of breakers and their supervisor, `metrics` the metrics.

mod handle;
mod metrics;
mod supervisor;

pub use handle::BreakerHandle;
pub use metrics::BreakerMetrics;
pub use supervisor::{Breakers, VENDORS};

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use super::machine::{
    Breaker, BreakerConfig, BreakerSnapshot, BreakerState, CallOutcome, Permit, Transition,
    TransitionReason,
};
use crate::ports::time::Clock;

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

#[cfg(test)]
mod tests;
