//! Tools: the ones offered to the model (by the profile), the results of those that run
//! outside the core (`lookup_customer`), and the model asked again with them. The model's
//! tool calls are dispatched when its reply is done (`replies`).

use crate::machine::record::{truncated, ConversationRecord, TOOL_RESULT_JOURNALED};
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
        for t in &self.profile.persona.http_tools {
            tools.push(ToolSpec {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            });
        }
        tools
    }

    /// The model's arguments for the HTTP tool `name`, checked against its schema: the error
    /// (for the model) when they do not fit.
    pub(super) fn check_arguments(&self, name: &str, arguments: &str) -> Result<(), String> {
        let Some(tool) = self.profile.http_tool(name) else {
            return Err(format!("error: unknown tool `{name}`"));
        };
        let args: serde_json::Value = if arguments.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(arguments)
                .map_err(|e| format!("error: the arguments are not JSON ({e}); nothing was sent"))?
        };
        crate::catalog::schema::validate(&tool.parameters, &args)
            .map_err(|e| format!("error: invalid arguments, nothing was sent: {e}"))
    }

    /// The caller spoke again while tools run: the model's history gets an answer for each
    /// now (a tool call must be followed by its result), the results that come later are
    /// journaled and told to the model as a note, and the round that waited for them is
    /// dropped (the new turn is answered instead).
    pub(super) fn interrupt_tools(&mut self) {
        if self.tools_pending.is_empty() {
            return;
        }
        for (id, name, arguments, started) in std::mem::take(&mut self.tools_pending) {
            self.push_history(tool_message(
                &id,
                "the caller spoke before this finished; its result will follow as a note",
            ));
            self.tools_late.push((id, name, arguments, started));
        }
        self.pending_rounds = None;
        self.filler_at = None;
        self.filler_line = None;
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
            if let Some(late) = self.tools_late.iter().position(|t| t.0 == id) {
                let (_, name, arguments, started) = self.tools_late.remove(late);
                let text = match &result {
                    Ok(v) => v.to_string(),
                    Err(e) => format!("error: {e}"),
                };
                out.push(Action::Record(ConversationRecord::ToolCall {
                    turn: self.turn,
                    name: name.clone(),
                    arguments,
                    result: truncated(&text, TOOL_RESULT_JOURNALED),
                    duration_ms: now.saturating_sub(started) / MS,
                    ok: result.is_ok(),
                }));
                self.push_history(ChatMessage::text(
                    ChatRole::System,
                    format!("The tool `{name}` the caller spoke over has answered: {text}"),
                ));
            }
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
            result: truncated(&text, TOOL_RESULT_JOURNALED),
            duration_ms: now.saturating_sub(started) / MS,
            ok: result.is_ok(),
        }));
        self.push_history(tool_message(&id, &text));
        if self.tools_pending.is_empty() {
            self.filler_line = None;
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
