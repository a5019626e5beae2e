//! Activation and reconciliation: how a call actor comes to life (a new call, a re-activation
//! after a crash or restart, a fault the supervisor gave up on), and how it asks the carrier
//! for the leg's live status and turns the answer into facts.

use std::time::Duration;

use ractor::{ActorProcessingErr, ActorRef};
use tracing::{debug, info, warn};

use super::effects::command_id;
use super::{Activation, CallMsg, CallState};
use crate::machine::{Call, CallStatus, CarrierEvent, Effect, EndReason, Event};
use crate::ports::{DialCommand, LegStatus, TelephonyError};

/// Reconciliation attempts before relying on timers alone.
const RECONCILE_ATTEMPTS: u32 = 6;

impl CallState {
    pub(super) async fn init(
        &mut self,
        myself: &ActorRef<CallMsg>,
    ) -> Result<(), ActorProcessingErr> {
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
                if call.status.is_terminal() && !call.release_pending && call.strays_up() {
                    // Ended and released, but a stray leg's hangup is still owed (it failed,
                    // or this node took the call over): owe it no longer.
                    self.shared
                        .metrics
                        .activations
                        .with_label_values(&["ended"])
                        .inc();
                    info!(call_id = %self.id, "ended call re-activated to release a stray leg");
                    self.call = Some(call);
                    myself.send_message(CallMsg::RetryRelease)?;
                    return Ok(());
                }
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
                // A call taken over from another node (or from this node's previous process)
                // has its stream there, or none: point it here, and the conversation starts
                // again when it attaches.
                if self.shared.voice.has_stream(self.id) {
                    self.start_voice(myself).await;
                } else {
                    self.ensure_media();
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

    /// Asks the carrier for the leg's status in a task; the answer comes back as `Reconciled`.
    pub(super) fn reconcile(&mut self, myself: &ActorRef<CallMsg>) {
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

    pub(super) async fn reconciled(
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
