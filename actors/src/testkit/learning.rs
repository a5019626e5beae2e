//! In-memory [`LearningStore`] and [`LearningQueries`] (the learning queue and the learned
//! rows) for the deterministic tests and simulations; Postgres is `iace::store`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::learning::embed::cosine;
use crate::machine::{CallId, CustomerId, OrganizationId};
use crate::ports::calls::StoreResult;
use crate::ports::learning::{
    LearnedRows, LearningJob, LearningQueries, LearningStore, MemoryHit, NewMemory, NewPattern,
    PatternHit,
};

/// One queue row of [`MemoryLearningStore`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRow {
    /// Organization.
    pub organization_id: OrganizationId,
    /// Not before.
    pub next_attempt_at: DateTime<Utc>,
    /// Attempts that did not finish.
    pub attempts: u32,
    /// Why the last one did not.
    pub last_error: Option<String>,
    /// Finished.
    pub done_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct Inner {
    queue: BTreeMap<CallId, QueueRow>,
    cache: HashMap<(String, String), Vec<f32>>,
    patterns: Vec<NewPattern>,
    memories: Vec<NewMemory>,
    usage: HashMap<Uuid, (u32, u32)>,
    leases: HashMap<String, (String, DateTime<Utc>)>,
}

/// In-memory [`LearningStore`]. The test (or the simulated call store) enqueues completed calls
/// with [`MemoryLearningStore::enqueue`].
#[derive(Default)]
pub struct MemoryLearningStore {
    inner: Mutex<Inner>,
}

impl MemoryLearningStore {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a completed call (once; a second enqueue of the same call changes nothing).
    pub fn enqueue(&self, call_id: CallId, org: OrganizationId, due: DateTime<Utc>) {
        self.lock().queue.entry(call_id).or_insert(QueueRow {
            organization_id: org,
            next_attempt_at: due,
            attempts: 0,
            last_error: None,
            done_at: None,
        });
    }

    /// The queue row of a call.
    pub fn queue_row(&self, call_id: CallId) -> Option<QueueRow> {
        self.lock().queue.get(&call_id).cloned()
    }

    /// Stored patterns, in insertion order.
    pub fn patterns(&self) -> Vec<NewPattern> {
        self.lock().patterns.clone()
    }

    /// Stored memories, in insertion order.
    pub fn memories(&self) -> Vec<NewMemory> {
        self.lock().memories.clone()
    }

    /// (uses, successes) recorded for a pattern.
    pub fn usage(&self, pattern: Uuid) -> (u32, u32) {
        self.lock().usage.get(&pattern).copied().unwrap_or_default()
    }

    /// Cached vectors.
    pub fn cache_len(&self) -> usize {
        self.lock().cache.len()
    }
}

