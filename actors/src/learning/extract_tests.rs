//! Extraction from recorded journals.

use chrono::DateTime;
use uuid::Uuid;

use super::extract::extract;
use crate::machine::record::{ConversationRecord, EscalationReason, Speaker, Tone};
use crate::machine::{start, Call, CallSpec, CallStatus, Direction, EndReason, Event};
use crate::ports::learning::{MemoryKind, PatternType};
use crate::ports::sentiment::SentimentLabel;
use crate::ports::JournalEntry;

fn call(customer: bool, status: CallStatus, end: EndReason) -> Call {
    let spec = CallSpec {
        id: Uuid::from_u128(7),
        organization_id: Uuid::from_u128(1),
        direction: Direction::Inbound,
        from: "+14155550100".parse().unwrap(),
        to: "+14155550199".parse().unwrap(),
        agent_id: Uuid::from_u128(2),
        customer_id: customer.then(|| Uuid::from_u128(3)),
        metadata: serde_json::json!({}),
        ring_timeout_secs: 30,
        max_duration_secs: 600,
        inbound_leg_id: None,
    };
    let (mut call, _) = start(spec, DateTime::from_timestamp(1_800_000_000, 0).unwrap());
    call.status = status;
    call.end_reason = Some(end);
    call
}

fn journal(records: Vec<ConversationRecord>) -> Vec<JournalEntry> {
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| JournalEntry {
            call_id: Uuid::from_u128(7),
            seq: i as i64 + 5,
            at: DateTime::from_timestamp(1_800_000_000 + i as i64, 0).unwrap(),
            event: Event::Conversation { record },
        })
        .collect()
}

fn say(speaker: Speaker, turn: u32, text: &str) -> ConversationRecord {
    ConversationRecord::Segment {
        speaker,
        text: text.into(),
        start_ms: 0,
        end_ms: 0,
        confidence: 1.0,
        interrupted: false,
        turn,
    }
}

fn mood(turn: u32, score: f64) -> ConversationRecord {
    ConversationRecord::Sentiment {
        turn,
        score,
        label: if score < 0.0 {
            SentimentLabel::Negative
        } else {
            SentimentLabel::Neutral
        },
        source: "groq".into(),
        degraded: false,
    }
}

fn resolved_billing_call() -> Vec<ConversationRecord> {
    vec![
        say(Speaker::Agent, 0, "Hi, this is Ava. How can I help?"),
        say(
            Speaker::Caller,
            1,
            "I was charged twice this month and I'm annoyed.",
        ),
        mood(1, -0.6),
        ConversationRecord::ToneChanged {
            turn: 1,
            from: Tone::Normal,
            to: Tone::Empathetic,
            reason: "score -0.60".into(),
        },
        ConversationRecord::ToolCall {
            turn: 1,
            name: "lookup_customer".into(),
            arguments: "{}".into(),
            result: "{}".into(),
            duration_ms: 40,
            ok: true,
        },
        say(
            Speaker::Agent,
            1,
            "I'm sorry about that. I'll send you a refund for the second charge today.",
        ),
        say(
            Speaker::Caller,
            2,
            "Okay, thank you. Please email me the receipt.",
        ),
        mood(2, 0.4),
        say(Speaker::Agent, 2, "Of course. Anything else?"),
        say(Speaker::Caller, 3, "No, that's all."),
        mood(3, 0.5),
        say(Speaker::Agent, 3, "Thanks for calling, goodbye!"),
        ConversationRecord::ToolCall {
            turn: 3,
            name: "end_call".into(),
            arguments: "{}".into(),
            result: "{}".into(),
            duration_ms: 1,
            ok: true,
        },
    ]
}

