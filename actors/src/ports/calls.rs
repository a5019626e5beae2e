//! The call store: calls and their journal, fenced by shard leases, the idempotency keys of
//! call creation, and the inbox of vendor events. [`StoreError`] is the failure every store
//! port shares.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::machine::{Call, CallId, CarrierEvent, Event};

/// Number of shards calls are spread over (`shard_of`). Fixed: changing it re-homes every call.
pub const SHARD_COUNT: u16 = 256;

/// The shard a call belongs to. Stable for the life of the call.
pub fn shard_of(id: CallId) -> u16 {
    (id.as_u128() % u128::from(SHARD_COUNT)) as u16
}

/// Persistence failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Compare-and-set matched zero rows: another owner (higher epoch) or a newer version wrote
    /// the call. The writer is stale and must stop, not retry.
    #[error("stale write: the call was changed by another owner")]
    Stale,
    /// The database is unreachable or refused the statement.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored row cannot be read back (a value the code does not understand): retrying
    /// will not help, and it is not the database being down.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// `Result` alias for store operations.
pub type StoreResult<T, E = StoreError> = std::result::Result<T, E>;

/// One journal row: the event that moved a call to version `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The call.
    pub call_id: CallId,
    /// 1-based, gap-free; equals the call's version after the event.
    pub seq: i64,
    /// When the event was applied (the `now` given to the machine).
    pub at: DateTime<Utc>,
    /// The event.
    pub event: Event,
}

/// One call's append in a batch ([`CallStore::append_batch`]): what
/// [`CallStore::append`] takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    /// The call's new snapshot (its version is `entry.seq`).
    pub call: Call,
    /// The version the snapshot replaces (compare-and-set).
    pub expected_version: i64,
    /// The journal entry.
    pub entry: JournalEntry,
    /// The inbox row `(vendor, event_id)` the entry consumes, marked processed with it.
    pub inbox: Option<(String, String)>,
}

impl Append {
    /// The inbox row as [`CallStore::append`] takes it.
    pub fn inbox_ref(&self) -> Option<(&str, &str)> {
        self.inbox.as_ref().map(|(v, e)| (v.as_str(), e.as_str()))
    }
}

/// An `Idempotency-Key` with the fingerprint of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The client's key, scoped to the organization.
    pub key: String,
    /// Canonical form of the request; a replay with another body is refused.
    pub fingerprint: String,
}

/// What inserting a new call found.
#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    /// Stored.
    Created,
    /// The idempotency key was used before with the same request: this is that call.
    Existing(Box<Call>),
    /// The idempotency key was used before with a different request.
    IdempotencyMismatch,
    /// The agent does not exist in the call's organization.
    UnknownAgent,
    /// The customer does not exist in the call's organization.
    UnknownCustomer,
    /// The organization already has `live` live calls, not fewer than the `max_live` asked for.
    LiveLimit {
        /// Live calls counted.
        live: u64,
    },
}

/// A vendor event as received, stored before it is acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxItem {
    /// Vendor name (`telnyx`, `simulated`, ...).
    pub vendor: String,
    /// The vendor's event id: the dedupe key.
    pub event_id: String,
    /// Our call the event is about.
    pub call_id: CallId,
    /// The carrier's leg the event is about, when it names one: a fact of another leg than
    /// the call's own never moves the call.
    #[serde(default)]
    pub carrier_leg: Option<String>,
    /// When the vendor says it happened.
    pub occurred_at: DateTime<Utc>,
    /// The normalised fact.
    pub event: CarrierEvent,
}

impl InboxItem {
    /// The fact as the call's machine takes it: with its leg and the carrier's time.
    pub fn to_event(&self) -> crate::machine::Event {
        crate::machine::Event::Carrier {
            event: self.event.clone(),
            leg: self.carrier_leg.clone(),
            at: Some(self.occurred_at),
        }
    }
}

/// A vendor event as received, in its general form: routed to a call or not (yet), with or
/// without a fact for the machine, with the vendor's raw JSON for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxRow {
    /// Vendor name.
    pub vendor: String,
    /// The vendor's event id: the dedupe key.
    pub event_id: String,
    /// The vendor's event type (`call.answered`, `call.speak.started`, ...).
    pub event_type: String,
    /// Our call, when the event names it.
    pub call_id: Option<CallId>,
    /// The carrier's leg id, when the event names one: an event that arrives before its call
    /// exists (an inbound hangup overtaking the offer) waits under it for adoption.
    pub carrier_leg: Option<String>,
    /// When the vendor says it happened.
    pub occurred_at: DateTime<Utc>,
    /// The fact for the machine; `None` for event types the engine does not act on (stored
    /// and acknowledged all the same).
    pub event: Option<CarrierEvent>,
    /// The vendor's JSON as received.
    pub raw: Option<serde_json::Value>,
}

impl InboxRow {
    /// The routed form, when this row has both a call and a fact.
    pub fn item(&self) -> Option<InboxItem> {
        Some(InboxItem {
            vendor: self.vendor.clone(),
            event_id: self.event_id.clone(),
            call_id: self.call_id?,
            carrier_leg: self.carrier_leg.clone(),
            occurred_at: self.occurred_at,
            event: self.event.clone()?,
        })
    }
}

/// What [`CallStore::inbox_record`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxInsert {
    /// Stored.
    New,
    /// `(vendor, event_id)` was stored before: nothing changed.
    Duplicate,
    /// The row names a call that does not exist: nothing stored.
    UnknownCall,
}

