//! The HTTP surface (section 4): routes, Bearer auth, request validation, Groq error bodies,
//! injected failures and stalls, rate-limit headers on every response, and the non-streaming
//! `chat.completion` answer. Streams are handed to [`super::stream`].
//!
//! Every decision about a request is taken in one critical section ([`decide`]), so concurrent
//! requests take scripted replies, scripted structured answers and armed faults in a single,
//! well-defined arrival order.
//!
//! Structured outputs (section 11) are validated here: the `json_schema` spec's shape, whether
//! the model supports `strict: true` ([`FakeGroqConfig::strict_models`]) and strict mode's rule
//! that every object requires all of its properties and sets `additionalProperties: false`.
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
    let mut strict_schema = None;
    if let Some(f) = obj.get("response_format").filter(|v| !v.is_null()) {
        let kind = f.get("type").and_then(Value::as_str);
        if !matches!(kind, Some("text" | "json_object" | "json_schema")) {
            return Err(GroqError::invalid(
                "'response_format.type' : value must be one of 'text', 'json_object', 'json_schema'".to_owned(),
                Some("response_format"),
            ));
        }
        if kind == Some("json_schema") {
            strict_schema = validate_json_schema(f.get("json_schema"))?;
        }
    }
    if !cfg.models.iter().any(|m| m == model) {
        return Err(GroqError::model_not_found(model));
    }
    if let Some(schema) = strict_schema {
        if !cfg.strict_models.iter().any(|m| m == model) {
            return Err(GroqError::invalid(
                format!(
                    "The model `{model}` does not support strict json_schema (constrained decoding). Use one of [{}], or set 'strict' to false for best-effort structured outputs.",
                    cfg.strict_models.join(", ")
                ),
                Some("response_format.json_schema.strict"),
            ));
        }
        check_strict_schema(schema, "response_format.json_schema.schema")?;
    }
    Ok(obj)
}

/// Checks `response_format.json_schema` (section 11): an object with a `name` of 1 to 64
/// letters, digits, `_` or `-`, an object `schema` and an optional boolean `strict`. Returns
/// the schema when `strict` is true, for the checks that depend on the model.
fn validate_json_schema(spec: Option<&Value>) -> Result<Option<&Value>, GroqError> {
    const AT: &str = "response_format.json_schema";
    let spec = match spec {
        Some(Value::Object(spec)) => spec,
        None | Some(Value::Null) => {
            return Err(GroqError::invalid(
                format!("property '{AT}' is missing"),
                Some(AT),
            ))
        }
        Some(_) => {
            return Err(GroqError::invalid(
                format!("'{AT}' : value must be an object"),
                Some(AT),
            ))
        }
    };
    let name_at = format!("{AT}.name");
    match spec.get("name") {
        Some(Value::String(name)) if valid_schema_name(name) => {}
        None | Some(Value::Null) => {
            return Err(GroqError::invalid(
                format!("property '{name_at}' is missing"),
                Some(&name_at),
            ))
        }
        Some(Value::String(_)) => {
            return Err(GroqError::invalid(
                format!("'{name_at}' : string must match the pattern ^[A-Za-z0-9_-]{{1,64}}$"),
                Some(&name_at),
            ))
        }
        Some(_) => {
            return Err(GroqError::invalid(
                format!("'{name_at}' : value must be a string"),
                Some(&name_at),
            ))
        }
    }
    let schema_at = format!("{AT}.schema");
    let schema = match spec.get("schema") {
        Some(schema @ Value::Object(_)) => schema,
        None | Some(Value::Null) => {
            return Err(GroqError::invalid(
                format!("property '{schema_at}' is missing"),
                Some(&schema_at),
            ))
        }
        Some(_) => {
            return Err(GroqError::invalid(
                format!("'{schema_at}' : value must be an object"),
                Some(&schema_at),
            ))
        }
    };
    match spec.get("strict") {
        None | Some(Value::Null | Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(schema)),
        Some(_) => {
            let at = format!("{AT}.strict");
            Err(GroqError::invalid(
                format!("'{at}' : value must be a boolean"),
                Some(&at),
            ))
        }
    }
}

