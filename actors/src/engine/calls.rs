//! Calls through the engine: create (outbound and inbound), read, list, hang up and transfer,
//! and the checks a new call passes first (vendor breaker, agent, idempotency key).
//!
//! A call is stored with its `created` journal entry before its actor starts; everything after
//! that goes through the call's actor, never straight to the store.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;
use uuid::Uuid;

use super::supervisor::SupervisorMsg;
use super::{clamp_limit, Engine, EngineError};
use crate::catalog::{self, AgentStatus, AgentType};
use crate::machine::{
    start, Call, CallId, CallSpec, CallStatus, Direction, Event, OrganizationId, PhoneNumber,
};
use crate::ports::{CallFilter, IdempotencyKey, InsertOutcome, JournalEntry};

/// `POST /v1/calls` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCall {
    /// Called party (E.164).
    pub to: PhoneNumber,
    /// Calling party (E.164, one of the organization's numbers).
    pub from: PhoneNumber,
    /// The agent that runs the call.
    pub agent_id: Uuid,
    /// The customer being called, when known.
    #[serde(default)]
    pub customer_id: Option<Uuid>,
    /// Free-form JSON object stored with the call.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// An inbound call offered by the carrier, already attributed to an organization and agent.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundCall {
    /// The organization that owns the called number.
    pub organization_id: OrganizationId,
    /// The agent that answers the number.
    pub agent_id: Uuid,
    /// Caller.
    pub from: PhoneNumber,
    /// The called number.
    pub to: PhoneNumber,
    /// The carrier's leg id (the dedupe key of the offer).
    pub carrier_call_id: String,
    /// The customer, when the caller's number is known.
    pub customer_id: Option<Uuid>,
}

/// Result of [`Engine::create_call`].
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedCall {
    /// The call.
    pub call: Call,
    /// `true` when an earlier request with the same `Idempotency-Key` created it.
    pub replayed: bool,
}

/// Draws of [`Engine::new_call_id`] before it gives up: with one shard of 256 held, the
/// chance of missing it is (255/256)^4096 < 1e-6.
const MAX_ID_DRAWS: usize = 4096;

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

impl Engine {
    /// Creates an outbound call and starts dialing. With an idempotency key, a repeat of the
    /// same request returns the first call (no second dial); a different request with the same
    /// key is refused.
    pub async fn create_call(
        &self,
        org: OrganizationId,
        req: NewCall,
        idempotency_key: Option<String>,
    ) -> Result<CreatedCall, EngineError> {
        self.create_call_within(org, req, idempotency_key, None)
            .await
    }

    /// [`Engine::create_call`] under a concurrent-call limit: refused with
    /// [`EngineError::ConcurrentCallLimit`] (nothing stored) when the organization already has
    /// `max_live` live calls. The count and the insert are one serialized step in the store, so
    /// racing creates on any number of nodes never exceed the limit; a replay of an
    /// idempotency key answers with its call even at the limit.
    pub async fn create_call_within(
        &self,
        org: OrganizationId,
        req: NewCall,
        idempotency_key: Option<String>,
        max_live: Option<u32>,
    ) -> Result<CreatedCall, EngineError> {
        let metadata = match req.metadata.clone() {
            None => serde_json::Value::Object(Default::default()),
            Some(v) => catalog::validate_object("metadata", v)?,
        };
        self.check_vendor(self.inner.shared.ports.telephony.vendor())?;
        let idempotency = match idempotency_key {
            None => None,
            Some(key) => Some(IdempotencyKey {
                fingerprint: fingerprint(&req, &metadata),
                key: validate_idempotency_key(&key)?,
            }),
        };
        let admission = self.admit(Direction::Outbound)?;
        let agent_id = req.agent_id;
        self.check_agent(org, agent_id, Direction::Outbound).await?;
        let spec = CallSpec {
            id: self.new_call_id()?,
            organization_id: org,
            direction: Direction::Outbound,
            from: req.from,
            to: req.to,
            agent_id,
            customer_id: req.customer_id,
            metadata,
            ring_timeout_secs: self.inner.shared.config.ring_timeout_secs,
            max_duration_secs: self.inner.shared.config.max_duration_secs,
            inbound_leg_id: None,
        };
        self.insert_and_activate(spec, idempotency, max_live, admission)
            .await
    }

