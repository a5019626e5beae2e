//! Deepgram live-transcription JSON (vendor-protocols.md sections 2.2 and 2.3), exactly as on
//! the wire. Server messages are parsed leniently: every field may be missing or `null`, and
//! message types this client does not know are [`ServerMessage::Other`]. Nothing outside
//! `clients::deepgram` sees these types.

use serde::{Deserialize, Serialize};

/// A control message, client -> server (section 2.2): always a text frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum Control {
    /// Holds an idle socket open (the server closes with `NET-0001` after 10 s without audio
    /// or a `KeepAlive`).
    KeepAlive,
    /// Flush: the server finalizes what it has (`from_finalize: true`).
    Finalize,
    /// The server flushes its final results, sends `Metadata` and closes with 1000.
    CloseStream,
}

impl Control {
    /// The text frame's payload.
    pub fn json(self) -> String {
        // A fieldless enum always serializes; the fallback is never taken.
        serde_json::to_string(&self).unwrap_or_default()
    }
}

/// A message, server -> client (section 2.3), discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum ServerMessage {
    /// A transcript of a stretch of audio.
    Results(Results),
    /// No word for `utterance_end_ms` after the last one.
    UtteranceEnd(UtteranceEnd),
    /// The voice-activity detector heard speech begin (`vad_events=true`).
    SpeechStarted(SpeechStarted),
    /// Summary of the connection, sent after `CloseStream`.
    Metadata(Metadata),
    /// A type this client does not know (ignored).
    #[serde(other)]
    Other,
}

/// `Results`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Results {
    /// Start of the stretch, seconds of connection audio.
    pub start: Option<f64>,
    /// Length of the stretch, seconds.
    pub duration: Option<f64>,
    /// The stretch will not change any more.
    pub is_final: Option<bool>,
    /// The endpointer decided the utterance ended here.
    pub speech_final: Option<bool>,
    /// The result answers a `Finalize`.
    pub from_finalize: Option<bool>,
    /// The (only) channel's alternatives.
    pub channel: Option<Channel>,
}

/// `Results.channel`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Channel {
    /// Best first.
    pub alternatives: Option<Vec<Alternative>>,
}

/// One transcription hypothesis.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Alternative {
    /// The words (often empty on silence).
    pub transcript: Option<String>,
    /// 0..=1.
    pub confidence: Option<f64>,
}

/// `UtteranceEnd`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct UtteranceEnd {
    /// End of the last word, seconds of connection audio.
    pub last_word_end: Option<f64>,
}

/// `SpeechStarted`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct SpeechStarted {
    /// Where speech began, seconds of connection audio.
    pub timestamp: Option<f64>,
}

/// `Metadata` (only what is logged).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// Deepgram's id of the connection.
    pub request_id: Option<String>,
    /// Audio received on the connection, seconds.
    pub duration: Option<f64>,
}

/// The JSON body of a refused handshake (`{"err_code", "err_msg", "request_id"}`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    /// `INVALID_AUTH`, `ASR_PAYMENT_REQUIRED`, ...
    pub err_code: Option<String>,
    /// Human-readable reason.
    pub err_msg: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_serialize_as_the_sdk_does() {
        assert_eq!(Control::KeepAlive.json(), r#"{"type":"KeepAlive"}"#);
        assert_eq!(Control::Finalize.json(), r#"{"type":"Finalize"}"#);
        assert_eq!(Control::CloseStream.json(), r#"{"type":"CloseStream"}"#);
    }

    #[test]
    fn documented_messages_parse() {
        let results = r#"{"type":"Results","channel_index":[0,1],"duration":1.04,"start":0.0,
            "is_final":true,"speech_final":true,"from_finalize":false,
            "channel":{"alternatives":[{"transcript":"hello world","confidence":0.98,
              "words":[{"word":"hello","start":0.08,"end":0.4,"confidence":0.99,"punctuated_word":"Hello"}]}]},
            "metadata":{"request_id":"a1b2","model_uuid":"x","model_info":{"name":"general-nova-3"}}}"#;
        let ServerMessage::Results(r) = serde_json::from_str(results).unwrap() else {
            panic!("not Results");
        };
        assert_eq!(r.duration, Some(1.04));
        assert_eq!(r.is_final, Some(true));
        let alt = &r.channel.unwrap().alternatives.unwrap()[0];
        assert_eq!(alt.transcript.as_deref(), Some("hello world"));

        let ue: ServerMessage = serde_json::from_str(
            r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.395}"#,
        )
        .unwrap();
        assert_eq!(
            ue,
            ServerMessage::UtteranceEnd(UtteranceEnd {
                last_word_end: Some(2.395)
            })
        );
        let ss: ServerMessage =
            serde_json::from_str(r#"{"type":"SpeechStarted","channel":[0],"timestamp":9.54}"#)
                .unwrap();
        assert_eq!(
            ss,
            ServerMessage::SpeechStarted(SpeechStarted {
                timestamp: Some(9.54)
            })
        );
        let md: ServerMessage = serde_json::from_str(
            r#"{"type":"Metadata","transaction_key":"deprecated","request_id":"a1b2","sha256":"s",
               "created":"2025-01-01T00:00:00.000Z","duration":25.1,"channels":1,"models":["u"],
               "model_info":{"u":{"name":"n"}}}"#,
        )
        .unwrap();
        assert!(matches!(md, ServerMessage::Metadata(m) if m.duration == Some(25.1)));
    }

    #[test]
    fn parsing_is_lenient() {
        let bare: ServerMessage = serde_json::from_str(r#"{"type":"Results"}"#).unwrap();
        assert_eq!(bare, ServerMessage::Results(Results::default()));
        let nulls: ServerMessage = serde_json::from_str(
            r#"{"type":"Results","start":null,"channel":{"alternatives":[{"transcript":null}]}}"#,
        )
        .unwrap();
        assert!(matches!(nulls, ServerMessage::Results(_)));
        let unknown: ServerMessage =
            serde_json::from_str(r#"{"type":"Warning","description":"x"}"#).unwrap();
        assert_eq!(unknown, ServerMessage::Other);
        let body: ErrorBody = serde_json::from_str(
            r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"r"}"#,
        )
        .unwrap();
        assert_eq!(body.err_msg.as_deref(), Some("Invalid credentials."));
    }
}
