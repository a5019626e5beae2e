//! The voice pipeline of an in-progress call: caller audio -> streaming speech-to-text ->
//! turn detection -> sentiment + reply (streamed chat model) -> streaming text-to-speech ->
//! audio back to the caller.
//!
//! The vendor ports it runs on are in [`crate::ports::voice`]; the agent's voice profile is a
//! catalog type ([`crate::catalog::profile`]); the scripted vendors for tests are in
//! `crate::testkit::voice`.

pub mod conversation;
pub mod record;
pub mod session;
pub mod text;
pub mod transcript;

pub use session::VoiceRouter;

#[cfg(test)]
mod conversation_tests;
#[cfg(test)]
mod session_tests;
