//! Deepgram live speech-to-text (vendor-protocols.md section 2): the engine's
//! [`SpeechToText`] port over `GET /v1/listen` WebSockets.
//!
//! [`DeepgramStt::open`] makes the first connection before it returns (section 2.1): a
//! refused handshake (400/401/402/...) is [`VoiceError::Rejected`] at once; 429, 5xx,
//! connection errors and timeouts are retried with the [`RetryPolicy`], then
//! [`VoiceError::Unavailable`]. Every handshake, the first and each reconnect, goes through
//! the `deepgram` circuit breaker: an open breaker fails without touching the network.
//!
//! One task per stream then owns the socket ([`stream`]): it forwards audio, keeps the socket
//! alive, translates results into [`SttEvent`]s, and reconnects on a drop or a stall behind
//! the same channels. This module only translates; it never decides anything about a call.

mod stream;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use iace_actors::breaker::{BreakerHandle, CallOutcome, PermitGuard};
use iace_actors::ports::voice::{SpeechToText, SttEvent, SttOptions, SttStream, VoiceError};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use reqwest::Url;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, Instrument as _};

use crate::clients::retry::{self, Attempt, RetryPolicy};
use crate::telemetry::ClientSpan;
use opentelemetry::context::FutureExt as _;

/// Breaker name of this vendor.
pub const VENDOR: &str = "deepgram";

/// The real service's WebSocket base.
pub const DEFAULT_URL: &str = "wss://api.deepgram.com";

/// Deepgram's smallest `utterance_end_ms` (section 2.1, reported; a smaller value is a 400).
const MIN_UTTERANCE_END_MS: u32 = 1_000;

/// Input channel bound: 5 s of 20 ms frames. The session `try_send`s into it and counts what
/// does not fit; the stream task drains it even while reconnecting.
const INPUT_CAPACITY: usize = 256;

/// Event channel bound. Finals wait for room; interim results and `SpeechStarted` are dropped
/// when it is full (a newer one supersedes them).
const EVENT_CAPACITY: usize = 256;

/// One live socket.
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Client settings.
#[derive(Clone)]
pub struct DeepgramConfig {
    /// WebSocket base (no path): [`DEFAULT_URL`], or the fake's `ws://127.0.0.1:PORT`.
    pub url: String,
    /// API key (`Authorization: Token <key>`).
    pub api_key: String,
    /// `model` (`nova-3`; keyterms are sent as `keyterm` to nova-3 and as `keywords` to older
    /// models).
    pub model: String,
    /// A `KeepAlive` goes out whenever no audio went out for this long (section 2.2: every
    /// 3-5 s; the server closes after 10 s without audio or `KeepAlive`).
    pub keepalive_interval: Duration,
    /// A connection from which nothing (no result, no pong to our pings) arrived for this long
    /// is stalled and replaced. Pings go out every third of it, so a healthy but quiet
    /// connection (silence yields no results) always answers in time.
    pub stall_timeout: Duration,
    /// Bound on one handshake (TCP, TLS, upgrade).
    pub connect_timeout: Duration,
    /// Retries of a handshake, at open and at each reconnect.
    pub retry: RetryPolicy,
    /// Reconnects a stream may make over its life before it gives up with `Failed`.
    pub max_reconnects: u32,
    /// Caller audio kept for a reconnect: what the lost connection had not finalized (it is
    /// sent again) plus what arrives while reconnecting. The oldest beyond this is lost and
    /// reported as `gap_ms`.
    pub reconnect_buffer: Duration,
    /// The `deepgram` circuit breaker every handshake goes through (`None`: no breaker).
    pub breaker: Option<BreakerHandle>,
}

