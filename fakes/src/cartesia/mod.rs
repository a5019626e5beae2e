//! A wire-level fake of Cartesia text-to-speech (shared/docs/vendor-protocols.md section 3):
//! the `/tts/websocket` streaming API and `POST /tts/bytes`, on real sockets and real time.
//!
//! It exists so that IACE's real TTS client (tungstenite, contexts, continuations, barge-in
//! cancels, reconnects) can be exercised without Cartesia: in integration tests, under
//! `iace-dev`, and in load tests that measure time-to-first-audio. It speaks the wire exactly —
//! credentials and `Cartesia-Version` on the handshake ([`api`]), the request fields, voice
//! shapes, encodings and sample rates of section 3.2 ([`wire`]), and `chunk` / `timestamps` /
//! `flush_done` / `done` / `error` messages for many contexts multiplexed on one socket
//! ([`session`]) — and its voice is deterministic ([`audio`]): every transcript character
//! becomes [`FakeCartesiaConfig::ms_per_char`] of speech-like audio (60 ms by default), so a
//! test knows exactly how many bytes a transcript yields ([`OutputFormat::audio_bytes_for_chars`],
//! [`synthesize`]).
//!
//! Faults are injected per request or per socket: refusals and `error` messages
//! ([`FakeCartesia::fail_next`]), a slow first chunk ([`FakeCartesia::set_first_chunk_delay`]),
//! a context that never answers ([`FakeCartesia::stall_next_context`]), sockets dropped without
//! a close frame ([`FakeCartesia::drop_connection_after`]) and the idle close Cartesia does after
//! about five minutes ([`FakeCartesia::close_idle_after`]).
//!
//! Where section 3 leaves a behaviour open, the fake chooses as follows (change these only
//! together with the tests that pin them):
//! * Credentials are checked before the version; 401 for a missing or wrong key, 400 for a
//!   missing version or one not shaped `YYYY-MM-DD`. Query credentials count on the WebSocket
//!   only; `?access_token=` takes only [`FakeCartesiaConfig::access_tokens`].
//! * A context's first chunk comes [`FakeCartesiaConfig::first_chunk_delay`] after its first
//!   request; chunks of [`FakeCartesiaConfig::chunk_duration`] of audio then follow at
//!   [`FakeCartesiaConfig::realtime_factor`] times real time. Chunks never span two pieces.
//! * `flush_id` starts at 1 and counts the flushes of the context: every `chunk` and
//!   `timestamps` carries the id of the flush it belongs to, and a request with `"flush": true`
//!   gets `flush_done` with that id after its audio. No `flush_done` without a flush.
//! * `timestamps` list each word (whitespace-separated, punctuation kept) once, after the chunk
//!   that completes its audio, in seconds from the start of the context's audio.
//! * `cancel` sends nothing back — no `done`, no `error` — and the id stays dead on that socket:
//!   later requests naming it are ignored (counted in [`ContextSnapshot::ignored_after_cancel`]),
//!   because an LLM still streaming tokens after a barge-in must not restart speech.
//! * A request after `continue: false` for a context still speaking gets a 400 `error` and does
//!   not disturb it; once a context has ended, its id may open a new one.
//! * Errors carry `title`, `message`, `error_code`, `request_id`, `status_code`, `done: true`
//!   and, since SDK versions differ on the field they read, the message again as `error`.
//! * `wav` on the WebSocket: the first chunk starts with a RIFF header whose size fields are
//!   0xFFFFFFFF (length unknown while streaming). `mp3` is validated, then refused with a 400.
//! * The idle close is a close frame with code 1000, sent when nothing went either way for
//!   the idle timeout.
//! * `speed`, `generation_config`, `language`, `max_buffer_delay_ms` are validated and recorded
//!   but do not change the audio; continuations use the first request's `output_format`.
//!
//! It must not use tokio's paused clock: everything here is wall-clock paced on real sockets,
//! so it cannot run inside the deterministic simulation of `iace-sim`'s seeded runs. Request
//! ids are random v4 UUIDs; the audio is deterministic. Every connection, context and request is
//! kept in memory for inspection, so a long-running `iace-dev` session grows without bound (by
//! design: tests want the full history).

mod api;
mod audio;
mod format;
mod session;
mod state;
mod wire;

use crate::fake::Served;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use self::audio::synthesize;
pub use self::format::{Container, Encoding, OutputFormat, MP3_BIT_RATES, SAMPLE_RATES};
use self::state::Shared;

