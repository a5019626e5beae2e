//! Google Gemini embeddings (vendor-protocols.md section 5): the engine's [`Embedder`] port
//! over `POST {api_base}/models/{model}:batchEmbedContents`.
//!
//! [`GoogleEmbedder`] asks for [`EMBEDDING_DIMS`] values per text (`outputDimensionality`, the
//! Matryoshka prefix of `gemini-embedding-001`'s 3072) and L2-normalises every vector, since
//! only the full-size output comes normalised. Texts go out in order, in batches of at most
//! [`MAX_BATCH`]; the answer is checked (one vector per text, each of the right length, finite,
//! not zero) before anything is returned, so a wrong answer is an error, never a silent
//! mismatch in the index.
//!
//! Every attempt goes through the `google` circuit breaker and the shared [`RetryPolicy`]: a
//! 4xx is the request's fault (final, [`EmbedError::Rejected`], not a breaker failure); 429
//! opens the breaker for the `RetryInfo.retryDelay` of the error body and is retried after it;
//! 5xx, timeouts and connection errors are breaker failures and are retried, then
//! [`EmbedError::Unavailable`]. The key travels in `x-goog-api-key`, never in the URL (which
//! ends up in error messages and logs). This module only translates; it decides nothing about
//! what is embedded or when.

mod wire;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use iace_actors::breaker::{BreakerHandle, CallOutcome, PermitGuard};
use iace_actors::learning::embed::normalize;
use iace_actors::ports::learning::{EmbedError, EmbedTask, Embedder, EMBEDDING_DIMS};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use tracing::debug;

use self::wire::{BatchEmbedRequest, BatchEmbedResponse, Content, EmbedRequest, ErrorBody, Part};
use crate::clients::retry::{self, Attempt, Exhausted, RetryPolicy};

/// The real API (section 5).
pub const DEFAULT_API_BASE: &str = "https://generativelanguage.googleapis.com/v1beta";
/// The model: 3072 dimensions, truncated to [`EMBEDDING_DIMS`] on request.
pub const DEFAULT_MODEL: &str = "gemini-embedding-001";
/// Breaker name of this vendor.
pub const VENDOR: &str = "google";
/// Most texts in one `batchEmbedContents` (section 5; Google refuses a 101st).
pub const MAX_BATCH: usize = 100;

/// Client settings.
#[derive(Clone)]
pub struct GoogleConfig {
    /// API base (no trailing slash): [`DEFAULT_API_BASE`], or the fake's `.../v1beta`.
    pub api_base: String,
    /// Gemini API key (`AIza...`).
    pub api_key: String,
    /// Model name, with or without the `models/` prefix.
    pub model: String,
    /// Texts per request, 1 to [`MAX_BATCH`].
    pub batch_size: usize,
    /// Retries and timeouts of every request.
    pub retry: RetryPolicy,
    /// The `google` circuit breaker every attempt goes through (`None`: no breaker).
    pub breaker: Option<BreakerHandle>,
}

impl GoogleConfig {
    /// The real API with `api_key`, the default model, full batches and the default policy.
    pub fn new(api_key: impl Into<String>) -> Self {
        GoogleConfig {
            api_base: DEFAULT_API_BASE.to_owned(),
            api_key: api_key.into(),
            model: DEFAULT_MODEL.to_owned(),
            batch_size: MAX_BATCH,
            // Embedding runs after calls, off the conversation's path: it can wait longer than
            // a call command, and a full batch takes longer than one.
            retry: RetryPolicy {
                attempt_timeout: Duration::from_secs(10),
                deadline: Duration::from_secs(60),
                ..RetryPolicy::default()
            },
            breaker: None,
        }
    }
}

impl std::fmt::Debug for GoogleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("GoogleConfig")
            .field("api_base", &self.api_base)
            .field("model", &self.model)
            .field("batch_size", &self.batch_size)
            .field("retry", &self.retry)
            .field("breaker", &self.breaker.as_ref().map(BreakerHandle::vendor))
            .finish_non_exhaustive()
    }
}

