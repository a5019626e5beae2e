//! Webhook delivery (sections 1.3 and 1.4): one worker per leg POSTs the leg's events in order,
//! one at a time, each signed with Ed25519 over `<timestamp>|<raw body>`, and re-attempts a
//! failed delivery after the configured delays with `meta.attempt` incremented (same `data.id`,
//! fresh timestamp and signature). Workers of different legs run concurrently.
//!
//! Injected faults ([`super::DeliveryFaults`]) are applied here and nowhere else, so the rest of
//! the fake always describes what "really" happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::state::Outgoing;
use super::state::Shared;
use super::{sign_with, DeliveryRecord, REORDER_WINDOW};

/// Telnyx re-attempts a webhook at most 5 times (section 1.3).
const MAX_RETRIES: usize = 5;

#[derive(Serialize)]
struct Envelope<'a> {
    data: EventData<'a>,
    meta: Meta<'a>,
}

#[derive(Serialize)]
struct EventData<'a> {
    record_type: &'static str,
    event_type: &'a str,
    id: &'a str,
    occurred_at: &'a str,
    payload: &'a Value,
}

#[derive(Serialize)]
struct Meta<'a> {
    attempt: u32,
    delivered_to: &'a str,
}

/// The leg's worker: runs until the leg's queue closes (after `call.hangup`) and is drained.
pub(crate) async fn deliver_leg(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(first) = queue.recv().await {
        let reorder = shared.lock().faults.reorder;
        if !reorder {
            deliver(&shared, &first).await;
            continue;
        }
        match tokio::time::timeout(REORDER_WINDOW, queue.recv()).await {
            Ok(Some(second)) => {
                deliver(&shared, &second).await;
                deliver(&shared, &first).await;
            }
            Ok(None) => {
                deliver(&shared, &first).await;
                return;
            }
            Err(_) => deliver(&shared, &first).await,
        }
    }
}

/// Delivers one event, and its injected duplicate.
async fn deliver(shared: &Shared, event: &Outgoing) {
    let (duplicate, drop_first) = {
        let mut st = shared.lock();
        st.webhooks_started += 1;
        let n = st.webhooks_started;
        let nth =
            |every: Option<u32>| every.is_some_and(|k| k > 0 && n.is_multiple_of(u64::from(k)));
        (
            nth(st.faults.duplicate_every),
            nth(st.faults.drop_first_attempt_every),
        )
    };
    attempts(shared, event, drop_first, false).await;
    if duplicate {
        attempts(shared, event, false, true).await;
    }
}

/// Attempts until a 2xx or the retry delays run out.
async fn attempts(shared: &Shared, event: &Outgoing, drop_first: bool, duplicate: bool) {
    let record = |attempt: u32, status: Option<u16>, error: Option<String>, latency: Duration| {
        shared.lock().deliveries.push(DeliveryRecord {
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            call_control_id: event.call_control_id.clone(),
            attempt,
            url: event.url.clone(),
            status,
            error,
            latency,
            duplicate,
        });
    };
    let Some(url) = event.url.as_deref() else {
        record(
            1,
            None,
            Some("the leg has no webhook URL".to_owned()),
            Duration::ZERO,
        );
        return;
    };
    let delays =
        &shared.cfg.webhook_retry_delays[..shared.cfg.webhook_retry_delays.len().min(MAX_RETRIES)];
    for attempt in 1..=(delays.len() as u32 + 1) {
        if attempt > 1 {
            tokio::time::sleep(delays[attempt as usize - 2]).await;
        }
        if attempt == 1 && drop_first {
            record(
                attempt,
                None,
                Some("first attempt dropped by fault injection".to_owned()),
                Duration::ZERO,
            );
            continue;
        }
        let body = serde_json::to_vec(&Envelope {
            data: EventData {
                record_type: "event",
                event_type: &event.event_type,
                id: &event.id,
                occurred_at: &event.occurred_at,
                payload: &event.payload,
            },
            meta: Meta {
                attempt,
                delivered_to: url,
            },
        })
        .unwrap_or_default();
        let timestamp = Utc::now().timestamp().to_string();
        let signature = sign_with(&shared.signing_key, &timestamp, &body);
        let sent = Instant::now();
        let result = shared
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("telnyx-signature-ed25519", signature)
            .header("telnyx-timestamp", timestamp)
            .timeout(shared.cfg.webhook_timeout)
            .body(body)
            .send()
            .await;
        let latency = sent.elapsed();
        let (status, error) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the body so the pooled connection can be reused.
                let _ = response.bytes().await;
                (Some(status), None)
            }
            Err(e) => (None, Some(describe(&e))),
        };
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        record(attempt, status, error, latency);
        if delivered {
            return;
        }
    }
    tracing::debug!(event_id = %event.id, event_type = %event.event_type, "fake telnyx: webhook given up");
}

/// The error and its causes on one line (reqwest's own message omits the cause).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timeout".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
