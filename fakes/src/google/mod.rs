//! A wire-level fake of the Gemini API's embeddings (Google Generative Language,
//! shared/docs/vendor-protocols.md section 5): `POST /v1beta/models/{model}:embedContent` and
//! `:batchEmbedContents`, on real sockets and real time.
//!
//! It exists so that IACE's real embedding client (reqwest, batching, normalisation, retries,
//! the `google` breaker) can be exercised without Google: in integration tests, under
//! `iace-dev`, and in the learning pipeline's tests. It speaks the wire exactly — the
//! `x-goog-api-key` header (or `?key=`), camelCase request fields, the `{"error":{"code",
//! "message","status","details"}}` envelope with `google.rpc` detail types — and its vectors
//! are deterministic ([`full_embedding`]): the same (model, text) always gives the same vector,
//! on every machine, so a test can compute what the client must return.
//!
//! Faults are injected per request: error answers with Google's bodies
//! ([`FakeGoogle::fail_next`]; 429 with a `google.rpc.RetryInfo` through
//! [`FakeGoogle::rate_limit_next`]), a delay before every answer ([`FakeGoogle::set_latency`]),
//! and a request that is never answered ([`FakeGoogle::stall_next`]).
//!
//! Where section 5 leaves a behaviour open, the fake chooses as follows (change these only
//! together with the tests that pin them):
//! * The key is read from `x-goog-api-key`, else from `?key=`; when both are present the header
//!   wins. A wrong key is 400 `INVALID_ARGUMENT` with an `ErrorInfo` `API_KEY_INVALID` (the
//!   documented body). A missing key gets the same answer by default;
//!   [`MissingKey::PermissionDenied`] answers 403 `PERMISSION_DENIED` "Method doesn't allow
//!   unregistered callers" instead, which is what Google is remembered to send [UNVERIFIED].
//!   Requests that fail auth do not take an injected fault.
//! * Checks run in this order: auth, injected fault, the model of the path (404 `NOT_FOUND`,
//!   Google's "is not found for API version v1beta" wording), the body. Every validation error
//!   is 400 `INVALID_ARGUMENT`.
//! * The body is read as proto JSON, but strictly camelCase: an unknown name (including a
//!   snake_case spelling such as `task_type`, which Google's parser would also take) is refused
//!   as "Unknown name ... Cannot find field.", so a client that drifts from the documented
//!   spelling is caught here rather than silently mis-tuned there. Type errors read
//!   "Invalid value at '<field>' (<type>), <value>". Both carry a `google.rpc.BadRequest`
//!   field violation [UNVERIFIED wording].
//! * In a batch every request must carry `model` as `models/{path model}` (the SDK always sets
//!   it); a different model is refused. In `embedContent` the body's `model` is optional but
//!   must match when present. A name without the `models/` prefix is an "unexpected model name
//!   format".
//! * A batch needs 1 to [`FakeGoogleConfig::max_batch`] requests (100 by default:
//!   "at most 100 requests can be in one batch", reported by users of the real API).
//! * `content` needs at least one part; each part must be `{"text": "..."}` with a non-empty
//!   text ("contains an empty Part"). Several parts are embedded as their texts joined by `\n`.
//!   Length limits (2048 tokens) are not enforced.
//! * `outputDimensionality` 0 or absent means the model's full size (proto3: a zero is an unset
//!   field); a negative value or one above the model's size is refused [UNVERIFIED wording].
//! * `taskType` must be one of the nine documented values; it and `title` are recorded but do
//!   not change the vector (Google tunes vectors per task; the fake keeps them comparable).
//! * Vectors: the model's full size (3072 for `gemini-embedding-001`) is unit length; a smaller
//!   `outputDimensionality` is its prefix, NOT re-normalised, as section 5 says of the real
//!   model. Values are serialised as JSON numbers with the shortest `f32` spelling.
//! * Injected errors: 429 `RESOURCE_EXHAUSTED` (the quota message, a `QuotaFailure` and a
//!   `Help` link, plus a `RetryInfo` only via [`FakeGoogle::rate_limit_next`], whose
//!   `retryDelay` is a proto3 JSON duration: `"13s"`, or with 3, 6 or 9 fractional digits,
//!   `"1.500s"`); 500 `INTERNAL`; 503
//!   `UNAVAILABLE` ("The model is overloaded"); 504 `DEADLINE_EXCEEDED`; 400, 403, 404 with
//!   their canonical statuses. No `Retry-After` header is sent: the delay is in the body only.
//! * Unknown methods (`:generateContent`) and unknown URLs are 404 `NOT_FOUND` with the same
//!   envelope and are not recorded.
//!
//! It must not use tokio's paused clock: latency is wall-clock on real sockets, so it cannot
//! run inside the deterministic simulation of `iace-sim`'s seeded runs. Every embedding
//! request is kept in memory for inspection (without its vectors), so a long-running
//! `iace-dev` session grows without bound (by design: tests want the full history).

mod api;
mod error;
mod state;
mod validate;

use crate::fake::Served;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use self::state::{InjectedFailure, Shared};

