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
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Serialize;
use serde_json::Value;

use super::error::{json_response, GoogleError};
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
