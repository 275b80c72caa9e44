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
    /// `server_vad.idle_timeout_ms` (GA only; semantic_vad and the beta dialect have none).
    pub idle_timeout_ms: Option<u64>,
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

fn default_server_vad(dialect: Dialect) -> Value {
    let mut v = json!({"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
           "create_response": true, "interrupt_response": true});
    // The beta session shape has no idle timeout.
    if dialect == Dialect::Ga {
        v["idle_timeout_ms"] = Value::Null;
    }
    v
}

impl SessionConfig {
    pub fn new(dialect: Dialect, id: &str, model: &str, expires_at: u64) -> Self {
        let v = match dialect {
            Dialect::Beta => json!({
                "id": id, "object": "realtime.session", "model": model, "expires_at": expires_at,
                "modalities": ["text", "audio"], "instructions": "", "voice": "alloy",
                "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                "input_audio_transcription": null, "turn_detection": default_server_vad(dialect),
                "tools": [], "tool_choice": "auto", "temperature": 0.8,
                "max_response_output_tokens": "inf", "speed": 1.0, "tracing": null,
                "input_audio_noise_reduction": null,
            }),
            Dialect::Ga => json!({
                "type": "realtime", "object": "realtime.session", "id": id, "model": model,
                "expires_at": expires_at, "output_modalities": ["audio"], "instructions": "",
                "audio": {
                    "input": {"format": WireAudioFormat::Pcm16.ga_json(), "transcription": null,
                              "noise_reduction": null, "turn_detection": default_server_vad(dialect)},
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
        match self.dialect {
            Dialect::Beta => validate_beta(update)?,
            Dialect::Ga => validate_ga(update)?,
        }
        // "Once tracing is enabled for a session, the configuration cannot be modified."
        if let (Some(new), Some(current)) = (update.get("tracing"), self.json.get("tracing")) {
            if !current.is_null() && new != current {
                return Err(ProtocolError::invalid_value(
                    "session.tracing",
                    "tracing cannot be modified once it is enabled for a session",
                ));
            }
        }
        let mut next = self.json.clone();
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
                                let fv = match f.as_str() {
                                    "turn_detection" => normalize_td(fv, Dialect::Ga),
                                    "noise_reduction" => {
                                        normalize_noise_reduction(fv, dst.get("noise_reduction"))
                                    }
                                    _ => fv.clone(),
                                };
                                if let Some(d) = dst.as_object_mut() {
                                    d.insert(f.clone(), fv);
                                }
                            }
                        }
                    }
                }
                // Only shapes the ephemeral key minted for the session; not part of the echo.
                (Dialect::Beta, "client_secret") => {}
                (Dialect::Beta, "turn_detection") => {
                    next.insert(k.clone(), normalize_td(v, Dialect::Beta));
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
pub(crate) fn normalize_td(v: &Value, dialect: Dialect) -> Value {
    let Some(o) = v.as_object() else {
        return Value::Null;
    };
    let mut base = match o.get("type").and_then(Value::as_str) {
        Some("semantic_vad") => {
            json!({"type": "semantic_vad", "eagerness": "auto", "create_response": true, "interrupt_response": true})
        }
        _ => default_server_vad(dialect),
    };
    if let Some(b) = base.as_object_mut() {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// `noise_reduction.strength` "defaults to 1 when noise reduction is first enabled. Omitting strength
/// from a session update preserves the current strength" (the 3.57.0 model's docstring).
pub(crate) fn normalize_noise_reduction(v: &Value, current: Option<&Value>) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        if !o.contains_key("strength") {
            let keep = current
                .and_then(|c| c.get("strength"))
                .filter(|s| s.is_number())
                .cloned()
                .unwrap_or_else(|| json!(1.0));
            o.insert("strength".into(), keep);
        }
    }
    v
}

/// The turn detection a GA `audio.input.turn_detection` value (normalised) stands for; transcription
/// sessions share the conversation sessions' shape.
pub(crate) fn ga_turn_detection(td: &Value) -> Option<TurnDetection> {
    let mut j = Obj::new();
    j.insert("audio".into(), json!({"input": {"turn_detection": td}}));
    derive(Dialect::Ga, &j).turn_detection
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
            idle_timeout_ms: if semantic || dialect == Dialect::Beta {
                None
            } else {
                uint("idle_timeout_ms")
            },
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
    /// `str | null`.
    pub fn nullable_string(&self, k: &str) -> R<Option<&'a str>> {
        match self.get(k, true)? {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ProtocolError::invalid_type(&path(self.prefix, k), "a string")),
        }
    }
    /// A list of strings; true when present.
    pub fn string_array(&self, k: &str) -> R<bool> {
        let Some(a) = self.array(k)? else {
            return Ok(false);
        };
        if let Some(i) = a.iter().position(|x| !x.is_string()) {
            return Err(ProtocolError::invalid_type(
                &format!("{}[{i}]", path(self.prefix, k)),
                "a string",
            ));
        }
        Ok(true)
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
            // Keys of at most 64 characters, string values of at most 512 (the Metadata docstring).
            for (key, v) in m {
                let p = format!("{}.{key}", path(self.prefix, k));
                if key.chars().count() > 64 {
                    return Err(ProtocolError::invalid_value(
                        &p,
                        "metadata keys are at most 64 characters",
                    ));
                }
                match v.as_str() {
                    None => return Err(ProtocolError::invalid_type(&p, "a string")),
                    Some(s) if s.chars().count() > 512 => {
                        return Err(ProtocolError::invalid_value(
                            &p,
                            "metadata values are at most 512 characters",
                        ))
                    }
                    Some(_) => {}
                }
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

pub(crate) fn validate_turn_detection(f: &Fields, k: &str, dialect: Dialect) -> R {
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
        // The beta SessionTurnDetection is one flat shape for both types and has no idle timeout.
        (Dialect::Beta, _) => check_keys(
            o,
            &[
                "type",
                "threshold",
                "prefix_padding_ms",
                "silence_duration_ms",
                "create_response",
                "interrupt_response",
                "eagerness",
            ],
            &p,
        )?,
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

pub(crate) fn validate_transcription(f: &Fields, k: &str, dialect: Dialect) -> R {
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
    // `model` is `str | Literal[...]` in the SDK: any string is accepted, the literals are only hints.
    let model = g.string("model")?;
    g.string("language")?;
    let prompt = g.string("prompt")?;
    let delay = g.one_of(
        "delay",
        &["minimal", "low", "medium", "high", "xhigh"],
        false,
    )?;
    let keywords = g.string_array("keywords")?;
    let languages = g.string_array("languages")?;
    if dialect == Dialect::Ga {
        // Model restrictions stated by the 3.57.0 AudioTranscription docstrings.
        let whisper = model == Some("gpt-realtime-whisper");
        if delay.is_some() && !whisper {
            return Err(ProtocolError::invalid_value(
                &path(&p, "delay"),
                "'delay' is only supported with model 'gpt-realtime-whisper'",
            ));
        }
        if prompt.is_some() && whisper {
            return Err(ProtocolError::invalid_value(
                &path(&p, "prompt"),
                "'prompt' is not supported with model 'gpt-realtime-whisper'",
            ));
        }
        let listed = matches!(model, Some("gpt-transcribe" | "gpt-live-transcribe"));
        for (k, present) in [("keywords", keywords), ("languages", languages)] {
            if present && !listed {
                return Err(ProtocolError::invalid_value(
                    &path(&p, k),
                    format!("'{k}' is only supported with models 'gpt-transcribe' and 'gpt-live-transcribe'"),
                ));
            }
        }
    }
    Ok(())
}

/// `retention_ratio` truncation: `{type: "retention_ratio", retention_ratio: 0.0..=1.0,
/// token_limits?: {post_instructions?: int}}` (RealtimeTruncationRetentionRatioParam).
fn validate_truncation(f: &Fields) -> R {
    let p = path(f.prefix, "truncation");
    match f.o.get("truncation") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s == "auto" || s == "disabled" => Ok(()),
        Some(Value::Object(t)) => {
            check_keys(t, &["type", "retention_ratio", "token_limits"], &p)?;
            let g = Fields { o: t, prefix: &p };
            g.one_of("type", &["retention_ratio"], false)?
                .ok_or_else(|| ProtocolError::missing(&path(&p, "type")))?;
            if !t.contains_key("retention_ratio") {
                return Err(ProtocolError::missing(&path(&p, "retention_ratio")));
            }
            g.number("retention_ratio", 0.0, 1.0)?;
            if let Some(limits) = g.object("token_limits", false)? {
                let lp = path(&p, "token_limits");
                check_keys(limits, &["post_instructions"], &lp)?;
                Fields {
                    o: limits,
                    prefix: &lp,
                }
                .uint("post_instructions", false)?;
            }
            Ok(())
        }
        Some(_) => Err(ProtocolError::invalid_value(
            &p,
            "expected 'auto', 'disabled' or a retention_ratio object",
        )),
    }
}

fn validate_cache_breakpoint(g: &Fields) -> R {
    if let Some(b) = g.object("prompt_cache_breakpoint", false)? {
        let p = path(g.prefix, "prompt_cache_breakpoint");
        check_keys(b, &["mode", "ttl"], &p)?;
        let h = Fields { o: b, prefix: &p };
        h.one_of("mode", &["explicit"], false)?
            .ok_or_else(|| ProtocolError::missing(&path(&p, "mode")))?;
        h.one_of("ttl", &["30m", "12h"], false)?;
    }
    Ok(())
}

/// A reusable prompt reference (ResponsePromptParam): `{id, version?: str|null, variables?: {name:
/// str | input_text | input_image | input_file}|null}`, for `session.prompt` and `response.prompt`.
pub(crate) fn validate_prompt(f: &Fields) -> R {
    let Some(o) = f.object("prompt", true)? else {
        return Ok(());
    };
    let p = path(f.prefix, "prompt");
    check_keys(o, &["id", "version", "variables"], &p)?;
    let g = Fields { o, prefix: &p };
    g.required_string("id")?;
    g.nullable_string("version")?;
    let Some(vars) = g.object("variables", true)? else {
        return Ok(());
    };
    for (name, v) in vars {
        let vp = format!("{p}.variables.{name}");
        let vo = match v {
            Value::String(_) => continue,
            Value::Object(vo) => vo,
            _ => {
                return Err(ProtocolError::invalid_type(
                    &vp,
                    "a string or an input_text, input_image or input_file object",
                ))
            }
        };
        let h = Fields { o: vo, prefix: &vp };
        let ty = h
            .one_of("type", &["input_text", "input_image", "input_file"], false)?
            .ok_or_else(|| ProtocolError::missing(&path(&vp, "type")))?;
        match ty {
            "input_text" => {
                check_keys(vo, &["type", "text", "prompt_cache_breakpoint"], &vp)?;
                h.required_string("text")?;
            }
            "input_image" => {
                check_keys(
                    vo,
                    &[
                        "type",
                        "detail",
                        "file_id",
                        "image_url",
                        "prompt_cache_breakpoint",
                    ],
                    &vp,
                )?;
                h.one_of("detail", &["low", "high", "auto", "original"], false)?
                    .ok_or_else(|| ProtocolError::missing(&path(&vp, "detail")))?;
                h.nullable_string("file_id")?;
                h.nullable_string("image_url")?;
            }
            _ => {
                check_keys(
                    vo,
                    &[
                        "type",
                        "detail",
                        "file_data",
                        "file_id",
                        "file_url",
                        "filename",
                        "prompt_cache_breakpoint",
                    ],
                    &vp,
                )?;
                h.one_of("detail", &["auto", "low", "high"], false)?;
                h.string("file_data")?;
                h.nullable_string("file_id")?;
                h.string("file_url")?;
                h.string("filename")?;
            }
        }
        validate_cache_breakpoint(&h)?;
    }
    Ok(())
}

/// `reasoning: {effort?}` (RealtimeReasoningParam), for the session and per response.
pub(crate) fn validate_reasoning(f: &Fields) -> R {
    if let Some(r) = f.object("reasoning", true)? {
        let p = path(f.prefix, "reasoning");
        check_keys(r, &["effort"], &p)?;
        Fields { o: r, prefix: &p }.one_of(
            "effort",
            &["minimal", "low", "medium", "high", "xhigh"],
            false,
        )?;
    }
    Ok(())
}

/// `{read_only?: bool, tool_names?: [str]}`, the MCP tool filter.
fn validate_mcp_filter(o: &Obj, p: &str) -> R {
    check_keys(o, &["read_only", "tool_names"], p)?;
    let g = Fields { o, prefix: p };
    g.boolean("read_only")?;
    g.string_array("tool_names")?;
    Ok(())
}

fn validate_mcp_tool(o: &Obj, p: &str) -> R {
    check_keys(
        o,
        &[
            "type",
            "server_label",
            "allowed_callers",
            "allowed_tools",
            "authorization",
            "connector_id",
            "defer_loading",
            "headers",
            "require_approval",
            "server_description",
            "server_url",
            "tunnel_id",
        ],
        p,
    )?;
    let g = Fields { o, prefix: p };
    g.required_string("server_label")?;
    if o.get("allowed_callers").is_some_and(|v| !v.is_null()) {
        g.enum_array("allowed_callers", &["direct", "programmatic"])?;
    }
    match o.get("allowed_tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(_)) => {
            g.string_array("allowed_tools")?;
        }
        Some(Value::Object(f)) => validate_mcp_filter(f, &path(p, "allowed_tools"))?,
        Some(_) => {
            return Err(ProtocolError::invalid_type(
                &path(p, "allowed_tools"),
                "an array of strings or a filter object",
            ))
        }
    }
    g.string("authorization")?;
    g.one_of(
        "connector_id",
        &[
            "connector_dropbox",
            "connector_gmail",
            "connector_googlecalendar",
            "connector_googledrive",
            "connector_microsoftteams",
            "connector_outlookcalendar",
            "connector_outlookemail",
            "connector_sharepoint",
        ],
        false,
    )?;
    g.boolean("defer_loading")?;
    if let Some(h) = g.object("headers", true)? {
        if let Some((k, _)) = h.iter().find(|(_, v)| !v.is_string()) {
            return Err(ProtocolError::invalid_type(
                &format!("{p}.headers.{k}"),
                "a string",
            ));
        }
    }
    match o.get("require_approval") {
        None | Some(Value::Null) => {}
        Some(Value::String(_)) => {
            g.one_of("require_approval", &["always", "never"], false)?;
        }
        Some(Value::Object(ra)) => {
            let rp = path(p, "require_approval");
            check_keys(ra, &["always", "never"], &rp)?;
            let h = Fields { o: ra, prefix: &rp };
            for k in ["always", "never"] {
                if let Some(f) = h.object(k, false)? {
                    validate_mcp_filter(f, &path(&rp, k))?;
                }
            }
        }
        Some(_) => {
            return Err(ProtocolError::invalid_type(
                &path(p, "require_approval"),
                "'always', 'never' or an approval filter object",
            ))
        }
    }
    g.string("server_description")?;
    g.string("server_url")?;
    g.string("tunnel_id")?;
    Ok(())
}

/// `tools[]`: function tools (every field optional in both dialects' models) and, in GA, MCP tools.
pub(crate) fn validate_tools(f: &Fields, dialect: Dialect) -> R {
    let Some(tools) = f.array("tools")? else {
        return Ok(());
    };
    for (i, t) in tools.iter().enumerate() {
        let p = format!("{}[{i}]", path(f.prefix, "tools"));
        let o = as_obj(t, &p)?;
        let g = Fields { o, prefix: &p };
        if dialect == Dialect::Ga && o.get("type").and_then(Value::as_str) == Some("mcp") {
            validate_mcp_tool(o, &p)?;
            continue;
        }
        check_keys(o, &["type", "name", "description", "parameters"], &p)?;
        g.one_of("type", &["function"], false)?;
        g.string("name")?;
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

const BETA_MODELS: [&str; 8] = [
    "gpt-realtime",
    "gpt-realtime-2025-08-28",
    "gpt-4o-realtime-preview",
    "gpt-4o-realtime-preview-2024-10-01",
    "gpt-4o-realtime-preview-2024-12-17",
    "gpt-4o-realtime-preview-2025-06-03",
    "gpt-4o-mini-realtime-preview",
    "gpt-4o-mini-realtime-preview-2024-12-17",
];

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
            "client_secret",
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
    // The beta Session.model is a closed Literal list (unlike GA's free string).
    f.one_of("model", &BETA_MODELS, false)?;
    if let Some(cs) = f.object("client_secret", false)? {
        let p = "session.client_secret";
        check_keys(cs, &["expires_after"], p)?;
        if let Some(ea) = (Fields { o: cs, prefix: p }).object("expires_after", false)? {
            let ep = "session.client_secret.expires_after";
            check_keys(ea, &["anchor", "seconds"], ep)?;
            let e = Fields { o: ea, prefix: ep };
            e.one_of("anchor", &["created_at"], false)?.ok_or_else(|| {
                ProtocolError::missing("session.client_secret.expires_after.anchor")
            })?;
            e.uint("seconds", false)?;
        }
    }
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
                // The 3.57.0 model gives no range for the realtime session's strength.
                n.number("strength", f64::NEG_INFINITY, f64::INFINITY)?;
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
    validate_truncation(&f)?;
    f.enum_array("include", &["item.input_audio_transcription.logprobs"])?;
    validate_prompt(&f)?;
    validate_reasoning(&f)?;
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

    /// Applies `session` (with `type: realtime` added) to a fresh GA session: "ok" or the error's
    /// code and param.
    fn ga(mut session: Value) -> (&'static str, Option<String>) {
        session["type"] = json!("realtime");
        let mut s = SessionConfig::new(Dialect::Ga, "sess_1", "m", 0);
        match s.apply_update(&session) {
            Ok(()) => ("ok", None),
            Err(e) => (e.code, e.param),
        }
    }

    fn beta(session: &Value) -> (&'static str, Option<String>) {
        let mut s = SessionConfig::new(Dialect::Beta, "sess_1", "m", 0);
        match s.apply_update(session) {
            Ok(()) => ("ok", None),
            Err(e) => (e.code, e.param),
        }
    }

    fn refused(code: &'static str, param: &str) -> (&'static str, Option<String>) {
        (code, Some(param.to_owned()))
    }

    const OK: (&str, Option<String>) = ("ok", None);

    #[test]
    fn truncation_retention_ratio() {
        assert_eq!(ga(json!({"truncation": "disabled"})), OK);
        assert_eq!(
            ga(
                json!({"truncation": {"type": "retention_ratio", "retention_ratio": 0.8, "token_limits": {"post_instructions": 5000}}})
            ),
            OK
        );
        assert_eq!(
            ga(
                json!({"truncation": {"type": "retention_ratio", "retention_ratio": 0.0, "token_limits": {}}})
            ),
            OK
        );
        assert_eq!(
            ga(json!({"truncation": {"retention_ratio": 0.5}})),
            refused("missing_required_parameter", "session.truncation.type")
        );
        assert_eq!(
            ga(json!({"truncation": {"type": "retention_ratio"}})),
            refused(
                "missing_required_parameter",
                "session.truncation.retention_ratio"
            )
        );
        assert_eq!(
            ga(json!({"truncation": {"type": "retention_ratio", "retention_ratio": 1.5}})),
            refused("invalid_value", "session.truncation.retention_ratio")
        );
        assert_eq!(
            ga(
                json!({"truncation": {"type": "retention_ratio", "retention_ratio": 0.5, "keep": 1}})
            ),
            refused("unknown_parameter", "session.truncation.keep")
        );
        assert_eq!(
            ga(
                json!({"truncation": {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": {"post_instructions": -1}}})
            ),
            refused(
                "invalid_type",
                "session.truncation.token_limits.post_instructions"
            )
        );
        assert_eq!(
            ga(
                json!({"truncation": {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": {"post_instructions": 1.5}}})
            ),
            refused(
                "invalid_type",
                "session.truncation.token_limits.post_instructions"
            )
        );
        assert_eq!(
            ga(
                json!({"truncation": {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": {"pre": 1}}})
            ),
            refused("unknown_parameter", "session.truncation.token_limits.pre")
        );
        assert_eq!(
            ga(json!({"truncation": "sometimes"})),
            refused("invalid_value", "session.truncation")
        );
    }

    #[test]
    fn prompt_reference() {
        assert_eq!(
            ga(
                json!({"prompt": {"id": "pmpt_1", "version": "3", "variables": {
                "name": "Ada",
                "greeting": {"type": "input_text", "text": "hi", "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "30m"}},
                "logo": {"type": "input_image", "detail": "auto", "image_url": "https://x/y.png", "file_id": null},
                "doc": {"type": "input_file", "file_id": "file_1", "filename": "a.pdf", "detail": "low"}}}})
            ),
            OK
        );
        assert_eq!(
            ga(json!({"prompt": {"id": "pmpt_1", "version": null, "variables": null}})),
            OK
        );
        assert_eq!(ga(json!({"prompt": null})), OK);
        assert_eq!(
            ga(json!({"prompt": {"version": "1"}})),
            refused("missing_required_parameter", "session.prompt.id")
        );
        assert_eq!(
            ga(json!({"prompt": {"id": "p", "version": 2}})),
            refused("invalid_type", "session.prompt.version")
        );
        assert_eq!(
            ga(json!({"prompt": {"id": "p", "extra": 1}})),
            refused("unknown_parameter", "session.prompt.extra")
        );
        assert_eq!(
            ga(json!({"prompt": {"id": "p", "variables": {"n": 5}}})),
            refused("invalid_type", "session.prompt.variables.n")
        );
        assert_eq!(
            ga(json!({"prompt": {"id": "p", "variables": {"n": {"type": "input_audio"}}}})),
            refused("invalid_value", "session.prompt.variables.n.type")
        );
        assert_eq!(
            ga(json!({"prompt": {"id": "p", "variables": {"n": {"type": "input_text"}}}})),
            refused(
                "missing_required_parameter",
                "session.prompt.variables.n.text"
            )
        );
        assert_eq!(
            ga(
                json!({"prompt": {"id": "p", "variables": {"n": {"type": "input_image", "image_url": "u"}}}})
            ),
            refused(
                "missing_required_parameter",
                "session.prompt.variables.n.detail"
            )
        );
        assert_eq!(
            ga(
                json!({"prompt": {"id": "p", "variables": {"n": {"type": "input_file", "detail": "original"}}}})
            ),
            refused("invalid_value", "session.prompt.variables.n.detail")
        );
        assert_eq!(
            ga(
                json!({"prompt": {"id": "p", "variables": {"n": {"type": "input_text", "text": "t", "prompt_cache_breakpoint": {"ttl": "1h"}}}}})
            ),
            refused(
                "missing_required_parameter",
                "session.prompt.variables.n.prompt_cache_breakpoint.mode"
            )
        );
    }

    #[test]
    fn tracing_shape_and_immutability() {
        assert_eq!(
            ga(json!({"tracing": {"workflow_name": "w", "group_id": "g", "metadata": {"a": [1]}}})),
            OK
        );
        assert_eq!(
            ga(json!({"tracing": {"metadata": 3}})),
            refused("invalid_type", "session.tracing.metadata")
        );
        assert_eq!(
            beta(&json!({"tracing": {"workflow": "w"}})),
            refused("unknown_parameter", "session.tracing.workflow")
        );
        let mut s = SessionConfig::new(Dialect::Ga, "sess_1", "m", 0);
        s.apply_update(&json!({"type": "realtime", "tracing": "auto"}))
            .unwrap();
        // Re-sending the same configuration is fine; changing it is not.
        s.apply_update(&json!({"type": "realtime", "tracing": "auto"}))
            .unwrap();
        let e = s
            .apply_update(&json!({"type": "realtime", "tracing": {"workflow_name": "w"}}))
            .unwrap_err();
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_value", Some("session.tracing"))
        );
        assert_eq!(s.json()["tracing"], "auto");
    }

    #[test]
    fn noise_reduction_and_speed() {
        assert_eq!(
            ga(
                json!({"audio": {"input": {"noise_reduction": {"type": "far_field", "strength": 2.5}}}})
            ),
            OK
        );
        assert_eq!(
            ga(json!({"audio": {"input": {"noise_reduction": {"strength": "high"}}}})),
            refused(
                "invalid_type",
                "session.audio.input.noise_reduction.strength"
            )
        );
        assert_eq!(
            ga(json!({"audio": {"input": {"noise_reduction": {"type": "mid_field"}}}})),
            refused("invalid_value", "session.audio.input.noise_reduction.type")
        );
        assert_eq!(
            ga(
                json!({"audio": {"input": {"noise_reduction": {"type": "near_field", "level": 1}}}})
            ),
            refused(
                "unknown_parameter",
                "session.audio.input.noise_reduction.level"
            )
        );
        assert_eq!(
            beta(&json!({"input_audio_noise_reduction": {"type": "near_field", "strength": 1}})),
            refused(
                "unknown_parameter",
                "session.input_audio_noise_reduction.strength"
            )
        );
        // Strength defaults to 1 when first enabled and is kept when an update omits it.
        let mut s = SessionConfig::new(Dialect::Ga, "sess_1", "m", 0);
        s.apply_update(&json!({"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "near_field"}}}}))
            .unwrap();
        assert_eq!(
            s.json()["audio"]["input"]["noise_reduction"]["strength"],
            1.0
        );
        s.apply_update(&json!({"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "near_field", "strength": 0.4}}}}))
            .unwrap();
        s.apply_update(&json!({"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "far_field"}}}}))
            .unwrap();
        assert_eq!(
            s.json()["audio"]["input"]["noise_reduction"]["strength"],
            0.4
        );
        assert_eq!(
            s.json()["audio"]["input"]["noise_reduction"]["type"],
            "far_field"
        );
        s.apply_update(&json!({"type": "realtime", "audio": {"input": {"noise_reduction": null}}}))
            .unwrap();
        assert!(s.json()["audio"]["input"]["noise_reduction"].is_null());

        assert_eq!(ga(json!({"audio": {"output": {"speed": 0.25}}})), OK);
        assert_eq!(ga(json!({"audio": {"output": {"speed": 1.5}}})), OK);
        assert_eq!(
            ga(json!({"audio": {"output": {"speed": 1.6}}})),
            refused("invalid_value", "session.audio.output.speed")
        );
        assert_eq!(
            ga(json!({"audio": {"output": {"speed": "fast"}}})),
            refused("invalid_type", "session.audio.output.speed")
        );
        assert_eq!(
            beta(&json!({"speed": 0.2})),
            refused("invalid_value", "session.speed")
        );
    }

    #[test]
    fn transcription_models_and_their_options() {
        let t = |v: Value| ga(json!({"audio": {"input": {"transcription": v}}}));
        let p = |k: &str| format!("session.audio.input.transcription.{k}");
        // The model is a free string in the SDK (the literals are only the known values).
        assert_eq!(
            t(json!({"model": "gpt-realtime-whisper", "delay": "low"})),
            OK
        );
        assert_eq!(t(json!({"model": "my-future-transcriber"})), OK);
        assert_eq!(t(json!({"model": 1})), refused("invalid_type", &p("model")));
        assert_eq!(
            t(json!({"model": "gpt-4o-transcribe", "delay": "low"})),
            refused("invalid_value", &p("delay"))
        );
        assert_eq!(
            t(json!({"delay": "low"})),
            refused("invalid_value", &p("delay"))
        );
        assert_eq!(
            t(json!({"model": "gpt-realtime-whisper", "delay": "slow"})),
            refused("invalid_value", &p("delay"))
        );
        assert_eq!(
            t(json!({"model": "gpt-4o-transcribe", "prompt": "tech"})),
            OK
        );
        assert_eq!(
            t(json!({"model": "gpt-realtime-whisper", "prompt": "tech"})),
            refused("invalid_value", &p("prompt"))
        );
        assert_eq!(
            t(json!({"model": "gpt-transcribe", "keywords": ["Acme"], "languages": ["en", "de"]})),
            OK
        );
        assert_eq!(
            t(json!({"model": "gpt-live-transcribe", "keywords": ["Acme"]})),
            OK
        );
        assert_eq!(
            t(json!({"model": "whisper-1", "keywords": ["Acme"]})),
            refused("invalid_value", &p("keywords"))
        );
        assert_eq!(
            t(json!({"model": "gpt-4o-transcribe", "languages": ["en"]})),
            refused("invalid_value", &p("languages"))
        );
        assert_eq!(
            t(json!({"model": "gpt-transcribe", "keywords": [1]})),
            refused("invalid_type", &format!("{}[0]", p("keywords")))
        );
        // Beta: {model, language, prompt} only.
        assert_eq!(
            beta(&json!({"input_audio_transcription": {"model": "anything", "prompt": "p"}})),
            OK
        );
        assert_eq!(
            beta(
                &json!({"input_audio_transcription": {"model": "gpt-realtime-whisper", "delay": "low"}})
            ),
            refused(
                "unknown_parameter",
                "session.input_audio_transcription.delay"
            )
        );
    }

    #[test]
    fn idle_timeout_only_on_ga_server_vad() {
        let td = |v: Value| ga(json!({"audio": {"input": {"turn_detection": v}}}));
        assert_eq!(
            td(json!({"type": "server_vad", "idle_timeout_ms": 6000})),
            OK
        );
        assert_eq!(
            td(json!({"type": "server_vad", "idle_timeout_ms": null})),
            OK
        );
        assert_eq!(
            td(json!({"type": "semantic_vad", "idle_timeout_ms": 6000})),
            refused(
                "unknown_parameter",
                "session.audio.input.turn_detection.idle_timeout_ms"
            )
        );
        assert_eq!(
            td(json!({"type": "server_vad", "idle_timeout_ms": "6s"})),
            refused(
                "invalid_type",
                "session.audio.input.turn_detection.idle_timeout_ms"
            )
        );
        assert_eq!(
            beta(&json!({"turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000}})),
            refused(
                "unknown_parameter",
                "session.turn_detection.idle_timeout_ms"
            )
        );
        assert_eq!(
            beta(&json!({"turn_detection": {"type": "server_vad", "eagerness": "low"}})),
            OK
        );
        let mut s = SessionConfig::new(Dialect::Ga, "sess_1", "m", 0);
        assert_eq!(s.derived().turn_detection.unwrap().idle_timeout_ms, None);
        s.apply_update(&json!({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000}}}}))
            .unwrap();
        assert_eq!(
            s.derived().turn_detection.unwrap().idle_timeout_ms,
            Some(6000)
        );
        let b = SessionConfig::new(Dialect::Beta, "sess_1", "m", 0);
        assert!(b.json()["turn_detection"].get("idle_timeout_ms").is_none());
    }

    #[test]
    fn tools_follow_the_models() {
        assert_eq!(ga(json!({"tools": [{"type": "function"}]})), OK);
        assert_eq!(
            ga(
                json!({"tools": [{"type": "mcp", "server_label": "s", "server_url": "https://m", "allowed_tools": {"read_only": true},
                "require_approval": {"never": {"tool_names": ["a"]}}, "allowed_callers": ["direct"], "headers": {"x": "y"},
                "connector_id": "connector_sharepoint", "defer_loading": true, "tunnel_id": "t"}]})
            ),
            OK
        );
        assert_eq!(
            ga(json!({"tools": [{"type": "mcp"}]})),
            refused(
                "missing_required_parameter",
                "session.tools[0].server_label"
            )
        );
        assert_eq!(
            ga(json!({"tools": [{"type": "mcp", "server_label": "s", "url": "u"}]})),
            refused("unknown_parameter", "session.tools[0].url")
        );
        assert_eq!(
            ga(
                json!({"tools": [{"type": "mcp", "server_label": "s", "require_approval": "sometimes"}]})
            ),
            refused("invalid_value", "session.tools[0].require_approval")
        );
        assert_eq!(
            ga(
                json!({"tools": [{"type": "mcp", "server_label": "s", "connector_id": "connector_x"}]})
            ),
            refused("invalid_value", "session.tools[0].connector_id")
        );
        assert_eq!(
            ga(
                json!({"tools": [{"type": "mcp", "server_label": "s", "allowed_callers": ["robot"]}]})
            ),
            refused("invalid_value", "session.tools[0].allowed_callers[0]")
        );
    }

    #[test]
    fn beta_model_and_client_secret() {
        assert_eq!(beta(&json!({"model": "gpt-4o-realtime-preview"})), OK);
        assert_eq!(
            beta(&json!({"model": "gpt-realtime-2"})),
            refused("invalid_value", "session.model")
        );
        assert_eq!(ga(json!({"model": "gpt-realtime-2"})), OK);
        assert_eq!(ga(json!({"model": "some-new-model"})), OK);
        assert_eq!(
            beta(
                &json!({"client_secret": {"expires_after": {"anchor": "created_at", "seconds": 600}}})
            ),
            OK
        );
        assert_eq!(
            beta(&json!({"client_secret": {"expires_after": {"seconds": 600}}})),
            refused(
                "missing_required_parameter",
                "session.client_secret.expires_after.anchor"
            )
        );
        let mut s = SessionConfig::new(Dialect::Beta, "sess_1", "m", 0);
        s.apply_update(&json!({"client_secret": {"expires_after": {"anchor": "created_at"}}}))
            .unwrap();
        assert!(s.json().get("client_secret").is_none());
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
