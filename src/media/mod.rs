//! The Telnyx media-stream endpoint: the WebSocket Telnyx opens for each call's audio
//! (`GET /v1/media/telnyx`, vendor-protocols.md §1.5).
//!
//! It authenticates the stream to one call ([`MediaTokens`]), tells the engine when the stream
//! starts, what the caller says, which marks have played, what keys were pressed and how it
//! ended ([`MediaSink`]), measures the inbound audio ([`MediaStats`]), and plays outbound audio
//! pushed through a [`MediaHandle`] found in the [`MediaRegistry`] (for the voice pipeline,
//! through [`RegistryMediaOut`]). Each stream is one task; nothing a peer does can block
//! another stream or a [`MediaHandle`] caller.
//!
//! It must not decide anything about the call: no hang-ups, no state transitions, no database.
//! Those belong to the engine behind [`MediaSink`]. An unauthenticated stream never reaches the
//! sink.

pub mod audio;
mod metrics;
mod out;
mod registry;
mod session;
mod stats;
mod stream;
mod token;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::http::error::ApiError;

pub use metrics::MediaMetrics;
pub use out::RegistryMediaOut;
pub use registry::{MediaHandle, MediaRegistry, MediaSendError};
pub use token::{MediaTokens, DEFAULT_TTL as DEFAULT_TOKEN_TTL};

/// The answer of [`MediaSink::admits`].
pub type Admission = Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

/// Path Telnyx connects to (put it, as a `wss://` URL, in `stream_url`).
pub const TELNYX_MEDIA_PATH: &str = "/v1/media/telnyx";

/// Name of the mark sent after the greeting chime.
pub const GREETING_END_MARK: &str = "greeting-end";

/// Largest WebSocket message accepted. Telnyx media frames are ~20 ms of audio (well under
/// 1 KiB); the limit keeps a hostile peer from making us buffer megabytes.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// How the endpoint tells the engine about a stream. Implemented by the engine side, which
/// attaches the stream to the call's actor (and feeds the caller's audio to the voice
/// pipeline).
///
/// Methods are called on the stream's task, so they must return at once (send a message to an
/// actor or `try_send` into a channel; never wait on I/O or on a full queue): a slow sink
/// stalls that stream's audio in both directions. For one stream the order is `started`, then
/// any `audio`, `mark` and `dtmf` in the order their frames arrived, then `stopped` exactly
/// once; nothing comes after `stopped`. A call may have several streams in its life (a
/// reconnect): correlate by `stream_id`.
pub trait MediaSink: Send + Sync + 'static {
    /// Whether a stream for `call_id` may open now: `false` once the call has ended (or when
    /// there is no such call), so a token that outlives its call opens nothing. Asked once per
    /// stream, as soon as its token is verified and before any other method; unlike them it
    /// may wait on a lookup, which must be bounded. The default admits every call.
    fn admits(&self, call_id: Uuid) -> Admission {
        let _ = call_id;
        Box::pin(std::future::ready(true))
    }
    /// An authenticated stream for `call_id` started; its handle is already in the registry.
    fn started(&self, call_id: Uuid, info: StreamInfo);
    /// The caller's audio of one inbound media frame, as μ-law 8 kHz (never empty). A PCMA
    /// stream's audio is transcoded to μ-law; streams in other encodings (L16, unknown) never
    /// call this. Only the inbound track is reported, never the echo of what we play.
    ///
    /// Called about 50 times a second per stream; the default drops the audio.
    fn audio(&self, call_id: Uuid, mulaw: Vec<u8>) {
        let _ = (call_id, mulaw);
    }
    /// Telnyx echoed the mark `name` queued through a [`MediaHandle`]: the audio queued before
    /// it has played, or a `clear` flushed it (a clear echoes every pending mark at once).
    /// The endpoint's own greeting-end mark is not reported. The default ignores it.
    fn mark(&self, call_id: Uuid, name: String) {
        let _ = (call_id, name);
    }
    /// The caller pressed `digit` (`0`-`9`, `*`, `#`, `A`-`D`).
    fn dtmf(&self, call_id: Uuid, digit: String);
    /// The stream ended (stop frame, socket closed, idle timeout or write failure); it is no
    /// longer in the registry.
    fn stopped(&self, call_id: Uuid, stats: MediaStats);
}

/// What Telnyx told us in the `start` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Telnyx's stream id (top-level `stream_id`).
    pub stream_id: String,
    /// The leg this stream belongs to, when Telnyx sent it.
    pub call_control_id: Option<String>,
    /// Codec name as sent (`PCMU`, `PCMA`, `audio/x-mulaw`, `L16`, ...).
    pub encoding: String,
    /// Samples per second.
    pub sample_rate: u32,
    /// Audio channels.
    pub channels: u16,
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEnd {
    /// Telnyx sent `stop`.
    Stop,
    /// The socket closed or broke without `stop`.
    Closed,
    /// No frame arrived within `idle_timeout`; we closed the socket.
    IdleTimeout,
    /// A write did not complete in time (dead or stalled peer); we dropped the socket.
    WriteFailed,
    /// This node no longer runs the call (it moved to another node of the cluster, which
    /// starts a stream of its own); we closed the socket.
    Released,
}

