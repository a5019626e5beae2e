//! The learning queue and the learned rows: the port and its in-memory implementation (for the
//! deterministic tests and simulations; Postgres is `iace::store`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::extract::{MemoryDraft, PatternDraft};
use crate::machine::{CallId, CustomerId, OrganizationId};
use crate::ports::StoreResult;

/// A completed call waiting to be learned from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearningJob {
    /// The call.
    pub call_id: CallId,
    /// Its organization.
    pub organization_id: OrganizationId,
    /// Earlier attempts that did not finish.
    pub attempts: u32,
}

/// A pattern ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPattern {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub organization_id: OrganizationId,
    /// The agent it was learned for.
    pub agent_id: Uuid,
    /// The call it came from.
    pub source_call_id: CallId,
    /// What it is.
    pub draft: PatternDraft,
    /// The description's vector.
    pub embedding: Vec<f32>,
    /// The model that made the vector.
    pub model: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A customer memory ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMemory {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub organization_id: OrganizationId,
    /// The customer.
    pub customer_id: CustomerId,
    /// The call it came from.
    pub source_call_id: CallId,
    /// What it is.
    pub draft: MemoryDraft,
    /// The content's vector.
    pub embedding: Vec<f32>,
    /// The model that made the vector.
    pub model: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Everything one call taught, stored at once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LearnedRows {
    /// Patterns.
    pub patterns: Vec<NewPattern>,
    /// Memories.
    pub memories: Vec<NewMemory>,
    /// Fresh vectors for the embedding cache: (model, text, vector).
    pub cache: Vec<(String, String, Vec<f32>)>,
}

/// The learning queue, the embedding cache and the learned rows.
#[async_trait]
pub trait LearningStore: Send + Sync + 'static {
    /// Claims up to `limit` jobs due at `now`. A claimed job is not due again before
    /// `now + lease`: a worker that dies mid-job leaves it to be claimed again then.
    async fn claim_learning(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<LearningJob>>;

    /// Cached vectors of `texts` for `model`, in order (`None`: not cached).
    async fn cached_embeddings(
        &self,
        model: &str,
        texts: &[String],
    ) -> StoreResult<Vec<Option<Vec<f32>>>>;

    /// Stores what the call taught, fills the cache and marks the job done, in one
    /// transaction. Storing twice for the same call stores nothing the second time.
    async fn finish_learning(
        &self,
        call_id: CallId,
        rows: &LearnedRows,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// The job could not finish: count the attempt and try again at `at`.
    async fn retry_learning(
        &self,
        call_id: CallId,
        at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()>;
}

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
        inner.memories.extend(rows.memories.iter().cloned());
        for (model, text, v) in &rows.cache {
            inner
                .cache
                .entry((model.clone(), text.clone()))
                .or_insert_with(|| v.clone());
        }
        Ok(())
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
