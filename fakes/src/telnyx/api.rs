//! The command API (sections 1.1 and 1.2): routes, Bearer auth, injected failures and latency,
//! `command_id` idempotency, rate-limit headers and Telnyx error bodies (the errors and the
//! parsing of command bodies are in `body`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value};

use super::body::{opt_str, ApiError};
use super::state::{self, Shared};
use super::RecordedCommand;
use super::{actions, far_end};

/// Reported in `x-ratelimit-limit` per window; not enforced (use
/// [`super::FakeTelnyx::fail_commands`] with 429 to exercise throttling).
const RATE_LIMIT: u32 = 2_000;
const RATE_WINDOW: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Routes.

/// The command API.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v2/calls", post(dial))
        .route("/v2/calls/{call_control_id}", get(retrieve))
        .route("/v2/calls/{call_control_id}/actions/{action}", post(action))
        .fallback(unknown)
        .with_state(shared)
}

/// What a request addresses.
enum Target {
    Dial,
    Retrieve(String),
    Action(String, String),
    Unknown,
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::Dial => "dial".to_owned(),
            Target::Retrieve(_) => "retrieve".to_owned(),
            Target::Action(_, action) => action.clone(),
            Target::Unknown => "unknown".to_owned(),
        }
    }

    fn call_control_id(&self) -> Option<String> {
        match self {
            Target::Retrieve(id) | Target::Action(id, _) => Some(id.clone()),
            Target::Dial | Target::Unknown => None,
        }
    }
}

async fn dial(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(shared, Method::POST, uri, headers, body, Target::Dial).await
}

async fn retrieve(
    State(shared): State<Arc<Shared>>,
    Path(call_control_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let target = Target::Retrieve(call_control_id);
    handle(shared, Method::GET, uri, headers, Bytes::new(), target).await
}

async fn action(
    State(shared): State<Arc<Shared>>,
    Path((call_control_id, action)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = Target::Action(call_control_id, action);
    handle(shared, Method::POST, uri, headers, body, target).await
}

async fn unknown(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(shared, method, uri, headers, body, Target::Unknown).await
}

/// What every request goes through: auth, injected failure, execution (or the idempotency
/// cache), recording, latency, rate-limit headers.
async fn handle(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    target: Target,
) -> Response {
    // Commands without a body (hangup) are common; treat an empty body as `{}`.
    let parsed: Option<Value> = if body.is_empty() {
        Some(Value::Object(Map::new()))
    } else {
        serde_json::from_slice(&body).ok()
    };
    let mut record = RecordedCommand {
        method: method.to_string(),
        trace: crate::TraceHeaders::of(&headers),
        path: uri.path().to_owned(),
        action: target.name(),
        call_control_id: target.call_control_id(),
        command_id: parsed
            .as_ref()
            .and_then(|v| v.get("command_id"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        body: parsed.clone().unwrap_or(Value::Null),
        status: 0,
        idempotent_repeat: false,
        injected_failure: false,
    };
    let is_post = method == Method::POST;
    let mut retry_after = None;
    let (status, response) = if !authorized(&shared.cfg.api_key, &headers) {
        let e = ApiError::unauthorized();
        (e.status, e.body())
    } else if let Some((status, after)) = is_post.then(|| take_injected(&shared)).flatten() {
        record.injected_failure = true;
        retry_after = after;
        (status, ApiError::injected(status).body())
    } else {
        match parsed {
            Some(Value::Object(fields)) => execute(&shared, &target, &fields, &mut record),
            _ => {
                let e = ApiError::malformed_body();
                (e.status, e.body())
            }
        }
    };
    record.status = status;
    let (remaining, reset, latency) = {
        let mut st = shared.lock();
        st.commands.push(record);
        let (remaining, reset) = rate_window(&mut st);
        (remaining, reset, st.command_latency)
    };
    if is_post && !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let remaining = if status == 429 { 0 } else { remaining };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut answer = (code, Json(response)).into_response();
    let h = answer.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(RATE_LIMIT));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    if let Some(after) = retry_after {
        // Whole seconds, rounded up so that a client honouring it never retries early.
        let secs = after.as_millis().div_ceil(1000) as u64;
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    answer
}

fn authorized(api_key: &str, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| key == api_key)
}

fn take_injected(shared: &Shared) -> Option<(u16, Option<Duration>)> {
    let mut st = shared.lock();
    let failure = st.fail_next.as_mut()?;
    failure.remaining = failure.remaining.saturating_sub(1);
    let taken = (failure.status, failure.retry_after);
    if failure.remaining == 0 {
        st.fail_next = None;
    }
    Some(taken)
}

/// Counts the request in the current window; returns (remaining, seconds until reset).
fn rate_window(st: &mut state::State) -> (u32, u64) {
    let now = Instant::now();
    let window = st.rate_window.get_or_insert((now, 0));
    if now.duration_since(window.0) >= RATE_WINDOW {
        *window = (now, 0);
    }
    window.1 += 1;
    let left = RATE_WINDOW.saturating_sub(now.duration_since(window.0));
    (
        RATE_LIMIT.saturating_sub(window.1),
        left.as_millis().div_ceil(1000) as u64,
    )
}

/// Runs the command under the state lock, or answers a repeated `command_id` from the cache.
/// Only successful commands are cached: a rejected one did nothing, so repeating it (say,
/// after fixing the body) runs it again.
fn execute(
    shared: &Arc<Shared>,
    target: &Target,
    body: &Map<String, Value>,
    record: &mut RecordedCommand,
) -> (u16, Value) {
    let command_id = match opt_str(body, "command_id") {
        Ok(id) => id.map(str::to_owned),
        Err(e) => return (e.status, e.body()),
    };
    let scope = match target {
        Target::Dial => Some(String::new()),
        Target::Action(id, _) => Some(id.clone()),
        Target::Retrieve(_) | Target::Unknown => None,
    };
    let key = scope.zip(command_id);
    let mut st = shared.lock();
    if let Some(previous) = key.as_ref().and_then(|k| st.completed.get(k)) {
        record.idempotent_repeat = true;
        if matches!(target, Target::Dial) {
            record.call_control_id = dialed_id(previous);
        }
        return (200, previous.clone());
    }
    let result = match target {
        Target::Dial => far_end::dial(shared, &mut st, body),
        Target::Retrieve(id) => actions::retrieve(&st, id),
        Target::Action(id, action) => actions::action(shared, &mut st, id, action, body),
        Target::Unknown => Err(ApiError::not_found()),
    };
    match result {
        Ok(response) => {
            if matches!(target, Target::Dial) {
                record.call_control_id = dialed_id(&response);
            }
            if let Some(key) = key {
                st.completed.insert(key, response.clone());
            }
            (200, response)
        }
        Err(e) => (e.status, e.body()),
    }
}

fn dialed_id(response: &Value) -> Option<String> {
    response
        .pointer("/data/call_control_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
}
