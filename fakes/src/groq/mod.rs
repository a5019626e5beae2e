//! A wire-level fake of Groq chat completions, the OpenAI-compatible
//! `POST /openai/v1/chat/completions` (shared/docs/vendor-protocols.md section 4), on real
//! sockets and real time.
//!
//! It exists so that IACE's real LLM client (reqwest, SSE parsing, retries, barge-in
//! cancellation) can be exercised without Groq: in integration tests, under `iace-dev` and in
//! load tests that measure time-to-first-audio. It speaks the wire exactly — Bearer auth, Groq
//! error bodies, rate-limit headers on every response, `chat.completion.chunk` SSE paced word by
//! word with a `data: [DONE]` terminator, `chat.completion` bodies, tool calls in deltas — and
//! answers like a (very small) model (see the private `reply` module):
//!
//! * replies queued with [`FakeGroq::push_reply`] are used first, in order ([`Reply`]), by
//!   every request except JSON-mode and structured-output ones (classifications such as
//!   per-turn sentiment and post-call analyses, which a voice agent sends alongside its
//!   conversation);
//! * otherwise a rule-based responder answers: a configured trigger phrase in the
//!   last user message calls the matching offered tool ([`ToolTrigger`]), JSON mode
//!   (`response_format` `json_object`) or a system prompt about "sentiment" gets
//!   `{"score","label"}`, anything else gets a polite echo.
//!
//! Structured outputs (shared/docs/vendor-protocols.md section 11) are honoured and validated:
//! `response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict"?}}`
//! needs a `name` of 1 to 64 letters, digits, `_` or `-` and an object `schema`; `strict: true`
//! is accepted only on [`FakeGroqConfig::strict_models`] and only for schemas whose every object
//! lists all its properties in `required` and sets `additionalProperties: false`. Anything else
//! answers 400 `invalid_request_error`. Such a request is answered, in order, from its own
//! queue ([`FakeGroq::push_structured`], [`StructuredAnswer`]), which may script invalid JSON or
//! JSON that breaks the schema; with the queue empty the answer is a small instance generated
//! from the schema that satisfies it. The two queues never mix: structured-output requests
//! leave [`Reply`]s alone and conversation requests leave structured answers alone.
//!
//! Faults are injected per request: HTTP errors with Groq bodies and `retry-after`
//! ([`FakeGroq::fail_next`]), an error line in the middle of a stream
//! ([`FakeGroq::error_mid_stream_next`]), and a response that sends its headers and then nothing
//! ([`FakeGroq::stall_next`]). Clients that drop a stream are recorded as `cancelled`.
//!
//! It must not use tokio's paused clock: pacing is wall-clock on real sockets, so it cannot run
//! inside the deterministic simulation of `iace-sim`'s seeded runs. Nothing in it is seeded;
//! ids are random v4 UUIDs. Every request is kept in memory for inspection, so a long-running
//! `iace-dev` session grows without bound (by design: tests want the full history).

mod api;
mod ratelimit;
mod reply;
mod state;
mod stream;

use crate::fake::Served;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use self::state::{InjectedFailure, Shared};

/// How the fake behaves. [`Default`] gives test values.
#[derive(Debug, Clone)]
pub struct FakeGroqConfig {
    /// Requests must carry `Authorization: Bearer <api_key>`; anything else gets 401
    /// `invalid_api_key`. Real keys start `gsk_`.
    pub api_key: String,
    /// Models that exist; any other `model` gets 404 `model_not_found`.
    pub models: Vec<String>,
    /// Models that accept `response_format` `json_schema` with `strict: true` (constrained
    /// decoding); on the others such a request gets 400. Best-effort `json_schema` (strict
    /// absent or false) works on every model.
    pub strict_models: Vec<String>,
    /// Time from receiving a request to the first content token (the role chunk goes out
    /// together with it).
    pub ttft: Duration,
    /// Delay between consecutive deltas (content tokens and tool-call fragments).
    pub inter_token: Duration,
    /// Phrases in the last user message that make the default responder call a tool.
    pub tool_triggers: Vec<ToolTrigger>,
    /// How tool calls are cut into deltas when a [`Reply`] does not say.
    pub tool_call_chunking: ToolCallChunking,
    /// Reported as `x-ratelimit-limit-requests` (requests per day). Not enforced: inject 429s
    /// with [`FakeGroq::fail_next`].
    pub limit_requests: u32,
    /// Reported as `x-ratelimit-limit-tokens` (tokens per minute). Not enforced either.
    pub limit_tokens: u32,
}

