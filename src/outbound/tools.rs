//! The agents' HTTP tools: the model's tool call becomes a signed request to the customer's
//! endpoint, and its JSON answer goes back to the model.
//!
//! - Signed with the tool's `signing_secret` (Standard Webhooks, as the webhooks IACE sends),
//!   so the endpoint can check the request came from IACE. The body is
//!   `{"tool", "tool_call_id", "call_id", "agent_id", "customer_id", "arguments"}`.
//! - The same client rules as webhooks: the SSRF guard on the resolved addresses, no redirects,
//!   the tool's own timeout.
//! - The answer must be a 2xx with a JSON body of at most [`RESULT_LIMIT`] bytes; anything else
//!   is an error the model is told about (it tells the caller).
//! - A breaker per endpoint (scheme, host and port): a dead endpoint is not waited for on
//!   every turn of every call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use iace_actors::breaker::machine::{Breaker, BreakerConfig, CallOutcome};
use iace_actors::ports::voice::{ToolRequest, ToolRunner};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::guard::Guard;
use super::sender::{chain, client, Timeouts};
use super::signing::{signature_header, Secret};
use crate::telemetry::ClientSpan;
use opentelemetry::KeyValue;

/// Largest tool answer accepted, in bytes.
pub const RESULT_LIMIT: usize = 16 * 1024;

/// The tool runner's metrics.
#[derive(Clone)]
pub struct ToolMetrics {
    /// Tool calls by outcome: `ok`, `error_status`, `timeout`, `unreachable`, `refused`
    /// (the SSRF guard), `too_large`, `not_json`, `breaker_open`.
    pub calls: IntCounterVec,
    /// Round trip of a tool call, by outcome.
    pub seconds: HistogramVec,
}

impl ToolMetrics {
    /// Registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<ToolMetrics> {
        let m = ToolMetrics {
            calls: IntCounterVec::new(
                Opts::new(
                    "iace_tool_calls_total",
                    "Calls of agents' HTTP tools, by outcome",
                ),
                &["outcome"],
            )?,
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "iace_tool_call_seconds",
                    "Round trip of agents' HTTP tool calls",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.calls.clone()))?;
        registry.register(Box::new(m.seconds.clone()))?;
        Ok(m)
    }
}

/// Runs agents' HTTP tools.
pub struct HttpToolRunner {
    client: reqwest::Client,
    guard: Guard,
    breakers: Mutex<HashMap<String, Breaker>>,
    breaker: BreakerConfig,
    metrics: Option<ToolMetrics>,
}

impl HttpToolRunner {
    /// A runner under `guard`.
    pub fn new(guard: Guard, metrics: Option<ToolMetrics>) -> HttpToolRunner {
        HttpToolRunner {
            // Each request carries its tool's own timeout; this one bounds the rest.
            client: client(
                guard,
                Timeouts {
                    connect: Duration::from_secs(5),
                    total: Duration::from_secs(31),
                },
            ),
            guard,
            breakers: Mutex::new(HashMap::new()),
            breaker: BreakerConfig {
                window: 20,
                min_calls: 10,
                consecutive_failures: 3,
                slow_call: Duration::from_secs(30),
                slow_rate: 1.0,
                open_wait: Duration::from_secs(30),
                open_wait_cap: Duration::from_secs(300),
                half_open_probes: 1,
                ..BreakerConfig::default()
            },
            metrics,
        }
    }

    fn count(&self, outcome: &str, took: Duration) {
        if let Some(m) = &self.metrics {
            m.calls.with_label_values(&[outcome]).inc();
            m.seconds
                .with_label_values(&[outcome])
                .observe(took.as_secs_f64());
        }
    }

