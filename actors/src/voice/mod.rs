//! The voice pipeline of an in-progress call: caller audio -> streaming speech-to-text ->
//! turn detection -> sentiment + reply (streamed chat model) -> streaming text-to-speech ->
//! audio back to the caller.

pub mod conversation;
pub mod memory;
pub mod ports;
pub mod profile;
pub mod record;
pub mod session;
pub mod text;
pub mod transcript;

pub use session::{VoicePorts, VoiceRouter};

pub use ports::{
    ChatMessage, ChatRole, Llm, LlmEvent, LlmRequest, MediaError, MediaOut, SpeechToText, SttEvent,
    SttInput, SttOptions, SttStream, TextToSpeech, ToolCall, ToolSpec, TtsEvent, TtsInput,
    TtsOptions, TtsStream, VoiceError,
};

#[cfg(test)]
mod conversation_tests;
#[cfg(test)]
mod session_tests;