/// `^[A-Za-z0-9_-]{1,64}$`.
fn valid_schema_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Strict mode's rule (section 11): every object schema, found through `properties`, `items`,
/// `anyOf`/`oneOf`/`allOf` and `$defs`/`definitions`, lists each of its properties in
/// `required` and sets `additionalProperties: false`. The error names the first offending
/// schema by its dotted path from `at`.
fn check_strict_schema(schema: &Value, at: &str) -> Result<(), GroqError> {
    let Some(s) = schema.as_object() else {
        return Ok(());
    };
    let properties = s.get("properties").and_then(Value::as_object);
    let is_object = reply::schema_type(s) == Some("object")
        || matches!(s.get("type"), Some(Value::Array(t)) if t.iter().any(|t| t == "object"));
    if is_object {
        if s.get("additionalProperties") != Some(&Value::Bool(false)) {
            return Err(GroqError::invalid(
                format!("'{at}' : strict json_schema requires 'additionalProperties': false on every object"),
                Some(at),
            ));
        }
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let missing: Vec<String> = properties
            .into_iter()
            .flat_map(|p| p.keys())
            .filter(|k| !required.contains(&k.as_str()))
            .map(|k| format!("'{k}'"))
            .collect();
        if !missing.is_empty() {
            return Err(GroqError::invalid(
                format!(
                    "'{at}' : strict json_schema requires every property to be listed in 'required'; missing: {}",
                    missing.join(", ")
                ),
                Some(at),
            ));
        }
    }
    for (name, sub) in properties.into_iter().flatten() {
        check_strict_schema(sub, &format!("{at}.properties.{name}"))?;
    }
    match s.get("items") {
        Some(Value::Array(items)) => {
            for (i, sub) in items.iter().enumerate() {
                check_strict_schema(sub, &format!("{at}.items.{i}"))?;
            }
        }
        Some(items) => check_strict_schema(items, &format!("{at}.items"))?,
        None => {}
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for (i, sub) in s
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            check_strict_schema(sub, &format!("{at}.{key}.{i}"))?;
        }
    }
    for key in ["$defs", "definitions"] {
        for (name, sub) in s.get(key).and_then(Value::as_object).into_iter().flatten() {
            check_strict_schema(sub, &format!("{at}.{key}.{name}"))?;
        }
    }
    Ok(())
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
            trace: crate::TraceHeaders::of(&headers),
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
    let format = obj
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str);
    // Classifications (JSON mode) never take a scripted reply: the queue scripts the
    // conversation, and a voice agent classifies every caller turn alongside it.
    let json_mode = format == Some("json_object");
    let body = Value::Object(obj.clone());
    // Structured outputs have a queue of their own and never touch the conversation's. A
    // broken stream leaves the scripted answer queued, so the client's retry gets it.
    let plan = if format == Some("json_schema") {
        let scripted = if mid_stream_error {
            st.mid_stream_errors -= 1;
            st.structured.front().cloned()
        } else {
            st.structured.pop_front()
        };
        reply::plan_structured(scripted, &body)
    } else {
        let scripted = if json_mode {
            if mid_stream_error {
                st.mid_stream_errors -= 1;
            }
            None
        } else if mid_stream_error {
            st.mid_stream_errors -= 1;
            st.replies.front().cloned()
        } else {
            st.replies.pop_front()
        };
        reply::plan(cfg, scripted, &body)
    };
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

#[cfg(test)]
mod tests {
    use super::super::reply::tests::{analysis_schema, conforms};
    use super::super::{FakeGroq, FakeGroqConfig, Reply, ReplySource, StructuredAnswer};
    use super::*;

    const STRICT_MODEL: &str = "openai/gpt-oss-20b";
    const PLAIN_MODEL: &str = "llama-3.3-70b-versatile";

    async fn start() -> FakeGroq {
        let fake = FakeGroq::start(FakeGroqConfig::default())
            .await
            .expect("fake starts");
        fake.set_latency(Duration::from_millis(5), Duration::from_millis(1));
        fake
    }

