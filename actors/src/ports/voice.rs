//! Ports of the voice pipeline: streaming speech-to-text, streaming text-to-speech, a streamed
//! chat model, the call's outbound media, and [`VoicePorts`], the set a call's conversation is
//! built from.
//!
//! Streams are channel pairs: the session writes into a bounded `mpsc::Sender` with
//! `try_send` (it never waits on a vendor) and reads events from an `mpsc::Receiver` that a
//! forwarding task turns into actor messages. Every adapter owns its reconnects: a vendor
//! socket that drops or stalls is reopened behind the same channels and reported as
//! `Reconnected`; only when the adapter gives up (its breaker is open, its reconnect budget
//! is spent) does it send `Failed` and close the event channel.
//!
//! Times in events are milliseconds of *stream audio* (what the adapter has sent to the
//! vendor since `open`, across reconnects), not wall time.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::sentiment::SentimentScorer;
use crate::machine::CallId;

/// Why a voice vendor could not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoiceError {
    /// The vendor refused the request (bad key, bad parameters): retrying will not help.
    #[error("{vendor} refused: {detail}")]
    Rejected {
        /// The vendor.
        vendor: String,
        /// What it said.
        detail: String,
    },
    /// The vendor failed, timed out, or its circuit breaker is open.
    #[error("{vendor} unavailable: {detail}")]
    Unavailable {
        /// The vendor.
        vendor: String,
        /// What happened.
        detail: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Speech-to-text
// ---------------------------------------------------------------------------------------------

/// How to open a live transcription of one call's caller audio (μ-law, 8 kHz, mono).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SttOptions {
    /// The call (vendors that take a tag get it, so a reconnect is attributable).
    pub call_id: CallId,
    /// BCP-47 language (`en`, `en-US`, ...).
    pub language: String,
    /// Silence that ends an utterance at the vendor (`endpointing`), ms.
    pub endpointing_ms: u32,
    /// Gap after the last word that produces `UtteranceEnd`, ms (>= 1000 at Deepgram).
    pub utterance_end_ms: u32,
    /// Words to boost (product names, the customer's name).
    pub keyterms: Vec<String>,
}

/// What the session sends to a live transcription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttInput {
    /// Caller audio, μ-law 8 kHz (never empty).
    Audio(Vec<u8>),
    /// Flush: transcribe what was sent so far now (the result is final).
    Finalize,
    /// The call ended: flush, then close the stream normally. The event channel closes after
    /// the last results.
    Close,
}

/// What a live transcription reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SttEvent {
    /// The vendor's voice activity detector heard speech begin.
    SpeechStarted {
        /// Stream audio time, ms.
        at_ms: u64,
    },
    /// A transcript of a stretch of audio: interim (`is_final` false, may change) or final.
    Transcript {
        /// The words (may be empty on silence).
        text: String,
        /// This stretch will not change any more.
        is_final: bool,
        /// The vendor's endpointer decided the utterance ended here.
        speech_final: bool,
        /// 0..=1.
        confidence: f32,
        /// Stream audio time of the stretch, ms.
        start_ms: u64,
        /// Stream audio time of its end, ms.
        end_ms: u64,
    },
    /// No word for the configured gap after the last one: the utterance is over.
    UtteranceEnd {
        /// Stream audio time of the last word's end, ms.
        last_word_end_ms: u64,
    },
    /// The vendor connection dropped or stalled and was reopened; audio sent during the gap
    /// was not transcribed.
    Reconnected {
        /// Audio lost in the gap, ms.
        gap_ms: u64,
        /// What happened (`closed 1011 NET-0000`, `stalled 6 s`, `connect refused`).
        reason: String,
    },
    /// The adapter gave up (breaker open, reconnects exhausted, refused handshake). Last event.
    Failed {
        /// Why.
        reason: String,
    },
}

/// An open live transcription.
#[derive(Debug)]
pub struct SttStream {
    /// Into the vendor. Bounded: `try_send` and count what does not fit.
    pub input: mpsc::Sender<SttInput>,
    /// Out of the vendor. Closes after `Failed` or after the last results of `Close`.
    pub events: mpsc::Receiver<SttEvent>,
}

