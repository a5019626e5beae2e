//! `POST /v1/webhooks/stripe` (plans) and `POST /v1/webhooks/hubspot` (contacts).
//!
//! Each handler verifies the signature over the raw bytes before parsing anything (401,
//! nothing stored, when it fails), parses (400 when the verified body is not an event), and
//! answers 200 only once the engine has stored the event, deduplicated by the vendor's event
//! id, together with its effect (one transaction). A store failure answers 503 so the vendor
//! re-delivers.

use super::openapi::schemas as S;
use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Json;
use serde_json::{json, Value};
use std::time::Instant;

use super::error::ApiError;
use super::AppState;
use crate::clients::hubspot::signature::{self as hubspot_sig, SignatureHeaders};
use crate::clients::stripe::signature as stripe_sig;

fn refused(vendor: &str, why: impl std::fmt::Display) -> ApiError {
    tracing::warn!(vendor, reason = %why, "webhook refused: bad signature");
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_signature",
        format!("{vendor} signature check failed: {why}"),
    )
}

/// The `iace_webhooks_total` outcome of a refused delivery.
fn refusal(e: &ApiError) -> &'static str {
    match e.status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::BAD_REQUEST => "malformed",
        StatusCode::NOT_FOUND => "disabled",
        _ => "unavailable",
    }
}

/// Counts a delivery's outcome (`stored` or `duplicate` when answered 200).
fn observed(
    state: &AppState,
    vendor: &str,
    started: Instant,
    result: Result<(Json<Value>, &'static str), ApiError>,
) -> Result<Json<Value>, ApiError> {
    let outcome = match &result {
        Ok((_, outcome)) => outcome,
        Err(e) => refusal(e),
    };
    state.webhooks.observe(vendor, outcome, started);
    result.map(|(answer, _)| answer)
}

/// `POST /v1/webhooks/stripe`.
#[utoipa::path(
    post, path = "/v1/webhooks/stripe", tag = "vendor-webhooks", operation_id = "stripe_webhook",
    description = "Subscription and invoice events from Stripe; deduplicated by event id, stored with their effect before the 200.",
    params(("Stripe-Signature" = String, Header, description = "`t=<unix seconds>,v1=<HMAC-SHA256 hex>` (several `v1` during a secret rotation).")),
    request_body(content = Object, description = "A Stripe event.", content_type = "application/json"),
    responses(
        (status = 200, description = "Stored, or a duplicate.", body = S::Received),
        (status = 400, description = "Not a Stripe event (`invalid_request`).", body = S::Error),
        (status = 401, description = "The signature does not verify (`invalid_signature`).", body = S::Error),
        (status = 404, description = "Stripe webhooks are not configured (`not_found`).", body = S::Error),
        (status = 503, description = "Not stored; Stripe re-delivers (`unavailable`).", body = S::Error),
    ),
)]
pub async fn stripe(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let result = stripe_delivery(&state, &headers, &body).await;
    observed(&state, "stripe", started, result)
}

async fn stripe_delivery(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Json<Value>, &'static str), ApiError> {
    let secret = state.security.stripe_secret.as_deref().ok_or_else(|| {
        ApiError::not_found("Stripe webhooks are not configured (set STRIPE_WEBHOOK_SECRET)")
    })?;
    let now = state.engine.clock_now().timestamp();
    stripe_sig::verify(
        secret,
        headers.get("stripe-signature").map(|v| v.as_bytes()),
        body,
        now,
        state.security.stripe_tolerance_secs,
    )
    .map_err(|e| refused("Stripe", e))?;
    let event = crate::clients::stripe::events::parse_event(body)
        .map_err(|e| ApiError::invalid(format!("not a Stripe event: {e}")))?;
    let (id, kind) = (event.event_id.clone(), event.event_type.clone());
    let new = state.engine.record_billing_event(event).await?;
    tracing::info!(vendor = "stripe", event_id = %id, event_type = %kind, duplicate = !new, "billing event stored");
    Ok((
        Json(json!({"received": true, "duplicate": !new})),
        if new { "stored" } else { "duplicate" },
    ))
}