/// How the fake behaves. [`Default`] gives test values.
#[derive(Debug, Clone)]
pub struct FakeCartesiaConfig {
    /// The API key, accepted as `Authorization: Bearer`, `X-API-Key` or (WebSocket only)
    /// `?api_key=`; anything else is a 401.
    pub api_key: String,
    /// Short-lived access tokens, accepted as `Authorization: Bearer` or (WebSocket only)
    /// `?access_token=`.
    pub access_tokens: Vec<String>,
    /// Audio per transcript character. Samples per character are
    /// `sample_rate * ms_per_char / 1000`, rounded down (exact for 60 ms at every rate).
    pub ms_per_char: u32,
    /// Audio per `chunk` message (the last chunk of a piece may be shorter).
    pub chunk_duration: Duration,
    /// How much faster than real time audio is generated: a chunk of `d` audio follows the
    /// previous one after `d / realtime_factor`. Not a positive number: no pacing at all.
    pub realtime_factor: f64,
    /// From a context's first request to its first chunk.
    pub first_chunk_delay: Duration,
    /// A socket with no message either way for this long is closed (Cartesia: ~5 min).
    pub idle_timeout: Duration,
}

impl Default for FakeCartesiaConfig {
    fn default() -> Self {
        FakeCartesiaConfig {
            api_key: "sk_car_test_key".to_owned(),
            access_tokens: Vec::new(),
            ms_per_char: 60,
            chunk_duration: Duration::from_millis(150),
            realtime_factor: 4.0,
            first_chunk_delay: Duration::from_millis(80),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Where a request's credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `Authorization: Bearer <key or token>` (current SDKs).
    Bearer,
    /// `X-API-Key: <key>` (legacy; pipecat).
    XApiKey,
    /// `?api_key=` on the WebSocket URL.
    QueryApiKey,
    /// `?access_token=` on the WebSocket URL (browsers).
    QueryAccessToken,
}

/// Where the API version was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    /// The `Cartesia-Version` header.
    Header,
    /// `?cartesia_version=` on the WebSocket URL (wins over the header).
    Query,
}

/// Why a WebSocket connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame.
    ClientClosed,
    /// The client went away without a close frame.
    ClientGone,
    /// The fake closed it after [`FakeCartesiaConfig::idle_timeout`] of silence.
    Idle,
    /// [`FakeCartesia::drop_connection_after`] dropped it without a close frame.
    Dropped,
    /// The fake was shut down.
    Shutdown,
    /// Writing to the socket failed.
    SendFailed,
    /// The HTTP upgrade was answered but the socket never came up.
    UpgradeFailed,
}

/// One `/tts/websocket` handshake, accepted or refused.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionSnapshot {
    /// Position in [`FakeCartesia::connections`]; [`ContextSnapshot::connection`] refers to it.
    pub index: usize,
    /// The trace headers of the handshake.
    pub trace: crate::TraceHeaders,
    /// Where the credential recorded below was found (`None`: there was none).
    pub auth: Option<AuthMethod>,
    /// The valid credential presented, or else the first one presented.
    pub credential: Option<String>,
    /// The API version, from the query or the header.
    pub version: Option<String>,
    /// Where [`Self::version`] came from.
    pub version_source: Option<VersionSource>,
    /// The HTTP status of the refusal; `None` when the handshake was accepted.
    pub refused: Option<u16>,
    /// The refusal was injected by [`FakeCartesia::fail_next`].
    pub injected_failure: bool,
    /// The socket is open now.
    pub open: bool,
    /// Why it closed, once it has.
    pub close: Option<CloseReason>,
    /// Text and binary messages received from the client.
    pub messages_received: u32,
    /// Contexts opened on it (failed ones included).
    pub contexts_opened: u32,
    /// When the handshake arrived.
    pub opened_at: Instant,
    /// When it closed.
    pub closed_at: Option<Instant>,
}

/// Where a context is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextState {
    /// Taking continuations.
    Open,
    /// `continue: false` received; the rest of its audio and `done` are still to come.
    Closing,
    /// `done` sent.
    Done,
    /// Cancelled by the client; nothing more was sent.
    Cancelled,
    /// An `error` with this `status_code` was sent, which ended it.
    Failed(u16),
    /// The socket closed (or the fake stopped) before it ended.
    Abandoned,
}

