//! Translation sessions (`GET /v1/realtime/translations?model=gpt-realtime-translate`): the three
//! client events of the 3.57.0 `RealtimeTranslationClientEvent` union, validated strictly
//! (`session.update` with only `audio.input.noise_reduction`, `audio.input.transcription{model}` and
//! `audio.output.language` among the 13 output languages; `audio.input.language`, `type`, `model` and
//! any other field refused), `session.input_audio_buffer.append` (base64 24 kHz PCM16 mono only) and
//! `session.close` (remaining output flushed, then `session.closed`, then a normal close).
//!
//! The engine works in 200 ms frames of received audio (the sample clock): each complete frame yields
//! exactly one `session.output_audio.delta` of 200 ms (silence when there is nothing to say), plus
//! `session.input_transcript.delta` (only with input transcription configured) and
//! `session.output_transcript.delta`, all carrying the frame's `elapsed_ms` (200, 400, …). A frame
//! whose RMS exceeds −40 dBFS is speech; a speech segment ends after 600 ms of non-speech. Each
//! segment's source text is the next of `SimConfig::user_transcripts` and its translation the next of
//! `translation_outputs` (else the source prefixed with `(<lang>) `), spoken with the synthesizer
//! two frames after the segment starts (the model "waits for enough context"). When
//! `translation_source_language` equals the target language the speech is already in the target
//! language: output stays silent and no output transcript is sent. Frames are released at one per
//! 200 ms / `realtime_factor`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;

use crate::companion::{self, next_user_text, paced, word_deltas, Companion, Wire};
use crate::error::ProtocolError;
use crate::server::{SessionKind, Shared};
use crate::session_config::{check_keys, normalize_noise_reduction, Fields};
use crate::synth::Utterance;

type Obj = Map<String, Value>;
type R<T = ()> = Result<T, ProtocolError>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// The output languages translation sessions support.
pub const OUTPUT_LANGUAGES: [&str; 13] = [
    "es", "pt", "fr", "ja", "ru", "zh", "de", "ko", "hi", "id", "vi", "it", "en",
];
const FRAME_MS: u64 = 200;
const RATE: u64 = 24_000;
const FRAME_SAMPLES: usize = (RATE * FRAME_MS / 1000) as usize;
const FRAME_BYTES: usize = FRAME_SAMPLES * 2;
/// Non-speech frames that end a speech segment.
const END_SILENT_FRAMES: u32 = 3;
/// Frames between a segment's start and its translation's first audio.
const CONTEXT_FRAMES: u64 = 2;
/// Bound on the frames `session.close` may add to drain the output (two minutes).
const MAX_DRAIN_FRAMES: u32 = 600;

pub(crate) async fn serve(
    ws: WebSocketStream<TcpStream>,
    shared: Arc<Shared>,
    model: &str,
    shutdown: watch::Receiver<bool>,
) {
    let id = format!("sess_{}", uuid::Uuid::new_v4().simple());
    let (expires_unix, expires_at) = companion::expiry(&shared.config);
    let w = Wire::new(shared, id.clone(), SessionKind::Translation, expires_at);
    companion::run(ws, w, Translation::new(&id, model, expires_unix), shutdown).await;
}

/// A translation being spoken.
struct Speaking {
    utt: Utterance,
    words: Vec<String>,
    sent: usize,
    start_frame: u64,
}

struct Translation {
    json: Obj,
    target: String,
    input_transcription: bool,
    pending: Vec<u8>,
    frames: u64,
    /// Remaining source words of the segment in progress and its run of non-speech frames.
    segment: Option<(VecDeque<String>, u32)>,
    speaking: VecDeque<Speaking>,
    text_pos: usize,
    out_pos: usize,
    segments: usize,
    closed: bool,
    pcm: Vec<i16>,
    bytes: Vec<u8>,
}

impl Translation {
    fn new(id: &str, model: &str, expires_at: u64) -> Self {
        let v = json!({
            "id": id, "type": "translation", "model": model, "expires_at": expires_at,
            "audio": {"input": {"noise_reduction": null, "transcription": null},
                      "output": {"language": "en"}},
        });
        let mut t = Translation {
            json: match v {
                Value::Object(m) => m,
                _ => Obj::new(),
            },
            target: String::new(),
            input_transcription: false,
            pending: Vec::new(),
            frames: 0,
            segment: None,
            speaking: VecDeque::new(),
            text_pos: 0,
            out_pos: 0,
            segments: 0,
            closed: false,
            pcm: Vec::with_capacity(FRAME_SAMPLES),
            bytes: Vec::new(),
        };
        t.derive();
        t
    }

