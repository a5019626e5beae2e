//! Learning ports: the queue of finished calls and the rows learned from them
//! ([`LearningStore`], written by the learning actor), the reads of those rows
//! ([`LearningQueries`], behind recall), and the [`Embedder`] that turns texts into vectors.
//!
//! Every vector is [`EMBEDDING_DIMS`] long and L2-normalised, so cosine similarity is a dot
//! product. Each vector is stored with the [`Embedder::model`] that made it: vectors of
//! different models live in different spaces and are never compared.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::calls::StoreResult;
use crate::machine::{CallId, CustomerId, OrganizationId};

// ---------------------------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------------------------

/// Dimensions of every stored embedding (`vector(768)`).
pub const EMBEDDING_DIMS: usize = 768;

/// What a text is embedded for (vendors tune the vector to the use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedTask {
    /// A text that is stored and searched (a pattern's description, a memory).
    Document,
    /// A search query.
    Query,
}

/// Why texts could not be embedded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbedError {
    /// The vendor refused the request (bad key, bad input): retrying will not help.
    #[error("embedding refused: {0}")]
    Rejected(String),
    /// The vendor failed, timed out, rate-limited us, or its circuit breaker is open: the
    /// work waits and is retried later.
    #[error("embedding unavailable: {0}")]
    Unavailable(String),
}

/// Turns texts into vectors.
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// The model id recorded with every vector it makes (e.g. `gemini-embedding-001@768`,
    /// `local-ngram-v1`).
    fn model(&self) -> &str;

    /// Embeds `texts`, in order: one L2-normalised vector of [`EMBEDDING_DIMS`] values per
    /// text. An empty input gives an empty output without asking anyone.
    async fn embed(&self, texts: &[String], task: EmbedTask) -> Result<Vec<Vec<f32>>, EmbedError>;
}

// ---------------------------------------------------------------------------------------------
// What a call teaches
// ---------------------------------------------------------------------------------------------

/// Kinds of learned pattern (the `pattern_type` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternType {
    /// How the persona was used: tone changes and where they led.
    PersonaUsage,
    /// The opening exchanges of the conversation.
    TurnSequence,
    /// The tools the agent called, in order.
    ToolSequence,
    /// What made the call go to a person.
    EscalationTrigger,
    /// A negative caller turn and the reply after which the caller's mood improved.
    ObjectionHandling,
    /// How a resolved call ended.
    Resolution,
}

impl PatternType {
    /// The column's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PersonaUsage => "persona_usage",
            Self::TurnSequence => "turn_sequence",
            Self::ToolSequence => "tool_sequence",
            Self::EscalationTrigger => "escalation_trigger",
            Self::ObjectionHandling => "objection_handling",
            Self::Resolution => "resolution",
        }
    }
}

/// Kinds of customer memory (the `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    /// A problem the customer raised.
    Issue,
    /// How the customer wants to be dealt with.
    Preference,
    /// Something the agent promised.
    Commitment,
    /// How the customer felt over the call.
    SentimentSummary,
    /// One line about the whole call.
    CallSummary,
}

impl MemoryKind {
    /// The column's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Preference => "preference",
            Self::Commitment => "commitment",
            Self::SentimentSummary => "sentiment_summary",
            Self::CallSummary => "call_summary",
        }
    }
}

/// A pattern to embed and store.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternDraft {
    /// Kind.
    pub pattern_type: PatternType,
    /// Structured detail (`pattern_data`).
    pub data: serde_json::Value,
    /// The text that is embedded and searched.
    pub description: String,
}

/// A customer memory to embed and store.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryDraft {
    /// Kind.
    pub kind: MemoryKind,
    /// The text that is embedded, searched and shown to the agent.
    pub content: String,
    /// In `[0, 1]`.
    pub importance: f32,
}

// ---------------------------------------------------------------------------------------------
// The learning queue and the learned rows
// ---------------------------------------------------------------------------------------------

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
    /// Patterns this call used: one more use each, and one more success when `success`.
    pub used_patterns: Vec<Uuid>,
    /// The call succeeded.
    pub success: bool,
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

    /// Takes or renews the deployment-wide lease `name` for `holder` until `now + ttl`;
    /// `false` while someone else holds an unexpired one.
    async fn try_lead(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> StoreResult<bool>;

    /// The job could not finish: count the attempt and try again at `at`.
    async fn retry_learning(
        &self,
        call_id: CallId,
        at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()>;
}

// ---------------------------------------------------------------------------------------------
// Reading the learned rows
// ---------------------------------------------------------------------------------------------

/// One stored customer memory, as found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryHit {
    /// Id.
    pub id: Uuid,
    /// `issue`, `preference`, `commitment`, `sentiment_summary`, `call_summary`.
    pub kind: String,
    /// The memory.
    pub content: String,
    /// In `[0, 1]`.
    pub importance: f32,
    /// Cosine similarity to the query (0 without a query).
    pub similarity: f32,
    /// The ranking score (see the module doc).
    pub relevance: f32,
    /// The call it came from.
    pub source_call_id: Option<Uuid>,
    /// When it was learned.
    pub created_at: DateTime<Utc>,
}

/// One learned pattern, as found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatternHit {
    /// Id.
    pub id: Uuid,
    /// The agent.
    pub agent_id: Uuid,
    /// `turn_sequence`, `tool_sequence`, ...
    pub pattern_type: String,
    /// The searchable text.
    pub description: String,
    /// Structured detail.
    pub pattern_data: serde_json::Value,
    /// Calls that used it.
    pub usage_count: i32,
    /// Of those, the successful ones / usage.
    pub success_rate: f64,
    /// Cosine similarity to the query (0 without a query).
    pub similarity: f32,
    /// The call it came from.
    pub source_call_id: Option<Uuid>,
    /// When it was learned.
    pub created_at: DateTime<Utc>,
}

/// The learned rows, read.
#[async_trait]
pub trait LearningQueries: Send + Sync + 'static {
    /// Up to `limit` memories of the customer made by `model`: the nearest to `query` when
    /// given (similarity filled), else the most important and recent.
    async fn memory_candidates(
        &self,
        org: OrganizationId,
        customer: CustomerId,
        model: &str,
        query: Option<&[f32]>,
        limit: u32,
    ) -> StoreResult<Vec<MemoryHit>>;

    /// Up to `limit` patterns of the agent made by `model`: the nearest to `query` when
    /// given, else the best success rates (then the most used).
    async fn pattern_candidates(
        &self,
        org: OrganizationId,
        agent: Uuid,
        model: &str,
        query: Option<&[f32]>,
        limit: u32,
    ) -> StoreResult<Vec<PatternHit>>;

    /// Deletes every memory of the customer and the cached vectors of their texts; returns
    /// how many memories there were.
    async fn forget_customer(&self, org: OrganizationId, customer: CustomerId) -> StoreResult<u64>;
}
