//! The integration tests of the `iace` crate, in one test binary (each binary links the whole
//! server, so one binary instead of one per file saves link time and disk). Each module holds
//! the tests of one area; `common` holds the helpers they share. They run against the real
//! Postgres and Redis named by `DATABASE_URL` and `REDIS_URL` (`scripts/services env`).
//!
//! Run one area with a filter: `cargo test -p iace --test it security::`.

mod common;

mod cartesia;
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
