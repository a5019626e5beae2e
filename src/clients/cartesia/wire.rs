//! Cartesia's `/tts/websocket` JSON (vendor-protocols.md sections 3.2 and 3.3), exactly as on
//! the wire. Requests are built from borrowed parts; responses are parsed leniently (unknown
//! message types and fields are ignored, optional fields may be missing or `null`). Nothing
//! outside `clients::cartesia` sees these types.

use serde::{Deserialize, Serialize};

/// A generation request (section 3.2): the first piece of a context or a continuation.
#[derive(Debug, Clone, Serialize)]
pub(super) struct GenerationRequest<'a> {
    pub model_id: &'a str,
    pub transcript: &'a str,
    pub voice: Voice<'a>,
    pub output_format: OutputFormat,
    pub context_id: &'a str,
    /// `false` closes the context's input.
    #[serde(rename = "continue")]
    pub continue_: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<&'a str>,
    pub add_timestamps: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_buffer_delay_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<GenerationConfig>,
}

/// `voice` in the `{"mode":"id","id":..}` shape every API version accepts.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Voice<'a> {
    pub mode: &'static str,
    pub id: &'a str,
}

impl<'a> Voice<'a> {
    pub(super) fn id(id: &'a str) -> Self {
        Voice { mode: "id", id }
    }
}

/// `output_format` of a `raw` container.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct OutputFormat {
    pub container: &'static str,
    pub encoding: &'static str,
    pub sample_rate: u32,
}

impl OutputFormat {
    /// What the phone call plays without conversion: headerless G.711 mu-law at 8 kHz.
    pub(super) const MULAW_8K: OutputFormat = OutputFormat {
        container: "raw",
        encoding: "pcm_mulaw",
        sample_rate: 8_000,
    };
}

/// `generation_config` (only `speed` is used).
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct GenerationConfig {
    pub speed: f32,
}

/// `{"context_id":..,"cancel":true}`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct CancelRequest<'a> {
    pub context_id: &'a str,
    pub cancel: bool,
}

/// A server message (section 3.3), discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum ServerMessage {
    /// Audio of a context, base64.
    Chunk {
        #[serde(default)]
        context_id: Option<String>,
        #[serde(default)]
        data: Option<String>,
    },
    /// Word timings of a context.
    Timestamps {
        #[serde(default)]
        context_id: Option<String>,
        #[serde(default)]
        word_timestamps: Option<WordTimestamps>,
    },
    /// The context produced all its audio.
    Done {
        #[serde(default)]
        context_id: Option<String>,
    },
    /// A failure, of a context when `context_id` is there.
    Error {
        #[serde(default)]
        context_id: Option<String>,
        #[serde(default)]
        status_code: Option<u16>,
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        message: Option<String>,
        /// Some API versions put the text here instead of `message`.
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        error_code: Option<String>,
    },
    /// `flush_done`, `phoneme_timestamps` and anything newer: not used.
    #[serde(other)]
    Other,
}

/// `word_timestamps`: parallel arrays, seconds from the start of the context's audio.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct WordTimestamps {
    #[serde(default)]
    pub words: Vec<String>,
    #[serde(default)]
    pub start: Vec<f64>,
    #[serde(default)]
    pub end: Vec<f64>,
}

impl WordTimestamps {
    /// `(word, start_s, end_s)`; a word without both times is left out.
    pub(super) fn into_words(self) -> Vec<(String, f32, f32)> {
        self.words
            .into_iter()
            .zip(self.start)
            .zip(self.end)
            .map(|((w, s), e)| (w, s as f32, e as f32))
            .collect()
    }
}

/// A refused handshake's JSON body (the same fields as an `error` message).
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl ErrorBody {
    /// The most specific text the vendor gave.
    pub(super) fn text(self) -> Option<String> {
        self.message.or(self.error).or(self.title)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_first_piece_serializes_as_section_3_2_shows() {
        let req = GenerationRequest {
            model_id: "sonic-3",
            transcript: "Hello, how can I help? ",
            voice: Voice::id("a0e99841"),
            output_format: OutputFormat::MULAW_8K,
            context_id: "call-42-turn-3",
            continue_: true,
            language: Some("en"),
            add_timestamps: true,
            max_buffer_delay_ms: Some(0),
            generation_config: Some(GenerationConfig { speed: 1.25 }),
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({
                "model_id": "sonic-3",
                "transcript": "Hello, how can I help? ",
                "voice": {"mode": "id", "id": "a0e99841"},
                "output_format": {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000},
                "context_id": "call-42-turn-3",
                "continue": true,
                "language": "en",
                "add_timestamps": true,
                "max_buffer_delay_ms": 0,
                "generation_config": {"speed": 1.25},
            })
        );
        let bare = GenerationRequest {
            language: None,
            max_buffer_delay_ms: None,
            generation_config: None,
            ..req
        };
        let v = serde_json::to_value(&bare).unwrap();
        for absent in ["language", "max_buffer_delay_ms", "generation_config"] {
            assert!(v.get(absent).is_none(), "{absent}");
        }
        assert_eq!(
            serde_json::to_value(CancelRequest {
                context_id: "c",
                cancel: true
            })
            .unwrap(),
            json!({"context_id": "c", "cancel": true})
        );
    }

    #[test]
    fn every_server_message_of_section_3_3_parses() {
        let parse = |v: serde_json::Value| serde_json::from_value::<ServerMessage>(v).unwrap();
        assert_eq!(
            parse(
                json!({"type":"chunk","context_id":"c","data":"AAE=","done":false,"status_code":206,"step_time":12.3,"flush_id":1})
            ),
            ServerMessage::Chunk {
                context_id: Some("c".into()),
                data: Some("AAE=".into())
            }
        );
        let ServerMessage::Timestamps {
            word_timestamps: Some(ts),
            ..
        } = parse(
            json!({"type":"timestamps","context_id":"c","done":false,"status_code":206,
            "word_timestamps":{"words":["Hello,","how"],"start":[0.0,0.42],"end":[0.38,0.6]}}),
        )
        else {
            panic!("timestamps");
        };
        assert_eq!(
            ts.into_words(),
            vec![("Hello,".into(), 0.0, 0.38), ("how".into(), 0.42, 0.6)]
        );
        assert_eq!(
            parse(json!({"type":"done","context_id":"c","done":true,"status_code":206})),
            ServerMessage::Done {
                context_id: Some("c".into())
            }
        );
        let ServerMessage::Error {
            context_id,
            status_code,
            message,
            ..
        } = parse(
            json!({"type":"error","context_id":"c","done":true,"status_code":400,
            "title":"Invalid request","message":"bad","error_code":"x","doc_url":"u","request_id":"r"}),
        )
        else {
            panic!("error");
        };
        assert_eq!(
            (context_id.as_deref(), status_code, message.as_deref()),
            (Some("c"), Some(400), Some("bad"))
        );
        assert_eq!(
            parse(json!({"type":"flush_done","context_id":"c","flush_done":true,"flush_id":1})),
            ServerMessage::Other
        );
        assert_eq!(
            parse(json!({"type":"phoneme_timestamps","context_id":"c"})),
            ServerMessage::Other
        );
        assert!(matches!(
            parse(json!({"type":"error","status_code":null})),
            ServerMessage::Error {
                context_id: None,
                status_code: None,
                ..
            }
        ));
    }
}
