//! One actor per live call.
//!
//! The actor owns the call's snapshot while it runs. Every event goes through the pure machine
//! ([`crate::machine::step`]); a change is persisted (journal entry + snapshot, compare-and-set
//! on version and shard epoch) *before* any effect runs, so a crash can lose an effect but never
//! a fact. Lost effects are recovered on re-activation: timers are re-armed from the persisted
//! deadline and the carrier is asked for the leg's live status ([`CallMsg::Reconcile`]).
//!
//! Carrier commands run in spawned tasks so a slow carrier never blocks the mailbox; their
//! outcome comes back as an ordinary event (`initiated`, `command_rejected`).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{EngineError, Shared};
use crate::machine::{
    step, AmdResult, Call, CallId, CallStatus, CarrierEvent, Direction, Effect, EndReason, Event,
    HangupCause, PhoneNumber, TimerKind, TransitionError,
};
use crate::ports::{
    shard_of, DialCommand, JournalEntry, LegCommand, LegStatus, StoreError, TelephonyError,
};
use crate::voice::record::ConversationRecord;
use crate::voice::session::{VoiceArgs, VoiceMsg, VoiceSession};
use chrono::{DateTime, Utc};

/// How the actor comes to life.
#[derive(Debug)]
pub(crate) enum Activation {
    /// The call was just inserted; run its start effects (dial or answer, ring timer).
    New {
        /// The stored snapshot.
        call: Box<Call>,
        /// The effects of [`crate::machine::start`].
        effects: Vec<Effect>,
    },
    /// Re-activation after a crash or restart: load the snapshot, re-arm timers, reconcile
    /// with the carrier.
    Resume,
    /// The supervisor gave up on the call after repeated crashes: end it as `engine_fault`.
    Fault {
        /// What the supervisor saw.
        detail: String,
    },
}

/// Start-up arguments.
pub(crate) struct CallArgs {
    pub id: CallId,
    pub activation: Activation,
    pub shared: Arc<Shared>,
}

/// Where an inbox row came from, so its processing is recorded with the change.
pub(crate) type InboxRef = Option<(String, String)>;

/// Reply to a command that went through the actor.
pub(crate) type ApplyReply = RpcReplyPort<Result<Call, EngineError>>;

/// Mailbox of a [`CallActor`].
// Messages are moved into the mailbox once; boxing the event would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum CallMsg {
    /// First message, sent by `pre_start` to itself.
    Init,
    /// Apply an event.
    Apply {
        event: Event,
        inbox: InboxRef,
        reply: Option<ApplyReply>,
    },
    /// A deadline timer fired. `generation` tells a current timer from one that was cancelled
    /// or replaced after its message was already queued.
    Timer {
        generation: u64,
        kind: TimerKind,
        deadline: DateTime<Utc>,
    },
    /// Ask the carrier for the live status of the leg.
    Reconcile,
    /// The carrier's answer about the leg it was asked about (`None`: no leg was known).
    Reconciled(Option<String>, Result<LegStatus, TelephonyError>),
    /// Re-issue the hangup of an ended call whose release the carrier has not confirmed.
    RetryRelease,
    /// Stop if the call has ended (sent after the last message a terminal call may need).
    StopIfDone,
    /// Our media endpoint has a stream for the call: start the conversation.
    MediaStarted,
    /// From the call's voice session.
    Voice(VoiceRequest),
}

/// What a voice session asks of its call (the call actor is the call's only writer).
#[derive(Debug)]
pub(crate) enum VoiceRequest {
    /// Journal a conversation fact.
    Record(ConversationRecord),
    /// Hand the call to a person.
    Transfer(PhoneNumber),
    /// End the call.
    Hangup(EndReason),
}

/// Voice session crashes a call survives (each restart greets anew); after that the call is
/// ended as `voice_failure` rather than left silent.
const VOICE_RESTARTS: u32 = 2;

/// The actor (stateless handler; the state is [`CallState`]).
pub(crate) struct CallActor;

/// Per-call state.
pub(crate) struct CallState {
    id: CallId,
    shared: Arc<Shared>,
    activation: Option<Activation>,
    call: Option<Call>,
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<CallMsg>>>>,
    timer_generation: u64,
    reconcile_attempts: u32,
    /// A reconciliation is in flight (the actor must not stop before its answer).
    reconciling: bool,
    /// Inbox rows whose processing waits for the reconciliation they triggered.
    reconcile_inbox: Vec<(String, String)>,
    /// Failed hangup attempts of the pending release (for the backoff).
    release_attempts: u32,
    /// The conversation, while one runs.
    voice: Option<ActorRef<VoiceMsg>>,
    /// Voice session crashes so far.
    voice_failures: u32,
    /// The answering-machine verdict, once known.
    amd: Option<AmdResult>,
    /// The dial in flight, if any. Dropped once the call's leg is journaled (a webhook can
    /// name the leg before the dial's own answer): from then on the call is never dialed
    /// again, not even by a retry of this request. Also dropped when the actor dies (killed
    /// or failed): its retries must die with it, as they would with the process, or they
    /// would dial behind the back of the actor that takes over.
    dial: Option<DialGuard>,
}

