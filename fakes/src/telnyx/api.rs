//! The command API (sections 1.1 and 1.2): routes, Bearer auth, injected failures and latency,
//! `command_id` idempotency, rate-limit headers, Telnyx error bodies, and the lenient parsing
//! helpers the commands share (unknown fields are ignored; known fields are checked).
//!
//! Error codes follow Telnyx's API error table where it has one: `10004` missing parameter,
//! `10015` bad request (any other invalid value), `10016` not E.164, `10003` invalid URL,
//! `10009` authentication, `10005` unknown path, `10011` too many requests, `10007` unexpected
//! error, `90015` unknown call control id (404), `90018` call has already ended (422).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::state::{self, Shared};
use super::RecordedCommand;

/// Reported in `x-ratelimit-limit` per window; not enforced (use
/// [`super::FakeTelnyx::fail_commands`] with 429 to exercise throttling).
const RATE_LIMIT: u32 = 2_000;
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// A Telnyx error answer.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) title: &'static str,
    pub(crate) detail: String,
}

impl ApiError {
    /// `{"errors":[{"code","title","detail"}]}`, `code` a string.
    pub(crate) fn body(&self) -> Value {
        json!({"errors": [{"code": self.code, "title": self.title, "detail": self.detail}]})
    }

    pub(crate) fn missing(field: &str) -> Self {
        ApiError {
            status: 422,
            code: "10004",
            title: "Missing required parameter",
            detail: format!("The '{field}' parameter is required."),
        }
    }

    pub(crate) fn invalid(detail: String) -> Self {
        ApiError {
            status: 422,
            code: "10015",
            title: "Bad Request",
            detail,
        }
    }

    pub(crate) fn invalid_url(field: &str) -> Self {
        ApiError {
            status: 422,
            code: "10003",
            title: "Invalid URL",
            detail: format!("The '{field}' parameter is not a valid URL."),
        }
    }

    pub(crate) fn unknown_call() -> Self {
        ApiError {
            status: 404,
            code: "90015",
            title: "Invalid Call Control ID",
            detail: "The provided call_control_id was not valid.".to_owned(),
        }
    }

    pub(crate) fn call_ended() -> Self {
        ApiError {
            status: 422,
            code: "90018",
            title: "Call has already ended",
            detail: "This call is no longer active and can't receive commands.".to_owned(),
        }
    }

    pub(crate) fn not_found() -> Self {
        ApiError {
            status: 404,
            code: "10005",
            title: "Resource not found",
            detail: "The requested resource or URL could not be found.".to_owned(),
        }
    }

    fn unauthorized() -> Self {
        ApiError {
            status: 401,
            code: "10009",
            title: "Authentication failed",
            detail: "The required authentication headers were either invalid or not included in the request.".to_owned(),
        }
    }

    fn malformed_body() -> Self {
        ApiError {
            status: 400,
            code: "10015",
            title: "Bad Request",
            detail: "The request body must be a JSON object.".to_owned(),
        }
    }

    /// The body of an injected failure with `status`.
    fn injected(status: u16) -> Self {
        let (code, title, detail) = match status {
            401 => return Self::unauthorized(),
            404 => return Self::not_found(),
            408 => ("10008", "Request timeout", "The request timed out."),
            429 => (
                "10011",
                "Too many requests",
                "You have exceeded the maximum number of allowed requests.",
            ),
            s if s >= 500 => ("10007", "Unexpected error", "An unexpected error occurred."),
            _ => (
                "10015",
                "Bad Request",
                "The request failed because it was not well-formed.",
            ),
        };
        ApiError {
            status,
            code,
            title,
            detail: detail.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field helpers shared by the commands.

/// A string field; absent or `null` is `None`, another type is 422.
pub(crate) fn opt_str<'a>(
    body: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(format!("'{field}' must be a string"))),
    }
}

/// A required, non-empty string field.
pub(crate) fn req_str<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match opt_str(body, field)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ApiError::missing(field)),
    }
}

/// A non-negative integer field.
pub(crate) fn opt_u64(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("'{field}' must be a non-negative integer"))),
    }
}

/// `value` must be one of `allowed`.
pub(crate) fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "'{field}' must be one of {}, not '{value}'",
            allowed.join(", ")
        )))
    }
}

/// `value` must be `+` and 2 to 15 digits, the first not 0.
pub(crate) fn phone_number(field: &str, value: &str) -> Result<(), ApiError> {
    let digits = value.strip_prefix('+').unwrap_or("");
    let valid = (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if valid {
        Ok(())
    } else {
        Err(ApiError {
            status: 422,
            code: "10016",
            title: "Phone number must be in +E.164 format",
            detail: format!("The '{field}' parameter must be in +E.164 format, not '{value}'."),
        })
    }
}

/// A required destination: an E.164 number or a `sip:` URI. Telnyx also takes an array (for
/// simultaneous ringing); the fake rings only the first entry.
pub(crate) fn destination(body: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    let value = match body.get(field) {
        Some(Value::Array(items)) => items.first().and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(ApiError::invalid(format!("'{field}' must be a string"))),
    };
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Err(ApiError::missing(field));
    };
    if !value.starts_with("sip:") {
        phone_number(field, value)?;
    }
    Ok(value.to_owned())
}

/// An optional `client_state`: must be base64 (section 1.1).
pub(crate) fn client_state(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(value) = opt_str(body, "client_state")? else {
        return Ok(None);
    };
    if BASE64.decode(value).is_err() {
        return Err(ApiError::invalid(
            "client_state must be valid base64".to_owned(),
        ));
    }
    Ok(Some(value.to_owned()))
}

/// An optional `http(s)://` URL field.
pub(crate) fn opt_url(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match opt_str(body, field)? {
        None => Ok(None),
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Ok(Some(url.to_owned()))
        }
        Some(_) => Err(ApiError::invalid_url(field)),
    }
}

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
        Target::Dial => state::dial(shared, &mut st, body),
        Target::Retrieve(id) => state::retrieve(&st, id),
        Target::Action(id, action) => state::action(shared, &mut st, id, action, body),
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
