//! What becomes of a campaign's contact after each attempt: the outcome of the attempt's
//! call, the retry policy per outcome, and the contact's next state.
//!
//! Every attempt of a contact is one call, made with an idempotency key derived from the
//! campaign, the contact and the attempt number ([`idempotency_key`]): a dispatcher that
//! crashes after choosing an attempt and before learning its call makes the same call again,
//! and the engine answers with the call already made.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::machine::{Call, CallStatus, EndReason};

/// Most attempts a contact may be given under any outcome.
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest delay before a retry (a week).
pub const MAX_RETRY_DELAY_SECS: u64 = 7 * 86_400;

/// How an attempt ended, for the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A person answered: the contact is done.
    Answered,
    /// Nobody answered before the ring timeout.
    NoAnswer,
    /// The line was busy.
    Busy,
    /// An answering machine answered.
    Voicemail,
    /// The call could not be made or broke (refused, unknown number, carrier or engine fault).
    Failed,
    /// The call was canceled (an API client, or the campaign's cancel).
    Canceled,
}

impl Outcome {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::NoAnswer => "no_answer",
            Outcome::Busy => "busy",
            Outcome::Voicemail => "voicemail",
            Outcome::Failed => "failed",
            Outcome::Canceled => "canceled",
        }
    }

    /// The outcome of an ended call.
    pub fn of(call: &Call) -> Outcome {
        use EndReason as E;
        match call.end_reason {
            Some(E::Voicemail) => Outcome::Voicemail,
            Some(E::NoAnswer | E::RingTimeout) => Outcome::NoAnswer,
            Some(E::Busy) => Outcome::Busy,
            Some(E::CanceledByUser) => Outcome::Canceled,
            _ if call.answered_at.is_some() && call.status == CallStatus::Completed => {
                Outcome::Answered
            }
            _ => Outcome::Failed,
        }
    }
}

/// Attempts and delay for one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRule {
    /// The most attempts a contact gets while its calls end this way (the first included):
    /// 1 is no retry.
    pub attempts: u32,
    /// Seconds from the end of the attempt to the next (which then waits for a window).
    pub delay_secs: u64,
}

/// Retries per outcome. Answered contacts are never called again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Nobody answered.
    #[serde(default = "defaults::no_answer")]
    pub no_answer: RetryRule,
    /// Busy.
    #[serde(default = "defaults::busy")]
    pub busy: RetryRule,
    /// An answering machine.
    #[serde(default = "defaults::voicemail")]
    pub voicemail: RetryRule,
    /// The call failed.
    #[serde(default = "defaults::failed")]
    pub failed: RetryRule,
}

mod defaults {
    use super::RetryRule;

    pub fn no_answer() -> RetryRule {
        RetryRule {
            attempts: 3,
            delay_secs: 4 * 3600,
        }
    }
    pub fn busy() -> RetryRule {
        RetryRule {
            attempts: 3,
            delay_secs: 15 * 60,
        }
    }
    pub fn voicemail() -> RetryRule {
        RetryRule {
            attempts: 2,
            delay_secs: 24 * 3600,
        }
    }
    pub fn failed() -> RetryRule {
        RetryRule {
            attempts: 2,
            delay_secs: 3600,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            no_answer: defaults::no_answer(),
            busy: defaults::busy(),
            voicemail: defaults::voicemail(),
            failed: defaults::failed(),
        }
    }
}

impl RetryPolicy {
    /// Checks the bounds: 1 to [`MAX_ATTEMPTS`] attempts, a delay of at most a week.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rule) in [
            ("no_answer", self.no_answer),
            ("busy", self.busy),
            ("voicemail", self.voicemail),
            ("failed", self.failed),
        ] {
            if !(1..=MAX_ATTEMPTS).contains(&rule.attempts) {
                return Err(format!(
                    "retry.{name}.attempts must be 1 to {MAX_ATTEMPTS}, not {}",
                    rule.attempts
                ));
            }
            if rule.delay_secs > MAX_RETRY_DELAY_SECS {
                return Err(format!(
                    "retry.{name}.delay_secs must be at most {MAX_RETRY_DELAY_SECS} (a week), not {}",
                    rule.delay_secs
                ));
            }
        }
        Ok(())
    }

    /// The rule of an outcome that may be retried.
    pub fn rule(&self, outcome: Outcome) -> Option<RetryRule> {
        match outcome {
            Outcome::NoAnswer => Some(self.no_answer),
            Outcome::Busy => Some(self.busy),
            Outcome::Voicemail => Some(self.voicemail),
            Outcome::Failed => Some(self.failed),
            Outcome::Answered | Outcome::Canceled => None,
        }
    }
}

/// Where a contact stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactState {
    /// Not dialed yet.
    Pending,
    /// Waiting for its next attempt (`next_attempt_at`).
    Scheduled,
    /// An attempt's call is under way.
    Dialing,
    /// A person answered. Final.
    Completed,
    /// Its attempts are used up. Final.
    Exhausted,
    /// On the organization's do-not-call list. Final.
    DoNotCall,
    /// The campaign was canceled before it was done. Final.
    Canceled,
}

