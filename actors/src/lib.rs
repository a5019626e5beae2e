//! IACE engine: the pure call state machine, the actor tree that runs one actor per live call,
//! and the ports through which it reaches the outside world.
//!
//! This crate has no database, HTTP or WebSocket dependency: everything external is a port
//! ([`ports`]). The root crate `iace` wires in Postgres, Redis, the carriers and the vendor
//! clients; the in-memory ports for tests and simulations are in `testkit` (feature
//! `testkit`, never enabled by the server).
//!
//! Modules, in reading order (each imports only those above it; one exception: a
//! conversation record of the machine carries the sentiment label of `ports::sentiment`):
//! - [`machine`]: the pure call state machine (`step(call, event, now) -> effects`), its ids
//!   and value types, and what a conversation journals ([`machine::record`]);
//! - [`catalog`], [`accounts`]: the domain records (organizations, agents with their voice
//!   profile, customers; users, roles, plans, API keys);
//! - [`ports`]: the traits the engine needs from the outside world, one file per concern
//!   (clock and ids, calls, catalog, accounts by table, telephony, voice vendors, sentiment,
//!   learning); the bundle an engine is built from is [`engine::Ports`];
//! - [`voice`]: the pure conversation core (turn-taking, barge-in, replies, tools,
//!   escalation) that a voice session runs; [`sentiment`]: the local scorer and the degrading
//!   wrapper around a vendor's;
//! - [`breaker`]: vendor circuit breakers, one actor per vendor;
//! - [`learning`]: finished calls into learned patterns and customer memories, and recall of
//!   them at call start;
//! - [`campaign`]: outbound campaigns' rules (calling windows in the contact's time zone,
//!   retries by outcome, the contact's states); [`analytics`]: what the call rollups are built
//!   from (a mergeable quantile sketch);
//! - [`engine`]: the actor tree (call supervisor, one call actor per live call, its voice
//!   session, the query pool) and the [`engine::Engine`] handle the HTTP layer and the
//!   webhooks hold.

pub mod accounts;
pub mod analysis;
pub mod analytics;
pub mod breaker;
pub mod campaign;
pub mod catalog;
pub mod engine;
pub mod keepalive;
pub mod learning;
pub mod machine;
pub mod outbox;
pub mod ports;
pub mod sentiment;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod voice;
