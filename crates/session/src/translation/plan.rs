//! A translation or interpreter session's settings, validated from `SessionStart` (a bad value is
//! `INVALID_ARGUMENT` naming the field), and each leg's `session.update`.

use serde_json::Value;
use voice_proto::v1 as pb;
use voice_realtime::models::{self, Kind, Pricing};
use voice_realtime::translation::{TranslationClientEvent, OUTPUT_LANGUAGES};

use crate::plan::StartError;
use crate::session_fields::FieldError;

/// The translation model when `SessionStart.model` is empty.
pub const DEFAULT_MODEL: &str = "gpt-realtime-translate";
/// The model that transcribes the source speech (`translation_input_transcript`).
pub const INPUT_TRANSCRIPTION_MODEL: &str = models::DEFAULT_TRANSCRIPTION_GA;

/// One direction of translation: one upstream session.
#[derive(Debug, Clone, PartialEq)]
pub struct LegPlan {
    /// INTERPRETER: the speaker whose audio this leg hears ("a" or "b"), and whose words its output
    /// carries. TRANSLATION: `None` (the one leg hears every frame).
    pub speaker: Option<&'static str>,
    /// What the leg speaks (`audio.output.language`).
    pub target: String,
}

/// A validated translation (one leg) or interpreter (two legs) session.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslationPlan {
    pub model: String,
    pub legs: Vec<LegPlan>,
    /// Transcribe the source speech, with this model.
    pub input_transcription: Option<&'static str>,
    /// USD per minute of audio sent upstream, per leg (unknown model: not costed).
    pub price_per_minute: Option<f64>,
    /// `budget_usd` and `end_on_budget`.
    pub budget: Option<(f64, bool)>,
}

fn field(f: &str, reason: impl Into<String>) -> StartError {
    StartError::Field(FieldError {
        field: f.to_string(),
        reason: reason.into(),
    })
}

fn language(f: &str, l: &str) -> Result<String, StartError> {
    if OUTPUT_LANGUAGES.contains(&l) {
        Ok(l.to_string())
    } else {
        Err(field(
            f,
            format!(
                "{l:?} is not a translation output language (one of {})",
                OUTPUT_LANGUAGES.join(", ")
            ),
        ))
    }
}

impl TranslationPlan {
    /// The plan of a `TRANSLATION` or `INTERPRETER` start (`interpreter`: which of the two).
    pub fn from_start(
        start: &pb::SessionStart,
        interpreter: bool,
    ) -> Result<TranslationPlan, StartError> {
        let what = if interpreter {
            "an INTERPRETER"
        } else {
            "a TRANSLATION"
        };
        if !start.tools.is_empty() || start.quiet_mode {
            return Err(StartError::Tool(format!(
                "{what} session has no model to call tools"
            )));
        }
        if pb::Dialect::try_from(start.dialect) == Ok(pb::Dialect::Beta) {
            return Err(field(
                "dialect",
                format!("{what} session needs the GA dialect (beta has no translation sessions)"),
            ));
        }
        if start.shadow_transcription.is_some() {
            return Err(field(
                "shadow_transcription",
                format!("is for conversations; {what} session transcribes its source with translation_input_transcript"),
            ));
        }
        let legs = if interpreter {
            if !start.target_language.is_empty() {
                return Err(field(
                    "target_language",
                    "is for TRANSLATION sessions; an INTERPRETER session names interpreter.language_a and language_b",
                ));
            }
            let i = start.interpreter.as_ref().ok_or_else(|| {
                field(
                    "interpreter",
                    "an INTERPRETER session needs interpreter{language_a, language_b}",
                )
            })?;
            let a = language("interpreter.language_a", &i.language_a)?;
            let b = language("interpreter.language_b", &i.language_b)?;
            if a == b {
                return Err(field(
                    "interpreter.language_b",
                    format!("must differ from language_a (both are {a:?})"),
                ));
            }
            // Speaker a is heard in b's language, and the reverse.
            vec![
                LegPlan {
                    speaker: Some("a"),
                    target: b,
                },
                LegPlan {
                    speaker: Some("b"),
                    target: a,
                },
            ]
        } else {
            if start.interpreter.is_some() {
                return Err(field(
                    "interpreter",
                    "is for INTERPRETER sessions; a TRANSLATION session names target_language",
                ));
            }
            vec![LegPlan {
                speaker: None,
                target: language("target_language", &start.target_language)?,
            }]
        };
        let model = if start.model.is_empty() {
            DEFAULT_MODEL.to_string()
        } else {
            start.model.clone()
        };
        let price_per_minute = match models::lookup(&model) {
            Some(m) if m.kind != Kind::Translation => {
                return Err(StartError::Model(format!(
                    "{model} is not a translation model ({what} session needs one, e.g. {DEFAULT_MODEL})"
                )))
            }
            Some(m) => match m.pricing {
                Pricing::PerMinute(p) => Some(p),
                Pricing::Tokens(_) => None,
            },
            None => None,
        };
        let budget = match start.budget_usd {
            0.0 => None,
            b if !(b.is_finite() && b > 0.0) => {
                return Err(StartError::Other(format!(
                    "budget_usd must be a positive amount, got {b}"
                )))
            }
            _ if price_per_minute.is_none() => {
                return Err(StartError::Other(format!(
                    "budget_usd needs a per-minute price: {model} is not in the model table"
                )))
            }
            b => Some((b, start.end_on_budget)),
        };
        Ok(TranslationPlan {
            model,
            legs,
            input_transcription: start
                .translation_input_transcript
                .then_some(INPUT_TRANSCRIPTION_MODEL),
            price_per_minute,
            budget,
        })
    }

