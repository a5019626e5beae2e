//! What IACE sends to its customers' systems: signed webhooks about their calls and the
//! requests of their agents' HTTP tools. Both are signed with the Standard Webhooks scheme
//! ([`signing`]) and go only to addresses the SSRF guard allows ([`guard`]).

pub mod guard;
pub mod sender;
pub mod signing;
pub mod tools;