impl Default for FakeGroqConfig {
    fn default() -> Self {
        FakeGroqConfig {
            api_key: "gsk_test_key".to_owned(),
            models: vec![
                "llama-3.3-70b-versatile".to_owned(),
                "llama-3.1-8b-instant".to_owned(),
                "openai/gpt-oss-20b".to_owned(),
                "openai/gpt-oss-120b".to_owned(),
            ],
            strict_models: vec![
                "openai/gpt-oss-20b".to_owned(),
                "openai/gpt-oss-120b".to_owned(),
            ],
            ttft: Duration::from_millis(150),
            inter_token: Duration::from_millis(15),
            tool_triggers: vec![
                ToolTrigger::new(
                    "human",
                    "transfer_to_human",
                    Value::Object(Default::default()),
                ),
                ToolTrigger::new("goodbye", "end_call", Value::Object(Default::default())),
            ],
            tool_call_chunking: ToolCallChunking::Whole,
            limit_requests: 14_400,
            limit_tokens: 6_000,
        }
    }
}

/// "If the last user message contains `phrase` (case-insensitive) and the request offers a
/// tool named `tool`, call it with `arguments`." Used only by the default responder, i.e. when
/// no scripted [`Reply`] is queued.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolTrigger {
    /// Substring looked for in the lowercased last user message.
    pub phrase: String,
    /// Function name to call; must be among the request's `tools`.
    pub tool: String,
    /// The call's arguments (serialised into the `arguments` string).
    pub arguments: Value,
}

impl ToolTrigger {
    /// A trigger; `phrase` is lowercased so matching is case-insensitive.
    pub fn new(phrase: &str, tool: &str, arguments: Value) -> Self {
        ToolTrigger {
            phrase: phrase.to_lowercase(),
            tool: tool.to_owned(),
            arguments,
        }
    }
}

/// How a tool call travels in a stream. Section 4 says Groq commonly sends each call whole in
/// one delta but that this is [UNVERIFIED] and clients must accumulate by `index` as OpenAI
/// splits `arguments`, so both are available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolCallChunking {
    /// One delta per call carrying `index`, `id`, `type`, `function.name` and the complete
    /// `function.arguments`.
    #[default]
    Whole,
    /// The OpenAI way: a first delta with `index`, `id`, `type`, `function.name` and
    /// `arguments: ""`, then up to `fragments` deltas with only `index` and a piece of
    /// `function.arguments` (fewer when the arguments are shorter than `fragments` chars).
    Split {
        /// How many pieces `arguments` is cut into (at least 1).
        fragments: usize,
    },
}

/// One scripted tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// Function name.
    pub name: String,
    /// The `arguments` string exactly as sent; normally JSON, but a test may script garbage.
    pub arguments: String,
}

impl ToolCall {
    /// A call whose arguments are `arguments` serialised as JSON.
    pub fn new(name: &str, arguments: &Value) -> Self {
        ToolCall {
            name: name.to_owned(),
            arguments: arguments.to_string(),
        }
    }

    /// A call whose `arguments` string is sent verbatim (e.g. to test invalid JSON handling).
    pub fn raw(name: &str, arguments: &str) -> Self {
        ToolCall {
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        }
    }
}

/// A scripted answer: text, tool calls, or both (text first, as a model that says "One moment"
/// and then calls a tool). Consumed by the next conversation request that gets an answer (not
/// by JSON-mode or structured-output requests).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// Assistant text; streamed as one token per word (with its leading whitespace).
    pub content: Option<String>,
    /// Tool calls after the text; any makes `finish_reason` `tool_calls`.
    pub tool_calls: Vec<ToolCall>,
    /// Overrides [`FakeGroqConfig::tool_call_chunking`] for this reply.
    pub chunking: Option<ToolCallChunking>,
}

impl Reply {
    /// A text-only reply.
    pub fn text(content: &str) -> Self {
        Reply {
            content: Some(content.to_owned()),
            ..Reply::default()
        }
    }

