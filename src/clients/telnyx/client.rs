//! The Telnyx Call Control v2 client: the engine's [`Telephony`] port over HTTPS
//! (vendor-protocols.md 1.1-1.2).
//!
//! Every command carries `command_id = {call_id}:{seq}` (from the engine), so a retried
//! command is never executed twice; `client_state` carries our call id (base64) so every
//! webhook of the leg names its call. Retries follow [`RetryPolicy`]: 408/409/429/5xx,
//! timeouts and connection errors are retried (honouring `Retry-After` and
//! `x-should-retry`); other 4xx are final. Hanging up a leg that already ended (422, code
//! `90018`) is success.
//!
//! This module never decides anything about a call: it translates commands and errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use iace_actors::breaker::{BreakerHandle, CallOutcome, PermitGuard};
use iace_actors::machine::{CallId, PhoneNumber};
use iace_actors::ports::{DialCommand, LegCommand, LegStatus, Telephony, TelephonyError};
use opentelemetry::KeyValue;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, warn};

use super::wire::{
    AnswerRequest, CallStatusData, Data, DialData, DialRequest, ErrorBody, HangupRequest,
    RejectRequest, StreamParams, StreamingStartRequest, StreamingStopRequest, TransferRequest,
};
use crate::clients::retry::{self, Attempt, RetryPolicy};
use crate::telemetry::ClientSpan;

/// Breaker name of this vendor.
pub const VENDOR: &str = "telnyx";

/// The real Telnyx API.
pub const DEFAULT_API_BASE: &str = "https://api.telnyx.com/v2";

/// Telnyx error code of a command on a call that has already ended.
pub const CALL_ENDED: &str = "90018";

/// Makes the media-stream token of a call (bound to the call; verified by the media endpoint).
pub type StreamTokens = Arc<dyn Fn(CallId) -> String + Send + Sync>;

/// Client settings.
#[derive(Clone)]
pub struct TelnyxConfig {
    /// API base, e.g. `https://api.telnyx.com/v2` (no trailing slash).
    pub api_base: String,
    /// API key (Bearer).
    pub api_key: String,
    /// The Call Control application (connection) outbound calls are placed on.
    pub connection_id: String,
    /// Where Telnyx reaches us: webhooks at `{public_url}/v1/webhooks/telnyx`, media at
    /// `{ws(s) public_url}/v1/media/telnyx`.
    pub public_url: String,
    /// Where Telnyx opens this node's media streams, when not at `public_url`: in a cluster,
    /// the node's own URL (`IACE_NODE_URL`), so that a call's audio reaches the node that
    /// runs the call rather than the load balancer.
    pub media_url: Option<String>,
    /// `answering_machine_detection` of outbound dials (`disabled`, `detect`, ...).
    pub answering_machine_detection: String,
    /// How long a transfer rings the person before giving up.
    pub transfer_timeout_secs: u32,
    /// Retries and timeouts of every request.
    pub retry: RetryPolicy,
    /// Media-stream tokens.
    pub stream_tokens: StreamTokens,
    /// The `telnyx` circuit breaker every attempt goes through (`None`: no breaker).
    pub breaker: Option<BreakerHandle>,
}

impl std::fmt::Debug for TelnyxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the API key.
        f.debug_struct("TelnyxConfig")
            .field("api_base", &self.api_base)
            .field("connection_id", &self.connection_id)
            .field("public_url", &self.public_url)
            .field(
                "answering_machine_detection",
                &self.answering_machine_detection,
            )
            .finish_non_exhaustive()
    }
}

/// Request counters and latencies.
#[derive(Clone)]
pub struct TelnyxMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl TelnyxMetrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "iace_telnyx_requests_total",
                "Telnyx API attempts by operation and outcome (ok, rejected, retryable, transport, timeout)",
            ),
            &["op", "outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "iace_telnyx_request_seconds",
                "Latency of Telnyx API attempts",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["op"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(TelnyxMetrics { requests, latency })
    }
}

