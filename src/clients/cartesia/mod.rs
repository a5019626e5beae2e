//! Cartesia streaming text-to-speech (vendor-protocols.md section 3) behind the engine's
//! [`TextToSpeech`] port: one `/tts/websocket` per call, one Cartesia context per agent
//! utterance, audio as raw G.711 mu-law at 8 kHz so it goes to the phone call unconverted.
//!
//! [`CartesiaTts::open`] makes the first connection before it returns (section 3.1: Bearer key
//! and `Cartesia-Version` on the handshake), so a refused key or an open breaker is an `Err`
//! there. A task then owns the socket ([`stream`]): it turns [`TtsInput`] into generation
//! requests and cancels, server messages into [`TtsEvent`]s, and reopens the socket when it
//! drops or stalls. Every connection attempt goes through the `cartesia` circuit breaker and
//! the shared [`RetryPolicy`]; every context is judged by the breaker too (done: success;
//! stalled, dropped or a vendor 5xx: failure), so an unhealthy vendor trips it mid-call.
//!
//! It must not block the session: the input channel is bounded and the session `try_send`s
//! into it, so the task never waits on the network without also draining its input.

mod stream;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iace_actors::breaker::{BreakerHandle, CallOutcome, PermitGuard};
use iace_actors::ports::voice::{TextToSpeech, TtsOptions, TtsStream, VoiceError};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::debug;

use crate::clients::retry::{self, Attempt, RetryPolicy};
use crate::telemetry::ClientSpan;
use opentelemetry::context::FutureExt as _;

/// The real API's WebSocket base (section 3.1).
pub const DEFAULT_URL: &str = "wss://api.cartesia.ai";
/// The API version this client speaks (section 3.1: the header is required).
pub const DEFAULT_VERSION: &str = "2025-04-16";
/// The model used when the call's options name none.
pub const DEFAULT_MODEL: &str = "sonic-3";
/// Breaker name of this vendor.
pub const VENDOR: &str = "cartesia";

/// Messages the session may queue before `try_send` fails: a few utterances' worth of
/// sentences and cancels.
const INPUT_CAPACITY: usize = 64;
/// Events queued towards the session (150 ms chunks: tens of seconds of audio).
const EVENT_CAPACITY: usize = 256;

/// The socket of one stream.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Client settings.
#[derive(Clone)]
pub struct CartesiaConfig {
    /// WebSocket base without a path ([`DEFAULT_URL`]; `ws://127.0.0.1:PORT` for the fake).
    /// `/tts/websocket` is appended.
    pub url: String,
    /// `sk_car_...` key, sent as `Authorization: Bearer`.
    pub api_key: String,
    /// `Cartesia-Version` (`YYYY-MM-DD`).
    pub version: String,
    /// Model when [`TtsOptions::model_id`] is empty.
    pub model_id: String,
    /// Bound on one handshake.
    pub connect_timeout: Duration,
    /// A context owed audio that hears nothing for this long means the socket is stalled:
    /// in-flight contexts fail and the socket is reopened. Also bounds one write.
    pub stall_timeout: Duration,
    /// Backoff and attempts of one (re)connection.
    pub retry: RetryPolicy,
    /// Reconnections after drops or stalls allowed without a context finishing in between;
    /// one more drop ends the stream with `Failed`.
    pub max_reconnects: u32,
    /// `max_buffer_delay_ms` of every request (section 3.2). The session sends whole
    /// sentences, so waiting for more text only adds latency: `Some(0)` speaks each piece as
    /// it arrives; `None` leaves the vendor's default.
    pub max_buffer_delay_ms: Option<u32>,
    /// The `cartesia` breaker (`None`: no breaker).
    pub breaker: Option<BreakerHandle>,
}

impl CartesiaConfig {
    /// Production defaults for `url` and `api_key`: version [`DEFAULT_VERSION`], model
    /// [`DEFAULT_MODEL`], 5 s to connect, 5 s stall timeout, the default retry policy,
    /// 3 reconnects, no buffering, no breaker.
    pub fn new(url: impl Into<String>, api_key: impl Into<String>) -> Self {
        CartesiaConfig {
            url: url.into(),
            api_key: api_key.into(),
            version: DEFAULT_VERSION.to_owned(),
            model_id: DEFAULT_MODEL.to_owned(),
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            max_reconnects: 3,
            max_buffer_delay_ms: Some(0),
            breaker: None,
        }
    }
}

impl std::fmt::Debug for CartesiaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CartesiaConfig")
            .field("url", &self.url)
            .field("version", &self.version)
            .field("model_id", &self.model_id)
            .field("connect_timeout", &self.connect_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("max_reconnects", &self.max_reconnects)
            .finish_non_exhaustive()
    }
}

/// Connection, context and latency metrics.
#[derive(Clone)]
pub struct CartesiaMetrics {
    connects: IntCounterVec,
    contexts: IntCounterVec,
    reconnects: IntCounterVec,
    first_chunk: Histogram,
}