/// Streaming speech-to-text (Deepgram in production).
#[async_trait]
pub trait SpeechToText: Send + Sync + 'static {
    /// The vendor: the name of its circuit breaker.
    fn vendor(&self) -> &'static str;
    /// Opens a live transcription (the first connection is made before this returns, so a
    /// refused key or an open breaker is an `Err` here).
    async fn open(&self, options: SttOptions) -> Result<SttStream, VoiceError>;
}

// ---------------------------------------------------------------------------------------------
// Text-to-speech
// ---------------------------------------------------------------------------------------------

/// How to open a speech stream for one call.
#[derive(Debug, Clone, PartialEq)]
pub struct TtsOptions {
    /// The call.
    pub call_id: CallId,
    /// Vendor voice id.
    pub voice_id: String,
    /// Vendor model (`sonic-3`).
    pub model_id: String,
    /// Language (`en`).
    pub language: String,
    /// Speaking rate multiplier (0.6..=1.5), when set.
    pub speed: Option<f32>,
}

/// What the session sends to a speech stream. One context per agent utterance; its text may
/// arrive in pieces (sentence by sentence as the model streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtsInput {
    /// More text of `context`. `last` closes the context's input (the vendor then finishes
    /// and reports `Done`); text may be empty when only closing.
    Speak {
        /// The utterance.
        context: String,
        /// Text to add.
        text: String,
        /// No more text for this context.
        last: bool,
    },
    /// Stop `context` now (barge-in): no more audio for it, no `Done`.
    Cancel {
        /// The utterance.
        context: String,
    },
    /// The call ended: close the stream. The event channel closes.
    Close,
}

/// What a speech stream reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TtsEvent {
    /// Audio of `context`, μ-law 8 kHz raw, in order.
    Audio {
        /// The utterance.
        context: String,
        /// The bytes (8 bytes per ms).
        mulaw: Vec<u8>,
    },
    /// Word timings of `context` (seconds from the start of the context's audio).
    Words {
        /// The utterance.
        context: String,
        /// `(word, start_s, end_s)`.
        words: Vec<(String, f32, f32)>,
    },
    /// `context` has produced all its audio.
    Done {
        /// The utterance.
        context: String,
    },
    /// `context` failed (a vendor error for it, or the socket dropped under it). The stream
    /// stays usable for new contexts unless a `Failed` without context follows.
    ContextFailed {
        /// The utterance.
        context: String,
        /// Why.
        reason: String,
    },
    /// The vendor connection dropped or stalled and was reopened.
    Reconnected {
        /// What happened.
        reason: String,
    },
    /// The adapter gave up (breaker open, reconnects exhausted). Last event.
    Failed {
        /// Why.
        reason: String,
    },
}

/// An open speech stream.
#[derive(Debug)]
pub struct TtsStream {
    /// Into the vendor. Bounded: `try_send`.
    pub input: mpsc::Sender<TtsInput>,
    /// Out of the vendor.
    pub events: mpsc::Receiver<TtsEvent>,
}

/// Streaming text-to-speech (Cartesia in production).
#[async_trait]
pub trait TextToSpeech: Send + Sync + 'static {
    /// The vendor: the name of its circuit breaker.
    fn vendor(&self) -> &'static str;
    /// Opens a speech stream (connected before this returns).
    async fn open(&self, options: TtsOptions) -> Result<TtsStream, VoiceError>;
}

// ---------------------------------------------------------------------------------------------
// Chat model
// ---------------------------------------------------------------------------------------------

/// Who said a message of the conversation's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatRole {
    /// Instructions (persona, tone, memories).
    System,
    /// The caller.
    User,
    /// The agent.
    Assistant,
    /// A tool's result.
    Tool,
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The model's id for the call (the `tool` message answers it).
    pub id: String,
    /// Function name.
    pub name: String,
    /// Arguments, JSON text.
    pub arguments: String,
}

/// One message of the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who.
    pub role: ChatRole,
    /// Text (empty for an assistant message that only calls tools).
    pub content: String,
    /// Tool calls of an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with text only.
    pub fn text(role: ChatRole, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Function name.
    pub name: String,
    /// What it does (the model reads this).
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// One reply request.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmRequest {
    /// The call (for logs and tags).
    pub call_id: CallId,
    /// The turn it answers (its trace is the turn's).
    pub turn: u32,
    /// The context, system message first.
    pub messages: Vec<ChatMessage>,
    /// Tools on offer.
    pub tools: Vec<ToolSpec>,
}

