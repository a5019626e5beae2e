//! The events a call's journal records: the carrier's facts about a leg, commands (hang up,
//! transfer), timers, and what the media endpoint and the conversation report.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CallSpec, EndReason, HangupCause, PhoneNumber, TimerKind};

/// A carrier-reported fact about a call leg.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CarrierEvent {
    /// The carrier accepted the dial and named the leg.
    Initiated {
        /// The carrier's leg id.
        carrier_call_id: String,
    },
    /// The far end is alerting.
    Ringing,
    /// The carrier created the leg and it is alerting: `initiated` and `ringing` in one fact
    /// (Telnyx reports an outbound leg once, with `call.initiated`).
    RingingLeg {
        /// The carrier's leg id.
        carrier_call_id: String,
    },
    /// The far end answered.
    Answered,
    /// The leg ended.
    HungUp {
        /// Why.
        cause: HangupCause,
    },
    /// Answering-machine detection finished.
    MachineDetection {
        /// What answered.
        result: AmdResult,
    },
    /// The carrier started streaming the call's media to us.
    StreamStarted,
    /// The carrier stopped streaming the call's media.
    StreamStopped,
    /// The carrier could not stream the call's media (the call itself goes on).
    StreamFailed {
        /// The carrier's reason.
        reason: String,
    },
    /// A transfer connected the call to another party.
    Bridged {
        /// The party the call is now connected to, when the carrier says.
        to: Option<String>,
    },
    /// The caller pressed a key.
    Dtmf {
        /// `0-9`, `*`, `#`, `A-D`.
        digit: String,
    },
}

impl CarrierEvent {
    /// The leg the fact names itself (the carrier's answer to a dial names its leg).
    pub fn named_leg(&self) -> Option<&str> {
        match self {
            Self::Initiated { carrier_call_id } | Self::RingingLeg { carrier_call_id } => {
                Some(carrier_call_id)
            }
            _ => None,
        }
    }

    /// A sign that the leg is (still) up.
    pub fn is_alive(&self) -> bool {
        matches!(
            self,
            Self::Initiated { .. } | Self::Ringing | Self::RingingLeg { .. } | Self::Answered
        )
    }

    /// Facts that annotate the call's journal without moving its status. They are recorded
    /// whenever they arrive (a media stream often stops after the hangup) and never refused.
    pub fn is_annotation(&self) -> bool {
        matches!(
            self,
            Self::MachineDetection { .. }
                | Self::StreamStarted
                | Self::StreamStopped
                | Self::StreamFailed { .. }
                | Self::Bridged { .. }
                | Self::Dtmf { .. }
        )
    }
}

/// Result of answering-machine detection, normalised over the carrier's variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmdResult {
    /// A person answered.
    Human,
    /// A machine (voicemail, fax) answered.
    Machine,
    /// The detector could not tell.
    NotSure,
}

/// What our own media endpoint measured on a call's stream (journaled when it ends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaReport {
    /// The carrier's stream id.
    pub stream_id: String,
    /// Audio frames received from the carrier.
    pub frames_in: u64,
    /// Audio frames sent back.
    pub frames_out: u64,
    /// Missing inbound chunks.
    pub gaps: u64,
    /// Interarrival jitter estimate (RFC 3550), milliseconds.
    pub jitter_ms: f64,
    /// How long the stream lasted, milliseconds.
    pub duration_ms: u64,
}

