use serde_json::json;

use super::*;

fn config() -> AnalysisConfig {
    serde_json::from_value(json!({
        "summary": "One sentence.",
        "schema": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "minLength": 4},
                "intent": {"enum": ["status", "refund", "other"]}
            },
            "required": ["intent"],
            "additionalProperties": false
        },
        "success_rubric": "The caller learned where the order is."
    }))
    .unwrap()
}

#[test]
fn answers_are_checked_against_the_agents_schema_inside_the_envelope() {
    let schema = answer_schema(&config());
    crate::catalog::schema::check(&schema).unwrap();
    let good = r#"{"summary": "Asked about A123.", "data": {"order_id": "A123", "intent": "status"},
                   "success": true, "success_reason": "Told it ships tomorrow."}"#;
    assert_eq!(
        check_answer(&schema, good).unwrap()["data"]["intent"],
        "status"
    );
    for (bad, says) in [
        ("not json", "not JSON"),
        (
            r#"{"summary": "s", "data": {"intent": "cancel"}, "success": true, "success_reason": "r"}"#,
            "/data/intent: must be one of",
        ),
        (
            r#"{"summary": "s", "data": {"intent": "status", "order_id": "A1"}, "success": true, "success_reason": "r"}"#,
            "/data/order_id: shorter than 4",
        ),
        (
            r#"{"summary": "s", "data": {"intent": "status"}, "success": "yes", "success_reason": "r"}"#,
            "/success: expected boolean",
        ),
        (
            r#"{"summary": "s", "data": {"intent": "status"}, "success": true}"#,
            "`success_reason` is required",
        ),
    ] {
        let err = check_answer(&schema, bad).unwrap_err();
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn the_prompt_carries_the_instructions_and_the_transcript() {
    use crate::machine::{start, CallSpec, Direction, PhoneNumber};
    let spec = CallSpec {
        id: uuid::Uuid::from_u128(1),
        organization_id: uuid::Uuid::from_u128(2),
        direction: Direction::Inbound,
        from: PhoneNumber::parse("+14155550100").unwrap(),
        to: PhoneNumber::parse("+14155550199").unwrap(),
        agent_id: uuid::Uuid::from_u128(3),
        customer_id: None,
        metadata: json!({}),
        ring_timeout_secs: 30,
        max_duration_secs: 600,
        inbound_leg_id: None,
    };
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let (call, _) = start(spec, t0);
    let said = |speaker, text: &str| JournalEntry {
        call_id: call.spec.id,
        seq: 2,
        at: t0,
        event: Event::Conversation {
            record: ConversationRecord::Segment {
                speaker,
                text: text.into(),
                start_ms: 0,
                end_ms: 1,
                confidence: 1.0,
                interrupted: false,
                turn: 1,
            },
        },
    };
    let journal = [
        said(Speaker::Agent, "Hello, Acme."),
        said(Speaker::Caller, "Where is order A123?"),
    ];
    let messages = prompt(&config(), &call, &journal);
    assert!(messages[0]
        .content
        .contains("The caller learned where the order is"));
    assert!(messages[1]
        .content
        .contains("Agent: Hello, Acme.\nCaller: Where is order A123?\n"));
}
