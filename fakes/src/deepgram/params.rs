//! The query string of `GET /v1/listen` (vendor-protocols.md section 2.1), checked at the
//! handshake the way Deepgram does: a value it would reject gets HTTP 400 with a `dg-error`
//! naming the parameter.
//!
//! Values Deepgram accepts but this fake cannot honour (audio it cannot decode, containerized
//! audio, separate channels) are refused too, with a `dg-error` that starts with
//! [`UNSUPPORTED`], so that a client configured in a way the fake cannot check fails loudly
//! instead of receiving made-up transcripts. Parameters that only shape real recognition
//! (`language`, `keyterm`, `diarize`, `redact`, ...) are accepted and ignored.

/// Prefix of the `dg-error` of a valid request the fake cannot serve.
pub const UNSUPPORTED: &str = "fake-deepgram does not support";

/// Every `encoding` Deepgram's live endpoint takes (section 2.1).
const KNOWN_ENCODINGS: [&str; 11] = [
    "linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus",
    "speex", "g729",
];

/// Boolean parameters: anything but `true`/`false` is a 400.
const BOOLEANS: [&str; 14] = [
    "interim_results",
    "vad_events",
    "punctuate",
    "smart_format",
    "multichannel",
    "diarize",
    "numerals",
    "profanity_filter",
    "filler_words",
    "dictation",
    "measurements",
    "detect_entities",
    "mip_opt_out",
    "no_delay",
];

/// Audio encodings the fake decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// Signed 16-bit little-endian PCM.
    Linear16,
    /// G.711 mu-law, one byte a sample.
    Mulaw,
    /// G.711 A-law, one byte a sample.
    Alaw,
}

impl Encoding {
    /// Bytes of one sample of one channel.
    pub(crate) fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::Linear16 => 2,
            Encoding::Mulaw | Encoding::Alaw => 1,
        }
    }

    /// Decodes one sample from exactly [`Self::bytes_per_sample`] bytes.
    pub(crate) fn decode(self, bytes: &[u8]) -> i16 {
        match self {
            Encoding::Linear16 => i16::from_le_bytes([bytes[0], bytes[1]]),
            Encoding::Mulaw => crate::telnyx::g711::ulaw_to_linear(bytes[0]),
            Encoding::Alaw => crate::telnyx::g711::alaw_to_linear(bytes[0]),
        }
    }
}

/// What a live connection asked for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenParams {
    /// `model`, echoed in `model_info`.
    pub(crate) model: String,
    pub(crate) encoding: Encoding,
    /// Samples per second per channel.
    pub(crate) sample_rate: u32,
    /// Interleaved channels, mixed down for voice-activity detection.
    pub(crate) channels: u16,
    pub(crate) interim_results: bool,
    /// Silence (ms) that ends an utterance with `speech_final`; `None` for `endpointing=false`.
    pub(crate) endpointing: Option<u64>,
    pub(crate) utterance_end_ms: Option<u64>,
    pub(crate) vad_events: bool,
    /// `punctuate` or `smart_format`: transcripts keep the script's casing and punctuation and
    /// words carry `punctuated_word`.
    pub(crate) punctuate: bool,
    /// Every `tag` value, in order.
    pub(crate) tags: Vec<String>,
    /// Every `extra` value split at its first `:`, echoed in `metadata.extra`.
    pub(crate) extra: Vec<(String, String)>,
}

/// Deepgram's default `endpointing` (section 2.1).
const DEFAULT_ENDPOINTING_MS: u64 = 10;

