use super::*;
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use uuid::Uuid;

/// A fixed instant `secs` after a base (shared with other modules' tests).
pub(crate) fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

/// A call spec of each direction (shared with other modules' tests).
pub(crate) fn spec(direction: Direction) -> CallSpec {
    CallSpec {
        id: Uuid::from_u128(1),
        organization_id: Uuid::from_u128(2),
        direction,
        from: PhoneNumber::parse("+14155550100").unwrap(),
        to: PhoneNumber::parse("+14155550199").unwrap(),
        agent_id: Uuid::from_u128(3),
        customer_id: None,
        metadata: serde_json::json!({}),
        ring_timeout_secs: 30,
        max_duration_secs: 600,
        inbound_leg_id: None,
    }
}

fn carrier(event: CarrierEvent) -> Event {
    Event::carrier(event)
}

#[test]
fn outbound_call_dials_and_arms_ring_timeout() {
    let (call, effects) = start(spec(Direction::Outbound), t(0));
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(call.version, 1);
    assert!(matches!(
        effects[0],
        Effect::Dial {
            timeout_secs: 30,
            ..
        }
    ));
    assert_eq!(
        effects[1],
        Effect::ArmTimer {
            kind: TimerKind::RingTimeout,
            at: t(30)
        }
    );
    assert_eq!(call.deadline.unwrap().at, t(30));
}

#[test]
fn inbound_call_starts_ringing_and_is_answered() {
    let (call, effects) = start(spec(Direction::Inbound), t(0));
    assert_eq!(call.status, CallStatus::Ringing);
    assert_eq!(call.ringing_at, Some(t(0)));
    assert_eq!(effects[0], Effect::Answer);
}

#[test]
fn happy_path_reaches_completed() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    let fx = step(
        &mut call,
        carrier(CarrierEvent::Initiated {
            carrier_call_id: "v3:abc".into(),
        }),
        t(1),
    )
    .unwrap();
    assert!(fx.is_empty());
    assert_eq!(call.version, 2);
    assert_eq!(call.carrier_call_id.as_deref(), Some("v3:abc"));

    step(&mut call, carrier(CarrierEvent::Ringing), t(2)).unwrap();
    assert_eq!(call.status, CallStatus::Ringing);
    assert_eq!(call.version, 3);

    let fx = step(&mut call, carrier(CarrierEvent::Answered), t(5)).unwrap();
    assert_eq!(call.status, CallStatus::InProgress);
    assert_eq!(call.answered_at, Some(t(5)));
    assert_eq!(
        fx,
        vec![Effect::ArmTimer {
            kind: TimerKind::MaxDuration,
            at: t(605)
        }]
    );

    let fx = step(
        &mut call,
        carrier(CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing,
        }),
        t(65),
    )
    .unwrap();
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.end_reason, Some(EndReason::NormalClearing));
    assert_eq!(call.ended_at, Some(t(65)));
    assert_eq!(call.deadline, None);
    assert_eq!(fx, vec![Effect::CancelTimer]);
    assert_eq!(call.version, 5);
}

#[test]
fn duplicates_and_stale_events_are_noops() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    step(&mut call, carrier(CarrierEvent::Ringing), t(1)).unwrap();
    step(&mut call, carrier(CarrierEvent::Answered), t(2)).unwrap();
    let snapshot = call.clone();
    for late in [
        carrier(CarrierEvent::Ringing),
        carrier(CarrierEvent::Answered),
        Event::CommandRejected {
            detail: "late".into(),
        },
        Event::TimerFired {
            kind: TimerKind::RingTimeout,
            deadline: t(30),
        },
    ] {
        assert_eq!(step(&mut call, late, t(40)).unwrap(), vec![]);
        assert_eq!(call, snapshot);
    }
}

#[test]
fn ring_timeout_fails_and_hangs_up() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    step(&mut call, carrier(CarrierEvent::Ringing), t(1)).unwrap();
    let fx = step(
        &mut call,
        Event::TimerFired {
            kind: TimerKind::RingTimeout,
            deadline: t(30),
        },
        t(30),
    )
    .unwrap();
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.end_reason, Some(EndReason::RingTimeout));
    assert!(fx.contains(&Effect::Hangup {
        reason: EndReason::RingTimeout
    }));
}

