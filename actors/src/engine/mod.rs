//! The engine: the actor tree and the [`Engine`] handle callers use.
//!
//! ```text
//! Engine (handle, Clone)
//!  ├── ShardManager (membership, shard leases, handovers: `cluster`)
//!  ├── CallSupervisor ── CallActor per live call of the shards this node runs
//!  └── QueryPool (bounded reads and catalog writes)
//! ```
//!
//! The [`Engine`] is the only thing the HTTP layer and the vendor webhooks hold. Every method
//! has a timeout ([`EngineConfig::call_timeout`]); none of them hands out a database handle.
//!
//! This file holds the handle, its construction and what its actors share. The handle's
//! methods live by area, each file its own `impl Engine`:
//!
//! * `calls`: create, read, list, hang up and transfer calls;
//! * `ingress`: vendor and carrier events into the inbox and on to their calls;
//! * `media`: the media endpoint's stream traffic;
//! * `catalog`: organizations, agents, customers, phone numbers;
//! * `accounts`: users, sessions, API keys, plans, billing and CRM events;
//! * `learning`: memories and patterns;
//! * `health`: metrics, breakers, readiness;
//! * `dispatch`: how the handle reaches the query pool and the supervisor;
//! * `routing`: calls run by other nodes (forwarding, pokes) and the cluster's status.
//!
//! Behind the handle: `cluster` (the shard manager, the shard table every carrier command
//! asks first, the shard plan), `shared` (what every actor shares: ports, tuning, shards),
//! `supervisor` (the call supervisor), `call_actor` (one actor per call), `voice_session` (the
//! conversation of an answered call, a child of its call actor), `query` (the query pool),
//! `metrics` and `error`.

mod accounts;
pub(crate) mod call_actor;
mod calls;
mod capacity;
mod catalog;
mod cluster;
mod dispatch;
mod error;
mod group_commit;
mod health;
mod ingress;
mod learning;
mod lookups;
mod media;
mod metrics;
mod query;
mod routing;
mod shared;
mod supervisor;
pub(crate) mod voice_session;
mod webhook_endpoints;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorRef};
use tracing::info;

pub use calls::{parse_status, CreatedCall, InboundCall, NewCall, MAX_IDEMPOTENCY_KEY_LEN};
pub use capacity::{
    default_max_live_calls, Load, AT_CAPACITY_RETRY_AFTER_SECS, MAX_LIVE_CALLS_PER_CORE,
};
pub use cluster::{ClusterView, Peer};
pub use dispatch::{DEFAULT_PAGE, MAX_PAGE};
pub use error::EngineError;
pub use group_commit::{GroupCommit, GroupCommitConfig};
pub use ingress::{EventRoute, IngestOutcome, VendorEvent};
pub use metrics::EngineMetrics;
pub use routing::{ClusterStatus, NodeStatus};
pub(crate) use shared::Shared;
pub use shared::{EngineConfig, Ports};
pub use voice_session::VoiceRouter;
pub use webhook_endpoints::MAX_ROTATION_WINDOW;

use crate::ports::NodeInfo;
use cluster::{ManagerArgs, ManagerMsg, ShardManager, ShardTable};
use dispatch::clamp_limit;
use query::{QueryMsg, QueryPool};
use supervisor::{CallSupervisor, SupervisorArgs, SupervisorMsg};

