//! The HTTP layer (axum). It holds the [`Engine`] handle and nothing else that reaches a
//! database: handlers parse, call the engine, and map the answer. Every response carries an
//! `x-request-id`; every error uses one envelope ([`error::ApiError`]).

mod accounts;
mod admin;
pub mod auth;
mod billing;
mod calls;
mod catalog;
pub mod error;
mod extract;
pub mod forward;
mod learning;
pub mod openapi;
mod sessions;
mod users;
pub mod webhook_endpoints;
pub mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use iace_actors::engine::{Engine, MAX_PAGE};
use opentelemetry::context::FutureExt as _;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use error::{ApiError, REQUEST_ID};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A dependency `/ready` checks besides the database (which the engine checks).
#[async_trait]
pub trait ReadyCheck: Send + Sync {
    /// Name in the `/ready` answer.
    fn name(&self) -> &'static str;
    /// `Err(reason)` when unreachable.
    async fn check(&self) -> Result<(), String>;
}

/// Unready while the node runs as many calls as it may (`IACE_UNREADY_AT_CAPACITY`): a load
/// balancer then sends new work to the other nodes.
pub struct CapacityReady(pub Engine);

#[async_trait]
impl ReadyCheck for CapacityReady {
    fn name(&self) -> &'static str {
        "calls"
    }
    async fn check(&self) -> Result<(), String> {
        let load = self.0.load();
        if load.full() {
            Err(format!(
                "at capacity: {} calls of {}",
                load.running + load.admitting,
                load.max
            ))
        } else {
            Ok(())
        }
    }
}

/// What handlers share. Cloned for every request (by each middleware and extractor that takes
/// it): its fields are handles, none of which allocates when cloned.
#[derive(Clone)]
pub struct AppState {
    /// The engine: the only way to state.
    pub engine: Engine,
    /// Metrics registry served on `/metrics`.
    pub registry: Registry,
    /// Extra readiness checks (Redis, ...).
    pub ready_checks: Arc<[Arc<dyn ReadyCheck>]>,
    /// Telnyx webhook verification, when Telnyx is the carrier.
    pub telnyx: Option<webhooks::TelnyxIngress>,
    /// Outcomes and answer times of every vendor's webhooks.
    pub webhooks: webhooks::WebhookMetrics,
    /// Operator token of `/v1/admin/*` (`None`: the operator API is off).
    pub admin_token: Option<Arc<str>>,
    /// Sign-in keys, rate limits, billing/CRM webhook secrets.
    pub security: Arc<crate::auth::Security>,
    /// Browser origins allowed to call the API (`IACE_CORS_ORIGINS`); empty: none.
    pub cors_origins: Arc<[HeaderValue]>,
    /// Requests to the other nodes of the cluster (forwarding, pokes); `None`: this node
    /// forwards nothing and takes no pokes.
    pub nodes: Option<Arc<crate::cluster::NodeClient>>,
    /// Which URLs customers may have the server call (`IACE_ALLOW_PRIVATE_URLS`).
    pub outbound: crate::outbound::guard::Guard,
}

#[derive(Clone)]
struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

