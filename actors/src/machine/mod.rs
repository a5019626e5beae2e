//! The pure call state machine.
//!
//! `pending -> ringing -> in_progress -> completed`, with `failed` and `canceled` as the other
//! terminal states; inbound calls enter at `ringing`. [`step`] applies one [`Event`] to a
//! [`Call`] and returns the [`Effect`]s the caller must execute *after* persisting the new
//! snapshot.
//!
//! This module must stay pure: it never reads a clock, a random source or any I/O. `now` is an
//! argument, so the same journal replayed with the same timestamps yields the same snapshot
//! ([`replay`]). Carrier events are facts about the world: a duplicate or stale one is a no-op,
//! never an error, and never moves a call backwards. Commands (an API hangup) on a terminal call
//! are refused with a [`TransitionError`].

mod phone;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use phone::{InvalidPhoneNumber, PhoneNumber};

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

/// Everything needed to start a call; validated before anything is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallSpec {
    /// The call's id (from the IdGen port).
    pub id: CallId,
    /// Owning tenant.
    pub organization_id: OrganizationId,
    /// Outbound calls start pending, inbound calls start ringing.
    pub direction: Direction,
    /// Calling party, E.164.
    pub from: PhoneNumber,
    /// Called party, E.164.
    pub to: PhoneNumber,
    /// The agent that handles the call.
    pub agent_id: AgentId,
    /// The customer on the other end, when known.
    pub customer_id: Option<CustomerId>,
    /// Free-form client metadata, returned as given.
    pub metadata: serde_json::Value,
    /// Seconds the call may stay unanswered.
    pub ring_timeout_secs: u32,
    /// Seconds an answered call may last.
    pub max_duration_secs: u32,
    /// Inbound calls only: the carrier's id of the leg that reached us. Part of the spec (not a
    /// later event) because the call exists only because that leg does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_leg_id: Option<String>,
}

/// The snapshot of one call: what the `call` row stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Immutable facts the call was created with.
    pub spec: CallSpec,
    /// Current status.
    pub status: CallStatus,
    /// Why it ended (set exactly when the status is terminal).
    pub end_reason: Option<EndReason>,
    /// The carrier's id for the leg, once known.
    pub carrier_call_id: Option<String>,
    /// Bumped by every applied event; equals the seq of the last journal entry.
    pub version: i64,
    /// Fencing epoch of the shard owner that last wrote the row (set by the store, not here).
    pub owner_epoch: i64,
    /// The pending timer, if any.
    pub deadline: Option<Deadline>,
    /// When the call was created.
    pub created_at: DateTime<Utc>,
    /// When the last event was applied.
    pub updated_at: DateTime<Utc>,
    /// When ringing started.
    pub ringing_at: Option<DateTime<Utc>>,
    /// When it was answered.
    pub answered_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// The call ended with a hangup command to the carrier that has not been confirmed yet.
    /// While set, the call keeps its actor (and is recovered after a crash) until the leg is
    /// known to be released: no phone line is ever left open.
    #[serde(default)]
    pub release_pending: bool,
    /// Other legs the carrier reported for this outbound call (a repeated dial it did not
    /// deduplicate): hung up, never the call's. Kept so a repeated fact about one changes
    /// nothing, like every other duplicate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stray_legs: Vec<StrayLeg>,
}

/// A leg of a call that is not its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrayLeg {
    /// The carrier's id of the leg.
    pub leg: String,
    /// The carrier reported its end.
    pub ended: bool,
}

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
    /// The call was created (first journal entry; see [`start`]).
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
        record: crate::voice::record::ConversationRecord,
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
            Event::EngineFault { .. } => "engine_fault",
            Event::TransferRequested { .. } => "transfer_requested",
            Event::MediaReported { .. } => "media_reported",
            Event::Conversation { record } => record.kind(),
            Event::AgentHangup { .. } => "agent_hangup",
        }
    }
}

/// What the CallActor must do after the new snapshot is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// Place the outbound call.
    Dial {
        /// Calling party.
        from: PhoneNumber,
        /// Called party.
        to: PhoneNumber,
        /// How long the carrier should let it ring.
        timeout_secs: u32,
    },
    /// Answer the inbound call.
    Answer,
    /// Transfer the answered call to another number.
    Transfer {
        /// Where to.
        to: PhoneNumber,
    },
    /// Hang up a second leg the carrier reports for this call (a dial that was retried after
    /// its answer was lost and that the carrier did not deduplicate): the call keeps its
    /// first leg; nobody is left ringing on the other.
    HangupStray {
        /// The other leg.
        carrier_call_id: String,
    },
    /// Hang the leg up.
    Hangup {
        /// Why we hang up.
        reason: EndReason,
    },
    /// (Re-)arm the call's single deadline timer.
    ArmTimer {
        /// Which deadline.
        kind: TimerKind,
        /// When.
        at: DateTime<Utc>,
    },
    /// Drop the call's timer.
    CancelTimer,
}

