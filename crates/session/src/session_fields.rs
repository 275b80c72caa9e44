//! The GA session's newer fields — reasoning, parallel tool calls, truncation, tracing, reusable
//! prompts, noise reduction, output speed, transcription delay/keywords/logprobs — checked against the
//! model table and the dialect before anything is sent upstream. A field the model or the dialect
//! does not take, or a value out of range, is an error naming the field: at start the host gets
//! INVALID_ARGUMENT, mid-session a typed `Error` and the session goes on unchanged.

use serde_json::{json, Map, Value};
use voice_proto::v1 as pb;
use voice_realtime::models::{Kind, ModelInfo};
use voice_realtime::session_config::NoiseReduction;
use voice_realtime::{Dialect, SessionConfig, Transcription};

/// What a field check found wrong: `field` is the `SessionStart`/`SessionUpdate` field path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn err(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The model a session runs on, and what it can do.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    pub info: &'static ModelInfo,
    /// False when `info` is assumed (a model name not in the table).
    pub known: bool,
}

fn ga_only(dialect: Dialect, field: &str) -> Result<(), FieldError> {
    match dialect {
        Dialect::Ga => Ok(()),
        Dialect::Beta => Err(err(
            field,
            "not available in the beta dialect (use the GA dialect)",
        )),
    }
}

fn needs_reasoning(m: Model, field: &str) -> Result<(), FieldError> {
    if m.info.reasoning {
        Ok(())
    } else {
        Err(err(
            field,
            format!(
                "{} is not a reasoning model; only reasoning models (gpt-realtime-2, gpt-realtime-2.1, \
                 gpt-realtime-2.1-mini) take it",
                m.info.id
            ),
        ))
    }
}

pub fn effort(e: i32, field: &str) -> Result<Option<&'static str>, FieldError> {
    match pb::ReasoningEffort::try_from(e) {
        Ok(pb::ReasoningEffort::Unspecified) => Ok(None),
        Ok(pb::ReasoningEffort::Minimal) => Ok(Some("minimal")),
        Ok(pb::ReasoningEffort::Low) => Ok(Some("low")),
        Ok(pb::ReasoningEffort::Medium) => Ok(Some("medium")),
        Ok(pb::ReasoningEffort::High) => Ok(Some("high")),
        Ok(pb::ReasoningEffort::Xhigh) => Ok(Some("xhigh")),
        Err(_) => Err(err(field, format!("unknown reasoning effort {e}"))),
    }
}

fn reasoning(
    r: Option<&pb::Reasoning>,
    m: Model,
    dialect: Dialect,
    field: &str,
) -> Result<Option<&'static str>, FieldError> {
    let Some(r) = r else { return Ok(None) };
    let Some(e) = effort(r.effort, &format!("{field}.effort"))? else {
        return Ok(None);
    };
    ga_only(dialect, field)?;
    needs_reasoning(m, field)?;
    Ok(Some(e))
}

fn parallel(
    p: Option<bool>,
    m: Model,
    dialect: Dialect,
    field: &str,
) -> Result<Option<bool>, FieldError> {
    let Some(p) = p else { return Ok(None) };
    ga_only(dialect, field)?;
    needs_reasoning(m, field)?;
    Ok(Some(p))
}

fn truncation(t: Option<&pb::Truncation>, dialect: Dialect) -> Result<Option<Value>, FieldError> {
    let Some(mode) = t.and_then(|t| t.mode.as_ref()) else {
        return Ok(None);
    };
    ga_only(dialect, "truncation")?;
    Ok(Some(match mode {
        pb::truncation::Mode::Auto(_) => json!("auto"),
        pb::truncation::Mode::Disabled(_) => json!("disabled"),
        pb::truncation::Mode::RetentionRatio(r) => {
            if !(r.ratio.is_finite() && r.ratio > 0.0 && r.ratio <= 1.0) {
                return Err(err(
                    "truncation.retention_ratio.ratio",
                    format!("must be within (0, 1], got {}", r.ratio),
                ));
            }
            let mut v = json!({"type": "retention_ratio",
                "retention_ratio": (f64::from(r.ratio) * 1000.0).round() / 1000.0});
            if let Some(n) = r.post_instructions_tokens {
                if n == 0 {
                    return Err(err(
                        "truncation.retention_ratio.post_instructions_tokens",
                        "must be at least 1",
                    ));
                }
                v["token_limits"] = json!({"post_instructions": n});
            }
            v
        }
    }))
}

