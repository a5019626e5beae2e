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
//! * `dispatch`: how the handle reaches the query pool and the supervisor.
//!
//! Behind the handle: `supervisor` (the call supervisor), `call_actor` (one actor per call),
//! `query` (the query pool), `metrics` and `error`.

mod accounts;
pub(crate) mod call_actor;
mod calls;
mod catalog;
mod dispatch;
mod error;
mod health;
mod ingress;
mod learning;
mod media;
mod metrics;
mod query;
mod supervisor;

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use ractor::{Actor, ActorRef};
use tracing::info;

pub use calls::{parse_status, CreatedCall, InboundCall, NewCall, MAX_IDEMPOTENCY_KEY_LEN};
pub use dispatch::{DEFAULT_PAGE, MAX_PAGE};
pub use error::EngineError;
pub use ingress::{EventRoute, IngestOutcome, VendorEvent};
pub use metrics::EngineMetrics;

use crate::machine::CallId;
use crate::ports::{shard_of, Ports, StoreError, SHARD_COUNT};
use dispatch::clamp_limit;
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

    fn now(&self) -> DateTime<Utc> {
        self.inner.shared.now()
    }
}

#[cfg(test)]
mod tests;
