//! IACE engine: the pure call state machine, the actor tree that runs one actor per live call,
//! and the ports through which it reaches the outside world.
//!
//! This crate has no database, HTTP or WebSocket dependency: everything external is a port
//! ([`ports`]). The root crate wires in Postgres, Redis and the carrier adapters; the in-memory
//! ports for tests and simulations are in `testkit` (feature `testkit`).

pub mod accounts;
pub mod breaker;
pub mod catalog;
pub mod engine;
pub mod learning;
pub mod machine;
pub mod ports;
pub mod sentiment;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod voice;