/// Everything that can happen to a call. Journaled when it changes the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The call was created (first journal entry; see [`start`](super::start)).
    Created {
        /// The validated spec.
        spec: CallSpec,
    },
    /// A fact from the carrier.
    Carrier {
        /// The fact.
        event: CarrierEvent,
        /// The carrier's leg the fact is about, when the carrier names it. A fact of another
        /// leg than the call's own never moves the call (see [`Event::StrayLeg`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leg: Option<String>,
        /// When the carrier says it happened. Answer and end times come from here (bounded by
        /// the call's earlier times and by `now`), so a fact applied late (after a restart or
        /// a takeover) does not stretch the call's durations.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<DateTime<Utc>>,
    },
    /// A fact of a leg that is not the call's own: a second leg of a dial the carrier did not
    /// deduplicate. It never changes the call's status or times; the leg is hung up (unless
    /// the fact is its end).
    StrayLeg {
        /// The other leg.
        leg: String,
        /// What the carrier reported about it.
        fact: CarrierEvent,
    },
    /// The carrier refused our dial or answer command.
    CommandRejected {
        /// What the carrier said.
        detail: String,
    },
    /// An API client asked to hang up or cancel.
    HangupRequested,
    /// A deadline timer fired.
    TimerFired {
        /// Which deadline.
        kind: TimerKind,
        /// The deadline the timer was armed for (stale timers are ignored).
        deadline: DateTime<Utc>,
    },
    /// Reconciliation found that the carrier no longer knows the call.
    CarrierLost,
    /// The carrier still has a live leg for a call that ended (a late answer, a lost hangup):
    /// hang it up.
    ReleaseLeg,
    /// The carrier confirmed our hangup (or reports the leg gone).
    LegReleased,
    /// The carrier accepted our hangup of a stray leg (a second leg of the call's dial): it
    /// is over, whether or not its end is ever reported.
    StrayReleased {
        /// The other leg.
        leg: String,
    },
    /// The engine gave up on the call's actor after repeated crashes.
    EngineFault {
        /// What the supervisor saw.
        detail: String,
    },
    /// An API client asked to transfer the answered call to a person.
    TransferRequested {
        /// Where to.
        to: PhoneNumber,
    },
    /// Our media endpoint's report on a stream that ended.
    MediaReported {
        /// The figures.
        report: MediaReport,
    },
    /// A fact of the conversation (transcript, sentiment, escalation, ...). Recorded in any
    /// status (a final transcript may arrive after the hangup); never moves the call.
    Conversation {
        /// The fact.
        record: crate::machine::record::ConversationRecord,
    },
    /// The AI agent ends the answered call (`agent_ended`, `voicemail`, `silence`,
    /// `voice_failure`).
    AgentHangup {
        /// Why.
        reason: EndReason,
    },
}

impl Event {
    /// A carrier fact that names no leg and no time (the leg is the call's own).
    pub fn carrier(event: CarrierEvent) -> Event {
        Event::Carrier {
            event,
            leg: None,
            at: None,
        }
    }

    /// Short name stored in the journal's `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Created { .. } => "created",
            Event::StrayLeg { .. } => "stray_leg",
            Event::Carrier { event, .. } => match event {
                CarrierEvent::Initiated { .. } => "initiated",
                CarrierEvent::Ringing | CarrierEvent::RingingLeg { .. } => "ringing",
                CarrierEvent::Answered => "answered",
                CarrierEvent::HungUp { .. } => "hangup",
                CarrierEvent::MachineDetection { .. } => "machine_detection",
                CarrierEvent::StreamStarted => "stream_started",
                CarrierEvent::StreamStopped => "stream_stopped",
                CarrierEvent::StreamFailed { .. } => "stream_failed",
                CarrierEvent::Bridged { .. } => "bridged",
                CarrierEvent::Dtmf { .. } => "dtmf",
            },
            Event::CommandRejected { .. } => "command_rejected",
            Event::HangupRequested => "hangup_requested",
            Event::TimerFired { .. } => "timer_fired",
            Event::CarrierLost => "carrier_lost",
            Event::ReleaseLeg => "release_leg",
            Event::LegReleased => "leg_released",
            Event::StrayReleased { .. } => "stray_released",
            Event::EngineFault { .. } => "engine_fault",
            Event::TransferRequested { .. } => "transfer_requested",
            Event::MediaReported { .. } => "media_reported",
            Event::Conversation { record } => record.kind(),
            Event::AgentHangup { .. } => "agent_hangup",
        }
    }
}
