//! Speech-like test audio for the media stream, at 8 kHz: by default 1 s of "talk" then 0.5 s
//! of near-silence, repeating; for a scripted caller ([`super::caller`]) talk and comfort noise
//! frame by frame, as the script says.
//!
//! "Talk" is a voiced tone (a wandering 110-170 Hz fundamental plus harmonics) under a
//! four-syllables-per-second envelope, so energy-based voice-activity detectors and
//! end-of-turn logic see something like speech and pauses. The cycle's envelope falls to zero
//! between syllables; a scripted caller's continuous talk keeps it above half level, so every
//! 20 ms window stays some 15 dB over a -40 dBFS detector threshold and no hangover can split
//! one `Say` into two utterances. It is not meant to be recognised by a speech-to-text engine.
//! Deterministic per seed; no RNG crate.

use std::f64::consts::TAU;

/// Samples per 20 ms frame at 8 kHz.
pub(crate) const FRAME_SAMPLES: usize = 160;
const RATE: f64 = 8_000.0;
const TALK_SAMPLES: u64 = 8_000;
const CYCLE_SAMPLES: u64 = 12_000;
/// Peak amplitude of talk: about -11 dBFS, a normal telephone speech level.
const TALK_PEAK: f64 = 9_000.0;
/// Amplitude of the comfort noise, so that "silence" is not digital zero (about -63 dBFS RMS).
const NOISE: f64 = 40.0;
/// Lowest point of the syllable envelope of continuous talk: half the peak, about -25 dBFS
/// RMS, while the cycle's envelope reaches zero.
const TALK_FLOOR: f64 = 0.5;

/// An endless source of speech-like frames.
pub(crate) struct SpeechLike {
    /// Position in the talk/pause cycle of [`SpeechLike::next_frame`].
    sample: u64,
    /// Samples of continuous talk so far ([`SpeechLike::talk_frame`]): its own clock, so every
    /// `Say` continues the same intonation and syllable rhythm.
    talk_sample: u64,
    phase: f64,
    noise_state: u32,
}

impl SpeechLike {
    /// A source whose noise is seeded by `seed`.
    pub(crate) fn new(seed: u32) -> Self {
        SpeechLike {
            sample: 0,
            talk_sample: 0,
            phase: 0.0,
            noise_state: seed | 1,
        }
    }

    /// The next 20 ms of 16-bit linear PCM.
    pub(crate) fn next_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        std::array::from_fn(|_| self.next_sample())
    }

    /// The next 20 ms of continuous talk: no pause, a shallow syllable envelope.
    pub(crate) fn talk_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        std::array::from_fn(|_| {
            let n = self.talk_sample;
            self.talk_sample += 1;
            let noise = self.noise();
            let t = n as f64 / RATE;
            let syllable = (std::f64::consts::PI * (t * 4.0).fract()).sin().powi(2);
            let envelope = TALK_FLOOR + (1.0 - TALK_FLOOR) * syllable;
            let voiced = self.voiced(t);
            (envelope * TALK_PEAK * voiced / 1.95 + noise * NOISE) as i16
        })
    }

    /// The next 20 ms of comfort noise.
    pub(crate) fn noise_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        std::array::from_fn(|_| (self.noise() * NOISE) as i16)
    }

    fn next_sample(&mut self) -> i16 {
        let n = self.sample;
        self.sample += 1;
        let noise = self.noise();
        let in_cycle = n % CYCLE_SAMPLES;
        if in_cycle >= TALK_SAMPLES {
            return (noise * NOISE) as i16;
        }
        let t = n as f64 / RATE;
        let in_talk = in_cycle as f64 / RATE;
        // sin^2 over each 250 ms syllable: zero at syllable edges, like the gaps between them.
        let envelope = (std::f64::consts::PI * (in_talk * 4.0).fract())
            .sin()
            .powi(2);
        let voiced = self.voiced(t);
        (envelope * TALK_PEAK * voiced / 1.95 + noise * NOISE) as i16
    }

    /// The voice at `t` seconds, before the envelope: a fundamental wandering around 140 Hz
    /// plus harmonics, peaking near 1.95.
    fn voiced(&mut self, t: f64) -> f64 {
        let pitch = 140.0 + 30.0 * (TAU * 0.7 * t).sin();
        self.phase = (self.phase + TAU * pitch / RATE) % TAU;
        let p = self.phase;
        p.sin() + 0.5 * (2.0 * p).sin() + 0.3 * (3.0 * p).sin() + 0.15 * (5.0 * p).sin()
    }

    /// Uniform noise in [-1, 1) from a 32-bit xorshift.
    fn noise(&mut self) -> f64 {
        let mut x = self.noise_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.noise_state = x;
        f64::from(x) / f64::from(u32::MAX) * 2.0 - 1.0
    }
}
