//! Stripe's billing facts: each event stored once in `account_event` and applied to its
//! organization's plan in the same transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::accounts::BillingEvent;
use crate::ports::calls::StoreResult;

/// Billing events from Stripe.
#[async_trait]
pub trait BillingStore: Send + Sync + 'static {
    /// Stores a Stripe event (deduplicated by its id) and applies its change, in one
    /// transaction; `false` when it was stored before.
    async fn record_billing_event(
        &self,
        event: &BillingEvent,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
}
