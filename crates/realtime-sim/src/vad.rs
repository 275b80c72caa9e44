//! The input side: decoding appended audio and an energy-based voice activity detector.
//!
//! Timing runs on the SAMPLE clock (how much audio the client has appended), never the wall clock, so
//! tests that push audio faster than real time still get deterministic `audio_start_ms`/`audio_end_ms`.
//! The clock counts in 1/24000 s ticks so 8 kHz G.711 (3 ticks per sample) and 24 kHz PCM16 share it
//! exactly, even if the input format changes mid-session.
//!
//! Threshold mapping: upstream's `threshold` is a 0..1 "sensitivity" with no published dB scale; here a
//! 10 ms window counts as voiced when its RMS exceeds `-70 + 60 × threshold` dBFS, i.e. 0.5 → −40 dBFS,
//! 0.0 → −70 dBFS (anything but digital silence), 1.0 → −10 dBFS (only very loud speech).

use voice_realtime::WireAudioFormat;

use voice_audio::g711;

const TICKS_PER_SEC: u64 = 24_000;
const WINDOW_MS: u64 = 10;
/// Consecutive voiced windows needed to declare speech, so one click does not start a turn.
const ONSET_WINDOWS: u32 = 2;

/// Turn-detection parameters in effect (server_vad, or semantic_vad mapped onto it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadParams {
    pub threshold: f64,
    pub prefix_padding_ms: u64,
    pub silence_duration_ms: u64,
}

impl VadParams {
    /// Mean-square level (in i16 units squared) above which a window is voiced.
    fn mean_square_threshold(&self) -> f64 {
        let dbfs = -70.0 + 60.0 * self.threshold.clamp(0.0, 1.0);
        let amp = 10f64.powf(dbfs / 20.0) * 32768.0;
        amp * amp
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    Started { audio_start_ms: u64 },
    Stopped { audio_end_ms: u64 },
}

/// Per-session input audio state: a few counters, no audio is retained.
#[derive(Debug, Default)]
pub struct InputAudio {
    leftover: Option<u8>,
    clock_ticks: u64,
    buffered_ticks: u64,
    window_sumsq: f64,
    window_ticks: u64,
    voiced_run: u32,
    run_start_ms: u64,
    speaking: bool,
    silence_ms: u64,
}

impl InputAudio {
    pub fn clock_ms(&self) -> u64 {
        self.clock_ticks * 1000 / TICKS_PER_SEC
    }

    /// Audio appended since the last commit/clear.
    pub fn buffered_ms(&self) -> u64 {
        self.buffered_ticks * 1000 / TICKS_PER_SEC
    }

    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Forgets buffered audio (commit or clear); an in-progress speech segment ends silently.
    pub fn reset_buffer(&mut self) {
        self.buffered_ticks = 0;
        self.speaking = false;
        self.voiced_run = 0;
        self.silence_ms = 0;
        self.leftover = None;
    }

    /// Decodes `bytes` in `format` and runs the VAD (if `vad` is set), pushing turn events to `events`.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        format: WireAudioFormat,
        vad: Option<VadParams>,
        events: &mut Vec<VadEvent>,
    ) {
        match format {
            WireAudioFormat::Pcm16 => {
                let mut rest = bytes;
                if let Some(lo) = self.leftover.take() {
                    if let Some((&hi, tail)) = rest.split_first() {
                        self.sample(i16::from_le_bytes([lo, hi]), 1, vad, events);
                        rest = tail;
                    } else {
                        self.leftover = Some(lo);
                    }
                }
                let mut chunks = rest.chunks_exact(2);
                for c in &mut chunks {
                    self.sample(i16::from_le_bytes([c[0], c[1]]), 1, vad, events);
                }
                if let [b] = chunks.remainder() {
                    // PCM16 samples may straddle append boundaries; keep the odd byte for the next one.
                    self.leftover = Some(*b);
                }
            }
            WireAudioFormat::G711Ulaw => {
                for &b in bytes {
                    self.sample(g711::ulaw_to_linear(b), 3, vad, events);
                }
            }
            WireAudioFormat::G711Alaw => {
                for &b in bytes {
                    self.sample(g711::alaw_to_linear(b), 3, vad, events);
                }
            }
        }
    }

