//! The transition rules: [`start`] creates a call, [`step`] applies one event and returns the
//! effects to run after the new snapshot is persisted (or refuses a command), [`replay`] folds
//! a journal back into its snapshot and [`classify`] tells a stray leg's facts apart.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{
    Call, CallSpec, CallStatus, CarrierEvent, Deadline, Direction, EndReason, Event, HangupCause,
    PhoneNumber, StrayLeg, TimerKind,
};

/// What the CallActor must do after the new snapshot is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// Place the outbound call.
    Dial {
        /// Calling party.
        from: PhoneNumber,
        /// Called party.
        to: PhoneNumber,
        /// How long the carrier should let it ring.
        timeout_secs: u32,
    },
    /// Answer the inbound call.
    Answer,
    /// Transfer the answered call to another number.
    Transfer {
        /// Where to.
        to: PhoneNumber,
    },
    /// Hang up a second leg the carrier reports for this call (a dial that was retried after
    /// its answer was lost and that the carrier did not deduplicate): the call keeps its
    /// first leg; nobody is left ringing on the other.
    HangupStray {
        /// The other leg.
        carrier_call_id: String,
    },
    /// Hang the leg up.
    Hangup {
        /// Why we hang up.
        reason: EndReason,
    },
    /// (Re-)arm the call's single deadline timer.
    ArmTimer {
        /// Which deadline.
        kind: TimerKind,
        /// When.
        at: DateTime<Utc>,
    },
    /// Drop the call's timer.
    CancelTimer,
}

/// A refused command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The call already ended; terminal states are final.
    #[error("call is already {status}")]
    Terminal {
        /// The call's current status.
        status: CallStatus,
    },
    /// The command needs another status (e.g. a transfer needs an answered call).
    #[error("the call is {status}; {needs}")]
    NotNow {
        /// The call's current status.
        status: CallStatus,
        /// What the command needs.
        needs: &'static str,
    },
    /// The first event of a journal must be `created`, and only the first.
    #[error("event `{kind}` is not valid here")]
    Invalid {
        /// The offending event's kind.
        kind: &'static str,
    },
}

/// Creates the snapshot of a new call and the effects that start it: outbound calls dial,
/// inbound calls are answered; both arm the ring timeout.
pub fn start(spec: CallSpec, now: DateTime<Utc>) -> (Call, Vec<Effect>) {
    let ring_deadline = Deadline {
        kind: TimerKind::RingTimeout,
        at: now + Duration::seconds(i64::from(spec.ring_timeout_secs)),
    };
    let (status, ringing_at, first) = match spec.direction {
        Direction::Outbound => (
            CallStatus::Pending,
            None,
            Effect::Dial {
                from: spec.from.clone(),
                to: spec.to.clone(),
                timeout_secs: spec.ring_timeout_secs,
            },
        ),
        Direction::Inbound => (CallStatus::Ringing, Some(now), Effect::Answer),
    };
    let carrier_call_id = match spec.direction {
        Direction::Inbound => spec.inbound_leg_id.clone(),
        Direction::Outbound => None,
    };
    let call = Call {
        spec,
        status,
        end_reason: None,
        carrier_call_id,
        version: 1,
        owner_epoch: 0,
        deadline: Some(ring_deadline),
        created_at: now,
        updated_at: now,
        ringing_at,
        answered_at: None,
        ended_at: None,
        release_pending: false,
        stray_legs: Vec::new(),
    };
    let effects = vec![
        first,
        Effect::ArmTimer {
            kind: ring_deadline.kind,
            at: ring_deadline.at,
        },
    ];
    (call, effects)
}