    async fn send(fake: &FakeGroq, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/chat/completions", fake.base_url()))
            .bearer_auth(fake.api_key())
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Status and JSON body of a non-streaming request.
    async fn post(fake: &FakeGroq, body: &Value) -> (u16, Value) {
        let resp = send(fake, body).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }

    /// The concatenated content of a streamed answer, and whether it ended with `[DONE]`.
    async fn post_stream(fake: &FakeGroq, body: &Value) -> (String, bool) {
        let text = send(fake, body).await.text().await.expect("stream body");
        let mut content = String::new();
        let mut done = false;
        for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let chunk: Value = serde_json::from_str(data).expect("chunk is JSON");
            if let Some(c) = chunk["choices"][0]["delta"]["content"].as_str() {
                content.push_str(c);
            }
        }
        (content, done)
    }

    fn structured(model: &str, strict: Option<bool>, schema: &Value) -> Value {
        let mut spec = json!({"name": "call_analysis", "schema": schema});
        if let Some(strict) = strict {
            spec["strict"] = json!(strict);
        }
        json!({
            "model": model,
            "stream": false,
            "messages": [
                {"role": "system", "content": "Analyse the call transcript."},
                {"role": "user", "content": "Caller: I'd like to book a cleaning on Tuesday."},
            ],
            "response_format": {"type": "json_schema", "json_schema": spec},
        })
    }

    fn conversation(user: &str) -> Value {
        json!({"model": PLAIN_MODEL, "stream": false,
               "messages": [{"role": "user", "content": user}]})
    }

