//! The fake's memory and the far end of every leg: what each command does to a leg, and the
//! timers that play each leg's [`Scenario`] (section 1.2 commands, section 1.3 events).
//!
//! Everything lives behind one `std::sync::Mutex` and every transition runs to completion under
//! it, emitting its webhooks into the leg's delivery queue as it goes; that is what keeps a leg's
//! events in the order its transitions happened. The lock is never held across an `.await`.
//! Timers are spawned tasks that re-check the leg's `epoch` when they fire, so a timer armed in
//! an earlier phase (the ring timeout after an answer, the talk timer after a transfer) does
//! nothing.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::api::{self, ApiError};
use super::caller::{CallerScript, Timeline};
use super::media::{self, StreamCtrl, StreamParams, StreamSlot};
use super::webhooks::{self, Outgoing};
use super::{
    DeliveryFaults, DeliveryRecord, Direction, FakeTelnyxConfig, LegSnapshot, LegState,
    NoAnswerCause, RecordedCommand, Scenario,
};

/// How long after an answer the AMD result arrives.
const AMD_DELAY: Duration = Duration::from_millis(100);
/// How long after a machine is detected its greeting ends (for the modes that report it).
const GREETING_DELAY: Duration = Duration::from_millis(500);
/// How long a transfer takes to connect (`call.bridged`).
const TRANSFER_DELAY: Duration = Duration::from_millis(200);
/// Telnyx's default `time_limit_secs` (section 1.2).
const DEFAULT_TIME_LIMIT_SECS: u64 = 14_400;
/// Telnyx's default dial `timeout_secs`.
const DEFAULT_TIMEOUT_SECS: u64 = 30;

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
        // Webhook receivers are local (tests, `iace dev`); a proxy from the environment would
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
    cause: &'static str,
    source: &'static str,
    sip: &'static str,
}

