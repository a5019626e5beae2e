//! A reply the model could not give (its breaker open, a failure before its first words): the
//! hold line once per turn, the request asked again with backoff, and `on_vendor_failure`
//! once the model has not answered for the persona's `reply_wait_ms`.

use crate::machine::record::ConversationRecord;

use super::{Action, After, Conversation, Kind, Micros, Phase, Timing, MS};

/// First wait before asking the model again after it could not answer; doubles per attempt.
const REPLY_RETRY_FIRST: Micros = 1000 * MS;
/// Longest wait between two attempts (a breaker's half-open probes are not missed by much).
const REPLY_RETRY_CAP: Micros = 8000 * MS;

/// A caller turn the model could not answer yet: asked again at `at`.
#[derive(Debug)]
pub(super) struct ReplyRetry {
    pub(super) turn: u32,
    pub(super) rounds: u32,
    pub(super) at: Micros,
    pub(super) reason: String,
}

/// The model stopped answering at `since` (first unanswered attempt), for `reason`.
#[derive(Debug)]
pub(super) struct LlmDown {
    pub(super) since: Micros,
    pub(super) reason: String,
    pub(super) attempts: u32,
    /// The caller turn the hold line was said for.
    pub(super) held_turn: Option<u32>,
}

impl Conversation {
    /// The model could not answer the current reply (its breaker is open, it failed or broke
    /// off before its first words). The caller hears the hold line once per turn, and the
    /// reply is asked again with backoff (so the breaker's half-open probes get their chance);
    /// only when the model has not answered for the persona's `reply_wait_ms` does
    /// `on_vendor_failure` apply. Each call waits from its own first unanswered attempt, so
    /// an outage ends calls one by one as their waits run out, never all at once.
    pub(super) fn reply_unavailable(&mut self, now: Micros, reason: &str, out: &mut Vec<Action>) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        out.push(Action::LlmCancel { reply: reply.id });
        if !matches!(self.phase, Phase::Active) {
            return;
        }
        let down = self.llm_down.get_or_insert_with(|| LlmDown {
            since: now,
            reason: reason.to_owned(),
            attempts: 0,
            held_turn: None,
        });
        let bound = down.since + self.profile.persona.reply_wait_ms * MS;
        if now >= bound {
            let waited = now.saturating_sub(down.since) / MS;
            let reason = if waited == 0 {
                reason.to_owned()
            } else {
                format!("{reason} (no answer for {waited} ms)")
            };
            self.vendor_failed(now, "llm", &reason, out);
            return;
        }
        let wait = REPLY_RETRY_FIRST
            .saturating_mul(1 << down.attempts.min(8))
            .min(REPLY_RETRY_CAP);
        down.attempts += 1;
        tracing::debug!(
            reason,
            attempts = down.attempts,
            "the model could not answer; retrying"
        );
        let hold = down.held_turn != Some(reply.turn);
        down.held_turn = Some(reply.turn);
        self.reply_retry = Some(ReplyRetry {
            turn: reply.turn,
            rounds: reply.rounds,
            at: (now + wait).min(bound),
            reason: reason.to_owned(),
        });
        if hold && !self.utterances.iter().any(|u| u.kind.interruptible()) {
            let line = self.profile.persona.hold.clone();
            self.say(now, Kind::Filler, &line, After::Listen, out);
        }
    }

    /// A reply started arriving: a model outage, if there was one, is over.
    pub(super) fn llm_answering(&mut self, now: Micros, out: &mut Vec<Action>) {
        if let Some(down) = self.llm_down.take() {
            out.push(Action::Record(ConversationRecord::VendorGap {
                vendor: "llm".into(),
                gap_ms: now.saturating_sub(down.since) / MS,
                reason: down.reason,
            }));
        }
    }

    /// The retry of an unanswered reply is due.
    pub(super) fn retry_reply(&mut self, now: Micros, out: &mut Vec<Action>) {
        let Some(retry) = self.reply_retry.take() else {
            return;
        };
        if !matches!(self.phase, Phase::Active) || self.reply.is_some() {
            return;
        }
        let bound = self
            .llm_down
            .as_ref()
            .map_or(now, |d| d.since + self.profile.persona.reply_wait_ms * MS);
        if now >= bound {
            let waited = self
                .llm_down
                .as_ref()
                .map_or(0, |d| now.saturating_sub(d.since) / MS);
            let reason = format!("{} (no answer for {waited} ms)", retry.reason);
            self.vendor_failed(now, "llm", &reason, out);
            return;
        }
        // The latency of a held turn is the outage's, not the pipeline's: not recorded.
        let timing = Timing {
            turn_end: now,
            llm_request: now,
            recorded: true,
            ..Timing::default()
        };
        self.request_reply(retry.turn, retry.rounds, timing, out);
    }
}
