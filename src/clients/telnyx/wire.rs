//! Telnyx JSON, exactly as on the wire (vendor-protocols.md section 1). Nothing outside
//! `clients::telnyx` sees these types.
//!
//! Requests are written with the exact field names; responses and webhooks are parsed
//! leniently (optional fields may be absent or `null`, unknown fields are ignored).

use serde::{Deserialize, Deserializer, Serialize};

/// `POST /v2/calls` (1.2 Dial).
#[derive(Debug, Clone, Serialize)]
pub struct DialRequest<'a> {
    pub connection_id: &'a str,
    pub to: &'a str,
    pub from: &'a str,
    pub webhook_url: &'a str,
    pub webhook_url_method: &'static str,
    pub client_state: &'a str,
    pub command_id: &'a str,
    pub timeout_secs: u32,
    pub answering_machine_detection: &'a str,
    #[serde(flatten)]
    pub stream: StreamParams<'a>,
}

/// The media-stream fields shared by dial, answer and streaming_start (1.2, 1.5).
#[derive(Debug, Clone, Serialize)]
pub struct StreamParams<'a> {
    pub stream_url: &'a str,
    pub stream_track: &'static str,
    pub stream_codec: &'static str,
    pub stream_bidirectional_mode: &'static str,
    pub stream_bidirectional_codec: &'static str,
    pub stream_auth_token: &'a str,
}

/// `.../actions/answer`.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerRequest<'a> {
    pub client_state: &'a str,
    pub command_id: &'a str,
    pub webhook_url: &'a str,
    #[serde(flatten)]
    pub stream: StreamParams<'a>,
}

/// `.../actions/hangup`.
#[derive(Debug, Clone, Serialize)]
pub struct HangupRequest<'a> {
    pub client_state: &'a str,
    pub command_id: &'a str,
}

/// `.../actions/transfer`.
#[derive(Debug, Clone, Serialize)]
pub struct TransferRequest<'a> {
    pub to: &'a str,
    pub client_state: &'a str,
    /// Marks the new leg's webhooks as a transfer target (not our call's own leg).
    pub target_leg_client_state: &'a str,
    pub command_id: &'a str,
    pub timeout_secs: u32,
}

/// `.../actions/reject`.
#[derive(Debug, Clone, Serialize)]
pub struct RejectRequest<'a> {
    /// `CALL_REJECTED` or `USER_BUSY`.
    pub cause: &'static str,
    pub command_id: &'a str,
}

/// `.../actions/streaming_start`.
#[derive(Debug, Clone, Serialize)]
pub struct StreamingStartRequest<'a> {
    pub client_state: &'a str,
    pub command_id: &'a str,
    #[serde(flatten)]
    pub stream: StreamParams<'a>,
}

/// `.../actions/streaming_stop`.
#[derive(Debug, Clone, Serialize)]
pub struct StreamingStopRequest<'a> {
    pub client_state: &'a str,
    pub command_id: &'a str,
}

/// `{"data": ...}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Data<T> {
    pub data: T,
}

/// Response of dial.
#[derive(Debug, Clone, Deserialize)]
pub struct DialData {
    pub call_control_id: String,
}

/// Response of `GET /v2/calls/{call_control_id}` (retrieve call status).
#[derive(Debug, Clone, Deserialize)]
pub struct CallStatusData {
    #[serde(default)]
    pub is_alive: bool,
}

/// Error body: `{"errors":[{"code":"90018","title":"...","detail":"..."}]}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub errors: Vec<ErrorItem>,
}

/// One error. `code` is a string on the wire; numbers are accepted too.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorItem {
    #[serde(default, deserialize_with = "lenient_string")]
    pub code: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

/// Webhook envelope (1.3).
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub data: EventData,
}

/// `data` of a webhook.
#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub event_type: String,
    pub id: String,
    #[serde(default)]
    pub occurred_at: Option<String>,
    #[serde(default)]
    pub payload: Payload,
}

/// `data.payload`: the union of the fields the engine reads, all optional.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Payload {
    #[serde(default)]
    pub call_control_id: Option<String>,
    #[serde(default)]
    pub client_state: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub hangup_cause: Option<String>,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub digit: Option<String>,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}
