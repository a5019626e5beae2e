//! `/v1/webhook-endpoints`: where an organization's call events are delivered. The URL passes
//! the SSRF guard before it is stored; the signing secret is made here and shown twice only:
//! in the answer to the create and to a rotation.

use super::openapi::schemas as S;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use iace_actors::catalog::webhooks::{NewWebhookEndpoint, WebhookEndpoint, WebhookEndpointPatch};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::auth::Org;
use super::catalog::{page, PageQuery};
use super::error::ApiError;
use super::extract::{AppJson, AppPatch, AppPath, AppQuery};
use super::AppState;
use crate::outbound::signing::Secret;

/// Default rotation window: the old secret signs beside the new one for a day.
const DEFAULT_WINDOW_SECS: u64 = 24 * 3600;

fn check_url(s: &AppState, url: &str) -> Result<(), ApiError> {
    s.outbound
        .check_url(url.trim())
        .map(|_| ())
        .map_err(|e| ApiError::invalid(format!("url: {e}")))
}

/// The endpoint as the API shows it, with its secret when it was just made.
fn shown(endpoint: &WebhookEndpoint, secret: Option<&str>) -> Json<Value> {
    let mut value = serde_json::to_value(endpoint).unwrap_or_default();
    if let (Some(secret), Some(map)) = (secret, value.as_object_mut()) {
        map.insert("secret".into(), Value::String(secret.to_owned()));
    }
    Json(value)
}

/// `POST /v1/webhook-endpoints`.
#[utoipa::path(
    post, path = "/v1/webhook-endpoints", tag = "webhook-endpoints", operation_id = "create_webhook_endpoint",
    request_body = S::NewWebhookEndpoint,
    responses((status = 201, description = "The endpoint with its signing `secret` (shown now and at rotations only).", body = S::WebhookEndpoint)),
)]
pub async fn create(
    State(s): State<AppState>,
    Org(org): Org,
    AppJson(new): AppJson<NewWebhookEndpoint>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_url(&s, &new.url)?;
    let secret = Secret::generate().expose();
    let endpoint = s
        .engine
        .create_webhook_endpoint(org, new, secret.clone())
        .await?;
    Ok((StatusCode::CREATED, shown(&endpoint, Some(&secret))))
}

/// `GET /v1/webhook-endpoints`.
#[utoipa::path(
    get, path = "/v1/webhook-endpoints", tag = "webhook-endpoints", operation_id = "list_webhook_endpoints",
    params(PageQuery),
    responses((status = 200, description = "A page of endpoints, newest first.", body = S::WebhookEndpointPage)),
)]
pub async fn list(
    State(s): State<AppState>,
    Org(org): Org,
    AppQuery(q): AppQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let req = q.request()?;
    let limit = req.limit;
    let rows = s.engine.list_webhook_endpoints(org, req).await?;
    Ok(page(&rows, limit, |e| (e.created_at, e.id)))
}

/// `GET /v1/webhook-endpoints/{id}`.
#[utoipa::path(
    get, path = "/v1/webhook-endpoints/{id}", tag = "webhook-endpoints", operation_id = "get_webhook_endpoint",
    params(("id" = Uuid, Path, description = "The endpoint's id.")),
    responses((status = 200, description = "The endpoint.", body = S::WebhookEndpoint)),
)]
pub async fn get(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    Ok(shown(&s.engine.get_webhook_endpoint(org, id).await?, None))
}

/// `PATCH /v1/webhook-endpoints/{id}`.
#[utoipa::path(
    patch, path = "/v1/webhook-endpoints/{id}", tag = "webhook-endpoints", operation_id = "update_webhook_endpoint",
    params(("id" = Uuid, Path, description = "The endpoint's id.")),
    request_body = S::WebhookEndpointPatch,
    responses((status = 200, description = "The endpoint.", body = S::WebhookEndpoint)),
)]
pub async fn update(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
    AppPatch(patch): AppPatch<WebhookEndpointPatch>,
) -> Result<Json<Value>, ApiError> {
    if let Some(url) = &patch.url {
        check_url(&s, url)?;
    }
    let endpoint = s.engine.update_webhook_endpoint(org, id, patch).await?;
    Ok(shown(&endpoint, None))
}

