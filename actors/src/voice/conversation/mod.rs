//! The conversation core: turn-taking, barge-in, replies streamed sentence by sentence into
//! speech, sentiment-driven tone, escalation, tools, silence, voicemail and vendor failures.
//!
//! It is pure: no I/O, no clock, no actor. [`Conversation::handle`] takes one [`Input`] with
//! the current time (microseconds since the conversation started) and returns the
//! [`Action`]s to execute, in order; [`Conversation::next_deadline`] says when to call it
//! again with [`Input::Timer`]. The voice session actor feeds it vendor events and executes
//! its actions, so every behaviour here is testable on a fake timeline.
//!
//! Agent speech is a list of utterances, each one speech-synthesis context. Their audio goes
//! to the call in order (a later utterance's audio waits until the earlier one is fully
//! synthesized) with a mark after every chunk, so the marks the carrier echoes tell exactly
//! how much of each utterance the caller has heard.
//!
//! The core is one state ([`Conversation`]) whose behaviour is split by concern, each file an
//! `impl Conversation` block with the helper types it owns, in reading order:
//! - this file: what goes in ([`Input`]) and out ([`Action`]), the state, its construction,
//!   and the event loop: [`Conversation::handle`] dispatching each input, the timers each
//!   deadline;
//! - `opening`: the greeting, the answering-machine verdict and the voicemail message;
//! - `turns`: turn-taking: speech-to-text events, end of utterance, hold-off, end of turn;
//! - `speculation`: the reply asked for during the hold-off, its audio held, then used for
//!   the committed turn or discarded;
//! - `barge_in`: the caller talking over the agent, and resuming after a false interruption;
//! - `keypad`: keys pressed, taken as a caller turn;
//! - `silence`: a quiet line: when to reprompt and when to hang up;
//! - `replies`: a reply requested from the model and streamed sentence by sentence to speech;
//! - `reply_retry`: a reply the model could not give: the hold line, retries, giving up;
//! - `context`: what the model sees: the caller, the system prompt, the bounded history;
//! - `tools`: the tools offered to the model and their results;
//! - `speech`: agent utterances, from speech synthesis to the call's media stream;
//! - `playout`: what the caller has heard, from the carrier's marks or the audio's duration;
//! - `tone`: caller sentiment and the agent's tone;
//! - `escalation`: the hand-over to a person;
//! - `failures`: a voice vendor failing during the call;
//! - `ending`: hanging up, transferring, and the call ending under the conversation;
//! - `records`: the transcript segments and latency records journalled.
//!
//! Its tests drive it on a fake timeline: `voice/conversation_tests.rs`.

use std::collections::VecDeque;

use crate::machine::{AmdResult, EndReason, PhoneNumber};
use crate::ports::sentiment::Sentiment;

use super::text;
use crate::catalog::profile::VoiceProfile;
use crate::machine::record::{ConversationRecord, Speaker, Tone};
use crate::ports::voice::{ChatMessage, ChatRole, LlmEvent, SttEvent, ToolSpec, TtsEvent};

mod barge_in;
mod context;
mod ending;
mod escalation;
mod failures;
mod keypad;
mod opening;
mod playout;
mod records;
mod replies;
mod reply_retry;
mod silence;
mod speculation;
mod speech;
mod tone;
mod tools;
mod turns;

pub use context::CallerContext;
pub use speculation::SpeculationOutcome;

use barge_in::Interrupted;
use records::Timing;
use replies::Reply;
use reply_retry::{LlmDown, ReplyRetry};
use speculation::Speculation;
use speech::{After, Kind, Utterance};
use turns::CallerTurn;

/// Microseconds since the conversation started.
pub type Micros = u64;

