//! Server events of both dialects, parsed into one typed enum.
//!
//! Beta and GA name several events differently (`response.audio.delta` vs `response.output_audio.delta`,
//! `conversation.item.created` vs `conversation.item.added`); both spellings map to the same variant so
//! the session layer never branches on dialect. Events we do not act on are kept as `Other`, events we
//! have never heard of as `Unknown`: both are logged and counted by the caller, never fatal.

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// `error.error` of an `error` event.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct ApiError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
    /// The client event that caused the error, when the server names it.
    #[serde(default)]
    pub event_id: Option<String>,
}

/// Token usage reported in `response.done`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub total_tokens: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub input_text_tokens: u64,
    pub input_audio_tokens: u64,
    pub input_cached_tokens: u64,
    pub output_text_tokens: u64,
    pub output_audio_tokens: u64,
}

impl Usage {
    fn from_json(v: &Value) -> Usage {
        let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        Usage {
            total_tokens: n("/total_tokens"),
            input_tokens: n("/input_tokens"),
            output_tokens: n("/output_tokens"),
            input_text_tokens: n("/input_token_details/text_tokens"),
            input_audio_tokens: n("/input_token_details/audio_tokens"),
            input_cached_tokens: n("/input_token_details/cached_tokens"),
            output_text_tokens: n("/output_token_details/text_tokens"),
            output_audio_tokens: n("/output_token_details/audio_tokens"),
        }
    }

    pub fn add(&mut self, o: &Usage) {
        self.total_tokens += o.total_tokens;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.input_text_tokens += o.input_text_tokens;
        self.input_audio_tokens += o.input_audio_tokens;
        self.input_cached_tokens += o.input_cached_tokens;
        self.output_text_tokens += o.output_text_tokens;
        self.output_audio_tokens += o.output_audio_tokens;
    }
}

/// A conversation item, reduced to what the sidecar acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Message {
        id: String,
        role: String,
        /// `commentary` (a preamble) or `final_answer`, when upstream sends it (Azure documents it;
        /// the openai 3.57.0 models have no such field).
        phase: Option<String>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
    FunctionCallOutput {
        id: String,
        call_id: String,
    },
    Other {
        id: String,
        kind: String,
    },
}

impl Item {
    fn from_json(v: &Value) -> Item {
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match v.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message" => Item::Message {
                id: s("id"),
                role: s("role"),
                phase: v.get("phase").and_then(Value::as_str).map(str::to_string),
            },
            "function_call" => Item::FunctionCall {
                id: s("id"),
                call_id: s("call_id"),
                name: s("name"),
                arguments: s("arguments"),
            },
            "function_call_output" => Item::FunctionCallOutput {
                id: s("id"),
                call_id: s("call_id"),
            },
            other => Item::Other {
                id: s("id"),
                kind: other.to_string(),
            },
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Item::Message { id, .. }
            | Item::FunctionCall { id, .. }
            | Item::FunctionCallOutput { id, .. }
            | Item::Other { id, .. } => id,
        }
    }
}

/// The `response` object of `response.created` / `response.done`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResponseInfo {
    pub id: String,
    /// `in_progress`, `completed`, `cancelled`, `failed`, `incomplete`.
    pub status: String,
    pub output: Vec<Item>,
    pub usage: Option<Usage>,
    /// `None`/`Some("none")` tells out-of-band responses apart (GA: `conversation_id` null).
    pub metadata: Option<Value>,
}

impl ResponseInfo {
    fn from_json(v: &Value) -> ResponseInfo {
        ResponseInfo {
            id: v
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            output: v
                .get("output")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(Item::from_json).collect())
                .unwrap_or_default(),
            usage: v
                .get("usage")
                .filter(|u| u.is_object())
                .map(Usage::from_json),
            metadata: v.get("metadata").filter(|m| !m.is_null()).cloned(),
        }
    }
}

/// One token's log probability in a transcription (`include: [...logprobs]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Logprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