impl CartesiaMetrics {
    /// Registers the metrics on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connects = IntCounterVec::new(
            Opts::new(
                "iace_cartesia_connects_total",
                "Cartesia WebSocket handshake attempts by outcome (ok, rejected, retryable, transport, timeout, breaker_open)",
            ),
            &["outcome"],
        )?;
        let contexts = IntCounterVec::new(
            Opts::new(
                "iace_cartesia_contexts_total",
                "Cartesia contexts (utterances) by outcome (done, cancelled, failed, stalled, dropped, closed)",
            ),
            &["outcome"],
        )?;
        let reconnects = IntCounterVec::new(
            Opts::new(
                "iace_cartesia_reconnects_total",
                "Cartesia sockets reopened mid-call by cause (dropped, stalled, closed) and result (ok, failed)",
            ),
            &["cause", "result"],
        )?;
        let first_chunk = Histogram::with_opts(
            HistogramOpts::new(
                "iace_cartesia_first_chunk_seconds",
                "From a context's first request to its first audio chunk",
            )
            .buckets(vec![0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0]),
        )?;
        registry.register(Box::new(connects.clone()))?;
        registry.register(Box::new(contexts.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;
        registry.register(Box::new(first_chunk.clone()))?;
        Ok(CartesiaMetrics {
            connects,
            contexts,
            reconnects,
            first_chunk,
        })
    }

    fn connect(&self, outcome: &str) {
        self.connects.with_label_values(&[outcome]).inc();
    }

    fn context(&self, outcome: &str) {
        self.contexts.with_label_values(&[outcome]).inc();
    }

    fn reconnect(&self, cause: &str, result: &str) {
        self.reconnects.with_label_values(&[cause, result]).inc();
    }

    fn first_chunk(&self, elapsed: Duration) {
        self.first_chunk.observe(elapsed.as_secs_f64());
    }
}

/// The Cartesia client: opens one speech stream per call.
pub struct CartesiaTts {
    config: Arc<CartesiaConfig>,
    metrics: Option<CartesiaMetrics>,
}

impl CartesiaTts {
    /// A client. `metrics` is optional so tests can build many clients.
    pub fn new(config: CartesiaConfig, metrics: Option<CartesiaMetrics>) -> Self {
        CartesiaTts {
            config: Arc::new(config),
            metrics,
        }
    }
}

#[async_trait]
impl TextToSpeech for CartesiaTts {
    fn vendor(&self) -> &'static str {
        VENDOR
    }

    async fn open(&self, options: TtsOptions) -> Result<TtsStream, VoiceError> {
        let socket = connect(&self.config, self.metrics.as_ref()).await?;
        let (input_tx, input_rx) = mpsc::channel(INPUT_CAPACITY);
        let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
        let task = stream::StreamTask::new(
            self.config.clone(),
            self.metrics.clone(),
            options,
            socket,
            input_rx,
            events_tx,
        );
        // Reconnections are spans of the call too.
        tokio::spawn(task.run().with_current_context());
        Ok(TtsStream {
            input: input_tx,
            events: events_rx,
        })
    }
}

fn unavailable(detail: impl Into<String>) -> VoiceError {
    VoiceError::Unavailable {
        vendor: VENDOR.to_owned(),
        detail: detail.into(),
    }
}

fn rejected(detail: impl Into<String>) -> VoiceError {
    VoiceError::Rejected {
        vendor: VENDOR.to_owned(),
        detail: detail.into(),
    }
}

/// The handshake request of section 3.1. A key or version that cannot be a header value is
/// our configuration's fault: `Rejected` before touching the network.
fn handshake_request(config: &CartesiaConfig) -> Result<Request<()>, VoiceError> {
    let url = format!("{}/tts/websocket", config.url.trim_end_matches('/'));
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| rejected(format!("bad url {url}: {e}")))?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", config.api_key))
        .map_err(|_| rejected("the API key is not a valid header value"))?;
    let version = HeaderValue::from_str(&config.version)
        .map_err(|_| rejected("the API version is not a valid header value"))?;
    let headers = request.headers_mut();
    headers.insert("authorization", auth);
    headers.insert("cartesia-version", version);
    Ok(request)
}

