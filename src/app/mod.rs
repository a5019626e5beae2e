//! The process around the engine, in reading order:
//! - [`server`]: `iace serve`'s wiring: builds the ports from the configuration, starts the
//!   engine, the learning worker and the HTTP servers ([`start`]), and shuts them down
//!   ([`Running`]);
//! - `telnyx`: the Telnyx edge (command client, webhook verifier, media-stream tokens) and
//!   the media endpoint's reports into the engine;
//! - [`security`]: the HTTP layer's security settings (access-token keys, limits, secrets,
//!   CORS);
//! - [`commands`]: the administrative CLI commands (`migrate`, `org create`, `user create`);
//! - `clock`: the wall clock and random ids, production's time and id ports.
//!
//! The dev world (the server against the wire-level fakes, demo calls) is the `iace-dev`
//! binary, outside this crate.

mod clock;
pub mod commands;
pub mod security;
pub mod server;
mod telnyx;

pub use clock::{RandomIds, SystemClock};
pub use commands::{create_org, create_user, migrate};
pub use security::{cors_origins, security};
pub use server::{start, Running};
