//! Strict parsing of client events, mirroring upstream's validation: every event must be a JSON object
//! with a known `type` for the dialect, required fields present, field types right and no unknown
//! fields. The result borrows from the parsed JSON so nothing is copied (appends carry large audio).

use serde_json::{Map, Value};
use voice_realtime::Dialect;

use crate::error::ProtocolError;
use crate::session_config::{
    as_obj, check_keys, validate_prompt, validate_reasoning, validate_tool_choice, validate_tools,
    Fields,
};

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
            validate_item(item, "item")?;
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

fn validate_item(item: &Obj, p: &str) -> Result<(), ProtocolError> {
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
        .ok_or_else(|| ProtocolError::missing(&format!("{p}.type")))?;
    match ty {
        "message" => {
            f.one_of("role", &["user", "assistant", "system"], false)?
                .ok_or_else(|| ProtocolError::missing(&format!("{p}.role")))?;
            let content = f
                .array("content")?
                .ok_or_else(|| ProtocolError::missing(&format!("{p}.content")))?;
            for (i, part) in content.iter().enumerate() {
                let pp = format!("{p}.content[{i}]");
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
                    "parallel_tool_calls",
                    "reasoning",
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
                    let op = "response.audio.output";
                    check_keys(out, &["format", "voice"], op)?;
                    if let Some(fmt) = (Fields { o: out, prefix: op }).object("format", false)? {
                        check_keys(fmt, &["type", "rate"], &format!("{op}.format"))?;
                        if voice_realtime::WireAudioFormat::from_json(&Value::Object(fmt.clone()))
                            .is_none()
                        {
                            return Err(ProtocolError::invalid_value(
                                &format!("{op}.format"),
                                "expected {type:'audio/pcm', rate:24000}, {type:'audio/pcmu'} or {type:'audio/pcma'}",
                            ));
                        }
                    }
                    match out.get("voice") {
                        None | Some(Value::String(_)) => {}
                        Some(Value::Object(v)) => {
                            let vp = format!("{op}.voice");
                            check_keys(v, &["id"], &vp)?;
                            Fields { o: v, prefix: &vp }.required_string("id")?;
                        }
                        Some(_) => {
                            return Err(ProtocolError::invalid_type(
                                &format!("{op}.voice"),
                                "a string or {id}",
                            ))
                        }
                    }
                }
            }
            validate_prompt(&f)?;
            f.boolean("parallel_tool_calls")?;
            validate_reasoning(&f)?;
            // Conversation items, or (since 3.30) `{type: "item_reference", id}`.
            if let Some(input) = f.array("input")? {
                for (i, it) in input.iter().enumerate() {
                    let ip = format!("response.input[{i}]");
                    let io = as_obj(it, &ip)?;
                    if io.get("type").and_then(Value::as_str) == Some("item_reference") {
                        check_keys(io, &["type", "id"], &ip)?;
                        Fields { o: io, prefix: &ip }.required_string("id")?;
                    } else {
                        validate_item(io, &ip)?;
                    }
                }
            }
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
    // `str | Literal["auto", "none"]`: any string is accepted.
    f.string("conversation")?;
    f.string("instructions")?;
    f.metadata("metadata")?;
    if let Some(input) = f.array("input")? {
        // Beta's ConversationItemWithReferenceParam has every field optional; objects are all it asks.
        for (i, it) in input.iter().enumerate() {
            as_obj(it, &format!("response.input[{i}]"))?;
        }
    }
    validate_tool_choice(&f, dialect)?;
    validate_tools(&f, dialect)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(v: &Value, d: Dialect) -> &'static str {
        parse(v, d).err().map_or("ok", |e| e.code)
    }

    /// `response.create` with `response`: "ok" or the error's code and param.
    fn resp(d: Dialect, r: Value) -> (&'static str, Option<String>) {
        let mut ev = json!({"type": "response.create"});
        ev["response"] = r;
        match parse(&ev, d) {
            Ok(_) => ("ok", None),
            Err(e) => (e.code, e.param),
        }
    }

    fn refused(code: &'static str, param: &str) -> (&'static str, Option<String>) {
        (code, Some(param.to_owned()))
    }

    const OK: (&str, Option<String>) = ("ok", None);

    #[test]
    fn response_create_ga_fields() {
        let ga = |r| resp(Dialect::Ga, r);
        assert_eq!(
            ga(json!({"parallel_tool_calls": false, "reasoning": {"effort": "xhigh"}})),
            OK
        );
        assert_eq!(ga(json!({"reasoning": {}})), OK);
        assert_eq!(
            ga(json!({"parallel_tool_calls": "yes"})),
            refused("invalid_type", "response.parallel_tool_calls")
        );
        assert_eq!(
            ga(json!({"reasoning": {"effort": "max"}})),
            refused("invalid_value", "response.reasoning.effort")
        );
        assert_eq!(
            ga(json!({"reasoning": {"effort": "low", "summary": "auto"}})),
            refused("unknown_parameter", "response.reasoning.summary")
        );
        // conversation is `str | "auto" | "none"`.
        assert_eq!(ga(json!({"conversation": "conv_123"})), OK);
        assert_eq!(
            ga(json!({"conversation": 1})),
            refused("invalid_type", "response.conversation")
        );
        assert_eq!(
            ga(json!({"prompt": {"id": "pmpt_1", "variables": {"city": "Paris"}}})),
            OK
        );
        assert_eq!(
            ga(json!({"prompt": {"variables": {}}})),
            refused("missing_required_parameter", "response.prompt.id")
        );
        assert_eq!(
            ga(
                json!({"audio": {"output": {"format": {"type": "audio/pcmu"}, "voice": {"id": "voice_1"}}}})
            ),
            OK
        );
        assert_eq!(
            ga(json!({"audio": {"output": {"format": {"type": "audio/mp3"}}}})),
            refused("invalid_value", "response.audio.output.format")
        );
        assert_eq!(
            ga(json!({"audio": {"output": {"voice": {}}}})),
            refused(
                "missing_required_parameter",
                "response.audio.output.voice.id"
            )
        );
        assert_eq!(
            ga(json!({"audio": {"output": {"voice": 3}}})),
            refused("invalid_type", "response.audio.output.voice")
        );
        assert_eq!(
            ga(json!({"input": [{"type": "item_reference", "id": "item_1"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]})),
            OK
        );
        assert_eq!(ga(json!({"input": []})), OK);
        assert_eq!(
            ga(json!({"input": [{"type": "item_reference"}]})),
            refused("missing_required_parameter", "response.input[0].id")
        );
        assert_eq!(
            ga(json!({"input": [{"type": "message", "content": []}]})),
            refused("missing_required_parameter", "response.input[0].role")
        );
        assert_eq!(
            ga(json!({"input": ["item_1"]})),
            refused("invalid_type", "response.input[0]")
        );
        assert_eq!(
            ga(
                json!({"tools": [{"type": "mcp", "server_label": "s", "require_approval": "never"}]})
            ),
            OK
        );
        assert_eq!(
            ga(json!({"tools": [{"type": "function", "strict": true}]})),
            refused("unknown_parameter", "response.tools[0].strict")
        );
    }

    #[test]
    fn response_metadata_limits() {
        let ga = |r| resp(Dialect::Ga, r);
        let k64 = "k".repeat(64);
        let v512 = "v".repeat(512);
        assert_eq!(ga(json!({"metadata": {k64.clone(): v512.clone()}})), OK);
        assert_eq!(ga(json!({"metadata": null})), OK);
        let k65 = "k".repeat(65);
        assert_eq!(
            ga(json!({"metadata": {k65.clone(): "v"}})),
            refused("invalid_value", &format!("response.metadata.{k65}"))
        );
        assert_eq!(
            ga(json!({"metadata": {"k": "v".repeat(513)}})),
            refused("invalid_value", "response.metadata.k")
        );
        assert_eq!(
            ga(json!({"metadata": {"k": 1}})),
            refused("invalid_type", "response.metadata.k")
        );
        let many: serde_json::Map<String, Value> =
            (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(
            ga(json!({"metadata": many})),
            refused("invalid_value", "response.metadata")
        );
    }

    #[test]
    fn response_create_beta_fields() {
        let beta = |r| resp(Dialect::Beta, r);
        assert_eq!(
            beta(
                json!({"conversation": "conv_1", "input": [{"type": "item_reference", "id": "i"}, {}],
                "tools": [{"name": "f", "type": "function"}]})
            ),
            OK
        );
        assert_eq!(
            beta(json!({"reasoning": {"effort": "low"}})),
            refused("unknown_parameter", "response.reasoning")
        );
        assert_eq!(
            beta(json!({"parallel_tool_calls": true})),
            refused("unknown_parameter", "response.parallel_tool_calls")
        );
        assert_eq!(
            beta(json!({"input": [1]})),
            refused("invalid_type", "response.input[0]")
        );
        assert_eq!(
            beta(json!({"tools": [{"type": "mcp", "server_label": "s"}]})),
            refused("unknown_parameter", "response.tools[0].server_label")
        );
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