const fn ending(cause: &'static str, source: &'static str, sip: &'static str) -> Ending {
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
    scenario: Scenario,
    amd: Option<String>,
    timeout: Duration,
    time_limit: Duration,
    /// Bumped at every change of phase (answer, transfer, hangup); a timer acts only if the
    /// epoch it was armed in is still current, which is how phases cancel their timers.
    epoch: u64,
    start_time: DateTime<Utc>,
    answer_time: Option<DateTime<Utc>>,
    end_time: Option<DateTime<Utc>>,
    hangup: Option<Ending>,
    transferred_to: Option<String>,
    /// A stream requested on dial; it starts when the callee answers.
    pending_stream: Option<StreamParams>,
    /// The stream open or opening now (one per call, as Telnyx allows one bidirectional).
    pub(crate) stream: Option<StreamSlot>,
    pub(crate) media: MediaStats,
    /// What the far party does once the media stream runs; `None`: the endless talk/pause
    /// cycle. The first stream takes it and leaves an empty script, so a later stream of the
    /// same leg does not replay it.
    pub(crate) script: Option<CallerScript>,
    /// The media timeline, from the first stream's start on.
    pub(crate) timeline: Option<Timeline>,
    /// The leg's webhook queue; dropped after `call.hangup` so the worker ends once drained.
    events: Option<mpsc::UnboundedSender<Outgoing>>,
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

fn ok() -> Value {
    json!({"data": {"result": "ok"}})
}

struct NewLeg {
    direction: Direction,
    state: LegState,
    from: String,
    to: String,
    client_state: Option<String>,
    webhook_url: Option<String>,
    scenario: Scenario,
    amd: Option<String>,
    timeout: Duration,
    time_limit: Duration,
    pending_stream: Option<StreamParams>,
    script: Option<CallerScript>,
}

fn create_leg(shared: &Arc<Shared>, st: &mut State, new: NewLeg) -> String {
    // Opaque like Telnyx's: a version prefix and URL-safe base64.
    let mut raw = [0u8; 32];
    raw[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    raw[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    let call_control_id = format!("v3:{}", URL_SAFE_NO_PAD.encode(raw));
    let (events, queue) = mpsc::unbounded_channel();
    shared.spawn(webhooks::deliver_leg(shared.clone(), queue));
    let leg = Leg {
        call_control_id: call_control_id.clone(),
        call_leg_id: Uuid::new_v4().to_string(),
        call_session_id: Uuid::new_v4().to_string(),
        direction: new.direction,
        state: new.state,
        from: new.from,
        to: new.to,
        client_state: new.client_state,
        webhook_url: new.webhook_url,
        scenario: new.scenario,
        amd: new.amd,
        timeout: new.timeout,
        time_limit: new.time_limit,
        epoch: 0,
        start_time: Utc::now(),
        answer_time: None,
        end_time: None,
        hangup: None,
        transferred_to: None,
        pending_stream: new.pending_stream,
        stream: None,
        media: MediaStats::default(),
        script: new.script,
        timeline: None,
        events: Some(events),
    };
    st.order.push(call_control_id.clone());
    st.legs.insert(call_control_id.clone(), leg);
    call_control_id
}

/// Runs `f` after `delay` if the leg is still live and still in `epoch`.
fn after<F>(shared: &Arc<Shared>, call_control_id: &str, epoch: u64, delay: Duration, f: F)
where
    F: FnOnce(&Arc<Shared>, &mut State, &str) + Send + 'static,
{
    let task_shared = shared.clone();
    let id = call_control_id.to_owned();
    shared.spawn(async move {
        tokio::time::sleep(delay).await;
        let mut st = task_shared.lock();
        let current = st
            .legs
            .get(&id)
            .is_some_and(|leg| leg.live() && leg.epoch == epoch);
        if current {
            f(&task_shared, &mut st, &id);
        }
    });
}

fn scenario_for(shared: &Shared, st: &State, to: &str) -> Scenario {
    st.scenarios
        .get(to)
        .cloned()
        .unwrap_or_else(|| shared.cfg.default_scenario.clone())
}

fn talk_time(scenario: &Scenario) -> Option<Duration> {
    match scenario {
        Scenario::Answer { talk, .. } | Scenario::Machine { talk, .. } => *talk,
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

/// `POST /v2/calls`.
pub(crate) fn dial(
    shared: &Arc<Shared>,
    st: &mut State,
    body: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let connection_id = api::req_str(body, "connection_id")?;
    let to = api::destination(body, "to")?;
    let from = api::req_str(body, "from")?;
    api::phone_number("from", from)?;
    if connection_id != shared.cfg.connection_id {
        return Err(ApiError::invalid(format!(
            "connection_id '{connection_id}' does not name a Call Control App of this account"
        )));
    }
    let client_state = api::client_state(body)?;
    let webhook_url = api::opt_url(body, "webhook_url")?;
    let timeout_secs = api::opt_u64(body, "timeout_secs")?.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(5..=600).contains(&timeout_secs) {
        return Err(ApiError::invalid(
            "timeout_secs must be between 5 and 600".to_owned(),
        ));
    }
    let time_limit_secs = api::opt_u64(body, "time_limit_secs")?.unwrap_or(DEFAULT_TIME_LIMIT_SECS);
    if !(30..=DEFAULT_TIME_LIMIT_SECS).contains(&time_limit_secs) {
        return Err(ApiError::invalid(
            "time_limit_secs must be between 30 and 14400".to_owned(),
        ));
    }
    let amd = api::opt_str(body, "answering_machine_detection")?;
    if let Some(mode) = amd {
        api::one_of(
            "answering_machine_detection",
            mode,
            &[
                "premium",
                "detect",
                "detect_beep",
                "detect_words",
                "greeting_end",
                "disabled",
            ],
        )?;
    }
    let pending_stream = media::stream_params(body)?;

    let scenario = scenario_for(shared, st, &to);
    let script = st.caller_scripts.get(&to).cloned();
    let call_control_id = create_leg(
        shared,
        st,
        NewLeg {
            direction: Direction::Outgoing,
            state: LegState::Ringing,
            from: from.to_owned(),
            to,
            client_state,
            webhook_url: webhook_url.or_else(|| shared.cfg.inbound_webhook_url.clone()),
            scenario,
            amd: amd.filter(|m| *m != "disabled").map(str::to_owned),
            timeout: Duration::from_secs(timeout_secs),
            time_limit: Duration::from_secs(time_limit_secs),
            pending_stream,
            script,
        },
    );
    let leg = &st.legs[&call_control_id];
    let response = json!({"data": {
        "call_control_id": leg.call_control_id,
        "call_leg_id": leg.call_leg_id,
        "call_session_id": leg.call_session_id,
        "is_alive": false,
        "record_type": "call",
    }});
    let start_time = rfc3339(leg.start_time);
    shared.emit(
        st,
        &call_control_id,
        "call.initiated",
        json!({"direction": "outgoing", "state": "bridging", "start_time": start_time}),
    );
    drive_outbound(shared, st, &call_control_id);
    Ok(response)
}

/// Arms the callee's first move.
fn drive_outbound(shared: &Arc<Shared>, st: &State, call_control_id: &str) {
    enum Move {
        Answer,
        End(Ending),
        Timeout,
    }
    let leg = &st.legs[call_control_id];
    let (delay, next) = match leg.scenario {
        Scenario::Answer { ring, .. } | Scenario::Machine { ring, .. } => (ring, Move::Answer),
        Scenario::Busy { after } => (after, Move::End(ending("user_busy", "callee", "486"))),
        Scenario::Reject { after } => (after, Move::End(ending("call_rejected", "callee", "603"))),
        Scenario::NoAnswer => (leg.timeout, Move::Timeout),
    };
    let (delay, next) = if delay >= leg.timeout {
        (leg.timeout, Move::Timeout)
    } else {
        (delay, next)
    };
    after(
        shared,
        call_control_id,
        leg.epoch,
        delay,
        move |shared, st, id| match next {
            Move::Answer => callee_answers(shared, st, id),
            Move::End(e) => end_leg(shared, st, id, e),
            Move::Timeout => {
                // The platform gives up on the INVITE; neither party hung up.
                let e = match shared.cfg.no_answer_cause {
                    NoAnswerCause::Timeout => ending("timeout", "unknown", "408"),
                    NoAnswerCause::NoAnswer => ending("no_answer", "unknown", "480"),
                };
                end_leg(shared, st, id, e);
            }
        },
    );
}

/// Marks the leg answered and sends `call.answered`; returns the new epoch.
fn mark_answered(shared: &Shared, st: &mut State, call_control_id: &str) -> u64 {
    let Some(leg) = st.legs.get_mut(call_control_id) else {
        return 0;
    };
    let now = Utc::now();
    leg.state = LegState::Answered;
    leg.answer_time = Some(now);
    leg.epoch += 1;
    let epoch = leg.epoch;
    let start_time = rfc3339(leg.start_time);
    shared.emit(
        st,
        call_control_id,
        "call.answered",
        json!({"state": "answered", "start_time": start_time}),
    );
    epoch
}

/// The callee of an outbound dial picks up.
fn callee_answers(shared: &Arc<Shared>, st: &mut State, call_control_id: &str) {
    let epoch = mark_answered(shared, st, call_control_id);
    let Some(leg) = st.legs.get_mut(call_control_id) else {
        return;
    };
    let machine = matches!(leg.scenario, Scenario::Machine { .. });
    let talk = talk_time(&leg.scenario);
    let time_limit = leg.time_limit;
    let amd = leg.amd.clone();
    let stream = leg.pending_stream.take();
    if let Some(mode) = amd {
        after(
            shared,
            call_control_id,
            epoch,
            AMD_DELAY,
            move |shared, st, id| amd_result(shared, st, id, &mode, machine),
        );
    }
    if let Some(talk) = talk {
        after(shared, call_control_id, epoch, talk, |shared, st, id| {
            end_leg(shared, st, id, ending("normal_clearing", "callee", "200"));
        });
    }
    arm_time_limit(shared, call_control_id, epoch, time_limit);
    if let Some(params) = stream {
        media::start(shared, st, call_control_id, params);
    }
}

fn arm_time_limit(shared: &Arc<Shared>, call_control_id: &str, epoch: u64, left: Duration) {
    after(shared, call_control_id, epoch, left, |shared, st, id| {
        end_leg(shared, st, id, ending("time_limit", "unknown", "200"));
    });
}

/// Sends the AMD verdict in the event family the requested mode uses: `premium` has its own
/// events and results; the beep/greeting modes also report the end of a machine's greeting.
fn amd_result(
    shared: &Arc<Shared>,
    st: &mut State,
    call_control_id: &str,
    mode: &str,
    machine: bool,
) {
    let premium = mode == "premium";
    let (event, result) = match (premium, machine) {
        (true, true) => ("call.machine.premium.detection.ended", "machine"),
        (true, false) => ("call.machine.premium.detection.ended", "human_residence"),
        (false, true) => ("call.machine.detection.ended", "machine"),
        (false, false) => ("call.machine.detection.ended", "human"),
    };
    shared.emit(st, call_control_id, event, json!({"result": result}));
    let greeting = match mode {
        "premium" => Some(("call.machine.premium.greeting.ended", "beep_detected")),
        "detect_beep" => Some(("call.machine.greeting.ended", "beep_detected")),
        "greeting_end" => Some(("call.machine.greeting.ended", "ended")),
        _ => None,
    };
    if let Some((event, result)) = greeting.filter(|_| machine) {
        let epoch = st.legs[call_control_id].epoch;
        after(
            shared,
            call_control_id,
            epoch,
            GREETING_DELAY,
            move |shared, st, id| shared.emit(st, id, event, json!({"result": result})),
        );
    }
}

/// Ends a live leg: stops its stream (`streaming.stopped` first, as the stream goes down with
/// the call), sends `call.hangup` and closes its webhook queue.
pub(crate) fn end_leg(shared: &Arc<Shared>, st: &mut State, call_control_id: &str, how: Ending) {
    let Some(leg) = st.legs.get_mut(call_control_id) else {
        return;
    };
    if !leg.live() {
        return;
    }
    let now = Utc::now();
    leg.state = LegState::Hangup;
    leg.epoch += 1;
    leg.end_time = Some(now);
    leg.hangup = Some(how);
    media::stop(shared, st, call_control_id);
    let leg = &st.legs[call_control_id];
    let mut extra = json!({
        "state": "hangup",
        "hangup_cause": how.cause,
        "hangup_source": how.source,
        "sip_hangup_cause": how.sip,
        "start_time": rfc3339(leg.start_time),
        "end_time": rfc3339(now),
    });
    if leg.media.frames_sent > 0 || leg.media.frames_received > 0 {
        // Telnyx's "inbound" is what it received from the far party (what we streamed to the
        // app); "outbound" is what it sent to the far party (what the app streamed to us).
        extra["call_quality_stats"] = json!({
            "inbound": {
                "jitter_max_variance": "0.00",
                "jitter_packet_count": "0",
                "mos": "4.50",
                "packet_count": leg.media.frames_sent.to_string(),
                "skip_packet_count": "0",
            },
            "outbound": {
                "packet_count": leg.media.frames_received.to_string(),
                "skip_packet_count": "0",
            },
        });
    }
    shared.emit(st, call_control_id, "call.hangup", extra);
    if let Some(leg) = st.legs.get_mut(call_control_id) {
        leg.events = None;
    }
}

/// [`super::FakeTelnyx::place_inbound_call`].
pub(crate) fn place_inbound(
    shared: &Arc<Shared>,
    st: &mut State,
    from: &str,
    to: &str,
    scenario: Scenario,
) -> String {
    let patience = match scenario {
        Scenario::Answer { ring, .. } | Scenario::Machine { ring, .. } => Some(ring),
        Scenario::Busy { after } | Scenario::Reject { after } => Some(after),
        Scenario::NoAnswer => None,
    };
    let script = st.caller_scripts.get(from).cloned();
    let call_control_id = create_leg(
        shared,
        st,
        NewLeg {
            direction: Direction::Incoming,
            state: LegState::Parked,
            from: from.to_owned(),
            to: to.to_owned(),
            client_state: None,
            webhook_url: shared.cfg.inbound_webhook_url.clone(),
            scenario,
            amd: None,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            time_limit: Duration::from_secs(DEFAULT_TIME_LIMIT_SECS),
            pending_stream: None,
            script,
        },
    );
    let start_time = rfc3339(st.legs[&call_control_id].start_time);
    shared.emit(
        st,
        &call_control_id,
        "call.initiated",
        json!({
            "direction": "incoming",
            "state": "parked",
            "start_time": start_time,
            "caller_id_name": from,
        }),
    );
    if let Some(patience) = patience {
        after(shared, &call_control_id, 0, patience, |shared, st, id| {
            end_leg(shared, st, id, ending("originator_cancel", "caller", "487"));
        });
    }
    call_control_id
}

/// `POST /v2/calls/{id}/actions/{action}`.
pub(crate) fn action(
    shared: &Arc<Shared>,
    st: &mut State,
    call_control_id: &str,
    action: &str,
    body: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let Some(leg) = st.legs.get(call_control_id) else {
        return Err(ApiError::unknown_call());
    };
    if !KNOWN_ACTIONS.contains(&action) {
        return Err(ApiError::not_found());
    }
    if !leg.live() {
        return Err(ApiError::call_ended());
    }
    // Any command may carry client_state; it applies from that command's own events on.
    let client_state = api::client_state(body)?;
    match action {
        "answer" => answer(shared, st, call_control_id, body, client_state),
        "hangup" => {
            set_client_state(st, call_control_id, client_state);
            hangup(shared, st, call_control_id);
            Ok(ok())
        }
        "reject" => reject(shared, st, call_control_id, body, client_state),
        "transfer" => transfer(shared, st, call_control_id, body, client_state),
        "streaming_start" => streaming_start(shared, st, call_control_id, body, client_state),
        "streaming_stop" => streaming_stop(shared, st, call_control_id, body, client_state),
        "client_state_update" => {
            if client_state.is_none() {
                return Err(ApiError::missing("client_state"));
            }
            set_client_state(st, call_control_id, client_state);
            Ok(ok())
        }
        // Accepted and recorded, but without effect: the fake does not play audio, gather or
        // record. Telnyx would answer "ok" and act asynchronously.
        _ => {
            set_client_state(st, call_control_id, client_state);
            Ok(ok())
        }
    }
}

/// Action names the fake answers; the ones without a handler above are accepted as no-ops.
const KNOWN_ACTIONS: &[&str] = &[
    "answer",
    "hangup",
    "reject",
    "transfer",
    "streaming_start",
    "streaming_stop",
    "client_state_update",
    "speak",
    "playback_start",
    "playback_stop",
    "gather",
    "gather_using_speak",
    "gather_stop",
    "send_dtmf",
    "record_start",
    "record_stop",
    "bridge",
    "fork_start",
    "fork_stop",
    "transcription_start",
    "transcription_stop",
];

fn set_client_state(st: &mut State, call_control_id: &str, client_state: Option<String>) {
    if let (Some(cs), Some(leg)) = (client_state, st.legs.get_mut(call_control_id)) {
        leg.client_state = Some(cs);
    }
}

fn answer(
    shared: &Arc<Shared>,
    st: &mut State,
    call_control_id: &str,
    body: &Map<String, Value>,
    client_state: Option<String>,
) -> Result<Value, ApiError> {
    let leg = &st.legs[call_control_id];
    if leg.direction != Direction::Incoming {
        return Err(ApiError::invalid(
            "answer applies only to incoming calls".to_owned(),
        ));
    }
    if leg.state != LegState::Parked {
        return Err(ApiError::invalid(
            "Call has already been answered".to_owned(),
        ));
    }
    let webhook_url = api::opt_url(body, "webhook_url")?;
    let stream = media::stream_params(body)?;
    set_client_state(st, call_control_id, client_state);
    if let (Some(url), Some(leg)) = (webhook_url, st.legs.get_mut(call_control_id)) {
        leg.webhook_url = Some(url);
    }
    let epoch = mark_answered(shared, st, call_control_id);
    if let Some(talk) = talk_time(&st.legs[call_control_id].scenario) {
        after(shared, call_control_id, epoch, talk, |shared, st, id| {
            end_leg(shared, st, id, ending("normal_clearing", "caller", "200"));
        });
    }
    if let Some(params) = stream {
        media::start(shared, st, call_control_id, params);
    }
    Ok(ok())
}

/// The far party hangs up (a caller script's `Hangup`), as the scenarios' talk timers do:
/// `normal_clearing` from the callee of an outbound dial or the caller of an inbound call.
pub(crate) fn far_end_hangs_up(shared: &Arc<Shared>, st: &mut State, call_control_id: &str) {
    let Some(leg) = st.legs.get(call_control_id) else {
        return;
    };
    let source = match leg.direction {
        Direction::Outgoing => "callee",
        Direction::Incoming => "caller",
    };
    end_leg(
        shared,
        st,
        call_control_id,
        ending("normal_clearing", source, "200"),
    );
}

/// Our side hangs up. On an outbound leg we are the caller; on an inbound leg the callee. A leg
/// never answered ends as `originator_cancel` either way (on an inbound leg Telnyx's wording is
/// unknown; this keeps "we gave up before the call was up" one value for IACE).
fn hangup(shared: &Arc<Shared>, st: &mut State, call_control_id: &str) {
    let leg = &st.legs[call_control_id];
    let source = match leg.direction {
        Direction::Outgoing => "caller",
        Direction::Incoming => "callee",
    };
    let how = if leg.answer_time.is_none() && leg.transferred_to.is_none() {
        ending("originator_cancel", source, "487")
    } else {
        ending("normal_clearing", source, "200")
    };
    end_leg(shared, st, call_control_id, how);
}

fn reject(
    shared: &Arc<Shared>,
    st: &mut State,
    call_control_id: &str,
    body: &Map<String, Value>,
    client_state: Option<String>,
) -> Result<Value, ApiError> {
    let leg = &st.legs[call_control_id];
    if leg.direction != Direction::Incoming || leg.state != LegState::Parked {
        return Err(ApiError::invalid(
            "reject applies only to a parked incoming call".to_owned(),
        ));
    }
    let how = match api::req_str(body, "cause")? {
        "CALL_REJECTED" => ending("call_rejected", "callee", "603"),
        "USER_BUSY" => ending("user_busy", "callee", "486"),
        other => {
            return Err(ApiError::invalid(format!(
                "cause '{other}' must be CALL_REJECTED or USER_BUSY"
            )))
        }
    };
    set_client_state(st, call_control_id, client_state);
    end_leg(shared, st, call_control_id, how);
    Ok(ok())
}

/// The far party is connected to `to` after [`TRANSFER_DELAY`]; the leg then lasts the talk
/// time of `to`'s scenario (a `Busy`/`Reject`/`NoAnswer` target is treated as answering and
/// never hanging up: the fake does not model failed transfers).
fn transfer(
    shared: &Arc<Shared>,
    st: &mut State,
    call_control_id: &str,
    body: &Map<String, Value>,
    client_state: Option<String>,
) -> Result<Value, ApiError> {
    let to = api::destination(body, "to")?;
    if st.legs[call_control_id].state == LegState::Ringing {
        return Err(ApiError::invalid(
            "Call has not been answered yet".to_owned(),
        ));
    }
    if let Some(from) = api::opt_str(body, "from")? {
        api::phone_number("from", from)?;
    }
    set_client_state(st, call_control_id, client_state);
    let target = scenario_for(shared, st, &to);
    let Some(leg) = st.legs.get_mut(call_control_id) else {
        return Err(ApiError::unknown_call());
    };
    leg.transferred_to = Some(to);
    leg.epoch += 1;
    let epoch = leg.epoch;
    // What is left of the time limit keeps running across the transfer.
    let time_left = leg.answer_time.map(|answered| {
        let used = (Utc::now() - answered).to_std().unwrap_or_default();
        leg.time_limit.saturating_sub(used)
    });
    after(
        shared,
        call_control_id,
        epoch,
        TRANSFER_DELAY,
        move |shared, st, id| {
            if let Some(leg) = st.legs.get_mut(id) {
                leg.state = LegState::Bridged;
            }
            shared.emit(st, id, "call.bridged", json!({"state": "bridged"}));
            if let Some(talk) = talk_time(&target) {
                after(shared, id, epoch, talk, |shared, st, id| {
                    end_leg(shared, st, id, ending("normal_clearing", "callee", "200"));
                });
            }
        },
    );
    if let Some(left) = time_left {
        arm_time_limit(shared, call_control_id, epoch, left);
    }
    Ok(ok())
}

fn streaming_start(
    shared: &Arc<Shared>,
    st: &mut State,
    call_control_id: &str,
    body: &Map<String, Value>,
    client_state: Option<String>,
) -> Result<Value, ApiError> {
    let leg = &st.legs[call_control_id];
    if !matches!(leg.state, LegState::Answered | LegState::Bridged) {
        return Err(ApiError::invalid(
            "Call has not been answered yet".to_owned(),
        ));
    }
    let Some(params) = media::stream_params(body)? else {
        return Err(ApiError::missing("stream_url"));
    };
    if leg.stream.is_some() {
        return Err(ApiError::invalid(
            "A media stream is already active on this call".to_owned(),
        ));
    }
    set_client_state(st, call_control_id, client_state);
    media::start(shared, st, call_control_id, params);
    Ok(ok())
}

fn streaming_stop(
    shared: &Arc<Shared>,
    st: &mut State,
    call_control_id: &str,
    body: &Map<String, Value>,
    client_state: Option<String>,
) -> Result<Value, ApiError> {
    let wanted = api::opt_str(body, "stream_id")?;
    let Some(slot) = &st.legs[call_control_id].stream else {
        return Err(ApiError::invalid(
            "No media stream is active on this call".to_owned(),
        ));
    };
    if wanted.is_some_and(|w| !w.eq_ignore_ascii_case(&slot.stream_id)) {
        return Err(ApiError::invalid(
            "stream_id does not name the active stream".to_owned(),
        ));
    }
    set_client_state(st, call_control_id, client_state);
    media::stop(shared, st, call_control_id);
    Ok(ok())
}

/// `GET /v2/calls/{id}`.
pub(crate) fn retrieve(st: &State, call_control_id: &str) -> Result<Value, ApiError> {
    let leg = st
        .legs
        .get(call_control_id)
        .ok_or_else(ApiError::unknown_call)?;
    let end = leg.end_time.unwrap_or_else(Utc::now);
    Ok(json!({"data": {
        "call_control_id": leg.call_control_id,
        "call_leg_id": leg.call_leg_id,
        "call_session_id": leg.call_session_id,
        "is_alive": leg.live(),
        "record_type": "call",
        "call_duration": (end - leg.start_time).num_seconds().max(0),
        "start_time": rfc3339(leg.start_time),
        "end_time": leg.end_time.map(rfc3339),
    }}))
}

/// [`super::FakeTelnyx::send_dtmf`].
pub(crate) fn send_dtmf(
    shared: &Shared,
    st: &mut State,
    call_control_id: &str,
    digit: char,
) -> bool {
    let Some(leg) = st.legs.get(call_control_id) else {
        return false;
    };
    if !matches!(leg.state, LegState::Answered | LegState::Bridged) {
        return false;
    }
    if let Some(slot) = &leg.stream {
        let _ = slot.ctrl.send(StreamCtrl::Dtmf(digit));
    }
    shared.emit(
        st,
        call_control_id,
        "call.dtmf.received",
        json!({"digit": digit.to_string()}),
    );
    true
}