/// Stops a dial task from making another attempt once dropped.
/// Cooperative, not an abort: a request already sent runs to its end, so its leg id is
/// still learned (and released if it is not the call's) and its breaker permit is recorded
/// as what the carrier answered, not as a failure of our making.
pub(crate) struct DialGuard(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DialGuard {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Attempts of a carrier command on `Unavailable` before giving up.
const COMMAND_ATTEMPTS: u32 = 4;
/// Reconciliation attempts before relying on timers alone.
const RECONCILE_ATTEMPTS: u32 = 6;

impl Actor for CallActor {
    type Msg = CallMsg;
    type State = CallState;
    type Arguments = CallArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CallMsg>,
        args: CallArgs,
    ) -> Result<CallState, ActorProcessingErr> {
        // Keep pre_start free of I/O: the supervisor awaits it. The real start is `Init`,
        // which is first in the mailbox.
        myself.send_message(CallMsg::Init)?;
        Ok(CallState {
            id: args.id,
            shared: args.shared,
            activation: Some(args.activation),
            call: None,
            timer: None,
            timer_generation: 0,
            reconcile_attempts: 0,
            reconciling: false,
            reconcile_inbox: Vec::new(),
            release_attempts: 0,
            voice: None,
            voice_failures: 0,
            amd: None,
            dial: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CallMsg>,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        // post_stop does not run after a failure; `on_failure` covers the crash paths we see
        // (and keeps the media stream known, for the re-activated actor).
        state.cancel_timer();
        state.stop_voice();
        state.shared.voice.forget_stream(state.id);
        // A dial still in flight dies with the actor: a leg it creates anyway names itself in
        // its webhooks and is released then.
        state.dial.take();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<CallMsg>,
        evt: SupervisionEvent,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        // Never the default (it would stop the call with its conversation).
        let (cell, failure) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return Ok(()),
        };
        let Some(voice) = state.voice.take_if(|v| v.get_id() == cell.get_id()) else {
            return Ok(());
        };
        state.shared.voice.remove(state.id, &voice);
        if let Some(err) = failure {
            state.voice_failures += 1;
            warn!(call_id = %state.id, error = %err, failures = state.voice_failures, "voice session crashed");
            let live = state
                .call
                .as_ref()
                .is_some_and(|c| c.status == CallStatus::InProgress);
            if live && state.voice_failures <= VOICE_RESTARTS {
                state.start_voice(&myself).await;
            } else if live {
                let event = Event::AgentHangup {
                    reason: EndReason::VoiceFailure,
                };
                if let Err(e) = state.apply(&myself, event, None).await {
                    state.on_failure();
                    return Err(e);
                }
            }
        } else {
            // The conversation is over (hung up, handed to a person): a re-activation of this
            // actor must not start another one on the stream.
            state.shared.voice.forget_stream(state.id);
        }
        myself.send_message(CallMsg::StopIfDone)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<CallMsg>,
        msg: CallMsg,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CallMsg::Init => {
                let result = state.init(&myself).await;
                if result.is_err() {
                    state.on_failure();
                }
                result
            }
            CallMsg::Apply {
                event,
                inbox,
                reply,
            } => {
                let outcome = state.apply(&myself, event, inbox).await;
                let outcome = match outcome {
                    Ok(r) => r,
                    Err(e) => {
                        // Crash: the reply port drops (the caller sees "unavailable") and the
                        // supervisor re-activates us from the persisted snapshot.
                        state.on_failure();
                        return Err(e);
                    }
                };
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
                Ok(())
            }
            CallMsg::Timer {
                generation,
                kind,
                deadline,
            } => {
                let fires = &state.shared.metrics.timer_fires;
                if generation != state.timer_generation {
                    fires.with_label_values(&["superseded"]).inc();
                    return Ok(());
                }
                state.timer = None;
                if state.call.as_ref().is_none_or(|c| c.status.is_terminal()) {
                    // Ending a call cancels its timer, so this is a bug: count it (the
                    // simulations fail on it) and do nothing.
                    fires.with_label_values(&["after_end"]).inc();
                    warn!(call_id = %state.id, kind = kind.as_str(), "timer fired for an ended call");
                    return Ok(());
                }
                fires.with_label_values(&["delivered"]).inc();
                if let Err(e) = state
                    .apply(&myself, Event::TimerFired { kind, deadline }, None)
                    .await
                {
                    state.on_failure();
                    return Err(e);
                }
                Ok(())
            }
            CallMsg::Reconcile => {
                state.reconcile(&myself);
                Ok(())
            }
            CallMsg::Reconciled(asked, result) => {
                let known = state.call.as_ref().and_then(|c| c.carrier_call_id.clone());
                if asked != known {
                    // The leg became known while the carrier was asked about none: that
                    // answer is about nothing; ask again about the leg.
                    state.reconciling = false;
                    state.reconcile(&myself);
                    return Ok(());
                }
                state.reconciled(&myself, result).await
            }
            CallMsg::RetryRelease => {
                state.release_attempts += 1;
                if let Some(call) = state.call.as_ref().filter(|c| c.release_pending) {
                    let reason = call.end_reason.unwrap_or(EndReason::NormalClearing);
                    let seq = call.version;
                    state.run_effects(&myself, vec![Effect::Hangup { reason }], seq);
                }
                Ok(())
            }
            CallMsg::StopIfDone => {
                let done = state
                    .call
                    .as_ref()
                    .is_none_or(|c| c.status.is_terminal() && !c.release_pending);
                // A running conversation still journals its last words; it stops on its own
                // after `CallEnded` and its exit brings us back here.
                if done && !state.reconciling && state.voice.is_none() {
                    myself.stop(None);
                }
                Ok(())
            }
            CallMsg::MediaStarted => {
                state.shared.voice.stream_started(state.id);
                state.start_voice(&myself).await;
                Ok(())
            }
            CallMsg::Voice(request) => {
                let event = match request {
                    VoiceRequest::Record(record) => Event::Conversation { record },
                    VoiceRequest::Transfer(to) => Event::TransferRequested { to },
                    VoiceRequest::Hangup(reason) => Event::AgentHangup { reason },
                };
                match state.apply(&myself, event, None).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => {
                        debug!(call_id = %state.id, error = %e, "voice request refused");
                        Ok(())
                    }
                    Err(e) => {
                        state.on_failure();
                        Err(e)
                    }
                }
            }
        }
    }
}

