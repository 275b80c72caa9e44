//! Translation sessions ("GPT Realtime Translate", `/v1/realtime/translations?model=…`): their own
//! small protocol, not the conversation's. Three client events (the openai 3.57.0
//! `RealtimeTranslationClientEvent` union) and the server events of
//! `RealtimeTranslationServerEvent`.
//!
//! Parsing never panics: malformed JSON or a known event with a bad field is a [`ParseError`]; an
//! event type this module does not know is [`TranslationServerEvent::Other`] (ignored by the
//! session, never fatal).

use crate::server_events::{ApiError, ParseError};
use base64::Engine as _;
use serde_json::{json, Value};

/// The output languages a translation session speaks (`session.audio.output.language`).
pub const OUTPUT_LANGUAGES: [&str; 13] = [
    "es", "pt", "fr", "ja", "ru", "zh", "de", "ko", "hi", "id", "vi", "it", "en",
];

/// The engine's frame: input is appended, and `elapsed_ms` advances, in steps of this many ms.
pub const FRAME_MS: u32 = 200;

/// A client event of a translation session.
#[derive(Debug, Clone, PartialEq)]
pub enum TranslationClientEvent<'a> {
    /// `session.update`: the target language, and the source-transcript model if the source should
    /// be transcribed (`None`: `transcription: null`).
    SessionUpdate {
        language: &'a str,
        input_transcription: Option<&'a str>,
    },
    /// `session.input_audio_buffer.append`: 24 kHz PCM16 mono bytes (base64 on the wire).
    Append { audio: &'a [u8] },
    /// `session.close`: upstream flushes the remaining output, sends `session.closed`, and closes.
    Close,
}

impl TranslationClientEvent<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            TranslationClientEvent::SessionUpdate { .. } => "session.update",
            TranslationClientEvent::Append { .. } => "session.input_audio_buffer.append",
            TranslationClientEvent::Close => "session.close",
        }
    }

    /// The event as JSON text, with the given `event_id`.
    pub fn to_json(&self, event_id: &str) -> String {
        let v = match self {
            TranslationClientEvent::SessionUpdate {
                language,
                input_transcription,
            } => json!({
                "type": self.kind(),
                "event_id": event_id,
                "session": {"audio": {
                    "input": {"transcription": input_transcription.map(|m| json!({"model": m}))},
                    "output": {"language": language},
                }},
            }),
            TranslationClientEvent::Append { audio } => json!({
                "type": self.kind(),
                "event_id": event_id,
                "audio": base64::engine::general_purpose::STANDARD.encode(audio),
            }),
            TranslationClientEvent::Close => json!({"type": self.kind(), "event_id": event_id}),
        };
        v.to_string()
    }
}

/// A server event of a translation session.
#[derive(Debug, Clone, PartialEq)]
pub enum TranslationServerEvent {
    SessionCreated {
        session: Value,
    },
    SessionUpdated {
        session: Value,
    },
    /// `session.input_transcript.delta`: the source speech (only with input transcription).
    InputTranscriptDelta {
        delta: String,
        elapsed_ms: Option<u32>,
    },
    /// `session.output_transcript.delta`: the translation's text.
    OutputTranscriptDelta {
        delta: String,
        elapsed_ms: Option<u32>,
    },
    /// `session.output_audio.delta`: translated audio, decoded from base64.
    OutputAudioDelta {
        audio: Vec<u8>,
        /// `sample_rate` when upstream names it (24 kHz PCM16 mono is what the session speaks).
        sample_rate: Option<u32>,
        channels: Option<u32>,
        elapsed_ms: Option<u32>,
    },
    /// `session.closed`: the output is drained; the socket closes next.
    SessionClosed,
    Error {
        error: ApiError,
    },
    /// An event type not listed above (ignored).
    Other {
        kind: String,
    },
}

impl TranslationServerEvent {
    pub fn parse(text: &str) -> Result<TranslationServerEvent, ParseError> {
        let v: Value = serde_json::from_str(text)?;
        Self::from_value(&v)
    }

