//! Post-call analysis: its durable queue and stored results ([`AnalysisStore`]), and the
//! model that answers in JSON shaped by a schema ([`StructuredModel`]).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::calls::StoreResult;
use crate::machine::{CallId, OrganizationId};
use crate::outbox::WebhookEvent;

/// A call waiting for its analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisJob {
    /// The call.
    pub call_id: CallId,
    /// Its organization.
    pub organization_id: OrganizationId,
    /// Attempts that could not finish (the model unreachable).
    pub attempts: u32,
}

/// How an analysis came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisStatus {
    /// The model's answer matched the schema: summary, data and verdict are stored.
    Ok,
    /// The model's answers did not match the schema, also when told why: nothing of them is
    /// stored but the error.
    Invalid,
    /// The model refused the request (it cannot do what the schema asks).
    Failed,
}

impl AnalysisStatus {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Invalid => "invalid",
            Self::Failed => "failed",
        }
    }

    /// From storage.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => Self::Ok,
            "invalid" => Self::Invalid,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// A call's analysis, as stored and shown (`GET /v1/calls/{id}`, `analysis`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallAnalysis {
    /// The call.
    #[serde(skip)]
    pub call_id: CallId,
    /// Its organization.
    #[serde(skip)]
    pub organization_id: OrganizationId,
    /// How it came out.
    pub status: AnalysisStatus,
    /// The summary.
    pub summary: Option<String>,
    /// The structured data, valid against the agent's schema.
    pub data: Option<Value>,
    /// The verdict of the success rubric.
    pub success: Option<bool>,
    /// Why, in the model's words.
    pub success_reason: Option<String>,
    /// Why there is no analysis (`invalid`, `failed`).
    pub error: Option<String>,
    /// The model asked.
    pub model: String,
    /// When.
    pub evaluated_at: DateTime<Utc>,
}

/// The analysis queue and results.
#[async_trait]
pub trait AnalysisStore: Send + Sync + 'static {
    /// Claims up to `limit` jobs due at `now`; a claimed job is not due again before
    /// `now + lease` (a worker that dies mid-job leaves it to be claimed again then).
    async fn claim_analysis(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<AnalysisJob>>;

    /// Stores the analysis, ends its job and writes `events` (`call.analyzed`), in one
    /// transaction; `false` when the call had one already (nothing written twice).
    async fn finish_analysis(
        &self,
        analysis: &CallAnalysis,
        events: &[WebhookEvent],
    ) -> StoreResult<bool>;

    /// Ends a job with nothing to analyse (the call or the agent's configuration is gone).
    async fn drop_analysis(&self, call: CallId) -> StoreResult<()>;

    /// The job could not finish: count the attempt and try again at `at`.
    async fn retry_analysis(&self, call: CallId, at: DateTime<Utc>, error: &str)
        -> StoreResult<()>;

    /// A call's analysis, when it has one.
    async fn call_analysis(
        &self,
        org: OrganizationId,
        call: CallId,
    ) -> StoreResult<Option<CallAnalysis>>;
}

/// Why the model gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Unreachable, overloaded, its breaker open: try again later.
    #[error("the model is unavailable: {0}")]
    Unavailable(String),
    /// It refused the request (400: e.g. a schema it cannot follow): trying again will not help.
    #[error("the model refused the request: {0}")]
    Rejected(String),
}

/// One message of a structured request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptMessage {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// A chat model that answers with JSON shaped by a schema (Groq structured outputs).
#[async_trait]
pub trait StructuredModel: Send + Sync + 'static {
    /// The model's name, recorded with each analysis.
    fn model(&self) -> &str;

    /// The model's answer (the JSON text, to be checked by the caller: best-effort models
    /// may not follow the schema).
    async fn complete(
        &self,
        messages: &[PromptMessage],
        name: &str,
        schema: &Value,
    ) -> Result<String, ModelError>;
}