    fn derive(&mut self) {
        let audio = self.json.get("audio");
        self.target = audio
            .and_then(|a| a.get("output"))
            .and_then(|o| o.get("language"))
            .and_then(Value::as_str)
            .unwrap_or("en")
            .to_owned();
        self.input_transcription = audio
            .and_then(|a| a.get("input"))
            .and_then(|i| i.get("transcription"))
            .is_some_and(Value::is_object);
    }

    fn apply_update(&mut self, update: &Value) -> R {
        let o = update
            .as_object()
            .ok_or_else(|| ProtocolError::invalid_type("session", "an object"))?;
        validate_update(o)?;
        let mut next = self.json.clone();
        if let Some(src) = o.get("audio").and_then(Value::as_object) {
            let audio = next.entry("audio").or_insert_with(|| json!({}));
            for side in ["input", "output"] {
                let (Some(s), Some(a)) = (
                    src.get(side).and_then(Value::as_object),
                    audio.as_object_mut(),
                ) else {
                    continue;
                };
                let Some(dst) = a.entry(side).or_insert_with(|| json!({})).as_object_mut() else {
                    continue;
                };
                for (k, v) in s {
                    let v = if k == "noise_reduction" {
                        normalize_noise_reduction(v, dst.get("noise_reduction"))
                    } else {
                        v.clone()
                    };
                    dst.insert(k.clone(), v);
                }
            }
        }
        self.json = next;
        self.derive();
        Ok(())
    }

    fn on_append(&mut self, w: &mut Wire, audio: &str) -> R {
        let mut buf = std::mem::take(&mut self.bytes);
        buf.clear();
        if B64.decode_vec(audio, &mut buf).is_err() {
            self.bytes = buf;
            return Err(ProtocolError::new(
                "invalid_value",
                "Invalid 'audio'. Expected base64-encoded 24 kHz PCM16 mono audio bytes.",
                Some("audio"),
            ));
        }
        // Containers and compressed formats are not raw PCM16 (upstream: "Unsupported websocket
        // audio formats return a validation error").
        let container = [&b"RIFF"[..], b"OggS", b"fLaC", b"ID3", b"\x1aE\xdf\xa3"]
            .iter()
            .any(|m| buf.starts_with(m));
        if container {
            self.bytes = buf;
            return Err(ProtocolError::new(
                "invalid_value",
                "Unsupported audio format: translation sessions accept raw base64-encoded 24 kHz PCM16 mono little-endian audio only (no WAV, Ogg, FLAC, MP3 or WebM container).",
                Some("audio"),
            ));
        }
        self.pending.extend_from_slice(&buf);
        self.bytes = buf;
        while self.pending.len() >= FRAME_BYTES {
            let frame: Vec<i16> = self
                .pending
                .drain(..FRAME_BYTES)
                .collect::<Vec<u8>>()
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            self.frame(w, &frame);
        }
        Ok(())
    }

    /// Flushes pending input (padded to a frame), speaks what is left, then `session.closed`.
    fn on_close(&mut self, w: &mut Wire) {
        if !self.pending.is_empty() {
            self.pending.resize(FRAME_BYTES, 0);
            let frame: Vec<i16> = std::mem::take(&mut self.pending)
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            self.frame(w, &frame);
        }
        let silence = vec![0i16; FRAME_SAMPLES];
        let mut n = 0;
        while (self.segment.is_some() || !self.speaking.is_empty()) && n < MAX_DRAIN_FRAMES {
            self.frame(w, &silence);
            n += 1;
        }
        w.emit(json!({"type": "session.closed"}));
        w.close_after_queue("session closed");
        self.closed = true;
    }