    /// Takes an inbound call the carrier offers (the telephony adapter has already resolved
    /// the called number to its organization and agent). The call starts at `ringing` and is
    /// answered. Idempotent on the carrier's leg id: a redelivered "call initiated" returns
    /// the call created the first time.
    pub async fn create_inbound_call(
        &self,
        inbound: InboundCall,
    ) -> Result<CreatedCall, EngineError> {
        let leg = inbound.carrier_call_id.trim();
        if leg.is_empty() {
            return Err(EngineError::invalid(
                "carrier_call_id",
                "an inbound call needs the carrier's leg id",
            ));
        }
        let org = inbound.organization_id;
        let agent_id = inbound.agent_id;
        let admission = self.admit(Direction::Inbound)?;
        self.check_agent(org, agent_id, Direction::Inbound).await?;
        let canonical = serde_json::json!({
            "direction": "inbound",
            "leg": leg,
            "from": inbound.from,
            "to": inbound.to,
            "agent_id": agent_id,
            "customer_id": inbound.customer_id,
        });
        let idempotency = IdempotencyKey {
            key: validate_idempotency_key(&format!("inbound:{leg}"))?,
            fingerprint: digest(&canonical),
        };
        let shared = &self.inner.shared;
        let spec = CallSpec {
            id: self.new_call_id()?,
            organization_id: org,
            direction: Direction::Inbound,
            from: inbound.from,
            to: inbound.to,
            agent_id,
            customer_id: inbound.customer_id,
            metadata: serde_json::Value::Object(Default::default()),
            ring_timeout_secs: shared.config.ring_timeout_secs,
            max_duration_secs: shared.config.max_duration_secs,
            inbound_leg_id: Some(leg.to_owned()),
        };
        self.insert_and_activate(spec, Some(idempotency), None, admission)
            .await
    }

    /// A capacity slot for a new call, or [`EngineError::AtCapacity`] (counted) when the node
    /// runs as many calls as it may.
    pub(super) fn admit(
        &self,
        direction: Direction,
    ) -> Result<super::capacity::Admission, EngineError> {
        let shared = &self.inner.shared;
        shared.capacity.admit().map_err(|load| {
            shared
                .metrics
                .calls_refused
                .with_label_values(&[direction.as_str(), "capacity"])
                .inc();
            EngineError::AtCapacity {
                running: load.running + load.admitting,
                max: load.max,
            }
        })
    }

    /// What the node carries against its capacity.
    pub fn load(&self) -> super::Load {
        self.inner.shared.capacity.load()
    }

    /// A fresh call id in a shard this node runs, so that the new call's actor starts here
    /// (the store fences the insert with this node's epoch of the shard). Ids are drawn until
    /// one falls in a shard this node runs: with N nodes, N draws on average.
    fn new_call_id(&self) -> Result<CallId, EngineError> {
        let shared = &self.inner.shared;
        let draining = shared.draining.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..if draining { 0 } else { MAX_ID_DRAWS } {
            let id = shared.ports.ids.next_id();
            if shared.shards.may_run(id) {
                return Ok(id);
            }
        }
        match self.another_runner() {
            Some(peer) => Err(EngineError::Elsewhere { peer }),
            None => Err(EngineError::Unavailable(
                "this node runs no calls at the moment (joining, draining or cut off from the database); retry".into(),
            )),
        }
    }

