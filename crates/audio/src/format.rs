//! Host-side and wire-side audio format descriptions: defaulting/validation of the host's
//! `AudioFormat` (mirrors `proto/voice/v1/sidecar.proto`) and the choice of what goes on the
//! WebSocket. Kept separate from the pipelines so the session layer can validate a `SessionStart`
//! before building any codec state.

use std::fmt;
use std::time::Duration;

use crate::error::AudioError;

/// Host-side codec. `CODEC_UNSPECIFIED` in the proto maps to [`Codec::Pcm16`] at the conversion layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Signed 16-bit little-endian, interleaved if stereo.
    Pcm16,
    /// G.711 µ-law, 8 kHz only.
    Mulaw,
    /// G.711 A-law, 8 kHz only.
    Alaw,
    /// One Opus packet per frame, 48 kHz clock.
    Opus,
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Pcm16 => "PCM16",
            Codec::Mulaw => "G.711 mu-law",
            Codec::Alaw => "G.711 A-law",
            Codec::Opus => "Opus",
        })
    }
}

/// The host's audio format as negotiated in `SessionStart`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HostFormat {
    pub codec: Codec,
    pub sample_rate: u32,
    pub channels: u16,
    pub frame_ms: u32,
}

pub const PCM16_MIN_RATE: u32 = 8_000;
pub const PCM16_MAX_RATE: u32 = 48_000;
pub const OPUS_FRAME_MS: [u32; 4] = [10, 20, 40, 60];

impl HostFormat {
    /// Fills the documented defaults for zero fields (PCM16 rate 0→24000, G.711 0→8000, Opus
    /// 0→48000; channels 0→1; frame_ms 0→20) and validates the result.
    pub fn normalized(self) -> Result<HostFormat, AudioError> {
        let mut f = self;
        if f.sample_rate == 0 {
            f.sample_rate = match f.codec {
                Codec::Pcm16 => 24_000,
                Codec::Mulaw | Codec::Alaw => 8_000,
                Codec::Opus => 48_000,
            };
        }
        if f.channels == 0 {
            f.channels = 1;
        }
        if f.frame_ms == 0 {
            f.frame_ms = 20;
        }
        match f.codec {
            Codec::Pcm16 if !(PCM16_MIN_RATE..=PCM16_MAX_RATE).contains(&f.sample_rate) => {
                return Err(AudioError::InvalidSampleRate {
                    codec: f.codec,
                    rate: f.sample_rate,
                    expected: "PCM16 supports 8000..=48000 Hz",
                });
            }
            Codec::Mulaw | Codec::Alaw if f.sample_rate != 8_000 => {
                return Err(AudioError::InvalidSampleRate {
                    codec: f.codec,
                    rate: f.sample_rate,
                    expected: "G.711 must be exactly 8000 Hz",
                });
            }
            Codec::Opus if f.sample_rate != 48_000 => {
                return Err(AudioError::InvalidSampleRate {
                    codec: f.codec,
                    rate: f.sample_rate,
                    expected: "Opus uses a 48000 Hz clock",
                });
            }
            _ => {}
        }
        if f.channels > 2 {
            return Err(AudioError::InvalidChannels {
                channels: f.channels,
            });
        }
        if !(10..=60).contains(&f.frame_ms) {
            return Err(AudioError::InvalidFrameMs {
                codec: f.codec,
                frame_ms: f.frame_ms,
                expected: "frame duration must be 10..=60 ms",
            });
        }
        if f.codec == Codec::Opus && !OPUS_FRAME_MS.contains(&f.frame_ms) {
            return Err(AudioError::InvalidFrameMs {
                codec: f.codec,
                frame_ms: f.frame_ms,
                expected: "Opus packets must be 10, 20, 40 or 60 ms",
            });
        }
        Ok(f)
    }

    /// Bytes per sample frame (all channels) for sample-based codecs; `None` for Opus.
    pub fn bytes_per_sample_frame(&self) -> Option<usize> {
        let per_channel = match self.codec {
            Codec::Pcm16 => 2,
            Codec::Mulaw | Codec::Alaw => 1,
            Codec::Opus => return None,
        };
        Some(per_channel * usize::from(self.channels.max(1)))
    }

    /// Bytes per second of audio; `None` for Opus (variable bitrate).
    pub fn bytes_per_sec(&self) -> Option<usize> {
        Some(self.bytes_per_sample_frame()? * self.sample_rate as usize)
    }

