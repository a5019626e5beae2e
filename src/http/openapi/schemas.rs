//! The wire forms of the engine's records and request bodies, as schemas of the OpenAPI
//! description. The engine's crate has no OpenAPI dependency; these mirrors are checked against
//! its types by the tests of [`super`] (the fields a request type accepts, the values of its
//! enums), and CI checks every answer of the live server against them.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

/// An E.164 number: `+`, a non-zero digit, 7 to 14 more digits.
pub const E164: &str = r"^\+[1-9][0-9]{7,14}$";
/// A display name: 1 to 200 characters once trimmed, no control characters.
pub const NAME: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";
/// A label (`segment`): 1 to 64 letters, digits, `_`, `-` or `.`.
pub const LABEL: &str = r"^[A-Za-z0-9_.-]{1,64}$";

/// A string schema whose values are `values` (taken from the engine's own lists).
pub(super) fn string_enum<'a>(
    description: &str,
    values: impl IntoIterator<Item = &'a str>,
) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .description(Some(description))
        .enum_values(Some(values.into_iter().map(str::to_owned)))
        .into()
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident, $description:literal, $values:expr) => {
        $(#[$doc])*
        pub struct $name;
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                string_enum($description, $values)
            }
        }
        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

use iace_actors::accounts as acc;
use iace_actors::machine as m;

string_enum!(
    /// `status` of a call.
    CallStatus,
    "Where the call is: `pending` (created), `ringing`, `in_progress` (answered), then one of \
     `completed`, `failed`, `canceled`.",
    m::CallStatus::ALL.map(m::CallStatus::as_str)
);
string_enum!(
    /// `end_reason` of a call.
    EndReason,
    "Why the call ended.",
    super::END_REASONS.iter().copied()
);
string_enum!(
    /// `direction` of a call.
    Direction,
    "Who placed the call.",
    [m::Direction::Outbound, m::Direction::Inbound].map(m::Direction::as_str)
);
string_enum!(
    /// `status` of an agent.
    AgentStatus,
    "Only `active` agents take new calls; `archived` is set by `DELETE` when the agent has call \
     history.",
    ["active", "inactive", "archived"]
);
string_enum!(
    /// `status` of an agent in a create or patch.
    AgentStatusInput,
    "`active` (takes calls) or `inactive`.",
    ["active", "inactive"]
);
string_enum!(
    /// `agent_type` of an agent.
    AgentType,
    "The calls the agent handles.",
    ["outbound", "inbound", "both"]
);
string_enum!(
    /// A role.
    Role,
    "What a caller may do; each role may do all the ones before it may: `read_only` < \
     `member` < `admin` < `owner`.",
    acc::Role::ALL.map(acc::Role::as_str)
);
string_enum!(
    /// A plan.
    Plan,
    "An organization's plan.",
    acc::Plan::ALL.map(acc::Plan::as_str)
);
string_enum!(
    /// An API key's tier.
    KeyTier,
    "An API key's own request budget: `low` 60, `standard` 600, `high` 6,000 requests a minute.",
    acc::KeyTier::ALL.map(acc::KeyTier::as_str)
);
string_enum!(
    /// A webhook event type.
    EventType,
    "A call event an endpoint can subscribe to.",
    iace_actors::catalog::webhooks::EVENT_TYPES
);
string_enum!(
    /// A delivery's status.
    DeliveryStatus,
    "`pending` (queued or between attempts), `delivered` or `failed` (gave up).",
    ["pending", "delivered", "failed"]
);
string_enum!(
    /// An analysis's status.
    AnalysisStatus,
    "`ok`, `invalid` (the model's answer did not fit the agent's schema) or `failed`.",
    ["ok", "invalid", "failed"]
);

/// The one error envelope of every error answer.
#[derive(ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "agent not found",
    "request_id": "0f9d6f1e-4c5e-4f57-9a1b-2f8c3a7d6e10"}}))]