/// Request counters and latency.
#[derive(Clone)]
pub struct GoogleMetrics {
    requests: IntCounterVec,
    latency: Histogram,
    texts: IntCounter,
}

impl GoogleMetrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "iace_google_embed_requests_total",
                "Gemini batchEmbedContents attempts by outcome (ok, rejected, retryable, transport, timeout, invalid_answer, breaker_open)",
            ),
            &["outcome"],
        )?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "iace_google_embed_request_seconds",
                "Latency of Gemini batchEmbedContents attempts",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        let texts = IntCounter::new(
            "iace_google_embedded_texts_total",
            "Texts embedded by Gemini (answers accepted)",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(texts.clone()))?;
        Ok(GoogleMetrics {
            requests,
            latency,
            texts,
        })
    }
}

/// What one request ended with, before it is mapped to an [`EmbedError`].
#[derive(Debug, Clone, PartialEq)]
enum CallError {
    /// An HTTP error answer.
    Http {
        status: u16,
        /// `error.status` (`INVALID_ARGUMENT`, ...).
        code: Option<String>,
        /// `ErrorInfo.reason` (`API_KEY_INVALID`, ...).
        reason: Option<String>,
        message: String,
    },
    /// No answer (connect error, reset, body error).
    Transport(String),
    /// The attempt timed out.
    Timeout(Duration),
    /// A 2xx answer that is unreadable or does not fit the request.
    Invalid(String),
    /// The breaker is open: nothing was sent.
    CircuitOpen(Option<chrono::DateTime<chrono::Utc>>),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Http {
                status,
                code,
                reason,
                message,
            } => {
                write!(f, "HTTP {status}")?;
                if let Some(code) = code {
                    write!(f, " {code}")?;
                }
                if let Some(reason) = reason {
                    write!(f, " ({reason})")?;
                }
                write!(f, ": {message}")
            }
            CallError::Transport(m) => write!(f, "no answer: {m}"),
            CallError::Timeout(d) => write!(f, "no answer within {} ms", d.as_millis()),
            CallError::Invalid(m) => write!(f, "wrong answer: {m}"),
            CallError::CircuitOpen(Some(until)) => {
                write!(f, "the circuit breaker is open until {until}")
            }
            CallError::CircuitOpen(None) => write!(f, "the circuit breaker is open"),
        }
    }
}

/// Maps what the retry policy gave up with to the port's error.
fn embed_error(exhausted: Exhausted<CallError>) -> EmbedError {
    match exhausted {
        Exhausted::Attempts {
            last: last @ CallError::Http { status, .. },
            ..
        } if !retry::retryable_status(status) => EmbedError::Rejected(format!("google: {last}")),
        Exhausted::Attempts { attempts, last } if attempts > 1 => {
            EmbedError::Unavailable(format!("google: {last} (after {attempts} attempts)"))
        }
        Exhausted::Attempts { last, .. } => EmbedError::Unavailable(format!("google: {last}")),
        Exhausted::TooLong(wait, last) => EmbedError::Unavailable(format!(
            "google: {last}; it asked to retry after {} s, longer than the retry policy waits",
            wait.as_secs_f64()
        )),
    }
}

/// The Gemini embeddings adapter.
pub struct GoogleEmbedder {
    http: reqwest::Client,
    config: GoogleConfig,
    /// `models/{model}`, as every request of a batch names it.
    model_path: String,
    /// `{model}@{EMBEDDING_DIMS}`: what [`Embedder::model`] reports.
    model_id: String,
    url: String,
    metrics: Option<GoogleMetrics>,
}

