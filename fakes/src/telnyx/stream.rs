//! What a leg's media stream is (section 1.5): its parameters as a command asks for them
//! (`stream_url`, track, codecs, bidirectional mode), the encodings the fake can stream, and
//! the leg's handle on its stream task.

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::body::{self, ApiError};
use super::g711;

/// Audio encodings the fake can stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Pcmu,
    Pcma,
}

impl Encoding {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Encoding::Pcmu => "PCMU",
            Encoding::Pcma => "PCMA",
        }
    }

    pub(crate) fn encode(self, samples: &[i16]) -> Vec<u8> {
        match self {
            Encoding::Pcmu => samples.iter().map(|&s| g711::linear_to_ulaw(s)).collect(),
            Encoding::Pcma => samples.iter().map(|&s| g711::linear_to_alaw(s)).collect(),
        }
    }

    pub(crate) fn decode(self, byte: u8) -> i16 {
        match self {
            Encoding::Pcmu => g711::ulaw_to_linear(byte),
            Encoding::Pcma => g711::alaw_to_linear(byte),
        }
    }
}

/// A stream as requested by dial, answer or `streaming_start`.
#[derive(Debug, Clone)]
pub(crate) struct StreamParams {
    pub(crate) url: String,
    /// As requested: `inbound_track`, `outbound_track` or `both_tracks`.
    pub(crate) track: String,
    pub(crate) encoding: Encoding,
    /// How to decode the app's audio to tell sound from silence; `None` for an encoding the
    /// fake cannot decode (MP3 mode, G722, OPUS, ...), whose audio always counts as audible.
    pub(crate) playback: Option<Encoding>,
    pub(crate) auth_token: Option<String>,
    pub(crate) custom_parameters: Map<String, Value>,
}

/// Parses the `stream_*` fields of a command body; `None` without `stream_url`.
pub(crate) fn stream_params(body: &Map<String, Value>) -> Result<Option<StreamParams>, ApiError> {
    let Some(url) = body::opt_str(body, "stream_url")? else {
        return Ok(None);
    };
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(ApiError::invalid_url("stream_url"));
    }
    let track = body::opt_str(body, "stream_track")?.unwrap_or("inbound_track");
    body::one_of(
        "stream_track",
        track,
        &["inbound_track", "outbound_track", "both_tracks"],
    )?;
    let encoding = match body::opt_str(body, "stream_codec")? {
        None | Some("default") | Some("PCMU") => Encoding::Pcmu,
        Some("PCMA") => Encoding::Pcma,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "stream_codec '{other}' is not supported by the fake (PCMU and PCMA are)"
            )))
        }
    };
    let mode = body::opt_str(body, "stream_bidirectional_mode")?;
    if let Some(mode) = mode {
        body::one_of("stream_bidirectional_mode", mode, &["rtp", "mp3"])?;
    }
    let codec = body::opt_str(body, "stream_bidirectional_codec")?;
    if let Some(codec) = codec {
        body::one_of(
            "stream_bidirectional_codec",
            codec,
            &["PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "L16"],
        )?;
    }
    let playback = match (mode, codec) {
        (Some("mp3"), _) => None,
        (_, None | Some("PCMU")) => Some(Encoding::Pcmu),
        (_, Some("PCMA")) => Some(Encoding::Pcma),
        _ => None,
    };
    if let Some(legs) = body::opt_str(body, "stream_bidirectional_target_legs")? {
        body::one_of(
            "stream_bidirectional_target_legs",
            legs,
            &["both", "self", "opposite"],
        )?;
    }
    let auth_token = body::opt_str(body, "stream_auth_token")?;
    if auth_token.is_some_and(|t| t.len() > 4000) {
        return Err(ApiError::invalid(
            "stream_auth_token must be at most 4000 characters".to_owned(),
        ));
    }
    let mut custom_parameters = Map::new();
    match body.get("custom_parameters") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let value = item.get("value").and_then(Value::as_str);
                let (Some(name), Some(value)) = (name, value) else {
                    return Err(ApiError::invalid(
                        "custom_parameters must be a list of {name, value} strings".to_owned(),
                    ));
                };
                custom_parameters.insert(name.to_owned(), json!(value));
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "custom_parameters must be a list of {name, value} strings".to_owned(),
            ))
        }
    }
    Ok(Some(StreamParams {
        url: url.to_owned(),
        track: track.to_owned(),
        encoding,
        playback,
        auth_token: auth_token.map(str::to_owned),
        custom_parameters,
    }))
}

/// The leg's handle on its stream task.
pub(crate) struct StreamSlot {
    pub(crate) stream_id: String,
    pub(crate) url: String,
    pub(crate) ctrl: mpsc::UnboundedSender<StreamCtrl>,
    /// The WebSocket is up and `streaming.started` was sent, so stopping owes
    /// `streaming.stopped`.
    pub(crate) connected: bool,
}

/// What the leg tells its stream task.
pub(crate) enum StreamCtrl {
    /// Send `stop` and close.
    Stop,
    /// Send a `dtmf` frame.
    Dtmf(char),
}
