//! The session configuration as the simulator holds it: the dialect-shaped JSON object that is echoed in
//! `session.created`/`session.updated`, strict validation of `session.update` against that dialect's
//! shape, merging, and the few typed values the simulator acts on (formats, turn detection, tools).
//!
//! Keeping the JSON as the source of truth means the echo is exactly what the client configured (plus
//! defaults), while derived values are recomputed once per update rather than looked up per audio chunk.

use serde_json::{json, Map, Value};
use voice_realtime::{Dialect, WireAudioFormat};

use crate::error::ProtocolError;
use crate::vad::VadParams;

type Obj = Map<String, Value>;
type R<T = ()> = Result<T, ProtocolError>;

/// Automatic turn handling in effect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnDetection {
    pub vad: VadParams,
    pub create_response: bool,
    pub interrupt_response: bool,
}

/// Values derived from the JSON after each update.
#[derive(Debug, Clone)]
pub struct Derived {
    pub input_format: WireAudioFormat,
    pub output_format: WireAudioFormat,
    pub turn_detection: Option<TurnDetection>,
    pub transcription: bool,
    pub audio_output: bool,
    pub tools: Vec<String>,
    pub tool_choice_none: bool,
    pub instructions: String,
    pub voice: String,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    dialect: Dialect,
    json: Obj,
    derived: Derived,
}

fn default_server_vad() -> Value {
    json!({"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
           "create_response": true, "interrupt_response": true, "idle_timeout_ms": null})
}

impl SessionConfig {
    pub fn new(dialect: Dialect, id: &str, model: &str, expires_at: u64) -> Self {
        let v = match dialect {
            Dialect::Beta => json!({
                "id": id, "object": "realtime.session", "model": model, "expires_at": expires_at,
                "modalities": ["text", "audio"], "instructions": "", "voice": "alloy",
                "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                "input_audio_transcription": null, "turn_detection": default_server_vad(),
                "tools": [], "tool_choice": "auto", "temperature": 0.8,
                "max_response_output_tokens": "inf", "speed": 1.0, "tracing": null,
                "input_audio_noise_reduction": null,
            }),
            Dialect::Ga => json!({
                "type": "realtime", "object": "realtime.session", "id": id, "model": model,
                "expires_at": expires_at, "output_modalities": ["audio"], "instructions": "",
                "audio": {
                    "input": {"format": WireAudioFormat::Pcm16.ga_json(), "transcription": null,
                              "noise_reduction": null, "turn_detection": default_server_vad()},
                    "output": {"format": WireAudioFormat::Pcm16.ga_json(), "voice": "alloy", "speed": 1.0},
                },
                "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": null,
                "truncation": "auto", "prompt": null, "include": null,
            }),
        };
        let json = match v {
            Value::Object(m) => m,
            _ => Obj::new(),
        };
        let derived = derive(dialect, &json);
        SessionConfig {
            dialect,
            json,
            derived,
        }
    }

    pub fn json(&self) -> Value {
        Value::Object(self.json.clone())
    }

    pub fn derived(&self) -> &Derived {
        &self.derived
    }

    /// Validates `update` strictly for the dialect, then merges it. Nothing changes on error.
    pub fn apply_update(&mut self, update: &Value) -> R {
        let update = update
            .as_object()
            .ok_or_else(|| ProtocolError::invalid_type("session", "an object"))?;
        let mut next = self.json.clone();
        match self.dialect {
            Dialect::Beta => validate_beta(update)?,
            Dialect::Ga => validate_ga(update)?,
        }
        for (k, v) in update {
            match (self.dialect, k.as_str()) {
                (Dialect::Ga, "audio") => {
                    let audio = next.entry("audio").or_insert_with(|| json!({}));
                    for side in ["input", "output"] {
                        if let (Some(src), Some(dst)) = (
                            v.get(side).and_then(Value::as_object),
                            audio.as_object_mut(),
                        ) {
                            let dst = dst.entry(side).or_insert_with(|| json!({}));
                            for (f, fv) in src {
                                let fv = if f == "turn_detection" {
                                    normalize_td(fv)
                                } else {
                                    fv.clone()
                                };
                                if let Some(d) = dst.as_object_mut() {
                                    d.insert(f.clone(), fv);
                                }
                            }
                        }
                    }
                }
                (Dialect::Beta, "turn_detection") => {
                    next.insert(k.clone(), normalize_td(v));
                }
                _ => {
                    next.insert(k.clone(), v.clone());
                }
            }
        }
        self.derived = derive(self.dialect, &next);
        self.json = next;
        Ok(())
    }
}

