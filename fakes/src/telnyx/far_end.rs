//! The far end of every leg (section 1.3 events): legs dialled by the app and inbound legs, the
//! timers that play each leg's [`Scenario`] (ring, answer, AMD, talk, time limit), and how a
//! leg ends.
//!
//! Timers are spawned tasks that re-check the leg's `epoch` when they fire, so a timer armed in
//! an earlier phase (the ring timeout after an answer, the talk timer after a transfer) does
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::Utc;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::body::{self, ApiError};
use super::caller::CallerScript;
use super::media;
use super::state::{ending, rfc3339, Ending, Leg, MediaStats, Shared, State};
use super::stream::{self, StreamParams};
use super::webhooks;

use super::{Direction, LegState, NoAnswerCause, Scenario};

/// How long after an answer the AMD result arrives.
const AMD_DELAY: Duration = Duration::from_millis(100);

/// How long after a machine is detected its greeting ends (for the modes that report it).
const GREETING_DELAY: Duration = Duration::from_millis(500);

/// Telnyx's default `time_limit_secs` (section 1.2).
const DEFAULT_TIME_LIMIT_SECS: u64 = 14_400;

/// Telnyx's default dial `timeout_secs`.
const DEFAULT_TIMEOUT_SECS: u64 = 30;

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
        script_next: 0,
        script_holder: None,
        timeline: None,
        events: Some(events),
    };
    st.order.push(call_control_id.clone());
    st.legs.insert(call_control_id.clone(), leg);
    call_control_id
}

/// Runs `f` after `delay` if the leg is still live and still in `epoch`.
pub(super) fn after<F>(
    shared: &Arc<Shared>,
    call_control_id: &str,
    epoch: u64,
    delay: Duration,
    f: F,
) where
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

pub(super) fn scenario_for(shared: &Shared, st: &State, to: &str) -> Scenario {
    st.scenarios
        .get(to)
        .cloned()
        .unwrap_or_else(|| shared.cfg.default_scenario.clone())
}

pub(super) fn talk_time(scenario: &Scenario) -> Option<Duration> {
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
    let connection_id = body::req_str(body, "connection_id")?;
    let to = body::destination(body, "to")?;
    let from = body::req_str(body, "from")?;
    body::phone_number("from", from)?;
    if connection_id != shared.cfg.connection_id {
        return Err(ApiError::invalid(format!(
            "connection_id '{connection_id}' does not name a Call Control App of this account"
        )));
    }
    let client_state = body::client_state(body)?;
    let webhook_url = body::opt_url(body, "webhook_url")?;
    let timeout_secs = body::opt_u64(body, "timeout_secs")?.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(5..=600).contains(&timeout_secs) {
        return Err(ApiError::invalid(
            "timeout_secs must be between 5 and 600".to_owned(),
        ));
    }
    let time_limit_secs =
        body::opt_u64(body, "time_limit_secs")?.unwrap_or(DEFAULT_TIME_LIMIT_SECS);
    if !(30..=DEFAULT_TIME_LIMIT_SECS).contains(&time_limit_secs) {
        return Err(ApiError::invalid(
            "time_limit_secs must be between 30 and 14400".to_owned(),
        ));
    }
    let amd = body::opt_str(body, "answering_machine_detection")?;
    if let Some(mode) = amd {
        body::one_of(
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
    let pending_stream = stream::stream_params(body)?;

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
pub(super) fn mark_answered(shared: &Shared, st: &mut State, call_control_id: &str) -> u64 {
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
pub(super) fn callee_answers(shared: &Arc<Shared>, st: &mut State, call_control_id: &str) {
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

pub(super) fn arm_time_limit(
    shared: &Arc<Shared>,
    call_control_id: &str,
    epoch: u64,
    left: Duration,
) {
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
