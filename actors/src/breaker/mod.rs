//! Vendor circuit breakers: one actor per external vendor (telnyx, deepgram, cartesia, groq,
//! google, stripe, hubspot), and one per optional operation class that must not share its
//! vendor's breaker (`groq_classify`: sentiment classifications, apart from `groq` replies),
//! owns that [`Breaker`]; callers ask a [`BreakerHandle`]
//! for permission without a round trip (it reads a snapshot the actor publishes) and report
//! outcomes with a message.
//!
//! The state machine ([`machine`]) is pure and takes time as an argument; the actor reads time
//! only through the engine's [`Clock`](crate::ports::time::Clock) port.

mod actor;
mod guard;
pub mod machine;

pub use actor::{BreakerHandle, BreakerMetrics, Breakers, VENDORS};
pub use guard::{GuardedTelephony, PermitGuard};
pub use machine::{
    Breaker, BreakerConfig, BreakerSnapshot, BreakerState, CallOutcome, Permit, Rejected,
    Transition, TransitionReason,
};