/// Applies one event. On a change the call's `version` is bumped by one (the caller journals
/// the event with `seq = version`); an unchanged version means the event was a duplicate or
/// stale and must not be journaled.
pub fn step(
    call: &mut Call,
    event: Event,
    now: DateTime<Utc>,
) -> Result<Vec<Effect>, TransitionError> {
    use CallStatus::*;
    let status = call.status;
    let mut effects = Vec::new();
    match event {
        Event::Created { .. } => return Err(TransitionError::Invalid { kind: "created" }),
        Event::StrayLeg { leg, fact } => {
            if !stray(call, &leg) {
                return Err(TransitionError::Invalid { kind: "stray_leg" });
            }
            let ended = matches!(fact, CarrierEvent::HungUp { .. });
            match call.stray_legs.iter_mut().find(|s| s.leg == leg) {
                None => {
                    call.stray_legs.push(StrayLeg {
                        leg: leg.clone(),
                        ended,
                    });
                    touch(call, now);
                    if !ended {
                        effects.push(Effect::HangupStray {
                            carrier_call_id: leg,
                        });
                    }
                }
                Some(known) if ended && !known.ended => {
                    known.ended = true;
                    touch(call, now);
                }
                Some(known) if !known.ended && fact.is_alive() => {
                    // Still up after our hangup: hang up again (nothing new to journal).
                    effects.push(Effect::HangupStray {
                        carrier_call_id: leg,
                    });
                }
                Some(_) => {}
            }
        }
        Event::Carrier { event, leg, at } => {
            let leg = leg.or_else(|| event.named_leg().map(str::to_owned));
            if let Some(other) = leg.as_deref().filter(|l| stray(call, l)) {
                // Also when a caller did not classify it first (see [`classify`]).
                return step(
                    call,
                    Event::StrayLeg {
                        leg: other.to_owned(),
                        fact: event,
                    },
                    now,
                );
            }
            let adopt = |call: &mut Call| match &leg {
                Some(l)
                    if call.spec.direction == Direction::Outbound
                        && call.carrier_call_id.is_none() =>
                {
                    call.carrier_call_id = Some(l.clone());
                    true
                }
                _ => false,
            };
            // The carrier's time of the fact, never before what the call already knows and
            // never after now (clocks differ).
            let carrier_time = |floor: DateTime<Utc>| at.unwrap_or(now).min(now).max(floor);
            if status.is_terminal() && event.is_alive() && adopt(call) {
                // A leg came up after the call ended without one (a dial whose answer was
                // lost): now that its id is known, release it by id.
                touch(call, now);
                let reason = call.end_reason.unwrap_or(EndReason::VendorError);
                release(call, reason, &mut effects);
                return Ok(effects);
            }
            match event {
                CarrierEvent::Initiated { .. } => {
                    if !status.is_terminal() && adopt(call) {
                        touch(call, now);
                    }
                }
                CarrierEvent::RingingLeg { .. } | CarrierEvent::Ringing => {
                    let mut changed = !status.is_terminal() && adopt(call);
                    if status == Pending {
                        call.status = Ringing;
                        call.ringing_at = Some(carrier_time(call.created_at));
                        changed = true;
                    }
                    if changed {
                        touch(call, now);
                    }
                }
                CarrierEvent::Answered => {
                    if matches!(status, Pending | Ringing) {
                        adopt(call);
                        let answered = carrier_time(call.ringing_at.unwrap_or(call.created_at));
                        call.status = InProgress;
                        call.ringing_at.get_or_insert(answered);
                        call.answered_at = Some(answered);
                        let at =
                            answered + Duration::seconds(i64::from(call.spec.max_duration_secs));
                        call.deadline = Some(Deadline {
                            kind: TimerKind::MaxDuration,
                            at,
                        });
                        effects.push(Effect::ArmTimer {
                            kind: TimerKind::MaxDuration,
                            at,
                        });
                        touch(call, now);
                    }
                }
                CarrierEvent::HungUp { cause } => {
                    let floor = call
                        .answered_at
                        .or(call.ringing_at)
                        .unwrap_or(call.created_at);
                    let ended = carrier_time(floor);
                    match status {
                        Pending | Ringing => {
                            adopt(call);
                            let reason = unanswered_reason(call.spec.direction, cause);
                            end(call, Failed, reason, ended, &mut effects);
                            call.updated_at = now;
                        }
                        InProgress => {
                            let reason = if cause == HangupCause::TimeLimit {
                                EndReason::MaxDuration
                            } else {
                                EndReason::NormalClearing
                            };
                            end(call, Completed, reason, ended, &mut effects);
                            call.updated_at = now;
                        }
                        _ if call.release_pending => {
                            // The leg we hung up is gone: nothing left to release.
                            call.release_pending = false;
                            touch(call, now);
                        }
                        _ => {}
                    }
                }
                annotation => {
                    debug_assert!(annotation.is_annotation());
                    touch(call, now);
                }
            }
        }
        Event::MediaReported { .. } | Event::Conversation { .. } => touch(call, now),
        Event::AgentHangup { reason } => match status {
            InProgress => {
                end(call, Completed, reason, now, &mut effects);
                release(call, reason, &mut effects);
            }
            s if s.is_terminal() => return Err(TransitionError::Terminal { status }),
            _ => {
                return Err(TransitionError::NotNow {
                    status,
                    needs: "only an answered call has a conversation to end",
                })
            }
        },
        Event::TransferRequested { to } => match status {
            InProgress => {
                touch(call, now);
                effects.push(Effect::Transfer { to });
            }
            s if s.is_terminal() => return Err(TransitionError::Terminal { status }),
            _ => {
                return Err(TransitionError::NotNow {
                    status,
                    needs: "only an answered call can be transferred",
                })
            }
        },
        Event::CommandRejected { .. } => {
            // Only meaningful before answer: once the carrier reports progress, the command
            // evidently went through and a late rejection is stale.
            if status == Pending || (status == Ringing && call.carrier_call_id.is_none()) {
                end(call, Failed, EndReason::VendorError, now, &mut effects);
                // A dial that "failed" on a timeout may still have reached the carrier.
                release(call, EndReason::VendorError, &mut effects);
            }
        }
        Event::HangupRequested => match status {
            Pending | Ringing => {
                end(call, Canceled, EndReason::CanceledByUser, now, &mut effects);
                release(call, EndReason::CanceledByUser, &mut effects);
            }
            InProgress => {
                end(
                    call,
                    Completed,
                    EndReason::HangupRequested,
                    now,
                    &mut effects,
                );
                release(call, EndReason::HangupRequested, &mut effects);
            }
            _ => return Err(TransitionError::Terminal { status }),
        },
        Event::TimerFired { kind, deadline } => {
            let current = call.deadline;
            if status.is_terminal() || current != Some(Deadline { kind, at: deadline }) {
                // A timer armed for a deadline that no longer exists: ignore.
            } else if now < deadline {
                // Fired early (clock skew between the timer wheel and the Clock port).
                effects.push(Effect::ArmTimer { kind, at: deadline });
            } else {
                match (kind, status) {
                    (TimerKind::RingTimeout, Pending | Ringing) => {
                        end(call, Failed, EndReason::RingTimeout, now, &mut effects);
                        release(call, EndReason::RingTimeout, &mut effects);
                    }
                    (TimerKind::MaxDuration, InProgress) => {
                        end(call, Completed, EndReason::MaxDuration, now, &mut effects);
                        release(call, EndReason::MaxDuration, &mut effects);
                    }
                    _ => {}
                }
            }
        }
        Event::ReleaseLeg => {
            if status.is_terminal() && !call.release_pending {
                let reason = call.end_reason.unwrap_or(EndReason::NormalClearing);
                touch(call, now);
                release(call, reason, &mut effects);
            }
        }
        Event::LegReleased => {
            if call.release_pending {
                call.release_pending = false;
                touch(call, now);
            }
        }
        Event::StrayReleased { leg } => {
            if let Some(known) = call
                .stray_legs
                .iter_mut()
                .find(|s| s.leg == leg && !s.ended)
            {
                known.ended = true;
                touch(call, now);
            }
        }
        Event::CarrierLost => {
            if !status.is_terminal() {
                // An answered call that is lost still was a conversation: it completes.
                let terminal = if status == InProgress {
                    Completed
                } else {
                    Failed
                };
                end(call, terminal, EndReason::CarrierLost, now, &mut effects);
            }
        }
        Event::EngineFault { .. } => {
            if !status.is_terminal() {
                let terminal = if status == InProgress {
                    Completed
                } else {
                    Failed
                };
                end(call, terminal, EndReason::EngineFault, now, &mut effects);
                release(call, EndReason::EngineFault, &mut effects);
            }
        }
    }
    Ok(effects)
}

