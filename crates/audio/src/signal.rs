//! Synthetic speech-like audio, for load generation and end-to-end tests: one generator so the load
//! generator's "caller" and the tests' speak the same signal.

use std::f32::consts::PI;

/// Speech-like audio: a voiced harmonic signal (pitch ~140 Hz with 3 Hz vibrato, formant-ish
/// harmonic weights, none above Nyquist) under a 4 Hz syllable envelope, about -14 dBFS peak.
/// `n` samples at `rate`.
pub fn speech_like(rate: u32, n: usize) -> Vec<i16> {
    let mut phase = 0f32;
    (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let f0 = 140.0 + 20.0 * (2.0 * PI * 3.0 * t).sin();
            phase += 2.0 * PI * f0 / rate as f32;
            let mut v = 0.0;
            for (k, w) in [(1.0, 1.0), (2.0, 0.6), (3.0, 0.5), (5.0, 0.3), (7.0, 0.15)] {
                if f0 * k < rate as f32 / 2.0 {
                    v += w * (phase * k).sin();
                }
            }
            let syllable = (PI * (t * 4.0).fract()).sin().max(0.0).powf(0.5);
            (v / 2.55 * syllable * 0.2 * 32767.0) as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_like_is_voiced_and_about_minus_14_dbfs_peak() {
        for rate in [8000, 16000, 24000, 48000] {
            let s = speech_like(rate, rate as usize);
            assert_eq!(s.len(), rate as usize);
            let peak = s.iter().map(|&x| i32::from(x).abs()).max().unwrap();
            assert!((4000..=6600).contains(&peak), "{rate} Hz: peak {peak}");
            let distinct: std::collections::HashSet<i16> = s.iter().copied().collect();
            assert!(distinct.len() > 500, "{rate} Hz: {} values", distinct.len());
        }
    }
}
