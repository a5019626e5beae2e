//! The fake's "voice": deterministic, speech-like audio for a transcript, its word timestamps,
//! and the WAV header.
//!
//! The rule every caller relies on: each character of the transcript (whitespace and
//! punctuation included, counted as Unicode scalar values) becomes exactly
//! [`OutputFormat::samples_per_char`] samples. Audio is a pure function of the context's whole
//! text so far and the character range rendered, and depends only on characters at or before
//! each sample (never on text that has not arrived yet), so the audio of a context streamed in
//! continuations is byte-for-byte the audio of its concatenated transcript ([`synthesize`]).
//!
//! Within a word (a run of non-whitespace characters) a voiced tone sounds: a fundamental that
//! changes from word to word (120-180 Hz) plus two harmonics, under a syllable envelope with a
//! 10 ms attack; whitespace decays to digital silence within 10 ms. Word timestamps are the
//! character spans of the words, so they line up with the loud parts of the audio. It is not
//! meant to be recognised by a speech-to-text engine. No RNG, no clock.

use std::f64::consts::{PI, TAU};
use std::ops::Range;

use super::format::{Encoding, OutputFormat};
use crate::telnyx::g711;

/// Peak amplitude of voiced audio, as a fraction of full scale (about -10 dBFS).
const PEAK: f64 = 0.3;
/// Attack at the start of a word and decay after it.
const RAMP_S: f64 = 0.010;
/// Length of one "syllable" of the envelope inside a word.
const SYLLABLE_S: f64 = 0.24;

/// Renders characters `range` of `text` as samples in [-1, 1] at `sample_rate`,
/// `samples_per_char` samples each.
pub(crate) fn render(
    text: &[char],
    range: Range<usize>,
    sample_rate: u32,
    samples_per_char: usize,
    ms_per_char: u32,
) -> Vec<f32> {
    let rate = f64::from(sample_rate);
    let char_s = f64::from(ms_per_char) / 1_000.0;
    let mut out = Vec::with_capacity(range.len() * samples_per_char);
    // Word number and position in the word depend only on earlier characters, so walk them from
    // the start: this is what makes a continuation render the same as the whole text.
    let mut word = 0usize;
    let mut pos_in_word = 0usize;
    let mut prev_word_chars = 0usize;
    for (i, &c) in text.iter().enumerate().take(range.end) {
        let prev_ws = i == 0 || text[i - 1].is_whitespace();
        if c.is_whitespace() {
            if !prev_ws {
                prev_word_chars = pos_in_word;
            }
        } else if prev_ws {
            if i > 0 {
                word += 1;
            }
            pos_in_word = 0;
        }
        if i >= range.start {
            let f0 = 120.0 + 20.0 * (word % 4) as f64;
            for j in 0..samples_per_char {
                let n = i * samples_per_char + j;
                let t = n as f64 / rate;
                let tau = j as f64 / rate;
                let level = if c.is_whitespace() {
                    if prev_ws {
                        0.0
                    } else {
                        let end = prev_word_chars as f64 * char_s;
                        syllable(end) * (1.0 - tau / RAMP_S).max(0.0)
                    }
                } else {
                    let pos = pos_in_word as f64 * char_s + tau;
                    syllable(pos) * (pos / RAMP_S).min(1.0)
                };
                let p = TAU * f0 * t;
                let voiced = (p.sin() + 0.5 * (2.0 * p).sin() + 0.3 * (3.0 * p).sin()) / 1.8;
                out.push((PEAK * level * voiced) as f32);
            }
        }
        if !c.is_whitespace() {
            pos_in_word += 1;
        }
    }
    out
}

/// The syllable envelope at `pos` seconds into a word: never below 0.55 so a word stays loud.
fn syllable(pos: f64) -> f64 {
    0.55 + 0.45 * (PI * pos / SYLLABLE_S).sin().powi(2)
}

/// Encodes samples in [-1, 1] as `encoding` bytes.
pub(crate) fn encode(samples: &[f32], encoding: Encoding) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * encoding.bytes_per_sample());
    for &s in samples {
        let s = s.clamp(-1.0, 1.0);
        let linear = (s * 32_767.0).round() as i16;
        match encoding {
            Encoding::PcmS16le => out.extend_from_slice(&linear.to_le_bytes()),
            Encoding::PcmF32le => out.extend_from_slice(&s.to_le_bytes()),
            Encoding::PcmMulaw => out.push(g711::linear_to_ulaw(linear)),
            Encoding::PcmAlaw => out.push(g711::linear_to_alaw(linear)),
        }
    }
    out
}

/// The headerless audio the fake makes for `transcript` in `format` (the container is
/// ignored): what `POST /tts/bytes` returns for `raw`, what follows the header for `wav`, and
/// what the `chunk`s of a WebSocket context carry when their transcripts concatenate to
/// `transcript`. Its length is `chars * samples_per_char(ms_per_char) * bytes_per_sample`.
pub fn synthesize(transcript: &str, format: &OutputFormat, ms_per_char: u32) -> Vec<u8> {
    let text: Vec<char> = transcript.chars().collect();
    let pcm = render(
        &text,
        0..text.len(),
        format.sample_rate,
        format.samples_per_char(ms_per_char),
        ms_per_char,
    );
    encode(&pcm, format.encoding)
}

/// One word and its span, as character indices into the context's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WordSpan {
    pub(crate) word: String,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// Takes the words after `*cursor` that are both finished (followed by whitespace, or
