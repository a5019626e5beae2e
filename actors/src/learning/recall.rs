//! Recall: the customer memories and learned patterns most relevant to a query, for the API
//! and for the agent's context at call start.
//!
//! Memories rank by relevance = similarity x (0.5 + 0.5 x importance) x 0.5^(age / half-life):
//! a close, important, recent memory beats a close old one. Candidates come from the vector
//! index (cosine, same embedding model only), several times `k`, and are re-ranked here.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::machine::{CustomerId, OrganizationId};
use crate::ports::calls::StoreError;
use crate::ports::learning::{EmbedError, EmbedTask, Embedder};
use crate::ports::learning::{LearningQueries, MemoryHit, PatternHit};

/// Why recall failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecallError {
    /// The store did not answer.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The query could not be embedded.
    #[error("{0}")]
    Embed(#[from] EmbedError),
}

/// How many candidates per wanted result come from the index before re-ranking.
const OVERFETCH: u32 = 4;

/// Largest `k`.
pub const MAX_K: u32 = 50;

/// Recall over the learned rows with one embedder.
#[derive(Clone)]
pub struct Recall {
    /// The rows.
    pub queries: Arc<dyn LearningQueries>,
    /// Embeds queries (the model the rows were made with).
    pub embedder: Arc<dyn Embedder>,
    /// Memory relevance halves every this long.
    pub half_life: Duration,
}

impl Recall {
    async fn embed_query(&self, query: Option<&str>) -> Result<Option<Vec<f32>>, RecallError> {
        let Some(q) = query.map(str::trim).filter(|q| !q.is_empty()) else {
            return Ok(None);
        };
        let mut v = self
            .embedder
            .embed(&[q.to_owned()], EmbedTask::Query)
            .await?;
        Ok(v.pop())
    }

    /// The customer's `k` most relevant memories for `query` (or the most important and
    /// recent ones without a query), as of `now`.
    pub async fn memories(
        &self,
        org: OrganizationId,
        customer: CustomerId,
        query: Option<&str>,
        k: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<MemoryHit>, RecallError> {
        let k = k.clamp(1, MAX_K);
        let q = self.embed_query(query).await?;
        let mut hits = self
            .queries
            .memory_candidates(
                org,
                customer,
                self.embedder.model(),
                q.as_deref(),
                k * OVERFETCH,
            )
            .await?;
        for h in &mut hits {
            let base = if q.is_some() {
                h.similarity.max(0.0)
            } else {
                1.0
            };
            h.relevance = relevance(base, h.importance, now - h.created_at, self.half_life);
        }
        hits.sort_by(|a, b| b.relevance.total_cmp(&a.relevance).then(a.id.cmp(&b.id)));
        hits.truncate(k as usize);
        Ok(hits)
    }

    /// The agent's `k` patterns nearest to `query`, best success rate first among equals; or
    /// the best ones without a query.
    pub async fn patterns(
        &self,
        org: OrganizationId,
        agent: Uuid,
        query: Option<&str>,
        k: u32,
    ) -> Result<Vec<PatternHit>, RecallError> {
        let k = k.clamp(1, MAX_K);
        let q = self.embed_query(query).await?;
        let mut hits = self
            .queries
            .pattern_candidates(
                org,
                agent,
                self.embedder.model(),
                q.as_deref(),
                k * OVERFETCH,
            )
            .await?;
        if q.is_some() {
            hits.sort_by(|a, b| {
                b.similarity
                    .total_cmp(&a.similarity)
                    .then(b.success_rate.total_cmp(&a.success_rate))
                    .then(a.id.cmp(&b.id))
            });
        }
        hits.truncate(k as usize);
        Ok(hits)
    }

    /// Right to be forgotten.
    pub async fn forget(
        &self,
        org: OrganizationId,
        customer: CustomerId,
    ) -> Result<u64, RecallError> {
        Ok(self.queries.forget_customer(org, customer).await?)
    }
}

/// What the customer's history predicts for this call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Chance the caller asks for a person, in `[0, 1]`.
    pub escalation_risk: f32,
    /// Why, for the agent's context and the journal.
    pub reasons: Vec<String>,
}