/// Rebuilds a snapshot from its journal (`created` first, then every applied event with the
/// time it was applied). The snapshot a store holds must equal this fold.
pub fn replay<I>(entries: I) -> Result<Call, TransitionError>
where
    I: IntoIterator<Item = (Event, DateTime<Utc>)>,
{
    let mut entries = entries.into_iter();
    let mut call = match entries.next() {
        Some((Event::Created { spec }, at)) => start(spec, at).0,
        Some((other, _)) => return Err(TransitionError::Invalid { kind: other.kind() }),
        None => return Err(TransitionError::Invalid { kind: "empty" }),
    };
    for (event, at) in entries {
        let kind = event.kind();
        let before = call.version;
        step(&mut call, event, at)?;
        if call.version == before {
            // A journaled event always changed the call; one that doesn't is corrupt input.
            return Err(TransitionError::Invalid { kind });
        }
    }
    Ok(call)
}

/// Rewrites a carrier fact of another leg than the call's own as [`Event::StrayLeg`], so the
/// journal says what it was. Anything else is returned as it is.
pub fn classify(call: &Call, event: Event) -> Event {
    match event {
        Event::Carrier { event, leg, at } => {
            let named = leg.clone().or_else(|| event.named_leg().map(str::to_owned));
            match named.filter(|l| stray(call, l)) {
                Some(leg) => Event::StrayLeg { leg, fact: event },
                None => Event::Carrier { event, leg, at },
            }
        }
        other => other,
    }
}