#[test]
fn early_timer_is_rearmed_not_applied() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    let fx = step(
        &mut call,
        Event::TimerFired {
            kind: TimerKind::RingTimeout,
            deadline: t(30),
        },
        t(29),
    )
    .unwrap();
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(call.version, 1);
    assert_eq!(
        fx,
        vec![Effect::ArmTimer {
            kind: TimerKind::RingTimeout,
            at: t(30)
        }]
    );
}

#[test]
fn max_duration_cuts_off_answered_call() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    step(&mut call, carrier(CarrierEvent::Answered), t(3)).unwrap();
    assert!(call.ringing_at.is_some(), "answer implies ringing happened");
    step(
        &mut call,
        Event::TimerFired {
            kind: TimerKind::MaxDuration,
            deadline: t(603),
        },
        t(603),
    )
    .unwrap();
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.end_reason, Some(EndReason::MaxDuration));
}

#[test]
fn hangup_request_cancels_or_completes_and_is_refused_when_terminal() {
    let (mut ringing, _) = start(spec(Direction::Outbound), t(0));
    step(&mut ringing, carrier(CarrierEvent::Ringing), t(1)).unwrap();
    let fx = step(&mut ringing, Event::HangupRequested, t(2)).unwrap();
    assert_eq!(ringing.status, CallStatus::Canceled);
    assert_eq!(ringing.end_reason, Some(EndReason::CanceledByUser));
    assert!(fx.contains(&Effect::Hangup {
        reason: EndReason::CanceledByUser
    }));
    let err = step(&mut ringing, Event::HangupRequested, t(3)).unwrap_err();
    assert_eq!(
        err,
        TransitionError::Terminal {
            status: CallStatus::Canceled
        }
    );

    let (mut talking, _) = start(spec(Direction::Outbound), t(0));
    step(&mut talking, carrier(CarrierEvent::Answered), t(1)).unwrap();
    step(&mut talking, Event::HangupRequested, t(9)).unwrap();
    assert_eq!(talking.status, CallStatus::Completed);
    assert_eq!(talking.end_reason, Some(EndReason::HangupRequested));
}

#[test]
fn unanswered_hangup_causes_map_to_reasons() {
    for (cause, reason) in [
        (HangupCause::Busy, EndReason::Busy),
        (HangupCause::Rejected, EndReason::Rejected),
        (HangupCause::NoAnswer, EndReason::NoAnswer),
    ] {
        let (mut call, _) = start(spec(Direction::Outbound), t(0));
        step(&mut call, carrier(CarrierEvent::HungUp { cause }), t(4)).unwrap();
        assert_eq!(call.status, CallStatus::Failed);
        assert_eq!(call.end_reason, Some(reason));
    }
    let (mut inbound, _) = start(spec(Direction::Inbound), t(0));
    step(
        &mut inbound,
        carrier(CarrierEvent::HungUp {
            cause: HangupCause::OriginatorCancel,
        }),
        t(4),
    )
    .unwrap();
    assert_eq!(inbound.end_reason, Some(EndReason::CallerAbandoned));
}

#[test]
fn command_rejected_fails_a_pending_call_only() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    step(
        &mut call,
        Event::CommandRejected {
            detail: "422".into(),
        },
        t(1),
    )
    .unwrap();
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.end_reason, Some(EndReason::VendorError));
}

#[test]
fn replay_equals_live_snapshot() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    let mut journal = vec![(
        Event::Created {
            spec: spec(Direction::Outbound),
        },
        t(0),
    )];
    for (event, at) in [
        (carrier(CarrierEvent::Ringing), t(1)),
        (carrier(CarrierEvent::Ringing), t(2)),
        (carrier(CarrierEvent::Answered), t(3)),
        (Event::HangupRequested, t(9)),
    ] {
        let before = call.version;
        step(&mut call, event.clone(), at).unwrap();
        if call.version != before {
            journal.push((event, at));
        }
    }
    assert_eq!(journal.len(), 4);
    assert_eq!(replay(journal).unwrap(), call);
}

#[test]
fn replay_rejects_a_journal_that_does_not_start_with_created() {
    assert!(replay(vec![(Event::HangupRequested, t(0))]).is_err());
}