    /// Refuses new work at once while `vendor`'s breaker is open (no breaker: allowed).
    fn check_vendor(&self, vendor: &str) -> Result<(), EngineError> {
        match self.inner.shared.ports.breakers.get(vendor) {
            Some(breaker) => breaker
                .check()
                .map_err(|rejected| EngineError::VendorUnavailable {
                    vendor: vendor.to_owned(),
                    until: rejected.until,
                }),
            None => Ok(()),
        }
    }
    /// The agent must exist in the organization, be active and take calls in `direction`.
    async fn check_agent(
        &self,
        org: OrganizationId,
        agent_id: Uuid,
        direction: Direction,
    ) -> Result<(), EngineError> {
        let agent = match self.inner.shared.lookups.agent(org, agent_id) {
            Some(agent) => {
                let m = &self.inner.shared.metrics;
                m.lookups.with_label_values(&["agent", "hit"]).inc();
                Some(agent)
            }
            None => {
                let m = &self.inner.shared.metrics;
                m.lookups.with_label_values(&["agent", "miss"]).inc();
                let found = self
                    .query(move |q| async move { Ok(q.get_agent(org, agent_id).await?) })
                    .await?;
                if let Some(agent) = &found {
                    self.inner.shared.lookups.keep_agent(agent);
                }
                found
            }
        }
        .ok_or_else(|| {
            EngineError::invalid("agent_id", "no agent with this id in your organization")
        })?;
        if agent.status != AgentStatus::Active {
            return Err(EngineError::invalid(
                "agent_id",
                format!(
                    "the agent is {}; only active agents take calls",
                    agent.status.as_str()
                ),
            ));
        }
        match (direction, agent.agent_type) {
            (Direction::Outbound, AgentType::Inbound) => Err(EngineError::invalid(
                "agent_id",
                "the agent only answers inbound calls",
            )),
            (Direction::Inbound, AgentType::Outbound) => Err(EngineError::invalid(
                "agent_id",
                "the agent only places outbound calls",
            )),
            _ => Ok(()),
        }
    }

    /// Stores a new call with its `created` journal entry and starts its actor. A replay of an
    /// idempotent request returns the stored call and makes sure it has an actor (the first
    /// request may have been cut off between the insert and the activation).
    async fn insert_and_activate(
        &self,
        spec: CallSpec,
        idempotency: Option<IdempotencyKey>,
        max_live: Option<u32>,
        admission: super::capacity::Admission,
    ) -> Result<CreatedCall, EngineError> {
        let shared = &self.inner.shared;
        let now = self.now();
        let org = spec.organization_id;
        let spec_direction = spec.direction;
        let (mut call, effects) = start(spec.clone(), now);
        call.owner_epoch = shared.shards.epoch_of(call.spec.id);
        let created = JournalEntry {
            call_id: call.spec.id,
            seq: call.version,
            at: now,
            event: Event::Created { spec },
        };
        let outcome = shared
            .with_timeout(shared.ports.calls.insert_call(
                &call,
                &created,
                idempotency.as_ref(),
                max_live,
            ))
            .await?;
        match outcome {
            InsertOutcome::Created => {
                shared.metrics.calls_created.inc();
                shared
                    .metrics
                    .events_applied
                    .with_label_values(&["created"])
                    .inc();
                info!(call_id = %call.spec.id, org = %org, direction = call.spec.direction.as_str(), to = %call.spec.to, "call created");
                self.inner
                    .supervisor
                    .send_message(SupervisorMsg::Activate {
                        call: Box::new(call.clone()),
                        effects,
                        admission: Some(admission),
                    })
                    .map_err(|_| EngineError::Unavailable("the engine is stopping".into()))?;
                Ok(CreatedCall {
                    call,
                    replayed: false,
                })
            }
            InsertOutcome::Existing(call) => {
                if !call.status.is_terminal() {
                    // The first request may have been cut off before the activation, on
                    // this node or on the one that runs the call.
                    self.nudge(call.spec.id);
                }
                Ok(CreatedCall {
                    call: *call,
                    replayed: true,
                })
            }
            InsertOutcome::IdempotencyMismatch => Err(EngineError::IdempotencyMismatch),
            InsertOutcome::UnknownAgent => Err(EngineError::invalid(
                "agent_id",
                "no agent with this id in your organization",
            )),
            InsertOutcome::UnknownCustomer => Err(EngineError::invalid(
                "customer_id",
                "no customer with this id in your organization",
            )),
            InsertOutcome::LiveLimit { live } => {
                shared
                    .metrics
                    .calls_refused
                    .with_label_values(&[spec_direction.as_str(), "plan_limit"])
                    .inc();
                Err(EngineError::ConcurrentCallLimit {
                    allowed: max_live.unwrap_or(0),
                    live,
                })
            }
        }
    }

