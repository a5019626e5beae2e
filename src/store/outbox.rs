//! [`OutboxStore`]: the webhook outbox. Events are written by the call writes (in their
//! transaction, [`write_events`]); the delivery workers lease endpoints, read the due
//! deliveries and record their attempts here.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::machine::OrganizationId;
use iace_actors::outbox::WebhookEvent;
use iace_actors::ports::outbox::{
    AttemptOutcome, AttemptRecord, Delivery, DeliveryStatus, DueDelivery, EndpointLease,
    OrgLogEntry, OutboxStore, Recorded,
};
use iace_actors::ports::{PageRequest, StoreError, StoreResult};
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::{unavailable, PgStore};

/// Writes `events` and one delivery per enabled endpoint of their organization subscribed to
/// their type, in the caller's transaction. Events no endpoint wants are not kept.
pub(super) async fn write_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &[WebhookEvent],
) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len();
    let (mut ids, mut orgs, mut calls, mut types) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut occurred, mut after, mut payloads) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in events {
        ids.push(e.id.as_str());
        orgs.push(e.organization_id);
        calls.push(e.call_id);
        types.push(e.event_type);
        occurred.push(e.occurred_at);
        after.push(e.deliver_after);
        payloads.push(e.payload.clone());
    }
    // One statement: the events some endpoint wants, then their deliveries (in the order
    // given, which is the order of each call's journal).
    sqlx::query(
        "WITH ev AS ( \
           SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[], \
                                $5::timestamptz[], $6::timestamptz[], $7::jsonb[]) \
             WITH ORDINALITY AS v(id, org, call_id, type, occurred_at, deliver_after, payload, n) \
         ), targets AS ( \
           SELECT ev.*, ep.id AS endpoint_id FROM ev \
           JOIN webhook_endpoint ep ON ep.organization_id = ev.org AND ep.enabled \
            AND ev.type = ANY (ep.event_types) \
         ), stored AS ( \
           INSERT INTO webhook_event (id, organization_id, call_id, type, occurred_at, payload) \
           SELECT DISTINCT id, org, call_id, type, occurred_at, payload FROM targets \
           ON CONFLICT (id) DO NOTHING RETURNING id \
         ) \
         INSERT INTO webhook_delivery (id, endpoint_id, event_id, organization_id, call_id, \
                                       created_at, next_attempt_at) \
         SELECT gen_random_uuid(), t.endpoint_id, t.id, t.org, t.call_id, clock_timestamp(), \
                t.deliver_after \
         FROM targets t JOIN stored s ON s.id = t.id ORDER BY t.n, t.endpoint_id",
    )
    .bind(&ids)
    .bind(&orgs)
    .bind(&calls)
    .bind(&types)
    .bind(&occurred)
    .bind(&after)
    .bind(&payloads)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

const DELIVERY_COLUMNS: &str = "d.id, d.endpoint_id, d.event_id, e.type, d.call_id, d.status, \
     d.attempts, d.created_at, d.next_attempt_at, d.last_attempt_at, d.last_status_code, \
     d.last_latency_ms, d.last_error, d.delivered_at";

