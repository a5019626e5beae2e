//! Keys the caller presses (DTMF): they interrupt the agent, and keys pressed close together
//! are one input, taken as a caller turn.

use crate::machine::record::ConversationRecord;

use super::{Action, Conversation, Micros, Phase, MS};

/// Digits pressed within this gap are one input.
const DTMF_GAP: Micros = 1200 * MS;

impl Conversation {
    pub(super) fn dtmf(&mut self, now: Micros, digit: String, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Active) {
            return;
        }
        self.caller_active();
        if self.interruptible_playing() {
            self.barge_in(now, out);
            self.interrupted = None;
        }
        self.dtmf.push_str(&digit);
        self.dtmf_at = Some(now + DTMF_GAP);
        self.dtmf_span.get_or_insert((now, now)).1 = now;
    }

    pub(super) fn dtmf_done(&mut self, now: Micros, out: &mut Vec<Action>) {
        self.dtmf_at = None;
        let digits = std::mem::take(&mut self.dtmf);
        let span = self.dtmf_span.take();
        if digits.is_empty() {
            return;
        }
        // The keys' turn spans its first to its last key (in stream time, as speech does).
        let origin = self.audio_origin.unwrap_or(0);
        let (first, last) = span.unwrap_or((now, now));
        self.caller
            .start_ms
            .get_or_insert(first.saturating_sub(origin) / MS);
        self.caller.end_ms = self.caller.end_ms.max(last.saturating_sub(origin) / MS);
        out.push(Action::Record(ConversationRecord::Dtmf {
            turn: self.turn + 1,
            digits: digits.clone(),
        }));
        let said = format!("[The caller pressed the keys: {digits}]");
        if !self.caller.finals.is_empty() {
            self.caller.finals.push(' ');
        }
        self.caller.finals.push_str(&said);
        self.caller.last_final_at = Some(now);
        self.end_of_turn(now, out);
    }
}
