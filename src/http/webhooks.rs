//! Vendor webhooks: `POST /v1/webhooks/telnyx`.
//!
//! The handler verifies the signature over the raw bytes (401, nothing stored, nothing
//! parsed when it fails), maps the event and hands it to the engine. It answers 200 only once
//! the engine says the event is durable; 503 otherwise, so Telnyx re-delivers. It never
//! touches the database itself.

use super::openapi::schemas as S;
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
use crate::clients::telnyx::webhook::{parse_event, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::clients::telnyx::WebhookVerifier;

/// What the Telnyx webhook route needs.
#[derive(Clone)]
pub struct TelnyxIngress {
    /// Signature check with the configured public key.
    pub verifier: Arc<WebhookVerifier>,
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
                "Vendor webhooks by outcome (accepted, duplicate, stored, parked, rejected, unauthorized, malformed, unavailable, disabled)",
            ),
            &["vendor", "outcome"],
        )?;
        registry.register(Box::new(ack.clone()))?;
        registry.register(Box::new(outcomes.clone()))?;
        Ok(WebhookMetrics { ack, outcomes })
    }

    /// Counts one delivery and its time to answer.
    pub fn observe(&self, vendor: &str, outcome: &str, started: Instant) {
        self.outcomes.with_label_values(&[vendor, outcome]).inc();
        self.ack
            .with_label_values(&[vendor])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// `POST /v1/webhooks/telnyx`.
#[utoipa::path(
    post, path = "/v1/webhooks/telnyx", tag = "vendor-webhooks", operation_id = "telnyx_webhook",
    description = "Call events from Telnyx, signed with Ed25519 over the raw body; answered 200 once durable.",
    params(
        ("telnyx-signature-ed25519" = String, Header, description = "Base64 signature of `timestamp|body`."),
        ("telnyx-timestamp" = String, Header, description = "Unix seconds; older than 5 minutes is refused."),
    ),
    request_body(content = Object, description = "A Telnyx event (`data.event_type`, `data.payload`).", content_type = "application/json"),
    responses(
        (status = 200, description = "Taken: `accepted`, `stored`, `duplicate`, `parked` (until its call exists) or `rejected`.", body = S::IngestStatus),
        (status = 400, description = "Not a Telnyx event (`invalid_request`).", body = S::Error),
        (status = 401, description = "The signature does not verify (`invalid_signature`).", body = S::Error),
        (status = 404, description = "Telnyx is not the carrier (`not_found`).", body = S::Error),
        (status = 503, description = "Not stored; Telnyx re-delivers (`unavailable`).", body = S::Error),
    ),
)]
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
        state.webhooks.observe("telnyx", "unauthorized", started);
        return ApiError::unauthorized("webhook signature verification failed").into_response();
    }
    let event = match parse_event(&body, chrono::Utc::now()) {
        Ok(event) => event,
        Err(e) => {
            warn!(error = %e, "authentic telnyx webhook that is not an event");
            state.webhooks.observe("telnyx", "malformed", started);
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
            state.webhooks.observe("telnyx", word, started);
            (StatusCode::OK, Json(json!({"status": word}))).into_response()
        }
        Err(e) => {
            // Not stored: Telnyx must try again.
            warn!(event_id = %event_id, event_type = %event_type, error = %e, "telnyx webhook not stored; answering 503");
            state.webhooks.observe("telnyx", "unavailable", started);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event could not be stored; retry",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use base64::Engine as _;
    use ed25519_dalek::{Signer, SigningKey};
    use iace_actors::engine::Ports;
    use iace_actors::engine::{Engine, EngineConfig};
    use iace_actors::testkit::{MemoryStore, ScriptedTelephony, SeqIds, TokioClock};
    use tower::ServiceExt;

    use super::*;
    use crate::clients::telnyx::DEFAULT_TOLERANCE;

    struct Wall;
    impl iace_actors::ports::Clock for Wall {
        fn now(&self) -> chrono::DateTime<chrono::Utc> {
            chrono::Utc::now()
        }
    }

    async fn app() -> (axum::Router, Arc<MemoryStore>, SigningKey, Engine) {
        let store = Arc::new(MemoryStore::new());
        let ports = Ports {
            calls: store.clone(),
            cluster: store.clone(),
            peers: None,
            queries: store.clone(),
            telephony: Arc::new(ScriptedTelephony::new()),
            clock: Arc::new(TokioClock::new(chrono::Utc::now())),
            ids: Arc::new(SeqIds::new(1)),
            breakers: Default::default(),
            voice: None,
            recall: None,
            accounts: None,
            outbox: None,
            analysis: None,
            traces: None,
        };
        let registry = Registry::new();
        let engine = Engine::start(ports, EngineConfig::default(), &registry)
            .await
            .unwrap();
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key());
        let verifier = WebhookVerifier::new(&public, DEFAULT_TOLERANCE, Arc::new(Wall)).unwrap();
        let state = AppState {
            engine: engine.clone(),
            registry: registry.clone(),
            ready_checks: Arc::new([]),
            telnyx: Some(TelnyxIngress {
                verifier: Arc::new(verifier),
            }),
            webhooks: WebhookMetrics::new(&registry).unwrap(),
            admin_token: None,
            security: Arc::new(crate::auth::Security::minimal()),
            cors_origins: Arc::new([]),
            nodes: None,
            outbound: crate::outbound::guard::Guard {
                allow_private: false,
            },
        };
        (crate::http::router(state).unwrap(), store, key, engine)
    }

    fn signed(key: &SigningKey, body: &str) -> Request<Body> {
        let ts = chrono::Utc::now().timestamp().to_string();
        let sig = key.sign(format!("{ts}|{body}").as_bytes());
        Request::post("/v1/webhooks/telnyx")
            .header(
                SIGNATURE_HEADER,
                base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
            )
            .header(TIMESTAMP_HEADER, ts)
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    const BODY: &str = r#"{"data":{"record_type":"event","event_type":"call.hangup","id":"ev-503","payload":{"call_control_id":"v3:leg","hangup_cause":"normal_clearing"}}}"#;

    #[tokio::test]
    async fn an_event_that_cannot_be_stored_is_answered_503_then_200_on_redelivery() {
        let (app, store, key, engine) = app().await;
        store.set_down(true);
        let resp = app.clone().oneshot(signed(&key, BODY)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        store.set_down(false);
        let resp = app.clone().oneshot(signed(&key, BODY)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = app.oneshot(signed(&key, BODY)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&body[..], br#"{"status":"duplicate"}"#);
        engine.shutdown().await;
    }

    #[tokio::test]
    async fn an_unsigned_event_is_401_and_never_reaches_the_store() {
        let (app, store, key, engine) = app().await;
        // The store is down: a handler that touched it before verifying would answer 503.
        store.set_down(true);
        let resp = app
            .clone()
            .oneshot(
                Request::post("/v1/webhooks/telnyx")
                    .body(Body::from(BODY))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let other = SigningKey::from_bytes(&[6u8; 32]);
        let resp = app.clone().oneshot(signed(&other, BODY)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let _ = key;
        engine.shutdown().await;
    }
}
