//! Ids and the value types a call is described with: its status, why it ended, its direction,
//! its deadline timer and the carrier's hangup causes. Each has one string form, shared by the
//! store, the API and the journal.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifier of a call (also the Telnyx `client_state` and the idempotency prefix of every
/// command sent for it).
pub type CallId = Uuid;
/// Identifier of a tenant.
pub type OrganizationId = Uuid;
/// Identifier of an agent (persona + voice).
pub type AgentId = Uuid;
/// Identifier of a customer.
pub type CustomerId = Uuid;

/// Where a call is in its life. Exactly one value; no flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// Created, the dial has not been confirmed as ringing yet.
    Pending,
    /// The far end is alerting (outbound) or we are being offered the call (inbound).
    Ringing,
    /// Answered: media flows.
    InProgress,
    /// Ended after having been answered.
    Completed,
    /// Ended without a conversation (no answer, busy, carrier error, ...).
    Failed,
    /// Ended on request before it was answered.
    Canceled,
}

impl CallStatus {
    /// Terminal states are final.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }

    /// Monotone rank: a call's rank never decreases.
    pub fn rank(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Ringing => 1,
            Self::InProgress => 2,
            Self::Completed | Self::Failed | Self::Canceled => 3,
        }
    }

    /// The wire / database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ringing => "ringing",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Parses the wire / database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "ringing" => Self::Ringing,
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// Every status, in rank order.
    pub const ALL: [CallStatus; 6] = [
        Self::Pending,
        Self::Ringing,
        Self::InProgress,
        Self::Completed,
        Self::Failed,
        Self::Canceled,
    ];
}

impl std::fmt::Display for CallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// An answered call ended normally (either side hung up).
    NormalClearing,
    /// The far end did not answer.
    NoAnswer,
    /// The far end was busy.
    Busy,
    /// The far end rejected the call.
    Rejected,
    /// The called number does not exist or cannot be reached.
    NotFound,
    /// The caller of an inbound call gave up before it was answered.
    CallerAbandoned,
    /// Our ring timeout expired before the call was answered.
    RingTimeout,
    /// The call reached its maximum duration and was cut off.
    MaxDuration,
    /// An API client hung up an answered call.
    HangupRequested,
    /// An API client canceled the call before it was answered.
    CanceledByUser,
    /// The carrier refused the dial or answer command.
    VendorError,
    /// On recovery the carrier no longer knew the call.
    CarrierLost,
    /// The engine could not keep the call's actor alive (repeated crashes).
    EngineFault,
    /// The AI agent ended the conversation (its `end_call` tool).
    AgentEnded,
    /// An answering machine answered; the agent hung up or left its message.
    Voicemail,
    /// The caller stayed silent; the agent said goodbye.
    Silence,
    /// A voice vendor (speech-to-text, speech synthesis, the model) failed during the call
    /// and the agent, configured to end rather than transfer, apologised and hung up.
    VoiceFailure,
}

impl EndReason {
    /// The wire / database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NormalClearing => "normal_clearing",
            Self::NoAnswer => "no_answer",
            Self::Busy => "busy",
            Self::Rejected => "rejected",
            Self::NotFound => "not_found",
            Self::CallerAbandoned => "caller_abandoned",
            Self::RingTimeout => "ring_timeout",
            Self::MaxDuration => "max_duration",
            Self::HangupRequested => "hangup_requested",
            Self::CanceledByUser => "canceled_by_user",
            Self::VendorError => "vendor_error",
            Self::CarrierLost => "carrier_lost",
            Self::EngineFault => "engine_fault",
            Self::AgentEnded => "agent_ended",
            Self::Voicemail => "voicemail",
            Self::Silence => "silence",
            Self::VoiceFailure => "voice_failure",
        }
    }

    /// Parses the wire / database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

/// Who placed the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// We dial out.
    Outbound,
    /// A caller reached one of our numbers.
    Inbound,
}

impl Direction {
    /// The wire / database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }

    /// Parses the wire / database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "outbound" => Some(Self::Outbound),
            "inbound" => Some(Self::Inbound),
            _ => None,
        }
    }
}

/// Which deadline a timer stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// Not answered in time (covers pending and ringing).
    RingTimeout,
    /// Answered call reached its maximum duration.
    MaxDuration,
}

impl TimerKind {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RingTimeout => "ring_timeout",
            Self::MaxDuration => "max_duration",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ring_timeout" => Some(Self::RingTimeout),
            "max_duration" => Some(Self::MaxDuration),
            _ => None,
        }
    }
}

/// The one pending deadline of a call. Persisted as `next_deadline_at` so that timers survive a
/// process restart (ractor timers die with the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// What happens when it passes.
    pub kind: TimerKind,
    /// When it passes.
    pub at: DateTime<Utc>,
}

/// Why a carrier ended a call leg (normalised from the vendor's hangup cause).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupCause {
    /// One side hung up normally.
    NormalClearing,
    /// The far end was busy.
    Busy,
    /// Nobody answered before the carrier gave up.
    NoAnswer,
    /// The far end declined.
    Rejected,
    /// The originator canceled before answer.
    OriginatorCancel,
    /// The called number does not exist.
    NotFound,
    /// The carrier's own limit on the call's length was reached.
    TimeLimit,
    /// Anything else.
    Unspecified,
}
