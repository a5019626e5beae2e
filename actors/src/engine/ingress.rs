//! Ingress: vendor and carrier events into the engine.
//!
//! A webhook handler verifies the vendor's signature, maps the JSON to a [`VendorEvent`] and
//! calls [`Engine::ingest_vendor_event`]; it never touches the store. Here the event is stored
//! in the inbox (deduplicated on the vendor's event id) *before* the caller acknowledges the
//! vendor, then routed:
//!
//! * to its call, named by our id (Telnyx `client_state`) or found by the carrier's leg id;
//! * for an offer of an inbound call, to a new call of the agent that owns the called number
//!   (or the leg is rejected when nobody owns it);
//! * when the call does not exist yet (an inbound hangup that overtook its offer), the fact
//!   waits in the inbox under the leg id and is adopted when the call is created.
//!
//! Event types the engine does not act on are stored as processed and acknowledged.

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::supervisor::SupervisorMsg;
use super::{Engine, EngineError, InboundCall};
use crate::machine::{CallId, CarrierEvent, PhoneNumber};
use crate::ports::{InboxInsert, InboxItem, InboxRow};

/// A vendor event as a webhook handler understood it: authentic, parsed, in domain terms.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorEvent {
    /// Vendor name (`telnyx`).
    pub vendor: String,
    /// The vendor's event id: the dedupe key.
    pub event_id: String,
    /// The vendor's event type.
    pub event_type: String,
    /// When the vendor says it happened.
    pub occurred_at: DateTime<Utc>,
    /// What the event is about.
    pub route: EventRoute,
    /// The fact for the call's machine, if the engine acts on this event type.
    pub fact: Option<CarrierEvent>,
    /// The vendor's JSON, kept with the inbox row.
    pub raw: Option<serde_json::Value>,
}

/// What a vendor event is about.
#[derive(Debug, Clone, PartialEq)]
pub enum EventRoute {
    /// One of our calls (the id we gave the carrier comes back with the event).
    Call {
        /// Our call.
        call_id: CallId,
        /// The carrier's leg, when the event names it.
        leg: Option<String>,
    },
    /// Only the carrier's leg id is known.
    Leg(String),
    /// The carrier offers a new inbound call.
    Offer {
        /// The carrier's leg id.
        leg: String,
        /// Caller.
        from: PhoneNumber,
        /// The called number.
        to: PhoneNumber,
    },
    /// Nothing to route by (stored for the record).
    Nowhere,
}

/// Result of [`Engine::ingest_carrier_event`] and [`Engine::ingest_vendor_event`]. Every
/// variant means the event is durable (or was already): acknowledge the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored in the inbox and routed to the call.
    Accepted,
    /// Seen before (or, from the simulated carrier, about an unknown call): nothing to do.
    Duplicate,
    /// Stored for the record; the engine does not act on this event type.
    Stored,
    /// A fact whose call does not exist yet: stored, applied when the call appears.
    Parked,
    /// An offered inbound call nobody answers: stored, and the leg is being rejected.
    Rejected,
}

/// How many times a reject of an unknown number's leg is attempted.
const REJECT_ATTEMPTS: u32 = 3;

impl Engine {
    /// Stores a vendor event (deduplicated on its event id) and routes it. Once this returns
    /// `Ok`, the event is durable: acknowledge the vendor only then. `Err` means nothing is
    /// promised and the vendor should retry.
    pub async fn ingest_vendor_event(
        &self,
        event: VendorEvent,
    ) -> Result<IngestOutcome, EngineError> {
        let outcome = match event.route.clone() {
            EventRoute::Offer { leg, from, to } => self.offer(event, leg, from, to).await,
            EventRoute::Call { call_id, leg } => self.to_call(event, call_id, leg).await,
            EventRoute::Leg(leg) => match self.call_for_leg(&leg).await? {
                Some(call_id) => self.to_call(event, call_id, Some(leg)).await,
                None => self.park(event, Some(leg)).await,
            },
            EventRoute::Nowhere => self.park(event, None).await,
        }?;
        let label = match outcome {
            IngestOutcome::Accepted => "new",
            IngestOutcome::Duplicate => "duplicate",
            IngestOutcome::Stored => "stored",
            IngestOutcome::Parked => "parked",
            IngestOutcome::Rejected => "rejected",
        };
        self.inner
            .shared
            .metrics
            .inbox_events
            .with_label_values(&[label])
            .inc();
        Ok(outcome)
    }

