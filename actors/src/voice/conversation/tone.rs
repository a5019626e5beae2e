//! Tone: caller sentiment per turn (a lexicon estimate first, the vendor's score when it
//! comes), the agent's tone decided from the scores, and the escalation when sentiment stays
//! below the persona's floor.

use crate::machine::record::{ConversationRecord, EscalationReason, Tone};
use crate::ports::sentiment::{Sentiment, SentimentLabel};

use super::{Action, Conversation, Micros, Phase};

impl Conversation {
    pub(super) fn sentiment(
        &mut self,
        now: Micros,
        turn: u32,
        s: Sentiment,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Record(ConversationRecord::Sentiment {
            turn,
            score: s.score,
            label: s.label,
            source: s.source.clone(),
            degraded: s.degraded,
        }));
        if self.pending_estimate.is_some_and(|(t, _)| t == turn) {
            self.pending_estimate = None;
        }
        self.scores.push(s.score);
        let floor = self.profile.persona.escalation.clone();
        if s.score < floor.sentiment_floor {
            self.low_streak += 1;
        } else {
            self.low_streak = 0;
        }
        self.update_tone(turn, None, s.source.as_str(), out);
        if floor.floor_turns > 0
            && self.low_streak >= floor.floor_turns
            && matches!(self.phase, Phase::Active)
        {
            let detail = format!(
                "sentiment below {} for {} turns (last {:.2}, {})",
                floor.sentiment_floor,
                self.low_streak,
                s.score,
                label_str(s.label)
            );
            self.escalate(now, EscalationReason::SentimentFloor, detail, out);
        }
    }

    /// Re-decides the tone from the scores so far (plus an estimate of the current turn).
    pub(super) fn update_tone(
        &mut self,
        turn: u32,
        estimate: Option<f64>,
        source: &str,
        out: &mut Vec<Action>,
    ) {
        if let Some((to, reason)) = self.tone_change(estimate, source) {
            out.push(Action::Record(ConversationRecord::ToneChanged {
                turn,
                from: self.tone,
                to,
                reason,
            }));
            self.tone = to;
        }
    }

    /// The tone the scores so far (plus `estimate`) call for, with why, when it is not the
    /// current one.
    pub(super) fn tone_change(
        &self,
        estimate: Option<f64>,
        source: &str,
    ) -> Option<(Tone, String)> {
        let f = &self.profile.persona.frustration;
        let mut scores = self.scores.clone();
        scores.extend(estimate);
        let &last = scores.last()?;
        let window = &scores[scores.len().saturating_sub(f.window)..];
        let drop = window.first().map_or(0.0, |first| first - last);
        let frustrated = last <= f.threshold || (window.len() >= 2 && drop >= f.trend_drop);
        let to = if frustrated {
            Tone::Empathetic
        } else if last >= 0.2 {
            Tone::Normal
        } else {
            self.tone
        };
        if to == self.tone {
            return None;
        }
        let reason = if last <= f.threshold {
            format!("{source}: score {last:.2} <= {}", f.threshold)
        } else if frustrated {
            format!("{source}: fell {drop:.2} over {} turns", window.len())
        } else {
            format!("{source}: score {last:.2} recovered")
        };
        Some((to, reason))
    }
}

fn label_str(label: SentimentLabel) -> &'static str {
    match label {
        SentimentLabel::Positive => "positive",
        SentimentLabel::Neutral => "neutral",
        SentimentLabel::Negative => "negative",
    }
}
