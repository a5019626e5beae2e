//! Outbound webhooks: which journal entries are events customers hear about, what each event
//! says, and when a failed delivery is tried again.
//!
//! The store writes a call's events in the same transaction as the journal entry that causes
//! them ([`call_events`] is the rule it applies), so an event is never lost across a crash and
//! never invented by a write that rolled back. The [`DeliveryWorker`](actor::DeliveryWorker)
//! then delivers them, one endpoint per worker at a time, in order per call.

pub mod actor;
#[cfg(test)]
mod tests;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::machine::record::ConversationRecord;
use crate::machine::{Call, CallStatus, CarrierEvent, Event, OrganizationId};
use crate::ports::JournalEntry;

/// The version of the payloads' shape, sent in every payload as `version`.
pub const PAYLOAD_VERSION: u32 = 1;

/// How long after a call ends its transcript counts as ready: the conversation's last records
/// (a final transcript of the caller's last words) may be journaled after the hangup.
pub const TRANSCRIPT_SETTLE: Duration = crate::learning::LEARNING_SETTLE;

/// Delays before the 2nd, 3rd, ... attempt of a delivery: about three days in all, then the
/// delivery is given up (`failed`; it can still be retried by hand).
pub const RETRY_SCHEDULE: [Duration; 11] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// An endpoint that has failed every attempt for this long is disabled (and its owner told in
/// the organization's log).
pub const DISABLE_AFTER_FAILING: Duration = Duration::from_secs(3 * 24 * 3600);

/// The delay before the attempt after `attempts` failed ones; `None`: give up. A small jitter
/// (up to a tenth, derived from `salt` so it is the same on every node) keeps the retries of
/// many deliveries that failed together from arriving together.
pub fn retry_delay(schedule: &[Duration], attempts: u32, salt: u64) -> Option<Duration> {
    let base = *schedule.get(usize::try_from(attempts).ok()?.checked_sub(1)?)?;
    let tenth = base.as_millis() as u64 / 10;
    let jitter = if tenth == 0 { 0 } else { salt % tenth };
    Some(base + Duration::from_millis(jitter))
}

/// One event, as the store keeps it until every subscribed endpoint has it.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    /// The `webhook-id`: stable for the event, the receiver's dedupe key.
    pub id: String,
    /// Owner.
    pub organization_id: OrganizationId,
    /// The call it is about.
    pub call_id: Option<uuid::Uuid>,
    /// One of [`EVENT_TYPES`](crate::catalog::webhooks::EVENT_TYPES).
    pub event_type: &'static str,
    /// When it happened (the payload's `timestamp`).
    pub occurred_at: DateTime<Utc>,
    /// Not delivered before this (a transcript waits for the conversation's last records).
    pub deliver_after: DateTime<Utc>,
    /// The payload; `None` when it is made at the first attempt (the transcript, read from
    /// the journal once it has settled), then kept.
    pub payload: Option<Value>,
}

/// The `webhook-id` of a call's event: the call, the journal position that caused it and the
/// type (a position causes at most one event of each type).
pub fn event_id(call: uuid::Uuid, seq: i64, event_type: &str) -> String {
    let short = event_type.trim_start_matches("call.");
    format!("msg_{}_{seq}_{short}", call.simple())
}

/// The payload envelope of the Standard Webhooks convention, with its version.
pub fn envelope(event_type: &str, at: DateTime<Utc>, data: Value) -> Value {
    json!({
        "type": event_type,
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "version": PAYLOAD_VERSION,
        "data": data,
    })
}

/// A call as the API shows it (`GET /v1/calls/{id}`) and as every call event carries it.
pub fn call_data(c: &Call) -> Value {
    let seconds = |from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>| match (from, to) {
        (Some(a), Some(b)) => Some((b - a).num_milliseconds().max(0) as f64 / 1000.0),
        _ => None,
    };
    json!({
        "id": c.spec.id,
        "status": c.status,
        "end_reason": c.end_reason,
        "direction": c.spec.direction,
        "from": c.spec.from,
        "to": c.spec.to,
        "agent_id": c.spec.agent_id,
        "customer_id": c.spec.customer_id,
        "metadata": c.spec.metadata,
        "created_at": c.created_at,
        "ringing_at": c.ringing_at,
        "answered_at": c.answered_at,
        "ended_at": c.ended_at,
        "durations": {
            "ring_seconds": seconds(c.ringing_at.or(Some(c.created_at)), c.answered_at.or(c.ended_at)),
            "talk_seconds": seconds(c.answered_at, c.ended_at),
            "total_seconds": seconds(Some(c.created_at), c.ended_at),
        },
        "version": c.version,
    })
}

/// The events a journal entry causes, given the call's status before it (`None`: the entry
/// created the call) and the snapshot after it. The store writes them with the entry.
pub fn call_events(
    before: Option<CallStatus>,
    after: &Call,
    entry: &JournalEntry,
) -> Vec<WebhookEvent> {
    let mut out = Vec::new();
    let mut push = |event_type: &'static str, data: Option<Value>, deliver_after| {
        out.push(WebhookEvent {
            id: event_id(after.spec.id, entry.seq, event_type),
            organization_id: after.spec.organization_id,
            call_id: Some(after.spec.id),
            event_type,
            occurred_at: entry.at,
            deliver_after,
            payload: data.map(|d| envelope(event_type, entry.at, d)),
        });
    };
    let now = entry.at;
    if before.is_none() {
        push("call.created", Some(call_data(after)), now);
    }
    let entered = |status: CallStatus| after.status == status && before != Some(status);
    if entered(CallStatus::Ringing) {
        push("call.ringing", Some(call_data(after)), now);
    }
    if entered(CallStatus::InProgress) {
        push("call.answered", Some(call_data(after)), now);
    }
    if after.status.is_terminal() && !before.is_some_and(CallStatus::is_terminal) {
        push("call.ended", Some(call_data(after)), now);
        if after.answered_at.is_some() {
            let settle = chrono::Duration::from_std(TRANSCRIPT_SETTLE).unwrap_or_default();
            push("call.transcript_ready", None, now + settle);
        }
    }
    match &entry.event {
        Event::Carrier {
            event: CarrierEvent::Bridged { to },
            ..
        } => push(
            "call.transferred",
            Some(json!({ "call": call_data(after), "to": to })),
            now,
        ),
        Event::Conversation {
            record:
                ConversationRecord::Escalation {
                    turn,
                    reason,
                    detail,
                    to,
                },
        } => push(
            "call.escalated",
            Some(json!({
                "call": call_data(after),
                "turn": turn,
                "reason": reason,
                "detail": detail,
                "to": to,
            })),
            now,
        ),
        _ => {}
    }
    out
}

/// The `call.transcript_ready` payload: the transcript as `GET /v1/calls/{id}/transcript`
/// returns it, folded from the journal.
pub fn transcript_data(call: &Call, journal: &[JournalEntry]) -> Value {
    let transcript = crate::voice::transcript::Transcript::from_journal(journal);
    json!({
        "call_id": call.spec.id,
        "status": call.status.as_str(),
        "end_reason": call.end_reason.map(|r| r.as_str()),
        "segments": transcript.segments,
        "sentiment": transcript.sentiment,
        "events": transcript.events,
        "latency": transcript.latency,
    })
}