    async fn attempt(
        &self,
        request: &ToolRequest,
        url: &reqwest::Url,
    ) -> (Result<serde_json::Value, String>, CallOutcome, &'static str) {
        let tool = &request.tool;
        let started = Instant::now();
        let failure = || CallOutcome::Failure {
            elapsed: started.elapsed(),
        };
        let Ok(secret) = Secret::parse(&tool.signing_secret) else {
            return (
                Err("the tool's signing secret is not usable".into()),
                CallOutcome::Cancelled,
                "refused",
            );
        };
        let body = serde_json::json!({
            "tool": tool.name,
            "tool_call_id": request.tool_call_id,
            "call_id": request.call_id,
            "agent_id": request.agent_id,
            "customer_id": request.customer_id,
            "arguments": request.arguments,
        });
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let safe: String = request
            .tool_call_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let id = format!("tool_{}_{safe}", request.call_id.simple());
        let timestamp = Utc::now().timestamp();
        let method = reqwest::Method::from_bytes(tool.method.as_str().as_bytes())
            .unwrap_or(reqwest::Method::POST);
        // A client span in the turn's trace (the runner is called in its context).
        let mut span = ClientSpan::start(
            method.as_str().to_owned(),
            method.as_str(),
            url.as_str(),
            "tool",
        );
        span.set(KeyValue::new("gen_ai.tool.name", tool.name.clone()));
        span.set(KeyValue::new(
            "gen_ai.tool.call.id",
            request.tool_call_id.clone(),
        ));
        let mut builder = span
            .apply(self.client.request(method, url.clone()))
            .timeout(Duration::from_millis(tool.timeout_ms))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature_header(&[&secret], &id, timestamp, &body),
            );
        for (name, value) in tool.headers.iter().chain(&tool.secret_headers) {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let response = match builder.body(body).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                span.fail("timeout", "no answer in time");
                return (
                    Err(format!("no answer within {} ms", tool.timeout_ms)),
                    failure(),
                    "timeout",
                );
            }
            Err(e) => {
                let text = chain(&e);
                let refused = text.contains("not a public address");
                span.fail(if refused { "refused" } else { "transport" }, text.clone());
                return (
                    Err(format!("the tool could not be reached: {text}")),
                    if refused {
                        CallOutcome::Cancelled
                    } else {
                        failure()
                    },
                    if refused { "refused" } else { "unreachable" },
                );
            }
        };
        let status = response.status();
        span.status(status.as_u16());
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let read = read_limited(response, tool.timeout_ms, started).await;
        let elapsed = started.elapsed();
        if !status.is_success() {
            let outcome = if status.as_u16() == 429 {
                CallOutcome::RateLimited { retry_after }
            } else if status.is_server_error() {
                CallOutcome::Failure { elapsed }
            } else {
                CallOutcome::Success { elapsed }
            };
            let detail = read.map(|b| String::from_utf8_lossy(&b).into_owned());
            let detail: String = detail.unwrap_or_default().chars().take(300).collect();
            return (
                Err(format!("the tool answered {status}: {detail}")
                    .trim_end()
                    .to_owned()),
                outcome,
                "error_status",
            );
        }
        let ok = CallOutcome::Success { elapsed };
        match read {
            Err(ReadError::TooLarge) => (
                Err(format!(
                    "the tool's answer is larger than {RESULT_LIMIT} bytes; refused"
                )),
                ok,
                "too_large",
            ),
            Err(ReadError::Timeout) => (
                Err(format!("no answer within {} ms", tool.timeout_ms)),
                CallOutcome::Failure { elapsed },
                "timeout",
            ),
            Err(ReadError::Broken(e)) => (
                Err(format!("the tool's answer broke off: {e}")),
                CallOutcome::Failure { elapsed },
                "unreachable",
            ),
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
                (Ok(serde_json::json!({"ok": true})), ok, "ok")
            }
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(v) => (Ok(v), ok, "ok"),
                Err(e) => (
                    Err(format!("the tool's answer is not JSON: {e}")),
                    ok,
                    "not_json",
                ),
            },
        }
    }
}

enum ReadError {
    TooLarge,
    Timeout,
    Broken(String),
}

