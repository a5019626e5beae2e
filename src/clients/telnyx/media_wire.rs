//! Telnyx media-stream frames as they travel on the WebSocket (vendor-protocols.md §1.5).
//!
//! Parsing is lenient the way the protocol notes demand: numbers may arrive as strings
//! (`sequence_number`, `chunk`, `timestamp`, error `code`), optional fields may be absent or
//! `null`, and unknown events or fields are ignored. Only `crate::media` uses these types; its
//! session turns them into `crate::media::StreamInfo` and counters.

use std::borrow::Cow;

use serde::de::{Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;
use serde_json::json;

/// Header (and `connected` field) carrying our stream token.
pub const AUTH_TOKEN_FIELD: &str = "x-telnyx-streaming-auth-token";

/// A frame Telnyx sends us.
#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Inbound {
    /// First frame; may carry the token (top level or inside a `connected` object).
    Connected {
        #[serde(rename = "x-telnyx-streaming-auth-token", default)]
        token: Option<String>,
        #[serde(default)]
        connected: Option<ConnectedBody>,
    },
    /// Stream metadata. `stream_id` is top level, not inside `start`.
    Start {
        #[serde(default)]
        stream_id: Option<String>,
        #[serde(default)]
        start: StartBody,
    },
    /// One chunk of call audio.
    Media {
        #[serde(default)]
        media: MediaBody,
    },
    /// A key press.
    Dtmf {
        #[serde(default)]
        dtmf: DtmfBody,
    },
    /// One of our marks finished playing (or was flushed by `clear`).
    Mark {
        #[serde(default)]
        mark: MarkBody,
    },
    /// Telnyx reports a problem with something we sent.
    Error {
        #[serde(default)]
        payload: ErrorBody,
    },
    /// The stream is over.
    Stop,
    /// Anything newer than this code: ignored, not an error.
    #[serde(other)]
    Unknown,
}

impl Inbound {
    /// The token a `connected` frame carries, wherever it was put.
    pub fn connected_token(&self) -> Option<&str> {
        match self {
            Inbound::Connected { token, connected } => token
                .as_deref()
                .or_else(|| connected.as_ref().and_then(|c| c.token.as_deref()))
                .filter(|t| !t.is_empty()),
            _ => None,
        }
    }
}

/// The nested form of `connected`.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectedBody {
    #[serde(rename = "x-telnyx-streaming-auth-token", default)]
    pub token: Option<String>,
}

/// `start` object.
#[derive(Debug, Default, Deserialize)]
pub struct StartBody {
    #[serde(default)]
    pub call_control_id: Option<String>,
    /// Base64 of our call id text, as set on the dial/answer command.
    #[serde(default)]
    pub client_state: Option<String>,
    #[serde(default)]
    pub media_format: MediaFormat,
}

/// `start.media_format`; Telnyx defaults to PCMU 8 kHz mono.
#[derive(Debug, Deserialize)]
pub struct MediaFormat {
    #[serde(default = "default_encoding")]
    pub encoding: String,
    #[serde(default = "default_rate", deserialize_with = "lenient_u32")]
    pub sample_rate: u32,
    #[serde(default = "default_channels", deserialize_with = "lenient_u16")]
    pub channels: u16,
}

impl Default for MediaFormat {
    fn default() -> Self {
        MediaFormat {
            encoding: default_encoding(),
            sample_rate: default_rate(),
            channels: default_channels(),
        }
    }
}

fn default_encoding() -> String {
    "PCMU".to_owned()
}
fn default_rate() -> u32 {
    8000
}
fn default_channels() -> u16 {
    1
}

/// `media` object.
#[derive(Debug, Default, Deserialize)]
pub struct MediaBody {
    /// `inbound` (the caller) or `outbound` (only with `both_tracks`); absent means inbound.
    #[serde(default)]
    pub track: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub chunk: Option<u64>,
    /// Milliseconds since the stream started.
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub timestamp: Option<u64>,
    #[serde(default)]
    pub payload: String,
}

impl MediaBody {
    /// The frame's fields, borrowed.
    pub fn as_ref(&self) -> MediaRef<'_> {
        MediaRef {
            track: self.track.as_deref(),
            chunk: self.chunk,
            timestamp: self.timestamp,
            payload: Cow::Borrowed(&self.payload),
        }
    }
}

/// A `media` frame's fields borrowed from the frame's text: the carrier sends one every
/// 20 ms per call, and [`Inbound`] (an internally tagged enum, which serde buffers field by
/// field before choosing the variant) costs several allocations per frame. [`media_frame`]
/// reads one in a single pass without any.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct MediaRef<'a> {
    /// See [`MediaBody::track`].
    #[serde(default, borrow)]
    pub track: Option<&'a str>,
    /// See [`MediaBody::chunk`].
    #[serde(default, deserialize_with = "plain_number")]
    pub chunk: Option<u64>,
    /// See [`MediaBody::timestamp`].
    #[serde(default, deserialize_with = "plain_number")]
    pub timestamp: Option<u64>,
    /// Base64 audio (borrowed unless the text escaped something).
    #[serde(default, borrow)]
    pub payload: Cow<'a, str>,
}

