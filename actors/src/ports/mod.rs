//! Ports: the traits the engine needs from the outside world, one file per concern.
//!
//! The engine reaches the database, the carrier, the voice and embedding vendors, the clock and
//! the id source only through these traits, held as `Arc<dyn Trait>`. Production
//! implementations live in the root crate (`src/store`, `src/telephony`, `src/clients`);
//! in-memory ones in `crate::testkit` (feature `testkit`) serve unit tests and the
//! deterministic simulations. Nothing here may depend on a concrete database or network crate.
//!
//! In reading order:
//! - [`time`] holds [`Clock`] and [`IdGen`].
//! - [`calls`] holds [`CallStore`] (calls, journal, idempotency, inbox) and [`StoreError`], the
//!   failure every store shares.
//! - [`catalog`] holds [`QueryStore`] (organizations, agents, customers, numbers, call reads).
//! - [`cluster`] holds [`ClusterStore`]: membership heartbeats and the shard leases.
//! - [`peers`] holds [`Peers`]: pokes to the node that runs a call.
//! - [`telephony`] holds [`Telephony`], the carrier's commands.
//! - [`voice`] holds speech-to-text, text-to-speech, the chat model, outbound media, and
//!   [`VoicePorts`], the set a call's conversation is built from.
//! - [`sentiment`] holds [`SentimentScorer`].
//! - [`accounts`] holds the account store, one trait per table (organizations, users,
//!   sessions, API keys, billing and CRM events) under the umbrella [`AccountStore`](accounts::AccountStore).
//! - [`learning`] holds the learning queue and learned rows ([`LearningStore`],
//!   [`LearningQueries`]) and the [`Embedder`].
//! - [`traces`] holds [`CallTraces`]: each call's trace, drawn from its journal.
//!
//! The port files depend only on domain types (`machine`, `catalog`, `accounts`). The bundle
//! an engine is built from, `engine::Ports`, lives with the engine: it also holds two engine
//! services handed to it ready made (the breaker registry and recall).

pub mod accounts;
pub mod analysis;
pub mod calls;
pub mod catalog;
pub mod cluster;
pub mod learning;
pub mod outbox;
pub mod peers;
pub mod sentiment;
pub mod telephony;
pub mod time;
pub mod traces;
pub mod voice;

pub use calls::{
    shard_of, Append, CallStore, IdempotencyKey, InboxInsert, InboxItem, InboxRow, InsertOutcome,
    JournalEntry, StoreError, StoreResult, SHARD_COUNT,
};
pub use catalog::{CallFilter, CatalogWriteError, PageRequest, QueryStore};
pub use cluster::{ClaimKind, Claimed, ClusterStore, Lease, Member, NodeInfo};
pub use learning::{Embedder, LearningQueries, LearningStore};
pub use peers::Peers;
pub use sentiment::SentimentScorer;
pub use telephony::{DialCommand, LegCommand, LegStatus, Telephony, TelephonyError};
pub use time::{Clock, IdGen};
pub use traces::CallTraces;
pub use voice::VoicePorts;