pub struct Error {
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable: `invalid_request` (400), `unauthorized`,
    /// `invalid_credentials`, `invalid_token`, `refresh_token_reused`, `invalid_signature`
    /// (401), `forbidden`, `invalid_credentials` (403), `not_found` (404),
    /// `method_not_allowed` (405), `conflict`, `illegal_transition`, `last_owner` (409),
    /// `payload_too_large` (413), `idempotency_mismatch` (422), `rate_limited`,
    /// `concurrent_call_limit` (429), `internal` (500), `unavailable`, `overloaded`,
    /// `vendor_unavailable`, `at_capacity` (503), `timeout` (504).
    pub code: String,
    /// For people; not stable.
    pub message: String,
    /// The request's id (also the `x-request-id` header), for the server's logs.
    pub request_id: String,
}

/// `durations` of a call, in seconds (`null` until known).
#[derive(ToSchema)]
pub struct CallDurations {
    #[schema(required = true)]
    pub ring_seconds: Option<f64>,
    #[schema(required = true)]
    pub talk_seconds: Option<f64>,
    #[schema(required = true)]
    pub total_seconds: Option<f64>,
}

macro_rules! call_schema {
    ($(#[$doc:meta])* $name:ident { $($extra:tt)* }) => {
        $(#[$doc])*
        #[derive(ToSchema)]
        pub struct $name {
            pub id: Uuid,
            #[schema(schema_with = call_status)]
            pub status: String,
            /// Why it ended; `null` while it runs.
            #[schema(schema_with = nullable_end_reason, required = true)]
            pub end_reason: Option<String>,
            #[schema(schema_with = direction)]
            pub direction: String,
            #[schema(pattern = r"^\+[1-9][0-9]{7,14}$")]
            pub from: String,
            #[schema(pattern = r"^\+[1-9][0-9]{7,14}$")]
            pub to: String,
            pub agent_id: Uuid,
            #[schema(required = true)]
            pub customer_id: Option<Uuid>,
            /// As given at creation.
            #[schema(value_type = Option<Object>, required = true)]
            pub metadata: Option<serde_json::Value>,
            pub created_at: DateTime<Utc>,
            #[schema(required = true)]
            pub ringing_at: Option<DateTime<Utc>>,
            #[schema(required = true)]
            pub answered_at: Option<DateTime<Utc>>,
            #[schema(required = true)]
            pub ended_at: Option<DateTime<Utc>>,
            pub durations: CallDurations,
            /// Bumped by every change.
            pub version: i64,
            $($extra)*
        }
    };
}

call_schema!(
    /// A call.
    Call {}
);
call_schema!(
    /// A call and its post-call analysis (`GET /v1/calls/{id}`).
    CallWithAnalysis {
        /// `null` until the call has been analysed.
        #[schema(required = true)]
        pub analysis: Option<CallAnalysis>,
    }
);

/// A call's post-call analysis.
#[derive(ToSchema)]
pub struct CallAnalysis {
    #[schema(schema_with = analysis_status)]
    pub status: String,
    #[schema(required = true)]
    pub summary: Option<String>,
    /// Valid against the agent's analysis schema.
    #[schema(value_type = Option<Object>, required = true)]
    pub data: Option<serde_json::Value>,
    #[schema(required = true)]
    pub success: Option<bool>,
    #[schema(required = true)]
    pub success_reason: Option<String>,
    #[schema(required = true)]
    pub error: Option<String>,
    pub model: String,
    pub evaluated_at: DateTime<Utc>,
}

/// A page of calls.
#[derive(ToSchema)]
pub struct CallPage {
    pub data: Vec<Call>,
    /// The cursor of the next page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One journal entry of a call.
#[derive(ToSchema)]
pub struct CallEvent {
    /// Its place in the journal, from 1.
    #[schema(minimum = 1)]
    pub seq: i64,
    /// The event's kind (`created`, `dial_requested`, `answered`, `ended`, ...).
    pub kind: String,
    pub at: DateTime<Utc>,
    /// The event, as stored.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A call's journal.
#[derive(ToSchema)]
pub struct CallEvents {
    pub data: Vec<CallEvent>,
}

/// A call's conversation, folded from its journal.
#[derive(ToSchema)]
pub struct Transcript {
    pub call_id: Uuid,
    #[schema(schema_with = call_status)]
    pub status: String,
    #[schema(schema_with = nullable_end_reason, required = true)]
    pub end_reason: Option<String>,
    /// What was said: `speaker`, `text`, `start_ms`, `end_ms`, `confidence`,
    /// `interrupted`, `turn`.
    #[schema(value_type = Vec<Object>)]
    pub segments: Vec<serde_json::Value>,
    /// The caller's sentiment, per turn.
    #[schema(value_type = Vec<Object>)]
    pub sentiment: Vec<serde_json::Value>,
    /// Barge-ins, escalations, tool calls, DTMF, vendor gaps, ...
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Per reply, in microseconds.
    #[schema(value_type = Vec<Object>)]
    pub latency: Vec<serde_json::Value>,
}

/// An agent. The secrets of its HTTP tools are masked.
#[derive(ToSchema)]
pub struct Agent {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    /// Prompt, goals, style, tools.
    #[schema(value_type = Object)]
    pub persona_config: serde_json::Value,
    /// Voice, speed, language.
    #[schema(value_type = Object)]
    pub voice_config: serde_json::Value,
    #[schema(schema_with = agent_status)]
    pub status: String,
    #[schema(schema_with = agent_type)]
    pub agent_type: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/agents` body.
#[derive(ToSchema)]
pub struct NewAgent {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// Defaults to `{}`. Typed settings (greeting, goals, tools, timing) are checked.
    #[schema(value_type = Object, required = false)]
    pub persona_config: serde_json::Value,
    /// Defaults to `{}`.
    #[schema(value_type = Object, required = false)]
    pub voice_config: serde_json::Value,
    /// Defaults to `active` (also when `null`).
    #[schema(schema_with = nullable_agent_status_input)]
    pub status: Option<String>,
    /// Defaults to `outbound` (also when `null`).
    #[schema(schema_with = nullable_agent_type)]
    pub agent_type: Option<String>,
}

/// `PATCH /v1/agents/{id}` body: the fields to change (at least one).
#[derive(ToSchema)]
pub struct AgentPatch {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        required = false
    )]
    pub name: String,
    /// Replaces the persona.
    #[schema(value_type = Object, required = false)]
    pub persona_config: serde_json::Value,
    /// Replaces the voice.
    #[schema(value_type = Object, required = false)]
    pub voice_config: serde_json::Value,
    #[schema(schema_with = agent_status_input, required = false)]
    pub status: String,
    #[schema(schema_with = agent_type, required = false)]
    pub agent_type: String,
}

/// A customer.
#[derive(ToSchema)]
pub struct Customer {
    pub id: Uuid,
    pub organization_id: Uuid,
    /// Unique within the organization.
    #[schema(pattern = r"^\+[1-9][0-9]{7,14}$")]
    pub phone: String,
    #[schema(required = true)]
    pub email: Option<String>,
    #[schema(required = true)]
    pub name: Option<String>,
    #[schema(required = true)]
    pub segment: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/customers` body.
#[derive(ToSchema)]
pub struct NewCustomer {
    #[schema(pattern = r"^\+[1-9][0-9]{7,14}$")]
    pub phone: String,
    #[schema(
        max_length = 254,
        pattern = r"^\s*[^\s@\x00-\x1f\x7f-\x9f]+@[^\s@.\x00-\x1f\x7f-\x9f][^\s@\x00-\x1f\x7f-\x9f]*\.[^\s@\x00-\x1f\x7f-\x9f]*[^\s@.\x00-\x1f\x7f-\x9f]\s*$"
    )]
    pub email: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    /// A label (`vip`, `churn_risk`).
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub segment: Option<String>,
    /// Defaults to `{}`.
    #[schema(value_type = Object, required = false)]
    pub metadata: serde_json::Value,
}

/// `PATCH /v1/customers/{id}` body: the fields to change (at least one); `null` clears
/// `email`, `name` or `segment`.
#[derive(ToSchema)]
pub struct CustomerPatch {
    #[schema(pattern = r"^\+[1-9][0-9]{7,14}$", required = false)]
    pub phone: String,
    #[schema(
        max_length = 254,
        pattern = r"^\s*[^\s@\x00-\x1f\x7f-\x9f]+@[^\s@.\x00-\x1f\x7f-\x9f][^\s@\x00-\x1f\x7f-\x9f]*\.[^\s@\x00-\x1f\x7f-\x9f]*[^\s@.\x00-\x1f\x7f-\x9f]\s*$"
    )]
    pub email: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub segment: Option<String>,
    /// Replaces the metadata.
    #[schema(value_type = Object, required = false)]
    pub metadata: serde_json::Value,
}

/// A phone number and the agent that answers it.
#[derive(ToSchema)]
pub struct PhoneNumber {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub agent_id: Uuid,
    /// Unique across organizations.
    #[schema(pattern = r"^\+[1-9][0-9]{7,14}$")]
    pub number: String,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/phone-numbers` body.
#[derive(ToSchema)]
pub struct NewPhoneNumber {
    /// As provisioned at the carrier.
    #[schema(pattern = r"^\+[1-9][0-9]{7,14}$")]
    pub number: String,
    pub agent_id: Uuid,
}

/// `POST /v1/calls` body.
#[derive(ToSchema)]
pub struct NewCall {
    /// The called party.
    #[schema(pattern = r"^\+[1-9][0-9]{7,14}$")]
    pub to: String,
    /// The calling number.
    #[schema(pattern = r"^\+[1-9][0-9]{7,14}$")]
    pub from: String,
    /// An active agent that places calls.
    pub agent_id: Uuid,
    /// The customer called, when known.
    pub customer_id: Option<Uuid>,
    /// Kept with the call.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// A webhook endpoint (its signing secret only in the answers that make one).
#[derive(ToSchema)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub url: String,
    pub description: String,
    pub event_types: Vec<EventType>,
    pub enabled: bool,
    /// Why the server disabled it.
    #[schema(required = true)]
    pub disabled_reason: Option<String>,
    /// The end of a rotation: until then the previous secret signs too.
    #[schema(required = true)]
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `whsec_...`: in the answers to the create and to a rotation only.
    pub secret: Option<String>,
}

/// `POST /v1/webhook-endpoints` body.
#[derive(ToSchema)]
pub struct NewWebhookEndpoint {
    /// An absolute `https://` or `http://` URL; private and local addresses are refused
    /// (unless the server allows them).
    #[schema(format = "uri", max_length = 2048)]
    pub url: String,
    /// Defaults to empty.
    #[schema(max_length = 500, required = false)]
    pub description: String,
    #[schema(min_items = 1)]
    pub event_types: Vec<EventType>,
    /// Defaults to true.
    #[schema(required = false)]
    pub enabled: bool,
}

/// `PATCH /v1/webhook-endpoints/{id}` body: the fields to change (at least one).
#[derive(ToSchema)]
pub struct WebhookEndpointPatch {
    #[schema(format = "uri", max_length = 2048, required = false)]
    pub url: String,
    #[schema(max_length = 500, required = false)]
    pub description: String,
    #[schema(min_items = 1, required = false)]
    pub event_types: Vec<EventType>,
    /// Enabling clears `disabled_reason`.
    #[schema(required = false)]
    pub enabled: bool,
}

/// A delivery of an event to an endpoint.
#[derive(ToSchema)]
pub struct Delivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    /// The `webhook-id` header.
    pub event_id: String,
    pub event_type: String,
    #[schema(required = true)]
    pub call_id: Option<Uuid>,
    #[schema(schema_with = delivery_status)]
    pub status: String,
    #[schema(minimum = 0)]
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub last_attempt_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub last_status_code: Option<u16>,
    #[schema(required = true)]
    pub last_latency_ms: Option<u32>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    #[schema(required = true)]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// An entry of the organization's log.
#[derive(ToSchema)]
pub struct OrgLogEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// `webhook_endpoint.disabled`.
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A plan's limits.
#[derive(ToSchema)]
pub struct PlanLimits {
    pub org_requests_per_minute: u32,
    pub user_requests_per_minute: u32,
    pub concurrent_calls: u32,
}

/// The organization.
#[derive(ToSchema)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub plan: Plan,
    /// The plan in force: `free` once an unpaid invoice is older than the grace period.
    pub effective_plan: Plan,
    #[schema(required = true)]
    pub past_due_since: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub grace_period_ends_at: Option<DateTime<Utc>>,
    pub limits: PlanLimits,
    #[schema(required = true)]
    pub stripe_customer_id: Option<String>,
    #[schema(required = true)]
    pub hubspot_portal_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    /// Calls live now (`GET` only).
    pub live_calls: Option<i64>,
}