/// Checks `pairs` (decoded, in query order). `Err` carries the `dg-error` text of a 400.
/// `min_utterance_end_ms` is the smallest `utterance_end_ms` accepted.
pub(crate) fn parse(
    pairs: &[(String, String)],
    min_utterance_end_ms: u64,
) -> Result<ListenParams, String> {
    // The last value wins for parameters that are not repeatable, as in most query parsers.
    let get = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let all = |name: &str| -> Vec<String> {
        pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };

    for name in BOOLEANS {
        if let Some(v) = get(name) {
            if v != "true" && v != "false" {
                return Err(format!(
                    "Invalid value for `{name}`: expected `true` or `false`, got `{v}`."
                ));
            }
        }
    }
    let flag = |name: &str| get(name) == Some("true");

    let model = match get("model") {
        Some(m) if !m.trim().is_empty() => m.to_owned(),
        _ => return Err("Missing required parameter `model`.".to_owned()),
    };

    let encoding = match get("encoding") {
        None => {
            return Err(format!(
                "{UNSUPPORTED} containerized audio: set `encoding` and `sample_rate`."
            ))
        }
        Some("linear16") => Encoding::Linear16,
        Some("mulaw") => Encoding::Mulaw,
        Some("alaw") => Encoding::Alaw,
        Some(e) if KNOWN_ENCODINGS.contains(&e) => {
            return Err(format!("{UNSUPPORTED} encoding `{e}`."))
        }
        Some(e) => return Err(format!("Invalid value for `encoding`: `{e}`.")),
    };

    let sample_rate = match get("sample_rate") {
        None => return Err("`sample_rate` is required when `encoding` is provided.".to_owned()),
        Some(v) => match v.parse::<u32>() {
            Ok(r) if (1..=192_000).contains(&r) => r,
            _ => return Err(format!("Invalid value for `sample_rate`: `{v}`.")),
        },
    };

    let channels = match get("channels") {
        None => 1,
        Some(v) => match v.parse::<u16>() {
            Ok(c) if (1..=16).contains(&c) => c,
            _ => return Err(format!("Invalid value for `channels`: `{v}`.")),
        },
    };
    if channels > 1 && flag("multichannel") {
        return Err(format!(
            "{UNSUPPORTED} `multichannel=true`: channels are mixed down."
        ));
    }

    let endpointing = match get("endpointing") {
        None | Some("true") => Some(DEFAULT_ENDPOINTING_MS),
        Some("false") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) => Some(ms),
            Err(_) => {
                return Err(format!(
                    "Invalid value for `endpointing`: expected milliseconds or `false`, got `{v}`."
                ))
            }
        },
    };

    let utterance_end_ms = match get("utterance_end_ms") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if ms >= min_utterance_end_ms => Some(ms),
            Ok(_) => {
                return Err(format!(
                    "Invalid value for `utterance_end_ms`: must be at least {min_utterance_end_ms}."
                ))
            }
            Err(_) => return Err(format!("Invalid value for `utterance_end_ms`: `{v}`.")),
        },
    };

    let mut extra = Vec::new();
    for v in all("extra") {
        match v.split_once(':') {
            Some((k, val)) if !k.is_empty() => extra.push((k.to_owned(), val.to_owned())),
            _ => {
                return Err(format!(
                    "Invalid value for `extra`: expected `key:value`, got `{v}`."
                ))
            }
        }
    }

    Ok(ListenParams {
        model,
        encoding,
        sample_rate,
        channels,
        interim_results: flag("interim_results"),
        endpointing,
        utterance_end_ms,
        vad_events: flag("vad_events"),
        punctuate: flag("punctuate") || flag("smart_format"),
        tags: all("tag"),
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        s.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    #[test]
    fn a_telephony_query_parses_with_deepgram_defaults() {
        let p = parse(
            &q("model=nova-3&encoding=mulaw&sample_rate=8000&tag=a&tag=b&extra=call:42"),
            1000,
        )
        .unwrap();
        assert_eq!(p.encoding, Encoding::Mulaw);
        assert_eq!(p.sample_rate, 8000);
        assert_eq!(p.channels, 1);
        assert_eq!(p.endpointing, Some(10));
        assert!(!p.interim_results && !p.vad_events && !p.punctuate);
        assert_eq!(p.utterance_end_ms, None);
        assert_eq!(p.tags, vec!["a", "b"]);
        assert_eq!(p.extra, vec![("call".to_owned(), "42".to_owned())]);
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let base = "model=nova-3&encoding=linear16&sample_rate=16000";
        for (extra, name) in [
            ("&interim_results=yes", "interim_results"),
            ("&endpointing=soon", "endpointing"),
            ("&utterance_end_ms=500", "utterance_end_ms"),
            ("&utterance_end_ms=x", "utterance_end_ms"),
            ("&channels=0", "channels"),
            ("&sample_rate=fast", "sample_rate"),
            ("&extra=novalue", "extra"),
        ] {
            let err = parse(&q(&format!("{base}{extra}")), 1000).unwrap_err();
            assert!(err.contains(name), "{extra}: {err}");
        }
        assert!(parse(&q("encoding=mulaw&sample_rate=8000"), 0)
            .unwrap_err()
            .contains("model"));
        assert!(parse(&q("model=nova-3&encoding=mulaw"), 0)
            .unwrap_err()
            .contains("sample_rate"));
        assert!(parse(&q("model=nova-3&encoding=wav&sample_rate=8000"), 0)
            .unwrap_err()
            .starts_with("Invalid value for `encoding`"));
        assert!(parse(&q("model=nova-3&encoding=opus&sample_rate=48000"), 0)
            .unwrap_err()
            .starts_with(UNSUPPORTED));
    }

    #[test]
    fn endpointing_false_disables_and_smart_format_punctuates() {
        let p = parse(
            &q("model=nova-2&encoding=alaw&sample_rate=8000&endpointing=false&smart_format=true"),
            0,
        )
        .unwrap();
        assert_eq!(p.endpointing, None);
        assert!(p.punctuate);
    }
}
