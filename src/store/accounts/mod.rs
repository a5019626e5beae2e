//! [`AccountStore`] on Postgres: organization settings, users and their refresh-token families,
//! API keys, and the Stripe/HubSpot events (deduplicated by event id, stored and applied in one
//! transaction).
//!
//! Every change to a user's refresh tokens (rotation, reuse, logout, logout-all) first locks
//! the user's row (`FOR NO KEY UPDATE`, which the foreign-key checks of a login's insert do not
//! wait for): they run one at a time per user, each statement after the lock sees what the
//! previous one committed (a revocation also gets the token a concurrent rotation issued), and
//! there is no lock order between token rows to get wrong.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::accounts::{
    AccountStore, ApiKeyInfo, BillingAction, BillingEvent, CrmChange, CrmContactFacts, CrmEvent,
    CrmField, CrmLink, CrmLinkJob, EventsStored, KeyTier, NewApiKey, NewRefreshToken, OrgAccount,
    OrgPatch, Plan, Principal, RevokeReason, Role, Rotation, Subject, User, UserActor, UserChange,
    UserUpdate,
};
use iace_actors::machine::{OrganizationId, PhoneNumber};
use iace_actors::ports::{PageRequest, StoreError, StoreResult};
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, Row};
use tracing::warn;
use uuid::Uuid;

use super::{is_unique_violation, unavailable, PgStore};

/// Columns of `organization o`, as [`org_from_row`] reads them (prefixed, to join).
const ORG_COLUMNS: &str = "o.id AS org_id, o.name AS org_name, o.plan AS org_plan, \
    o.past_due_since AS org_past_due_since, o.stripe_customer_id AS org_stripe_customer_id, \
    o.hubspot_portal_id AS org_hubspot_portal_id, o.created_at AS org_created_at";

/// Columns of `app_user`.
const USER_COLUMNS: &str =
    "id, organization_id, email, password_hash, role, created_at, disabled_at";

/// Columns of `api_key` as [`key_from_row`] reads them (never the hash).
const KEY_COLUMNS: &str = "id, organization_id, name, key_prefix, role, tier, created_at, \
    last_used_at, revoked_at, created_by";

/// A key's use is recorded at most this often.
const LAST_USED_EVERY_SECS: i64 = 60;

const APPLIED: &str = "applied";
const NO_MATCH: &str = "no_match";
/// A contact event in a linked portal whose contact no customer is linked to (yet).
const UNLINKED: &str = "unlinked_contact";
/// Outcome of an unlinked contact's events once the contact is linked through the CRM.
const LINKED: &str = "applied: linked through the CRM";
const STALE: &str = "stale";
const NOT_ACTED_ON: &str = "ignored: event type not acted on";
const CUSTOMER_MISMATCH: &str = "ignored: customer mismatch";
const CUSTOMER_ELSEWHERE: &str = "ignored: customer belongs to another organization";
const INVALID_EMAIL: &str = "ignored: invalid email";
const INVALID_PHONE: &str = "ignored: invalid phone";
const PHONE_TAKEN: &str = "ignored: phone taken";
const PHONE_REQUIRED: &str = "ignored: a customer needs a phone";

fn get<'r, T>(row: &'r PgRow, col: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(col).map_err(unavailable)
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("corrupt row: unexpected {what} `{value}`"))
}

fn role(row: &PgRow, col: &str) -> StoreResult<Role> {
    let s: String = get(row, col)?;
    Role::parse(&s).ok_or_else(|| corrupt("role", &s))
}

fn tier(row: &PgRow, col: &str) -> StoreResult<KeyTier> {
    let s: String = get(row, col)?;
    KeyTier::parse(&s).ok_or_else(|| corrupt("key tier", &s))
}