    fn sample(&mut self, s: i16, ticks: u64, vad: Option<VadParams>, events: &mut Vec<VadEvent>) {
        self.clock_ticks += ticks;
        self.buffered_ticks += ticks;
        // Weight by ticks so both rates measure the same mean square per unit time.
        self.window_sumsq += f64::from(s) * f64::from(s) * ticks as f64;
        self.window_ticks += ticks;
        if self.window_ticks < TICKS_PER_SEC * WINDOW_MS / 1000 {
            return;
        }
        let mean_sq = self.window_sumsq / self.window_ticks as f64;
        self.window_sumsq = 0.0;
        self.window_ticks = 0;
        let Some(p) = vad else {
            return;
        };
        let now_ms = self.clock_ms();
        let voiced = mean_sq > p.mean_square_threshold();
        if !self.speaking {
            if voiced {
                if self.voiced_run == 0 {
                    self.run_start_ms = now_ms.saturating_sub(WINDOW_MS);
                }
                self.voiced_run += 1;
                if self.voiced_run >= ONSET_WINDOWS {
                    self.speaking = true;
                    self.silence_ms = 0;
                    let padded = self.run_start_ms.saturating_sub(p.prefix_padding_ms);
                    // Padding cannot reach back before the audio still in the buffer.
                    let buffer_start = now_ms.saturating_sub(self.buffered_ms());
                    events.push(VadEvent::Started {
                        audio_start_ms: padded.max(buffer_start),
                    });
                }
            } else {
                self.voiced_run = 0;
            }
        } else if voiced {
            self.silence_ms = 0;
        } else {
            self.silence_ms += WINDOW_MS;
            if self.silence_ms >= p.silence_duration_ms.max(WINDOW_MS) {
                self.speaking = false;
                self.voiced_run = 0;
                self.silence_ms = 0;
                // The VAD commits the buffer itself, so audio after this point starts the next turn.
                self.buffered_ticks = 0;
                events.push(VadEvent::Stopped {
                    audio_end_ms: now_ms,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ms: u64, amp: f64) -> Vec<u8> {
        (0..ms * 24)
            .flat_map(|n| {
                let t = n as f64 / 24000.0;
                let v = amp * 32767.0 * (2.0 * std::f64::consts::PI * 200.0 * t).sin();
                (v as i16).to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn detects_speech_on_sample_clock() {
        let p = VadParams {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
        };
        let mut a = InputAudio::default();
        let mut ev = Vec::new();
        a.feed(&tone(1000, 0.0), WireAudioFormat::Pcm16, Some(p), &mut ev);
        assert!(ev.is_empty());
        // Split on an odd byte boundary to exercise the leftover handling.
        let burst = tone(1000, 0.1);
        a.feed(&burst[..1001], WireAudioFormat::Pcm16, Some(p), &mut ev);
        a.feed(&burst[1001..], WireAudioFormat::Pcm16, Some(p), &mut ev);
        a.feed(&tone(1000, 0.0), WireAudioFormat::Pcm16, Some(p), &mut ev);
        assert_eq!(
            ev,
            vec![
                VadEvent::Started {
                    audio_start_ms: 700
                },
                VadEvent::Stopped { audio_end_ms: 2500 }
            ]
        );
    }

    #[test]
    fn threshold_mapping() {
        let p = |t| VadParams {
            threshold: t,
            prefix_padding_ms: 0,
            silence_duration_ms: 500,
        };
        let db = |p: VadParams| 10.0 * (p.mean_square_threshold().sqrt() / 32768.0).powi(2).log10();
        assert!((db(p(0.5)) + 40.0).abs() < 1e-6);
        assert!((db(p(1.0)) + 10.0).abs() < 1e-6);
    }
}
