//! What an engine is built from ([`Ports`]) and what every actor of the engine shares: the ports, the engine's tuning ([`EngineConfig`]),
//! its metrics, the shard leases this node holds ([`ShardTable`]), and the router of live voice
//! sessions. The engine handle builds one [`Shared`]; call actors, voice sessions and the
//! supervisor hold it behind an `Arc`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

use super::cluster::{Routes, ShardTable};
use super::lookups::Lookups;
use super::metrics::EngineMetrics;
use super::voice_session::VoiceRouter;
use crate::breaker::Breakers;
use crate::catalog::{Agent, Customer};
use crate::learning::recall::Recall;
use crate::machine::OrganizationId;
use crate::ports::accounts::AccountStore;
use crate::ports::{
    CallStore, Clock, ClusterStore, IdGen, Peers, QueryStore, StoreError, Telephony, VoicePorts,
};
use uuid::Uuid;

/// The ports an engine is built from.
#[derive(Clone)]
pub struct Ports {
    /// Call writes.
    pub calls: Arc<dyn CallStore>,
    /// Membership and shard leases.
    pub cluster: Arc<dyn ClusterStore>,
    /// The other nodes (pokes); `None` for a single node.
    pub peers: Option<Arc<dyn Peers>>,
    /// Catalog and reads.
    pub queries: Arc<dyn QueryStore>,
    /// The carrier.
    pub telephony: Arc<dyn Telephony>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Ids.
    pub ids: Arc<dyn IdGen>,
    /// Vendor circuit breakers (empty when the adapters are not real vendors).
    pub breakers: Breakers,
    /// The voice pipeline's vendors; `None` runs calls without a conversation (the media
    /// stream is only measured).
    pub voice: Option<VoicePorts>,
    /// Recall over learned patterns and customer memories; `None` when learning is off.
    pub recall: Option<Recall>,
    /// Users, sessions, API keys, plans; `None` where accounts are not kept (simulations).
    pub accounts: Option<Arc<dyn AccountStore>>,
    /// The webhook outbox (deliveries, the organization's log); `None` where webhooks are
    /// not delivered (simulations).
    pub outbox: Option<Arc<dyn crate::ports::outbox::OutboxStore>>,
    /// Post-call analyses; `None` where they are not kept (simulations).
    pub analysis: Option<Arc<dyn crate::ports::analysis::AnalysisStore>>,
    /// Each call's trace, drawn from its journal; `None`: no traces.
    pub traces: Option<Arc<dyn crate::ports::CallTraces>>,
}

/// Engine tuning. [`Default`] is what production uses.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Name of this node in the cluster and in shard leases; unique per node.
    pub node_id: String,
    /// Base URL other nodes and the carrier reach this node at.
    pub node_url: String,
    /// How long a shard lease lasts without renewal (and how old a heartbeat may be before
    /// its node counts as dead): the bound on takeover after a node dies.
    pub lease_ttl: Duration,
    /// How often leases are renewed and the shard plan re-checked.
    pub lease_renew_every: Duration,
    /// How long a drain waits for the live conversations of this node to end before their
    /// calls move to other nodes anyway.
    pub drain_deadline: Duration,
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
    /// How long an agent or customer read for a call start is reused (see [`Lookups`]); zero
    /// reads every time.
    pub lookup_ttl: Duration,
    /// Most calls this node runs at once; new ones past it are refused (see [`Capacity`]).
    /// 0 is no limit.
    ///
    /// [`Capacity`]: super::capacity
    pub max_live_calls: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_id: "iace-node".into(),
            node_url: "http://127.0.0.1:8080".into(),
            lease_ttl: Duration::from_secs(10),
            lease_renew_every: Duration::from_secs(2),
            drain_deadline: Duration::from_secs(300),
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
            lookup_ttl: Duration::from_secs(5),
            max_live_calls: super::capacity::default_max_live_calls(),
        }
    }
}

/// What every actor of the engine shares.
pub(crate) struct Shared {
    pub ports: Ports,
    pub config: EngineConfig,
    pub metrics: EngineMetrics,
    pub shards: Arc<ShardTable>,
    /// Who runs which shard, as the shard manager last saw it.
    pub routes: Routes,
    /// The node is draining: it takes no new calls (creates go to another node).
    pub draining: std::sync::atomic::AtomicBool,
    /// Another process registered under this node's id: this one runs nothing any more.
    pub superseded: std::sync::atomic::AtomicBool,
    /// Live voice sessions, for the media endpoint's per-frame traffic.
    pub voice: VoiceRouter,
    /// Agents and customers read recently (call starts read the same ones over and over).
    pub lookups: Lookups,
    /// Calls running and being admitted, against `max_live_calls`.
    pub capacity: Arc<super::capacity::Capacity>,
}

impl Shared {
    /// The agent, from [`Lookups`] when it was read within `lookup_ttl`, else from the store.
    pub(crate) async fn agent(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> Result<Option<Agent>, StoreError> {
        if let Some(agent) = self.lookups.agent(org, id) {
            self.metrics
                .lookups
                .with_label_values(&["agent", "hit"])
                .inc();
            return Ok(Some(agent));
        }
        self.metrics
            .lookups
            .with_label_values(&["agent", "miss"])
            .inc();
        let found = self
            .with_timeout(self.ports.queries.get_agent(org, id))
            .await?;
        if let Some(agent) = &found {
            self.lookups.keep_agent(agent);
        }
        Ok(found)
    }

    /// The customer, from [`Lookups`] when it was read within `lookup_ttl`, else from the
    /// store.
    pub(crate) async fn customer(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> Result<Option<Customer>, StoreError> {
        if let Some(customer) = self.lookups.customer(org, id) {
            self.metrics
                .lookups
                .with_label_values(&["customer", "hit"])
                .inc();
            return Ok(Some(customer));
        }
        self.metrics
            .lookups
            .with_label_values(&["customer", "miss"])
            .inc();
        let found = self
            .with_timeout(self.ports.queries.get_customer(org, id))
            .await?;
        if let Some(customer) = &found {
            self.lookups.keep_customer(customer);
        }
        Ok(found)
    }

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