#[async_trait]
impl LearningStore for MemoryLearningStore {
    async fn claim_learning(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<LearningJob>> {
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let mut inner = self.lock();
        let mut due: Vec<(DateTime<Utc>, CallId)> = inner
            .queue
            .iter()
            .filter(|(_, r)| r.done_at.is_none() && r.next_attempt_at <= now)
            .map(|(id, r)| (r.next_attempt_at, *id))
            .collect();
        due.sort();
        let mut jobs = Vec::new();
        for (_, id) in due.into_iter().take(limit as usize) {
            let row = inner.queue.get_mut(&id).expect("listed");
            row.next_attempt_at = now + lease;
            jobs.push(LearningJob {
                call_id: id,
                organization_id: row.organization_id,
                attempts: row.attempts,
            });
        }
        Ok(jobs)
    }

    async fn cached_embeddings(
        &self,
        model: &str,
        texts: &[String],
    ) -> StoreResult<Vec<Option<Vec<f32>>>> {
        let inner = self.lock();
        Ok(texts
            .iter()
            .map(|t| inner.cache.get(&(model.to_owned(), t.clone())).cloned())
            .collect())
    }

    async fn finish_learning(
        &self,
        call_id: CallId,
        rows: &LearnedRows,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut inner = self.lock();
        let Some(row) = inner.queue.get_mut(&call_id) else {
            return Ok(());
        };
        if row.done_at.is_some() {
            return Ok(());
        }
        row.done_at = Some(now);
        inner.patterns.extend(rows.patterns.iter().cloned());
        for id in &rows.used_patterns {
            let u = inner.usage.entry(*id).or_default();
            u.0 += 1;
            u.1 += u32::from(rows.success);
        }
        inner.memories.extend(rows.memories.iter().cloned());
        for (model, text, v) in &rows.cache {
            inner
                .cache
                .entry((model.clone(), text.clone()))
                .or_insert_with(|| v.clone());
        }
        Ok(())
    }

    async fn try_lead(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let mut inner = self.lock();
        let lease = inner
            .leases
            .entry(name.to_owned())
            .or_insert_with(|| (holder.to_owned(), now + ttl));
        if lease.0 == holder || lease.1 < now {
            *lease = (holder.to_owned(), now + ttl);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn retry_learning(
        &self,
        call_id: CallId,
        at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        if let Some(row) = self.lock().queue.get_mut(&call_id) {
            if row.done_at.is_none() {
                row.attempts += 1;
                row.next_attempt_at = at;
                row.last_error = Some(error.to_owned());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl LearningQueries for MemoryLearningStore {
    async fn memory_candidates(
        &self,
        org: OrganizationId,
        customer: CustomerId,
        model: &str,
        query: Option<&[f32]>,
        limit: u32,
    ) -> StoreResult<Vec<MemoryHit>> {
        let inner = self.lock();
        let mut hits: Vec<MemoryHit> = inner
            .memories
            .iter()
            .filter(|m| m.organization_id == org && m.customer_id == customer && m.model == model)
            .map(|m| MemoryHit {
                id: m.id,
                kind: m.draft.kind.as_str().into(),
                content: m.draft.content.clone(),
                importance: m.draft.importance,
                similarity: query.map_or(0.0, |q| cosine(q, &m.embedding)),
                relevance: 0.0,
                source_call_id: Some(m.source_call_id),
                created_at: m.created_at,
            })
            .collect();
        if query.is_some() {
            hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.id.cmp(&b.id)));
        } else {
            hits.sort_by(|a, b| {
                b.importance
                    .total_cmp(&a.importance)
                    .then(b.created_at.cmp(&a.created_at))
                    .then(a.id.cmp(&b.id))
            });
        }
        hits.truncate(limit as usize);
        Ok(hits)
    }

    async fn pattern_candidates(
        &self,
        org: OrganizationId,
        agent: Uuid,
        model: &str,
        query: Option<&[f32]>,
        limit: u32,
    ) -> StoreResult<Vec<PatternHit>> {
        let inner = self.lock();
        let mut hits: Vec<PatternHit> = inner
            .patterns
            .iter()
            .filter(|p| p.organization_id == org && p.agent_id == agent && p.model == model)
            .map(|p| {
                let (used, won) = inner.usage.get(&p.id).copied().unwrap_or_default();
                PatternHit {
                    id: p.id,
                    agent_id: p.agent_id,
                    pattern_type: p.draft.pattern_type.as_str().into(),
                    description: p.draft.description.clone(),
                    pattern_data: p.draft.data.clone(),
                    usage_count: i32::try_from(used).unwrap_or(i32::MAX),
                    success_rate: if used == 0 {
                        0.0
                    } else {
                        f64::from(won) / f64::from(used)
                    },
                    similarity: query.map_or(0.0, |q| cosine(q, &p.embedding)),
                    source_call_id: Some(p.source_call_id),
                    created_at: p.created_at,
                }
            })
            .collect();
        if query.is_some() {
            hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.id.cmp(&b.id)));
        } else {
            hits.sort_by(|a, b| {
                b.success_rate
                    .total_cmp(&a.success_rate)
                    .then(b.usage_count.cmp(&a.usage_count))
                    .then(b.created_at.cmp(&a.created_at))
                    .then(a.id.cmp(&b.id))
            });
        }
        hits.truncate(limit as usize);
        Ok(hits)
    }

    async fn forget_customer(&self, org: OrganizationId, customer: CustomerId) -> StoreResult<u64> {
        let mut inner = self.lock();
        let before = inner.memories.len();
        let gone: Vec<(String, String)> = inner
            .memories
            .iter()
            .filter(|m| m.organization_id == org && m.customer_id == customer)
            .map(|m| (m.model.clone(), m.draft.content.clone()))
            .collect();
        inner
            .memories
            .retain(|m| !(m.organization_id == org && m.customer_id == customer));
        for key in gone {
            inner.cache.remove(&key);
        }
        Ok((before - inner.memories.len()) as u64)
    }
}
