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

use std::collections::VecDeque;

use crate::machine::{AmdResult, EndReason, PhoneNumber};
use crate::sentiment::{LexiconScorer, Sentiment, SentimentLabel};

use super::ports::{ChatMessage, ChatRole, LlmEvent, SttEvent, ToolCall, ToolSpec, TtsEvent};
use super::profile::{VendorFailureAction, VoiceProfile, VoicemailAction};
use super::record::{ConversationRecord, EscalationReason, Speaker, Tone};
use super::text;

/// Microseconds since the conversation started.
pub type Micros = u64;

const MS: Micros = 1000;
/// Audio bytes per millisecond (μ-law, 8 kHz).
const BYTES_PER_MS: u64 = 8;
/// Past its expected end, an utterance whose marks never came back counts as played (the
/// media stream is gone); its follow-up (a hangup, a transfer) must not hang on it.
const PLAYOUT_GRACE: Micros = 2000 * MS;
/// A mark the carrier has not echoed this long after its audio should have played means the
/// media stream does not echo marks: from then on the audio's own duration says what was heard.
const MARK_WAIT: Micros = 1000 * MS;
/// Digits pressed within this gap are one input.
const DTMF_GAP: Micros = 1200 * MS;
/// The longest wait for an answering machine's greeting to end before leaving the message.
const VOICEMAIL_WAIT: Micros = 10_000 * MS;
/// Model rounds (tool results fed back) per caller turn.
const MAX_TOOL_ROUNDS: u32 = 3;
/// Context messages kept (plus the system message).
const MAX_HISTORY: usize = 24;
/// Spoken-text rate assumed when the synthesiser gives no word timings.
const MS_PER_CHAR: u64 = 65;
/// First wait before asking the model again after it could not answer; doubles per attempt.
const REPLY_RETRY_FIRST: Micros = 1000 * MS;
/// Longest wait between two attempts (a breaker's half-open probes are not missed by much).
const REPLY_RETRY_CAP: Micros = 8000 * MS;

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

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The media stream is up: greet, or wait for the answering-machine verdict first.
    Start {
        /// Outbound call with answering-machine detection running.
        await_amd: bool,
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
    /// Run a tool (`lookup_customer`); the result comes back as [`Input::ToolResult`].
    RunTool {
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Greeting,
    Reply,
    Reprompt,
    Filler,
    Handoff,
    Goodbye,
    Apology,
    Voicemail,
    Resume,
}

impl Kind {
    /// Caller speech stops it.
    fn interruptible(self) -> bool {
        matches!(
            self,
            Kind::Greeting | Kind::Reply | Kind::Reprompt | Kind::Filler | Kind::Resume
        )
    }
}

/// What follows an utterance once the caller has heard it.
#[derive(Debug, Clone, PartialEq)]
enum After {
    Listen,
    Hangup(EndReason),
    Transfer(PhoneNumber),
}

#[derive(Debug)]
struct Utterance {
    ctx: String,
    kind: Kind,
    turn: u32,
    /// Text sent to synthesis so far.
    text: String,
    input_closed: bool,
    tts_done: bool,
    /// Synthesized audio not yet forwarded (an earlier utterance is still synthesizing).
    held: Vec<Vec<u8>>,
    /// Audio forwarded to the call, bytes.
    sent: u64,
    /// Audio the carrier confirmed played, bytes.
    played: u64,
    /// Audio played by its own duration, bytes (kept up to date only while the media stream
    /// does not echo marks).
    estimated: u64,
    /// When each forwarded chunk should play: `(start, offset, bytes)`.
    schedule: Vec<(Micros, u64, u64)>,
    words: Vec<(String, f32, f32)>,
    started: Micros,
    /// When its audio should have finished playing, once fully synthesized.
    playout_deadline: Option<Micros>,
    /// Audio forwarded since this time (for the expected play-out end).
    first_sent_at: Option<Micros>,
    after: After,
    failed_once: bool,
    /// Already in the model's context (or never to be: a filler phrase).
    historied: bool,
}

impl Utterance {
    fn finished(&self) -> bool {
        self.tts_done && self.held.is_empty() && self.heard_bytes() >= self.sent
    }

    /// Audio the caller has heard: what the marks confirmed, or what the audio's duration
    /// says has played when the marks do not come back.
    fn heard_bytes(&self) -> u64 {
        self.played.max(self.estimated)
    }

    fn heard_ms(&self) -> u64 {
        self.heard_bytes() / BYTES_PER_MS
    }

    /// Bytes that have played by `t`, by the audio's duration.
    fn played_by(&self, t: Micros) -> u64 {
        self.schedule
            .iter()
            .filter(|(start, _, _)| t > *start)
            .map(|(start, _, len)| ((t - start) * BYTES_PER_MS / MS).min(*len))
            .sum()
    }

    /// When the first chunk whose mark has not come back should have finished playing.
    fn unconfirmed_end(&self) -> Option<Micros> {
        self.schedule
            .iter()
            .find(|(_, offset, len)| offset + len > self.played)
            .map(|(start, _, len)| start + len * MS / BYTES_PER_MS)
    }

    /// When all its forwarded audio should have played.
    fn schedule_end(&self) -> Option<Micros> {
        self.schedule
            .last()
            .map(|(start, _, len)| start + len * MS / BYTES_PER_MS)
    }

    /// The words the caller heard, and the rest.
    fn split_heard(&self) -> (String, String) {
        let heard_ms = self.heard_ms() as f32;
        if !self.words.is_empty() {
            let n = self
                .words
                .iter()
                .take_while(|(_, _, end)| end * 1000.0 <= heard_ms + 60.0)
                .count();
            let all: Vec<&str> = self.text.split_whitespace().collect();
            let n = n.min(all.len());
            return (all[..n].join(" "), all[n..].join(" "));
        }
        let chars = usize::try_from(self.heard_ms() / MS_PER_CHAR).unwrap_or(usize::MAX);
        let mut cut = self
            .text
            .char_indices()
            .nth(chars)
            .map_or(self.text.len(), |(i, _)| i);
        // Back to a word boundary: a half-heard word was not heard.
        if cut < self.text.len() {
            cut = self.text[..cut].rfind(' ').unwrap_or(0);
        }
        (
            self.text[..cut].trim().to_owned(),
            self.text[cut..].trim().to_owned(),
        )
    }
}

/// Timestamps of one reply, for its latency record.
#[derive(Debug, Default, Clone)]
struct Timing {
    eos: Option<Micros>,
    stt_final: Option<Micros>,
    turn_end: Micros,
    llm_request: Micros,
    first_token: Option<Micros>,
    piece_token: Option<Micros>,
    piece_sent: Option<Micros>,
    recorded: bool,
}

#[derive(Debug)]
struct Reply {
    id: u32,
    turn: u32,
    ctx: Option<String>,
    buffer: String,
    text: String,
    tool_calls: Vec<ToolCall>,
    rounds: u32,
    timing: Timing,
}

#[derive(Debug, Default)]
struct CallerTurn {
    /// Final words not yet answered.
    finals: String,
    start_ms: Option<u64>,
    end_ms: u64,
    confidence_sum: f32,
    confidence_n: u32,
    /// Speech heard and not yet concluded by a final.
    speaking: bool,
    /// Latest interim words.
    interim: String,
    last_final_at: Option<Micros>,
}

impl CallerTurn {
    fn take(&mut self) -> CallerTurn {
        std::mem::take(self)
    }
}

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

/// A caller turn the model could not answer yet: asked again at `at`.
#[derive(Debug)]
struct ReplyRetry {
    turn: u32,
    rounds: u32,
    at: Micros,
    reason: String,
}

/// The model stopped answering at `since` (first unanswered attempt), for `reason`.
#[derive(Debug)]
struct LlmDown {
    since: Micros,
    reason: String,
    attempts: u32,
    /// The caller turn the hold line was said for.
    held_turn: Option<u32>,
}

#[derive(Debug)]
struct Interrupted {
    turn: u32,
    remainder: String,
    until: Micros,
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
    next_reply: u32,
    barge_at: Option<Micros>,
    interrupted: Option<Interrupted>,
    silence_since: Option<Micros>,
    reprompted: bool,
    tools_pending: Vec<(String, String, String, Micros)>,
    /// The reply (turn, rounds) waiting for the pending tools.
    pending_rounds: Option<(u32, u32)>,
    filler_at: Option<Micros>,
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
    /// The media stream does not echo marks (one is overdue by [`MARK_WAIT`]).
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
            next_reply: 0,
            barge_at: None,
            interrupted: None,
            silence_since: None,
            reprompted: false,
            tools_pending: Vec::new(),
            pending_rounds: None,
            filler_at: None,
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
            Input::AudioStarted => {
                self.audio_origin.get_or_insert(now);
            }
            Input::Amd(result) => self.amd(now, result, &mut out),
            Input::Stt { event, at } => self.stt(now, event, at, &mut out),
            Input::Llm { reply, event, at } => self.llm(now, reply, event, at, &mut out),
            Input::LlmUnavailable { reply, reason } => {
                if self.reply.as_ref().is_some_and(|r| r.id == reply) {
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
        self.settle(now);
        out
    }

    // ------------------------------------------------------------------ play-out

    /// Keeps what the caller heard up to date when the media stream does not echo marks: a
    /// mark overdue by [`MARK_WAIT`] switches to the audio's own duration (μ-law 8 kHz, 8
    /// bytes per ms, played in the order forwarded), until a mark comes back.
    fn refresh_playback(&mut self, now: Micros) {
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
    fn playback_deadline(&self) -> Option<Micros> {
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

    // ------------------------------------------------------------------ start, amd, voicemail

    fn greet(&mut self, now: Micros, out: &mut Vec<Action>) {
        self.phase = Phase::Active;
        self.amd_at = None;
        let greeting = self.profile.persona.greeting.clone();
        self.say(now, Kind::Greeting, &greeting, After::Listen, out);
    }

    /// Journals that the call is taken for a person without a verdict.
    fn assume_human(&mut self, now: Micros, reason: &str, out: &mut Vec<Action>) {
        let waited_ms = self.amd_since.map_or(0, |t| now.saturating_sub(t) / MS);
        tracing::info!(
            reason,
            waited_ms,
            "no answering-machine verdict; taking the call for a person"
        );
        out.push(Action::Record(ConversationRecord::AmdAssumedHuman {
            reason: reason.to_owned(),
            waited_ms,
        }));
    }

    fn amd(&mut self, now: Micros, result: AmdResult, out: &mut Vec<Action>) {
        if self.phase != Phase::AwaitAmd {
            return;
        }
        match result {
            AmdResult::Human | AmdResult::NotSure => self.greet(now, out),
            AmdResult::Machine => {
                self.amd_at = None;
                let action = self.profile.persona.voicemail;
                out.push(Action::Record(ConversationRecord::Voicemail {
                    action: action.as_str().into(),
                }));
                match action {
                    VoicemailAction::HangUp => self.hang_up(EndReason::Voicemail, out),
                    VoicemailAction::LeaveMessage => {
                        self.phase = Phase::Voicemail;
                        self.voicemail_at = Some(now + VOICEMAIL_WAIT);
                    }
                }
            }
        }
    }

    fn leave_voicemail(&mut self, now: Micros, out: &mut Vec<Action>) {
        self.voicemail_at = None;
        self.phase = Phase::Ending;
        self.caller.take();
        let message = self.profile.persona.voicemail_message.clone();
        self.say(
            now,
            Kind::Voicemail,
            &message,
            After::Hangup(EndReason::Voicemail),
            out,
        );
    }

    // ------------------------------------------------------------------ speech-to-text

    fn stt(&mut self, now: Micros, event: SttEvent, at: Micros, out: &mut Vec<Action>) {
        match event {
            SttEvent::SpeechStarted { .. } => {
                self.caller.speaking = true;
                self.caller_active();
                self.holdoff_at = None;
                if self.interruptible_playing() && self.barge_at.is_none() {
                    self.barge_at =
                        Some(now + self.profile.persona.turn_taking.min_barge_in_ms * MS);
                }
                self.merge_if_unspoken(out);
            }
            SttEvent::Transcript {
                text,
                is_final,
                speech_final,
                confidence,
                start_ms,
                end_ms,
            } => {
                let has_words = !text.trim().is_empty();
                if has_words {
                    self.caller_active();
                    self.holdoff_at = None;
                }
                if !is_final {
                    if has_words {
                        self.caller.speaking = true;
                        self.caller.interim = text;
                        if self.interruptible_playing() {
                            self.barge_at.get_or_insert(
                                now + self.profile.persona.turn_taking.min_barge_in_ms * MS,
                            );
                            let words = text::meaningful_words(&format!(
                                "{} {}",
                                self.caller.finals, self.caller.interim
                            ));
                            if words >= self.profile.persona.turn_taking.min_barge_in_words {
                                self.barge_in(now, out);
                            }
                        }
                        self.merge_if_unspoken(out);
                    }
                    return;
                }
                self.caller.interim.clear();
                if has_words {
                    if !self.caller.finals.is_empty() {
                        self.caller.finals.push(' ');
                    }
                    self.caller.finals.push_str(text.trim());
                    self.caller.start_ms.get_or_insert(start_ms);
                    self.caller.end_ms = end_ms;
                    self.caller.confidence_sum += confidence;
                    self.caller.confidence_n += 1;
                    self.caller.last_final_at = Some(at);
                    if self.interruptible_playing() {
                        let words = text::meaningful_words(&self.caller.finals);
                        if words >= self.profile.persona.turn_taking.min_barge_in_words {
                            self.barge_in(now, out);
                        }
                    }
                    self.merge_if_unspoken(out);
                }
                if speech_final {
                    self.caller.speaking = false;
                    self.end_of_utterance(now, out);
                }
            }
            SttEvent::UtteranceEnd { .. } => {
                self.caller.speaking = false;
                self.end_of_utterance(now, out);
            }
            SttEvent::Reconnected { gap_ms, reason } => {
                out.push(Action::Record(ConversationRecord::VendorGap {
                    vendor: "stt".into(),
                    gap_ms,
                    reason,
                }));
            }
            SttEvent::Failed { reason } => self.vendor_failed(now, "stt", &reason, out),
        }
    }

    /// The caller said something: silence handling starts over.
    fn caller_active(&mut self) {
        self.silence_since = None;
        self.reprompted = false;
    }

    /// The recogniser says the caller stopped talking: decide after a hold-off.
    fn end_of_utterance(&mut self, now: Micros, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Voicemail => {
                self.leave_voicemail(now, out);
                return;
            }
            Phase::Active | Phase::AwaitAmd => {}
            _ => return,
        }
        if self.caller.finals.trim().is_empty() {
            // Noise or a backchannel-only interruption: nothing to answer. The barge-in
            // window decides about resuming.
            self.barge_at = None;
            return;
        }
        if self.agent_playing_interruptible_unbarged() {
            // Words while the agent talks that never reached the barge-in bar: a backchannel.
            let t = self.caller.take();
            out.push(self.caller_segment(now, &t, self.turn));
            self.barge_at = None;
            return;
        }
        let tt = &self.profile.persona.turn_taking;
        let wait = if text::looks_unfinished(&self.caller.finals) {
            tt.long_holdoff_ms
        } else {
            tt.holdoff_ms
        };
        self.holdoff_at = Some(now + wait * MS);
        if wait == 0 {
            self.holdoff_at = None;
            self.end_of_turn(now, out);
        }
    }

    fn interruptible_playing(&self) -> bool {
        self.utterances.iter().any(|u| u.kind.interruptible())
    }

    /// The agent is talking and the caller has not (yet) barged in.
    fn agent_playing_interruptible_unbarged(&self) -> bool {
        self.interruptible_playing()
    }

    /// The caller goes on talking after we decided their turn was over, before any answer
    /// was heard: withdraw the answer and take their words together.
    fn merge_if_unspoken(&mut self, out: &mut Vec<Action>) {
        let Some(reply) = &self.reply else { return };
        let heard = self
            .utterances
            .iter()
            .any(|u| u.kind == Kind::Reply && (u.sent > 0 || !u.held.is_empty()));
        if heard || reply.rounds > 0 {
            return;
        }
        let reply = self.reply.take().expect("checked");
        out.push(Action::LlmCancel { reply: reply.id });
        if let Some(ctx) = &reply.ctx {
            out.push(Action::TtsCancel {
                context: ctx.clone(),
            });
            self.utterances.retain(|u| &u.ctx != ctx);
        }
        // The user message of that turn goes back into the caller's words.
        if let Some(last) = self.history.back() {
            if last.role == ChatRole::User {
                let previous = self.history.pop_back().expect("checked").content;
                let rest = std::mem::take(&mut self.caller.finals);
                self.caller.finals = format!("{previous} {rest}").trim().to_owned();
            }
        }
        self.turn = self.turn.saturating_sub(1);
    }

    fn end_of_turn(&mut self, now: Micros, out: &mut Vec<Action>) {
        let t = self.caller.take();
        let said = t.finals.trim().to_owned();
        if said.is_empty() {
            return;
        }
        if self.phase == Phase::AwaitAmd {
            // A person spoke before the detector decided: greet them. "Hello?" is answered by
            // the greeting; anything more is answered after it, as the first turn (the
            // greeting goes into the model's context first, so the reply follows on from it).
            self.assume_human(now, "the caller spoke before the verdict", out);
            self.greet(now, out);
            if text::only_salutation(&said) {
                return;
            }
            if let Some(greeting) = self.utterances.last_mut() {
                greeting.historied = true;
                let text = greeting.text.clone();
                self.push_history(ChatMessage::text(ChatRole::Assistant, text));
            }
        }
        self.interrupted = None;
        self.turn += 1;
        let turn = self.turn;
        out.push(self.caller_segment(now, &t, turn));
        out.push(Action::ScoreSentiment {
            turn,
            text: said.clone(),
        });
        let estimate = LexiconScorer.score_text(&said);
        self.pending_estimate = Some((turn, estimate));
        self.update_tone(turn, Some(estimate), "lexicon estimate", out);
        self.push_history(ChatMessage::text(ChatRole::User, said.clone()));

        let esc = &self.profile.persona.escalation;
        if let Some(k) = text::keyword_in(&said, &esc.keywords) {
            let detail = format!("keyword `{k}`");
            self.escalate(now, EscalationReason::Keyword, detail, out);
            return;
        }
        if esc.on_request && text::asks_for_human(&said) {
            self.escalate(now, EscalationReason::CallerRequest, said, out);
            return;
        }
        // A turn the model could not answer yet is answered together with this one.
        self.reply_retry = None;
        let timing = Timing {
            eos: self
                .audio_origin
                .map(|o| o + t.end_ms * MS)
                .filter(|&e| Some(e) <= t.last_final_at),
            stt_final: t.last_final_at,
            turn_end: now,
            llm_request: now,
            ..Timing::default()
        };
        self.request_reply(turn, 0, timing, out);
    }

    fn caller_segment(&self, now: Micros, t: &CallerTurn, turn: u32) -> Action {
        let origin = self.audio_origin.unwrap_or(0) / MS;
        let confidence = if t.confidence_n == 0 {
            0.0
        } else {
            t.confidence_sum / t.confidence_n as f32
        };
        Action::Record(ConversationRecord::Segment {
            speaker: Speaker::Caller,
            text: t.finals.trim().to_owned(),
            start_ms: origin + t.start_ms.unwrap_or(t.end_ms),
            end_ms: (origin + t.end_ms).min(now / MS),
            confidence,
            interrupted: false,
            turn,
        })
    }

    // ------------------------------------------------------------------ replies

    fn request_reply(&mut self, turn: u32, rounds: u32, timing: Timing, out: &mut Vec<Action>) {
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
            messages: self.context_messages(),
            tools: self.tool_specs(),
        });
    }

    fn context_messages(&self) -> Vec<ChatMessage> {
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
        if self.tone == Tone::Empathetic {
            system.push_str(
                "\nThe caller sounds frustrated. Acknowledge it briefly and sincerely, apologise \
                 where it fits, stay calm, use short sentences, and focus on solving their \
                 problem. Do not argue.",
            );
        }
        let mut messages = vec![ChatMessage::text(ChatRole::System, system)];
        messages.extend(self.history.iter().cloned());
        messages
    }

    fn tool_specs(&self) -> Vec<ToolSpec> {
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

    fn llm(&mut self, now: Micros, id: u32, event: LlmEvent, at: Micros, out: &mut Vec<Action>) {
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

    /// The model could not answer the current reply (its breaker is open, it failed or broke
    /// off before its first words). The caller hears the hold line once per turn, and the
    /// reply is asked again with backoff (so the breaker's half-open probes get their chance);
    /// only when the model has not answered for the persona's `reply_wait_ms` does
    /// `on_vendor_failure` apply. Each call waits from its own first unanswered attempt, so
    /// an outage ends calls one by one as their waits run out, never all at once.
    fn reply_unavailable(&mut self, now: Micros, reason: &str, out: &mut Vec<Action>) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        out.push(Action::LlmCancel { reply: reply.id });
        if !matches!(self.phase, Phase::Active) {
            return;
        }
        let down = self.llm_down.get_or_insert_with(|| LlmDown {
            since: now,
            reason: reason.to_owned(),
            attempts: 0,
            held_turn: None,
        });
        let bound = down.since + self.profile.persona.reply_wait_ms * MS;
        if now >= bound {
            let waited = now.saturating_sub(down.since) / MS;
            let reason = if waited == 0 {
                reason.to_owned()
            } else {
                format!("{reason} (no answer for {waited} ms)")
            };
            self.vendor_failed(now, "llm", &reason, out);
            return;
        }
        let wait = REPLY_RETRY_FIRST
            .saturating_mul(1 << down.attempts.min(8))
            .min(REPLY_RETRY_CAP);
        down.attempts += 1;
        tracing::debug!(
            reason,
            attempts = down.attempts,
            "the model could not answer; retrying"
        );
        let hold = down.held_turn != Some(reply.turn);
        down.held_turn = Some(reply.turn);
        self.reply_retry = Some(ReplyRetry {
            turn: reply.turn,
            rounds: reply.rounds,
            at: (now + wait).min(bound),
            reason: reason.to_owned(),
        });
        if hold && !self.utterances.iter().any(|u| u.kind.interruptible()) {
            let line = self.profile.persona.hold.clone();
            self.say(now, Kind::Filler, &line, After::Listen, out);
        }
    }

    /// A reply started arriving: a model outage, if there was one, is over.
    fn llm_answering(&mut self, now: Micros, out: &mut Vec<Action>) {
        if let Some(down) = self.llm_down.take() {
            out.push(Action::Record(ConversationRecord::VendorGap {
                vendor: "llm".into(),
                gap_ms: now.saturating_sub(down.since) / MS,
                reason: down.reason,
            }));
        }
    }

    /// The retry of an unanswered reply is due.
    fn retry_reply(&mut self, now: Micros, out: &mut Vec<Action>) {
        let Some(retry) = self.reply_retry.take() else {
            return;
        };
        if !matches!(self.phase, Phase::Active) || self.reply.is_some() {
            return;
        }
        let bound = self
            .llm_down
            .as_ref()
            .map_or(now, |d| d.since + self.profile.persona.reply_wait_ms * MS);
        if now >= bound {
            let waited = self
                .llm_down
                .as_ref()
                .map_or(0, |d| now.saturating_sub(d.since) / MS);
            let reason = format!("{} (no answer for {waited} ms)", retry.reason);
            self.vendor_failed(now, "llm", &reason, out);
            return;
        }
        // The latency of a held turn is the outage's, not the pipeline's: not recorded.
        let timing = Timing {
            turn_end: now,
            llm_request: now,
            recorded: true,
            ..Timing::default()
        };
        self.request_reply(retry.turn, retry.rounds, timing, out);
    }

    /// Sends the speakable part of the reply's buffer (all of it when `done`).
    fn flush_reply(&mut self, now: Micros, at: Micros, done: bool, out: &mut Vec<Action>) {
        let Some(reply) = self.reply.as_mut() else {
            return;
        };
        loop {
            let first = reply.ctx.is_none();
            let cut = if done {
                (!reply.buffer.trim().is_empty()).then_some(reply.buffer.len())
            } else {
                text::speakable_prefix(&reply.buffer, first)
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
                    self.next_ctx += 1;
                    let ctx = format!("t{}-u{}", reply.turn, self.next_ctx);
                    reply.ctx = Some(ctx.clone());
                    self.utterances.push(Utterance {
                        ctx: ctx.clone(),
                        kind: Kind::Reply,
                        turn: reply.turn,
                        text: String::new(),
                        input_closed: false,
                        tts_done: false,
                        held: Vec::new(),
                        sent: 0,
                        played: 0,
                        estimated: 0,
                        schedule: Vec::new(),
                        words: Vec::new(),
                        started: now,
                        playout_deadline: None,
                        first_sent_at: None,
                        after: After::Listen,
                        failed_once: false,
                        historied: false,
                    });
                    ctx
                }
            };
            if let Some(u) = self.utterances.iter_mut().find(|u| u.ctx == ctx) {
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
            if let Some(ctx) = reply.ctx.clone() {
                if let Some(u) = self.utterances.iter_mut().find(|u| u.ctx == ctx) {
                    if !u.input_closed {
                        u.input_closed = true;
                        out.push(Action::TtsSpeak {
                            context: ctx,
                            text: String::new(),
                            last: true,
                        });
                    }
                }
            }
        }
    }

    fn reply_done(&mut self, now: Micros, out: &mut Vec<Action>) {
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
            // The spoken text joins the context when it has been heard (see `finish`).
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
                "lookup_customer" if self.profile.offers("lookup_customer") => {
                    self.tools_pending.push((
                        call.id.clone(),
                        call.name.clone(),
                        call.arguments.clone(),
                        now,
                    ));
                    out.push(Action::RunTool {
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

    fn continue_after_tools(&mut self, now: Micros, turn: u32, rounds: u32, out: &mut Vec<Action>) {
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

    fn tool_result(
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

    // ------------------------------------------------------------------ speech synthesis

    /// Starts a whole utterance.
    fn say(&mut self, now: Micros, kind: Kind, text: &str, after: After, out: &mut Vec<Action>) {
        if self.tts_dead {
            // Nothing can be said: do what follows after the fallback apology.
            let mark = format!("fallback-{}", self.next_ctx);
            self.next_ctx += 1;
            out.push(Action::PlayFallbackApology { mark: mark.clone() });
            self.fallback_mark = Some((mark, after, now + 6000 * MS));
            return;
        }
        self.next_ctx += 1;
        let ctx = format!("t{}-u{}", self.turn, self.next_ctx);
        self.utterances.push(Utterance {
            ctx: ctx.clone(),
            kind,
            turn: self.turn,
            text: text.trim().to_owned(),
            input_closed: true,
            tts_done: false,
            held: Vec::new(),
            sent: 0,
            played: 0,
            estimated: 0,
            schedule: Vec::new(),
            words: Vec::new(),
            started: now,
            playout_deadline: None,
            first_sent_at: None,
            after,
            failed_once: false,
            historied: kind == Kind::Filler,
        });
        out.push(Action::TtsSpeak {
            context: ctx,
            text: text.trim().to_owned(),
            last: true,
        });
    }

    fn tts(&mut self, now: Micros, event: TtsEvent, at: Micros, out: &mut Vec<Action>) {
        match event {
            TtsEvent::Audio { context, mulaw } => {
                let Some(i) = self.utterances.iter().position(|u| u.ctx == context) else {
                    return;
                };
                // Audio plays in utterance order: hold it while an earlier one synthesizes.
                let blocked = self.utterances[..i].iter().any(|u| !u.tts_done);
                let u = &mut self.utterances[i];
                if blocked {
                    u.held.push(mulaw);
                    return;
                }
                let first = u.sent == 0;
                forward(u, mulaw, now, &mut self.playhead, out);
                if first && u.kind == Kind::Reply {
                    self.record_latency(&context, at, now, out);
                }
            }
            TtsEvent::Words { context, words } => {
                if let Some(u) = self.utterances.iter_mut().find(|u| u.ctx == context) {
                    u.words.extend(words);
                }
            }
            TtsEvent::Done { context } => {
                if let Some(u) = self.utterances.iter_mut().find(|u| u.ctx == context) {
                    u.tts_done = true;
                }
                self.release_held(now, out);
            }
            TtsEvent::ContextFailed { context, reason } => {
                let Some(i) = self.utterances.iter().position(|u| u.ctx == context) else {
                    return;
                };
                let u = &mut self.utterances[i];
                if u.sent == 0 && u.held.is_empty() && !u.failed_once && u.input_closed {
                    // Nothing of it was heard: say it again in a fresh context.
                    self.next_ctx += 1;
                    let ctx = format!("t{}-u{}", u.turn, self.next_ctx);
                    tracing::debug!(old = %u.ctx, new = %ctx, %reason, "speech context failed; retrying");
                    u.ctx = ctx.clone();
                    u.failed_once = true;
                    out.push(Action::TtsSpeak {
                        context: ctx,
                        text: u.text.clone(),
                        last: true,
                    });
                    if let Some(reply) = self.reply.as_mut() {
                        if reply.ctx.as_deref() == Some(context.as_str()) {
                            // The model is still streaming into it: close it, the rest of
                            // the reply is dropped with the retry.
                            reply.ctx = None;
                        }
                    }
                } else {
                    // Part of it played (or it failed twice): keep what there is.
                    u.tts_done = true;
                    self.release_held(now, out);
                }
            }
            TtsEvent::Reconnected { reason } => {
                out.push(Action::Record(ConversationRecord::VendorGap {
                    vendor: "tts".into(),
                    gap_ms: 0,
                    reason,
                }));
            }
            TtsEvent::Failed { reason } => {
                self.tts_dead = true;
                self.vendor_failed(now, "tts", &reason, out);
            }
        }
    }

    /// Forwards audio held behind utterances that have now finished synthesizing.
    fn release_held(&mut self, now: Micros, out: &mut Vec<Action>) {
        for u in self.utterances.iter_mut() {
            for chunk in std::mem::take(&mut u.held) {
                forward(u, chunk, now, &mut self.playhead, out);
            }
            if u.tts_done {
                if u.playout_deadline.is_none() {
                    let start = u.first_sent_at.unwrap_or(now);
                    u.playout_deadline = Some(start + u.sent / BYTES_PER_MS * MS + PLAYOUT_GRACE);
                }
            } else {
                break;
            }
        }
    }

    fn record_latency(
        &mut self,
        ctx: &str,
        first_audio: Micros,
        now: Micros,
        out: &mut Vec<Action>,
    ) {
        let (turn, t) = match self
            .reply
            .as_mut()
            .filter(|r| r.ctx.as_deref() == Some(ctx))
        {
            Some(reply) => (reply.turn, &mut reply.timing),
            None => match self.latency_pending.as_mut().filter(|p| p.0 == ctx) {
                Some(p) => (p.1, &mut p.2),
                None => return,
            },
        };
        if t.recorded {
            return;
        }
        t.recorded = true;
        let (Some(first_token), Some(piece_token), Some(piece_sent)) =
            (t.first_token, t.piece_token, t.piece_sent)
        else {
            return;
        };
        let start = t.stt_final.unwrap_or(t.turn_end);
        let total = now.saturating_sub(start);
        let holdoff = t.turn_end.saturating_sub(start);
        let llm = first_token.saturating_sub(t.llm_request);
        let streaming = piece_token.saturating_sub(first_token);
        let tts = first_audio.saturating_sub(piece_sent);
        out.push(Action::Record(ConversationRecord::TurnLatency {
            turn,
            stt_us: t.eos.map_or(0, |e| start.saturating_sub(e)),
            holdoff_us: holdoff,
            llm_first_token_us: llm,
            llm_stream_us: streaming,
            tts_first_audio_us: tts,
            total_us: total,
            engine_us: total.saturating_sub(holdoff + llm + streaming + tts),
        }));
    }

    fn mark_played(&mut self, now: Micros, name: &str, out: &mut Vec<Action>) {
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
    fn finish_played(&mut self, now: Micros, out: &mut Vec<Action>) {
        while self.utterances.first().is_some_and(Utterance::finished) {
            let u = self.utterances.remove(0);
            out.push(self.agent_segment(now, &u, &u.text, false));
            if !u.text.is_empty() && !u.historied {
                self.push_history(ChatMessage::text(ChatRole::Assistant, u.text.clone()));
            }
            self.follow(now, u.after, out);
        }
    }

    fn agent_segment(&self, now: Micros, u: &Utterance, text: &str, interrupted: bool) -> Action {
        Action::Record(ConversationRecord::Segment {
            speaker: Speaker::Agent,
            text: text.to_owned(),
            start_ms: u.first_sent_at.unwrap_or(u.started) / MS,
            end_ms: now / MS,
            confidence: 1.0,
            interrupted,
            turn: u.turn,
        })
    }

    fn follow(&mut self, _now: Micros, after: After, out: &mut Vec<Action>) {
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

    fn hang_up(&mut self, reason: EndReason, out: &mut Vec<Action>) {
        self.phase = Phase::Done;
        if let Some(reply) = self.reply.take() {
            out.push(Action::LlmCancel { reply: reply.id });
        }
        out.push(Action::Hangup { reason });
        out.push(Action::Close);
    }

    // ------------------------------------------------------------------ barge-in

    fn barge_in(&mut self, now: Micros, out: &mut Vec<Action>) {
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
    fn check_false_interruption(&mut self, now: Micros, out: &mut Vec<Action>) {
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

    // ------------------------------------------------------------------ dtmf, sentiment

    fn dtmf(&mut self, now: Micros, digit: String, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Active) {
            return;
        }
        self.caller_active();
        if self.interruptible_playing() {
            self.barge_in(now, out);
            self.interrupted = None;
        }
        self.dtmf.push_str(&digit);
        self.dtmf_at = Some(now + DTMF_GAP);
        self.dtmf_span.get_or_insert((now, now)).1 = now;
    }

    fn dtmf_done(&mut self, now: Micros, out: &mut Vec<Action>) {
        self.dtmf_at = None;
        let digits = std::mem::take(&mut self.dtmf);
        let span = self.dtmf_span.take();
        if digits.is_empty() {
            return;
        }
        // The keys' turn spans its first to its last key (in stream time, as speech does).
        let origin = self.audio_origin.unwrap_or(0);
        let (first, last) = span.unwrap_or((now, now));
        self.caller
            .start_ms
            .get_or_insert(first.saturating_sub(origin) / MS);
        self.caller.end_ms = self.caller.end_ms.max(last.saturating_sub(origin) / MS);
        out.push(Action::Record(ConversationRecord::Dtmf {
            turn: self.turn + 1,
            digits: digits.clone(),
        }));
        let said = format!("[The caller pressed the keys: {digits}]");
        if !self.caller.finals.is_empty() {
            self.caller.finals.push(' ');
        }
        self.caller.finals.push_str(&said);
        self.caller.last_final_at = Some(now);
        self.end_of_turn(now, out);
    }

    fn sentiment(&mut self, now: Micros, turn: u32, s: Sentiment, out: &mut Vec<Action>) {
        out.push(Action::Record(ConversationRecord::Sentiment {
            turn,
            score: s.score,
            label: s.label,
            source: s.source.clone(),
            degraded: s.degraded,
        }));
        if self.pending_estimate.is_some_and(|(t, _)| t == turn) {
            self.pending_estimate = None;
        }
        self.scores.push(s.score);
        let floor = self.profile.persona.escalation.clone();
        if s.score < floor.sentiment_floor {
            self.low_streak += 1;
        } else {
            self.low_streak = 0;
        }
        self.update_tone(turn, None, s.source.as_str(), out);
        if floor.floor_turns > 0
            && self.low_streak >= floor.floor_turns
            && matches!(self.phase, Phase::Active)
        {
            let detail = format!(
                "sentiment below {} for {} turns (last {:.2}, {})",
                floor.sentiment_floor,
                self.low_streak,
                s.score,
                label_str(s.label)
            );
            self.escalate(now, EscalationReason::SentimentFloor, detail, out);
        }
    }

    /// Re-decides the tone from the scores so far (plus an estimate of the current turn).
    fn update_tone(
        &mut self,
        turn: u32,
        estimate: Option<f64>,
        source: &str,
        out: &mut Vec<Action>,
    ) {
        let f = &self.profile.persona.frustration;
        let mut scores = self.scores.clone();
        scores.extend(estimate);
        let Some(&last) = scores.last() else { return };
        let window = &scores[scores.len().saturating_sub(f.window)..];
        let drop = window.first().map_or(0.0, |first| first - last);
        let frustrated = last <= f.threshold || (window.len() >= 2 && drop >= f.trend_drop);
        let to = if frustrated {
            Tone::Empathetic
        } else if last >= 0.2 {
            Tone::Normal
        } else {
            self.tone
        };
        if to != self.tone {
            let reason = if last <= f.threshold {
                format!("{source}: score {last:.2} <= {}", f.threshold)
            } else if frustrated {
                format!("{source}: fell {drop:.2} over {} turns", window.len())
            } else {
                format!("{source}: score {last:.2} recovered")
            };
            out.push(Action::Record(ConversationRecord::ToneChanged {
                turn,
                from: self.tone,
                to,
                reason,
            }));
            self.tone = to;
        }
    }

    // ------------------------------------------------------------------ escalation, failures

    fn escalate(
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
                if let Some(u) = self.utterances.iter_mut().find(|u| u.ctx == ctx) {
                    if !u.input_closed {
                        u.input_closed = true;
                        out.push(Action::TtsSpeak {
                            context: ctx,
                            text: String::new(),
                            last: true,
                        });
                    }
                }
            }
        }
        self.tools_pending.clear();
        self.pending_rounds = None;
        self.filler_at = None;
        self.reply_retry = None;
    }

    fn end_after_speech(&mut self, now: Micros, ctx: Option<&str>, out: &mut Vec<Action>) {
        self.phase = Phase::Ending;
        let reason = EndReason::AgentEnded;
        if let Some(u) = ctx.and_then(|c| self.utterances.iter_mut().find(|u| u.ctx == c)) {
            u.after = After::Hangup(reason);
            return;
        }
        let goodbye = self.profile.persona.goodbye.clone();
        self.say(now, Kind::Goodbye, &goodbye, After::Hangup(reason), out);
    }

    fn vendor_failed(&mut self, now: Micros, vendor: &str, reason: &str, out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::Ending | Phase::Done) {
            if vendor == "tts" {
                // What was to be said can no longer be: do what follows it now.
                self.abandon_speech(now, out);
            }
            return;
        }
        let action = self.profile.vendor_failure_action();
        let action_str = match action {
            VendorFailureAction::Transfer => "transfer",
            VendorFailureAction::End => "end",
        };
        tracing::warn!(
            vendor,
            reason,
            action = action_str,
            "voice vendor failed during the call"
        );
        out.push(Action::Record(ConversationRecord::VendorFailure {
            vendor: vendor.to_owned(),
            reason: reason.to_owned(),
            action: action_str.into(),
        }));
        if let Some(reply) = self.reply.take() {
            out.push(Action::LlmCancel { reply: reply.id });
        }
        self.reply_retry = None;
        self.llm_down = None;
        for u in std::mem::take(&mut self.utterances) {
            if !u.tts_done && !self.tts_dead {
                out.push(Action::TtsCancel {
                    context: u.ctx.clone(),
                });
            }
            // What the caller heard of it stays in the transcript, cut off (as on a barge-in).
            let (heard, _) = u.split_heard();
            if !heard.is_empty() {
                out.push(self.agent_segment(now, &u, &heard, true));
            }
        }
        out.push(Action::MediaClear);
        self.playhead = now;
        self.tools_pending.clear();
        self.pending_rounds = None;
        self.filler_at = None;
        self.phase = Phase::Ending;
        let after = match (action, self.profile.human_number.clone()) {
            (VendorFailureAction::Transfer, Some(to)) => {
                out.push(Action::Record(ConversationRecord::Escalation {
                    turn: self.turn,
                    reason: EscalationReason::VendorFailure,
                    detail: format!("{vendor}: {reason}"),
                    to: Some(to.as_str().to_owned()),
                }));
                self.escalated = true;
                After::Transfer(to)
            }
            _ => After::Hangup(EndReason::VoiceFailure),
        };
        let apology = self.profile.persona.apology.clone();
        self.say(now, Kind::Apology, &apology, after, out);
    }

    /// Speech synthesis died while we were ending: skip straight to the follow-up.
    fn abandon_speech(&mut self, now: Micros, out: &mut Vec<Action>) {
        let afters: Vec<After> = std::mem::take(&mut self.utterances)
            .into_iter()
            .map(|u| u.after)
            .filter(|a| *a != After::Listen)
            .collect();
        for after in afters {
            self.follow(now, after.clone(), out);
            if self.phase == Phase::Done {
                return;
            }
        }
        // Nothing was pending: make sure the call does not stay silent.
        let mark = format!("fallback-{}", self.next_ctx);
        self.next_ctx += 1;
        out.push(Action::PlayFallbackApology { mark: mark.clone() });
        self.fallback_mark = Some((
            mark,
            After::Hangup(EndReason::VoiceFailure),
            now + 6000 * MS,
        ));
    }

    // ------------------------------------------------------------------ timers, end

    fn silence_deadline(&self) -> Option<Micros> {
        let since = self.silence_since?;
        let s = &self.profile.persona.silence;
        Some(if self.reprompted {
            since + s.hangup_after_ms * MS
        } else {
            since + s.reprompt_after_ms * MS
        })
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
            let filler = self.profile.persona.filler.clone();
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

    fn call_ended(&mut self, now: Micros, out: &mut Vec<Action>) {
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

    /// Bookkeeping after every input: is the line quiet now?
    fn settle(&mut self, now: Micros) {
        let quiet = self.phase == Phase::Active
            && self.utterances.is_empty()
            && self.reply.is_none()
            && self.reply_retry.is_none()
            && self.tools_pending.is_empty()
            && !self.caller.speaking
            && self.caller.finals.is_empty()
            && self.holdoff_at.is_none()
            && self.dtmf.is_empty();
        if quiet {
            self.silence_since.get_or_insert(now);
        } else if self.utterances.iter().any(|u| u.kind != Kind::Reprompt)
            || self.reply.is_some()
            || self.reply_retry.is_some()
        {
            // Silence counts from when the agent last stopped talking (a reprompt is part of
            // the silence: the goodbye comes `hangup_after_ms` after the silence began).
            self.silence_since = None;
        }
    }

    fn push_history(&mut self, message: ChatMessage) {
        self.history.push_back(message);
        while self.history.len() > MAX_HISTORY {
            self.history.pop_front();
            // Never start the context with a tool answer whose call was cut off.
            while self
                .history
                .front()
                .is_some_and(|m| m.role == ChatRole::Tool)
            {
                self.history.pop_front();
            }
        }
    }
}

/// Forwards one chunk of an utterance's audio with the mark that reports its play-out.
///
/// `playhead` is when the audio forwarded before should have finished playing: this chunk
/// plays after it (the carrier plays in order, in real time).
fn forward(
    u: &mut Utterance,
    mulaw: Vec<u8>,
    now: Micros,
    playhead: &mut Micros,
    out: &mut Vec<Action>,
) {
    if mulaw.is_empty() {
        return;
    }
    let start = (*playhead).max(now);
    let len = mulaw.len() as u64;
    u.schedule.push((start, u.sent, len));
    *playhead = start + len * MS / BYTES_PER_MS;
    u.first_sent_at.get_or_insert(now);
    u.sent += mulaw.len() as u64;
    out.push(Action::MediaAudio(mulaw));
    out.push(Action::MediaMark(format!("{}@{}", u.ctx, u.sent)));
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

fn tool_message(id: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: ChatRole::Tool,
        content: content.to_owned(),
        tool_calls: Vec::new(),
        tool_call_id: Some(id.to_owned()),
    }
}

fn label_str(label: SentimentLabel) -> &'static str {
    match label {
        SentimentLabel::Positive => "positive",
        SentimentLabel::Neutral => "neutral",
        SentimentLabel::Negative => "negative",
    }
}