impl std::fmt::Debug for GoogleEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleEmbedder")
            .field("model", &self.model_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GoogleEmbedder {
    /// An adapter; fails on an empty key or model, or a batch size outside 1 to
    /// [`MAX_BATCH`]. `metrics` is optional so tests can build many adapters.
    pub fn new(config: GoogleConfig, metrics: Option<GoogleMetrics>) -> anyhow::Result<Self> {
        if config.api_key.trim().is_empty() {
            anyhow::bail!("the Google API key is empty");
        }
        let model = config.model.trim().trim_start_matches("models/").to_owned();
        if model.is_empty() || model.contains('/') {
            anyhow::bail!("not a Gemini model name: {:?}", config.model);
        }
        if !(1..=MAX_BATCH).contains(&config.batch_size) {
            anyhow::bail!(
                "the Google batch size must be 1 to {MAX_BATCH} (got {})",
                config.batch_size
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("iace/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(GoogleEmbedder {
            http,
            url: format!(
                "{}/models/{model}:batchEmbedContents",
                config.api_base.trim_end_matches('/')
            ),
            model_path: format!("models/{model}"),
            model_id: format!("{model}@{EMBEDDING_DIMS}"),
            config,
            metrics,
        })
    }

    /// One `batchEmbedContents` with the retry policy.
    async fn embed_batch(
        &self,
        texts: &[String],
        task: EmbedTask,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let task_type = match task {
            EmbedTask::Document => "RETRIEVAL_DOCUMENT",
            EmbedTask::Query => "RETRIEVAL_QUERY",
        };
        let body = BatchEmbedRequest {
            requests: texts
                .iter()
                .map(|text| EmbedRequest {
                    model: &self.model_path,
                    content: Content {
                        parts: [Part { text }],
                    },
                    task_type,
                    output_dimensionality: EMBEDDING_DIMS,
                })
                .collect(),
        };
        let result = self
            .config
            .retry
            .run(
                |attempt| {
                    let body = &body;
                    async move {
                        let guard = match &self.config.breaker {
                            Some(breaker) => match breaker.acquire_after_wait().await {
                                Ok(permit) => Some(PermitGuard::new(breaker.clone(), permit)),
                                // Never retry while the breaker is open.
                                Err(rejected) => {
                                    self.count("breaker_open");
                                    return Attempt::Done(Err(CallError::CircuitOpen(
                                        rejected.until,
                                    )));
                                }
                            },
                            None => None,
                        };
                        let started = Instant::now();
                        let outcome = self.attempt(body, texts.len()).await;
                        if let Some(guard) = guard {
                            let verdict = verdict(&outcome, guard.elapsed());
                            guard.finish(verdict);
                        }
                        self.count(match &outcome {
                            Attempt::Done(Ok(_)) => "ok",
                            Attempt::Done(Err(CallError::Invalid(_))) => "invalid_answer",
                            Attempt::Done(Err(_)) => "rejected",
                            Attempt::Retry {
                                error: CallError::Http { .. },
                                ..
                            } => "retryable",
                            Attempt::Retry { .. } => "transport",
                        });
                        if let Some(m) = &self.metrics {
                            m.latency.observe(started.elapsed().as_secs_f64());
                        }
                        if let Attempt::Retry { error, after } = &outcome {
                            debug!(attempt, texts = texts.len(), error = %error, ?after, "google embedding request failed; may retry");
                        }
                        outcome
                    }
                },
                |d| {
                    self.count("timeout");
                    CallError::Timeout(d)
                },
            )
            .await;
        let vectors = result.map_err(embed_error)?;
        if let Some(m) = &self.metrics {
            m.texts.inc_by(texts.len() as u64);
        }
        Ok(vectors)
    }

    /// One attempt: send, read, judge. The caller bounds it in time.
    async fn attempt(
        &self,
        body: &BatchEmbedRequest<'_>,
        expected: usize,
    ) -> Attempt<Vec<Vec<f32>>, CallError> {
        let mut span = crate::telemetry::ClientSpan::start("POST", "POST", &self.url, VENDOR);
        span.set(opentelemetry::KeyValue::new(
            "gen_ai.operation.name",
            "embeddings",
        ));
        let sent = span
            .apply(self.http.post(&self.url))
            .header("x-goog-api-key", &self.config.api_key)
            .json(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                span.fail("transport", e.to_string());
                return Attempt::Retry {
                    after: None,
                    error: CallError::Transport(e.to_string()),
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
                    error: CallError::Transport(e.to_string()),
                }
            }
        };
        if status.is_success() {
            return Attempt::Done(
                serde_json::from_slice::<BatchEmbedResponse>(&bytes)
                    .map_err(|e| format!("unreadable batchEmbedContents answer: {e}"))
                    .and_then(|answer| vectors(answer, expected))
                    .map_err(CallError::Invalid),
            );
        }
        let error = serde_json::from_slice::<ErrorBody>(&bytes)
            .ok()
            .and_then(|b| b.error)
            .unwrap_or_default();
        // The body says how long to wait (RetryInfo); a header would do too, should a proxy
        // in between add one.
        let after = error.retry_delay().or_else(|| retry::retry_after(&headers));
        let failure = CallError::Http {
            status: status.as_u16(),
            code: error.status.clone(),
            reason: error.reason().map(str::to_owned),
            message: error.message.clone().unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
            }),
        };
        if retry::retryable_status(status.as_u16()) {
            Attempt::Retry {
                after,
                error: failure,
            }
        } else {
            Attempt::Done(Err(failure))
        }
    }

    fn count(&self, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.requests.with_label_values(&[outcome]).inc();
        }
    }
}