/// Fills upstream's defaults into a turn_detection object (null stays null = manual turns).
fn normalize_td(v: &Value) -> Value {
    let Some(o) = v.as_object() else {
        return Value::Null;
    };
    let mut base = match o.get("type").and_then(Value::as_str) {
        Some("semantic_vad") => {
            json!({"type": "semantic_vad", "eagerness": "auto", "create_response": true, "interrupt_response": true})
        }
        _ => default_server_vad(),
    };
    if let Some(b) = base.as_object_mut() {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

fn derive(dialect: Dialect, j: &Obj) -> Derived {
    let (input_fmt, output_fmt, td, transcription, voice, modalities) = match dialect {
        Dialect::Beta => (
            j.get("input_audio_format"),
            j.get("output_audio_format"),
            j.get("turn_detection"),
            j.get("input_audio_transcription"),
            j.get("voice"),
            j.get("modalities"),
        ),
        Dialect::Ga => {
            let input = j.get("audio").and_then(|a| a.get("input"));
            let output = j.get("audio").and_then(|a| a.get("output"));
            (
                input.and_then(|i| i.get("format")),
                output.and_then(|o| o.get("format")),
                input.and_then(|i| i.get("turn_detection")),
                input.and_then(|i| i.get("transcription")),
                output.and_then(|o| o.get("voice")),
                j.get("output_modalities"),
            )
        }
    };
    let fmt = |v: Option<&Value>| v.and_then(WireAudioFormat::from_json).unwrap_or_default();
    let turn_detection = td.and_then(Value::as_object).map(|o| {
        let num = |k: &str| o.get(k).and_then(Value::as_f64);
        let uint = |k: &str| o.get(k).and_then(Value::as_u64);
        let flag = |k: &str| o.get(k).and_then(Value::as_bool).unwrap_or(true);
        let semantic = o.get("type").and_then(Value::as_str) == Some("semantic_vad");
        // semantic_vad has no explicit silence setting; eagerness stands in for it.
        let eager_silence = match o.get("eagerness").and_then(Value::as_str) {
            Some("low") => 800,
            Some("high") => 250,
            _ => 500,
        };
        TurnDetection {
            vad: VadParams {
                threshold: if semantic {
                    0.5
                } else {
                    num("threshold").unwrap_or(0.5)
                },
                prefix_padding_ms: if semantic {
                    300
                } else {
                    uint("prefix_padding_ms").unwrap_or(300)
                },
                silence_duration_ms: if semantic {
                    eager_silence
                } else {
                    uint("silence_duration_ms").unwrap_or(500)
                },
            },
            create_response: flag("create_response"),
            interrupt_response: flag("interrupt_response"),
        }
    });
    let tools = j
        .get("tools")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let audio_output = modalities
        .and_then(Value::as_array)
        .is_none_or(|m| m.iter().any(|x| x == "audio"));
    Derived {
        input_format: fmt(input_fmt),
        output_format: fmt(output_fmt),
        turn_detection,
        transcription: transcription.is_some_and(Value::is_object),
        audio_output,
        tools,
        tool_choice_none: j.get("tool_choice").and_then(Value::as_str) == Some("none"),
        instructions: j
            .get("instructions")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        voice: match voice {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("alloy")
                .to_owned(),
            _ => "alloy".to_owned(),
        },
    }
}

// ---- validation helpers -------------------------------------------------------------------------

pub(crate) fn path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

pub(crate) fn check_keys(o: &Obj, allowed: &[&str], prefix: &str) -> R {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ProtocolError::unknown_parameter(&path(prefix, k))),
        None => Ok(()),
    }
}

pub(crate) fn as_obj<'a>(v: &'a Value, p: &str) -> R<&'a Obj> {
    v.as_object()
        .ok_or_else(|| ProtocolError::invalid_type(p, "an object"))
}

/// Field checker: `None`/absent is always fine; null only where `nullable`.
pub(crate) struct Fields<'a> {
    pub o: &'a Obj,
    pub prefix: &'a str,
}

