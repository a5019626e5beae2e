//! Vendor calls through a breaker: [`PermitGuard`] reports one permitted call exactly once,
//! and [`GuardedTelephony`] puts any [`Telephony`] adapter behind its vendor's breaker.
//!
//! Adapters that know their protocol (the Telnyx client classifies 429 with its Retry-After,
//! and guards each HTTP attempt) use [`PermitGuard`] directly; [`GuardedTelephony`] is for
//! adapters that only speak [`TelephonyError`] (the simulated carriers).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use super::actor::BreakerHandle;
use super::machine::{CallOutcome, Permit};
use crate::machine::{CallId, PhoneNumber};
use crate::ports::telephony::{DialCommand, LegCommand, LegStatus, Telephony, TelephonyError};

/// One permitted call. Report its outcome with [`PermitGuard::finish`]; dropped unfinished
/// (the call's future was cancelled by a timeout), it counts as a failure.
pub struct PermitGuard {
    breaker: BreakerHandle,
    permit: Permit,
    started: Instant,
    done: bool,
}

impl PermitGuard {
    /// Starts timing a permitted call.
    pub fn new(breaker: BreakerHandle, permit: Permit) -> Self {
        PermitGuard {
            breaker,
            permit,
            started: Instant::now(),
            done: false,
        }
    }

    /// Time since the permit was granted.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Reports the outcome.
    pub fn finish(mut self, outcome: CallOutcome) {
        self.done = true;
        self.breaker.record(self.permit, outcome);
    }
}

impl Drop for PermitGuard {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(
                self.permit,
                CallOutcome::Failure {
                    elapsed: self.started.elapsed(),
                },
            );
        }
    }
}

/// A carrier adapter behind its vendor's breaker: while open, commands fail fast with
/// [`TelephonyError::CircuitOpen`] and nothing reaches the carrier.
pub struct GuardedTelephony {
    inner: Arc<dyn Telephony>,
    breaker: BreakerHandle,
}

impl GuardedTelephony {
    /// Wraps `inner`; `breaker` should be the one named by `inner.vendor()`.
    pub fn new(inner: Arc<dyn Telephony>, breaker: BreakerHandle) -> Self {
        GuardedTelephony { inner, breaker }
    }

    fn acquire(&self) -> Result<PermitGuard, TelephonyError> {
        self.breaker
            .acquire()
            .map(|permit| PermitGuard::new(self.breaker.clone(), permit))
            .map_err(|rejected| TelephonyError::CircuitOpen {
                vendor: self.breaker.vendor().to_owned(),
                until: rejected.until,
            })
    }
}

/// A carrier refusal (4xx) is the request's fault, not the carrier's.
fn verdict<T>(result: &Result<T, TelephonyError>, guard: &PermitGuard) -> CallOutcome {
    let elapsed = guard.elapsed();
    match result {
        Ok(_) | Err(TelephonyError::Rejected(_)) => CallOutcome::Success { elapsed },
        Err(TelephonyError::Unavailable(_)) => CallOutcome::Failure { elapsed },
        Err(TelephonyError::CircuitOpen { .. }) => CallOutcome::Cancelled,
    }
}

macro_rules! guarded {
    ($self:ident, $call:expr) => {{
        let guard = $self.acquire()?;
        let result = $call.await;
        let outcome = verdict(&result, &guard);
        guard.finish(outcome);
        result
    }};
}

#[async_trait]
impl Telephony for GuardedTelephony {
    fn vendor(&self) -> &'static str {
        self.inner.vendor()
    }

    async fn dial(&self, cmd: DialCommand) -> Result<String, TelephonyError> {
        guarded!(self, self.inner.dial(cmd))
    }

    async fn answer(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        guarded!(self, self.inner.answer(cmd))
    }

    async fn hangup(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        guarded!(self, self.inner.hangup(cmd))
    }

    async fn transfer(&self, cmd: LegCommand, to: PhoneNumber) -> Result<(), TelephonyError> {
        guarded!(self, self.inner.transfer(cmd, to))
    }

    async fn reject(&self, carrier_call_id: &str, command_id: &str) -> Result<(), TelephonyError> {
        guarded!(self, self.inner.reject(carrier_call_id, command_id))
    }

    async fn status(
        &self,
        call_id: CallId,
        carrier_call_id: Option<&str>,
    ) -> Result<LegStatus, TelephonyError> {
        guarded!(self, self.inner.status(call_id, carrier_call_id))
    }
}