impl Logprob {
    fn list(v: Option<&Value>) -> Vec<Logprob> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|l| Logprob {
                        token: l
                            .get("token")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        logprob: l.get("logprob").and_then(Value::as_f64).unwrap_or(0.0),
                        bytes: l
                            .get("bytes")
                            .and_then(Value::as_array)
                            .map(|b| {
                                b.iter()
                                    .filter_map(|x| x.as_u64().and_then(|x| u8::try_from(x).ok()))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Every server event the sidecar distinguishes, in dialect-neutral form.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    SessionCreated {
        session: Value,
    },
    SessionUpdated {
        session: Value,
    },
    Error {
        error: ApiError,
    },
    SpeechStarted {
        item_id: String,
        audio_start_ms: u64,
    },
    SpeechStopped {
        item_id: String,
        audio_end_ms: u64,
    },
    InputCommitted {
        item_id: String,
        previous_item_id: Option<String>,
    },
    InputCleared,
    /// `conversation.item.created` (beta) / `conversation.item.added` (GA).
    ItemAdded {
        item: Item,
    },
    ItemTruncated {
        item_id: String,
        audio_end_ms: u64,
    },
    InputTranscriptionDelta {
        item_id: String,
        delta: String,
        logprobs: Vec<Logprob>,
    },
    InputTranscriptionCompleted {
        item_id: String,
        transcript: String,
        logprobs: Vec<Logprob>,
    },
    /// `input_audio_buffer.timeout_triggered`: the user stayed silent for `idle_timeout_ms`.
    TimeoutTriggered {
        item_id: String,
        audio_start_ms: u64,
        audio_end_ms: u64,
    },
    InputTranscriptionFailed {
        item_id: String,
        message: String,
    },
    ResponseCreated {
        response: ResponseInfo,
    },
    ResponseDone {
        response: ResponseInfo,
    },
    OutputItemAdded {
        response_id: String,
        item: Item,
    },
    OutputItemDone {
        response_id: String,
        item: Item,
    },
    /// Assistant audio, already base64-decoded (wire format bytes).
    AudioDelta {
        response_id: String,
        item_id: String,
        audio: Vec<u8>,
    },
    AudioDone {
        response_id: String,
        item_id: String,
    },
    TranscriptDelta {
        response_id: String,
        item_id: String,
        delta: String,
    },
    TranscriptDone {
        response_id: String,
        item_id: String,
        transcript: String,
    },
    TextDelta {
        response_id: String,
        item_id: String,
        delta: String,
    },
    TextDone {
        response_id: String,
        item_id: String,
        text: String,
    },
    FunctionCallArgumentsDone {
        response_id: String,
        item_id: String,
        call_id: String,
        /// GA includes the tool name here; beta does not (it is on the output item).
        name: Option<String>,
        arguments: String,
    },
    RateLimitsUpdated {
        rate_limits: Value,
    },
    /// A known event the sidecar does not act on (content parts, argument deltas, ...).
    Other {
        kind: String,
    },
    /// An event type this build has never heard of.
    Unknown {
        kind: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("server sent invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("server event has no string `type` field")]
    NoType,
    #[error("server event `{kind}` is missing or has a bad `{field}` field")]
    Field { kind: String, field: &'static str },
    #[error("server event `{kind}` carries invalid base64 audio: {source}")]
    Base64 {
        kind: String,
        source: base64::DecodeError,
    },
}

/// Events the sidecar acknowledges but does not act on: parsed as `Other`, not `Unknown`.
const KNOWN_PASSIVE: &[&str] = &[
    "conversation.created",
    "conversation.item.deleted",
    "conversation.item.retrieved",
    "conversation.item.done",
    "conversation.item.input_audio_transcription.segment",
    "response.content_part.added",
    "response.content_part.done",
    "response.function_call_arguments.delta",
    "output_audio_buffer.started",
    "output_audio_buffer.stopped",
    "output_audio_buffer.cleared",
    "input_audio_buffer.dtmf_event_received",
    "transcription_session.updated",
    "mcp_list_tools.in_progress",
    "mcp_list_tools.completed",
    "mcp_list_tools.failed",
    "response.mcp_call_arguments.delta",
    "response.mcp_call_arguments.done",
    "response.mcp_call.in_progress",
    "response.mcp_call.completed",
    "response.mcp_call.failed",
];

#[derive(Deserialize)]
struct AudioDeltaWire<'a> {
    /// The top-level type, checked against the substring match (see `parse`).
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    response_id: String,
    #[serde(default)]
    item_id: String,
    #[serde(borrow)]
    delta: std::borrow::Cow<'a, str>,
}

impl ServerEvent {
    /// Parses one text frame from the server. Both dialects' spellings are accepted.
    pub fn parse(text: &str) -> Result<ServerEvent, ParseError> {
        // Audio deltas are most of the traffic: decode them without building a JSON tree.
        if let Some(kind) = audio_delta_kind(text) {
            let w: AudioDeltaWire = serde_json::from_str(text)?;
            // The pattern can also sit in a nested object of another event (seen while writing the
            // server_event fuzz target): then the top-level type decides, on the tree path.
            if w.kind != kind {
                let v: Value = serde_json::from_str(text)?;
                return Self::from_value(&v);
            }
            let audio = base64::engine::general_purpose::STANDARD
                .decode(w.delta.as_bytes())
                .map_err(|source| ParseError::Base64 {
                    kind: kind.to_string(),
                    source,
                })?;
            return Ok(ServerEvent::AudioDelta {
                response_id: w.response_id,
                item_id: w.item_id,
                audio,
            });
        }
        let v: Value = serde_json::from_str(text)?;
        Self::from_value(&v)
    }

    pub fn from_value(v: &Value) -> Result<ServerEvent, ParseError> {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or(ParseError::NoType)?;
        let field_err = |field: &'static str| ParseError::Field {
            kind: kind.to_string(),
            field,
        };
        let s = |field: &'static str| -> Result<String, ParseError> {
            v.get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| field_err(field))
        };
        let s_opt = |field: &str| v.get(field).and_then(Value::as_str).map(str::to_string);
        let u = |field: &'static str| -> Result<u64, ParseError> {
            v.get(field)
                .and_then(Value::as_u64)
                .ok_or_else(|| field_err(field))
        };
        let obj = |field: &'static str| -> Result<&Value, ParseError> {
            v.get(field)
                .filter(|x| x.is_object())
                .ok_or_else(|| field_err(field))
        };
        let ev = match kind {
            "session.created" => ServerEvent::SessionCreated {
                session: obj("session")?.clone(),
            },
            "session.updated" => ServerEvent::SessionUpdated {
                session: obj("session")?.clone(),
            },
            "error" => ServerEvent::Error {
                error: serde_json::from_value(obj("error")?.clone())
                    .map_err(|_| field_err("error"))?,
            },
            "input_audio_buffer.speech_started" => ServerEvent::SpeechStarted {
                item_id: s("item_id")?,
                audio_start_ms: u("audio_start_ms")?,
            },
            "input_audio_buffer.speech_stopped" => ServerEvent::SpeechStopped {
                item_id: s("item_id")?,
                audio_end_ms: u("audio_end_ms")?,
            },
            "input_audio_buffer.committed" => ServerEvent::InputCommitted {
                item_id: s("item_id")?,
                previous_item_id: s_opt("previous_item_id"),
            },
            "input_audio_buffer.cleared" => ServerEvent::InputCleared,
            "input_audio_buffer.timeout_triggered" => ServerEvent::TimeoutTriggered {
                item_id: s("item_id")?,
                audio_start_ms: u("audio_start_ms")?,
                audio_end_ms: u("audio_end_ms")?,
            },
            "conversation.item.created" | "conversation.item.added" => ServerEvent::ItemAdded {
                item: Item::from_json(obj("item")?),
            },
            "conversation.item.truncated" => ServerEvent::ItemTruncated {
                item_id: s("item_id")?,
                audio_end_ms: u("audio_end_ms")?,
            },
            "conversation.item.input_audio_transcription.delta" => {
                ServerEvent::InputTranscriptionDelta {
                    item_id: s("item_id")?,
                    delta: s_opt("delta").unwrap_or_default(),
                    logprobs: Logprob::list(v.get("logprobs")),
                }
            }
            "conversation.item.input_audio_transcription.completed" => {
                ServerEvent::InputTranscriptionCompleted {
                    item_id: s("item_id")?,
                    transcript: s("transcript")?,
                    logprobs: Logprob::list(v.get("logprobs")),
                }
            }
            "conversation.item.input_audio_transcription.failed" => {
                ServerEvent::InputTranscriptionFailed {
                    item_id: s("item_id")?,
                    message: v
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("transcription failed")
                        .to_string(),
                }
            }
            "response.created" => ServerEvent::ResponseCreated {
                response: ResponseInfo::from_json(obj("response")?),
            },
            "response.done" => ServerEvent::ResponseDone {
                response: ResponseInfo::from_json(obj("response")?),
            },
            "response.output_item.added" => ServerEvent::OutputItemAdded {
                response_id: s("response_id")?,
                item: Item::from_json(obj("item")?),
            },
            "response.output_item.done" => ServerEvent::OutputItemDone {
                response_id: s("response_id")?,
                item: Item::from_json(obj("item")?),
            },
            "response.audio.delta" | "response.output_audio.delta" => {
                let delta = s("delta")?;
                ServerEvent::AudioDelta {
                    response_id: s("response_id")?,
                    item_id: s("item_id")?,
                    audio: base64::engine::general_purpose::STANDARD
                        .decode(delta.as_bytes())
                        .map_err(|source| ParseError::Base64 {
                            kind: kind.to_string(),
                            source,
                        })?,
                }
            }
            "response.audio.done" | "response.output_audio.done" => ServerEvent::AudioDone {
                response_id: s("response_id")?,
                item_id: s("item_id")?,
            },
            "response.audio_transcript.delta" | "response.output_audio_transcript.delta" => {
                ServerEvent::TranscriptDelta {
                    response_id: s("response_id")?,
                    item_id: s("item_id")?,
                    delta: s("delta")?,
                }
            }
            "response.audio_transcript.done" | "response.output_audio_transcript.done" => {
                ServerEvent::TranscriptDone {
                    response_id: s("response_id")?,
                    item_id: s("item_id")?,
                    transcript: s("transcript")?,
                }
            }
            "response.text.delta" | "response.output_text.delta" => ServerEvent::TextDelta {
                response_id: s("response_id")?,
                item_id: s("item_id")?,
                delta: s("delta")?,
            },
            "response.text.done" | "response.output_text.done" => ServerEvent::TextDone {
                response_id: s("response_id")?,
                item_id: s("item_id")?,
                text: s("text")?,
            },
            "response.function_call_arguments.done" => ServerEvent::FunctionCallArgumentsDone {
                response_id: s("response_id")?,
                item_id: s("item_id")?,
                call_id: s("call_id")?,
                name: s_opt("name"),
                arguments: s("arguments")?,
            },
            "rate_limits.updated" => ServerEvent::RateLimitsUpdated {
                rate_limits: v.get("rate_limits").cloned().unwrap_or(Value::Null),
            },
            k if KNOWN_PASSIVE.contains(&k) => ServerEvent::Other {
                kind: k.to_string(),
            },
            k => ServerEvent::Unknown {
                kind: k.to_string(),
            },
        };
        Ok(ev)
    }