/// The vectors of an answer, normalised, after checking that they are the ones asked for.
fn vectors(answer: BatchEmbedResponse, expected: usize) -> Result<Vec<Vec<f32>>, String> {
    if answer.embeddings.len() != expected {
        return Err(format!(
            "asked for {expected} embeddings, got {}",
            answer.embeddings.len()
        ));
    }
    answer
        .embeddings
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let mut v = e.values;
            if v.len() != EMBEDDING_DIMS {
                return Err(format!(
                    "embedding {i} of the batch has {} values, not {EMBEDDING_DIMS}",
                    v.len()
                ));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("embedding {i} of the batch is not finite"));
            }
            if v.iter().all(|x| *x == 0.0) {
                return Err(format!(
                    "embedding {i} of the batch is all zeros (cannot be normalised)"
                ));
            }
            normalize(&mut v);
            Ok(v)
        })
        .collect()
}

/// How one attempt reads to the breaker: a 4xx is the request's fault, a 429 asks to back
/// off, anything else that is not a usable answer is the vendor failing.
fn verdict<T>(outcome: &Attempt<T, CallError>, elapsed: Duration) -> CallOutcome {
    match outcome {
        Attempt::Done(Ok(_)) | Attempt::Done(Err(CallError::Http { .. })) => {
            CallOutcome::Success { elapsed }
        }
        Attempt::Done(Err(_)) => CallOutcome::Failure { elapsed },
        Attempt::Retry {
            error: CallError::Http { status: 429, .. },
            after,
        } => CallOutcome::RateLimited {
            retry_after: *after,
        },
        Attempt::Retry { .. } => CallOutcome::Failure { elapsed },
    }
}

#[async_trait]
impl Embedder for GoogleEmbedder {
    fn model(&self) -> &str {
        &self.model_id
    }

    async fn embed(&self, texts: &[String], task: EmbedTask) -> Result<Vec<Vec<f32>>, EmbedError> {
        // Google refuses an empty text with a 400 for the whole batch; say which one, and
        // spend no request on it.
        if let Some(i) = texts.iter().position(String::is_empty) {
            return Err(EmbedError::Rejected(format!(
                "google: text {i} is empty (Gemini refuses empty texts)"
            )));
        }
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.config.batch_size) {
            out.extend(self.embed_batch(batch, task).await?);
        }
        Ok(out)
    }
}
