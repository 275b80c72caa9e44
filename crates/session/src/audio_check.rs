//! Audio integrity of what the model sends: assistant audio that stays near-silent or clipped for
//! longer than a threshold is the "every metric green but the caller hears nothing" failure, so it is
//! detected here, on the wire samples, and counted once per response and kind.

use std::time::Duration;

/// Below this RMS a chunk counts as near-silent (-60 dBFS).
const SILENT_RMS: f64 = 32768.0 * 0.001;
/// A chunk is clipped when at least 1% of its samples sit at full scale.
const CLIP_LEVEL: i16 = 32_700;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    NearSilent,
    Clipped,
}

impl Anomaly {
    /// Every kind (the `voice_output_audio_anomalies_total{kind}` values).
    pub const ALL: [Anomaly; 2] = [Anomaly::NearSilent, Anomaly::Clipped];

    pub fn as_str(self) -> &'static str {
        match self {
            Anomaly::NearSilent => "near_silent",
            Anomaly::Clipped => "clipped",
        }
    }
}

#[derive(Debug)]
pub struct AudioCheck {
    silent_limit: Duration,
    clipped_limit: Duration,
    silent_run: Duration,
    clipped_run: Duration,
    fired_silent: bool,
    fired_clipped: bool,
}

impl AudioCheck {
    pub fn new(silent_limit: Duration, clipped_limit: Duration) -> Self {
        AudioCheck {
            silent_limit,
            clipped_limit,
            silent_run: Duration::ZERO,
            clipped_run: Duration::ZERO,
            fired_silent: false,
            fired_clipped: false,
        }
    }

    /// A new response starts: runs and once-per-response flags reset.
    pub fn reset(&mut self) {
        self.silent_run = Duration::ZERO;
        self.clipped_run = Duration::ZERO;
        self.fired_silent = false;
        self.fired_clipped = false;
    }

    /// Feeds one chunk of mono samples lasting `duration`; returns an anomaly the first time a run
    /// passes its limit in this response.
    pub fn feed(
        &mut self,
        samples: impl Iterator<Item = i16>,
        duration: Duration,
    ) -> Option<Anomaly> {
        let (mut n, mut energy, mut clipped) = (0u64, 0f64, 0u64);
        for s in samples {
            n += 1;
            energy += f64::from(s) * f64::from(s);
            if s >= CLIP_LEVEL || s <= -CLIP_LEVEL {
                clipped += 1;
            }
        }
        if n == 0 {
            return None;
        }
        let rms = (energy / n as f64).sqrt();
        if rms < SILENT_RMS {
            self.silent_run += duration;
        } else {
            self.silent_run = Duration::ZERO;
        }
        if clipped * 100 >= n {
            self.clipped_run += duration;
        } else {
            self.clipped_run = Duration::ZERO;
        }
        if !self.fired_silent && self.silent_run >= self.silent_limit {
            self.fired_silent = true;
            return Some(Anomaly::NearSilent);
        }
        if !self.fired_clipped && self.clipped_run >= self.clipped_limit {
            self.fired_clipped = true;
            return Some(Anomaly::Clipped);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(amp: f64) -> Vec<i16> {
        (0..2400)
            .map(|i| (amp * (f64::from(i) * 0.2).sin()) as i16)
            .collect()
    }

    #[test]
    fn long_silence_is_flagged_once_per_response() {
        let mut c = AudioCheck::new(Duration::from_secs(2), Duration::from_millis(500));
        let d = Duration::from_millis(100);
        let mut hits = 0;
        for _ in 0..50 {
            if c.feed(chunk(5.0).into_iter(), d) == Some(Anomaly::NearSilent) {
                hits += 1;
            }
        }
        assert_eq!(hits, 1);
        c.reset();
        for _ in 0..19 {
            assert_eq!(c.feed(chunk(5.0).into_iter(), d), None);
        }
    }

    #[test]
    fn speech_with_pauses_is_fine_and_clipping_is_caught() {
        let mut c = AudioCheck::new(Duration::from_secs(2), Duration::from_millis(500));
        let d = Duration::from_millis(100);
        for i in 0..100 {
            let amp = if i % 10 < 7 { 8000.0 } else { 0.0 };
            assert_eq!(c.feed(chunk(amp).into_iter(), d), None);
        }
        let mut got = None;
        for _ in 0..6 {
            got = got.or(c.feed(
                chunk(60000.0).into_iter().map(|s| s.clamp(-32768, 32767)),
                d,
            ));
        }
        assert_eq!(got, Some(Anomaly::Clipped));
    }
}
