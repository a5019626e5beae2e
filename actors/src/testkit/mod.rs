//! In-memory ports for unit tests and the deterministic simulations. Compiled only for this
//! crate's tests and with the `testkit` feature, which tests and `iace-sim` enable; the
//! production build never carries it.
//!
//! - [`time`] holds [`TokioClock`] (wall time from tokio's clock, so `tokio::time::pause`
//!   drives it) and [`SeqIds`] (ids from a seed).
//! - [`store`] holds [`MemoryStore`], the call and catalog stores with the Postgres store's
//!   semantics; [`cluster`] its membership and shard leases, judged by the store's own clock.
//! - [`cluster_conformance`] holds the checks every `ClusterStore` must pass, run against the
//!   memory store here and against Postgres in the root crate's integration tests.
//! - [`telephony`] holds [`ScriptedTelephony`], a carrier that records commands.
//! - [`learning`] holds [`MemoryLearningStore`], the learning queue and learned rows.
//! - [`voice`] holds scripted speech-to-text, speech synthesis, chat model and media.
//!
//! None of this is for production.

pub mod cluster;
pub mod cluster_conformance;
pub mod learning;
pub mod store;
pub mod telephony;
pub mod time;
pub mod voice;

pub use learning::{MemoryLearningStore, QueueRow};
pub use store::MemoryStore;
pub use telephony::{Command, ScriptedTelephony};
pub use time::{SeqIds, TokioClock};
