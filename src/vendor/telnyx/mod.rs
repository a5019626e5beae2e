//! Telnyx: Call Control v2 commands out ([`client`]), signed webhooks in ([`webhook`]), and
//! the JSON of both ([`wire`]). Media streams are served by `crate::media`.

pub mod client;
pub mod webhook;
mod wire;

pub use client::{TelnyxClient, TelnyxConfig, TelnyxMetrics};
pub use webhook::{WebhookVerifier, DEFAULT_TOLERANCE};
