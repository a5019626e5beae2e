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
//!
//! Reading order: `types` (ids and value types), `call` (the snapshot), `event` (what the
//! journal records), `transition` (the transition rules and the effects they produce);
//! `phone` holds the E.164 number type.

mod call;
mod event;
mod phone;
pub mod record;
mod transition;
mod types;

pub use call::{Call, CallSpec, StrayLeg};
pub use event::{AmdResult, CarrierEvent, Event, MediaReport};
pub use phone::{InvalidPhoneNumber, PhoneNumber};
pub use transition::{classify, replay, start, step, Effect, TransitionError};
pub use types::{
    AgentId, CallId, CallStatus, CustomerId, Deadline, Direction, EndReason, HangupCause,
    OrganizationId, TimerKind,
};

#[cfg(test)]
pub(crate) mod tests;
