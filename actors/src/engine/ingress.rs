//! Ingress: vendor events into the engine, and the catalog of inbound numbers.
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
use uuid::Uuid;

use super::supervisor::SupervisorMsg;
use super::{clamp_limit, Engine, EngineError, InboundCall, IngestOutcome};
use crate::catalog::{AgentType, NewPhoneNumber, PhoneNumberAssignment};
use crate::machine::{Call, CallId, CarrierEvent, Event, MediaReport, OrganizationId, PhoneNumber};
use crate::ports::{InboxInsert, InboxItem, InboxRow, PageRequest};

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

    /// Routes a stored inbox item to its call. A lost send is covered by the inbox sweep.
    pub(crate) fn deliver_item(&self, item: InboxItem) {
        let _ = self.inner.supervisor.send_message(SupervisorMsg::Deliver {
            call_id: item.call_id,
            event: item.to_event(),
            inbox: Some((item.vendor, item.event_id)),
            reply: None,
        });
    }

    // ---------------------------------------------------------------- call commands

    /// Transfers an answered call to a person at `to`.
    pub async fn transfer(
        &self,
        org: OrganizationId,
        id: CallId,
        to: PhoneNumber,
    ) -> Result<Call, EngineError> {
        let call = self.get_call(org, id).await?;
        if call.status.is_terminal() {
            return Err(EngineError::IllegalTransition {
                status: call.status,
                message: format!(
                    "the call already ended ({}); it cannot be transferred",
                    call.status
                ),
            });
        }
        self.rpc_supervisor(|reply| SupervisorMsg::Deliver {
            call_id: id,
            event: Event::TransferRequested { to },
            inbox: None,
            reply: Some(reply),
        })
        .await?
    }

    /// Journals what the media endpoint measured on a call's stream. Best effort: the figures
    /// are telemetry, not facts the call's outcome depends on.
    pub fn report_media(&self, call_id: CallId, report: MediaReport) {
        let _ = self.inner.supervisor.send_message(SupervisorMsg::Deliver {
            call_id,
            event: Event::MediaReported { report },
            inbox: None,
            reply: None,
        });
    }

    /// Our media endpoint has an authenticated stream for the call: its conversation starts
    /// (when the engine has voice ports and the call is answered).
    pub fn media_started(&self, call_id: CallId) {
        let _ = self
            .inner
            .supervisor
            .send_message(SupervisorMsg::MediaStarted { call_id });
    }

    /// Caller audio (μ-law 8 kHz) of one media frame, straight to the call's voice session.
    /// Returns at once; audio for a call without a session is dropped.
    pub fn media_audio(&self, call_id: CallId, mulaw: Vec<u8>) {
        self.inner
            .shared
            .voice
            .send(call_id, crate::voice::session::VoiceMsg::Audio(mulaw));
    }

    /// The carrier echoed a mark on the call's media stream.
    pub fn media_mark(&self, call_id: CallId, name: String) {
        self.inner
            .shared
            .voice
            .send(call_id, crate::voice::session::VoiceMsg::Mark(name));
    }

    /// Voice sessions running on this node.
    pub fn voice_sessions(&self) -> usize {
        self.inner.shared.voice.live()
    }

    // ---------------------------------------------------------------- phone numbers

    /// Assigns one of the organization's numbers to an agent that answers inbound calls.
    pub async fn create_phone_number(
        &self,
        org: OrganizationId,
        new: NewPhoneNumber,
    ) -> Result<PhoneNumberAssignment, EngineError> {
        let agent = self
            .get_agent(org, new.agent_id)
            .await
            .map_err(|e| match e {
                EngineError::NotFound { .. } => {
                    EngineError::invalid("agent_id", "no agent with this id in your organization")
                }
                other => other,
            })?;
        if agent.agent_type == AgentType::Outbound {
            return Err(EngineError::invalid(
                "agent_id",
                "the agent only places outbound calls; give it agent_type inbound or both",
            ));
        }
        let assignment = PhoneNumberAssignment {
            id: self.inner.shared.ports.ids.next_id(),
            organization_id: org,
            agent_id: agent.id,
            number: new.number,
            created_at: self.now(),
        };
        let stored = assignment.clone();
        let inserted = self
            .query(move |q| async move { Ok(q.insert_phone_number(&stored).await?) })
            .await?;
        if inserted {
            Ok(assignment)
        } else {
            Err(EngineError::Conflict(format!(
                "the number {} is already assigned",
                assignment.number
            )))
        }
    }

    /// The organization's numbers, newest first.
    pub async fn list_phone_numbers(
        &self,
        org: OrganizationId,
        agent: Option<Uuid>,
        mut page: PageRequest,
    ) -> Result<Vec<PhoneNumberAssignment>, EngineError> {
        page.limit = clamp_limit(page.limit);
        self.query(move |q| async move { Ok(q.list_phone_numbers(org, agent, &page).await?) })
            .await
    }

    /// Releases a number (calls to it are rejected from then on).
    pub async fn delete_phone_number(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> Result<(), EngineError> {
        let found = self
            .query(move |q| async move { Ok(q.delete_phone_number(org, id).await?) })
            .await?;
        found.then_some(()).ok_or(EngineError::NotFound {
            what: "phone number",
        })
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