/// Builds the API router; registers HTTP metrics in `state.registry`.
pub fn router(state: AppState) -> Result<Router, prometheus::Error> {
    let metrics = HttpMetrics {
        requests: IntCounterVec::new(
            Opts::new(
                "iace_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["method", "route", "status"],
        )?,
        latency: HistogramVec::new(
            HistogramOpts::new(
                "iace_http_request_duration_seconds",
                "HTTP latency by route",
            ),
            &["route"],
        )?,
    };
    state
        .registry
        .register(Box::new(metrics.requests.clone()))?;
    state.registry.register(Box::new(metrics.latency.clone()))?;

    let v1 = Router::new()
        .route("/calls", post(calls::create).get(calls::list))
        .route("/calls/{id}", get(calls::get))
        .route("/calls/{id}/events", get(calls::events))
        .route("/calls/{id}/transcript", get(calls::transcript))
        .route("/calls/{id}/hangup", post(calls::hangup))
        .route("/calls/{id}/transfer", post(calls::transfer))
        .route(
            "/phone-numbers",
            post(catalog::create_phone_number).get(catalog::list_phone_numbers),
        )
        .route(
            "/phone-numbers/{id}",
            axum::routing::delete(catalog::delete_phone_number),
        )
        .route("/webhooks/telnyx", post(webhooks::telnyx))
        .route("/webhooks/stripe", post(billing::stripe))
        .route("/webhooks/hubspot", post(billing::hubspot))
        .route("/auth/login", post(sessions::login))
        .route("/auth/refresh", post(sessions::refresh))
        .route("/auth/revoke", post(sessions::revoke))
        .route("/auth/revoke-all", post(sessions::revoke_all))
        .route("/me", get(sessions::me))
        .route("/me/password", post(users::change_password))
        .route("/users", post(users::create).get(users::list))
        .route("/users/{id}", axum::routing::patch(users::update))
        .route(
            "/organization",
            get(accounts::get_organization).patch(accounts::update_organization),
        )
        .route(
            "/api-keys",
            post(accounts::create_key).get(accounts::list_keys),
        )
        .route(
            "/api-keys/{id}",
            axum::routing::delete(accounts::revoke_key),
        )
        .route("/admin/breakers", get(admin::list_breakers))
        .route("/admin/cluster", get(admin::cluster))
        .route(
            "/admin/breakers/{vendor}/{action}",
            post(admin::command_breaker),
        )
        .route(
            "/agents",
            post(catalog::create_agent).get(catalog::list_agents),
        )
        .route(
            "/agents/{id}",
            get(catalog::get_agent)
                .patch(catalog::update_agent)
                .delete(catalog::delete_agent),
        )
        .route(
            "/customers",
            post(catalog::create_customer).get(catalog::list_customers),
        )
        .route(
            "/customers/{id}",
            get(catalog::get_customer)
                .patch(catalog::update_customer)
                .delete(catalog::delete_customer),
        )
        .route(
            "/customers/{id}/memories",
            get(learning::customer_memories).delete(learning::forget_customer),
        )
        .route("/agents/{id}/patterns", get(learning::agent_patterns))
        .route("/patterns/top", get(learning::top_patterns))
        .route(
            "/webhook-endpoints",
            post(webhook_endpoints::create).get(webhook_endpoints::list),
        )
        .route(
            "/webhook-endpoints/{id}",
            get(webhook_endpoints::get)
                .patch(webhook_endpoints::update)
                .delete(webhook_endpoints::delete),
        )
        .route(
            "/webhook-endpoints/{id}/rotate-secret",
            post(webhook_endpoints::rotate),
        )
        .route(
            "/webhook-endpoints/{id}/deliveries",
            get(webhook_endpoints::deliveries),
        )
        .route(
            "/webhook-endpoints/{id}/deliveries/{delivery_id}/retry",
            post(webhook_endpoints::retry_delivery),
        )
        .route(
            "/organization/log",
            get(webhook_endpoints::organization_log),
        );
    let cors = cors(&state.cors_origins);
    Ok(Router::new()
        .nest("/v1", v1)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/.well-known/jwks.json", get(sessions::jwks))
        .route(crate::cluster::POKE_PATH, post(forward::poke))
        .merge(openapi::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward::forward,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(body_limit))
        .layer(cors)
        .layer(middleware::from_fn_with_state(metrics, observe))
        .with_state(state))
}

/// Cross-origin access for the listed browser origins only (none when the list is empty).
fn cors(origins: &[HeaderValue]) -> tower_http::cors::CorsLayer {
    use axum::http::{header, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("idempotency-key"),
            header::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::RETRY_AFTER,
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static("ratelimit-limit"),
            header::HeaderName::from_static("ratelimit-remaining"),
            header::HeaderName::from_static("ratelimit-reset"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// Request id, span, metrics and the access log line.
async fn observe(State(m): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let cx = server_span(&req, &method, &route);
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        route = %route,
        trace_id = tracing::field::Empty,
        call_id = tracing::field::Empty,
        organization_id = tracing::field::Empty,
    );
    {
        use opentelemetry::trace::TraceContextExt as _;
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            span.record("trace_id", tracing::field::display(sc.trace_id()));
        }
    }
    let started = Instant::now();
    let mut resp = REQUEST_ID
        .scope(request_id.clone(), next.run(req))
        .instrument(span.clone())
        .with_context(cx.clone())
        .await;
    let elapsed = started.elapsed();
    let status = resp.status();
    {
        use opentelemetry::trace::{Status, TraceContextExt as _};
        let otel = cx.span();
        otel.set_attribute(opentelemetry::KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            otel.set_attribute(opentelemetry::KeyValue::new(
                "error.type",
                status.as_str().to_owned(),
            ));
            otel.set_status(Status::error(status.as_str().to_owned()));
        }
        otel.end();
    }
    m.requests
        .with_label_values(&[method.as_str(), route.as_str(), status.as_str()])
        .inc();
    m.latency
        .with_label_values(&[route.as_str()])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "request served"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let headers = resp.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    resp
}

/// The server span of a request: a child of the caller's W3C `traceparent` when it sent a
/// valid one, else the root of a trace of its own.
fn server_span(req: &Request, method: &axum::http::Method, route: &str) -> opentelemetry::Context {
    use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
    use opentelemetry::KeyValue;
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::telemetry::context::parse_traceparent)
        .map_or_else(opentelemetry::Context::new, |sc| {
            opentelemetry::Context::new().with_remote_span_context(sc)
        });
    let tracer = opentelemetry::global::tracer(crate::telemetry::context::SCOPE);
    let mut attributes = vec![
        KeyValue::new("http.request.method", method.as_str().to_owned()),
        KeyValue::new("http.route", route.to_owned()),
        KeyValue::new("url.path", req.uri().path().to_owned()),
        KeyValue::new("url.scheme", "http"),
    ];
    if let Some(agent) = req
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
    }
    let span = tracer
        .span_builder(format!("{method} {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

/// On every response: a JSON API is never sniffed, framed, cached or given a referrer, and
/// loads nothing.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The operations router, for a listener apart from the API (`IACE_METRICS_BIND`):
/// `/metrics`, the detailed `/ready` (each dependency's state, the breakers) and `/health`.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/ready", get(ready_detail))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(state)
}

/// A body the server will not take is refused from its declared `Content-Length`, before a
/// byte of it is read, on every route (the webhooks' raw-body extractors included); a body
/// that grows past the limit without declaring it is refused by the extractors, and their
/// plain-text 413 is answered with the envelope here too.
async fn body_limit(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        // The body stays unread: the connection cannot carry another request after it.
        let mut resp = too_large().into_response();
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
        return resp;
    }
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return too_large().into_response();
    }
    resp
}

