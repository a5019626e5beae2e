//! The engine: the actor tree and the [`Engine`] handle callers use.
//!
//! ```text
//! Engine (handle, Clone)
//!  ├── CallSupervisor ── CallActor per live call (one snapshot owner each)
//!  └── QueryPool (bounded reads and catalog writes)
//! ```
//!
//! The [`Engine`] is the only thing the HTTP layer and the vendor webhooks hold. Every method
//! has a timeout ([`EngineConfig::call_timeout`]); none of them hands out a database handle.

mod accounts;
pub(crate) mod call_actor;
mod error;
mod ingress;
mod metrics;
mod query;
mod supervisor;

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tracing::info;
use uuid::Uuid;

pub use error::EngineError;
pub use ingress::{EventRoute, VendorEvent};
pub use metrics::EngineMetrics;

use crate::catalog::{
    self, Agent, AgentPatch, AgentStatus, AgentType, Customer, CustomerPatch, NewAgent,
    NewCustomer, Organization,
};
use crate::learning::recall::{MemoryHit, PatternHit, Recall, RecallError};
use crate::machine::{
    start, Call, CallId, CallSpec, CallStatus, Direction, Event, OrganizationId, PhoneNumber,
};
use crate::ports::{
    shard_of, CallFilter, IdempotencyKey, InboxItem, InsertOutcome, JournalEntry, PageRequest,
    Ports, QueryStore, StoreError, SHARD_COUNT,
};
use query::{QueryMsg, QueryPool};
use supervisor::{CallSupervisor, SupervisorArgs, SupervisorMsg};

/// Engine tuning. [`Default`] is what production uses.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Name of this node in shard leases.
    pub node_id: String,
    /// Upper bound on every engine call (actor round trip or store statement).
    pub call_timeout: Duration,
    /// Concurrent statements of the query pool.
    pub max_query_concurrency: usize,
    /// How long an outbound call may ring.
    pub ring_timeout_secs: u32,
    /// How long an answered call may last.
    pub max_duration_secs: u32,
    /// Crash-restart budget: at most this many restarts of one call within `restart_window`.
    pub max_restarts: u32,
    /// See `max_restarts`.
    pub restart_window: Duration,
    /// First restart delay; doubles per failure, capped at 30 s.
    pub restart_backoff: Duration,
    /// How often unprocessed inbox rows are re-delivered.
    pub inbox_sweep_every: Duration,
    /// How often the store is scanned for live calls that have no actor (a create whose
    /// activation was lost, a call whose restart budget ran out while the store was down).
    pub orphan_sweep_every: Duration,
    /// Upper bound on one attempt of a carrier command.
    pub command_timeout: Duration,
    /// Outbound calls run answering-machine detection at the carrier: the greeting waits for
    /// its verdict (bounded by the agent's `amd_wait_ms`).
    pub await_amd: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_id: "iace-node".into(),
            call_timeout: Duration::from_secs(5),
            max_query_concurrency: 32,
            ring_timeout_secs: 30,
            max_duration_secs: 3600,
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            restart_backoff: Duration::from_millis(200),
            inbox_sweep_every: Duration::from_secs(5),
            orphan_sweep_every: Duration::from_secs(30),
            command_timeout: Duration::from_secs(10),
            await_amd: false,
        }
    }
}

/// Epochs of the shard leases this node holds.
pub(crate) struct ShardTable {
    epochs: RwLock<Vec<i64>>,
}

impl ShardTable {
    /// Every shard this node holds.
    pub(crate) fn owned(&self) -> Vec<u16> {
        let epochs = self.epochs.read().unwrap_or_else(|p| p.into_inner());
        (0..SHARD_COUNT)
            .filter(|s| epochs.get(usize::from(*s)).is_some_and(|e| *e > 0))
            .collect()
    }

    /// The epoch to fence writes of `call` with.
    pub(crate) fn epoch_of(&self, call: CallId) -> i64 {
        let epochs = self.epochs.read().unwrap_or_else(|p| p.into_inner());
        epochs
            .get(usize::from(shard_of(call)))
            .copied()
            .unwrap_or(0)
    }
}

/// What every actor of the engine shares.
pub(crate) struct Shared {
    pub ports: Ports,
    pub config: EngineConfig,
    pub metrics: EngineMetrics,
    pub shards: ShardTable,
    /// Live voice sessions, for the media endpoint's per-frame traffic.
    pub voice: crate::voice::session::VoiceRouter,
}