impl CallState {
    async fn init(&mut self, myself: &ActorRef<CallMsg>) -> Result<(), ActorProcessingErr> {
        let activation = self.activation.take().unwrap_or(Activation::Resume);
        match activation {
            Activation::New { call, effects } => {
                self.shared
                    .metrics
                    .activations
                    .with_label_values(&["new"])
                    .inc();
                let seq = call.version;
                self.call = Some(*call);
                self.run_effects(myself, effects, seq);
                Ok(())
            }
            Activation::Resume => {
                let Some(call) = self.load().await? else {
                    myself.stop(Some("no such call".into()));
                    return Ok(());
                };
                if call.status.is_terminal() && !call.release_pending {
                    // Woken by a late fact (a media report, a webhook after the end): journal
                    // it and stop. Nothing to reconcile, no timer, no conversation; a sign of
                    // life from the carrier still triggers reconciliation in `apply`.
                    self.shared
                        .metrics
                        .activations
                        .with_label_values(&["ended"])
                        .inc();
                    debug!(call_id = %self.id, status = call.status.as_str(), "ended call woken for a late fact");
                    myself.send_message(CallMsg::StopIfDone)?;
                    return Ok(());
                }
                self.shared
                    .metrics
                    .activations
                    .with_label_values(&["live"])
                    .inc();
                info!(call_id = %self.id, status = call.status.as_str(), version = call.version, "call re-activated");
                if let Some(d) = call.deadline {
                    let seq = call.version;
                    self.call = Some(call);
                    self.run_effects(
                        myself,
                        vec![Effect::ArmTimer {
                            kind: d.kind,
                            at: d.at,
                        }],
                        seq,
                    );
                } else {
                    self.call = Some(call);
                }
                self.reconcile(myself);
                // A crash stopped the conversation, not the call's media stream: converse again.
                if self.shared.voice.has_stream(self.id) {
                    self.start_voice(myself).await;
                }
                Ok(())
            }
            Activation::Fault { detail } => {
                if self.load().await?.is_none() {
                    myself.stop(Some("no such call".into()));
                    return Ok(());
                }
                let result = self
                    .apply(myself, Event::EngineFault { detail }, None)
                    .await?;
                if let Err(e) = result {
                    debug!(call_id = %self.id, error = %e, "engine fault on an ended call");
                }
                self.continue_release(myself);
                myself.send_message(CallMsg::StopIfDone)?;
                Ok(())
            }
        }
    }

