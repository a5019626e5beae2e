//! The `organization` table as accounts see it: the account (plan, past-due state, linked
//! Stripe customer and HubSpot portal), its own settings, and the live-call count its plan's
//! concurrent-call limit is checked against.

use async_trait::async_trait;

use crate::accounts::{OrgAccount, OrgPatch};
use crate::machine::OrganizationId;
use crate::ports::calls::StoreResult;

/// Organization accounts and their plan limits. Scoped by the `org` argument.
#[async_trait]
pub trait OrganizationStore: Send + Sync + 'static {
    /// The organization's account.
    async fn organization(&self, org: OrganizationId) -> StoreResult<Option<OrgAccount>>;
    /// Applies `patch`; `Ok(None)` when the organization does not exist. A portal id another
    /// organization uses is a conflict.
    async fn update_organization(
        &self,
        org: OrganizationId,
        patch: &OrgPatch,
    ) -> StoreResult<Result<Option<OrgAccount>, String>>;

    /// Live (pending, ringing, in progress) calls of the organization.
    async fn live_calls(&self, org: OrganizationId) -> StoreResult<u64>;
}