#[test]
fn a_resolved_call_yields_its_patterns_and_the_customers_memories() {
    let c = call(true, CallStatus::Completed, EndReason::AgentEnded);
    let learned = extract(&c, &journal(resolved_billing_call()));
    let o = &learned.outcome;
    assert!(o.resolved && o.success && !o.escalated, "{o:?}");
    assert_eq!(
        (o.sentiment_start, o.sentiment_end),
        (Some(-0.6), Some(0.5))
    );

    let types: Vec<PatternType> = learned.patterns.iter().map(|p| p.pattern_type).collect();
    assert_eq!(
        types,
        [
            PatternType::TurnSequence,
            PatternType::ToolSequence,
            PatternType::ObjectionHandling,
            PatternType::PersonaUsage,
            PatternType::Resolution,
        ]
    );
    let tools = &learned.patterns[1];
    assert_eq!(
        tools.data["tools"],
        serde_json::json!(["lookup_customer", "end_call"])
    );
    assert_eq!(
        tools.description,
        "Tools used in order: lookup_customer, end_call; the call succeeded"
    );
    let objection = &learned.patterns[2];
    assert_eq!(
        objection.description,
        "Objection: I was charged twice this month and I'm annoyed. Response that helped: \
         I'm sorry about that. I'll send you a refund for the second charge today."
    );
    assert_eq!(objection.data["sentiment_after"], 0.4);
    assert!(learned.patterns[0]
        .description
        .starts_with("Opening that succeeded: Caller: I was charged twice"));

    let kinds: Vec<(MemoryKind, &str)> = learned
        .memories
        .iter()
        .map(|m| (m.kind, m.content.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                MemoryKind::CallSummary,
                "Inbound call on 2027-01-15: the customer said \"I was charged twice this month \
                 and I'm annoyed.\"; resolved."
            ),
            (
                MemoryKind::SentimentSummary,
                "The customer's mood went from -0.60 to 0.50; they ended positive."
            ),
            (
                MemoryKind::Issue,
                "I was charged twice this month and I'm annoyed."
            ),
            (
                MemoryKind::Preference,
                "Okay, thank you. Please email me the receipt."
            ),
            (
                MemoryKind::Commitment,
                "The agent promised: I'm sorry about that. I'll send you a refund for the second \
                 charge today."
            ),
        ]
    );
    assert!(learned
        .memories
        .iter()
        .all(|m| (0.0..=1.0).contains(&m.importance)));
    // Deterministic.
    assert_eq!(learned, extract(&c, &journal(resolved_billing_call())));
}

#[test]
fn an_escalated_call_records_its_trigger_and_is_no_success() {
    let c = call(true, CallStatus::Completed, EndReason::NormalClearing);
    let records = vec![
        say(Speaker::Agent, 0, "Hello!"),
        say(Speaker::Caller, 1, "This is ridiculous, I am furious."),
        mood(1, -0.8),
        say(Speaker::Agent, 1, "I understand."),
        say(Speaker::Caller, 2, "Still angry, get me someone."),
        mood(2, -0.9),
        ConversationRecord::Escalation {
            turn: 2,
            reason: EscalationReason::SentimentFloor,
            detail: "2 turns below -0.5".into(),
            to: Some("+14155550177".into()),
        },
    ];
    let learned = extract(&c, &journal(records));
    assert!(learned.outcome.escalated && !learned.outcome.success && !learned.outcome.resolved);
    let trigger = learned
        .patterns
        .iter()
        .find(|p| p.pattern_type == PatternType::EscalationTrigger)
        .expect("trigger");
    assert_eq!(
        trigger.description,
        "Escalated (sentiment_floor) after the caller said: Still angry, get me someone."
    );
    assert!(learned
        .patterns
        .iter()
        .all(|p| p.pattern_type != PatternType::Resolution
            && p.pattern_type != PatternType::ObjectionHandling));
    assert!(learned.patterns[0]
        .description
        .starts_with("Opening that escalated"));
    let mood = learned
        .memories
        .iter()
        .find(|m| m.kind == MemoryKind::SentimentSummary)
        .unwrap();
    assert!(mood.content.ends_with("they ended frustrated."));
    assert!((mood.importance - 0.7).abs() < 1e-6);
}

#[test]
fn no_customer_no_memories_and_a_silent_call_teaches_nothing() {
    let anonymous = call(false, CallStatus::Completed, EndReason::AgentEnded);
    let learned = extract(&anonymous, &journal(resolved_billing_call()));
    assert!(learned.memories.is_empty());
    assert!(!learned.patterns.is_empty());

    let silent = call(true, CallStatus::Completed, EndReason::Silence);
    let learned = extract(
        &silent,
        &journal(vec![
            say(Speaker::Agent, 0, "Hello?"),
            say(Speaker::Agent, 0, "Are you still there?"),
        ]),
    );
    assert!(learned.patterns.is_empty() && learned.memories.is_empty());
    assert!(!learned.outcome.resolved && !learned.outcome.success);
}
