//! Replies: a request to the chat model for the caller's turn, its text streamed into speech
//! synthesis a speakable piece at a time, and the reply done (its tool calls run, see
//! `tools`).

use crate::catalog::profile::TextChunking;
use crate::machine::record::{ConversationRecord, EscalationReason};
use crate::ports::voice::{ChatMessage, ChatRole, LlmEvent, ToolCall};
use crate::voice::text;

use super::tools::tool_message;
use super::{Action, Conversation, Kind, Micros, Timing, Utterance, MS};

/// The reply being asked of the model (one request; a tool round is a new one).
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) id: u32,
    pub(super) turn: u32,
    pub(super) ctx: Option<String>,
    pub(super) buffer: String,
    pub(super) text: String,
    pub(super) tool_calls: Vec<ToolCall>,
    pub(super) rounds: u32,
    pub(super) timing: Timing,
}

impl Conversation {
    pub(super) fn request_reply(
        &mut self,
        turn: u32,
        rounds: u32,
        timing: Timing,
        out: &mut Vec<Action>,
    ) {
        self.next_reply += 1;
        let id = self.next_reply;
        self.reply = Some(Reply {
            id,
            turn,
            ctx: None,
            buffer: String::new(),
            text: String::new(),
            tool_calls: Vec::new(),
            rounds,
            timing,
        });
        out.push(Action::LlmStart {
            reply: id,
            turn,
            messages: self.context_messages(),
            tools: self.tool_specs(),
        });
    }

    pub(super) fn llm(
        &mut self,
        now: Micros,
        id: u32,
        event: LlmEvent,
        at: Micros,
        out: &mut Vec<Action>,
    ) {
        if self.is_speculative(id) {
            self.speculative_llm(now, event, at, out);
            return;
        }
        if self.reply.as_ref().is_none_or(|r| r.id != id) {
            return;
        }
        if !matches!(event, LlmEvent::Failed { .. }) {
            self.llm_answering(now, out);
        }
        match event {
            LlmEvent::Text { text } => {
                let reply = self.reply.as_mut().expect("checked");
                reply.timing.first_token.get_or_insert(at);
                reply.buffer.push_str(&text);
                reply.text.push_str(&text);
                self.flush_reply(now, at, false, out);
            }
            LlmEvent::ToolCall { call } => {
                let reply = self.reply.as_mut().expect("checked");
                reply.timing.first_token.get_or_insert(at);
                reply.tool_calls.push(call);
            }
            LlmEvent::Done { .. } => {
                self.flush_reply(now, at, true, out);
                self.reply_done(now, out);
            }
            LlmEvent::Failed { reason } => {
                let started = self
                    .reply
                    .as_ref()
                    .is_some_and(|r| r.ctx.is_some() || !r.tool_calls.is_empty());
                if started {
                    // Words of it were spoken: they cannot be taken back.
                    self.vendor_failed(now, "llm", &reason, out);
                } else {
                    self.reply_unavailable(now, &reason, out);
                }
            }
        }
    }

    /// Sends the speakable part of the reply's buffer (all of it when `done`).
    fn flush_reply(&mut self, now: Micros, at: Micros, done: bool, out: &mut Vec<Action>) {
        let Some(reply) = self.reply.as_mut() else {
            return;
        };
        let chunking = self.profile.voice.text_chunking;
        flush(
            reply,
            &mut self.utterances,
            &mut self.next_ctx,
            chunking,
            (now, at),
            done,
            out,
        );
    }

