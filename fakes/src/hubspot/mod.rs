//! A wire-level fake of HubSpot's CRM v3 contacts search (shared/docs/vendor-protocols.md
//! section 7.4): `POST /crm/v3/objects/contacts/search`, on real sockets and real time.
//!
//! It exists so that IACE's real CRM client (reqwest, the Bearer token, retries, Retry-After,
//! the `hubspot` breaker) can be exercised without HubSpot: in integration tests and under
//! `iace-dev`. It speaks the wire as section 7.4 gives it — `Authorization: Bearer <token>`,
//! camelCase `filterGroups`/`propertyName`, answers `{"total","results":[{"id","properties",
//! "createdAt","updatedAt","archived"}],"paging"?}` and errors
//! `{"status":"error","message","correlationId","category"}` — over contacts a test seeds with
//! [`FakeHubSpot::put_contact`].
//!
//! Faults are injected per request: error answers with HubSpot's bodies
//! ([`FakeHubSpot::fail_next`]; a 429 with `Retry-After` through
//! [`FakeHubSpot::rate_limit_next`]), a delay before every answer
//! ([`FakeHubSpot::set_latency`]), and a request that is never answered
//! ([`FakeHubSpot::stall_next`]). The burst and daily limits are enforced too.
//!
//! Where section 7.4 leaves a behaviour open, the fake chooses as follows (change these only
//! together with the tests that pin them):
//! * The token is read from `Authorization: Bearer <token>` only (scheme case-insensitive).
//!   A missing, malformed or wrong token is 401 `INVALID_AUTHENTICATION` "Authentication
//!   credentials not found. ..." (HubSpot answers both alike). Requests that fail auth do not
//!   count against the limits, take no injected fault and carry no rate-limit headers.
//! * Checks run in this order: auth, the daily limit, the burst limit, injected fault, the
//!   body, stall.
//! * Limits: every authenticated request counts. More than
//!   [`FakeHubSpotConfig::burst_limit`] in a fixed [`BURST_INTERVAL`] window is 429
//!   `RATE_LIMITS` ("You have reached your ten_secondly_rolling limit.", `errorType`
//!   `RATE_LIMIT`, `policyName` `TEN_SECONDLY_ROLLING`), with a `Retry-After` (the rest of
//!   the window, whole seconds rounded up) only when
//!   [`FakeHubSpotConfig::burst_retry_after`] is set [UNVERIFIED: HubSpot documents no
//!   `Retry-After`]; more than [`FakeHubSpotConfig::daily_limit`] since the start is 429
//!   `DAILY`. Authenticated answers carry `X-HubSpot-RateLimit-Max`, `-Remaining`,
//!   `-Interval-Milliseconds`, `-Daily` and `-Daily-Remaining`; every answer carries
//!   `X-HubSpot-Correlation-Id`, the error body's `correlationId` (a fresh UUID).
//! * The body is read strictly: an unknown field anywhere is refused ("Invalid input JSON:
//!   Unrecognized field ..."), so a client that drifts from the documented spelling is caught
//!   here. Every refusal is 400 `VALIDATION_ERROR` naming the field [UNVERIFIED wording].
//! * `filterGroups` are ORed, the filters of a group ANDed; no groups (or none given) matches
//!   every contact. At most 5 groups, 6 filters in a group, 18 in all (HubSpot's documented
//!   limits); a group needs at least one filter. A filter needs a `propertyName` of a
//!   property that exists (see [`FakeHubSpotConfig::properties`]); `operator` defaults to
//!   `EQ`. `EQ`, `NEQ`, `LT`, `LTE`, `GT`, `GTE`, `BETWEEN` (`value`, `highValue`), `IN`,
//!   `NOT_IN` (`values`), `HAS_PROPERTY` and `NOT_HAS_PROPERTY` are implemented;
//!   `CONTAINS_TOKEN`/`NOT_CONTAINS_TOKEN` are refused as not implemented. Values may be
//!   strings, numbers or booleans (read as their text).
//! * Matching: equality is ASCII case-insensitive, surrounding spaces ignored [UNVERIFIED];
//!   phone numbers are compared as stored (no normalisation). `NEQ`/`NOT_IN` match contacts
//!   without the property. Orderings compare numbers as numbers, a stored timestamp against
//!   epoch ms, else case-folded text. `hs_object_id` is the contact's id, `createdate` and
//!   `lastmodifieddate` its timestamps.
//! * `query` (optional) splits into words, each of which must appear (case-insensitive) in one
//!   of `firstname`, `lastname`, `email`, `phone`, `mobilephone`, `company`.
//! * `sorts`: at most one, a property name or `{"propertyName","direction"}`
//!   (`ASCENDING`/`DESCENDING`); without one, results come in id order. Contacts without the
//!   sort property come last.
//! * `properties`: absent or empty answers `createdate`, `email`, `firstname`,
//!   `hs_object_id`, `lastmodifieddate`, `lastname`; otherwise the asked ones that exist
//!   (unknown names are dropped silently) plus `hs_object_id`, `createdate` and
//!   `lastmodifieddate`. Every answered property is present, `null` when the contact has no
//!   value; values are strings.
//! * `limit`: 1 to [`FakeHubSpotConfig::max_limit`] (200), 10 when absent; `after` is the
//!   offset of the page (a string, as HubSpot's `paging.next.after`). `paging` is only present
//!   when more results follow.
//! * Injected errors: 400 `VALIDATION_ERROR`; 401 `INVALID_AUTHENTICATION`; 403
//!   `MISSING_SCOPES` (with `context.requiredGranularScopes`); 404 `OBJECT_NOT_FOUND`; 409
//!   `CONFLICT`; 429 `RATE_LIMITS` as above (with `Retry-After` via
//!   [`FakeHubSpot::rate_limit_next`] only); 500 `INTERNAL_ERROR`; 503 `SERVICE_UNAVAILABLE`;
//!   502 and 504 as the edge proxy's HTML page (no JSON at all) [UNVERIFIED].
//! * Unknown URLs are 404 `OBJECT_NOT_FOUND` and are not recorded.
//!
//! It must not use tokio's paused clock: latency is wall-clock on real sockets, so it cannot
//! run inside the deterministic simulation of `iace-sim`'s seeded runs. Every search is
//! kept in memory for inspection, so a long-running `iace-dev` session grows without bound
//! (by design: tests want the full history).

