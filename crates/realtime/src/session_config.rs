//! The session configuration the sidecar sends in `session.update`, rendered in either dialect's shape.
//!
//! Beta sessions are flat (`input_audio_format`, `turn_detection`, ...); GA sessions nest audio settings
//! under `audio.input` / `audio.output` and require `type: "realtime"`. Building both from one struct
//! keeps the two from drifting apart.

use crate::{Dialect, WireAudioFormat};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq, Default)]
pub enum TurnDetection {
    /// Server VAD with the model's defaults.
    #[default]
    ServerVadDefault,
    ServerVad {
        threshold: Option<f32>,
        prefix_padding_ms: Option<u32>,
        silence_duration_ms: Option<u32>,
        create_response: Option<bool>,
        interrupt_response: Option<bool>,
        idle_timeout_ms: Option<u32>,
    },
    SemanticVad {
        eagerness: Option<String>,
        create_response: Option<bool>,
        interrupt_response: Option<bool>,
    },
    /// Manual turns (`turn_detection: null`).
    Disabled,
}

impl TurnDetection {
    /// Renders the object; `create_response_override` forces `create_response` (listen-only mode).
    pub fn to_json(&self, create_response_override: Option<bool>) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        match self {
            TurnDetection::Disabled => return Value::Null,
            TurnDetection::ServerVadDefault => {
                put("type", Some(json!("server_vad")));
                put("create_response", create_response_override.map(Value::from));
            }
            TurnDetection::ServerVad {
                threshold,
                prefix_padding_ms,
                silence_duration_ms,
                create_response,
                interrupt_response,
                idle_timeout_ms,
            } => {
                put("type", Some(json!("server_vad")));
                put(
                    "threshold",
                    threshold.map(|t| json!((f64::from(t) * 1000.0).round() / 1000.0)),
                );
                put("prefix_padding_ms", prefix_padding_ms.map(Value::from));
                put("silence_duration_ms", silence_duration_ms.map(Value::from));
                put(
                    "create_response",
                    create_response_override
                        .or(*create_response)
                        .map(Value::from),
                );
                put("interrupt_response", interrupt_response.map(Value::from));
                put("idle_timeout_ms", idle_timeout_ms.map(Value::from));
            }
            TurnDetection::SemanticVad {
                eagerness,
                create_response,
                interrupt_response,
            } => {
                put("type", Some(json!("semantic_vad")));
                put("eagerness", eagerness.clone().map(Value::from));
                put(
                    "create_response",
                    create_response_override
                        .or(*create_response)
                        .map(Value::from),
                );
                put("interrupt_response", interrupt_response.map(Value::from));
            }
        }
        Value::Object(m)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transcription {
    pub model: String,
    pub language: Option<String>,
    /// `minimal..xhigh` (GA, `gpt-realtime-whisper` only).
    pub delay: Option<String>,
    /// Vocabulary hints (GA, `gpt-transcribe` / `gpt-live-transcribe`).
    pub keywords: Vec<String>,
}

impl Transcription {
    /// A transcription with only a model.
    pub fn model(model: impl Into<String>) -> Self {
        Transcription {
            model: model.into(),
            ..Default::default()
        }
    }

    /// The `transcription` object of a session (conversation or transcription session).
    pub fn to_json(&self) -> Value {
        let mut v = json!({"model": self.model});
        if let Some(l) = &self.language {
            v["language"] = json!(l);
        }
        if let Some(d) = &self.delay {
            v["delay"] = json!(d);
        }
        if !self.keywords.is_empty() {
            v["keywords"] = json!(self.keywords);
        }
        v
    }
}

/// `noise_reduction` of the input audio.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseReduction {
    /// `near_field` or `far_field`.
    pub kind: String,
    /// 0–1 (GA only).
    pub strength: Option<f32>,
}

