//! The integration tests of the `iace` crate, in one test binary: each test binary links the
//! whole server, so the areas are modules of this one rather than files of their own under
//! `tests/` (add new tests to a module here, or a new module; a new file directly under
//! `tests/` would be another binary). `common` holds the helpers the modules share.
//!
//! The tests run against the real Postgres and Redis named by `DATABASE_URL` and `REDIS_URL`
//! (`eval "$(scripts/services env)"`). Under `cargo test` they are threads of one process, so
//! none of them changes process-wide state: no test sets an environment variable (a server
//! gets its settings as a child process's environment or as `ServeArgs`), ports come from
//! `common::api::free_port` or `bind(0)`, a test that stores has a database of its own, and
//! metrics go to a registry per server or client, never the process's default one.
//!
//! One area: `cargo test -p iace --test it security::`; one test: give its full path.

mod common;

mod cartesia;
mod cluster;
mod cluster_handover;
mod cluster_store;
mod contract;
mod deepgram;
mod google;
mod groq;
mod hubspot;
mod integration;
mod learning;
mod ratelimit;
mod security;
mod sim_carrier;
mod store_accounts;
mod store_pg;
mod telnyx;
mod users;
mod voice;
mod webhook_delivery;
mod webhook_endpoints;
