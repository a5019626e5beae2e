//! IACE server: the adapters around the engine in `iace-actors` (Postgres store, Redis,
//! carriers, HTTP API) and the process wiring (configuration, telemetry, CLI).
//! `media` is the per-call audio edge beside the HTTP API: the Telnyx media-stream WebSocket.
//! `edge` accepts the API's connections and bounds what one client can hold (timeouts, the
//! connection cap) before a request reaches `http`.

pub mod app;
pub mod auth;
pub mod clients;
pub mod config;
pub mod crm_link;
pub mod edge;
pub mod http;
pub mod media;
pub mod pii;
pub mod ratelimit;
pub mod redis;
pub mod store;
pub mod telemetry;
pub mod telephony;
pub mod voice;