impl ContactState {
    /// Every state, in the order progress counts are listed.
    pub const ALL: [ContactState; 7] = [
        ContactState::Pending,
        ContactState::Scheduled,
        ContactState::Dialing,
        ContactState::Completed,
        ContactState::Exhausted,
        ContactState::DoNotCall,
        ContactState::Canceled,
    ];

    /// Its name in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ContactState::Pending => "pending",
            ContactState::Scheduled => "scheduled",
            ContactState::Dialing => "dialing",
            ContactState::Completed => "completed",
            ContactState::Exhausted => "exhausted",
            ContactState::DoNotCall => "do_not_call",
            ContactState::Canceled => "canceled",
        }
    }

    /// From its name.
    pub fn parse(s: &str) -> Option<ContactState> {
        ContactState::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Nothing more happens to the contact.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ContactState::Completed
                | ContactState::Exhausted
                | ContactState::DoNotCall
                | ContactState::Canceled
        )
    }
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Done: `Completed`, `Exhausted` or `Canceled`.
    Final(ContactState),
    /// Another attempt, not before `at` (and then inside a window).
    Retry {
        /// Earliest time of the next attempt.
        at: DateTime<Utc>,
    },
}

/// What follows attempt number `attempt` (1-based) of a contact that ended with `outcome` at
/// `ended_at`.
pub fn after_attempt(
    policy: &RetryPolicy,
    attempt: u32,
    outcome: Outcome,
    ended_at: DateTime<Utc>,
) -> Next {
    match outcome {
        Outcome::Answered => Next::Final(ContactState::Completed),
        Outcome::Canceled => Next::Final(ContactState::Canceled),
        other => match policy.rule(other) {
            Some(rule) if attempt < rule.attempts.min(MAX_ATTEMPTS) => Next::Retry {
                at: ended_at + Duration::seconds(rule.delay_secs as i64),
            },
            _ => Next::Final(ContactState::Exhausted),
        },
    }
}

/// The idempotency key of a contact's attempt: the same for every dispatcher that makes it.
pub fn idempotency_key(campaign: Uuid, contact: Uuid, attempt: u32) -> String {
    format!(
        "campaign:{}:{}:{attempt}",
        campaign.simple(),
        contact.simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn retries_follow_the_rule_of_the_outcome() {
        let p = RetryPolicy::default();
        let at = t("2026-12-07T10:00:00Z");
        assert_eq!(
            after_attempt(&p, 1, Outcome::Busy, at),
            Next::Retry {
                at: t("2026-12-07T10:15:00Z")
            }
        );
        assert_eq!(
            after_attempt(&p, 2, Outcome::NoAnswer, at),
            Next::Retry {
                at: t("2026-12-07T14:00:00Z")
            }
        );
        assert_eq!(
            after_attempt(&p, 3, Outcome::NoAnswer, at),
            Next::Final(ContactState::Exhausted)
        );
        assert_eq!(
            after_attempt(&p, 1, Outcome::Answered, at),
            Next::Final(ContactState::Completed)
        );
        assert_eq!(
            after_attempt(&p, 1, Outcome::Canceled, at),
            Next::Final(ContactState::Canceled)
        );
        let once = RetryPolicy {
            failed: RetryRule {
                attempts: 1,
                delay_secs: 0,
            },
            ..p
        };
        assert_eq!(
            after_attempt(&once, 1, Outcome::Failed, at),
            Next::Final(ContactState::Exhausted)
        );
    }

    #[test]
    fn a_policy_is_bounded_and_takes_defaults_per_outcome() {
        let p: RetryPolicy = serde_json::from_value(serde_json::json!({
            "busy": {"attempts": 5, "delay_secs": 60}
        }))
        .unwrap();
        assert_eq!(p.busy.attempts, 5);
        assert_eq!(p.no_answer, RetryPolicy::default().no_answer);
        assert!(p.validate().is_ok());
        for bad in [
            serde_json::json!({"busy": {"attempts": 0, "delay_secs": 60}}),
            serde_json::json!({"busy": {"attempts": 11, "delay_secs": 60}}),
            serde_json::json!({"busy": {"attempts": 2, "delay_secs": 700000}}),
        ] {
            let p: RetryPolicy = serde_json::from_value(bad.clone()).unwrap();
            assert!(p.validate().is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<RetryPolicy>(serde_json::json!({"bust": {}})).is_err());
    }

    #[test]
    fn states_round_trip_and_attempt_keys_are_stable() {
        for s in ContactState::ALL {
            assert_eq!(ContactState::parse(s.as_str()), Some(s));
        }
        let (c, k) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(idempotency_key(c, k, 3), idempotency_key(c, k, 3));
        assert_ne!(idempotency_key(c, k, 3), idempotency_key(c, k, 4));
        assert!(idempotency_key(c, k, 3).len() <= 100);
    }
}