impl DeepgramConfig {
    /// Settings for `url` and `api_key` with production defaults.
    pub fn new(url: impl Into<String>, api_key: impl Into<String>) -> Self {
        DeepgramConfig {
            url: url.into(),
            api_key: api_key.into(),
            model: "nova-3".to_owned(),
            keepalive_interval: Duration::from_secs(4),
            stall_timeout: Duration::from_secs(6),
            connect_timeout: Duration::from_secs(5),
            // A caller is waiting: a handshake that has not worked within 10 s will not.
            retry: RetryPolicy {
                max_attempts: 4,
                base: Duration::from_millis(200),
                cap: Duration::from_secs(2),
                attempt_timeout: Duration::from_secs(5),
                deadline: Duration::from_secs(10),
                max_retry_after: Duration::from_secs(5),
            },
            max_reconnects: 5,
            reconnect_buffer: Duration::from_secs(5),
            breaker: None,
        }
    }
}

impl std::fmt::Debug for DeepgramConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("DeepgramConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("stall_timeout", &self.stall_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_reconnects", &self.max_reconnects)
            .field("reconnect_buffer", &self.reconnect_buffer)
            .finish_non_exhaustive()
    }
}

/// Connection, reconnect and stall counters.
#[derive(Clone)]
pub struct DeepgramMetrics {
    connections: IntCounterVec,
    reconnects: IntCounterVec,
    stalls: IntCounter,
    failed: IntCounter,
    lost_ms: IntCounter,
}

impl DeepgramMetrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = DeepgramMetrics {
            connections: IntCounterVec::new(
                Opts::new(
                    "iace_deepgram_connections_total",
                    "Deepgram handshakes by outcome (ok, refused, retryable, transport, timeout, breaker_open)",
                ),
                &["outcome"],
            )?,
            reconnects: IntCounterVec::new(
                Opts::new(
                    "iace_deepgram_reconnects_total",
                    "Deepgram streams reopened behind the same channels, by cause (closed, lost, stalled)",
                ),
                &["cause"],
            )?,
            stalls: IntCounter::new(
                "iace_deepgram_stalls_total",
                "Deepgram connections found stalled (nothing received for the stall timeout)",
            )?,
            failed: IntCounter::new(
                "iace_deepgram_streams_failed_total",
                "Deepgram streams that gave up (breaker open, reconnects exhausted, refused)",
            )?,
            lost_ms: IntCounter::new(
                "iace_deepgram_audio_lost_ms_total",
                "Caller audio lost in reconnect gaps, ms",
            )?,
        };
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.stalls.clone()))?;
        registry.register(Box::new(m.failed.clone()))?;
        registry.register(Box::new(m.lost_ms.clone()))?;
        Ok(m)
    }
}

/// Why no connection could be made.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConnectError {
    /// The handshake was refused with a status retrying will not change, or the URL is
    /// unusable.
    Refused(String),
    /// Failures, timeouts and rate limits until the policy gave up.
    Unavailable(String),
    /// The breaker is open: nothing was sent.
    BreakerOpen,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(m) => write!(f, "handshake refused: {m}"),
            ConnectError::Unavailable(m) => write!(f, "no connection: {m}"),
            ConnectError::BreakerOpen => write!(f, "the deepgram circuit breaker is open"),
        }
    }
}

impl ConnectError {
    fn into_voice(self) -> VoiceError {
        let detail = self.to_string();
        match self {
            ConnectError::Refused(_) => VoiceError::Rejected {
                vendor: VENDOR.to_owned(),
                detail,
            },
            ConnectError::Unavailable(_) | ConnectError::BreakerOpen => VoiceError::Unavailable {
                vendor: VENDOR.to_owned(),
                detail,
            },
        }
    }
}

/// What the client and every stream task share.
struct Shared {
    config: DeepgramConfig,
    metrics: Option<DeepgramMetrics>,
}

impl Shared {
    /// Connects to `url` through the breaker, with the retry policy.
    async fn connect(&self, url: &str) -> Result<Ws, ConnectError> {
        self.config
            .retry
            .run(
                |attempt| async move {
                    let outcome = self.attempt(url).await;
                    if let Attempt::Retry { error, after } = &outcome {
                        debug!(attempt, %error, ?after, "deepgram handshake failed; may retry");
                    }
                    outcome
                },
                |d| {
                    self.count("timeout");
                    ConnectError::Unavailable(format!("no handshake within {} ms", d.as_millis()))
                },
            )
            .await
            .map_err(retry::Exhausted::into_last)
    }