/// `DELETE /v1/webhook-endpoints/{id}`.
#[utoipa::path(
    delete, path = "/v1/webhook-endpoints/{id}", tag = "webhook-endpoints", operation_id = "delete_webhook_endpoint",
    params(("id" = Uuid, Path, description = "The endpoint's id.")),
    responses((status = 204, description = "Deleted; its pending deliveries are dropped.")),
)]
pub async fn delete(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    s.engine.delete_webhook_endpoint(org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/webhook-endpoints/{id}/rotate-secret` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// How long the current secret goes on signing beside the new one (default a day, at
    /// most 7 days, 0 ends it at once).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604800)]
    window_secs: Option<u64>,
}

/// `POST /v1/webhook-endpoints/{id}/rotate-secret`: a new secret, shown once.
#[utoipa::path(
    post, path = "/v1/webhook-endpoints/{id}/rotate-secret", tag = "webhook-endpoints", operation_id = "rotate_webhook_endpoint_secret",
    params(("id" = Uuid, Path, description = "The endpoint's id.")),
    request_body = Rotation,
    responses((status = 200, description = "The endpoint with its new `secret` (shown in this answer only).", body = S::WebhookEndpoint)),
)]
pub async fn rotate(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
    AppJson(rotation): AppJson<Rotation>,
) -> Result<Json<Value>, ApiError> {
    let secret = Secret::generate().expose();
    let window = Duration::from_secs(rotation.window_secs.unwrap_or(DEFAULT_WINDOW_SECS));
    let endpoint = s
        .engine
        .rotate_webhook_endpoint_secret(org, id, secret.clone(), window)
        .await?;
    Ok(shown(&endpoint, Some(&secret)))
}

/// `GET /v1/webhook-endpoints/{id}/deliveries`: every delivery to the endpoint, newest first,
/// with its status, attempts, last answer and next attempt.
#[utoipa::path(
    get, path = "/v1/webhook-endpoints/{id}/deliveries", tag = "webhook-endpoints", operation_id = "list_webhook_deliveries",
    params(("id" = Uuid, Path, description = "The endpoint's id."), PageQuery),
    responses((status = 200, description = "A page of deliveries, newest first.", body = S::DeliveryPage)),
)]
pub async fn deliveries(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
    AppQuery(q): AppQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let req = q.request()?;
    let limit = req.limit;
    let rows = s.engine.list_webhook_deliveries(org, id, req).await?;
    Ok(page(&rows, limit, |d| (d.created_at, d.id)))
}

/// `POST /v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry`: the delivery goes out
/// again now (any body is ignored).
#[utoipa::path(
    post, path = "/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry", tag = "webhook-endpoints", operation_id = "retry_webhook_delivery",
    params(("id" = Uuid, Path, description = "The endpoint's id."), ("delivery_id" = Uuid, Path, description = "The delivery's id.")),
    responses(
        (status = 202, description = "The delivery is due now.", body = S::Delivery),
        (status = 409, description = "The delivery is not failed, or its endpoint is disabled (`conflict`).", body = S::Error),
    ),
)]
pub async fn retry_delivery(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath((id, delivery)): AppPath<(Uuid, Uuid)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let delivery = s.engine.retry_webhook_delivery(org, id, delivery).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::to_value(delivery).unwrap_or_default()),
    ))
}

/// `GET /v1/organization/log`: what the server did on the organization's behalf (a webhook
/// endpoint disabled), newest first.
#[utoipa::path(
    get, path = "/v1/organization/log", tag = "organization", operation_id = "organization_log",
    params(PageQuery),
    responses((status = 200, description = "What the server did on the organization's behalf, newest first.", body = S::OrgLogPage)),
)]
pub async fn organization_log(
    State(s): State<AppState>,
    Org(org): Org,
    AppQuery(q): AppQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let req = q.request()?;
    let limit = req.limit;
    let rows = s.engine.organization_log(org, req).await?;
    Ok(page(&rows, limit, |e| (e.at, e.id)))
}
