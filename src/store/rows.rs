//! Row <-> domain mapping.

use iace_actors::catalog::{Agent, AgentStatus, AgentType, Customer, PhoneNumberAssignment};
use iace_actors::machine::{
    Call, CallSpec, CallStatus, Deadline, Direction, EndReason, PhoneNumber, TimerKind,
};
use iace_actors::ports::{JournalEntry, StoreError};
use sqlx::postgres::PgRow;
use sqlx::Row;

/// Columns of `call` in the order [`call_from_row`] reads them.
pub(super) const CALL_COLUMNS: &str = "id, organization_id, direction, from_number, to_number, \
    agent_id, customer_id, metadata, status, end_reason, carrier_call_id, version, owner_epoch, \
    next_deadline_at, next_deadline_kind, ring_timeout_secs, max_duration_secs, created_at, \
    updated_at, ringing_at, answered_at, ended_at, release_pending, stray_legs";

/// Columns of `agent`.
pub(super) const AGENT_COLUMNS: &str = "id, organization_id, name, persona_config, voice_config, \
    status, agent_type, created_at, updated_at";

/// Columns of `customer`.
pub(super) const CUSTOMER_COLUMNS: &str =
    "id, organization_id, phone, email, name, segment, metadata, created_at, updated_at";

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("corrupt row: unexpected {what} `{value}`"))
}

fn get<'r, T>(row: &'r PgRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(col)
        .map_err(|e| StoreError::Corrupt(format!("reading column {col}: {e}")))
}

fn phone(row: &PgRow, col: &str) -> Result<PhoneNumber, StoreError> {
    let s: String = get(row, col)?;
    PhoneNumber::parse(&s).map_err(|_| corrupt("phone number", &s))
}

fn secs(row: &PgRow, col: &str) -> Result<u32, StoreError> {
    let v: i32 = get(row, col)?;
    u32::try_from(v).map_err(|_| corrupt(col, &v.to_string()))
}

/// A `call` row as the engine's snapshot.
pub(super) fn call_from_row(row: &PgRow) -> Result<Call, StoreError> {
    let direction: String = get(row, "direction")?;
    let status: String = get(row, "status")?;
    let end_reason: Option<String> = get(row, "end_reason")?;
    let deadline_kind: Option<String> = get(row, "next_deadline_kind")?;
    let deadline_at = get(row, "next_deadline_at")?;
    let deadline = match (deadline_kind, deadline_at) {
        (Some(kind), Some(at)) => Some(Deadline {
            kind: TimerKind::parse(&kind).ok_or_else(|| corrupt("deadline kind", &kind))?,
            at,
        }),
        _ => None,
    };
    Ok(Call {
        spec: CallSpec {
            id: get(row, "id")?,
            organization_id: get(row, "organization_id")?,
            direction: Direction::parse(&direction)
                .ok_or_else(|| corrupt("direction", &direction))?,
            from: phone(row, "from_number")?,
            to: phone(row, "to_number")?,
            agent_id: get(row, "agent_id")?,
            customer_id: get(row, "customer_id")?,
            metadata: get(row, "metadata")?,
            ring_timeout_secs: secs(row, "ring_timeout_secs")?,
            max_duration_secs: secs(row, "max_duration_secs")?,
            inbound_leg_id: match direction.as_str() {
                "inbound" => get(row, "carrier_call_id")?,
                _ => None,
            },
        },
        status: CallStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        end_reason: match end_reason {
            Some(r) => Some(EndReason::parse(&r).ok_or_else(|| corrupt("end reason", &r))?),
            None => None,
        },
        carrier_call_id: get(row, "carrier_call_id")?,
        version: get(row, "version")?,
        owner_epoch: get(row, "owner_epoch")?,
        deadline,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        ringing_at: get(row, "ringing_at")?,
        answered_at: get(row, "answered_at")?,
        ended_at: get(row, "ended_at")?,
        release_pending: get(row, "release_pending")?,
        stray_legs: serde_json::from_value(get(row, "stray_legs")?)
            .map_err(|e| StoreError::Corrupt(format!("corrupt stray_legs of a call: {e}")))?,
    })
}

/// A `call_event` row (`call_id, seq, at, data`).
pub(super) fn entry_from_row(row: &PgRow) -> Result<JournalEntry, StoreError> {
    let data: serde_json::Value = get(row, "data")?;
    let event = serde_json::from_value(data)
        .map_err(|e| StoreError::Corrupt(format!("corrupt journal entry: {e}")))?;
    Ok(JournalEntry {
        call_id: get(row, "call_id")?,
        seq: get(row, "seq")?,
        at: get(row, "at")?,
        event,
    })
}

/// An `agent` row.
pub(super) fn agent_from_row(row: &PgRow) -> Result<Agent, StoreError> {
    let status: String = get(row, "status")?;
    let agent_type: String = get(row, "agent_type")?;
    Ok(Agent {
        id: get(row, "id")?,
        organization_id: get(row, "organization_id")?,
        name: get(row, "name")?,
        persona_config: get(row, "persona_config")?,
        voice_config: get(row, "voice_config")?,
        status: AgentStatus::parse(&status).ok_or_else(|| corrupt("agent status", &status))?,
        agent_type: AgentType::parse(&agent_type)
            .ok_or_else(|| corrupt("agent type", &agent_type))?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

/// A `customer` row.
pub(super) fn customer_from_row(row: &PgRow) -> Result<Customer, StoreError> {
    Ok(Customer {
        id: get(row, "id")?,
        organization_id: get(row, "organization_id")?,
        phone: phone(row, "phone")?,
        email: get(row, "email")?,
        name: get(row, "name")?,
        segment: get(row, "segment")?,
        metadata: get(row, "metadata")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

/// Columns of [`phone_number_from_row`].
pub(super) const PHONE_NUMBER_COLUMNS: &str = "id, organization_id, agent_id, number, created_at";

/// A `phone_number` row.
pub(super) fn phone_number_from_row(row: &PgRow) -> Result<PhoneNumberAssignment, StoreError> {
    Ok(PhoneNumberAssignment {
        id: get(row, "id")?,
        organization_id: get(row, "organization_id")?,
        agent_id: get(row, "agent_id")?,
        number: phone(row, "number")?,
        created_at: get(row, "created_at")?,
    })
}

/// Columns of a `webhook_endpoint` row.
pub(super) const WEBHOOK_ENDPOINT_COLUMNS: &str = "id, organization_id, url, description, \
     event_types, enabled, disabled_reason, secret, previous_secret, previous_secret_until, \
     created_at, updated_at";

/// A `webhook_endpoint` row.
pub(super) fn webhook_endpoint_from_row(
    row: &PgRow,
) -> Result<iace_actors::catalog::webhooks::WebhookEndpoint, StoreError> {
    Ok(iace_actors::catalog::webhooks::WebhookEndpoint {
        id: get(row, "id")?,
        organization_id: get(row, "organization_id")?,
        url: get(row, "url")?,
        description: get(row, "description")?,
        event_types: get(row, "event_types")?,
        enabled: get(row, "enabled")?,
        disabled_reason: get(row, "disabled_reason")?,
        secret: get(row, "secret")?,
        previous_secret: get(row, "previous_secret")?,
        previous_secret_until: get(row, "previous_secret_until")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}
