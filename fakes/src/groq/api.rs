//! The HTTP surface (section 4): routes, Bearer auth, request validation, Groq error bodies,
//! injected failures and stalls, rate-limit headers on every response, and the non-streaming
//! `chat.completion` answer. Streams are handed to [`super::stream`].
//!
//! Every decision about a request is taken in one critical section ([`decide`]), so concurrent
//! requests take scripted replies and armed faults in a single, well-defined arrival order.
//!
//! Error bodies are `{"error":{"message","type","code"?,"param"?}}`. Documented values: 401
//! `invalid_api_key`, 404 `model_not_found`, 400 `invalid_request_error`, 429 `type: "tokens"`
//! `code: "rate_limit_exceeded"`. The bodies of 498 and 5xx are [UNVERIFIED] and chosen to look
//! like their siblings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::reply::{self, Plan};
use super::state::{self, Shared, State as FakeState};
use super::stream::{self, Meta, SYSTEM_FINGERPRINT};
use super::{FakeGroqConfig, InjectedFault, RecordedRequest};
use crate::fake::CancelOnDrop;

/// The routes, under the SDK's `base_url` `/openai/v1`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/openai/v1/chat/completions", post(chat_completions))
        .route("/openai/v1/models", get(list_models))
        .fallback(unknown_url)
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// A Groq error answer.
#[derive(Debug, Clone)]
struct GroqError {
    status: u16,
    message: String,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<String>,
}

impl GroqError {
    fn body(&self) -> Value {
        let mut e = Map::new();
        e.insert("message".into(), json!(self.message));
        e.insert("type".into(), json!(self.kind));
        if let Some(c) = self.code {
            e.insert("code".into(), json!(c));
        }
        if let Some(p) = &self.param {
            e.insert("param".into(), json!(p));
        }
        json!({ "error": e })
    }

    /// The body Groq sends for a missing or wrong key.
    fn unauthorized() -> Self {
        GroqError {
            status: 401,
            message: "Invalid API Key".to_owned(),
            kind: "invalid_request_error",
            code: Some("invalid_api_key"),
            param: None,
        }
    }

    fn invalid(message: String, param: Option<&str>) -> Self {
        GroqError {
            status: 400,
            message,
            kind: "invalid_request_error",
            code: None,
            param: param.map(str::to_owned),
        }
    }

    fn model_not_found(model: &str) -> Self {
        GroqError {
            status: 404,
            message: format!("The model `{model}` does not exist or you do not have access to it."),
            kind: "invalid_request_error",
            code: Some("model_not_found"),
            param: None,
        }
    }

    /// What [`super::FakeGroq::fail_next`] answers.
    fn injected(status: u16, model: &str, retry_after: Option<Duration>) -> Self {
        let (message, kind, code) = match status {
            429 => {
                let wait = super::ratelimit::go_duration(
                    retry_after.unwrap_or(Duration::from_millis(7_660)),
                );
                // The shape of the real message (Aider-AI/aider#3265), numbers made up.
                (
                    format!(
                        "Rate limit reached for model `{model}` in organization `org_fake` service tier `on_demand` on tokens per minute (TPM): Limit 6000, Used 5821, Requested 812. Please try again in {wait}. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"
                    ),
                    "tokens",
                    "rate_limit_exceeded",
                )
            }
            401 => return Self::unauthorized(),
            403 => ("Forbidden".to_owned(), "permission_error", "permission_denied"),
            404 => return Self::model_not_found(model),
            413 => (
                "Request Entity Too Large".to_owned(),
                "invalid_request_error",
                "request_too_large",
            ),
            422 => (
                "Unprocessable Entity".to_owned(),
                "invalid_request_error",
                "unprocessable_entity",
            ),
            424 => (
                "Failed Dependency".to_owned(),
                "invalid_request_error",
                "failed_dependency",
            ),
            498 => (
                "Flex tier capacity exceeded. This is a temporary condition; please retry shortly or use the on_demand service tier.".to_owned(),
                "capacity_exceeded",
                "flex_tier_capacity_exceeded",
            ),
            499 => (
                "Request cancelled".to_owned(),
                "invalid_request_error",
                "request_cancelled",
            ),
            500 => (
                "Internal Server Error".to_owned(),
                "internal_server_error",
                "internal_server_error",
            ),
            502 => ("Bad Gateway".to_owned(), "internal_server_error", "bad_gateway"),
            503 => (
                "Service Unavailable".to_owned(),
                "internal_server_error",
                "service_unavailable",
            ),
            s if s >= 500 => (
                "Internal Server Error".to_owned(),
                "internal_server_error",
                "internal_server_error",
            ),
            _ => (
                "The request could not be processed.".to_owned(),
                "invalid_request_error",
                "invalid_request_error",
            ),
        };
        GroqError {
            status,
            message,
            kind,
            code: Some(code),
            param: None,
        }
    }
}