const MS: Micros = 1000;

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The media stream is up: greet, or wait for the answering-machine verdict first.
    Start {
        /// Outbound call with answering-machine detection running.
        await_amd: bool,
    },
    /// The media stream is up again for a conversation that already took place elsewhere
    /// (the call moved from another node, or its node restarted): no greeting; the model
    /// gets what was said so far, and the agent listens.
    Resume {
        /// What was said, in order: (speaker, text).
        said: Vec<(Speaker, String)>,
        /// The last turn number journaled.
        turn: u32,
    },
    /// The first caller audio reached speech-to-text (anchors stream audio time).
    AudioStarted,
    /// Answering-machine detection finished.
    Amd(AmdResult),
    /// Speech-to-text; `at` is when the session received it.
    Stt {
        /// The event.
        event: SttEvent,
        /// Receipt time.
        at: Micros,
    },
    /// The chat model; `reply` is the request the event belongs to.
    Llm {
        /// Request number.
        reply: u32,
        /// The event.
        event: LlmEvent,
        /// Receipt time.
        at: Micros,
    },
    /// A reply request could not be started (vendor down).
    LlmUnavailable {
        /// Request number.
        reply: u32,
        /// Why.
        reason: String,
    },
    /// Speech synthesis; `at` is when the session received it.
    Tts {
        /// The event.
        event: TtsEvent,
        /// Receipt time.
        at: Micros,
    },
    /// Speech synthesis could not be opened, or failed for good.
    TtsUnavailable {
        /// Why.
        reason: String,
    },
    /// Speech-to-text could not be opened.
    SttUnavailable {
        /// Why.
        reason: String,
    },
    /// The carrier echoed a mark: the audio before it has played.
    MarkPlayed {
        /// The mark.
        name: String,
    },
    /// The caller pressed a key.
    Dtmf {
        /// The key.
        digit: String,
    },
    /// A caller turn was scored.
    Sentiment {
        /// Turn.
        turn: u32,
        /// Score.
        sentiment: Sentiment,
    },
    /// A tool finished.
    ToolResult {
        /// The model's tool-call id.
        id: String,
        /// JSON result, or an error text.
        result: Result<serde_json::Value, String>,
    },
    /// A deadline may have passed.
    Timer,
    /// The call ended (either side hung up, or it was transferred).
    CallEnded,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send text to speech synthesis.
    TtsSpeak {
        /// Utterance context.
        context: String,
        /// Text.
        text: String,
        /// Last piece.
        last: bool,
    },
    /// Stop synthesizing a context.
    TtsCancel {
        /// Utterance context.
        context: String,
    },
    /// Queue audio on the call.
    MediaAudio(Vec<u8>),
    /// Queue a mark on the call.
    MediaMark(String),
    /// Drop the call's unplayed audio.
    MediaClear,
    /// Start a reply.
    LlmStart {
        /// Request number (events come back with it).
        reply: u32,
        /// The turn it answers.
        turn: u32,
        /// Context, system message first.
        messages: Vec<ChatMessage>,
        /// Tools on offer.
        tools: Vec<ToolSpec>,
    },
    /// Abandon a reply.
    LlmCancel {
        /// Request number.
        reply: u32,
    },
    /// Score a caller turn.
    ScoreSentiment {
        /// Turn.
        turn: u32,
        /// What the caller said.
        text: String,
    },
    /// Run a tool (`lookup_customer`, the agent's HTTP tools); the result comes back as
    /// [`Input::ToolResult`].
    RunTool {
        /// The turn whose reply called it.
        turn: u32,
        /// The model's id.
        id: String,
        /// Tool.
        name: String,
        /// Arguments (JSON text).
        arguments: String,
    },
    /// Journal a fact.
    Record(ConversationRecord),
    /// Transfer the call to a person.
    Transfer {
        /// Where.
        to: PhoneNumber,
    },
    /// End the call.
    Hangup {
        /// Why.
        reason: EndReason,
    },
    /// Speech synthesis is down: play the pre-recorded apology and then a mark with this name.
    PlayFallbackApology {
        /// The mark that follows it.
        mark: String,
    },
    /// Close the vendor streams: the conversation is over.
    Close,
    /// A speculative reply started, was used or was discarded (for the metrics).
    Speculation(SpeculationOutcome),
}

/// Where the conversation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `Start`.
    Idle,
    /// Outbound with detection running: the greeting waits for the verdict.
    AwaitAmd,
    /// An answering machine is talking; the message follows its greeting.
    Voicemail,
    /// Conversing.
    Active,
    /// A hangup or transfer is under way: nothing new starts.
    Ending,
    /// The call is transferred or over.
    Done,
}

