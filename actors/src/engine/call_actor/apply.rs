//! Applying an event: the pure machine, then the journal entry and snapshot (compare-and-set
//! on version and shard epoch), then the effects. A fact of another leg is journaled as what it
//! is; a sign of life for an ended call triggers reconciliation.

use ractor::{ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use super::{CallMsg, CallState, InboxRef};
use crate::engine::EngineError;
use crate::machine::{step, Call, CallStatus, CarrierEvent, Event, HangupCause, TransitionError};
use crate::ports::{JournalEntry, StoreError};

impl CallState {
    /// Applies one event: machine, then persist, then effects. The outer `Err` is a crash
    /// (store unavailable); the inner `Err` is the answer to the caller.
    ///
    /// A `normal_clearing` hangup needs an answered call: when it finds the call still pending
    /// or ringing, the carrier's answer is late (webhook order is not guaranteed), so the
    /// answer is journaled first and the call ends `completed`, not `failed` — two entries,
    /// each a legal transition. The late answer, when it comes, is a stale duplicate.
    pub(super) async fn apply(
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
        m.observe(&next, &entry.event, ended_now);
        if let Some(traces) = &self.shared.ports.traces {
            traces.applied(&next, &entry, ended_now);
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

    pub(super) async fn mark_processed(&self, inbox: &InboxRef) -> Result<(), ActorProcessingErr> {
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
}
