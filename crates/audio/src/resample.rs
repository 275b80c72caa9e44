//! Streaming fixed-ratio sample-rate conversion for 16-bit mono speech, built on rubato's sinc
//! resampler.
//!
//! Why this wrapper exists: rubato wants fixed-size chunks, while hosts send frames of any size. We
//! buffer input into fixed chunks so the output is bit-identical however the input is split (the
//! frame-edge continuity guarantee the pipelines rely on), trim the filter's start-up delay so the
//! output is time-aligned with the input, and on `flush` drain the filter tail so an utterance of
//! N input samples yields exactly `round(N · out/in)` output samples.
//!
//! Filter design: every supported rate pair is a small rational ratio, so we use rubato's `Nearest`
//! sinc mode with an oversampling factor equal to the ratio's denominator. Every output sample then
//! lands exactly on a precomputed polyphase branch: no interpolation error, and the cheapest
//! per-sample cost rubato offers (one dot product). The filter spans a fixed number of taps at the
//! *lower* of the two rates, so the transition band — and hence the group delay in milliseconds — is
//! the same whichever direction we convert.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    calculate_cutoff, Async, FixedAsync, Resampler, SincInterpolationParameters,
    SincInterpolationType, WindowFunction,
};

use crate::error::AudioError;
use crate::pcm::f32_to_i16_sat;

/// Filter length in taps at the lower of the two rates. 64 Blackman-Harris taps give > 90 dB
/// stop-band rejection with a 4 ms group delay at 8 kHz (≤ 1.4 ms at 24 kHz and above).
pub const BASE_SINC_LEN: usize = 64;
const WINDOW: WindowFunction = WindowFunction::BlackmanHarris;
/// Largest exact polyphase table we build; 11025↔24000 needs 320 branches.
const MAX_EXACT_OVERSAMPLING: usize = 1024;
/// Highest rate accepted (well above anything the proto allows; guards table/buffer sizes).
pub const MAX_RATE: u32 = 192_000;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

struct Engine {
    rs: Async<f32>,
    chunk: usize,
    out_buf: Vec<f32>,
    delay: usize,
    delay_exact: f64,
}

/// Fixed rate-pair streaming resampler (mono). Internally works on `f32` samples in i16 scale, so
/// the i16 path is a plain round-and-saturate at the end.
pub struct StreamResampler {
    in_rate: u32,
    out_rate: u32,
    /// `None` when the rates are equal: conversion is then the identity.
    engine: Option<Engine>,
    pending: Vec<f32>,
    in_count: u64,
    out_count: u64,
    skip: usize,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("in_rate", &self.in_rate)
            .field("out_rate", &self.out_rate)
            .field("delay_frames", &self.delay_frames())
            .finish()
    }
}

impl StreamResampler {
    /// Builds a resampler for `in_rate` → `out_rate` Hz.
    pub fn new(in_rate: u32, out_rate: u32) -> Result<Self, AudioError> {
        for r in [in_rate, out_rate] {
            if r == 0 || r > MAX_RATE {
                return Err(AudioError::UnsupportedFormat(format!(
                    "resampler rate {r} Hz is outside 1..={MAX_RATE}"
                )));
            }
        }
        let engine = if in_rate == out_rate {
            None
        } else {
            Some(Self::build(in_rate, out_rate)?)
        };
        let skip = engine.as_ref().map_or(0, |e| e.delay);
        Ok(StreamResampler {
            in_rate,
            out_rate,
            engine,
            pending: Vec::new(),
            in_count: 0,
            out_count: 0,
            skip,
        })
    }

    fn build(in_rate: u32, out_rate: u32) -> Result<Engine, AudioError> {
        let err = |e: rubato::ResamplerConstructionError| AudioError::Resample(e.to_string());
        let (fin, fout) = (u64::from(in_rate), u64::from(out_rate));
        let fmin = fin.min(fout);
        // Same transition band in Hz at the higher rate means proportionally more taps there.
        let sinc_len = ((BASE_SINC_LEN as u64 * fin).div_ceil(fmin) as usize).next_multiple_of(8);
        // Relative to the lower Nyquist: rubato scales it by the ratio itself when downsampling.
        let cutoff = calculate_cutoff::<f32>(BASE_SINC_LEN, WINDOW);
        let q = (fout / gcd(fin, fout)) as usize;
        let (oversampling, interpolation) = if q <= MAX_EXACT_OVERSAMPLING {
            (q, SincInterpolationType::Nearest)
        } else {
            // Arbitrary ratios (not used by the proto's rate set) fall back to interpolation.
            (256, SincInterpolationType::Cubic)
        };
        let params = SincInterpolationParameters::new(sinc_len, WINDOW)
            .f_cutoff(cutoff)
            .oversampling_factor(oversampling)
            .interpolation(interpolation);
        // 2 ms chunks bound the extra buffering latency while keeping rubato's per-call overhead small.
        let chunk = (in_rate as usize / 500).max(8);
        let ratio = fout as f64 / fin as f64;
        let rs = Async::<f32>::new_sinc(ratio, 1.0, &params, chunk, 1, FixedAsync::Input)
            .map_err(err)?;
        let out_buf = vec![0.0; rs.output_frames_max()];
        let mut engine = Engine {
            rs,
            chunk,
            out_buf,
            delay: 0,
            delay_exact: 0.0,
        };
        engine.delay_exact = engine.measure_delay()?;
        // Rounding (not rubato's truncating `output_delay`) keeps the residual misalignment ≤ ½ sample.
        engine.delay = engine.delay_exact.round() as usize;
        Ok(engine)
    }

