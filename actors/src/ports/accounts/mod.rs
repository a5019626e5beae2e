//! Accounts persistence, one port per table: organizations and their plan limits, users, login
//! sessions (refresh tokens), API keys, Stripe billing events, HubSpot CRM events and contact
//! links. [`AccountStore`] is all of them at once, the one store the engine holds
//! ([`Ports::accounts`](crate::engine::Ports::accounts)); code that needs one table takes its
//! narrower trait.
//!
//! The domain types these traits speak of live in [`crate::accounts`]; nothing here depends
//! on an engine module. Secrets never arrive in the clear: passwords are argon2id PHC
//! strings, refresh tokens and API keys SHA-256 hex digests.

mod api_keys;
mod billing;
mod crm;
mod organizations;
mod sessions;
mod users;

pub use api_keys::ApiKeyStore;
pub use billing::BillingStore;
pub use crm::CrmStore;
pub use organizations::OrganizationStore;
pub use sessions::SessionStore;
pub use users::UserStore;

/// Every accounts table at once: what the engine holds as `Arc<dyn AccountStore>`. Implemented
/// for every type that implements each per-table trait; the engine runs every call to it on its
/// query pool (`engine::accounts`).
pub trait AccountStore:
    OrganizationStore + UserStore + SessionStore + ApiKeyStore + BillingStore + CrmStore
{
}

impl<T> AccountStore for T where
    T: OrganizationStore
        + UserStore
        + SessionStore
        + ApiKeyStore
        + BillingStore
        + CrmStore
        + ?Sized
{
}
