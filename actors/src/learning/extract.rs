//! What a finished call teaches: its outcome, the patterns the agent used, and what to
//! remember of the customer. Pure: a call's snapshot and journal in, drafts out (the learning
//! actor embeds and stores them). Deterministic rules, no model: the same journal always
//! gives the same drafts.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::machine::record::{ConversationRecord, Speaker, Tone};
use crate::machine::{Call, CallStatus, EndReason, Event};
use crate::ports::calls::JournalEntry;
use crate::ports::learning::{MemoryDraft, MemoryKind, PatternDraft, PatternType};

/// How the call went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The call went to a person (or was about to).
    pub escalated: bool,
    /// Answered, the caller spoke, and it ended normally without a person.
    pub resolved: bool,
    /// First and last sentiment score of the caller, if scored.
    pub sentiment_start: Option<f64>,
    /// Last.
    pub sentiment_end: Option<f64>,
    /// Resolved, and the caller did not end up worse than they started (or ended positive).
    pub success: bool,
}

/// Everything learned from one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Learned {
    /// How it went.
    pub outcome: Outcome,
    /// Patterns (for the call's agent).
    pub patterns: Vec<PatternDraft>,
    /// Memories (only when the call has a customer).
    pub memories: Vec<MemoryDraft>,
    /// Patterns recalled into this call's context: their success rates learn from the outcome.
    pub used_patterns: Vec<uuid::Uuid>,
}

/// How a call summary says the call went to a person (recall's prediction reads it).
pub const HANDED_OVER: &str = "handed to a person";
/// How a sentiment summary says the customer ended unhappy (recall's prediction reads it).
pub const ENDED_FRUSTRATED: &str = "they ended frustrated";

/// Longest quoted line in a description or memory, characters.
const QUOTE: usize = 160;

/// Words that mark a caller's line as a problem worth remembering.
const ISSUE_WORDS: [&str; 14] = [
    "problem",
    "issue",
    "broken",
    "charged",
    "overcharged",
    "wrong",
    "not working",
    "doesn't work",
    "cancel",
    "refund",
    "complaint",
    "late",
    "missing",
    "error",
];
/// ...as a preference.
const PREFERENCE_WORDS: [&str; 8] = [
    "i prefer",
    "i'd prefer",
    "i'd rather",
    "please don't",
    "don't call",
    "call me",
    "email me",
    "text me",
];
/// Agent phrases that promise something.
const PROMISE_WORDS: [&str; 6] = [
    "i will ",
    "i'll ",
    "we will ",
    "we'll ",
    "i am going to ",
    "i'm going to ",
];
/// ...and the actions that make a promise a commitment.
const PROMISE_ACTIONS: [&str; 10] = [
    "call",
    "send",
    "refund",
    "fix",
    "follow up",
    "email",
    "credit",
    "cancel",
    "schedule",
    "check",
];

struct Line {
    speaker: Speaker,
    text: String,
    turn: u32,
}

