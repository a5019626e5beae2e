//! The HTTP surface (section 7.4): the search route, Bearer checks, the burst and daily
//! limits, injected failures and stalls, and the answers (HubSpot's error answers are built in
//! `error`).
//!
//! Every decision about a request is taken in one critical section ([`decide`]), so concurrent
//! requests take armed faults and the burst window in a single, well-defined arrival order.
//!
//! Error bodies are `{"status":"error","message","correlationId","category"}` (plus
//! `errorType`/`policyName` on a 429 and `context` on a 403), the correlation id a fresh UUID
//! that is also sent as `X-HubSpot-Correlation-Id`. The 401 body is the one HubSpot sends for
//! a missing or unknown token; the others are modelled on answers seen in HubSpot's docs and
//! community threads [UNVERIFIED in their details].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::Value;

use super::error::{json_response, HubSpotError, CORRELATION_ID};
use super::search;
use super::state::{Shared, State as FakeState};
use super::{FakeHubSpotConfig, InjectedFault, RecordedRequest, BURST_INTERVAL};
use crate::fake::CancelOnDrop;

/// The routes, under the API base.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/crm/v3/objects/contacts/search", post(search_contacts))
        .fallback(unknown_url)
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// What to do with one request, decided under the lock.
enum Decision {
    Error(HubSpotError),
    Stall,
    /// The 200 body.
    Answer(Value),
}

/// The `X-HubSpot-RateLimit-*` values of an authenticated request.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max: u32,
    remaining: u32,
    daily: u64,
    daily_remaining: u64,
}

async fn search_contacts(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let received_at = Instant::now();
    let body: Option<Value> = serde_json::from_slice(&raw).ok();
    let text = |name: HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = text(header::AUTHORIZATION);
    let content_type = text(header::CONTENT_TYPE);

    let (idx, decision, limits, latency) = {
        let mut st = shared.lock();
        let idx = st.requests.len();
        st.requests.push(RecordedRequest {
            authorization: authorization.clone(),
            content_type,
            filters: search::record_filters(body.as_ref()),
            body: body.clone().unwrap_or(Value::Null),
            status: 0,
            category: None,
            correlation_id: None,
            fault: None,
            cancelled: false,
            received_at,
            finished_at: None,
        });
        let (decision, fault, limits) = decide(
            &shared.cfg,
            &mut st,
            bearer(authorization.as_deref()),
            body.as_ref(),
        );
        st.requests[idx].fault = fault;
        (idx, decision, limits, st.latency)
    };

    // From here on the client may go away; the guard records that.
    let mut guard = CancelOnDrop {
        shared: shared.clone(),
        idx,
        armed: true,
    };
    let stopped = crate::fake::stopped(shared.stop.clone());
    let outcome = match decision {
        Decision::Stall => {
            // Held until the fake stops, or until the client leaves and hyper drops this future.
            stopped.await;
            Err(HubSpotError::injected(503, None))
        }
        Decision::Error(err) => {
            pause(latency, stopped).await;
            Err(err)
        }
        Decision::Answer(body) => {
            pause(latency, stopped).await;
            Ok(body)
        }
    };
    guard.armed = false;
    finish(&shared, idx, outcome, limits)
}

/// Waits `latency`, or less if the fake stops (stopping answers at once rather than holding
/// graceful shutdown up).
async fn pause(latency: Duration, stopped: impl std::future::Future<Output = ()>) {
    tokio::select! {
        () = tokio::time::sleep(latency) => {}
        () = stopped => {}
    }
}

/// Records how request `idx` was answered, and answers.
fn finish(
    shared: &Shared,
    idx: usize,
    outcome: Result<Value, HubSpotError>,
    limits: Option<Limits>,
) -> Response {
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let (mut response, category) = match outcome {
        Ok(body) => (json_response(StatusCode::OK, &body), None),
        Err(err) => {
            let category = (!err.html).then(|| err.category.to_owned());
            (err.into_response(&correlation_id), category)
        }
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        h.insert(CORRELATION_ID, v);
    }
    if let Some(l) = limits {
        h.insert("x-hubspot-ratelimit-max", HeaderValue::from(l.max));
        h.insert(
            "x-hubspot-ratelimit-remaining",
            HeaderValue::from(l.remaining),
        );
        h.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            HeaderValue::from(BURST_INTERVAL.as_millis() as u64),
        );
        h.insert("x-hubspot-ratelimit-daily", HeaderValue::from(l.daily));
        h.insert(
            "x-hubspot-ratelimit-daily-remaining",
            HeaderValue::from(l.daily_remaining),
        );
    }
    let status = response.status().as_u16();
    shared.update(idx, |r| {
        r.status = status;
        r.category = category;
        r.correlation_id = Some(correlation_id);
        r.finished_at = Some(Instant::now());
    });
    response
}

/// Takes every decision about one request; also says which fault, if any, was injected, and
/// the rate-limit headers of an authenticated one.
fn decide(
    cfg: &FakeHubSpotConfig,
    st: &mut FakeState,
    token: Option<&str>,
    body: Option<&Value>,
) -> (Decision, Option<InjectedFault>, Option<Limits>) {
    if token != Some(cfg.access_token.as_str()) {
        return (Decision::Error(HubSpotError::unauthenticated()), None, None);
    }
    let in_window = st.count_request(BURST_INTERVAL);
    let limits = Limits {
        max: cfg.burst_limit,
        remaining: cfg.burst_limit.saturating_sub(in_window),
        daily: cfg.daily_limit,
        daily_remaining: cfg.daily_limit.saturating_sub(st.authenticated),
    };
    if st.authenticated > cfg.daily_limit {
        let err = HubSpotError::rate_limited("DAILY", None);
        return (Decision::Error(err), None, Some(limits));
    }
    if in_window > cfg.burst_limit {
        let err = HubSpotError::rate_limited(
            "TEN_SECONDLY_ROLLING",
            cfg.burst_retry_after
                .then(|| st.window_left(BURST_INTERVAL)),
        );
        return (Decision::Error(err), None, Some(limits));
    }
    if let Some(f) = st.fail.as_mut() {
        f.remaining -= 1;
        let (status, retry_after) = (f.status, f.retry_after);
        if f.remaining == 0 {
            st.fail = None;
        }
        let err = HubSpotError::injected(status, retry_after);
        return (
            Decision::Error(err),
            Some(InjectedFault::Status(status)),
            Some(limits),
        );
    }
    let known = |p: &str| st.properties.contains(p);
    match search::validate(body, &known, cfg.max_limit) {
        Err(err) => (Decision::Error(err), None, Some(limits)),
        Ok(_) if st.stalls > 0 => {
            st.stalls -= 1;
            (Decision::Stall, Some(InjectedFault::Stall), Some(limits))
        }
        Ok(valid) => (
            Decision::Answer(valid.run(&st.contacts)),
            None,
            Some(limits),
        ),
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Other routes.

async fn unknown_url(method: Method, uri: Uri) -> Response {
    let correlation_id = uuid::Uuid::new_v4().to_string();
    HubSpotError::new(
        404,
        "OBJECT_NOT_FOUND",
        format!("No route for {method} {}", uri.path()),
    )
    .into_response(&correlation_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(Some("Bearer pat-1")), Some("pat-1"));
        assert_eq!(bearer(Some("bearer  pat-1 ")), Some("pat-1"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("pat-1")), None);
        assert_eq!(bearer(None), None);
    }
}