    fn strict_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "outcome": {"type": "string", "enum": ["booked", "lost"]},
                "caller": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 18}},
                    "required": ["name", "age"],
                    "additionalProperties": false,
                },
                "topics": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"label": {"type": "string"}},
                        "required": ["label"],
                        "additionalProperties": false,
                    },
                },
            },
            "required": ["outcome", "caller", "topics"],
            "additionalProperties": false,
        })
    }

    fn content(body: &Value) -> &str {
        body["choices"][0]["message"]["content"]
            .as_str()
            .expect("string content")
    }

    fn assert_invalid(status: u16, body: &Value, param: &str, words: &str) {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["error"]["param"], param, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{message}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strict_json_schema_needs_a_model_that_supports_it() {
        let fake = start().await;
        fake.push_structured(StructuredAnswer::Json(json!({"outcome": "booked"})));
        let (status, body) = post(
            &fake,
            &structured(PLAIN_MODEL, Some(true), &strict_schema()),
        )
        .await;
        assert_invalid(
            status,
            &body,
            "response_format.json_schema.strict",
            "does not support strict json_schema",
        );
        assert_eq!(fake.pending_structured(), 1);

        // The same request in best-effort mode, or strict on a model that has it, is answered.
        for (model, strict) in [
            (PLAIN_MODEL, Some(false)),
            (PLAIN_MODEL, None),
            (STRICT_MODEL, Some(true)),
        ] {
            let (status, _) = post(&fake, &structured(model, strict, &strict_schema())).await;
            assert_eq!(status, 200, "{model} strict {strict:?}");
        }
        // An unknown model is still 404, strict or not.
        let (status, _) = post(&fake, &structured("gpt-4o", Some(true), &strict_schema())).await;
        assert_eq!(status, 404);
        let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![400, 200, 200, 200, 404]);
        fake.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strict_schemas_must_require_everything_and_forbid_extras() {
        let fake = start().await;
        let at = "response_format.json_schema.schema";

        let mut schema = strict_schema();
        schema["properties"]["caller"]["required"] = json!(["name"]);
        let (status, body) = post(&fake, &structured(STRICT_MODEL, Some(true), &schema)).await;
        assert_invalid(status, &body, &format!("{at}.properties.caller"), "'age'");

        let mut schema = strict_schema();
        schema["properties"]["topics"]["items"]
            .as_object_mut()
            .unwrap()
            .remove("additionalProperties");
        let (status, body) = post(&fake, &structured(STRICT_MODEL, Some(true), &schema)).await;
        assert_invalid(
            status,
            &body,
            &format!("{at}.properties.topics.items"),
            "'additionalProperties': false",
        );

        let mut schema = strict_schema();
        schema["required"] = json!(["outcome", "caller"]);
        let (status, body) = post(&fake, &structured(STRICT_MODEL, Some(true), &schema)).await;
        assert_invalid(status, &body, at, "'topics'");

        // Best effort accepts the same schema.
        let (status, _) = post(&fake, &structured(STRICT_MODEL, Some(false), &schema)).await;
        assert_eq!(status, 200);
        fake.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_schema_specs_are_validated() {
        let fake = start().await;
        let at = "response_format.json_schema";
        let cases = [
            (json!({"type": "json_schema"}), at.to_owned(), "missing"),
            (
                json!({"type": "json_schema", "json_schema": "x"}),
                at.to_owned(),
                "object",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"schema": {}}}),
                format!("{at}.name"),
                "missing",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "call analysis", "schema": {}}}),
                format!("{at}.name"),
                "pattern",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a".repeat(65), "schema": {}}}),
                format!("{at}.name"),
                "pattern",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "", "schema": {}}}),
                format!("{at}.name"),
                "pattern",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": 7, "schema": {}}}),
                format!("{at}.name"),
                "string",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a"}}),
                format!("{at}.schema"),
                "missing",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a", "schema": []}}),
                format!("{at}.schema"),
                "object",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "strict": "yes"}}),
                format!("{at}.strict"),
                "boolean",
            ),
        ];
        for (format, param, words) in &cases {
            let mut body = conversation("hello");
            body["response_format"] = format.clone();
            let (status, err) = post(&fake, &body).await;
            assert_invalid(status, &err, param, words);
        }
        let ok = json!({"type": "json_schema",
                        "json_schema": {"name": "Call-analysis_2", "schema": {}, "strict": null}});
        let mut body = conversation("hello");
        body["response_format"] = ok;
        assert_eq!(post(&fake, &body).await.0, 200);
        fake.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scripted_structured_answers_come_back_verbatim_in_order() {
        let fake = start().await;
        let first =
            json!({"outcome": "booked", "caller": {"name": "Ana", "age": 41}, "topics": []});
        fake.push_structured(StructuredAnswer::Json(first.clone()));
        fake.push_structured(StructuredAnswer::Raw(
            "{\"outcome\": \"booked\", ".to_owned(),
        ));
        fake.push_structured(StructuredAnswer::Raw(
            r#"{"outcome":"maybe","extra":1}"#.to_owned(),
        ));
        fake.push_structured(StructuredAnswer::Json(json!({"streamed": ["a, b", 2]})));
        assert_eq!(fake.pending_structured(), 4);

        let request = structured(STRICT_MODEL, Some(true), &strict_schema());
        let (status, body) = post(&fake, &request).await;
        assert_eq!(status, 200);
        assert_eq!(content(&body), first.to_string());
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 1);
        assert_eq!(
            content(&post(&fake, &request).await.1),
            "{\"outcome\": \"booked\", "
        );
        assert_eq!(
            content(&post(&fake, &request).await.1),
            r#"{"outcome":"maybe","extra":1}"#
        );
        let mut streamed = request.clone();
        streamed["stream"] = json!(true);
        let (text, done) = post_stream(&fake, &streamed).await;
        assert!(done);
        assert_eq!(text, r#"{"streamed":["a, b",2]}"#);
        assert_eq!(fake.pending_structured(), 0);

        let requests = fake.requests();
        assert!(requests
            .iter()
            .all(|r| r.source == Some(ReplySource::Structured)));
        assert!(requests.iter().all(|r| r.completed && r.status == 200));
        assert!(requests
            .iter()
            .all(|r| r.finish_reason.as_deref() == Some("stop")));
        fake.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_default_answer_is_an_instance_of_the_schema() {
        let fake = start().await;
        let schema = analysis_schema();
        let (status, body) = post(&fake, &structured(PLAIN_MODEL, None, &schema)).await;
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(content(&body)).expect("JSON content");
        conforms(&schema, &answer, "$").unwrap();
        assert_eq!(answer["outcome"], "booked");

        let schema = strict_schema();
        let mut request = structured(STRICT_MODEL, Some(true), &schema);
        request["stream"] = json!(true);
        let (text, done) = post_stream(&fake, &request).await;
        assert!(done);
        let answer: Value = serde_json::from_str(&text).expect("streamed JSON");
        conforms(&schema, &answer, "$").unwrap();
        assert_eq!(answer["caller"]["age"], 18);

        let sources: Vec<_> = fake.requests().iter().map(|r| r.source).collect();
        assert_eq!(sources, vec![Some(ReplySource::SchemaInstance); 2]);
        fake.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queues_do_not_mix() {
        let fake = start().await;
        fake.push_reply(Reply::text("Sure, Tuesday at ten works."));
        fake.push_structured(StructuredAnswer::Json(json!({"outcome": "lost"})));

        // A JSON-mode classification takes neither queue.
        let mut classify = conversation("Thanks, that was great!");
        classify["response_format"] = json!({"type": "json_object"});
        let (_, body) = post(&fake, &classify).await;
        let verdict: Value = serde_json::from_str(content(&body)).unwrap();
        assert_eq!(verdict["label"], "positive");
        assert_eq!((fake.pending_replies(), fake.pending_structured()), (1, 1));

        // A structured-output request takes only its own.
        let request = structured(PLAIN_MODEL, Some(false), &strict_schema());
        let (_, body) = post(&fake, &request).await;
        assert_eq!(content(&body), r#"{"outcome":"lost"}"#);
        assert_eq!((fake.pending_replies(), fake.pending_structured()), (1, 0));
        // With its queue empty it generates rather than borrowing the conversation's reply.
        let (_, body) = post(&fake, &request).await;
        conforms(
            &strict_schema(),
            &serde_json::from_str(content(&body)).unwrap(),
            "$",
        )
        .unwrap();
        assert_eq!(fake.pending_replies(), 1);

        // A conversation request takes the reply and leaves a structured answer alone.
        fake.push_structured(StructuredAnswer::Raw("not json".to_owned()));
        let (_, body) = post(&fake, &conversation("Can I come Tuesday?")).await;
        assert_eq!(content(&body), "Sure, Tuesday at ten works.");
        assert_eq!((fake.pending_replies(), fake.pending_structured()), (0, 1));

        let sources: Vec<_> = fake.requests().iter().map(|r| r.source).collect();
        assert_eq!(
            sources,
            vec![
                Some(ReplySource::Sentiment),
                Some(ReplySource::Structured),
                Some(ReplySource::SchemaInstance),
                Some(ReplySource::Scripted),
            ]
        );
        fake.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn faults_apply_to_structured_requests_and_keep_their_answer_queued() {
        let fake = start().await;
        fake.push_structured(StructuredAnswer::Json(
            json!({"outcome": "booked", "n": [1, 2, 3]}),
        ));
        let request = structured(STRICT_MODEL, Some(true), &strict_schema());

        fake.fail_next(1, 503, None);
        let (status, body) = post(&fake, &request).await;
        assert_eq!(status, 503);
        assert_eq!(body["error"]["code"], "service_unavailable");
        assert_eq!(fake.pending_structured(), 1);

        fake.error_mid_stream_next();
        let mut streamed = request.clone();
        streamed["stream"] = json!(true);
        let (_, done) = post_stream(&fake, &streamed).await;
        assert!(!done, "the stream breaks off");
        assert_eq!(fake.pending_structured(), 1);

        fake.stall_next();
        let stalled = reqwest::Client::new()
            .post(format!("{}/chat/completions", fake.base_url()))
            .bearer_auth(fake.api_key())
            .json(&request)
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        if let Ok(resp) = stalled {
            assert!(
                resp.bytes().await.is_err(),
                "a stalled answer never completes"
            );
        }
        assert_eq!(fake.pending_structured(), 1);

        let (status, body) = post(&fake, &request).await;
        assert_eq!(status, 200);
        assert_eq!(content(&body), r#"{"n":[1,2,3],"outcome":"booked"}"#);
        assert_eq!(fake.pending_structured(), 0);

        let faults: Vec<_> = fake.requests().iter().map(|r| r.fault).collect();
        assert_eq!(
            faults,
            vec![
                Some(InjectedFault::Status(503)),
                Some(InjectedFault::MidStreamError),
                Some(InjectedFault::Stall),
                None,
            ]
        );
        fake.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_armed_stream_error_breaks_one_json_mode_stream_only() {
        let fake = start().await;
        let request = json!({
            "model": "llama-3.1-8b-instant",
            "stream": true,
            "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "I am happy"}],
        });
        fake.error_mid_stream_next();
        let (_, first) = post_stream(&fake, &request).await;
        assert!(!first, "the armed error breaks the first stream");
        let (_, second) = post_stream(&fake, &request).await;
        assert!(second, "and only the first");
        fake.shutdown().await;
    }
}