    /// Short name for logs and metrics labels (bounded set).
    pub fn kind(&self) -> &str {
        match self {
            ServerEvent::SessionCreated { .. } => "session.created",
            ServerEvent::SessionUpdated { .. } => "session.updated",
            ServerEvent::Error { .. } => "error",
            ServerEvent::SpeechStarted { .. } => "speech_started",
            ServerEvent::SpeechStopped { .. } => "speech_stopped",
            ServerEvent::InputCommitted { .. } => "committed",
            ServerEvent::InputCleared => "cleared",
            ServerEvent::ItemAdded { .. } => "item_added",
            ServerEvent::ItemTruncated { .. } => "item_truncated",
            ServerEvent::InputTranscriptionDelta { .. } => "input_transcription.delta",
            ServerEvent::InputTranscriptionCompleted { .. } => "input_transcription.completed",
            ServerEvent::InputTranscriptionFailed { .. } => "input_transcription.failed",
            ServerEvent::TimeoutTriggered { .. } => "input_audio_buffer.timeout_triggered",
            ServerEvent::ResponseCreated { .. } => "response.created",
            ServerEvent::ResponseDone { .. } => "response.done",
            ServerEvent::OutputItemAdded { .. } => "output_item.added",
            ServerEvent::OutputItemDone { .. } => "output_item.done",
            ServerEvent::AudioDelta { .. } => "audio.delta",
            ServerEvent::AudioDone { .. } => "audio.done",
            ServerEvent::TranscriptDelta { .. } => "transcript.delta",
            ServerEvent::TranscriptDone { .. } => "transcript.done",
            ServerEvent::TextDelta { .. } => "text.delta",
            ServerEvent::TextDone { .. } => "text.done",
            ServerEvent::FunctionCallArgumentsDone { .. } => "function_call_arguments.done",
            ServerEvent::RateLimitsUpdated { .. } => "rate_limits.updated",
            ServerEvent::Other { kind } | ServerEvent::Unknown { kind } => kind,
        }
    }
}