fn any_event() -> impl Strategy<Value = (Event, i64)> {
    let deadline = prop_oneof![Just(30i64), Just(33), Just(603), Just(700), 0i64..800];
    let event = prop_oneof![
        Just(carrier(CarrierEvent::Initiated {
            carrier_call_id: "leg".into()
        })),
        Just(carrier(CarrierEvent::Ringing)),
        Just(carrier(CarrierEvent::Answered)),
        prop_oneof![
            Just(HangupCause::NormalClearing),
            Just(HangupCause::Busy),
            Just(HangupCause::NoAnswer),
            Just(HangupCause::OriginatorCancel),
        ]
        .prop_map(|cause| carrier(CarrierEvent::HungUp { cause })),
        Just(Event::CommandRejected { detail: "x".into() }),
        Just(Event::HangupRequested),
        (
            prop_oneof![Just(TimerKind::RingTimeout), Just(TimerKind::MaxDuration)],
            deadline
        )
            .prop_map(|(kind, d)| Event::TimerFired {
                kind,
                deadline: t(d)
            }),
        Just(Event::CarrierLost),
        Just(Event::ReleaseLeg),
        Just(Event::LegReleased),
    ];
    // The same facts naming a leg (the call's own or a second one) and the carrier's time.
    let with_leg = (
        event,
        prop_oneof![Just(None), Just(Some("leg")), Just(Some("other"))],
        prop_oneof![Just(None), (0i64..800).prop_map(Some)],
    )
        .prop_map(|(event, leg, at)| match event {
            Event::Carrier { event, .. } => Event::Carrier {
                event,
                leg: leg.map(str::to_owned),
                at: at.map(t),
            },
            other => other,
        });
    (with_leg, 1i64..60)
}

proptest! {
    /// Random sequences with duplicates, reordering and late events: the status rank never
    /// decreases, terminal states never change, the version only grows by one per applied
    /// event, end_reason is set exactly when terminal, and the journal fold equals the snapshot.
    #[test]
    fn invariants_hold_for_any_event_sequence(
        inbound in any::<bool>(),
        events in proptest::collection::vec(any_event(), 0..40),
        dup_mask in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let direction = if inbound { Direction::Inbound } else { Direction::Outbound };
        let (mut call, _) = start(spec(direction), t(0));
        let mut journal = vec![(Event::Created { spec: spec(direction) }, t(0))];
        let mut now = 0;
        // Interleave duplicates of earlier events to model at-least-once delivery.
        let mut sequence = Vec::new();
        for (i, (event, gap)) in events.iter().enumerate() {
            sequence.push((event.clone(), *gap));
            if dup_mask[i] && i > 0 {
                sequence.push((events[i / 2].0.clone(), 0));
            }
        }
        for (event, gap) in sequence {
            now += gap;
            let before = call.clone();
            let result = step(&mut call, event.clone(), t(now));
            match result {
                Err(TransitionError::Terminal { status }) => {
                    prop_assert!(status.is_terminal());
                    prop_assert_eq!(&call, &before, "a refused command changes nothing");
                }
                Err(other) => prop_assert!(false, "unexpected error {other}"),
                Ok(_) => {}
            }
            prop_assert!(call.status.rank() >= before.status.rank(), "moved backwards");
            if before.status.is_terminal() {
                // After the end only the release of the carrier leg may be recorded.
                let mut same = call.clone();
                same.release_pending = before.release_pending;
                // Second legs heard of after the end are recorded (and hung up).
                same.stray_legs = before.stray_legs.clone();
                if before.carrier_call_id.is_none() {
                    // A leg that shows up after the end is learned, to be released by id.
                    same.carrier_call_id = None;
                }
                same.version = before.version;
                same.updated_at = before.updated_at;
                prop_assert_eq!(&same, &before, "terminal state changed");
            }
            if call.release_pending && !before.release_pending {
                prop_assert!(call.status.is_terminal(), "release pending on a live call");
            }
            prop_assert!(call.version == before.version || call.version == before.version + 1);
            prop_assert_eq!(call.end_reason.is_some(), call.status.is_terminal());
            prop_assert_eq!(call.ended_at.is_some(), call.status.is_terminal());
            if call.status.is_terminal() {
                prop_assert!(call.deadline.is_none(), "terminal call keeps a timer");
            }
            let named = match &event {
                Event::Carrier { event, leg, .. } => leg.clone().or(event.named_leg().map(str::to_owned)),
                _ => None,
            };
            let stray = inbound.then_some(()).is_none()
                && before.carrier_call_id.is_some()
                && named.is_some()
                && named != before.carrier_call_id;
            if stray {
                prop_assert_eq!(call.status, before.status, "a stray leg moved the call");
                prop_assert_eq!(
                    (call.ringing_at, call.answered_at, call.ended_at, &call.carrier_call_id),
                    (before.ringing_at, before.answered_at, before.ended_at, &before.carrier_call_id)
                );
            }
            if let (Some(a), Some(e)) = (call.answered_at, call.ended_at) {
                prop_assert!(a <= e, "answered after the end");
            }
            if let Some(a) = call.answered_at {
                prop_assert!(a >= call.created_at && a <= t(now), "answer time out of bounds");
            }
            if call.version != before.version {
                journal.push((event, t(now)));
            }
        }
        prop_assert_eq!(journal.len() as i64, call.version);
        prop_assert_eq!(replay(journal).unwrap(), call);
    }
}

