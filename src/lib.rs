//! IACE server: the adapters around the engine in `iace-actors` (Postgres store, Redis,
//! carriers, HTTP API) and the process wiring (configuration, telemetry, CLI).

pub mod app;
pub mod config;
pub mod http;
pub mod redis;
pub mod store;
pub mod telemetry;
pub mod telephony;