fn tracing(t: Option<&pb::Tracing>) -> Result<Option<Value>, FieldError> {
    let Some(mode) = t.and_then(|t| t.mode.as_ref()) else {
        return Ok(None);
    };
    Ok(Some(match mode {
        pb::tracing::Mode::Auto(_) => json!("auto"),
        pb::tracing::Mode::Config(c) => {
            let mut o = Map::new();
            if !c.workflow_name.is_empty() {
                o.insert("workflow_name".into(), json!(c.workflow_name));
            }
            if !c.group_id.is_empty() {
                o.insert("group_id".into(), json!(c.group_id));
            }
            if !c.metadata.is_empty() {
                o.insert("metadata".into(), json!(c.metadata));
            }
            if o.is_empty() {
                return Err(err(
                    "tracing.config",
                    "name a workflow_name, group_id or metadata (or use tracing.auto)",
                ));
            }
            Value::Object(o)
        }
    }))
}

fn prompt(p: Option<&pb::Prompt>, dialect: Dialect) -> Result<Option<Value>, FieldError> {
    let Some(p) = p else { return Ok(None) };
    ga_only(dialect, "prompt")?;
    if p.id.trim().is_empty() {
        return Err(err("prompt.id", "is required"));
    }
    let mut v = json!({"id": p.id});
    if !p.version.is_empty() {
        v["version"] = json!(p.version);
    }
    if !p.variables.is_empty() {
        v["variables"] = json!(p.variables);
    }
    Ok(Some(v))
}

