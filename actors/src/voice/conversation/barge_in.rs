//! Barge-in: the caller talking over the agent's interruptible speech stops it (what they
//! heard stays in the context, cut off), and when the interruption turns out to be nothing to
//! answer, the agent resumes with what was left unsaid.

use crate::machine::record::ConversationRecord;
use crate::ports::voice::{ChatMessage, ChatRole};
use crate::voice::text;

use super::{Action, After, Conversation, Kind, Micros, MS};

/// Agent speech a barge-in cut off: said again if the caller has nothing to say by `until`.
#[derive(Debug)]
pub(super) struct Interrupted {
    pub(super) turn: u32,
    pub(super) remainder: String,
    pub(super) until: Micros,
}

impl Conversation {
    pub(super) fn interruptible_playing(&self) -> bool {
        self.utterances.iter().any(|u| u.kind.interruptible())
    }

    /// The agent is talking and the caller has not (yet) barged in.
    pub(super) fn agent_playing_interruptible_unbarged(&self) -> bool {
        self.interruptible_playing()
    }

    pub(super) fn barge_in(&mut self, now: Micros, out: &mut Vec<Action>) {
        self.barge_at = None;
        if !self.interruptible_playing() {
            return;
        }
        let mut heard_ms = 0;
        let mut remainder = Vec::new();
        let turn = self.turn;
        let mut keep = Vec::new();
        for u in std::mem::take(&mut self.utterances) {
            if !u.kind.interruptible() {
                keep.push(u);
                continue;
            }
            if !u.tts_done {
                out.push(Action::TtsCancel {
                    context: u.ctx.clone(),
                });
            }
            let (heard, rest) = u.split_heard();
            heard_ms += u.heard_ms();
            out.push(self.agent_segment(now, &u, &heard, true));
            if !heard.is_empty() && !u.historied {
                // The context keeps only what the caller actually heard.
                self.push_history(ChatMessage::text(
                    ChatRole::Assistant,
                    format!("{heard}..."),
                ));
            }
            if !rest.is_empty() {
                remainder.push(rest);
            }
        }
        self.utterances = keep;
        out.push(Action::MediaClear);
        self.playhead = now;
        if let Some(reply) = self.reply.take() {
            out.push(Action::LlmCancel { reply: reply.id });
        }
        out.push(Action::Record(ConversationRecord::BargeIn {
            turn,
            at_ms: now / MS,
            heard_ms,
        }));
        if !remainder.is_empty() {
            self.interrupted = Some(Interrupted {
                turn,
                remainder: remainder.join(" "),
                until: now + self.profile.persona.turn_taking.false_interruption_ms * MS,
            });
        }
    }

    /// The interruption window passed: if the caller produced nothing to answer, resume.
    pub(super) fn check_false_interruption(&mut self, now: Micros, out: &mut Vec<Action>) {
        let Some(i) = self.interrupted.take() else {
            return;
        };
        let said = format!("{} {}", self.caller.finals, self.caller.interim);
        let answered = self.reply.is_some() || self.turn > i.turn;
        if answered || self.caller.speaking || text::meaningful_words(&said) > 0 {
            return;
        }
        self.caller.take();
        self.holdoff_at = None;
        out.push(Action::Record(ConversationRecord::Resumed {
            turn: i.turn,
            text: i.remainder.clone(),
        }));
        self.say(now, Kind::Resume, &i.remainder, After::Listen, out);
    }
}