/// Figures for one finished stream, handed to [`MediaSink::stopped`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaStats {
    /// Telnyx's stream id.
    pub stream_id: String,
    /// Why it ended.
    pub end: StreamEnd,
    /// Inbound-track media frames received with a valid payload.
    pub frames_in: u64,
    /// Media frames we sent (greeting, handle audio, echo).
    pub frames_out: u64,
    /// Decoded inbound audio bytes.
    pub bytes_in: u64,
    /// Audio bytes we sent (before base64).
    pub bytes_out: u64,
    /// Inbound chunks skipped over and never received (`media.chunk` numbering).
    pub gaps: u64,
    /// Inbound chunks that arrived after a higher-numbered one (late or duplicate).
    pub out_of_order: u64,
    /// RFC 3550 interarrival jitter estimate (`media.timestamp` against arrival), ms.
    pub jitter_ms: f64,
    /// Marks we sent.
    pub marks_sent: u64,
    /// Marks Telnyx returned (played or flushed by a clear).
    pub marks_acked: u64,
    /// `clear` frames we sent.
    pub clears_sent: u64,
    /// Outbound audio items refused because the stream's queue was full (or, on a codec we
    /// cannot produce, discarded).
    pub dropped_out: u64,
    /// `error` frames from Telnyx plus frames we could not parse.
    pub errors: u64,
    /// From the `start` frame to the end of the stream.
    pub duration_ms: u64,
}

/// Endpoint behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    /// Play a short chime (then mark `greeting-end`) when a stream starts.
    pub greeting: bool,
    /// Send each inbound payload straight back: a loopback that proves the bidirectional path.
    pub echo: bool,
    /// Outbound frame length in ms; outbound audio is paced at one frame per `frame_ms`.
    pub frame_ms: u64,
    /// With no auth header, how long the `connected` frame carrying the token may take.
    pub auth_timeout: Duration,
    /// A stream with no frame at all for this long is closed and reported.
    pub idle_timeout: Duration,
    /// Outbound items (audio chunks and marks) a stream queues before refusing more; sized for
    /// a TTS burst of several seconds of 20 ms chunks.
    pub outbound_capacity: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            greeting: false,
            echo: false,
            frame_ms: 20,
            auth_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            outbound_capacity: 512,
        }
    }
}

/// What the media endpoint shares across streams.
#[derive(Clone)]
pub struct MediaState {
    /// Verifies stream tokens.
    pub tokens: Arc<MediaTokens>,
    /// The engine side.
    pub sink: Arc<dyn MediaSink>,
    /// Live streams, for whoever pushes audio.
    pub registry: MediaRegistry,
    /// Endpoint metrics.
    pub metrics: MediaMetrics,
    /// Behaviour.
    pub config: MediaConfig,
}

/// `GET /v1/media/telnyx` (WebSocket upgrade). Merge it into the app's router.
pub fn router(state: MediaState) -> Router {
    Router::new()
        .route(TELNYX_MEDIA_PATH, get(upgrade_stream))
        .with_state(state)
}

/// Checks the upgrade-header token before upgrading: a wrong or expired token gets a plain
/// 401 and no socket, a token of a call that has ended a 403. Without the header, the session
/// demands the token in the `connected` frame and checks the same.
async fn upgrade_stream(
    State(state): State<MediaState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let header_token = headers
        .get(crate::clients::telnyx::media_wire::AUTH_TOKEN_FIELD)
        .map(|v| v.to_str().unwrap_or_default())
        .filter(|t| !t.is_empty());
    let header_call = match header_token {
        None => None,
        Some(token) => match state.tokens.verify(token) {
            Some(call_id) => Some(call_id),
            None => {
                state.metrics.error(metrics::kind::AUTH);
                tracing::warn!("media stream upgrade refused: invalid token header");
                return ApiError::unauthorized("invalid stream token").into_response();
            }
        },
    };
    if let Some(call_id) = header_call {
        if !state.sink.admits(call_id).await {
            state.metrics.error(metrics::kind::CALL_ENDED);
            tracing::warn!(%call_id, "media stream upgrade refused: the call has ended");
            return ApiError::new(StatusCode::FORBIDDEN, "call_ended", "the call has ended")
                .into_response();
        }
    }
    match ws {
        Ok(ws) => ws
            .max_message_size(MAX_MESSAGE_BYTES)
            // The carrier's frames are a few hundred bytes; tungstenite zero-fills the whole
            // read buffer on every read (see `crate::clients::ws_config`).
            .read_buffer_size(crate::clients::WS_READ_BUFFER_BYTES)
            .on_upgrade(move |socket| session::run(socket, state, header_call)),
        Err(rejection) => {
            ApiError::new(rejection.status(), "invalid_request", rejection.body_text())
                .into_response()
        }
    }
}