/// What [`media_frame`] reads of any frame.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, borrow)]
    media: Option<MediaRef<'a>>,
}

/// The fields of a `media` frame, read without allocating; `None` for any other frame, and
/// for a media frame in a shape only [`Inbound`]'s lenient parsing accepts (the caller then
/// parses it as [`Inbound`]).
pub fn media_frame(text: &str) -> Option<MediaRef<'_>> {
    let head: Head<'_> = serde_json::from_str(text).ok()?;
    if head.event != "media" {
        return None;
    }
    Some(head.media.unwrap_or_default())
}

/// A number or a decimal string (absent or `null`: `None`); any other shape is an error, so
/// that [`media_frame`] leaves the frame to [`Inbound`]'s lenient parsing.
fn plain_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Plain;
    impl<'de> Visitor<'de> for Plain {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number or a decimal string")
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok(u64::try_from(n).ok())
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(s.trim().parse().ok())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(Plain)
        }
    }
    d.deserialize_option(Plain)
}

/// `dtmf` object.
#[derive(Debug, Default, Deserialize)]
pub struct DtmfBody {
    #[serde(default)]
    pub digit: String,
}

/// `mark` object.
#[derive(Debug, Default, Deserialize)]
pub struct MarkBody {
    #[serde(default)]
    pub name: String,
}

/// `error.payload`; `code` is a number in the docs but strings appear elsewhere in Telnyx.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub code: Option<u64>,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub detail: String,
}

/// `{"event":"media","media":{"payload":…}}`: audio for Telnyx to play. Written directly
/// (one allocation per frame, every 20 ms of every call): base64 needs no JSON escaping.
pub fn media(payload_b64: &str) -> String {
    debug_assert!(payload_b64
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')));
    const HEAD: &str = r#"{"event":"media","media":{"payload":""#;
    const TAIL: &str = r#""}}"#;
    let mut text = String::with_capacity(HEAD.len() + payload_b64.len() + TAIL.len());
    text.push_str(HEAD);
    text.push_str(payload_b64);
    text.push_str(TAIL);
    text
}

/// [`media`] of raw audio: base64-encoded straight into the frame's text.
pub fn media_of(audio: &[u8]) -> String {
    use base64::Engine as _;
    const HEAD: &str = r#"{"event":"media","media":{"payload":""#;
    const TAIL: &str = r#""}}"#;
    let mut text = String::with_capacity(HEAD.len() + audio.len().div_ceil(3) * 4 + TAIL.len());
    text.push_str(HEAD);
    base64::engine::general_purpose::STANDARD.encode_string(audio, &mut text);
    text.push_str(TAIL);
    text
}

/// `{"event":"mark","mark":{"name":…}}`: Telnyx echoes it once the audio before it played.
pub fn mark(name: &str) -> String {
    json!({"event": "mark", "mark": {"name": name}}).to_string()
}

/// `{"event":"clear"}`: stop playback and flush Telnyx's queue.
pub fn clear() -> String {
    json!({"event": "clear"}).to_string()
}

/// A number that may be sent as a JSON number or a decimal string; anything else is `None`
/// rather than a parse failure, so one odd field does not cost the whole frame.
fn lenient_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
        Other(IgnoredAny),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        Some(Raw::Number(n)) => Some(n),
        Some(Raw::Text(s)) => s.trim().parse().ok(),
        Some(Raw::Other(_)) | None => None,
    })
}

fn lenient_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    lenient_number(d)
}

fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(lenient_number(d)?
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or_else(default_rate))
}

