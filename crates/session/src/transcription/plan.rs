//! The transcription leg's settings, validated from `SessionStart` like every other field (a bad
//! value is `INVALID_ARGUMENT` naming `shadow_transcription.<field>`), and the `session.update` that
//! configures the leg upstream.

use serde_json::{json, Value};
use voice_audio::WireFormat;
use voice_proto::v1 as pb;
use voice_realtime::models::{self, Pricing};
use voice_realtime::{Dialect, Transcription};

use crate::plan::{wire_audio, SessionKind as Kind, StartError};
use crate::session_fields::{self, FieldError};

/// What the leg is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct LegPlan {
    /// Model, language, delay and keywords of the `transcription` object.
    pub transcription: Transcription,
    /// Token logprobs on each final transcript (`include`).
    pub logprobs: bool,
    /// USD per minute of audio, from the model table (unknown models: not costed).
    pub price_per_minute: Option<f64>,
}

impl LegPlan {
    /// The leg of this start, if it has one: always for a `TRANSCRIPTION` session, with
    /// `shadow_transcription` for a conversation.
    pub fn from_start(
        start: &pb::SessionStart,
        kind: &Kind,
        dialect: Dialect,
    ) -> Result<Option<LegPlan>, StartError> {
        let given = start.shadow_transcription.as_ref();
        if *kind == Kind::Conversation && given.is_none() {
            return Ok(None);
        }
        let field = |f: &str, reason: String| {
            StartError::Field(FieldError {
                field: f.to_string(),
                reason,
            })
        };
        if dialect != Dialect::Ga {
            return Err(match kind {
                Kind::Transcription => field(
                    "kind",
                    "a TRANSCRIPTION session needs the GA dialect (beta has no transcription sessions here)".into(),
                ),
                Kind::Conversation | Kind::Translation(_) => field(
                    "shadow_transcription",
                    "the transcription leg needs the GA dialect".into(),
                ),
            });
        }
        if *kind == Kind::Transcription && !start.tools.is_empty() {
            return Err(StartError::Tool(
                "a TRANSCRIPTION session has no model to call tools".into(),
            ));
        }
        let t = given.cloned().unwrap_or_default();
        if t.disabled {
            return Err(field(
                "shadow_transcription.disabled",
                "must be false (leave shadow_transcription unset for no leg)".into(),
            ));
        }
        // The same rules as the conversation's own transcription, under this field's name.
        let (transcription, logprobs) =
            session_fields::transcription(Some(&t), dialect).map_err(|e| {
                StartError::Field(FieldError {
                    field: e.field.replacen("transcription", "shadow_transcription", 1),
                    reason: e.reason,
                })
            })?;
        let transcription = transcription.expect("not disabled");
        let price_per_minute = models::lookup(&transcription.model).and_then(|m| match m.pricing {
            Pricing::PerMinute(p) => Some(p),
            Pricing::Tokens(_) => None,
        });
        Ok(Some(LegPlan {
            transcription,
            logprobs,
            price_per_minute,
        }))
    }

    /// The `session` of the leg's `session.update` (`RealtimeTranscriptionSessionCreateRequest`):
    /// 24 kHz PCM16, the only format a transcription session takes (a G.711 call's wire audio is
    /// converted for it); no turn detection — the sidecar commits each segment itself.
    pub fn session(&self) -> Value {
        let mut s = json!({
            "type": "transcription",
            "audio": {"input": {
                "format": wire_audio(WireFormat::Pcm16_24k).ga_json(),
                "transcription": self.transcription.to_json(),
                "turn_detection": null,
            }},
        });
        if self.logprobs {
            s["include"] = json!(["item.input_audio_transcription.logprobs"]);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(t: Option<pb::Transcription>) -> pb::SessionStart {
        pb::SessionStart {
            shadow_transcription: t,
            ..Default::default()
        }
    }

    #[test]
    fn a_conversation_has_a_leg_only_when_asked() {
        let none = LegPlan::from_start(&start(None), &Kind::Conversation, Dialect::Ga);
        assert_eq!(none.unwrap(), None);
        let leg = LegPlan::from_start(
            &start(Some(pb::Transcription::default())),
            &Kind::Conversation,
            Dialect::Ga,
        )
        .unwrap()
        .unwrap();
        assert_eq!(leg.transcription.model, "gpt-realtime-whisper");
        assert!(leg.price_per_minute.is_some_and(|p| p > 0.0));
        let s = leg.session();
        assert_eq!(s["type"], "transcription");
        assert_eq!(s["audio"]["input"]["format"]["type"], "audio/pcm");
        assert!(s["audio"]["input"]["turn_detection"].is_null());
        assert!(s.get("include").is_none());
    }

    #[test]
    fn a_transcription_session_always_has_one_with_its_options() {
        let t = pb::Transcription {
            language: "de".into(),
            delay: "low".into(),
            include_logprobs: true,
            ..Default::default()
        };
        let leg = LegPlan::from_start(&start(Some(t)), &Kind::Transcription, Dialect::Ga)
            .unwrap()
            .unwrap();
        let s = leg.session();
        assert_eq!(
            s["audio"]["input"]["format"],
            json!({"type": "audio/pcm", "rate": 24000})
        );
        assert_eq!(
            s["audio"]["input"]["transcription"],
            json!({"model": "gpt-realtime-whisper", "language": "de", "delay": "low"})
        );
        assert_eq!(
            s["include"],
            json!(["item.input_audio_transcription.logprobs"])
        );
        let bare = LegPlan::from_start(&start(None), &Kind::Transcription, Dialect::Ga);
        assert!(bare.unwrap().is_some());
    }

    #[test]
    fn bad_options_name_the_shadow_field() {
        let refused = |t: pb::Transcription, kind: Kind, dialect: Dialect| {
            LegPlan::from_start(&start(Some(t)), &kind, dialect)
                .unwrap_err()
                .to_string()
        };
        let e = refused(
            pb::Transcription {
                delay: "fast".into(),
                ..Default::default()
            },
            Kind::Conversation,
            Dialect::Ga,
        );
        assert!(e.contains("shadow_transcription.delay"), "{e}");
        let e = refused(
            pb::Transcription {
                language: "english".into(),
                ..Default::default()
            },
            Kind::Conversation,
            Dialect::Ga,
        );
        assert!(e.contains("shadow_transcription.language"), "{e}");
        let e = refused(
            pb::Transcription {
                disabled: true,
                ..Default::default()
            },
            Kind::Conversation,
            Dialect::Ga,
        );
        assert!(e.contains("shadow_transcription.disabled"), "{e}");
        let e = refused(
            pb::Transcription {
                model: "gpt-realtime-2".into(),
                ..Default::default()
            },
            Kind::Conversation,
            Dialect::Ga,
        );
        assert!(e.contains("not a transcription model"), "{e}");
        let e = refused(
            pb::Transcription::default(),
            Kind::Conversation,
            Dialect::Beta,
        );
        assert!(e.contains("GA dialect"), "{e}");
        let e = refused(
            pb::Transcription::default(),
            Kind::Transcription,
            Dialect::Beta,
        );
        assert!(e.starts_with("kind"), "{e}");
    }
}
