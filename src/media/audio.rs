//! G.711 companding (μ-law and A-law, per the ITU-T G.191 reference `g711.c`) and the greeting
//! chime played when a stream starts.
//!
//! Telnyx carries 8 kHz G.711 bytes with no RTP header (vendor-protocols.md §1.5). This module
//! is pure sample arithmetic: it must not do I/O, allocate per sample, or know about sockets.

use std::f32::consts::TAU;

/// μ-law byte for digital silence (linear 0).
pub const ULAW_SILENCE: u8 = 0xFF;
/// A-law byte for digital silence (linear 0).
pub const ALAW_SILENCE: u8 = 0xD5;

/// Encodes one 16-bit linear sample as μ-law.
///
/// Follows G.191 `ulaw_compress`: negative samples use the one's complement, so −1 encodes
/// like 0 (0x7F, the negative zero) rather than as the smallest negative step.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    // Magnitude on 14 bits plus the μ-law bias of 33, clipped to the top of segment 7.
    let magnitude = if sample < 0 { !sample } else { sample };
    let biased = ((i32::from(magnitude) >> 2) + 33).min(0x1FFF);
    let mut segment = 1;
    let mut rest = biased >> 6;
    while rest != 0 {
        segment += 1;
        rest >>= 1;
    }
    let high = 8 - segment;
    let low = 0x0F - ((biased >> segment) & 0x0F);
    let code = ((high << 4) | low) as u8;
    if sample >= 0 {
        code | 0x80
    } else {
        code
    }
}

/// Decodes one μ-law byte to a 16-bit linear sample (G.191 `ulaw_expand`).
pub fn ulaw_to_linear(code: u8) -> i16 {
    let inverted = i32::from(!code);
    let exponent = (inverted >> 4) & 0x07;
    let mantissa = inverted & 0x0F;
    let step = 4 << (exponent + 1);
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
    let value = if code < 0x80 { -magnitude } else { magnitude };
    value as i16
}

/// Encodes one 16-bit linear sample as A-law (G.191 `alaw_compress`).
pub fn linear_to_alaw(sample: i16) -> u8 {
    let magnitude = if sample < 0 { !sample } else { sample };
    let mut ix = i32::from(magnitude) >> 4;
    if ix > 15 {
        let mut exponent = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            exponent += 1;
        }
        ix -= 16;
        ix += exponent << 4;
    }
    if sample >= 0 {
        ix |= 0x80;
    }
    (ix ^ 0x55) as u8
}

/// Decodes one A-law byte to a 16-bit linear sample (G.191 `alaw_expand`).
pub fn alaw_to_linear(code: u8) -> i16 {
    let ix = i32::from(code ^ 0x55) & 0x7F;
    let exponent = ix >> 4;
    let mut mantissa = ix & 0x0F;
    if exponent > 0 {
        mantissa += 16;
    }
    mantissa = (mantissa << 4) + 0x08;
    if exponent > 1 {
        mantissa <<= exponent - 1;
    }
    let value = if code > 0x7F { mantissa } else { -mantissa };
    value as i16
}

/// Re-encodes a μ-law byte as A-law (through linear), for PCMA streams fed μ-law audio.
pub fn ulaw_to_alaw(code: u8) -> u8 {
    linear_to_alaw(ulaw_to_linear(code))
}

/// Re-encodes an A-law byte as μ-law (through linear), so the caller audio of a PCMA stream
/// reaches consumers that take μ-law only.
///
/// The result is within one step of the coarser law at that level (μ-law tops out at ±32124
/// where A-law reaches ±32256); A-law -> μ-law -> A-law gives back the same code for 240 of
/// the 256 codes and a neighbouring level for the rest.
pub fn alaw_to_ulaw(code: u8) -> u8 {
    linear_to_ulaw(alaw_to_linear(code))
}

/// One bell-like note of the chime.
struct Note {
    hz: f32,
    start_s: f32,
    gain: f32,
}

/// Two falling notes ("ding-dong", E5 then C5) with an attack/decay envelope.
const CHIME: [Note; 2] = [
    Note {
        hz: 659.25,
        start_s: 0.0,
        gain: 0.30,
    },
    Note {
        hz: 523.25,
        start_s: 0.55,
        gain: 0.28,
    },
];
/// Attack long enough to avoid a click, short enough to sound struck.
const ATTACK_S: f32 = 0.012;
/// Exponential decay time constant of each note.
const DECAY_S: f32 = 0.32;
/// The last stretch fades to zero so the greeting never ends on a step.
const FADE_OUT_S: f32 = 0.15;