/// Opens a socket with the retry policy, every attempt through the breaker: a refused
/// handshake (4xx other than 408/409/429) is `Rejected` at once; 5xx, 429, connection errors
/// and timeouts are retried, then `Unavailable`; an open breaker is `Unavailable` without a
/// connection attempt.
pub(crate) async fn connect(
    config: &CartesiaConfig,
    metrics: Option<&CartesiaMetrics>,
) -> Result<Socket, VoiceError> {
    let request = handshake_request(config)?;
    let result = config
        .retry
        .run(
            |attempt| {
                let request = request.clone();
                async move {
                    let guard = match &config.breaker {
                        Some(breaker) => match breaker.acquire_after_wait().await {
                            Ok(permit) => Some(PermitGuard::new(breaker.clone(), permit)),
                            // Never retry while the breaker is open.
                            Err(_) => {
                                if let Some(m) = metrics {
                                    m.connect("breaker_open");
                                }
                                return Attempt::Done(Err(unavailable(
                                    "the cartesia circuit breaker is open",
                                )));
                            }
                        },
                        None => None,
                    };
                    let outcome = handshake(config, request).await;
                    if let Some(guard) = guard {
                        let elapsed = guard.elapsed();
                        guard.finish(outcome.verdict(elapsed));
                    }
                    if let Some(m) = metrics {
                        m.connect(outcome.label());
                    }
                    if let Handshake::Retry { detail, .. } = &outcome {
                        debug!(attempt, error = %detail, "cartesia handshake failed; may retry");
                    }
                    outcome.into_attempt()
                }
            },
            |d| {
                if let Some(m) = metrics {
                    m.connect("timeout");
                }
                unavailable(format!("no handshake within {} ms", d.as_millis()))
            },
        )
        .await;
    result.map_err(|e| e.into_last())
}

/// What one handshake attempt amounted to.
enum Handshake {
    Open(Box<Socket>),
    /// Refused for good (bad key, bad version, bad URL).
    Refused {
        detail: String,
        /// The vendor answered (a 4xx); `false` when nothing reached it (a bad URL).
        answered: bool,
    },
    /// Worth another attempt.
    Retry {
        detail: String,
        status: Option<u16>,
        after: Option<Duration>,
    },
}

async fn handshake(config: &CartesiaConfig, mut request: Request<()>) -> Handshake {
    // A client span in the call's trace; it ends with the handshake.
    let mut span = ClientSpan::start("GET", "GET", &request.uri().to_string(), VENDOR);
    span.insert(request.headers_mut());
    let connected = tokio::time::timeout(
        config.connect_timeout,
        // Nagle off: a continue of a few words must not wait for a delayed ACK.
        tokio_tungstenite::connect_async_with_config(
            request,
            Some(crate::clients::ws_config()),
            true,
        ),
    )
    .await;
    let error = match connected {
        Ok(Ok((socket, response))) => {
            span.status(response.status().as_u16());
            return Handshake::Open(Box::new(socket));
        }
        Ok(Err(e)) => e,
        Err(_) => {
            span.fail("timeout", "no handshake in time");
            return Handshake::Retry {
                detail: format!(
                    "no handshake within {} ms",
                    config.connect_timeout.as_millis()
                ),
                status: None,
                after: None,
            };
        }
    };
    match &error {
        WsError::Http(response) => span.status(response.status().as_u16()),
        e => span.fail("transport", e.to_string()),
    }
    match error {
        WsError::Http(response) => {
            let status = response.status().as_u16();
            let after = retry::retry_after(response.headers());
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<wire::ErrorBody>(b).ok())
                .and_then(wire::ErrorBody::text)
                .unwrap_or_default();
            let detail = format!("handshake HTTP {status}: {body}");
            if retry::retryable_status(status) {
                Handshake::Retry {
                    detail,
                    status: Some(status),
                    after,
                }
            } else {
                Handshake::Refused {
                    detail,
                    answered: true,
                }
            }
        }
        // A bad URL, or `wss://` without a TLS feature of tokio-tungstenite: configuration.
        WsError::Url(e) => Handshake::Refused {
            detail: format!("cannot connect to {}: {e}", config.url),
            answered: false,
        },
        e => Handshake::Retry {
            detail: format!("connection failed: {e}"),
            status: None,
            after: None,
        },
    }
}

impl Handshake {
    /// How the attempt reads to the breaker: a refusal is the request's fault, a 429 asks to
    /// back off, anything else that is not an open socket is the vendor failing.
    fn verdict(&self, elapsed: Duration) -> CallOutcome {
        match self {
            Handshake::Open(_) | Handshake::Refused { answered: true, .. } => {
                CallOutcome::Success { elapsed }
            }
            Handshake::Refused {
                answered: false, ..
            } => CallOutcome::Cancelled,
            Handshake::Retry {
                status: Some(429),
                after,
                ..
            } => CallOutcome::RateLimited {
                retry_after: *after,
            },
            Handshake::Retry { .. } => CallOutcome::Failure { elapsed },
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Handshake::Open(_) => "ok",
            Handshake::Refused { .. } => "rejected",
            Handshake::Retry {
                status: Some(_), ..
            } => "retryable",
            Handshake::Retry { .. } => "transport",
        }
    }

    fn into_attempt(self) -> Attempt<Socket, VoiceError> {
        match self {
            Handshake::Open(socket) => Attempt::Done(Ok(*socket)),
            Handshake::Refused { detail, .. } => Attempt::Done(Err(rejected(detail))),
            Handshake::Retry { detail, after, .. } => Attempt::Retry {
                after,
                error: unavailable(detail),
            },
        }
    }
}