    /// Bytes per millisecond. `None` for Opus, and also for rates where a millisecond is not a
    /// whole number of samples (11025/22050/44100 Hz) — use [`bytes_per_sec`](Self::bytes_per_sec)
    /// there rather than silently rounding.
    pub fn bytes_per_ms(&self) -> Option<usize> {
        let per_sec = self.bytes_per_sec()?;
        (per_sec % 1000 == 0).then_some(per_sec / 1000)
    }
}

/// What goes on the WebSocket to the model.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireFormat {
    Pcm16_24k,
    Ulaw8k,
    Alaw8k,
}

impl WireFormat {
    pub fn sample_rate(self) -> u32 {
        match self {
            WireFormat::Pcm16_24k => 24_000,
            WireFormat::Ulaw8k | WireFormat::Alaw8k => 8_000,
        }
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            WireFormat::Pcm16_24k => 2,
            WireFormat::Ulaw8k | WireFormat::Alaw8k => 1,
        }
    }

    /// Bytes of `d` of audio in this format (whole samples).
    pub fn bytes_for(self, d: Duration) -> usize {
        let samples = d.as_micros() * u128::from(self.sample_rate()) / 1_000_000;
        usize::try_from(samples).unwrap_or(usize::MAX / 2) * self.bytes_per_sample()
    }

    /// How much audio `bytes` of this format hold (whole samples only).
    pub fn duration_of(self, bytes: usize) -> Duration {
        let samples = (bytes / self.bytes_per_sample()) as u64;
        Duration::from_micros(samples * 1_000_000 / u64::from(self.sample_rate()))
    }

    /// The Realtime API's `audio/format` name for session configuration.
    pub fn api_name(self) -> &'static str {
        match self {
            WireFormat::Pcm16_24k => "pcm16",
            WireFormat::Ulaw8k => "g711_ulaw",
            WireFormat::Alaw8k => "g711_alaw",
        }
    }

    /// The host format that this wire format passes through to unchanged.
    pub fn passthrough_host(self) -> (Codec, u32) {
        match self {
            WireFormat::Pcm16_24k => (Codec::Pcm16, 24_000),
            WireFormat::Ulaw8k => (Codec::Mulaw, 8_000),
            WireFormat::Alaw8k => (Codec::Alaw, 8_000),
        }
    }
}

/// Pass-through choice: PCM16 24 kHz mono → `Pcm16_24k`, µ-law 8k mono → `Ulaw8k`, A-law 8k mono →
/// `Alaw8k`; everything else → `Pcm16_24k` with conversion (24 kHz PCM is the model's native
/// format, so it loses nothing for wideband hosts).
pub fn wire_format_for(host: &HostFormat) -> WireFormat {
    match (host.codec, host.sample_rate, host.channels) {
        (Codec::Mulaw, 8_000, 1) => WireFormat::Ulaw8k,
        (Codec::Alaw, 8_000, 1) => WireFormat::Alaw8k,
        _ => WireFormat::Pcm16_24k,
    }
}