    /// Loads the snapshot and takes ownership under this node's epoch.
    async fn load(&mut self) -> Result<Option<Call>, ActorProcessingErr> {
        let loaded = self
            .shared
            .with_timeout(self.shared.ports.calls.load_call(self.id))
            .await
            .map_err(|e| format!("loading call {}: {e}", self.id))?;
        Ok(loaded.map(|mut call| {
            call.owner_epoch = self.shared.shards.epoch_of(call.spec.id);
            self.call = Some(call.clone());
            call
        }))
    }

    /// Applies one event: machine, then persist, then effects. The outer `Err` is a crash
    /// (store unavailable); the inner `Err` is the answer to the caller.
    ///
    /// A `normal_clearing` hangup needs an answered call: when it finds the call still pending
    /// or ringing, the carrier's answer is late (webhook order is not guaranteed), so the
    /// answer is journaled first and the call ends `completed`, not `failed` — two entries,
    /// each a legal transition. The late answer, when it comes, is a stale duplicate.
    async fn apply(
        &mut self,
        myself: &ActorRef<CallMsg>,
        event: Event,
        inbox: InboxRef,
    ) -> Result<Result<Call, EngineError>, ActorProcessingErr> {
        // A fact of another leg than the call's own is journaled as what it is, and never
        // moves the call.
        let event = match self.call.as_ref() {
            Some(call) => crate::machine::classify(call, event),
            None => event,
        };
        if let Event::StrayLeg { leg, .. } = &event {
            self.shared.metrics.stray_legs.inc();
            warn!(call_id = %self.id, stray = %leg, kind = event.kind(), "fact of a second leg of the call");
        }
        let overtaken = match &event {
            Event::Carrier {
                event:
                    CarrierEvent::HungUp {
                        cause: HangupCause::NormalClearing,
                    },
                leg,
                at,
            } => self
                .call
                .as_ref()
                .is_some_and(|c| matches!(c.status, CallStatus::Pending | CallStatus::Ringing))
                .then(|| (leg.clone(), *at)),
            _ => None,
        };
        if let Some((leg, at)) = overtaken {
            info!(call_id = %self.id, "normal clearing before the answer: journaling the late answer first");
            let answered = Event::Carrier {
                event: CarrierEvent::Answered,
                leg,
                at,
            };
            if let Err(e) = self.apply_one(myself, answered, None).await? {
                return Ok(Err(e));
            }
        }
        self.apply_one(myself, event, inbox).await
    }