impl<'a> Fields<'a> {
    fn get(&self, k: &str, nullable: bool) -> R<Option<&'a Value>> {
        match self.o.get(k) {
            None => Ok(None),
            Some(Value::Null) if nullable => Ok(None),
            Some(Value::Null) => Err(ProtocolError::invalid_type(
                &path(self.prefix, k),
                "a non-null value",
            )),
            Some(v) => Ok(Some(v)),
        }
    }
    pub fn string(&self, k: &str) -> R<Option<&'a str>> {
        match self.get(k, false)? {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ProtocolError::invalid_type(&path(self.prefix, k), "a string")),
        }
    }
    pub fn required_string(&self, k: &str) -> R<&'a str> {
        self.string(k)?
            .ok_or_else(|| ProtocolError::missing(&path(self.prefix, k)))
    }
    pub fn boolean(&self, k: &str) -> R {
        match self.get(k, false)? {
            Some(v) if !v.is_boolean() => Err(ProtocolError::invalid_type(
                &path(self.prefix, k),
                "a boolean",
            )),
            _ => Ok(()),
        }
    }
    pub fn number(&self, k: &str, min: f64, max: f64) -> R {
        match self.get(k, false)? {
            None => Ok(()),
            Some(v) => match v.as_f64() {
                None => Err(ProtocolError::invalid_type(
                    &path(self.prefix, k),
                    "a number",
                )),
                Some(x) if !(min..=max).contains(&x) => Err(ProtocolError::invalid_value(
                    &path(self.prefix, k),
                    format!("{x} is outside [{min}, {max}]"),
                )),
                Some(_) => Ok(()),
            },
        }
    }
    pub fn uint(&self, k: &str, nullable: bool) -> R<Option<u64>> {
        match self.get(k, nullable)? {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ProtocolError::invalid_type(&path(self.prefix, k), "a non-negative integer")
            }),
        }
    }
    pub fn one_of(&self, k: &str, allowed: &[&str], nullable: bool) -> R<Option<&'a str>> {
        match self.get(k, nullable)? {
            None => Ok(None),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(Some(s)),
            Some(Value::String(s)) => Err(ProtocolError::invalid_value(
                &path(self.prefix, k),
                format!("'{s}' is not one of {allowed:?}"),
            )),
            Some(_) => Err(ProtocolError::invalid_type(
                &path(self.prefix, k),
                "a string",
            )),
        }
    }
    pub fn object(&self, k: &str, nullable: bool) -> R<Option<&'a Obj>> {
        match self.get(k, nullable)? {
            None => Ok(None),
            Some(v) => as_obj(v, &path(self.prefix, k)).map(Some),
        }
    }
    pub fn array(&self, k: &str) -> R<Option<&'a Vec<Value>>> {
        match self.get(k, false)? {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| ProtocolError::invalid_type(&path(self.prefix, k), "an array")),
        }
    }
    pub fn enum_array(&self, k: &str, allowed: &[&str]) -> R {
        if let Some(a) = self.array(k)? {
            for (i, x) in a.iter().enumerate() {
                let p = format!("{}[{i}]", path(self.prefix, k));
                match x.as_str() {
                    Some(s) if allowed.contains(&s) => {}
                    Some(s) => {
                        return Err(ProtocolError::invalid_value(
                            &p,
                            format!("'{s}' is not one of {allowed:?}"),
                        ))
                    }
                    None => return Err(ProtocolError::invalid_type(&p, "a string")),
                }
            }
        }
        Ok(())
    }
    /// `int | "inf" | null`
    pub fn max_tokens(&self, k: &str) -> R {
        match self.get(k, true)? {
            None => Ok(()),
            Some(Value::String(s)) if s == "inf" => Ok(()),
            Some(v) if v.as_u64().is_some_and(|n| (1..=4096).contains(&n)) => Ok(()),
            Some(_) => Err(ProtocolError::invalid_value(
                &path(self.prefix, k),
                "expected an integer in [1, 4096] or 'inf'",
            )),
        }
    }
    pub fn metadata(&self, k: &str) -> R {
        if let Some(m) = self.object(k, true)? {
            if m.len() > 16 {
                return Err(ProtocolError::invalid_value(
                    &path(self.prefix, k),
                    "at most 16 keys",
                ));
            }
            if let Some((key, _)) = m.iter().find(|(_, v)| !v.is_string()) {
                return Err(ProtocolError::invalid_type(
                    &format!("{}.{key}", path(self.prefix, k)),
                    "a string",
                ));
            }
        }
        Ok(())
    }
}

