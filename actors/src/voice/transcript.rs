//! The conversation of a call as the API returns it (`GET /v1/calls/{id}/transcript`), folded
//! from the call's journal.

use serde::Serialize;

use crate::machine::record::ConversationRecord;
use crate::ports::JournalEntry;

/// A call's conversation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Transcript {
    /// Speech in order: `{speaker, text, start_ms, end_ms, confidence, interrupted, turn}`.
    pub segments: Vec<ConversationRecord>,
    /// Caller sentiment per turn.
    pub sentiment: Vec<ConversationRecord>,
    /// Tone changes, barge-ins, resumptions, escalations, tools, DTMF, voicemail, vendor gaps
    /// and failures, in order.
    pub events: Vec<ConversationRecord>,
    /// Where the time of each reply went.
    pub latency: Vec<ConversationRecord>,
}

impl Transcript {
    /// Folds a journal (any order of kinds; entries are in `seq` order).
    pub fn from_journal(entries: &[JournalEntry]) -> Transcript {
        let mut t = Transcript::default();
        for entry in entries {
            let crate::machine::Event::Conversation { record } = &entry.event else {
                continue;
            };
            let bucket = match record {
                ConversationRecord::Segment { .. } => &mut t.segments,
                ConversationRecord::Sentiment { .. } => &mut t.sentiment,
                ConversationRecord::TurnLatency { .. } => &mut t.latency,
                _ => &mut t.events,
            };
            bucket.push(record.clone());
        }
        t
    }
}
