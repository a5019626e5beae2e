//! Ports: the traits the engine needs from the outside world.
//!
//! The engine reaches the database, the carrier, the clock and the id source only through these
//! traits, held as `Arc<dyn Trait>`. Production implementations live in the root crate
//! (`src/store`, `src/telephony`); in-memory ones in [`crate::memory`] serve unit tests and the
//! deterministic simulations. Nothing here may depend on a concrete database or network crate.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::{
    Agent, AgentPatch, Customer, CustomerPatch, Organization, PhoneNumberAssignment,
};
use crate::machine::{
    Call, CallId, CallStatus, CarrierEvent, CustomerId, Event, HangupCause, OrganizationId,
    PhoneNumber,
};

/// Number of shards calls are spread over (`shard_of`). Fixed: changing it re-homes every call.
pub const SHARD_COUNT: u16 = 256;

/// The shard a call belongs to. Stable for the life of the call.
pub fn shard_of(id: CallId) -> u16 {
    (id.as_u128() % u128::from(SHARD_COUNT)) as u16
}

/// Wall-clock source. The engine never calls `Utc::now()` itself.
pub trait Clock: Send + Sync + 'static {
    /// Current time.
    fn now(&self) -> DateTime<Utc>;
}

/// Id source. The engine never draws randomness itself.
pub trait IdGen: Send + Sync + 'static {
    /// A fresh, unique id.
    fn next_id(&self) -> Uuid;
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

    /// The snapshot of a call, any organization.
    async fn load_call(&self, id: CallId) -> StoreResult<Option<Call>>;

    /// Ids of every call in `shards` that still needs an actor (crash recovery): non-terminal
    /// calls, and ended calls whose leg release is not confirmed yet.
    async fn live_calls(&self, shards: &[u16]) -> StoreResult<Vec<CallId>>;

    /// Stores a vendor event unless its `(vendor, event_id)` was seen before. `true` = new.
    async fn inbox_insert(&self, item: &InboxItem) -> StoreResult<bool>;

    /// Stores a vendor event in its general form (see [`InboxRow`]), deduplicated on
    /// `(vendor, event_id)`. A row with a call and a fact waits to be applied like
    /// [`CallStore::inbox_insert`]; a row with a fact but no call waits for adoption; a row
    /// without a fact is stored as processed.
    async fn inbox_record(&self, row: &InboxRow) -> StoreResult<InboxInsert>;

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

/// Filter and page of `GET /v1/calls`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallFilter {
    /// Only calls in this status.
    pub status: Option<CallStatus>,
    /// Only calls of this agent.
    pub agent_id: Option<Uuid>,
    /// Only calls with this customer.
    pub customer_id: Option<CustomerId>,
    /// Page size (already clamped by the engine).
    pub limit: i64,
    /// Keyset cursor: return calls strictly older than this `(created_at, id)`.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// A keyset page request for the lists other than calls (agents, customers, phone numbers,
/// users, API keys).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageRequest {
    /// Page size (already clamped by the engine).
    pub limit: i64,
    /// Return rows strictly older than this `(created_at, id)` (strictly newer for a list
    /// kept oldest first): the last row of the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// Catalog and read-model persistence (agents, customers, API keys, call reads). Every method
