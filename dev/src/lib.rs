//! The dev world of IACE: one command (`cargo run -p iace-dev`) starts local Postgres and
//! Redis, the wire-level fakes of every vendor (`iace-fakes`), and the real `iace` server wired
//! to them with the real clients, then creates a demo agent, places a demo outbound call and
//! takes a demo inbound call that converse, end and are learned from.
//!
//! Modules, in reading order:
//! - [`world`]: the settings and the start of the whole world;
//! - [`voices`]: the voice vendors' fakes as one bundle (also used by the end-to-end tests and
//!   the voice benchmark);
//! - `demo`: the demo agent, the scripted demo caller and the demo calls;
//! - `accounts`: the dev organization and its owner, kept across restarts.

mod accounts;
mod demo;
pub mod voices;
pub mod world;

pub use voices::FakeVoices;
pub use world::{run, DevArgs};
