//! The caller's "voice": one speech-like buffer, generated and encoded ONCE at start-up into 20 ms
//! frames of the chosen codec, shared by every session. Sessions only clone small byte vectors, so
//! the generator's own cost per frame stays a few hundred nanoseconds.

use anyhow::{bail, Context, Result};
use voice_audio::signal::speech_like;
use voice_proto::v1 as pb;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Mulaw,
    Alaw,
    Pcm16,
    Opus,
}

impl Codec {
    pub fn proto(self) -> pb::Codec {
        match self {
            Codec::Mulaw => pb::Codec::Mulaw,
            Codec::Alaw => pb::Codec::Alaw,
            Codec::Pcm16 => pb::Codec::Pcm16,
            Codec::Opus => pb::Codec::Opus,
        }
    }

    /// The sample rate actually used: G.711 is 8 kHz only, Opus 48 kHz; PCM16 takes `--rate`.
    pub fn effective_rate(self, requested: Option<u32>) -> Result<u32> {
        match (self, requested) {
            (Codec::Mulaw | Codec::Alaw, None | Some(8000)) => Ok(8000),
            (Codec::Mulaw | Codec::Alaw, Some(r)) => {
                bail!("G.711 is 8000 Hz only (got --rate {r})")
            }
            (Codec::Opus, None | Some(48000)) => Ok(48000),
            (Codec::Opus, Some(r)) => bail!("Opus runs at 48000 Hz (got --rate {r})"),
            (Codec::Pcm16, None) => Ok(24000),
            (Codec::Pcm16, Some(r)) if (8000..=48000).contains(&r) && r % 50 == 0 => Ok(r),
            (Codec::Pcm16, Some(r)) => {
                bail!("PCM16 rate must be 8000..=48000 and a multiple of 50 (got {r})")
            }
        }
    }

    pub fn format(self, rate: u32) -> pb::AudioFormat {
        pb::AudioFormat {
            codec: self.proto() as i32,
            sample_rate_hz: rate,
            channels: 1,
            frame_ms: 20,
        }
    }
}

/// Pre-encoded 20 ms frames: one speech turn and one silence turn.
pub struct Frames {
    pub speech: Vec<Vec<u8>>,
    /// Distinct silence frames (one for G.711/PCM16; a run of packets for Opus), cycled through.
    pub silence: Vec<Vec<u8>>,
    /// Silence frames per turn.
    pub silence_frames: usize,
}

impl Frames {
    /// `speech_ms` of speech-like signal followed by `silence_ms` of digital silence, per turn.
    pub fn build(codec: Codec, rate: u32, speech_ms: u32, silence_ms: u32) -> Result<Frames> {
        let per_frame = (rate / 50) as usize;
        let speech_frames = (speech_ms / 20).max(1) as usize;
        let silence_frames = (silence_ms / 20).max(1) as usize;
        let speech = speech_like(rate, speech_frames * per_frame);
        let silence = vec![0i16; silence_frames * per_frame];
        match codec {
            Codec::Mulaw | Codec::Alaw => {
                let enc = |s: &[i16]| -> Vec<Vec<u8>> {
                    s.chunks(per_frame)
                        .map(|c| {
                            c.iter()
                                .map(|&x| {
                                    if codec == Codec::Mulaw {
                                        linear_to_ulaw(x)
                                    } else {
                                        linear_to_alaw(x)
                                    }
                                })
                                .collect()
                        })
                        .collect()
                };
                Ok(Frames {
                    speech: enc(&speech),
                    silence: enc(&silence[..per_frame]),
                    silence_frames,
                })
            }
            Codec::Pcm16 => {
                let enc = |s: &[i16]| -> Vec<Vec<u8>> {
                    s.chunks(per_frame)
                        .map(|c| c.iter().flat_map(|x| x.to_le_bytes()).collect())
                        .collect()
                };
                Ok(Frames {
                    speech: enc(&speech),
                    silence: enc(&silence[..per_frame]),
                    silence_frames,
                })
            }
            Codec::Opus => {
                use audiopus::{coder::Encoder, Application, Channels, SampleRate};
                let enc = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip)
                    .context("creating the Opus encoder")?;
                let mut out = [0u8; 4000];
                let mut packets = |s: &[i16]| -> Result<Vec<Vec<u8>>> {
                    s.chunks(per_frame)
                        .map(|c| {
                            let n = enc.encode(c, &mut out).context("Opus encode")?;
                            Ok(out[..n].to_vec())
                        })
                        .collect()
                };
                // Encoded as one continuous stream (speech then silence), replayed in a loop.
                let speech = packets(&speech)?;
                let silence = packets(&silence)?;
                Ok(Frames {
                    speech,
                    silence,
                    silence_frames,
                })
            }
        }
    }

    /// Frames in one turn cycle (speech + silence).
    pub fn cycle_len(&self) -> usize {
        self.speech.len() + self.silence_frames
    }

    /// Frame `i` of the endless speech/silence cycle, and whether it is the last speech frame of a turn.
    pub fn frame(&self, i: u64) -> (&[u8], bool) {
        let k = (i % self.cycle_len() as u64) as usize;
        if k < self.speech.len() {
            (&self.speech[k], k + 1 == self.speech.len())
        } else {
            let j = k - self.speech.len();
            (&self.silence[j % self.silence.len()], false)
        }
    }
}

/// ITU-T G.711 µ-law encoder.
pub fn linear_to_ulaw(pcm: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(pcm);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exp = 31 - ((s >> 7) as u32).leading_zeros() as i32; // 0..=7
    let mant = (s >> (exp + 3)) & 0x0F;
    !((sign | (exp << 4) | mant) as u8)
}

/// ITU-T G.711 A-law encoder.
pub fn linear_to_alaw(pcm: i16) -> u8 {
    let mut m = i32::from(pcm) >> 3; // 13-bit
    let mask = if m >= 0 {
        0xD5
    } else {
        m = -m - 1;
        0x55
    };
    let m = m.min(4095);
    let v = if m < 32 {
        m >> 1
    } else {
        let seg = 31 - (m as u32).leading_zeros() as i32 - 4; // 1..=7
        (seg << 4) | ((m >> seg) & 0x0F)
    };
    (v as u8) ^ mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulaw_decode(u: u8) -> i16 {
        let u = !u;
        let sign = u & 0x80;
        let exp = (u >> 4) & 7;
        let mant = i32::from(u & 0x0F);
        let mag = (((mant << 3) + 0x84) << exp) - 0x84;
        (if sign != 0 { -mag } else { mag }) as i16
    }

    fn alaw_decode(a: u8) -> i16 {
        let a = a ^ 0x55;
        let seg = i32::from((a >> 4) & 7);
        let mant = i32::from(a & 0x0F);
        let mag = if seg == 0 {
            (mant << 4) + 8
        } else {
            ((mant << 4) + 0x108) << (seg - 1)
        };
        (if a & 0x80 != 0 { mag } else { -mag }) as i16
    }

    #[test]
    fn g711_round_trip_is_close() {
        for x in (-32768i32..32767).step_by(97) {
            let x = x as i16;
            let u = i32::from(ulaw_decode(linear_to_ulaw(x)));
            let a = i32::from(alaw_decode(linear_to_alaw(x)));
            let tol = i32::from(x).abs() / 12 + 40;
            assert!((u - i32::from(x)).abs() <= tol, "ulaw {x} -> {u}");
            assert!((a - i32::from(x)).abs() <= tol, "alaw {x} -> {a}");
        }
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_alaw(0), 0xD5);
    }
}
