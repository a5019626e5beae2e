//! `/v1/calls`: create (idempotent), read, list, journal, hangup, transfer.

use super::openapi::schemas as S;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use iace_actors::engine::{parse_status, EngineError, NewCall};
use iace_actors::machine::Call;
use iace_actors::ports::{CallFilter, JournalEntry};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Caller;
use super::auth::Org;
use super::error::ApiError;
use super::extract::{AppJson, AppPath, AppQuery};
use super::{cursor_of, page_limit, parse_cursor, AppState};

/// The call resource.
pub fn call_resource(c: &Call) -> Value {
    iace_actors::outbox::call_data(c)
}

fn event_resource(e: &JournalEntry) -> Value {
    json!({
        "seq": e.seq,
        "kind": e.event.kind(),
        "at": e.at,
        "data": e.event,
    })
}

/// Names the call in the request's log span and, in its trace, links the request's span to
/// the call's own trace (whose id is the call's id).
fn record_call(id: Uuid) {
    use opentelemetry::trace::TraceContextExt as _;
    tracing::Span::current().record("call_id", tracing::field::display(id));
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    span.set_attribute(opentelemetry::KeyValue::new("iace.call.id", id.to_string()));
    let call = crate::telemetry::call_context(id);
    span.add_link(call.span().span_context().clone(), Vec::new());
}

/// `POST /v1/calls`.
#[utoipa::path(
    post, path = "/v1/calls", tag = "calls", operation_id = "create_call",
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7e]{1,255}$",
        description = "Makes the create safe to retry: the same key and body give back the same call (200, `Idempotent-Replayed: true`), never a second dial.")),
    request_body = S::NewCall,
    responses(
        (status = 201, description = "The call, `pending`; it is dialled next.", body = S::Call),
        (status = 200, description = "The call an earlier request with this `Idempotency-Key` made.", body = S::Call,
            headers(("Idempotent-Replayed" = String, description = "`true`."))),
        (status = 404, description = "No such agent or customer (`not_found`).", body = S::Error),
        (status = 409, description = "The agent cannot place calls: inactive or inbound only (`conflict`).", body = S::Error),
        (status = 422, description = "The key was used with another body (`idempotency_mismatch`).", body = S::Error),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    AppJson(body): AppJson<NewCall>,
) -> Result<Response, ApiError> {
    let org = caller.org;
    // The plan's concurrent-call limit, enforced by the store in the same step as the insert.
    let plan = caller
        .account
        .effective_plan(state.engine.clock_now(), state.security.billing_grace);
    let max_live = state
        .security
        .limiter
        .is_some()
        .then(|| plan.limits().concurrent_calls);
    let mut keys = headers.get_all("idempotency-key").iter();
    let key = match (keys.next(), keys.next()) {
        (None, _) => None,
        // Taking either one would replay or dedupe against a key the client may not have meant.
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "Idempotency-Key: give the header once (it was sent more than once)",
            ))
        }
        (Some(v), None) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key must be printable ASCII"))?
                .to_owned(),
        ),
    };
    let created = state
        .engine
        .create_call_within(org, body, key, max_live)
        .await
        .map_err(|e| match e {
            EngineError::ConcurrentCallLimit { allowed, live } => {
                let mut api = ApiError::from(EngineError::ConcurrentCallLimit { allowed, live });
                api.message = format!(
                    "the {} plan allows {allowed} live calls at once and {live} are live; retry when one ends",
                    plan.as_str()
                );
                api
            }
            other => other.into(),
        })?;
    record_call(created.call.spec.id);
    let body = Json(call_resource(&created.call));
    Ok(if created.replayed {
        let mut resp = (StatusCode::OK, body).into_response();
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        resp
    } else {
        (StatusCode::CREATED, body).into_response()
    })
}

/// `GET /v1/calls/{id}`.
#[utoipa::path(
    get, path = "/v1/calls/{id}", tag = "calls", operation_id = "get_call",
    params(("id" = Uuid, Path, description = "The call's id.")),
    responses((status = 200, description = "The call and its analysis.", body = S::CallWithAnalysis)),
)]
pub async fn get(
    State(state): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    record_call(id);
    let call = state.engine.get_call(org, id).await?;
    let analysis = state.engine.call_analysis(org, id).await?;
    let mut resource = call_resource(&call);
    resource["analysis"] = serde_json::to_value(analysis).unwrap_or(Value::Null);
    Ok(Json(resource))
}

