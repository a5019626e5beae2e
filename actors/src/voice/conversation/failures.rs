//! Vendor failures: a voice vendor failing for good during the call ends the conversation as
//! the profile's `on_vendor_failure` says (the apology, then a transfer or a hangup); when
//! speech synthesis dies while ending, what was to follow the speech happens now.

use crate::catalog::profile::VendorFailureAction;
use crate::machine::record::{ConversationRecord, EscalationReason};
use crate::machine::EndReason;

use super::{Action, After, Conversation, Kind, Micros, Phase, MS};

impl Conversation {
    pub(super) fn vendor_failed(
        &mut self,
        now: Micros,
        vendor: &str,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        if matches!(self.phase, Phase::Ending | Phase::Done) {
            if vendor == "tts" {
                // What was to be said can no longer be: do what follows it now.
                self.abandon_speech(now, out);
            }
            return;
        }
        let action = self.profile.vendor_failure_action();
        let action_str = match action {
            VendorFailureAction::Transfer => "transfer",
            VendorFailureAction::End => "end",
        };
        tracing::warn!(
            vendor,
            reason,
            action = action_str,
            "voice vendor failed during the call"
        );
        out.push(Action::Record(ConversationRecord::VendorFailure {
            vendor: vendor.to_owned(),
            reason: reason.to_owned(),
            action: action_str.into(),
        }));
        if let Some(reply) = self.reply.take() {
            out.push(Action::LlmCancel { reply: reply.id });
        }
        self.reply_retry = None;
        self.llm_down = None;
        for u in std::mem::take(&mut self.utterances) {
            if !u.tts_done && !self.tts_dead {
                out.push(Action::TtsCancel {
                    context: u.ctx.clone(),
                });
            }
            // What the caller heard of it stays in the transcript, cut off (as on a barge-in).
            let (heard, _) = u.split_heard();
            if !heard.is_empty() {
                out.push(self.agent_segment(now, &u, &heard, true));
            }
        }
        out.push(Action::MediaClear);
        self.playhead = now;
        self.tools_pending.clear();
        self.pending_rounds = None;
        self.filler_at = None;
        self.phase = Phase::Ending;
        let after = match (action, self.profile.human_number.clone()) {
            (VendorFailureAction::Transfer, Some(to)) => {
                out.push(Action::Record(ConversationRecord::Escalation {
                    turn: self.turn,
                    reason: EscalationReason::VendorFailure,
                    detail: format!("{vendor}: {reason}"),
                    to: Some(to.as_str().to_owned()),
                }));
                self.escalated = true;
                After::Transfer(to)
            }
            _ => After::Hangup(EndReason::VoiceFailure),
        };
        let apology = self.profile.persona.apology.clone();
        self.say(now, Kind::Apology, &apology, after, out);
    }

    /// Speech synthesis died while we were ending: skip straight to the follow-up.
    fn abandon_speech(&mut self, now: Micros, out: &mut Vec<Action>) {
        let afters: Vec<After> = std::mem::take(&mut self.utterances)
            .into_iter()
            .map(|u| u.after)
            .filter(|a| *a != After::Listen)
            .collect();
        for after in afters {
            self.follow(now, after.clone(), out);
            if self.phase == Phase::Done {
                return;
            }
        }
        // Nothing was pending: make sure the call does not stay silent.
        let mark = format!("fallback-{}", self.next_ctx);
        self.next_ctx += 1;
        out.push(Action::PlayFallbackApology { mark: mark.clone() });
        self.fallback_mark = Some((
            mark,
            After::Hangup(EndReason::VoiceFailure),
            now + 6000 * MS,
        ));
    }
}