    /// Hangs up (answered) or cancels (not yet answered) a call.
    pub async fn hangup(&self, org: OrganizationId, id: CallId) -> Result<Call, EngineError> {
        let call = self.get_call(org, id).await?;
        if call.status.is_terminal() {
            return Err(EngineError::IllegalTransition {
                status: call.status,
                message: format!(
                    "the call already ended ({}); it cannot be hung up",
                    call.status
                ),
            });
        }
        self.route_waiting(id).await?;
        self.rpc_supervisor(|reply| SupervisorMsg::Deliver {
            call_id: id,
            event: Event::HangupRequested,
            inbox: None,
            reply: Some(reply),
        })
        .await?
    }

    /// The status of call `id` of whichever organization, `None` when there is no such call.
    /// For the media endpoint, whose stream token already names the call.
    pub async fn call_status(&self, id: CallId) -> Result<Option<CallStatus>, EngineError> {
        let shared = &self.inner.shared;
        let call = shared
            .with_timeout(shared.ports.calls.load_call(id))
            .await?;
        Ok(call.map(|c| c.status))
    }

    /// One call of the organization.
    pub async fn get_call(&self, org: OrganizationId, id: CallId) -> Result<Call, EngineError> {
        self.query(move |q| async move { Ok(q.get_call(org, id).await?) })
            .await?
            .ok_or(EngineError::NotFound { what: "call" })
    }

    /// The post-call analysis of call `id`, when it has one (and analyses are kept here).
    pub async fn call_analysis(
        &self,
        org: OrganizationId,
        id: CallId,
    ) -> Result<Option<crate::ports::analysis::CallAnalysis>, EngineError> {
        let Some(store) = self.inner.shared.ports.analysis.clone() else {
            return Ok(None);
        };
        self.query(move |_| async move { Ok(store.call_analysis(org, id).await?) })
            .await
    }

    /// Calls of the organization, newest first. `filter.limit` is clamped to 1..=100.
    pub async fn list_calls(
        &self,
        org: OrganizationId,
        mut filter: CallFilter,
    ) -> Result<Vec<Call>, EngineError> {
        filter.limit = clamp_limit(filter.limit);
        self.query(move |q| async move { Ok(q.list_calls(org, &filter).await?) })
            .await
    }

    /// The journal of a call.
    pub async fn call_events(
        &self,
        org: OrganizationId,
        id: CallId,
    ) -> Result<Vec<JournalEntry>, EngineError> {
        self.query(move |q| async move { Ok(q.call_events(org, id).await?) })
            .await?
            .ok_or(EngineError::NotFound { what: "call" })
    }

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
        self.route_waiting(id).await?;
        self.rpc_supervisor(|reply| SupervisorMsg::Deliver {
            call_id: id,
            event: Event::TransferRequested { to },
            inbox: None,
            reply: Some(reply),
        })
        .await?
    }
}

fn validate_idempotency_key(key: &str) -> Result<String, EngineError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(key.to_owned())
    } else {
        Err(EngineError::invalid(
            "Idempotency-Key",
            format!(
                "must be 1-{MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces"
            ),
        ))
    }
}

/// SHA-256 of the canonical form of a create request (metadata keys sorted by serde_json).
fn fingerprint(req: &NewCall, metadata: &serde_json::Value) -> String {
    let canonical = serde_json::json!({
        "to": req.to,
        "from": req.from,
        "agent_id": req.agent_id,
        "customer_id": req.customer_id,
        "metadata": metadata,
    });
    digest(&canonical)
}

/// SHA-256 hex of a JSON value's canonical text.
fn digest(canonical: &serde_json::Value) -> String {
    hex_encode(&Sha256::digest(canonical.to_string().as_bytes()))
}

fn hex_encode(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The status a call resource reports for filtering (re-exported for callers building
/// filters from query strings).
pub fn parse_status(s: &str) -> Result<CallStatus, EngineError> {
    CallStatus::parse(s).ok_or_else(|| {
        EngineError::invalid(
            "status",
            "must be one of pending, ringing, in_progress, completed, failed, canceled",
        )
    })
}