#[test]
fn an_ended_call_keeps_its_leg_release_pending_until_confirmed() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    step(&mut call, carrier(CarrierEvent::Answered), t(1)).unwrap();
    let effects = step(&mut call, Event::HangupRequested, t(5)).unwrap();
    assert!(effects.contains(&Effect::Hangup {
        reason: EndReason::HangupRequested
    }));
    assert!(call.release_pending);
    let v = call.version;
    // The carrier's hangup webhook confirms the release.
    step(
        &mut call,
        carrier(CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing,
        }),
        t(6),
    )
    .unwrap();
    assert!(!call.release_pending);
    assert_eq!(call.version, v + 1);
    assert_eq!(call.end_reason, Some(EndReason::HangupRequested));
    // A duplicate confirmation changes nothing.
    step(&mut call, Event::LegReleased, t(7)).unwrap();
    assert_eq!(call.version, v + 1);
    // A leg found alive later is released again, durably.
    let effects = step(&mut call, Event::ReleaseLeg, t(8)).unwrap();
    assert_eq!(
        effects,
        vec![Effect::Hangup {
            reason: EndReason::HangupRequested
        }]
    );
    assert!(call.release_pending);
    assert_eq!(call.status, CallStatus::Completed);
}

#[test]
fn a_failed_dial_releases_whatever_leg_it_may_have_created() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    let effects = step(
        &mut call,
        Event::CommandRejected {
            detail: "timeout".into(),
        },
        t(1),
    )
    .unwrap();
    assert_eq!(call.end_reason, Some(EndReason::VendorError));
    assert!(call.release_pending);
    assert!(effects.contains(&Effect::Hangup {
        reason: EndReason::VendorError
    }));
}

