//! ITU-T G.711 µ-law and A-law companding, table-free, bit-exact with the Sun Microsystems
//! reference `g711.c` (the de-facto reference most telephony stacks — and the OpenAI `g711_*`
//! formats — follow). Owned here so 8 kHz telephony hosts can be bridged without a C dependency.
//!
//! Samples are 16-bit linear PCM; µ-law works on the top 14 bits and A-law on the top 13 bits, as
//! in the reference.

const SEG_SHIFT: u32 = 4;
const QUANT_MASK: u8 = 0x0F;
const SEG_MASK: u8 = 0x70;
const SIGN_BIT: u8 = 0x80;
/// µ-law bias (in the 16-bit domain) and the 14-bit clip level from the reference.
const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 8159;

/// Segment index: the number of the first end point ≥ `val`, 8 when above all of them.
#[inline]
fn segment(val: i32, ends: &[i32; 8]) -> u32 {
    ends.iter()
        .position(|&end| val <= end)
        .map_or(8, |s| s as u32)
}

const ULAW_SEG_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
const ALAW_SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// Encodes one 16-bit sample to µ-law.
#[inline]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    // Arithmetic shift (floor) as in the reference, so e.g. -1 maps to 0x7E, not 0x7F.
    let mut v = i32::from(sample) >> 2;
    let mask: u8 = if v < 0 {
        v = -v;
        0x7F
    } else {
        0xFF
    };
    v = v.min(ULAW_CLIP) + (ULAW_BIAS >> 2);
    let seg = segment(v, &ULAW_SEG_END);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    // `v >> (seg+1)` fits in a byte after masking, so the narrowing cannot lose information.
    let uval = ((seg as u8) << SEG_SHIFT) | (((v >> (seg + 1)) as u8) & QUANT_MASK);
    uval ^ mask
}

/// Decodes one µ-law byte to a 16-bit sample.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let mut t = (i32::from(u & QUANT_MASK) << 3) + ULAW_BIAS;
    t <<= (u & SEG_MASK) >> SEG_SHIFT;
    // |t - bias| ≤ 32124, always within i16.
    (if u & SIGN_BIT != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    }) as i16
}

/// Encodes one 16-bit sample to A-law.
#[inline]
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut v = i32::from(sample) >> 3;
    let mask: u8 = if v >= 0 {
        0xD5
    } else {
        // One's-complement magnitude, as in the reference, keeps -1 in the smallest step.
        v = -v - 1;
        0x55
    };
    let seg = segment(v, &ALAW_SEG_END);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let shift = if seg < 2 { 1 } else { seg };
    let aval = ((seg as u8) << SEG_SHIFT) | (((v >> shift) as u8) & QUANT_MASK);
    aval ^ mask
}

/// Decodes one A-law byte to a 16-bit sample.
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = i32::from(a & QUANT_MASK) << 4;
    let seg = (a & SEG_MASK) >> SEG_SHIFT;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    // Max magnitude 32256, within i16.
    (if a & SIGN_BIT != 0 { t } else { -t }) as i16
}

/// Appends the µ-law encoding of `samples` to `out`.
pub fn encode_ulaw(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| linear_to_ulaw(s)));
}

/// Appends the decoded samples of µ-law `codes` to `out`.
pub fn decode_ulaw(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| ulaw_to_linear(c)));
}

/// Appends the A-law encoding of `samples` to `out`.
pub fn encode_alaw(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| linear_to_alaw(s)));
}

