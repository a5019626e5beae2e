//! [`BillingStore`] on Postgres: a Stripe event is stored once in `account_event` and applied
//! to its organization's plan (matched by the subscription's organization, else by the Stripe
//! customer) in the same transaction; an event older than the newest applied one is history.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::accounts::{BillingAction, BillingEvent};
use iace_actors::machine::OrganizationId;
use iace_actors::ports::accounts::BillingStore;
use iace_actors::ports::StoreResult;
use sqlx::{Connection, PgConnection};

use super::events::{insert_event, set_outcome, APPLIED, NOT_ACTED_ON, NO_MATCH};
use super::rows::get;
use crate::store::{is_unique_violation, unavailable, PgStore};

const STALE: &str = "stale";
const CUSTOMER_MISMATCH: &str = "ignored: customer mismatch";
const CUSTOMER_ELSEWHERE: &str = "ignored: customer belongs to another organization";

/// Applies a Stripe event's change; the organization it concerned and the outcome.
async fn apply_billing(
    conn: &mut PgConnection,
    event: &BillingEvent,
) -> StoreResult<(Option<OrganizationId>, &'static str)> {
    let Some(change) = &event.change else {
        return Ok((None, NOT_ACTED_ON));
    };
    let mut target: Option<(OrganizationId, Option<DateTime<Utc>>)> = None;
    if let Some(org) = change.organization {
        let row = sqlx::query(
            "SELECT stripe_customer_id, plan_event_at FROM organization WHERE id = $1 FOR UPDATE",
        )
        .bind(org)
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
        if let Some(row) = row {
            let customer: Option<String> = get(&row, "stripe_customer_id")?;
            match customer {
                Some(c) if c != change.customer => return Ok((Some(org), CUSTOMER_MISMATCH)),
                Some(_) => {}
                None => {
                    // A savepoint: another organization holding the customer must not abort
                    // the event's transaction.
                    let mut sp = conn.begin().await.map_err(unavailable)?;
                    let linked = sqlx::query(
                        "UPDATE organization SET stripe_customer_id = $2 WHERE id = $1",
                    )
                    .bind(org)
                    .bind(&change.customer)
                    .execute(&mut *sp)
                    .await;
                    match linked {
                        Ok(_) => sp.commit().await.map_err(unavailable)?,
                        Err(e) if is_unique_violation(&e) => {
                            sp.rollback().await.map_err(unavailable)?;
                            return Ok((Some(org), CUSTOMER_ELSEWHERE));
                        }
                        Err(e) => return Err(unavailable(e)),
                    }
                }
            }
            target = Some((org, get(&row, "plan_event_at")?));
        }
    }
    let (org, plan_event_at) = match target {
        Some(t) => t,
        None => {
            let row = sqlx::query(
                "SELECT id, plan_event_at FROM organization \
                 WHERE stripe_customer_id = $1 FOR UPDATE",
            )
            .bind(&change.customer)
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
            match row {
                Some(row) => (get(&row, "id")?, get(&row, "plan_event_at")?),
                None => return Ok((None, NO_MATCH)),
            }
        }
    };
    // Stripe does not order deliveries: an event older than the newest applied one is history.
    if plan_event_at.is_some_and(|at| at > event.created) {
        return Ok((Some(org), STALE));
    }
    let update = match change.action {
        BillingAction::Plan { plan, past_due } => sqlx::query(
            "UPDATE organization SET plan = $3, plan_event_at = $2, past_due_since = \
               CASE WHEN $4 THEN COALESCE(past_due_since, $2) ELSE NULL END \
             WHERE id = $1",
        )
        .bind(org)
        .bind(event.created)
        .bind(plan.as_str())
        .bind(past_due),
        BillingAction::PaymentFailed => sqlx::query(
            "UPDATE organization SET past_due_since = COALESCE(past_due_since, $2), \
               plan_event_at = $2 WHERE id = $1",
        )
        .bind(org)
        .bind(event.created),
        BillingAction::Paid => sqlx::query(
            "UPDATE organization SET past_due_since = NULL, plan_event_at = $2 WHERE id = $1",
        )
        .bind(org)
        .bind(event.created),
    };
    update.execute(&mut *conn).await.map_err(unavailable)?;
    Ok((Some(org), APPLIED))
}

#[async_trait]
impl BillingStore for PgStore {
    async fn record_billing_event(
        &self,
        event: &BillingEvent,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        const VENDOR: &str = "stripe";
        let mut tx = self.begin().await.map_err(unavailable)?;
        if !insert_event(
            &mut tx,
            VENDOR,
            &event.event_id,
            &event.event_type,
            &event.payload,
            now,
        )
        .await?
        {
            return Ok(false);
        }
        let (org, outcome) = apply_billing(&mut tx, event).await?;
        set_outcome(&mut tx, VENDOR, &event.event_id, org, outcome).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }
}
