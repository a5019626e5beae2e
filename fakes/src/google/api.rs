//! The HTTP surface (section 5): the two routes, key checks, Google's error envelope, injected
//! failures and stalls, and the answers.
//!
//! Every decision about a request is taken in one critical section ([`decide`]), so concurrent
//! requests take armed faults in a single, well-defined arrival order.
//!
//! Error bodies are `{"error":{"code","message","status","details"?}}` with `code` equal to the
//! HTTP status and `status` the canonical `google.rpc.Code` name. The wrong-key body is the
//! documented one; the others are modelled on answers of the real API seen in bug reports
//! [UNVERIFIED in their details].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};

use super::state::{Shared, State as FakeState};
use super::validate::{self, Valid};
use super::{
    full_embedding, EmbedMethod, FakeGoogleConfig, InjectedFault, KeySource, MissingKey,
    RecordedRequest,
};
use crate::fake::CancelOnDrop;

/// The routes, under the API base `/v1beta`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1beta/models/{call}", post(model_call))
        .fallback(unknown_url)
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// A Google error answer.
#[derive(Debug, Clone)]
pub(crate) struct GoogleError {
    pub(crate) code: u16,
    pub(crate) status: &'static str,
    pub(crate) message: String,
    pub(crate) details: Vec<Value>,
}

impl GoogleError {
    fn new(code: u16, status: &'static str, message: impl Into<String>) -> Self {
        GoogleError {
            code,
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// 400 `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming `field`.
    pub(crate) fn bad_request(field: &str, message: String) -> Self {
        let details = vec![json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": field, "description": message}],
        })];
        GoogleError {
            details,
            ..GoogleError::new(400, "INVALID_ARGUMENT", message.clone())
        }
    }

    /// The documented wrong-key answer.
    fn api_key_invalid() -> Self {
        let message = "API key not valid. Please pass a valid API key.";
        GoogleError {
            details: vec![
                json!({
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }),
                json!({
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": message,
                }),
            ],
            ..GoogleError::new(400, "INVALID_ARGUMENT", message)
        }
    }

    fn unregistered_caller() -> Self {
        GoogleError::new(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        )
    }

    fn model_not_found(model: &str, method: EmbedMethod) -> Self {
        let method = match method {
            EmbedMethod::EmbedContent => "embedContent",
            EmbedMethod::BatchEmbedContents => "batchEmbedContents",
        };
        GoogleError::new(
            404,
            "NOT_FOUND",
            format!(
                "models/{model} is not found for API version v1beta, or is not supported for {method}. Call ListModels to see the list of available models and their supported methods."
            ),
        )
    }

    /// What [`super::FakeGoogle::fail_next`] and [`super::FakeGoogle::rate_limit_next`]
    /// answer.
    fn injected(status: u16, model: &str, retry_delay: Option<Duration>) -> Self {
        match status {
            400 => GoogleError::new(400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
            401 => GoogleError::new(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            ),
            403 => GoogleError::new(403, "PERMISSION_DENIED", "The caller does not have permission"),
            404 => GoogleError::model_not_found(model, EmbedMethod::BatchEmbedContents),
            409 => GoogleError::new(409, "ABORTED", "The operation was aborted."),
            429 => GoogleError::quota_exceeded(model, retry_delay),
            499 => GoogleError::new(499, "CANCELLED", "The operation was cancelled."),
            500 => GoogleError::new(
                500,
                "INTERNAL",
                "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            ),
            501 => GoogleError::new(501, "UNIMPLEMENTED", "Method not implemented."),
            503 => GoogleError::new(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
            504 => GoogleError::new(
                504,
                "DEADLINE_EXCEEDED",
                "Deadline expired before operation could complete.",
            ),
            s if s >= 500 => GoogleError::new(s, "INTERNAL", "Internal error encountered."),
            s => GoogleError::new(s, "FAILED_PRECONDITION", "Precondition check failed."),
        }
    }

    fn quota_exceeded(model: &str, retry_delay: Option<Duration>) -> Self {
        let mut message = format!(
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: generativelanguage.googleapis.com/embed_content_free_tier_requests, limit: 100, model: {model}"
        );
        let mut details = vec![
            json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/embed_content_free_tier_requests",
                    "quotaId": "EmbedContentRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": "100",
                }],
            }),
            json!({
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }],
            }),
        ];
        if let Some(d) = retry_delay {
            message.push_str(&format!("\nPlease retry in {}s.", d.as_secs_f64()));
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": proto_duration(d),
            }));
        }
        GoogleError {
            details,
            ..GoogleError::new(429, "RESOURCE_EXHAUSTED", message)
        }
    }

    fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message, "status": self.status});
        if !self.details.is_empty() {
            error["details"] = Value::Array(self.details.clone());
        }
        json!({ "error": error })
    }

    fn into_response(self) -> Response {
        json_response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &self.body(),
        )
    }
}

/// A `google.protobuf.Duration` in proto3 JSON: seconds with 0, 3, 6 or 9 fractional digits
/// and an `s` (`"13s"`, `"1.500s"`).
fn proto_duration(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    if nanos == 0 {
        format!("{secs}s")
    } else if nanos % 1_000_000 == 0 {
        format!("{secs}.{:03}s", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{secs}.{:06}s", nanos / 1_000)
    } else {
        format!("{secs}.{nanos:09}s")
    }
}

/// JSON with Google's content type.
fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    resp
}

// ---------------------------------------------------------------------------------------------
// The embedding routes.

/// What to do with one request, decided under the lock.
enum Decision {
    Error(GoogleError),
    Stall,
    /// The valid requests and the model's full vector size.
    Answer(Vec<Valid>, usize),
}