/// What the engine writes. Every write is fenced by the shard lease epoch.
#[async_trait]
pub trait CallStore: Send + Sync + 'static {
    /// Takes ownership of `shards` for `node`, bumping each shard's epoch. Returns the new epoch
    /// of every shard, in the order given. Writes fenced with an older epoch fail from then on.
    ///
    /// A forced take, for tools and tests (simulating another owner): it ignores whoever holds
    /// the shards and leases them for an hour by the store's clock. Nodes claim shards with
    /// [`ClusterStore::claim_shards`](super::ClusterStore::claim_shards), which respects
    /// other nodes' leases; both share the epochs.
    async fn acquire_shards(&self, node: &str, shards: &[u16]) -> StoreResult<Vec<i64>>;

    /// Whether `epoch` is still the current epoch of `shard`: asked before a command that
    /// cannot be fenced by a write (a dial), so an owner that lost the shard stops acting.
    async fn owns_shard(&self, shard: u16, epoch: i64) -> StoreResult<bool>;

    /// Inserts a new call (snapshot + `created` journal entry) in one transaction, honouring the
    /// idempotency key. `call.owner_epoch` must be the current epoch of the call's shard.
    ///
    /// With `max_live`, the organization's live calls (pending, ringing, in progress) are
    /// counted in the same serialized step as the insert, so concurrent inserts on any node can
    /// never take the organization past `max_live`; a replay of an idempotency key answers with
    /// its call whatever the count.
    async fn insert_call(
        &self,
        call: &Call,
        created: &JournalEntry,
        idempotency: Option<&IdempotencyKey>,
        max_live: Option<u32>,
    ) -> StoreResult<InsertOutcome>;

    /// Appends `entry` and writes the snapshot `call` (whose version is `entry.seq`) in one
    /// transaction, compare-and-set on `expected_version` and on `call.owner_epoch` still being
    /// the shard's epoch. When `inbox` names an inbox row, it is marked processed in the same
    /// transaction. Zero rows matched -> [`StoreError::Stale`].
    async fn append(
        &self,
        call: &Call,
        expected_version: i64,
        entry: &JournalEntry,
        inbox: Option<(&str, &str)>,
    ) -> StoreResult<()>;

    /// The appends of many calls, at most one per call, each answered as [`CallStore::append`]
    /// would answer it alone: a stale version or epoch fails only that call's append. A store
    /// that can commits them together (group commit: one transaction, one flush to disk, for
    /// the whole batch); this default writes them one by one.
    async fn append_batch(&self, batch: &[Append]) -> Vec<StoreResult<()>> {
        let mut results = Vec::with_capacity(batch.len());
        for a in batch {
            results.push(
                self.append(&a.call, a.expected_version, &a.entry, a.inbox_ref())
                    .await,
            );
        }
        results
    }

    /// The snapshot of a call, any organization.
    async fn load_call(&self, id: CallId) -> StoreResult<Option<Call>>;

    /// Ids of every call in `shards` that still needs an actor (crash recovery): non-terminal
    /// calls, and ended calls whose leg release is not confirmed yet or with a stray leg
    /// still up.
    async fn live_calls(&self, shards: &[u16]) -> StoreResult<Vec<CallId>>;

    /// Stores a vendor event unless its `(vendor, event_id)` was seen before. `true` = new.
    async fn inbox_insert(&self, item: &InboxItem) -> StoreResult<bool>;

    /// Stores a vendor event in its general form (see [`InboxRow`]), deduplicated on
    /// `(vendor, event_id)`. A row with a call and a fact waits to be applied like
    /// [`CallStore::inbox_insert`]; a row with a fact but no call waits for adoption; a row
    /// without a fact is stored as processed.
    async fn inbox_record(&self, row: &InboxRow) -> StoreResult<InboxInsert>;

    /// Stores many vendor events as [`CallStore::inbox_record`] would store each, at most one
    /// per `(vendor, event_id)`, each answered on its own. A store that can writes them in one
    /// transaction (one flush to disk for a burst of webhooks); this default writes them one
    /// by one.
    async fn inbox_record_batch(&self, rows: &[InboxRow]) -> Vec<StoreResult<InboxInsert>> {
        let mut results = Vec::with_capacity(rows.len());
        for row in rows {
            results.push(self.inbox_record(row).await);
        }
        results
    }

    /// Attaches the facts waiting under `carrier_leg` (no call yet) to `call_id` and returns
    /// them, oldest first, for delivery.
    async fn inbox_adopt(
        &self,
        vendor: &str,
        carrier_leg: &str,
        call_id: CallId,
    ) -> StoreResult<Vec<InboxItem>>;

    /// The call whose carrier leg is `carrier_leg`, if any.
    async fn call_for_leg(&self, carrier_leg: &str) -> StoreResult<Option<CallId>>;

    /// Marks an inbox row processed (for events that changed nothing, so no append did it).
    async fn inbox_mark_processed(&self, vendor: &str, event_id: &str) -> StoreResult<()>;

    /// Unprocessed inbox rows, oldest first (the sweep that covers lost pokes and crashes).
    async fn inbox_pending(&self, limit: i64) -> StoreResult<Vec<InboxItem>>;

    /// Cheap reachability check for `/ready`.
    async fn ping(&self) -> StoreResult<()>;
}
