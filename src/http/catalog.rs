//! `/v1/agents`, `/v1/customers` and `/v1/phone-numbers`: create, read, list, patch, delete.

use super::openapi::schemas as S;
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
use super::extract::{AppJson, AppPatch, AppPath, AppQuery};
use super::{cursor_of, page_limit, parse_cursor, AppState};

/// `?limit=&cursor=` of the lists other than calls (catalog, users, API keys).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(pattern = r"^[0-9]{1,16}_[0-9a-fA-F]{32}$")]
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

/// An email is at most [`crate::auth::MAX_EMAIL_CHARS`] characters as sent, as for users
/// (the engine bounds the trimmed address too).
fn check_email_length(email: Option<&str>) -> Result<(), ApiError> {
    match email {
        Some(e) if e.chars().count() > crate::auth::MAX_EMAIL_CHARS => {
            Err(ApiError::invalid(format!(
                "email: must be at most {} characters",
                crate::auth::MAX_EMAIL_CHARS
            )))
        }
        _ => Ok(()),
    }
}

/// `POST /v1/agents`.
#[utoipa::path(
    post, path = "/v1/agents", tag = "agents", operation_id = "create_agent",
    request_body = S::NewAgent,
    responses((status = 201, description = "The agent.", body = S::Agent)),
)]
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
#[utoipa::path(
    get, path = "/v1/agents/{id}", tag = "agents", operation_id = "get_agent",
    params(("id" = Uuid, Path, description = "The agent's id.")),
    responses((status = 200, description = "The agent.", body = S::Agent)),
)]
pub async fn get_agent(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    Ok(to_value(&shown(s.engine.get_agent(org, id).await?)))
}

/// `GET /v1/agents`.
#[utoipa::path(
    get, path = "/v1/agents", tag = "agents", operation_id = "list_agents",
    params(PageQuery),
    responses((status = 200, description = "A page of agents, newest first.", body = S::AgentPage)),
)]
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
#[utoipa::path(
    patch, path = "/v1/agents/{id}", tag = "agents", operation_id = "update_agent",
    params(("id" = Uuid, Path, description = "The agent's id.")),
    request_body = S::AgentPatch,
    responses((status = 200, description = "The agent.", body = S::Agent)),
)]
pub async fn update_agent(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
    AppPatch(patch): AppPatch<AgentPatch>,
) -> Result<Json<Value>, ApiError> {
    check_tool_urls(&s, patch.persona_config.as_ref())?;
    Ok(to_value(&shown(
        s.engine.update_agent(org, id, patch).await?,
    )))
}

/// `DELETE /v1/agents/{id}`.
#[utoipa::path(
    delete, path = "/v1/agents/{id}", tag = "agents", operation_id = "delete_agent",
    params(("id" = Uuid, Path, description = "The agent's id.")),
    responses(
        (status = 204, description = "Deleted (archived when it has call history)."),
        (status = 409, description = "The agent answers phone numbers (`conflict`).", body = S::Error),
    ),
)]
pub async fn delete_agent(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    s.engine.delete_agent(org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/customers`.
#[utoipa::path(
    post, path = "/v1/customers", tag = "customers", operation_id = "create_customer",
    request_body = S::NewCustomer,
    responses(
        (status = 201, description = "The customer.", body = S::Customer),
        (status = 409, description = "The organization has a customer with this phone (`conflict`).", body = S::Error),
    ),
)]
pub async fn create_customer(
    State(s): State<AppState>,
    Org(org): Org,
    AppJson(body): AppJson<NewCustomer>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_email_length(body.email.as_deref())?;
    let customer = s.engine.create_customer(org, body).await?;
    Ok((StatusCode::CREATED, to_value(&customer)))
}

/// `GET /v1/customers/{id}`.
#[utoipa::path(
    get, path = "/v1/customers/{id}", tag = "customers", operation_id = "get_customer",
    params(("id" = Uuid, Path, description = "The customer's id.")),
    responses((status = 200, description = "The customer.", body = S::Customer)),
)]
pub async fn get_customer(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    Ok(to_value(&s.engine.get_customer(org, id).await?))
}

/// `GET /v1/customers`.
#[utoipa::path(
    get, path = "/v1/customers", tag = "customers", operation_id = "list_customers",
    params(PageQuery),
    responses((status = 200, description = "A page of customers, newest first.", body = S::CustomerPage)),
)]
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
#[utoipa::path(
    patch, path = "/v1/customers/{id}", tag = "customers", operation_id = "update_customer",
    params(("id" = Uuid, Path, description = "The customer's id.")),
    request_body = S::CustomerPatch,
    responses(
        (status = 200, description = "The customer.", body = S::Customer),
        (status = 409, description = "Another customer has this phone (`conflict`).", body = S::Error),
    ),
)]
pub async fn update_customer(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
    AppPatch(patch): AppPatch<CustomerPatch>,
) -> Result<Json<Value>, ApiError> {
    check_email_length(patch.email.as_ref().and_then(Option::as_deref))?;
    Ok(to_value(&s.engine.update_customer(org, id, patch).await?))
}

/// `DELETE /v1/customers/{id}`.
#[utoipa::path(
    delete, path = "/v1/customers/{id}", tag = "customers", operation_id = "delete_customer",
    params(("id" = Uuid, Path, description = "The customer's id.")),
    responses((status = 204, description = "Deleted.")),
)]
pub async fn delete_customer(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    s.engine.delete_customer(org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/phone-numbers`: the agent answers calls to the number from now on.
#[utoipa::path(
    post, path = "/v1/phone-numbers", tag = "phone-numbers", operation_id = "create_phone_number",
    request_body = S::NewPhoneNumber,
    responses(
        (status = 201, description = "The number; its agent answers calls to it from now on.", body = S::PhoneNumber),
        (status = 404, description = "No such agent (`not_found`).", body = S::Error),
        (status = 409, description = "The number is taken, or the agent does not answer calls (`conflict`).", body = S::Error),
    ),
)]
pub async fn create_phone_number(
    State(s): State<AppState>,
    Org(org): Org,
    AppJson(new): AppJson<NewPhoneNumber>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let number = s.engine.create_phone_number(org, new).await?;
    Ok((StatusCode::CREATED, to_value(&number)))
}

/// Query of `GET /v1/phone-numbers`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NumbersQuery {
    /// Only the numbers this agent answers.
    agent_id: Option<Uuid>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(pattern = r"^[0-9]{1,16}_[0-9a-fA-F]{32}$")]
    cursor: Option<String>,
}

/// `GET /v1/phone-numbers[?agent_id=]`.
#[utoipa::path(
    get, path = "/v1/phone-numbers", tag = "phone-numbers", operation_id = "list_phone_numbers",
    params(NumbersQuery),
    responses((status = 200, description = "A page of numbers, newest first.", body = S::PhoneNumberPage)),
)]
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
#[utoipa::path(
    delete, path = "/v1/phone-numbers/{id}", tag = "phone-numbers", operation_id = "delete_phone_number",
    params(("id" = Uuid, Path, description = "The number's id.")),
    responses((status = 204, description = "Deleted; calls to the number are rejected from now on.")),
)]
pub async fn delete_phone_number(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    s.engine.delete_phone_number(org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