/// Extracts what the call teaches.
pub fn extract(call: &Call, journal: &[JournalEntry]) -> Learned {
    let mut lines = Vec::new();
    let mut scores: Vec<(u32, f64)> = Vec::new();
    let mut tools = Vec::new();
    let mut escalation = None;
    let mut tones = Vec::new();
    let mut transferred = false;
    let mut used_patterns = Vec::new();
    for entry in journal {
        match &entry.event {
            Event::TransferRequested { .. } => transferred = true,
            Event::Conversation { record } => match record {
                ConversationRecord::Segment {
                    speaker,
                    text,
                    turn,
                    ..
                } if !text.trim().is_empty() => lines.push(Line {
                    speaker: *speaker,
                    text: text.trim().to_owned(),
                    turn: *turn,
                }),
                ConversationRecord::Sentiment { turn, score, .. } => scores.push((*turn, *score)),
                ConversationRecord::ToolCall { name, turn, .. } => {
                    tools.push((name.clone(), *turn))
                }
                ConversationRecord::Escalation {
                    turn,
                    reason,
                    detail,
                    ..
                } if escalation.is_none() => escalation = Some((*turn, *reason, detail.clone())),
                ConversationRecord::ToneChanged {
                    turn, to, reason, ..
                } => {
                    tones.push((*turn, *to, reason.clone()));
                }
                ConversationRecord::ContextRetrieved { patterns, .. } => {
                    for p in patterns {
                        if !used_patterns.contains(p) {
                            used_patterns.push(*p);
                        }
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    let caller_spoke = lines.iter().any(|l| l.speaker == Speaker::Caller);
    let escalated = escalation.is_some() || transferred;
    let ended_well = matches!(
        call.end_reason,
        Some(EndReason::NormalClearing | EndReason::AgentEnded)
    );
    let resolved = call.status == CallStatus::Completed && caller_spoke && !escalated && ended_well;
    let sentiment_start = scores.first().map(|s| s.1);
    let sentiment_end = scores.last().map(|s| s.1);
    let mood_held = match (sentiment_start, sentiment_end) {
        (Some(a), Some(b)) => b >= a || b >= 0.0,
        _ => true,
    };
    let outcome = Outcome {
        escalated,
        resolved,
        sentiment_start,
        sentiment_end,
        success: resolved && mood_held,
    };
    let verdict = if outcome.success {
        "succeeded"
    } else if escalated {
        "escalated"
    } else {
        "did not succeed"
    };

    let mut patterns = Vec::new();
    let caller_lines: Vec<&Line> = lines
        .iter()
        .filter(|l| l.speaker == Speaker::Caller)
        .collect();
    let agent_reply = |turn: u32| {
        lines
            .iter()
            .find(|l| l.speaker == Speaker::Agent && l.turn == turn)
    };
    // The opening: up to two exchanges.
    if !caller_lines.is_empty() {
        let exchanges: Vec<(String, String)> = caller_lines
            .iter()
            .take(2)
            .map(|c| {
                let reply = agent_reply(c.turn).map_or(String::new(), |a| quote(&a.text));
                (quote(&c.text), reply)
            })
            .collect();
        let text = exchanges
            .iter()
            .map(|(c, a)| format!("Caller: {c} Agent: {a}"))
            .collect::<Vec<_>>()
            .join(" ");
        patterns.push(PatternDraft {
            pattern_type: PatternType::TurnSequence,
            data: json!({
                "turns": caller_lines.len(),
                "exchanges": exchanges.iter().map(|(c, a)| json!({"caller": c, "agent": a})).collect::<Vec<_>>(),
                "outcome": verdict,
            }),
            description: format!("Opening that {verdict}: {text}"),
        });
    }
    if !tools.is_empty() {
        let names: Vec<&str> = tools.iter().map(|(n, _)| n.as_str()).collect();
        patterns.push(PatternDraft {
            pattern_type: PatternType::ToolSequence,
            data: json!({"tools": names, "outcome": verdict}),
            description: format!(
                "Tools used in order: {}; the call {verdict}",
                names.join(", ")
            ),
        });
    }
    if let Some((turn, reason, detail)) = &escalation {
        let said = caller_lines
            .iter()
            .rev()
            .find(|c| c.turn <= *turn)
            .map_or(String::new(), |c| quote(&c.text));
        let reason = serde_json::to_value(reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        patterns.push(PatternDraft {
            pattern_type: PatternType::EscalationTrigger,
            data: json!({"turn": turn, "reason": reason, "detail": detail, "caller": said}),
            description: format!("Escalated ({reason}) after the caller said: {said}"),
        });
    }
    // A negative turn followed by a better one: the reply in between handled the objection.
    for pair in scores.windows(2) {
        let ((t0, s0), (_, s1)) = (pair[0], pair[1]);
        if s0 > -0.3 || s1 - s0 < 0.3 {
            continue;
        }
        let (Some(objection), Some(reply)) =
            (caller_lines.iter().find(|c| c.turn == t0), agent_reply(t0))
        else {
            continue;
        };
        patterns.push(PatternDraft {
            pattern_type: PatternType::ObjectionHandling,
            data: json!({
                "objection": quote(&objection.text),
                "response": quote(&reply.text),
                "sentiment_before": s0,
                "sentiment_after": s1,
            }),
            description: format!(
                "Objection: {} Response that helped: {}",
                quote(&objection.text),
                quote(&reply.text)
            ),
        });
    }
    if !tones.is_empty() {
        let changes: Vec<serde_json::Value> = tones
            .iter()
            .map(|(turn, to, reason)| json!({"turn": turn, "to": tone_name(*to), "reason": reason}))
            .collect();
        let last = tones.last().map_or(Tone::Normal, |t| t.1);
        patterns.push(PatternDraft {
            pattern_type: PatternType::PersonaUsage,
            data: json!({"tone_changes": changes, "final_tone": tone_name(last), "outcome": verdict}),
            description: format!(
                "The agent turned {} (after {}); the call {verdict}",
                tone_name(last),
                tones.last().map_or("", |t| t.2.as_str())
            ),
        });
    }
    if outcome.success {
        if let Some(last) = caller_lines.last() {
            let reply = agent_reply(last.turn).map_or(String::new(), |a| quote(&a.text));
            patterns.push(PatternDraft {
                pattern_type: PatternType::Resolution,
                data: json!({"caller": quote(&last.text), "agent": reply}),
                description: format!("Resolved: caller {} agent {reply}", quote(&last.text)),
            });
        }
    }

    let mut memories = Vec::new();
    if call.spec.customer_id.is_some() && caller_spoke {
        let first = caller_lines
            .first()
            .map_or(String::new(), |c| quote(&c.text));
        let how = if outcome.success {
            "resolved".to_owned()
        } else if escalated {
            HANDED_OVER.to_owned()
        } else {
            format!(
                "ended {}",
                call.end_reason.map_or("without a reason", |r| r.as_str())
            )
        };
        memories.push(MemoryDraft {
            kind: MemoryKind::CallSummary,
            content: format!(
                "{} call on {}: the customer said \"{first}\"; {how}.",
                capitalized(call.spec.direction.as_str()),
                call.created_at.format("%Y-%m-%d")
            ),
            importance: 0.5,
        });
        if let (Some(a), Some(b)) = (sentiment_start, sentiment_end) {
            let mood = if b <= -0.3 {
                "frustrated"
            } else if b >= 0.3 {
                "positive"
            } else {
                "neutral"
            };
            memories.push(MemoryDraft {
                kind: MemoryKind::SentimentSummary,
                content: format!(
                    "The customer's mood went from {a:.2} to {b:.2}; they ended {mood}."
                ),
                importance: if b <= -0.3 { 0.7 } else { 0.3 },
            });
        }
        for c in &caller_lines {
            let lowered = c.text.to_lowercase();
            if PREFERENCE_WORDS.iter().any(|w| lowered.contains(w)) {
                memories.push(MemoryDraft {
                    kind: MemoryKind::Preference,
                    content: quote(&c.text),
                    importance: 0.6,
                });
            } else if ISSUE_WORDS.iter().any(|w| lowered.contains(w)) {
                memories.push(MemoryDraft {
                    kind: MemoryKind::Issue,
                    content: quote(&c.text),
                    importance: 0.7,
                });
            }
        }
        for a in lines.iter().filter(|l| l.speaker == Speaker::Agent) {
            let lowered = format!("{} ", a.text.to_lowercase());
            if PROMISE_WORDS.iter().any(|w| lowered.contains(w))
                && PROMISE_ACTIONS.iter().any(|w| lowered.contains(w))
            {
                memories.push(MemoryDraft {
                    kind: MemoryKind::Commitment,
                    content: format!("The agent promised: {}", quote(&a.text)),
                    importance: 0.8,
                });
            }
        }
    }
    Learned {
        outcome,
        patterns,
        memories,
        used_patterns,
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map_or(String::new(), |c| c.to_uppercase().chain(chars).collect())
}

fn tone_name(t: Tone) -> &'static str {
    match t {
        Tone::Normal => "normal",
        Tone::Empathetic => "empathetic",
    }
}

/// `text` cut to [`QUOTE`] characters on a char boundary, with an ellipsis when cut.
fn quote(text: &str) -> String {
    let mut chars = text.chars();
    let cut: String = chars.by_ref().take(QUOTE).collect();
    if chars.next().is_some() {
        format!("{cut}...")
    } else {
        cut
    }
}
