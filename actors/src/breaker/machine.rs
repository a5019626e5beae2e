//! The pure circuit-breaker state machine (resilience4j's count-based breaker with Envoy-style
//! consecutive-failure ejection). Time is an argument: no clock, no I/O, so every transition is
//! unit-testable with exact instants.
//!
//! ```text
//!   closed --(failure rate / slow rate over the window, or N consecutive failures, or 429)--> open
//!   open --(open wait elapsed)--> half_open --(all probes succeed)--> closed
//!                                  half_open --(any probe fails)--> open (wait doubles, capped)
//!   forced_open / disabled: set by an operator, left only by a reset
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Tuning of one vendor's breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Outcomes remembered (count-based sliding window).
    pub window: usize,
    /// Outcomes needed in the window before rates are judged.
    pub min_calls: usize,
    /// Failure rate (0..=1) that opens the breaker.
    pub failure_rate: f64,
    /// Consecutive failures that open it at once (fast detection of a dead vendor).
    pub consecutive_failures: u32,
    /// A call slower than this counts as slow.
    pub slow_call: Duration,
    /// Slow-call rate (0..=1) that opens the breaker.
    pub slow_rate: f64,
    /// First open wait; doubles on each trip that follows a failed recovery.
    pub open_wait: Duration,
    /// Longest open wait.
    pub open_wait_cap: Duration,
    /// Probe calls let through while half-open; all must succeed to close.
    pub half_open_probes: u32,
    /// Longest `Retry-After` honoured as an open wait (a longer one is capped to this).
    pub max_retry_after: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: 50,
            min_calls: 20,
            failure_rate: 0.5,
            consecutive_failures: 5,
            slow_call: Duration::from_secs(5),
            slow_rate: 0.8,
            open_wait: Duration::from_secs(30),
            open_wait_cap: Duration::from_secs(300),
            half_open_probes: 3,
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow; outcomes are judged.
    Closed,
    /// Calls fail fast until the open wait ends.
    Open,
    /// A few probe calls are let through.
    HalfOpen,
    /// An operator holds it open.
    ForcedOpen,
    /// An operator switched it off: every call flows, nothing is judged.
    Disabled,
}

impl BreakerState {
    /// Wire / metric spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::Disabled => "disabled",
        }
    }

    /// Gauge value (`iace_breaker_state`): 0 closed, 1 open, 2 half-open, 3 forced open,
    /// 4 disabled.
    pub fn code(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::ForcedOpen => 3,
            Self::Disabled => 4,
        }
    }

    /// Inverse of [`BreakerState::code`].
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            4 => Self::Disabled,
            _ => Self::Closed,
        }
    }
}

/// How one permitted call ended, as the vendor client classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The vendor answered (2xx, or a 4xx: the request was wrong, the vendor is fine).
    Success {
        /// How long it took.
        elapsed: Duration,
    },
    /// 5xx, timeout, connection error.
    Failure {
        /// How long it took.
        elapsed: Duration,
    },
    /// 429: the vendor asks us to back off; the breaker opens for `retry_after` (or its
    /// open wait when none was given).
    RateLimited {
        /// The vendor's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The caller gave up on the call (barge-in, shutdown): says nothing about the vendor.
    Cancelled,
}

/// Why a transition happened (logged and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionReason {
    /// Failure rate over the window reached the threshold.
    FailureRate,
    /// Slow-call rate over the window reached the threshold.
    SlowRate,
    /// Too many failures in a row.
    ConsecutiveFailures,
    /// The vendor answered 429.
    RateLimited,
    /// The open wait ended.
    OpenWaitElapsed,
    /// A half-open probe failed.
    ProbeFailed,
    /// Half-open probes did not report in time.
    ProbeTimeout,
    /// Every half-open probe succeeded.
    ProbesSucceeded,
    /// An operator forced it open.
    ForcedOpen,
    /// An operator disabled it.
    Disabled,
    /// An operator reset it.
    Reset,
}

impl TransitionReason {
    /// Metric / log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailureRate => "failure_rate",
            Self::SlowRate => "slow_rate",
            Self::ConsecutiveFailures => "consecutive_failures",
            Self::RateLimited => "rate_limited",
            Self::OpenWaitElapsed => "open_wait_elapsed",
            Self::ProbeFailed => "probe_failed",
            Self::ProbeTimeout => "probe_timeout",
            Self::ProbesSucceeded => "probes_succeeded",
            Self::ForcedOpen => "forced_open",
            Self::Disabled => "disabled",
            Self::Reset => "reset",
        }
    }
}

/// A state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: BreakerState,
    /// After.
    pub to: BreakerState,
    /// Why.
    pub reason: TransitionReason,
}

/// A permission to call the vendor. `generation` ties a probe's outcome to the half-open
/// period that let it through (an outcome from an older period is not a probe result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// The breaker period that issued it.
    pub generation: u64,
    /// This call is a half-open probe.
    pub probe: bool,
}

