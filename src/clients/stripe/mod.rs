//! Stripe (billing): webhook signatures (vendor-protocols.md section 6) and the events the
//! billing webhook (`http::billing`) turns into plan changes.

pub mod events;
pub mod signature;