    async fn to_call(
        &self,
        event: VendorEvent,
        call_id: CallId,
        leg: Option<String>,
    ) -> Result<IngestOutcome, EngineError> {
        let row = row(&event, Some(call_id), leg.clone());
        match self.record(&row).await? {
            InboxInsert::Duplicate => Ok(IngestOutcome::Duplicate),
            InboxInsert::UnknownCall => {
                // Not one of ours (yet): keep it under its leg.
                self.park(event, leg).await
            }
            InboxInsert::New => match row.item() {
                Some(item) => {
                    self.deliver_item(item);
                    Ok(IngestOutcome::Accepted)
                }
                None => Ok(IngestOutcome::Stored),
            },
        }
    }

    /// Stores an event that has no call. A fact waits for its call under the leg id; the
    /// re-check after storing closes the race with a concurrent create (either the create's
    /// adoption sees the parked row, or this re-check sees the call).
    async fn park(
        &self,
        event: VendorEvent,
        leg: Option<String>,
    ) -> Result<IngestOutcome, EngineError> {
        let row = row(&event, None, leg.clone());
        match self.record(&row).await? {
            InboxInsert::Duplicate => return Ok(IngestOutcome::Duplicate),
            InboxInsert::New | InboxInsert::UnknownCall => {}
        }
        if row.event.is_none() {
            return Ok(IngestOutcome::Stored);
        }
        if let Some(leg) = leg {
            if let Some(call_id) = self.call_for_leg(&leg).await? {
                self.adopt(&event.vendor, &leg, call_id).await?;
                return Ok(IngestOutcome::Accepted);
            }
        }
        info!(vendor = %event.vendor, event_id = %event.event_id, event_type = %event.event_type, "vendor event has no call yet; parked");
        Ok(IngestOutcome::Parked)
    }

    async fn offer(
        &self,
        event: VendorEvent,
        leg: String,
        from: PhoneNumber,
        to: PhoneNumber,
    ) -> Result<IngestOutcome, EngineError> {
        // A full node turns the caller away before reading anything (the create below
        // checks again, exactly).
        if let Err(full) = self.admit(crate::machine::Direction::Inbound) {
            return self.refuse(event, leg, full.to_string()).await;
        }
        let number = to.clone();
        let owner = self
            .query(move |q| async move { Ok(q.route_number(&number).await?) })
            .await?;
        let Some(owner) = owner else {
            return self
                .refuse(event, leg, format!("no agent answers {to}"))
                .await;
        };
        let org = owner.organization_id;
        let caller = from.clone();
        let customer_id = self
            .query(move |q| async move { Ok(q.customer_by_phone(org, &caller).await?) })
            .await?;
        let created = self
            .create_inbound_call(InboundCall {
                organization_id: org,
                agent_id: owner.agent_id,
                from,
                to,
                carrier_call_id: leg.clone(),
                customer_id,
            })
            .await;
        let call = match created {
            Ok(created) => created.call,
            Err(EngineError::Invalid(e)) => {
                // The number's agent cannot take calls (inactive, outbound only).
                return self.refuse(event, leg, e.to_string()).await;
            }
            Err(e @ EngineError::AtCapacity { .. }) => {
                // The caller is turned away rather than every live call slowed down.
                return self.refuse(event, leg, e.to_string()).await;
            }
            Err(e) => return Err(e),
        };
        let call_id = call.spec.id;
        let outcome = match self
            .record(&row(&event, Some(call_id), Some(leg.clone())))
            .await?
        {
            InboxInsert::Duplicate => IngestOutcome::Duplicate,
            _ => IngestOutcome::Accepted,
        };
        // The offer itself changes nothing (the call was created with its leg); mark it.
        if outcome == IngestOutcome::Accepted {
            let shared = &self.inner.shared;
            shared
                .with_timeout(
                    shared
                        .ports
                        .calls
                        .inbox_mark_processed(&event.vendor, &event.event_id),
                )
                .await?;
        }
        self.adopt(&event.vendor, &leg, call_id).await?;
        Ok(outcome)
    }

