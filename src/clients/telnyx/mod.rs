//! Telnyx: Call Control v2 commands out ([`client`]), signed webhooks in ([`webhook`]), and
//! the JSON of both ([`wire`]); the frames of the media-stream WebSocket ([`media_wire`]),
//! which `crate::media` serves.

pub mod client;
pub mod media_wire;
pub mod webhook;
mod wire;

pub use client::{TelnyxClient, TelnyxConfig, TelnyxMetrics};
pub use webhook::{WebhookVerifier, DEFAULT_TOLERANCE};