fn validate_tracing(f: &Fields, k: &str) -> R {
    match f.o.get(k) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s == "auto" => Ok(()),
        Some(Value::Object(o)) => {
            let p = path(f.prefix, k);
            check_keys(o, &["group_id", "metadata", "workflow_name"], &p)?;
            let g = Fields { o, prefix: &p };
            g.string("group_id")?;
            g.string("workflow_name")?;
            g.object("metadata", true)?;
            Ok(())
        }
        Some(_) => Err(ProtocolError::invalid_value(
            &path(f.prefix, k),
            "expected 'auto', an object or null",
        )),
    }
}

fn validate_turn_detection(f: &Fields, k: &str, dialect: Dialect) -> R {
    let Some(o) = f.object(k, true)? else {
        return Ok(());
    };
    let p = path(f.prefix, k);
    let g = Fields { o, prefix: &p };
    let ty = match dialect {
        Dialect::Beta => g
            .one_of("type", &["server_vad", "semantic_vad"], false)?
            .unwrap_or("server_vad"),
        Dialect::Ga => match g.one_of("type", &["server_vad", "semantic_vad"], false)? {
            Some(t) => t,
            None => return Err(ProtocolError::missing(&path(&p, "type"))),
        },
    };
    let server_keys = [
        "type",
        "threshold",
        "prefix_padding_ms",
        "silence_duration_ms",
        "create_response",
        "interrupt_response",
        "idle_timeout_ms",
    ];
    let semantic_keys = ["type", "eagerness", "create_response", "interrupt_response"];
    match (dialect, ty) {
        (Dialect::Beta, _) => {
            let mut all = server_keys.to_vec();
            all.push("eagerness");
            check_keys(o, &all, &p)?;
        }
        (Dialect::Ga, "semantic_vad") => check_keys(o, &semantic_keys, &p)?,
        (Dialect::Ga, _) => check_keys(o, &server_keys, &p)?,
    }
    g.number("threshold", 0.0, 1.0)?;
    g.uint("prefix_padding_ms", false)?;
    g.uint("silence_duration_ms", false)?;
    g.uint("idle_timeout_ms", true)?;
    g.boolean("create_response")?;
    g.boolean("interrupt_response")?;
    g.one_of("eagerness", &["low", "medium", "high", "auto"], false)?;
    Ok(())
}

fn validate_transcription(f: &Fields, k: &str, dialect: Dialect) -> R {
    let Some(o) = f.object(k, true)? else {
        return Ok(());
    };
    let p = path(f.prefix, k);
    let g = Fields { o, prefix: &p };
    match dialect {
        Dialect::Beta => check_keys(o, &["model", "language", "prompt"], &p)?,
        Dialect::Ga => check_keys(
            o,
            &[
                "model",
                "language",
                "prompt",
                "delay",
                "keywords",
                "languages",
            ],
            &p,
        )?,
    }
    g.string("model")?;
    g.string("language")?;
    g.string("prompt")?;
    g.one_of(
        "delay",
        &["minimal", "low", "medium", "high", "xhigh"],
        false,
    )?;
    g.array("keywords")?;
    g.array("languages")?;
    Ok(())
}

fn validate_tools(f: &Fields, dialect: Dialect) -> R {
    let Some(tools) = f.array("tools")? else {
        return Ok(());
    };
    for (i, t) in tools.iter().enumerate() {
        let p = format!("{}[{i}]", path(f.prefix, "tools"));
        let o = as_obj(t, &p)?;
        let g = Fields { o, prefix: &p };
        if dialect == Dialect::Ga && o.get("type").and_then(Value::as_str) == Some("mcp") {
            g.required_string("server_label")?;
            continue;
        }
        check_keys(o, &["type", "name", "description", "parameters"], &p)?;
        g.one_of("type", &["function"], false)?;
        g.required_string("name")?;
        g.string("description")?;
        g.object("parameters", false)?;
    }
    Ok(())
}

pub(crate) fn validate_tool_choice(f: &Fields, dialect: Dialect) -> R {
    match (dialect, f.o.get("tool_choice")) {
        (_, None) | (Dialect::Beta, Some(Value::String(_))) => Ok(()),
        (Dialect::Ga, Some(Value::String(s)))
            if ["none", "auto", "required"].contains(&s.as_str()) =>
        {
            Ok(())
        }
        (Dialect::Ga, Some(Value::Object(o))) => {
            let p = path(f.prefix, "tool_choice");
            let g = Fields { o, prefix: &p };
            match g.one_of("type", &["function", "mcp"], false)? {
                Some("function") => g.required_string("name").map(|_| ()),
                Some(_) => g.required_string("server_label").map(|_| ()),
                None => Err(ProtocolError::missing(&path(&p, "type"))),
            }
        }
        _ => Err(ProtocolError::invalid_value(
            &path(f.prefix, "tool_choice"),
            "unsupported tool_choice",
        )),
    }
}

