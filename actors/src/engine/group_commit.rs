//! Group commit: a [`CallStore`] in front of another that gathers the journal appends of many
//! calls and writes them with [`CallStore::append_batch`], one transaction (one flush to
//! disk) per batch. Everything else goes straight through.
//!
//! Batches adapt to the load without a timer: up to `writers` batches are in flight at once;
//! when a writer is free it takes every append waiting (up to `max_batch`) and goes. A lone
//! append is written at once, as it would be without this; under load the appends that arrive
//! while the writers are busy make the next batches bigger. Each caller is answered only once
//! its batch has committed, with its own result: a stale version or epoch fails only that
//! call's append. A batch never holds two appends of one call (the later one waits for the
//! next batch; a call actor awaits each append anyway, and the version compare-and-set
//! settles any two that race).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use prometheus::{Histogram, HistogramOpts, Registry};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::machine::{Call, CallId};
use crate::ports::{
    Append, CallStore, IdempotencyKey, InboxInsert, InboxItem, InboxRow, InsertOutcome,
    JournalEntry, StoreError, StoreResult,
};

/// How the writer batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Batches in flight at once (each holds one database connection while it commits).
    pub writers: usize,
    /// Appends per batch at most.
    pub max_batch: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            writers: 4,
            max_batch: 256,
        }
    }
}

/// One append waiting for its batch.
struct Pending {
    append: Append,
    answer: oneshot::Sender<StoreResult<()>>,
}

/// The store with group commit in front of `inner`'s appends (see the module docs).
pub struct GroupCommit {
    inner: Arc<dyn CallStore>,
    queue: mpsc::UnboundedSender<Pending>,
}

impl GroupCommit {
    /// Starts the writer (on the current tokio runtime). Batch sizes are observed in
    /// `iace_journal_batch_size` when a registry is given.
    pub fn start(
        inner: Arc<dyn CallStore>,
        config: GroupCommitConfig,
        registry: Option<&Registry>,
    ) -> prometheus::Result<Arc<GroupCommit>> {
        let sizes = Histogram::with_opts(
            HistogramOpts::new(
                "iace_journal_batch_size",
                "Journal appends written per transaction (group commit)",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        if let Some(registry) = registry {
            registry.register(Box::new(sizes.clone()))?;
        }
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(write(inner.clone(), rx, config, sizes));
        Ok(Arc::new(GroupCommit { inner, queue }))
    }
}

/// The writer: takes what waits when a writer is free, never two appends of one call in a
/// batch. Ends when the store is dropped and everything queued is written.
async fn write(
    inner: Arc<dyn CallStore>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    config: GroupCommitConfig,
    sizes: Histogram,
) {
    let writers = Arc::new(Semaphore::new(config.writers.max(1)));
    let max_batch = config.max_batch.max(1);
    // Appends put off because their call already had one in the batch being built.
    let mut later: VecDeque<Pending> = VecDeque::new();
    let mut open = true;
    loop {
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        if later.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(p) => later.push_back(p),
                None => {
                    open = false;
                    continue;
                }
            }
        }
        let mut batch: Vec<Pending> = Vec::new();
        let mut calls: HashSet<CallId> = HashSet::new();
        let mut again = VecDeque::new();
        let mut take = |p: Pending, batch: &mut Vec<Pending>, again: &mut VecDeque<Pending>| {
            if calls.insert(p.append.call.spec.id) {
                batch.push(p);
            } else {
                again.push_back(p);
            }
        };
        while batch.len() < max_batch {
            let Some(p) = later.pop_front() else { break };
            take(p, &mut batch, &mut again);
        }
        while open && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => take(p, &mut batch, &mut again),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        again.extend(later.drain(..));
        later = again;
        sizes.observe(batch.len() as f64);
        let inner = inner.clone();
        tokio::spawn(async move {
            let (appends, answers): (Vec<Append>, Vec<_>) =
                batch.into_iter().map(|p| (p.append, p.answer)).unzip();
            let results = inner.append_batch(&appends).await;
            let mut results = results.into_iter();
            for answer in answers {
                let result = results.next().unwrap_or_else(|| {
                    Err(StoreError::Unavailable(
                        "the store answered fewer appends than the batch held".into(),
                    ))
                });
                // A caller that gave up waiting (its timeout) is gone; the write stands.
                let _ = answer.send(result);
            }
            drop(writer);
        });
    }
}

#[async_trait]
impl CallStore for GroupCommit {
    async fn acquire_shards(&self, node: &str, shards: &[u16]) -> StoreResult<Vec<i64>> {
        self.inner.acquire_shards(node, shards).await
    }

    async fn owns_shard(&self, shard: u16, epoch: i64) -> StoreResult<bool> {
        self.inner.owns_shard(shard, epoch).await
    }

    async fn insert_call(
        &self,
        call: &Call,
        created: &JournalEntry,
        idempotency: Option<&IdempotencyKey>,
        max_live: Option<u32>,
    ) -> StoreResult<InsertOutcome> {
        self.inner
            .insert_call(call, created, idempotency, max_live)
            .await
    }

    async fn append(
        &self,
        call: &Call,
        expected_version: i64,
        entry: &JournalEntry,
        inbox: Option<(&str, &str)>,
    ) -> StoreResult<()> {
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            append: Append {
                call: call.clone(),
                expected_version,
                entry: entry.clone(),
                inbox: inbox.map(|(v, e)| (v.to_owned(), e.to_owned())),
            },
            answer,
        };
        self.queue
            .send(pending)
            .map_err(|_| StoreError::Unavailable("the journal writer has stopped".into()))?;
        answered.await.map_err(|_| {
            StoreError::Unavailable("the journal writer dropped the append unanswered".into())
        })?
    }

    async fn append_batch(&self, batch: &[Append]) -> Vec<StoreResult<()>> {
        self.inner.append_batch(batch).await
    }

    async fn load_call(&self, id: CallId) -> StoreResult<Option<Call>> {
        self.inner.load_call(id).await
    }

    async fn live_calls(&self, shards: &[u16]) -> StoreResult<Vec<CallId>> {
        self.inner.live_calls(shards).await
    }

    async fn inbox_insert(&self, item: &InboxItem) -> StoreResult<bool> {
        self.inner.inbox_insert(item).await
    }

    async fn inbox_record(&self, row: &InboxRow) -> StoreResult<InboxInsert> {
        self.inner.inbox_record(row).await
    }

    async fn inbox_adopt(
        &self,
        vendor: &str,
        carrier_leg: &str,
        call_id: CallId,
    ) -> StoreResult<Vec<InboxItem>> {
        self.inner.inbox_adopt(vendor, carrier_leg, call_id).await
    }

    async fn call_for_leg(&self, carrier_leg: &str) -> StoreResult<Option<CallId>> {
        self.inner.call_for_leg(carrier_leg).await
    }

    async fn inbox_mark_processed(&self, vendor: &str, event_id: &str) -> StoreResult<()> {
        self.inner.inbox_mark_processed(vendor, event_id).await
    }

    async fn inbox_pending(&self, limit: i64) -> StoreResult<Vec<InboxItem>> {
        self.inner.inbox_pending(limit).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests;