/// `PATCH /v1/organization` body: the fields to change (at least one).
#[derive(ToSchema)]
pub struct OrgPatch {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        required = false
    )]
    pub name: String,
    /// Links the HubSpot portal (its hub id); `null` unlinks.
    #[schema(minimum = 1)]
    pub hubspot_portal_id: Option<i64>,
}

/// An API key as listed (never the key itself).
#[derive(ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    /// The first characters of the key.
    pub prefix: String,
    pub role: Role,
    pub tier: KeyTier,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub last_used_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// The user who made it, when a user did.
    #[schema(required = true)]
    pub created_by: Option<Uuid>,
}

/// A new API key: the key itself is in this answer only.
#[derive(ToSchema)]
pub struct CreatedApiKey {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub role: Role,
    pub tier: KeyTier,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub last_used_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub revoked_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub created_by: Option<Uuid>,
    /// `iace_...`: keep it, it is not shown again.
    pub api_key: String,
}

/// A user.
#[derive(ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub disabled: bool,
    #[schema(required = true)]
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// A generated one-time password: in the answer to a create without one only.
    pub password: Option<String>,
}

/// The caller: `GET /v1/me`.
#[derive(ToSchema)]
pub struct Me {
    pub organization_id: Uuid,
    /// `{"kind":"user","id":{"user","session"}}` or `{"kind":"api_key","id":...}`.
    #[schema(value_type = Object)]
    pub subject: serde_json::Value,
    pub role: Role,
    /// The key's tier, when the caller is an API key.
    #[schema(schema_with = nullable_key_tier, required = true)]
    pub key_tier: Option<String>,
    pub plan: Plan,
    pub limits: PlanLimits,
}

