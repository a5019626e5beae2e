//! The voice pipeline of an in-progress call: caller audio -> streaming speech-to-text ->
//! turn detection -> sentiment + reply (streamed chat model) -> streaming text-to-speech ->
//! audio back to the caller.
//!
//! The vendor ports it runs on are in [`crate::ports::voice`]; the agent's voice profile is a
//! catalog type ([`crate::catalog::profile`]); the scripted vendors for tests are in
//! `crate::testkit::voice`. The old paths below (`voice::ports`, `voice::profile`,
//! `voice::memory`) re-export them.

pub mod conversation;
pub mod record;
pub mod session;
pub mod text;
pub mod transcript;

pub use crate::catalog::profile;
pub use crate::ports::voice as ports;
#[cfg(any(test, feature = "testkit"))]
pub use crate::testkit::voice as memory;
pub use session::VoiceRouter;

pub use crate::ports::voice::{
    ChatMessage, ChatRole, Llm, LlmEvent, LlmRequest, MediaError, MediaOut, SpeechToText, SttEvent,
    SttInput, SttOptions, SttStream, TextToSpeech, ToolCall, ToolSpec, TtsEvent, TtsInput,
    TtsOptions, TtsStream, VoiceError, VoicePorts,
};

#[cfg(test)]
mod conversation_tests;
#[cfg(test)]
mod session_tests;
