//! HubSpot's CRM facts: contact events stored once in `account_event` and applied to the
//! linked customers, and the `crm_link_queue` of contacts no customer is linked to yet (claimed
//! under a lease, then linked by phone or email).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::accounts::{CrmContactFacts, CrmEvent, CrmLink, CrmLinkJob, EventsStored};
use crate::ports::calls::StoreResult;

/// CRM events from HubSpot and the contact-linking queue.
#[async_trait]
pub trait CrmStore: Send + Sync + 'static {
    /// Stores a batch of HubSpot events (each deduplicated by its id) and applies their
    /// changes, in one transaction. With `queue_links`, each contact of
    /// [`EventsStored::unlinked`] is queued for a CRM lookup in that transaction too (due at
    /// once, also when it was already queued).
    async fn record_crm_events(
        &self,
        events: &[CrmEvent],
        queue_links: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<EventsStored>;
    /// Claims up to `limit` due CRM lookups, oldest due first; a claimed lookup is not due
    /// again for `lease` (another node skips it meanwhile).
    async fn claim_crm_links(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<CrmLinkJob>>;
    /// A lookup failed: due again at `at`, one more attempt counted (unless queued again
    /// since the claim).
    async fn retry_crm_link(
        &self,
        job: &CrmLinkJob,
        at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()>;
    /// A lookup is resolved (linked, or nothing to link): off the queue, unless an event
    /// queued the contact again since the claim.
    async fn finish_crm_link(&self, job: &CrmLinkJob) -> StoreResult<()>;
    /// Links a HubSpot contact to the organization's unlinked customer with its phone (else
    /// its email), in one transaction (see [`CrmLink`]).
    async fn link_crm_contact(
        &self,
        portal_id: i64,
        contact: &CrmContactFacts,
        now: DateTime<Utc>,
    ) -> StoreResult<CrmLink>;
}