/// Cheap pre-check on the raw text: is this an audio delta? Looks only at the `type` value so a
/// transcript that happens to contain the phrase cannot match.
fn audio_delta_kind(text: &str) -> Option<&'static str> {
    // Both `"type":"x"` and `"type": "x"` occur in practice.
    const PATTERNS: [(&str, &str); 4] = [
        (
            "\"type\":\"response.output_audio.delta\"",
            "response.output_audio.delta",
        ),
        (
            "\"type\": \"response.output_audio.delta\"",
            "response.output_audio.delta",
        ),
        ("\"type\":\"response.audio.delta\"", "response.audio.delta"),
        ("\"type\": \"response.audio.delta\"", "response.audio.delta"),
    ];
    // An unescaped `"type":"…"` can only be JSON structure (quotes inside strings are escaped), and no
    // nested object of an audio delta has these type values, so a substring match is exact.
    // One scan rules out every other event before the four exact patterns are tried.
    if !text.contains("audio.delta\"") {
        return None;
    }
    PATTERNS
        .iter()
        .find(|(p, _)| text.contains(p))
        .map(|(_, k)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn audio_delta_type_nested_in_another_event_is_not_an_audio_delta() {
        // The fast path matched the pattern in a nested object and took a response.done for audio.
        let t = r#"{"type":"response.done","event_id":"e","x":{"type":"response.audio.delta"},"delta":"AQID","response":{"id":"r","status":"completed","output":[]}}"#;
        let tree = ServerEvent::from_value(&serde_json::from_str(t).unwrap()).unwrap();
        let ev = ServerEvent::parse(t).unwrap();
        assert!(!matches!(ev, ServerEvent::AudioDelta { .. }), "{ev:?}");
        assert_eq!(ev, tree);
    }

    #[test]
    fn both_dialect_audio_deltas_decode() {
        for kind in ["response.audio.delta", "response.output_audio.delta"] {
            let t = json!({"type": kind, "event_id": "e1", "response_id": "r1", "item_id": "i1",
                "output_index": 0, "content_index": 0, "delta": "AQID"})
            .to_string();
            match ServerEvent::parse(&t).unwrap() {
                ServerEvent::AudioDelta {
                    audio,
                    item_id,
                    response_id,
                } => {
                    assert_eq!(audio, vec![1, 2, 3]);
                    assert_eq!(item_id, "i1");
                    assert_eq!(response_id, "r1");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn transcript_mentioning_audio_delta_is_not_audio() {
        let t = json!({"type": "response.output_audio_transcript.delta", "event_id": "e",
            "response_id": "r", "item_id": "i", "output_index": 0, "content_index": 0,
            "delta": "\"type\":\"response.audio.delta\""})
        .to_string();
        assert!(matches!(
            ServerEvent::parse(&t).unwrap(),
            ServerEvent::TranscriptDelta { .. }
        ));
    }

    #[test]
    fn item_created_and_added_are_the_same() {
        for kind in ["conversation.item.created", "conversation.item.added"] {
            let t =
                json!({"type": kind, "event_id": "e", "item": {"id": "it", "type": "function_call",
                "call_id": "c1", "name": "lookup", "arguments": "{}"}})
                .to_string();
            let ev = ServerEvent::parse(&t).unwrap();
            assert_eq!(
                ev,
                ServerEvent::ItemAdded {
                    item: Item::FunctionCall {
                        id: "it".into(),
                        call_id: "c1".into(),
                        name: "lookup".into(),
                        arguments: "{}".into()
                    }
                }
            );
        }
    }

    #[test]
    fn response_done_carries_usage_and_outputs() {
        let t = json!({"type": "response.done", "event_id": "e", "response": {"id": "r", "status": "completed",
            "output": [{"id": "a", "type": "function_call", "call_id": "c", "name": "n", "arguments": "{}"}],
            "usage": {"total_tokens": 10, "input_tokens": 4, "output_tokens": 6,
                "input_token_details": {"text_tokens": 1, "audio_tokens": 3, "cached_tokens": 2},
                "output_token_details": {"text_tokens": 2, "audio_tokens": 4}}}})
        .to_string();
        let ServerEvent::ResponseDone { response } = ServerEvent::parse(&t).unwrap() else {
            panic!()
        };
        let u = response.usage.unwrap();
        assert_eq!(
            (
                u.total_tokens,
                u.input_audio_tokens,
                u.input_cached_tokens,
                u.output_audio_tokens
            ),
            (10, 3, 2, 4)
        );
        assert_eq!(response.output.len(), 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for t in [
            "",
            "null",
            "[]",
            "{\"type\": 5}",
            "{\"type\":\"response.audio.delta\"}",
            "{\"type\":\"response.output_audio.delta\",\"delta\":\"!!!\"}",
            "{\"type\":\"error\"}",
        ] {
            assert!(ServerEvent::parse(t).is_err(), "{t}");
        }
        assert!(matches!(
            ServerEvent::parse("{\"type\":\"brand.new.event\"}").unwrap(),
            ServerEvent::Unknown { .. }
        ));
    }
}
