//! Webhook endpoints through the engine: registered, read, changed, rotated and deleted on the
//! query pool. The server checks the URL (SSRF guard) and makes the secrets; the engine stores
//! them.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::{clamp_limit, Engine, EngineError};
use crate::catalog::webhooks::{NewWebhookEndpoint, WebhookEndpoint, WebhookEndpointPatch};
use crate::machine::OrganizationId;
use crate::ports::outbox::{Delivery, OrgLogEntry, OutboxStore};
use crate::ports::PageRequest;

/// Longest rotation window: both secrets sign for at most this long.
pub const MAX_ROTATION_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

impl Engine {
    /// Registers an endpoint signed with `secret` (`whsec_...`, made by the caller).
    pub async fn create_webhook_endpoint(
        &self,
        org: OrganizationId,
        new: NewWebhookEndpoint,
        secret: String,
    ) -> Result<WebhookEndpoint, EngineError> {
        let endpoint = new.validate(
            self.inner.shared.ports.ids.next_id(),
            org,
            secret,
            self.now(),
        )?;
        let stored = endpoint.clone();
        self.query(move |q| async move { Ok(q.insert_webhook_endpoint(&stored).await?) })
            .await?;
        Ok(endpoint)
    }

    /// One endpoint.
    pub async fn get_webhook_endpoint(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> Result<WebhookEndpoint, EngineError> {
        self.query(move |q| async move { Ok(q.get_webhook_endpoint(org, id).await?) })
            .await?
            .ok_or(EngineError::NotFound {
                what: "webhook endpoint",
            })
    }

    /// The organization's endpoints, newest first.
    pub async fn list_webhook_endpoints(
        &self,
        org: OrganizationId,
        mut page: PageRequest,
    ) -> Result<Vec<WebhookEndpoint>, EngineError> {
        page.limit = clamp_limit(page.limit);
        self.query(move |q| async move { Ok(q.list_webhook_endpoints(org, &page).await?) })
            .await
    }

    /// Applies a patch (`url` already checked by the caller).
    pub async fn update_webhook_endpoint(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: WebhookEndpointPatch,
    ) -> Result<WebhookEndpoint, EngineError> {
        let patch = patch.validate()?;
        self.change_webhook_endpoint(org, id, move |e, now| patch.apply(e, now))
            .await
    }

    /// Rotates the signing secret: `secret` signs from now on, and the current one goes on
    /// signing beside it for `window` (at most [`MAX_ROTATION_WINDOW`]; zero ends it at once).
    pub async fn rotate_webhook_endpoint_secret(
        &self,
        org: OrganizationId,
        id: Uuid,
        secret: String,
        window: Duration,
    ) -> Result<WebhookEndpoint, EngineError> {
        if window > MAX_ROTATION_WINDOW {
            return Err(EngineError::invalid(
                "window_secs",
                format!("must be at most {} (7 days)", MAX_ROTATION_WINDOW.as_secs()),
            ));
        }
        let window = chrono::Duration::from_std(window)
            .map_err(|_| EngineError::invalid("window_secs", "too long"))?;
        self.change_webhook_endpoint(org, id, move |e, now| {
            let old = std::mem::replace(&mut e.secret, secret.clone());
            if window.is_zero() {
                e.previous_secret = None;
                e.previous_secret_until = None;
            } else {
                e.previous_secret = Some(old);
                e.previous_secret_until = Some(now + window);
            }
            e.updated_at = now;
        })
        .await
    }

    /// Deletes an endpoint.
    pub async fn delete_webhook_endpoint(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> Result<(), EngineError> {
        let found = self
            .query(move |q| async move { Ok(q.delete_webhook_endpoint(org, id).await?) })
            .await?;
        if found {
            Ok(())
        } else {
            Err(EngineError::NotFound {
                what: "webhook endpoint",
            })
        }
    }

    fn outbox(&self) -> Result<Arc<dyn OutboxStore>, EngineError> {
        self.inner
            .shared
            .ports
            .outbox
            .clone()
            .ok_or_else(|| EngineError::Unavailable("webhook deliveries are not kept here".into()))
    }

    /// An endpoint's deliveries, newest first.
    pub async fn list_webhook_deliveries(
        &self,
        org: OrganizationId,
        endpoint: Uuid,
        mut page: PageRequest,
    ) -> Result<Vec<Delivery>, EngineError> {
        page.limit = clamp_limit(page.limit);
        let outbox = self.outbox()?;
        self.query(move |_| async move { Ok(outbox.list_deliveries(org, endpoint, &page).await?) })
            .await?
            .ok_or(EngineError::NotFound {
                what: "webhook endpoint",
            })
    }

    /// Sends a delivery again now (a failed one, or a delivered one the receiver lost). The
    /// endpoint must be enabled.
    pub async fn retry_webhook_delivery(
        &self,
        org: OrganizationId,
        endpoint: Uuid,
        delivery: Uuid,
    ) -> Result<Delivery, EngineError> {
        let found = self.get_webhook_endpoint(org, endpoint).await?;
        if !found.enabled {
            return Err(EngineError::Conflict(
                "the webhook endpoint is disabled; enable it before retrying its deliveries".into(),
            ));
        }
        let outbox = self.outbox()?;
        let now = self.now();
        self.query(move |_| async move {
            Ok(outbox.retry_delivery(org, endpoint, delivery, now).await?)
        })
        .await?
        .ok_or(EngineError::NotFound {
            what: "webhook delivery",
        })
    }

    /// The organization's log (what the server did on its behalf), newest first.
    pub async fn organization_log(
        &self,
        org: OrganizationId,
        mut page: PageRequest,
    ) -> Result<Vec<OrgLogEntry>, EngineError> {
        page.limit = clamp_limit(page.limit);
        let outbox = self.outbox()?;
        self.query(move |_| async move { Ok(outbox.org_log(org, &page).await?) })
            .await
    }

    /// Reads, changes and writes back an endpoint, again if another change came between.
    ///
    /// Each round of racing changes lets one through, so every change lands after at most as
    /// many rounds as there are racing changes: the retries are bounded by time (the engine's
    /// call timeout), not by a count a burst of changes could exceed.
    async fn change_webhook_endpoint(
        &self,
        org: OrganizationId,
        id: Uuid,
        change: impl Fn(&mut WebhookEndpoint, chrono::DateTime<chrono::Utc>) + Send + Sync,
    ) -> Result<WebhookEndpoint, EngineError> {
        let deadline = tokio::time::Instant::now() + self.inner.shared.config.call_timeout;
        for round in 1u64.. {
            if round > 1 {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                // The change that won the last round is written; give the others' a moment.
                tokio::time::sleep(Duration::from_millis(round.min(10))).await;
            }
            let mut endpoint = self.get_webhook_endpoint(org, id).await?;
            let read_at = endpoint.updated_at;
            let mut now = self.now();
            if now <= read_at {
                // The version is the time: a change must move it forward.
                now = read_at + chrono::Duration::microseconds(1);
            }
            change(&mut endpoint, now);
            endpoint.updated_at = now;
            let stored = endpoint.clone();
            let written = self
                .query(
                    move |q| async move { Ok(q.update_webhook_endpoint(&stored, read_at).await?) },
                )
                .await?;
            if written {
                return Ok(endpoint);
            }
        }
        Err(EngineError::Conflict(
            "the webhook endpoint was changed by other requests meanwhile; retry".into(),
        ))
    }
}