/// `duration_ms` of the greeting chime as 16-bit linear samples at `sample_rate`.
///
/// Peaks around −9 dBFS: audible on a phone without clipping the μ-law top segment.
pub fn chime(sample_rate: u32, duration_ms: u32) -> Vec<i16> {
    let rate = sample_rate.max(1) as f32;
    let count = (u64::from(sample_rate) * u64::from(duration_ms) / 1000) as usize;
    let total_s = count as f32 / rate;
    (0..count)
        .map(|n| {
            let t = n as f32 / rate;
            let mut value = 0.0;
            for note in &CHIME {
                let local = t - note.start_s;
                if local < 0.0 {
                    continue;
                }
                let envelope = (local / ATTACK_S).min(1.0) * (-local / DECAY_S).exp();
                // A quiet octave partial makes the sine sound like a bell instead of a test tone.
                let tone =
                    (TAU * note.hz * local).sin() + 0.25 * (TAU * 2.0 * note.hz * local).sin();
                value += note.gain * envelope * tone / 1.25;
            }
            let fade = ((total_s - t) / FADE_OUT_S).clamp(0.0, 1.0);
            (value * fade * f32::from(i16::MAX)).round() as i16
        })
        .collect()
}

/// The greeting chime as μ-law bytes (8 kHz for a standard Telnyx PCMU stream).
pub fn greeting_ulaw(sample_rate: u32, duration_ms: u32) -> Vec<u8> {
    chime(sample_rate, duration_ms)
        .into_iter()
        .map(linear_to_ulaw)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoder outputs from the G.711 μ-law tables (segment end points and sign handling),
    /// cross-checked against the classic `BIAS = 0x84` formulation.
    #[test]
    fn ulaw_reference_values() {
        let cases: [(i16, u8); 13] = [
            (0, 0xFF),
            (-1, 0x7F),
            (1, 0xFF),
            (4, 0xFE),
            (-4, 0x7F),
            (-5, 0x7E),
            (1000, 0xCE),
            (-1000, 0x4E),
            (8000, 0xA0),
            (32767, 0x80),
            (32124, 0x80),
            (-32768, 0x00),
            (-32124, 0x00),
        ];
        for (sample, code) in cases {
            assert_eq!(linear_to_ulaw(sample), code, "sample {sample}");
        }
    }

    #[test]
    fn ulaw_decode_reference_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0xCE), 988);
        assert_eq!(ulaw_to_linear(0xFE), 8);
    }

    #[test]
    fn ulaw_round_trip_is_stable() {
        for code in 0..=255u8 {
            // 0x7F is negative zero; it decodes to 0, which encodes as positive zero.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(code)),
                expected,
                "code {code:#04x}"
            );
        }
    }

    #[test]
    fn ulaw_is_monotonic() {
        let mut last = ulaw_to_linear(linear_to_ulaw(i16::MIN));
        for sample in (i16::MIN..=i16::MAX).step_by(7) {
            let decoded = ulaw_to_linear(linear_to_ulaw(sample));
            assert!(decoded >= last, "sample {sample}");
            // Quantisation error never exceeds half of the largest step (1024 / 2) plus the bias.
            assert!(
                (i32::from(decoded) - i32::from(sample)).abs() <= 1024,
                "sample {sample}"
            );
            last = decoded;
        }
    }

    #[test]
    fn alaw_reference_values() {
        assert_eq!(linear_to_alaw(0), ALAW_SILENCE);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(32767), 0xAA);
        assert_eq!(linear_to_alaw(-32768), 0x2A);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        for code in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "code {code:#04x}"
            );
        }
        assert_eq!(ulaw_to_alaw(ULAW_SILENCE), ALAW_SILENCE);
    }

    #[test]
    fn alaw_ulaw_round_trip() {
        // Within one step of the coarser law at that level: 1/16 of the level, 16 near zero.
        let close = |x: i16, y: i16| {
            (i32::from(x) - i32::from(y)).abs() <= (i32::from(x).abs() / 16).max(16)
        };
        let mut exact = 0;
        for code in 0..=255u8 {
            let a = alaw_to_linear(code);
            let u = ulaw_to_linear(alaw_to_ulaw(code));
            assert_eq!(a < 0, u < 0, "code {code:#04x}: sign");
            assert!(close(a, u), "code {code:#04x}: {a} became {u}");
            // Back to A-law: the same code, or (where the two grids interleave) its neighbour.
            let back = ulaw_to_alaw(alaw_to_ulaw(code));
            assert!(
                close(a, alaw_to_linear(back)),
                "code {code:#04x}: back {back:#04x}"
            );
            exact += usize::from(back == code);
        }
        assert!(exact >= 240, "{exact} of 256 codes survive the round trip");
        assert_eq!(alaw_to_ulaw(ALAW_SILENCE), 0xFE);
        assert_eq!(ulaw_to_alaw(alaw_to_ulaw(ALAW_SILENCE)), ALAW_SILENCE);
        assert_eq!(alaw_to_ulaw(0xAA), 0x80);
        assert_eq!(alaw_to_ulaw(0x2A), 0x00);
    }

    #[test]
    fn greeting_shape() {
        let samples = chime(8000, 1500);
        assert_eq!(samples.len(), 12_000);
        let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak > 5_000 && peak < 16_000, "peak {peak}");
        // Starts and ends quietly: no click at either edge.
        assert!(samples[0].unsigned_abs() < 100);
        assert!(samples.last().unwrap().unsigned_abs() < 10);
        assert_eq!(greeting_ulaw(8000, 1500).len(), 12_000);
    }
}
