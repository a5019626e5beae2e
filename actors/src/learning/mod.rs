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

pub use embed::LocalEmbedder;

/// How long after a call completes its learning may start: the conversation's last records
/// (the words said while hanging up, the media report) are journaled just after the call
/// ends, and learning reads the whole journal.
pub const LEARNING_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);
