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

/// WebSocket settings of the vendor streams (speech-to-text, synthesis).
///
/// tungstenite zero-fills its whole read buffer on every read of the socket, also on the
/// reads that find nothing (`FrameCodec::read_in`, tungstenite-rs issue 547). With its
/// default of 128 KiB that memset was a fifth of the engine's CPU at 500 conversing calls
/// (docs/benchmarks.md, "Where the CPU goes"); the messages on these streams are a few KiB at
/// most (transcripts, audio chunks), and a larger one is read in several reads.
pub(crate) fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
}

/// Read buffer of a WebSocket stream (see [`ws_config`]).
pub const WS_READ_BUFFER_BYTES: usize = 8 * 1024;
