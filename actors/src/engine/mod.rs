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
//! Behind the handle: `shared` (what every actor shares: ports, tuning, shard epochs),
//! `supervisor` (the call supervisor), `call_actor` (one actor per call), `voice_session` (the
//! conversation of an answered call, a child of its call actor), `query` (the query pool),
//! `metrics` and `error`.

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
mod shared;
mod supervisor;
pub(crate) mod voice_session;

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorRef};
use tracing::info;

pub use calls::{parse_status, CreatedCall, InboundCall, NewCall, MAX_IDEMPOTENCY_KEY_LEN};
pub use dispatch::{DEFAULT_PAGE, MAX_PAGE};
pub use error::EngineError;
pub use ingress::{EventRoute, IngestOutcome, VendorEvent};
pub use metrics::EngineMetrics;
pub use shared::{EngineConfig, Ports};
pub(crate) use shared::{ShardTable, Shared};
pub use voice_session::VoiceRouter;

use crate::ports::SHARD_COUNT;
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
            voice: crate::engine::voice_session::VoiceRouter::default(),
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
