//! What a conversation leaves in its call's journal (`Event::Conversation`): transcript
//! segments, sentiment points, tone changes, escalations, tool calls, per-turn latencies,
//! vendor gaps and failures. These are facts about the call; they never move its status.

use serde::{Deserialize, Serialize};

use crate::ports::sentiment::SentimentLabel;

/// Who spoke a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    /// The person on the phone.
    Caller,
    /// The AI agent.
    Agent,
}

/// The agent's speaking style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tone {
    /// The persona as configured.
    Normal,
    /// The caller is frustrated: slower, shorter, acknowledging, apologetic.
    Empathetic,
}

/// Why a call was handed to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationReason {
    /// Sentiment stayed below the agent's floor for the configured number of turns.
    SentimentFloor,
    /// The caller asked for a person.
    CallerRequest,
    /// The caller said one of the agent's escalation keywords.
    Keyword,
    /// The model called `transfer_to_human`.
    Tool,
    /// A voice vendor failed and the agent is configured to transfer.
    VendorFailure,
}

/// One journaled conversation fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConversationRecord {
    /// A stretch of speech.
    Segment {
        /// Who.
        speaker: Speaker,
        /// What was said (for an interrupted agent: what the caller heard).
        text: String,
        /// Milliseconds since the conversation started.
        start_ms: u64,
        /// Milliseconds since the conversation started.
        end_ms: u64,
        /// Recognition confidence (caller) or 1 (agent).
        confidence: f32,
        /// The agent was cut off by the caller (barge-in), by a voice vendor's failure, or by
        /// the end of the call.
        interrupted: bool,
        /// Turn number (1-based; 0 = before the first caller turn).
        turn: u32,
    },
    /// The caller's sentiment in one turn.
    Sentiment {
        /// Turn.
        turn: u32,
        /// In `[-1, 1]`.
        score: f64,
        /// Label.
        label: SentimentLabel,
        /// Who scored it.
        source: String,
        /// The vendor could not answer; the local scorer did.
        degraded: bool,
    },
    /// The agent changed tone.
    ToneChanged {
        /// Turn.
        turn: u32,
        /// Before.
        from: Tone,
        /// After.
        to: Tone,
        /// What triggered it.
        reason: String,
    },
    /// The caller talked over the agent and the agent stopped.
    BargeIn {
        /// Turn being answered when it happened.
        turn: u32,
        /// When, ms since the conversation started.
        at_ms: u64,
        /// Agent audio the caller heard before it stopped, ms.
        heard_ms: u64,
    },
    /// An interruption turned out to be noise or a backchannel: the agent resumed.
    Resumed {
        /// Turn.
        turn: u32,
        /// The text spoken again.
        text: String,
    },
    /// The call is being handed to a person.
    Escalation {
        /// Turn.
        turn: u32,
        /// Why.
        reason: EscalationReason,
        /// Detail (the keyword, the scores, the failed vendor).
        detail: String,
        /// The number it is transferred to (`None`: the agent has none configured).
        to: Option<String>,
    },
    /// A tool the model called, and what it returned.
    ToolCall {
        /// Turn.
        turn: u32,
        /// Tool name.
        name: String,
        /// Arguments as given (JSON text).
        arguments: String,
        /// The result (JSON text) or the error, cut at [`TOOL_RESULT_JOURNALED`] bytes (the
        /// model got all of it).
        result: String,
        /// How long it ran, ms.
        duration_ms: u64,
        /// It answered (`false`: `result` is the error).
        #[serde(default = "answered")]
        ok: bool,
    },
    /// Where the time of one reply went. All figures in microseconds.
    TurnLatency {
        /// Turn.
        turn: u32,
        /// Caller's end of speech (audio time) to the final transcript arriving.
        stt_us: u64,
        /// Final transcript to the end of the turn (the hold-off waiting for more speech).
        holdoff_us: u64,
        /// Request sent to the model's first token.
        llm_first_token_us: u64,
        /// The model's first token to the first speakable piece (clause or sentence) of the
        /// reply: token streaming the engine has to wait for.
        #[serde(default)]
        llm_stream_us: u64,
        /// First text sent to speech synthesis to its first audio.
        tts_first_audio_us: u64,
        /// Final transcript to the first audio frame handed to the call's media stream.
        total_us: u64,
        /// The engine's own share: `total` minus hold-off, model wait, token streaming up
        /// to the first speakable piece, and synthesis wait, plus `saved` (the waits that
        /// overlapped the hold-off are not on the reply's path).
        engine_us: u64,
        /// What a speculative reply saved: it was asked for during the hold-off, so its
        /// model and synthesis waits ran while the agent held back; this much of them was
        /// off the reply's path (0 when the reply was asked for at the end of the turn).
        #[serde(default)]
        saved_us: u64,
    },
    /// A vendor stream dropped or stalled and was reopened.
    VendorGap {
        /// The port: `stt` or `tts` (which vendor serves it is configuration).
        vendor: String,
        /// Audio lost, ms (speech-to-text only).
        gap_ms: u64,
        /// What happened.
        reason: String,
    },
    /// A voice vendor failed for good during the call.
    VendorFailure {
        /// The port: `stt`, `tts` or `llm`.
        vendor: String,
        /// What happened.
        reason: String,
        /// What the agent did: `transfer` or `end`.
        action: String,
    },
    /// No answering-machine verdict came in time (or the caller spoke before it): the agent
    /// took the call for a person and greeted.
    AmdAssumedHuman {
        /// `no verdict within amd_wait_ms` or `the caller spoke before the verdict`.
        reason: String,
        /// How long the verdict was waited for, ms.
        waited_ms: u64,
    },
    /// An answering machine answered.
    Voicemail {
        /// `leave_message` or `hang_up`.
        action: String,
    },
    /// What was recalled for the agent when the conversation started.
    ContextRetrieved {
        /// Customer memories put in the agent's context.
        memories: Vec<uuid::Uuid>,
        /// Learned patterns put in the agent's context (their success rates learn from
        /// this call's outcome).
        patterns: Vec<uuid::Uuid>,
        /// Predicted chance the caller asks for a person, in `[0, 1]`.
        escalation_risk: f32,
        /// Why recall gave less than asked (timeout, store or embedding error).
        degraded: Option<String>,
    },
    /// The caller pressed keys (`dtmf_input`, like its journal kind).
    #[serde(rename = "dtmf_input", alias = "dtmf")]
    Dtmf {
        /// Turn.
        turn: u32,
        /// The keys, in order.
        digits: String,
    },
}