mod api;
mod error;
mod search;
mod state;

use crate::fake::Served;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value};

use self::state::{Contact, InjectedFailure, Shared};

/// The burst window of [`FakeHubSpotConfig::burst_limit`] (HubSpot's "per 10 seconds").
pub const BURST_INTERVAL: Duration = Duration::from_secs(10);

/// Contact properties that exist without being seeded: HubSpot's common defaults.
pub const DEFAULT_CONTACT_PROPERTIES: [&str; 16] = [
    "address",
    "city",
    "company",
    "country",
    "createdate",
    "email",
    "firstname",
    "hs_lead_status",
    "hs_object_id",
    "hubspot_owner_id",
    "jobtitle",
    "lastmodifieddate",
    "lastname",
    "lifecyclestage",
    "mobilephone",
    "phone",
];

/// How the fake behaves. [`Default`] gives test values.
#[derive(Debug, Clone)]
pub struct FakeHubSpotConfig {
    /// Requests must carry `Authorization: Bearer <access_token>`. Private-app tokens look
    /// like `pat-na1-<uuid>`.
    pub access_token: String,
    /// Contact properties that exist (filters and sorts on others are refused); every
    /// property seeded with [`FakeHubSpot::put_contact`] is added.
    pub properties: Vec<String>,
    /// Largest `limit` of a search (200).
    pub max_limit: usize,
    /// Authenticated requests allowed per [`BURST_INTERVAL`] (190: a Professional portal's
    /// private app; 100 on Free and Starter).
    pub burst_limit: u32,
    /// Whether a burst-limit 429 carries `Retry-After` (the rest of the window).
    pub burst_retry_after: bool,
    /// Authenticated requests allowed over the fake's lifetime (the daily limit).
    pub daily_limit: u64,
    /// Delay before each answer (changed at run time with [`FakeHubSpot::set_latency`]).
    pub latency: Duration,
}

impl Default for FakeHubSpotConfig {
    fn default() -> Self {
        FakeHubSpotConfig {
            access_token: "pat-na1-00000000-0000-4000-8000-000000000000".to_owned(),
            properties: DEFAULT_CONTACT_PROPERTIES
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
            max_limit: 200,
            burst_limit: 190,
            burst_retry_after: false,
            daily_limit: 650_000,
            latency: Duration::ZERO,
        }
    }
}

/// A fault the fake injected into a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// Answered with this HTTP status and HubSpot's error body.
    Status(u16),
    /// Never answered ([`FakeHubSpot::stall_next`]).
    Stall,
}

/// One filter of a recorded search, read leniently: fields that were absent or not text are
/// `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFilter {
    /// Index of its filter group.
    pub group: usize,
    /// `propertyName`.
    pub property: Option<String>,
    /// `operator`.
    pub operator: Option<String>,
    /// `value` (a number as its text).
    pub value: Option<String>,
}

/// One search, as received and answered.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    /// The `Content-Type` header as sent.
    pub content_type: Option<String>,
    /// The filters of every group, in order (empty when the body had none or was unreadable).
    pub filters: Vec<RecordedFilter>,
    /// The parsed JSON body (`Null` when it was not JSON).
    pub body: Value,
    /// HTTP status answered (0 until answered: during the latency, while stalled, or when the
    /// client left first).
    pub status: u16,
    /// The error's `category` (`INVALID_AUTHENTICATION`, ...), when it was a JSON error.
    pub category: Option<String>,
    /// The answer's correlation id.
    pub correlation_id: Option<String>,
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
    /// The token of `Authorization: Bearer <token>`, if that is what was sent.
    pub fn bearer(&self) -> Option<&str> {
        let (scheme, token) = self.authorization.as_deref()?.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(token)
    }

    /// The body's `properties`, when it is an array of strings.
    pub fn properties(&self) -> Option<Vec<String>> {
        self.body
            .get("properties")?
            .as_array()?
            .iter()
            .map(|p| p.as_str().map(str::to_owned))
            .collect()
    }

    /// The body's `limit`, when it is an integer.
    pub fn limit(&self) -> Option<u64> {
        self.body.get("limit")?.as_u64()
    }
}