    /// One handshake, judged for the breaker: 4xx is the request's fault (the vendor is
    /// fine), 429 opens the breaker for its `Retry-After`, 5xx/timeouts/transport errors
    /// are the vendor's failures.
    async fn attempt(&self, url: &str) -> Attempt<Ws, ConnectError> {
        let guard = match &self.config.breaker {
            Some(breaker) => match breaker.acquire_after_wait().await {
                Ok(permit) => Some(PermitGuard::new(breaker.clone(), permit)),
                Err(_) => {
                    self.count("breaker_open");
                    return Attempt::Done(Err(ConnectError::BreakerOpen));
                }
            },
            None => None,
        };
        let finish = |guard: Option<PermitGuard>, outcome: fn(Duration) -> CallOutcome| {
            if let Some(g) = guard {
                let elapsed = g.elapsed();
                g.finish(outcome(elapsed));
            }
        };
        let mut request = match url.into_client_request() {
            Ok(r) => r,
            Err(e) => {
                if let Some(g) = guard {
                    g.finish(CallOutcome::Cancelled);
                }
                return Attempt::Done(Err(ConnectError::Refused(format!("bad URL: {e}"))));
            }
        };
        let auth = HeaderValue::from_str(&format!("Token {}", self.config.api_key));
        match auth {
            Ok(v) => {
                request.headers_mut().insert(header::AUTHORIZATION, v);
            }
            Err(_) => {
                if let Some(g) = guard {
                    g.finish(CallOutcome::Cancelled);
                }
                return Attempt::Done(Err(ConnectError::Refused(
                    "the API key is not a valid header value".to_owned(),
                )));
            }
        }
        request.headers_mut().insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("iace/", env!("CARGO_PKG_VERSION"))),
        );
        // The handshake is a client span in the call's trace; it ends with the handshake.
        let mut span = ClientSpan::start("GET", "GET", url, VENDOR);
        span.insert(request.headers_mut());
        // Audio frames are small and latency-bound: no Nagle.
        let handshake = tokio_tungstenite::connect_async_with_config(
            request,
            Some(crate::clients::ws_config()),
            true,
        );
        let result = match tokio::time::timeout(self.config.connect_timeout, handshake).await {
            Ok(r) => r,
            Err(_) => {
                finish(guard, |elapsed| CallOutcome::Failure { elapsed });
                span.fail("timeout", "no handshake in time");
                self.count("timeout");
                return Attempt::Retry {
                    after: None,
                    error: ConnectError::Unavailable(format!(
                        "no handshake within {} ms",
                        self.config.connect_timeout.as_millis()
                    )),
                };
            }
        };
        match result {
            Ok((ws, response)) => {
                span.status(response.status().as_u16());
                finish(guard, |elapsed| CallOutcome::Success { elapsed });
                self.count("ok");
                Attempt::Done(Ok(ws))
            }
            Err(WsError::Http(response)) => {
                let status = response.status().as_u16();
                span.status(status);
                let headers = response.headers();
                let after = retry::retry_after(headers);
                let text = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let body = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<wire::ErrorBody>(b).ok())
                    .unwrap_or_default();
                let reason = text("dg-error")
                    .or(body.err_msg)
                    .or(body.err_code)
                    .unwrap_or_else(|| "no reason given".to_owned());
                let mut message = format!("HTTP {status}: {reason}");
                if let Some(id) = text("dg-request-id") {
                    message.push_str(&format!(" (dg-request-id {id})"));
                }
                if status == 429 {
                    if let Some(g) = guard {
                        g.finish(CallOutcome::RateLimited { retry_after: after });
                    }
                    self.count("retryable");
                    Attempt::Retry {
                        after,
                        error: ConnectError::Unavailable(message),
                    }
                } else if retry::retryable_status(status) {
                    finish(guard, |elapsed| CallOutcome::Failure { elapsed });
                    self.count("retryable");
                    Attempt::Retry {
                        after,
                        error: ConnectError::Unavailable(message),
                    }
                } else {
                    finish(guard, |elapsed| CallOutcome::Success { elapsed });
                    self.count("refused");
                    Attempt::Done(Err(ConnectError::Refused(message)))
                }
            }
            Err(e @ (WsError::Url(_) | WsError::HttpFormat(_))) => {
                span.fail("configuration", e.to_string());
                // Our configuration (a `wss://` URL without TLS support, a malformed URL),
                // not the vendor's fault; retrying will not fix it.
                if let Some(g) = guard {
                    g.finish(CallOutcome::Cancelled);
                }
                self.count("refused");
                Attempt::Done(Err(ConnectError::Refused(e.to_string())))
            }
            Err(e) => {
                span.fail("transport", e.to_string());
                finish(guard, |elapsed| CallOutcome::Failure { elapsed });
                self.count("transport");
                Attempt::Retry {
                    after: None,
                    error: ConnectError::Unavailable(e.to_string()),
                }
            }
        }
    }

    fn count(&self, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.connections.with_label_values(&[outcome]).inc();
        }
    }
}

