//! Speech-like test audio for the media stream: 1 s of "talk" then 0.5 s of near-silence,
//! repeating, at 8 kHz.
//!
//! "Talk" is a voiced tone (a wandering 110-170 Hz fundamental plus harmonics) under a
//! four-syllables-per-second envelope, so energy-based voice-activity detectors and
//! end-of-turn logic see something like speech and pauses. It is not meant to be recognised
//! by a speech-to-text engine. Deterministic per seed; no RNG crate.

use std::f64::consts::TAU;

/// Samples per 20 ms frame at 8 kHz.
pub(crate) const FRAME_SAMPLES: usize = 160;
const RATE: f64 = 8_000.0;
const TALK_SAMPLES: u64 = 8_000;
const CYCLE_SAMPLES: u64 = 12_000;
/// Peak amplitude of talk: about -11 dBFS, a normal telephone speech level.
const TALK_PEAK: f64 = 9_000.0;
/// Amplitude of the comfort noise, so that "silence" is not digital zero.
const NOISE: f64 = 40.0;

/// An endless source of speech-like frames.
pub(crate) struct SpeechLike {
    sample: u64,
    phase: f64,
    noise_state: u32,
}

impl SpeechLike {
    /// A source whose noise is seeded by `seed`.
    pub(crate) fn new(seed: u32) -> Self {
        SpeechLike {
            sample: 0,
            phase: 0.0,
            noise_state: seed | 1,
        }
    }

    /// The next 20 ms of 16-bit linear PCM.
    pub(crate) fn next_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        std::array::from_fn(|_| self.next_sample())
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
        let pitch = 140.0 + 30.0 * (TAU * 0.7 * t).sin();
        self.phase = (self.phase + TAU * pitch / RATE) % TAU;
        let p = self.phase;
        let voiced =
            p.sin() + 0.5 * (2.0 * p).sin() + 0.3 * (3.0 * p).sin() + 0.15 * (5.0 * p).sin();
        (envelope * TALK_PEAK * voiced / 1.95 + noise * NOISE) as i16
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