    /// One 200 ms engine frame: transcripts and exactly one output audio delta.
    fn frame(&mut self, w: &mut Wire, samples: &[i16]) {
        let k = self.frames;
        self.frames += 1;
        let elapsed_ms = (k + 1) * FRAME_MS;
        // Copied out so the wire can be borrowed mutably below.
        let source_language = w.config().translation_source_language.clone();
        let ms_per_char = w.config().ms_per_char;
        let mut gap = paced(w.config(), FRAME_MS);
        let mut emit = |w: &mut Wire, ev: Value| {
            w.emit_after(ev, gap);
            gap = Duration::ZERO;
        };
        let mean_sq = samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>()
            / samples.len().max(1) as f64;
        // −40 dBFS.
        let voiced = mean_sq > (0.01f64 * 32768.0).powi(2);
        let mut input_delta = String::new();
        if voiced {
            if self.segment.is_none() {
                self.segments += 1;
                let fallback = format!("user speech {}", self.segments);
                let source = next_user_text(w.config(), &mut self.text_pos, fallback);
                if self.target != source_language {
                    let out = w
                        .config()
                        .translation_outputs
                        .get(self.out_pos)
                        .cloned()
                        .unwrap_or_else(|| format!("({}) {source}", self.target));
                    self.out_pos += 1;
                    self.speaking.push_back(Speaking {
                        utt: Utterance::new(&out, ms_per_char, RATE as u32),
                        words: word_deltas(&out),
                        sent: 0,
                        start_frame: k + CONTEXT_FRAMES,
                    });
                }
                self.segment = Some((word_deltas(&source).into(), 0));
            }
            if let Some((words, silent)) = self.segment.as_mut() {
                *silent = 0;
                if let Some(wd) = words.pop_front() {
                    input_delta = wd;
                }
            }
        } else if let Some((words, silent)) = self.segment.as_mut() {
            *silent += 1;
            if *silent >= END_SILENT_FRAMES {
                input_delta = words.drain(..).collect();
                self.segment = None;
            }
        }
        if self.input_transcription && !input_delta.is_empty() {
            emit(
                w,
                json!({"type": "session.input_transcript.delta", "delta": input_delta, "elapsed_ms": elapsed_ms}),
            );
        }
        self.pcm.clear();
        let mut output_delta = String::new();
        if let Some(sp) = self.speaking.front_mut().filter(|s| s.start_frame <= k) {
            sp.utt.render(&mut self.pcm, FRAME_SAMPLES);
            let total = sp.utt.total_samples().max(1);
            let due = if sp.utt.is_finished() {
                sp.words.len()
            } else {
                (sp.utt.rendered_samples() as usize * sp.words.len()).div_ceil(total as usize)
            };
            if due > sp.sent {
                output_delta = sp.words[sp.sent..due].concat();
                sp.sent = due;
            }
            if sp.utt.is_finished() {
                self.speaking.pop_front();
            }
        }
        self.pcm.resize(FRAME_SAMPLES, 0);
        let bytes: Vec<u8> = self.pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        emit(
            w,
            json!({"type": "session.output_audio.delta", "delta": B64.encode(&bytes), "format": "pcm16",
                "sample_rate": RATE, "channels": 1, "elapsed_ms": elapsed_ms}),
        );
        if !output_delta.is_empty() {
            emit(
                w,
                json!({"type": "session.output_transcript.delta", "delta": output_delta, "elapsed_ms": elapsed_ms}),
            );
        }
        w.shared.counters.translation_frames.fetch_add(1, Relaxed);
    }
}

/// `session.update.session` (RealtimeTranslationSessionUpdateRequest): only `audio`.
fn validate_update(o: &Obj) -> R {
    for fixed in ["type", "model"] {
        if o.contains_key(fixed) {
            return Err(ProtocolError::new(
                "unknown_parameter",
                format!("Unknown parameter: 'session.{fixed}'. The session type and model are set at creation and cannot be changed with session.update."),
                Some(&format!("session.{fixed}")),
            ));
        }
    }
    check_keys(o, &["audio"], "session")?;
    let f = Fields {
        o,
        prefix: "session",
    };
    let Some(audio) = f.object("audio", false)? else {
        return Ok(());
    };
    check_keys(audio, &["input", "output"], "session.audio")?;
    let a = Fields {
        o: audio,
        prefix: "session.audio",
    };
    if let Some(input) = a.object("input", false)? {
        let p = "session.audio.input";
        if input.contains_key("language") {
            return Err(ProtocolError::new(
                "unknown_parameter",
                "Unknown parameter: 'session.audio.input.language'. Translation sessions detect the source language automatically.",
                Some("session.audio.input.language"),
            ));
        }
        check_keys(input, &["noise_reduction", "transcription"], p)?;
        let i = Fields {
            o: input,
            prefix: p,
        };
        if let Some(nr) = i.object("noise_reduction", true)? {
            let np = "session.audio.input.noise_reduction";
            check_keys(nr, &["type", "strength"], np)?;
            let n = Fields { o: nr, prefix: np };
            n.one_of("type", &["near_field", "far_field"], false)?
                .ok_or_else(|| ProtocolError::missing(&format!("{np}.type")))?;
            n.number("strength", 0.0, 1.0)?;
        }
        if let Some(tr) = i.object("transcription", true)? {
            let tp = "session.audio.input.transcription";
            check_keys(tr, &["model"], tp)?;
            Fields { o: tr, prefix: tp }.required_string("model")?;
        }
    }
    if let Some(output) = a.object("output", false)? {
        let p = "session.audio.output";
        check_keys(output, &["language"], p)?;
        Fields {
            o: output,
            prefix: p,
        }
        .one_of("language", &OUTPUT_LANGUAGES, false)?;
    }
    Ok(())
}