/// A refused command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The call already ended; terminal states are final.
    #[error("call is already {status}")]
    Terminal {
        /// The call's current status.
        status: CallStatus,
    },
    /// The command needs another status (e.g. a transfer needs an answered call).
    #[error("the call is {status}; {needs}")]
    NotNow {
        /// The call's current status.
        status: CallStatus,
        /// What the command needs.
        needs: &'static str,
    },
    /// The first event of a journal must be `created`, and only the first.
    #[error("event `{kind}` is not valid here")]
    Invalid {
        /// The offending event's kind.
        kind: &'static str,
    },
}

/// Creates the snapshot of a new call and the effects that start it: outbound calls dial,
/// inbound calls are answered; both arm the ring timeout.
pub fn start(spec: CallSpec, now: DateTime<Utc>) -> (Call, Vec<Effect>) {
    let ring_deadline = Deadline {
        kind: TimerKind::RingTimeout,
        at: now + Duration::seconds(i64::from(spec.ring_timeout_secs)),
    };
    let (status, ringing_at, first) = match spec.direction {
        Direction::Outbound => (
            CallStatus::Pending,
            None,
            Effect::Dial {
                from: spec.from.clone(),
                to: spec.to.clone(),
                timeout_secs: spec.ring_timeout_secs,
            },
        ),
        Direction::Inbound => (CallStatus::Ringing, Some(now), Effect::Answer),
    };
    let carrier_call_id = match spec.direction {
        Direction::Inbound => spec.inbound_leg_id.clone(),
        Direction::Outbound => None,
    };
    let call = Call {
        spec,
        status,
        end_reason: None,
        carrier_call_id,
        version: 1,
        owner_epoch: 0,
        deadline: Some(ring_deadline),
        created_at: now,
        updated_at: now,
        ringing_at,
        answered_at: None,
        ended_at: None,
        release_pending: false,
        stray_legs: Vec::new(),
    };
    let effects = vec![
        first,
        Effect::ArmTimer {
            kind: ring_deadline.kind,
            at: ring_deadline.at,
        },
    ];
    (call, effects)
}

