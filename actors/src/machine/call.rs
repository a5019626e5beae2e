//! The call's snapshot: what is fixed when it is created ([`CallSpec`]) and where it stands
//! now ([`Call`]), the value the machine folds events into.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    AgentId, CallId, CallStatus, CustomerId, Deadline, Direction, EndReason, OrganizationId,
    PhoneNumber,
};

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

impl Call {
    /// A stray leg of the call may still be up: its hangup is owed until the carrier accepts
    /// it or reports the leg's end.
    pub fn strays_up(&self) -> bool {
        self.stray_legs.iter().any(|s| !s.ended)
    }
}

/// A leg of a call that is not its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrayLeg {
    /// The carrier's id of the leg.
    pub leg: String,
    /// The carrier reported its end.
    pub ended: bool,
}
