//! IACE server: the adapters around the engine in `iace-actors` (Postgres store, Redis, the
//! carriers, the vendor clients, the HTTP API) and the process wiring (configuration,
//! telemetry, the CLI). It depends on the engine only; the wire-level vendor fakes
//! (`iace-fakes`), the simulator (`iace-sim`) and the dev world (`iace-dev`) stand on it, never
//! the reverse.
//!
//! Modules, in reading order:
//! - [`config`]: every setting (clap, with the environment variable of each);
//! - [`app`]: `iace serve`'s wiring (ports from the configuration, the engine, the HTTP servers)
//!   and the other CLI commands;
//! - [`edge`]: accepts the API's connections and bounds what one client can hold (timeouts,
//!   the connection cap) before a request reaches [`http`];
//! - [`http`]: the API (axum): authentication, extractors, the error envelope, one module per
//!   resource, the vendors' webhooks; it talks to the engine only;
//! - [`auth`]: access tokens, passwords, secrets and sign-in budgets; [`ratelimit`]: request
//!   limits shared by every node (Redis);
//! - [`media`]: the per-call audio edge beside the API (the Telnyx media-stream WebSocket);
//!   [`voice`]: the voice pipeline's vendor clients wired behind the engine's voice ports;
//! - [`store`]: the Postgres implementation of the engine's store ports; [`redis`]: Redis
//!   connections;
//! - [`telephony`]: what carrier adapters share, and the simulated carrier on Redis (the Telnyx
//!   adapter is its client, in [`clients`]);
//! - [`clients`]: the real clients of every vendor (Telnyx, Deepgram, Cartesia, Groq, Google,
//!   Stripe, HubSpot) and the one retry policy they share; [`crm_link`]: the CRM linker's
//!   queue worker;
//! - [`cluster`]: requests between the nodes of a cluster (signed forwarding and pokes);
//! - [`pii`]: personal data out of logs; [`telemetry`]: logs and traces.

pub mod app;
pub mod auth;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod crm_link;
pub mod edge;
pub mod http;
pub mod media;
pub mod outbound;
pub mod pii;
pub mod ratelimit;
pub mod redis;
pub mod store;
pub mod telemetry;
pub mod telephony;
pub mod voice;
