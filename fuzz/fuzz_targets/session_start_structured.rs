//! The `SessionStart` planner on structured input: values that mostly get past protobuf decoding and
//! the cheap checks (valid-looking formats, tool names, JSON schemas, labels), so the fuzzer spends its
//! time in the planner's deeper validation rather than on bytes prost rejects.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use voice_proto::v1 as pb;
use voice_session::{Defaults, SessionPlan};

fn defaults() -> &'static Defaults {
    static D: OnceLock<Defaults> = OnceLock::new();
    D.get_or_init(Defaults::default)
}

#[derive(Arbitrary, Debug)]
struct Format {
    codec: u8,
    rate: u32,
    channels: u8,
    frame_ms: u8,
}

impl Format {
    fn to_pb(&self) -> pb::AudioFormat {
        const RATES: [u32; 10] = [
            0, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000,
        ];
        let sample_rate_hz = if self.rate & 0x8000_0000 == 0 {
            RATES[self.rate as usize % RATES.len()]
        } else {
            self.rate & 0x7fff_ffff
        };
        pb::AudioFormat {
            codec: i32::from(self.codec % 6), // one past the last codec too
            sample_rate_hz,
            channels: u32::from(self.channels % 4),
            frame_ms: u32::from(self.frame_ms),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Schema {
    Raw(String),
    Object(Vec<(String, u8)>),
    Empty,
}

impl Schema {
    fn text(&self) -> String {
        match self {
            Schema::Raw(s) => s.clone(),
            Schema::Empty => String::new(),
            Schema::Object(props) => {
                const TYPES: [&str; 6] =
                    ["string", "number", "integer", "boolean", "object", "nope"];
                let props: serde_json::Map<String, serde_json::Value> = props
                    .iter()
                    .map(|(k, t)| {
                        (
                            k.clone(),
                            serde_json::json!({"type": TYPES[usize::from(*t) % TYPES.len()]}),
                        )
                    })
                    .collect();
                serde_json::json!({"type": "object", "properties": props}).to_string()
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Tool {
    name: String,
    description: String,
    schema: Schema,
    timeout_ms: u32,
    redact: bool,
}

#[derive(Arbitrary, Debug)]
struct Start {
    input: Option<Format>,
    output: Option<Format>,
    instructions: String,
    voice: String,
    tools: Vec<Tool>,
    tool_choice: String,
    labels: Vec<(String, String)>,
    model: String,
    dialect: u8,
    listen_only: bool,
    default_tool_timeout_ms: u32,
    budget_usd: f64,
    end_on_budget: bool,
    parallel_tool_calls: Option<bool>,
    speed: Option<f32>,
    quiet_mode: bool,
    preamble: Option<(u8, String)>,
    silence_guard: Option<(u8, u32, Vec<u8>)>,
    callback: Option<Result<String, bool>>,
    kind: u8,
    shadow: Option<(String, String, String, Vec<String>, bool)>,
    memory: String,
    target_language: String,
}

fuzz_target!(|s: Start| {
    let start = pb::SessionStart {
        input_format: s.input.as_ref().map(Format::to_pb),
        output_format: s.output.as_ref().map(Format::to_pb),
        instructions: s.instructions,
        voice: s.voice,
        tools: s
            .tools
            .iter()
            .map(|t| pb::ToolDefinition {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters_json_schema: t.schema.text(),
                timeout_ms: t.timeout_ms,
                redact_in_records: t.redact,
            })
            .collect(),
        tool_choice: s.tool_choice,
        labels: s.labels.into_iter().collect::<HashMap<_, _>>(),
        model: s.model,
        dialect: i32::from(s.dialect % 4),
        listen_only: s.listen_only,
        default_tool_timeout_ms: s.default_tool_timeout_ms,
        budget_usd: s.budget_usd,
        end_on_budget: s.end_on_budget,
        parallel_tool_calls: s.parallel_tool_calls,
        speed: s.speed,
        quiet_mode: s.quiet_mode,
        preamble: s.preamble.map(|(mode, custom_text)| pb::Preamble {
            mode: i32::from(mode % 4),
            custom_text,
        }),
        silence_guard: s
            .silence_guard
            .map(|(action, threshold_ms, earcon)| pb::SilenceGuard {
                action: i32::from(action % 4),
                threshold_ms,
                earcon,
            }),
        tool_routing: s.callback.map(|r| pb::ToolRouting {
            route: Some(match r {
                Ok(addr) => pb::tool_routing::Route::CallbackAddress(addr),
                Err(b) => pb::tool_routing::Route::InStream(b),
            }),
        }),
        kind: i32::from(s.kind % 5), // one past the last kind too
        shadow_transcription: s.shadow.map(|(model, language, delay, keywords, include_logprobs)| {
            pb::Transcription {
                model,
                language,
                delay,
                keywords,
                include_logprobs,
                ..Default::default()
            }
        }),
        memory: s.memory,
        target_language: s.target_language,
        ..Default::default()
    };
    let _ = SessionPlan::from_start(&start, defaults());
});
