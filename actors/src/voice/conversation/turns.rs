//! Turn-taking: the caller's words from speech-to-text gathered into a turn, the end of an
//! utterance and the hold-off before the turn is taken as over, the caller going on after
//! that (the unspoken answer withdrawn), and the end of a turn (escalation by words, or a
//! reply requested).

use crate::machine::record::{ConversationRecord, EscalationReason};
use crate::ports::voice::{ChatMessage, ChatRole, SttEvent};
use crate::sentiment::LexiconScorer;
use crate::voice::text;

use super::{Action, Conversation, Kind, Micros, Phase, Timing, MS};

/// The caller's words since their last turn was taken.
#[derive(Debug, Default)]
pub(super) struct CallerTurn {
    /// Final words not yet answered.
    pub(super) finals: String,
    pub(super) start_ms: Option<u64>,
    pub(super) end_ms: u64,
    pub(super) confidence_sum: f32,
    pub(super) confidence_n: u32,
    /// Speech heard and not yet concluded by a final.
    pub(super) speaking: bool,
    /// Latest interim words.
    pub(super) interim: String,
    pub(super) last_final_at: Option<Micros>,
    /// Speculative replies started for these words.
    pub(super) speculations: u32,
}

impl CallerTurn {
    pub(super) fn take(&mut self) -> CallerTurn {
        std::mem::take(self)
    }
}

impl Conversation {
    pub(super) fn stt(&mut self, now: Micros, event: SttEvent, at: Micros, out: &mut Vec<Action>) {
        match event {
            SttEvent::SpeechStarted { .. } => {
                self.caller.speaking = true;
                self.caller_active();
                self.holdoff_at = None;
                self.merge_if_unspoken(out);
                if self.interruptible_playing() && self.barge_at.is_none() {
                    self.barge_at =
                        Some(now + self.profile.persona.turn_taking.min_barge_in_ms * MS);
                }
            }
            SttEvent::Transcript {
                text,
                is_final,
                speech_final,
                confidence,
                start_ms,
                end_ms,
            } => {
                let has_words = !text.trim().is_empty();
                if has_words {
                    self.caller_active();
                    self.holdoff_at = None;
                }
                if !is_final {
                    if has_words {
                        self.caller.speaking = true;
                        self.caller.interim = text;
                        // An answer not heard yet is withdrawn first: going on talking over
                        // it is not talking over the agent.
                        self.merge_if_unspoken(out);
                        if self.interruptible_playing() {
                            self.barge_at.get_or_insert(
                                now + self.profile.persona.turn_taking.min_barge_in_ms * MS,
                            );
                            let words = text::meaningful_words(&format!(
                                "{} {}",
                                self.caller.finals, self.caller.interim
                            ));
                            if words >= self.profile.persona.turn_taking.min_barge_in_words {
                                self.barge_in(now, out);
                            }
                        }
                    }
                    return;
                }
                self.caller.interim.clear();
                if has_words {
                    if !self.caller.finals.is_empty() {
                        self.caller.finals.push(' ');
                    }
                    self.caller.finals.push_str(text.trim());
                    self.caller.start_ms.get_or_insert(start_ms);
                    self.caller.end_ms = end_ms;
                    self.caller.confidence_sum += confidence;
                    self.caller.confidence_n += 1;
                    self.caller.last_final_at = Some(at);
                    self.merge_if_unspoken(out);
                    if self.interruptible_playing() {
                        let words = text::meaningful_words(&self.caller.finals);
                        if words >= self.profile.persona.turn_taking.min_barge_in_words {
                            self.barge_in(now, out);
                        }
                    }
                }
                if speech_final {
                    self.caller.speaking = false;
                    self.end_of_utterance(now, out);
                }
            }
            SttEvent::UtteranceEnd { .. } => {
                self.caller.speaking = false;
                self.end_of_utterance(now, out);
            }
            SttEvent::Reconnected { gap_ms, reason } => {
                out.push(Action::Record(ConversationRecord::VendorGap {
                    vendor: "stt".into(),
                    gap_ms,
                    reason,
                }));
            }
            SttEvent::Failed { reason } => self.vendor_failed(now, "stt", &reason, out),
        }
    }

