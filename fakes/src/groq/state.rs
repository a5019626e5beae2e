//! The fake's mutable state behind one lock: the scripted-reply and structured-answer queues,
//! armed faults, current pacing, rate-limit buckets and the request log. Nothing here does I/O
//! or awaits.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::ratelimit::RateLimits;
use super::{FakeGroqConfig, RecordedRequest, Reply, StructuredAnswer};

/// What the server tasks and the [`super::FakeGroq`] handle share.
pub(crate) struct Shared {
    /// Immutable configuration (pacing starts from it but lives in [`State`]).
    pub(crate) cfg: FakeGroqConfig,
    /// A std mutex, not a tokio one: critical sections are short, synchronous and never span an
    /// `.await`, and the sync `FakeGroq` getters must be able to take it.
    state: Mutex<State>,
    /// Flips to true (or closes) when the fake stops; every spawned stream watches it.
    pub(crate) stop: watch::Receiver<bool>,
}

/// Everything that changes.
pub(crate) struct State {
    /// Scripted answers, taken from the front.
    pub(crate) replies: VecDeque<Reply>,
    /// Scripted answers to structured-output requests, taken from the front.
    pub(crate) structured: VecDeque<StructuredAnswer>,
    /// Armed HTTP failure.
    pub(crate) fail: Option<InjectedFailure>,
    /// Streams still to break with an in-stream error.
    pub(crate) mid_stream_errors: u32,
    /// Requests still to stall.
    pub(crate) stalls: u32,
    /// Time to first token of requests arriving now.
    pub(crate) ttft: Duration,
    /// Delay between deltas of requests arriving now.
    pub(crate) inter_token: Duration,
    /// Time to answer of classifications (JSON mode) arriving now, when it differs from
    /// `ttft` (a classification made slow while replies stay in time).
    pub(crate) classify_latency: Option<Duration>,
    /// Request log; indices are stable (it only grows), so a stream task updates its entry by
    /// index.
    pub(crate) requests: Vec<RecordedRequest>,
    /// What the rate-limit headers report.
    pub(crate) limits: RateLimits,
}

/// The next `remaining` authorised requests fail with `status`.
pub(crate) struct InjectedFailure {
    pub(crate) remaining: u32,
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
}

impl Shared {
    pub(crate) fn new(cfg: FakeGroqConfig, stop: watch::Receiver<bool>) -> Self {
        let state = State {
            replies: VecDeque::new(),
            structured: VecDeque::new(),
            fail: None,
            mid_stream_errors: 0,
            stalls: 0,
            ttft: cfg.ttft,
            inter_token: cfg.inter_token,
            classify_latency: None,
            requests: Vec::new(),
            limits: RateLimits::new(cfg.limit_requests, cfg.limit_tokens, Instant::now()),
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

/// Resolves once the fake is told to stop (or its handle is gone).
pub(crate) use crate::fake::stopped;

impl crate::fake::CancelRequest for Shared {
    fn cancel(&self, idx: usize) {
        self.update(idx, |r| {
            if !r.completed {
                r.cancelled = true;
                r.finished_at = Some(Instant::now());
            }
        });
    }
}
