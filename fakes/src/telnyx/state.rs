//! The fake's memory: what every task and handler shares ([`Shared`]: configuration, signing
//! key, webhook client, and the state behind one lock), every leg and what is queued for its
//! webhooks. What the far end does is in `far_end`, what the commands do in `actions`.
//!
//! Everything lives behind one `std::sync::Mutex` and every transition runs to completion under
//! it, emitting its webhooks into the leg's delivery queue as it goes; that is what keeps a leg's
//! events in the order its transitions happened. The lock is never held across an `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::caller::{CallerScript, Timeline};
use super::stream::{StreamParams, StreamSlot};
use super::{
    DeliveryFaults, DeliveryRecord, Direction, FakeTelnyxConfig, LegSnapshot, LegState,
    RecordedCommand, Scenario,
};

/// What every task and handler of one fake shares.
pub(crate) struct Shared {
    /// Immutable configuration.
    pub(crate) cfg: FakeTelnyxConfig,
    /// Signs webhooks.
    pub(crate) signing_key: SigningKey,
    /// Sends webhooks; one client so connections to the receiver are pooled.
    pub(crate) http: reqwest::Client,
    /// The account's user id, as the media `start` frame reports it.
    pub(crate) user_id: String,
    /// A std mutex, not a tokio one: critical sections are short, synchronous and never span an
    /// `.await`, and the sync `FakeTelnyx` getters must be able to take it.
    state: Mutex<State>,
    /// Flips to true (or closes) when the fake stops; every spawned task watches it.
    stop: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn new(cfg: FakeTelnyxConfig, stop: watch::Receiver<bool>) -> io::Result<Self> {
        // Webhook receivers are local (tests, `iace-dev`); a proxy from the environment would
        // only get in the way.
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(io::Error::other)?;
        Ok(Shared {
            signing_key: SigningKey::from_bytes(&cfg.signing_seed),
            cfg,
            http,
            user_id: Uuid::new_v4().to_string().to_uppercase(),
            state: Mutex::new(State::default()),
            stop,
        })
    }

    /// The state. A panic while holding it cannot leave a half-applied transition that matters
    /// more than losing the fake, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns a task that is dropped when the fake stops.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        super::spawn_until_stopped(&self.stop, fut);
    }

    /// Queues `event_type` for the leg's webhook worker, with the common payload fields as they
    /// are now (notably `client_state`) plus `extra`. No-op once the leg's queue is closed.
    pub(crate) fn emit(&self, st: &State, call_control_id: &str, event_type: &str, extra: Value) {
        let Some(leg) = st.legs.get(call_control_id) else {
            return;
        };
        let Some(events) = &leg.events else {
            return;
        };
        let mut payload = Map::new();
        payload.insert("call_control_id".into(), json!(leg.call_control_id));
        payload.insert("connection_id".into(), json!(self.cfg.connection_id));
        payload.insert("call_leg_id".into(), json!(leg.call_leg_id));
        payload.insert("call_session_id".into(), json!(leg.call_session_id));
        payload.insert("client_state".into(), json!(leg.client_state));
        payload.insert("from".into(), json!(leg.from));
        payload.insert("to".into(), json!(leg.to));
        if let Value::Object(extra) = extra {
            payload.extend(extra);
        }
        // A send error means the worker is gone, i.e. the fake is stopping.
        let _ = events.send(Outgoing {
            id: Uuid::new_v4().to_string(),
            event_type: event_type.to_owned(),
            call_control_id: call_control_id.to_owned(),
            occurred_at: rfc3339(Utc::now()),
            payload: Value::Object(payload),
            url: leg.webhook_url.clone(),
        });
    }
}

/// The next `remaining` commands fail with `status`.
pub(crate) struct InjectedFailure {
    pub(crate) remaining: u32,
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
}

/// Everything the fake remembers.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) legs: HashMap<String, Leg>,
    /// Creation order of `legs`, for [`super::FakeTelnyx::legs`].
    pub(crate) order: Vec<String>,
    pub(crate) scenarios: HashMap<String, Scenario>,
    /// Caller scripts by number: the called number of a dial, the calling number of an inbound
    /// call ([`super::FakeTelnyx::set_caller_script`]).
    pub(crate) caller_scripts: HashMap<String, CallerScript>,
    pub(crate) faults: DeliveryFaults,
    /// Webhooks whose delivery began since the faults were set; the fault counters.
    pub(crate) webhooks_started: u64,
    pub(crate) fail_next: Option<InjectedFailure>,
    pub(crate) command_latency: Duration,
    pub(crate) commands: Vec<RecordedCommand>,
    pub(crate) deliveries: Vec<DeliveryRecord>,
    /// Responses of successful commands by (call_control_id, or "" for dials; command_id).
    /// Kept forever rather than Telnyx's 60 s: tests never run that long, and a longer memory
    /// only makes duplicates more visible.
    pub(crate) completed: HashMap<(String, String), Value>,
    /// Start and count of the current rate-limit window (reported, not enforced).
    pub(crate) rate_window: Option<(Instant, u32)>,
}

