//! Errors a host can receive on its stream: one enum of stable codes, one error type.
//!
//! Every `Error{code, message, retryable}` the sidecar sends is built from a [`HostError`], so the set of
//! codes a host must handle is exactly [`Code::ALL`]. The proto documents the same list (the `Error`
//! message); a test below checks that the two agree, so neither can drift.

use voice_audio::AudioError;
use voice_proto::v1 as pb;

/// A stable, machine-readable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    // The host's messages.
    InvalidMessage,
    InvalidControl,
    MessageTooLarge,
    InvalidAudioFormat,
    // The host's audio (one per `voice_audio::AudioError`).
    OddByteCount,
    MisalignedFrame,
    FrameTooLarge,
    EmptyFrame,
    UnsupportedFormat,
    InvalidSampleRate,
    InvalidChannels,
    InvalidFrameMs,
    OpusDecode,
    OpusEncode,
    OpusInit,
    Resample,
    // The upstream session.
    UpstreamConnect,
    UpstreamRejectedSession,
    UpstreamTimeout,
    UpstreamError,
    UpstreamDisconnected,
    SessionExpired,
    UpstreamResumed,
    ResponseFailed,
    TranscriptionFailed,
    // Tools.
    ToolResultLate,
    ToolUnknownCall,
    // Cost.
    BudgetExceeded,
    // The model.
    ModelDeprecated,
    // Per-session limits.
    ToolRoundsCapped,
    ResponseRateLimited,
    ControlRateLimited,
    InputAudioTooFast,
    // Session records.
    RecordWriteFailed,
    // Companion sessions.
    ShadowTranscriptionFailed,
    // Translation sessions.
    TranslationFailed,
}

