//! Records: the transcript segments journalled for the caller and the agent, and each reply's
//! latency record (speech-to-text, hold-off, model, synthesis, engine).

use crate::machine::record::{ConversationRecord, Speaker};

use super::{Action, CallerTurn, Conversation, Micros, Utterance, MS};

/// Timestamps of one reply, for its latency record.
#[derive(Debug, Default, Clone)]
pub(super) struct Timing {
    pub(super) eos: Option<Micros>,
    pub(super) stt_final: Option<Micros>,
    pub(super) turn_end: Micros,
    pub(super) llm_request: Micros,
    pub(super) first_token: Option<Micros>,
    pub(super) piece_token: Option<Micros>,
    pub(super) piece_sent: Option<Micros>,
    pub(super) recorded: bool,
}

impl Conversation {
    pub(super) fn caller_segment(&self, now: Micros, t: &CallerTurn, turn: u32) -> Action {
        let origin = self.audio_origin.unwrap_or(0) / MS;
        let confidence = if t.confidence_n == 0 {
            0.0
        } else {
            t.confidence_sum / t.confidence_n as f32
        };
        Action::Record(ConversationRecord::Segment {
            speaker: Speaker::Caller,
            text: t.finals.trim().to_owned(),
            start_ms: origin + t.start_ms.unwrap_or(t.end_ms),
            end_ms: (origin + t.end_ms).min(now / MS),
            confidence,
            interrupted: false,
            turn,
        })
    }

    pub(super) fn record_latency(
        &mut self,
        ctx: &str,
        first_audio: Micros,
        now: Micros,
        out: &mut Vec<Action>,
    ) {
        let (turn, t) = match self
            .reply
            .as_mut()
            .filter(|r| r.ctx.as_deref() == Some(ctx))
        {
            Some(reply) => (reply.turn, &mut reply.timing),
            None => match self.latency_pending.as_mut().filter(|p| p.0 == ctx) {
                Some(p) => (p.1, &mut p.2),
                None => return,
            },
        };
        if t.recorded {
            return;
        }
        t.recorded = true;
        let (Some(first_token), Some(piece_token), Some(piece_sent)) =
            (t.first_token, t.piece_token, t.piece_sent)
        else {
            return;
        };
        let start = t.stt_final.unwrap_or(t.turn_end);
        let total = now.saturating_sub(start);
        let holdoff = t.turn_end.saturating_sub(start);
        let llm = first_token.saturating_sub(t.llm_request);
        let streaming = piece_token.saturating_sub(first_token);
        let tts = first_audio.saturating_sub(piece_sent);
        // A reply asked for before the end of the turn (speculatively) had its waits run
        // during the hold-off: up to the end of the turn, or all of them if its first audio
        // came before.
        let saved = first_audio
            .saturating_sub(t.llm_request)
            .min(t.turn_end.saturating_sub(t.llm_request));
        out.push(Action::Record(ConversationRecord::TurnLatency {
            turn,
            stt_us: t.eos.map_or(0, |e| start.saturating_sub(e)),
            holdoff_us: holdoff,
            llm_first_token_us: llm,
            llm_stream_us: streaming,
            tts_first_audio_us: tts,
            total_us: total,
            engine_us: (total + saved).saturating_sub(holdoff + llm + streaming + tts),
            saved_us: saved,
        }));
    }

    pub(super) fn agent_segment(
        &self,
        now: Micros,
        u: &Utterance,
        text: &str,
        interrupted: bool,
    ) -> Action {
        Action::Record(ConversationRecord::Segment {
            speaker: Speaker::Agent,
            text: text.to_owned(),
            start_ms: u.first_sent_at.unwrap_or(u.started) / MS,
            end_ms: now / MS,
            confidence: 1.0,
            interrupted,
            turn: u.turn,
        })
    }
}