fn org_from_row(row: &PgRow) -> StoreResult<OrgAccount> {
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

fn user_from_row(row: &PgRow) -> StoreResult<User> {
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

fn key_from_row(row: &PgRow) -> StoreResult<ApiKeyInfo> {
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

/// Revokes the family's live tokens (the user's row is locked); the ids revoked.
async fn revoke_family(
    conn: &mut PgConnection,
    family: Uuid,
    now: DateTime<Utc>,
    reason: RevokeReason,
) -> StoreResult<Vec<Uuid>> {
    sqlx::query_scalar(
        "UPDATE refresh_token SET revoked_at = $2, revoke_reason = $3 \
         WHERE family_id = $1 AND revoked_at IS NULL RETURNING id",
    )
    .bind(family)
    .bind(now)
    .bind(reason.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)
}

/// Locks the user's row, serializing changes to their tokens; the user, if there is one.
async fn lock_user(conn: &mut PgConnection, user: Uuid) -> StoreResult<Option<User>> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM app_user WHERE id = $1 FOR NO KEY UPDATE"
    ))
    .bind(user)
    .fetch_optional(&mut *conn)
    .await
    .map_err(unavailable)?;
    row.as_ref().map(user_from_row).transpose()
}

/// The user a refresh token belongs to (never changes, so read without a lock).
async fn token_owner(conn: &mut PgConnection, token_hash: &str) -> StoreResult<Option<Uuid>> {
    sqlx::query_scalar("SELECT user_id FROM refresh_token WHERE token_hash = $1")
        .bind(token_hash)
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)
}