impl Code {
    /// Every code, in the order the proto lists them.
    pub const ALL: &'static [Code] = &[
        Code::InvalidMessage,
        Code::InvalidControl,
        Code::MessageTooLarge,
        Code::InvalidAudioFormat,
        Code::OddByteCount,
        Code::MisalignedFrame,
        Code::FrameTooLarge,
        Code::EmptyFrame,
        Code::UnsupportedFormat,
        Code::InvalidSampleRate,
        Code::InvalidChannels,
        Code::InvalidFrameMs,
        Code::OpusDecode,
        Code::OpusEncode,
        Code::OpusInit,
        Code::Resample,
        Code::UpstreamConnect,
        Code::UpstreamRejectedSession,
        Code::UpstreamTimeout,
        Code::UpstreamError,
        Code::UpstreamDisconnected,
        Code::SessionExpired,
        Code::UpstreamResumed,
        Code::ResponseFailed,
        Code::TranscriptionFailed,
        Code::ToolResultLate,
        Code::ToolUnknownCall,
        Code::BudgetExceeded,
        Code::ModelDeprecated,
        Code::ToolRoundsCapped,
        Code::ResponseRateLimited,
        Code::ControlRateLimited,
        Code::InputAudioTooFast,
        Code::RecordWriteFailed,
        Code::ShadowTranscriptionFailed,
        Code::TranslationFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidMessage => "invalid_message",
            Code::InvalidControl => "invalid_control",
            Code::MessageTooLarge => "message_too_large",
            Code::InvalidAudioFormat => "invalid_audio_format",
            Code::OddByteCount => "odd_byte_count",
            Code::MisalignedFrame => "misaligned_frame",
            Code::FrameTooLarge => "frame_too_large",
            Code::EmptyFrame => "empty_frame",
            Code::UnsupportedFormat => "unsupported_format",
            Code::InvalidSampleRate => "invalid_sample_rate",
            Code::InvalidChannels => "invalid_channels",
            Code::InvalidFrameMs => "invalid_frame_ms",
            Code::OpusDecode => "opus_decode",
            Code::OpusEncode => "opus_encode",
            Code::OpusInit => "opus_init",
            Code::Resample => "resample",
            Code::UpstreamConnect => "upstream_connect",
            Code::UpstreamRejectedSession => "upstream_rejected_session",
            Code::UpstreamTimeout => "upstream_timeout",
            Code::UpstreamError => "upstream_error",
            Code::UpstreamDisconnected => "upstream_disconnected",
            Code::SessionExpired => "session_expired",
            Code::UpstreamResumed => "upstream_resumed",
            Code::ResponseFailed => "response_failed",
            Code::TranscriptionFailed => "transcription_failed",
            Code::ToolResultLate => "tool_result_late",
            Code::ToolUnknownCall => "tool_unknown_call",
            Code::BudgetExceeded => "budget_exceeded",
            Code::ModelDeprecated => "model_deprecated",
            Code::ToolRoundsCapped => "tool_rounds_capped",
            Code::ResponseRateLimited => "response_rate_limited",
            Code::ControlRateLimited => "control_rate_limited",
            Code::InputAudioTooFast => "input_audio_too_fast",
            Code::RecordWriteFailed => "record_write_failed",
            Code::ShadowTranscriptionFailed => "shadow_transcription_failed",
            Code::TranslationFailed => "translation_failed",
        }
    }

    /// The code of an audio error (the audio crate names its own failures).
    pub fn of_audio(e: &AudioError) -> Code {
        match e {
            AudioError::OddByteCount { .. } => Code::OddByteCount,
            AudioError::MisalignedFrame { .. } => Code::MisalignedFrame,
            AudioError::FrameTooLarge { .. } => Code::FrameTooLarge,
            AudioError::EmptyFrame => Code::EmptyFrame,
            AudioError::UnsupportedFormat(_) => Code::UnsupportedFormat,
            AudioError::InvalidSampleRate { .. } => Code::InvalidSampleRate,
            AudioError::InvalidChannels { .. } => Code::InvalidChannels,
            AudioError::InvalidFrameMs { .. } => Code::InvalidFrameMs,
            AudioError::OpusDecode(_) => Code::OpusDecode,
            AudioError::OpusEncode(_) => Code::OpusEncode,
            AudioError::OpusInit(_) => Code::OpusInit,
            AudioError::Resample(_) => Code::Resample,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One error for the host: what went wrong, and whether the condition is transient.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HostError {
    pub code: Code,
    pub message: String,
    /// True when the condition is transient and the session continues or resumes.
    pub retryable: bool,
}

impl HostError {
    pub fn new(code: Code, message: impl Into<String>, retryable: bool) -> Self {
        HostError {
            code,
            message: message.into(),
            retryable,
        }
    }

    /// A message the session could not use; the session goes on.
    pub fn invalid_message(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidMessage, message, true)
    }

    pub fn invalid_control(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidControl, message, true)
    }

    /// Bad host audio: the frame is dropped and the session goes on.
    pub fn audio(e: &AudioError) -> Self {
        Self::new(Code::of_audio(e), e.to_string(), true)
    }

    pub fn into_pb(self) -> pb::Error {
        pb::Error {
            code: self.code.as_str().to_string(),
            message: self.message,
            retryable: self.retryable,
        }
    }

    pub fn to_pb(&self) -> pb::Error {
        pb::Error {
            code: self.code.as_str().to_string(),
            message: self.message.clone(),
            retryable: self.retryable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The codes the proto's `Error` message documents: the lines of its code table.
    fn proto_codes() -> Vec<String> {
        let proto = include_str!("../../../proto/voice/v1/sidecar.proto");
        let start = proto
            .find("// Codes (")
            .expect("the proto's Error message lists its codes");
        proto[start..]
            .lines()
            .skip(1)
            .map(str::trim)
            .take_while(|l| l.starts_with("//   "))
            .filter_map(|l| l.trim_start_matches("//").split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn proto_lists_exactly_the_codes_of_the_enum() {
        let ours: Vec<String> = Code::ALL.iter().map(|c| c.as_str().to_string()).collect();
        assert_eq!(
            proto_codes(),
            ours,
            "proto Error code table != error::Code::ALL"
        );
        let unique: HashSet<_> = ours.iter().collect();
        assert_eq!(unique.len(), ours.len(), "codes are unique");
    }

    #[test]
    fn audio_codes_match_the_audio_crate() {
        let samples = [
            AudioError::EmptyFrame,
            AudioError::OpusDecode("x".into()),
            AudioError::Resample("x".into()),
            AudioError::UnsupportedFormat("x".into()),
        ];
        for e in samples {
            assert_eq!(Code::of_audio(&e).as_str(), e.code());
        }
    }

    #[test]
    fn to_pb_carries_code_message_and_retryable() {
        let e = HostError::new(Code::ToolResultLate, "call c1 already timed out", false);
        let p = e.to_pb();
        assert_eq!(p.code, "tool_result_late");
        assert_eq!(p.message, "call c1 already timed out");
        assert!(!p.retryable);
        assert_eq!(e.to_string(), "tool_result_late: call c1 already timed out");
    }
}