    /// A reply that only calls `name` with `arguments`.
    pub fn tool_call(name: &str, arguments: &Value) -> Self {
        Reply {
            tool_calls: vec![ToolCall::new(name, arguments)],
            ..Reply::default()
        }
    }

    /// Adds one more tool call.
    pub fn with_tool_call(mut self, call: ToolCall) -> Self {
        self.tool_calls.push(call);
        self
    }

    /// Sends this reply's tool calls as `chunking` says.
    pub fn chunked(mut self, chunking: ToolCallChunking) -> Self {
        self.chunking = Some(chunking);
        self
    }
}

/// A scripted answer to a structured-output request (`response_format` `json_schema`),
/// queued with [`FakeGroq::push_structured`]. It becomes the assistant message's `content`
/// exactly, whatever the request's schema says: the fake does not check scripted answers, so
/// tests can give a client output it must reject.
#[derive(Debug, Clone, PartialEq)]
pub enum StructuredAnswer {
    /// This value serialised as compact JSON.
    Json(Value),
    /// This text verbatim, e.g. invalid JSON or JSON that breaks the schema. An empty text is
    /// sent as `content: null`, as for any answer without content.
    Raw(String),
}

impl StructuredAnswer {
    /// The `content` text this answer is sent as.
    pub fn content(&self) -> String {
        match self {
            StructuredAnswer::Json(v) => v.to_string(),
            StructuredAnswer::Raw(text) => text.clone(),
        }
    }
}

/// A fault the fake injected into a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// Answered with this HTTP status and a Groq error body ([`FakeGroq::fail_next`]).
    Status(u16),
    /// A `data: {"error":..}` line replaced the rest of the stream
    /// ([`FakeGroq::error_mid_stream_next`]).
    MidStreamError,
    /// Headers sent, then nothing ([`FakeGroq::stall_next`]).
    Stall,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplySource {
    /// The head of the [`FakeGroq::push_reply`] queue.
    Scripted,
    /// A [`ToolTrigger`] phrase matched.
    ToolTrigger,
    /// `tool_choice` was `required` or named a function, so a tool had to be called.
    ForcedTool,
    /// JSON mode or a sentiment system prompt: `{"score","label"}`.
    Sentiment,
    /// The polite echo of the last user message.
    Echo,
    /// A structured-output request took the head of the [`FakeGroq::push_structured`] queue.
    Structured,
    /// A structured-output request found that queue empty and got an instance generated from
    /// its schema.
    SchemaInstance,
}

/// One `chat/completions` request, as received and answered.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The `x_groq.id` / `x-request-id` of the answer (`req_...`).
    pub request_id: String,
    /// The trace headers the request came with.
    pub trace: crate::TraceHeaders,
    /// The parsed JSON body (`Null` when it was not JSON).
    pub body: Value,
    /// `model` of the body, if it was a string.
    pub model: Option<String>,
    /// The body asked for `"stream": true`.
    pub stream: bool,
    /// HTTP status answered (200 for every stream, including one that errors mid-way).
    pub status: u16,
    /// The fault injected, if any.
    pub fault: Option<InjectedFault>,
    /// Where the answer came from; `None` when there was none (error status or stall).
    pub source: Option<ReplySource>,
    /// Content tokens written so far (for a non-streaming answer: the tokens in the body).
    pub tokens_sent: u32,
    /// `finish_reason` of the answer, once it was sent.
    pub finish_reason: Option<String>,
    /// The answer went out in full (a stream up to `data: [DONE]`, or the mid-stream error).
    pub completed: bool,
    /// The client went away before the answer was complete.
    pub cancelled: bool,
    /// When the request arrived.
    pub received_at: Instant,
    /// When the first content token went out, if one did.
    pub first_token_at: Option<Instant>,
    /// When the answer was completed or found cancelled.
    pub finished_at: Option<Instant>,
}

/// A running fake Groq on `127.0.0.1`.
///
/// Dropping it without [`FakeGroq::shutdown`] also stops every stream it is pacing (they watch
/// the same stop signal, which closes when the sender drops), just without waiting for them.
pub struct FakeGroq {
    shared: Arc<Shared>,
    served: Served,
}