async fn model_call(
    State(shared): State<Arc<Shared>>,
    Path(call): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let received_at = Instant::now();
    let Some((model, method)) = call.rsplit_once(':') else {
        return GoogleError::new(404, "NOT_FOUND", "Method not found.").into_response();
    };
    let method = match method {
        "embedContent" => EmbedMethod::EmbedContent,
        "batchEmbedContents" => EmbedMethod::BatchEmbedContents,
        _ => return GoogleError::new(404, "NOT_FOUND", "Method not found.").into_response(),
    };
    let body: Option<Value> = serde_json::from_slice(&raw).ok();
    let key = api_key(&headers, &uri);

    let (idx, decision, latency) = {
        let mut st = shared.lock();
        let idx = st.requests.len();
        st.requests.push(RecordedRequest {
            method,
            model: model.to_owned(),
            key_source: key.as_ref().map(|(_, source)| *source),
            items: validate::record_items(method, body.as_ref()),
            body: body.clone().unwrap_or(Value::Null),
            status: 0,
            error_status: None,
            fault: None,
            cancelled: false,
            received_at,
            finished_at: None,
        });
        let (decision, fault) = decide(
            &shared.cfg,
            &mut st,
            key.as_ref().map(|(k, _)| k.as_str()),
            method,
            model,
            body.as_ref(),
        );
        st.requests[idx].fault = fault;
        (idx, decision, st.latency)
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
            Err(GoogleError::injected(503, model, None))
        }
        Decision::Error(err) => {
            pause(latency, stopped).await;
            Err(err)
        }
        Decision::Answer(valid, native_dims) => {
            pause(latency, stopped).await;
            Ok(answer(method, model, native_dims, &valid))
        }
    };
    guard.armed = false;
    finish(&shared, idx, outcome)
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
fn finish(shared: &Shared, idx: usize, outcome: Result<Response, GoogleError>) -> Response {
    let (response, error_status) = match outcome {
        Ok(response) => (response, None),
        Err(err) => {
            let status = err.status;
            (err.into_response(), Some(status.to_owned()))
        }
    };
    let status = response.status().as_u16();
    shared.update(idx, |r| {
        r.status = status;
        r.error_status = error_status;
        r.finished_at = Some(Instant::now());
    });
    response
}

/// Takes every decision about one request; also says which fault, if any, was injected.
fn decide(
    cfg: &FakeGoogleConfig,
    st: &mut FakeState,
    key: Option<&str>,
    method: EmbedMethod,
    model: &str,
    body: Option<&Value>,
) -> (Decision, Option<InjectedFault>) {
    match key {
        None => {
            let err = match cfg.missing_key {
                MissingKey::InvalidArgument => GoogleError::api_key_invalid(),
                MissingKey::PermissionDenied => GoogleError::unregistered_caller(),
            };
            return (Decision::Error(err), None);
        }
        Some(k) if k != cfg.api_key => {
            return (Decision::Error(GoogleError::api_key_invalid()), None)
        }
        Some(_) => {}
    }
    if let Some(f) = st.fail.as_mut() {
        f.remaining -= 1;
        let (status, retry_delay) = (f.status, f.retry_delay);
        if f.remaining == 0 {
            st.fail = None;
        }
        let err = GoogleError::injected(status, model, retry_delay);
        return (Decision::Error(err), Some(InjectedFault::Status(status)));
    }
    let Some(served) = cfg.models.iter().find(|m| m.name == model) else {
        return (
            Decision::Error(GoogleError::model_not_found(model, method)),
            None,
        );
    };
    match validate::validate(method, model, served.dims, cfg.max_batch, body) {
        Err(err) => (Decision::Error(err), None),
        Ok(_) if st.stalls > 0 => {
            st.stalls -= 1;
            (Decision::Stall, Some(InjectedFault::Stall))
        }
        Ok(valid) => (Decision::Answer(valid, served.dims), None),
    }
}

/// The key and where it came from: the header first, then `?key=`.
fn api_key(headers: &HeaderMap, uri: &Uri) -> Option<(String, KeySource)> {
    if let Some(k) = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) {
        return Some((k.trim().to_owned(), KeySource::Header));
    }
    let Query(params) = Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    params
        .into_iter()
        .find(|(name, _)| name == "key")
        .map(|(_, k)| (k, KeySource::Query))
}

#[derive(Serialize)]
struct Embedding<'a> {
    values: &'a [f32],
}

#[derive(Serialize)]
struct EmbedContentResponse<'a> {
    embedding: Embedding<'a>,
}

#[derive(Serialize)]
struct BatchEmbedContentsResponse<'a> {
    embeddings: Vec<Embedding<'a>>,
}

/// The 200 answer: one vector per request, in order, each the prefix of the model's full
/// (unit-length) vector.
fn answer(method: EmbedMethod, model: &str, native_dims: usize, valid: &[Valid]) -> Response {
    let vectors: Vec<Vec<f32>> = valid
        .iter()
        .map(|v| {
            let mut full = full_embedding(model, &v.text, native_dims);
            full.truncate(v.dims);
            full
        })
        .collect();
    match method {
        EmbedMethod::EmbedContent => json_response(
            StatusCode::OK,
            &EmbedContentResponse {
                embedding: Embedding {
                    values: vectors.first().map(Vec::as_slice).unwrap_or_default(),
                },
            },
        ),
        EmbedMethod::BatchEmbedContents => json_response(
            StatusCode::OK,
            &BatchEmbedContentsResponse {
                embeddings: vectors.iter().map(|v| Embedding { values: v }).collect(),
            },
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Other routes.

async fn unknown_url(method: Method, uri: Uri) -> Response {
    GoogleError::new(
        404,
        "NOT_FOUND",
        format!(
            "The requested URL {} was not found on this server ({method}).",
            uri.path()
        ),
    )
    .into_response()
}