/// One WebSocket context, as received and answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextSnapshot {
    /// The connection it lives on ([`ConnectionSnapshot::index`]).
    pub connection: usize,
    /// The client's `context_id`.
    pub context_id: String,
    /// The transcripts of its accepted requests, concatenated.
    pub transcript: String,
    /// Accepted requests (pieces), the empty closing one included.
    pub pieces: u32,
    /// Some request had `continue: true`.
    pub continued: bool,
    /// A request had `continue: false` (or none): input ended.
    pub input_ended: bool,
    /// Where it is now.
    pub state: ContextState,
    /// Held by [`FakeCartesia::stall_next_context`]: accepted, never answered.
    pub stalled: bool,
    /// Failed by [`FakeCartesia::fail_next`].
    pub injected_failure: bool,
    /// `model_id` of the first request.
    pub model_id: Option<String>,
    /// Voice id of the first request, whatever shape `voice` had.
    pub voice_id: Option<String>,
    /// `language` of the first request.
    pub language: Option<String>,
    /// `output_format` of the first request (`None` if it was invalid).
    pub format: Option<OutputFormat>,
    /// Requests with `"flush": true`.
    pub flushes: u32,
    /// `flush_done` messages sent.
    pub flush_dones_sent: u32,
    /// `chunk` messages sent.
    pub chunks_sent: u32,
    /// Decoded bytes of all `chunk` `data` sent (a streamed WAV header included).
    pub audio_bytes_sent: u64,
    /// `timestamps` messages sent.
    pub timestamps_sent: u32,
    /// Requests naming this context after it was cancelled, dropped unanswered.
    pub ignored_after_cancel: u32,
    /// Every request body received for it, valid or not, in order (not the cancel).
    pub requests: Vec<Value>,
    /// When its first request arrived.
    pub opened_at: Instant,
    /// When its first chunk was sent.
    pub first_chunk_at: Option<Instant>,
    /// When it ended.
    pub finished_at: Option<Instant>,
}

impl ContextSnapshot {
    fn new(connection: usize, context_id: &str, now: Instant) -> Self {
        ContextSnapshot {
            connection,
            context_id: context_id.to_owned(),
            transcript: String::new(),
            pieces: 0,
            continued: false,
            input_ended: false,
            state: ContextState::Open,
            stalled: false,
            injected_failure: false,
            model_id: None,
            voice_id: None,
            language: None,
            format: None,
            flushes: 0,
            flush_dones_sent: 0,
            chunks_sent: 0,
            audio_bytes_sent: 0,
            timestamps_sent: 0,
            ignored_after_cancel: 0,
            requests: Vec::new(),
            opened_at: now,
            first_chunk_at: None,
            finished_at: None,
        }
    }

    /// `done` was sent.
    pub fn done_sent(&self) -> bool {
        self.state == ContextState::Done
    }

    /// The client cancelled it.
    pub fn cancelled(&self) -> bool {
        self.state == ContextState::Cancelled
    }

    /// Nothing more will be sent for it.
    pub fn finished(&self) -> bool {
        !matches!(self.state, ContextState::Open | ContextState::Closing)
    }
}

/// One `POST /tts/bytes` request, as received and answered.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequestRecord {
    /// Where the credential recorded below was found.
    pub auth: Option<AuthMethod>,
    /// The valid credential presented, or else the first one presented.
    pub credential: Option<String>,
    /// The `Cartesia-Version` header.
    pub version: Option<String>,
    /// The parsed JSON body (`Null` when it was not JSON).
    pub body: Value,
    /// HTTP status answered.
    pub status: u16,
    /// Answered by [`FakeCartesia::fail_next`].
    pub injected_failure: bool,
    /// The validated output format, if the request got that far.
    pub format: Option<OutputFormat>,
    /// The transcript, if the request got that far.
    pub transcript: Option<String>,
    /// Body bytes of a 200 answer (a WAV header included).
    pub audio_bytes: usize,
    /// When it arrived.
    pub received_at: Instant,
}

/// A running fake Cartesia on `127.0.0.1`.
///
/// Dropping it without [`FakeCartesia::shutdown`] also stops every session and generator (they
/// watch the same stop signal, which closes when the sender drops), just without waiting.
pub struct FakeCartesia {
    shared: Arc<Shared>,
    served: Served,
}