    /// The recogniser says the caller stopped talking: decide after a hold-off.
    fn end_of_utterance(&mut self, now: Micros, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Voicemail => {
                self.leave_voicemail(now, out);
                return;
            }
            Phase::Active | Phase::AwaitAmd => {}
            _ => return,
        }
        if self.caller.finals.trim().is_empty() {
            // Noise or a backchannel-only interruption: nothing to answer. The barge-in
            // window decides about resuming.
            self.barge_at = None;
            return;
        }
        if self.agent_playing_interruptible_unbarged() {
            // Words while the agent talks that never reached the barge-in bar: a backchannel.
            let t = self.caller.take();
            out.push(self.caller_segment(now, &t, self.turn));
            self.barge_at = None;
            return;
        }
        let tt = &self.profile.persona.turn_taking;
        let wait = if text::looks_unfinished(&self.caller.finals) {
            tt.long_holdoff_ms
        } else {
            tt.holdoff_ms
        };
        self.holdoff_at = Some(now + wait * MS);
        if wait == 0 {
            self.holdoff_at = None;
            self.end_of_turn(now, out);
        } else {
            self.speculate(now, out);
        }
    }

    /// The caller goes on talking after we decided their turn was over, before any answer
    /// was heard: withdraw the answer and take their words together.
    fn merge_if_unspoken(&mut self, out: &mut Vec<Action>) {
        let Some(reply) = &self.reply else { return };
        let heard = self
            .utterances
            .iter()
            .any(|u| u.kind == Kind::Reply && (u.sent > 0 || !u.held.is_empty()));
        if heard || reply.rounds > 0 {
            return;
        }
        let reply = self.reply.take().expect("checked");
        out.push(Action::LlmCancel { reply: reply.id });
        if let Some(ctx) = &reply.ctx {
            out.push(Action::TtsCancel {
                context: ctx.clone(),
            });
            self.utterances.retain(|u| &u.ctx != ctx);
        }
        // The user message of that turn goes back into the caller's words.
        if let Some(last) = self.history.back() {
            if last.role == ChatRole::User {
                let previous = self.history.pop_back().expect("checked").content;
                let rest = std::mem::take(&mut self.caller.finals);
                self.caller.finals = format!("{previous} {rest}").trim().to_owned();
            }
        }
        self.turn = self.turn.saturating_sub(1);
    }

    pub(super) fn end_of_turn(&mut self, now: Micros, out: &mut Vec<Action>) {
        let t = self.caller.take();
        let said = t.finals.trim().to_owned();
        if said.is_empty() {
            return;
        }
        if self.phase == Phase::AwaitAmd {
            // A person spoke before the detector decided: greet them. "Hello?" is answered by
            // the greeting; anything more is answered after it, as the first turn (the
            // greeting goes into the model's context first, so the reply follows on from it).
            self.assume_human(now, "the caller spoke before the verdict", out);
            self.greet(now, out);
            if text::only_salutation(&said) {
                return;
            }
            if let Some(greeting) = self.utterances.last_mut() {
                greeting.historied = true;
                let text = greeting.text.clone();
                self.push_history(ChatMessage::text(ChatRole::Assistant, text));
            }
        }
        self.interrupted = None;
        self.turn += 1;
        let turn = self.turn;
        out.push(self.caller_segment(now, &t, turn));
        out.push(Action::ScoreSentiment {
            turn,
            text: said.clone(),
        });
        let estimate = LexiconScorer.score_text(&said);
        self.pending_estimate = Some((turn, estimate));
        self.update_tone(turn, Some(estimate), "lexicon estimate", out);
        self.interrupt_tools();
        self.push_history(ChatMessage::text(ChatRole::User, said.clone()));

        let esc = &self.profile.persona.escalation;
        if let Some(k) = text::keyword_in(&said, &esc.keywords) {
            let detail = format!("keyword `{k}`");
            self.escalate(now, EscalationReason::Keyword, detail, out);
            return;
        }
        if esc.on_request && text::asks_for_human(&said) {
            self.escalate(now, EscalationReason::CallerRequest, said, out);
            return;
        }
        // A turn the model could not answer yet is answered together with this one.
        self.reply_retry = None;
        let timing = Timing {
            eos: self
                .audio_origin
                .map(|o| o + t.end_ms * MS)
                .filter(|&e| Some(e) <= t.last_final_at),
            stt_final: t.last_final_at,
            turn_end: now,
            llm_request: now,
            ..Timing::default()
        };
        if !self.use_speculation(now, turn, &timing, out) {
            self.request_reply(turn, 0, timing, out);
        }
    }
}
