//! G.711 mu-law (PCMU) and A-law (PCMA) codecs, the two 8 kHz encodings the fake streams.
//!
//! Written out here (after the public-domain Sun reference `g711.c`) rather than pulled in as a
//! crate: they are a few lines each, and tests on both sides of the wire need the same tables.
//! Pure functions; no state, no allocation.

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32_635;

/// Encodes one 16-bit linear PCM sample as a mu-law byte.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut magnitude = i32::from(sample);
    let sign = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0x00
    };
    magnitude = magnitude.min(ULAW_CLIP) + ULAW_BIAS;
    // The segment is the position of the highest set bit above the 8 mantissa-and-bias bits.
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && magnitude & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (magnitude >> (exponent + 3)) & 0x0F;
    // mu-law transmits the one's complement, so that silence is 0xFF.
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// Decodes one mu-law byte to 16-bit linear PCM.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    (if u & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// Upper bounds of the A-law segments on the 13-bit magnitude.
const ALAW_SEGMENT_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// Encodes one 16-bit linear PCM sample as an A-law byte.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut value = i32::from(sample) >> 3;
    // A-law inverts the even bits (0x55) so that long runs of silence still carry transitions.
    let mask = if value >= 0 {
        0xD5
    } else {
        value = -value - 1;
        0x55
    };
    let Some(segment) = ALAW_SEGMENT_END.iter().position(|&end| value <= end) else {
        return 0x7F ^ mask;
    };
    let shift = if segment < 2 { 1 } else { segment };
    let code = ((segment as i32) << 4) | ((value >> shift) & 0x0F);
    (code as u8) ^ mask
}

/// Decodes one A-law byte to 16-bit linear PCM.
pub fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let segment = (a & 0x70) >> 4;
    let mut value = i32::from(a & 0x0F) << 4;
    match segment {
        0 => value += 8,
        1 => value += 0x108,
        _ => value = (value + 0x108) << (segment - 1),
    }
    (if a & 0x80 != 0 { value } else { -value }) as i16
}
