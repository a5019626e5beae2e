//! A wire-level fake of Deepgram live speech-to-text, `GET /v1/listen` over WebSocket
//! (shared/docs/vendor-protocols.md section 2), on real sockets and real time.
//!
//! It exists so that IACE's real Deepgram client can be exercised without the vendor: in
//! integration tests, under `iace-dev` and in load tests, typically fed by the caller audio of
//! the fake Telnyx ([`crate::telnyx`]). It speaks the protocol as documented: the handshake
//! checks `Authorization: Token|Bearer <key>` (or the browser form
//! `Sec-WebSocket-Protocol: token, <key>`) and the query ([`params`]) and refuses with HTTP
//! 401/400 carrying `dg-request-id` and `dg-error`; binary frames carry audio; text frames carry
//! `KeepAlive`, `Finalize` and `CloseStream`; the server sends `Results`, `SpeechStarted`,
//! `UtteranceEnd` and `Metadata`, and closes with `NET-0001` (1011), `DATA-0000` (1008) or a
//! normal 1000 after `CloseStream` ([`server`]).
//!
//! It cannot recognise speech. Each connection replays a script of caller lines, one line per
//! utterance, where utterances are found by an energy voice-activity detector running on audio
//! time ([`transcriber`] describes the model). Scripts are set for all new connections with
//! [`FakeDeepgram::set_script`], or for the connections carrying a given `tag` query value with
//! [`FakeDeepgram::set_tag_script`]; the latter is one queue shared by those connections, so a
//! client that reconnects mid-call (say, tagged with the call id) hears the rest of its script.
//!
//! Faults: an abrupt drop of the TCP connection, a stall (the server goes silent, the socket
//! stays open), a refused handshake with any status, and latency on everything the server
//! sends.
//!
//! It must not use tokio's paused clock: idle timeouts, latency and faults run on the wall
//! clock, so it cannot run inside the deterministic simulation of `iace-sim`'s seeded runs. It
//! keeps every connection and every message it sent in memory for inspection, so a long
//! `iace-dev` session grows without bound (by design: tests want the full history).

mod params;
mod server;
mod sha256;
mod transcriber;

use crate::fake::Served;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

pub use self::params::UNSUPPORTED as UNSUPPORTED_ERROR_PREFIX;

/// How the fake behaves. [`Default`] gives test values.
#[derive(Debug, Clone)]
pub struct FakeDeepgramConfig {
    /// The key clients must present as `Authorization: Token <key>` (or `Bearer <key>`).
    pub api_key: String,
    /// Lines heard by connections opened before any [`FakeDeepgram::set_script`].
    pub script: Vec<String>,
    /// Without audio or `KeepAlive` for this long, the server closes with 1011 `NET-0001`.
    /// Deepgram documents 10 s; tests shorten it.
    pub idle_timeout: Duration,
    /// Close code of `DATA-0000` (undecodable audio): 1008 in current docs, 1002 in older ones
    /// (section 2.3, [UNVERIFIED] which), so it is configurable.
    pub data_error_close_code: u16,
    /// Smallest `utterance_end_ms` accepted; below it the handshake gets 400. Deepgram is
    /// reported to refuse values under 1000 ([UNVERIFIED]); 0 accepts anything.
    pub min_utterance_end_ms: u64,
    /// Level (dBFS, RMS over a 20 ms window) at or above which audio counts as speech.
    /// The Telnyx fake's talk peaks near -11 dBFS and its comfort noise sits near -60.
    pub vad_threshold_dbfs: f64,
    /// Silence after which the detector decides speech has stopped; it must outlast the gaps
    /// between syllables. An utterance ends after `max(endpointing, vad_hangover)` of silence.
    pub vad_hangover: Duration,
    /// Audio time between interim results of an utterance (`interim_results=true`).
    pub interim_interval: Duration,
    /// Speech per word revealed in interim results.
    pub word_duration: Duration,
}

