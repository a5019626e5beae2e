//! `/v1/admin/*`: the platform operator's API (not tenants'). Every route needs
//! `Authorization: Bearer <IACE_ADMIN_TOKEN>`; without a configured token the API is off.
//!
//! `GET /v1/admin/cluster` shows the nodes of the cluster and their shards.
//! `GET /v1/admin/breakers` lists every vendor breaker; `POST
//! /v1/admin/breakers/{vendor}/{force-open|disable|reset}` acts on one.

use super::openapi::schemas as S;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::extract::AppPath;
use super::AppState;

/// Checks the operator token (compared as SHA-256 digests, in constant time).
fn operator(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.admin_token.as_deref() else {
        return Err(ApiError::not_found(
            "the operator API is disabled (set IACE_ADMIN_TOKEN)",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <operator token>"))?;
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    if diff == 0 {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid operator token"))
    }
}

/// `GET /v1/admin/cluster`: nodes (heartbeat age, shards, live calls), unowned shards, and
/// every lease with its epoch, as the store sees them now.
#[utoipa::path(
    get, path = "/v1/admin/cluster", tag = "operator", operation_id = "get_cluster",
    responses(
        (status = 200, description = "Nodes (heartbeat age, shards, live calls), unowned shards, leases and their epochs.", body = Object),
        (status = 503, description = "The database is unavailable (`unavailable`).", body = S::Error),
    ),
)]
pub async fn cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    operator(&state, &headers)?;
    let status = state.engine.cluster_status().await?;
    Ok(Json(json!(status)))
}

/// `GET /v1/admin/breakers`.
#[utoipa::path(
    get, path = "/v1/admin/breakers", tag = "operator", operation_id = "list_breakers",
    responses((status = 200, description = "Every vendor breaker: state, failures, when it opened.", body = S::Breakers)),
)]
pub async fn list_breakers(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    operator(&state, &headers)?;
    let snapshots = state.engine.breakers().snapshots().await;
    Ok(Json(json!({ "data": snapshots })))
}

/// `POST /v1/admin/breakers/{vendor}/{force-open|disable|reset}`.
#[utoipa::path(
    post, path = "/v1/admin/breakers/{vendor}/{action}", tag = "operator", operation_id = "command_breaker",
    params(
        ("vendor" = String, Path, description = "The vendor (`telnyx`, `deepgram`, `groq`, ...)."),
        ("action" = String, Path, description = "`force-open`, `disable` or `reset`."),
    ),
    responses(
        (status = 200, description = "The breaker after the command.", body = Object),
        (status = 503, description = "The breaker did not answer (`unavailable`).", body = S::Error),
    ),
)]
pub async fn command_breaker(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppPath((vendor, action)): AppPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    operator(&state, &headers)?;
    let breaker = state
        .engine
        .breakers()
        .get(&vendor)
        .ok_or_else(|| ApiError::not_found(format!("no breaker for vendor `{vendor}`")))?;
    let snapshot = match action.as_str() {
        "force-open" => breaker.force_open().await,
        "disable" => breaker.disable().await,
        "reset" => breaker.reset().await,
        _ => {
            return Err(ApiError::not_found(
                "unknown action: use force-open, disable or reset",
            ))
        }
    };
    tracing::warn!(vendor = %vendor, action = %action, "operator changed a breaker");
    snapshot.map(|s| Json(json!(s))).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the breaker did not answer; retry",
        )
    })
}