impl Shared {
    /// The current time, at the store's precision (microseconds) so snapshots round-trip.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.ports.clock.now().trunc_subsecs(6)
    }

    /// Bounds a store future by the engine timeout.
    pub(crate) async fn with_timeout<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.config.call_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "the database did not answer within {} ms",
                self.config.call_timeout.as_millis()
            ))),
        }
    }
}

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

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Largest page of a list.
pub const MAX_PAGE: i64 = 100;
/// Page size when none is asked for.
pub const DEFAULT_PAGE: i64 = 50;

/// The handle to a running engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    queries: ActorRef<QueryMsg>,
    handles: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Engine {
    /// Takes the shard leases, starts the actor tree and re-activates every non-terminal call
    /// of the owned shards (crash recovery). Engine metrics are registered in `registry`.
    pub async fn start(
        ports: Ports,
        config: EngineConfig,
        registry: &prometheus::Registry,
    ) -> Result<Engine, EngineError> {
        let metrics = EngineMetrics::register(registry)
            .map_err(|e| EngineError::Unavailable(format!("registering metrics: {e}")))?;
        let shards: Vec<u16> = (0..SHARD_COUNT).collect();
        let epochs = ports.calls.acquire_shards(&config.node_id, &shards).await?;
        let recover = ports.calls.live_calls(&shards).await?;
        info!(node = %config.node_id, shards = shards.len(), live_calls = recover.len(), "engine starting");
        let shared = Arc::new(Shared {
            ports: ports.clone(),
            config: config.clone(),
            metrics,
            shards: ShardTable {
                epochs: RwLock::new(epochs),
            },
            voice: crate::voice::session::VoiceRouter::default(),
        });
        let spawn_err = |e: ractor::SpawnErr| EngineError::Unavailable(format!("spawn: {e}"));
        let (queries, qh) = Actor::spawn(
            None,
            QueryPool,
            (ports.queries.clone(), config.max_query_concurrency),
        )
        .await
        .map_err(spawn_err)?;
        let (supervisor, sh) = Actor::spawn(
            None,
            CallSupervisor,
            SupervisorArgs {
                shared: shared.clone(),
                recover,
            },
        )
        .await
        .map_err(spawn_err)?;
        Ok(Engine {
            inner: Arc::new(Inner {
                shared,
                supervisor,
                queries,
                handles: std::sync::Mutex::new(vec![qh, sh]),
            }),
        })
    }

    /// Crash: kills every actor at once, with no clean-up (as `kill -9` would). Used by the
    /// simulations to test recovery; live calls are picked up by the next start.
    pub async fn kill(&self) {
        let _ = self.inner.supervisor.send_message(SupervisorMsg::Kill);
        self.inner.queries.kill();
        self.join_actors().await;
    }

    /// Stops the actor tree. Live calls stay live in the store and are re-activated by the
    /// next start (on this or another node).
    pub async fn shutdown(&self) {
        self.inner.supervisor.stop(Some("shutdown".into()));
        self.inner.queries.stop(Some("shutdown".into()));
        self.join_actors().await;
    }

    async fn join_actors(&self) {
        let handles =
            std::mem::take(&mut *self.inner.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.await;
        }
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.inner.shared.metrics
    }

    /// Number of running call actors.
    pub async fn live_call_actors(&self) -> Result<usize, EngineError> {
        self.rpc_supervisor(SupervisorMsg::LiveCount).await
    }

    /// `/ready`: the store answers.
    pub async fn ready(&self) -> Result<(), EngineError> {
        let shared = &self.inner.shared;
        shared.with_timeout(shared.ports.calls.ping()).await?;
        Ok(())
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.shared.now()
    }

    // ---------------------------------------------------------------- calls

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
        let agent_id = req.agent_id;
        self.check_agent(org, agent_id, Direction::Outbound).await?;
        let spec = CallSpec {
            id: self.inner.shared.ports.ids.next_id(),
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
        self.insert_and_activate(spec, idempotency, max_live).await
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
            id: shared.ports.ids.next_id(),
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
        self.insert_and_activate(spec, Some(idempotency), None)
            .await
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

    /// The vendor circuit breakers (for `/ready` and the operator API).
    pub fn breakers(&self) -> &crate::breaker::Breakers {
        &self.inner.shared.ports.breakers
    }

    /// The agent must exist in the organization, be active and take calls in `direction`.
    async fn check_agent(
        &self,
        org: OrganizationId,
        agent_id: Uuid,
        direction: Direction,
    ) -> Result<(), EngineError> {
        let agent = self
            .query(move |q| async move { Ok(q.get_agent(org, agent_id).await?) })
            .await?
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
    ) -> Result<CreatedCall, EngineError> {
        let shared = &self.inner.shared;
        let now = self.now();
        let org = spec.organization_id;
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
                    })
                    .map_err(|_| EngineError::Unavailable("the engine is stopping".into()))?;
                Ok(CreatedCall {
                    call,
                    replayed: false,
                })
            }
            InsertOutcome::Existing(call) => {
                if !call.status.is_terminal() {
                    let _ = self.inner.supervisor.send_message(SupervisorMsg::Ensure {
                        call_id: call.spec.id,
                    });
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
            InsertOutcome::LiveLimit { live } => Err(EngineError::ConcurrentCallLimit {
                allowed: max_live.unwrap_or(0),
                live,
            }),
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

    // ---------------------------------------------------------------- organizations

    /// Creates an organization with its first API key, given as a hash and a display prefix
    /// (the key itself is generated and shown by the caller, never stored).
    pub async fn create_organization(
        &self,
        name: &str,
        key_hash: String,
        key_prefix: String,
    ) -> Result<Organization, EngineError> {
        let shared = &self.inner.shared;
        let org = Organization {
            id: shared.ports.ids.next_id(),
            name: catalog::validate_name("name", name)?,
            created_at: self.now(),
        };
        let key_id = shared.ports.ids.next_id();
        let stored = org.clone();
        self.query(move |q| async move {
            q.create_organization(&stored, key_id, &key_hash, &key_prefix)
                .await?;
            Ok(())
        })
        .await?;
        Ok(org)
    }

    // ---------------------------------------------------------------- agents

    /// Creates an agent.
    pub async fn create_agent(
        &self,
        org: OrganizationId,
        new: NewAgent,
    ) -> Result<Agent, EngineError> {
        let agent = new.validate(self.inner.shared.ports.ids.next_id(), org, self.now())?;
        let stored = agent.clone();
        self.query(move |q| async move { Ok(q.insert_agent(&stored).await?) })
            .await?;
        Ok(agent)
    }

    /// One agent.
    pub async fn get_agent(&self, org: OrganizationId, id: Uuid) -> Result<Agent, EngineError> {
        self.query(move |q| async move { Ok(q.get_agent(org, id).await?) })
            .await?
            .ok_or(EngineError::NotFound { what: "agent" })
    }

    /// Agents, newest first.
    pub async fn list_agents(
        &self,
        org: OrganizationId,
        mut page: PageRequest,
    ) -> Result<Vec<Agent>, EngineError> {
        page.limit = clamp_limit(page.limit);
        self.query(move |q| async move { Ok(q.list_agents(org, &page).await?) })
            .await
    }

    /// Updates an agent.
    pub async fn update_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: AgentPatch,
    ) -> Result<Agent, EngineError> {
        let patch = patch.validate()?;
        let now = self.now();
        self.query(move |q| async move { Ok(q.update_agent(org, id, &patch, now).await?) })
            .await?
            .ok_or(EngineError::NotFound { what: "agent" })
    }

    /// Deletes an agent (archives it when it has calls).
    pub async fn delete_agent(&self, org: OrganizationId, id: Uuid) -> Result<(), EngineError> {
        let now = self.now();
        let found = self
            .query(move |q| async move { Ok(q.delete_agent(org, id, now).await?) })
            .await?;
        found
            .then_some(())
            .ok_or(EngineError::NotFound { what: "agent" })
    }

    // ---------------------------------------------------------------- customers

    /// Creates a customer. A second customer with the same phone is a conflict.
    pub async fn create_customer(
        &self,
        org: OrganizationId,
        new: NewCustomer,
    ) -> Result<Customer, EngineError> {
        let customer = new.validate(self.inner.shared.ports.ids.next_id(), org, self.now())?;
        let stored = customer.clone();
        let inserted = self
            .query(move |q| async move { Ok(q.insert_customer(&stored).await?) })
            .await?;
        if inserted {
            Ok(customer)
        } else {
            Err(EngineError::Conflict(format!(
                "a customer with phone {} already exists",
                customer.phone
            )))
        }
    }

    /// One customer.
    pub async fn get_customer(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> Result<Customer, EngineError> {
        self.query(move |q| async move { Ok(q.get_customer(org, id).await?) })
            .await?
            .ok_or(EngineError::NotFound { what: "customer" })
    }

    /// Customers, newest first.
    pub async fn list_customers(
        &self,
        org: OrganizationId,
        mut page: PageRequest,
    ) -> Result<Vec<Customer>, EngineError> {
        page.limit = clamp_limit(page.limit);
        self.query(move |q| async move { Ok(q.list_customers(org, &page).await?) })
            .await
    }

    /// Updates a customer.
    pub async fn update_customer(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: CustomerPatch,
    ) -> Result<Customer, EngineError> {
        let patch = patch.validate()?;
        let now = self.now();
        self.query(move |q| async move { Ok(q.update_customer(org, id, &patch, now).await?) })
            .await?
            .ok_or(EngineError::NotFound { what: "customer" })
    }

    /// Deletes a customer (their calls keep their history).
    pub async fn delete_customer(&self, org: OrganizationId, id: Uuid) -> Result<(), EngineError> {
        let found = self
            .query(move |q| async move { Ok(q.delete_customer(org, id).await?) })
            .await?;
        found
            .then_some(())
            .ok_or(EngineError::NotFound { what: "customer" })
    }

    // ---------------------------------------------------------------- learning

    fn recall(&self) -> Result<Recall, EngineError> {
        self.inner
            .shared
            .ports
            .recall
            .clone()
            .ok_or_else(|| EngineError::Unavailable("learning is turned off on this server".into()))
    }

    /// The customer's `k` most relevant memories for `query` (the most important and recent
    /// without one).
    pub async fn customer_memories(
        &self,
        org: OrganizationId,
        customer: Uuid,
        query: Option<String>,
        k: u32,
    ) -> Result<Vec<MemoryHit>, EngineError> {
        // Tenancy before the feature: another organization's id is 404 whether or not
        // learning is on, so the answer never tells which ids exist elsewhere.
        self.get_customer(org, customer).await?;
        let recall = self.recall()?;
        let now = self.now();
        self.query(move |_| async move {
            recall
                .memories(org, customer, query.as_deref(), k, now)
                .await
                .map_err(recall_error)
        })
        .await
    }

    /// The agent's `k` learned patterns nearest to `query`, or its best ones without one.
    pub async fn agent_patterns(
        &self,
        org: OrganizationId,
        agent: Uuid,
        query: Option<String>,
        k: u32,
    ) -> Result<Vec<PatternHit>, EngineError> {
        self.get_agent(org, agent).await?;
        let recall = self.recall()?;
        self.query(move |_| async move {
            recall
                .patterns(org, agent, query.as_deref(), k)
                .await
                .map_err(recall_error)
        })
        .await
    }

    /// Deletes every memory of the customer and their cached vectors (right to be
    /// forgotten); returns how many memories there were.
    pub async fn forget_customer_memories(
        &self,
        org: OrganizationId,
        customer: Uuid,
    ) -> Result<u64, EngineError> {
        self.get_customer(org, customer).await?;
        let recall = self.recall()?;
        self.query(move |_| async move { recall.forget(org, customer).await.map_err(recall_error) })
            .await
    }

    // ---------------------------------------------------------------- plumbing

    /// Runs `f` on the query pool, bounded by the engine timeout.
    async fn query<T, F, Fut>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn QueryStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, EngineError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, EngineError>>();
        let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
        let watch = tx.clone();
        let job: query::Job = Box::new(move |store| {
            Box::pin(async move {
                let result = f(store).await;
                let sender = tx.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(sender) = sender {
                    let _ = sender.send(result);
                }
            })
        });
        let abandoned = Box::new(move || {
            watch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_none_or(|s| s.is_closed())
        });
        self.inner
            .queries
            .send_message(QueryMsg { job, abandoned })
            .map_err(|_| EngineError::Unavailable("the query pool is stopped".into()))?;
        let timeout = self.inner.shared.config.call_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EngineError::Unavailable("the query was dropped".into())),
            Err(_) => Err(EngineError::Timeout(millis(timeout))),
        }
    }

    async fn rpc_supervisor<T, B>(&self, build: B) -> Result<T, EngineError>
    where
        T: Send + 'static,
        B: FnOnce(ractor::RpcReplyPort<T>) -> SupervisorMsg,
    {
        let timeout = self.inner.shared.config.call_timeout;
        match self.inner.supervisor.call(build, Some(timeout)).await {
            Ok(CallResult::Success(v)) => Ok(v),
            Ok(CallResult::Timeout) => Err(EngineError::Timeout(millis(timeout))),
            Ok(CallResult::SenderError) => Err(EngineError::Unavailable(
                "the call's actor stopped before answering; retry".into(),
            )),
            Err(_) => Err(EngineError::Unavailable("the engine is stopping".into())),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn clamp_limit(limit: i64) -> i64 {
    if limit <= 0 {
        DEFAULT_PAGE
    } else {
        limit.min(MAX_PAGE)
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

#[cfg(test)]
mod tests;

fn recall_error(e: RecallError) -> EngineError {
    match e {
        RecallError::Store(e) => e.into(),
        RecallError::Embed(e) => EngineError::Unavailable(format!("embedding the query: {e}")),
    }
}
