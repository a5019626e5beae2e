//! Recall: what earlier calls taught, fetched when a session starts for the agent's context
//! (the customer's memories, the agent's best patterns, the escalation prediction), bounded in
//! time so a call never waits on learning; and the journal record of what the agent was given.

use std::time::Duration;

use tracing::warn;

use super::VoiceState;

/// Longest the start of a conversation waits for recalled context.
const RECALL_TIMEOUT: Duration = Duration::from_millis(400);
/// Customer memories put in the agent's context.
const RECALL_MEMORIES: u32 = 5;
/// Learned patterns put in the agent's context.
const RECALL_PATTERNS: u32 = 3;

/// What recall found for a call.
#[derive(Default)]
pub(super) struct Recalled {
    asked: bool,
    pub(super) memories: Vec<crate::ports::learning::MemoryHit>,
    pub(super) patterns: Vec<crate::ports::learning::PatternHit>,
    pub(super) prediction: Option<crate::learning::recall::Prediction>,
    degraded: Vec<String>,
}

impl Recalled {
    /// The journal record of what the agent was given (none when learning is off).
    pub(super) fn record(&self) -> Option<crate::machine::record::ConversationRecord> {
        self.asked.then(
            || crate::machine::record::ConversationRecord::ContextRetrieved {
                memories: self.memories.iter().map(|m| m.id).collect(),
                patterns: self.patterns.iter().map(|p| p.id).collect(),
                escalation_risk: self.prediction.as_ref().map_or(0.0, |p| p.escalation_risk),
                degraded: (!self.degraded.is_empty()).then(|| self.degraded.join("; ")),
            },
        )
    }
}

impl VoiceState {
    /// What earlier calls taught, for this call's context: the customer's memories, the
    /// agent's best patterns, and the escalation prediction. Bounded by [`RECALL_TIMEOUT`]:
    /// whatever does not come in time is left out (the call never waits on learning).
    pub(super) async fn recall(&self) -> Recalled {
        let Some(recall) = self.shared.ports.recall.clone() else {
            return Recalled::default();
        };
        let spec = &self.spec;
        let purpose = spec
            .metadata
            .get("purpose")
            .and_then(|p| p.as_str())
            .map(str::to_owned);
        let now = self.shared.ports.clock.now();
        let memories = async {
            match spec.customer_id {
                Some(c) => recall
                    .memories(
                        spec.organization_id,
                        c,
                        purpose.as_deref(),
                        RECALL_MEMORIES,
                        now,
                    )
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let patterns = recall.patterns(
            spec.organization_id,
            spec.agent_id,
            purpose.as_deref(),
            RECALL_PATTERNS,
        );
        let both = async { tokio::join!(memories, patterns) };
        let mut out = Recalled {
            asked: true,
            ..Recalled::default()
        };
        match tokio::time::timeout(RECALL_TIMEOUT, both).await {
            Ok((m, p)) => {
                match m {
                    Ok(Some(m)) => {
                        out.prediction = Some(crate::learning::recall::predict(&m));
                        out.memories = m;
                    }
                    Ok(None) => {}
                    Err(e) => out.degraded.push(format!("memories: {e}")),
                }
                match p {
                    Ok(p) => out.patterns = p,
                    Err(e) => out.degraded.push(format!("patterns: {e}")),
                }
            }
            Err(_) => out.degraded.push(format!(
                "recall took longer than {} ms",
                RECALL_TIMEOUT.as_millis()
            )),
        }
        if !out.degraded.is_empty() {
            warn!(call_id = %spec.id, degraded = ?out.degraded, "call context recalled in part");
        }
        out
    }
}
