//! The voice pipeline of an in-progress call: caller audio -> streaming speech-to-text ->
//! turn detection -> sentiment + reply (streamed chat model) -> streaming text-to-speech ->
//! audio back to the caller.

pub mod ports;

pub use ports::{
    ChatMessage, ChatRole, Llm, LlmEvent, LlmRequest, MediaError, MediaOut, SpeechToText, SttEvent,
    SttInput, SttOptions, SttStream, TextToSpeech, ToolCall, ToolSpec, TtsEvent, TtsInput,
    TtsOptions, TtsStream, VoiceError,
};