/// Bytes of a tool's result kept in the journal.
pub const TOOL_RESULT_JOURNALED: usize = 2048;

fn answered() -> bool {
    true
}

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
pub fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl ConversationRecord {
    /// Short name stored in the journal's `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Segment { .. } => "transcript",
            Self::Sentiment { .. } => "sentiment",
            Self::ToneChanged { .. } => "tone_changed",
            Self::BargeIn { .. } => "barge_in",
            Self::Resumed { .. } => "resumed",
            Self::Escalation { .. } => "escalation",
            Self::ToolCall { .. } => "tool_call",
            Self::TurnLatency { .. } => "turn_latency",
            Self::VendorGap { .. } => "vendor_gap",
            Self::VendorFailure { .. } => "vendor_failure",
            Self::Voicemail { .. } => "voicemail",
            Self::AmdAssumedHuman { .. } => "amd_assumed_human",
            Self::Dtmf { .. } => "dtmf_input",
            Self::ContextRetrieved { .. } => "context_retrieved",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_tool_results_are_cut_at_a_character_boundary() {
        assert_eq!(truncated("short", 10), "short");
        let cut = truncated(&"é".repeat(10), 5);
        assert_eq!(cut, "éé…");
        // Records written before `ok` existed read as answered.
        let old: ConversationRecord = serde_json::from_value(serde_json::json!({
            "type": "tool_call", "turn": 1, "name": "end_call", "arguments": "{}",
            "result": "ok", "duration_ms": 0
        }))
        .unwrap();
        assert!(matches!(old, ConversationRecord::ToolCall { ok: true, .. }));
    }

    #[test]
    fn record_types_match_their_journal_kinds() {
        let dtmf = ConversationRecord::Dtmf {
            turn: 2,
            digits: "1#".into(),
        };
        let json = serde_json::to_value(&dtmf).unwrap();
        assert_eq!(json["type"], dtmf.kind());
        // Journals written before the rename still read.
        let old: ConversationRecord =
            serde_json::from_value(serde_json::json!({"type": "dtmf", "turn": 2, "digits": "1#"}))
                .unwrap();
        assert_eq!(old, dtmf);
        let gap = ConversationRecord::VendorGap {
            vendor: "stt".into(),
            gap_ms: 120,
            reason: "dropped".into(),
        };
        assert_eq!(serde_json::to_value(&gap).unwrap()["type"], gap.kind());
    }
}