/// A float as JSON, rounded to 3 decimals (an f32 such as 0.9 must not become 0.899999976).
fn float3(x: f32) -> Value {
    json!((f64::from(x) * 1000.0).round() / 1000.0)
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionConfig {
    pub instructions: String,
    pub voice: Option<String>,
    pub input_format: WireAudioFormat,
    pub output_format: WireAudioFormat,
    pub turn_detection: TurnDetection,
    pub transcription: Option<Transcription>,
    pub tools: Vec<ToolSpec>,
    /// "auto", "none", "required", or a tool name.
    pub tool_choice: Option<String>,
    /// Listen-only: automatic responses off while turn detection keeps running.
    pub listen_only: bool,
    /// `reasoning.effort` (GA, reasoning models).
    pub reasoning_effort: Option<String>,
    /// GA, reasoning models.
    pub parallel_tool_calls: Option<bool>,
    /// `truncation`, already in its wire shape (GA).
    pub truncation: Option<Value>,
    /// `tracing`, already in its wire shape.
    pub tracing: Option<Value>,
    /// `prompt`, already in its wire shape (GA).
    pub prompt: Option<Value>,
    pub noise_reduction: Option<NoiseReduction>,
    /// Output speech speed, 0.25–1.5.
    pub speed: Option<f32>,
    /// `include: ["item.input_audio_transcription.logprobs"]` (GA).
    pub include_logprobs: bool,
}

impl SessionConfig {
    fn tools_json(&self) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "name": t.name, "description": t.description,
                        "parameters": t.parameters})
                })
                .collect(),
        )
    }

    fn tool_choice_json(&self) -> Option<Value> {
        self.tool_choice.as_ref().map(|c| match c.as_str() {
            "auto" | "none" | "required" => json!(c),
            name => json!({"type": "function", "name": name}),
        })
    }

    fn create_override(&self) -> Option<bool> {
        self.listen_only.then_some(false)
    }

    /// The `session` object of `session.update` in the given dialect.
    pub fn to_json(&self, dialect: Dialect) -> Value {
        let turn = self.turn_detection.to_json(self.create_override());
        match dialect {
            Dialect::Beta => {
                let mut s = json!({
                    "modalities": ["audio", "text"],
                    "instructions": self.instructions,
                    "input_audio_format": self.input_format.beta_name(),
                    "output_audio_format": self.output_format.beta_name(),
                    "turn_detection": turn,
                    "tools": self.tools_json(),
                });
                if let Some(v) = &self.voice {
                    s["voice"] = json!(v);
                }
                if let Some(t) = &self.transcription {
                    s["input_audio_transcription"] = t.to_json();
                }
                if let Some(c) = self.tool_choice_json() {
                    // Beta accepts only a string here.
                    s["tool_choice"] = match c {
                        Value::Object(_) => json!(self.tool_choice.clone().unwrap_or_default()),
                        other => other,
                    };
                }
                // The beta session has only these of the newer fields (the plan refuses the rest).
                if let Some(x) = self.speed {
                    s["speed"] = float3(x);
                }
                if let Some(t) = &self.tracing {
                    s["tracing"] = t.clone();
                }
                if let Some(n) = &self.noise_reduction {
                    s["input_audio_noise_reduction"] = json!({"type": n.kind});
                }
                s
            }
            Dialect::Ga => {
                let mut input = json!({
                    "format": self.input_format.ga_json(),
                    "turn_detection": turn,
                });
                if let Some(t) = &self.transcription {
                    input["transcription"] = t.to_json();
                }
                if let Some(n) = &self.noise_reduction {
                    input["noise_reduction"] = json!({"type": n.kind});
                    if let Some(x) = n.strength {
                        input["noise_reduction"]["strength"] = float3(x);
                    }
                }
                let mut output = json!({"format": self.output_format.ga_json()});
                if let Some(v) = &self.voice {
                    output["voice"] = json!(v);
                }
                if let Some(x) = self.speed {
                    output["speed"] = float3(x);
                }
                let mut s = json!({
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "instructions": self.instructions,
                    "audio": {"input": input, "output": output},
                    "tools": self.tools_json(),
                });
                if let Some(c) = self.tool_choice_json() {
                    s["tool_choice"] = c;
                }
                if let Some(e) = &self.reasoning_effort {
                    s["reasoning"] = json!({"effort": e});
                }
                if let Some(p) = self.parallel_tool_calls {
                    s["parallel_tool_calls"] = json!(p);
                }
                for (k, v) in [
                    ("truncation", &self.truncation),
                    ("tracing", &self.tracing),
                    ("prompt", &self.prompt),
                ] {
                    if let Some(v) = v {
                        s[k] = v.clone();
                    }
                }
                if self.include_logprobs {
                    s["include"] = json!(["item.input_audio_transcription.logprobs"]);
                }
                s
            }
        }
    }
}

