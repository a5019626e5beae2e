//! HubSpot (CRM): webhook signatures (vendor-protocols.md section 7). The webhook endpoint and
//! the contact sync come with issue 8's CRM work.

pub mod events;
pub mod signature;