#[test]
fn a_second_leg_for_an_outbound_call_is_hung_up_and_changes_nothing() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    step(
        &mut call,
        Event::carrier(CarrierEvent::Initiated {
            carrier_call_id: "leg-a".into(),
        }),
        t(1),
    )
    .unwrap();
    let leg_b = |event| Event::Carrier {
        event,
        leg: Some("leg-b".into()),
        at: Some(t(2)),
    };
    for (n, event) in [
        Event::carrier(CarrierEvent::Initiated {
            carrier_call_id: "leg-b".into(),
        }),
        Event::carrier(CarrierEvent::RingingLeg {
            carrier_call_id: "leg-b".into(),
        }),
        leg_b(CarrierEvent::Ringing),
        leg_b(CarrierEvent::Answered),
    ]
    .into_iter()
    .enumerate()
    {
        let before = call.clone();
        // Journaled as what it is.
        let classified = classify(&call, event.clone());
        assert_eq!(classified.kind(), "stray_leg");
        let effects = step(&mut call, event, t(2)).unwrap();
        assert_eq!(
            effects,
            vec![Effect::HangupStray {
                carrier_call_id: "leg-b".into()
            }]
        );
        // Journaled once (the first fact about the leg); a repeat changes nothing but hangs
        // the leg up again.
        let journaled = i64::from(n == 0);
        assert_eq!(call.version, before.version + journaled);
        assert_eq!(call.stray_legs.len(), 1);
        assert_eq!(
            call.status, before.status,
            "a stray leg never moves the call"
        );
        assert_eq!(call.carrier_call_id, before.carrier_call_id);
        assert_eq!(
            (call.ringing_at, call.answered_at, call.ended_at),
            (before.ringing_at, before.answered_at, before.ended_at)
        );
    }
    // The stray leg's end (after our hangup, or the callee's) ends nothing and needs no
    // hangup.
    let before = call.clone();
    let effects = step(
        &mut call,
        leg_b(CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing,
        }),
        t(3),
    )
    .unwrap();
    assert!(effects.is_empty());
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(call.ended_at, None);
    assert_eq!(call.version, before.version + 1);
    assert!(call.stray_legs[0].ended);
    // Delivered again (at-least-once webhooks): nothing to journal.
    let again = call.clone();
    let effects = step(
        &mut call,
        leg_b(CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing,
        }),
        t(4),
    )
    .unwrap();
    assert!(effects.is_empty());
    assert_eq!(call, again);
    // The call's own leg still rings it.
    let effects = step(
        &mut call,
        Event::carrier(CarrierEvent::RingingLeg {
            carrier_call_id: "leg-a".into(),
        }),
        t(3),
    )
    .unwrap();
    assert!(effects.is_empty());
    assert_eq!(call.status, CallStatus::Ringing);
    assert_eq!(call.carrier_call_id.as_deref(), Some("leg-a"));
}

#[test]
fn times_come_from_the_carrier_bounded_by_the_call_and_now() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    let own = |event, at: i64| Event::Carrier {
        event,
        leg: Some("leg-a".into()),
        at: Some(t(at)),
    };
    // Applied late (a restart at t=100): the carrier's times, not the time of applying.
    step(&mut call, own(CarrierEvent::Ringing, 2), t(100)).unwrap();
    assert_eq!(call.ringing_at, Some(t(2)));
    assert_eq!(call.carrier_call_id.as_deref(), Some("leg-a"), "adopted");
    let effects = step(&mut call, own(CarrierEvent::Answered, 5), t(100)).unwrap();
    assert_eq!(call.answered_at, Some(t(5)));
    assert_eq!(call.updated_at, t(100));
    let max = t(5) + chrono::Duration::seconds(i64::from(call.spec.max_duration_secs));
    assert!(effects.contains(&Effect::ArmTimer {
        kind: TimerKind::MaxDuration,
        at: max
    }));
    step(
        &mut call,
        own(
            CarrierEvent::HungUp {
                cause: HangupCause::NormalClearing,
            },
            15,
        ),
        t(126),
    )
    .unwrap();
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.ended_at, Some(t(15)), "10 s talked, not 121");
    assert_eq!(call.updated_at, t(126));

    // A carrier clock ahead of ours is bounded by now; one behind the call's own times by
    // those times.
    let (mut call, _) = start(spec(Direction::Outbound), t(10));
    step(&mut call, own(CarrierEvent::Ringing, 50), t(12)).unwrap();
    assert_eq!(call.ringing_at, Some(t(12)));
    step(&mut call, own(CarrierEvent::Answered, 3), t(13)).unwrap();
    assert_eq!(call.answered_at, Some(t(12)));
}

#[test]
fn a_leg_that_comes_up_after_the_call_ended_without_one_is_released_by_id() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    step(
        &mut call,
        Event::CommandRejected {
            detail: "timeout".into(),
        },
        t(1),
    )
    .unwrap();
    assert_eq!(call.status, CallStatus::Failed);
    assert!(call.carrier_call_id.is_none());
    let effects = step(
        &mut call,
        Event::Carrier {
            event: CarrierEvent::Answered,
            leg: Some("late".into()),
            at: Some(t(2)),
        },
        t(2),
    )
    .unwrap();
    assert_eq!(call.carrier_call_id.as_deref(), Some("late"));
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.answered_at, None);
    assert!(call.release_pending);
    assert_eq!(
        effects,
        vec![Effect::Hangup {
            reason: EndReason::VendorError
        }]
    );
}