/// The handle to a running engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    queries: ActorRef<QueryMsg>,
    manager: ActorRef<ManagerMsg>,
    handles: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Engine {
    /// Joins the cluster, starts the actor tree and claims this node's share of the shards
    /// (all of them when it is alone), re-activating every live call of the claimed shards
    /// (crash recovery). Fails when the store cannot be reached. Engine metrics are
    /// registered in `registry`.
    pub async fn start(
        ports: Ports,
        config: EngineConfig,
        registry: &prometheus::Registry,
    ) -> Result<Engine, EngineError> {
        let metrics = EngineMetrics::register(registry)
            .map_err(|e| EngineError::Unavailable(format!("registering metrics: {e}")))?;
        info!(node = %config.node_id, url = %config.node_url, max_live_calls = config.max_live_calls, "engine starting");
        let node = NodeInfo {
            node_id: config.node_id.clone(),
            url: config.node_url.clone(),
            incarnation: ports.ids.next_id(),
            started_at: ports.clock.now(),
            draining: false,
        };
        metrics
            .capacity
            .set(i64::try_from(config.max_live_calls).unwrap_or(i64::MAX));
        let shards = Arc::new(ShardTable::default());
        let mut ports = ports;
        if let Some(voice) = ports.voice.as_mut() {
            // No audio goes out for a call whose shard lease could have lapsed.
            voice.media = Arc::new(cluster::FencedMedia {
                inner: voice.media.clone(),
                shards: shards.clone(),
            });
        }
        let shared = Arc::new(Shared {
            ports: ports.clone(),
            config: config.clone(),
            metrics,
            shards,
            routes: Default::default(),
            superseded: Default::default(),
            draining: Default::default(),
            voice: crate::engine::voice_session::VoiceRouter::default(),
            lookups: lookups::Lookups::new(config.lookup_ttl),
            capacity: capacity::Capacity::new(config.max_live_calls),
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
            },
        )
        .await
        .map_err(spawn_err)?;
        let (manager, mh) = Actor::spawn(
            None,
            ShardManager,
            ManagerArgs {
                shared: shared.clone(),
                supervisor: supervisor.clone(),
                node,
            },
        )
        .await
        .map_err(spawn_err)?;
        let engine = Engine {
            inner: Arc::new(Inner {
                shared,
                supervisor,
                queries,
                manager,
                handles: std::sync::Mutex::new(vec![qh, sh, mh]),
            }),
        };
        // The first round, before the handle is given out: a lone node holds every shard
        // when `start` returns.
        let first = engine
            .inner
            .manager
            .call(
                |reply| ManagerMsg::Round(Some(reply)),
                Some(config.call_timeout * 4),
            )
            .await;
        let first = match first {
            Ok(ractor::rpc::CallResult::Success(r)) => r.map_err(EngineError::from),
            Ok(_) => Err(EngineError::Unavailable(
                "joining the cluster: no answer in time".into(),
            )),
            Err(e) => Err(EngineError::Unavailable(format!(
                "joining the cluster: {e}"
            ))),
        };
        if let Err(e) = first {
            engine.kill().await;
            return Err(e);
        }
        Ok(engine)
    }

    /// Drains the node: it takes no new calls (creates are sent to another node), announces
    /// the drain so that no shard is planned for it, and hands its shards over; calls with a
    /// live conversation here stay until they end or `EngineConfig::drain_deadline` passes.
    /// Returns once no shard is held (or, with no other node to take them, at the deadline).
    pub async fn drain(&self) {
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + shared.config.drain_deadline;
        let bound = shared.config.drain_deadline + shared.config.lease_ttl * 2;
        let answered = self
            .inner
            .manager
            .call(|reply| ManagerMsg::Drain(deadline, reply), Some(bound))
            .await;
        if !matches!(answered, Ok(ractor::rpc::CallResult::Success(()))) {
            tracing::warn!(
                "the drain did not hand every shard over in time; the rest is released at shutdown"
            );
        }
    }

    /// Crash: kills every actor at once, with no clean-up (as `kill -9` would). Used by the
    /// simulations to test recovery; live calls are picked up by the next start.
    pub async fn kill(&self) {
        self.inner.manager.kill();
        let _ = self.inner.supervisor.send_message(SupervisorMsg::Kill);
        self.inner.queries.kill();
        self.join_actors().await;
    }

    /// Stops the actor tree: the calls' actors stop, every shard lease is released and the
    /// node leaves the cluster, so that the other nodes take its calls over at their next
    /// round. Live calls stay live in the store and are re-activated by their next owner
    /// (this node again after a restart, when it is alone).
    pub async fn shutdown(&self) {
        let timeout = self.inner.shared.config.call_timeout * 4;
        let _ = ractor::call_t!(
            self.inner.manager,
            ManagerMsg::Leave,
            u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
        );
        self.inner.manager.stop(Some("shutdown".into()));
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

    fn now(&self) -> DateTime<Utc> {
        self.inner.shared.now()
    }
}

#[cfg(test)]
mod tests;
