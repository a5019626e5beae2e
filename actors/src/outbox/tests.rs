use chrono::{DateTime, Utc};

use super::*;
use crate::machine::record::EscalationReason;
use crate::machine::tests::{spec, t};
use crate::machine::{start, step, Direction, HangupCause};

/// Applies `event` at `at`; the types of the events it causes.
fn apply(call: &mut Call, event: Event, at: DateTime<Utc>) -> Vec<&'static str> {
    let before = call.status;
    let version = call.version;
    step(call, event.clone(), at).unwrap();
    if call.version == version {
        return Vec::new();
    }
    let entry = JournalEntry {
        call_id: call.spec.id,
        seq: call.version,
        at,
        event,
    };
    call_events(Some(before), call, &entry)
        .iter()
        .map(|e| e.event_type)
        .collect()
}

#[test]
fn an_outbound_call_announces_each_step_once() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    let created = JournalEntry {
        call_id: call.spec.id,
        seq: 1,
        at: t(0),
        event: Event::Created {
            spec: call.spec.clone(),
        },
    };
    let first: Vec<_> = call_events(None, &call, &created)
        .iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(first, ["call.created"]);
    let ringing = Event::carrier(CarrierEvent::Ringing);
    assert_eq!(apply(&mut call, ringing, t(1)), ["call.ringing"]);
    // The leg's id learned while already ringing moves the version, not the status.
    let leg = Event::Carrier {
        event: CarrierEvent::Ringing,
        leg: Some("leg-1".into()),
        at: None,
    };
    assert!(apply(&mut call, leg, t(2)).is_empty());
    let answered = Event::carrier(CarrierEvent::Answered);
    assert_eq!(apply(&mut call, answered, t(3)), ["call.answered"]);
    let escalation = Event::Conversation {
        record: ConversationRecord::Escalation {
            turn: 2,
            reason: EscalationReason::Keyword,
            detail: "manager".into(),
            to: Some("+14155550123".into()),
        },
    };
    assert_eq!(apply(&mut call, escalation, t(4)), ["call.escalated"]);
    let bridged = Event::carrier(CarrierEvent::Bridged {
        to: Some("+14155550123".into()),
    });
    assert_eq!(apply(&mut call, bridged, t(5)), ["call.transferred"]);
    let hangup = Event::carrier(CarrierEvent::HungUp {
        cause: HangupCause::NormalClearing,
    });
    assert_eq!(
        apply(&mut call, hangup, t(65)),
        ["call.ended", "call.transcript_ready"]
    );
    // Entries after the end announce nothing more.
    let report = Event::LegReleased;
    assert!(apply(&mut call, report, t(66)).is_empty());
}

#[test]
fn an_unanswered_call_ends_without_a_transcript() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    let busy = Event::carrier(CarrierEvent::HungUp {
        cause: HangupCause::Busy,
    });
    assert_eq!(apply(&mut call, busy, t(3)), ["call.ended"]);
}

#[test]
fn event_ids_are_stable_and_distinct_per_type() {
    let (mut call, _) = start(spec(Direction::Outbound), t(0));
    step(&mut call, Event::carrier(CarrierEvent::Answered), t(1)).unwrap();
    let hangup = Event::carrier(CarrierEvent::HungUp {
        cause: HangupCause::NormalClearing,
    });
    step(&mut call, hangup.clone(), t(9)).unwrap();
    let entry = JournalEntry {
        call_id: call.spec.id,
        seq: call.version,
        at: t(9),
        event: hangup,
    };
    let a = call_events(Some(CallStatus::InProgress), &call, &entry);
    let b = call_events(Some(CallStatus::InProgress), &call, &entry);
    assert_eq!(a, b);
    assert_ne!(a[0].id, a[1].id);
    let ended = a[0].payload.as_ref().unwrap();
    assert_eq!(ended["type"], "call.ended");
    assert_eq!(ended["version"], PAYLOAD_VERSION);
    assert_eq!(ended["data"]["status"], "completed");
    assert_eq!(ended["data"]["durations"]["talk_seconds"], 8.0);
    // The transcript waits for the conversation's last records, and is made then.
    assert!(a[1].payload.is_none());
    assert_eq!(
        a[1].deliver_after,
        t(9) + chrono::Duration::from_std(TRANSCRIPT_SETTLE).unwrap()
    );
}

#[test]
fn retries_follow_the_schedule_for_about_three_days_then_stop() {
    assert_eq!(retry_delay(&RETRY_SCHEDULE, 0, 0), None);
    assert_eq!(
        retry_delay(&RETRY_SCHEDULE, 1, 0),
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        retry_delay(&RETRY_SCHEDULE, 2, 0),
        Some(Duration::from_secs(300))
    );
    let total: Duration = (1..=RETRY_SCHEDULE.len() as u32)
        .map(|a| retry_delay(&RETRY_SCHEDULE, a, 0).unwrap())
        .sum();
    assert!(total > Duration::from_secs(2 * 86_400) && total < Duration::from_secs(3 * 86_400));
    assert_eq!(
        retry_delay(&RETRY_SCHEDULE, RETRY_SCHEDULE.len() as u32 + 1, 0),
        None
    );
    // Jitter stays under a tenth.
    let jittered = retry_delay(&RETRY_SCHEDULE, 1, u64::MAX).unwrap();
    assert!(jittered >= Duration::from_secs(5) && jittered < Duration::from_millis(5500));
}
