//! The call supervisor: parent of every [`CallActor`].
//!
//! ractor's default `handle_supervisor_evt` stops the supervisor when any child stops, and
//! ractor never restarts anything by itself, so this supervisor overrides it:
//! - a child that stopped normally (its call ended, or it lost ownership) is forgotten;
//! - a child that failed (store error, panic) is re-activated from the persisted snapshot after
//!   an exponential backoff; after [`EngineConfig::max_restarts`](super::EngineConfig) failures
//!   within [`EngineConfig::restart_window`](super::EngineConfig) the call is ended as
//!   `engine_fault` instead.
//!
//! It also routes events to call actors (activating a call on demand) and periodically
//! re-delivers unprocessed inbox rows, which covers events whose delivery was lost to a crash.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::call_actor::{Activation, ApplyReply, CallActor, CallArgs, CallMsg, InboxRef};
use super::{EngineError, Shared};
use crate::machine::{Call, CallId, Effect, Event};

/// Mailbox of the supervisor.
// Messages are moved into the mailbox once; boxing the event would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum SupervisorMsg {
    /// A call was just inserted: start its actor with the start effects.
    Activate {
        call: Box<Call>,
        effects: Vec<Effect>,
        /// The create's capacity slot: released once the actor runs (and counts as running).
        admission: Option<super::capacity::Admission>,
    },
    /// Route an event to the call's actor, activating it from the store when needed.
    Deliver {
        call_id: CallId,
        event: Event,
        inbox: InboxRef,
        reply: Option<ApplyReply>,
    },
    /// Our media endpoint has a stream for the call.
    MediaStarted { call_id: CallId },
    /// Re-activate a crashed call (or end it as a fault).
    Restart {
        call_id: CallId,
        fault: Option<String>,
    },
    /// Make sure a live call has an actor (an idempotent replay of a create, the orphan sweep).
    Ensure { call_id: CallId },
    /// Re-deliver unprocessed inbox rows.
    SweepInbox,
    /// Look for live calls in the store that have no actor.
    SweepOrphans,
    /// Crash on purpose: kill every call actor (in call-id order) and then the supervisor.
    Kill,
    /// The sweep task finished.
    SweepDone,
    /// The orphan sweep task finished.
    SweepOrphansDone,
    /// Number of running call actors.
    LiveCount(ractor::RpcReplyPort<usize>),
    /// Work waits in the store for these calls (a poke from another node, or from this one):
    /// make sure each live one has an actor and deliver the waiting inbox rows now.
    Poked { calls: Vec<CallId> },
    /// The shard manager claimed shards: re-activate their live calls.
    Recover { ids: Vec<CallId> },
    /// The shard manager hands these shards over (or lost them): stop their calls' actors,
    /// and answer once they have stopped.
    StopShards(Vec<u16>, ractor::RpcReplyPort<()>),
}

/// Start-up arguments.
pub(crate) struct SupervisorArgs {
    pub shared: Arc<Shared>,
}

/// The supervisor actor.
pub(crate) struct CallSupervisor;

/// Its state.
pub(crate) struct SupervisorState {
    shared: Arc<Shared>,
    // Ordered so that stopping or killing every call happens in the same order on every run.
    calls: BTreeMap<CallId, ActorRef<CallMsg>>,
    by_actor: HashMap<ActorId, CallId>,
    failures: HashMap<CallId, VecDeque<Instant>>,
    /// Crashed calls waiting for their backoff before re-activation.
    backing_off: HashMap<CallId, u32>,
    sweeping: bool,
    /// A poke came during a sweep: sweep once more when it ends.
    sweep_again: bool,
    sweeping_orphans: bool,
}