    /// Declines an offered leg nobody answers: the event is stored (processed) and the leg
    /// rejected in the background; the vendor is acknowledged either way.
    async fn refuse(
        &self,
        mut event: VendorEvent,
        leg: String,
        why: String,
    ) -> Result<IngestOutcome, EngineError> {
        event.fact = None;
        if self.record(&row(&event, None, Some(leg.clone()))).await? == InboxInsert::Duplicate {
            return Ok(IngestOutcome::Duplicate);
        }
        warn!(leg = %leg, reason = %why, "inbound call rejected");
        let shared = self.inner.shared.clone();
        tokio::spawn(async move {
            let command_id = format!("reject:{leg}");
            for attempt in 0..REJECT_ATTEMPTS {
                let sent = tokio::time::timeout(
                    shared.config.command_timeout,
                    shared.ports.telephony.reject(&leg, &command_id),
                )
                .await;
                match sent {
                    Ok(Ok(())) => return,
                    Ok(Err(crate::ports::TelephonyError::Rejected(e))) => {
                        warn!(leg = %leg, error = %e, "carrier refused the reject");
                        return;
                    }
                    Ok(Err(e)) => warn!(leg = %leg, attempt, error = %e, "reject failed"),
                    Err(_) => warn!(leg = %leg, attempt, "reject timed out"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(500 << attempt)).await;
            }
            shared
                .metrics
                .effect_failures
                .with_label_values(&["reject"])
                .inc();
        });
        Ok(IngestOutcome::Rejected)
    }

    /// Moves the facts parked under `leg` to the call and delivers them.
    async fn adopt(&self, vendor: &str, leg: &str, call_id: CallId) -> Result<(), EngineError> {
        let shared = &self.inner.shared;
        let items = shared
            .with_timeout(shared.ports.calls.inbox_adopt(vendor, leg, call_id))
            .await?;
        for item in items {
            info!(call_id = %call_id, event_id = %item.event_id, "parked vendor event adopted");
            self.deliver_item(item);
        }
        Ok(())
    }

    async fn record(&self, row: &InboxRow) -> Result<InboxInsert, EngineError> {
        let shared = &self.inner.shared;
        Ok(shared
            .with_timeout(shared.ports.calls.inbox_record(row))
            .await?)
    }

    async fn call_for_leg(&self, leg: &str) -> Result<Option<CallId>, EngineError> {
        let shared = &self.inner.shared;
        Ok(shared
            .with_timeout(shared.ports.calls.call_for_leg(leg))
            .await?)
    }

    /// Routes a stored inbox item to its call, here or (by a poke) on the node that runs it. A
    /// lost send is covered by the inbox sweep of the call's node.
    pub(crate) fn deliver_item(&self, item: InboxItem) {
        if !self.inner.shared.shards.may_run(item.call_id) {
            // Stored; the node that runs the call applies it.
            self.nudge(item.call_id);
            return;
        }
        let _ = self.inner.supervisor.send_message(SupervisorMsg::Deliver {
            call_id: item.call_id,
            event: item.to_event(),
            inbox: Some((item.vendor, item.event_id)),
            reply: None,
        });
    }

    /// Stores a carrier event in the inbox (deduplicated on its vendor event id) and routes it
    /// to the call. Once this returns `Ok`, the event is durable and will be applied even if
    /// the process dies right after: acknowledge the vendor only then.
    pub async fn ingest_carrier_event(
        &self,
        item: InboxItem,
    ) -> Result<IngestOutcome, EngineError> {
        let shared = &self.inner.shared;
        let new = shared
            .with_timeout(shared.ports.calls.inbox_insert(&item))
            .await?;
        let result = if new { "new" } else { "duplicate" };
        shared
            .metrics
            .inbox_events
            .with_label_values(&[result])
            .inc();
        if !new {
            return Ok(IngestOutcome::Duplicate);
        }
        self.deliver_item(item);
        Ok(IngestOutcome::Accepted)
    }
}

fn row(event: &VendorEvent, call_id: Option<CallId>, leg: Option<String>) -> InboxRow {
    InboxRow {
        vendor: event.vendor.clone(),
        event_id: event.event_id.clone(),
        event_type: event.event_type.clone(),
        call_id,
        carrier_leg: leg,
        occurred_at: event.occurred_at,
        event: event.fact.clone(),
        raw: event.raw.clone(),
    }
}