    async fn apply_one(
        &mut self,
        myself: &ActorRef<CallMsg>,
        event: Event,
        inbox: InboxRef,
    ) -> Result<Result<Call, EngineError>, ActorProcessingErr> {
        let Some(current) = self.call.as_ref() else {
            return Ok(Err(EngineError::NotFound { what: "call" }));
        };
        let now = self.shared.now();
        let mut next = current.clone();
        let before = next.version;
        let effects = match step(&mut next, event.clone(), now) {
            Ok(effects) => effects,
            Err(err) => {
                self.mark_processed(&inbox).await?;
                return Ok(Err(match err {
                    TransitionError::Terminal { status } => EngineError::IllegalTransition {
                        status,
                        message: format!(
                            "the call already ended ({status}); it cannot be {}",
                            if matches!(event, Event::TransferRequested { .. }) {
                                "transferred"
                            } else {
                                "hung up"
                            }
                        ),
                    },
                    TransitionError::NotNow { status, needs } => EngineError::IllegalTransition {
                        status,
                        message: format!("the call is {status}; {needs}"),
                    },
                    TransitionError::Invalid { kind } => {
                        EngineError::invalid("event", format!("event `{kind}` is not valid here"))
                    }
                }));
            }
        };
        if next.version == before {
            // Duplicate or stale: nothing to journal. One exception: a sign of life from the
            // carrier for a call that ended (a late answer, a dial that went through after
            // all) means a leg may still be up; ask the carrier, and keep the event
            // unprocessed until we know (a crash in between re-delivers it).
            let alive = matches!(&event, Event::Carrier { event, .. } if event.is_alive());
            if alive && next.status.is_terminal() && !next.release_pending {
                self.reconcile_inbox.extend(inbox);
                self.reconcile(myself);
                return Ok(Ok(next));
            }
            self.mark_processed(&inbox).await?;
            self.run_effects(myself, effects, before);
            if next.status.is_terminal() {
                myself.send_message(CallMsg::StopIfDone)?;
            }
            return Ok(Ok(next));
        }
        let kind = event.kind();
        let entry = JournalEntry {
            call_id: self.id,
            seq: next.version,
            at: now,
            event,
        };
        let inbox_ref = inbox.as_ref().map(|(v, e)| (v.as_str(), e.as_str()));
        let written = self
            .shared
            .with_timeout(
                self.shared
                    .ports
                    .calls
                    .append(&next, before, &entry, inbox_ref),
            )
            .await;
        match written {
            Ok(()) => {}
            Err(StoreError::Stale) => {
                // Another node owns the shard now, or our snapshot is behind: stop, don't retry.
                self.shared.metrics.stale_writes.inc();
                warn!(call_id = %self.id, version = before, "stale write; stopping this call actor");
                self.cancel_timer();
                // The call is another node's now: this one dials nothing more for it.
                if let Some(dial) = self.dial.take() {
                    drop(dial);
                }
                myself.stop(Some("stale".into()));
                return Ok(Err(EngineError::Unavailable(
                    "the call is owned by another node".into(),
                )));
            }
            Err(e @ (StoreError::Unavailable(_) | StoreError::Corrupt(_))) => {
                return Err(format!("persisting `{kind}` for call {}: {e}", self.id).into())
            }
        }
        let m = &self.shared.metrics;
        m.events_applied.with_label_values(&[kind]).inc();
        let leg_learned = next.carrier_call_id.is_some()
            && self
                .call
                .as_ref()
                .is_some_and(|c| c.carrier_call_id.is_none());
        if leg_learned {
            if let Some(dial) = self.dial.take() {
                drop(dial);
            }
        }
        let ended_now = next.status.is_terminal()
            && self.call.as_ref().is_some_and(|c| !c.status.is_terminal());
        if ended_now {
            let reason = next.end_reason.map_or("none", |r| r.as_str());
            m.calls_ended
                .with_label_values(&[next.status.as_str(), reason])
                .inc();
        }
        info!(
            call_id = %self.id,
            event = kind,
            seq = next.version,
            status = next.status.as_str(),
            "call event applied"
        );
        let answered = next.status == CallStatus::InProgress
            && self
                .call
                .as_ref()
                .is_some_and(|c| c.status != CallStatus::InProgress);
        self.call = Some(next.clone());
        if answered && self.shared.voice.has_stream(self.id) {
            // The media stream can connect before the answer webhook arrives (they travel
            // separately): the conversation then starts with the answer.
            self.start_voice(myself).await;
        }
        self.tell_voice(&entry.event, &next);
        self.run_effects(myself, effects, next.version);
        if next.status.is_terminal() {
            myself.send_message(CallMsg::StopIfDone)?;
        }
        Ok(Ok(next))
    }

    /// Passes what the conversation needs to know of an applied event to it.
    fn tell_voice(&mut self, event: &Event, call: &Call) {
        if let Event::Carrier {
            event: CarrierEvent::MachineDetection { result },
            ..
        } = event
        {
            self.amd = Some(*result);
        }
        let Some(voice) = &self.voice else { return };
        let msg = match event {
            _ if call.status.is_terminal() => VoiceMsg::CallEnded,
            Event::Carrier {
                event: CarrierEvent::MachineDetection { result },
                ..
            } => VoiceMsg::Amd(*result),
            Event::Carrier {
                event: CarrierEvent::Dtmf { digit },
                ..
            } => VoiceMsg::Dtmf(digit.clone()),
            Event::Carrier {
                event: CarrierEvent::Bridged { .. },
                ..
            } => VoiceMsg::CallEnded,
            _ => return,
        };
        let _ = voice.send_message(msg);
    }

    /// Starts the call's conversation: needs voice ports, an answered call, and none running.
    async fn start_voice(&mut self, myself: &ActorRef<CallMsg>) {
        let Some(call) = self.call.as_ref() else {
            return;
        };
        if self.shared.ports.voice.is_none()
            || self.voice.is_some()
            || call.status != CallStatus::InProgress
        {
            return;
        }
        let args = VoiceArgs {
            spec: call.spec.clone(),
            shared: self.shared.clone(),
            parent: myself.clone(),
            await_amd: self.shared.config.await_amd && call.spec.direction == Direction::Outbound,
            amd: self.amd,
        };
        match Actor::spawn_linked(None, VoiceSession, args, myself.get_cell()).await {
            Ok((voice, _)) => {
                self.shared.voice.insert(self.id, voice.clone());
                self.voice = Some(voice);
            }
            Err(e) => warn!(call_id = %self.id, error = %e, "voice session did not start"),
        }
    }

    fn stop_voice(&mut self) {
        if let Some(voice) = self.voice.take() {
            self.shared.voice.remove(self.id, &voice);
            voice.stop(Some("call actor stopped".into()));
        }
    }

    async fn mark_processed(&self, inbox: &InboxRef) -> Result<(), ActorProcessingErr> {
        if let Some((vendor, event_id)) = inbox {
            self.shared
                .with_timeout(
                    self.shared
                        .ports
                        .calls
                        .inbox_mark_processed(vendor, event_id),
                )
                .await
                .map_err(|e| format!("marking inbox {vendor}/{event_id} processed: {e}"))?;
        }
        Ok(())
    }

