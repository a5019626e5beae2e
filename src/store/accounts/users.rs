//! [`UserStore`] on Postgres: the `app_user` table. Disabling a user or changing a password
//! revokes their refresh tokens in the same transaction, under the user's row lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::accounts::{RevokeReason, Role, User, UserActor, UserChange, UserUpdate};
use iace_actors::machine::OrganizationId;
use iace_actors::ports::accounts::UserStore;
use iace_actors::ports::{PageRequest, StoreResult};
use sqlx::PgConnection;
use uuid::Uuid;

use super::rows::{corrupt, user_from_row, USER_COLUMNS};
use crate::store::{unavailable, PgStore};

/// Locks the user's row, serializing changes to their tokens; the user, if there is one.
pub(super) async fn lock_user(conn: &mut PgConnection, user: Uuid) -> StoreResult<Option<User>> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM app_user WHERE id = $1 FOR NO KEY UPDATE"
    ))
    .bind(user)
    .fetch_optional(&mut *conn)
    .await
    .map_err(unavailable)?;
    row.as_ref().map(user_from_row).transpose()
}

#[async_trait]
impl UserStore for PgStore {
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
        let mut tx = self.begin().await.map_err(unavailable)?;
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
        let mut tx = self.begin().await.map_err(unavailable)?;
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
}
