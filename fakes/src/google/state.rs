//! The fake's mutable state behind one lock: armed faults, the current latency and the request
//! log. Nothing here does I/O or awaits.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{FakeGoogleConfig, RecordedRequest};

/// What the server tasks and the [`super::FakeGoogle`] handle share.
pub(crate) struct Shared {
    /// Immutable configuration (the latency starts from it but lives in [`State`]).
    pub(crate) cfg: FakeGoogleConfig,
    /// A std mutex, not a tokio one: critical sections are short, synchronous and never span an
    /// `.await`, and the sync `FakeGoogle` getters must be able to take it.
    state: Mutex<State>,
    /// Flips to true (or closes) when the fake stops; stalled requests watch it.
    pub(crate) stop: watch::Receiver<bool>,
}

/// Everything that changes.
pub(crate) struct State {
    /// Armed error answers.
    pub(crate) fail: Option<InjectedFailure>,
    /// Valid requests still to stall.
    pub(crate) stalls: u32,
    /// Delay before each answer.
    pub(crate) latency: Duration,
    /// Request log; indices are stable (it only grows), so a handler updates its entry by index
    /// after it has let go of the lock.
    pub(crate) requests: Vec<RecordedRequest>,
}

/// The next `remaining` authorised requests fail with `status`.
pub(crate) struct InjectedFailure {
    pub(crate) remaining: u32,
    pub(crate) status: u16,
    /// `RetryInfo.retryDelay` of a 429.
    pub(crate) retry_delay: Option<Duration>,
}

impl Shared {
    pub(crate) fn new(cfg: FakeGoogleConfig, stop: watch::Receiver<bool>) -> Self {
        let state = State {
            fail: None,
            stalls: 0,
            latency: cfg.latency,
            requests: Vec::new(),
        };
        Shared {
            cfg,
            state: Mutex::new(state),
            stop,
        }
    }

    /// The state; a panic while holding it (a bug in the fake) must not wedge every later
    /// request, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `f` to request `idx` of the log.
    pub(crate) fn update(&self, idx: usize, f: impl FnOnce(&mut RecordedRequest)) {
        if let Some(r) = self.lock().requests.get_mut(idx) {
            f(r);
        }
    }
}

impl crate::fake::CancelRequest for Shared {
    fn cancel(&self, idx: usize) {
        self.update(idx, |r| {
            if r.finished_at.is_none() {
                r.cancelled = true;
                r.finished_at = Some(Instant::now());
            }
        });
    }
}