impl Default for FakeDeepgramConfig {
    fn default() -> Self {
        FakeDeepgramConfig {
            api_key: "test-deepgram-key".to_owned(),
            script: Vec::new(),
            idle_timeout: Duration::from_secs(10),
            data_error_close_code: 1008,
            min_utterance_end_ms: 1000,
            vad_threshold_dbfs: -40.0,
            vad_hangover: Duration::from_millis(200),
            interim_interval: Duration::from_millis(300),
            word_duration: Duration::from_millis(250),
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The server sent a close frame: 1000 after `CloseStream`, 1011 `NET-0001`, or
    /// [`FakeDeepgramConfig::data_error_close_code`] `DATA-0000`.
    ServerClosed {
        /// Close code sent.
        code: u16,
        /// Close reason sent (`""` for a normal close).
        reason: String,
    },
    /// The client sent a close frame first.
    ClientClosed {
        /// Its code, if the frame had one.
        code: Option<u16>,
        /// Its reason.
        reason: String,
    },
    /// The client's side went away without a close handshake.
    Vanished,
    /// Cut by [`FakeDeepgram::drop_next_connection_after`]: no close frame sent.
    Dropped,
    /// Still open when the fake shut down (a stalled connection always ends so).
    Shutdown,
}

/// One handshake and, if accepted, its connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenConnection {
    /// Position in [`FakeDeepgram::connections`].
    pub id: usize,
    /// Sent as `dg-request-id` (also on refusals) and as `request_id` in every message.
    pub request_id: String,
    /// The trace headers of the handshake.
    pub trace: crate::TraceHeaders,
    /// Request path (`/v1/listen` unless the client got it wrong).
    pub path: String,
    /// Query parameters, decoded, in order; repeated ones (`tag`, `keyterm`) repeat.
    pub query: Vec<(String, String)>,
    /// The raw `Authorization` header.
    pub authorization: Option<String>,
    /// The raw `Sec-WebSocket-Protocol` header.
    pub protocols: Option<String>,
    /// HTTP status of the handshake: 101 when accepted.
    pub status: u16,
    /// `dg-error` of a refusal.
    pub dg_error: Option<String>,
    /// The WebSocket is open now.
    pub open: bool,
    /// Binary frames received (including empty ones).
    pub audio_frames: u64,
    /// Audio bytes received.
    pub audio_bytes: u64,
    /// Audio received, in seconds of audio.
    pub audio_seconds: f64,
    /// `KeepAlive` messages received.
    pub keepalives: u32,
    /// `Finalize` messages received.
    pub finalizes: u32,
    /// `CloseStream` messages received.
    pub close_streams: u32,
    /// Text frames that were not a known control message (ignored).
    pub unknown_text: u32,
    /// Every message sent, in order (close frames are in [`Self::end`]).
    pub sent: Vec<serde_json::Value>,
    /// [`FakeDeepgram::stall_next_connection`] hit this connection: it went silent.
    pub stalled: bool,
    /// How it ended, once it has.
    pub end: Option<ConnectionEnd>,
}

impl ListenConnection {
    /// The decoded value of the last `name` query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Transcripts of the final `Results` sent, in order.
    pub fn final_transcripts(&self) -> Vec<String> {
        self.sent
            .iter()
            .filter(|m| m["type"] == "Results" && m["is_final"] == true)
            .filter_map(|m| m["channel"]["alternatives"][0]["transcript"].as_str())
            .map(str::to_owned)
            .collect()
    }
}

/// Faults armed for the next accepted connection.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConnectionFaults {
    /// Drop the TCP connection this long after the upgrade.
    pub(crate) drop_after: Option<Duration>,
    /// Go silent this long after the upgrade.
    pub(crate) stall_after: Option<Duration>,
}

/// Everything the fake remembers.
pub(crate) struct State {
    pub(crate) connections: Vec<ListenConnection>,
    pub(crate) script: Vec<String>,
    /// Shared queues by `tag` value, consumed across connections.
    pub(crate) tag_scripts: HashMap<String, VecDeque<String>>,
    pub(crate) next_faults: ConnectionFaults,
    pub(crate) refuse_next: Option<u16>,
    pub(crate) latency: Duration,
}

/// What the server and every connection task share.
pub(crate) struct Shared {
    pub(crate) config: FakeDeepgramConfig,
    /// A std mutex, not a tokio one: it is never held across an `.await`, and the script
    /// closures of connections lock it from synchronous code.
    state: Mutex<State>,
    pub(crate) stop: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `f` to connection `id`'s record.
    pub(crate) fn update(&self, id: usize, f: impl FnOnce(&mut ListenConnection)) {
        if let Some(c) = self.lock().connections.get_mut(id) {
            f(c);
        }
    }
}