/// What one command ended with, before it is mapped to a [`TelephonyError`].
#[derive(Debug, Clone, PartialEq)]
enum CommandError {
    /// An HTTP error answer.
    Http {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// No answer (connect error, reset, body error).
    Transport(String),
    /// The attempt timed out.
    Timeout(Duration),
    /// A 2xx answer we could not read.
    Protocol(String),
    /// The breaker is open: nothing was sent.
    CircuitOpen(Option<chrono::DateTime<chrono::Utc>>),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Http {
                status,
                code,
                message,
            } => match code {
                Some(code) => write!(f, "HTTP {status}, code {code}: {message}"),
                None => write!(f, "HTTP {status}: {message}"),
            },
            CommandError::Transport(m) => write!(f, "no answer: {m}"),
            CommandError::Timeout(d) => write!(f, "no answer within {} ms", d.as_millis()),
            CommandError::Protocol(m) => write!(f, "unreadable answer: {m}"),
            CommandError::CircuitOpen(_) => write!(f, "circuit breaker open"),
        }
    }
}

impl CommandError {
    fn is(&self, status: u16, code: &str) -> bool {
        matches!(self, CommandError::Http { status: s, code: Some(c), .. } if *s == status && c == code)
    }

    fn status(&self) -> Option<u16> {
        match self {
            CommandError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn into_telephony(self) -> TelephonyError {
        match &self {
            CommandError::CircuitOpen(until) => TelephonyError::CircuitOpen {
                vendor: VENDOR.to_owned(),
                until: *until,
            },
            CommandError::Http { status, .. } if !retry::retryable_status(*status) => {
                TelephonyError::Rejected(format!("telnyx: {self}"))
            }
            _ => TelephonyError::Unavailable(format!("telnyx: {self}")),
        }
    }
}

/// The Telnyx adapter.
pub struct TelnyxClient {
    http: reqwest::Client,
    config: TelnyxConfig,
    webhook_url: String,
    stream_url: String,
    metrics: Option<TelnyxMetrics>,
}

impl TelnyxClient {
    /// A client. `metrics` is optional so tests can build many clients.
    pub fn new(config: TelnyxConfig, metrics: Option<TelnyxMetrics>) -> anyhow::Result<Self> {
        let public = config.public_url.trim_end_matches('/').to_owned();
        let ws_of = |url: &str, name: &str| {
            if let Some(rest) = url.strip_prefix("https://") {
                Ok(format!("wss://{rest}"))
            } else if let Some(rest) = url.strip_prefix("http://") {
                Ok(format!("ws://{rest}"))
            } else {
                Err(anyhow::anyhow!(
                    "{name} must start with http:// or https:// (got {url})"
                ))
            }
        };
        ws_of(&public, "IACE_PUBLIC_URL")?;
        let ws = match &config.media_url {
            Some(media) => ws_of(media.trim_end_matches('/'), "IACE_NODE_URL")?,
            None => ws_of(&public, "IACE_PUBLIC_URL")?,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("iace/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(TelnyxClient {
            http,
            webhook_url: format!("{public}/v1/webhooks/telnyx"),
            stream_url: format!("{ws}/v1/media/telnyx"),
            config,
            metrics,
        })
    }

    /// Where Telnyx sends our webhooks.
    pub fn webhook_url(&self) -> &str {
        &self.webhook_url
    }

    /// Where Telnyx opens media streams.
    pub fn stream_url(&self) -> &str {
        &self.stream_url
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.api_base.trim_end_matches('/'))
    }

    fn action_url(&self, leg: &str, action: &str) -> String {
        self.url(&format!("/calls/{}/actions/{action}", urlencode_path(leg)))
    }

    /// One request with the retry policy. `body: None` sends a GET.
    async fn request<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        op: &'static str,
        url: String,
        body: Option<&B>,
    ) -> Result<T, CommandError> {
        let policy = &self.config.retry;
        let result = policy
            .run(
                |attempt| {
                    let url = url.clone();
                    async move {
                        let guard = match &self.config.breaker {
                            Some(breaker) => match breaker.acquire_after_wait().await {
                                Ok(permit) => Some(PermitGuard::new(breaker.clone(), permit)),
                                // Never retry while the breaker is open.
                                Err(rejected) => {
                                    return Attempt::Done(Err(CommandError::CircuitOpen(
                                        rejected.until,
                                    )))
                                }
                            },
                            None => None,
                        };
                        let started = Instant::now();
                        let outcome = self.attempt::<B, T>(op, attempt, &url, body).await;
                        if let Some(guard) = guard {
                            let verdict = verdict(&outcome, guard.elapsed());
                            guard.finish(verdict);
                        }
                        let label = match &outcome {
                            Attempt::Done(Ok(_)) => "ok",
                            Attempt::Done(Err(_)) => "rejected",
                            Attempt::Retry {
                                error: CommandError::Http { .. },
                                ..
                            } => "retryable",
                            Attempt::Retry { .. } => "transport",
                        };
                        if let Some(m) = &self.metrics {
                            m.requests.with_label_values(&[op, label]).inc();
                            m.latency
                                .with_label_values(&[op])
                                .observe(started.elapsed().as_secs_f64());
                        }
                        if let Attempt::Retry { error, after } = &outcome {
                            debug!(op, attempt, error = %error, ?after, "telnyx request failed; may retry");
                        }
                        outcome
                    }
                },
                |d| {
                    if let Some(m) = &self.metrics {
                        m.requests.with_label_values(&[op, "timeout"]).inc();
                    }
                    CommandError::Timeout(d)
                },
            )
            .await;
        result.map_err(|e| e.into_last())
    }