    fn run_effects(&mut self, myself: &ActorRef<CallMsg>, effects: Vec<Effect>, seq: i64) {
        for effect in effects {
            match effect {
                Effect::ArmTimer { kind, at } => {
                    self.cancel_timer();
                    let delay = (at - self.shared.ports.clock.now())
                        .to_std()
                        .unwrap_or(Duration::ZERO);
                    let generation = self.timer_generation;
                    self.timer = Some(myself.send_after(delay, move || CallMsg::Timer {
                        generation,
                        kind,
                        deadline: at,
                    }));
                }
                Effect::CancelTimer => self.cancel_timer(),
                Effect::Dial {
                    from,
                    to,
                    timeout_secs,
                } => {
                    let cmd = DialCommand {
                        call_id: self.id,
                        command_id: command_id(self.id, seq),
                        from,
                        to,
                        timeout_secs,
                    };
                    self.spawn_dial(myself, cmd);
                }
                Effect::Answer => {
                    let cmd = self.leg_command(seq);
                    let shared = self.shared.clone();
                    let me = myself.clone();
                    tokio::spawn(async move {
                        let result = retry_command(shared.config.command_timeout, || {
                            shared.ports.telephony.answer(cmd.clone())
                        })
                        .await;
                        if let Err(e) = result {
                            shared
                                .metrics
                                .effect_failures
                                .with_label_values(&["answer"])
                                .inc();
                            let _ = me.send_message(CallMsg::Apply {
                                event: Event::CommandRejected {
                                    detail: e.to_string(),
                                },
                                inbox: None,
                                reply: None,
                            });
                        }
                    });
                }
                Effect::HangupStray { carrier_call_id } => {
                    // Best effort with the engine's retries: the stray leg is not the call's,
                    // nothing about the call waits for it.
                    warn!(call_id = %self.id, stray = %carrier_call_id, "carrier reports a second leg for the call; hanging it up");
                    let cmd = LegCommand {
                        call_id: self.id,
                        command_id: format!("{}:stray:{carrier_call_id}", self.id),
                        carrier_call_id: Some(carrier_call_id),
                    };
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        let result = retry_command(shared.config.command_timeout, || {
                            shared.ports.telephony.hangup(cmd.clone())
                        })
                        .await;
                        if let Err(e) = result {
                            shared
                                .metrics
                                .effect_failures
                                .with_label_values(&["hangup_stray"])
                                .inc();
                            warn!(call_id = %cmd.call_id, error = %e, "hanging up a stray leg failed");
                        }
                    });
                }
                Effect::Transfer { to } => {
                    // A failed transfer leaves the call as it is (still answered, still with
                    // the agent); the caller of the API sees the failure in the logs and
                    // metrics, and no `bridged` fact appears in the journal.
                    let cmd = self.leg_command(seq);
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        let result = retry_command(shared.config.command_timeout, || {
                            shared.ports.telephony.transfer(cmd.clone(), to.clone())
                        })
                        .await;
                        if let Err(e) = result {
                            shared
                                .metrics
                                .effect_failures
                                .with_label_values(&["transfer"])
                                .inc();
                            warn!(call_id = %cmd.call_id, to = %to, error = %e, "transfer failed");
                        }
                    });
                }
                Effect::Hangup { reason } => {
                    // The call stays `release_pending` (and keeps this actor) until the
                    // carrier confirms; failures are retried with backoff, never dropped.
                    let cmd = self.leg_command(seq);
                    let shared = self.shared.clone();
                    let me = myself.clone();
                    let attempt = self.release_attempts;
                    tokio::spawn(async move {
                        let result = retry_command(shared.config.command_timeout, || {
                            shared.ports.telephony.hangup(cmd.clone())
                        })
                        .await;
                        match result {
                            Ok(()) => {
                                let _ = me.send_message(CallMsg::Apply {
                                    event: Event::LegReleased,
                                    inbox: None,
                                    reply: None,
                                });
                            }
                            Err(e) => {
                                shared
                                    .metrics
                                    .effect_failures
                                    .with_label_values(&["hangup"])
                                    .inc();
                                let delay = Duration::from_secs(2u64 << attempt.min(5));
                                warn!(call_id = %cmd.call_id, reason = reason.as_str(), error = %e, ?delay, "hangup command failed; retrying");
                                tokio::time::sleep(delay).await;
                                let _ = me.send_message(CallMsg::RetryRelease);
                            }
                        }
                    });
                }
            }
        }
    }

    fn spawn_dial(&mut self, myself: &ActorRef<CallMsg>, cmd: DialCommand) {
        let shared = self.shared.clone();
        let me = myself.clone();
        self.dial.take();
        let (shard, epoch) = (shard_of(self.id), self.shared.shards.epoch_of(self.id));
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.dial = Some(DialGuard(stopped.clone()));
        tokio::spawn(async move {
            let attempt = || async {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(Err("the call's actor no longer wants it"));
                }
                if let Some(why) = dial_gate(&shared, cmd.call_id, shard, epoch).await {
                    return Ok(Err(why));
                }
                // The leg may have been learned while the store was asked.
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(Err("the call's actor no longer wants it"));
                }
                shared.ports.telephony.dial(cmd.clone()).await.map(Ok)
            };
            let event = match retry_command(shared.config.command_timeout, attempt).await {
                Ok(Ok(carrier_call_id)) => {
                    Event::carrier(CarrierEvent::Initiated { carrier_call_id })
                }
                Ok(Err(why)) => {
                    shared
                        .metrics
                        .effect_failures
                        .with_label_values(&["dial_abandoned"])
                        .inc();
                    info!(call_id = %cmd.call_id, reason = why, "dial abandoned");
                    return;
                }
                Err(e) => {
                    shared
                        .metrics
                        .effect_failures
                        .with_label_values(&["dial"])
                        .inc();
                    warn!(call_id = %cmd.call_id, error = %e, "dial failed");
                    Event::CommandRejected {
                        detail: e.to_string(),
                    }
                }
            };
            let _ = me.send_message(CallMsg::Apply {
                event,
                inbox: None,
                reply: None,
            });
        });
    }

    fn leg_command(&self, seq: i64) -> LegCommand {
        LegCommand {
            call_id: self.id,
            carrier_call_id: self.call.as_ref().and_then(|c| c.carrier_call_id.clone()),
            command_id: command_id(self.id, seq),
        }
    }

    /// Asks the carrier for the leg's status in a task; the answer comes back as `Reconciled`.
    fn reconcile(&mut self, myself: &ActorRef<CallMsg>) {
        let Some(call) = &self.call else { return };
        self.reconciling = true;
        let shared = self.shared.clone();
        let me = myself.clone();
        let (id, leg) = (call.spec.id, call.carrier_call_id.clone());
        tokio::spawn(async move {
            let status = shared.ports.telephony.status(id, leg.as_deref()).await;
            let _ = me.send_message(CallMsg::Reconciled(leg, status));
        });
    }

    async fn reconciled(
        &mut self,
        myself: &ActorRef<CallMsg>,
        result: Result<LegStatus, TelephonyError>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(call) = self.call.clone() else {
            self.reconciling = false;
            return Ok(());
        };
        let status = match result {
            Ok(s) => s,
            Err(e) => {
                self.reconcile_attempts += 1;
                if self.reconcile_attempts < RECONCILE_ATTEMPTS {
                    let delay = Duration::from_millis(500 << self.reconcile_attempts.min(6));
                    warn!(call_id = %self.id, error = %e, ?delay, "reconciliation failed; retrying");
                    myself.send_after(delay, || CallMsg::Reconcile);
                } else {
                    // Live calls stay bounded by their deadline timers; an unprocessed inbox
                    // row that triggered this is re-delivered by the sweep and tries again.
                    warn!(call_id = %self.id, error = %e, "reconciliation gave up");
                    // An ended call still owes the carrier its hangup: keep trying that.
                    self.continue_release(myself);
                    self.reconciling = false;
                    self.reconcile_attempts = 0;
                    self.reconcile_inbox.clear();
                    myself.send_message(CallMsg::StopIfDone)?;
                }
                return Ok(());
            }
        };
        self.reconciling = false;
        self.reconcile_attempts = 0;
        debug!(call_id = %self.id, ?status, call_status = call.status.as_str(), "reconciled with carrier");
        let mut events = Vec::new();
        match (call.status, status) {
            (s, LegStatus::Ringing | LegStatus::Answered) if s.is_terminal() => {
                // We ended the call but its leg is up (a hangup lost in a crash, a late
                // answer): release it, durably.
                if call.release_pending {
                    let reason = call.end_reason.unwrap_or(EndReason::NormalClearing);
                    self.run_effects(myself, vec![Effect::Hangup { reason }], call.version);
                } else {
                    events.push(Event::ReleaseLeg);
                }
            }
            (s, _) if s.is_terminal() => {
                if call.release_pending {
                    events.push(Event::LegReleased);
                }
            }
            (CallStatus::Pending, LegStatus::Unknown) if call.carrier_call_id.is_none() => {
                // No leg was ever journaled: the dial may never have reached the carrier.
                // Re-issue it with its original command id (version 1) only, so a carrier
                // that still remembers it deduplicates it; a second leg it creates anyway
                // is released as stray when its facts arrive.
                let cmd = DialCommand {
                    call_id: self.id,
                    command_id: command_id(self.id, 1),
                    from: call.spec.from.clone(),
                    to: call.spec.to.clone(),
                    timeout_secs: call.spec.ring_timeout_secs,
                };
                self.shared
                    .metrics
                    .effect_failures
                    .with_label_values(&["dial_reissued"])
                    .inc();
                info!(call_id = %self.id, "no leg known after re-activation; re-issuing the original dial");
                self.spawn_dial(myself, cmd);
            }
            // A call whose leg is journaled is never dialed again: the carrier's word on
            // that leg decides (a leg it no longer knows is lost).
            (_, LegStatus::Unknown) => events.push(Event::CarrierLost),
            (_, status) => events.extend(carrier_facts(status, call.carrier_call_id.clone())),
        }

        for event in events {
            if let Err(e) = self.apply(myself, event, None).await? {
                debug!(call_id = %self.id, error = %e, "reconciliation event refused");
            }
        }
        for (vendor, event_id) in std::mem::take(&mut self.reconcile_inbox) {
            self.mark_processed(&Some((vendor, event_id))).await?;
        }
        myself.send_message(CallMsg::StopIfDone)?;
        Ok(())
    }

    /// Re-issues the hangup of an ended call whose release is not confirmed (after a
    /// re-activation that could not reconcile).
    fn continue_release(&mut self, myself: &ActorRef<CallMsg>) {
        let pending = self
            .call
            .as_ref()
            .filter(|c| c.status.is_terminal() && c.release_pending)
            .map(|c| (c.end_reason.unwrap_or(EndReason::NormalClearing), c.version));
        if let Some((reason, seq)) = pending {
            self.run_effects(myself, vec![Effect::Hangup { reason }], seq);
        }
    }

    fn cancel_timer(&mut self) {
        // A fire already queued in the mailbox carries the old generation and is dropped.
        self.timer_generation += 1;
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }

    fn on_failure(&mut self) {
        // post_stop will not run: drop the timer so a stale one cannot fire into a successor,
        // and stop the conversation (its successor starts a new one).
        self.cancel_timer();
        self.stop_voice();
    }
}

