//! [`OrganizationStore`] on Postgres: the `organization` row as accounts see it, its settings,
//! and the live-call count of its plan's limit.

use async_trait::async_trait;
use iace_actors::accounts::{OrgAccount, OrgPatch};
use iace_actors::machine::OrganizationId;
use iace_actors::ports::accounts::OrganizationStore;
use iace_actors::ports::StoreResult;

use super::rows::{org_from_row, ORG_COLUMNS};
use crate::store::{is_unique_violation, unavailable, PgStore};

#[async_trait]
impl OrganizationStore for PgStore {
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
}
