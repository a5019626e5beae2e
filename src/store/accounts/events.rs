//! The `account_event` table both vendors' events go through: each stored once (its vendor's
//! event id is the dedupe key) with the outcome of applying it.

use chrono::{DateTime, Utc};
use iace_actors::machine::OrganizationId;
use iace_actors::ports::StoreResult;
use sqlx::PgConnection;

use crate::store::unavailable;

/// Outcomes events of both vendors can have.
pub(super) const APPLIED: &str = "applied";
pub(super) const NO_MATCH: &str = "no_match";
pub(super) const NOT_ACTED_ON: &str = "ignored: event type not acted on";

/// Stores an account event unless its id was seen; `false` when it was (a duplicate).
pub(super) async fn insert_event(
    conn: &mut PgConnection,
    vendor: &str,
    event_id: &str,
    event_type: &str,
    payload: &serde_json::Value,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "INSERT INTO account_event \
           (vendor, event_id, event_type, organization_id, payload, outcome, received_at) \
         VALUES ($1, $2, $3, NULL, $4, 'pending', $5) ON CONFLICT DO NOTHING",
    )
    .bind(vendor)
    .bind(event_id)
    .bind(event_type)
    .bind(payload)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    Ok(done.rows_affected() == 1)
}

/// Records what applying an event did.
pub(super) async fn set_outcome(
    conn: &mut PgConnection,
    vendor: &str,
    event_id: &str,
    org: Option<OrganizationId>,
    outcome: &str,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE account_event SET organization_id = $3, outcome = $4 \
         WHERE vendor = $1 AND event_id = $2",
    )
    .bind(vendor)
    .bind(event_id)
    .bind(org)
    .bind(outcome)
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}