/// One call's conversation.
#[derive(Debug)]
pub struct Conversation {
    profile: VoiceProfile,
    caller_ctx: CallerContext,
    phase: Phase,
    turn: u32,
    history: VecDeque<ChatMessage>,
    tone: Tone,
    scores: Vec<f64>,
    low_streak: u32,
    caller: CallerTurn,
    holdoff_at: Option<Micros>,
    utterances: Vec<Utterance>,
    next_ctx: u32,
    reply: Option<Reply>,
    /// The reply asked for during the hold-off, before the turn is committed.
    speculation: Option<Speculation>,
    next_reply: u32,
    barge_at: Option<Micros>,
    interrupted: Option<Interrupted>,
    silence_since: Option<Micros>,
    reprompted: bool,
    tools_pending: Vec<(String, String, String, Micros)>,
    /// The reply (turn, rounds) waiting for the pending tools.
    pending_rounds: Option<(u32, u32)>,
    /// Tools still running when the caller spoke again: their results, when they come, are
    /// journaled and told to the model as a note.
    tools_late: Vec<(String, String, String, Micros)>,
    filler_at: Option<Micros>,
    /// The filler line of the tool that set `filler_at` (else the persona's).
    filler_line: Option<String>,
    amd_at: Option<Micros>,
    /// When the wait for the answering-machine verdict began.
    amd_since: Option<Micros>,
    voicemail_at: Option<Micros>,
    dtmf: String,
    dtmf_at: Option<Micros>,
    /// First and last key of the pending keypad input.
    dtmf_span: Option<(Micros, Micros)>,
    audio_origin: Option<Micros>,
    tts_dead: bool,
    fallback_mark: Option<(String, After, Micros)>,
    escalated: bool,
    /// Timing of a finished reply whose first audio has not arrived yet.
    latency_pending: Option<(String, u32, Timing)>,
    /// Lexicon estimate of the turn being answered (until the vendor's score arrives).
    pending_estimate: Option<(u32, f64)>,
    /// The next attempt at a reply the model could not give.
    reply_retry: Option<ReplyRetry>,
    /// The model is not answering (since when, why).
    llm_down: Option<LlmDown>,
    /// When the audio forwarded so far should have finished playing.
    playhead: Micros,
    /// The media stream does not echo marks (one is overdue by `playout::MARK_WAIT`).
    marks_missing: bool,
}

impl Conversation {
    /// A conversation for one call.
    pub fn new(profile: VoiceProfile, caller_ctx: CallerContext) -> Self {
        Conversation {
            profile,
            caller_ctx,
            phase: Phase::Idle,
            turn: 0,
            history: VecDeque::new(),
            tone: Tone::Normal,
            scores: Vec::new(),
            low_streak: 0,
            caller: CallerTurn::default(),
            holdoff_at: None,
            utterances: Vec::new(),
            next_ctx: 0,
            reply: None,
            speculation: None,
            next_reply: 0,
            barge_at: None,
            interrupted: None,
            silence_since: None,
            reprompted: false,
            tools_pending: Vec::new(),
            pending_rounds: None,
            tools_late: Vec::new(),
            filler_at: None,
            filler_line: None,
            amd_at: None,
            amd_since: None,
            voicemail_at: None,
            dtmf: String::new(),
            dtmf_at: None,
            dtmf_span: None,
            audio_origin: None,
            tts_dead: false,
            fallback_mark: None,
            escalated: false,
            latency_pending: None,
            pending_estimate: None,
            reply_retry: None,
            llm_down: None,
            playhead: 0,
            marks_missing: false,
        }
    }

    /// The agent's current tone.
    pub fn tone(&self) -> Tone {
        self.tone
    }

    /// Caller turns so far.
    pub fn turns(&self) -> u32 {
        self.turn
    }