/// True when host bytes and wire bytes are identical (same codec, rate, mono).
pub(crate) fn is_passthrough_pair(host: &HostFormat, wire: WireFormat) -> bool {
    let (codec, rate) = wire.passthrough_host();
    host.codec == codec && host.sample_rate == rate && host.channels == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(codec: Codec, sample_rate: u32, channels: u16, frame_ms: u32) -> HostFormat {
        HostFormat {
            codec,
            sample_rate,
            channels,
            frame_ms,
        }
    }

    #[test]
    fn wire_duration_counts_whole_samples() {
        let ms = Duration::from_millis;
        assert_eq!(WireFormat::Pcm16_24k.duration_of(4800), ms(100));
        // A trailing odd byte is not a sample.
        assert_eq!(WireFormat::Pcm16_24k.duration_of(4801), ms(100));
        assert_eq!(WireFormat::Ulaw8k.duration_of(160), ms(20));
        assert_eq!(WireFormat::Alaw8k.duration_of(800), ms(100));
        assert_eq!(WireFormat::Pcm16_24k.bytes_for(ms(100)), 4800);
        assert_eq!(WireFormat::Ulaw8k.bytes_for(ms(20)), 160);
        assert_eq!(
            WireFormat::Pcm16_24k.duration_of(WireFormat::Pcm16_24k.bytes_for(ms(10_000))),
            ms(10_000)
        );
    }

    #[test]
    fn defaults_are_filled() {
        assert_eq!(
            hf(Codec::Pcm16, 0, 0, 0).normalized(),
            Ok(hf(Codec::Pcm16, 24_000, 1, 20))
        );
        assert_eq!(
            hf(Codec::Mulaw, 0, 0, 0).normalized(),
            Ok(hf(Codec::Mulaw, 8_000, 1, 20))
        );
        assert_eq!(
            hf(Codec::Alaw, 0, 2, 30).normalized(),
            Ok(hf(Codec::Alaw, 8_000, 2, 30))
        );
        assert_eq!(
            hf(Codec::Opus, 0, 0, 0).normalized(),
            Ok(hf(Codec::Opus, 48_000, 1, 20))
        );
    }

    #[test]
    fn invalid_formats_are_rejected_with_specific_errors() {
        let e = hf(Codec::Pcm16, 7_000, 1, 20).normalized().unwrap_err();
        assert_eq!(e.code(), "invalid_sample_rate");
        assert!(
            e.to_string().contains("7000") && e.to_string().contains("8000..=48000"),
            "{e}"
        );
        assert_eq!(
            hf(Codec::Pcm16, 96_000, 1, 20)
                .normalized()
                .unwrap_err()
                .code(),
            "invalid_sample_rate"
        );
        let e = hf(Codec::Mulaw, 16_000, 1, 20).normalized().unwrap_err();
        assert!(e.to_string().contains("exactly 8000"), "{e}");
        assert_eq!(
            hf(Codec::Alaw, 16_000, 1, 20)
                .normalized()
                .unwrap_err()
                .code(),
            "invalid_sample_rate"
        );
        assert_eq!(
            hf(Codec::Opus, 24_000, 1, 20)
                .normalized()
                .unwrap_err()
                .code(),
            "invalid_sample_rate"
        );
        let e = hf(Codec::Opus, 48_000, 1, 25).normalized().unwrap_err();
        assert_eq!(e.code(), "invalid_frame_ms");
        assert!(
            e.to_string().contains("25 ms") && e.to_string().contains("10, 20, 40 or 60"),
            "{e}"
        );
        assert_eq!(
            hf(Codec::Pcm16, 16_000, 3, 20)
                .normalized()
                .unwrap_err()
                .code(),
            "invalid_channels"
        );
        assert_eq!(
            hf(Codec::Pcm16, 16_000, 1, 5)
                .normalized()
                .unwrap_err()
                .code(),
            "invalid_frame_ms"
        );
        assert_eq!(
            hf(Codec::Pcm16, 16_000, 1, 61)
                .normalized()
                .unwrap_err()
                .code(),
            "invalid_frame_ms"
        );
        // PCM16 accepts a non-Opus frame size such as 25 ms.
        assert!(hf(Codec::Pcm16, 16_000, 1, 25).normalized().is_ok());
    }

    #[test]
    fn bytes_per_ms() {
        assert_eq!(hf(Codec::Pcm16, 24_000, 1, 20).bytes_per_ms(), Some(48));
        assert_eq!(hf(Codec::Pcm16, 16_000, 2, 20).bytes_per_ms(), Some(64));
        assert_eq!(hf(Codec::Mulaw, 8_000, 1, 20).bytes_per_ms(), Some(8));
        assert_eq!(hf(Codec::Opus, 48_000, 1, 20).bytes_per_ms(), None);
        assert_eq!(hf(Codec::Pcm16, 44_100, 1, 20).bytes_per_ms(), None);
        assert_eq!(
            hf(Codec::Pcm16, 44_100, 1, 20).bytes_per_sec(),
            Some(88_200)
        );
    }

    #[test]
    fn wire_choice() {
        assert_eq!(
            wire_format_for(&hf(Codec::Mulaw, 8_000, 1, 20)),
            WireFormat::Ulaw8k
        );
        assert_eq!(
            wire_format_for(&hf(Codec::Alaw, 8_000, 1, 20)),
            WireFormat::Alaw8k
        );
        assert_eq!(
            wire_format_for(&hf(Codec::Mulaw, 8_000, 2, 20)),
            WireFormat::Pcm16_24k
        );
        assert_eq!(
            wire_format_for(&hf(Codec::Pcm16, 24_000, 1, 20)),
            WireFormat::Pcm16_24k
        );
        assert_eq!(
            wire_format_for(&hf(Codec::Pcm16, 8_000, 1, 20)),
            WireFormat::Pcm16_24k
        );
        assert_eq!(
            wire_format_for(&hf(Codec::Opus, 48_000, 1, 20)),
            WireFormat::Pcm16_24k
        );
    }
}
