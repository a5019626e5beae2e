//! [`SessionStore`] on Postgres: the `refresh_token` table (one family per login session) and
//! the principal of an access token. Every change to a user's tokens first takes the user's
//! row lock (see the parent module).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::accounts::{NewRefreshToken, Principal, RevokeReason, Rotation, Subject};
use iace_actors::machine::OrganizationId;
use iace_actors::ports::accounts::SessionStore;
use iace_actors::ports::StoreResult;
use sqlx::PgConnection;
use uuid::Uuid;

use super::rows::{get, org_from_row, role, ORG_COLUMNS};
use super::users::lock_user;
use crate::store::{unavailable, PgStore};

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

/// The user a refresh token belongs to (never changes, so read without a lock).
async fn token_owner(conn: &mut PgConnection, token_hash: &str) -> StoreResult<Option<Uuid>> {
    sqlx::query_scalar("SELECT user_id FROM refresh_token WHERE token_hash = $1")
        .bind(token_hash)
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)
}

#[async_trait]
impl SessionStore for PgStore {
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
        let mut tx = self.begin().await.map_err(unavailable)?;
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
        let mut tx = self.begin().await.map_err(unavailable)?;
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
        let mut tx = self.begin().await.map_err(unavailable)?;
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
}