/// The Deepgram adapter. Cheap to share (`Arc<dyn SpeechToText>`); each [`SpeechToText::open`]
/// is an independent stream.
pub struct DeepgramStt {
    shared: Arc<Shared>,
    /// `{url}/v1/listen`, checked once.
    listen: Url,
}

impl std::fmt::Debug for DeepgramStt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeepgramStt")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl DeepgramStt {
    /// An adapter; fails if `config.url` is not a `ws://` or `wss://` base. `metrics` is
    /// optional so tests can build many adapters.
    pub fn new(config: DeepgramConfig, metrics: Option<DeepgramMetrics>) -> anyhow::Result<Self> {
        let base = config.url.trim_end_matches('/');
        let listen = Url::parse(&format!("{base}/v1/listen"))?;
        anyhow::ensure!(
            matches!(listen.scheme(), "ws" | "wss"),
            "the Deepgram URL must start with ws:// or wss:// (got {})",
            config.url
        );
        anyhow::ensure!(
            listen.query().is_none() && listen.fragment().is_none(),
            "the Deepgram URL must be a base without query (got {})",
            config.url
        );
        Ok(DeepgramStt {
            shared: Arc::new(Shared { config, metrics }),
            listen,
        })
    }

    /// The handshake URL of a stream with `options` (section 2.1).
    pub fn listen_url(&self, options: &SttOptions) -> String {
        listen_url(&self.listen, &self.shared.config.model, options)
    }
}

/// `{base}/v1/listen?<query>`: μ-law 8 kHz mono, interim results and voice-activity events
/// (the session's turn detection needs both), the session's endpointing, keyterms (repeated)
/// and the call id as `tag`, so a reconnect is attributable at Deepgram.
fn listen_url(listen: &Url, model: &str, options: &SttOptions) -> String {
    let mut url = listen.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("model", model);
        q.append_pair("language", &options.language);
        q.append_pair("encoding", "mulaw");
        q.append_pair("sample_rate", "8000");
        q.append_pair("channels", "1");
        q.append_pair("interim_results", "true");
        // 0 would be meaningless; Deepgram's way to turn endpointing off is `false`.
        match options.endpointing_ms {
            0 => q.append_pair("endpointing", "false"),
            ms => q.append_pair("endpointing", &ms.to_string()),
        };
        // Below the minimum the handshake is refused and the call would have no transcript.
        let utterance_end = options.utterance_end_ms.max(MIN_UTTERANCE_END_MS);
        q.append_pair("utterance_end_ms", &utterance_end.to_string());
        q.append_pair("vad_events", "true");
        q.append_pair("smart_format", "true");
        q.append_pair("punctuate", "true");
        // Keyterm prompting is nova-3's; older models take `keywords`.
        let boost = if model.starts_with("nova-3") {
            "keyterm"
        } else {
            "keywords"
        };
        for term in options.keyterms.iter().map(|t| t.trim()) {
            if !term.is_empty() {
                q.append_pair(boost, term);
            }
        }
        q.append_pair("tag", &options.call_id.to_string());
    }
    url.into()
}

