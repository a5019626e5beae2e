//! What operators and probes ask of the engine: its metrics, the live call actors and voice
//! sessions, the vendor breakers, and readiness (the store answers).

use super::supervisor::SupervisorMsg;
use super::{Engine, EngineError, EngineMetrics};

impl Engine {
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
        if shared.superseded.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(EngineError::Unavailable(
                "another process registered under this node id; this one runs no calls".into(),
            ));
        }
        shared.with_timeout(shared.ports.calls.ping()).await?;
        Ok(())
    }

    /// The vendor circuit breakers (for `/ready` and the operator API).
    pub fn breakers(&self) -> &crate::breaker::Breakers {
        &self.inner.shared.ports.breakers
    }

    /// Voice sessions running on this node.
    pub fn voice_sessions(&self) -> usize {
        self.inner.shared.voice.live()
    }
}