    /// The conversation is over (transferred, hung up, or the call ended).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The agent has audio synthesizing or playing.
    pub fn agent_speaking(&self) -> bool {
        !self.utterances.is_empty()
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Micros> {
        if self.phase == Phase::Done {
            return None;
        }
        let silence = self.silence_deadline();
        let playout = self
            .utterances
            .iter()
            .filter_map(|u| u.playout_deadline)
            .min();
        [
            self.holdoff_at,
            self.barge_at,
            self.interrupted.as_ref().map(|i| i.until),
            self.filler_at,
            self.amd_at,
            self.voicemail_at,
            self.dtmf_at,
            silence,
            playout,
            self.fallback_mark.as_ref().map(|f| f.2),
            self.reply_retry.as_ref().map(|r| r.at),
            self.playback_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Applies one input at `now`.
    pub fn handle(&mut self, now: Micros, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Done {
            return out;
        }
        self.refresh_playback(now);
        match input {
            Input::Start { await_amd } => {
                if self.phase == Phase::Idle {
                    if await_amd {
                        self.phase = Phase::AwaitAmd;
                        self.amd_at = Some(now + self.profile.persona.amd_wait_ms * MS);
                        self.amd_since = Some(now);
                    } else {
                        self.greet(now, &mut out);
                    }
                }
            }
            Input::Resume { said, turn } => {
                if self.phase == Phase::Idle {
                    self.phase = Phase::Active;
                    self.turn = turn;
                    for (speaker, text) in said {
                        let role = match speaker {
                            Speaker::Caller => ChatRole::User,
                            Speaker::Agent => ChatRole::Assistant,
                        };
                        self.push_history(ChatMessage::text(role, text));
                    }
                }
            }
            Input::AudioStarted => {
                self.audio_origin.get_or_insert(now);
            }
            Input::Amd(result) => self.amd(now, result, &mut out),
            Input::Stt { event, at } => self.stt(now, event, at, &mut out),
            Input::Llm { reply, event, at } => self.llm(now, reply, event, at, &mut out),
            Input::LlmUnavailable { reply, reason } => {
                if self.is_speculative(reply) {
                    tracing::debug!(%reason, "no model for a speculative reply");
                    self.discard_speculation("the model is unavailable", &mut out);
                } else if self.reply.as_ref().is_some_and(|r| r.id == reply) {
                    self.reply_unavailable(now, &reason, &mut out);
                }
            }
            Input::Tts { event, at } => self.tts(now, event, at, &mut out),
            Input::TtsUnavailable { reason } => {
                self.tts_dead = true;
                self.vendor_failed(now, "tts", &reason, &mut out);
            }
            Input::SttUnavailable { reason } => self.vendor_failed(now, "stt", &reason, &mut out),
            Input::MarkPlayed { name } => self.mark_played(now, &name, &mut out),
            Input::Dtmf { digit } => self.dtmf(now, digit, &mut out),
            Input::Sentiment { turn, sentiment } => self.sentiment(now, turn, sentiment, &mut out),
            Input::ToolResult { id, result } => self.tool_result(now, id, result, &mut out),
            Input::Timer => self.timers(now, &mut out),
            Input::CallEnded => self.call_ended(now, &mut out),
        }
        self.check_speculation(&mut out);
        self.settle(now);
        out
    }

    fn timers(&mut self, now: Micros, out: &mut Vec<Action>) {
        if due(&mut self.amd_at, now) && self.phase == Phase::AwaitAmd {
            // A verdict that never comes (a lost webhook) must not silence the call.
            self.assume_human(now, "no verdict within amd_wait_ms", out);
            self.greet(now, out);
        }
        if due(&mut self.voicemail_at, now) && self.phase == Phase::Voicemail {
            self.leave_voicemail(now, out);
        }
        if due(&mut self.barge_at, now) {
            // Speech long enough, with at least one real word (or still going): the caller
            // means it.
            let said = format!("{} {}", self.caller.finals, self.caller.interim);
            if self.caller.speaking && text::meaningful_words(&said) > 0 {
                self.barge_in(now, out);
            }
        }
        if due(&mut self.holdoff_at, now)
            && (!self.caller.speaking || self.caller.interim.trim().is_empty())
        {
            self.caller.speaking = false;
            self.end_of_turn(now, out);
        }
        if self.interrupted.as_ref().is_some_and(|i| i.until <= now) {
            self.check_false_interruption(now, out);
        }
        if due(&mut self.dtmf_at, now) {
            self.dtmf_done(now, out);
        }
        if due(&mut self.filler_at, now)
            && !self.tools_pending.is_empty()
            && self.utterances.is_empty()
        {
            let filler = self
                .filler_line
                .take()
                .unwrap_or_else(|| self.profile.persona.filler.clone());
            self.say(now, Kind::Filler, &filler, After::Listen, out);
        }
        let overdue: Vec<String> = self
            .utterances
            .iter()
            .filter(|u| u.playout_deadline.is_some_and(|t| t <= now))
            .map(|u| u.ctx.clone())
            .collect();
        if !overdue.is_empty() {
            for u in self.utterances.iter_mut() {
                if overdue.contains(&u.ctx) {
                    tracing::debug!(ctx = %u.ctx, "no play-out confirmation; counting it as played");
                    u.played = u.sent;
                    u.held.clear();
                }
            }
            self.finish_played(now, out);
        }
        if self.marks_missing {
            self.finish_played(now, out);
        }
        if self.fallback_mark.as_ref().is_some_and(|f| f.2 <= now) {
            let (_, after, _) = self.fallback_mark.take().expect("checked");
            self.follow(now, after, out);
        }
        if self.reply_retry.as_ref().is_some_and(|r| r.at <= now) {
            self.retry_reply(now, out);
        }
        if let Some(deadline) = self.silence_deadline().filter(|&t| t <= now) {
            let _ = deadline;
            if matches!(self.phase, Phase::Active) {
                if self.reprompted {
                    self.phase = Phase::Ending;
                    let goodbye = self.profile.persona.goodbye.clone();
                    self.say(
                        now,
                        Kind::Goodbye,
                        &goodbye,
                        After::Hangup(EndReason::Silence),
                        out,
                    );
                } else {
                    self.reprompted = true;
                    let reprompt = self.profile.persona.reprompt.clone();
                    self.say(now, Kind::Reprompt, &reprompt, After::Listen, out);
                }
            }
        }
    }
}

/// Takes a deadline that has passed.
fn due(deadline: &mut Option<Micros>, now: Micros) -> bool {
    if deadline.is_some_and(|t| t <= now) {
        *deadline = None;
        true
    } else {
        false
    }
}
