//! Groq chat completions (OpenAI-compatible, vendor-protocols.md section 4): streaming replies
//! for the conversation, one-shot JSON completions for classification (caller sentiment).
//!
//! Replies and classifications are two operation classes with their own breaker and retry
//! policy (a bulkhead, as resilience4j and Envoy keep per route): replies go through the
//! `groq` breaker, classifications through `groq_classify`. A classification is optional (the
//! caller's sentiment has a local fallback) and runs under a tight budget; when Groq is slow
//! under load, its budget misses open `groq_classify` and shed that optional traffic, and never
//! the breaker the conversation's replies depend on. Retries only happen before a reply starts
//! (a stream that broke halfway is the caller's to handle: the words already spoken cannot be
//! taken back). A streamed reply is judged by its time to the first token, the latency a
//! caller hears. [`GroqLlm`] serves the engine's chat-model port with it.

mod llm;
mod structured;
mod wire;

pub use structured::{strict_compatible, GroqAnalysis};

use std::time::Duration;

use async_trait::async_trait;
use iace_actors::breaker::{BreakerHandle, CallOutcome, PermitGuard};
use iace_actors::ports::sentiment::{Sentiment, SentimentError, SentimentLabel, SentimentScorer};
use reqwest::StatusCode;
use tokio::sync::mpsc;

pub use llm::GroqLlm;
use opentelemetry::KeyValue;
use wire::{ChatRequest, Chunk, Completion, ErrorBody, FunctionSpec, ResponseFormat, Tool, Usage};
pub use wire::{FunctionCall, Message, ToolCallOut};

use crate::clients::retry::{self, Attempt, RetryPolicy};
use crate::telemetry::ClientSpan;

/// The real API.
pub const DEFAULT_API_BASE: &str = "https://api.groq.com/openai/v1";
/// Breaker name of this vendor's replies (the conversation's reply path).
pub const VENDOR: &str = "groq";
/// Breaker name of this vendor's classifications (caller sentiment): optional work, kept
/// apart so its failures and budget misses never fail the replies.
pub const CLASSIFY_BREAKER: &str = "groq_classify";

/// Client settings.
#[derive(Clone)]
pub struct GroqConfig {
    /// API base (no trailing slash); the fake's URL in tests and dev.
    pub api_base: String,
    /// `gsk_...` key.
    pub api_key: String,
    /// Model of the conversation.
    pub model: String,
    /// Model of classifications (small and fast).
    pub classify_model: String,
    /// Retries and timeouts of a reply's request head.
    pub retry: RetryPolicy,
    /// The `groq` breaker (replies).
    pub breaker: Option<BreakerHandle>,
    /// Retries and timeouts of a classification (bounded by its caller's budget).
    pub classify_retry: RetryPolicy,
    /// The `groq_classify` breaker (classifications).
    pub classify_breaker: Option<BreakerHandle>,
}

impl std::fmt::Debug for GroqConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("GroqConfig")
            .field("api_base", &self.api_base)
            .field("model", &self.model)
            .field("classify_model", &self.classify_model)
            .finish_non_exhaustive()
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GroqError {
    /// The request was refused (4xx): retrying will not help.
    #[error("groq refused the request: {0}")]
    Rejected(String),
    /// Groq failed, timed out, rate-limited us, or its breaker is open.
    #[error("groq unavailable: {0}")]
    Unavailable(String),
    /// The stream broke after it started.
    #[error("groq stream failed: {0}")]
    Stream(String),
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Function name.
    pub name: String,
    /// What it does (the model reads this).
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: serde_json::Value,
}

/// One piece of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyEvent {
    /// Spoken text, as it arrives.
    Text(String),
    /// A complete tool call (fragments accumulated by index).
    ToolCall {
        /// The call id (to answer with a `tool` message).
        id: String,
        /// Function name.
        name: String,
        /// Arguments, JSON text.
        arguments: String,
    },
    /// The reply ended.
    Done {
        /// `stop`, `length`, `tool_calls`, ...
        finish_reason: String,
    },
}

/// The Groq client.
pub struct GroqClient {
    http: reqwest::Client,
    config: GroqConfig,
}