fn validate_beta(o: &Obj) -> R {
    check_keys(
        o,
        &[
            "modalities",
            "instructions",
            "voice",
            "input_audio_format",
            "output_audio_format",
            "input_audio_transcription",
            "turn_detection",
            "tools",
            "tool_choice",
            "temperature",
            "max_response_output_tokens",
            "speed",
            "tracing",
            "input_audio_noise_reduction",
            "model",
        ],
        "session",
    )?;
    let f = Fields {
        o,
        prefix: "session",
    };
    f.enum_array("modalities", &["text", "audio"])?;
    f.string("instructions")?;
    f.string("voice")?;
    f.string("model")?;
    f.one_of(
        "input_audio_format",
        &["pcm16", "g711_ulaw", "g711_alaw"],
        false,
    )?;
    f.one_of(
        "output_audio_format",
        &["pcm16", "g711_ulaw", "g711_alaw"],
        false,
    )?;
    validate_transcription(&f, "input_audio_transcription", Dialect::Beta)?;
    validate_turn_detection(&f, "turn_detection", Dialect::Beta)?;
    validate_tools(&f, Dialect::Beta)?;
    validate_tool_choice(&f, Dialect::Beta)?;
    f.number("temperature", 0.6, 1.2)?;
    f.max_tokens("max_response_output_tokens")?;
    f.number("speed", 0.25, 1.5)?;
    validate_tracing(&f, "tracing")?;
    if let Some(nr) = f.object("input_audio_noise_reduction", true)? {
        check_keys(nr, &["type"], "session.input_audio_noise_reduction")?;
        Fields {
            o: nr,
            prefix: "session.input_audio_noise_reduction",
        }
        .one_of("type", &["near_field", "far_field"], false)?;
    }
    Ok(())
}

fn validate_format(f: &Fields, k: &str) -> R {
    let Some(o) = f.object(k, false)? else {
        return Ok(());
    };
    let p = path(f.prefix, k);
    check_keys(o, &["type", "rate"], &p)?;
    if WireAudioFormat::from_json(&Value::Object(o.clone())).is_none() {
        return Err(ProtocolError::invalid_value(
            &p,
            "expected {type:'audio/pcm', rate:24000}, {type:'audio/pcmu'} or {type:'audio/pcma'}",
        ));
    }
    Ok(())
}

