//! G.711 µ-law / A-law codecs (ITU-T G.711), local so the simulator does not depend on the
//! concurrently developed `voice-audio` crate. Only what the wire formats need: 8-bit <-> i16.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

/// µ-law byte -> linear i16.
pub fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

/// Linear i16 -> µ-law byte.
pub fn ulaw_encode(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    let s = s.min(CLIP) + BIAS;
    // Exponent = position of the highest set bit above bit 7 (segments of the companding curve).
    let exponent = (31 - (s as u32).leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// A-law byte -> linear i16.
pub fn alaw_decode(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let sign = a & 0x80;
    let exponent = ((a >> 4) & 0x07) as i32;
    let mantissa = (a & 0x0F) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    (if sign != 0 { magnitude } else { -magnitude }) as i16
}

/// Linear i16 -> A-law byte.
pub fn alaw_encode(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s >= 0 {
        0x80
    } else {
        s = -s - 1;
        0
    };
    let s = s.min(32767);
    let (exponent, mantissa) = if s < 256 {
        (0, (s >> 4) & 0x0F)
    } else {
        let e = (31 - (s as u32).leading_zeros() as i32 - 7).clamp(1, 7);
        (e, (s >> (e + 3)) & 0x0F)
    };
    ((sign | (exponent << 4) | mantissa) as u8) ^ 0x55
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_round_trip_is_close() {
        for s in (-32000i32..32000).step_by(97) {
            let d = ulaw_decode(ulaw_encode(s as i16)) as i32;
            assert!((d - s).abs() <= (s.abs() / 16).max(8) + 4, "{s} -> {d}");
        }
        assert_eq!(ulaw_encode(0), 0xFF);
    }

    #[test]
    fn alaw_round_trip_is_close() {
        for s in (-32000i32..32000).step_by(97) {
            let d = alaw_decode(alaw_encode(s as i16)) as i32;
            assert!((d - s).abs() <= (s.abs() / 16).max(16) + 4, "{s} -> {d}");
        }
        assert_eq!(alaw_encode(0), 0xD5);
    }
}
