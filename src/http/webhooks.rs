//! Vendor webhooks: `POST /v1/webhooks/telnyx`.
//!
//! The handler verifies the signature over the raw bytes (401, nothing stored, nothing
//! parsed when it fails), maps the event and hands it to the engine. It answers 200 only once
//! the engine says the event is durable; 503 otherwise, so Telnyx re-delivers. It never
//! touches the database itself.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use iace_actors::engine::IngestOutcome;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde_json::json;
use tracing::{debug, warn};

use super::error::ApiError;
use super::AppState;
use crate::vendor::telnyx::webhook::{parse_event, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::vendor::telnyx::WebhookVerifier;

/// What the Telnyx webhook route needs.
#[derive(Clone)]
pub struct TelnyxIngress {
    /// Signature check with the configured public key.
    pub verifier: Arc<WebhookVerifier>,
    /// Ack latency and outcomes.
    pub metrics: WebhookMetrics,
}

/// Webhook metrics (all vendors).
#[derive(Clone)]
pub struct WebhookMetrics {
    ack: HistogramVec,
    outcomes: IntCounterVec,
}

impl WebhookMetrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let ack = HistogramVec::new(
            HistogramOpts::new(
                "iace_webhook_ack_seconds",
                "Time from receiving a vendor webhook to answering it (verification, storage, routing)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["vendor"],
        )?;
        let outcomes = IntCounterVec::new(
            Opts::new(
                "iace_webhooks_total",
                "Vendor webhooks by outcome (accepted, duplicate, stored, parked, rejected, unauthorized, malformed, unavailable)",
            ),
            &["vendor", "outcome"],
        )?;
        registry.register(Box::new(ack.clone()))?;
        registry.register(Box::new(outcomes.clone()))?;
        Ok(WebhookMetrics { ack, outcomes })
    }

    fn observe(&self, vendor: &str, outcome: &str, started: Instant) {
        self.outcomes.with_label_values(&[vendor, outcome]).inc();
        self.ack
            .with_label_values(&[vendor])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// `POST /v1/webhooks/telnyx`.
pub async fn telnyx(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let Some(ingress) = &state.telnyx else {
        return ApiError::not_found("Telnyx webhooks are not enabled (set IACE_TELEPHONY=telnyx)")
            .into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(e) =
        ingress
            .verifier
            .verify(header(SIGNATURE_HEADER), header(TIMESTAMP_HEADER), &body)
    {
        warn!(error = %e, "telnyx webhook refused");
        ingress.metrics.observe("telnyx", "unauthorized", started);
        return ApiError::unauthorized("webhook signature verification failed").into_response();
    }
    let event = match parse_event(&body, chrono::Utc::now()) {
        Ok(event) => event,
        Err(e) => {
            warn!(error = %e, "authentic telnyx webhook that is not an event");
            ingress.metrics.observe("telnyx", "malformed", started);
            return ApiError::invalid(e.to_string()).into_response();
        }
    };
    let event_id = event.event_id.clone();
    let event_type = event.event_type.clone();
    match state.engine.ingest_vendor_event(event).await {
        Ok(outcome) => {
            let word = match outcome {
                IngestOutcome::Accepted => "accepted",
                IngestOutcome::Duplicate => "duplicate",
                IngestOutcome::Stored => "stored",
                IngestOutcome::Parked => "parked",
                IngestOutcome::Rejected => "rejected",
            };
            debug!(event_id = %event_id, event_type = %event_type, outcome = word, "telnyx webhook stored");
            ingress.metrics.observe("telnyx", word, started);
            (StatusCode::OK, Json(json!({"status": word}))).into_response()
        }
        Err(e) => {
            // Not stored: Telnyx must try again.
            warn!(event_id = %event_id, event_type = %event_type, error = %e, "telnyx webhook not stored; answering 503");
            ingress.metrics.observe("telnyx", "unavailable", started);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event could not be stored; retry",
            )
            .into_response()
        }
    }
}
