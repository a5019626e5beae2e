//! Speculative replies: the reply asked for as soon as the recogniser reports the end of an
//! utterance, while the agent holds back for the turn-taking hold-off. The model streams and
//! the synthesiser speaks into the speculation's own utterance; its audio is held, not played.
//!
//! When the hold-off passes and the turn is committed (`turns`), the speculation is used if
//! it was asked with exactly the request the committed turn makes (same caller words, same
//! history, same tone): its utterance joins the agent's speech, the held audio goes to the
//! call at once, and a finished model reply is done then (its tool calls run only now). In
//! every other case it is discarded: the model request and the synthesis context are
//! cancelled, and nothing of it was played, journaled, or put in the model's context. The
//! caller going on (new words, interim or final), the call ending, a vendor failing under it,
//! or the turn taken any other way discards it; [`Conversation::check_speculation`] runs
//! after every input so none outlives the words it answers.
//!
//! Cost: a persona switch (`turn_taking.speculate`), at most `turn_taking.max_speculations`
//! per caller turn, none for words that hand the call over, and the outcome of each reported
//! ([`Action::Speculation`]) for the metrics.

use crate::ports::voice::{ChatMessage, LlmEvent, TtsEvent};
use crate::voice::text;

use super::replies::{flush, Reply};
use super::{Action, Conversation, Micros, Phase, Timing, Utterance};

/// What became of a speculative reply, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeculationOutcome {
    /// A reply was asked for during the hold-off.
    Started,
    /// It answered the committed turn.
    Used,
    /// It was thrown away.
    Discarded {
        /// Model text deltas it had received (about one token each).
        tokens: u32,
    },
}

/// A reply asked for before the caller's turn was committed.
#[derive(Debug)]
pub(super) struct Speculation {
    /// The request, numbered and timed as the committed turn's reply would be.
    reply: Reply,
    /// The context it was asked with; the caller's words last.
    messages: Vec<ChatMessage>,
    /// The caller's words it answers, normalized.
    said: String,
    /// Its speech: at most one utterance, whose audio is held.
    utterances: Vec<Utterance>,
    /// The model finished.
    done: bool,
    /// Model text deltas received.
    tokens: u32,
    /// When its first audio arrived.
    first_audio: Option<Micros>,
}

/// Words of `text`, lower-cased, without punctuation: what must match for a reply to fit.
fn normalized(text: &str) -> String {
    text::words(text).collect::<Vec<_>>().join(" ")
}

/// `speculative` was asked with the request `committed` is (the last message, the caller's
/// words, compared by its words).
fn same_request(speculative: &[ChatMessage], committed: &[ChatMessage]) -> bool {
    match (speculative.split_last(), committed.split_last()) {
        (Some((s_last, s_rest)), Some((c_last, c_rest))) => {
            s_rest == c_rest
                && s_last.role == c_last.role
                && normalized(&s_last.content) == normalized(&c_last.content)
        }
        _ => false,
    }
}

impl Conversation {
    /// The recogniser reported the end of an utterance and the hold-off began: ask for the
    /// reply to the caller's words now, unless one is already asked for these words, the
    /// persona does not speculate, the turn's attempts are spent, or the words will hand the
    /// call over (escalation is decided on the committed turn, and needs no reply).
    pub(super) fn speculate(&mut self, now: Micros, out: &mut Vec<Action>) {
        let said = normalized(&self.caller.finals);
        if self.speculation.as_ref().is_some_and(|s| s.said == said) {
            return;
        }
        self.discard_speculation("the caller's words changed", out);
        let tt = &self.profile.persona.turn_taking;
        let esc = &self.profile.persona.escalation;
        let finals = self.caller.finals.trim();
        let idle = self.reply.is_none()
            && self.tools_pending.is_empty()
            && self.reply_retry.is_none()
            && self.llm_down.is_none();
        if !tt.speculate
            || self.phase != Phase::Active
            || self.tts_dead
            || !idle
            || said.is_empty()
            || self.caller.speculations >= tt.max_speculations
            || text::keyword_in(finals, &esc.keywords).is_some()
            || (esc.on_request && text::asks_for_human(finals))
        {
            return;
        }
        self.caller.speculations += 1;
        self.next_reply += 1;
        let id = self.next_reply;
        let messages = self.prospective_context(finals);
        out.push(Action::LlmStart {
            reply: id,
            turn: self.turn + 1,
            messages: messages.clone(),
            tools: self.tool_specs(),
        });
        out.push(Action::Speculation(SpeculationOutcome::Started));
        self.speculation = Some(Speculation {
            reply: Reply {
                id,
                turn: self.turn + 1,
                ctx: None,
                buffer: String::new(),
                text: String::new(),
                tool_calls: Vec::new(),
                rounds: 0,
                timing: Timing {
                    llm_request: now,
                    ..Timing::default()
                },
            },
            messages,
            said,
            utterances: Vec::new(),
            done: false,
            tokens: 0,
            first_audio: None,
        });
    }

    /// Is `reply` the speculation's request?
    pub(super) fn is_speculative(&self, reply: u32) -> bool {
        self.speculation
            .as_ref()
            .is_some_and(|s| s.reply.id == reply)
    }