/// Applies one event. On a change the call's `version` is bumped by one (the caller journals
/// the event with `seq = version`); an unchanged version means the event was a duplicate or
/// stale and must not be journaled.
pub fn step(
    call: &mut Call,
    event: Event,
    now: DateTime<Utc>,
) -> Result<Vec<Effect>, TransitionError> {
    use CallStatus::*;
    let status = call.status;
    let mut effects = Vec::new();
    match event {
        Event::Created { .. } => return Err(TransitionError::Invalid { kind: "created" }),
        Event::StrayLeg { leg, fact } => {
            if !stray(call, &leg) {
                return Err(TransitionError::Invalid { kind: "stray_leg" });
            }
            let ended = matches!(fact, CarrierEvent::HungUp { .. });
            match call.stray_legs.iter_mut().find(|s| s.leg == leg) {
                None => {
                    call.stray_legs.push(StrayLeg {
                        leg: leg.clone(),
                        ended,
                    });
                    touch(call, now);
                    if !ended {
                        effects.push(Effect::HangupStray {
                            carrier_call_id: leg,
                        });
                    }
                }
                Some(known) if ended && !known.ended => {
                    known.ended = true;
                    touch(call, now);
                }
                Some(known) if !known.ended && fact.is_alive() => {
                    // Still up after our hangup: hang up again (nothing new to journal).
                    effects.push(Effect::HangupStray {
                        carrier_call_id: leg,
                    });
                }
                Some(_) => {}
            }
        }
        Event::Carrier { event, leg, at } => {
            let leg = leg.or_else(|| event.named_leg().map(str::to_owned));
            if let Some(other) = leg.as_deref().filter(|l| stray(call, l)) {
                // Also when a caller did not classify it first (see [`classify`]).
                return step(
                    call,
                    Event::StrayLeg {
                        leg: other.to_owned(),
                        fact: event,
                    },
                    now,
                );
            }
            let adopt = |call: &mut Call| match &leg {
                Some(l)
                    if call.spec.direction == Direction::Outbound
                        && call.carrier_call_id.is_none() =>
                {
                    call.carrier_call_id = Some(l.clone());
                    true
                }
                _ => false,
            };
            // The carrier's time of the fact, never before what the call already knows and
            // never after now (clocks differ).
            let carrier_time = |floor: DateTime<Utc>| at.unwrap_or(now).min(now).max(floor);
            if status.is_terminal() && event.is_alive() && adopt(call) {
                // A leg came up after the call ended without one (a dial whose answer was
                // lost): now that its id is known, release it by id.
                touch(call, now);
                let reason = call.end_reason.unwrap_or(EndReason::VendorError);
                release(call, reason, &mut effects);
                return Ok(effects);
            }
            match event {
                CarrierEvent::Initiated { .. } => {
                    if !status.is_terminal() && adopt(call) {
                        touch(call, now);
                    }
                }
                CarrierEvent::RingingLeg { .. } | CarrierEvent::Ringing => {
                    let mut changed = !status.is_terminal() && adopt(call);
                    if status == Pending {
                        call.status = Ringing;
                        call.ringing_at = Some(carrier_time(call.created_at));
                        changed = true;
                    }
                    if changed {
                        touch(call, now);
                    }
                }
                CarrierEvent::Answered => {
                    if matches!(status, Pending | Ringing) {
                        adopt(call);
                        let answered = carrier_time(call.ringing_at.unwrap_or(call.created_at));
                        call.status = InProgress;
                        call.ringing_at.get_or_insert(answered);
                        call.answered_at = Some(answered);
                        let at =
                            answered + Duration::seconds(i64::from(call.spec.max_duration_secs));
                        call.deadline = Some(Deadline {
                            kind: TimerKind::MaxDuration,
                            at,
                        });
                        effects.push(Effect::ArmTimer {
                            kind: TimerKind::MaxDuration,
                            at,
                        });
                        touch(call, now);
                    }
                }
                CarrierEvent::HungUp { cause } => {
                    let floor = call
                        .answered_at
                        .or(call.ringing_at)
                        .unwrap_or(call.created_at);
                    let ended = carrier_time(floor);
                    match status {
                        Pending | Ringing => {
                            adopt(call);
                            let reason = unanswered_reason(call.spec.direction, cause);
                            end(call, Failed, reason, ended, &mut effects);
                            call.updated_at = now;
                        }
                        InProgress => {
                            let reason = if cause == HangupCause::TimeLimit {
                                EndReason::MaxDuration
                            } else {
                                EndReason::NormalClearing
                            };
                            end(call, Completed, reason, ended, &mut effects);
                            call.updated_at = now;
                        }
                        _ if call.release_pending => {
                            // The leg we hung up is gone: nothing left to release.
                            call.release_pending = false;
                            touch(call, now);
                        }
                        _ => {}
                    }
                }
                annotation => {
                    debug_assert!(annotation.is_annotation());
                    touch(call, now);
                }
            }
        }
        Event::MediaReported { .. } | Event::Conversation { .. } => touch(call, now),
        Event::AgentHangup { reason } => match status {
            InProgress => {
                end(call, Completed, reason, now, &mut effects);
                release(call, reason, &mut effects);
            }
            s if s.is_terminal() => return Err(TransitionError::Terminal { status }),
            _ => {
                return Err(TransitionError::NotNow {
                    status,
                    needs: "only an answered call has a conversation to end",
                })
            }
        },
        Event::TransferRequested { to } => match status {
            InProgress => {
                touch(call, now);
                effects.push(Effect::Transfer { to });
            }
            s if s.is_terminal() => return Err(TransitionError::Terminal { status }),
            _ => {
                return Err(TransitionError::NotNow {
                    status,
                    needs: "only an answered call can be transferred",
                })
            }
        },
        Event::CommandRejected { .. } => {
            // Only meaningful before answer: once the carrier reports progress, the command
            // evidently went through and a late rejection is stale.
            if status == Pending || (status == Ringing && call.carrier_call_id.is_none()) {
                end(call, Failed, EndReason::VendorError, now, &mut effects);
                // A dial that "failed" on a timeout may still have reached the carrier.
                release(call, EndReason::VendorError, &mut effects);
            }
        }
        Event::HangupRequested => match status {
            Pending | Ringing => {
                end(call, Canceled, EndReason::CanceledByUser, now, &mut effects);
                release(call, EndReason::CanceledByUser, &mut effects);
            }
            InProgress => {
                end(
                    call,
                    Completed,
                    EndReason::HangupRequested,
                    now,
                    &mut effects,
                );
                release(call, EndReason::HangupRequested, &mut effects);
            }
            _ => return Err(TransitionError::Terminal { status }),
        },
        Event::TimerFired { kind, deadline } => {
            let current = call.deadline;
            if status.is_terminal() || current != Some(Deadline { kind, at: deadline }) {
                // A timer armed for a deadline that no longer exists: ignore.
            } else if now < deadline {
                // Fired early (clock skew between the timer wheel and the Clock port).
                effects.push(Effect::ArmTimer { kind, at: deadline });
            } else {
                match (kind, status) {
                    (TimerKind::RingTimeout, Pending | Ringing) => {
                        end(call, Failed, EndReason::RingTimeout, now, &mut effects);
                        release(call, EndReason::RingTimeout, &mut effects);
                    }
                    (TimerKind::MaxDuration, InProgress) => {
                        end(call, Completed, EndReason::MaxDuration, now, &mut effects);
                        release(call, EndReason::MaxDuration, &mut effects);
                    }
                    _ => {}
                }
            }
        }
        Event::ReleaseLeg => {
            if status.is_terminal() && !call.release_pending {
                let reason = call.end_reason.unwrap_or(EndReason::NormalClearing);
                touch(call, now);
                release(call, reason, &mut effects);
            }
        }
        Event::LegReleased => {
            if call.release_pending {
                call.release_pending = false;
                touch(call, now);
            }
        }
        Event::CarrierLost => {
            if !status.is_terminal() {
                // An answered call that is lost still was a conversation: it completes.
                let terminal = if status == InProgress {
                    Completed
                } else {
                    Failed
                };
                end(call, terminal, EndReason::CarrierLost, now, &mut effects);
            }
        }
        Event::EngineFault { .. } => {
            if !status.is_terminal() {
                let terminal = if status == InProgress {
                    Completed
                } else {
                    Failed
                };
                end(call, terminal, EndReason::EngineFault, now, &mut effects);
                release(call, EndReason::EngineFault, &mut effects);
            }
        }
    }
    Ok(effects)
}

