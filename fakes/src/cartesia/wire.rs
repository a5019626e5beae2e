//! Cartesia's JSON on the wire (sections 3.2-3.4): parsing and validating generation requests,
//! and building every message and error body the fake sends.
//!
//! Parsing is lenient where the protocol notes say to be (unknown fields are ignored, optional
//! fields may be `null`) and strict about what section 3.2 documents (required fields, the
//! encodings, sample rates and ranges listed there). Every failure is a [`WireError`] with
//! status 400, sent back as an `error` message or an HTTP error body of the same shape.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::format::{Container, Encoding, OutputFormat, MP3_BIT_RATES, SAMPLE_RATES};

/// `status_code` of every non-error WebSocket message (section 3.3's example value).
pub(crate) const STATUS_STREAMING: u16 = 206;

/// An error as Cartesia reports it: in a WebSocket `error` message or an HTTP error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError {
    pub(crate) status: u16,
    pub(crate) title: &'static str,
    pub(crate) error_code: &'static str,
    pub(crate) message: String,
}

impl WireError {
    /// A 400 for a request that breaks section 3.2.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        WireError {
            status: 400,
            title: "Invalid request",
            error_code: "invalid_request",
            message: message.into(),
        }
    }

    /// A request without `Cartesia-Version` (or with one not shaped `YYYY-MM-DD`).
    pub(crate) fn bad_version(message: impl Into<String>) -> Self {
        WireError {
            status: 400,
            title: "Invalid version",
            error_code: "invalid_version",
            message: message.into(),
        }
    }

    /// Missing or wrong credentials.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        WireError {
            status: 401,
            title: "Unauthorized",
            error_code: "unauthorized",
            message: message.into(),
        }
    }

    /// Unknown path.
    pub(crate) fn not_found() -> Self {
        WireError {
            status: 404,
            title: "Not found",
            error_code: "not_found",
            message: "No such endpoint.".to_owned(),
        }
    }

    /// What [`super::FakeCartesia::fail_next`] answers with `status`.
    pub(crate) fn injected(status: u16) -> Self {
        let (title, error_code, message) = match status {
            400 => (
                "Invalid request",
                "invalid_request",
                "The request was invalid.",
            ),
            401 => ("Unauthorized", "unauthorized", "Invalid API key."),
            402 => (
                "Payment required",
                "insufficient_credits",
                "You have run out of credits.",
            ),
            403 => ("Forbidden", "forbidden", "Access denied."),
            429 => (
                "Too many requests",
                "rate_limited",
                "Concurrency or rate limit exceeded; try again later.",
            ),
            s if s >= 500 => (
                "Internal server error",
                "internal_error",
                "An internal error occurred.",
            ),
            _ => ("Error", "error", "The request failed."),
        };
        WireError {
            status,
            title,
            error_code,
            message: message.to_owned(),
        }
    }

    /// The body fields shared by the WebSocket message and the HTTP body. `error` repeats
    /// `message` because SDK versions differ on which of the two they read (see the module
    /// docs of [`super`]).
    fn fields(&self, request_id: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("status_code".into(), json!(self.status));
        m.insert("title".into(), json!(self.title));
        m.insert("message".into(), json!(self.message));
        m.insert("error".into(), json!(self.message));
        m.insert("error_code".into(), json!(self.error_code));
        m.insert("request_id".into(), json!(request_id));
        m
    }

    /// The HTTP error body (also the body of a refused WebSocket handshake).
    pub(crate) fn http_body(&self) -> Value {
        Value::Object(self.fields(&new_request_id()))
    }

    /// The WebSocket `error` message, with `context_id` when the request had one.
    pub(crate) fn ws_message(&self, context_id: Option<&str>) -> String {
        let mut m = self.fields(&new_request_id());
        m.insert("type".into(), json!("error"));
        m.insert("done".into(), json!(true));
        if let Some(id) = context_id {
            m.insert("context_id".into(), json!(id));
        }
        Value::Object(m).to_string()
    }
}

fn new_request_id() -> String {
    Uuid::new_v4().to_string()
}

/// A valid generation request (section 3.2), WebSocket or `POST /tts/bytes`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Generation {
    pub(crate) model_id: String,
    pub(crate) transcript: String,
    pub(crate) voice_id: String,
    pub(crate) format: OutputFormat,
    /// Only on the WebSocket, where it is required.
    pub(crate) context_id: Option<String>,
    pub(crate) continue_: bool,
    pub(crate) flush: bool,
    pub(crate) add_timestamps: bool,
    pub(crate) language: Option<String>,
}