fn validate_ga(o: &Obj) -> R {
    check_keys(
        o,
        &[
            "type",
            "output_modalities",
            "instructions",
            "audio",
            "tools",
            "tool_choice",
            "max_output_tokens",
            "parallel_tool_calls",
            "tracing",
            "truncation",
            "model",
            "include",
            "prompt",
            "reasoning",
        ],
        "session",
    )?;
    let f = Fields {
        o,
        prefix: "session",
    };
    match o.get("type") {
        None => return Err(ProtocolError::missing("session.type")),
        Some(_) => {
            f.one_of("type", &["realtime"], false)?;
        }
    }
    f.enum_array("output_modalities", &["text", "audio"])?;
    f.string("instructions")?;
    f.string("model")?;
    if let Some(audio) = f.object("audio", false)? {
        check_keys(audio, &["input", "output"], "session.audio")?;
        let a = Fields {
            o: audio,
            prefix: "session.audio",
        };
        if let Some(input) = a.object("input", false)? {
            check_keys(
                input,
                &[
                    "format",
                    "transcription",
                    "noise_reduction",
                    "turn_detection",
                ],
                "session.audio.input",
            )?;
            let i = Fields {
                o: input,
                prefix: "session.audio.input",
            };
            validate_format(&i, "format")?;
            validate_transcription(&i, "transcription", Dialect::Ga)?;
            validate_turn_detection(&i, "turn_detection", Dialect::Ga)?;
            if let Some(nr) = i.object("noise_reduction", true)? {
                let p = "session.audio.input.noise_reduction";
                check_keys(nr, &["type", "strength"], p)?;
                let n = Fields { o: nr, prefix: p };
                n.one_of("type", &["near_field", "far_field"], false)?;
                n.number("strength", 0.0, 1.0)?;
            }
        }
        if let Some(output) = a.object("output", false)? {
            check_keys(
                output,
                &["format", "voice", "speed"],
                "session.audio.output",
            )?;
            let out = Fields {
                o: output,
                prefix: "session.audio.output",
            };
            validate_format(&out, "format")?;
            out.number("speed", 0.25, 1.5)?;
            match output.get("voice") {
                None | Some(Value::String(_)) => {}
                Some(Value::Object(v)) => {
                    Fields {
                        o: v,
                        prefix: "session.audio.output.voice",
                    }
                    .required_string("id")?;
                }
                Some(_) => {
                    return Err(ProtocolError::invalid_type(
                        "session.audio.output.voice",
                        "a string",
                    ))
                }
            }
        }
    }
    validate_tools(&f, Dialect::Ga)?;
    validate_tool_choice(&f, Dialect::Ga)?;
    f.max_tokens("max_output_tokens")?;
    f.boolean("parallel_tool_calls")?;
    validate_tracing(&f, "tracing")?;
    match o.get("truncation") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "auto" || s == "disabled" => {}
        Some(Value::Object(t)) => {
            let g = Fields {
                o: t,
                prefix: "session.truncation",
            };
            g.one_of("type", &["retention_ratio"], false)?;
            g.number("retention_ratio", 0.0, 1.0)?;
        }
        Some(_) => {
            return Err(ProtocolError::invalid_value(
                "session.truncation",
                "expected 'auto', 'disabled' or an object",
            ))
        }
    }
    f.enum_array("include", &["item.input_audio_transcription.logprobs"])?;
    if let Some(p) = f.object("prompt", true)? {
        Fields {
            o: p,
            prefix: "session.prompt",
        }
        .required_string("id")?;
    }
    if let Some(r) = f.object("reasoning", true)? {
        check_keys(r, &["effort"], "session.reasoning")?;
        Fields {
            o: r,
            prefix: "session.reasoning",
        }
        .one_of(
            "effort",
            &["minimal", "low", "medium", "high", "xhigh"],
            false,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_update_merges_and_derives() {
        let mut s = SessionConfig::new(Dialect::Beta, "sess_1", "m", 0);
        s.apply_update(&json!({"input_audio_format": "g711_ulaw", "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
                               "tools": [{"type": "function", "name": "lookup"}], "input_audio_transcription": {"model": "whisper-1"}}))
            .unwrap();
        let d = s.derived();
        assert_eq!(d.input_format, WireAudioFormat::G711Ulaw);
        assert_eq!(d.turn_detection.unwrap().vad.silence_duration_ms, 300);
        assert_eq!(d.turn_detection.unwrap().vad.prefix_padding_ms, 300);
        assert!(d.transcription);
        assert_eq!(d.tools, vec!["lookup"]);
        assert_eq!(s.json()["turn_detection"]["threshold"], 0.5);
    }

    #[test]
    fn beta_rejects_ga_fields_and_bad_types() {
        let mut s = SessionConfig::new(Dialect::Beta, "sess_1", "m", 0);
        assert_eq!(
            s.apply_update(&json!({"audio": {}})).unwrap_err().code,
            "unknown_parameter"
        );
        assert_eq!(
            s.apply_update(&json!({"voice": 3})).unwrap_err().code,
            "invalid_type"
        );
        assert_eq!(
            s.apply_update(&json!({"input_audio_format": "mp3"}))
                .unwrap_err()
                .code,
            "invalid_value"
        );
        assert_eq!(
            s.apply_update(&json!({"turn_detection": {"threshold": 2.0}}))
                .unwrap_err()
                .param
                .as_deref(),
            Some("session.turn_detection.threshold")
        );
    }

    #[test]
    fn ga_requires_type_and_nests_audio() {
        let mut s = SessionConfig::new(Dialect::Ga, "sess_1", "m", 0);
        assert_eq!(
            s.apply_update(&json!({"instructions": "x"}))
                .unwrap_err()
                .code,
            "missing_required_parameter"
        );
        assert_eq!(
            s.apply_update(&json!({"type": "realtime", "voice": "x"}))
                .unwrap_err()
                .code,
            "unknown_parameter"
        );
        s.apply_update(&json!({"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcma"}}, "input": {"turn_detection": null}}}))
            .unwrap();
        let d = s.derived();
        assert_eq!(d.output_format, WireAudioFormat::G711Alaw);
        assert_eq!(d.input_format, WireAudioFormat::Pcm16);
        assert!(d.turn_detection.is_none());
        assert_eq!(s.json()["audio"]["output"]["voice"], "alloy");
    }
}
