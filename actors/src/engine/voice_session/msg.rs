//! What a voice session and its call actor say to each other: [`VoiceMsg`], the session's
//! mailbox (audio, vendor events stamped on arrival, the call's facts), and [`VoiceRequest`],
//! what the session asks of its call (the call actor is the call's only writer). The session
//! holds its parent as a `DerivedActorRef<VoiceRequest>`, so it knows nothing else of the call
//! actor.

use chrono::{DateTime, Utc};

use crate::machine::record::ConversationRecord;
use crate::machine::{AmdResult, EndReason, PhoneNumber};
use crate::ports::sentiment::Sentiment;
use crate::ports::voice::{LlmEvent, SttEvent, TtsEvent};

/// Mailbox of a [`VoiceSession`](super::VoiceSession).
#[derive(Debug)]
pub enum VoiceMsg {
    /// First message: load the agent, open the streams, greet.
    Init,
    /// Caller audio (μ-law 8 kHz).
    Audio(Vec<u8>),
    /// The carrier echoed a mark.
    Mark(String),
    /// Answering-machine verdict.
    Amd(AmdResult),
    /// The caller pressed a key.
    Dtmf(String),
    /// From speech-to-text, stamped on arrival.
    Stt(SttEvent, DateTime<Utc>),
    /// From speech synthesis, stamped on arrival.
    Tts(TtsEvent, DateTime<Utc>),
    /// From the model, stamped on arrival.
    Llm(u32, LlmEvent, DateTime<Utc>),
    /// The model request could not start.
    LlmUnavailable(u32, String),
    /// A scored turn.
    Sentiment(u32, Sentiment),
    /// A tool's result.
    ToolResult(String, Result<serde_json::Value, String>),
    /// A deadline of the conversation.
    Timer(u64),
    /// The call ended.
    CallEnded,
}

/// What a voice session asks of its call (the call actor is the call's only writer).
#[derive(Debug)]
pub enum VoiceRequest {
    /// Journal a conversation fact.
    Record(ConversationRecord),
    /// Hand the call to a person.
    Transfer(PhoneNumber),
    /// End the call.
    Hangup(EndReason),
}
