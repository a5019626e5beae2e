//! The vendor clients: the real clients of external services, behind the engine's ports.
//!
//! Each vendor lives in its own module; its JSON types live only in `<vendor>/wire.rs` and
//! never leak into the engine, which sees domain types. Every outbound request goes through
//! [`retry`], which bounds each attempt and the whole operation in time.

pub mod cartesia;
pub mod deepgram;
pub mod google;
pub mod groq;
pub mod hubspot;
pub mod retry;
pub mod stripe;
pub mod telnyx;
