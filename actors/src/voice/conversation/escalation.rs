//! Escalation: the hand-over to a person (by keyword, request, sentiment, tool or vendor
//! failure), once per call: the current reply is closed, the hand-over line said, and the
//! call transferred once it is heard.

use crate::machine::record::{ConversationRecord, EscalationReason};

use super::replies::close_input;
use super::{Action, After, Conversation, Kind, Micros, Phase};

impl Conversation {
    pub(super) fn escalate(
        &mut self,
        now: Micros,
        reason: EscalationReason,
        detail: String,
        out: &mut Vec<Action>,
    ) {
        if self.escalated || !matches!(self.phase, Phase::Active) {
            return;
        }
        self.escalated = true;
        let to = self.profile.human_number.clone();
        out.push(Action::Record(ConversationRecord::Escalation {
            turn: self.turn,
            reason,
            detail,
            to: to.as_ref().map(|n| n.as_str().to_owned()),
        }));
        let Some(to) = to else {
            // Nobody to hand over to: the conversation goes on with the agent.
            tracing::warn!("escalation wanted but the agent has no human_number");
            return;
        };
        self.close_reply(out);
        self.phase = Phase::Ending;
        let handoff = self.profile.persona.handoff.clone();
        self.say(now, Kind::Handoff, &handoff, After::Transfer(to), out);
    }

    /// Ends the current reply: no more text, what was sent finishes speaking.
    fn close_reply(&mut self, out: &mut Vec<Action>) {
        if let Some(reply) = self.reply.take() {
            out.push(Action::LlmCancel { reply: reply.id });
            if let Some(ctx) = reply.ctx {
                close_input(&mut self.utterances, &ctx, out);
            }
        }
        self.tools_pending.clear();
        self.pending_rounds = None;
        self.filler_at = None;
        self.reply_retry = None;
    }
}
