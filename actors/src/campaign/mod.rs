//! Outbound campaigns: calling many contacts with an agent, in their local calling hours, at a
//! pace, retrying by outcome.
//!
//! - [`attempts`]: an attempt's outcome, the retry policy per outcome, the contact's states
//!   and the idempotency key that makes each attempt one call.
//! - [`windows`]: when a contact may be dialed ([`Schedule`](windows::Schedule)), by the wall
//!   clock of the contact's time zone, daylight-saving changes and windows past midnight
//!   included.
//! - [`zones`]: a contact's time zone (given, else its number's region when unambiguous, else
//!   the campaign's).

pub mod attempts;
pub mod windows;
pub mod zones;