/// Rebuilds a snapshot from its journal (`created` first, then every applied event with the
/// time it was applied). The snapshot a store holds must equal this fold.
pub fn replay<I>(entries: I) -> Result<Call, TransitionError>
where
    I: IntoIterator<Item = (Event, DateTime<Utc>)>,
{
    let mut entries = entries.into_iter();
    let mut call = match entries.next() {
        Some((Event::Created { spec }, at)) => start(spec, at).0,
        Some((other, _)) => return Err(TransitionError::Invalid { kind: other.kind() }),
        None => return Err(TransitionError::Invalid { kind: "empty" }),
    };
    for (event, at) in entries {
        let kind = event.kind();
        let before = call.version;
        step(&mut call, event, at)?;
        if call.version == before {
            // A journaled event always changed the call; one that doesn't is corrupt input.
            return Err(TransitionError::Invalid { kind });
        }
    }
    Ok(call)
}

/// Rewrites a carrier fact of another leg than the call's own as [`Event::StrayLeg`], so the
/// journal says what it was. Anything else is returned as it is.
pub fn classify(call: &Call, event: Event) -> Event {
    match event {
        Event::Carrier { event, leg, at } => {
            let named = leg.clone().or_else(|| event.named_leg().map(str::to_owned));
            match named.filter(|l| stray(call, l)) {
                Some(leg) => Event::StrayLeg { leg, fact: event },
                None => Event::Carrier { event, leg, at },
            }
        }
        other => other,
    }
}

/// A leg of an outbound call other than the one the call already has.
fn stray(call: &Call, leg: &str) -> bool {
    call.spec.direction == Direction::Outbound
        && call
            .carrier_call_id
            .as_deref()
            .is_some_and(|known| known != leg)
}

fn touch(call: &mut Call, now: DateTime<Utc>) {
    call.version += 1;
    call.updated_at = now;
}

/// Ending the call needs our hangup: issue it and remember it until the carrier confirms.
fn release(call: &mut Call, reason: EndReason, effects: &mut Vec<Effect>) {
    call.release_pending = true;
    effects.push(Effect::Hangup { reason });
}

fn end(
    call: &mut Call,
    status: CallStatus,
    reason: EndReason,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) {
    call.status = status;
    call.end_reason = Some(reason);
    call.ended_at = Some(now);
    if call.deadline.take().is_some() {
        effects.push(Effect::CancelTimer);
    }
    touch(call, now);
}

fn unanswered_reason(direction: Direction, cause: HangupCause) -> EndReason {
    match cause {
        HangupCause::Busy => EndReason::Busy,
        HangupCause::Rejected => EndReason::Rejected,
        HangupCause::OriginatorCancel if direction == Direction::Inbound => {
            EndReason::CallerAbandoned
        }
        HangupCause::OriginatorCancel => EndReason::CanceledByUser,
        HangupCause::NotFound => EndReason::NotFound,
        HangupCause::NoAnswer
        | HangupCause::NormalClearing
        | HangupCause::TimeLimit
        | HangupCause::Unspecified => EndReason::NoAnswer,
    }
}

#[cfg(test)]
mod tests;
