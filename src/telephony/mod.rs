//! Carrier adapters: implementations of [`iace_actors::ports::Telephony`].
//!
//! An adapter turns the engine's commands (dial, answer, hang up, status) into carrier API
//! calls and turns what the carrier reports back into [`iace_actors::ports::InboxItem`]s with a
//! stable per-vendor event id, so that the engine's inbox can deduplicate redeliveries.
//!
//! - [`simulated`]: the built-in dev-mode carrier. Legs live in Redis, events are produced on
//!   a schedule (ring, answer, hang up), and scheduled events survive a restart of the server.
//!   The default of `iace serve`, and what `iace-dev --telephony simulated` runs on.

pub mod simulated;
