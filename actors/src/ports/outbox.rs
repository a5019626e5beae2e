//! The webhook outbox: events waiting for their endpoints, the deliveries' record, the
//! endpoints' delivery leases ([`OutboxStore`]), and the HTTP sender ([`WebhookSender`]).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::calls::StoreResult;
use super::catalog::PageRequest;
use crate::machine::{CallId, OrganizationId};

/// An endpoint this worker may deliver to until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLease {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Its owner.
    pub organization_id: OrganizationId,
    /// Where to post.
    pub url: String,
    /// The secrets that sign: the current one, and the previous one during a rotation.
    pub secrets: Vec<String>,
    /// The lease's end.
    pub until: DateTime<Utc>,
}

/// A delivery whose turn has come: the first pending one of its call for its endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct DueDelivery {
    /// The delivery.
    pub id: Uuid,
    /// The event (`webhook-id`).
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// The call it is about.
    pub call_id: Option<CallId>,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
    /// When the event was committed (latency from commit to first attempt is measured).
    pub created_at: DateTime<Utc>,
    /// The payload, `None` until made (see [`WebhookEvent::payload`](crate::outbox::WebhookEvent)).
    pub payload: Option<Value>,
    /// Attempts made so far.
    pub attempts: u32,
}

/// What an attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// A 2xx answer: delivered.
    Delivered,
    /// Anything else but a 410: tried again later, or given up.
    Failed,
    /// `410 Gone`: the receiver is gone for good; the endpoint is disabled.
    Gone,
}

/// One attempt, to record.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// The delivery.
    pub delivery_id: Uuid,
    /// Its endpoint.
    pub endpoint_id: Uuid,
    /// 1-based; the delivery had `attempt - 1` before (a record that finds another number
    /// was overtaken by another worker and changes nothing).
    pub attempt: u32,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// The outcome.
    pub outcome: AttemptOutcome,
    /// The receiver's status code, when it answered.
    pub status_code: Option<u16>,
    /// From sending to the answer (or the failure).
    pub latency: Duration,
    /// Why it failed (connection, timeout, status, refused address).
    pub error: Option<String>,
    /// When to try again after a failure; `None`: give up.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// An endpoint failing since before this is disabled by this failure.
    pub disable_if_failing_since: DateTime<Utc>,
}

/// What recording an attempt did to the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The delivery moved on (delivered, rescheduled or given up).
    Done,
    /// Another worker recorded this attempt already: nothing changed.
    Overtaken,
    /// The endpoint was disabled (410, or failing for days), for this reason.
    Disabled(String),
}

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for an attempt.
    Pending,
    /// A 2xx came back.
    Delivered,
    /// Given up (attempts exhausted, or the endpoint was disabled).
    Failed,
}

impl DeliveryStatus {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// From storage.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// One delivery of one event to one endpoint, as `GET .../deliveries` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// Id.
    pub id: Uuid,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The event (`webhook-id`).
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// The call.
    pub call_id: Option<CallId>,
    /// State.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Queued.
    pub created_at: DateTime<Utc>,
    /// The next attempt, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last attempt.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Its status code.
    pub last_status_code: Option<u16>,
    /// Its latency, in milliseconds.
    pub last_latency_ms: Option<u32>,
    /// Its error.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// One entry of an organization's log: what the server did on the organization's behalf
/// that its people should know (an endpoint disabled).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrgLogEntry {
    /// Id.
    pub id: Uuid,
    /// When.
    pub at: DateTime<Utc>,
    /// What (`webhook_endpoint.disabled`).
    pub kind: String,
    /// Details.
    pub data: Value,
}

/// The outbox's persistence.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Leases to `node`, until `now + ttl`, up to `limit` enabled endpoints that have due
    /// deliveries and no other live lease (this node's own leases are renewed).
    async fn claim_endpoints(
        &self,
        node: &str,
        now: DateTime<Utc>,
        ttl: Duration,
        limit: u32,
    ) -> StoreResult<Vec<EndpointLease>>;

    /// Renews `node`'s lease of the endpoint until `until`; `false`: lost (or the endpoint is
    /// disabled or gone), stop delivering to it.
    async fn renew_endpoint(
        &self,
        endpoint: Uuid,
        node: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Gives the lease back.
    async fn release_endpoint(&self, endpoint: Uuid, node: &str) -> StoreResult<()>;

    /// Up to `limit` deliveries of the endpoint due at `now`, each the first pending one of
    /// its call (a later event of a call waits for the earlier one), oldest first, leaving
    /// out those in `in_flight` (whose calls' later events wait for them too).
    async fn due_deliveries(
        &self,
        endpoint: Uuid,
        now: DateTime<Utc>,
        limit: u32,
        in_flight: &[Uuid],
    ) -> StoreResult<Vec<DueDelivery>>;

    /// Keeps `payload` as the event's payload unless it has one already; the payload kept.
    async fn fix_payload(&self, event_id: &str, payload: &Value) -> StoreResult<Value>;

    /// Records an attempt and moves its delivery on, in one transaction; disables the
    /// endpoint on a 410 or when it has failed for too long (failing its pending deliveries
    /// and writing the organization's log).
    async fn record_attempt(&self, record: &AttemptRecord) -> StoreResult<Recorded>;

    /// The endpoint's deliveries, newest first (`None`: no such endpoint in `org`).
    async fn list_deliveries(
        &self,
        org: OrganizationId,
        endpoint: Uuid,
        page: &PageRequest,
    ) -> StoreResult<Option<Vec<Delivery>>>;

    /// Makes a delivery due again at `now` (a failed one counts its attempts on from where
    /// they are). `None`: no such delivery of that endpoint in `org`.
    async fn retry_delivery(
        &self,
        org: OrganizationId,
        endpoint: Uuid,
        delivery: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Delivery>>;

    /// The organization's log, newest first.
    async fn org_log(
        &self,
        org: OrganizationId,
        page: &PageRequest,
    ) -> StoreResult<Vec<OrgLogEntry>>;
}

/// What the receiver said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// Its status code; `None` when no answer came (connection, timeout, refused address).
    pub status: Option<u16>,
    /// Why it failed, when it did (a non-2xx answer carries the start of its body).
    pub error: Option<String>,
}

/// Posts a signed delivery. The implementation owns the safety rules: timeouts, the SSRF
/// guard on the resolved addresses, no redirects, the answer's body read only so far.
#[async_trait]
pub trait WebhookSender: Send + Sync + 'static {
    /// Posts `body` to `url`, signed with every one of `secrets` (Standard Webhooks:
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature`). `call_id`: the call the event
    /// is about (the request joins its trace).
    async fn send(
        &self,
        url: &str,
        webhook_id: &str,
        call_id: Option<CallId>,
        timestamp: i64,
        secrets: &[String],
        body: Vec<u8>,
    ) -> SendResult;
}
