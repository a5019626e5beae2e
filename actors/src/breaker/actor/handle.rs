//! The handle callers use: permission decided from the view the actor publishes (no round
//! trip), outcomes sent as messages, operator commands as requests with a timeout.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};
use tracing::warn;

use super::metrics::{BreakerMetrics, Series};
use super::{BreakerMsg, View};
use crate::breaker::machine::{BreakerSnapshot, BreakerState, CallOutcome, Permit, Rejected};
use crate::ports::time::Clock;

/// How much of its open wait a breaker may have left when a caller that waited out the same
/// Retry-After asks again (see [`BreakerHandle::acquire_after_wait`]): the time between the
/// caller's receiving the 429 and the breaker's actor recording it, generously.
const AFTER_WAIT_SLACK: chrono::Duration = chrono::Duration::seconds(2);

/// How callers use one vendor's breaker. Cheap to clone.
#[derive(Clone)]
pub struct BreakerHandle {
    pub(super) vendor: Arc<str>,
    pub(super) view: Arc<View>,
    pub(super) actor: Arc<RwLock<ActorRef<BreakerMsg>>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) metrics: BreakerMetrics,
    pub(super) series: Series,
    pub(super) rpc_timeout: Duration,
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
