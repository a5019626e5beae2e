//! Rows of the accounts tables read back into domain types, shared by the per-table stores: the
//! column lists their queries select and the decoders that check each stored enum value (an
//! unknown one is [`StoreError::Corrupt`], not a database fault).

use iace_actors::accounts::{ApiKeyInfo, KeyTier, OrgAccount, Plan, Role, User};
use iace_actors::ports::{StoreError, StoreResult};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::store::unavailable;

/// Columns of `organization o`, as [`org_from_row`] reads them (prefixed, to join).
pub(super) const ORG_COLUMNS: &str = "o.id AS org_id, o.name AS org_name, o.plan AS org_plan, \
    o.past_due_since AS org_past_due_since, o.stripe_customer_id AS org_stripe_customer_id, \
    o.hubspot_portal_id AS org_hubspot_portal_id, o.created_at AS org_created_at";

/// Columns of `app_user`.
pub(super) const USER_COLUMNS: &str =
    "id, organization_id, email, password_hash, role, created_at, disabled_at";

/// Columns of `api_key` as [`key_from_row`] reads them (never the hash).
pub(super) const KEY_COLUMNS: &str =
    "id, organization_id, name, key_prefix, role, tier, created_at, \
    last_used_at, revoked_at, created_by";

pub(super) fn get<'r, T>(row: &'r PgRow, col: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(col).map_err(unavailable)
}

pub(super) fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("corrupt row: unexpected {what} `{value}`"))
}

pub(super) fn role(row: &PgRow, col: &str) -> StoreResult<Role> {
    let s: String = get(row, col)?;
    Role::parse(&s).ok_or_else(|| corrupt("role", &s))
}

pub(super) fn tier(row: &PgRow, col: &str) -> StoreResult<KeyTier> {
    let s: String = get(row, col)?;
    KeyTier::parse(&s).ok_or_else(|| corrupt("key tier", &s))
}

pub(super) fn org_from_row(row: &PgRow) -> StoreResult<OrgAccount> {
    let plan: String = get(row, "org_plan")?;
    Ok(OrgAccount {
        id: get(row, "org_id")?,
        name: get(row, "org_name")?,
        plan: Plan::parse(&plan).ok_or_else(|| corrupt("plan", &plan))?,
        past_due_since: get(row, "org_past_due_since")?,
        stripe_customer_id: get(row, "org_stripe_customer_id")?,
        hubspot_portal_id: get(row, "org_hubspot_portal_id")?,
        created_at: get(row, "org_created_at")?,
    })
}

pub(super) fn user_from_row(row: &PgRow) -> StoreResult<User> {
    Ok(User {
        id: get(row, "id")?,
        organization_id: get(row, "organization_id")?,
        email: get(row, "email")?,
        password_hash: get(row, "password_hash")?,
        role: role(row, "role")?,
        created_at: get(row, "created_at")?,
        disabled_at: get(row, "disabled_at")?,
    })
}

pub(super) fn key_from_row(row: &PgRow) -> StoreResult<ApiKeyInfo> {
    Ok(ApiKeyInfo {
        id: get(row, "id")?,
        organization_id: get(row, "organization_id")?,
        name: get(row, "name")?,
        prefix: get(row, "key_prefix")?,
        role: role(row, "role")?,
        tier: tier(row, "tier")?,
        created_at: get(row, "created_at")?,
        last_used_at: get(row, "last_used_at")?,
        revoked_at: get(row, "revoked_at")?,
        created_by: get(row, "created_by")?,
    })
}
