//! What the engine has learned, through the engine: a customer's memories, an agent's
//! patterns, and forgetting a customer. Tenancy is checked before the feature, so another
//! organization's id answers 404 whether or not learning is on.

use uuid::Uuid;

use super::{Engine, EngineError};
use crate::learning::recall::{Recall, RecallError};
use crate::machine::OrganizationId;
use crate::ports::learning::{MemoryHit, PatternHit};

impl Engine {
    fn recall(&self) -> Result<Recall, EngineError> {
        self.inner
            .shared
            .ports
            .recall
            .clone()
            .ok_or_else(|| EngineError::Unavailable("learning is turned off on this server".into()))
    }

    /// The customer's `k` most relevant memories for `query` (the most important and recent
    /// without one).
    pub async fn customer_memories(
        &self,
        org: OrganizationId,
        customer: Uuid,
        query: Option<String>,
        k: u32,
    ) -> Result<Vec<MemoryHit>, EngineError> {
        // Tenancy before the feature: another organization's id is 404 whether or not
        // learning is on, so the answer never tells which ids exist elsewhere.
        self.get_customer(org, customer).await?;
        let recall = self.recall()?;
        let now = self.now();
        self.query(move |_| async move {
            recall
                .memories(org, customer, query.as_deref(), k, now)
                .await
                .map_err(recall_error)
        })
        .await
    }

    /// The agent's `k` learned patterns nearest to `query`, or its best ones without one.
    pub async fn agent_patterns(
        &self,
        org: OrganizationId,
        agent: Uuid,
        query: Option<String>,
        k: u32,
    ) -> Result<Vec<PatternHit>, EngineError> {
        self.get_agent(org, agent).await?;
        let recall = self.recall()?;
        self.query(move |_| async move {
            recall
                .patterns(org, agent, query.as_deref(), k)
                .await
                .map_err(recall_error)
        })
        .await
    }

    /// Deletes every memory of the customer and their cached vectors (right to be
    /// forgotten); returns how many memories there were.
    pub async fn forget_customer_memories(
        &self,
        org: OrganizationId,
        customer: Uuid,
    ) -> Result<u64, EngineError> {
        self.get_customer(org, customer).await?;
        let recall = self.recall()?;
        self.query(move |_| async move { recall.forget(org, customer).await.map_err(recall_error) })
            .await
    }
}

fn recall_error(e: RecallError) -> EngineError {
    match e {
        RecallError::Store(e) => e.into(),
        RecallError::Embed(e) => EngineError::Unavailable(format!("embedding the query: {e}")),
    }
}