impl FakeCartesia {
    /// Binds `127.0.0.1:0` and serves `/tts/websocket` and `/tts/bytes`.
    pub async fn start(config: FakeCartesiaConfig) -> io::Result<FakeCartesia> {
        let (shared, served) = Served::start(|stop| {
            let shared = Arc::new(Shared::new(config, stop));
            let app = api::router(shared.clone());
            Ok((shared, app))
        })
        .await?;
        Ok(FakeCartesia { shared, served })
    }

    /// The socket the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `ws://127.0.0.1:PORT/tts/websocket`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/tts/websocket", self.served.addr())
    }

    /// `http://127.0.0.1:PORT`, the REST base; clients append `/tts/bytes`.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.served.addr())
    }

    /// The API key requests must present.
    pub fn api_key(&self) -> &str {
        &self.shared.cfg.api_key
    }

    /// The configuration the fake was started with (the setters below do not change it).
    pub fn config(&self) -> &FakeCartesiaConfig {
        &self.shared.cfg
    }

    /// The audio (without any WAV header) this fake makes for `transcript` in `format`: what a
    /// context whose pieces concatenate to `transcript` streams, and what `/tts/bytes` returns
    /// after the header.
    pub fn expected_audio(&self, transcript: &str, format: &OutputFormat) -> Vec<u8> {
        synthesize(transcript, format, self.shared.cfg.ms_per_char)
    }

    /// The next `n` requests fail with `status`, after their credentials and version passed:
    /// a WebSocket handshake is refused with an HTTP `status` and an error body,
    /// `POST /tts/bytes` answers `status` with an error body, and a request that would open a
    /// new context on an open socket gets an `error` message with `status_code: status`
    /// (continuations of live contexts are not affected). Whichever comes first consumes it.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.shared.lock().fail = (n > 0).then_some(state::InjectedFailure {
            remaining: n,
            status,
        });
    }

    /// From contexts opened (and `/tts/bytes` requests received) from now on, the time from
    /// the first request to the first chunk (for `/tts/bytes`: to the response).
    pub fn set_first_chunk_delay(&self, d: Duration) {
        self.shared.lock().first_chunk_delay = d;
    }

    /// Changes [`FakeCartesiaConfig::realtime_factor`] for contexts opened from now on.
    pub fn set_realtime_factor(&self, factor: f64) {
        self.shared.lock().realtime_factor = factor;
    }

    /// The next context opened (on any socket) is accepted and recorded but never answered:
    /// no chunk, no `done`, for it or its continuations, until it is cancelled or its socket
    /// closes. Calls add up.
    pub fn stall_next_context(&self) {
        self.shared.lock().stalls += 1;
    }

    /// `d` from now, every WebSocket open at that moment is dropped without a close frame
    /// (the client sees the connection reset mid-stream). Sockets opened afterwards are
    /// unaffected.
    pub fn drop_connection_after(&self, d: Duration) {
        let shared = self.shared.clone();
        spawn_until_stopped(&self.shared.stop, async move {
            tokio::time::sleep(d).await;
            shared.drop_all.send_modify(|n| *n += 1);
        });
    }

    /// Sockets, open ones included, are closed (close frame, code 1000) once nothing has gone
    /// either way for `d`. Replaces [`FakeCartesiaConfig::idle_timeout`].
    pub fn close_idle_after(&self, d: Duration) {
        self.shared.lock().idle_timeout = d;
    }

    /// Every WebSocket handshake, in arrival order.
    pub fn connections(&self) -> Vec<ConnectionSnapshot> {
        self.shared.lock().connections.clone()
    }

    /// Every context, in the order they were opened (a reused id appears once per use).
    pub fn contexts(&self) -> Vec<ContextSnapshot> {
        self.shared.lock().contexts.clone()
    }

    /// The most recently opened context named `context_id`.
    pub fn context(&self, context_id: &str) -> Option<ContextSnapshot> {
        self.shared
            .lock()
            .contexts
            .iter()
            .rev()
            .find(|c| c.context_id == context_id)
            .cloned()
    }

    /// Every `POST /tts/bytes` request, in completion order.
    pub fn http_requests(&self) -> Vec<HttpRequestRecord> {
        self.shared.lock().http.clone()
    }

    /// Polls `f` every 10 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_for<F: Fn(&FakeCartesia) -> bool>(&self, timeout: Duration, f: F) -> bool {
        crate::fake::poll_until(timeout, || f(self)).await
    }

    /// Stops the server and every session (their sockets drop without a close frame). In-flight
    /// HTTP requests get up to 2 s to finish.
    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}

use crate::fake::spawn_until_stopped;