/// that takes an organization is scoped by it: another tenant's rows are invisible.
#[async_trait]
pub trait QueryStore: Send + Sync + 'static {
    /// Creates an organization and its first API key (hash only).
    async fn create_organization(
        &self,
        org: &Organization,
        key_id: Uuid,
        key_hash: &str,
        key_prefix: &str,
    ) -> StoreResult<()>;

    /// One call of the organization.
    async fn get_call(&self, org: OrganizationId, id: CallId) -> StoreResult<Option<Call>>;
    /// Calls of the organization, newest first.
    async fn list_calls(&self, org: OrganizationId, filter: &CallFilter) -> StoreResult<Vec<Call>>;
    /// The journal of one call, or `None` when the call is not the organization's.
    async fn call_events(
        &self,
        org: OrganizationId,
        id: CallId,
    ) -> StoreResult<Option<Vec<JournalEntry>>>;

    /// Stores a new agent.
    async fn insert_agent(&self, agent: &Agent) -> StoreResult<()>;
    /// One agent.
    async fn get_agent(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<Agent>>;
    /// Agents, newest first.
    async fn list_agents(&self, org: OrganizationId, page: &PageRequest)
        -> StoreResult<Vec<Agent>>;
    /// Applies a patch; `None` when not found.
    async fn update_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: &AgentPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Agent>>;
    /// Deletes an agent; `Ok(false)` when not found. Agents with calls are archived instead
    /// (status `archived`) so call history keeps its reference.
    async fn delete_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Stores a new customer. `Ok(false)` when the phone is already a customer of the org.
    async fn insert_customer(&self, customer: &Customer) -> StoreResult<bool>;
    /// One customer.
    async fn get_customer(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<Customer>>;
    /// Customers, newest first.
    async fn list_customers(
        &self,
        org: OrganizationId,
        page: &PageRequest,
    ) -> StoreResult<Vec<Customer>>;
    /// Applies a patch; `Ok(None)` when not found, `Err` on a duplicate phone.
    async fn update_customer(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: &CustomerPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Customer>, CatalogWriteError>;
    /// Deletes a customer; `Ok(false)` when not found. Calls keep their history (the
    /// reference is cleared).
    async fn delete_customer(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool>;
    /// The organization's customer with this phone, if any.
    async fn customer_by_phone(
        &self,
        org: OrganizationId,
        phone: &PhoneNumber,
    ) -> StoreResult<Option<Uuid>>;

    /// Assigns a number to an agent. `Ok(false)` when the number is already assigned (in any
    /// organization).
    async fn insert_phone_number(&self, number: &PhoneNumberAssignment) -> StoreResult<bool>;
    /// The organization's numbers, newest first; only `agent`'s when given.
    async fn list_phone_numbers(
        &self,
        org: OrganizationId,
        agent: Option<Uuid>,
        page: &PageRequest,
    ) -> StoreResult<Vec<PhoneNumberAssignment>>;
    /// Releases a number; `Ok(false)` when not found.
    async fn delete_phone_number(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool>;
    /// Who answers calls to `number` (any organization: the carrier tells us only the number).
    async fn route_number(
        &self,
        number: &PhoneNumber,
    ) -> StoreResult<Option<PhoneNumberAssignment>>;
}

/// A catalog write that conflicts with existing data.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogWriteError {
    /// Unique constraint (e.g. the customer's phone is taken in this organization).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Carrier command failures, already past the adapter's own retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TelephonyError {
    /// The carrier refused the command (4xx): retrying will not help.
    #[error("carrier rejected the command: {0}")]
    Rejected(String),
    /// The carrier could not be reached or kept failing (5xx, timeouts).
    #[error("carrier unavailable: {0}")]
    Unavailable(String),
    /// The carrier's circuit breaker is open: nothing was sent. Not retried by the caller's
    /// quick retries (the breaker decides when to try again).
    #[error("{vendor} circuit breaker is open")]
    CircuitOpen {
        /// The vendor.
        vendor: String,
        /// When the breaker lets calls through again, when known.
        until: Option<DateTime<Utc>>,
    },
}

/// Place an outbound call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialCommand {
    /// Our call id (Telnyx `client_state`).
    pub call_id: CallId,
    /// `{call_id}:{seq}`: a retried command is never executed twice.
    pub command_id: String,
    /// Calling party.
    pub from: PhoneNumber,
    /// Called party.
    pub to: PhoneNumber,
    /// How long the carrier lets it ring.
    pub timeout_secs: u32,
}

/// Act on an existing leg (answer, hangup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegCommand {
    /// Our call id.
    pub call_id: CallId,
    /// The carrier's leg id, when known.
    pub carrier_call_id: Option<String>,
    /// `{call_id}:{seq}`.
    pub command_id: String,
}

/// What the carrier says about a leg right now (reconciliation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegStatus {
    /// The carrier has no such leg (never dialed, or long gone).
    Unknown,
    /// Dialed, not answered yet.
    Ringing,
    /// Answered and up.
    Answered,
    /// Ended.
    Ended(HangupCause),
}

/// The carrier. Events flow back through `Engine::ingest_carrier_event`, not through here.
#[async_trait]
pub trait Telephony: Send + Sync + 'static {
    /// The vendor behind the adapter: the name of its circuit breaker in [`Ports::breakers`].
    fn vendor(&self) -> &'static str {
        "telephony"
    }
    /// Places an outbound call; returns the carrier's leg id.
    async fn dial(&self, cmd: DialCommand) -> Result<String, TelephonyError>;
    /// Answers an inbound call.
    async fn answer(&self, cmd: LegCommand) -> Result<(), TelephonyError>;
    /// Hangs a leg up. Hanging up an already ended leg is success.
    async fn hangup(&self, cmd: LegCommand) -> Result<(), TelephonyError>;
    /// Transfers an answered leg to `to` (a person); the carrier reports `bridged`.
    async fn transfer(&self, cmd: LegCommand, to: PhoneNumber) -> Result<(), TelephonyError>;
    /// Declines an inbound leg that has no call (an unknown number). Declining a leg that
    /// already ended is success.
    async fn reject(&self, carrier_call_id: &str, command_id: &str) -> Result<(), TelephonyError>;
    /// The live status of a leg.
    async fn status(
        &self,
        call_id: CallId,
        carrier_call_id: Option<&str>,
    ) -> Result<LegStatus, TelephonyError>;
}

/// The ports an engine is built from.
#[derive(Clone)]
pub struct Ports {
    /// Call writes.
    pub calls: Arc<dyn CallStore>,
    /// Catalog and reads.
    pub queries: Arc<dyn QueryStore>,
    /// The carrier.
    pub telephony: Arc<dyn Telephony>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Ids.
    pub ids: Arc<dyn IdGen>,
    /// Vendor circuit breakers (empty when the adapters are not real vendors).
    pub breakers: crate::breaker::Breakers,
    /// The voice pipeline's vendors; `None` runs calls without a conversation (the media
    /// stream is only measured).
    pub voice: Option<crate::voice::session::VoicePorts>,
    /// Recall over learned patterns and customer memories; `None` when learning is off.
    pub recall: Option<crate::learning::recall::Recall>,
    /// Users, sessions, API keys, plans; `None` where accounts are not kept (simulations).
    pub accounts: Option<Arc<dyn crate::accounts::AccountStore>>,
}