/// The body, refused past [`RESULT_LIMIT`] without reading further; bounded by what is left of
/// the tool's timeout.
async fn read_limited(
    mut response: reqwest::Response,
    timeout_ms: u64,
    started: Instant,
) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|n| n > RESULT_LIMIT as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let left = Duration::from_millis(timeout_ms).saturating_sub(started.elapsed());
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ReadError::Broken(e.to_string()))?
        {
            if body.len() + chunk.len() > RESULT_LIMIT {
                return Err(ReadError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(left, read)
        .await
        .unwrap_or(Err(ReadError::Timeout))
}

#[async_trait]
impl ToolRunner for HttpToolRunner {
    async fn run(&self, request: ToolRequest) -> Result<serde_json::Value, String> {
        let started = Instant::now();
        let url = match self.guard.check_url(&request.tool.url) {
            Ok(url) => url,
            Err(refused) => {
                self.count("refused", started.elapsed());
                return Err(refused.to_string());
            }
        };
        let key = url.origin().ascii_serialization();
        let permit = {
            let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
            let breaker = breakers
                .entry(key.clone())
                .or_insert_with(|| Breaker::new(self.breaker.clone()));
            breaker.try_acquire(Utc::now()).0
        };
        let permit = match permit {
            Ok(permit) => permit,
            Err(_) => {
                self.count("breaker_open", started.elapsed());
                return Err(
                    "the tool's endpoint has been failing; it was not called this time".into(),
                );
            }
        };
        let (result, outcome, label) = self.attempt(&request, &url).await;
        {
            let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(breaker) = breakers.get_mut(&key) {
                breaker.record(permit, outcome, Utc::now());
            }
        }
        self.count(label, started.elapsed());
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use iace_actors::catalog::profile::HttpTool;
    use uuid::Uuid;

    use super::*;

    async fn endpoints() -> (String, Arc<AtomicUsize>) {
        async fn handle(
            State(hits): State<Arc<AtomicUsize>>,
            Path(name): Path<String>,
        ) -> (StatusCode, String) {
            hits.fetch_add(1, Ordering::SeqCst);
            match name.as_str() {
                "big" => (StatusCode::OK, format!("\"{}\"", "x".repeat(RESULT_LIMIT))),
                "text" => (StatusCode::OK, "fine, thanks".into()),
                "bad" => (StatusCode::UNPROCESSABLE_ENTITY, "no such order".into()),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "down".into()),
            }
        }
        let hits = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route("/{name}", axum::routing::post(handle))
            .with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, hits)
    }

    fn request(url: String) -> ToolRequest {
        let tool: HttpTool = serde_json::from_value(serde_json::json!({
            "name": "t",
            "description": "A tool.",
            "url": url,
            "signing_secret": Secret::generate().expose(),
        }))
        .unwrap();
        ToolRequest {
            tool,
            tool_call_id: "call_1".into(),
            call_id: Uuid::new_v4(),
            turn: 1,
            organization_id: Uuid::new_v4(),
            agent_id: Uuid::new_v4(),
            customer_id: None,
            arguments: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn answers_that_are_too_large_or_not_json_are_refused_and_4xx_is_the_callers_error() {
        let (base, _) = endpoints().await;
        let runner = HttpToolRunner::new(
            Guard {
                allow_private: true,
            },
            None,
        );
        let big = runner
            .run(request(format!("{base}/big")))
            .await
            .unwrap_err();
        assert!(big.contains("larger than 16384 bytes"), "{big}");
        let text = runner
            .run(request(format!("{base}/text")))
            .await
            .unwrap_err();
        assert!(text.contains("not JSON"), "{text}");
        let bad = runner
            .run(request(format!("{base}/bad")))
            .await
            .unwrap_err();
        assert!(
            bad.contains("422") && bad.contains("no such order"),
            "{bad}"
        );
    }

    #[tokio::test]
    async fn a_failing_endpoint_opens_its_own_breaker() {
        let (base, hits) = endpoints().await;
        let runner = HttpToolRunner::new(
            Guard {
                allow_private: true,
            },
            None,
        );
        for _ in 0..3 {
            let e = runner
                .run(request(format!("{base}/down")))
                .await
                .unwrap_err();
            assert!(e.contains("503"), "{e}");
        }
        let e = runner
            .run(request(format!("{base}/down")))
            .await
            .unwrap_err();
        assert!(e.contains("not called"), "{e}");
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        // Another endpoint is not held back by it.
        let (other, _) = endpoints().await;
        let e = runner
            .run(request(format!("{other}/down")))
            .await
            .unwrap_err();
        assert!(e.contains("503"), "{e}");
    }

    #[tokio::test]
    async fn private_destinations_are_refused_with_the_guard_on() {
        let (base, hits) = endpoints().await;
        let runner = HttpToolRunner::new(
            Guard {
                allow_private: false,
            },
            None,
        );
        for url in [
            format!("{base}/text"),
            base.replace("127.0.0.1", "localhost"),
        ] {
            let e = runner.run(request(url)).await.unwrap_err();
            assert!(e.contains("not a public address"), "{e}");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }
}
