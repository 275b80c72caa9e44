//! Typed errors: protocol errors become `error` events on the socket (the session stays open), handshake
//! errors become HTTP responses before the upgrade.

/// A client mistake reported as `{type:"error", error:{type:"invalid_request_error", code, message, param}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>, param: Option<&str>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    pub fn missing(param: &str) -> Self {
        Self::new(
            "missing_required_parameter",
            format!("Missing required parameter: '{param}'."),
            Some(param),
        )
    }

    pub fn invalid_type(param: &str, expected: &str) -> Self {
        Self::new(
            "invalid_type",
            format!("Invalid type for '{param}': expected {expected}."),
            Some(param),
        )
    }

    pub fn invalid_value(param: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(
            "invalid_value",
            format!("Invalid value for '{param}': {detail}."),
            Some(param),
        )
    }

    pub fn unknown_parameter(param: &str) -> Self {
        Self::new(
            "unknown_parameter",
            format!("Unknown parameter: '{param}'."),
            Some(param),
        )
    }
}

/// Why a WebSocket upgrade was refused; maps to the HTTP status upstream would use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error(
        "unknown path {0:?}; the Realtime API lives at /v1/realtime and /v1/realtime/translations"
    )]
    NotFound(String),
    #[error("missing required query parameter 'model'")]
    MissingModel,
    /// `intent` other than `transcription` (and no `model`).
    #[error("invalid value for query parameter 'intent': {0:?} (supported: 'transcription')")]
    InvalidIntent(String),
    /// `intent=transcription` with `OpenAI-Beta: realtime=v1`: the simulator serves transcription
    /// sessions in the GA dialect only.
    #[error("transcription sessions are served in the GA dialect only; omit the 'OpenAI-Beta: realtime=v1' header")]
    BetaTranscription,
    /// A translation session for a model other than `gpt-realtime-translate(-…)`.
    #[error("model {0:?} is not a translation model (expected 'gpt-realtime-translate')")]
    InvalidModel(String),
    #[error("missing or invalid Authorization bearer token")]
    Unauthorized,
}

impl HandshakeError {
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::NotFound(_) => 404,
            HandshakeError::MissingModel
            | HandshakeError::InvalidIntent(_)
            | HandshakeError::BetaTranscription
            | HandshakeError::InvalidModel(_) => 400,
            HandshakeError::Unauthorized => 401,
        }
    }
}