/// Query of `GET /v1/calls`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only calls in this status.
    #[param(value_type = Option<S::CallStatus>)]
    status: Option<String>,
    /// Only this agent's calls.
    agent_id: Option<Uuid>,
    /// Only calls to or from this customer.
    customer_id: Option<Uuid>,
    /// Only the calls the analysis judged successful (`true`) or not (`false`).
    success: Option<bool>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(pattern = r"^[0-9]{1,16}_[0-9a-fA-F]{32}$")]
    cursor: Option<String>,
}

/// `GET /v1/calls`.
#[utoipa::path(
    get, path = "/v1/calls", tag = "calls", operation_id = "list_calls",
    params(ListQuery),
    responses((status = 200, description = "A page of calls, newest first.", body = S::CallPage)),
)]
pub async fn list(
    State(state): State<AppState>,
    Org(org): Org,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let filter = CallFilter {
        status: q.status.as_deref().map(parse_status).transpose()?,
        agent_id: q.agent_id,
        customer_id: q.customer_id,
        success: q.success,
        limit,
        after: q.cursor.as_deref().map(parse_cursor).transpose()?,
    };
    let calls = state.engine.list_calls(org, filter).await?;
    let next = (i64::try_from(calls.len()).unwrap_or(i64::MAX) == limit)
        .then(|| calls.last().map(|c| cursor_of(c.created_at, c.spec.id)))
        .flatten();
    Ok(Json(json!({
        "data": calls.iter().map(call_resource).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

/// `GET /v1/calls/{id}/events`.
#[utoipa::path(
    get, path = "/v1/calls/{id}/events", tag = "calls", operation_id = "list_call_events",
    params(("id" = Uuid, Path, description = "The call's id.")),
    responses((status = 200, description = "The call's journal, oldest first.", body = S::CallEvents)),
)]
pub async fn events(
    State(state): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    record_call(id);
    let journal = state.engine.call_events(org, id).await?;
    Ok(Json(json!({
        "data": journal.iter().map(event_resource).collect::<Vec<_>>(),
    })))
}

/// `GET /v1/calls/{id}/transcript`: the conversation (segments, sentiment, events such as
/// barge-ins and escalations, per-turn latency), folded from the journal.
#[utoipa::path(
    get, path = "/v1/calls/{id}/transcript", tag = "calls", operation_id = "get_call_transcript",
    params(("id" = Uuid, Path, description = "The call's id.")),
    responses((status = 200, description = "The conversation.", body = S::Transcript)),
)]
pub async fn transcript(
    State(state): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    record_call(id);
    let call = state.engine.get_call(org, id).await?;
    let journal = state.engine.call_events(org, id).await?;
    Ok(Json(iace_actors::outbox::transcript_data(&call, &journal)))
}

/// `POST /v1/calls/{id}/hangup` (any body is ignored).
#[utoipa::path(
    post, path = "/v1/calls/{id}/hangup", tag = "calls", operation_id = "hang_up_call",
    params(("id" = Uuid, Path, description = "The call's id.")),
    responses(
        (status = 200, description = "The call: canceled before the answer, hung up after.", body = S::Call),
        (status = 409, description = "The call has ended already (`illegal_transition`).", body = S::Error),
    ),
)]
pub async fn hangup(
    State(state): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    record_call(id);
    let call = state.engine.hangup(org, id).await?;
    Ok(Json(call_resource(&call)))
}

/// `POST /v1/calls/{id}/transfer` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    /// The person to connect the caller to (E.164).
    #[schema(value_type = String, pattern = r"^\+[1-9][0-9]{7,14}$")]
    to: iace_actors::machine::PhoneNumber,
}

/// `POST /v1/calls/{id}/transfer`: connects an answered call to a person; the journal shows
/// `transfer_requested` now and `bridged` once the carrier connects them.
#[utoipa::path(
    post, path = "/v1/calls/{id}/transfer", tag = "calls", operation_id = "transfer_call",
    params(("id" = Uuid, Path, description = "The call's id.")),
    request_body = TransferBody,
    responses(
        (status = 202, description = "The transfer is asked of the carrier; the journal shows `transfer_requested`, then `bridged`.", body = S::Call),
        (status = 409, description = "The call is not answered, or has ended (`illegal_transition`).", body = S::Error),
    ),
)]
pub async fn transfer(
    State(state): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
    AppJson(body): AppJson<TransferBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    record_call(id);
    let call = state.engine.transfer(org, id, body.to).await?;
    Ok((StatusCode::ACCEPTED, Json(call_resource(&call))))
}
