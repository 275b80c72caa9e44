//! Client events the sidecar sends upstream. Both dialects share these names; only the session shape
//! (see `session_config`) differs. Every event carries an `event_id` so an upstream `error` can be
//! traced back to the event that caused it.

use base64::Engine;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    SessionUpdate {
        session: Value,
    },
    /// Wire-format audio bytes; base64-encoded when serialized.
    InputAudioAppend {
        audio: Vec<u8>,
    },
    InputAudioCommit,
    InputAudioClear,
    /// `conversation.item.create` with an arbitrary item.
    ItemCreate {
        item: Value,
    },
    ItemTruncate {
        item_id: String,
        content_index: u32,
        audio_end_ms: u64,
    },
    /// `conversation.item.delete`: removes an item the caller never heard.
    ItemDelete {
        item_id: String,
    },
    ResponseCreate {
        response: Option<Value>,
    },
    ResponseCancel,
}

impl ClientEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            ClientEvent::SessionUpdate { .. } => "session.update",
            ClientEvent::InputAudioAppend { .. } => "input_audio_buffer.append",
            ClientEvent::InputAudioCommit => "input_audio_buffer.commit",
            ClientEvent::InputAudioClear => "input_audio_buffer.clear",
            ClientEvent::ItemCreate { .. } => "conversation.item.create",
            ClientEvent::ItemTruncate { .. } => "conversation.item.truncate",
            ClientEvent::ItemDelete { .. } => "conversation.item.delete",
            ClientEvent::ResponseCreate { .. } => "response.create",
            ClientEvent::ResponseCancel => "response.cancel",
        }
    }

    /// A user text message (`input_text` content).
    pub fn user_text(text: &str) -> ClientEvent {
        ClientEvent::ItemCreate {
            item: json!({"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": text}]}),
        }
    }

    /// The output of one tool call.
    pub fn function_output(call_id: &str, output: &str) -> ClientEvent {
        ClientEvent::ItemCreate {
            item: json!({"type": "function_call_output", "call_id": call_id, "output": output}),
        }
    }

    /// Serializes to the JSON text sent on the socket.
    pub fn to_json(&self, event_id: &str) -> String {
        match self {
            ClientEvent::InputAudioAppend { audio } => {
                let mut out = String::new();
                encode_append(audio, event_id, &mut out);
                out
            }
            other => other.to_value(event_id).to_string(),
        }
    }

    pub fn to_value(&self, event_id: &str) -> Value {
        let mut v = match self {
            ClientEvent::SessionUpdate { session } => json!({"session": session}),
            ClientEvent::InputAudioAppend { audio } => {
                json!({"audio": base64::engine::general_purpose::STANDARD.encode(audio)})
            }
            ClientEvent::InputAudioCommit
            | ClientEvent::InputAudioClear
            | ClientEvent::ResponseCancel => json!({}),
            ClientEvent::ItemCreate { item } => json!({"item": item}),
            ClientEvent::ItemTruncate {
                item_id,
                content_index,
                audio_end_ms,
            } => {
                json!({"item_id": item_id, "content_index": content_index, "audio_end_ms": audio_end_ms})
            }
            ClientEvent::ItemDelete { item_id } => json!({"item_id": item_id}),
            ClientEvent::ResponseCreate { response } => match response {
                Some(r) => json!({"response": r}),
                None => json!({}),
            },
        };
        v["type"] = json!(self.kind());
        v["event_id"] = json!(event_id);
        v
    }
}

/// Writes an `input_audio_buffer.append` event into `out` (cleared first) without building a JSON
/// tree: this is the per-frame hot path, and base64 output never needs JSON escaping.
pub fn encode_append(audio: &[u8], event_id: &str, out: &mut String) {
    out.clear();
    out.reserve(append_len(audio.len(), event_id.len()));
    out.push_str(APPEND_HEAD);
    // Event ids are ours (plain ASCII) and go in as they are; anything else is escaped so a caller
    // cannot break the framing.
    if event_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        out.push('"');
        out.push_str(event_id);
        out.push('"');
    } else {
        out.push_str(&Value::String(event_id.to_string()).to_string());
    }
    push_audio_tail(audio, out);
}

/// [`encode_append`] for an event id `{prefix}{n}` (prefix plain ASCII), formatted straight into
/// `out`: no intermediate strings.
pub fn encode_append_numbered(audio: &[u8], prefix: &str, n: u64, out: &mut String) {
    use std::fmt::Write;
    debug_assert!(prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    out.clear();
    out.reserve(append_len(audio.len(), prefix.len() + 20));
    out.push_str(APPEND_HEAD);
    out.push('"');
    out.push_str(prefix);
    let _ = write!(out, "{n}");
    out.push('"');
    push_audio_tail(audio, out);
}

const APPEND_HEAD: &str = "{\"type\":\"input_audio_buffer.append\",\"event_id\":";

/// Exact upper bound of an append event's length, so `out` is allocated once.
fn append_len(audio_len: usize, id_len: usize) -> usize {
    APPEND_HEAD.len() + id_len + 2 + ",\"audio\":\"".len() + audio_len.div_ceil(3) * 4 + 2
}

fn push_audio_tail(audio: &[u8], out: &mut String) {
    out.push_str(",\"audio\":\"");
    base64::engine::general_purpose::STANDARD.encode_string(audio, out);
    out.push_str("\"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_fast_path_matches_generic_encoding() {
        let audio: Vec<u8> = (0..=255u8).collect();
        let fast: Value = serde_json::from_str(
            &ClientEvent::InputAudioAppend {
                audio: audio.clone(),
            }
            .to_json("e1"),
        )
        .unwrap();
        let slow = ClientEvent::InputAudioAppend { audio }.to_value("e1");
        assert_eq!(fast, slow);
    }

    #[test]
    fn numbered_append_matches_generic_encoding() {
        for len in [0usize, 1, 2, 3, 160, 161, 959] {
            let audio: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut fast = String::new();
            encode_append_numbered(&audio, "evt_vs_", 1234567, &mut fast);
            assert!(
                fast.capacity() <= fast.len() + 20,
                "allocated once, tightly"
            );
            let v: Value = serde_json::from_str(&fast).unwrap();
            let slow = ClientEvent::InputAudioAppend { audio }.to_value("evt_vs_1234567");
            assert_eq!(v, slow);
        }
        let mut odd = String::new();
        encode_append(b"x", "a\"b", &mut odd);
        let v: Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(v["event_id"], "a\"b");
    }

    #[test]
    fn truncate_has_required_fields() {
        let v = ClientEvent::ItemTruncate {
            item_id: "it".into(),
            content_index: 0,
            audio_end_ms: 1234,
        }
        .to_value("e");
        assert_eq!(v["type"], "conversation.item.truncate");
        assert_eq!(v["audio_end_ms"], 1234);
        assert_eq!(v["content_index"], 0);
    }
}