/// How the fake behaves. [`Default`] gives test values.
#[derive(Debug, Clone)]
pub struct FakeGoogleConfig {
    /// Requests must carry this key in `x-goog-api-key` or `?key=`. Real keys start `AIza`.
    pub api_key: String,
    /// Models that exist, with their full vector size; any other model in the path is 404.
    pub models: Vec<FakeModel>,
    /// Most requests in one `batchEmbedContents` (section 5: 100 [UNVERIFIED]).
    pub max_batch: usize,
    /// How a request without any key is answered.
    pub missing_key: MissingKey,
    /// Delay before each answer (changed at run time with [`FakeGoogle::set_latency`]).
    pub latency: Duration,
}

impl Default for FakeGoogleConfig {
    fn default() -> Self {
        FakeGoogleConfig {
            api_key: "AIzaSyFAKE-test-key-0000000000000000".to_owned(),
            models: vec![FakeModel::new("gemini-embedding-001", 3072)],
            max_batch: 100,
            missing_key: MissingKey::default(),
            latency: Duration::ZERO,
        }
    }
}

/// An embedding model the fake serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeModel {
    /// Name without the `models/` prefix, as in the URL (`gemini-embedding-001`).
    pub name: String,
    /// Size of its full vector, the default and the largest `outputDimensionality`.
    pub dims: usize,
}

impl FakeModel {
    /// A model named `name` with `dims`-value vectors.
    pub fn new(name: &str, dims: usize) -> Self {
        FakeModel {
            name: name.to_owned(),
            dims,
        }
    }
}

/// The answer to a request that carries no key at all (section 5 documents only the wrong-key
/// answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingKey {
    /// The documented wrong-key answer: 400 `INVALID_ARGUMENT`, `ErrorInfo` `API_KEY_INVALID`.
    #[default]
    InvalidArgument,
    /// 403 `PERMISSION_DENIED`, "Method doesn't allow unregistered callers ..." [UNVERIFIED].
    PermissionDenied,
}

/// Which of the two endpoints a request called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedMethod {
    /// `:embedContent`, one text.
    EmbedContent,
    /// `:batchEmbedContents`, up to [`FakeGoogleConfig::max_batch`] texts.
    BatchEmbedContents,
}

/// Where the request's key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// The `x-goog-api-key` header (what the SDK sends; keeps the key out of URLs and logs).
    Header,
    /// The `?key=` query parameter.
    Query,
}

/// A fault the fake injected into a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// Answered with this HTTP status and Google's error body.
    Status(u16),
    /// Never answered ([`FakeGoogle::stall_next`]).
    Stall,
}

/// One embedding request inside a recorded call (the single request of `embedContent`, or one
/// of `requests[]`), read leniently: fields that were absent or of the wrong type are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedItem {
    /// The body's `model` (`models/...`).
    pub model: Option<String>,
    /// The texts of `content.parts`, joined by `\n`.
    pub text: Option<String>,
    /// `taskType`.
    pub task_type: Option<String>,
    /// `title`.
    pub title: Option<String>,
    /// `outputDimensionality`.
    pub output_dimensionality: Option<i64>,
}

/// One `embedContent` / `batchEmbedContents` call, as received and answered.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The endpoint.
    pub method: EmbedMethod,
    /// The model of the path (`gemini-embedding-001`).
    pub model: String,
    /// Where the key came from; `None` when there was none.
    pub key_source: Option<KeySource>,
    /// The embedding requests of the body, in order (empty when it was not readable).
    pub items: Vec<RecordedItem>,
    /// The parsed JSON body (`Null` when it was not JSON).
    pub body: Value,
    /// HTTP status answered (0 until answered: during the latency, while stalled, or when the
    /// client left first).
    pub status: u16,
    /// The error's `status` (`INVALID_ARGUMENT`, ...), when it was an error.
    pub error_status: Option<String>,
    /// The fault injected, if any.
    pub fault: Option<InjectedFault>,
    /// The client went away before the answer was sent.
    pub cancelled: bool,
    /// When the request arrived.
    pub received_at: Instant,
    /// When it was answered or found cancelled.
    pub finished_at: Option<Instant>,
}

impl RecordedRequest {
    /// The texts, in order (`""` for an item without one).
    pub fn texts(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|i| i.text.clone().unwrap_or_default())
            .collect()
    }

    /// The `taskType` of every item, in order.
    pub fn task_types(&self) -> Vec<Option<String>> {
        self.items.iter().map(|i| i.task_type.clone()).collect()
    }

    /// The `outputDimensionality` of every item, in order.
    pub fn output_dimensionalities(&self) -> Vec<Option<i64>> {
        self.items.iter().map(|i| i.output_dimensionality).collect()
    }
}

/// A running fake Gemini API on `127.0.0.1`.
///
/// Dropping it without [`FakeGoogle::shutdown`] also stops it (stalled requests watch the same
/// stop signal, which closes when the sender drops), just without waiting.
pub struct FakeGoogle {
    shared: Arc<Shared>,
    served: Served,
}

