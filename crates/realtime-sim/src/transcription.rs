//! Transcription sessions (`GET /v1/realtime?intent=transcription`, GA dialect only): strict
//! validation of `session.update` with `session.type: "transcription"` against the 3.57.0
//! `RealtimeTranscriptionSessionCreateRequest` (audio/pcm at 24 kHz only, noise reduction, the
//! transcription model and its model-specific options, turn detection, `include`), the
//! `gpt-realtime-whisper` rule that turn detection must be `null`, the input audio buffer
//! (`append`/`commit`/`clear`, with server or semantic VAD committing by itself for the other models),
//! and per commit `input_audio_buffer.committed` followed by transcript deltas and a `.completed`
//! (with logprobs when `include` asks for them, usage by duration or by tokens as the model bills).
//!
//! Transcript text comes from `SimConfig::user_transcripts` in order, like a conversation's committed
//! turns, then "user speech of N.N seconds". Deltas are paced one per `chunk_ms` of audio at
//! `realtime_factor`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use voice_realtime::{Dialect, WireAudioFormat};

use crate::companion::{self, next_user_text, paced, word_deltas, Companion, Wire};
use crate::error::ProtocolError;
use crate::protocol::{self, ClientEvent};
use crate::server::{SessionKind, Shared};
use crate::session::new_id;
use crate::session_config::{
    check_keys, ga_turn_detection, normalize_noise_reduction, normalize_td, validate_transcription,
    validate_turn_detection, Fields, TurnDetection,
};
use crate::vad::{InputAudio, VadEvent};

type Obj = Map<String, Value>;
type R<T = ()> = Result<T, ProtocolError>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const LOGPROBS: &str = "item.input_audio_transcription.logprobs";
const WHISPER: &str = "gpt-realtime-whisper";

/// Models billed by audio duration (`usage.type: "duration"`); the others bill tokens.
fn bills_duration(model: &str) -> bool {
    matches!(model, "whisper-1" | WHISPER)
}

pub(crate) async fn serve(
    ws: WebSocketStream<TcpStream>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let id = format!("sess_{}", uuid::Uuid::new_v4().simple());
    let (expires_unix, expires_at) = companion::expiry(&shared.config);
    let w = Wire::new(shared, id.clone(), SessionKind::Transcription, expires_at);
    companion::run(ws, w, Transcription::new(&id, expires_unix), shutdown).await;
}

struct Transcription {
    json: Obj,
    /// `audio.input.transcription.model`, when transcription is on.
    model: Option<String>,
    turn_detection: Option<TurnDetection>,
    logprobs: bool,
    input: InputAudio,
    vad_events: Vec<VadEvent>,
    /// The item id and start of the speech segment VAD is in.
    speech: Option<(String, u64)>,
    last_item: Option<String>,
    transcript_pos: usize,
    in_bytes: Vec<u8>,
}

impl Transcription {
    fn new(id: &str, expires_at: u64) -> Self {
        // The guide's example session: gpt-4o-transcribe with server VAD, noise reduction off.
        let v = json!({
            "type": "transcription", "object": "realtime.transcription_session", "id": id,
            "expires_at": expires_at,
            "audio": {"input": {
                "format": WireAudioFormat::Pcm16.ga_json(), "noise_reduction": null,
                "transcription": {"model": "gpt-4o-transcribe", "language": null, "prompt": ""},
                "turn_detection": normalize_td(&json!({"type": "server_vad"}), Dialect::Ga),
            }},
            "include": null,
        });
        let mut t = Transcription {
            json: match v {
                Value::Object(m) => m,
                _ => Obj::new(),
            },
            model: None,
            turn_detection: None,
            logprobs: false,
            input: InputAudio::default(),
            vad_events: Vec::new(),
            speech: None,
            last_item: None,
            transcript_pos: 0,
            in_bytes: Vec::new(),
        };
        t.derive();
        t
    }

    fn input_cfg(&self) -> Option<&Value> {
        self.json.get("audio").and_then(|a| a.get("input"))
    }