/// A leg of an outbound call other than the one the call already has.
fn stray(call: &Call, leg: &str) -> bool {
    call.spec.direction == Direction::Outbound
        && call
            .carrier_call_id
            .as_deref()
            .is_some_and(|known| known != leg)
}

fn touch(call: &mut Call, now: DateTime<Utc>) {
    call.version += 1;
    call.updated_at = now;
}

/// Ending the call needs our hangup: issue it and remember it until the carrier confirms.
fn release(call: &mut Call, reason: EndReason, effects: &mut Vec<Effect>) {
    call.release_pending = true;
    effects.push(Effect::Hangup { reason });
}

fn end(
    call: &mut Call,
    status: CallStatus,
    reason: EndReason,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) {
    call.status = status;
    call.end_reason = Some(reason);
    call.ended_at = Some(now);
    if call.deadline.take().is_some() {
        effects.push(Effect::CancelTimer);
    }
    touch(call, now);
}

fn unanswered_reason(direction: Direction, cause: HangupCause) -> EndReason {
    match cause {
        HangupCause::Busy => EndReason::Busy,
        HangupCause::Rejected => EndReason::Rejected,
        HangupCause::OriginatorCancel if direction == Direction::Inbound => {
            EndReason::CallerAbandoned
        }
        HangupCause::OriginatorCancel => EndReason::CanceledByUser,
        HangupCause::NotFound => EndReason::NotFound,
        HangupCause::NoAnswer
        | HangupCause::NormalClearing
        | HangupCause::TimeLimit
        | HangupCause::Unspecified => EndReason::NoAnswer,
    }
}
