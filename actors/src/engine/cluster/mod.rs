//! Shared ownership of the calls by the nodes of a cluster (DESIGN.md section 4).
//!
//! Calls are spread over 256 shards (`shard_of`). A node runs the calls of the shards it holds
//! a lease on, in the store: the lease's epoch fences every write of those calls, and its TTL
//! bounds how long a node that stops renewing (dead, cut off from the store) keeps them.
//!
//! The [`ShardManager`] actor, one per node, runs a round every `lease_renew_every`:
//!
//! 1. heartbeat: refresh this node's membership row, learn the live members;
//! 2. renew: extend every held lease; a lease missing from the answer was taken by another
//!    node (this node's had lapsed): its calls' actors stop;
//! 3. plan: [`assign`] maps every shard to one live, non-draining member;
//! 4. hand over: shards held here but planned elsewhere are marked (no new actor, no new
//!    carrier command), their actors stopped, their commands in flight waited for, and then
//!    released, so that the planned owner can claim them at its next round;
//! 5. claim: shards planned here that are free (never leased, released, lapsed, or this
//!    node's own from before a restart) are taken with a bumped epoch, and their live calls
//!    re-activated as at start-up.
//!
//! Between rounds the manager also wakes when the first held lease would lapse by this
//! node's own clock: a node that could not renew in time drops the shard (stops its actors)
//! before the store's TTL ends. The [`ShardTable`] refuses carrier commands for a shard whose
//! validity ended even before that.

mod assign;
mod routes;
mod table;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;
use tracing::{info, warn};

pub(crate) use assign::assign;
pub(crate) use routes::Routes;
pub use routes::{ClusterView, Peer};
pub(crate) use table::ShardTable;

use super::supervisor::SupervisorMsg;
use super::Shared;
use crate::machine::CallId;
use crate::ports::voice::{MediaError, MediaOut};
use crate::ports::{ClaimKind, Member, NodeInfo, StoreError};

/// Mailbox of the shard manager.
pub(crate) enum ManagerMsg {
    /// One round (see the module docs), then the next one `lease_renew_every` later. The
    /// start-up round answers whether it reached the store.
    Round(Option<RpcReplyPort<Result<(), StoreError>>>),
    /// One round now, between the periodic ones.
    RoundNow,
    /// The first held lease may have ended by this node's clock.
    CheckLapse,
    /// A clean stop: hand every held shard over, then leave the cluster.
    Leave(RpcReplyPort<()>),
    /// Drain: take no new shard and hand every held one over; a shard with a live
    /// conversation is kept until its conversations end or the deadline passes. Answers once
    /// no shard is held.
    Drain(Instant, RpcReplyPort<()>),
}

/// Start-up arguments.
pub(crate) struct ManagerArgs {
    pub shared: Arc<Shared>,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub node: NodeInfo,
}

/// The shard manager actor.
pub(crate) struct ShardManager;

/// Its state.
pub(crate) struct ManagerState {
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    node: NodeInfo,
    members: Vec<Member>,
    /// The node's row was written by this process (at its first round).
    registered: bool,
    left: bool,
    /// Draining until then; answered when the last shard is handed over.
    drain: Option<(Instant, Vec<RpcReplyPort<()>>)>,
    lapse_timer:
        Option<ractor::concurrency::JoinHandle<Result<(), ractor::MessagingErr<ManagerMsg>>>>,
}

