//! HubSpot (CRM): webhook signatures and events (vendor-protocols.md 7.1-7.3) and the CRM v3
//! REST client (7.4) that reads contacts.

pub mod crm;
pub mod events;
pub mod signature;