#[async_trait]
impl SpeechToText for DeepgramStt {
    fn vendor(&self) -> &'static str {
        VENDOR
    }

    async fn open(&self, options: SttOptions) -> Result<SttStream, VoiceError> {
        let url = self.listen_url(&options);
        let started = Instant::now();
        let ws = self
            .shared
            .connect(&url)
            .await
            .map_err(ConnectError::into_voice)?;
        debug!(call_id = %options.call_id, elapsed_ms = started.elapsed().as_millis() as u64, "deepgram stream open");
        let (input_tx, input_rx) = mpsc::channel(INPUT_CAPACITY);
        let (events_tx, events_rx) = mpsc::channel::<SttEvent>(EVENT_CAPACITY);
        let span = tracing::info_span!("deepgram_stream", call_id = %options.call_id);
        tokio::spawn(
            stream::StreamTask::new(self.shared.clone(), url, input_rx, events_tx)
                .run(ws)
                .instrument(span)
                // Reconnections are spans of the call too.
                .with_current_context(),
        );
        Ok(SttStream {
            input: input_tx,
            events: events_rx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> SttOptions {
        SttOptions {
            call_id: uuid::Uuid::nil(),
            language: "en-US".to_owned(),
            endpointing_ms: 300,
            utterance_end_ms: 1000,
            keyterms: vec!["IACE".to_owned(), "Acme Corp".to_owned(), " ".to_owned()],
        }
    }

    fn stt(url: &str) -> anyhow::Result<DeepgramStt> {
        DeepgramStt::new(DeepgramConfig::new(url, "k"), None)
    }

    #[test]
    fn the_listen_url_carries_every_parameter() {
        let url = stt("wss://api.deepgram.com/")
            .unwrap()
            .listen_url(&options());
        assert_eq!(
            url,
            "wss://api.deepgram.com/v1/listen?model=nova-3&language=en-US&encoding=mulaw\
             &sample_rate=8000&channels=1&interim_results=true&endpointing=300\
             &utterance_end_ms=1000&vad_events=true&smart_format=true&punctuate=true\
             &keyterm=IACE&keyterm=Acme+Corp&tag=00000000-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn older_models_get_keywords_and_bounds_are_respected() {
        let mut config = DeepgramConfig::new("ws://127.0.0.1:9", "k");
        config.model = "nova-2".to_owned();
        let stt = DeepgramStt::new(config, None).unwrap();
        let mut o = options();
        o.endpointing_ms = 0;
        o.utterance_end_ms = 500;
        let url = stt.listen_url(&o);
        assert!(url.starts_with("ws://127.0.0.1:9/v1/listen?model=nova-2&"));
        assert!(url.contains("&endpointing=false&utterance_end_ms=1000&"));
        assert!(url.contains("&keywords=IACE&keywords=Acme+Corp&"));
        assert!(!url.contains("keyterm"));
    }

    #[test]
    fn only_websocket_bases_are_accepted() {
        assert!(stt("https://api.deepgram.com").is_err());
        assert!(stt("wss://api.deepgram.com?x=1").is_err());
        assert!(stt("not a url").is_err());
        assert!(stt("ws://localhost:8080/prefix").is_ok());
    }

    #[test]
    fn the_key_is_never_printed() {
        let config = DeepgramConfig::new(DEFAULT_URL, "secret-key");
        assert!(!format!("{config:?}").contains("secret-key"));
    }
}
