//! Cheap speech-like audio for the simulated assistant.
//!
//! Clients (VAD, echo cancellation, jitter buffers, level meters) must see something that behaves like
//! speech: voiced syllables with harmonics and formants, a falling pitch contour, syllable envelopes and
//! pauses between words — not silence and not a constant tone. Synthesizing that per sample with
//! filters would cost too much at 1,000 concurrent sessions, so a [`VoiceBank`] precomputes, once per
//! process and sample rate, ONE steady-state pitch period of a glottal pulse train filtered through three
//! formant resonators for every (vowel, pitch) pair. A filtered periodic signal is itself periodic with
//! the same integer period, so looping that one period is seamless; rendering is then a table lookup, an
//! envelope multiply and (at consonant onsets) a little noise.

use std::sync::OnceLock;

/// Formant frequencies (Hz) of five vowels, roughly an adult male voice.
const VOWELS: [[f32; 3]; 5] = [
    [730.0, 1090.0, 2440.0], // a
    [530.0, 1840.0, 2480.0], // e
    [270.0, 2290.0, 3010.0], // i
    [570.0, 840.0, 2410.0],  // o
    [300.0, 870.0, 2240.0],  // u
];
const BANDWIDTHS: [f32; 3] = [90.0, 110.0, 140.0];
/// Pitch periods in samples at 8 kHz (≈110, 129, 151, 174, 200, 222 Hz); multiplied by 3 at 24 kHz so
/// both rates loop on exact integer periods.
const PERIODS_8K: [usize; 6] = [73, 62, 53, 46, 40, 36];

/// One looped pitch period per (vowel, pitch), peak-normalised to 1.0.
pub struct VoiceBank {
    rate: u32,
    periods: Vec<Vec<f32>>,
}

impl VoiceBank {
    fn build(rate: u32) -> Self {
        let mut periods = Vec::with_capacity(VOWELS.len() * PERIODS_8K.len());
        for formants in VOWELS {
            for p8 in PERIODS_8K {
                periods.push(Self::period(rate, formants, p8 * rate as usize / 8000));
            }
        }
        VoiceBank { rate, periods }
    }

    /// Runs the source-filter model long enough to reach steady state and keeps the last period.
    fn period(rate: u32, formants: [f32; 3], period: usize) -> Vec<f32> {
        let fs = rate as f32;
        let coeffs: Vec<(f32, f32)> = formants
            .iter()
            .zip(BANDWIDTHS)
            .map(|(&f, bw)| {
                let r = (-std::f32::consts::PI * bw / fs).exp();
                (
                    2.0 * r * (2.0 * std::f32::consts::PI * f / fs).cos(),
                    -r * r,
                )
            })
            .collect();
        let mut state = [[0f32; 2]; 3];
        let periods_to_run = 40;
        let mut out = vec![0f32; period];
        let mut prev_flow = 0f32;
        for n in 0..period * periods_to_run {
            // Rosenberg glottal flow; its derivative approximates the radiated excitation and carries
            // the falling harmonic series a real voice has.
            let t = (n % period) as f32 / period as f32;
            let flow = if t < 0.6 {
                0.5 * (1.0 - (std::f32::consts::PI * t / 0.6).cos())
            } else if t < 0.8 {
                (std::f32::consts::PI * (t - 0.6) / 0.4).cos().max(0.0)
            } else {
                0.0
            };
            let mut x = flow - prev_flow;
            prev_flow = flow;
            for (s, (a1, a2)) in state.iter_mut().zip(&coeffs) {
                let y = x + a1 * s[0] + a2 * s[1];
                s[1] = s[0];
                s[0] = y;
                x = y;
            }
            if n >= period * (periods_to_run - 1) {
                out[n % period] = x;
            }
        }
        let mean = out.iter().sum::<f32>() / period as f32;
        let peak = out.iter().map(|v| (v - mean).abs()).fold(1e-9f32, f32::max);
        out.iter_mut().for_each(|v| *v = (*v - mean) / peak);
        out
    }

