//! `/v1/agents`, `/v1/customers` and `/v1/phone-numbers`: create, read, list, patch, delete.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use iace_actors::catalog::{AgentPatch, CustomerPatch, NewAgent, NewCustomer, NewPhoneNumber};
use iace_actors::ports::PageRequest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Org;
use super::error::ApiError;
use super::extract::{AppJson, AppPath, AppQuery};
use super::{cursor_of, page_limit, parse_cursor, AppState};

/// `?limit=&cursor=` of the lists other than calls (catalog, users, API keys).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

impl PageQuery {
    /// The page asked for; a bad limit or cursor answers 400.
    pub(super) fn request(&self) -> Result<PageRequest, ApiError> {
        Ok(PageRequest {
            limit: page_limit(self.limit)?,
            after: self.cursor.as_deref().map(parse_cursor).transpose()?,
        })
    }
}

/// `{"data": rows, "next_cursor": ...}` (see [`next_cursor`]).
pub(super) fn page<T: Serialize>(
    rows: &[T],
    limit: i64,
    key: impl Fn(&T) -> (chrono::DateTime<chrono::Utc>, Uuid),
) -> Json<Value> {
    Json(json!({"data": rows, "next_cursor": next_cursor(rows, limit, key)}))
}

/// The cursor of the page after `rows` when the page is full (`key` gives a row's
/// `(created_at, id)`); `None` on the last page.
pub(super) fn next_cursor<T>(
    rows: &[T],
    limit: i64,
    key: impl Fn(&T) -> (chrono::DateTime<chrono::Utc>, Uuid),
) -> Option<String> {
    (i64::try_from(rows.len()).unwrap_or(i64::MAX) == limit)
        .then(|| {
            rows.last().map(|r| {
                let (at, id) = key(r);
                cursor_of(at, id)
            })
        })
        .flatten()
}

fn to_value<T: Serialize>(v: &T) -> Json<Value> {
    Json(serde_json::to_value(v).unwrap_or(Value::Null))
}

/// An agent as the API shows it: the secrets of its tools masked (write-only).
fn shown(mut agent: iace_actors::catalog::Agent) -> iace_actors::catalog::Agent {
    iace_actors::catalog::profile::redact_secrets(&mut agent.persona_config);
    agent
}

/// The URLs of the agent's HTTP tools pass the SSRF guard (their form and address literals;
/// names are judged when they are called).
fn check_tool_urls(s: &AppState, persona: Option<&Value>) -> Result<(), ApiError> {
    let tools = persona
        .and_then(|p| p.get("http_tools"))
        .and_then(Value::as_array);
    for tool in tools.into_iter().flatten() {
        if let Some(url) = tool.get("url").and_then(Value::as_str) {
            s.outbound
                .check_url(url)
                .map_err(|e| ApiError::invalid(format!("persona_config: http_tools: url: {e}")))?;
        }
    }
    Ok(())
}

/// `POST /v1/agents`.
pub async fn create_agent(
    State(s): State<AppState>,
    Org(org): Org,
    AppJson(body): AppJson<NewAgent>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_tool_urls(&s, Some(&body.persona_config))?;
    let agent = s.engine.create_agent(org, body).await?;
    Ok((StatusCode::CREATED, to_value(&shown(agent))))
}

/// `GET /v1/agents/{id}`.
pub async fn get_agent(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    Ok(to_value(&shown(s.engine.get_agent(org, id).await?)))
}

/// `GET /v1/agents`.
pub async fn list_agents(
    State(s): State<AppState>,
    Org(org): Org,
    AppQuery(q): AppQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let req = q.request()?;
    let limit = req.limit;
    let rows: Vec<iace_actors::catalog::Agent> = s
        .engine
        .list_agents(org, req)
        .await?
        .into_iter()
        .map(shown)
        .collect();
    Ok(page(&rows, limit, |a| (a.created_at, a.id)))
}

/// `PATCH /v1/agents/{id}`.
pub async fn update_agent(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
    AppJson(patch): AppJson<AgentPatch>,
) -> Result<Json<Value>, ApiError> {
    check_tool_urls(&s, patch.persona_config.as_ref())?;
    Ok(to_value(&shown(
        s.engine.update_agent(org, id, patch).await?,
    )))
}

/// `DELETE /v1/agents/{id}`.
pub async fn delete_agent(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    s.engine.delete_agent(org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/customers`.
pub async fn create_customer(
    State(s): State<AppState>,
    Org(org): Org,
    AppJson(body): AppJson<NewCustomer>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let customer = s.engine.create_customer(org, body).await?;
    Ok((StatusCode::CREATED, to_value(&customer)))
}

/// `GET /v1/customers/{id}`.
pub async fn get_customer(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    Ok(to_value(&s.engine.get_customer(org, id).await?))
}

/// `GET /v1/customers`.
pub async fn list_customers(
    State(s): State<AppState>,
    Org(org): Org,
    AppQuery(q): AppQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let req = q.request()?;
    let limit = req.limit;
    let rows = s.engine.list_customers(org, req).await?;
    Ok(page(&rows, limit, |c| (c.created_at, c.id)))
}

/// `PATCH /v1/customers/{id}`.
pub async fn update_customer(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
    AppJson(patch): AppJson<CustomerPatch>,
) -> Result<Json<Value>, ApiError> {
    Ok(to_value(&s.engine.update_customer(org, id, patch).await?))
}

/// `DELETE /v1/customers/{id}`.
pub async fn delete_customer(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    s.engine.delete_customer(org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/phone-numbers`: the agent answers calls to the number from now on.
pub async fn create_phone_number(
    State(s): State<AppState>,
    Org(org): Org,
    AppJson(new): AppJson<NewPhoneNumber>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let number = s.engine.create_phone_number(org, new).await?;
    Ok((StatusCode::CREATED, to_value(&number)))
}

/// Query of `GET /v1/phone-numbers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumbersQuery {
    agent_id: Option<Uuid>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /v1/phone-numbers[?agent_id=]`.
pub async fn list_phone_numbers(
    State(s): State<AppState>,
    Org(org): Org,
    AppQuery(q): AppQuery<NumbersQuery>,
) -> Result<Json<Value>, ApiError> {
    let req = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .request()?;
    let limit = req.limit;
    let rows = s.engine.list_phone_numbers(org, q.agent_id, req).await?;
    Ok(page(&rows, limit, |n| (n.created_at, n.id)))
}

/// `DELETE /v1/phone-numbers/{id}`: calls to the number are rejected from now on.
pub async fn delete_phone_number(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    s.engine.delete_phone_number(org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