fn delivery_from_row(r: &PgRow) -> StoreResult<Delivery> {
    let status: String = r.try_get("status").map_err(unavailable)?;
    let code: Option<i32> = r.try_get("last_status_code").map_err(unavailable)?;
    let latency: Option<i32> = r.try_get("last_latency_ms").map_err(unavailable)?;
    let attempts: i32 = r.try_get("attempts").map_err(unavailable)?;
    Ok(Delivery {
        id: r.try_get("id").map_err(unavailable)?,
        endpoint_id: r.try_get("endpoint_id").map_err(unavailable)?,
        event_id: r.try_get("event_id").map_err(unavailable)?,
        event_type: r.try_get("type").map_err(unavailable)?,
        call_id: r.try_get("call_id").map_err(unavailable)?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status}")))?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: r.try_get("created_at").map_err(unavailable)?,
        next_attempt_at: r.try_get("next_attempt_at").map_err(unavailable)?,
        last_attempt_at: r.try_get("last_attempt_at").map_err(unavailable)?,
        last_status_code: code.and_then(|c| u16::try_from(c).ok()),
        last_latency_ms: latency.and_then(|l| u32::try_from(l).ok()),
        last_error: r.try_get("last_error").map_err(unavailable)?,
        delivered_at: r.try_get("delivered_at").map_err(unavailable)?,
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Disables the endpoint, fails its pending deliveries and tells the organization, in `tx`.
async fn disable(
    tx: &mut Transaction<'_, Postgres>,
    endpoint: Uuid,
    reason: &str,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    let row = sqlx::query(
        "UPDATE webhook_endpoint SET enabled = false, disabled_reason = $2, lease_owner = NULL, \
           lease_until = NULL, updated_at = $3 \
         WHERE id = $1 AND enabled RETURNING organization_id, url",
    )
    .bind(endpoint)
    .bind(reason)
    .bind(at)
    .fetch_optional(&mut **tx)
    .await
    .map_err(unavailable)?;
    let Some(row) = row else { return Ok(()) };
    let org: Uuid = row.try_get("organization_id").map_err(unavailable)?;
    let url: String = row.try_get("url").map_err(unavailable)?;
    let failed = sqlx::query(
        "UPDATE webhook_delivery SET status = 'failed', next_attempt_at = NULL, \
           last_error = coalesce(last_error || '; ', '') || 'endpoint disabled' \
         WHERE endpoint_id = $1 AND status = 'pending'",
    )
    .bind(endpoint)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    sqlx::query(
        "INSERT INTO organization_log (id, organization_id, at, kind, data) \
         VALUES (gen_random_uuid(), $1, $2, 'webhook_endpoint.disabled', $3)",
    )
    .bind(org)
    .bind(at)
    .bind(json!({
        "endpoint_id": endpoint,
        "url": url,
        "reason": reason,
        "pending_deliveries_failed": failed.rows_affected(),
    }))
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn claim_endpoints(
        &self,
        node: &str,
        now: DateTime<Utc>,
        ttl: Duration,
        limit: u32,
    ) -> StoreResult<Vec<EndpointLease>> {
        let rows = sqlx::query(
            "WITH due AS ( \
               SELECT DISTINCT endpoint_id FROM webhook_delivery \
               WHERE status = 'pending' AND next_attempt_at <= $2 \
             ), free AS ( \
               SELECT ep.id FROM webhook_endpoint ep JOIN due ON due.endpoint_id = ep.id \
               WHERE ep.enabled AND (ep.lease_until IS NULL OR ep.lease_until < $2 \
                                     OR ep.lease_owner = $1) \
               ORDER BY ep.lease_until NULLS FIRST LIMIT $4 \
               FOR UPDATE OF ep SKIP LOCKED \
             ) \
             UPDATE webhook_endpoint ep SET lease_owner = $1, \
               lease_until = $2 + make_interval(secs => $3) \
             FROM free WHERE ep.id = free.id \
             RETURNING ep.id, ep.organization_id, ep.url, ep.secret, ep.previous_secret, \
               ep.previous_secret_until, ep.lease_until",
        )
        .bind(node)
        .bind(now)
        .bind(secs(ttl))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let mut secrets = vec![r.try_get::<String, _>("secret").map_err(unavailable)?];
                let previous: Option<String> = r.try_get("previous_secret").map_err(unavailable)?;
                let until: Option<DateTime<Utc>> =
                    r.try_get("previous_secret_until").map_err(unavailable)?;
                if let (Some(p), Some(u)) = (previous, until) {
                    if u > now {
                        secrets.push(p);
                    }
                }
                Ok(EndpointLease {
                    endpoint_id: r.try_get("id").map_err(unavailable)?,
                    organization_id: r.try_get("organization_id").map_err(unavailable)?,
                    url: r.try_get("url").map_err(unavailable)?,
                    secrets,
                    until: r.try_get("lease_until").map_err(unavailable)?,
                })
            })
            .collect()
    }

    async fn renew_endpoint(
        &self,
        endpoint: Uuid,
        node: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE webhook_endpoint SET lease_until = $3 \
             WHERE id = $1 AND lease_owner = $2 AND enabled",
        )
        .bind(endpoint)
        .bind(node)
        .bind(until)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_endpoint(&self, endpoint: Uuid, node: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_endpoint SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(endpoint)
        .bind(node)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn due_deliveries(
        &self,
        endpoint: Uuid,
        now: DateTime<Utc>,
        limit: u32,
        in_flight: &[Uuid],
    ) -> StoreResult<Vec<DueDelivery>> {
        let rows = sqlx::query(
            "SELECT d.id, d.event_id, e.type, d.call_id, e.occurred_at, d.created_at, e.payload, \
                    d.attempts \
             FROM webhook_delivery d JOIN webhook_event e ON e.id = d.event_id \
             WHERE d.endpoint_id = $1 AND d.status = 'pending' AND d.next_attempt_at <= $2 \
               AND d.id <> ALL ($4) \
               AND NOT EXISTS ( \
                 SELECT 1 FROM webhook_delivery p \
                 WHERE p.endpoint_id = d.endpoint_id AND p.call_id = d.call_id \
                   AND p.status = 'pending' AND p.position < d.position) \
             ORDER BY d.position LIMIT $3",
        )
        .bind(endpoint)
        .bind(now)
        .bind(i64::from(limit))
        .bind(in_flight)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let attempts: i32 = r.try_get("attempts").map_err(unavailable)?;
                Ok(DueDelivery {
                    id: r.try_get("id").map_err(unavailable)?,
                    event_id: r.try_get("event_id").map_err(unavailable)?,
                    event_type: r.try_get("type").map_err(unavailable)?,
                    call_id: r.try_get("call_id").map_err(unavailable)?,
                    occurred_at: r.try_get("occurred_at").map_err(unavailable)?,
                    created_at: r.try_get("created_at").map_err(unavailable)?,
                    payload: r.try_get("payload").map_err(unavailable)?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn fix_payload(&self, event_id: &str, payload: &Value) -> StoreResult<Value> {
        sqlx::query_scalar(
            "UPDATE webhook_event SET payload = coalesce(payload, $2) WHERE id = $1 \
             RETURNING payload",
        )
        .bind(event_id)
        .bind(payload)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| StoreError::Unavailable(format!("event {event_id} is gone")))
    }

    async fn record_attempt(&self, r: &AttemptRecord) -> StoreResult<Recorded> {
        let mut tx = self.begin().await.map_err(unavailable)?;
        let latency_ms = i32::try_from(r.latency.as_millis()).unwrap_or(i32::MAX);
        let status = match (r.outcome, r.next_attempt_at) {
            (AttemptOutcome::Delivered, _) => "delivered",
            (AttemptOutcome::Failed, Some(_)) => "pending",
            _ => "failed",
        };
        let moved = sqlx::query(
            "UPDATE webhook_delivery SET status = $3, attempts = $2, next_attempt_at = $4, \
               last_attempt_at = $5, last_status_code = $6, last_latency_ms = $7, \
               last_error = $8, \
               delivered_at = CASE WHEN $3 = 'delivered' THEN $5 ELSE delivered_at END \
             WHERE id = $1 AND status = 'pending' AND attempts = $2 - 1",
        )
        .bind(r.delivery_id)
        .bind(i32::try_from(r.attempt).unwrap_or(i32::MAX))
        .bind(status)
        .bind(r.next_attempt_at)
        .bind(r.at)
        .bind(r.status_code.map(i32::from))
        .bind(latency_ms)
        .bind(&r.error)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if moved.rows_affected() == 0 {
            return Ok(Recorded::Overtaken);
        }
        let outcome = match r.outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Gone => "gone",
        };
        sqlx::query(
            "INSERT INTO webhook_attempt (delivery_id, attempt, at, outcome, status_code, \
               latency_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT DO NOTHING",
        )
        .bind(r.delivery_id)
        .bind(i32::try_from(r.attempt).unwrap_or(i32::MAX))
        .bind(r.at)
        .bind(outcome)
        .bind(r.status_code.map(i32::from))
        .bind(latency_ms)
        .bind(&r.error)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let recorded = match r.outcome {
            AttemptOutcome::Delivered => {
                sqlx::query(
                    "UPDATE webhook_endpoint SET failing_since = NULL \
                     WHERE id = $1 AND failing_since IS NOT NULL",
                )
                .bind(r.endpoint_id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                Recorded::Done
            }
            AttemptOutcome::Gone => {
                let reason = "the endpoint answered 410 Gone";
                disable(&mut tx, r.endpoint_id, reason, r.at).await?;
                Recorded::Disabled(reason.into())
            }
            AttemptOutcome::Failed => {
                let since: Option<DateTime<Utc>> = sqlx::query_scalar(
                    "UPDATE webhook_endpoint SET failing_since = coalesce(failing_since, $2) \
                     WHERE id = $1 RETURNING failing_since",
                )
                .bind(r.endpoint_id)
                .bind(r.at)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?
                .flatten();
                match since {
                    Some(since) if since <= r.disable_if_failing_since => {
                        let reason = format!(
                            "every delivery failed since {}",
                            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        );
                        disable(&mut tx, r.endpoint_id, &reason, r.at).await?;
                        Recorded::Disabled(reason)
                    }
                    _ => Recorded::Done,
                }
            }
        };
        tx.commit().await.map_err(unavailable)?;
        Ok(recorded)
    }

    async fn list_deliveries(
        &self,
        org: OrganizationId,
        endpoint: Uuid,
        page: &PageRequest,
    ) -> StoreResult<Option<Vec<Delivery>>> {
        let exists: Option<bool> = sqlx::query_scalar(
            "SELECT true FROM webhook_endpoint WHERE id = $1 AND organization_id = $2",
        )
        .bind(endpoint)
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        if exists.is_none() {
            return Ok(None);
        }
        let (after_at, after_id) = page.after.unzip();
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_delivery d \
             JOIN webhook_event e ON e.id = d.event_id \
             WHERE d.endpoint_id = $1 \
               AND ($2::timestamptz IS NULL OR (d.created_at, d.id) < ($2, $3)) \
             ORDER BY d.created_at DESC, d.id DESC LIMIT $4"
        ))
        .bind(endpoint)
        .bind(after_at)
        .bind(after_id)
        .bind(page.limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(delivery_from_row)
            .collect::<StoreResult<_>>()
            .map(Some)
    }

    async fn retry_delivery(
        &self,
        org: OrganizationId,
        endpoint: Uuid,
        delivery: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Delivery>> {
        // A delivered one is sent again on request (same webhook-id: the receiver dedupes).
        let row = sqlx::query(&format!(
            "WITH moved AS ( \
               UPDATE webhook_delivery SET status = 'pending', next_attempt_at = $4 \
               WHERE id = $1 AND endpoint_id = $2 AND organization_id = $3 \
               RETURNING * \
             ) \
             SELECT {DELIVERY_COLUMNS} FROM moved d JOIN webhook_event e ON e.id = d.event_id"
        ))
        .bind(delivery)
        .bind(endpoint)
        .bind(org)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    async fn org_log(
        &self,
        org: OrganizationId,
        page: &PageRequest,
    ) -> StoreResult<Vec<OrgLogEntry>> {
        let (after_at, after_id) = page.after.unzip();
        let rows = sqlx::query(
            "SELECT id, at, kind, data FROM organization_log WHERE organization_id = $1 \
               AND ($2::timestamptz IS NULL OR (at, id) < ($2, $3)) \
             ORDER BY at DESC, id DESC LIMIT $4",
        )
        .bind(org)
        .bind(after_at)
        .bind(after_id)
        .bind(page.limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(OrgLogEntry {
                    id: r.try_get("id").map_err(unavailable)?,
                    at: r.try_get("at").map_err(unavailable)?,
                    kind: r.try_get("kind").map_err(unavailable)?,
                    data: r.try_get("data").map_err(unavailable)?,
                })
            })
            .collect()
    }
}