/// A piece of a streamed reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LlmEvent {
    /// Spoken text as it arrives.
    Text {
        /// The delta.
        text: String,
    },
    /// A complete tool call.
    ToolCall {
        /// The call.
        call: ToolCall,
    },
    /// The reply is complete.
    Done {
        /// `stop`, `tool_calls`, `length`, ...
        finish_reason: String,
    },
    /// The stream broke after it started. Last event.
    Failed {
        /// Why.
        reason: String,
    },
}

/// A streamed chat model (Groq in production).
#[async_trait]
pub trait Llm: Send + Sync + 'static {
    /// The vendor: the name of its circuit breaker.
    fn vendor(&self) -> &'static str;
    /// Starts a reply; events arrive on the receiver. Dropping the receiver cancels it.
    async fn stream(&self, request: LlmRequest) -> Result<mpsc::Receiver<LlmEvent>, VoiceError>;
}

// ---------------------------------------------------------------------------------------------
// Media out
// ---------------------------------------------------------------------------------------------

/// Why the media stream refused an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The call has no live media stream.
    #[error("the call has no live media stream")]
    NoStream,
    /// The stream's outbound queue is full (the item was dropped).
    #[error("the media stream's outbound queue is full")]
    Full,
    /// This node may not act for the call now (its lease on the call's shard could have
    /// lapsed, or the shard is being handed over).
    #[error("this node does not run the call now")]
    NotOwner,
}

/// The call's outbound media (the Telnyx media stream in production). Every method returns at
/// once; nothing waits on the network.
pub trait MediaOut: Send + Sync + 'static {
    /// Queues μ-law 8 kHz audio for playback.
    fn send_audio(&self, call_id: CallId, mulaw: Vec<u8>) -> Result<(), MediaError>;
    /// Queues a mark after the audio queued so far; its echo (`VoiceInput::MarkPlayed`) says
    /// that audio has played.
    fn mark(&self, call_id: CallId, name: String) -> Result<(), MediaError>;
    /// Drops the audio not played yet (barge-in).
    fn clear(&self, call_id: CallId) -> Result<(), MediaError>;
    /// Ends the call's media stream here: this node no longer runs the call (its next node
    /// starts a stream of its own). No stream: nothing to do.
    fn release(&self, call_id: CallId) {
        let _ = call_id;
    }
}

/// What the voice pipeline is built from.
#[derive(Clone)]
pub struct VoicePorts {
    /// Streaming speech-to-text.
    pub stt: Arc<dyn SpeechToText>,
    /// Streaming speech synthesis.
    pub tts: Arc<dyn TextToSpeech>,
    /// The chat model.
    pub llm: Arc<dyn Llm>,
    /// Caller sentiment (a vendor behind `DegradingSentiment` in production).
    pub sentiment: Arc<dyn SentimentScorer>,
    /// The calls' outbound media.
    pub media: Arc<dyn MediaOut>,
    /// μ-law 8 kHz audio played when speech synthesis is down (a recorded apology, or a
    /// tone): the caller hears something before the transfer or hangup.
    pub fallback_apology: Arc<Vec<u8>>,
    /// Runs the agents' HTTP tools; `None`: they answer that they are unavailable.
    pub tools: Option<Arc<dyn ToolRunner>>,
}

/// One call of an agent's HTTP tool, its arguments already checked against its schema.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    /// The tool as the agent defines it.
    pub tool: crate::catalog::profile::HttpTool,
    /// The model's id for this call of the tool.
    pub tool_call_id: String,
    /// The call.
    pub call_id: crate::machine::CallId,
    /// The turn whose reply called it (its trace is the turn's).
    pub turn: u32,
    /// Its organization.
    pub organization_id: crate::machine::OrganizationId,
    /// Its agent.
    pub agent_id: uuid::Uuid,
    /// Its customer, when known.
    pub customer_id: Option<uuid::Uuid>,
    /// The arguments.
    pub arguments: serde_json::Value,
}

/// Runs agents' HTTP tools on the customers' systems (signed requests, the SSRF guard, a
/// breaker per endpoint, a size limit on answers).
#[async_trait]
pub trait ToolRunner: Send + Sync + 'static {
    /// The tool's JSON answer, or why there is none (for the model: it says so to the caller).
    async fn run(&self, request: ToolRequest) -> Result<serde_json::Value, String>;
}
