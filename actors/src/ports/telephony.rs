//! The carrier: the commands the engine sends about a call's legs, and their failures.
//! Carrier events come back through the engine's ingress, not through this port.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::machine::{CallId, HangupCause, PhoneNumber};

/// Carrier command failures, already past the adapter's own retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TelephonyError {
    /// The carrier refused the command (4xx): retrying will not help.
    #[error("carrier rejected the command: {0}")]
    Rejected(String),
    /// The carrier could not be reached or kept failing (5xx, timeouts).
    #[error("carrier unavailable: {0}")]
    Unavailable(String),
    /// The carrier's circuit breaker is open: nothing was sent. Not retried by the caller's
    /// quick retries (the breaker decides when to try again).
    #[error("{vendor} circuit breaker is open")]
    CircuitOpen {
        /// The vendor.
        vendor: String,
        /// When the breaker lets calls through again, when known.
        until: Option<DateTime<Utc>>,
    },
}

/// Place an outbound call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialCommand {
    /// Our call id (Telnyx `client_state`).
    pub call_id: CallId,
    /// `{call_id}:{seq}`: a retried command is never executed twice.
    pub command_id: String,
    /// Calling party.
    pub from: PhoneNumber,
    /// Called party.
    pub to: PhoneNumber,
    /// How long the carrier lets it ring.
    pub timeout_secs: u32,
}

/// Act on an existing leg (answer, hangup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegCommand {
    /// Our call id.
    pub call_id: CallId,
    /// The carrier's leg id, when known.
    pub carrier_call_id: Option<String>,
    /// `{call_id}:{seq}`.
    pub command_id: String,
}

/// What the carrier says about a leg right now (reconciliation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegStatus {
    /// The carrier has no such leg (never dialed, or long gone).
    Unknown,
    /// Dialed, not answered yet.
    Ringing,
    /// Answered and up.
    Answered,
    /// Ended.
    Ended(HangupCause),
}

/// The carrier. Events flow back through `Engine::ingest_carrier_event`, not through here.
#[async_trait]
pub trait Telephony: Send + Sync + 'static {
    /// The vendor behind the adapter: the name of its circuit breaker in
    /// [`Ports::breakers`](crate::engine::Ports::breakers).
    fn vendor(&self) -> &'static str {
        "telephony"
    }
    /// Places an outbound call; returns the carrier's leg id.
    async fn dial(&self, cmd: DialCommand) -> Result<String, TelephonyError>;
    /// Answers an inbound call.
    async fn answer(&self, cmd: LegCommand) -> Result<(), TelephonyError>;
    /// Hangs a leg up. Hanging up an already ended leg is success.
    async fn hangup(&self, cmd: LegCommand) -> Result<(), TelephonyError>;
    /// Transfers an answered leg to `to` (a person); the carrier reports `bridged`.
    async fn transfer(&self, cmd: LegCommand, to: PhoneNumber) -> Result<(), TelephonyError>;
    /// Declines an inbound leg that has no call (an unknown number). Declining a leg that
    /// already ended is success.
    async fn reject(&self, carrier_call_id: &str, command_id: &str) -> Result<(), TelephonyError>;
    /// Points the call's media stream at this node: stops a stream the leg may still have
    /// towards another node, then starts one towards this node's media endpoint. Issued by
    /// the node that took an answered call over (from a node that died, drained or restarted).
    /// Adapters without media streams have nothing to do.
    async fn restart_media(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        let _ = cmd;
        Ok(())
    }
    /// The live status of a leg.
    async fn status(
        &self,
        call_id: CallId,
        carrier_call_id: Option<&str>,
    ) -> Result<LegStatus, TelephonyError>;
}
