//! Caller sentiment: the [`SentimentScorer`] port and the values it answers with. The
//! scorers (the local lexicon, the vendor-with-fallback) live in `crate::sentiment`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SentimentLabel {
    /// Pleased, thankful.
    Positive,
    /// Neither.
    Neutral,
    /// Unhappy, frustrated, angry.
    Negative,
}

impl SentimentLabel {
    /// The label of a score in `[-1, 1]`.
    pub fn of(score: f64) -> Self {
        if score >= 0.2 {
            Self::Positive
        } else if score <= -0.2 {
            Self::Negative
        } else {
            Self::Neutral
        }
    }
}

/// A scored turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sentiment {
    /// In `[-1, 1]`.
    pub score: f64,
    /// The label.
    pub label: SentimentLabel,
    /// Who scored it (`groq`, `lexicon`, ...).
    pub source: String,
    /// The vendor could not answer and the local fallback did.
    pub degraded: bool,
}

/// Why a scorer could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SentimentError {
    /// The vendor failed, timed out or its breaker is open.
    #[error("sentiment vendor unavailable: {0}")]
    Unavailable(String),
}

/// Scores one caller turn.
#[async_trait]
pub trait SentimentScorer: Send + Sync + 'static {
    /// The sentiment of `text`.
    async fn score(&self, text: &str) -> Result<Sentiment, SentimentError>;
}
