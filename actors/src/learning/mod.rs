//! Learning and customer memory (DESIGN.md section 7): finished calls become learned patterns
//! and customer memories, embedded for similarity retrieval at call start.
//!
//! The ports it works through (the learning queue and rows, the embedder) are in
//! [`crate::ports::learning`].

pub mod actor;
#[cfg(test)]
mod actor_tests;
pub mod embed;
pub mod extract;
#[cfg(test)]
mod extract_tests;
pub mod recall;

pub use crate::ports::learning::{EmbedError, EmbedTask, Embedder, EMBEDDING_DIMS};
pub use embed::LocalEmbedder;

/// The former home of the learning queue's port and its in-memory implementation, kept so
/// existing imports resolve: the port is [`crate::ports::learning`], the in-memory store
/// `crate::testkit::learning`.
pub mod store {
    pub use crate::ports::learning::{
        LearnedRows, LearningJob, LearningStore, NewMemory, NewPattern,
    };
    #[cfg(any(test, feature = "testkit"))]
    pub use crate::testkit::learning::{MemoryLearningStore, QueueRow};
}

/// How long after a call completes its learning may start: the conversation's last records
/// (the words said while hanging up, the media report) are journaled just after the call
/// ends, and learning reads the whole journal.
pub const LEARNING_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);