/// Appends the decoded samples of A-law `codes` to `out`.
pub fn decode_alaw(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| alaw_to_linear(c)));
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference decoder outputs from the ITU-T G.711 tables as tabulated in Sun's g711.c /
    // the widely published `ulaw2linear` table (codes 0x00..=0x0F and 0x70..=0x7F; the 0x80..
    // half is the same with the sign flipped).
    const ULAW_DEC_HEAD: [i16; 16] = [
        -32124, -31100, -30076, -29052, -28028, -27004, -25980, -24956, -23932, -22908, -21884,
        -20860, -19836, -18812, -17788, -16764,
    ];
    const ULAW_DEC_TAIL: [i16; 16] = [
        -120, -112, -104, -96, -88, -80, -72, -64, -56, -48, -40, -32, -24, -16, -8, 0,
    ];
    // A-law codes 0x00..=0x0F (`alaw2linear` table); even bits are inverted on the line, hence
    // the non-monotonic order.
    const ALAW_DEC_HEAD: [i16; 16] = [
        -5504, -5248, -6016, -5760, -4480, -4224, -4992, -4736, -7552, -7296, -8064, -7808, -6528,
        -6272, -7040, -6784,
    ];
    // A-law codes 0xD0..=0xD7: the smallest positive steps (segment 0 with the 0x55 inversion).
    const ALAW_DEC_D0: [i16; 8] = [88, 72, 120, 104, 24, 8, 56, 40];

    #[test]
    fn ulaw_decode_matches_reference_table() {
        for (i, &v) in ULAW_DEC_HEAD.iter().enumerate() {
            assert_eq!(ulaw_to_linear(i as u8), v, "code {i:#04x}");
            assert_eq!(ulaw_to_linear(0x80 | i as u8), -v, "code {:#04x}", 0x80 | i);
        }
        for (i, &v) in ULAW_DEC_TAIL.iter().enumerate() {
            assert_eq!(ulaw_to_linear(0x70 + i as u8), v, "code {:#04x}", 0x70 + i);
            assert_eq!(ulaw_to_linear(0xF0 + i as u8), -v, "code {:#04x}", 0xF0 + i);
        }
    }

    #[test]
    fn alaw_decode_matches_reference_table() {
        for (i, &v) in ALAW_DEC_HEAD.iter().enumerate() {
            assert_eq!(alaw_to_linear(i as u8), v, "code {i:#04x}");
            assert_eq!(alaw_to_linear(0x80 | i as u8), -v, "code {:#04x}", 0x80 | i);
        }
        for (i, &v) in ALAW_DEC_D0.iter().enumerate() {
            assert_eq!(alaw_to_linear(0xD0 + i as u8), v, "code {:#04x}", 0xD0 + i);
        }
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
    }

    #[test]
    fn ulaw_encode_reference_vectors() {
        // (16-bit input, code). 8158/-8159 are the 14-bit clip points of the reference, scaled ×4.
        let cases: [(i16, u8); 10] = [
            (0, 0xFF),
            (3, 0xFF),
            (-1, 0x7E), // reference shifts arithmetically: -1 >> 2 == -1
            (8, 0xFE),
            (8158 * 4, 0x80),
            (-8159 * 4, 0x00),
            (i16::MAX, 0x80),
            (i16::MIN, 0x00),
            (-32124, 0x00),
            (31100, 0x81),
        ];
        for (s, c) in cases {
            assert_eq!(linear_to_ulaw(s), c, "sample {s}");
        }
    }

    #[test]
    fn alaw_encode_reference_vectors() {
        let cases: [(i16, u8); 8] = [
            (0, 0xD5),
            (-1, 0x55),
            (7, 0xD5),
            (8, 0xD5),
            (16, 0xD4),
            (i16::MAX, 0xAA),
            (i16::MIN, 0x2A),
            (-5504, 0x00),
        ];
        for (s, c) in cases {
            assert_eq!(linear_to_alaw(s), c, "sample {s}");
        }
    }

    #[test]
    fn every_code_round_trips() {
        for b in 0..=255u8 {
            let expect_ulaw = if b == 0x7F { 0xFF } else { b }; // ±0 pair collapses to +0
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(b)),
                expect_ulaw,
                "ulaw {b:#04x}"
            );
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b, "alaw {b:#04x}");
        }
    }

    #[test]
    fn encoding_is_monotonic_in_magnitude() {
        // A decoded value never moves further from the input than one quantisation step of its
        // segment, which a wrong segment search would violate.
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let du = i32::from(ulaw_to_linear(linear_to_ulaw(s)));
            let da = i32::from(alaw_to_linear(linear_to_alaw(s)));
            let mag = i32::from(s).abs();
            let tol = (mag / 16).max(16) + 1100 * i32::from(mag > 31_000);
            assert!((du - i32::from(s)).abs() <= tol, "ulaw {s} -> {du}");
            assert!((da - i32::from(s)).abs() <= tol, "alaw {s} -> {da}");
        }
    }

    #[test]
    fn slice_helpers() {
        let mut enc = Vec::new();
        encode_ulaw(&[0, i16::MAX], &mut enc);
        encode_alaw(&[0, i16::MIN], &mut enc);
        assert_eq!(enc, [0xFF, 0x80, 0xD5, 0x2A]);
        let mut dec = Vec::new();
        decode_ulaw(&[0x00], &mut dec);
        decode_alaw(&[0xAA], &mut dec);
        assert_eq!(dec, [-32124, 32256]);
    }
}
