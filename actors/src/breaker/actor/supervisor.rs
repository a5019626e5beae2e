//! Every vendor's breaker: the set callers hold, started under a supervisor that restarts a
//! failed breaker actor closed, behind the same handle.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::error;

use super::handle::BreakerHandle;
use super::metrics::{BreakerMetrics, Series};
use super::{BreakerMsg, VendorBreaker, VendorBreakerArgs, View};
use crate::breaker::machine::{BreakerConfig, BreakerSnapshot};
use crate::ports::time::Clock;

/// IACE's breakers: one per vendor it calls, plus `groq_classify`, a bulkhead for Groq's
/// optional classifications (caller sentiment) kept apart from `groq`, the conversation's
/// replies, so that slow or failing optional work never fails the reply path.
pub const VENDORS: [&str; 8] = [
    "telnyx",
    "deepgram",
    "cartesia",
    "groq",
    "groq_classify",
    "google",
    "stripe",
    "hubspot",
];

/// Supervisor messages.
pub(crate) enum SupervisorMsg {}

struct BreakerSupervisor;

struct SupervisorState {
    children: BTreeMap<ractor::ActorId, (String, BreakerHandle, BreakerConfig)>,
}

struct SupervisorArgs {
    children: Vec<(BreakerHandle, BreakerConfig)>,
}

impl Actor for BreakerSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut children = BTreeMap::new();
        for (handle, config) in args.children {
            let actor = spawn_child(&myself, &handle, &config).await?;
            children.insert(actor.get_id(), (handle.vendor.to_string(), handle, config));
        }
        Ok(SupervisorState { children })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Never the default (it would stop every breaker with one): restart the one that
        // failed, closed, behind the same handle.
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some((vendor, handle, config)) = state.children.remove(&cell.get_id()) {
                    error!(vendor = %vendor, error = %err, "breaker actor failed; restarting it closed");
                    let actor = spawn_child(&myself, &handle, &config).await?;
                    state
                        .children
                        .insert(actor.get_id(), (vendor, handle, config));
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.children.remove(&cell.get_id());
            }
            SupervisionEvent::ActorStarted(_) | SupervisionEvent::ProcessGroupChanged(_) => {}
        }
        Ok(())
    }
}

async fn spawn_child(
    supervisor: &ActorRef<SupervisorMsg>,
    handle: &BreakerHandle,
    config: &BreakerConfig,
) -> Result<ActorRef<BreakerMsg>, ActorProcessingErr> {
    let args = VendorBreakerArgs {
        vendor: handle.vendor.clone(),
        config: config.clone(),
        view: handle.view.clone(),
        clock: handle.clock.clone(),
        metrics: handle.metrics.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, VendorBreaker, args, supervisor.get_cell()).await?;
    *handle.actor.write().unwrap_or_else(|p| p.into_inner()) = actor.clone();
    Ok(actor)
}

/// Every vendor's breaker. Cheap to clone; an empty set (tests, simulations without vendors)
/// answers `None` for every vendor.
#[derive(Clone, Default)]
pub struct Breakers {
    handles: Arc<BTreeMap<String, BreakerHandle>>,
    supervisor: Option<ActorRef<SupervisorMsg>>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.handles.values()).finish()
    }
}

impl Breakers {
    /// No breakers at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Starts one breaker actor per vendor under a supervisor.
    pub async fn start(
        configs: BTreeMap<String, BreakerConfig>,
        clock: Arc<dyn Clock>,
        registry: &Registry,
    ) -> Result<Self, ActorProcessingErr> {
        let metrics = BreakerMetrics::register(registry)?;
        // Placeholder refs are replaced by the supervisor before anyone can use a handle.
        let (placeholder, placeholder_handle) = Actor::spawn(None, Placeholder, ()).await?;
        let mut handles = BTreeMap::new();
        let mut children = Vec::new();
        for (vendor, config) in configs {
            let handle = BreakerHandle {
                vendor: Arc::from(vendor.as_str()),
                view: Arc::new(View::closed()),
                actor: Arc::new(RwLock::new(placeholder.clone())),
                clock: clock.clone(),
                series: Series::new(&metrics, &vendor),
                metrics: metrics.clone(),
                rpc_timeout: Duration::from_secs(2),
            };
            children.push((handle.clone(), config));
            handles.insert(vendor, handle);
        }
        let (supervisor, _) =
            Actor::spawn(None, BreakerSupervisor, SupervisorArgs { children }).await?;
        placeholder.stop(None);
        let _ = placeholder_handle.await;
        Ok(Breakers {
            handles: Arc::new(handles),
            supervisor: Some(supervisor),
        })
    }

    /// One vendor's breaker.
    pub fn get(&self, vendor: &str) -> Option<&BreakerHandle> {
        self.handles.get(vendor)
    }

    /// Every breaker, by vendor name.
    pub fn handles(&self) -> impl Iterator<Item = &BreakerHandle> {
        self.handles.values()
    }

    /// Every breaker's snapshot, by vendor name (a breaker that does not answer is left out).
    pub async fn snapshots(&self) -> Vec<BreakerSnapshot> {
        let mut out = Vec::new();
        for handle in self.handles.values() {
            if let Some(s) = handle.snapshot().await {
                out.push(s);
            }
        }
        out
    }

    /// Stops every breaker actor.
    pub fn stop(&self) {
        if let Some(s) = &self.supervisor {
            s.stop(None);
        }
    }
}

/// Stands in for a breaker actor between handle creation and the supervisor's spawn.
struct Placeholder;

impl Actor for Placeholder {
    type Msg = BreakerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<BreakerMsg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}