/// Escalation risk from the customer's memories: earlier calls handed to a person, calls that
/// ended with the customer frustrated, several open issues.
pub fn predict(memories: &[MemoryHit]) -> Prediction {
    use super::extract::{ENDED_FRUSTRATED, HANDED_OVER};
    let handed = memories
        .iter()
        .filter(|m| m.kind == "call_summary" && m.content.contains(HANDED_OVER))
        .count();
    let frustrated = memories
        .iter()
        .filter(|m| m.kind == "sentiment_summary" && m.content.contains(ENDED_FRUSTRATED))
        .count();
    let issues = memories.iter().filter(|m| m.kind == "issue").count();
    let mut risk = 0.1f32;
    let mut reasons = Vec::new();
    if handed > 0 {
        risk += if handed > 1 { 0.5 } else { 0.35 };
        reasons.push(format!("{handed} earlier call(s) went to a person"));
    }
    if frustrated > 0 {
        risk += 0.25;
        reasons.push(format!("ended {frustrated} earlier call(s) frustrated"));
    }
    if issues >= 2 {
        risk += 0.1;
        reasons.push(format!("{issues} issues raised before"));
    }
    Prediction {
        escalation_risk: risk.min(1.0),
        reasons,
    }
}

/// similarity x (0.5 + 0.5 x importance) x 0.5^(age / half-life); a future `created_at`
/// counts as age zero.
pub fn relevance(
    similarity: f32,
    importance: f32,
    age: chrono::Duration,
    half_life: Duration,
) -> f32 {
    let age = age.to_std().unwrap_or(Duration::ZERO).as_secs_f64();
    let half = half_life.as_secs_f64().max(1.0);
    let decay = 0.5f64.powf(age / half) as f32;
    similarity * (0.5 + 0.5 * importance.clamp(0.0, 1.0)) * decay
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn hit(kind: &str, content: &str) -> MemoryHit {
        MemoryHit {
            id: Uuid::nil(),
            kind: kind.into(),
            content: content.into(),
            importance: 0.5,
            similarity: 0.0,
            relevance: 0.0,
            source_call_id: None,
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
        }
    }

    #[test]
    fn history_predicts_escalation_risk() {
        assert_eq!(predict(&[]).escalation_risk, 0.1);
        let calm = [hit(
            "call_summary",
            "Inbound call on 2027-01-01: ...; resolved.",
        )];
        assert_eq!(predict(&calm).escalation_risk, 0.1);
        let rough = [
            hit(
                "call_summary",
                "Inbound call on 2027-01-01: ...; handed to a person.",
            ),
            hit(
                "sentiment_summary",
                "The customer's mood went from -0.20 to -0.70; they ended frustrated.",
            ),
            hit("issue", "Charged twice"),
            hit("issue", "Router broken"),
        ];
        let p = predict(&rough);
        assert!((p.escalation_risk - 0.8).abs() < 1e-6, "{p:?}");
        assert_eq!(p.reasons.len(), 3);
    }

    #[test]
    fn relevance_decays_by_half_life_and_weighs_importance() {
        let half = Duration::from_secs(30 * DAY as u64);
        let fresh = relevance(0.8, 1.0, chrono::Duration::zero(), half);
        assert!((fresh - 0.8).abs() < 1e-6);
        let month = relevance(0.8, 1.0, chrono::Duration::seconds(30 * DAY), half);
        assert!((month - 0.4).abs() < 1e-6, "{month}");
        // Unimportant counts half.
        let trivial = relevance(0.8, 0.0, chrono::Duration::zero(), half);
        assert!((trivial - 0.4).abs() < 1e-6);
        // A close old memory loses to a slightly less close recent one...
        let old_close = relevance(0.9, 0.7, chrono::Duration::seconds(90 * DAY), half);
        let new_near = relevance(0.7, 0.7, chrono::Duration::seconds(DAY), half);
        assert!(new_near > old_close, "{new_near} {old_close}");
        // ...and the clock running backwards does not inflate anything.
        assert_eq!(
            relevance(0.5, 0.5, chrono::Duration::seconds(-DAY), half),
            relevance(0.5, 0.5, chrono::Duration::zero(), half)
        );
    }
}
