//! Play-out: what the caller has heard of the agent's speech, from the marks the carrier
//! echoes (or, when the media stream does not echo them, from the audio's own duration), and
//! the utterances fully heard retired in order.

use crate::ports::voice::{ChatMessage, ChatRole};

use super::{Action, Conversation, Micros, Utterance, MS};

/// A mark the carrier has not echoed this long after its audio should have played means the
/// media stream does not echo marks: from then on the audio's own duration says what was heard.
const MARK_WAIT: Micros = 1000 * MS;

impl Conversation {
    /// Keeps what the caller heard up to date when the media stream does not echo marks: a
    /// mark overdue by [`MARK_WAIT`] switches to the audio's own duration (μ-law 8 kHz, 8
    /// bytes per ms, played in the order forwarded), until a mark comes back.
    pub(super) fn refresh_playback(&mut self, now: Micros) {
        if !self.marks_missing
            && self
                .utterances
                .iter()
                .filter_map(Utterance::unconfirmed_end)
                .any(|end| end + MARK_WAIT <= now)
        {
            tracing::info!(
                "the media stream does not echo marks; judging play-out by the audio's duration"
            );
            self.marks_missing = true;
        }
        if self.marks_missing {
            for u in &mut self.utterances {
                u.estimated = u.estimated.max(u.played_by(now));
            }
        }
    }

    /// When play-out must be looked at again: a mark falling overdue, or (marks missing) the
    /// first utterance's audio ending by its duration.
    pub(super) fn playback_deadline(&self) -> Option<Micros> {
        if self.marks_missing {
            self.utterances
                .first()
                .filter(|u| u.tts_done && u.held.is_empty() && u.heard_bytes() < u.sent)
                .and_then(Utterance::schedule_end)
        } else {
            self.utterances
                .iter()
                .filter_map(Utterance::unconfirmed_end)
                .min()
                .map(|end| end + MARK_WAIT)
        }
    }

    pub(super) fn mark_played(&mut self, now: Micros, name: &str, out: &mut Vec<Action>) {
        if let Some((mark, _, _)) = &self.fallback_mark {
            if mark == name {
                let (_, after, _) = self.fallback_mark.take().expect("checked");
                self.follow(now, after, out);
                return;
            }
        }
        let Some((ctx, bytes)) = name.rsplit_once('@') else {
            return;
        };
        let Ok(bytes) = bytes.parse::<u64>() else {
            return;
        };
        if let Some(u) = self.utterances.iter_mut().find(|u| u.ctx == ctx) {
            u.played = u.played.max(bytes);
        }
        // The stream echoes marks (again): they say what was heard.
        self.marks_missing = false;
        self.finish_played(now, out);
    }

    /// Retires the utterances the caller has fully heard, in order.
    pub(super) fn finish_played(&mut self, now: Micros, out: &mut Vec<Action>) {
        while self.utterances.first().is_some_and(Utterance::finished) {
            let u = self.utterances.remove(0);
            out.push(self.agent_segment(now, &u, &u.text, false));
            if !u.text.is_empty() && !u.historied {
                self.push_history(ChatMessage::text(ChatRole::Assistant, u.text.clone()));
            }
            self.follow(now, u.after, out);
        }
    }
}