impl Actor for CallSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            shared: args.shared,
            calls: BTreeMap::new(),
            by_actor: HashMap::new(),
            failures: HashMap::new(),
            backing_off: HashMap::new(),
            sweeping: false,
            sweep_again: false,
            sweeping_orphans: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let every = state.shared.config.inbox_sweep_every;
        myself.send_interval(every, || SupervisorMsg::SweepInbox);
        let every = state.shared.config.orphan_sweep_every;
        myself.send_interval(every, || SupervisorMsg::SweepOrphans);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Stop children in a fixed order (ractor would walk its own hash map otherwise).
        for actor in state.calls.values() {
            actor.stop(Some("shutdown".into()));
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Activate {
                call,
                effects,
                admission,
            } => {
                let id = call.spec.id;
                if !state.calls.contains_key(&id) {
                    state
                        .spawn(&myself, id, Activation::New { call, effects })
                        .await;
                }
                // Else already resumed from the store (orphan sweep or a delivery got here
                // first); that actor reconciles and re-issues what is missing. Either way the
                // call now counts as running.
                drop(admission);
            }
            SupervisorMsg::Ensure { call_id } => {
                if !state.calls.contains_key(&call_id) && !state.restarting(call_id) {
                    state.spawn(&myself, call_id, Activation::Resume).await;
                }
            }
            SupervisorMsg::SweepOrphans => {
                if !state.sweeping_orphans {
                    state.sweeping_orphans = true;
                    state.sweep_orphans(&myself);
                }
            }
            SupervisorMsg::SweepOrphansDone => state.sweeping_orphans = false,
            SupervisorMsg::Kill => {
                for actor in state.calls.values() {
                    actor.kill();
                }
                myself.kill();
            }
            SupervisorMsg::Deliver {
                call_id,
                event,
                inbox,
                reply,
            } => state.deliver(&myself, call_id, event, inbox, reply).await,
            SupervisorMsg::MediaStarted { call_id } => {
                // Only a call that is live here has a conversation to start. The stream is
                // remembered: a call actor that crashes (now, or while it backs off) starts
                // the conversation again when it is re-activated.
                if let Some(actor) = state.calls.get(&call_id) {
                    state.shared.voice.stream_started(call_id);
                    let _ = actor.send_message(CallMsg::MediaStarted);
                } else if state.restarting(call_id) {
                    state.shared.voice.stream_started(call_id);
                }
            }
            SupervisorMsg::Restart { call_id, fault } => {
                state.backing_off.remove(&call_id);
                if state.calls.contains_key(&call_id) {
                    // Already re-activated on demand by a delivery.
                    return Ok(());
                }
                let activation = match fault {
                    Some(detail) => Activation::Fault { detail },
                    None => Activation::Resume,
                };
                state.spawn(&myself, call_id, activation).await;
            }
            SupervisorMsg::SweepInbox => {
                if !state.sweeping {
                    state.sweeping = true;
                    state.sweep(&myself);
                }
            }
            SupervisorMsg::SweepDone => {
                if std::mem::take(&mut state.sweep_again) {
                    state.sweep(&myself);
                } else {
                    state.sweeping = false;
                }
            }
            SupervisorMsg::LiveCount(reply) => {
                let _ = reply.send(state.calls.len());
            }
            SupervisorMsg::Poked { calls } => {
                for call_id in calls {
                    match state.calls.get(&call_id) {
                        Some(actor) => {
                            let _ = actor.send_message(CallMsg::EnsureMedia);
                        }
                        None if !state.restarting(call_id) => {
                            state.spawn(&myself, call_id, Activation::Resume).await;
                        }
                        None => {}
                    }
                }
                if state.sweeping {
                    state.sweep_again = true;
                } else {
                    state.sweeping = true;
                    state.sweep(&myself);
                }
            }
            SupervisorMsg::Recover { ids } => {
                info!(calls = ids.len(), "re-activating live calls");
                for id in ids {
                    if !state.calls.contains_key(&id) && !state.restarting(id) {
                        state.spawn(&myself, id, Activation::Resume).await;
                    }
                }
            }
            SupervisorMsg::StopShards(shards, reply) => {
                state.stop_shards(&shards).await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Never call the default: it would stop this supervisor, and every call with it.
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(id) = state.forget(cell.get_id()) {
                    tracing::debug!(call_id = %id, ?reason, "call actor stopped");
                    state.failures.remove(&id);
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(id) = state.forget(cell.get_id()) {
                    state.on_failure(&myself, id, err.to_string());
                }
            }
            SupervisionEvent::ActorStarted(_) | SupervisionEvent::ProcessGroupChanged(_) => {}
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: CallId,
        activation: Activation,
    ) -> Option<ActorRef<CallMsg>> {
        if !self.shared.shards.may_run(id) {
            // Another node owns the call (or this node is handing its shard over): its
            // owner runs it. Inbox rows stay unprocessed for the owner.
            tracing::debug!(call_id = %id, "not activating a call of a shard this node does not run");
            self.backing_off.remove(&id);
            self.failures.remove(&id);
            return None;
        }
        let args = CallArgs {
            id,
            activation,
            shared: self.shared.clone(),
        };
        match Actor::spawn_linked(None, CallActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.calls.insert(id, actor.clone());
                self.by_actor.insert(actor.get_id(), id);
                self.update_gauge();
                Some(actor)
            }
            Err(e) => {
                error!(call_id = %id, error = %e, "could not spawn call actor");
                None
            }
        }
    }

    async fn deliver(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        call_id: CallId,
        event: Event,
        inbox: InboxRef,
        reply: Option<ApplyReply>,
    ) {
        let mut msg = CallMsg::Apply {
            event,
            inbox,
            reply,
        };
        if let Some(actor) = self.calls.get(&call_id) {
            match actor.send_message(msg) {
                Ok(()) => return,
                Err(ractor::MessagingErr::SendErr(back)) => {
                    // The actor is stopping; start a fresh one below.
                    msg = back;
                    let stale = actor.get_id();
                    self.forget(stale);
                }
                Err(_) => return,
            }
        }
        if let Some(actor) = self.spawn(myself, call_id, Activation::Resume).await {
            let _ = actor.send_message(msg);
        } else if let CallMsg::Apply {
            reply: Some(reply), ..
        } = msg
        {
            let detail = if self.shared.shards.may_run(call_id) {
                "could not start the call's actor"
            } else {
                "the call is run by another node"
            };
            let _ = reply.send(Err(EngineError::Unavailable(detail.into())));
        }
    }

    /// Stops the actors of every call of `shards` and waits for them to stop; calls backing
    /// off before a restart are forgotten (their next owner activates them).
    async fn stop_shards(&mut self, shards: &[u16]) {
        let in_shards = |id: &CallId| shards.contains(&crate::ports::shard_of(*id));
        let stopping: Vec<(CallId, ActorRef<CallMsg>)> = self
            .calls
            .iter()
            .filter(|(id, _)| in_shards(id))
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        for (id, actor) in &stopping {
            self.by_actor.remove(&actor.get_id());
            self.calls.remove(id);
            self.failures.remove(id);
        }
        self.backing_off.retain(|id, _| !in_shards(id));
        self.failures.retain(|id, _| !in_shards(id));
        // Their media streams end here: the calls' next node starts its own.
        for (id, _) in &stopping {
            if self.shared.voice.has_stream(*id) {
                self.shared.voice.forget_stream(*id);
                if let Some(voice) = &self.shared.ports.voice {
                    voice.media.release(*id);
                }
            }
        }
        let timeout = self.shared.config.call_timeout;
        for (id, actor) in stopping {
            if actor
                .stop_and_wait(Some("shard handed over".into()), Some(timeout))
                .await
                .is_err()
            {
                warn!(call_id = %id, "call actor did not stop in time at a handover; killing it");
                actor.kill();
            }
        }
        self.update_gauge();
    }

    fn forget(&mut self, actor: ActorId) -> Option<CallId> {
        let id = self.by_actor.remove(&actor)?;
        if self.calls.get(&id).is_some_and(|a| a.get_id() == actor) {
            self.calls.remove(&id);
        }
        self.update_gauge();
        Some(id)
    }

    fn update_gauge(&self) {
        self.shared.capacity.set_running(self.calls.len());
        self.shared
            .metrics
            .live_actors
            .set(i64::try_from(self.calls.len()).unwrap_or(i64::MAX));
    }

    fn on_failure(&mut self, myself: &ActorRef<SupervisorMsg>, id: CallId, detail: String) {
        let cfg = &self.shared.config;
        let now = Instant::now();
        let window = self.failures.entry(id).or_default();
        window.push_back(now);
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) > cfg.restart_window)
        {
            window.pop_front();
        }
        let failures = u32::try_from(window.len()).unwrap_or(u32::MAX);
        let m = &self.shared.metrics;
        if failures <= cfg.max_restarts {
            let backoff = cfg
                .restart_backoff
                .saturating_mul(1 << (failures - 1).min(8))
                .min(Duration::from_secs(30));
            m.actor_failures.with_label_values(&["restarted"]).inc();
            warn!(call_id = %id, failures, ?backoff, error = %detail, "call actor failed; re-activating");
            self.backing_off.insert(id, failures);
            myself.send_after(backoff, move || SupervisorMsg::Restart {
                call_id: id,
                fault: None,
            });
        } else if failures <= cfg.max_restarts + 2 {
            m.actor_failures.with_label_values(&["gave_up"]).inc();
            error!(call_id = %id, failures, error = %detail, "call actor keeps failing; ending the call as engine_fault");
            let backoff = cfg.restart_backoff;
            self.backing_off.insert(id, failures);
            myself.send_after(backoff, move || SupervisorMsg::Restart {
                call_id: id,
                fault: Some(format!(
                    "call actor failed {failures} times; last error: {detail}"
                )),
            });
        } else {
            // Even the fault path fails (the store is down). Stop trying; the call stays
            // non-terminal in the store and is recovered on the next start or delivery.
            error!(call_id = %id, error = %detail, "cannot end failing call; leaving it to recovery");
            self.failures.remove(&id);
        }
    }

    fn restarting(&self, id: CallId) -> bool {
        self.backing_off.contains_key(&id)
    }

    fn sweep_orphans(&self, myself: &ActorRef<SupervisorMsg>) {
        let shared = self.shared.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let shards = shared.shards.owned();
            match shared
                .with_timeout(shared.ports.calls.live_calls(&shards))
                .await
            {
                Ok(ids) => {
                    for call_id in ids {
                        let _ = me.send_message(SupervisorMsg::Ensure { call_id });
                    }
                }
                Err(e) => warn!(error = %e, "orphan sweep failed"),
            }
            let _ = me.send_message(SupervisorMsg::SweepOrphansDone);
        });
    }

    fn sweep(&self, myself: &ActorRef<SupervisorMsg>) {
        let shared = self.shared.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            match shared
                .with_timeout(shared.ports.calls.inbox_pending(500))
                .await
            {
                Ok(items) => {
                    for item in items {
                        if !shared.shards.may_run(item.call_id) {
                            continue;
                        }
                        let _ = me.send_message(SupervisorMsg::Deliver {
                            call_id: item.call_id,
                            event: item.to_event(),
                            inbox: Some((item.vendor, item.event_id)),
                            reply: None,
                        });
                    }
                }
                Err(e) => warn!(error = %e, "inbox sweep failed"),
            }
            let _ = me.send_message(SupervisorMsg::SweepDone);
        });
    }
}