impl FakeGroq {
    /// Binds `127.0.0.1:0` and serves `/openai/v1/chat/completions` and `/openai/v1/models`.
    pub async fn start(config: FakeGroqConfig) -> io::Result<FakeGroq> {
        let (shared, served) = Served::start(|stop| {
            let shared = Arc::new(Shared::new(config, stop));
            let app = api::router(shared.clone());
            Ok((shared, app))
        })
        .await?;
        Ok(FakeGroq { shared, served })
    }

    /// The socket the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://127.0.0.1:PORT/openai/v1`, what the Groq SDK calls `base_url`; clients append
    /// `/chat/completions`.
    pub fn base_url(&self) -> String {
        format!("http://{}/openai/v1", self.served.addr())
    }

    /// The key requests must present as `Authorization: Bearer <key>`.
    pub fn api_key(&self) -> &str {
        &self.shared.cfg.api_key
    }

    /// Queues a scripted answer. Requests take them in arrival order, except JSON-mode
    /// (`json_object`) and structured-output (`json_schema`) ones, which never do; requests
    /// that fail auth, validation or an injected fault (including a mid-stream error) do not
    /// take one.
    pub fn push_reply(&self, reply: Reply) {
        self.shared.lock().replies.push_back(reply);
    }

    /// Scripted answers not yet taken.
    pub fn pending_replies(&self) -> usize {
        self.shared.lock().replies.len()
    }

    /// Queues a scripted answer for structured-output requests (`response_format`
    /// `json_schema`), separate from the [`FakeGroq::push_reply`] queue: such requests take
    /// these in arrival order and never take a [`Reply`], and no other request takes these.
    /// Requests that fail auth, validation or an injected fault (including a mid-stream error)
    /// do not take one.
    pub fn push_structured(&self, answer: StructuredAnswer) {
        self.shared.lock().structured.push_back(answer);
    }

    /// Scripted structured-output answers not yet taken.
    pub fn pending_structured(&self) -> usize {
        self.shared.lock().structured.len()
    }

    /// The next `n` authorised requests answer `status` with a Groq error body, before any
    /// validation, plus `retry-after` in whole seconds (rounded up) if given. 429 gets the
    /// documented `rate_limit_exceeded` body; 498, 5xx and others get bodies of their kind.
    pub fn fail_next(&self, n: u32, status: u16, retry_after: Option<Duration>) {
        self.shared.lock().fail = (n > 0).then_some(InjectedFailure {
            remaining: n,
            status,
            retry_after,
        });
    }

    /// The next valid streaming request sends about half of its content tokens, then a
    /// `data: {"error":{..}}` line, and closes without `[DONE]`. Non-streaming requests do not
    /// consume it. Calls add up.
    pub fn error_mid_stream_next(&self) {
        self.shared.lock().mid_stream_errors += 1;
    }

    /// The next valid request (streaming or not) gets status 200 and its headers, then nothing
    /// until the client gives up (recorded as cancelled) or the fake stops. Calls add up.
    pub fn stall_next(&self) {
        self.shared.lock().stalls += 1;
    }

    /// Changes [`FakeGroqConfig::ttft`] and [`FakeGroqConfig::inter_token`] for requests
    /// arriving from now on.
    pub fn set_latency(&self, ttft: Duration, inter_token: Duration) {
        let mut st = self.shared.lock();
        st.ttft = ttft;
        st.inter_token = inter_token;
    }

    /// Classifications (JSON-mode requests, `response_format` `json_object`; not
    /// structured-output ones) arriving from now on answer after `latency`
    /// (`None`: like every request, after the configured time to first token); replies keep
    /// their own pace. A model under load answers its classifications late this way.
    pub fn set_classify_latency(&self, latency: Option<Duration>) {
        self.shared.lock().classify_latency = latency;
    }

    /// Every `chat/completions` request received, in arrival order (in-flight ones included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Polls `f` every 10 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_for<F: Fn(&FakeGroq) -> bool>(&self, timeout: Duration, f: F) -> bool {
        crate::fake::poll_until(timeout, || f(self)).await
    }

    /// Stops the server and every stream. Streams end at once (without `[DONE]`); other
    /// in-flight requests get up to 2 s to finish.
    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}

use crate::fake::spawn_until_stopped;
