//! Output formats the fake can produce (section 3.2 `output_format`): containers, encodings and
//! sample rates, and the arithmetic the per-character audio rule needs.
//!
//! Pure values only; parsing the wire JSON into them lives in [`super::wire`].

use std::fmt;

/// The sample rates section 3.2 lists for `raw` and `wav`; anything else is a 400.
pub const SAMPLE_RATES: [u32; 6] = [8_000, 16_000, 22_050, 24_000, 44_100, 48_000];

/// The `bit_rate` values section 3.2 lists for `mp3` (checked before mp3 is refused).
pub const MP3_BIT_RATES: [u32; 5] = [32_000, 64_000, 96_000, 128_000, 192_000];

/// `output_format.container`. `mp3` is valid on the wire but refused by the fake, so it has no
/// variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Container {
    /// Headerless samples.
    Raw,
    /// RIFF/WAVE: a header, then the same samples as `raw`.
    Wav,
}

impl Container {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Container::Raw => "raw",
            Container::Wav => "wav",
        }
    }
}

/// `output_format.encoding`: mono samples, little-endian where it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// 16-bit signed linear PCM (`pcm_s16le`).
    PcmS16le,
    /// 32-bit IEEE float PCM in [-1, 1] (`pcm_f32le`).
    PcmF32le,
    /// G.711 mu-law, one byte a sample (`pcm_mulaw`).
    PcmMulaw,
    /// G.711 A-law, one byte a sample (`pcm_alaw`).
    PcmAlaw,
}

impl Encoding {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::PcmS16le => "pcm_s16le",
            Encoding::PcmF32le => "pcm_f32le",
            Encoding::PcmMulaw => "pcm_mulaw",
            Encoding::PcmAlaw => "pcm_alaw",
        }
    }

    /// Parses a wire value; `None` for anything not in section 3.2.
    pub fn from_wire(s: &str) -> Option<Encoding> {
        match s {
            "pcm_s16le" => Some(Encoding::PcmS16le),
            "pcm_f32le" => Some(Encoding::PcmF32le),
            "pcm_mulaw" => Some(Encoding::PcmMulaw),
            "pcm_alaw" => Some(Encoding::PcmAlaw),
            _ => None,
        }
    }

    /// Bytes of one sample.
    pub fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::PcmS16le => 2,
            Encoding::PcmF32le => 4,
            Encoding::PcmMulaw | Encoding::PcmAlaw => 1,
        }
    }
}

/// A validated `output_format` of container `raw` or `wav`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutputFormat {
    /// `raw` or `wav`.
    pub container: Container,
    /// Sample encoding.
    pub encoding: Encoding,
    /// Samples per second; one of [`SAMPLE_RATES`].
    pub sample_rate: u32,
}

impl OutputFormat {
    /// A `raw` format.
    pub fn raw(encoding: Encoding, sample_rate: u32) -> Self {
        OutputFormat {
            container: Container::Raw,
            encoding,
            sample_rate,
        }
    }

    /// A `wav` format.
    pub fn wav(encoding: Encoding, sample_rate: u32) -> Self {
        OutputFormat {
            container: Container::Wav,
            encoding,
            sample_rate,
        }
    }

    /// Samples of audio the fake makes for one transcript character:
    /// `sample_rate * ms_per_char / 1000`, rounded down. With the default 60 ms it is exact for
    /// every rate in [`SAMPLE_RATES`] (480 at 8 kHz, 1323 at 22.05 kHz).
    pub fn samples_per_char(&self, ms_per_char: u32) -> usize {
        (u64::from(self.sample_rate) * u64::from(ms_per_char) / 1_000) as usize
    }

    /// Bytes of audio (without any WAV header) for a transcript of `chars` characters.
    pub fn audio_bytes_for_chars(&self, chars: usize, ms_per_char: u32) -> usize {
        chars * self.samples_per_char(ms_per_char) * self.encoding.bytes_per_sample()
    }

    /// The `output_format` JSON a client would send for this format.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "container": self.container.as_str(),
            "encoding": self.encoding.as_str(),
            "sample_rate": self.sample_rate,
        })
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}@{}",
            self.container.as_str(),
            self.encoding.as_str(),
            self.sample_rate
        )
    }
}