/// How a leg ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ending {
    pub(crate) cause: &'static str,
    pub(crate) source: &'static str,
    pub(crate) sip: &'static str,
}

pub(crate) const fn ending(cause: &'static str, source: &'static str, sip: &'static str) -> Ending {
    Ending { cause, source, sip }
}

/// Media counters of a leg, across all its streams.
#[derive(Debug, Clone, Default)]
pub(crate) struct MediaStats {
    pub(crate) frames_sent: u64,
    pub(crate) frames_received: u64,
    pub(crate) bytes_received: u64,
    pub(crate) marks_received: u64,
    pub(crate) marks_echoed: u64,
    pub(crate) clears_received: u64,
    pub(crate) errors_sent: u64,
    pub(crate) stream_connected: bool,
    pub(crate) stream_id: Option<String>,
}

/// One call leg.
pub(crate) struct Leg {
    pub(crate) call_control_id: String,
    pub(crate) call_leg_id: String,
    pub(crate) call_session_id: String,
    pub(crate) direction: Direction,
    pub(crate) state: LegState,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) client_state: Option<String>,
    pub(crate) webhook_url: Option<String>,
    pub(crate) scenario: Scenario,
    pub(crate) amd: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) time_limit: Duration,
    /// Bumped at every change of phase (answer, transfer, hangup); a timer acts only if the
    /// epoch it was armed in is still current, which is how phases cancel their timers.
    pub(crate) epoch: u64,
    pub(crate) start_time: DateTime<Utc>,
    pub(crate) answer_time: Option<DateTime<Utc>>,
    pub(crate) end_time: Option<DateTime<Utc>>,
    pub(crate) hangup: Option<Ending>,
    pub(crate) transferred_to: Option<String>,
    /// A stream requested on dial; it starts when the callee answers.
    pub(crate) pending_stream: Option<StreamParams>,
    /// The stream open or opening now (one per call, as Telnyx allows one bidirectional).
    pub(crate) stream: Option<StreamSlot>,
    pub(crate) media: MediaStats,
    /// What the far party does once the media stream runs; `None`: the endless talk/pause
    /// cycle. A stream takes it while it runs; when the stream ends before the script does
    /// (the stream is stopped and started again, as when a call moves to another server), the
    /// rest goes back here and the next stream carries on from `script_next` (the step the
    /// stream cut off is not replayed). A finished script leaves an empty one.
    pub(crate) script: Option<CallerScript>,
    /// The step of `script` the next stream begins with.
    pub(crate) script_next: usize,
    /// The stream performing the script now: only it hands the rest back (a stream that
    /// starts while an older one still winds down gets an empty script).
    pub(crate) script_holder: Option<String>,
    /// The media timeline, from the first stream's start on.
    pub(crate) timeline: Option<Timeline>,
    /// The leg's webhook queue; dropped after `call.hangup` so the worker ends once drained.
    pub(crate) events: Option<mpsc::UnboundedSender<Outgoing>>,
}

impl Leg {
    pub(crate) fn live(&self) -> bool {
        self.state != LegState::Hangup
    }

    pub(crate) fn snapshot(&self) -> LegSnapshot {
        LegSnapshot {
            call_control_id: self.call_control_id.clone(),
            call_leg_id: self.call_leg_id.clone(),
            call_session_id: self.call_session_id.clone(),
            direction: self.direction,
            state: self.state,
            from: self.from.clone(),
            to: self.to.clone(),
            client_state: self.client_state.clone(),
            webhook_url: self.webhook_url.clone(),
            answering_machine_detection: self.amd.clone(),
            transferred_to: self.transferred_to.clone(),
            hangup_cause: self.hangup.map(|h| h.cause.to_owned()),
            hangup_source: self.hangup.map(|h| h.source.to_owned()),
            sip_hangup_cause: self.hangup.map(|h| h.sip.to_owned()),
            frames_sent: self.media.frames_sent,
            frames_received: self.media.frames_received,
            bytes_received: self.media.bytes_received,
            marks_received: self.media.marks_received,
            marks_echoed: self.media.marks_echoed,
            clears_received: self.media.clears_received,
            errors_sent: self.media.errors_sent,
            stream_connected: self.media.stream_connected,
            stream_id: self.media.stream_id.clone(),
        }
    }
}

/// Telnyx timestamps: RFC 3339, microseconds, `Z`.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// One event waiting for delivery; the payload is fixed when the event happens.
pub(crate) struct Outgoing {
    pub(crate) id: String,
    pub(crate) event_type: String,
    pub(crate) call_control_id: String,
    pub(crate) occurred_at: String,
    pub(crate) payload: Value,
    /// The leg's webhook URL when the event happened.
    pub(crate) url: Option<String>,
}