    /// The model's events for the speculation: its text goes to synthesis as a committed
    /// reply's would; its tool calls wait for the commit.
    pub(super) fn speculative_llm(
        &mut self,
        now: Micros,
        event: LlmEvent,
        at: Micros,
        out: &mut Vec<Action>,
    ) {
        let chunking = self.profile.voice.text_chunking;
        let Some(spec) = self.speculation.as_mut() else {
            return;
        };
        match event {
            LlmEvent::Text { text } => {
                spec.tokens += 1;
                let reply = &mut spec.reply;
                reply.timing.first_token.get_or_insert(at);
                reply.buffer.push_str(&text);
                reply.text.push_str(&text);
                let (utterances, next_ctx) = (&mut spec.utterances, &mut self.next_ctx);
                flush(reply, utterances, next_ctx, chunking, (now, at), false, out);
            }
            LlmEvent::ToolCall { call } => {
                spec.reply.timing.first_token.get_or_insert(at);
                spec.reply.tool_calls.push(call);
            }
            LlmEvent::Done { .. } => {
                spec.done = true;
                let (utterances, next_ctx) = (&mut spec.utterances, &mut self.next_ctx);
                flush(
                    &mut spec.reply,
                    utterances,
                    next_ctx,
                    chunking,
                    (now, at),
                    true,
                    out,
                );
            }
            LlmEvent::Failed { reason } => {
                // The committed turn asks again, through the usual failure handling.
                tracing::debug!(%reason, "the model failed under a speculative reply");
                self.discard_speculation("the model failed", out);
            }
        }
    }

    /// Synthesis events of the speculation's utterance (its audio is held); any other event
    /// is given back.
    pub(super) fn speculative_tts(
        &mut self,
        event: TtsEvent,
        at: Micros,
        out: &mut Vec<Action>,
    ) -> Option<TtsEvent> {
        let Some(spec) = self.speculation.as_mut() else {
            return Some(event);
        };
        let context = match &event {
            TtsEvent::Audio { context, .. }
            | TtsEvent::Words { context, .. }
            | TtsEvent::Done { context }
            | TtsEvent::ContextFailed { context, .. } => context,
            TtsEvent::Reconnected { .. } | TtsEvent::Failed { .. } => return Some(event),
        };
        let Some(u) = spec.utterances.iter_mut().find(|u| &u.ctx == context) else {
            return Some(event);
        };
        match event {
            TtsEvent::Audio { mulaw, .. } => {
                if !mulaw.is_empty() {
                    spec.first_audio.get_or_insert(at);
                    u.held.push(mulaw);
                }
            }
            TtsEvent::Words { words, .. } => u.words.extend(words),
            TtsEvent::Done { .. } => u.tts_done = true,
            TtsEvent::ContextFailed { reason, .. } => {
                tracing::debug!(%reason, "synthesis failed under a speculative reply");
                self.discard_speculation("synthesis failed", out);
            }
            TtsEvent::Reconnected { .. } | TtsEvent::Failed { .. } => {}
        }
        None
    }

    /// The turn is committed (the hold-off passed): answers it with the speculation if that
    /// was asked with the request the turn makes now, and says whether it did. The held audio
    /// goes to the call at once; a reply the model already finished is done now (its tool
    /// calls run from here on).
    pub(super) fn use_speculation(
        &mut self,
        now: Micros,
        turn: u32,
        committed: &Timing,
        out: &mut Vec<Action>,
    ) -> bool {
        let fits = self.speculation.as_ref().is_some_and(|s| {
            s.reply.turn == turn && same_request(&s.messages, &self.context_messages())
        });
        if !fits {
            self.discard_speculation("the committed turn differs", out);
            return false;
        }
        let spec = self.speculation.take().expect("checked");
        out.push(Action::Speculation(SpeculationOutcome::Used));
        let mut reply = spec.reply;
        reply.timing.eos = committed.eos;
        reply.timing.stt_final = committed.stt_final;
        reply.timing.turn_end = committed.turn_end;
        let ctx = reply.ctx.clone();
        self.reply = Some(reply);
        self.utterances.extend(spec.utterances);
        self.release_held(now, out);
        if let (Some(ctx), Some(first_audio)) = (ctx, spec.first_audio) {
            if self.utterances.iter().any(|u| u.ctx == ctx && u.sent > 0) {
                self.record_latency(&ctx, first_audio, now, out);
            }
        }
        if spec.done {
            self.reply_done(now, out);
        }
        true
    }

    /// Throws the speculation away (if there is one): its model request and synthesis
    /// context are cancelled; nothing of it was played, journaled or put in the context.
    pub(super) fn discard_speculation(&mut self, why: &str, out: &mut Vec<Action>) {
        let Some(spec) = self.speculation.take() else {
            return;
        };
        tracing::debug!(why, tokens = spec.tokens, "speculative reply discarded");
        if !spec.done {
            out.push(Action::LlmCancel {
                reply: spec.reply.id,
            });
        }
        for u in spec
            .utterances
            .iter()
            .filter(|u| !u.tts_done && !self.tts_dead)
        {
            out.push(Action::TtsCancel {
                context: u.ctx.clone(),
            });
        }
        out.push(Action::Speculation(SpeculationOutcome::Discarded {
            tokens: spec.tokens,
        }));
    }

    /// After every input: a speculation lives only while the conversation is active and the
    /// caller's pending words are the ones it answers, with no new words being heard.
    pub(super) fn check_speculation(&mut self, out: &mut Vec<Action>) {
        let Some(spec) = &self.speculation else {
            return;
        };
        let stale = self.phase != Phase::Active
            || self.reply.is_some()
            || !self.caller.interim.trim().is_empty()
            || normalized(&self.caller.finals) != spec.said;
        if stale {
            self.discard_speculation("the caller went on", out);
        }
    }
}