    pub fn input_rate(&self) -> u32 {
        self.in_rate
    }

    pub fn output_rate(&self) -> u32 {
        self.out_rate
    }

    /// Algorithmic latency in output frames: how long after an input sample arrives its filtered
    /// counterpart can be emitted (excluding the up-to-one-chunk input buffering). The leading
    /// delay is trimmed from the output, so output sample `k` is aligned with input time `k/out_rate`.
    pub fn delay_frames(&self) -> usize {
        self.engine.as_ref().map_or(0, |e| e.delay)
    }

    /// [`delay_frames`](Self::delay_frames) in milliseconds.
    pub fn delay_ms(&self) -> f64 {
        self.engine.as_ref().map_or(0.0, |e| e.delay_exact) * 1000.0 / f64::from(self.out_rate)
    }

    /// Input samples held back waiting for a full chunk (at most one chunk).
    pub fn buffered_input(&self) -> usize {
        self.pending.len()
    }

    /// Resamples i16 samples, appending every output sample now available.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) -> Result<(), AudioError> {
        self.pending.extend(input.iter().map(|&s| f32::from(s)));
        self.in_count += input.len() as u64;
        self.run(&mut |x| out.push(f32_to_i16_sat(x)))
    }

    /// Resamples normalised float samples (full scale ±1.0); output is also normalised and not clipped.
    pub fn process_f32(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), AudioError> {
        self.pending.extend(input.iter().map(|&s| s * 32768.0));
        self.in_count += input.len() as u64;
        self.run(&mut |x| out.push(x / 32768.0))
    }

    /// Ends the stream: drains the filter tail so the total output since the last reset is exactly
    /// `round(input · out/in)` samples, then resets for the next utterance.
    pub fn flush(&mut self, out: &mut Vec<i16>) -> Result<(), AudioError> {
        self.finish(&mut |x| out.push(f32_to_i16_sat(x)))
    }

    /// Float variant of [`flush`](Self::flush).
    pub fn flush_f32(&mut self, out: &mut Vec<f32>) -> Result<(), AudioError> {
        self.finish(&mut |x| out.push(x / 32768.0))
    }

    /// Drops all buffered audio and filter state (barge-in).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.in_count = 0;
        self.out_count = 0;
        if let Some(e) = self.engine.as_mut() {
            e.rs.reset();
            self.skip = e.delay;
        }
    }

    fn run(&mut self, sink: &mut dyn FnMut(f32)) -> Result<(), AudioError> {
        let Some(engine) = self.engine.as_mut() else {
            self.out_count += self.pending.len() as u64;
            self.pending.drain(..).for_each(&mut *sink);
            return Ok(());
        };
        let mut start = 0;
        while let Some(chunk) = self.pending.get(start..start + engine.chunk) {
            let n = engine.process_chunk(chunk)?;
            for &x in engine.out_buf.get(..n).unwrap_or(&[]) {
                if self.skip > 0 {
                    self.skip -= 1;
                } else {
                    sink(x);
                    self.out_count += 1;
                }
            }
            start += engine.chunk;
        }
        self.pending.drain(..start);
        Ok(())
    }

    fn finish(&mut self, sink: &mut dyn FnMut(f32)) -> Result<(), AudioError> {
        let Some(engine) = self.engine.as_ref() else {
            let r = self.run(sink);
            self.reset();
            return r;
        };
        let (chunk, delay) = (engine.chunk, engine.delay);
        let expected = (u128::from(self.in_count) * u128::from(self.out_rate)
            + u128::from(self.in_rate / 2))
            / u128::from(self.in_rate);
        let expected = u64::try_from(expected).unwrap_or(u64::MAX);
        let mut tail = Vec::new();
        // Zero padding pushes the delayed tail out; the bound only guards against a logic error
        // turning into an endless loop.
        let max_rounds =
            4 + (delay + chunk) * self.in_rate as usize / (self.out_rate as usize * chunk).max(1);
        let mut rounds = 0;
        while self.out_count + (tail.len() as u64) < expected && rounds <= max_rounds {
            let pad = chunk - self.pending.len() % chunk;
            self.pending.extend(std::iter::repeat_n(0.0, pad));
            let before = self.out_count;
            self.run(&mut |x| tail.push(x))?;
            // `run` counted padding output as emitted; only `expected` of it is real signal.
            self.out_count = before;
            rounds += 1;
        }
        let keep = expected
            .saturating_sub(self.out_count)
            .min(tail.len() as u64) as usize;
        tail.iter().take(keep).copied().for_each(sink);
        self.reset();
        Ok(())
    }
}

