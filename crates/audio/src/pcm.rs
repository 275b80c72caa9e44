//! Little-endian PCM16 byte ↔ sample conversion and channel-count adaptation. The model only
//! speaks mono, so stereo input is downmixed and mono output is duplicated when the host asks for
//! two channels.

use crate::error::AudioError;

/// Appends the samples of little-endian PCM16 `bytes` to `out`. Odd byte counts are rejected rather
/// than carried over, so a framing bug on the host shows up immediately instead of as noise.
pub fn le_bytes_to_i16(bytes: &[u8], out: &mut Vec<i16>) -> Result<(), AudioError> {
    if !bytes.len().is_multiple_of(2) {
        return Err(AudioError::OddByteCount { len: bytes.len() });
    }
    out.reserve(bytes.len() / 2);
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]])),
    );
    Ok(())
}

/// Appends `samples` as little-endian PCM16 bytes.
pub fn i16_to_le_bytes(samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(samples.len() * 2);
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// Averages interleaved stereo pairs into mono, appending to `out`. Averaging (rather than
/// summing) cannot overflow, so no clipping is introduced. A trailing unpaired sample is ignored;
/// callers validate alignment first.
pub fn downmix_stereo(interleaved: &[i16], out: &mut Vec<i16>) {
    out.reserve(interleaved.len() / 2);
    out.extend(
        interleaved
            .chunks_exact(2)
            // Floor of the mean of two i16 is always within i16.
            .map(|p| ((i32::from(p[0]) + i32::from(p[1])) >> 1) as i16),
    );
}

/// Duplicates each mono sample into an interleaved stereo pair, appending to `out`.
pub fn mono_to_stereo(mono: &[i16], out: &mut Vec<i16>) {
    out.reserve(mono.len() * 2);
    for &s in mono {
        out.push(s);
        out.push(s);
    }
}

/// Rounds and saturates a float sample (i16 scale) to i16; NaN maps to 0.
#[inline]
pub fn f32_to_i16_sat(x: f32) -> i16 {
    // `as` from float saturates and maps NaN to 0, which is exactly the clipping we want.
    x.round() as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_odd_count() {
        let mut s = Vec::new();
        le_bytes_to_i16(&[0x01, 0x00, 0xFF, 0xFF, 0x00, 0x80], &mut s).unwrap();
        assert_eq!(s, [1, -1, i16::MIN]);
        let mut b = Vec::new();
        i16_to_le_bytes(&s, &mut b);
        assert_eq!(b, [0x01, 0x00, 0xFF, 0xFF, 0x00, 0x80]);
        let e = le_bytes_to_i16(&[1, 2, 3], &mut s).unwrap_err();
        assert_eq!(e, AudioError::OddByteCount { len: 3 });
        assert_eq!(s.len(), 3, "nothing appended on error");
    }

    #[test]
    fn downmix_averages_without_overflow() {
        let mut m = Vec::new();
        downmix_stereo(
            &[i16::MAX, i16::MAX, i16::MIN, i16::MIN, 100, -50, 3],
            &mut m,
        );
        assert_eq!(m, [i16::MAX, i16::MIN, 25]);
    }

    #[test]
    fn mono_duplicates() {
        let mut st = Vec::new();
        mono_to_stereo(&[1, -2], &mut st);
        assert_eq!(st, [1, 1, -2, -2]);
    }

    #[test]
    fn float_saturation() {
        assert_eq!(f32_to_i16_sat(40000.0), i16::MAX);
        assert_eq!(f32_to_i16_sat(-40000.0), i16::MIN);
        assert_eq!(f32_to_i16_sat(1.5), 2);
        assert_eq!(f32_to_i16_sat(-1.4), -1);
        assert_eq!(f32_to_i16_sat(f32::NAN), 0);
    }
}