    pub fn from_value(v: &Value) -> Result<TranslationServerEvent, ParseError> {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or(ParseError::NoType)?;
        let field_err = |field: &'static str| ParseError::Field {
            kind: kind.to_string(),
            field,
        };
        let string = |field: &'static str| {
            v.get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| field_err(field))
        };
        // Optional non-negative integers: absent or null is None, anything else must fit a u32.
        let opt_u32 = |field: &'static str| match v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| field_err(field)),
        };
        let session = || {
            v.get("session")
                .filter(|s| s.is_object())
                .cloned()
                .ok_or_else(|| field_err("session"))
        };
        Ok(match kind {
            "session.created" => TranslationServerEvent::SessionCreated {
                session: session()?,
            },
            "session.updated" => TranslationServerEvent::SessionUpdated {
                session: session()?,
            },
            "session.input_transcript.delta" => TranslationServerEvent::InputTranscriptDelta {
                delta: string("delta")?,
                elapsed_ms: opt_u32("elapsed_ms")?,
            },
            "session.output_transcript.delta" => TranslationServerEvent::OutputTranscriptDelta {
                delta: string("delta")?,
                elapsed_ms: opt_u32("elapsed_ms")?,
            },
            "session.output_audio.delta" => {
                let b64 = string("delta")?;
                let audio = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|source| ParseError::Base64 {
                        kind: kind.to_string(),
                        source,
                    })?;
                if let Some(f) = v.get("format").filter(|f| !f.is_null()) {
                    if f.as_str() != Some("pcm16") {
                        return Err(field_err("format"));
                    }
                }
                TranslationServerEvent::OutputAudioDelta {
                    audio,
                    sample_rate: opt_u32("sample_rate")?,
                    channels: opt_u32("channels")?,
                    elapsed_ms: opt_u32("elapsed_ms")?,
                }
            }
            "session.closed" => TranslationServerEvent::SessionClosed,
            "error" => TranslationServerEvent::Error {
                error: v
                    .get("error")
                    .filter(|e| e.is_object())
                    .and_then(|e| serde_json::from_value(e.clone()).ok())
                    .ok_or_else(|| field_err("error"))?,
            },
            other => TranslationServerEvent::Other {
                kind: other.to_string(),
            },
        })
    }

    pub fn kind(&self) -> &str {
        match self {
            TranslationServerEvent::SessionCreated { .. } => "session.created",
            TranslationServerEvent::SessionUpdated { .. } => "session.updated",
            TranslationServerEvent::InputTranscriptDelta { .. } => "session.input_transcript.delta",
            TranslationServerEvent::OutputTranscriptDelta { .. } => {
                "session.output_transcript.delta"
            }
            TranslationServerEvent::OutputAudioDelta { .. } => "session.output_audio.delta",
            TranslationServerEvent::SessionClosed => "session.closed",
            TranslationServerEvent::Error { .. } => "error",
            TranslationServerEvent::Other { kind } => kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_events_have_the_sdk_shapes() {
        let u: Value = serde_json::from_str(
            &TranslationClientEvent::SessionUpdate {
                language: "es",
                input_transcription: Some("gpt-realtime-whisper"),
            }
            .to_json("evt_1"),
        )
        .unwrap();
        assert_eq!(
            u,
            json!({"type": "session.update", "event_id": "evt_1", "session": {"audio": {
                "input": {"transcription": {"model": "gpt-realtime-whisper"}},
                "output": {"language": "es"}}}})
        );
        let u: Value = serde_json::from_str(
            &TranslationClientEvent::SessionUpdate {
                language: "ja",
                input_transcription: None,
            }
            .to_json("e"),
        )
        .unwrap();
        assert_eq!(u["session"]["audio"]["input"]["transcription"], Value::Null);
        let a: Value = serde_json::from_str(
            &TranslationClientEvent::Append {
                audio: &[1, 0, 255, 127],
            }
            .to_json("e2"),
        )
        .unwrap();
        assert_eq!(
            a,
            json!({"type": "session.input_audio_buffer.append", "event_id": "e2", "audio": "AQD/fw=="})
        );
        let c: Value = serde_json::from_str(&TranslationClientEvent::Close.to_json("e3")).unwrap();
        assert_eq!(c, json!({"type": "session.close", "event_id": "e3"}));
    }

    #[test]
    fn server_events_parse() {
        use TranslationServerEvent as E;
        assert_eq!(
            E::parse(r#"{"type":"session.output_audio.delta","event_id":"x","delta":"AQD/fw==","format":"pcm16","sample_rate":24000,"channels":1,"elapsed_ms":400}"#).unwrap(),
            E::OutputAudioDelta { audio: vec![1, 0, 255, 127], sample_rate: Some(24000), channels: Some(1), elapsed_ms: Some(400) }
        );
        assert_eq!(
            E::parse(r#"{"type":"session.input_transcript.delta","event_id":"x","delta":"Hola"}"#)
                .unwrap(),
            E::InputTranscriptDelta {
                delta: "Hola".into(),
                elapsed_ms: None
            }
        );
        assert_eq!(
            E::parse(r#"{"type":"session.output_transcript.delta","event_id":"x","delta":" mundo","elapsed_ms":200}"#).unwrap(),
            E::OutputTranscriptDelta { delta: " mundo".into(), elapsed_ms: Some(200) }
        );
        assert_eq!(
            E::parse(r#"{"type":"session.closed","event_id":"x"}"#).unwrap(),
            E::SessionClosed
        );
        match E::parse(r#"{"type":"error","event_id":"x","error":{"type":"invalid_request_error","code":"bad","message":"no","event_id":"evt_vs_3"}}"#).unwrap() {
            E::Error { error } => {
                assert_eq!(error.code.as_deref(), Some("bad"));
                assert_eq!(error.event_id.as_deref(), Some("evt_vs_3"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            E::parse(r#"{"type":"session.created","event_id":"x","session":{"id":"s","type":"translation"}}"#).unwrap(),
            E::SessionCreated { .. }
        ));
        assert_eq!(
            E::parse(r#"{"type":"rate_limits.updated","rate_limits":[]}"#).unwrap(),
            E::Other {
                kind: "rate_limits.updated".into()
            }
        );
    }

    /// Every prefix of valid events, and each with one byte replaced by a JSON-significant one,
    /// parses or fails cleanly (a panic fails the test).
    #[test]
    fn truncated_and_mutated_events_never_panic() {
        let valid = [
            r#"{"type":"session.output_audio.delta","event_id":"x","delta":"AQD/fw==","format":"pcm16","sample_rate":24000,"channels":1,"elapsed_ms":400}"#,
            r#"{"type":"session.input_transcript.delta","event_id":"x","delta":"Hola ¿qué tal?","elapsed_ms":200}"#,
            r#"{"type":"error","event_id":"x","error":{"type":"invalid_request_error","code":"bad","message":"no"}}"#,
            r#"{"type":"session.created","event_id":"x","session":{"id":"s","type":"translation","audio":{"output":{"language":"es"}}}}"#,
        ];
        let mut parsed_ok = 0;
        for text in valid {
            assert!(TranslationServerEvent::parse(text).is_ok(), "{text}");
            for end in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
                parsed_ok += usize::from(TranslationServerEvent::parse(&text[..end]).is_ok());
            }
            for (i, _) in text.char_indices() {
                for b in ['"', '{', '}', ':', ',', '1', '-', 'n', '\\'] {
                    let mut m = String::with_capacity(text.len());
                    m.push_str(&text[..i]);
                    m.push(b);
                    m.push_str(&text[i + text[i..].chars().next().map_or(0, char::len_utf8)..]);
                    if let Ok(ev) = TranslationServerEvent::parse(&m) {
                        let _ = ev.kind();
                    }
                }
            }
        }
        assert_eq!(parsed_ok, 0, "no strict prefix of an object is valid JSON");
    }

    #[test]
    fn bad_input_is_a_typed_error_never_a_panic() {
        use TranslationServerEvent as E;
        for bad in [
            "",
            "{",
            "[]",
            "null",
            r#"{"type":5}"#,
            r#"{"no":"type"}"#,
            r#"{"type":"session.output_audio.delta"}"#,
            r#"{"type":"session.output_audio.delta","delta":"!!!"}"#,
            r#"{"type":"session.output_audio.delta","delta":"AAAA","format":"g711_ulaw"}"#,
            r#"{"type":"session.output_audio.delta","delta":"AAAA","elapsed_ms":-1}"#,
            r#"{"type":"session.output_transcript.delta","delta":7}"#,
            r#"{"type":"session.input_transcript.delta","delta":"a","elapsed_ms":"200"}"#,
            r#"{"type":"session.created"}"#,
            r#"{"type":"error","error":"x"}"#,
        ] {
            assert!(E::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