/// Why a call may not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// The breaker's state.
    pub state: BreakerState,
    /// When it may let calls through again (`None`: forced open, or half-open with every
    /// probe in flight).
    pub until: Option<DateTime<Utc>>,
}

/// What the breaker looks like from outside (`GET /v1/admin/breakers`, `/ready`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerSnapshot {
    /// Vendor name.
    pub vendor: String,
    /// State.
    pub state: BreakerState,
    /// Failure rate over the window (0..=1), `None` below the minimum number of calls.
    pub failure_rate: Option<f64>,
    /// Slow-call rate over the window.
    pub slow_rate: Option<f64>,
    /// Outcomes in the window.
    pub calls_in_window: usize,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// When an open breaker goes half-open.
    pub open_until: Option<DateTime<Utc>>,
    /// Trips since the breaker was last closed (drives the open-wait backoff).
    pub trips: u32,
}

/// One vendor's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// `(failed, slow)` of the last `window` outcomes, oldest first.
    window: VecDeque<(bool, bool)>,
    failures: usize,
    slow: usize,
    consecutive: u32,
    open_until: Option<DateTime<Utc>>,
    trips: u32,
    generation: u64,
    probes_issued: u32,
    probes_succeeded: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: BreakerState::Closed,
            window: VecDeque::new(),
            failures: 0,
            slow: 0,
            consecutive: 0,
            open_until: None,
            trips: 0,
            generation: 0,
            probes_issued: 0,
            probes_succeeded: 0,
        }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current period (bumped by every transition).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When an open breaker goes half-open.
    pub fn open_until(&self) -> Option<DateTime<Utc>> {
        self.open_until
    }

    /// Probes still available while half-open.
    pub fn probes_left(&self) -> u32 {
        match self.state {
            BreakerState::HalfOpen => self
                .config
                .half_open_probes
                .saturating_sub(self.probes_issued),
            _ => 0,
        }
    }

    /// Asks to call the vendor. An open breaker whose wait has ended goes half-open here (the
    /// transition is returned), so a missed timer never keeps it open.
    pub fn try_acquire(
        &mut self,
        now: DateTime<Utc>,
    ) -> (Result<Permit, Rejected>, Option<Transition>) {
        let transition = self.on_timer(now);
        let result = match self.state {
            BreakerState::Closed | BreakerState::Disabled => Ok(Permit {
                generation: self.generation,
                probe: false,
            }),
            BreakerState::Open => Err(Rejected {
                state: self.state,
                until: self.open_until,
            }),
            BreakerState::ForcedOpen => Err(Rejected {
                state: self.state,
                until: None,
            }),
            BreakerState::HalfOpen => {
                if self.probes_issued < self.config.half_open_probes {
                    self.probes_issued += 1;
                    Ok(Permit {
                        generation: self.generation,
                        probe: true,
                    })
                } else {
                    Err(Rejected {
                        state: self.state,
                        until: None,
                    })
                }
            }
        };
        (result, transition)
    }

    /// An open breaker whose wait has ended goes half-open.
    pub fn on_timer(&mut self, now: DateTime<Utc>) -> Option<Transition> {
        match (self.state, self.open_until) {
            (BreakerState::Open, Some(until)) if now >= until => {
                self.probes_issued = 0;
                self.probes_succeeded = 0;
                Some(self.go(BreakerState::HalfOpen, TransitionReason::OpenWaitElapsed))
            }
            _ => None,
        }
    }

    /// Records how a permitted call ended.
    pub fn record(
        &mut self,
        permit: Permit,
        outcome: CallOutcome,
        now: DateTime<Utc>,
    ) -> Option<Transition> {
        match self.state {
            BreakerState::Disabled | BreakerState::ForcedOpen => None,
            BreakerState::HalfOpen if permit.probe && permit.generation == self.generation => {
                self.record_probe(outcome, now)
            }
            // Outcomes of calls permitted in an earlier period (a slow call that started
            // before the breaker opened) still teach the closed window nothing new about the
            // current period, except a 429, which always says "back off".
            BreakerState::HalfOpen | BreakerState::Open => match outcome {
                CallOutcome::RateLimited { retry_after }
                    if self.state == BreakerState::HalfOpen =>
                {
                    Some(self.trip(now, TransitionReason::RateLimited, retry_after))
                }
                _ => None,
            },
            BreakerState::Closed => self.record_closed(outcome, now),
        }
    }

    fn record_probe(&mut self, outcome: CallOutcome, now: DateTime<Utc>) -> Option<Transition> {
        match outcome {
            CallOutcome::Cancelled => {
                // The probe said nothing: let another one through.
                self.probes_issued = self.probes_issued.saturating_sub(1);
                None
            }
            CallOutcome::Success { elapsed } if elapsed < self.config.slow_call => {
                self.probes_succeeded += 1;
                if self.probes_succeeded >= self.config.half_open_probes {
                    self.trips = 0;
                    self.clear_window();
                    self.open_until = None;
                    Some(self.go(BreakerState::Closed, TransitionReason::ProbesSucceeded))
                } else {
                    None
                }
            }
            CallOutcome::RateLimited { retry_after } => {
                Some(self.trip(now, TransitionReason::RateLimited, retry_after))
            }
            // A failed or slow probe: the vendor is not back yet.
            CallOutcome::Success { .. } | CallOutcome::Failure { .. } => {
                Some(self.trip(now, TransitionReason::ProbeFailed, None))
            }
        }
    }

    fn record_closed(&mut self, outcome: CallOutcome, now: DateTime<Utc>) -> Option<Transition> {
        let (failed, elapsed) = match outcome {
            CallOutcome::Cancelled => return None,
            CallOutcome::RateLimited { retry_after } => {
                return Some(self.trip(now, TransitionReason::RateLimited, retry_after));
            }
            CallOutcome::Success { elapsed } => (false, elapsed),
            CallOutcome::Failure { elapsed } => (true, elapsed),
        };
        let slow = elapsed >= self.config.slow_call;
        self.window.push_back((failed, slow));
        self.failures += usize::from(failed);
        self.slow += usize::from(slow);
        while self.window.len() > self.config.window.max(1) {
            if let Some((f, s)) = self.window.pop_front() {
                self.failures -= usize::from(f);
                self.slow -= usize::from(s);
            }
        }
        self.consecutive = if failed { self.consecutive + 1 } else { 0 };
        if failed && self.consecutive >= self.config.consecutive_failures.max(1) {
            return Some(self.trip(now, TransitionReason::ConsecutiveFailures, None));
        }
        if self.window.len() >= self.config.min_calls.max(1) {
            let n = self.window.len() as f64;
            if self.failures as f64 / n >= self.config.failure_rate {
                return Some(self.trip(now, TransitionReason::FailureRate, None));
            }
            if self.slow as f64 / n >= self.config.slow_rate {
                return Some(self.trip(now, TransitionReason::SlowRate, None));
            }
        }
        None
    }

    /// Opens the breaker. The wait is the vendor's `Retry-After` when it gave one, otherwise
    /// the open wait doubled per trip since the last close (capped).
    fn trip(
        &mut self,
        now: DateTime<Utc>,
        reason: TransitionReason,
        retry_after: Option<Duration>,
    ) -> Transition {
        let wait = match retry_after {
            Some(after) => after.min(self.config.max_retry_after),
            None => {
                let doubled = self
                    .config
                    .open_wait
                    .saturating_mul(1u32 << self.trips.min(16));
                doubled.min(self.config.open_wait_cap)
            }
        };
        self.trips = self.trips.saturating_add(1);
        self.open_until = Some(now + chrono::Duration::from_std(wait).unwrap_or_default());
        self.clear_window();
        self.go(BreakerState::Open, reason)
    }

    /// A half-open period that did not conclude (its probes were lost): open again.
    pub fn probe_timeout(&mut self, now: DateTime<Utc>) -> Option<Transition> {
        (self.state == BreakerState::HalfOpen)
            .then(|| self.trip(now, TransitionReason::ProbeTimeout, None))
    }

    /// Operator: hold open until reset.
    pub fn force_open(&mut self) -> Option<Transition> {
        (self.state != BreakerState::ForcedOpen).then(|| {
            self.open_until = None;
            self.go(BreakerState::ForcedOpen, TransitionReason::ForcedOpen)
        })
    }

    /// Operator: stop judging, let everything through.
    pub fn disable(&mut self) -> Option<Transition> {
        (self.state != BreakerState::Disabled).then(|| {
            self.open_until = None;
            self.go(BreakerState::Disabled, TransitionReason::Disabled)
        })
    }

    /// Operator: back to a fresh closed breaker.
    pub fn reset(&mut self) -> Option<Transition> {
        self.trips = 0;
        self.open_until = None;
        self.clear_window();
        (self.state != BreakerState::Closed)
            .then(|| self.go(BreakerState::Closed, TransitionReason::Reset))
    }

    /// The outside view.
    pub fn snapshot(&self, vendor: &str) -> BreakerSnapshot {
        let n = self.window.len();
        let judged = n >= self.config.min_calls.max(1);
        BreakerSnapshot {
            vendor: vendor.to_owned(),
            state: self.state,
            failure_rate: judged.then(|| self.failures as f64 / n as f64),
            slow_rate: judged.then(|| self.slow as f64 / n as f64),
            calls_in_window: n,
            consecutive_failures: self.consecutive,
            open_until: self.open_until,
            trips: self.trips,
        }
    }

    fn clear_window(&mut self) {
        self.window.clear();
        self.failures = 0;
        self.slow = 0;
        self.consecutive = 0;
    }

    fn go(&mut self, to: BreakerState, reason: TransitionReason) -> Transition {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        if to != BreakerState::HalfOpen {
            self.probes_issued = 0;
            self.probes_succeeded = 0;
        }
        Transition { from, to, reason }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