/// Validates a generation request. `needs_context` is true on the WebSocket.
pub(crate) fn parse_generation(
    body: &Map<String, Value>,
    needs_context: bool,
) -> Result<Generation, WireError> {
    let context_id = if needs_context {
        Some(required_str(body, "context_id")?.to_owned())
    } else {
        opt_str(body, "context_id")?.map(str::to_owned)
    };
    let model_id = required_str(body, "model_id")?;
    if model_id.is_empty() {
        return Err(WireError::invalid("model_id must not be empty"));
    }
    let transcript = required_str(body, "transcript")?.to_owned();
    let voice_id = parse_voice(body.get("voice"))?;
    let format = parse_output_format(body.get("output_format"))?;
    let continue_ = opt_bool(body, "continue")?.unwrap_or(false);
    let flush = opt_bool(body, "flush")?.unwrap_or(false);
    let add_timestamps = opt_bool(body, "add_timestamps")?.unwrap_or(false);
    for field in [
        "add_phoneme_timestamps",
        "use_normalized_timestamps",
        "save",
    ] {
        opt_bool(body, field)?;
    }
    let language = opt_str(body, "language")?.map(str::to_owned);
    opt_str(body, "pronunciation_dict_id")?;
    parse_speed(body.get("speed"))?;
    parse_generation_config(body.get("generation_config"))?;
    if let Some(v) = present(body, "max_buffer_delay_ms") {
        if v.as_u64().is_none() {
            return Err(WireError::invalid(
                "max_buffer_delay_ms must be a non-negative integer",
            ));
        }
    }
    Ok(Generation {
        model_id: model_id.to_owned(),
        transcript,
        voice_id,
        format,
        context_id,
        continue_,
        flush,
        add_timestamps,
        language,
    })
}

/// `voice` in any of the three shapes section 3.2 lists: `{"mode":"id","id":..}`, `{"id":..}`
/// or a bare id string.
fn parse_voice(v: Option<&Value>) -> Result<String, WireError> {
    let id = match v {
        None | Some(Value::Null) => return Err(WireError::invalid("missing field `voice`")),
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => {
            match opt_str(o, "mode")? {
                None | Some("id") => {}
                Some(other) => {
                    return Err(WireError::invalid(format!(
                        "voice mode `{other}` is not supported; use `id`"
                    )))
                }
            }
            required_str(o, "id").map_err(|_| WireError::invalid("missing field `voice.id`"))?
        }
        Some(_) => {
            return Err(WireError::invalid(
                "voice must be an object or a voice id string",
            ))
        }
    };
    if id.is_empty() {
        return Err(WireError::invalid("voice id must not be empty"));
    }
    Ok(id.to_owned())
}

fn parse_output_format(v: Option<&Value>) -> Result<OutputFormat, WireError> {
    let o = match v {
        None | Some(Value::Null) => {
            return Err(WireError::invalid("missing field `output_format`"))
        }
        Some(Value::Object(o)) => o,
        Some(_) => return Err(WireError::invalid("output_format must be an object")),
    };
    let container = required_str(o, "container")
        .map_err(|_| WireError::invalid("missing field `output_format.container`"))?;
    let sample_rate = match present(o, "sample_rate") {
        None => {
            return Err(WireError::invalid(
                "missing field `output_format.sample_rate`",
            ))
        }
        Some(v) => v
            .as_u64()
            .ok_or_else(|| WireError::invalid("output_format.sample_rate must be an integer"))?,
    };
    let container = match container {
        "raw" => Container::Raw,
        "wav" => Container::Wav,
        "mp3" => {
            if !SAMPLE_RATES.iter().any(|&r| u64::from(r) == sample_rate) {
                return Err(bad_rate(sample_rate));
            }
            let bit_rate = present(o, "bit_rate").and_then(Value::as_u64);
            if !bit_rate.is_some_and(|b| MP3_BIT_RATES.iter().any(|&r| u64::from(r) == b)) {
                return Err(WireError::invalid(format!(
                    "output_format.bit_rate must be one of {MP3_BIT_RATES:?} for mp3"
                )));
            }
            return Err(WireError::invalid(
                "mp3 output is not supported by this fake Cartesia; use raw or wav",
            ));
        }
        other => {
            return Err(WireError::invalid(format!(
                "unknown output_format.container `{other}`; expected raw, wav or mp3"
            )))
        }
    };
    let encoding = required_str(o, "encoding")
        .map_err(|_| WireError::invalid("missing field `output_format.encoding`"))?;
    let encoding = Encoding::from_wire(encoding).ok_or_else(|| {
        WireError::invalid(format!(
            "unknown output_format.encoding `{encoding}`; expected pcm_s16le, pcm_f32le, pcm_mulaw or pcm_alaw"
        ))
    })?;
    let Some(&sample_rate) = SAMPLE_RATES.iter().find(|&&r| u64::from(r) == sample_rate) else {
        return Err(bad_rate(sample_rate));
    };
    Ok(OutputFormat {
        container,
        encoding,
        sample_rate,
    })
}

fn bad_rate(rate: u64) -> WireError {
    WireError::invalid(format!(
        "unsupported output_format.sample_rate {rate}; expected one of {SAMPLE_RATES:?}"
    ))
}

/// `speed`: `slow`, `normal`, `fast`, or (older API versions) a number in [-1, 1].
fn parse_speed(v: Option<&Value>) -> Result<(), WireError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if matches!(s.as_str(), "slow" | "normal" | "fast") => Ok(()),
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| (-1.0..=1.0).contains(&f)) => Ok(()),
        Some(_) => Err(WireError::invalid(
            "speed must be `slow`, `normal` or `fast`",
        )),
    }
}

