//! Learning and customer memory (DESIGN.md section 7): finished calls become learned patterns
//! and customer memories, embedded for similarity retrieval at call start.

pub mod embed;

pub use embed::{EmbedError, EmbedTask, Embedder, LocalEmbedder, EMBEDDING_DIMS};
