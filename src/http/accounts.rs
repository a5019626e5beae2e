//! `/v1/organization` (plan, limits, CRM link) and `/v1/api-keys` (create, list, revoke).

use super::openapi::schemas as S;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use iace_actors::accounts::{KeyTier, OrgPatch, Role};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Caller;
use super::catalog::{page, PageQuery};
use super::error::ApiError;
use super::extract::{AppJson, AppPatch, AppPath, AppQuery};
use super::AppState;
use crate::auth;

fn account_json(state: &AppState, account: &iace_actors::accounts::OrgAccount) -> Value {
    let plan = account.effective_plan(state.engine.clock_now(), state.security.billing_grace);
    let grace_ends = account
        .past_due_since
        .map(|since| since + state.security.billing_grace);
    json!({
        "id": account.id,
        "name": account.name,
        "plan": account.plan,
        "effective_plan": plan,
        "past_due_since": account.past_due_since,
        "grace_period_ends_at": grace_ends,
        "limits": plan.limits(),
        "stripe_customer_id": account.stripe_customer_id,
        "hubspot_portal_id": account.hubspot_portal_id,
        "created_at": account.created_at,
    })
}

/// `GET /v1/organization`, with the live calls counted against the plan's concurrent-call limit.
#[utoipa::path(
    get, path = "/v1/organization", tag = "organization", operation_id = "get_organization",
    responses((status = 200, description = "The organization, with its live calls.", body = S::Organization)),
)]
pub async fn get_organization(
    State(state): State<AppState>,
    Caller(p): Caller,
) -> Result<Json<Value>, ApiError> {
    let account = state.engine.organization_account(p.org).await?;
    let live = state.engine.live_call_count(p.org).await?;
    let mut body = account_json(&state, &account);
    body["live_calls"] = json!(live);
    Ok(Json(body))
}

/// `PATCH /v1/organization` (owner): `name`, `hubspot_portal_id`. The plan is Stripe's to set.
#[utoipa::path(
    patch, path = "/v1/organization", tag = "organization", operation_id = "update_organization",
    request_body = S::OrgPatch,
    responses(
        (status = 200, description = "The organization.", body = S::Organization),
        (status = 409, description = "Another organization is linked to this HubSpot portal (`conflict`).", body = S::Error),
    ),
)]
pub async fn update_organization(
    State(state): State<AppState>,
    Caller(p): Caller,
    AppPatch(patch): AppPatch<OrgPatch>,
) -> Result<Json<Value>, ApiError> {
    if patch == OrgPatch::default() {
        return Err(ApiError::invalid(
            "nothing to change: give name and/or hubspot_portal_id",
        ));
    }
    let account = state.engine.update_organization(p.org, patch).await?;
    Ok(Json(account_json(&state, &account)))
}

/// `POST /v1/api-keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// To tell keys apart.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    /// Defaults to `member`; at most the creator's own.
    #[serde(default)]
    #[schema(value_type = Option<S::Role>)]
    role: Option<String>,
    /// Defaults to `standard`.
    #[serde(default)]
    #[schema(value_type = Option<S::KeyTier>)]
    tier: Option<String>,
}

/// `POST /v1/api-keys` (admin): the key is in this answer only.
#[utoipa::path(
    post, path = "/v1/api-keys", tag = "api-keys", operation_id = "create_api_key",
    request_body = NewKey,
    responses((status = 201, description = "The key: `api_key` is shown in this answer only.", body = S::CreatedApiKey)),
)]
pub async fn create_key(
    State(state): State<AppState>,
    Caller(p): Caller,
    AppJson(body): AppJson<NewKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let role = match body.role.as_deref() {
        None => Role::Member,
        Some(r) => Role::parse(r)
            .ok_or_else(|| ApiError::invalid("role: must be owner, admin, member or read_only"))?,
    };
    let tier = match body.tier.as_deref() {
        None => KeyTier::Standard,
        Some(t) => KeyTier::parse(t)
            .ok_or_else(|| ApiError::invalid("tier: must be low, standard or high"))?,
    };
    // The engine bounds the length; a name is also never blank or made of control characters
    // (as every other name of the API).
    let name = iace_actors::catalog::validate_name("name", &body.name)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let key = auth::generate_api_key();
    let info = state
        .engine
        .create_api_key(
            &p,
            &name,
            role,
            tier,
            auth::sha256_hex(&key),
            auth::key_prefix(&key),
        )
        .await?;
    tracing::info!(key_id = %info.id, role = %role, "API key created");
    let mut v = serde_json::to_value(&info).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("api_key".into(), Value::String(key));
    }
    Ok((StatusCode::CREATED, Json(v)))
}

/// `GET /v1/api-keys?limit=&cursor=` (admin): newest first.
#[utoipa::path(
    get, path = "/v1/api-keys", tag = "api-keys", operation_id = "list_api_keys",
    params(PageQuery),
    responses((status = 200, description = "A page of keys, newest first.", body = S::ApiKeyPage)),
)]
pub async fn list_keys(
    State(state): State<AppState>,
    Caller(p): Caller,
    AppQuery(q): AppQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let request = q.request()?;
    let limit = request.limit;
    let keys = state.engine.list_api_keys(p.org, request).await?;
    Ok(page(&keys, limit, |k| (k.created_at, k.id)))
}

/// `DELETE /v1/api-keys/{id}` (admin): revoked at once (the next request with it is refused).
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", tag = "api-keys", operation_id = "revoke_api_key",
    params(("id" = Uuid, Path, description = "The key's id.")),
    responses((status = 200, description = "The key, revoked: the next request with it is refused.", body = S::ApiKey)),
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    Caller(p): Caller,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let key = state.engine.api_key(p.org, id).await?;
    if key.role > p.role {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("a {} cannot revoke a key with role {}", p.role, key.role),
        ));
    }
    let info = state.engine.revoke_api_key(p.org, id).await?;
    tracing::info!(key_id = %info.id, "API key revoked");
    Ok(Json(serde_json::to_value(&info).unwrap_or(Value::Null)))
}
