//! [`ApiKeyStore`] on Postgres: the `api_key` table (hashes only) and the principal of a
//! presented key, whose use is recorded at most once a minute.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::accounts::{ApiKeyInfo, NewApiKey, Principal, Subject};
use iace_actors::machine::OrganizationId;
use iace_actors::ports::accounts::ApiKeyStore;
use iace_actors::ports::{PageRequest, StoreResult};
use tracing::warn;
use uuid::Uuid;

use super::rows::{get, key_from_row, org_from_row, role, tier, KEY_COLUMNS, ORG_COLUMNS};
use crate::store::{unavailable, PgStore};

/// A key's use is recorded at most this often.
const LAST_USED_EVERY_SECS: i64 = 60;

#[async_trait]
impl ApiKeyStore for PgStore {
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
}