    /// One HTTP attempt: a client span in the trace in scope (the call's).
    async fn attempt<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        op: &'static str,
        attempt: u32,
        url: &str,
        body: Option<&B>,
    ) -> Attempt<T, CommandError> {
        let method = if body.is_some() { "POST" } else { "GET" };
        let mut span = ClientSpan::start(method, method, url, VENDOR);
        span.set(KeyValue::new("iace.telnyx.command", op));
        span.attempt(attempt);
        let builder = match body {
            Some(body) => self.http.request(Method::POST, url).json(body),
            None => self.http.request(Method::GET, url),
        };
        let builder = span.apply(builder);
        let response = match builder.bearer_auth(&self.config.api_key).send().await {
            Ok(r) => r,
            Err(e) => {
                span.failed_request(&e);
                return Attempt::Retry {
                    after: None,
                    error: CommandError::Transport(e.to_string()),
                };
            }
        };
        let status = response.status();
        span.status(status.as_u16());
        let headers = response.headers().clone();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Retry {
                    after: None,
                    error: CommandError::Transport(e.to_string()),
                }
            }
        };
        if status.is_success() {
            return Attempt::Done(
                serde_json::from_slice::<T>(&bytes)
                    .map_err(|e| CommandError::Protocol(e.to_string())),
            );
        }
        let errors = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_default();
        let first = errors.errors.into_iter().next().unwrap_or_default();
        let message = first
            .detail
            .or(first.title)
            .unwrap_or_else(|| status_text(status));
        let error = CommandError::Http {
            status: status.as_u16(),
            code: first.code,
            message,
        };
        let retry = retry::should_retry(&headers)
            .unwrap_or_else(|| retry::retryable_status(status.as_u16()));
        if retry {
            Attempt::Retry {
                after: retry::retry_after(&headers),
                error,
            }
        } else {
            Attempt::Done(Err(error))
        }
    }

    fn stream_params<'a>(&'a self, token: &'a str) -> StreamParams<'a> {
        StreamParams {
            stream_url: &self.stream_url,
            stream_track: "inbound_track",
            stream_codec: "PCMU",
            stream_bidirectional_mode: "rtp",
            stream_bidirectional_codec: "PCMU",
            stream_auth_token: token,
        }
    }

    /// Starts the media stream of an answered leg (when it was not started by dial/answer).
    pub async fn streaming_start(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        let leg = known_leg(&cmd)?;
        let token = (self.config.stream_tokens)(cmd.call_id);
        let state = client_state(cmd.call_id);
        let body = StreamingStartRequest {
            client_state: &state,
            command_id: &cmd.command_id,
            stream: self.stream_params(&token),
        };
        self.action(
            "streaming_start",
            self.action_url(leg, "streaming_start"),
            &body,
        )
        .await
        .map_err(CommandError::into_telephony)
    }

    /// Stops the media stream of a leg.
    pub async fn streaming_stop(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        let leg = known_leg(&cmd)?;
        let state = client_state(cmd.call_id);
        let body = StreamingStopRequest {
            client_state: &state,
            command_id: &cmd.command_id,
        };
        match self
            .action(
                "streaming_stop",
                self.action_url(leg, "streaming_stop"),
                &body,
            )
            .await
        {
            Err(e) if e.is(422, CALL_ENDED) => Ok(()),
            other => other.map_err(CommandError::into_telephony),
        }
    }

    async fn action<B: Serialize + Sync>(
        &self,
        op: &'static str,
        url: String,
        body: &B,
    ) -> Result<(), CommandError> {
        self.request::<B, serde_json::Value>(op, url, Some(body))
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl Telephony for TelnyxClient {
    fn vendor(&self) -> &'static str {
        VENDOR
    }

    async fn dial(&self, cmd: DialCommand) -> Result<String, TelephonyError> {
        let token = (self.config.stream_tokens)(cmd.call_id);
        let state = client_state(cmd.call_id);
        let body = DialRequest {
            connection_id: &self.config.connection_id,
            to: cmd.to.as_str(),
            from: cmd.from.as_str(),
            webhook_url: &self.webhook_url,
            webhook_url_method: "POST",
            client_state: &state,
            command_id: &cmd.command_id,
            timeout_secs: cmd.timeout_secs.clamp(5, 600),
            answering_machine_detection: &self.config.answering_machine_detection,
            stream: self.stream_params(&token),
        };
        let data: Data<DialData> = self
            .request("dial", self.url("/calls"), Some(&body))
            .await
            .map_err(CommandError::into_telephony)?;
        Ok(data.data.call_control_id)
    }

    async fn restart_media(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        // A stream still running towards the previous node goes first (Telnyx runs one
        // stream per leg); a refusal here means there is none.
        let stop = LegCommand {
            command_id: format!("{}:stop", cmd.command_id),
            ..cmd.clone()
        };
        match self.streaming_stop(stop).await {
            Ok(()) | Err(TelephonyError::Rejected(_)) => {}
            Err(e) => return Err(e),
        }
        self.streaming_start(cmd).await
    }

    async fn answer(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        let leg = known_leg(&cmd)?;
        let token = (self.config.stream_tokens)(cmd.call_id);
        let state = client_state(cmd.call_id);
        let body = AnswerRequest {
            client_state: &state,
            command_id: &cmd.command_id,
            webhook_url: &self.webhook_url,
            stream: self.stream_params(&token),
        };
        self.action("answer", self.action_url(leg, "answer"), &body)
            .await
            .map_err(CommandError::into_telephony)
    }

    async fn hangup(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        let Some(leg) = cmd.carrier_call_id.as_deref() else {
            // The dial's answer was lost and no webhook has named the leg yet: there is
            // nothing to address. The engine retries; the leg id arrives with the next
            // webhook of the leg (its client_state names the call).
            return Err(TelephonyError::Unavailable(format!(
                "telnyx: the leg of call {} is not known yet",
                cmd.call_id
            )));
        };
        let state = client_state(cmd.call_id);
        let body = HangupRequest {
            client_state: &state,
            command_id: &cmd.command_id,
        };
        match self
            .action("hangup", self.action_url(leg, "hangup"), &body)
            .await
        {
            Err(e) if e.is(422, CALL_ENDED) => Ok(()),
            Err(e) if e.status() == Some(404) => {
                // Telnyx does not know the leg (long gone): nothing is left to release.
                warn!(call_id = %cmd.call_id, leg, error = %e, "hangup of an unknown leg; treating it as released");
                Ok(())
            }
            other => other.map_err(CommandError::into_telephony),
        }
    }

    async fn transfer(&self, cmd: LegCommand, to: PhoneNumber) -> Result<(), TelephonyError> {
        let leg = known_leg(&cmd)?;
        let state = client_state(cmd.call_id);
        let target = transfer_target_state(cmd.call_id);
        let body = TransferRequest {
            to: to.as_str(),
            client_state: &state,
            target_leg_client_state: &target,
            command_id: &cmd.command_id,
            timeout_secs: self.config.transfer_timeout_secs,
        };
        self.action("transfer", self.action_url(leg, "transfer"), &body)
            .await
            .map_err(CommandError::into_telephony)
    }

    async fn reject(&self, carrier_call_id: &str, command_id: &str) -> Result<(), TelephonyError> {
        let body = RejectRequest {
            cause: "CALL_REJECTED",
            command_id,
        };
        match self
            .action("reject", self.action_url(carrier_call_id, "reject"), &body)
            .await
        {
            Err(e) if e.is(422, CALL_ENDED) => Ok(()),
            other => other.map_err(CommandError::into_telephony),
        }
    }

    async fn status(
        &self,
        _call_id: CallId,
        carrier_call_id: Option<&str>,
    ) -> Result<LegStatus, TelephonyError> {
        let Some(leg) = carrier_call_id else {
            // Telnyx can only be asked by leg id.
            return Ok(LegStatus::Unknown);
        };
        let url = self.url(&format!("/calls/{}", urlencode_path(leg)));
        match self
            .request::<(), Data<CallStatusData>>("status", url, None)
            .await
        {
            // Telnyx says only alive or not; "ringing" is the fact that never moves an
            // answered call backwards, and the answer itself comes by webhook.
            Ok(d) if d.data.is_alive => Ok(LegStatus::Ringing),
            Ok(_) => Ok(LegStatus::Ended(
                iace_actors::machine::HangupCause::Unspecified,
            )),
            Err(e) if e.status() == Some(404) => Ok(LegStatus::Unknown),
            Err(e) => Err(e.into_telephony()),
        }
    }
}

