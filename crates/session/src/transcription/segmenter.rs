//! Where a segment ends when nobody else says so: an energy segmenter over the leg's 24 kHz PCM16
//! audio, for a conversation without turn detection and for transcription-only sessions (the
//! whisper model takes no turn detection, so the sidecar commits each segment itself).
//!
//! Speech starts after [`MIN_SPEECH`] of audio above the threshold; it ends after [`HANGOVER`] below
//! it (the segment is committed then), or at [`MAX_SEGMENT`] of audio however the speaker goes on.
//! Pure: fed with sample blocks, it returns whether to commit now.

use std::time::Duration;

/// Level above which a 10 ms block counts as speech, in dBFS.
pub const THRESHOLD_DBFS: f64 = -45.0;
/// Speech this long before a segment starts (shorter blips are noise).
pub const MIN_SPEECH: Duration = Duration::from_millis(100);
/// Silence this long after speech ends the segment.
pub const HANGOVER: Duration = Duration::from_millis(600);
/// A segment is committed after this much audio even while speech goes on.
pub const MAX_SEGMENT: Duration = Duration::from_secs(30);

/// 10 ms at 24 kHz.
const BLOCK: usize = 240;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No speech since the last commit.
    Quiet,
    /// Above the threshold for `voiced` so far, not yet a segment.
    Onset { voiced: u32 },
    /// In a segment: `silent` blocks since the last voiced one, `len` blocks since it began.
    Speech { silent: u32, len: u32 },
}

#[derive(Debug)]
pub struct Segmenter {
    state: State,
    /// Samples of a partial 10 ms block carried to the next push.
    carry: Vec<i16>,
}

impl Default for Segmenter {
    fn default() -> Self {
        Segmenter::new()
    }
}

fn blocks(d: Duration) -> u32 {
    (d.as_millis() / 10) as u32
}

impl Segmenter {
    pub fn new() -> Self {
        Segmenter {
            state: State::Quiet,
            carry: Vec::with_capacity(BLOCK),
        }
    }

    /// Feeds PCM16 little-endian bytes (24 kHz mono); returns how many segments ended in them
    /// (usually 0 or 1).
    pub fn push(&mut self, pcm: &[u8]) -> u32 {
        let mut ended = 0;
        for pair in pcm.chunks_exact(2) {
            self.carry.push(i16::from_le_bytes([pair[0], pair[1]]));
            if self.carry.len() == BLOCK {
                let voiced = level_dbfs(&self.carry) > THRESHOLD_DBFS;
                self.carry.clear();
                if self.block(voiced) {
                    ended += 1;
                }
            }
        }
        ended
    }

    /// Whether a segment is open (speech seen since the last commit).
    pub fn in_speech(&self) -> bool {
        matches!(self.state, State::Speech { .. })
    }

    /// The host or the conversation committed: start over.
    pub fn reset(&mut self) {
        self.state = State::Quiet;
    }

    fn block(&mut self, voiced: bool) -> bool {
        let (next, commit) = match (self.state, voiced) {
            (State::Quiet | State::Onset { .. }, false) => (State::Quiet, false),
            (State::Quiet, true) => (State::Onset { voiced: 1 }, false),
            (State::Onset { voiced }, true) if voiced + 1 >= blocks(MIN_SPEECH) => (
                State::Speech {
                    silent: 0,
                    len: voiced + 1,
                },
                false,
            ),
            (State::Onset { voiced }, true) => (State::Onset { voiced: voiced + 1 }, false),
            (State::Speech { len, .. }, _) if len + 1 >= blocks(MAX_SEGMENT) => {
                (State::Quiet, true)
            }
            (State::Speech { silent, .. }, false) if silent + 1 >= blocks(HANGOVER) => {
                (State::Quiet, true)
            }
            (State::Speech { silent, len }, false) => (
                State::Speech {
                    silent: silent + 1,
                    len: len + 1,
                },
                false,
            ),
            (State::Speech { len, .. }, true) => (
                State::Speech {
                    silent: 0,
                    len: len + 1,
                },
                false,
            ),
        };
        self.state = next;
        commit
    }
}

/// RMS level of a block in dBFS (-inf for digital silence).
fn level_dbfs(block: &[i16]) -> f64 {
    let sum: f64 = block.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (sum / block.len() as f64).sqrt();
    20.0 * (rms / 32768.0).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(ms: u32, amplitude: f64) -> Vec<u8> {
        let n = (ms * 24) as usize;
        (0..n)
            .flat_map(|i| {
                let s = (amplitude * 32767.0 * (i as f64 * 0.0523).sin()) as i16;
                s.to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn speech_then_silence_is_one_segment_after_the_hangover() {
        let mut s = Segmenter::new();
        assert_eq!(s.push(&pcm(300, 0.0)), 0);
        assert_eq!(s.push(&pcm(1000, 0.3)), 0);
        assert!(s.in_speech());
        // Not yet: the hangover is 600 ms.
        assert_eq!(s.push(&pcm(500, 0.0)), 0);
        assert_eq!(s.push(&pcm(100, 0.0)), 1);
        assert!(!s.in_speech());
        assert_eq!(s.push(&pcm(2000, 0.0)), 0);
    }

    #[test]
    fn a_short_pause_inside_speech_does_not_split_it() {
        let mut s = Segmenter::new();
        s.push(&pcm(800, 0.3));
        assert_eq!(s.push(&pcm(400, 0.0)), 0);
        s.push(&pcm(800, 0.3));
        assert_eq!(s.push(&pcm(700, 0.0)), 1);
    }

    #[test]
    fn blips_and_quiet_noise_are_not_speech() {
        let mut s = Segmenter::new();
        // 50 ms clicks every 500 ms, and noise at about -60 dBFS.
        for _ in 0..10 {
            s.push(&pcm(50, 0.5));
            s.push(&pcm(450, 0.001));
        }
        assert!(!s.in_speech());
        assert_eq!(s.push(&pcm(1000, 0.0)), 0);
    }

    #[test]
    fn endless_speech_is_cut_at_the_segment_cap() {
        let mut s = Segmenter::new();
        let commits = s.push(&pcm(65_000, 0.3));
        assert_eq!(commits, 2, "65 s of speech: cut at 30 s and 60 s");
    }

    #[test]
    fn odd_sized_pushes_are_the_same_as_one() {
        let audio: Vec<u8> = [pcm(300, 0.0), pcm(900, 0.3), pcm(800, 0.0)].concat();
        let mut one = Segmenter::new();
        let mut many = Segmenter::new();
        let whole = one.push(&audio);
        let parts: u32 = audio.chunks(2 * 97).map(|c| many.push(c)).sum();
        assert_eq!((whole, parts), (1, 1));
    }
}
