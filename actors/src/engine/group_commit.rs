//! Group commit: a [`CallStore`] in front of another that gathers the journal appends of many
//! calls and writes them with [`CallStore::append_batch`], one transaction (one flush to
//! disk) per batch; vendor events stored before their webhook is acknowledged are batched
//! the same way ([`CallStore::inbox_record_batch`]). Everything else goes straight through.
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

/// What the writer batches: journal appends (one per call in a batch) and vendor events
/// (one per `(vendor, event_id)`).
#[async_trait]
trait Batched: Send + Sync + Sized + 'static {
    type Out: Send + 'static;
    type Key: std::hash::Hash + Eq + Send;
    fn key(&self) -> Self::Key;
    async fn write(store: &dyn CallStore, batch: &[Self]) -> Vec<StoreResult<Self::Out>>;
}

#[async_trait]
impl Batched for Append {
    type Out = ();
    type Key = CallId;
    fn key(&self) -> CallId {
        self.call.spec.id
    }
    async fn write(store: &dyn CallStore, batch: &[Append]) -> Vec<StoreResult<()>> {
        store.append_batch(batch).await
    }
}

#[async_trait]
impl Batched for InboxRow {
    type Out = InboxInsert;
    type Key = (String, String);
    fn key(&self) -> (String, String) {
        (self.vendor.clone(), self.event_id.clone())
    }
    async fn write(store: &dyn CallStore, batch: &[InboxRow]) -> Vec<StoreResult<InboxInsert>> {
        store.inbox_record_batch(batch).await
    }
}

/// One item waiting for its batch, and who waits for its answer.
struct Pending<T: Batched> {
    item: T,
    answer: oneshot::Sender<StoreResult<T::Out>>,
}

/// The store with group commit in front of `inner`'s appends and inbox rows (see the module
/// docs).
pub struct GroupCommit {
    inner: Arc<dyn CallStore>,
    appends: mpsc::UnboundedSender<Pending<Append>>,
    inbox: mpsc::UnboundedSender<Pending<InboxRow>>,
}

impl GroupCommit {
    /// Starts the writers (on the current tokio runtime), `config.writers` for the journal
    /// and as many for the inbox. Batch sizes are observed in `iace_journal_batch_size` and
    /// `iace_inbox_batch_size` when a registry is given.
    pub fn start(
        inner: Arc<dyn CallStore>,
        config: GroupCommitConfig,
        registry: Option<&Registry>,
    ) -> prometheus::Result<Arc<GroupCommit>> {
        let histogram = |name: &str, help: &str| -> prometheus::Result<Histogram> {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?;
            if let Some(registry) = registry {
                registry.register(Box::new(h.clone()))?;
            }
            Ok(h)
        };
        let journal = histogram(
            "iace_journal_batch_size",
            "Journal appends written per transaction (group commit)",
        )?;
        let inbox = histogram(
            "iace_inbox_batch_size",
            "Vendor events stored per transaction (group commit)",
        )?;
        let (appends, rx) = mpsc::unbounded_channel();
        tokio::spawn(write(inner.clone(), rx, config, journal));
        let (inbox_tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write(inner.clone(), rx, config, inbox));
        Ok(Arc::new(GroupCommit {
            inner,
            appends,
            inbox: inbox_tx,
        }))
    }

    async fn submit<T: Batched>(
        queue: &mpsc::UnboundedSender<Pending<T>>,
        item: T,
    ) -> StoreResult<T::Out> {
        let (answer, answered) = oneshot::channel();
        queue
            .send(Pending { item, answer })
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?;
        answered.await.map_err(|_| {
            StoreError::Unavailable("the store's writer dropped the write unanswered".into())
        })?
    }
}

/// A writer: takes what waits when a writer is free, never two items of one key in a batch.
/// Ends when the store is dropped and everything queued is written.
async fn write<T: Batched>(
    inner: Arc<dyn CallStore>,
    mut rx: mpsc::UnboundedReceiver<Pending<T>>,
    config: GroupCommitConfig,
    sizes: Histogram,
) {
    let writers = Arc::new(Semaphore::new(config.writers.max(1)));
    let max_batch = config.max_batch.max(1);
    // Items put off because their key already had one in the batch being built.
    let mut later: VecDeque<Pending<T>> = VecDeque::new();
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
        let mut batch: Vec<Pending<T>> = Vec::new();
        let mut keys: HashSet<T::Key> = HashSet::new();
        let mut again = VecDeque::new();
        let mut take = |p: Pending<T>, batch: &mut Vec<Pending<T>>, again: &mut VecDeque<_>| {
            if keys.insert(p.item.key()) {
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
            let (items, answers): (Vec<T>, Vec<_>) =
                batch.into_iter().map(|p| (p.item, p.answer)).unzip();
            let mut results = T::write(inner.as_ref(), &items).await.into_iter();
            for answer in answers {
                let result = results.next().unwrap_or_else(|| {
                    Err(StoreError::Unavailable(
                        "the store answered fewer writes than the batch held".into(),
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
        let append = Append {
            call: call.clone(),
            expected_version,
            entry: entry.clone(),
            inbox: inbox.map(|(v, e)| (v.to_owned(), e.to_owned())),
        };
        GroupCommit::submit(&self.appends, append).await
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
        GroupCommit::submit(&self.inbox, row.clone()).await
    }

    async fn inbox_record_batch(&self, rows: &[InboxRow]) -> Vec<StoreResult<InboxInsert>> {
        self.inner.inbox_record_batch(rows).await
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
