//! HubSpot CRM v3 (vendor-protocols.md 7.4): reading one contact by its object id, over
//! `POST {api_base}/crm/v3/objects/contacts/search` with an `hs_object_id EQ <id>` filter.
//!
//! The search endpoint (rather than `GET /crm/v3/objects/contacts/{id}`) answers "no such
//! contact" as an empty result instead of a 404, so a missing contact is `Ok(None)` and every
//! 4xx left is a real refusal. Only the four properties the engine mirrors are asked for
//! (`email`, `phone`, `firstname`, `lastname`); empty values read as absent. HubSpot's search
//! index trails writes by a few seconds [3P], so a contact created moments ago may read as
//! `None` yet; callers acting on a `contact.creation` webhook should allow for that.
//!
//! Every attempt goes through the `hubspot` circuit breaker and the shared [`RetryPolicy`],
//! classified as section 7.4 says ("retry 429 (honour `Retry-After`) and 5xx; never retry 4xx
//! validation errors"):
//! - 401/403: [`CrmError::Unauthorized`], final, not a breaker failure (the vendor is fine,
//!   the token is not);
//! - other 4xx: [`CrmError::Rejected`], final, not a breaker failure;
//! - 429: retried after its `Retry-After` (seconds), or the policy's backoff without one; the
//!   breaker is told to back off for as long ([`CallOutcome::RateLimited`]);
//! - 5xx, timeouts, connection errors: breaker failures, retried, then
//!   [`CrmError::Unavailable`];
//! - a 2xx that is not the expected JSON: [`CrmError::Protocol`], a breaker failure, not
//!   retried (the same question would get the same answer);
//! - the breaker open: [`CrmError::Unavailable`] without a request.
//!
//! Error messages carry HubSpot's `message`, `category` and `correlationId` (what HubSpot
//! support asks for). The token travels in `Authorization: Bearer` only and is never printed.
//! The search is read-only, so retrying it is always safe.

use std::time::{Duration, Instant};

use iace_actors::breaker::{BreakerHandle, CallOutcome, PermitGuard};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::debug;

use crate::clients::retry::{self, Attempt, Exhausted, RetryPolicy};

/// The real API (section 7.4).
pub const DEFAULT_API_BASE: &str = "https://api.hubapi.com";
/// Breaker name of this vendor.
pub const VENDOR: &str = "hubspot";
/// The search path, under the API base.
pub const SEARCH_PATH: &str = "/crm/v3/objects/contacts/search";
/// The contact properties asked for, in this order.
pub const CONTACT_PROPERTIES: [&str; 4] = ["email", "phone", "firstname", "lastname"];
/// Longest object id accepted: HubSpot ids are 64-bit integers (at most 20 digits).
const MAX_ID_DIGITS: usize = 20;

/// Client settings.
#[derive(Clone)]
pub struct CrmConfig {
    /// Private-app token (`pat-...`) or OAuth access token.
    pub access_token: String,
    /// API base (no trailing slash): [`DEFAULT_API_BASE`], or the fake's base URL.
    pub api_base: String,
    /// Bound on one attempt; it replaces `retry.attempt_timeout`.
    pub timeout: Duration,
    /// The `hubspot` circuit breaker every attempt goes through (`None`: no breaker).
    pub breaker: Option<BreakerHandle>,
    /// Retries and the deadline of the whole lookup (its `attempt_timeout` is ignored for
    /// [`CrmConfig::timeout`]).
    pub retry: RetryPolicy,
}

impl CrmConfig {
    /// The real API with `access_token`, 3 s per attempt and the default retry policy.
    pub fn new(access_token: impl Into<String>) -> Self {
        let timeout = Duration::from_secs(3);
        CrmConfig {
            access_token: access_token.into(),
            api_base: DEFAULT_API_BASE.to_owned(),
            timeout,
            breaker: None,
            retry: RetryPolicy {
                attempt_timeout: timeout,
                ..RetryPolicy::default()
            },
        }
    }
}

impl std::fmt::Debug for CrmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("CrmConfig")
            .field("api_base", &self.api_base)
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker.as_ref().map(BreakerHandle::vendor))
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// A HubSpot contact, as far as the engine mirrors it. Empty properties are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmContact {
    /// HubSpot's object id (`hs_object_id`), digits.
    pub id: String,
    /// `email`.
    pub email: Option<String>,
    /// `phone`, as stored in HubSpot (not necessarily E.164).
    pub phone: Option<String>,
    /// `firstname`.
    pub firstname: Option<String>,
    /// `lastname`.
    pub lastname: Option<String>,
}

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrmError {
    /// Not a HubSpot object id (1 to 20 ASCII digits); nothing was sent.
    #[error("not a HubSpot object id: {0:?}")]
    InvalidId(String),
    /// 401/403: the token is wrong, expired or lacks the `crm.objects.contacts.read` scope.
    /// Final.
    #[error("hubspot refused the token: {0}")]
    Unauthorized(String),
    /// Another 4xx: HubSpot refused the request itself. Final.
    #[error("hubspot refused the request: {0}")]
    Rejected(String),
    /// No usable answer: 5xx, 429, timeouts, connection errors after the retries, or the
    /// breaker open.
    #[error("hubspot is unavailable: {0}")]
    Unavailable(String),
    /// A 2xx answer that is not the expected JSON.
    #[error("hubspot answered something unexpected: {0}")]
    Protocol(String),
}

