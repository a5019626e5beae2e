//! The voice pipeline of an in-progress call: caller audio -> streaming speech-to-text ->
//! turn detection -> sentiment + reply (streamed chat model) -> streaming text-to-speech ->
//! audio back to the caller.
//!
//! This folder is the pure core of it: [`conversation`] decides (turn-taking, barge-in,
//! replies, tools, escalation) from inputs stamped with their time and answers with actions
//! (what it journals is the call's [`ConversationRecord`](crate::machine::record::ConversationRecord));
//! [`text`] and [`transcript`] shape what is said. The actor that runs a conversation against the vendors is the engine's
//! `voice_session`, a child of its call actor.
//!
//! The vendor ports it runs on are in [`crate::ports::voice`]; the agent's voice profile is a
//! catalog type ([`crate::catalog::profile`]); the scripted vendors for tests are in
//! `crate::testkit::voice`.

pub mod conversation;
pub mod text;
pub mod transcript;

#[cfg(test)]
mod conversation_tests;