/// How one attempt reads to the breaker: a 4xx is the request's fault, a 429 asks to back
/// off, anything else that is not an answer is the vendor failing.
fn verdict<T>(outcome: &Attempt<T, CommandError>, elapsed: Duration) -> CallOutcome {
    match outcome {
        Attempt::Done(Ok(_)) | Attempt::Done(Err(CommandError::Http { .. })) => {
            CallOutcome::Success { elapsed }
        }
        Attempt::Done(Err(_)) => CallOutcome::Failure { elapsed },
        Attempt::Retry {
            error: CommandError::Http { status: 429, .. },
            after,
        } => CallOutcome::RateLimited {
            retry_after: *after,
        },
        Attempt::Retry { .. } => CallOutcome::Failure { elapsed },
    }
}

/// `client_state`: our call id, base64 (Telnyx requires base64 text).
pub fn client_state(call_id: CallId) -> String {
    base64::engine::general_purpose::STANDARD.encode(call_id.to_string())
}

/// `client_state` of the leg a transfer creates: names the call, but as a transfer target,
/// so that leg's events (its ringing, its own hangup) are recorded, not applied to the call.
pub fn transfer_target_state(call_id: CallId) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("transfer:{call_id}"))
}

/// What a `client_state` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Our call's own leg.
    Call(CallId),
    /// A leg a transfer of the call created.
    TransferTarget(CallId),
}

