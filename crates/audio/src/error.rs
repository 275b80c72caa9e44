//! The crate's single error type. Every fallible operation returns [`AudioError`] so the session
//! layer can map failures onto gRPC statuses / telemetry labels through one stable [`AudioError::code`].

use crate::format::Codec;

/// Everything that can go wrong while validating formats or converting audio.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AudioError {
    /// PCM16 data must be whole 16-bit samples; a dangling byte is never carried to the next frame.
    #[error("PCM16 frame has an odd byte count ({len}); frames must contain whole 16-bit samples")]
    OddByteCount { len: usize },
    /// The frame is not a whole number of multi-channel sample frames (e.g. stereo PCM16 not a multiple of 4).
    #[error("frame of {len} bytes is not a multiple of the {frame_bytes}-byte sample frame")]
    MisalignedFrame { len: usize, frame_bytes: usize },
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("empty audio frame")]
    EmptyFrame,
    #[error("unsupported format: {0}")]
    UnsupportedFormat(String),
    #[error("invalid sample rate {rate} Hz for {codec}: {expected}")]
    InvalidSampleRate {
        codec: Codec,
        rate: u32,
        expected: &'static str,
    },
    #[error("invalid channel count {channels}: must be 1 or 2")]
    InvalidChannels { channels: u16 },
    #[error("invalid frame duration {frame_ms} ms for {codec}: {expected}")]
    InvalidFrameMs {
        codec: Codec,
        frame_ms: u32,
        expected: &'static str,
    },
    #[error("Opus decode failed: {0}")]
    OpusDecode(String),
    #[error("Opus encode failed: {0}")]
    OpusEncode(String),
    #[error("Opus codec initialisation failed: {0}")]
    OpusInit(String),
    #[error("resampler failure: {0}")]
    Resample(String),
}

impl AudioError {
    /// Stable snake_case identifier, safe to use as a metric label or in client-visible error details.
    pub fn code(&self) -> &'static str {
        match self {
            AudioError::OddByteCount { .. } => "odd_byte_count",
            AudioError::MisalignedFrame { .. } => "misaligned_frame",
            AudioError::FrameTooLarge { .. } => "frame_too_large",
            AudioError::EmptyFrame => "empty_frame",
            AudioError::UnsupportedFormat(_) => "unsupported_format",
            AudioError::InvalidSampleRate { .. } => "invalid_sample_rate",
            AudioError::InvalidChannels { .. } => "invalid_channels",
            AudioError::InvalidFrameMs { .. } => "invalid_frame_ms",
            AudioError::OpusDecode(_) => "opus_decode",
            AudioError::OpusEncode(_) => "opus_encode",
            AudioError::OpusInit(_) => "opus_init",
            AudioError::Resample(_) => "resample",
        }
    }
}
