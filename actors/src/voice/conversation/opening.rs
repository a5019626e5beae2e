//! The call's opening: the greeting, the wait for the answering-machine verdict (and taking
//! the call for a person when none comes), and the message left on a voicemail.

use crate::catalog::profile::VoicemailAction;
use crate::machine::record::ConversationRecord;
use crate::machine::{AmdResult, EndReason};

use super::{Action, After, Conversation, Kind, Micros, Phase, MS};

/// The longest wait for an answering machine's greeting to end before leaving the message.
const VOICEMAIL_WAIT: Micros = 10_000 * MS;

impl Conversation {
    pub(super) fn greet(&mut self, now: Micros, out: &mut Vec<Action>) {
        self.phase = Phase::Active;
        self.amd_at = None;
        let greeting = self.profile.persona.greeting.clone();
        self.say(now, Kind::Greeting, &greeting, After::Listen, out);
    }

    /// Journals that the call is taken for a person without a verdict.
    pub(super) fn assume_human(&mut self, now: Micros, reason: &str, out: &mut Vec<Action>) {
        let waited_ms = self.amd_since.map_or(0, |t| now.saturating_sub(t) / MS);
        tracing::info!(
            reason,
            waited_ms,
            "no answering-machine verdict; taking the call for a person"
        );
        out.push(Action::Record(ConversationRecord::AmdAssumedHuman {
            reason: reason.to_owned(),
            waited_ms,
        }));
    }

    pub(super) fn amd(&mut self, now: Micros, result: AmdResult, out: &mut Vec<Action>) {
        if self.phase != Phase::AwaitAmd {
            return;
        }
        match result {
            AmdResult::Human | AmdResult::NotSure => self.greet(now, out),
            AmdResult::Machine => {
                self.amd_at = None;
                let action = self.profile.persona.voicemail;
                out.push(Action::Record(ConversationRecord::Voicemail {
                    action: action.as_str().into(),
                }));
                match action {
                    VoicemailAction::HangUp => self.hang_up(EndReason::Voicemail, out),
                    VoicemailAction::LeaveMessage => {
                        self.phase = Phase::Voicemail;
                        self.voicemail_at = Some(now + VOICEMAIL_WAIT);
                    }
                }
            }
        }
    }

    pub(super) fn leave_voicemail(&mut self, now: Micros, out: &mut Vec<Action>) {
        self.voicemail_at = None;
        self.phase = Phase::Ending;
        self.caller.take();
        let message = self.profile.persona.voicemail_message.clone();
        self.say(
            now,
            Kind::Voicemail,
            &message,
            After::Hangup(EndReason::Voicemail),
            out,
        );
    }
}