/// Stores an account event unless its id was seen; `false` when it was (a duplicate).
async fn insert_event(
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
async fn set_outcome(
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

/// A HubSpot email value as stored: trimmed, lower-case, `None` when cleared; `Err` when it is
/// not an address.
fn crm_email(value: &str) -> Result<Option<String>, ()> {
    let email = value.trim().to_lowercase();
    if email.is_empty() {
        return Ok(None);
    }
    let ok = email.chars().count() <= 254
        && email.matches('@').count() == 1
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if ok {
        Ok(Some(email))
    } else {
        Err(())
    }
}

/// Applies a HubSpot event's change; the organization it concerned and the outcome.
async fn apply_crm(
    conn: &mut PgConnection,
    event: &CrmEvent,
    now: DateTime<Utc>,
) -> StoreResult<(Option<OrganizationId>, &'static str)> {
    let org: Option<OrganizationId> =
        sqlx::query_scalar("SELECT id FROM organization WHERE hubspot_portal_id = $1")
            .bind(event.portal_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
    let Some(change) = &event.change else {
        return Ok((org, NOT_ACTED_ON));
    };
    let Some(org) = org else {
        return Ok((None, NO_MATCH));
    };
    let contact = match change {
        CrmChange::Property { contact_id, .. } | CrmChange::Deleted { contact_id } => contact_id,
    };
    // `@>` so that the GIN index on metadata finds the customer.
    let customers: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM customer WHERE organization_id = $1 \
           AND metadata @> jsonb_build_object('hubspot_contact_id', $2::text) \
         ORDER BY id FOR UPDATE",
    )
    .bind(org)
    .bind(contact)
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    if customers.is_empty() {
        return Ok((Some(org), UNLINKED));
    }
    let outcome = match change {
        CrmChange::Deleted { .. } => {
            sqlx::query(
                "UPDATE customer SET metadata = metadata - 'hubspot_contact_id', updated_at = $2 \
                 WHERE id = ANY($1)",
            )
            .bind(&customers)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            APPLIED
        }
        CrmChange::Property {
            field: CrmField::Email,
            value,
            ..
        } => match crm_email(value) {
            Err(()) => INVALID_EMAIL,
            Ok(email) => {
                sqlx::query("UPDATE customer SET email = $2, updated_at = $3 WHERE id = ANY($1)")
                    .bind(&customers)
                    .bind(email)
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                APPLIED
            }
        },
        CrmChange::Property {
            field: CrmField::Phone,
            value,
            ..
        } => {
            let value = value.trim();
            if value.is_empty() {
                PHONE_REQUIRED
            } else if let Ok(phone) = PhoneNumber::parse(value) {
                // A savepoint: a phone another customer has must not abort the batch.
                let mut sp = conn.begin().await.map_err(unavailable)?;
                let set = sqlx::query(
                    "UPDATE customer SET phone = $2, updated_at = $3 WHERE id = ANY($1)",
                )
                .bind(&customers)
                .bind(phone.as_str())
                .bind(now)
                .execute(&mut *sp)
                .await;
                match set {
                    Ok(_) => {
                        sp.commit().await.map_err(unavailable)?;
                        APPLIED
                    }
                    Err(e) if is_unique_violation(&e) => {
                        sp.rollback().await.map_err(unavailable)?;
                        PHONE_TAKEN
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            } else {
                INVALID_PHONE
            }
        }
        CrmChange::Property {
            field: field @ (CrmField::FirstName | CrmField::LastName),
            value,
            ..
        } => {
            let value = value.trim();
            let first = *field == CrmField::FirstName;
            let key = if first {
                "hubspot_firstname"
            } else {
                "hubspot_lastname"
            };
            // The name is "first last" of the stored parts, with this one replaced.
            sqlx::query(
                "UPDATE customer SET \
                   metadata = CASE WHEN $3::text = '' THEN metadata - $2::text \
                              ELSE metadata || jsonb_build_object($2::text, $3::text) END, \
                   name = NULLIF(btrim(concat_ws(' ', \
                            COALESCE($4::text, metadata->>'hubspot_firstname'), \
                            COALESCE($5::text, metadata->>'hubspot_lastname'))), ''), \
                   updated_at = $6 \
                 WHERE id = ANY($1)",
            )
            .bind(&customers)
            .bind(key)
            .bind(value)
            .bind(first.then_some(value))
            .bind((!first).then_some(value))
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            APPLIED
        }
    };
    Ok((Some(org), outcome))
}

#[async_trait]
impl AccountStore for PgStore {
    async fn organization(&self, org: OrganizationId) -> StoreResult<Option<OrgAccount>> {
        let row = sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM organization o WHERE o.id = $1"
        ))
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn update_organization(
        &self,
        org: OrganizationId,
        patch: &OrgPatch,
    ) -> StoreResult<Result<Option<OrgAccount>, String>> {
        let portal = patch.hubspot_portal_id;
        let updated = sqlx::query(&format!(
            "UPDATE organization o SET name = COALESCE($2, o.name), \
               hubspot_portal_id = CASE WHEN $3 THEN $4 ELSE o.hubspot_portal_id END \
             WHERE o.id = $1 RETURNING {ORG_COLUMNS}"
        ))
        .bind(org)
        .bind(patch.name.as_deref())
        .bind(portal.is_some())
        .bind(portal.flatten())
        .fetch_optional(&self.pool)
        .await;
        match updated {
            Ok(row) => row.as_ref().map(org_from_row).transpose().map(Ok),
            // The portal is the only unique column the statement writes.
            Err(e) if is_unique_violation(&e) => Ok(Err(format!(
                "HubSpot portal {} is linked to another organization",
                portal.flatten().unwrap_or_default()
            ))),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn insert_user(&self, user: &User) -> StoreResult<bool> {
        let done = sqlx::query(&format!(
            "INSERT INTO app_user ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (email) DO NOTHING"
        ))
        .bind(user.id)
        .bind(user.organization_id)
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.created_at)
        .bind(user.disabled_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM app_user WHERE email = $1"
        ))
        .bind(email)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<User>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM app_user WHERE id = $1 AND organization_id = $2"
        ))
        .bind(id)
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self, org: OrganizationId, page: &PageRequest) -> StoreResult<Vec<User>> {
        // The cursor is the last row of the previous page; the next rows come after it in
        // this list's order.
        let sql = match page.after {
            None => format!(
                "SELECT {USER_COLUMNS} FROM app_user WHERE organization_id = $1 \
                 ORDER BY created_at, id LIMIT $2"
            ),
            Some(_) => format!(
                "SELECT {USER_COLUMNS} FROM app_user WHERE organization_id = $1 \
                   AND (created_at, id) > ($3, $4) \
                 ORDER BY created_at, id LIMIT $2"
            ),
        };
        let mut query = sqlx::query(&sql).bind(org).bind(page.limit);
        if let Some((at, id)) = page.after {
            query = query.bind(at).bind(id);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(
        &self,
        org: OrganizationId,
        id: Uuid,
        change: &UserChange,
        actor: UserActor,
        now: DateTime<Utc>,
    ) -> StoreResult<UserUpdate> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // The organization's enabled owners first, in id order (every owner-affecting change
        // takes them the same way, so the last-owner rule holds under concurrency), then the
        // user (row locks in the same order as sign-in and refresh: user, then tokens).
        let owners: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM app_user WHERE organization_id = $1 AND role = 'owner' \
               AND disabled_at IS NULL ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(org)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        // The acting user's role as it is now, under the owners' lock (a demotion that
        // committed while this request was on its way counts).
        let actor_role = match actor.user {
            None => actor.role,
            Some(me) => {
                let now_role: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
                    "SELECT role, disabled_at FROM app_user WHERE id = $1 AND organization_id = $2",
                )
                .bind(me)
                .bind(org)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
                match now_role {
                    Some((r, None)) => Role::parse(&r)
                        .ok_or_else(|| corrupt("role", &r))?
                        .min(actor.role),
                    _ => return Ok(UserUpdate::Outranked),
                }
            }
        };
        let actor = UserActor {
            role: actor_role,
            ..actor
        };
        let Some(user) = lock_user(&mut tx, id).await? else {
            return Ok(UserUpdate::NotFound);
        };
        if user.organization_id != org {
            return Ok(UserUpdate::NotFound);
        }
        if user.role > actor.role {
            return Ok(UserUpdate::Outranked);
        }
        if change.role.is_some_and(|r| r > actor.role) {
            return Ok(UserUpdate::RoleAboveOwn);
        }
        let disable = change.disabled == Some(true) && user.disabled_at.is_none();
        if disable && actor.user == Some(id) {
            return Ok(UserUpdate::SelfDisable);
        }
        let was_owner = user.role == Role::Owner && user.disabled_at.is_none();
        let role = change.role.unwrap_or(user.role);
        let disabled_at = match change.disabled {
            Some(true) => user.disabled_at.or(Some(now)),
            Some(false) => None,
            None => user.disabled_at,
        };
        let stays_owner = role == Role::Owner && disabled_at.is_none();
        if was_owner && !stays_owner && owners.iter().all(|o| *o == id) {
            return Ok(UserUpdate::LastOwner);
        }
        let row = sqlx::query(&format!(
            "UPDATE app_user SET role = $2, disabled_at = $3 WHERE id = $1 \
             RETURNING {USER_COLUMNS}"
        ))
        .bind(id)
        .bind(role.as_str())
        .bind(disabled_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        if disable {
            sqlx::query(
                "UPDATE refresh_token SET revoked_at = $2, revoke_reason = $3 \
                 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(now)
            .bind(RevokeReason::UserDisabled.as_str())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(UserUpdate::Updated(user_from_row(&row)?))
    }

    async fn set_password(
        &self,
        user: Uuid,
        password_hash: &str,
        keep: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        match lock_user(&mut tx, user).await? {
            Some(u) if u.disabled_at.is_none() => {}
            _ => return Ok(false),
        }
        sqlx::query("UPDATE app_user SET password_hash = $2 WHERE id = $1")
            .bind(user)
            .bind(password_hash)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(
            "UPDATE refresh_token SET revoked_at = $3, revoke_reason = $4 \
             WHERE user_id = $1 AND family_id <> $2 AND revoked_at IS NULL",
        )
        .bind(user)
        .bind(keep)
        .bind(now)
        .bind(RevokeReason::PasswordChanged.as_str())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn insert_refresh_token(&self, t: &NewRefreshToken) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO refresh_token \
               (id, family_id, user_id, organization_id, token_hash, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(t.id)
        .bind(t.family_id)
        .bind(t.user_id)
        .bind(t.organization_id)
        .bind(&t.token_hash)
        .bind(t.issued_at)
        .bind(t.expires_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next: &NewRefreshToken,
        now: DateTime<Utc>,
    ) -> StoreResult<Rotation> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let Some(owner) = token_owner(&mut tx, presented).await? else {
            return Ok(Rotation::Invalid);
        };
        // Of two concurrent presentations of one token, the second runs after the first
        // committed, finds the token rotated and reports reuse.
        let user = lock_user(&mut tx, owner).await?;
        let row = sqlx::query(
            "SELECT id, family_id, user_id, organization_id, expires_at, rotated_at, revoked_at \
             FROM refresh_token WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(presented)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else {
            return Ok(Rotation::Invalid);
        };
        let id: Uuid = get(&row, "id")?;
        let family_id: Uuid = get(&row, "family_id")?;
        let user_id: Uuid = get(&row, "user_id")?;
        let organization_id: OrganizationId = get(&row, "organization_id")?;
        let expires_at: DateTime<Utc> = get(&row, "expires_at")?;
        let rotated_at: Option<DateTime<Utc>> = get(&row, "rotated_at")?;
        let revoked_at: Option<DateTime<Utc>> = get(&row, "revoked_at")?;
        if revoked_at.is_some() {
            return Ok(Rotation::Invalid);
        }
        if rotated_at.is_some() {
            revoke_family(&mut tx, family_id, now, RevokeReason::Reuse).await?;
            tx.commit().await.map_err(unavailable)?;
            return Ok(Rotation::Reused { user_id, family_id });
        }
        if expires_at <= now {
            return Ok(Rotation::Invalid);
        }
        let user = match user {
            Some(user) if user.disabled_at.is_none() => user,
            _ => return Ok(Rotation::Invalid),
        };
        sqlx::query("UPDATE refresh_token SET rotated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO refresh_token \
               (id, family_id, user_id, organization_id, token_hash, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(next.id)
        .bind(family_id)
        .bind(user_id)
        .bind(organization_id)
        .bind(&next.token_hash)
        .bind(next.issued_at)
        .bind(next.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Rotation::Rotated { user, family_id })
    }

    async fn revoke_refresh_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(Uuid, Uuid)>> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let Some(owner) = token_owner(&mut tx, token_hash).await? else {
            return Ok(None);
        };
        lock_user(&mut tx, owner).await?;
        let row = sqlx::query(
            "SELECT id, user_id, family_id, expires_at FROM refresh_token WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let id: Uuid = get(&row, "id")?;
        let user_id: Uuid = get(&row, "user_id")?;
        let family_id: Uuid = get(&row, "family_id")?;
        let expires_at: DateTime<Utc> = get(&row, "expires_at")?;
        let revoked = revoke_family(&mut tx, family_id, now, RevokeReason::Logout).await?;
        tx.commit().await.map_err(unavailable)?;
        // Live: this call revoked it (nothing had before) and it had not expired; a rotated
        // token still names its session.
        let live = revoked.contains(&id) && expires_at > now;
        Ok(live.then_some((user_id, family_id)))
    }

    async fn revoke_user_sessions(&self, user: Uuid, now: DateTime<Utc>) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        lock_user(&mut tx, user).await?;
        let live: i64 = sqlx::query_scalar(
            "WITH r AS ( \
               UPDATE refresh_token SET revoked_at = $2, revoke_reason = $3 \
                WHERE user_id = $1 AND revoked_at IS NULL \
               RETURNING family_id, rotated_at IS NULL AND expires_at > $2 AS live) \
             SELECT count(DISTINCT family_id) FILTER (WHERE live) FROM r",
        )
        .bind(user)
        .bind(now)
        .bind(RevokeReason::LogoutAll.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(u64::try_from(live).unwrap_or(0))
    }

    async fn user_principal(
        &self,
        user: Uuid,
        session: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Principal>> {
        // A session is live while the newest token of its family (the one not rotated yet) is
        // neither revoked nor expired: every revocation (logout, logout-all, reuse, disabling,
        // a password change) revokes them all at once, and a session nobody refreshed in
        // time ends with its refresh token, its access tokens with it.
        let row = sqlx::query(&format!(
            "SELECT u.role, {ORG_COLUMNS} FROM app_user u \
             JOIN organization o ON o.id = u.organization_id \
             WHERE u.id = $1 AND u.disabled_at IS NULL \
               AND EXISTS (SELECT 1 FROM refresh_token t \
                            WHERE t.family_id = $2 AND t.user_id = u.id \
                              AND t.revoked_at IS NULL AND t.rotated_at IS NULL \
                              AND t.expires_at > $3)"
        ))
        .bind(user)
        .bind(session)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let account = org_from_row(&row)?;
        Ok(Some(Principal {
            org: account.id,
            subject: Subject::User { user, session },
            role: role(&row, "role")?,
            account,
            key_tier: None,
        }))
    }

    async fn key_principal(
        &self,
        key_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Principal>> {
        let row = sqlx::query(&format!(
            "SELECT k.id AS key_id, k.role, k.tier, k.last_used_at, {ORG_COLUMNS} FROM api_key k \
             JOIN organization o ON o.id = k.organization_id \
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL"
        ))
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let key: Uuid = get(&row, "key_id")?;
        let last_used_at: Option<DateTime<Utc>> = get(&row, "last_used_at")?;
        let account = org_from_row(&row)?;
        let principal = Principal {
            org: account.id,
            subject: Subject::ApiKey(key),
            role: role(&row, "role")?,
            account,
            key_tier: Some(tier(&row, "tier")?),
        };
        // Recording the use is best effort: it never fails the request. Checked here first so
        // that most requests make one round trip; the statement checks again (concurrent ones).
        let every = chrono::Duration::seconds(LAST_USED_EVERY_SECS);
        if last_used_at.is_none_or(|at| at < now - every) {
            let touched = sqlx::query(
                "UPDATE api_key SET last_used_at = $2 WHERE id = $1 \
                   AND (last_used_at IS NULL OR last_used_at < $2 - make_interval(secs => $3))",
            )
            .bind(key)
            .bind(now)
            .bind(LAST_USED_EVERY_SECS as f64)
            .execute(&self.pool)
            .await;
            if let Err(e) = touched {
                warn!(key_id = %key, error = %e, "recording an API key's last use failed");
            }
        }
        Ok(Some(principal))
    }

    async fn insert_api_key(&self, key: &NewApiKey) -> StoreResult<()> {
        let k = &key.info;
        sqlx::query(&format!(
            "INSERT INTO api_key ({KEY_COLUMNS}, key_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(k.id)
        .bind(k.organization_id)
        .bind(&k.name)
        .bind(&k.prefix)
        .bind(k.role.as_str())
        .bind(k.tier.as_str())
        .bind(k.created_at)
        .bind(k.last_used_at)
        .bind(k.revoked_at)
        .bind(k.created_by)
        .bind(&key.key_hash)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn list_api_keys(
        &self,
        org: OrganizationId,
        page: &PageRequest,
    ) -> StoreResult<Vec<ApiKeyInfo>> {
        // The cursor is the last row of the previous page; the next rows come after it in
        // this list's order.
        let sql = match page.after {
            None => format!(
                "SELECT {KEY_COLUMNS} FROM api_key WHERE organization_id = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT $2"
            ),
            Some(_) => format!(
                "SELECT {KEY_COLUMNS} FROM api_key WHERE organization_id = $1 \
                   AND (created_at, id) < ($3, $4) \
                 ORDER BY created_at DESC, id DESC LIMIT $2"
            ),
        };
        let mut query = sqlx::query(&sql).bind(org).bind(page.limit);
        if let Some((at, id)) = page.after {
            query = query.bind(at).bind(id);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn api_key(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<ApiKeyInfo>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_key WHERE id = $1 AND organization_id = $2"
        ))
        .bind(id)
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn revoke_api_key(
        &self,
        org: OrganizationId,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ApiKeyInfo>> {
        // A key revoked before keeps its revocation time.
        let row = sqlx::query(&format!(
            "UPDATE api_key SET revoked_at = COALESCE(revoked_at, $3) \
             WHERE id = $1 AND organization_id = $2 RETURNING {KEY_COLUMNS}"
        ))
        .bind(id)
        .bind(org)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn live_calls(&self, org: OrganizationId) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM call WHERE organization_id = $1 \
               AND status IN ('pending', 'ringing', 'in_progress')",
        )
        .bind(org)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn record_billing_event(
        &self,
        event: &BillingEvent,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        const VENDOR: &str = "stripe";
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
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

    async fn record_crm_events(
        &self,
        events: &[CrmEvent],
        queue_links: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<EventsStored> {
        const VENDOR: &str = "hubspot";
        let mut stored = EventsStored::default();
        if events.is_empty() {
            return Ok(stored);
        }
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        for event in events {
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
                stored.duplicates += 1;
                continue;
            }
            stored.new += 1;
            let (org, outcome) = apply_crm(&mut tx, event, now).await?;
            if outcome == UNLINKED {
                if let Some(
                    CrmChange::Property { contact_id, .. } | CrmChange::Deleted { contact_id },
                ) = &event.change
                {
                    let key = (event.portal_id, contact_id.clone());
                    if !stored.unlinked.contains(&key) {
                        stored.unlinked.push(key);
                    }
                }
            }
            set_outcome(&mut tx, VENDOR, &event.event_id, org, outcome).await?;
        }
        if queue_links {
            for (portal, contact) in &stored.unlinked {
                sqlx::query(
                    "INSERT INTO crm_link_queue (portal_id, contact_id, enqueued_at, next_attempt_at) \
                     VALUES ($1, $2, $3, $3) \
                     ON CONFLICT (portal_id, contact_id) DO UPDATE \
                       SET next_attempt_at = LEAST(crm_link_queue.next_attempt_at, $3)",
                )
                .bind(portal)
                .bind(contact)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(stored)
    }

    async fn claim_crm_links(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<CrmLinkJob>> {
        // The lease's end as stored is the claim's fencing token (see CrmLinkJob).
        let rows: Vec<(i64, String, i32, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "WITH due AS ( \
               SELECT portal_id, contact_id FROM crm_link_queue WHERE next_attempt_at <= $1 \
                ORDER BY next_attempt_at, portal_id, contact_id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE crm_link_queue q SET next_attempt_at = $1 + make_interval(secs => $2) \
               FROM due WHERE q.portal_id = due.portal_id AND q.contact_id = due.contact_id \
             RETURNING q.portal_id, q.contact_id, q.attempts, q.enqueued_at, q.next_attempt_at",
        )
        .bind(now)
        .bind(lease.as_secs_f64())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut jobs = rows;
        jobs.sort_by(|a, b| (a.3, a.0, &a.1).cmp(&(b.3, b.0, &b.1)));
        Ok(jobs
            .into_iter()
            .map(
                |(portal_id, contact_id, attempts, _, lease_until)| CrmLinkJob {
                    portal_id,
                    contact_id,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    lease_until,
                },
            )
            .collect())
    }

    async fn retry_crm_link(
        &self,
        job: &CrmLinkJob,
        at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE crm_link_queue SET attempts = attempts + 1, next_attempt_at = $3, \
               last_error = $4 \
             WHERE portal_id = $1 AND contact_id = $2 AND next_attempt_at = $5",
        )
        .bind(job.portal_id)
        .bind(&job.contact_id)
        .bind(at)
        .bind(error)
        .bind(job.lease_until)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn finish_crm_link(&self, job: &CrmLinkJob) -> StoreResult<()> {
        sqlx::query(
            "DELETE FROM crm_link_queue \
             WHERE portal_id = $1 AND contact_id = $2 AND next_attempt_at = $3",
        )
        .bind(job.portal_id)
        .bind(&job.contact_id)
        .bind(job.lease_until)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn link_crm_contact(
        &self,
        portal_id: i64,
        contact: &CrmContactFacts,
        now: DateTime<Utc>,
    ) -> StoreResult<CrmLink> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let org: Option<OrganizationId> =
            sqlx::query_scalar("SELECT id FROM organization WHERE hubspot_portal_id = $1")
                .bind(portal_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        let Some(org) = org else {
            return Ok(CrmLink::NoOrganization);
        };
        let linked: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM customer WHERE organization_id = $1 \
               AND metadata @> jsonb_build_object('hubspot_contact_id', $2::text) LIMIT 1",
        )
        .bind(org)
        .bind(&contact.contact_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if let Some(customer) = linked {
            return Ok(CrmLink::AlreadyLinked { customer });
        }
        let phone = contact
            .phone
            .as_deref()
            .and_then(|p| PhoneNumber::parse(p.trim()).ok());
        let email = contact
            .email
            .as_deref()
            .and_then(|e| crm_email(e).ok().flatten());
        let mut candidates: Vec<Uuid> = Vec::new();
        if let Some(phone) = &phone {
            candidates = sqlx::query_scalar(
                "SELECT id FROM customer WHERE organization_id = $1 AND phone = $2 \
                   AND NOT metadata ? 'hubspot_contact_id' ORDER BY id FOR UPDATE",
            )
            .bind(org)
            .bind(phone.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        if candidates.is_empty() {
            if let Some(email) = &email {
                candidates = sqlx::query_scalar(
                    "SELECT id FROM customer WHERE organization_id = $1 AND lower(email) = $2 \
                       AND NOT metadata ? 'hubspot_contact_id' ORDER BY id FOR UPDATE",
                )
                .bind(org)
                .bind(email)
                .fetch_all(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
        }
        let customer = match candidates.as_slice() {
            [] => return Ok(CrmLink::NoCustomer),
            [one] => *one,
            _ => return Ok(CrmLink::Ambiguous),
        };
        let clean = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let (first, last) = (clean(&contact.firstname), clean(&contact.lastname));
        let mut names = serde_json::Map::new();
        names.insert(
            "hubspot_contact_id".into(),
            serde_json::Value::String(contact.contact_id.clone()),
        );
        if let Some(f) = &first {
            names.insert("hubspot_firstname".into(), f.clone().into());
        }
        if let Some(l) = &last {
            names.insert("hubspot_lastname".into(), l.clone().into());
        }
        let name = [first, last]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        sqlx::query(
            "UPDATE customer SET metadata = metadata || $2, \
               email = COALESCE($3, email), name = COALESCE(NULLIF($4, ''), name), \
               updated_at = $5 WHERE id = $1",
        )
        .bind(customer)
        .bind(serde_json::Value::Object(names))
        .bind(email)
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(
            "UPDATE account_event SET outcome = $4 \
             WHERE vendor = 'hubspot' AND organization_id = $1 AND outcome = $2 \
               AND payload->>'objectId' = $3",
        )
        .bind(org)
        .bind(UNLINKED)
        .bind(&contact.contact_id)
        .bind(LINKED)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(CrmLink::Linked { customer })
    }
}

#[cfg(test)]
mod tests {
    use super::crm_email;

    #[test]
    fn crm_emails_are_trimmed_lowered_and_checked() {
        assert_eq!(
            crm_email("  Ana@Example.COM "),
            Ok(Some("ana@example.com".into()))
        );
        assert_eq!(crm_email("   "), Ok(None));
        assert_eq!(crm_email("a@b"), Ok(Some("a@b".into())));
        for bad in ["ana", "@example.com", "ana@", "a@b@c"] {
            assert_eq!(crm_email(bad), Err(()), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(243));
        assert_eq!(long.len(), 255);
        assert_eq!(crm_email(&long), Err(()));
        assert!(crm_email(&long[1..]).unwrap().is_some());
    }
}
