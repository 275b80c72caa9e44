//! The two dialects of the Realtime API (beta and GA) and the audio formats the wire accepts.
//!
//! Everything that differs between dialects (event names, session shape, headers) is decided from a
//! `Dialect` value in one place, so callers never compare event-name strings themselves.

use std::fmt;
use std::str::FromStr;

/// Which generation of the Realtime protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// The generally available API: `response.output_audio.delta`, nested `audio.input/output` session.
    #[default]
    Ga,
    /// The beta API (`OpenAI-Beta: realtime=v1`): `response.audio.delta`, flat session fields.
    Beta,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Ga => "ga",
            Dialect::Beta => "beta",
        }
    }

    /// Event name of an assistant audio chunk.
    pub fn audio_delta(self) -> &'static str {
        match self {
            Dialect::Ga => "response.output_audio.delta",
            Dialect::Beta => "response.audio.delta",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ga" => Ok(Dialect::Ga),
            "beta" => Ok(Dialect::Beta),
            other => Err(format!(
                "unknown dialect {other:?} (expected \"ga\" or \"beta\")"
            )),
        }
    }
}

/// Audio encodings the Realtime API accepts on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WireAudioFormat {
    /// PCM16 little-endian, 24 kHz, mono.
    #[default]
    Pcm16,
    /// G.711 µ-law, 8 kHz.
    G711Ulaw,
    /// G.711 A-law, 8 kHz.
    G711Alaw,
}

impl WireAudioFormat {
    /// Beta-dialect name (`input_audio_format`), also used in `SessionStarted`.
    pub fn beta_name(self) -> &'static str {
        match self {
            WireAudioFormat::Pcm16 => "pcm16",
            WireAudioFormat::G711Ulaw => "g711_ulaw",
            WireAudioFormat::G711Alaw => "g711_alaw",
        }
    }

    /// GA-dialect format object (`audio.input.format`).
    pub fn ga_json(self) -> serde_json::Value {
        match self {
            WireAudioFormat::Pcm16 => serde_json::json!({"type": "audio/pcm", "rate": 24000}),
            WireAudioFormat::G711Ulaw => serde_json::json!({"type": "audio/pcmu"}),
            WireAudioFormat::G711Alaw => serde_json::json!({"type": "audio/pcma"}),
        }
    }

    /// Parses either dialect's representation.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        match v {
            serde_json::Value::String(s) => match s.as_str() {
                "pcm16" => Some(WireAudioFormat::Pcm16),
                "g711_ulaw" => Some(WireAudioFormat::G711Ulaw),
                "g711_alaw" => Some(WireAudioFormat::G711Alaw),
                _ => None,
            },
            serde_json::Value::Object(o) => match o.get("type")?.as_str()? {
                "audio/pcm" => match o.get("rate") {
                    None => Some(WireAudioFormat::Pcm16),
                    Some(r) if r.as_u64() == Some(24000) => Some(WireAudioFormat::Pcm16),
                    Some(_) => None,
                },
                "audio/pcmu" => Some(WireAudioFormat::G711Ulaw),
                "audio/pcma" => Some(WireAudioFormat::G711Alaw),
                _ => None,
            },
            _ => None,
        }
    }

    /// Samples per second on the wire.
    pub fn sample_rate(self) -> u32 {
        match self {
            WireAudioFormat::Pcm16 => 24_000,
            _ => 8_000,
        }
    }

    /// Bytes per millisecond of mono audio.
    pub fn bytes_per_ms(self) -> usize {
        match self {
            WireAudioFormat::Pcm16 => 48,
            _ => 8,
        }
    }
}