impl GroqClient {
    /// A client.
    pub fn new(config: GroqConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!("iace/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(GroqClient { http, config })
    }

    /// Streams a reply: events arrive on the returned channel as Groq produces them (text
    /// first, tool calls once complete, then `Done`); a stream that breaks ends with an
    /// `Err`. Dropping the receiver cancels the request at once (the connection is closed
    /// even while Groq is silent) and tells the breaker nothing about Groq.
    pub async fn stream_reply(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<mpsc::Receiver<Result<ReplyEvent, GroqError>>, GroqError> {
        let tools = wire_tools(tools);
        let body = ChatRequest {
            model: &self.config.model,
            messages,
            stream: true,
            temperature: Some(0.4),
            max_completion_tokens: Some(400),
            tools: &tools,
            response_format: None,
        };
        let (response, guard, span) = self
            .send(&body, &self.config.retry, self.config.breaker.as_ref())
            .await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(read_stream(response, guard, span, tx));
        Ok(rx)
    }

    /// A one-shot completion whose answer is a JSON object, with the classification model,
    /// retry policy and breaker (`groq_classify`). Dropped unfinished (its caller's budget
    /// ran out), the attempt counts as a failure on `groq_classify` only: an answer later than
    /// the budget is as useless as none, and opening that breaker stops sending optional work
    /// to a vendor that is already too slow for it.
    pub async fn complete_json(
        &self,
        messages: &[Message],
    ) -> Result<serde_json::Value, GroqError> {
        let body = ChatRequest {
            model: &self.config.classify_model,
            messages,
            stream: false,
            temperature: Some(0.0),
            max_completion_tokens: Some(100),
            tools: &[],
            response_format: Some(ResponseFormat {
                kind: "json_object",
                json_schema: None,
            }),
        };
        let (response, guard, mut span) = self
            .send(
                &body,
                &self.config.classify_retry,
                self.config.classify_breaker.as_ref(),
            )
            .await?;
        let bytes = response.bytes().await;
        let completion = bytes
            .map_err(|e| GroqError::Stream(e.to_string()))
            .and_then(|b| {
                serde_json::from_slice::<Completion>(&b)
                    .map_err(|e| GroqError::Stream(e.to_string()))
            });
        match &completion {
            Ok(c) => record_usage(&mut span, c.usage),
            Err(e) => span.fail("response", e.to_string()),
        }
        let elapsed = guard.as_ref().map(PermitGuard::elapsed);
        if let (Some(guard), Some(elapsed)) = (guard, elapsed) {
            guard.finish(match &completion {
                Ok(_) => CallOutcome::Success { elapsed },
                Err(_) => CallOutcome::Failure { elapsed },
            });
        }
        let text = completion?
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| GroqError::Stream("the completion has no content".into()))?;
        serde_json::from_str(&text)
            .map_err(|e| GroqError::Stream(format!("the completion is not JSON: {e}")))
    }

    /// Sends a request until a reply starts (2xx head) or the policy gives up. The permit of
    /// the successful attempt comes back with it, to be judged once the reply is read.
    async fn send(
        &self,
        body: &ChatRequest<'_>,
        policy: &RetryPolicy,
        breaker: Option<&BreakerHandle>,
    ) -> Result<(reqwest::Response, Option<PermitGuard>, ClientSpan), GroqError> {
        let url = format!(
            "{}/chat/completions",
            self.config.api_base.trim_end_matches('/')
        );
        let result = policy
            .run(
                |attempt| {
                    let url = url.clone();
                    async move {
                        let mut span = model_span(&url, body.model, attempt);
                        let guard = match breaker {
                            Some(b) => match b.acquire_after_wait().await {
                                Ok(permit) => Some(PermitGuard::new(b.clone(), permit)),
                                Err(_) => {
                                    return Attempt::Done(Err(GroqError::Unavailable(format!(
                                        "the {} circuit breaker is open",
                                        b.vendor()
                                    ))))
                                }
                            },
                            None => None,
                        };
                        let sent = span
                            .apply(self.http.post(&url))
                            .bearer_auth(&self.config.api_key)
                            .json(body)
                            .send()
                            .await;
                        let response = match sent {
                            Ok(r) => r,
                            Err(e) => {
                                span.failed_request(&e);
                                // Dropping the guard records the failure.
                                drop(guard);
                                return Attempt::Retry {
                                    after: None,
                                    error: GroqError::Unavailable(e.to_string()),
                                };
                            }
                        };
                        let status = response.status();
                        span.status(status.as_u16());
                        if status.is_success() {
                            return Attempt::Done(Ok((response, guard, span)));
                        }
                        let headers = response.headers().clone();
                        let after = retry::retry_after(&headers);
                        let text = response.text().await.unwrap_or_default();
                        let detail = serde_json::from_str::<ErrorBody>(&text)
                            .ok()
                            .and_then(|b| b.error)
                            .and_then(|e| e.message)
                            .unwrap_or(text);
                        let message = format!("HTTP {}: {detail}", status.as_u16());
                        let retryable = retry::should_retry(&headers).unwrap_or(
                            retry::retryable_status(status.as_u16()) || status.as_u16() == 498,
                        );
                        if let Some(guard) = guard {
                            let elapsed = guard.elapsed();
                            guard.finish(if status == StatusCode::TOO_MANY_REQUESTS {
                                CallOutcome::RateLimited { retry_after: after }
                            } else if retryable {
                                CallOutcome::Failure { elapsed }
                            } else {
                                CallOutcome::Success { elapsed }
                            });
                        }
                        if retryable {
                            Attempt::Retry {
                                after,
                                error: GroqError::Unavailable(message),
                            }
                        } else {
                            Attempt::Done(Err(GroqError::Rejected(message)))
                        }
                    }
                },
                |d| GroqError::Unavailable(format!("no answer within {} ms", d.as_millis())),
            )
            .await;
        result.map_err(|e| e.into_last())
    }
}

fn wire_tools(tools: &[ToolSpec]) -> Vec<Tool> {
    tools
        .iter()
        .map(|t| Tool {
            kind: "function",
            function: FunctionSpec {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            },
        })
        .collect()
}

/// Reads the SSE stream (`data: <json>` events, `data: [DONE]` at the end) into events.
///
/// Returns as soon as the receiver is gone, also while Groq is silent (before the first token
/// or in a stall): dropping `response` closes the connection, which is how a request is
/// cancelled. A cancelled reply is [`CallOutcome::Cancelled`] to the breaker, since the caller
/// (a barge-in) and not Groq ended it.
/// The span of one request to the model (HTTP client and `gen_ai` conventions).
fn model_span(url: &str, model: &str, attempt: u32) -> ClientSpan {
    let mut span = ClientSpan::start(format!("chat {model}"), "POST", url, VENDOR);
    span.set(KeyValue::new("gen_ai.operation.name", "chat"));
    span.set(KeyValue::new("gen_ai.provider.name", VENDOR));
    span.set(KeyValue::new("gen_ai.system", VENDOR));
    span.set(KeyValue::new("gen_ai.request.model", model.to_owned()));
    span.attempt(attempt);
    span
}

/// Token counts on the model's span.
fn record_usage(span: &mut ClientSpan, usage: Option<Usage>) {
    let Some(usage) = usage else { return };
    if let Some(n) = usage.prompt_tokens {
        span.set(KeyValue::new("gen_ai.usage.input_tokens", n as i64));
    }
    if let Some(n) = usage.completion_tokens {
        span.set(KeyValue::new("gen_ai.usage.output_tokens", n as i64));
    }
}

async fn read_stream(
    mut response: reqwest::Response,
    mut guard: Option<PermitGuard>,
    mut span: ClientSpan,
    tx: mpsc::Sender<Result<ReplyEvent, GroqError>>,
) {
    let mut first_token = false;
    let mut buffer = String::new();
    // Tool calls by index: (id, name, arguments so far).
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish: Option<String> = None;
    let fail = |guard: &mut Option<PermitGuard>| {
        if let Some(g) = guard.take() {
            let elapsed = g.elapsed();
            g.finish(CallOutcome::Failure { elapsed });
        }
    };
    let cancel = |guard: &mut Option<PermitGuard>| {
        if let Some(g) = guard.take() {
            g.finish(CallOutcome::Cancelled);
        }
    };
    loop {
        let read = tokio::select! {
            biased;
            () = tx.closed() => {
                cancel(&mut guard);
                span.set(KeyValue::new("iace.cancelled", true));
                return;
            }
            read = response.chunk() => read,
        };
        let chunk = match read {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                fail(&mut guard);
                span.fail("stream", "the stream ended without [DONE]");
                let _ = tx
                    .send(Err(GroqError::Stream(
                        "the stream ended without [DONE]".into(),
                    )))
                    .await;
                return;
            }
            Err(e) => {
                fail(&mut guard);
                span.fail("stream", e.to_string());
                let _ = tx.send(Err(GroqError::Stream(e.to_string()))).await;
                return;
            }
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    // Groq delivered the whole reply, whatever the receiver does with it now.
                    if let Some(g) = guard.take() {
                        let elapsed = g.elapsed();
                        g.finish(CallOutcome::Success { elapsed });
                    }
                    let reason = finish.clone().unwrap_or_else(|| "stop".into());
                    span.set(KeyValue::new(
                        "gen_ai.response.finish_reasons",
                        opentelemetry::Value::Array(
                            vec![opentelemetry::StringValue::from(reason)].into(),
                        ),
                    ));
                    for (id, name, arguments) in calls.drain(..) {
                        if tx
                            .send(Ok(ReplyEvent::ToolCall {
                                id,
                                name,
                                arguments,
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    let _ = tx
                        .send(Ok(ReplyEvent::Done {
                            finish_reason: finish.take().unwrap_or_else(|| "stop".into()),
                        }))
                        .await;
                    return;
                }
                let parsed: Chunk = match serde_json::from_str(data) {
                    Ok(c) => c,
                    Err(e) => {
                        fail(&mut guard);
                        span.fail("stream", format!("unreadable chunk: {e}"));
                        let _ = tx
                            .send(Err(GroqError::Stream(format!("unreadable chunk: {e}"))))
                            .await;
                        return;
                    }
                };
                if let Some(x) = &parsed.x_groq {
                    if let Some(id) = &x.id {
                        span.set(KeyValue::new("gen_ai.response.id", id.clone()));
                    }
                }
                record_usage(
                    &mut span,
                    parsed
                        .usage
                        .or(parsed.x_groq.as_ref().and_then(|x| x.usage)),
                );
                if let Some(error) = parsed.error {
                    fail(&mut guard);
                    span.fail("stream", "error in stream");
                    let _ = tx
                        .send(Err(GroqError::Stream(
                            error.message.unwrap_or_else(|| "error in stream".into()),
                        )))
                        .await;
                    return;
                }
                for choice in parsed.choices {
                    if let Some(reason) = choice.finish_reason {
                        finish = Some(reason);
                    }
                    if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                        if !first_token {
                            first_token = true;
                            span.set(KeyValue::new(
                                "gen_ai.response.time_to_first_chunk",
                                span.elapsed().as_secs_f64(),
                            ));
                            span.event("gen_ai.first_token", Vec::new());
                        }
                        // The first words are what the caller waits for: judge latency here.
                        if let Some(g) = guard.take() {
                            let elapsed = g.elapsed();
                            g.finish(CallOutcome::Success { elapsed });
                        }
                        if tx.send(Ok(ReplyEvent::Text(text))).await.is_err() {
                            return;
                        }
                    }
                    for part in choice.delta.tool_calls {
                        while calls.len() <= part.index {
                            calls.push(Default::default());
                        }
                        let call = &mut calls[part.index];
                        if let Some(id) = part.id {
                            call.0 = id;
                        }
                        if let Some(f) = part.function {
                            if let Some(name) = f.name {
                                call.1 = name;
                            }
                            if let Some(args) = f.arguments {
                                call.2.push_str(&args);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Caller sentiment from Groq (a classification per turn), for [`DegradingSentiment`]
/// (`iace_actors::sentiment`), which falls back to the lexicon when this fails.
pub struct GroqSentiment {
    client: std::sync::Arc<GroqClient>,
}

impl GroqSentiment {
    /// Scores with `client`'s classification model.
    pub fn new(client: std::sync::Arc<GroqClient>) -> Self {
        GroqSentiment { client }
    }
}

const SENTIMENT_PROMPT: &str = "You rate the sentiment of one thing a caller said on a customer-service phone call. \
Answer with a JSON object only: {\"score\": <number from -1 (furious) to 1 (delighted)>, \"label\": \"positive\"|\"neutral\"|\"negative\"}.";

#[async_trait]
impl SentimentScorer for GroqSentiment {
    async fn score(&self, text: &str) -> Result<Sentiment, SentimentError> {
        let messages = [
            Message {
                role: "system".into(),
                content: Some(SENTIMENT_PROMPT.into()),
                tool_calls: vec![],
                tool_call_id: None,
            },
            Message {
                role: "user".into(),
                content: Some(text.to_owned()),
                tool_calls: vec![],
                tool_call_id: None,
            },
        ];
        let answer = self
            .client
            .complete_json(&messages)
            .await
            .map_err(|e| SentimentError::Unavailable(e.to_string()))?;
        let score = answer["score"]
            .as_f64()
            .filter(|s| s.is_finite())
            .ok_or_else(|| SentimentError::Unavailable(format!("no score in {answer}")))?
            .clamp(-1.0, 1.0);
        Ok(Sentiment {
            score,
            label: SentimentLabel::of(score),
            source: VENDOR.into(),
            degraded: false,
        })
    }
}
