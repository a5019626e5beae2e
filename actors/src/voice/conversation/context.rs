//! What the model sees: who the caller is, the system prompt built from the persona, what is
//! known about the caller and the agent's tone, and the chat history (bounded).

use std::collections::VecDeque;

use crate::machine::record::Tone;
use crate::ports::voice::{ChatMessage, ChatRole};
use crate::sentiment::LexiconScorer;

use super::Conversation;

/// Context messages kept (plus the system message).
const MAX_HISTORY: usize = 24;

/// Who the caller is, for the model's context.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallerContext {
    /// Inbound call (the caller called us).
    pub inbound: bool,
    /// The customer's record, as the model may see it (name, notes, history).
    pub customer: Option<serde_json::Value>,
    /// What earlier calls taught about this customer, most relevant first.
    pub memories: Vec<String>,
    /// What worked on this agent's earlier calls, best first.
    pub patterns: Vec<String>,
    /// How likely this caller is to want a person, in `[0, 1]`, with why.
    pub escalation_risk: Option<(f32, String)>,
}

impl Conversation {
    pub(super) fn context_messages(&self) -> Vec<ChatMessage> {
        self.context_with(self.tone, &self.history)
    }

    /// The context the model would be asked with if `said` were the caller's turn now: the
    /// history with it added, in the tone its lexicon estimate leads to (the request a
    /// committed turn makes, see `turns`).
    pub(super) fn prospective_context(&self, said: &str) -> Vec<ChatMessage> {
        let estimate = LexiconScorer.score_text(said);
        let tone = self
            .tone_change(Some(estimate), "")
            .map_or(self.tone, |(tone, _)| tone);
        let mut history = self.history.clone();
        push_bounded(&mut history, ChatMessage::text(ChatRole::User, said));
        self.context_with(tone, &history)
    }

    fn context_with(&self, tone: Tone, history: &VecDeque<ChatMessage>) -> Vec<ChatMessage> {
        let p = &self.profile.persona;
        let mut system = p.system_prompt.clone();
        system.push_str(
            "\n\nYou are speaking on a live phone call: answer in short, plain spoken sentences, \
             no lists, no markdown, no emojis.",
        );
        if let Some(customer) = &self.caller_ctx.customer {
            system.push_str(&format!("\nWhat we know about the caller: {customer}"));
        }
        if !self.caller_ctx.memories.is_empty() {
            system.push_str("\nWhat you remember from earlier calls with this customer:");
            for m in &self.caller_ctx.memories {
                system.push_str(&format!("\n- {m}"));
            }
        }
        if !self.caller_ctx.patterns.is_empty() {
            system.push_str("\nWhat worked on earlier calls like this one:");
            for p in &self.caller_ctx.patterns {
                system.push_str(&format!("\n- {p}"));
            }
        }
        if let Some((risk, why)) = &self.caller_ctx.escalation_risk {
            if *risk >= 0.5 {
                system.push_str(&format!(
                    "\nThis customer may ask for a person ({why}): be especially patient and \
                     offer a colleague early if you cannot help."
                ));
            }
        }
        if tone == Tone::Empathetic {
            system.push_str(
                "\nThe caller sounds frustrated. Acknowledge it briefly and sincerely, apologise \
                 where it fits, stay calm, use short sentences, and focus on solving their \
                 problem. Do not argue.",
            );
        }
        let mut messages = vec![ChatMessage::text(ChatRole::System, system)];
        messages.extend(history.iter().cloned());
        messages
    }

    pub(super) fn push_history(&mut self, message: ChatMessage) {
        push_bounded(&mut self.history, message);
    }
}

/// Adds `message` to `history`, dropping the oldest messages beyond [`MAX_HISTORY`].
fn push_bounded(history: &mut VecDeque<ChatMessage>, message: ChatMessage) {
    history.push_back(message);
    while history.len() > MAX_HISTORY {
        history.pop_front();
        // Never start the context with a tool answer whose call was cut off.
        while history.front().is_some_and(|m| m.role == ChatRole::Tool) {
            history.pop_front();
        }
    }
}
