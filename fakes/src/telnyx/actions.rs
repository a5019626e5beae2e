//! What each call-control command does to a leg (section 1.2): answer, hangup, reject,
//! transfer, streaming start and stop, DTMF, client state, and retrieving a leg.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Map, Value};

use super::body::{self, ApiError};
use super::far_end::{after, arm_time_limit, end_leg, mark_answered, scenario_for, talk_time};
use super::media;
use super::state::{ending, rfc3339, Shared, State};
use super::stream::{self, StreamCtrl};

use super::{Direction, LegState};

fn ok() -> Value {
    json!({"data": {"result": "ok"}})
}

/// How long a transfer takes to connect (`call.bridged`).
const TRANSFER_DELAY: Duration = Duration::from_millis(200);

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
    let client_state = body::client_state(body)?;
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

pub(super) fn set_client_state(
    st: &mut State,
    call_control_id: &str,
    client_state: Option<String>,
) {
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
    let webhook_url = body::opt_url(body, "webhook_url")?;
    let stream = stream::stream_params(body)?;
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
    let how = match body::req_str(body, "cause")? {
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
    let to = body::destination(body, "to")?;
    if st.legs[call_control_id].state == LegState::Ringing {
        return Err(ApiError::invalid(
            "Call has not been answered yet".to_owned(),
        ));
    }
    if let Some(from) = body::opt_str(body, "from")? {
        body::phone_number("from", from)?;
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
    let Some(params) = stream::stream_params(body)? else {
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
    let wanted = body::opt_str(body, "stream_id")?;
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