/// A running fake Deepgram on `127.0.0.1`.
///
/// Dropping it without [`FakeDeepgram::shutdown`] also stops every connection (they watch the
/// same stop signal, which closes when the sender drops), just without waiting.
pub struct FakeDeepgram {
    shared: Arc<Shared>,
    served: Served,
}

impl FakeDeepgram {
    /// Binds `127.0.0.1:0` and serves `/v1/listen`.
    pub async fn start(config: FakeDeepgramConfig) -> io::Result<FakeDeepgram> {
        let (shared, served) = Served::start(|stop| {
            let shared = Arc::new(Shared {
                state: Mutex::new(State {
                    connections: Vec::new(),
                    script: config.script.clone(),
                    tag_scripts: HashMap::new(),
                    next_faults: ConnectionFaults::default(),
                    refuse_next: None,
                    latency: Duration::ZERO,
                }),
                config,
                stop,
            });
            let app = server::router(shared.clone());
            Ok((shared, app))
        })
        .await?;
        Ok(FakeDeepgram { shared, served })
    }

    /// The socket it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `ws://127.0.0.1:PORT`; clients append `/v1/listen?...`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.served.addr())
    }

    /// `ws://127.0.0.1:PORT/v1/listen?<query>`.
    pub fn listen_url(&self, query: &str) -> String {
        format!("ws://{}/v1/listen?{query}", self.served.addr())
    }

    /// The key the handshake accepts.
    pub fn api_key(&self) -> &str {
        &self.shared.config.api_key
    }

    /// Every connection opened from now on (without a tag script) hears `lines`, from the
    /// first, one per utterance; a connection that runs out hears empty transcripts.
    pub fn set_script<S: Into<String>>(&self, lines: impl IntoIterator<Item = S>) {
        self.shared.lock().script = lines.into_iter().map(Into::into).collect();
    }

    /// Connections whose query carries `tag=<tag>` (the first tag with a script wins) take their
    /// lines from this one queue, shared among them, so a reconnect continues where the last
    /// connection stopped. Replaces any earlier queue of `tag`.
    pub fn set_tag_script<S: Into<String>>(&self, tag: &str, lines: impl IntoIterator<Item = S>) {
        self.shared
            .lock()
            .tag_scripts
            .insert(tag.to_owned(), lines.into_iter().map(Into::into).collect());
    }

    /// Lines still queued for `tag`.
    pub fn tag_script_left(&self, tag: &str) -> Vec<String> {
        self.shared
            .lock()
            .tag_scripts
            .get(tag)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The next accepted connection is cut `after` its upgrade (wall time): the TCP connection
    /// closes with no close frame, as when a network path or a server dies.
    pub fn drop_next_connection_after(&self, after: Duration) {
        self.shared.lock().next_faults.drop_after = Some(after);
    }

    /// The next accepted connection goes silent right after its upgrade: it neither reads nor
    /// sends anything (no results, no pongs, no close, no `NET-0001`) and keeps the socket open
    /// until the client gives up or the fake shuts down.
    pub fn stall_next_connection(&self) {
        self.stall_next_connection_after(Duration::ZERO);
    }

    /// As [`Self::stall_next_connection`], but the connection serves normally for `after`
    /// (wall time) first.
    pub fn stall_next_connection_after(&self, after: Duration) {
        self.shared.lock().next_faults.stall_after = Some(after);
    }

    /// The next handshake is refused with HTTP `status`, a `dg-error` and a Deepgram error body,
    /// whatever its credentials and parameters.
    pub fn refuse_next(&self, status: u16) {
        self.shared.lock().refuse_next = Some(status);
    }

    /// Delay added to every message sent from now on (their order is kept).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Every handshake, in arrival order.
    pub fn connections(&self) -> Vec<ListenConnection> {
        self.shared.lock().connections.clone()
    }

    /// One handshake by its id.
    pub fn connection(&self, id: usize) -> Option<ListenConnection> {
        self.shared.lock().connections.get(id).cloned()
    }

    /// Polls `f` every 10 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_for<F: Fn(&FakeDeepgram) -> bool>(&self, timeout: Duration, f: F) -> bool {
        crate::fake::poll_until(timeout, || f(self)).await
    }

    /// Stops the server and every connection (open ones end as
    /// [`ConnectionEnd::Shutdown`], their sockets closed without a close frame). Waits up to
    /// 2 s for the server.
    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}
