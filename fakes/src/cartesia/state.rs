//! The fake's memory: every connection, context and HTTP request it has seen, and the faults
//! armed for the next ones.
//!
//! One `std::sync::Mutex` guards it all; critical sections are short, synchronous and never span
//! an `.await`, so the sync getters of [`super::FakeCartesia`] can take it. Records are the
//! public snapshot types themselves and only grow (tests want the full history).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::{ConnectionSnapshot, ContextSnapshot, FakeCartesiaConfig, HttpRequestRecord};

/// What every handler and task of one fake shares.
pub(crate) struct Shared {
    /// Immutable configuration (the mutable knobs it seeds live in [`State`]).
    pub(crate) cfg: FakeCartesiaConfig,
    state: Mutex<State>,
    /// Flips to true (or closes) when the fake stops; every session watches it.
    pub(crate) stop: watch::Receiver<bool>,
    /// Bumped by [`super::FakeCartesia::drop_connection_after`] when its delay runs out; every
    /// open session watches it and drops its socket without a close frame.
    pub(crate) drop_all: watch::Sender<u64>,
}

/// A failure armed by [`super::FakeCartesia::fail_next`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct InjectedFailure {
    pub(crate) remaining: u32,
    pub(crate) status: u16,
}

/// Mutable state behind [`Shared`]'s lock.
pub(crate) struct State {
    pub(crate) connections: Vec<ConnectionSnapshot>,
    pub(crate) contexts: Vec<ContextSnapshot>,
    pub(crate) http: Vec<HttpRequestRecord>,
    pub(crate) fail: Option<InjectedFailure>,
    /// New contexts still to stall ([`super::FakeCartesia::stall_next_context`]).
    pub(crate) stalls: u32,
    pub(crate) first_chunk_delay: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) realtime_factor: f64,
}

impl State {
    /// Consumes one armed failure, if any: its status.
    pub(crate) fn take_failure(&mut self) -> Option<u16> {
        let f = self.fail.as_mut()?;
        let status = f.status;
        f.remaining -= 1;
        if f.remaining == 0 {
            self.fail = None;
        }
        Some(status)
    }
}

impl Shared {
    pub(crate) fn new(cfg: FakeCartesiaConfig, stop: watch::Receiver<bool>) -> Self {
        let state = State {
            connections: Vec::new(),
            contexts: Vec::new(),
            http: Vec::new(),
            fail: None,
            stalls: 0,
            first_chunk_delay: cfg.first_chunk_delay,
            idle_timeout: cfg.idle_timeout,
            realtime_factor: cfg.realtime_factor,
        };
        Shared {
            cfg,
            state: Mutex::new(state),
            stop,
            drop_all: watch::channel(0).0,
        }
    }

    /// The state. A panic while holding it cannot leave anything half-applied that matters more
    /// than losing the fake, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Resolves once the fake is told to stop (or the sender is gone).
pub(crate) use crate::fake::stopped;