impl Actor for ShardManager {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = ManagerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ManagerMsg>,
        args: ManagerArgs,
    ) -> Result<ManagerState, ActorProcessingErr> {
        Ok(ManagerState {
            shared: args.shared,
            supervisor: args.supervisor,
            node: args.node,
            members: Vec::new(),
            registered: false,
            left: false,
            drain: None,
            lapse_timer: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ManagerMsg>,
        msg: ManagerMsg,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ManagerMsg::Round(reply) => {
                if state.left {
                    return Ok(());
                }
                let result = state.round().await;
                if let Err(e) = &result {
                    warn!(node = %state.node.node_id, error = %e, "cluster round failed");
                }
                state.schedule_lapse_check(&myself);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
                let every = state.shared.config.lease_renew_every;
                myself.send_after(every, || ManagerMsg::Round(None));
            }
            ManagerMsg::RoundNow => {
                if !state.left {
                    if let Err(e) = state.round().await {
                        warn!(node = %state.node.node_id, error = %e, "cluster round failed");
                    }
                    state.schedule_lapse_check(&myself);
                }
            }
            ManagerMsg::CheckLapse => {
                state.check_lapse().await;
                state.schedule_lapse_check(&myself);
            }
            ManagerMsg::Drain(deadline, reply) => {
                if state.left {
                    let _ = reply.send(());
                    return Ok(());
                }
                if !state.node.draining {
                    info!(node = %state.node.node_id, "draining: handing every shard over");
                }
                state.node.draining = true;
                state
                    .shared
                    .draining
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                let (until, waiting) = state.drain.get_or_insert((deadline, Vec::new()));
                *until = (*until).min(deadline);
                waiting.push(reply);
                // A round now (announcing the drain) rather than at the next tick.
                myself.send_message(ManagerMsg::RoundNow)?;
            }
            ManagerMsg::Leave(reply) => {
                if !state.left {
                    state.left = true;
                    state.leave().await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

impl ManagerState {
    fn table(&self) -> &ShardTable {
        &self.shared.shards
    }

    /// Until when this node may act for a lease the store set by a request sent at `sent`:
    /// the store counts the TTL from a later instant, and a tenth of it is kept back for the
    /// difference in clock rates.
    fn valid_from(&self, sent: Instant) -> Instant {
        let ttl = self.shared.config.lease_ttl;
        sent + ttl - ttl / 10
    }

    async fn round(&mut self) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let cluster = &shared.ports.cluster;
        let ttl = shared.config.lease_ttl;
        if !self.registered {
            shared.with_timeout(cluster.register(&self.node)).await?;
            self.registered = true;
        }
        let members = match shared
            .with_timeout(cluster.heartbeat(&self.node, ttl))
            .await
        {
            Ok(m) => m,
            Err(StoreError::Stale) => {
                self.superseded().await;
                return Err(StoreError::Stale);
            }
            Err(e) => {
                self.check_lapse().await;
                return Err(e);
            }
        };
        shared
            .metrics
            .cluster_nodes
            .set(i64::try_from(members.len()).unwrap_or(i64::MAX));
        self.members = members;
        self.shared.routes.set_members(self.members.clone());

        let held = self.table().held();
        if !held.is_empty() {
            let sent = Instant::now();
            match shared
                .with_timeout(cluster.renew_shards(&self.node.node_id, &held, ttl))
                .await
            {
                Ok(renewed) => {
                    self.table().extend(&renewed, self.valid_from(sent));
                    let lost: Vec<u16> = held
                        .iter()
                        .map(|(s, _)| *s)
                        .filter(|s| !renewed.contains(s))
                        .collect();
                    if !lost.is_empty() {
                        warn!(node = %self.node.node_id, shards = lost.len(), "shard leases taken by another node");
                        self.drop_shards(lost, "lost").await;
                    }
                }
                Err(e) => {
                    warn!(node = %self.node.node_id, error = %e, "renewing shard leases failed")
                }
            }
        }
        self.check_lapse().await;

        let eligible: Vec<String> = self
            .members
            .iter()
            .filter(|m| !m.draining)
            .map(|m| m.node_id.clone())
            .collect();
        let plan = assign(&eligible);
        // With nobody to hand shards to (every member draining), what is held is kept.
        let me = eligible.iter().position(|n| *n == self.node.node_id);
        // Shards planned elsewhere go; with nobody to plan for (every member draining), a
        // draining node lets go all the same (its calls wait for the next node to start).
        let give: Vec<u16> = self
            .table()
            .owned()
            .into_iter()
            .filter(|s| match plan.get(usize::from(*s)) {
                Some(owner) => Some(*owner) != me,
                None => self.node.draining,
            })
            .collect();
        let give = self.keep_conversations(give);
        if !give.is_empty() {
            let reason = if self.node.draining {
                "drain"
            } else {
                "rebalance"
            };
            // The nodes planned to take them are told at once, so that they claim now rather
            // than at their next round: a command for those calls finds no owner only for
            // that long.
            let mut takers: Vec<String> = give
                .iter()
                .filter_map(|s| plan.get(usize::from(*s)))
                .map(|i| eligible[*i].clone())
                .collect();
            takers.sort();
            takers.dedup();
            self.hand_over(give, reason).await;
            self.wake(&takers);
        }
        self.drain_progress();
        if let Some(me) = me {
            let want: Vec<u16> = (0..crate::ports::SHARD_COUNT)
                .filter(|s| plan[usize::from(*s)] == me && !self.table().holds(*s))
                .collect();
            if !want.is_empty() {
                self.claim(want).await?;
            }
        }
        self.report();
        match shared.with_timeout(cluster.leases()).await {
            Ok(leases) => shared.routes.update(self.members.clone(), leases),
            Err(e) => {
                warn!(node = %self.node.node_id, error = %e, "reading the shard leases failed")
            }
        }
        Ok(())
    }

    /// Pokes `nodes` (ids) to run a round now. Best effort: their next round comes anyway.
    fn wake(&self, nodes: &[String]) {
        let Some(peers) = self.shared.ports.peers.clone() else {
            return;
        };
        for node in nodes {
            let Some(member) = self.members.iter().find(|m| &m.node_id == node) else {
                continue;
            };
            if member.node_id == self.node.node_id {
                continue;
            }
            let (peers, url, node) = (peers.clone(), member.url.clone(), node.clone());
            tokio::spawn(async move {
                if let Err(e) = peers.poke(&url, &[]).await {
                    tracing::debug!(node = %node, error = %e, "waking a node for a handover failed; its next round claims the shards");
                }
            });
        }
    }

    /// While draining before the deadline, shards with a live conversation here stay (their
    /// media streams are attached to this node); everything else goes.
    fn keep_conversations(&self, give: Vec<u16>) -> Vec<u16> {
        let Some((deadline, _)) = &self.drain else {
            return give;
        };
        if Instant::now() >= *deadline {
            return give;
        }
        let busy: Vec<u16> = self
            .shared
            .voice
            .conversing()
            .into_iter()
            .map(crate::ports::shard_of)
            .collect();
        give.into_iter().filter(|s| !busy.contains(s)).collect()
    }

    /// Answers the drain's waiters once no shard is held.
    fn drain_progress(&mut self) {
        if self.table().owned().is_empty() {
            if let Some((_, waiting)) = self.drain.as_mut() {
                for reply in waiting.drain(..) {
                    let _ = reply.send(());
                }
            }
        }
    }

    fn report(&self) {
        self.shared
            .metrics
            .shards_owned
            .set(i64::try_from(self.table().valid_count()).unwrap_or(i64::MAX));
    }

    async fn claim(&mut self, want: Vec<u16>) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let sent = Instant::now();
        let claimed = shared
            .with_timeout(shared.ports.cluster.claim_shards(
                &self.node.node_id,
                &want,
                shared.config.lease_ttl,
            ))
            .await?;
        if claimed.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(u16, i64)> = claimed.iter().map(|c| (c.shard, c.epoch)).collect();
        self.table().take(&pairs, self.valid_from(sent));
        for c in &claimed {
            let reason = match c.kind {
                ClaimKind::Own => "restart",
                ClaimKind::Free => "free",
                ClaimKind::Lapsed => "takeover",
            };
            shared
                .metrics
                .shard_handoffs
                .with_label_values(&[reason])
                .inc();
        }
        let shards: Vec<u16> = claimed.iter().map(|c| c.shard).collect();
        let taken_over = claimed
            .iter()
            .filter(|c| c.kind == ClaimKind::Lapsed)
            .count();
        match shared
            .with_timeout(shared.ports.calls.live_calls(&shards))
            .await
        {
            Ok(ids) => {
                info!(node = %self.node.node_id, shards = shards.len(), taken_over, live_calls = ids.len(), "shards claimed");
                if !ids.is_empty() {
                    let _ = self.supervisor.send_message(SupervisorMsg::Recover { ids });
                }
            }
            // The orphan sweep finds them later.
            Err(e) => {
                warn!(node = %self.node.node_id, error = %e, "listing the live calls of claimed shards failed")
            }
        }
        Ok(())
    }

    /// Stops acting for `shards`, stops their calls' actors and waits for their carrier
    /// commands in flight (bounded by the command timeout).
    async fn stop_shards(&self, shards: &[u16]) {
        self.table().mark_releasing(shards);
        let shared = &self.shared;
        let stop = ractor::call_t!(
            self.supervisor,
            SupervisorMsg::StopShards,
            millis(shared.config.call_timeout * 2),
            shards.to_vec()
        );
        if let Err(e) = stop {
            warn!(node = %self.node.node_id, error = %e, "stopping the calls of released shards did not finish");
        }
        if tokio::time::timeout(
            shared.config.command_timeout,
            self.table().effects_drained(shards),
        )
        .await
        .is_err()
        {
            warn!(node = %self.node.node_id, "carrier commands still in flight at a handover");
        }
    }

    async fn hand_over(&mut self, shards: Vec<u16>, reason: &'static str) {
        self.stop_shards(&shards).await;
        let held: Vec<(u16, i64)> = self
            .table()
            .held()
            .into_iter()
            .filter(|(s, _)| shards.contains(s))
            .collect();
        let shared = self.shared.clone();
        if let Err(e) = shared
            .with_timeout(
                shared
                    .ports
                    .cluster
                    .release_shards(&self.node.node_id, &held),
            )
            .await
        {
            // The leases lapse by themselves; the next owner takes them then.
            warn!(node = %self.node.node_id, error = %e, "releasing shard leases failed");
        }
        self.table().drop_shards(&shards);
        shared
            .metrics
            .shard_handoffs
            .with_label_values(&[reason])
            .inc_by(u64::try_from(shards.len()).unwrap_or(u64::MAX));
        info!(node = %self.node.node_id, shards = shards.len(), reason, "shards handed over");
    }

    async fn drop_shards(&mut self, shards: Vec<u16>, reason: &'static str) {
        self.stop_shards(&shards).await;
        self.table().drop_shards(&shards);
        self.shared
            .metrics
            .shard_handoffs
            .with_label_values(&[reason])
            .inc_by(u64::try_from(shards.len()).unwrap_or(u64::MAX));
        self.report();
    }

    async fn check_lapse(&mut self) {
        let lapsed = self.table().lapsed(Instant::now());
        if !lapsed.is_empty() {
            warn!(node = %self.node.node_id, shards = lapsed.len(), "shard leases could not be renewed in time; stopping their calls");
            self.drop_shards(lapsed, "lapsed").await;
        }
    }

    fn schedule_lapse_check(&mut self, myself: &ActorRef<ManagerMsg>) {
        if let Some(t) = self.lapse_timer.take() {
            t.abort();
        }
        if let Some(at) = self.table().next_lapse() {
            let delay = at.saturating_duration_since(Instant::now());
            self.lapse_timer = Some(myself.send_after(delay, || ManagerMsg::CheckLapse));
        }
    }

    /// Another process registered under this node's id since this one did (a restart while
    /// this process still ran, or two nodes configured with one id): the newer one runs the
    /// node's shards; this one stops running calls for good.
    async fn superseded(&mut self) {
        tracing::error!(node = %self.node.node_id, "another process registered under this node id; this process stops running calls (node ids must be unique)");
        self.left = true;
        self.shared
            .superseded
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let owned = self.table().owned();
        if !owned.is_empty() {
            self.drop_shards(owned, "superseded").await;
        }
    }

    async fn leave(&mut self) {
        let owned = self.table().owned();
        if !owned.is_empty() {
            self.hand_over(owned, "shutdown").await;
        }
        let shared = self.shared.clone();
        if let Err(e) = shared
            .with_timeout(shared.ports.cluster.leave(&self.node.node_id))
            .await
        {
            warn!(node = %self.node.node_id, error = %e, "leaving the cluster failed; the heartbeat will age out");
        }
        self.report();
    }
}

/// The outbound media of calls, refused for a call whose shard this node may not act for.
pub(crate) struct FencedMedia {
    pub inner: Arc<dyn MediaOut>,
    pub shards: Arc<ShardTable>,
}

impl FencedMedia {
    fn check(&self, call_id: CallId) -> Result<(), MediaError> {
        if self.shards.may_run(call_id) {
            Ok(())
        } else {
            Err(MediaError::NotOwner)
        }
    }
}

impl MediaOut for FencedMedia {
    fn send_audio(&self, call_id: CallId, mulaw: Vec<u8>) -> Result<(), MediaError> {
        self.check(call_id)?;
        self.inner.send_audio(call_id, mulaw)
    }

    fn mark(&self, call_id: CallId, name: String) -> Result<(), MediaError> {
        self.check(call_id)?;
        self.inner.mark(call_id, name)
    }

    fn clear(&self, call_id: CallId) -> Result<(), MediaError> {
        self.check(call_id)?;
        self.inner.clear(call_id)
    }

    fn release(&self, call_id: CallId) {
        self.inner.release(call_id);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
