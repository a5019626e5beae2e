//! The fake's mutable state behind one lock: the contacts, armed faults, the current latency,
//! the burst window and the request log. Nothing here does I/O or awaits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::{FakeHubSpotConfig, RecordedRequest};

/// What the server tasks and the [`super::FakeHubSpot`] handle share.
pub(crate) struct Shared {
    /// Immutable configuration (the latency starts from it but lives in [`State`]).
    pub(crate) cfg: FakeHubSpotConfig,
    /// A std mutex, not a tokio one: critical sections are short, synchronous and never span an
    /// `.await`, and the sync `FakeHubSpot` getters must be able to take it.
    state: Mutex<State>,
    /// Flips to true (or closes) when the fake stops; stalled requests watch it.
    pub(crate) stop: watch::Receiver<bool>,
}

/// Everything that changes.
pub(crate) struct State {
    /// Contacts by numeric id (so results come in id order).
    pub(crate) contacts: BTreeMap<u64, Contact>,
    /// Contact properties that exist: the configured ones and every one seeded.
    pub(crate) properties: BTreeSet<String>,
    /// Armed error answers.
    pub(crate) fail: Option<InjectedFailure>,
    /// Valid requests still to stall.
    pub(crate) stalls: u32,
    /// Delay before each answer.
    pub(crate) latency: Duration,
    /// The current ten-second burst window: when it started and how many authenticated
    /// requests it has seen.
    pub(crate) window: (Instant, u32),
    /// Authenticated requests since the start (the daily counter).
    pub(crate) authenticated: u64,
    /// Request log; indices are stable (it only grows), so a handler updates its entry by index
    /// after it has let go of the lock.
    pub(crate) requests: Vec<RecordedRequest>,
}

/// The next `remaining` authenticated requests fail with `status`.
pub(crate) struct InjectedFailure {
    pub(crate) remaining: u32,
    pub(crate) status: u16,
    /// `Retry-After` of a 429.
    pub(crate) retry_after: Option<Duration>,
}

/// A stored contact. Property values are strings, or `Null` for a property set to no value.
#[derive(Debug, Clone)]
pub(crate) struct Contact {
    pub(crate) id: String,
    pub(crate) properties: Map<String, Value>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// HubSpot's timestamp format: ISO-8601 UTC with milliseconds.
pub(crate) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Contact {
    /// The value of `name` as search sees it: `hs_object_id` is the id, the timestamps are the
    /// object's; `None` for an absent or `null` property.
    pub(crate) fn value(&self, name: &str) -> Option<String> {
        match name {
            "hs_object_id" => Some(self.id.clone()),
            "createdate" => Some(timestamp(self.created_at)),
            "lastmodifieddate" => Some(timestamp(self.updated_at)),
            _ => self
                .properties
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }

    /// The object as the API answers it, with `properties` (each present, `null` when unset).
    pub(crate) fn to_json(&self, properties: &[String]) -> Value {
        let props: Map<String, Value> = properties
            .iter()
            .map(|p| (p.clone(), self.value(p).map_or(Value::Null, Value::String)))
            .collect();
        json!({
            "id": self.id,
            "properties": props,
            "createdAt": timestamp(self.created_at),
            "updatedAt": timestamp(self.updated_at),
            "archived": false,
        })
    }
}

impl Shared {
    pub(crate) fn new(cfg: FakeHubSpotConfig, stop: watch::Receiver<bool>) -> Self {
        let state = State {
            contacts: BTreeMap::new(),
            properties: cfg.properties.iter().cloned().collect(),
            fail: None,
            stalls: 0,
            latency: cfg.latency,
            window: (Instant::now(), 0),
            authenticated: 0,
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

impl State {
    /// Counts an authenticated request in the burst window (restarting it when
    /// `interval` has passed); returns the requests seen in the window, this one included.
    pub(crate) fn count_request(&mut self, interval: Duration) -> u32 {
        let now = Instant::now();
        if now.duration_since(self.window.0) >= interval {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        self.authenticated += 1;
        self.window.1
    }

    /// What is left of the current burst window.
    pub(crate) fn window_left(&self, interval: Duration) -> Duration {
        interval.saturating_sub(self.window.0.elapsed())
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