/// Why a dial must not be placed (checked before every attempt), if it must not: a dial is
/// not fenced by a write, so this node asks the store first. A store that cannot answer does
/// not stop the dial of a call this node owns.
async fn dial_gate(shared: &Shared, id: CallId, shard: u16, epoch: i64) -> Option<&'static str> {
    if let Ok(false) = shared.ports.calls.owns_shard(shard, epoch).await {
        return Some("another node owns the call");
    }
    match shared.ports.calls.load_call(id).await {
        Ok(Some(call)) if call.carrier_call_id.is_some() => Some("the call's leg is journaled"),
        Ok(Some(call)) if call.status.is_terminal() => Some("the call ended"),
        _ => None,
    }
}

/// The carrier facts a leg status implies (about the call's own leg, when known).
fn carrier_facts(status: LegStatus, leg: Option<String>) -> Vec<Event> {
    let carrier = |event| Event::Carrier {
        event,
        leg: leg.clone(),
        at: None,
    };
    match status {
        LegStatus::Unknown => vec![],
        LegStatus::Ringing => vec![carrier(CarrierEvent::Ringing)],
        LegStatus::Answered => vec![carrier(CarrierEvent::Answered)],
        LegStatus::Ended(cause) => vec![carrier(CarrierEvent::HungUp { cause })],
    }
}

/// The idempotency key of the carrier command produced at version `seq` of a call.
pub(crate) fn command_id(call_id: CallId, seq: i64) -> String {
    format!("{call_id}:{seq}")
}

/// Runs a carrier command, retrying `Unavailable` with exponential backoff (0.25 s, 0.5 s, 1 s).
/// Each attempt is bounded by `timeout` (a hung request counts as `Unavailable`); the command
/// id makes a retry after an ambiguous timeout safe.
async fn retry_command<T, F, Fut>(timeout: Duration, mut f: F) -> Result<T, TelephonyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TelephonyError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = match tokio::time::timeout(timeout, f()).await {
            Ok(r) => r,
            Err(_) => Err(TelephonyError::Unavailable(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        };
        match outcome {
            Err(TelephonyError::Unavailable(m)) if attempt < COMMAND_ATTEMPTS => {
                debug!(attempt, error = %m, "carrier unavailable; retrying");
                tokio::time::sleep(Duration::from_millis(250 << (attempt - 1))).await;
            }
            other => return other,
        }
    }
}