fn noise(
    n: Option<&pb::NoiseReduction>,
    dialect: Dialect,
) -> Result<Option<NoiseReduction>, FieldError> {
    let Some(n) = n else { return Ok(None) };
    let kind = match pb::noise_reduction::Type::try_from(n.r#type) {
        Ok(pb::noise_reduction::Type::Unspecified) => {
            if n.strength.is_some() {
                return Err(err(
                    "noise_reduction.strength",
                    "needs noise_reduction.type",
                ));
            }
            return Ok(None);
        }
        Ok(pb::noise_reduction::Type::NearField) => "near_field",
        Ok(pb::noise_reduction::Type::FarField) => "far_field",
        Err(_) => {
            return Err(err(
                "noise_reduction.type",
                format!("unknown type {}", n.r#type),
            ))
        }
    };
    if let Some(s) = n.strength {
        ga_only(dialect, "noise_reduction.strength")?;
        if !(s.is_finite() && (0.0..=1.0).contains(&s)) {
            return Err(err(
                "noise_reduction.strength",
                format!("must be within 0–1, got {s}"),
            ));
        }
    }
    Ok(Some(NoiseReduction {
        kind: kind.into(),
        strength: n.strength,
    }))
}

fn speed(s: Option<f32>) -> Result<Option<f32>, FieldError> {
    match s {
        Some(x) if !(x.is_finite() && (0.25..=1.5).contains(&x)) => {
            Err(err("speed", format!("must be within 0.25–1.5, got {x}")))
        }
        other => Ok(other),
    }
}

/// The user-speech transcription of a session: the host's choice or the dialect's default, with
/// its options checked against the transcription model's row.
pub fn transcription(
    t: Option<&pb::Transcription>,
    dialect: Dialect,
) -> Result<(Option<Transcription>, bool), FieldError> {
    let default_model = match dialect {
        Dialect::Ga => voice_realtime::models::DEFAULT_TRANSCRIPTION_GA,
        Dialect::Beta => voice_realtime::models::DEFAULT_TRANSCRIPTION_BETA,
    };
    let Some(t) = t else {
        return Ok((Some(Transcription::model(default_model)), false));
    };
    if t.disabled {
        if t.include_logprobs {
            return Err(err(
                "transcription.include_logprobs",
                "needs transcription on (disabled is set)",
            ));
        }
        return Ok((None, false));
    }
    let model = if t.model.is_empty() {
        default_model.to_string()
    } else {
        t.model.clone()
    };
    let row = voice_realtime::models::lookup(&model);
    if let Some(r) = row {
        if r.kind != Kind::Transcription {
            return Err(err(
                "transcription.model",
                format!("{model} is not a transcription model"),
            ));
        }
    }
    let opts = row.map(|r| r.transcription);
    let delay = match t.delay.as_str() {
        "" => None,
        d @ ("minimal" | "low" | "medium" | "high" | "xhigh") => {
            ga_only(dialect, "transcription.delay")?;
            if opts.is_some_and(|o| !o.delay) {
                return Err(err(
                    "transcription.delay",
                    format!("{model} does not take delay (gpt-realtime-whisper does)"),
                ));
            }
            Some(d.to_string())
        }
        d => {
            return Err(err(
                "transcription.delay",
                format!("{d:?} is not one of minimal, low, medium, high, xhigh"),
            ))
        }
    };
    if !t.keywords.is_empty() {
        ga_only(dialect, "transcription.keywords")?;
        if opts.is_some_and(|o| !o.keywords) {
            return Err(err(
                "transcription.keywords",
                format!(
                    "{model} does not take keywords (gpt-transcribe and gpt-live-transcribe do)"
                ),
            ));
        }
        if let Some(k) = t.keywords.iter().find(|k| k.trim().is_empty()) {
            return Err(err(
                "transcription.keywords",
                format!("empty keyword {k:?}"),
            ));
        }
    }
    if t.include_logprobs {
        ga_only(dialect, "transcription.include_logprobs")?;
    }
    let iso639_1 = t.language.len() == 2 && t.language.bytes().all(|b| b.is_ascii_lowercase());
    if !t.language.is_empty() && !iso639_1 {
        return Err(err(
            "transcription.language",
            format!(
                "{:?} is not an ISO-639-1 code (two lowercase letters)",
                t.language
            ),
        ));
    }
    Ok((
        Some(Transcription {
            model,
            language: (!t.language.is_empty()).then(|| t.language.clone()),
            delay,
            keywords: t.keywords.clone(),
        }),
        t.include_logprobs,
    ))
}

/// Applies the `SessionStart` fields to `config`.
pub fn from_start(
    start: &pb::SessionStart,
    m: Model,
    dialect: Dialect,
    config: &mut SessionConfig,
) -> Result<(), FieldError> {
    config.reasoning_effort =
        reasoning(start.reasoning.as_ref(), m, dialect, "reasoning")?.map(str::to_string);
    config.parallel_tool_calls =
        parallel(start.parallel_tool_calls, m, dialect, "parallel_tool_calls")?;
    config.truncation = truncation(start.truncation.as_ref(), dialect)?;
    config.tracing = tracing(start.tracing.as_ref())?;
    config.prompt = prompt(start.prompt.as_ref(), dialect)?;
    config.noise_reduction = noise(start.noise_reduction.as_ref(), dialect)?;
    config.speed = speed(start.speed)?;
    Ok(())
}

/// Applies a `Control.update_session` to a copy of `config`: all of it, or (on an error) none of it.
pub fn apply_update(
    u: &pb::SessionUpdate,
    m: Model,
    dialect: Dialect,
    config: &SessionConfig,
) -> Result<SessionConfig, FieldError> {
    let mut c = config.clone();
    if let Some(e) = reasoning(u.reasoning.as_ref(), m, dialect, "update_session.reasoning")? {
        c.reasoning_effort = Some(e.to_string());
    }
    if let Some(p) = parallel(
        u.parallel_tool_calls,
        m,
        dialect,
        "update_session.parallel_tool_calls",
    )? {
        c.parallel_tool_calls = Some(p);
    }
    if let Some(t) =
        truncation(u.truncation.as_ref(), dialect).map_err(|e| prefixed(e, "update_session"))?
    {
        c.truncation = Some(t);
    }
    if let Some(p) =
        prompt(u.prompt.as_ref(), dialect).map_err(|e| prefixed(e, "update_session"))?
    {
        c.prompt = Some(p);
    }
    if u.noise_reduction.is_some() {
        c.noise_reduction = noise(u.noise_reduction.as_ref(), dialect)
            .map_err(|e| prefixed(e, "update_session"))?;
    }
    if let Some(s) = speed(u.speed).map_err(|e| prefixed(e, "update_session"))? {
        c.speed = Some(s);
    }
    Ok(c)
}

fn prefixed(mut e: FieldError, prefix: &str) -> FieldError {
    e.field = format!("{prefix}.{}", e.field);
    e
}

/// The per-response overrides of a `Control.respond`, as `response.create.response` fields.
pub fn response_overrides(
    r: &pb::Respond,
    m: Model,
    dialect: Dialect,
) -> Result<Value, FieldError> {
    let mut o = Map::new();
    if let Some(e) = reasoning(r.reasoning.as_ref(), m, dialect, "respond.reasoning")? {
        o.insert("reasoning".into(), json!({"effort": e}));
    }
    if let Some(p) = parallel(
        r.parallel_tool_calls,
        m,
        dialect,
        "respond.parallel_tool_calls",
    )? {
        o.insert("parallel_tool_calls".into(), json!(p));
    }
    if !r.instructions.trim().is_empty() {
        o.insert("instructions".into(), json!(r.instructions));
    }
    Ok(Value::Object(o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use voice_realtime::models::lookup;

    fn model(id: &str) -> Model {
        Model {
            info: lookup(id).unwrap(),
            known: true,
        }
    }

    fn start() -> pb::SessionStart {
        pb::SessionStart::default()
    }

    fn apply(s: &pb::SessionStart, m: &str, d: Dialect) -> Result<SessionConfig, FieldError> {
        let mut c = SessionConfig::default();
        from_start(s, model(m), d, &mut c)?;
        Ok(c)
    }

    #[test]
    fn reasoning_fields_need_a_reasoning_model_and_ga() {
        let mut s = start();
        s.reasoning = Some(pb::Reasoning {
            effort: pb::ReasoningEffort::High as i32,
        });
        s.parallel_tool_calls = Some(true);
        let c = apply(&s, "gpt-realtime-2", Dialect::Ga).unwrap();
        assert_eq!(c.reasoning_effort.as_deref(), Some("high"));
        assert_eq!(c.parallel_tool_calls, Some(true));
        let j = c.to_json(Dialect::Ga);
        assert_eq!(j["reasoning"]["effort"], "high");
        assert_eq!(j["parallel_tool_calls"], true);
        let e = apply(&s, "gpt-realtime", Dialect::Ga).unwrap_err();
        assert_eq!(e.field, "reasoning");
        assert!(e.reason.contains("not a reasoning model"), "{e}");
        let e = apply(&s, "gpt-realtime-2", Dialect::Beta).unwrap_err();
        assert!(e.reason.contains("beta"), "{e}");
        s.reasoning = Some(pb::Reasoning { effort: 42 });
        assert_eq!(
            apply(&s, "gpt-realtime-2", Dialect::Ga).unwrap_err().field,
            "reasoning.effort"
        );
    }

    #[test]
    fn truncation_tracing_prompt_noise_speed() {
        let mut s = start();
        s.truncation = Some(pb::Truncation {
            mode: Some(pb::truncation::Mode::RetentionRatio(pb::RetentionRatio {
                ratio: 0.8,
                post_instructions_tokens: Some(8000),
            })),
        });
        s.tracing = Some(pb::Tracing {
            mode: Some(pb::tracing::Mode::Config(pb::TracingConfig {
                workflow_name: "support".into(),
                ..Default::default()
            })),
        });
        s.prompt = Some(pb::Prompt {
            id: "pmpt_1".into(),
            version: "3".into(),
            variables: [("city".to_string(), "Oslo".to_string())].into(),
        });
        s.noise_reduction = Some(pb::NoiseReduction {
            r#type: pb::noise_reduction::Type::FarField as i32,
            strength: Some(0.5),
        });
        s.speed = Some(1.2);
        let j = apply(&s, "gpt-realtime-2", Dialect::Ga)
            .unwrap()
            .to_json(Dialect::Ga);
        assert_eq!(j["truncation"]["retention_ratio"], 0.8);
        assert_eq!(j["truncation"]["token_limits"]["post_instructions"], 8000);
        assert_eq!(j["tracing"]["workflow_name"], "support");
        assert_eq!(j["prompt"]["variables"]["city"], "Oslo");
        assert_eq!(j["audio"]["input"]["noise_reduction"]["type"], "far_field");
        assert_eq!(j["audio"]["input"]["noise_reduction"]["strength"], 0.5);
        assert_eq!(j["audio"]["output"]["speed"], 1.2);
        // Refusals name their field.
        let bad = |f: &dyn Fn(&mut pb::SessionStart), d: Dialect| {
            let mut s2 = s.clone();
            f(&mut s2);
            apply(&s2, "gpt-realtime-2", d).unwrap_err().field
        };
        assert_eq!(bad(&|s| s.speed = Some(2.0), Dialect::Ga), "speed");
        assert_eq!(
            bad(
                &|s| s.noise_reduction.as_mut().unwrap().strength = Some(1.5),
                Dialect::Ga
            ),
            "noise_reduction.strength"
        );
        assert_eq!(
            bad(&|s| s.prompt.as_mut().unwrap().id.clear(), Dialect::Ga),
            "prompt.id"
        );
        assert_eq!(bad(&|_| {}, Dialect::Beta), "truncation");
        assert_eq!(
            bad(
                &|s| {
                    s.truncation = Some(pb::Truncation {
                        mode: Some(pb::truncation::Mode::RetentionRatio(pb::RetentionRatio {
                            ratio: 0.0,
                            post_instructions_tokens: None,
                        })),
                    });
                },
                Dialect::Ga
            ),
            "truncation.retention_ratio.ratio"
        );
        // Beta keeps what it has: speed, tracing, noise reduction type.
        let mut b = start();
        b.speed = Some(0.5);
        b.tracing = s.tracing.clone();
        b.noise_reduction = Some(pb::NoiseReduction {
            r#type: pb::noise_reduction::Type::NearField as i32,
            strength: None,
        });
        let j = apply(&b, "gpt-realtime", Dialect::Beta)
            .unwrap()
            .to_json(Dialect::Beta);
        assert_eq!(j["speed"], 0.5);
        assert_eq!(j["input_audio_noise_reduction"]["type"], "near_field");
        assert_eq!(j["tracing"]["workflow_name"], "support");
    }

    #[test]
    fn transcription_defaults_and_options_follow_the_model_table() {
        let (t, logprobs) = transcription(None, Dialect::Ga).unwrap();
        assert_eq!(t.unwrap().model, "gpt-realtime-whisper");
        assert!(!logprobs);
        assert_eq!(
            transcription(None, Dialect::Beta).unwrap().0.unwrap().model,
            "gpt-4o-transcribe"
        );
        let t = pb::Transcription {
            delay: "low".into(),
            include_logprobs: true,
            language: "en".into(),
            ..Default::default()
        };
        let (t2, logprobs) = transcription(Some(&t), Dialect::Ga).unwrap();
        assert_eq!(t2.unwrap().delay.as_deref(), Some("low"));
        assert!(logprobs);
        let with = |f: &dyn Fn(&mut pb::Transcription)| {
            let mut t = t.clone();
            f(&mut t);
            transcription(Some(&t), Dialect::Ga)
                .map(|_| ())
                .unwrap_err()
                .field
        };
        assert_eq!(
            with(&|t| t.model = "whisper-1".into()),
            "transcription.delay"
        );
        assert_eq!(with(&|t| t.delay = "fast".into()), "transcription.delay");
        assert_eq!(
            with(&|t| t.keywords = vec!["Acme".into()]),
            "transcription.keywords"
        );
        assert_eq!(
            with(&|t| t.language = "English".into()),
            "transcription.language"
        );
        assert_eq!(
            with(&|t| t.model = "gpt-realtime-2".into()),
            "transcription.model"
        );
        assert_eq!(
            transcription(Some(&t), Dialect::Beta).unwrap_err().field,
            "transcription.delay"
        );
        let kw = pb::Transcription {
            model: "gpt-transcribe".into(),
            keywords: vec!["Acme".into()],
            ..Default::default()
        };
        let (t3, _) = transcription(Some(&kw), Dialect::Ga).unwrap();
        assert_eq!(t3.unwrap().keywords, ["Acme"]);
    }

    #[test]
    fn updates_apply_all_or_nothing_and_responses_take_overrides() {
        let c = SessionConfig::default();
        let u = pb::SessionUpdate {
            speed: Some(1.1),
            reasoning: Some(pb::Reasoning {
                effort: pb::ReasoningEffort::Minimal as i32,
            }),
            ..Default::default()
        };
        let c2 = apply_update(&u, model("gpt-realtime-2"), Dialect::Ga, &c).unwrap();
        assert_eq!(c2.speed, Some(1.1));
        assert_eq!(c2.reasoning_effort.as_deref(), Some("minimal"));
        let e = apply_update(&u, model("gpt-realtime-mini"), Dialect::Ga, &c).unwrap_err();
        assert_eq!(e.field, "update_session.reasoning");
        let r = response_overrides(
            &pb::Respond {
                reasoning: Some(pb::Reasoning {
                    effort: pb::ReasoningEffort::Xhigh as i32,
                }),
                parallel_tool_calls: Some(false),
                ..Default::default()
            },
            model("gpt-realtime-2.1"),
            Dialect::Ga,
        )
        .unwrap();
        assert_eq!(r["reasoning"]["effort"], "xhigh");
        assert_eq!(r["parallel_tool_calls"], false);
    }
}