/// `generation_config{emotion, speed 0.6-1.5, volume 0.5-2.0}`.
fn parse_generation_config(v: Option<&Value>) -> Result<(), WireError> {
    let o = match v {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(WireError::invalid("generation_config must be an object")),
    };
    for (field, lo, hi) in [("speed", 0.6, 1.5), ("volume", 0.5, 2.0)] {
        if let Some(v) = present(o, field) {
            if !v.as_f64().is_some_and(|f| (lo..=hi).contains(&f)) {
                return Err(WireError::invalid(format!(
                    "generation_config.{field} must be a number between {lo} and {hi}"
                )));
            }
        }
    }
    Ok(())
}

/// A field that is there and not `null`.
fn present<'a>(o: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    o.get(field).filter(|v| !v.is_null())
}

fn required_str<'a>(o: &'a Map<String, Value>, field: &str) -> Result<&'a str, WireError> {
    opt_str(o, field)?.ok_or_else(|| WireError::invalid(format!("missing field `{field}`")))
}

pub(crate) fn opt_str<'a>(
    o: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, WireError> {
    match present(o, field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(WireError::invalid(format!("{field} must be a string"))),
    }
}

pub(crate) fn opt_bool(o: &Map<String, Value>, field: &str) -> Result<Option<bool>, WireError> {
    match present(o, field) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(WireError::invalid(format!("{field} must be a boolean"))),
    }
}

/// A `chunk` message.
pub(crate) fn chunk(context_id: &str, data_b64: &str, step_time_ms: f64, flush_id: u32) -> String {
    json!({
        "type": "chunk",
        "context_id": context_id,
        "data": data_b64,
        "done": false,
        "status_code": STATUS_STREAMING,
        "step_time": step_time_ms,
        "flush_id": flush_id,
    })
    .to_string()
}

/// A `timestamps` message; times in seconds from the start of the context's audio.
pub(crate) fn timestamps(
    context_id: &str,
    flush_id: u32,
    words: &[String],
    start: &[f64],
    end: &[f64],
) -> String {
    json!({
        "type": "timestamps",
        "context_id": context_id,
        "done": false,
        "status_code": STATUS_STREAMING,
        "flush_id": flush_id,
        "word_timestamps": {"words": words, "start": start, "end": end},
    })
    .to_string()
}

/// A `flush_done` message.
pub(crate) fn flush_done(context_id: &str, flush_id: u32) -> String {
    json!({
        "type": "flush_done",
        "context_id": context_id,
        "done": false,
        "flush_done": true,
        "flush_id": flush_id,
        "status_code": STATUS_STREAMING,
    })
    .to_string()
}

/// A `done` message.
pub(crate) fn done(context_id: &str) -> String {
    json!({
        "type": "done",
        "context_id": context_id,
        "done": true,
        "status_code": STATUS_STREAMING,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Map<String, Value> {
        json!({
            "model_id": "sonic-3",
            "transcript": "Hi",
            "voice": {"mode": "id", "id": "v1"},
            "output_format": {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000},
            "context_id": "c1",
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn accepts_all_three_voice_shapes() {
        for voice in [
            json!({"mode": "id", "id": "v1"}),
            json!({"id": "v1"}),
            json!("v1"),
        ] {
            let mut b = base();
            b.insert("voice".into(), voice);
            assert_eq!(parse_generation(&b, true).unwrap().voice_id, "v1");
        }
    }

    #[test]
    fn rejects_what_section_3_2_does_not_allow() {
        let cases = [
            (
                "output_format",
                json!({"container": "raw", "encoding": "pcm_u8", "sample_rate": 8000}),
            ),
            (
                "output_format",
                json!({"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 11025}),
            ),
            (
                "output_format",
                json!({"container": "ogg", "encoding": "pcm_mulaw", "sample_rate": 8000}),
            ),
            (
                "output_format",
                json!({"container": "mp3", "sample_rate": 44100, "bit_rate": 128000}),
            ),
            ("voice", json!({"mode": "embedding", "embedding": [0.1]})),
            ("continue", json!("yes")),
            ("generation_config", json!({"speed": 3.0})),
            ("max_buffer_delay_ms", json!(-5)),
        ];
        for (field, value) in cases {
            let mut b = base();
            b.insert(field.into(), value.clone());
            let e = parse_generation(&b, true).unwrap_err();
            assert_eq!(e.status, 400, "{field}={value}");
        }
        for field in [
            "model_id",
            "transcript",
            "voice",
            "output_format",
            "context_id",
        ] {
            let mut b = base();
            b.remove(field);
            let e = parse_generation(&b, true).unwrap_err();
            assert!(e.message.contains(field), "{}", e.message);
        }
        let mut b = base();
        b.remove("context_id");
        assert!(parse_generation(&b, false).is_ok());
    }
}