const CLIENT_EVENTS: [&str; 3] = [
    "session.update",
    "session.input_audio_buffer.append",
    "session.close",
];

impl Companion for Translation {
    fn created(&self) -> Value {
        Value::Object(self.json.clone())
    }

    fn on_event(&mut self, w: &mut Wire, v: &Value) -> R {
        let o = v.as_object().ok_or_else(|| {
            ProtocolError::new("invalid_type", "Client events must be JSON objects.", None)
        })?;
        let f = Fields { o, prefix: "" };
        f.string("event_id")?;
        let ty = f.required_string("type")?;
        if self.closed {
            // Closing: the output is being drained; nothing more is accepted.
            return Ok(());
        }
        let keys = |extra: &[&str]| {
            let mut all = vec!["type", "event_id"];
            all.extend_from_slice(extra);
            check_keys(o, &all, "")
        };
        match ty {
            "session.update" => {
                keys(&["session"])?;
                let s = o
                    .get("session")
                    .ok_or_else(|| ProtocolError::missing("session"))?;
                self.apply_update(s)?;
                w.emit(
                    json!({"type": "session.updated", "session": Value::Object(self.json.clone())}),
                );
            }
            "session.input_audio_buffer.append" => {
                keys(&["audio"])?;
                let audio = f.required_string("audio")?;
                self.on_append(w, audio)?;
            }
            "session.close" => {
                keys(&[])?;
                self.on_close(w);
            }
            other => {
                return Err(ProtocolError::new(
                    "invalid_value",
                    format!(
                        "Invalid value: '{other}'. Supported values are: {}.",
                        CLIENT_EVENTS.join(", ")
                    ),
                    Some("type"),
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value)] // call sites read better with json! values
    fn upd(session: Value) -> (&'static str, Option<String>) {
        let mut t = Translation::new("sess_1", "gpt-realtime-translate", 0);
        match t.apply_update(&session) {
            Ok(()) => ("ok", None),
            Err(e) => (e.code, e.param),
        }
    }

    #[test]
    fn update_is_strict() {
        assert_eq!(
            upd(
                json!({"audio": {"input": {"noise_reduction": {"type": "far_field", "strength": 0.3},
                "transcription": {"model": "gpt-live-transcribe"}}, "output": {"language": "ja"}}})
            ),
            ("ok", None)
        );
        assert_eq!(
            upd(json!({"audio": {"input": {"noise_reduction": null, "transcription": null}}})),
            ("ok", None)
        );
        let refused = [
            (
                json!({"audio": {"output": {"language": "nl"}}}),
                "session.audio.output.language",
            ),
            (
                json!({"audio": {"output": {"language": null}}}),
                "session.audio.output.language",
            ),
            (
                json!({"audio": {"input": {"language": "en"}}}),
                "session.audio.input.language",
            ),
            (
                json!({"audio": {"input": {"format": {"type": "audio/pcm"}}}}),
                "session.audio.input.format",
            ),
            (
                json!({"audio": {"output": {"voice": "marin"}}}),
                "session.audio.output.voice",
            ),
            (
                json!({"audio": {"input": {"noise_reduction": {"strength": 0.5}}}}),
                "session.audio.input.noise_reduction.type",
            ),
            (
                json!({"audio": {"input": {"noise_reduction": {"type": "near_field", "strength": 2}}}}),
                "session.audio.input.noise_reduction.strength",
            ),
            (
                json!({"audio": {"input": {"transcription": {}}}}),
                "session.audio.input.transcription.model",
            ),
            (json!({"type": "translation"}), "session.type"),
            (json!({"model": "gpt-realtime-translate"}), "session.model"),
            (json!({"instructions": "x"}), "session.instructions"),
        ];
        for (s, param) in refused {
            let (code, p) = upd(s.clone());
            assert_ne!(code, "ok", "{s}");
            assert_eq!(p.as_deref(), Some(param), "{s}");
        }
    }

    #[test]
    fn noise_reduction_strength_defaults_and_is_kept() {
        let mut t = Translation::new("sess_1", "m", 0);
        t.apply_update(&json!({"audio": {"input": {"noise_reduction": {"type": "near_field"}}}}))
            .unwrap();
        assert_eq!(t.json["audio"]["input"]["noise_reduction"]["strength"], 1.0);
        t.apply_update(
            &json!({"audio": {"input": {"noise_reduction": {"type": "near_field", "strength": 0.4}}}}),
        )
        .unwrap();
        t.apply_update(&json!({"audio": {"input": {"noise_reduction": {"type": "far_field"}}}}))
            .unwrap();
        assert_eq!(t.json["audio"]["input"]["noise_reduction"]["strength"], 0.4);
    }
}
