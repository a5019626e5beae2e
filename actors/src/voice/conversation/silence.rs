//! Silence: the line counts as quiet from when nobody talks and nothing is pending; the timers
//! then reprompt the caller after the persona's `reprompt_after_ms` and say goodbye after its
//! `hangup_after_ms`. Anything the caller says starts the count over.

use super::{Conversation, Kind, Micros, Phase, MS};

impl Conversation {
    /// The caller said something: silence handling starts over.
    pub(super) fn caller_active(&mut self) {
        self.silence_since = None;
        self.reprompted = false;
    }

    pub(super) fn silence_deadline(&self) -> Option<Micros> {
        let since = self.silence_since?;
        let s = &self.profile.persona.silence;
        Some(if self.reprompted {
            since + s.hangup_after_ms * MS
        } else {
            since + s.reprompt_after_ms * MS
        })
    }

    /// Bookkeeping after every input: is the line quiet now?
    pub(super) fn settle(&mut self, now: Micros) {
        let quiet = self.phase == Phase::Active
            && self.utterances.is_empty()
            && self.reply.is_none()
            && self.reply_retry.is_none()
            && self.tools_pending.is_empty()
            && !self.caller.speaking
            && self.caller.finals.is_empty()
            && self.holdoff_at.is_none()
            && self.dtmf.is_empty();
        if quiet {
            self.silence_since.get_or_insert(now);
        } else if self.utterances.iter().any(|u| u.kind != Kind::Reprompt)
            || self.reply.is_some()
            || self.reply_retry.is_some()
        {
            // Silence counts from when the agent last stopped talking (a reprompt is part of
            // the silence: the goodbye comes `hangup_after_ms` after the silence began).
            self.silence_since = None;
        }
    }
}