/// A running fake HubSpot API on `127.0.0.1`.
///
/// Dropping it without [`FakeHubSpot::shutdown`] also stops it (stalled requests watch the
/// same stop signal, which closes when the sender drops), just without waiting.
pub struct FakeHubSpot {
    shared: Arc<Shared>,
    served: Served,
}

impl FakeHubSpot {
    /// Binds `127.0.0.1:0` and serves `POST /crm/v3/objects/contacts/search`.
    pub async fn start(config: FakeHubSpotConfig) -> io::Result<FakeHubSpot> {
        let (shared, served) = Served::start(|stop| {
            let shared = Arc::new(Shared::new(config, stop));
            let app = api::router(shared.clone());
            Ok((shared, app))
        })
        .await?;
        Ok(FakeHubSpot { shared, served })
    }

    /// The socket the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://127.0.0.1:PORT`, the API base (like `https://api.hubapi.com`); clients append
    /// `/crm/v3/objects/contacts/search`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.served.addr())
    }

    /// The token requests must present.
    pub fn access_token(&self) -> &str {
        &self.shared.cfg.access_token
    }

    /// Creates contact `id` (digits) with `properties` (a JSON object; `{}` for none), or
    /// merges them into the existing one (a `null` clears a property) and bumps its
    /// `updatedAt`. Values are stored as strings (numbers and booleans as their text); the
    /// properties become known to the filters. `hs_object_id`, `createdate` and
    /// `lastmodifieddate` are the object's own and cannot be set.
    ///
    /// # Panics
    /// On an `id` that is not digits or `properties` that is not an object (a test bug).
    pub fn put_contact(&self, id: &str, properties: Value) {
        let numeric: u64 = id
            .parse()
            .unwrap_or_else(|_| panic!("a HubSpot contact id is digits, not {id:?}"));
        let Value::Object(props) = properties else {
            panic!("contact properties must be a JSON object, not {properties}");
        };
        let now = Utc::now();
        let mut st = self.shared.lock();
        let contact = st.contacts.entry(numeric).or_insert_with(|| Contact {
            id: numeric.to_string(),
            properties: Map::new(),
            created_at: now,
            updated_at: now,
        });
        contact.updated_at = now;
        let mut names = Vec::with_capacity(props.len());
        for (name, value) in props {
            if matches!(
                name.as_str(),
                "hs_object_id" | "createdate" | "lastmodifieddate"
            ) {
                continue;
            }
            let value = match value {
                Value::Null | Value::String(_) => value,
                Value::Number(n) => Value::String(n.to_string()),
                Value::Bool(b) => Value::String(b.to_string()),
                other => Value::String(other.to_string()),
            };
            contact.properties.insert(name.clone(), value);
            names.push(name);
        }
        st.properties.extend(names);
    }

    /// Archives contact `id` (searches no longer find it); false if there was none.
    pub fn remove_contact(&self, id: &str) -> bool {
        let Ok(numeric) = id.parse::<u64>() else {
            return false;
        };
        self.shared.lock().contacts.remove(&numeric).is_some()
    }

    /// Contact `id` as the API would answer it with every stored property (plus
    /// `hs_object_id`, `createdate`, `lastmodifieddate`), or `None`.
    pub fn contact(&self, id: &str) -> Option<Value> {
        let numeric: u64 = id.parse().ok()?;
        let st = self.shared.lock();
        let c = st.contacts.get(&numeric)?;
        let mut names: Vec<String> = c.properties.keys().cloned().collect();
        names.extend(
            ["hs_object_id", "createdate", "lastmodifieddate"]
                .iter()
                .map(|p| (*p).to_owned()),
        );
        names.sort();
        Some(c.to_json(&names))
    }

    /// The next `n` authenticated requests answer `status` with HubSpot's error body, before
    /// any validation. A 429 this way carries no `Retry-After` (see
    /// [`FakeHubSpot::rate_limit_next`]).
    pub fn fail_next(&self, n: u32, status: u16) {
        self.arm(n, status, None);
    }

    /// The next `n` authenticated requests answer 429 `RATE_LIMITS` with `Retry-After`:
    /// `retry_after` in whole seconds, rounded up (at least 1).
    pub fn rate_limit_next(&self, n: u32, retry_after: Duration) {
        self.arm(n, 429, Some(retry_after));
    }

    fn arm(&self, n: u32, status: u16, retry_after: Option<Duration>) {
        self.shared.lock().fail = (n > 0).then_some(InjectedFailure {
            remaining: n,
            status,
            retry_after,
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

    /// Every search received, in arrival order (in-flight ones included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Polls `f` every 10 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_for<F: Fn(&FakeHubSpot) -> bool>(&self, timeout: Duration, f: F) -> bool {
        crate::fake::poll_until(timeout, || f(self)).await
    }

    /// Stops the server; stalled requests end at once, others get up to 2 s to finish.
    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}