    /// The `session.update` of a leg.
    pub fn update<'a>(&'a self, leg: &'a LegPlan) -> TranslationClientEvent<'a> {
        TranslationClientEvent::SessionUpdate {
            language: &leg.target,
            input_transcription: self.input_transcription,
        }
    }

    /// What `SessionStarted.effective_session_json` shows: the `session` of the one leg's update,
    /// or (interpreter) an object of both, keyed by speaker.
    pub fn effective_session(&self) -> Value {
        let session = |leg: &LegPlan| -> Value {
            serde_json::from_str::<Value>(&self.update(leg).to_json(""))
                .map_or(Value::Null, |mut v| v["session"].take())
        };
        match self.legs.as_slice() {
            [one] if one.speaker.is_none() => session(one),
            legs => Value::Object(
                legs.iter()
                    .map(|l| (l.speaker.unwrap_or("").to_string(), session(l)))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn translation(lang: &str) -> pb::SessionStart {
        pb::SessionStart {
            kind: pb::SessionKind::Translation as i32,
            target_language: lang.into(),
            ..Default::default()
        }
    }

    fn interpreter(a: &str, b: &str) -> pb::SessionStart {
        pb::SessionStart {
            kind: pb::SessionKind::Interpreter as i32,
            interpreter: Some(pb::Interpreter {
                language_a: a.into(),
                language_b: b.into(),
            }),
            ..Default::default()
        }
    }

    fn err(s: &pb::SessionStart, interp: bool) -> String {
        TranslationPlan::from_start(s, interp)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn every_output_language_is_accepted_and_nothing_else() {
        for l in OUTPUT_LANGUAGES {
            let p = TranslationPlan::from_start(&translation(l), false).unwrap();
            assert_eq!(
                p.legs,
                vec![LegPlan {
                    speaker: None,
                    target: l.into()
                }]
            );
            assert_eq!(p.model, DEFAULT_MODEL);
            assert_eq!(p.price_per_minute, Some(0.034));
        }
        for bad in ["", "EN", "es-ES", "xx", "english", "nl"] {
            let e = err(&translation(bad), false);
            assert!(e.starts_with("target_language"), "{e}");
        }
    }

    #[test]
    fn interpreter_legs_cross_the_languages() {
        let p = TranslationPlan::from_start(&interpreter("en", "es"), true).unwrap();
        assert_eq!(
            p.legs,
            vec![
                LegPlan {
                    speaker: Some("a"),
                    target: "es".into()
                },
                LegPlan {
                    speaker: Some("b"),
                    target: "en".into()
                },
            ]
        );
        assert_eq!(
            p.effective_session(),
            json!({"a": {"audio": {"input": {"transcription": null}, "output": {"language": "es"}}},
                   "b": {"audio": {"input": {"transcription": null}, "output": {"language": "en"}}}})
        );
        assert!(err(&interpreter("en", "en"), true).contains("must differ"));
        assert!(err(&interpreter("en", "nl"), true).starts_with("interpreter.language_b"));
        assert!(err(&interpreter("", "es"), true).starts_with("interpreter.language_a"));
        let none = pb::SessionStart {
            interpreter: None,
            ..interpreter("en", "es")
        };
        assert!(err(&none, true).starts_with("interpreter"));
        let both = pb::SessionStart {
            target_language: "fr".into(),
            ..interpreter("en", "es")
        };
        assert!(err(&both, true).starts_with("target_language"));
        let wrong = pb::SessionStart {
            interpreter: Some(pb::Interpreter::default()),
            ..translation("fr")
        };
        assert!(err(&wrong, false).starts_with("interpreter"));
    }

    #[test]
    fn tools_beta_and_conversation_models_are_refused() {
        let mut s = translation("es");
        s.tools.push(pb::ToolDefinition {
            name: "t".into(),
            ..Default::default()
        });
        assert!(err(&s, false).starts_with("tools:"));
        let s = pb::SessionStart {
            dialect: pb::Dialect::Beta as i32,
            ..translation("es")
        };
        assert!(err(&s, false).starts_with("dialect"));
        let s = pb::SessionStart {
            model: "gpt-realtime-2".into(),
            ..translation("es")
        };
        assert!(err(&s, false).starts_with("model:"));
        let s = pb::SessionStart {
            model: "gpt-realtime-whisper".into(),
            ..translation("es")
        };
        assert!(err(&s, false).starts_with("model:"));
        let s = pb::SessionStart {
            budget_usd: -1.0,
            ..translation("es")
        };
        assert!(err(&s, false).contains("budget_usd"));
        let s = pb::SessionStart {
            model: "my-translator".into(),
            budget_usd: 1.0,
            ..translation("es")
        };
        assert!(err(&s, false).contains("per-minute price"));
        let s = pb::SessionStart {
            shadow_transcription: Some(pb::Transcription::default()),
            ..translation("es")
        };
        assert!(err(&s, false).starts_with("shadow_transcription"));
    }

    #[test]
    fn input_transcript_and_budget() {
        let s = pb::SessionStart {
            translation_input_transcript: true,
            budget_usd: 0.5,
            end_on_budget: true,
            ..translation("ja")
        };
        let p = TranslationPlan::from_start(&s, false).unwrap();
        assert_eq!(p.budget, Some((0.5, true)));
        assert_eq!(
            p.effective_session(),
            json!({"audio": {"input": {"transcription": {"model": INPUT_TRANSCRIPTION_MODEL}},
                "output": {"language": "ja"}}})
        );
    }
}
