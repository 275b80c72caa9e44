//! Strict parsing of client events, mirroring upstream's validation: every event must be a JSON object
//! with a known `type` for the dialect, required fields present, field types right and no unknown
//! fields. The result borrows from the parsed JSON so nothing is copied (appends carry large audio).

use serde_json::{Map, Value};
use voice_realtime::Dialect;

use crate::error::ProtocolError;
use crate::session_config::{as_obj, check_keys, validate_tool_choice, Fields};

type Obj = Map<String, Value>;

/// A validated client event.
#[derive(Debug, Clone, Copy)]
pub enum ClientEvent<'a> {
    SessionUpdate(&'a Value),
    Append(&'a str),
    Commit,
    Clear,
    OutputAudioBufferClear,
    ItemCreate {
        item: &'a Obj,
        previous_item_id: Option<&'a str>,
    },
    ItemDelete(&'a str),
    ItemRetrieve(&'a str),
    Truncate {
        item_id: &'a str,
        content_index: u64,
        audio_end_ms: u64,
    },
    ResponseCreate(Option<&'a Obj>),
    ResponseCancel(Option<&'a str>),
    TranscriptionSessionUpdate,
}

const COMMON: [&str; 11] = [
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "output_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
];

pub fn parse(v: &Value, dialect: Dialect) -> Result<ClientEvent<'_>, ProtocolError> {
    let o = v.as_object().ok_or_else(|| {
        ProtocolError::new("invalid_type", "Client events must be JSON objects.", None)
    })?;
    let f = Fields { o, prefix: "" };
    f.string("event_id")?;
    let ty = f.required_string("type")?;
    let known =
        COMMON.contains(&ty) || (dialect == Dialect::Beta && ty == "transcription_session.update");
    if !known {
        return Err(ProtocolError::new(
            "invalid_value",
            format!(
                "Invalid value: '{ty}'. Supported values are: {}.",
                COMMON.join(", ")
            ),
            Some("type"),
        ));
    }
    let keys = |extra: &[&str]| {
        let mut all = vec!["type", "event_id"];
        all.extend_from_slice(extra);
        check_keys(o, &all, "")
    };
    Ok(match ty {
        "session.update" => {
            keys(&["session"])?;
            ClientEvent::SessionUpdate(
                o.get("session")
                    .ok_or_else(|| ProtocolError::missing("session"))?,
            )
        }
        "transcription_session.update" => {
            keys(&["session"])?;
            f.object("session", false)?
                .ok_or_else(|| ProtocolError::missing("session"))?;
            ClientEvent::TranscriptionSessionUpdate
        }
        "input_audio_buffer.append" => {
            keys(&["audio"])?;
            ClientEvent::Append(f.required_string("audio")?)
        }
        "input_audio_buffer.commit" => {
            keys(&[])?;
            ClientEvent::Commit
        }
        "input_audio_buffer.clear" => {
            keys(&[])?;
            ClientEvent::Clear
        }
        "output_audio_buffer.clear" => {
            keys(&[])?;
            ClientEvent::OutputAudioBufferClear
        }
        "conversation.item.create" => {
            keys(&["item", "previous_item_id"])?;
            let item = f
                .object("item", false)?
                .ok_or_else(|| ProtocolError::missing("item"))?;
            validate_item(item)?;
            ClientEvent::ItemCreate {
                item,
                previous_item_id: f.string("previous_item_id")?,
            }
        }
        "conversation.item.delete" => {
            keys(&["item_id"])?;
            ClientEvent::ItemDelete(f.required_string("item_id")?)
        }
        "conversation.item.retrieve" => {
            keys(&["item_id"])?;
            ClientEvent::ItemRetrieve(f.required_string("item_id")?)
        }
        "conversation.item.truncate" => {
            keys(&["item_id", "content_index", "audio_end_ms"])?;
            let item_id = f.required_string("item_id")?;
            let content_index = f
                .uint("content_index", false)?
                .ok_or_else(|| ProtocolError::missing("content_index"))?;
            let audio_end_ms = f
                .uint("audio_end_ms", false)?
                .ok_or_else(|| ProtocolError::missing("audio_end_ms"))?;
            ClientEvent::Truncate {
                item_id,
                content_index,
                audio_end_ms,
            }
        }
        "response.create" => {
            keys(&["response"])?;
            let r = f.object("response", true)?;
            if let Some(r) = r {
                validate_response_params(r, dialect)?;
            }
            ClientEvent::ResponseCreate(r)
        }
        "response.cancel" => {
            keys(&["response_id"])?;
            ClientEvent::ResponseCancel(f.string("response_id")?)
        }
        _ => {
            return Err(ProtocolError::invalid_value(
                "type",
                format!("'{ty}' is not supported"),
            ))
        }
    })
}

fn validate_item(item: &Obj) -> Result<(), ProtocolError> {
    let p = "item";
    check_keys(
        item,
        &[
            "id",
            "type",
            "object",
            "status",
            "role",
            "content",
            "call_id",
            "name",
            "arguments",
            "output",
        ],
        p,
    )?;
    let f = Fields { o: item, prefix: p };
    f.string("id")?;
    f.one_of("object", &["realtime.item"], false)?;
    f.one_of("status", &["completed", "incomplete", "in_progress"], false)?;
    let ty = f
        .one_of(
            "type",
            &["message", "function_call", "function_call_output"],
            false,
        )?
        .ok_or_else(|| ProtocolError::missing("item.type"))?;
    match ty {
        "message" => {
            f.one_of("role", &["user", "assistant", "system"], false)?
                .ok_or_else(|| ProtocolError::missing("item.role"))?;
            let content = f
                .array("content")?
                .ok_or_else(|| ProtocolError::missing("item.content"))?;
            for (i, part) in content.iter().enumerate() {
                let pp = format!("item.content[{i}]");
                let po = as_obj(part, &pp)?;
                let pf = Fields { o: po, prefix: &pp };
                let kind = pf
                    .one_of(
                        "type",
                        &[
                            "input_text",
                            "input_audio",
                            "input_image",
                            "item_reference",
                            "text",
                            "audio",
                            "output_text",
                            "output_audio",
                        ],
                        false,
                    )?
                    .ok_or_else(|| ProtocolError::missing(&format!("{pp}.type")))?;
                if matches!(kind, "input_text" | "text" | "output_text") {
                    pf.required_string("text")?;
                }
                pf.string("audio")?;
                match po.get("transcript") {
                    None | Some(Value::Null | Value::String(_)) => {}
                    Some(_) => {
                        return Err(ProtocolError::invalid_type(
                            &format!("{pp}.transcript"),
                            "a string",
                        ))
                    }
                }
            }
        }
        "function_call_output" => {
            f.required_string("call_id")?;
            f.required_string("output")?;
        }
        _ => {
            f.required_string("call_id")?;
            f.required_string("name")?;
            f.required_string("arguments")?;
        }
    }
    Ok(())
}

fn validate_response_params(r: &Obj, dialect: Dialect) -> Result<(), ProtocolError> {
    let p = "response";
    let f = Fields { o: r, prefix: p };
    match dialect {
        Dialect::Ga => {
            check_keys(
                r,
                &[
                    "conversation",
                    "input",
                    "instructions",
                    "max_output_tokens",
                    "metadata",
                    "output_modalities",
                    "prompt",
                    "tool_choice",
                    "tools",
                    "audio",
                ],
                p,
            )?;
            f.max_tokens("max_output_tokens")?;
            f.enum_array("output_modalities", &["text", "audio"])?;
            if let Some(a) = f.object("audio", false)? {
                check_keys(a, &["output"], "response.audio")?;
                if let Some(out) = (Fields {
                    o: a,
                    prefix: "response.audio",
                })
                .object("output", false)?
                {
                    check_keys(out, &["format", "voice"], "response.audio.output")?;
                }
            }
            f.object("prompt", true)?;
        }
        Dialect::Beta => {
            check_keys(
                r,
                &[
                    "conversation",
                    "input",
                    "instructions",
                    "max_response_output_tokens",
                    "metadata",
                    "modalities",
                    "output_audio_format",
                    "temperature",
                    "tool_choice",
                    "tools",
                    "voice",
                ],
                p,
            )?;
            f.max_tokens("max_response_output_tokens")?;
            f.enum_array("modalities", &["text", "audio"])?;
            f.one_of(
                "output_audio_format",
                &["pcm16", "g711_ulaw", "g711_alaw"],
                false,
            )?;
            f.number("temperature", 0.6, 1.2)?;
            f.string("voice")?;
        }
    }
    f.one_of("conversation", &["auto", "none"], false)?;
    f.string("instructions")?;
    f.metadata("metadata")?;
    f.array("input")?;
    validate_tool_choice(&f, dialect)?;
    if let Some(tools) = f.array("tools")? {
        for (i, t) in tools.iter().enumerate() {
            let tp = format!("response.tools[{i}]");
            let to = as_obj(t, &tp)?;
            Fields { o: to, prefix: &tp }.string("name")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(v: &Value, d: Dialect) -> &'static str {
        parse(v, d).err().map_or("ok", |e| e.code)
    }

    #[test]
    fn strictness() {
        assert_eq!(code(&json!([1]), Dialect::Ga), "invalid_type");
        assert_eq!(
            code(&json!({"event_id": "x"}), Dialect::Ga),
            "missing_required_parameter"
        );
        assert_eq!(
            code(&json!({"type": "bogus"}), Dialect::Ga),
            "invalid_value"
        );
        assert_eq!(
            code(
                &json!({"type": "transcription_session.update", "session": {}}),
                Dialect::Ga
            ),
            "invalid_value"
        );
        assert_eq!(
            code(
                &json!({"type": "transcription_session.update", "session": {}}),
                Dialect::Beta
            ),
            "ok"
        );
        assert_eq!(
            code(&json!({"type": "input_audio_buffer.append"}), Dialect::Ga),
            "missing_required_parameter"
        );
        assert_eq!(
            code(
                &json!({"type": "input_audio_buffer.append", "audio": 5}),
                Dialect::Ga
            ),
            "invalid_type"
        );
        assert_eq!(
            code(
                &json!({"type": "input_audio_buffer.commit", "x": 1}),
                Dialect::Ga
            ),
            "unknown_parameter"
        );
        assert_eq!(
            code(
                &json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "c"}}),
                Dialect::Ga
            ),
            "missing_required_parameter"
        );
        assert_eq!(
            code(
                &json!({"type": "response.create", "response": {"conversation": "none", "metadata": {"a": "b"}}}),
                Dialect::Ga
            ),
            "ok"
        );
        assert_eq!(
            code(
                &json!({"type": "response.create", "response": {"modalities": ["audio"]}}),
                Dialect::Ga
            ),
            "unknown_parameter"
        );
        assert_eq!(
            code(
                &json!({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": -1}),
                Dialect::Beta
            ),
            "invalid_type"
        );
    }
}
