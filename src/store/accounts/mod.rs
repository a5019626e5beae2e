//! The engine's account ports on Postgres, one file per table: organizations and their plan
//! limits, users, login sessions (refresh-token families), API keys, and the Stripe/HubSpot
//! events (deduplicated by event id, stored and applied in one transaction) with the CRM
//! contact-link queue. Together they make [`PgStore`](super::PgStore) an
//! [`AccountStore`](iace_actors::ports::accounts::AccountStore).
//!
//! Every change to a user's refresh tokens (rotation, reuse, logout, logout-all) first locks
//! the user's row (`FOR NO KEY UPDATE`, which the foreign-key checks of a login's insert do not
//! wait for): they run one at a time per user, each statement after the lock sees what the
//! previous one committed (a revocation also gets the token a concurrent rotation issued), and
//! there is no lock order between token rows to get wrong.

mod api_keys;
mod billing;
mod crm;
mod events;
mod organizations;
mod rows;
mod sessions;
mod users;