/// A signed-in user, in a token answer.
#[derive(ToSchema)]
pub struct TokenUser {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub email: String,
    pub role: Role,
}

/// An access token and a refresh token.
#[derive(ToSchema)]
pub struct Tokens {
    /// A JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds.
    pub expires_in: i64,
    /// Opaque (`iacert_...`), for `/v1/auth/refresh`.
    pub refresh_token: String,
    /// Seconds.
    pub refresh_expires_in: i64,
    pub user: TokenUser,
}

/// A customer memory found.
#[derive(ToSchema)]
pub struct MemoryHit {
    pub id: Uuid,
    /// `issue`, `preference`, `commitment`, `sentiment_summary`, `call_summary`.
    pub kind: String,
    pub content: String,
    pub importance: f32,
    pub similarity: f32,
    pub relevance: f32,
    #[schema(required = true)]
    pub source_call_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// Customer memories found.
#[derive(ToSchema)]
pub struct MemoryHits {
    pub data: Vec<MemoryHit>,
}

/// A learned pattern found.
#[derive(ToSchema)]
pub struct PatternHit {
    pub id: Uuid,
    pub agent_id: Uuid,
    /// `turn_sequence`, `tool_sequence`, ...
    pub pattern_type: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub pattern_data: serde_json::Value,
    pub usage_count: i32,
    pub success_rate: f64,
    pub similarity: f32,
    #[schema(required = true)]
    pub source_call_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// Learned patterns found.
#[derive(ToSchema)]
pub struct PatternHits {
    pub data: Vec<PatternHit>,
}

macro_rules! page {
    ($($name:ident of $item:ident),* $(,)?) => {$(
        /// A page of a list, newest first (users: oldest first).
        #[derive(ToSchema)]
        pub struct $name {
            pub data: Vec<$item>,
            /// The cursor of the next page (`cursor=`); `null` on the last.
            #[schema(required = true)]
            pub next_cursor: Option<String>,
        }
    )*};
}

page!(
    AgentPage of Agent,
    CustomerPage of Customer,
    PhoneNumberPage of PhoneNumber,
    ApiKeyPage of ApiKey,
    UserPage of User,
    WebhookEndpointPage of WebhookEndpoint,
    DeliveryPage of Delivery,
    OrgLogPage of OrgLogEntry,
);

fn call_status() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("CallStatus"))
}
fn direction() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Direction"))
}
fn agent_status() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("AgentStatus"))
}
fn agent_status_input() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("AgentStatusInput"))
}
fn agent_type() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("AgentType"))
}
fn delivery_status() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("DeliveryStatus"))
}
fn analysis_status() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("AnalysisStatus"))
}
fn nullable(name: &str) -> RefOr<Schema> {
    utoipa::openapi::schema::OneOfBuilder::new()
        .item(utoipa::openapi::Ref::from_schema_name(name))
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::Null))
                .build(),
        )
        .into()
}
fn nullable_end_reason() -> RefOr<Schema> {
    nullable("EndReason")
}
fn nullable_key_tier() -> RefOr<Schema> {
    nullable("KeyTier")
}
fn nullable_agent_status_input() -> RefOr<Schema> {
    nullable("AgentStatusInput")
}
fn nullable_agent_type() -> RefOr<Schema> {
    nullable("AgentType")
}