/// The URL HubSpot called: the configured one, or rebuilt from the request.
fn hubspot_uri(state: &AppState, headers: &HeaderMap, uri: &Uri) -> String {
    if let Some(url) = &state.security.hubspot_url {
        return url.clone();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "http" || *p == "https")
        .unwrap_or("https");
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{scheme}://{host}{path}")
}

/// `POST /v1/webhooks/hubspot`.
#[utoipa::path(
    post, path = "/v1/webhooks/hubspot", tag = "vendor-webhooks", operation_id = "hubspot_webhook",
    description = "Contact events from HubSpot (signatures v1, v2 and v3); deduplicated, stored before the 200.",
    params(
        ("X-HubSpot-Signature-v3" = Option<String>, Header, description = "v3 signature (with `X-HubSpot-Request-Timestamp`)."),
        ("X-HubSpot-Request-Timestamp" = Option<String>, Header, description = "Unix milliseconds; older than 5 minutes is refused."),
        ("X-HubSpot-Signature" = Option<String>, Header, description = "v1 or v2 signature (with `X-HubSpot-Signature-Version`)."),
        ("X-HubSpot-Signature-Version" = Option<String>, Header, description = "`v1` or `v2`."),
    ),
    request_body(content = Vec<Object>, description = "A batch of HubSpot events.", content_type = "application/json"),
    responses(
        (status = 200, description = "Stored (`new` events, `duplicates`).", body = S::ReceivedBatch),
        (status = 400, description = "Not HubSpot events (`invalid_request`).", body = S::Error),
        (status = 401, description = "The signature does not verify (`invalid_signature`).", body = S::Error),
        (status = 404, description = "HubSpot webhooks are not configured (`not_found`).", body = S::Error),
        (status = 503, description = "Not stored; HubSpot re-delivers (`unavailable`).", body = S::Error),
    ),
)]
pub async fn hubspot(
    State(state): State<AppState>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let result = hubspot_delivery(&state, &headers, &uri, &body).await;
    observed(&state, "hubspot", started, result)
}

async fn hubspot_delivery(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    body: &Bytes,
) -> Result<(Json<Value>, &'static str), ApiError> {
    let secret = state.security.hubspot_secret.as_deref().ok_or_else(|| {
        ApiError::not_found("HubSpot webhooks are not configured (set HUBSPOT_CLIENT_SECRET)")
    })?;
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
    let signed = SignatureHeaders {
        signature: header("x-hubspot-signature"),
        version: header("x-hubspot-signature-version"),
        signature_v3: header("x-hubspot-signature-v3"),
        timestamp: header("x-hubspot-request-timestamp"),
    };
    let now_ms = state.engine.clock_now().timestamp_millis();
    let url = hubspot_uri(state, headers, uri);
    hubspot_sig::verify(secret, "POST", &url, body, signed, now_ms)
        .map_err(|e| refused("HubSpot", e))?;
    let events = crate::clients::hubspot::events::parse_events(body)
        .map_err(|e| ApiError::invalid(format!("not HubSpot events: {e}")))?;
    let linking = state.security.hubspot_crm.is_some();
    let stored = state.engine.record_crm_events(events, linking).await?;
    if linking && !stored.unlinked.is_empty() {
        // Queued with the events (durable); the linker looks them up after the 200.
        state.security.crm_wake.notify_one();
    }
    tracing::info!(
        vendor = "hubspot",
        new = stored.new,
        duplicates = stored.duplicates,
        "CRM events stored"
    );
    // A batch counts as stored when it brought anything new.
    let outcome = if stored.new > 0 {
        "stored"
    } else {
        "duplicate"
    };
    Ok((
        Json(json!({"received": true, "new": stored.new, "duplicates": stored.duplicates})),
        outcome,
    ))
}