    /// The shared bank for a wire sample rate (24 kHz or 8 kHz).
    pub fn get(rate: u32) -> &'static VoiceBank {
        static B24: OnceLock<VoiceBank> = OnceLock::new();
        static B8: OnceLock<VoiceBank> = OnceLock::new();
        if rate == 8000 {
            B8.get_or_init(|| VoiceBank::build(8000))
        } else {
            B24.get_or_init(|| VoiceBank::build(24000))
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    len: u32,
    /// `(bank index, amplitude)`; `None` is a pause.
    voice: Option<(u16, f32)>,
    consonant_onset: bool,
}

/// Streaming renderer of one utterance: a few bytes per syllable of state, audio produced on demand.
pub struct Utterance {
    bank: &'static VoiceBank,
    segments: Vec<Segment>,
    total: u64,
    seg: usize,
    pos_in_seg: u32,
    rendered: u64,
    noise: u32,
}

fn vowel_index(c: char) -> Option<usize> {
    match c.to_ascii_lowercase() {
        'a' => Some(0),
        'e' => Some(1),
        'i' | 'y' => Some(2),
        'o' => Some(3),
        'u' => Some(4),
        _ => None,
    }
}

impl Utterance {
    /// Plans `text` as syllables of `ms_per_char` per character (so the duration is exactly
    /// `chars × ms_per_char`); non-word characters become pauses.
    pub fn new(text: &str, ms_per_char: u32, rate: u32) -> Self {
        let bank = VoiceBank::get(rate);
        let per_char = (u64::from(ms_per_char) * u64::from(bank.rate) / 1000).max(1) as u32;
        let chars: Vec<char> = text.chars().collect();
        let is_word = |c: char| c.is_alphanumeric() || c == '\'';
        // Words as char ranges, so the declination contour knows the utterance's syllable count.
        let mut pieces: Vec<(usize, usize, bool)> = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let w = is_word(chars[i]);
            let start = i;
            while i < chars.len() && is_word(chars[i]) == w {
                i += 1;
            }
            pieces.push((start, i, w));
        }
        let syllables_in = |n: usize| n.div_ceil(3).max(1);
        let total_syllables: usize = pieces
            .iter()
            .filter(|p| p.2)
            .map(|p| syllables_in(p.1 - p.0))
            .sum::<usize>()
            .max(1);
        let mut segments = Vec::new();
        let mut syl_no = 0usize;
        for (start, end, word) in pieces {
            let n = end - start;
            if !word {
                segments.push(Segment {
                    len: per_char * n as u32,
                    voice: None,
                    consonant_onset: false,
                });
                continue;
            }
            let k = syllables_in(n);
            for s in 0..k {
                let (a, b) = (start + s * n / k, start + (s + 1) * n / k);
                let syl = &chars[a..b];
                let vowel = syl.iter().find_map(|&c| vowel_index(c)).unwrap_or(0);
                let progress = syl_no as f32 / total_syllables as f32;
                // Declination: pitch falls over the utterance; every third syllable is "stressed" higher.
                let stress = if syl_no.is_multiple_of(3) { 1.5 } else { 0.0 };
                let p = ((progress * 4.0) + 0.5 - stress).clamp(0.0, (PERIODS_8K.len() - 1) as f32)
                    as usize;
                let amp = 0.22 + 0.1 * ((syl_no * 7 + vowel * 3) % 5) as f32 / 4.0;
                segments.push(Segment {
                    len: per_char * (b - a) as u32,
                    voice: Some(((vowel * PERIODS_8K.len() + p) as u16, amp)),
                    consonant_onset: syl.first().is_some_and(|&c| vowel_index(c).is_none()),
                });
                syl_no += 1;
            }
        }
        let total = segments.iter().map(|s| u64::from(s.len)).sum();
        Utterance {
            bank,
            segments,
            total,
            seg: 0,
            pos_in_seg: 0,
            rendered: 0,
            noise: 0x9E37_79B9,
        }
    }

    pub fn sample_rate(&self) -> u32 {
        self.bank.rate
    }

    pub fn total_samples(&self) -> u64 {
        self.total
    }

    pub fn rendered_samples(&self) -> u64 {
        self.rendered
    }

    pub fn is_finished(&self) -> bool {
        self.rendered >= self.total
    }

    /// Appends up to `max` samples to `out`; returns how many were appended.
    pub fn render(&mut self, out: &mut Vec<i16>, max: usize) -> usize {
        let attack = self.bank.rate / 50; // 20 ms
        let release = self.bank.rate / 25; // 40 ms
        let onset = self.bank.rate * 15 / 1000;
        let mut produced = 0;
        while produced < max && self.seg < self.segments.len() {
            let seg = self.segments[self.seg];
            let take = ((seg.len - self.pos_in_seg) as usize).min(max - produced);
            match seg.voice {
                None => out.extend(std::iter::repeat_n(0i16, take)),
                Some((idx, amp)) => {
                    let period = &self.bank.periods[idx as usize];
                    for k in 0..take as u32 {
                        let local = self.pos_in_seg + k;
                        let env = (local as f32 / attack as f32)
                            .min((seg.len - local) as f32 / release as f32)
                            .min(1.0);
                        let mut v = period[local as usize % period.len()] * env * amp;
                        if seg.consonant_onset && local < onset {
                            // xorshift32: a consonant-like noise burst without a RNG dependency.
                            self.noise ^= self.noise << 13;
                            self.noise ^= self.noise >> 17;
                            self.noise ^= self.noise << 5;
                            let n = (self.noise as f32 / u32::MAX as f32) * 2.0 - 1.0;
                            v += n * 0.12 * (1.0 - local as f32 / onset as f32);
                        }
                        out.push((v * 32767.0).clamp(-32768.0, 32767.0) as i16);
                    }
                }
            }
            produced += take;
            self.pos_in_seg += take as u32;
            if self.pos_in_seg >= seg.len {
                self.seg += 1;
                self.pos_in_seg = 0;
            }
        }
        self.rendered += produced as u64;
        produced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(s: &[i16]) -> f64 {
        (s.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / s.len().max(1) as f64).sqrt()
    }

    #[test]
    fn duration_is_proportional_to_text() {
        let u = Utterance::new("Hello there, friend.", 70, 24000);
        assert_eq!(u.total_samples(), 20 * 70 * 24);
        let u = Utterance::new("Hi", 50, 8000);
        assert_eq!(u.total_samples(), 2 * 50 * 8);
    }

    #[test]
    fn audio_is_speech_like() {
        let mut u = Utterance::new("The quick brown fox jumps over the lazy dog", 70, 24000);
        let mut out = Vec::new();
        while !u.is_finished() {
            u.render(&mut out, 2400);
        }
        assert_eq!(out.len() as u64, u.total_samples());
        let windows: Vec<f64> = out.chunks(480).map(rms).collect();
        let loud = windows.iter().filter(|&&r| r > 1000.0).count();
        let quiet = windows.iter().filter(|&&r| r < 50.0).count();
        assert!(loud > windows.len() / 2, "mostly voiced");
        assert!(quiet >= 3, "pauses between words");
        let overall = rms(&out);
        let dbfs = 20.0 * (overall / 32768.0).log10();
        assert!((-30.0..-8.0).contains(&dbfs), "level {dbfs}");
    }
}