/// `POST /v1/me/password`.
#[derive(ToSchema)]
pub struct Changed {
    /// `true`.
    pub changed: bool,
}

/// `DELETE /v1/customers/{id}/memories`.
#[derive(ToSchema)]
pub struct Deleted {
    /// Memories deleted.
    #[schema(minimum = 0)]
    pub deleted: u64,
}

/// `POST /v1/auth/revoke`.
#[derive(ToSchema)]
pub struct Revoked {
    /// Whether the token named a live session.
    pub revoked: bool,
}

/// `POST /v1/auth/revoke-all`.
#[derive(ToSchema)]
pub struct RevokedSessions {
    /// Sessions ended.
    #[schema(minimum = 0)]
    pub revoked_sessions: u64,
}

/// A public key of access tokens (RFC 8037).
#[derive(ToSchema)]
pub struct Jwk {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    pub kid: String,
    /// `EdDSA`.
    pub alg: String,
    /// `sig`.
    #[schema(rename = "use")]
    pub use_: String,
}

/// The key set: Ed25519 keys only (tokens signed with an HMAC secret are checked here only).
#[derive(ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// A vendor event taken.
#[derive(ToSchema)]
pub struct IngestStatus {
    /// `accepted`, `stored`, `duplicate`, `parked` or `rejected`.
    pub status: String,
}

/// A Stripe event taken.
#[derive(ToSchema)]
pub struct Received {
    /// `true`.
    pub received: bool,
    /// Seen before (nothing changed).
    pub duplicate: bool,
}

/// A HubSpot batch taken.
#[derive(ToSchema)]
pub struct ReceivedBatch {
    /// `true`.
    pub received: bool,
    #[schema(minimum = 0)]
    pub new: u64,
    #[schema(minimum = 0)]
    pub duplicates: u64,
}

/// The vendor breakers.
#[derive(ToSchema)]
pub struct Breakers {
    /// One per vendor: `vendor`, `state`, `failure_rate`, `slow_rate`, `calls_in_window`,
    /// `consecutive_failures`, `open_until`, ...
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<serde_json::Value>,
}
