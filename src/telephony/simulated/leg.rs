//! A simulated leg's script as data: the steps it plays and when, read back from its Redis
//! hash, its status at a given time, and the inbox item each step becomes. No I/O: storing and
//! playing legs is the parent module's.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use iace_actors::machine::{CallId, CarrierEvent, HangupCause};
use iace_actors::ports::{InboxItem, LegStatus};
use uuid::Uuid;

use super::VENDOR;

/// One step of a leg's script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Initiated,
    Ringing,
    Answered,
    HangUp(HangupCause),
}

impl Step {
    pub(super) fn kind(self) -> &'static str {
        match self {
            Step::Initiated => "initiated",
            Step::Ringing => "ringing",
            Step::Answered => "answered",
            Step::HangUp(_) => "hangup",
        }
    }
}

/// A leg as stored in Redis.
#[derive(Debug, Clone)]
pub(super) struct Leg {
    pub(super) id: String,
    pub(super) call_id: CallId,
    pub(super) initiated_at: Option<DateTime<Utc>>,
    pub(super) ringing_at: Option<DateTime<Utc>>,
    pub(super) answered_at: Option<DateTime<Utc>>,
    /// Scheduled end (the far end hangs up, or the busy signal).
    pub(super) hangup_at: Option<DateTime<Utc>>,
    /// Cause of the scheduled end.
    pub(super) hangup_cause: HangupCause,
    /// Set once the leg is over (scheduled end reached, or a hangup command).
    pub(super) ended: Option<(DateTime<Utc>, HangupCause)>,
}

impl Leg {
    pub(super) fn parse(id: &str, h: &HashMap<String, String>) -> Option<Leg> {
        let time = |field: &str| {
            h.get(field)
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(DateTime::from_timestamp_millis)
        };
        let call_id = Uuid::parse_str(h.get("call_id")?).ok()?;
        let ended = match (time("ended_at"), h.get("ended_cause")) {
            (Some(at), Some(cause)) => Some((at, parse_cause(cause))),
            _ => None,
        };
        Some(Leg {
            id: id.to_owned(),
            call_id,
            initiated_at: time("initiated_at"),
            ringing_at: time("ringing_at"),
            answered_at: time("answered_at"),
            hangup_at: time("hangup_at"),
            hangup_cause: h
                .get("hangup_cause")
                .map(|c| parse_cause(c))
                .unwrap_or(HangupCause::NormalClearing),
            ended,
        })
    }

    /// The leg's script, in time order.
    pub(super) fn plan(&self) -> Vec<(DateTime<Utc>, Step)> {
        let mut steps: Vec<(DateTime<Utc>, Step)> = [
            (self.initiated_at, Step::Initiated),
            (self.ringing_at, Step::Ringing),
            (self.answered_at, Step::Answered),
            (self.hangup_at, Step::HangUp(self.hangup_cause)),
        ]
        .into_iter()
        .filter_map(|(at, step)| at.map(|at| (at, step)))
        .collect();
        // Stable: equal times keep the script order.
        steps.sort_by_key(|(at, _)| *at);
        steps
    }

    /// The status at `now`, from the stored times.
    pub(super) fn status_at(&self, now: DateTime<Utc>) -> LegStatus {
        if let Some((_, cause)) = self.ended {
            return LegStatus::Ended(cause);
        }
        if let Some(end) = self.hangup_at {
            if now >= end {
                return LegStatus::Ended(self.hangup_cause);
            }
        }
        match self.answered_at {
            Some(answered) if now >= answered => LegStatus::Answered,
            _ => LegStatus::Ringing,
        }
    }

    pub(super) fn item(&self, at: DateTime<Utc>, step: Step) -> InboxItem {
        let event = match step {
            Step::Initiated => CarrierEvent::Initiated {
                carrier_call_id: self.id.clone(),
            },
            Step::Ringing => CarrierEvent::Ringing,
            Step::Answered => CarrierEvent::Answered,
            Step::HangUp(cause) => CarrierEvent::HungUp { cause },
        };
        InboxItem {
            carrier_leg: Some(self.id.clone()),
            vendor: VENDOR.to_owned(),
            event_id: format!("{}:{}", self.id, step.kind()),
            call_id: self.call_id,
            occurred_at: at,
            event,
        }
    }
}

pub(super) fn cause_str(cause: HangupCause) -> &'static str {
    match cause {
        HangupCause::NormalClearing => "normal_clearing",
        HangupCause::Busy => "busy",
        HangupCause::NoAnswer => "no_answer",
        HangupCause::Rejected => "rejected",
        HangupCause::OriginatorCancel => "originator_cancel",
        HangupCause::NotFound => "not_found",
        HangupCause::TimeLimit => "time_limit",
        HangupCause::Unspecified => "unspecified",
    }
}

fn parse_cause(s: &str) -> HangupCause {
    match s {
        "normal_clearing" => HangupCause::NormalClearing,
        "busy" => HangupCause::Busy,
        "no_answer" => HangupCause::NoAnswer,
        "rejected" => HangupCause::Rejected,
        "originator_cancel" => HangupCause::OriginatorCancel,
        "not_found" => HangupCause::NotFound,
        "time_limit" => HangupCause::TimeLimit,
        _ => HangupCause::Unspecified,
    }
}