fn lenient_u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    Ok(lenient_number(d)?
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or_else(default_channels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Inbound {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn documented_frames_parse() {
        let start = parse(
            r#"{"event":"start","sequence_number":"1","stream_id":"32DE0DEA",
            "start":{"user_id":"u","call_control_id":"v2:T02","call_session_id":"s",
            "client_state":"aGk=","custom_parameters":{"a":"b"},
            "media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}}}"#,
        );
        let Inbound::Start { stream_id, start } = start else {
            panic!("not start")
        };
        assert_eq!(stream_id.as_deref(), Some("32DE0DEA"));
        assert_eq!(start.call_control_id.as_deref(), Some("v2:T02"));
        assert_eq!(start.client_state.as_deref(), Some("aGk="));
        assert_eq!(start.media_format.encoding, "PCMU");
        assert_eq!(start.media_format.sample_rate, 8000);

        let media = parse(
            r#"{"event":"media","sequence_number":"4","stream_id":"x",
            "media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"AAA="}}"#,
        );
        let Inbound::Media { media } = media else {
            panic!("not media")
        };
        assert_eq!((media.chunk, media.timestamp), (Some(2), Some(5)));
        assert_eq!(media.payload, "AAA=");

        let error = parse(
            r#"{"event":"error","stream_id":"x","payload":{"code":100003,"title":"malformed_frame","detail":"d"}}"#,
        );
        let Inbound::Error { payload } = error else {
            panic!("not error")
        };
        assert_eq!(payload.code, Some(100_003));
        assert_eq!(payload.title, "malformed_frame");

        assert!(matches!(
            parse(r#"{"event":"stop","stop":{"call_control_id":"c"}}"#),
            Inbound::Stop
        ));
        assert!(matches!(
            parse(r#"{"event":"something_new","x":1}"#),
            Inbound::Unknown
        ));
    }

    #[test]
    fn token_in_either_place_and_lenient_numbers() {
        let top = parse(
            r#"{"event":"connected","version":"1.0.0","x-telnyx-streaming-auth-token":"t1"}"#,
        );
        assert_eq!(top.connected_token(), Some("t1"));
        let nested =
            parse(r#"{"event":"connected","connected":{"x-telnyx-streaming-auth-token":"t2"}}"#);
        assert_eq!(nested.connected_token(), Some("t2"));
        assert_eq!(
            parse(r#"{"event":"connected","version":"1.0.0"}"#).connected_token(),
            None
        );

        let media =
            parse(r#"{"event":"media","media":{"chunk":7,"timestamp":"junk","payload":""}}"#);
        let Inbound::Media { media } = media else {
            panic!("not media")
        };
        assert_eq!((media.chunk, media.timestamp), (Some(7), None));

        let start = parse(
            r#"{"event":"start","stream_id":"s","start":{"media_format":{"encoding":"audio/x-mulaw","sample_rate":"8000","channels":null}}}"#,
        );
        let Inbound::Start { start, .. } = start else {
            panic!("not start")
        };
        assert_eq!(start.media_format.sample_rate, 8000);
        assert_eq!(start.media_format.channels, 1);
    }

    #[test]
    fn media_frames_read_in_one_pass_agree_with_the_full_parse() {
        let frames = [
            r#"{"event":"media","sequence_number":"4","stream_id":"x","media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"AAA="}}"#,
            r#"{"event":"media","media":{"chunk":7,"timestamp":40,"payload":"/+8="}}"#,
            r#"{"media":{"payload":"AAA=","track":"outbound"},"event":"media"}"#,
            r#"{"event":"media","media":{"chunk":null,"payload":""}}"#,
            r#"{"event":"media","media":{"timestamp":" 12 ","payload":"A\/8="}}"#,
            r#"{"event":"media","media":{"chunk":"junk","payload":"AAA="}}"#,
            r#"{"event":"media"}"#,
        ];
        for text in frames {
            let Inbound::Media { media: full } = parse(text) else {
                panic!("not media: {text}")
            };
            assert_eq!(media_frame(text), Some(full.as_ref()), "{text}");
        }
        // Borrowed from the text when nothing is escaped.
        let fast = media_frame(frames[0]).unwrap();
        assert!(matches!(fast.payload, Cow::Borrowed("AAA=")));
        // Other frames, and media frames only the lenient parse accepts, are left to it.
        for text in [
            r#"{"event":"start","stream_id":"s","start":{}}"#,
            r#"{"event":"mark","mark":{"name":"m"}}"#,
            r#"{"event":"stop"}"#,
            r#"{"event":"media","media":{"chunk":[1],"payload":"AAA="}}"#,
            r#"not json"#,
        ] {
            assert_eq!(media_frame(text), None, "{text}");
        }
        let Inbound::Media { media } =
            parse(r#"{"event":"media","media":{"chunk":[1],"payload":"AAA="}}"#)
        else {
            panic!("not media")
        };
        assert_eq!((media.chunk, media.payload.as_str()), (None, "AAA="));
    }

    #[test]
    fn outbound_frames() {
        let payload = "/+8AAA==";
        let written: serde_json::Value = serde_json::from_str(&media(payload)).unwrap();
        assert_eq!(
            written,
            json!({"event": "media", "media": {"payload": payload}})
        );
        assert_eq!(media_of(&[0xff, 0xef, 0, 0]), media(payload));
        assert_eq!(
            media("AAA="),
            r#"{"event":"media","media":{"payload":"AAA="}}"#
        );
        assert_eq!(
            mark("greeting-end"),
            r#"{"event":"mark","mark":{"name":"greeting-end"}}"#
        );
        assert_eq!(clear(), r#"{"event":"clear"}"#);
    }
}