/// Reads a `client_state` we set; `None` for anything else.
pub fn parse_client_state(state: &str) -> Option<ClientState> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(state.trim())
        .ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    match text.strip_prefix("transfer:") {
        Some(id) => id.parse().ok().map(ClientState::TransferTarget),
        None => text.parse().ok().map(ClientState::Call),
    }
}

/// Our call id from a `client_state` of the call's own leg.
pub fn call_id_from_client_state(state: &str) -> Option<CallId> {
    match parse_client_state(state)? {
        ClientState::Call(id) => Some(id),
        ClientState::TransferTarget(_) => None,
    }
}

fn known_leg(cmd: &LegCommand) -> Result<&str, TelephonyError> {
    cmd.carrier_call_id.as_deref().ok_or_else(|| {
        TelephonyError::Unavailable(format!(
            "telnyx: the leg of call {} is not known yet",
            cmd.call_id
        ))
    })
}

fn status_text(status: StatusCode) -> String {
    status
        .canonical_reason()
        .map_or_else(|| status.as_str().to_owned(), str::to_owned)
}

/// Call control ids are opaque (`v3:...`): escape what a path segment cannot carry.
fn urlencode_path(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_state_round_trips() {
        let id = uuid::Uuid::new_v4();
        let state = client_state(id);
        assert_eq!(call_id_from_client_state(&state), Some(id));
        assert_eq!(call_id_from_client_state("aGF2ZSBhIG5pY2UgZGF5ID1d"), None);
        assert_eq!(call_id_from_client_state("not base64!"), None);
        assert_eq!(
            parse_client_state(&transfer_target_state(id)),
            Some(ClientState::TransferTarget(id))
        );
        assert_eq!(call_id_from_client_state(&transfer_target_state(id)), None);
        assert_eq!(call_id_from_client_state(""), None);
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(urlencode_path("v3:abc-DEF_1.2~"), "v3:abc-DEF_1.2~");
        assert_eq!(urlencode_path("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn errors_map_to_rejected_or_unavailable() {
        let e = |status| CommandError::Http {
            status,
            code: Some("10011".into()),
            message: "x".into(),
        };
        assert!(matches!(
            e(422).into_telephony(),
            TelephonyError::Rejected(_)
        ));
        assert!(matches!(
            e(429).into_telephony(),
            TelephonyError::Unavailable(_)
        ));
        assert!(matches!(
            e(503).into_telephony(),
            TelephonyError::Unavailable(_)
        ));
        assert!(matches!(
            CommandError::Timeout(Duration::from_secs(1)).into_telephony(),
            TelephonyError::Unavailable(_)
        ));
        assert!(CommandError::Http {
            status: 422,
            code: Some(CALL_ENDED.into()),
            message: "ended".into()
        }
        .is(422, CALL_ENDED));
    }
}