fn error_response(err: &GroqError, retry_after: Option<Duration>, extra: HeaderMap) -> Response {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, Json(err.body())).into_response();
    resp.headers_mut().extend(extra);
    if let Some(d) = retry_after {
        // Whole seconds, rounded up so a client that obeys never comes back too early.
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Validation.

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// Checks the request the way Groq's schema validation does (messages modelled on its
/// wording), then the model. Lenient about everything the fake does not use.
fn validate<'a>(
    cfg: &FakeGroqConfig,
    body: Option<&'a Value>,
) -> Result<&'a Map<String, Value>, GroqError> {
    let Some(Value::Object(obj)) = body else {
        return Err(GroqError::invalid(
            "We could not parse the JSON body of your request. The request body must be a JSON object.".to_owned(),
            None,
        ));
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.as_str(),
        None | Some(Value::Null) => {
            return Err(GroqError::invalid(
                "property 'model' is missing".to_owned(),
                Some("model"),
            ))
        }
        Some(_) => {
            return Err(GroqError::invalid(
                "'model' : value must be a non-empty string".to_owned(),
                Some("model"),
            ))
        }
    };
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) => m,
        None | Some(Value::Null) => {
            return Err(GroqError::invalid(
                "property 'messages' is missing".to_owned(),
                Some("messages"),
            ))
        }
        Some(_) => {
            return Err(GroqError::invalid(
                "'messages' : value must be an array".to_owned(),
                Some("messages"),
            ))
        }
    };
    if messages.is_empty() {
        return Err(GroqError::invalid(
            "'messages' : minimum number of items is 1".to_owned(),
            Some("messages"),
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        validate_message(i, m)?;
    }
    if !matches!(obj.get("stream"), None | Some(Value::Null | Value::Bool(_))) {
        return Err(GroqError::invalid(
            "'stream' : value must be a boolean".to_owned(),
            Some("stream"),
        ));
    }
    if let Some(n) = obj.get("n").filter(|v| !v.is_null()) {
        if n.as_u64() != Some(1) {
            return Err(GroqError::invalid(
                "'n' : number must be at most 1".to_owned(),
                Some("n"),
            ));
        }
    }
    validate_tools(obj.get("tools"))?;
    if let Some(f) = obj.get("response_format").filter(|v| !v.is_null()) {
        let kind = f.get("type").and_then(Value::as_str);
        if !matches!(kind, Some("text" | "json_object" | "json_schema")) {
            return Err(GroqError::invalid(
                "'response_format.type' : value must be one of 'text', 'json_object', 'json_schema'".to_owned(),
                Some("response_format"),
            ));
        }
    }
    if !cfg.models.iter().any(|m| m == model) {
        return Err(GroqError::model_not_found(model));
    }
    Ok(obj)
}

fn validate_message(i: usize, m: &Value) -> Result<(), GroqError> {
    let at = format!("messages.{i}");
    let Some(m) = m.as_object() else {
        return Err(GroqError::invalid(
            format!("'{at}' : value must be an object"),
            Some(&at),
        ));
    };
    let role = m.get("role").and_then(Value::as_str);
    let Some(role) = role.filter(|r| ROLES.contains(r)) else {
        return Err(GroqError::invalid(
            format!("'{at}' : discriminator property 'role' has invalid value"),
            Some(&at),
        ));
    };
    let content = m.get("content").filter(|c| !c.is_null());
    let content_ok = matches!(content, Some(Value::String(_) | Value::Array(_)));
    let needs_content = match role {
        // An assistant turn may be only tool calls.
        "assistant" => m.get("tool_calls").is_none_or(Value::is_null),
        _ => true,
    };
    if needs_content && !content_ok {
        return Err(GroqError::invalid(
            format!(
                "'{at}' : for 'role:{role}' the following must be satisfied[('{at}.content' : property 'content' is missing)]"
            ),
            Some(&format!("{at}.content")),
        ));
    }
    if role == "tool" && !m.get("tool_call_id").is_some_and(Value::is_string) {
        return Err(GroqError::invalid(
            format!(
                "'{at}' : for 'role:tool' the following must be satisfied[('{at}.tool_call_id' : property 'tool_call_id' is missing)]"
            ),
            Some(&format!("{at}.tool_call_id")),
        ));
    }
    Ok(())
}

fn validate_tools(tools: Option<&Value>) -> Result<(), GroqError> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(t)) => t,
        Some(_) => {
            return Err(GroqError::invalid(
                "'tools' : value must be an array".to_owned(),
                Some("tools"),
            ))
        }
    };
    for (i, t) in tools.iter().enumerate() {
        let ok = t.get("type").and_then(Value::as_str) == Some("function")
            && t.get("function")
                .and_then(|f| f.get("name"))
                .is_some_and(Value::is_string);
        if !ok {
            return Err(GroqError::invalid(
                format!("'tools.{i}' : a tool needs 'type': 'function' and 'function.name'"),
                Some(&format!("tools.{i}")),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// chat/completions.

/// What to do with one request, decided under the lock.
enum Decision {
    Error {
        err: GroqError,
        retry_after: Option<Duration>,
    },
    Stall,
    Answer {
        plan: Plan,
        mid_stream_error: bool,
        ttft: Duration,
        inter_token: Duration,
    },
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let received_at = Instant::now();
    let request_id = new_request_id();
    let body: Option<Value> = serde_json::from_slice(&raw).ok();
    let stream = body
        .as_ref()
        .and_then(|b| b.get("stream"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let model = body
        .as_ref()
        .and_then(|b| b.get("model"))
        .and_then(Value::as_str)
        .map(str::to_owned);

    let (idx, decision, mut out_headers) = {
        let mut st = shared.lock();
        let idx = st.requests.len();
        st.requests.push(RecordedRequest {
            request_id: request_id.clone(),
            body: body.clone().unwrap_or(Value::Null),
            model: model.clone(),
            stream,
            status: 0,
            fault: None,
            source: None,
            tokens_sent: 0,
            finish_reason: None,
            completed: false,
            cancelled: false,
            received_at,
            first_token_at: None,
            finished_at: None,
        });
        let (decision, injected) = decide(
            &shared.cfg,
            &mut st,
            &headers,
            body.as_ref(),
            stream,
            received_at,
        );
        let rate = st.limits.headers(received_at);
        let r = &mut st.requests[idx];
        match &decision {
            Decision::Error { err, .. } => {
                r.status = err.status;
                r.fault = injected.then_some(InjectedFault::Status(err.status));
                r.finished_at = Some(received_at);
                r.completed = true;
            }
            Decision::Stall => {
                r.status = 200;
                r.fault = Some(InjectedFault::Stall);
            }
            Decision::Answer {
                plan,
                mid_stream_error,
                ..
            } => {
                r.status = 200;
                r.source = Some(plan.source);
                r.fault = mid_stream_error.then_some(InjectedFault::MidStreamError);
            }
        }
        (idx, decision, rate)
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        out_headers.insert("x-request-id", v);
    }

    let (plan, mid_stream_error, ttft, inter_token) = match decision {
        Decision::Error { err, retry_after } => {
            return error_response(&err, retry_after, out_headers)
        }
        Decision::Stall => {
            return ok_response(out_headers, stream, stream::stall(shared, idx));
        }
        Decision::Answer {
            plan,
            mid_stream_error,
            ttft,
            inter_token,
        } => (plan, mid_stream_error, ttft, inter_token),
    };
    let meta = Meta {
        completion_id: format!("chatcmpl-{}", uuid::Uuid::new_v4()),
        request_id,
        created: chrono::Utc::now().timestamp(),
        model: model.unwrap_or_default(),
        include_usage: body
            .as_ref()
            .and_then(|b| b.get("stream_options"))
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    if stream {
        let job = stream::Job {
            shared,
            idx,
            plan,
            meta,
            mid_stream_error,
            ttft,
            inter_token,
            received_at,
        };
        return ok_response(out_headers, true, stream::spawn(job));
    }
    let completion = complete(shared, idx, plan, meta, ttft, inter_token, received_at).await;
    let mut resp = Json(completion).into_response();
    resp.headers_mut().extend(out_headers);
    resp
}

/// Takes every decision about one request. The bool says whether an error was injected.
fn decide(
    cfg: &FakeGroqConfig,
    st: &mut FakeState,
    headers: &HeaderMap,
    body: Option<&Value>,
    stream: bool,
    now: Instant,
) -> (Decision, bool) {
    if !authorized(headers, &cfg.api_key) {
        let err = GroqError::unauthorized();
        return (
            Decision::Error {
                err,
                retry_after: None,
            },
            false,
        );
    }
    // Limits are per organisation, so only authorised requests count against them.
    st.limits.take_request(now);
    if let Some(f) = st.fail.as_mut() {
        f.remaining -= 1;
        let (status, retry_after) = (f.status, f.retry_after);
        if f.remaining == 0 {
            st.fail = None;
        }
        let model = body
            .and_then(|b| b.get("model"))
            .and_then(Value::as_str)
            .unwrap_or("llama-3.3-70b-versatile");
        let err = GroqError::injected(status, model, retry_after);
        return (Decision::Error { err, retry_after }, true);
    }
    let obj = match validate(cfg, body) {
        Ok(o) => o,
        Err(err) => {
            return (
                Decision::Error {
                    err,
                    retry_after: None,
                },
                false,
            )
        }
    };
    if st.stalls > 0 {
        st.stalls -= 1;
        return (Decision::Stall, false);
    }
    let mid_stream_error = stream && st.mid_stream_errors > 0;
    // Classifications (JSON mode) never take a scripted reply: the queue scripts the
    // conversation, and a voice agent classifies every caller turn alongside it.
    let json_mode = obj
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        == Some("json_object");
    // A broken stream leaves the scripted reply queued, so the client's retry gets it.
    let scripted = if json_mode {
        None
    } else if mid_stream_error {
        st.mid_stream_errors -= 1;
        st.replies.front().cloned()
    } else {
        st.replies.pop_front()
    };
    let body = Value::Object(obj.clone());
    let plan = reply::plan(cfg, scripted, &body);
    st.limits.take_tokens(
        now,
        plan.prompt_tokens.saturating_add(plan.completion_tokens),
    );
    let ttft = match st.classify_latency {
        Some(latency) if json_mode => latency,
        _ => st.ttft,
    };
    let decision = Decision::Answer {
        plan,
        mid_stream_error,
        ttft,
        inter_token: st.inter_token,
    };
    (decision, false)
}

fn authorized(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| k.trim() == key)
}

/// A 200 whose body comes later (or never): SSE for streams, JSON otherwise.
fn ok_response(extra: HeaderMap, stream: bool, body: Body) -> Response {
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if stream {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    h.extend(extra);
    resp
}

/// The non-streaming answer, sent when the equivalent stream would have ended.
async fn complete(
    shared: Arc<Shared>,
    idx: usize,
    plan: Plan,
    meta: Meta,
    ttft: Duration,
    inter_token: Duration,
    received_at: Instant,
) -> Value {
    let mut guard = CancelOnDrop {
        shared: shared.clone(),
        idx,
        armed: true,
    };
    let wait = ttft + inter_token * plan.later_deltas();
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        // Stopping answers at once rather than holding graceful shutdown up.
        () = state::stopped(shared.stop.clone()) => {}
    }
    let end = Instant::now();
    let first = end
        .checked_sub(inter_token * plan.later_deltas())
        .unwrap_or(end);
    let first = first.max(received_at);
    let mut message = json!({"role": "assistant", "content": plan.content()});
    if !plan.tool_calls.is_empty() {
        message["tool_calls"] = plan
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
    }
    let tokens = u32::try_from(plan.tokens.len()).unwrap_or(u32::MAX);
    let finish = plan.finish_reason;
    let body = json!({
        "id": meta.completion_id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": stream::usage(&plan, received_at, first, end),
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "x_groq": {"id": meta.request_id},
    });
    shared.update(idx, |r| {
        r.tokens_sent = tokens;
        r.first_token_at = (tokens > 0).then_some(first);
        r.finish_reason = Some(finish.to_owned());
        r.completed = true;
        r.finished_at = Some(end);
    });
    guard.armed = false;
    body
}

/// `req_` and 26 lowercase alphanumerics, the shape of Groq's ULID-based ids.
fn new_request_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("req_{}", &hex[..26])
}

// ---------------------------------------------------------------------------------------------
// Other routes.

/// `GET /openai/v1/models`: the configured models, for clients that check them at startup.
async fn list_models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let rate = shared.lock().limits.headers(Instant::now());
    if !authorized(&headers, &shared.cfg.api_key) {
        return error_response(&GroqError::unauthorized(), None, rate);
    }
    let data: Vec<Value> = shared
        .cfg
        .models
        .iter()
        .map(|m| {
            json!({"id": m, "object": "model", "created": 1_693_721_698, "owned_by": "Meta",
                   "active": true, "context_window": 131_072})
        })
        .collect();
    let mut resp = Json(json!({"object": "list", "data": data})).into_response();
    resp.headers_mut().extend(rate);
    resp
}

async fn unknown_url(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    let rate = shared.lock().limits.headers(Instant::now());
    let err = GroqError {
        status: 404,
        message: format!(
            "Unknown request URL: {method} {}. Please check the URL for typos, or see the docs at https://console.groq.com/docs/",
            uri.path()
        ),
        kind: "invalid_request_error",
        code: Some("unknown_url"),
        param: None,
    };
    error_response(&err, None, rate)
}
