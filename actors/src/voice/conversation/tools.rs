//! Tools: the ones offered to the model (by the profile), the results of those that run
//! outside the core (`lookup_customer`), and the model asked again with them. The model's
//! tool calls are dispatched when its reply is done (`replies`).

use crate::machine::record::ConversationRecord;
use crate::ports::voice::{ChatMessage, ChatRole, ToolSpec};

use super::{Action, Conversation, Micros, Phase, Timing, MS};

/// Model rounds (tool results fed back) per caller turn.
const MAX_TOOL_ROUNDS: u32 = 3;

impl Conversation {
    pub(super) fn tool_specs(&self) -> Vec<ToolSpec> {
        let reason = serde_json::json!({
            "type": "object",
            "properties": {"reason": {"type": "string", "description": "Why, in a few words."}},
            "required": []
        });
        let mut tools = Vec::new();
        if self.profile.offers("end_call") {
            tools.push(ToolSpec {
                name: "end_call".into(),
                description: "End the call politely once the conversation is complete.".into(),
                parameters: reason.clone(),
            });
        }
        if self.profile.offers("transfer_to_human") && self.profile.human_number.is_some() {
            tools.push(ToolSpec {
                name: "transfer_to_human".into(),
                description: "Transfer the caller to a human colleague.".into(),
                parameters: reason,
            });
        }
        if self.profile.offers("lookup_customer") {
            tools.push(ToolSpec {
                name: "lookup_customer".into(),
                description: "Look up the caller's customer record (name, notes, recent calls)."
                    .into(),
                parameters: serde_json::json!({"type": "object", "properties": {}}),
            });
        }
        tools
    }

    pub(super) fn continue_after_tools(
        &mut self,
        now: Micros,
        turn: u32,
        rounds: u32,
        out: &mut Vec<Action>,
    ) {
        self.filler_at = None;
        if rounds + 1 >= MAX_TOOL_ROUNDS {
            // A model that keeps calling tools gets no more rounds this turn.
            return;
        }
        let timing = Timing {
            turn_end: now,
            llm_request: now,
            recorded: true,
            ..Timing::default()
        };
        self.request_reply(turn, rounds + 1, timing, out);
    }

    pub(super) fn tool_result(
        &mut self,
        now: Micros,
        id: String,
        result: Result<serde_json::Value, String>,
        out: &mut Vec<Action>,
    ) {
        let Some(pos) = self.tools_pending.iter().position(|t| t.0 == id) else {
            return;
        };
        let (id, name, arguments, started) = self.tools_pending.remove(pos);
        let text = match &result {
            Ok(v) => v.to_string(),
            Err(e) => format!("error: {e}"),
        };
        out.push(Action::Record(ConversationRecord::ToolCall {
            turn: self.turn,
            name,
            arguments,
            result: text.clone(),
            duration_ms: now.saturating_sub(started) / MS,
        }));
        self.push_history(tool_message(&id, &text));
        if self.tools_pending.is_empty() {
            if let Some((turn, rounds)) = self.pending_rounds.take() {
                if matches!(self.phase, Phase::Active) {
                    self.continue_after_tools(now, turn, rounds, out);
                }
            }
        }
    }
}

pub(super) fn tool_message(id: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: ChatRole::Tool,
        content: content.to_owned(),
        tool_calls: Vec::new(),
        tool_call_id: Some(id.to_owned()),
    }
}