/// The fields of `new` (a `session` object from [`SessionConfig::to_json`]) that differ from `old`,
/// for a `session.update` that changes only them; `None` when nothing changed. Top-level fields are
/// compared whole, except `audio` (GA), whose `input` and `output` are compared separately. `type`
/// is always kept (GA requires it). A reconnect sends the full configuration, never this.
pub fn session_update_diff(old: &Value, new: &Value) -> Option<Value> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return (old != new).then(|| new.clone());
    };
    let mut out = Map::new();
    for (k, v) in n {
        if k == "type" || o.get(k) == Some(v) {
            continue;
        }
        match (
            k.as_str(),
            o.get(k).and_then(Value::as_object),
            v.as_object(),
        ) {
            ("audio", Some(oa), Some(na)) => {
                let sub: Map<String, Value> = na
                    .iter()
                    .filter(|(sk, sv)| oa.get(*sk) != Some(*sv))
                    .map(|(sk, sv)| (sk.clone(), sv.clone()))
                    .collect();
                if !sub.is_empty() {
                    out.insert(k.clone(), Value::Object(sub));
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if out.is_empty() {
        return None;
    }
    if let Some(t) = n.get("type") {
        out.insert("type".into(), t.clone());
    }
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SessionConfig {
        SessionConfig {
            instructions: "be brief".into(),
            voice: Some("marin".into()),
            input_format: WireAudioFormat::G711Ulaw,
            output_format: WireAudioFormat::Pcm16,
            transcription: Some(Transcription::model("whisper-1")),
            tools: vec![ToolSpec {
                name: "lookup".into(),
                description: "d".into(),
                parameters: json!({"type":"object"}),
            }],
            tool_choice: Some("lookup".into()),
            ..Default::default()
        }
    }

    #[test]
    fn ga_shape_nests_audio() {
        let s = cfg().to_json(Dialect::Ga);
        assert_eq!(s["type"], "realtime");
        assert_eq!(s["audio"]["input"]["format"]["type"], "audio/pcmu");
        assert_eq!(s["audio"]["output"]["format"]["rate"], 24000);
        assert_eq!(s["audio"]["output"]["voice"], "marin");
        assert_eq!(s["audio"]["input"]["turn_detection"]["type"], "server_vad");
        assert_eq!(s["tool_choice"]["name"], "lookup");
        assert!(s.get("input_audio_format").is_none());
    }

    #[test]
    fn beta_shape_is_flat() {
        let s = cfg().to_json(Dialect::Beta);
        assert_eq!(s["input_audio_format"], "g711_ulaw");
        assert_eq!(s["output_audio_format"], "pcm16");
        assert_eq!(s["input_audio_transcription"]["model"], "whisper-1");
        assert_eq!(s["tool_choice"], "lookup");
        assert!(s.get("audio").is_none());
    }

    #[test]
    fn listen_only_turns_off_create_response() {
        let mut c = cfg();
        c.listen_only = true;
        assert_eq!(
            c.to_json(Dialect::Ga)["audio"]["input"]["turn_detection"]["create_response"],
            false
        );
        c.turn_detection = TurnDetection::Disabled;
        assert!(c.to_json(Dialect::Beta)["turn_detection"].is_null());
    }

    #[test]
    fn a_diff_carries_only_the_changed_fields() {
        let mut c = cfg();
        c.instructions = "x".repeat(100_000);
        c.turn_detection = TurnDetection::ServerVadDefault;
        for dialect in [Dialect::Ga, Dialect::Beta] {
            let old = c.to_json(dialect);
            let mut d = c.clone();
            d.listen_only = true;
            let diff = session_update_diff(&old, &d.to_json(dialect)).expect("a change");
            let text = diff.to_string();
            assert!(text.len() < 1000, "{dialect:?}: {text}");
            assert!(!text.contains("xxxx"), "instructions not resent");
            assert!(text.contains("create_response"), "{text}");
            if dialect == Dialect::Ga {
                assert_eq!(diff["type"], "realtime");
                assert!(diff["audio"].get("output").is_none(), "{text}");
            }
            assert_eq!(session_update_diff(&old, &old), None);
        }
    }
}
