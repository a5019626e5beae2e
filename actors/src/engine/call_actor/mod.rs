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
//!
//! This file holds the actor, its messages and its state; the state's methods live by concern:
//! `activation` (start, re-activation, reconciliation with the carrier), `apply` (machine,
//! journal, snapshot), `effects` (timers and carrier commands), `dial` (the dial task, its
//! gate and guard) and `voice` (the call's conversation).

mod activation;
mod apply;
mod dial;
mod effects;
mod voice;

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{EngineError, Shared};
use crate::engine::voice_session::VoiceMsg;
use crate::engine::voice_session::VoiceRequest;
use crate::machine::{AmdResult, Call, CallId, CallStatus, Effect, EndReason, Event, TimerKind};
use crate::ports::{LegStatus, TelephonyError};
use chrono::{DateTime, Utc};
use dial::DialGuard;

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
    /// The call's media stream may be attached to another node (a stream reached a node
    /// that does not run the call): point it here if this node has none for the call.
    EnsureMedia,
    /// From the call's voice session.
    Voice(VoiceRequest),
}

impl From<VoiceRequest> for CallMsg {
    fn from(request: VoiceRequest) -> CallMsg {
        CallMsg::Voice(request)
    }
}

/// The way back, for a send that failed: ractor hands the message back in the error.
impl TryFrom<CallMsg> for VoiceRequest {
    type Error = CallMsg;

    fn try_from(msg: CallMsg) -> Result<VoiceRequest, CallMsg> {
        match msg {
            CallMsg::Voice(request) => Ok(request),
            other => Err(other),
        }
    }
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
    /// This call counted as active while it is live here.
    active: Option<ActiveGuard>,
    /// The dial in flight, if any. Dropped once the call's leg is journaled (a webhook can
    /// name the leg before the dial's own answer): from then on the call is never dialed
    /// again, not even by a retry of this request. Also dropped when the actor dies (killed
    /// or failed): its retries must die with it, as they would with the process, or they
    /// would dial behind the back of the actor that takes over.
    dial: Option<DialGuard>,
}

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
            active: None,
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
        let result = state.handle(&myself, msg).await;
        state.track_active();
        result
    }
}

impl CallState {
    async fn handle(
        &mut self,
        myself: &ActorRef<CallMsg>,
        msg: CallMsg,
    ) -> Result<(), ActorProcessingErr> {
        let (myself, state) = (myself.clone(), self);
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
                if let Some(call) = state.call.as_ref() {
                    let seq = call.version;
                    let mut effects = stray_hangups(call);
                    if call.release_pending {
                        let reason = call.end_reason.unwrap_or(EndReason::NormalClearing);
                        effects.push(Effect::Hangup { reason });
                    }
                    state.run_effects(&myself, effects, seq);
                }
                Ok(())
            }
            CallMsg::StopIfDone => {
                let done = state
                    .call
                    .as_ref()
                    .is_none_or(|c| c.status.is_terminal() && !c.release_pending && !c.strays_up());
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
            CallMsg::EnsureMedia => {
                state.ensure_media();
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

    /// Keeps `iace_active_calls{direction}` counting this call while it is live here: the
    /// guard is taken when a live call is known, dropped (decrementing) when it ends or the
    /// actor goes, whichever way it goes.
    fn track_active(&mut self) {
        let live = self.call.as_ref().filter(|c| !c.status.is_terminal());
        match (live, &self.active) {
            (Some(call), None) => {
                let gauge = self
                    .shared
                    .metrics
                    .active_calls
                    .with_label_values(&[call.spec.direction.as_str()]);
                gauge.inc();
                self.active = Some(ActiveGuard(gauge));
            }
            (None, Some(_)) => self.active = None,
            _ => {}
        }
    }
}

/// One live call counted in `iace_active_calls`; dropping it uncounts it.
struct ActiveGuard(prometheus::IntGauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl CallState {
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

/// The hangups still owed to the call's stray legs.
fn stray_hangups(call: &Call) -> Vec<Effect> {
    call.stray_legs
        .iter()
        .filter(|s| !s.ended)
        .map(|s| Effect::HangupStray {
            carrier_call_id: s.leg.clone(),
        })
        .collect()
}