/// Request counters and latency.
#[derive(Clone)]
pub struct CrmMetrics {
    requests: IntCounterVec,
    latency: Histogram,
}

impl CrmMetrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "iace_hubspot_crm_requests_total",
                "HubSpot CRM attempts by outcome (ok, unauthorized, rejected, rate_limited, retryable, transport, timeout, invalid_answer, breaker_open)",
            ),
            &["outcome"],
        )?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "iace_hubspot_crm_request_seconds",
                "Latency of HubSpot CRM attempts",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(CrmMetrics { requests, latency })
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types (section 7.4), private to this module.

/// Body of the search.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SearchRequest<'a> {
    filter_groups: [FilterGroup<'a>; 1],
    properties: &'static [&'static str],
    limit: u32,
}

#[derive(Debug, Serialize)]
struct FilterGroup<'a> {
    filters: [Filter<'a>; 1],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Filter<'a> {
    property_name: &'static str,
    operator: &'static str,
    value: &'a str,
}

/// The search answer; `paging` and the rest are ignored.
#[derive(Debug, Deserialize)]
struct SearchResponse {
    #[serde(default)]
    results: Vec<SearchResult>,
}

/// One object. `properties` values are strings or `null` (a property without a value).
#[derive(Debug, Deserialize)]
struct SearchResult {
    id: String,
    #[serde(default)]
    properties: Map<String, Value>,
}

/// `{"status":"error","message","correlationId","category"}`, read leniently.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    category: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Classification.

/// What one attempt ended with, before it is mapped to a [`CrmError`].
#[derive(Debug, Clone, PartialEq)]
enum CallError {
    /// An HTTP error answer.
    Http {
        status: u16,
        /// `category` (`INVALID_AUTHENTICATION`, `VALIDATION_ERROR`, `RATE_LIMITS`, ...).
        category: Option<String>,
        correlation_id: Option<String>,
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
                category,
                correlation_id,
                message,
            } => {
                write!(f, "HTTP {status}")?;
                if let Some(category) = category {
                    write!(f, " {category}")?;
                }
                write!(f, ": {message}")?;
                if let Some(id) = correlation_id {
                    write!(f, " (correlationId {id})")?;
                }
                Ok(())
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

/// Whether HubSpot asks for the request to be retried (section 7.4): 429 and 5xx only.
fn retryable(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Maps what the retry policy gave up with to a [`CrmError`].
fn crm_error(exhausted: Exhausted<CallError>) -> CrmError {
    match exhausted {
        Exhausted::Attempts {
            last: last @ CallError::Http {
                status: 401 | 403, ..
            },
            ..
        } => CrmError::Unauthorized(format!("hubspot: {last}")),
        Exhausted::Attempts {
            last: last @ CallError::Http { status, .. },
            ..
        } if !retryable(status) => CrmError::Rejected(format!("hubspot: {last}")),
        Exhausted::Attempts {
            last: CallError::Invalid(m),
            ..
        } => CrmError::Protocol(format!("hubspot: {m}")),
        Exhausted::Attempts { attempts, last } if attempts > 1 => {
            CrmError::Unavailable(format!("hubspot: {last} (after {attempts} attempts)"))
        }
        Exhausted::Attempts { last, .. } => CrmError::Unavailable(format!("hubspot: {last}")),
        Exhausted::TooLong(wait, last) => CrmError::Unavailable(format!(
            "hubspot: {last}; it asked to retry after {} s, longer than the retry policy waits",
            wait.as_secs_f64()
        )),
    }
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

/// Whether `id` can be a HubSpot object id: 1 to 20 ASCII digits.
fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_DIGITS).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// A property as an optional string: absent, `null` and blank are `None`; strings are
/// trimmed; a number or boolean (HubSpot sends strings, but) reads as its JSON text.
fn property(properties: &Map<String, Value>, name: &str) -> Option<String> {
    let text = match properties.get(name)? {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// The contact of a search answer for `id`: the first result, which must be that contact.
fn contact_of(bytes: &[u8], id: &str) -> Result<Option<CrmContact>, String> {
    // Through a `Value` first: serde would read a struct from a JSON array too.
    let answer: SearchResponse = serde_json::from_slice::<Value>(bytes)
        .map_err(|e| e.to_string())
        .and_then(|v| match v {
            Value::Object(_) => serde_json::from_value(v).map_err(|e| e.to_string()),
            _ => Err("not a JSON object".to_owned()),
        })
        .map_err(|e| format!("unreadable contacts search answer: {e}"))?;
    let Some(first) = answer.results.into_iter().next() else {
        return Ok(None);
    };
    if first.id != id {
        return Err(format!(
            "asked for contact {id}, the search answered contact {:?}",
            first.id
        ));
    }
    let p = &first.properties;
    Ok(Some(CrmContact {
        email: property(p, "email"),
        phone: property(p, "phone"),
        firstname: property(p, "firstname"),
        lastname: property(p, "lastname"),
        id: first.id,
    }))
}

// ---------------------------------------------------------------------------------------------
// The client.

/// The HubSpot CRM v3 client.
pub struct HubSpotCrm {
    http: reqwest::Client,
    config: CrmConfig,
    /// `config.retry` with `config.timeout` per attempt.
    policy: RetryPolicy,
    search_url: String,
    metrics: Option<CrmMetrics>,
}

impl std::fmt::Debug for HubSpotCrm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSpotCrm")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HubSpotCrm {
    /// A client; fails on an empty token or API base, or a zero timeout.
    pub fn new(config: CrmConfig) -> anyhow::Result<Self> {
        if config.access_token.trim().is_empty() {
            anyhow::bail!("the HubSpot access token is empty");
        }
        let base = config.api_base.trim().trim_end_matches('/');
        if base.is_empty() {
            anyhow::bail!("the HubSpot API base is empty");
        }
        if config.timeout.is_zero() {
            anyhow::bail!("the HubSpot request timeout must be above zero");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("iace/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HubSpotCrm {
            http,
            search_url: format!("{base}{SEARCH_PATH}"),
            policy: RetryPolicy {
                attempt_timeout: config.timeout,
                ..config.retry.clone()
            },
            config,
            metrics: None,
        })
    }

    /// The same client, counting its attempts in `metrics`.
    pub fn with_metrics(mut self, metrics: CrmMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The contact with object id `id`, `None` when HubSpot has none (or it is archived).
    pub async fn contact(&self, id: &str) -> Result<Option<CrmContact>, CrmError> {
        if !valid_id(id) {
            return Err(CrmError::InvalidId(id.to_owned()));
        }
        let body = SearchRequest {
            filter_groups: [FilterGroup {
                filters: [Filter {
                    property_name: "hs_object_id",
                    operator: "EQ",
                    value: id,
                }],
            }],
            properties: &CONTACT_PROPERTIES,
            limit: 1,
        };
        self.policy
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
                        let outcome = self.attempt(body, id).await;
                        if let Some(guard) = guard {
                            let verdict = verdict(&outcome, guard.elapsed());
                            guard.finish(verdict);
                        }
                        self.count(match &outcome {
                            Attempt::Done(Ok(_)) => "ok",
                            Attempt::Done(Err(CallError::Invalid(_))) => "invalid_answer",
                            Attempt::Done(Err(CallError::Http {
                                status: 401 | 403, ..
                            })) => "unauthorized",
                            Attempt::Done(Err(_)) => "rejected",
                            Attempt::Retry {
                                error: CallError::Http { status: 429, .. },
                                ..
                            } => "rate_limited",
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
                            debug!(attempt, error = %error, ?after, "hubspot contact search failed; may retry");
                        }
                        outcome
                    }
                },
                |d| {
                    self.count("timeout");
                    CallError::Timeout(d)
                },
            )
            .await
            .map_err(crm_error)
    }

    /// One attempt: send, read, judge. The caller bounds it in time.
    async fn attempt(
        &self,
        body: &SearchRequest<'_>,
        id: &str,
    ) -> Attempt<Option<CrmContact>, CallError> {
        let mut span =
            crate::telemetry::ClientSpan::start("POST", "POST", &self.search_url, "hubspot");
        let sent = span
            .apply(self.http.post(&self.search_url))
            .bearer_auth(&self.config.access_token)
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
            return Attempt::Done(contact_of(&bytes, id).map_err(CallError::Invalid));
        }
        let error = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_default();
        let failure = CallError::Http {
            status: status.as_u16(),
            category: error.category,
            correlation_id: error.correlation_id,
            message: error.message.unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
            }),
        };
        if retryable(status.as_u16()) {
            Attempt::Retry {
                after: retry::retry_after(&headers),
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

#[cfg(test)]
#[path = "crm_tests.rs"]
mod tests;