/// `finished` says no more text will join them) and fully covered by the first
/// `chars_audible` characters' worth of audio; advances `*cursor` past them.
pub(crate) fn take_words(
    text: &[char],
    cursor: &mut usize,
    chars_audible: usize,
    finished: bool,
) -> Vec<WordSpan> {
    let mut words = Vec::new();
    loop {
        let mut start = *cursor;
        while start < text.len() && text[start].is_whitespace() {
            start += 1;
        }
        if start >= text.len() {
            break;
        }
        let mut end = start;
        while end < text.len() && !text[end].is_whitespace() {
            end += 1;
        }
        let complete = end < text.len() || finished;
        if !complete || end > chars_audible {
            break;
        }
        words.push(WordSpan {
            word: text[start..end].iter().collect(),
            start,
            end,
        });
        *cursor = end;
    }
    words
}

/// WAVE format tag of an encoding (PCM, IEEE float, A-law, mu-law).
fn format_tag(encoding: Encoding) -> u16 {
    match encoding {
        Encoding::PcmS16le => 1,
        Encoding::PcmF32le => 3,
        Encoding::PcmAlaw => 6,
        Encoding::PcmMulaw => 7,
    }
}

/// A RIFF/WAVE header for `data_len` bytes of `format` audio, mono. Non-PCM encodings get the
/// 18-byte `fmt ` chunk and the `fact` chunk the WAVE spec requires for them. `None` (a
/// stream whose length is not known yet) writes 0xFFFFFFFF into the size fields, as streaming
/// encoders do.
pub(crate) fn wav_header(format: &OutputFormat, data_len: Option<usize>) -> Vec<u8> {
    let bytes_per_sample = format.encoding.bytes_per_sample();
    let pcm = format.encoding == Encoding::PcmS16le;
    let fmt_len: u32 = if pcm { 16 } else { 18 };
    let fact_len: u32 = if pcm { 0 } else { 12 };
    let header_len = 12 + 8 + fmt_len + fact_len + 8;
    let (riff_size, data_size, samples) = match data_len {
        Some(n) => {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            (
                n.saturating_add(header_len - 8),
                n,
                n / bytes_per_sample as u32,
            )
        }
        None => (u32::MAX, u32::MAX, u32::MAX),
    };
    let mut h = Vec::with_capacity(header_len as usize);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&riff_size.to_le_bytes());
    h.extend_from_slice(b"WAVE");
    h.extend_from_slice(b"fmt ");
    h.extend_from_slice(&fmt_len.to_le_bytes());
    h.extend_from_slice(&format_tag(format.encoding).to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&format.sample_rate.to_le_bytes());
    h.extend_from_slice(&(format.sample_rate * bytes_per_sample as u32).to_le_bytes());
    h.extend_from_slice(&(bytes_per_sample as u16).to_le_bytes());
    h.extend_from_slice(&(bytes_per_sample as u16 * 8).to_le_bytes());
    if !pcm {
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(b"fact");
        h.extend_from_slice(&4u32.to_le_bytes());
        h.extend_from_slice(&samples.to_le_bytes());
    }
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_size.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_render_like_the_whole_text() {
        let text: Vec<char> = "Hi there, friend".chars().collect();
        let spc = 480;
        let whole = render(&text, 0..text.len(), 8_000, spc, 60);
        let mut parts = render(&text, 0..5, 8_000, spc, 60);
        parts.extend(render(&text, 5..text.len(), 8_000, spc, 60));
        assert_eq!(whole.len(), text.len() * spc);
        assert_eq!(whole, parts);
    }

    #[test]
    fn words_are_loud_and_gaps_are_silent() {
        let text: Vec<char> = "ab  cd".chars().collect();
        let spc = 480;
        let pcm = render(&text, 0..text.len(), 8_000, spc, 60);
        let rms = |r: Range<usize>| {
            (pcm[r.clone()]
                .iter()
                .map(|s| f64::from(*s).powi(2))
                .sum::<f64>()
                / r.len() as f64)
                .sqrt()
        };
        // The second space is entirely silent; the words are well above it.
        assert_eq!(rms(3 * spc..4 * spc), 0.0);
        assert!(rms(0..2 * spc) > 0.05);
        assert!(rms(4 * spc..6 * spc) > 0.05);
    }

    #[test]
    fn words_wait_until_finished_and_audible() {
        let text: Vec<char> = "Hello, wor".chars().collect();
        let mut cursor = 0;
        assert!(take_words(&text, &mut cursor, 3, false).is_empty());
        let w = take_words(&text, &mut cursor, text.len(), false);
        assert_eq!(
            w,
            vec![WordSpan {
                word: "Hello,".into(),
                start: 0,
                end: 6
            }]
        );
        assert!(take_words(&text, &mut cursor, text.len(), false).is_empty());
        let w = take_words(&text, &mut cursor, text.len(), true);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].word.as_str(), w[0].start, w[0].end), ("wor", 7, 10));
    }

    #[test]
    fn wav_header_sizes_add_up() {
        let f = OutputFormat::wav(Encoding::PcmS16le, 16_000);
        let h = wav_header(&f, Some(3_200));
        assert_eq!(h.len(), 44);
        assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), 36 + 3_200);
        assert_eq!(u32::from_le_bytes(h[40..44].try_into().unwrap()), 3_200);
        let f = OutputFormat::wav(Encoding::PcmMulaw, 8_000);
        let h = wav_header(&f, Some(800));
        assert_eq!(h.len(), 58);
        assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), 50 + 800);
    }
}
