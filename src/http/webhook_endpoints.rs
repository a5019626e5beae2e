//! `/v1/webhook-endpoints`: where an organization's call events are delivered. The URL passes
//! the SSRF guard before it is stored; the signing secret is made here and shown twice only:
//! in the answer to the create and to a rotation.

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
use super::extract::{AppJson, AppPath, AppQuery};
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
pub async fn get(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    Ok(shown(&s.engine.get_webhook_endpoint(org, id).await?, None))
}

/// `PATCH /v1/webhook-endpoints/{id}`.
pub async fn update(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
    AppJson(patch): AppJson<WebhookEndpointPatch>,
) -> Result<Json<Value>, ApiError> {
    if let Some(url) = &patch.url {
        check_url(&s, url)?;
    }
    let endpoint = s.engine.update_webhook_endpoint(org, id, patch).await?;
    Ok(shown(&endpoint, None))
}

/// `DELETE /v1/webhook-endpoints/{id}`.
pub async fn delete(
    State(s): State<AppState>,
    Org(org): Org,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    s.engine.delete_webhook_endpoint(org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/webhook-endpoints/{id}/rotate-secret` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// How long the current secret goes on signing beside the new one (default a day, at
    /// most 7 days, 0 ends it at once).
    #[serde(default)]
    window_secs: Option<u64>,
}

/// `POST /v1/webhook-endpoints/{id}/rotate-secret`: a new secret, shown once.
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