impl Engine {
    /// Group delay in output frames, measured as the centroid of the impulse response. Measured
    /// rather than derived from rubato's internals because `output_delay()` truncates and does not
    /// account for where rubato places the first output sample (it is off by 1–2 samples).
    fn measure_delay(&mut self) -> Result<f64, AudioError> {
        let nominal = self.rs.output_delay();
        let mut chunk = vec![0.0f32; self.chunk];
        if let Some(first) = chunk.first_mut() {
            *first = 1.0;
        }
        let mut h: Vec<f64> = Vec::new();
        while h.len() < 2 * nominal + 4 * self.chunk + 16 {
            let n = self.process_chunk(&chunk)?;
            h.extend(self.out_buf.iter().take(n).map(|&x| f64::from(x)));
            chunk.fill(0.0);
        }
        self.rs.reset();
        let sum: f64 = h.iter().sum();
        let moment: f64 = h.iter().enumerate().map(|(k, &v)| k as f64 * v).sum();
        if sum.abs() < 1e-6 {
            return Err(AudioError::Resample("filter has no DC gain".into()));
        }
        Ok(moment / sum)
    }

    fn process_chunk(&mut self, chunk: &[f32]) -> Result<usize, AudioError> {
        let err = |e: &dyn std::fmt::Display| AudioError::Resample(e.to_string());
        let frames_out = self.out_buf.len();
        let input = InterleavedSlice::new(chunk, 1, chunk.len()).map_err(|e| err(&e))?;
        let mut output =
            InterleavedSlice::new_mut(&mut self.out_buf[..], 1, frames_out).map_err(|e| err(&e))?;
        let (_, produced) = self
            .rs
            .process_into_buffer(&input, &mut output, None)
            .map_err(|e| err(&e))?;
        Ok(produced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fit_sine, level_dbfs, sine, sweep};

    const RATES: [u32; 8] = [
        8_000, 11_025, 12_000, 16_000, 22_050, 32_000, 44_100, 48_000,
    ];

    fn one_shot(r: &mut StreamResampler, x: &[i16]) -> Vec<i16> {
        let mut out = Vec::new();
        r.process(x, &mut out).unwrap();
        r.flush(&mut out).unwrap();
        out
    }

    struct Quality {
        snr_1k: f64,
        snr_hi: f64,
        hi_hz: f64,
        delay_err_samples: f64,
        stop_dbfs: Option<f64>,
        delay_ms: f64,
    }

    fn measure(fin: u32, fout: u32) -> Quality {
        let mut r = StreamResampler::new(fin, fout).unwrap();
        let n = fin as usize; // 1 s
        let nyq_min = f64::from(fin.min(fout)) / 2.0;
        let hi_hz = (0.8 * nyq_min).round();
        let edge = fout as usize / 20; // exclude 50 ms at both ends
        let mut snrs = Vec::new();
        let mut delay_err: f64 = 0.0;
        for hz in [1000.0, hi_hz] {
            let x = sine(fin, hz, 0.9 * 32767.0, n);
            let y = one_shot(&mut r, &x);
            let expect_len = (n as u64 * u64::from(fout) + u64::from(fin / 2)) / u64::from(fin);
            assert_eq!(y.len() as u64, expect_len, "{fin}->{fout} output length");
            let (snr, _amp, phase) = fit_sine(&y, fout, hz, edge..y.len() - edge);
            snrs.push(snr);
            // The input is a pure sine with zero phase, so any phase left is residual misalignment.
            let lag = -phase / (2.0 * std::f64::consts::PI * hz) * f64::from(fout);
            delay_err = delay_err.max(lag.abs());
        }
        let stop_dbfs = (fout < fin).then(|| {
            let nyq_out = f64::from(fout) / 2.0;
            let top = (f64::from(fin) / 2.0).min(1.25 * nyq_out);
            let hz = nyq_out + 0.5 * (top - nyq_out);
            let x = sine(fin, hz, 0.9 * 32767.0, n);
            let y = one_shot(&mut r, &x);
            level_dbfs(&y[edge..y.len() - edge])
        });
        Quality {
            snr_1k: snrs[0],
            snr_hi: snrs[1],
            hi_hz,
            delay_err_samples: delay_err,
            stop_dbfs,
            delay_ms: r.delay_ms(),
        }
    }

    #[test]
    fn quality_for_every_rate_pair() {
        let mut failures = Vec::new();
        for &rate in &RATES {
            for (fin, fout) in [(rate, 24_000), (24_000, rate)] {
                let q = measure(fin, fout);
                eprintln!(
                    "{fin:>5} -> {fout:>5}: SNR 1k {:.1} dB, SNR {:.0} Hz {:.1} dB, stop {} dBFS, delay {:.2} ms, align err {:.2} smp",
                    q.snr_1k,
                    q.hi_hz,
                    q.snr_hi,
                    q.stop_dbfs.map_or("-".into(), |d| format!("{d:.1}")),
                    q.delay_ms,
                    q.delay_err_samples
                );
                if q.snr_1k < 80.0 || q.snr_hi < 80.0 {
                    failures.push(format!(
                        "{fin}->{fout}: SNR {:.1}/{:.1} dB",
                        q.snr_1k, q.snr_hi
                    ));
                }
                if q.stop_dbfs.is_some_and(|d| d > -80.0) {
                    failures.push(format!("{fin}->{fout}: stop-band {:?} dBFS", q.stop_dbfs));
                }
                if q.delay_ms > 5.0 {
                    failures.push(format!("{fin}->{fout}: delay {:.2} ms", q.delay_ms));
                }
                if q.delay_err_samples > 0.51 {
                    failures.push(format!(
                        "{fin}->{fout}: misaligned by {:.2} samples",
                        q.delay_err_samples
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn chunking_does_not_change_output() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (fin, fout) in [
            (16_000, 24_000),
            (24_000, 44_100),
            (11_025, 24_000),
            (24_000, 8_000),
        ] {
            let x = sweep(
                fin,
                100.0,
                0.45 * f64::from(fin.min(fout)),
                20_000.0,
                fin as usize / 2,
            );
            let whole = one_shot(&mut StreamResampler::new(fin, fout).unwrap(), &x);
            let mut r = StreamResampler::new(fin, fout).unwrap();
            let mut pieces = Vec::new();
            let mut rest = &x[..];
            while !rest.is_empty() {
                let n = rng.random_range(1..=rest.len().min(700));
                r.process(&rest[..n], &mut pieces).unwrap();
                rest = &rest[n..];
            }
            r.flush(&mut pieces).unwrap();
            assert_eq!(whole, pieces, "{fin}->{fout}");
        }
    }

    #[test]
    fn identity_and_reset() {
        let mut r = StreamResampler::new(24_000, 24_000).unwrap();
        assert_eq!(r.delay_frames(), 0);
        assert_eq!(one_shot(&mut r, &[1, -2, 3]), [1, -2, 3]);
        let mut r = StreamResampler::new(8_000, 24_000).unwrap();
        let x = sine(8_000, 440.0, 10_000.0, 800);
        let first = one_shot(&mut r, &x);
        let mut junk = Vec::new();
        r.process(&x[..333], &mut junk).unwrap();
        r.reset();
        assert_eq!(
            one_shot(&mut r, &x),
            first,
            "reset must restore the initial state"
        );
        assert!(StreamResampler::new(0, 8_000).is_err());
        assert!(StreamResampler::new(8_000, 1_000_000).is_err());
    }

    #[test]
    fn float_path_matches_and_saturates() {
        let mut r = StreamResampler::new(16_000, 24_000).unwrap();
        let x: Vec<f32> = sine(16_000, 500.0, 16_000.0, 1600)
            .iter()
            .map(|&s| f32::from(s) / 32768.0)
            .collect();
        let mut y = Vec::new();
        r.process_f32(&x, &mut y).unwrap();
        r.flush_f32(&mut y).unwrap();
        assert_eq!(y.len(), 2400);
        // Full-scale square wave overshoots (Gibbs); the i16 path must clip, not wrap.
        let sq: Vec<i16> = (0..1600)
            .map(|i| {
                if (i / 20) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            })
            .collect();
        let out = one_shot(&mut r, &sq);
        assert!(out.contains(&i16::MAX) && out.contains(&i16::MIN));
    }
}
