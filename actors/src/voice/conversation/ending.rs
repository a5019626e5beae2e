//! Endings: what follows an utterance once heard (a hangup, a transfer), the agent ending the
//! call after its last words, and the call ending under the conversation.

use crate::machine::EndReason;

use super::{Action, After, Conversation, Kind, Micros, Phase};

impl Conversation {
    pub(super) fn follow(&mut self, _now: Micros, after: After, out: &mut Vec<Action>) {
        match after {
            After::Listen => {}
            After::Hangup(reason) => self.hang_up(reason, out),
            After::Transfer(to) => {
                self.phase = Phase::Done;
                out.push(Action::Transfer { to });
                out.push(Action::Close);
            }
        }
    }

    pub(super) fn hang_up(&mut self, reason: EndReason, out: &mut Vec<Action>) {
        self.phase = Phase::Done;
        if let Some(reply) = self.reply.take() {
            out.push(Action::LlmCancel { reply: reply.id });
        }
        out.push(Action::Hangup { reason });
        out.push(Action::Close);
    }

    pub(super) fn end_after_speech(
        &mut self,
        now: Micros,
        ctx: Option<&str>,
        out: &mut Vec<Action>,
    ) {
        self.phase = Phase::Ending;
        let reason = EndReason::AgentEnded;
        if let Some(u) = ctx.and_then(|c| self.utterances.iter_mut().find(|u| u.ctx == c)) {
            u.after = After::Hangup(reason);
            return;
        }
        let goodbye = self.profile.persona.goodbye.clone();
        self.say(now, Kind::Goodbye, &goodbye, After::Hangup(reason), out);
    }

    pub(super) fn call_ended(&mut self, now: Micros, out: &mut Vec<Action>) {
        for u in std::mem::take(&mut self.utterances) {
            let (heard, _) = u.split_heard();
            let complete = u.finished();
            let text = if complete { u.text.clone() } else { heard };
            out.push(self.agent_segment(now, &u, &text, !complete));
        }
        let t = self.caller.take();
        if !t.finals.trim().is_empty() {
            out.push(self.caller_segment(now, &t, self.turn + 1));
        }
        if let Some(reply) = self.reply.take() {
            out.push(Action::LlmCancel { reply: reply.id });
        }
        self.phase = Phase::Done;
        out.push(Action::Close);
    }
}