/// 413 `payload_too_large`.
pub(crate) fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the request body is larger than {} KiB",
            MAX_BODY_BYTES / 1024
        ),
    )
}

/// Ready or not, and nothing more: which dependency failed and the vendors' breaker states
/// are for operators (the detailed answer is on the operations listener).
async fn ready(State(state): State<AppState>) -> Response {
    let (status, _) = readiness(&state).await;
    let word = if status == StatusCode::OK {
        "ready"
    } else {
        "unavailable"
    };
    (status, Json(json!({"status": word}))).into_response()
}

async fn ready_detail(State(state): State<AppState>) -> Response {
    let (status, body) = readiness(&state).await;
    (status, Json(body)).into_response()
}

async fn readiness(state: &AppState) -> (StatusCode, serde_json::Value) {
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    match state.engine.ready().await {
        Ok(()) => {
            checks.insert("database".into(), json!("ok"));
        }
        Err(e) => {
            ok = false;
            checks.insert("database".into(), json!(e.to_string()));
        }
    }
    for check in state.ready_checks.iter() {
        match check.check().await {
            Ok(()) => {
                checks.insert(check.name().into(), json!("ok"));
            }
            Err(e) => {
                ok = false;
                checks.insert(check.name().into(), json!(e));
            }
        }
    }
    let load = state.engine.load();
    checks.insert(
        "capacity".into(),
        json!({"running": load.running, "admitting": load.admitting, "max": load.max}),
    );
    // Breakers are reported, not judged: an open vendor breaker must not take every node
    // out of the load balancer (calls in progress keep running; new work fails fast).
    let breakers: serde_json::Map<String, serde_json::Value> = state
        .engine
        .breakers()
        .handles()
        .map(|b| (b.vendor().to_owned(), json!(b.state().as_str())))
        .collect();
    if !breakers.is_empty() {
        checks.insert("breakers".into(), serde_json::Value::Object(breakers));
    }
    let (status, word) = if ok {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (status, json!({"status": word, "checks": checks}))
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let families = state.registry.gather();
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encoding metrics: {e}"),
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// Opaque keyset cursor: `<created_at unix micros>_<id>`.
fn cursor_of(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{}", at.timestamp_micros(), id.simple())
}

fn parse_cursor(s: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::invalid("cursor: not a cursor returned by this API");
    let (micros, id) = s.split_once('_').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((at, id))
}

fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(iace_actors::engine::DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(format!(
            "limit: must be between 1 and {MAX_PAGE}"
        ))),
    }
}