    pub(super) fn reply_done(&mut self, now: Micros, out: &mut Vec<Action>) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        if let Some(ctx) = &reply.ctx {
            if !reply.timing.recorded {
                self.latency_pending = Some((ctx.clone(), reply.turn, reply.timing.clone()));
            }
        }
        let calls = reply.tool_calls.clone();
        let assistant = ChatMessage {
            role: ChatRole::Assistant,
            content: reply.text.trim().to_owned(),
            tool_calls: calls.clone(),
            tool_call_id: None,
        };
        if calls.is_empty() {
            // The spoken text joins the context when it has been heard (see `finish_played`).
            return;
        }
        // Tools: the calls and the words said with them go into the context now (tool answers
        // must follow their call), so the utterance does not add its words again.
        if let Some(ctx) = &reply.ctx {
            if let Some(u) = self.utterances.iter_mut().find(|u| &u.ctx == ctx) {
                u.historied = true;
            }
        }
        self.push_history(assistant);
        let mut followup = false;
        for call in calls {
            let record = |result: &str| {
                Action::Record(ConversationRecord::ToolCall {
                    turn: reply.turn,
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                    result: result.to_owned(),
                    duration_ms: 0,
                    ok: !result.starts_with("error"),
                })
            };
            match call.name.as_str() {
                "end_call" if self.profile.offers("end_call") => {
                    out.push(record("ok"));
                    self.push_history(tool_message(&call.id, "ok"));
                    self.end_after_speech(now, reply.ctx.as_deref(), out);
                    return;
                }
                "transfer_to_human" if self.profile.offers("transfer_to_human") => {
                    out.push(record("ok"));
                    self.push_history(tool_message(&call.id, "ok"));
                    let detail = call.arguments.clone();
                    self.escalate(now, EscalationReason::Tool, detail, out);
                    return;
                }
                name if self.profile.http_tool(name).is_some() => {
                    followup = true;
                    if let Err(error) = self.check_arguments(name, &call.arguments) {
                        // The model is told, and nothing is sent.
                        out.push(record(&error));
                        self.push_history(tool_message(&call.id, &error));
                        continue;
                    }
                    if self.filler_line.is_none() {
                        self.filler_line =
                            self.profile.http_tool(name).and_then(|t| t.filler.clone());
                    }
                    self.tools_pending.push((
                        call.id.clone(),
                        call.name.clone(),
                        call.arguments.clone(),
                        now,
                    ));
                    out.push(Action::RunTool {
                        turn: reply.turn,
                        id: call.id,
                        name: call.name,
                        arguments: call.arguments,
                    });
                }
                "lookup_customer" if self.profile.offers("lookup_customer") => {
                    self.tools_pending.push((
                        call.id.clone(),
                        call.name.clone(),
                        call.arguments.clone(),
                        now,
                    ));
                    out.push(Action::RunTool {
                        turn: reply.turn,
                        id: call.id,
                        name: call.name,
                        arguments: call.arguments,
                    });
                    followup = true;
                }
                other => {
                    let error = format!("unknown tool `{other}`");
                    out.push(record(&error));
                    self.push_history(tool_message(&call.id, &error));
                    followup = true;
                }
            }
        }
        if followup {
            if self.tools_pending.is_empty() {
                self.continue_after_tools(now, reply.turn, reply.rounds, out);
            } else {
                self.filler_at = Some(now + self.profile.persona.filler_after_ms * MS);
                self.pending_rounds = Some((reply.turn, reply.rounds));
            }
        }
    }
}

/// Sends the speakable part of `reply`'s buffer (all of it when `done`) to its utterance in
/// `utterances` (opened with the first piece), cut as `chunking` says; closes the utterance's
/// input when `done`. `now` is when, `at` when the text arrived.
pub(super) fn flush(
    reply: &mut Reply,
    utterances: &mut Vec<Utterance>,
    next_ctx: &mut u32,
    chunking: TextChunking,
    (now, at): (Micros, Micros),
    done: bool,
    out: &mut Vec<Action>,
) {
    loop {
        let cut = if done {
            (!reply.buffer.trim().is_empty()).then_some(reply.buffer.len())
        } else {
            match chunking {
                TextChunking::Clause => text::speakable_prefix(&reply.buffer, reply.ctx.is_none()),
                TextChunking::Stream => text::words_prefix(&reply.buffer),
            }
        };
        let Some(cut) = cut else { break };
        let piece: String = reply.buffer.drain(..cut).collect();
        if piece.trim().is_empty() {
            continue;
        }
        if reply.timing.piece_token.is_none() {
            reply.timing.piece_token = Some(at);
            reply.timing.piece_sent = Some(now);
        }
        let ctx = match &reply.ctx {
            Some(ctx) => ctx.clone(),
            None => {
                let u = Utterance::new(next_ctx, Kind::Reply, reply.turn, now);
                let ctx = u.ctx.clone();
                reply.ctx = Some(ctx.clone());
                utterances.push(u);
                ctx
            }
        };
        if let Some(u) = utterances.iter_mut().find(|u| u.ctx == ctx) {
            if !u.text.is_empty() {
                u.text.push(' ');
            }
            u.text.push_str(piece.trim());
        }
        out.push(Action::TtsSpeak {
            context: ctx,
            text: piece,
            last: false,
        });
        if done {
            break;
        }
    }
    if done {
        if let Some(ctx) = &reply.ctx {
            close_input(utterances, ctx, out);
        }
    }
}

/// No more text for the utterance of `ctx`: closes its synthesis input, once.
pub(super) fn close_input(utterances: &mut [Utterance], ctx: &str, out: &mut Vec<Action>) {
    if let Some(u) = utterances.iter_mut().find(|u| u.ctx == ctx) {
        if !u.input_closed {
            u.input_closed = true;
            out.push(Action::TtsSpeak {
                context: ctx.to_owned(),
                text: String::new(),
                last: true,
            });
        }
    }
}
