//! Learned patterns and customer memories: similarity search and the right to be forgotten.

use super::openapi::schemas as S;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Org;
use super::error::ApiError;
use super::extract::{AppPath, AppQuery};
use super::AppState;
use iace_actors::learning::recall::MAX_K;

/// `?query=&k=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecallQuery {
    /// Text to search by similarity (at most 2000 characters).
    #[param(max_length = 2000, pattern = r"^[^\u0000]*$")]
    query: Option<String>,
    /// How many (default 5).
    #[param(minimum = 1, maximum = 50)]
    k: Option<u32>,
}

/// `?agent_id=&k=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopQuery {
    /// The agent.
    #[param(required = true)]
    agent_id: Option<Uuid>,
    /// How many (default 5).
    #[param(minimum = 1, maximum = 50)]
    k: Option<u32>,
}

const DEFAULT_K: u32 = 5;
/// Longest query text, characters.
const MAX_QUERY: usize = 2000;

fn k_of(k: Option<u32>) -> Result<u32, ApiError> {
    match k {
        None => Ok(DEFAULT_K),
        Some(k) if (1..=MAX_K).contains(&k) => Ok(k),
        Some(_) => Err(ApiError::invalid(format!(
            "k: must be between 1 and {MAX_K}"
        ))),
    }
}

fn query_of(q: Option<String>) -> Result<Option<String>, ApiError> {
    match q {
        Some(q) if q.chars().count() > MAX_QUERY => Err(ApiError::invalid(format!(
            "query: at most {MAX_QUERY} characters"
        ))),
        Some(q) if q.trim().is_empty() => Ok(None),
        q => Ok(q),
    }
}

/// `GET /v1/customers/{id}/memories?query=&k=`.
#[utoipa::path(
    get, path = "/v1/customers/{id}/memories", tag = "learning", operation_id = "customer_memories",
    params(("id" = Uuid, Path, description = "The customer's id."), RecallQuery),
    responses((status = 200, description = "The customer's memories: the nearest to `query`, else the most important and recent.", body = S::MemoryHits)),
)]
pub async fn customer_memories(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
    AppQuery(q): AppQuery<RecallQuery>,
) -> Result<Json<Value>, ApiError> {
    let k = k_of(q.k)?;
    let query = query_of(q.query)?;
    let hits = s.engine.customer_memories(org, id, query, k).await?;
    Ok(Json(json!({ "data": hits })))
}

/// `DELETE /v1/customers/{id}/memories`: every memory of the customer and its vectors.
#[utoipa::path(
    delete, path = "/v1/customers/{id}/memories", tag = "learning", operation_id = "forget_customer_memories",
    params(("id" = Uuid, Path, description = "The customer's id.")),
    responses((status = 200, description = "Every memory of the customer and its vectors are deleted.", body = S::Deleted)),
)]
pub async fn forget_customer(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let deleted = s.engine.forget_customer_memories(org, id).await?;
    Ok(Json(json!({ "deleted": deleted })))
}

/// `GET /v1/agents/{id}/patterns?query=&k=`.
#[utoipa::path(
    get, path = "/v1/agents/{id}/patterns", tag = "learning", operation_id = "agent_patterns",
    params(("id" = Uuid, Path, description = "The agent's id."), RecallQuery),
    responses((status = 200, description = "The agent's learned patterns, nearest to `query` first.", body = S::PatternHits)),
)]
pub async fn agent_patterns(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
    AppQuery(q): AppQuery<RecallQuery>,
) -> Result<Json<Value>, ApiError> {
    let k = k_of(q.k)?;
    let query = query_of(q.query)?;
    let hits = s.engine.agent_patterns(org, id, query, k).await?;
    Ok(Json(json!({ "data": hits })))
}

/// `GET /v1/patterns/top?agent_id=&k=`: the agent's patterns with the best success rates.
#[utoipa::path(
    get, path = "/v1/patterns/top", tag = "learning", operation_id = "top_patterns",
    params(TopQuery),
    responses(
        (status = 200, description = "The agent's patterns with the best success rates.", body = S::PatternHits),
        (status = 404, description = "No such agent (`not_found`).", body = S::Error),
    ),
)]
pub async fn top_patterns(
    State(s): State<AppState>,
    Org(org): Org,
    AppQuery(q): AppQuery<TopQuery>,
) -> Result<Json<Value>, ApiError> {
    let k = k_of(q.k)?;
    let agent = q
        .agent_id
        .ok_or_else(|| ApiError::invalid("agent_id: required"))?;
    let hits = s.engine.agent_patterns(org, agent, None, k).await?;
    Ok(Json(json!({ "data": hits })))
}