    fn derive(&mut self) {
        let input = self.input_cfg();
        let model = input
            .and_then(|i| i.get("transcription"))
            .filter(|t| t.is_object())
            .map(|t| {
                t.get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("gpt-4o-transcribe")
                    .to_owned()
            });
        let turn_detection = input
            .and_then(|i| i.get("turn_detection"))
            .and_then(ga_turn_detection);
        self.model = model;
        self.turn_detection = turn_detection;
        self.logprobs = self
            .json
            .get("include")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == LOGPROBS));
    }

    /// Validates a transcription `session.update` strictly, merges it and re-checks the result.
    fn apply_update(&mut self, update: &Value) -> R {
        let o = update
            .as_object()
            .ok_or_else(|| ProtocolError::invalid_type("session", "an object"))?;
        validate(o)?;
        let mut next = self.json.clone();
        if let Some(src) = o
            .get("audio")
            .and_then(|a| a.get("input"))
            .and_then(Value::as_object)
        {
            let audio = next.entry("audio").or_insert_with(|| json!({}));
            if let Some(dst) = audio
                .as_object_mut()
                .map(|a| a.entry("input").or_insert_with(|| json!({})))
                .and_then(Value::as_object_mut)
            {
                for (f, fv) in src {
                    let fv = match f.as_str() {
                        "turn_detection" => normalize_td(fv, Dialect::Ga),
                        "noise_reduction" => {
                            normalize_noise_reduction(fv, dst.get("noise_reduction"))
                        }
                        "format" => WireAudioFormat::Pcm16.ga_json(),
                        _ => fv.clone(),
                    };
                    dst.insert(f.clone(), fv);
                }
            }
        }
        if let Some(inc) = o.get("include") {
            next.insert("include".into(), inc.clone());
        }
        // The whisper model has no VAD: the session as a whole must say `turn_detection: null`.
        let input = next.get("audio").and_then(|a| a.get("input"));
        let model = input
            .and_then(|i| i.get("transcription"))
            .and_then(|t| t.get("model"))
            .and_then(Value::as_str);
        let td_on = input
            .and_then(|i| i.get("turn_detection"))
            .is_some_and(|td| !td.is_null());
        if model == Some(WHISPER) && td_on {
            return Err(ProtocolError::new(
                "invalid_value",
                "Turn detection is not supported for model 'gpt-realtime-whisper'; VAD is not supported. Set 'session.audio.input.turn_detection' to null and commit the input audio buffer yourself.",
                Some("session.audio.input.turn_detection"),
            ));
        }
        self.json = next;
        self.derive();
        Ok(())
    }

    fn on_append(&mut self, w: &mut Wire, audio: &str) -> R {
        let mut buf = std::mem::take(&mut self.in_bytes);
        buf.clear();
        if B64.decode_vec(audio, &mut buf).is_err() {
            self.in_bytes = buf;
            return Err(ProtocolError::new(
                "invalid_value",
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
                Some("audio"),
            ));
        }
        let td = self.turn_detection;
        let mut events = std::mem::take(&mut self.vad_events);
        self.input
            .feed(&buf, WireAudioFormat::Pcm16, td.map(|t| t.vad), &mut events);
        self.in_bytes = buf;
        for ev in events.drain(..) {
            match ev {
                VadEvent::Started { audio_start_ms } => {
                    let item_id = new_id("item");
                    w.emit(json!({"type": "input_audio_buffer.speech_started",
                        "audio_start_ms": audio_start_ms, "item_id": item_id}));
                    self.speech = Some((item_id, audio_start_ms));
                }
                VadEvent::Stopped { audio_end_ms } => {
                    let (item_id, start) = self
                        .speech
                        .take()
                        .unwrap_or_else(|| (new_id("item"), audio_end_ms));
                    w.emit(json!({"type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": audio_end_ms, "item_id": item_id}));
                    self.commit(w, &item_id, audio_end_ms.saturating_sub(start));
                }
            }
        }
        self.vad_events = events;
        Ok(())
    }

    fn on_commit(&mut self, w: &mut Wire) -> R {
        let ms = self.input.buffered_ms();
        if ms < 100 {
            return Err(ProtocolError::new(
                "input_audio_buffer_commit_empty",
                format!("Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, but buffer only has {ms}.00ms of audio."),
                None,
            ));
        }
        self.input.reset_buffer();
        let item_id = self.speech.take().map_or_else(|| new_id("item"), |s| s.0);
        self.commit(w, &item_id, ms);
        Ok(())
    }

    /// `committed`, then (with a transcription model) the paced deltas and the `.completed`.
    fn commit(&mut self, w: &mut Wire, item_id: &str, duration_ms: u64) {
        let previous = self.last_item.replace(item_id.to_owned());
        w.emit(
            json!({"type": "input_audio_buffer.committed", "item_id": item_id,
            "previous_item_id": previous}),
        );
        let Some(model) = self.model.clone() else {
            return;
        };
        let fallback = format!("user speech of {:.1} seconds", duration_ms as f64 / 1000.0);
        let transcript = next_user_text(w.config(), &mut self.transcript_pos, fallback);
        let gap = paced(w.config(), u64::from(w.config().chunk_ms.max(1)));
        let mut all_logprobs = Vec::new();
        for (i, d) in word_deltas(&transcript).into_iter().enumerate() {
            let mut ev = json!({"type": "conversation.item.input_audio_transcription.delta",
                "item_id": item_id, "content_index": 0, "delta": d});
            if self.logprobs {
                let lp = logprobs(&d, i);
                all_logprobs.extend(lp.iter().cloned());
                ev["logprobs"] = Value::Array(lp);
            }
            w.emit_after(ev, gap);
        }
        let audio_tokens = duration_ms / 100 + 1;
        let text_tokens = transcript.len() as u64 / 4 + 1;
        let usage = if bills_duration(&model) {
            json!({"type": "duration", "seconds": duration_ms as f64 / 1000.0})
        } else {
            json!({"type": "tokens", "input_tokens": audio_tokens, "output_tokens": text_tokens,
                "total_tokens": audio_tokens + text_tokens,
                "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0}})
        };
        let mut done = json!({"type": "conversation.item.input_audio_transcription.completed",
            "item_id": item_id, "content_index": 0, "transcript": transcript, "usage": usage});
        if self.logprobs {
            done["logprobs"] = Value::Array(all_logprobs);
        }
        w.emit_after(done, gap);
        w.shared.counters.transcriptions.fetch_add(1, Relaxed);
    }
}

/// One logprob entry per delta (a delta is one "token" here), deterministic and ≤ 0.
fn logprobs(delta: &str, i: usize) -> Vec<Value> {
    let lp = -0.01 * ((i % 7) as f64 + 1.0);
    vec![json!({"token": delta, "bytes": delta.as_bytes(), "logprob": lp})]
}

/// `session.update.session` of a transcription session, field by field as the 3.57.0
/// `RealtimeTranscriptionSessionCreateRequest` has it (unknown fields are refused).
fn validate(o: &Obj) -> R {
    check_keys(o, &["type", "audio", "include"], "session")?;
    let f = Fields {
        o,
        prefix: "session",
    };
    match f.string("type")? {
        None => return Err(ProtocolError::missing("session.type")),
        Some("transcription") => {}
        Some("realtime") => {
            return Err(ProtocolError::invalid_value(
                "session.type",
                "a transcription session cannot be changed into a 'realtime' session",
            ))
        }
        Some(other) => {
            return Err(ProtocolError::invalid_value(
                "session.type",
                format!("'{other}' is not one of [\"realtime\", \"transcription\"]"),
            ))
        }
    }
    f.enum_array("include", &[LOGPROBS])?;
    let Some(audio) = f.object("audio", false)? else {
        return Ok(());
    };
    check_keys(audio, &["input"], "session.audio")?;
    let a = Fields {
        o: audio,
        prefix: "session.audio",
    };
    let Some(input) = a.object("input", false)? else {
        return Ok(());
    };
    let p = "session.audio.input";
    check_keys(
        input,
        &[
            "format",
            "noise_reduction",
            "transcription",
            "turn_detection",
        ],
        p,
    )?;
    let i = Fields {
        o: input,
        prefix: p,
    };
    if let Some(fmt) = i.object("format", false)? {
        let fp = "session.audio.input.format";
        check_keys(fmt, &["type", "rate"], fp)?;
        let g = Fields { o: fmt, prefix: fp };
        // "The PCM audio format. Only a 24kHz sample rate is supported."
        match g.string("type")? {
            None | Some("audio/pcm") => {}
            Some(other) => {
                return Err(ProtocolError::invalid_value(
                    &format!("{fp}.type"),
                    format!("'{other}' is not supported in transcription sessions; expected 'audio/pcm' at 24000 Hz"),
                ))
            }
        }
        match fmt.get("rate") {
            None => {}
            Some(r) if r.as_u64() == Some(24000) => {}
            Some(r) => {
                return Err(ProtocolError::invalid_value(
                    &format!("{fp}.rate"),
                    format!("{r} is not supported; only a 24000 Hz sample rate is supported"),
                ))
            }
        }
    }
    if let Some(nr) = i.object("noise_reduction", true)? {
        let np = "session.audio.input.noise_reduction";
        check_keys(nr, &["type", "strength"], np)?;
        let n = Fields { o: nr, prefix: np };
        n.one_of("type", &["near_field", "far_field"], false)?;
        n.number("strength", f64::NEG_INFINITY, f64::INFINITY)?;
    }
    validate_transcription(&i, "transcription", Dialect::Ga)?;
    validate_turn_detection(&i, "turn_detection", Dialect::Ga)?;
    Ok(())
}

impl Companion for Transcription {
    fn created(&self) -> Value {
        Value::Object(self.json.clone())
    }

    fn on_event(&mut self, w: &mut Wire, v: &Value) -> R {
        let not_here = |ty: &str| {
            Err(ProtocolError::invalid_value(
                "type",
                format!("'{ty}' is not supported in transcription sessions; they accept session.update and input_audio_buffer.append, commit and clear"),
            ))
        };
        match protocol::parse(v, Dialect::Ga)? {
            ClientEvent::SessionUpdate(s) => {
                self.apply_update(s)?;
                w.emit(
                    json!({"type": "session.updated", "session": Value::Object(self.json.clone())}),
                );
            }
            ClientEvent::Append(audio) => self.on_append(w, audio)?,
            ClientEvent::Commit => self.on_commit(w)?,
            ClientEvent::Clear => {
                self.input.reset_buffer();
                self.speech = None;
                w.emit(json!({"type": "input_audio_buffer.cleared"}));
            }
            _ => {
                return not_here(v.get("type").and_then(Value::as_str).unwrap_or_default());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value)] // call sites read better with json! values
    fn update(t: &mut Transcription, input: Value) -> (&'static str, Option<String>) {
        match t.apply_update(&json!({"type": "transcription", "audio": {"input": input}})) {
            Ok(()) => ("ok", None),
            Err(e) => (e.code, e.param),
        }
    }

    #[test]
    fn whisper_needs_turn_detection_null_in_the_merged_session() {
        let mut t = Transcription::new("sess_1", 0);
        assert!(t.turn_detection.is_some());
        assert_eq!(
            update(&mut t, json!({"transcription": {"model": WHISPER}})),
            (
                "invalid_value",
                Some("session.audio.input.turn_detection".into())
            )
        );
        // Nothing changed on error.
        assert_eq!(t.model.as_deref(), Some("gpt-4o-transcribe"));
        assert_eq!(
            update(
                &mut t,
                json!({"transcription": {"model": WHISPER, "delay": "low"}, "turn_detection": null})
            ),
            ("ok", None)
        );
        assert!(t.turn_detection.is_none());
        assert_eq!(
            update(&mut t, json!({"turn_detection": {"type": "semantic_vad"}})),
            (
                "invalid_value",
                Some("session.audio.input.turn_detection".into())
            )
        );
        assert_eq!(
            update(
                &mut t,
                json!({"transcription": {"model": "gpt-4o-transcribe"}, "turn_detection": {"type": "server_vad"}})
            ),
            ("ok", None)
        );
        assert!(t.turn_detection.is_some());
    }

    #[test]
    fn strict_shape() {
        let mut t = Transcription::new("sess_1", 0);
        let cases = [
            (
                json!({"format": {"type": "audio/pcmu"}}),
                "session.audio.input.format.type",
            ),
            (
                json!({"format": {"type": "audio/pcm", "rate": 16000}}),
                "session.audio.input.format.rate",
            ),
            (
                json!({"format": {"type": "audio/pcm", "channels": 1}}),
                "session.audio.input.format.channels",
            ),
            (json!({"language": "en"}), "session.audio.input.language"),
            (
                json!({"transcription": {"model": WHISPER, "prompt": "x"}, "turn_detection": null}),
                "session.audio.input.transcription.prompt",
            ),
            (
                json!({"transcription": {"model": "whisper-1", "delay": "low"}}),
                "session.audio.input.transcription.delay",
            ),
            (
                json!({"noise_reduction": {"type": "near"}}),
                "session.audio.input.noise_reduction.type",
            ),
        ];
        for (input, param) in cases {
            let (code, p) = update(&mut t, input.clone());
            assert_ne!(code, "ok", "{input}");
            assert_eq!(p.as_deref(), Some(param), "{input}");
        }
        for bad in [
            json!({"type": "realtime"}),
            json!({}),
            json!({"type": "transcription", "model": "x"}),
            json!({"type": "transcription", "include": ["x"]}),
            json!({"type": "transcription", "audio": {"output": {}}}),
        ] {
            assert!(t.apply_update(&bad).is_err(), "{bad}");
        }
        assert!(t
            .apply_update(&json!({"type": "transcription", "include": [LOGPROBS]}))
            .is_ok());
        assert!(t.logprobs);
    }
}
