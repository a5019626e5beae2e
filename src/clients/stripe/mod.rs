//! Stripe (billing): webhook signatures (vendor-protocols.md section 6). The webhook endpoint
//! and the plan changes come with issue 8's billing work.

pub mod events;
pub mod signature;