impl FakeGoogle {
    /// Binds `127.0.0.1:0` and serves `/v1beta/models/{model}:embedContent` and
    /// `:batchEmbedContents`.
    pub async fn start(config: FakeGoogleConfig) -> io::Result<FakeGoogle> {
        let (shared, served) = Served::start(|stop| {
            let shared = Arc::new(Shared::new(config, stop));
            let app = api::router(shared.clone());
            Ok((shared, app))
        })
        .await?;
        Ok(FakeGoogle { shared, served })
    }

    /// The socket the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://127.0.0.1:PORT/v1beta`, the API base; clients append
    /// `/models/{model}:batchEmbedContents`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1beta", self.served.addr())
    }

    /// The key requests must present.
    pub fn api_key(&self) -> &str {
        &self.shared.cfg.api_key
    }

    /// The vector the fake answers for `text` under `model` with `output_dimensionality`
    /// (`None`: the model's full size); `None` for a model it does not serve.
    pub fn embedding(
        &self,
        model: &str,
        text: &str,
        output_dimensionality: Option<usize>,
    ) -> Option<Vec<f32>> {
        let m = self.shared.cfg.models.iter().find(|m| m.name == model)?;
        let mut v = full_embedding(model, text, m.dims);
        v.truncate(output_dimensionality.unwrap_or(m.dims));
        Some(v)
    }

    /// The next `n` authorised requests answer `status` with Google's error body, before any
    /// validation. A 429 this way carries no `RetryInfo` (see [`FakeGoogle::rate_limit_next`]).
    pub fn fail_next(&self, n: u32, status: u16) {
        self.arm(n, status, None);
    }

    /// The next `n` authorised requests answer 429 `RESOURCE_EXHAUSTED` with a
    /// `google.rpc.RetryInfo` whose `retryDelay` is `retry_delay` (`"13s"`, `"1.500s"`).
    pub fn rate_limit_next(&self, n: u32, retry_delay: Duration) {
        self.arm(n, 429, Some(retry_delay));
    }

    fn arm(&self, n: u32, status: u16, retry_delay: Option<Duration>) {
        self.shared.lock().fail = (n > 0).then_some(InjectedFailure {
            remaining: n,
            status,
            retry_delay,
        });
    }

    /// The next valid request is never answered (no status, no headers) until the client gives
    /// up (recorded as cancelled) or the fake stops. Calls add up.
    pub fn stall_next(&self) {
        self.shared.lock().stalls += 1;
    }

    /// Every answer from now on waits `latency` first.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Every embedding request received, in arrival order (in-flight ones included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Polls `f` every 10 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_for<F: Fn(&FakeGoogle) -> bool>(&self, timeout: Duration, f: F) -> bool {
        crate::fake::poll_until(timeout, || f(self)).await
    }

    /// Stops the server; stalled requests end at once, others get up to 2 s to finish.
    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}

/// The fake's full, unit-length vector of `dims` values for `text` under `model`: SplitMix64
/// seeded with the FNV-1a hash of `model`, a NUL and `text`, each value a sum of four uniforms
/// (roughly Gaussian, like real embeddings), normalised. Stable across processes and machines.
pub fn full_embedding(model: &str, text: &str, dims: usize) -> Vec<f32> {
    let mut seed_bytes = Vec::with_capacity(model.len() + 1 + text.len());
    seed_bytes.extend_from_slice(model.as_bytes());
    seed_bytes.push(0);
    seed_bytes.extend_from_slice(text.as_bytes());
    let mut rng = SplitMix64::new(fnv1a(&seed_bytes), 0x6001_e5ed);
    let mut uniform = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let raw: Vec<f64> = (0..dims)
        .map(|_| uniform() + uniform() + uniform() + uniform() - 2.0)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    raw.iter()
        .map(|x| if norm > 0.0 { (x / norm) as f32 } else { 0.0 })
        .collect()
}

/// SplitMix64 seeded as `iace-sim`'s `Rng` is (so the vectors stay what they have been), a copy
/// of its two functions so that the fakes do not depend on the simulator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64, stream: u64) -> Self {
        let mut r = SplitMix64(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        r.next_u64();
        r
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_unit_length_and_differ_by_text_and_model() {
        let a = full_embedding("gemini-embedding-001", "hello", 3072);
        assert_eq!(a.len(), 3072);
        assert_eq!(a, full_embedding("gemini-embedding-001", "hello", 3072));
        let norm = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_ne!(a, full_embedding("gemini-embedding-001", "hello!", 3072));
        assert_ne!(a, full_embedding("other-model", "hello", 3072));
        // A 768-d prefix is far from unit length: the client has to normalise it.
        let prefix: f32 = a[..768].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((0.3..0.7).contains(&prefix), "{prefix}");
        // Pinned: stored vectors stay comparable with the fake's answers across builds.
        let first: Vec<i32> = a[..3].iter().map(|x| (x * 1e5).round() as i32).collect();
        assert_eq!(first, PINNED);
    }

    const PINNED: [i32; 3] = [1381, 749, -1301];
}
