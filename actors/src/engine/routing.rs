//! Calls run by other nodes: where a command goes ([`Engine::route`]), the pokes that tell a
//! call's node it has work waiting in the store, the pokes this node receives, and the
//! operator's view of the cluster.

use tracing::debug;

use super::supervisor::SupervisorMsg;
use super::{ClusterView, Engine, EngineError, Peer};
use crate::machine::CallId;
use crate::ports::shard_of;

impl Engine {
    /// Where a command for `call` runs: `Ok` here; [`EngineError::Elsewhere`] at the node that
    /// runs it; [`EngineError::Unavailable`] while its shard changes hands (retry).
    pub(super) fn route(&self, call: CallId) -> Result<(), EngineError> {
        let shared = &self.inner.shared;
        if shared.shards.may_run(call) {
            return Ok(());
        }
        match shared.routes.owner(shard_of(call)) {
            Some(peer) if peer.node_id != shared.config.node_id => {
                Err(EngineError::Elsewhere { peer })
            }
            _ => Err(EngineError::Unavailable(
                "the call is changing nodes; retry in a moment".into(),
            )),
        }
    }

    /// [`Engine::route`], waiting (bounded by two lease rounds) while the call's shard is
    /// between owners: a handover takes a moment (the old owner releases, the new one is woken
    /// and claims), and a command that comes in between is carried out rather than refused.
    /// The store's leases are read afresh while waiting. A shard whose owner died stays
    /// without one until its lease lapses: that answers "retry".
    pub(super) async fn route_waiting(&self, call: CallId) -> Result<(), EngineError> {
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + shared.config.lease_renew_every * 2;
        loop {
            match self.route(call) {
                Err(EngineError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    if let Ok(leases) = shared.with_timeout(shared.ports.cluster.leases()).await {
                        shared.routes.set_leases(leases);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// A node that runs calls, for new work this node cannot take (it runs no shard: it is
    /// joining, draining or cut off from the database).
    pub(super) fn another_runner(&self) -> Option<Peer> {
        let shared = &self.inner.shared;
        shared.routes.runner_other_than(&shared.config.node_id)
    }

    /// Hands a call to the node that runs it: here, to the supervisor (activating it when
    /// needed, delivering waiting inbox rows); elsewhere, a poke to its node. Best effort
    /// either way: the sweeps of whoever runs the call find what a lost message missed.
    pub(super) fn nudge(&self, call: CallId) {
        let shared = &self.inner.shared;
        if shared.shards.may_run(call) {
            let _ = self
                .inner
                .supervisor
                .send_message(SupervisorMsg::Poked { calls: vec![call] });
            return;
        }
        let (Some(peers), Some(peer)) = (
            shared.ports.peers.clone(),
            shared.routes.owner(shard_of(call)),
        ) else {
            debug!(call_id = %call, "no node known to run the call; its next owner's sweep finds the work");
            return;
        };
        if peer.node_id == shared.config.node_id {
            return;
        }
        shared.metrics.pokes_sent.inc();
        tokio::spawn(async move {
            if let Err(e) = peers.poke(&peer.url, &[call]).await {
                debug!(call_id = %call, node = %peer.node_id, error = %e, "poke failed; the node's sweep finds the work");
            }
        });
    }

    /// Another node stored work for `calls`, which this node runs: activate them if needed
    /// and deliver their waiting vendor events now (rather than at the next sweep). A poke
    /// that names no call means another node just released shards planned for this one:
    /// claim them now rather than at the next round.
    pub fn poked(&self, calls: Vec<CallId>) {
        if calls.is_empty() {
            let _ = self
                .inner
                .manager
                .send_message(super::cluster::ManagerMsg::RoundNow);
            return;
        }
        let _ = self
            .inner
            .supervisor
            .send_message(SupervisorMsg::Poked { calls });
    }

    /// The cluster as this node's last shard round saw it: live members and every lease.
    pub fn cluster_view(&self) -> ClusterView {
        self.inner.shared.routes.view()
    }

    /// Whether this node runs `call` now: its media stream belongs here.
    pub fn runs_call(&self, call: CallId) -> bool {
        self.inner.shared.shards.may_run(call)
    }

    /// A media stream for `call` reached this node, which does not run it (it was refused):
    /// the node that runs the call is poked, and points the stream at itself.
    pub fn media_misrouted(&self, call: CallId) {
        self.nudge(call);
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.inner.shared.config.node_id
    }
}

/// One node in [`ClusterStatus`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    /// The member as the store sees it (heartbeat age by the store's clock).
    #[serde(flatten)]
    pub member: crate::ports::Member,
    /// Shards it holds a valid lease on.
    pub shards: usize,
    /// Live calls of those shards.
    pub live_calls: i64,
}

/// The cluster as the store sees it now (`GET /v1/admin/cluster`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub answered_by: String,
    /// Every registered node, alive or not.
    pub nodes: Vec<NodeStatus>,
    /// Shards nobody holds a valid lease on.
    pub unowned_shards: Vec<u16>,
    /// Live calls of unowned shards (waiting for a takeover).
    pub unowned_live_calls: i64,
    /// Every lease, with its epoch.
    pub leases: Vec<crate::ports::Lease>,
}

impl Engine {
    /// The cluster as the store sees it now: nodes with their heartbeat age, shards and live
    /// calls, and every lease with its epoch.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, EngineError> {
        let shared = &self.inner.shared;
        let cluster = &shared.ports.cluster;
        let ttl = shared.config.lease_ttl;
        let members = shared.with_timeout(cluster.members(ttl)).await?;
        let leases = shared.with_timeout(cluster.leases()).await?;
        let counts = shared.with_timeout(cluster.live_call_counts()).await?;
        let live_of = |shard: u16| {
            counts
                .iter()
                .find(|(s, _)| *s == shard)
                .map_or(0, |(_, n)| *n)
        };
        let nodes = members
            .into_iter()
            .map(|member| {
                let held: Vec<u16> = leases
                    .iter()
                    .filter(|l| l.is_held() && l.owner.as_deref() == Some(member.node_id.as_str()))
                    .map(|l| l.shard)
                    .collect();
                NodeStatus {
                    shards: held.len(),
                    live_calls: held.iter().map(|s| live_of(*s)).sum(),
                    member,
                }
            })
            .collect();
        let unowned_shards: Vec<u16> = (0..crate::ports::SHARD_COUNT)
            .filter(|s| !leases.iter().any(|l| l.shard == *s && l.is_held()))
            .collect();
        let unowned_live_calls = unowned_shards.iter().map(|s| live_of(*s)).sum();
        Ok(ClusterStatus {
            answered_by: shared.config.node_id.clone(),
            nodes,
            unowned_shards,
            unowned_live_calls,
            leases,
        })
    }
}
