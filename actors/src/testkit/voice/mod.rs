//! In-memory voice ports for actor-level tests and the deterministic simulations.
//!
//! They keep the channel-pair design of the real adapters ([`crate::ports::voice`]): the session
//! writes into a bounded sender and reads events from a receiver. Everything runs on tokio
//! time (a test with paused time drives it), nothing reads the wall clock or draws
//! randomness, so a scenario replays identically:
//!
//! * [`ScriptedStt`]: the test pushes the recogniser's events for a call ([`ScriptedStt::push`],
//!   [`ScriptedStt::say`]) and reads what the session sent ([`ScriptedStt::log`]).
//! * [`ScriptedTts`]: answers every piece of text with audio chunks (and word timings) after a
//!   fixed synthesis delay ([`TtsScript`]); honours `Cancel` and `Close`; records every input.
//! * [`ScriptedLlm`]: answers each request with the next scripted [`LlmReply`] (events paced
//!   by fixed delays: text deltas, tool calls, failures) and records the requests.
//! * [`MemoryMedia`]: records the audio, marks and clears of each call's media stream, plays
//!   the audio out in real time (8 bytes per ms) and, once [`MemoryMedia::echo_marks`] is
//!   attached, echoes each mark when the audio queued before it has played; a clear drops the
//!   unplayed audio and echoes the pending marks at once, as the media endpoint does.
//!
//! Two ports can crash the session on demand ([`ScriptedStt::panic_on_next_opens`],
//! [`MemoryMedia::panic_on_next_audio`]): both are called from inside the session's message
//! handler, so the panic is a session crash as the CallActor sees it. None of this is for
//! production.

mod llm;
mod media;
mod shared;
mod stt;
mod tts;

pub use llm::{LlmReply, ScriptedLlm};
pub use media::{MarkEcho, MediaItem, MemoryMedia};
pub use stt::{ScriptedStt, SttLog};
pub use tts::{ScriptedTts, TtsScript};
