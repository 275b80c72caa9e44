//! The companion session kinds over real loopback WebSockets: transcription sessions
//! (`/v1/realtime?intent=transcription`) and translation sessions
//! (`/v1/realtime/translations?model=gpt-realtime-translate`). Every server event the simulator emits
//! here, and every client event it accepts, is validated against the `openai==3.57.0` models with
//! `scripts/validate_realtime_events.py` (dialects `ga` and `translation`). Without Python and the
//! package these tests FAIL, unless `VOICE_SKIP_PY_VALIDATION=1`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use voice_realtime_sim::{Dialect, SessionKind, SimConfig, SimHandle};

const VALIDATOR: &str = include_str!("../../../scripts/validate_realtime_events.py");
const WHISPER: &str = "gpt-realtime-whisper";
const TRANSLATE: &str = "gpt-realtime-translate";

fn validate(kind: &str, dialect: &str, events: &[Value]) {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let spawned = Command::new(&py)
        .args(["-c", VALIDATOR, kind, dialect])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if std::env::var("VOICE_SKIP_PY_VALIDATION").as_deref() == Ok("1") => {
            eprintln!("skipping pydantic validation: {e}");
            return;
        }
        Err(e) => panic!("cannot run {py} (VOICE_SKIP_PY_VALIDATION=1 skips): {e}"),
    };
    {
        let mut stdin = child.stdin.take().unwrap();
        for e in events {
            writeln!(stdin, "{e}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if std::env::var("VOICE_SKIP_PY_VALIDATION").as_deref() == Ok("1")
            && stderr.contains("ModuleNotFoundError")
        {
            eprintln!("skipping pydantic validation: {stderr}");
            return;
        }
        panic!("{kind} {dialect} events fail the openai models:\n{stdout}\n{stderr}");
    }
    assert!(
        stdout.contains(&format!(
            "validated {} {kind} events, 0 invalid",
            events.len()
        )),
        "{stdout}"
    );
}

fn req(
    url: &str,
    key: Option<&str>,
    beta: bool,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut r = url.into_client_request().unwrap();
    if let Some(k) = key {
        r.headers_mut()
            .insert("Authorization", format!("Bearer {k}").parse().unwrap());
    }
    if beta {
        r.headers_mut()
            .insert("OpenAI-Beta", "realtime=v1".parse().unwrap());
    }
    r
}

async fn status(url: &str, key: Option<&str>, beta: bool) -> u16 {
    match tokio_tungstenite::connect_async(req(url, key, beta)).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

/// Connects to `url` and reads `session.created`.
async fn open(url: &str) -> (Client, Value) {
    let (ws, _) = tokio_tungstenite::connect_async(req(url, Some("sk-test"), false))
        .await
        .unwrap();
    let mut c = Client {
        ws,
        dialect: Dialect::Ga,
        log: Vec::new(),
    };
    let created = c.recv().await;
    assert_eq!(created["type"], "session.created", "{created}");
    (c, created)
}

async fn transcription(sim: &SimHandle) -> Client {
    let (c, created) = open(&sim.transcription_url()).await;
    assert_eq!(created["session"]["type"], "transcription", "{created}");
    c
}

async fn translation(sim: &SimHandle) -> Client {
    let (c, created) = open(&sim.translation_url(TRANSLATE)).await;
    assert_eq!(created["session"]["type"], "translation", "{created}");
    c
}

fn of_type<'a>(evs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["type"] == ty).collect()
}

fn concat(evs: &[Value], ty: &str) -> String {
    of_type(evs, ty)
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect()
}

fn pcm_b64(samples: &[i16]) -> String {
    B64.encode(
        samples
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

/// The whisper session of the realtime-transcription guide.
fn whisper_session(logprobs: bool) -> Value {
    let mut s = json!({"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000},
        "noise_reduction": {"type": "near_field", "strength": 1},
        "transcription": {"model": WHISPER, "language": "en", "delay": "low"},
        "turn_detection": null}}});
    if logprobs {
        s["include"] = json!(["item.input_audio_transcription.logprobs"]);
    }
    json!({"type": "session.update", "event_id": "evt_setup", "session": s})
}

// ---- handshake --------------------------------------------------------------------------------

#[tokio::test]
async fn handshake_routes_the_session_kinds() {
    let sim = start(SimConfig {
        api_key: Some("sk-test".into()),
        ..fast()
    })
    .await;
    let base = sim.base_url();
    // A model beside intent=transcription makes a conversation session, as upstream.
    let (_, created) = open(&format!(
        "{base}/v1/realtime?intent=transcription&model=gpt-realtime"
    ))
    .await;
    assert_eq!(created["session"]["type"], "realtime");
    let (_, created) = open(&sim.transcription_url()).await;
    assert_eq!(created["session"]["type"], "transcription");
    assert_eq!(
        created["session"]["object"],
        "realtime.transcription_session"
    );
    assert!(created["session"]["id"]
        .as_str()
        .unwrap()
        .starts_with("sess_"));
    let (_, created) = open(&sim.translation_url(TRANSLATE)).await;
    assert_eq!(created["session"]["type"], "translation");
    assert_eq!(created["session"]["model"], TRANSLATE);
    assert!(created["session"]["expires_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(created["session"]["audio"]["output"]["language"], "en");
    // Same API key check as conversations.
    assert_eq!(status(&sim.transcription_url(), None, false).await, 401);
    assert_eq!(
        status(&sim.transcription_url(), Some("sk-wrong"), false).await,
        401
    );
    assert_eq!(
        status(&sim.translation_url(TRANSLATE), Some("sk-wrong"), false).await,
        401
    );
    // Transcription is GA only; unknown intents, missing or wrong translation models are refused.
    assert_eq!(
        status(&sim.transcription_url(), Some("sk-test"), true).await,
        400
    );
    assert_eq!(
        status(
            &format!("{base}/v1/realtime?intent=chat"),
            Some("sk-test"),
            false
        )
        .await,
        400
    );
    assert_eq!(
        status(
            &format!("{base}/v1/realtime/translations"),
            Some("sk-test"),
            false
        )
        .await,
        400
    );
    assert_eq!(
        status(&sim.translation_url("gpt-realtime"), Some("sk-test"), false).await,
        400
    );
    assert_eq!(
        status(
            &format!("{base}/v1/realtime/translate?model={TRANSLATE}"),
            Some("sk-test"),
            false
        )
        .await,
        404
    );
    assert_eq!(sim.stats().rejected_handshakes, 8);
    sim.shutdown().await;
}

// ---- transcription ----------------------------------------------------------------------------

#[tokio::test]
async fn transcription_refusals_match_upstream() {
    let sim = start(fast()).await;
    let mut c = transcription(&sim).await;
    let mut accepted = Vec::new();
    // The default session has server VAD, so switching to whisper alone is refused.
    c.send(
        json!({"type": "session.update", "event_id": "evt_w", "session": {"type": "transcription",
        "audio": {"input": {"transcription": {"model": WHISPER}}}}}),
    )
    .await;
    let e = c.expect_error("invalid_value").await;
    assert_eq!(e["error"]["param"], "session.audio.input.turn_detection");
    assert_eq!(e["error"]["event_id"], "evt_w");
    let refusals = [
        (
            json!({"audio": {"input": {"transcription": {"model": WHISPER}, "turn_detection": {"type": "server_vad"}}}}),
            "session.audio.input.turn_detection",
        ),
        (
            json!({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}),
            "session.audio.input.format.type",
        ),
        (
            json!({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}),
            "session.audio.input.format.rate",
        ),
        (
            json!({"audio": {"input": {"language": "en"}}}),
            "session.audio.input.language",
        ),
        (
            json!({"audio": {"input": {"transcription": {"model": WHISPER, "prompt": "x"}, "turn_detection": null}}}),
            "session.audio.input.transcription.prompt",
        ),
        (
            json!({"audio": {"input": {"transcription": {"model": "gpt-4o-transcribe", "languages": ["en"]}}}}),
            "session.audio.input.transcription.languages",
        ),
        (
            json!({"audio": {"output": {"voice": "marin"}}}),
            "session.audio.output",
        ),
        (json!({"instructions": "hi"}), "session.instructions"),
        (
            json!({"include": ["item.input_audio_transcription.segments"]}),
            "session.include[0]",
        ),
    ];
    for (s, param) in refusals {
        let mut s = s;
        s["type"] = json!("transcription");
        c.send(json!({"type": "session.update", "session": s}))
            .await;
        let e = c.until("error").await.pop().unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
    }
    c.send(json!({"type": "session.update", "session": {"type": "realtime"}}))
        .await;
    assert_eq!(
        c.until("error").await.pop().unwrap()["error"]["param"],
        "session.type"
    );
    c.send(json!({"type": "response.create"})).await;
    assert_eq!(
        c.until("error").await.pop().unwrap()["error"]["param"],
        "type"
    );
    // Nothing was applied: the guide's whisper session is still accepted whole, and echoed.
    let ok = whisper_session(true);
    c.send(ok.clone()).await;
    accepted.push(ok);
    let upd = c.until("session.updated").await.pop().unwrap();
    let input = &upd["session"]["audio"]["input"];
    assert_eq!(input["transcription"]["model"], WHISPER);
    assert!(input["turn_detection"].is_null());
    assert_eq!(input["noise_reduction"]["strength"], 1);
    assert_eq!(
        upd["session"]["include"][0],
        "item.input_audio_transcription.logprobs"
    );
    // Other models keep VAD, with the options only they take.
    let other = json!({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "transcription": {"model": "gpt-live-transcribe", "keywords": ["Acme"], "languages": ["en", "fr"]},
        "turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}}});
    c.send(other.clone()).await;
    accepted.push(other);
    c.until("session.updated").await;
    sim.shutdown().await;
    validate("server", "ga", &c.log);
    validate("client", "ga", &accepted);
}

#[tokio::test]
async fn transcription_streams_deltas_and_a_final_per_commit() {
    let sim = start(SimConfig {
        user_transcripts: vec!["Hello there, world.".into(), "Second turn".into()],
        record_client_events: true,
        ..fast()
    })
    .await;
    let mut c = transcription(&sim).await;
    let mut accepted = vec![whisper_session(true)];
    c.send(whisper_session(true)).await;
    c.until("session.updated").await;
    // Empty and too-short buffers are refused like upstream.
    c.send(json!({"type": "input_audio_buffer.commit", "event_id": "evt_c0"}))
        .await;
    let e = c.expect_error("input_audio_buffer_commit_empty").await;
    assert_eq!(e["error"]["event_id"], "evt_c0");
    let short = json!({"type": "input_audio_buffer.append", "audio": pcm_b64(&speech(50, -20.0))});
    c.send(short.clone()).await;
    c.send(json!({"type": "input_audio_buffer.commit"})).await;
    c.expect_error("input_audio_buffer_commit_empty").await;
    c.send(json!({"type": "input_audio_buffer.clear"})).await;
    c.until("input_audio_buffer.cleared").await;
    accepted.extend([short, json!({"type": "input_audio_buffer.clear"})]);

    let mut items = Vec::new();
    for (i, (ms, text)) in [(500u64, "Hello there, world."), (1200, "Second turn")]
        .into_iter()
        .enumerate()
    {
        let mut audio = speech(ms - 100, -20.0);
        audio.extend(silence(100));
        for chunk in audio.chunks(480 * 2) {
            let ev = json!({"type": "input_audio_buffer.append", "audio": pcm_b64(chunk)});
            c.send(ev.clone()).await;
            accepted.push(ev);
        }
        let commit = json!({"type": "input_audio_buffer.commit"});
        c.send(commit.clone()).await;
        accepted.push(commit);
        let evs = c
            .until("conversation.item.input_audio_transcription.completed")
            .await;
        // No VAD with whisper: nothing but the commit's events.
        assert!(of_type(&evs, "input_audio_buffer.speech_started").is_empty());
        let committed = of_type(&evs, "input_audio_buffer.committed");
        assert_eq!(committed.len(), 1, "{evs:?}");
        let item = committed[0]["item_id"].as_str().unwrap().to_owned();
        if i == 0 {
            assert!(committed[0]["previous_item_id"].is_null());
        } else {
            assert_eq!(committed[0]["previous_item_id"], items[0]);
        }
        let deltas = of_type(&evs, "conversation.item.input_audio_transcription.delta");
        assert!(deltas.len() >= 2, "{evs:?}");
        assert!(deltas
            .iter()
            .all(|d| d["item_id"] == item && d["content_index"] == 0));
        assert_eq!(
            concat(&evs, "conversation.item.input_audio_transcription.delta"),
            text
        );
        let done = evs.last().unwrap();
        assert_eq!(done["item_id"], item);
        assert_eq!(done["transcript"], text);
        // gpt-realtime-whisper bills by duration.
        assert_eq!(done["usage"]["type"], "duration");
        assert!((done["usage"]["seconds"].as_f64().unwrap() - ms as f64 / 1000.0).abs() < 1e-9);
        // Logprobs on every delta and, all of them, on the final.
        let lp: Vec<&Value> = deltas
            .iter()
            .flat_map(|d| d["logprobs"].as_array().unwrap())
            .collect();
        assert_eq!(lp.len(), deltas.len());
        assert_eq!(done["logprobs"].as_array().unwrap().len(), lp.len());
        for p in &lp {
            assert!(p["logprob"].as_f64().unwrap() <= 0.0);
            let token = p["token"].as_str().unwrap();
            let bytes: Vec<u8> = p["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(bytes, token.as_bytes());
        }
        // The final comes after every delta of its item.
        let last_delta = evs
            .iter()
            .rposition(|e| e["type"] == "conversation.item.input_audio_transcription.delta")
            .unwrap();
        assert_eq!(last_delta, evs.len() - 2);
        items.push(item);
    }
    assert_ne!(items[0], items[1]);
    assert_eq!(sim.stats().transcriptions, 2);
    // The client-event log knows the session kind.
    let log = sim.events_log();
    assert!(!log.is_empty());
    assert!(log.iter().all(|e| e.kind == SessionKind::Transcription));
    assert!(log
        .iter()
        .any(|e| e.event["type"] == "input_audio_buffer.commit"));
    c.ws.close(None).await.unwrap();
    while c.ws.next().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(50)).await;
    let closes = sim.closes();
    assert_eq!(closes.len(), 1);
    assert_eq!(closes[0].kind, SessionKind::Transcription);
    assert!(!closes[0].by_server);
    sim.shutdown().await;
    validate("server", "ga", &c.log);
    validate("client", "ga", &accepted);
}

#[tokio::test]
async fn transcription_with_vad_commits_by_itself_and_bills_tokens() {
    let sim = start(SimConfig {
        user_transcripts: vec!["Turn one".into()],
        ..fast()
    })
    .await;
    let mut c = transcription(&sim).await;
    c.send(
        json!({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "transcription": {"model": "gpt-4o-transcribe", "prompt": "names"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}}}}),
    )
    .await;
    c.until("session.updated").await;
    let mut audio = silence(300);
    audio.extend(speech(700, -20.0));
    audio.extend(silence(600));
    c.append_audio(&audio, voice_realtime_sim::WireAudioFormat::Pcm16)
        .await;
    let evs = c
        .until("conversation.item.input_audio_transcription.completed")
        .await;
    let kinds = types(&evs);
    let pos = |t: &str| kinds.iter().position(|k| k == t).unwrap();
    assert!(pos("input_audio_buffer.speech_started") < pos("input_audio_buffer.speech_stopped"));
    assert!(pos("input_audio_buffer.speech_stopped") < pos("input_audio_buffer.committed"));
    let started = &evs[pos("input_audio_buffer.speech_started")];
    assert_eq!(
        evs[pos("input_audio_buffer.committed")]["item_id"],
        started["item_id"]
    );
    let done = evs.last().unwrap();
    assert_eq!(done["transcript"], "Turn one");
    assert_eq!(done["usage"]["type"], "tokens");
    assert!(done["usage"]["total_tokens"].as_u64().unwrap() > 0);
    // No logprobs unless included.
    assert!(done.get("logprobs").is_none());
    assert!(
        of_type(&evs, "conversation.item.input_audio_transcription.delta")
            .iter()
            .all(|d| d.get("logprobs").is_none())
    );
    sim.shutdown().await;
    validate("server", "ga", &c.log);
}

// ---- translation ------------------------------------------------------------------------------

/// Appends `samples` in chunks of `chunk_ms` (not a multiple of the 200 ms frame on purpose).
async fn feed(c: &mut Client, samples: &[i16], chunk_ms: usize, sent: &mut Vec<Value>) {
    for chunk in samples.chunks(chunk_ms * 24) {
        let ev = json!({"type": "session.input_audio_buffer.append", "audio": pcm_b64(chunk)});
        c.send(ev.clone()).await;
        sent.push(ev);
    }
}

fn decode(delta: &Value) -> Vec<i16> {
    B64.decode(delta["delta"].as_str().unwrap())
        .unwrap()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Reads until `n` output audio deltas have arrived.
async fn frames(c: &mut Client, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let mut audio = 0;
    while audio < n {
        let v = c.recv().await;
        if v["type"] == "session.output_audio.delta" {
            audio += 1;
        }
        assert_ne!(v["type"], "error", "{v}");
        got.push(v);
    }
    got
}

#[tokio::test]
async fn translation_streams_200ms_frames_with_elapsed_ms() {
    let sim = start(SimConfig {
        user_transcripts: vec!["Goedemorgen allemaal, welkom".into()],
        translation_outputs: vec!["Buenos días a todos, bienvenidos".into()],
        ms_per_char: 30,
        ..fast()
    })
    .await;
    let mut c = translation(&sim).await;
    let update = json!({"type": "session.update", "session": {"audio": {
        "input": {"transcription": {"model": "gpt-live-transcribe"}, "noise_reduction": {"type": "near_field"}},
        "output": {"language": "es"}}}});
    let mut sent = vec![update.clone()];
    c.send(update).await;
    let upd = c.until("session.updated").await.pop().unwrap();
    assert_eq!(upd["session"]["audio"]["output"]["language"], "es");
    assert_eq!(
        upd["session"]["audio"]["input"]["noise_reduction"]["strength"],
        1.0
    );
    assert_eq!(upd["session"]["model"], TRANSLATE);
    // 1.2 s of speech then 2.6 s of silence = 19 frames, sent in 130 ms chunks.
    let mut audio = speech(1200, -20.0);
    audio.extend(silence(2600));
    feed(&mut c, &audio, 130, &mut sent).await;
    let evs = frames(&mut c, 19).await;
    assert!(
        c.try_recv(Duration::from_millis(200)).await.is_none(),
        "a 20th frame needs more audio"
    );
    let out = of_type(&evs, "session.output_audio.delta");
    for (k, d) in out.iter().enumerate() {
        assert_eq!(d["elapsed_ms"], (k as u64 + 1) * 200, "{k}");
        assert_eq!(d["format"], "pcm16");
        assert_eq!(d["sample_rate"], 24000);
        assert_eq!(d["channels"], 1);
        assert_eq!(decode(d).len(), 4800, "200 ms of 24 kHz PCM16");
    }
    // The translation waits for context: silence first, then speech.
    let levels: Vec<f64> = out.iter().map(|d| rms(&decode(d))).collect();
    assert!(levels[0] == 0.0 && levels[1] == 0.0, "{levels:?}");
    assert!(levels.iter().any(|&l| l > 300.0), "{levels:?}");
    assert_eq!(
        concat(&evs, "session.output_transcript.delta"),
        "Buenos días a todos, bienvenidos"
    );
    assert_eq!(
        concat(&evs, "session.input_transcript.delta"),
        "Goedemorgen allemaal, welkom"
    );
    // Transcript deltas carry the elapsed_ms of a frame (200 ms steps, not unique).
    for t in evs
        .iter()
        .filter(|e| e["type"].as_str().unwrap().ends_with("_transcript.delta"))
    {
        let ms = t["elapsed_ms"].as_u64().unwrap();
        assert!(ms % 200 == 0 && (200..=19 * 200).contains(&ms), "{t}");
    }
    // Input transcript deltas start with the speech (frame 1), output ones not before frame 3.
    assert_eq!(
        of_type(&evs, "session.input_transcript.delta")[0]["elapsed_ms"],
        200
    );
    assert!(
        of_type(&evs, "session.output_transcript.delta")[0]["elapsed_ms"]
            .as_u64()
            .unwrap()
            >= 600
    );
    assert_eq!(sim.stats().translation_frames, 19);
    sim.shutdown().await;
    validate("server", "translation", &c.log);
    validate("client", "translation", &sent);
}

#[tokio::test]
async fn translation_is_silent_for_speech_already_in_the_target_language() {
    for (target, silent) in [("es", true), ("fr", false)] {
        let sim = start(SimConfig {
            translation_source_language: "es".into(),
            user_transcripts: vec!["Hola a todos".into()],
            ms_per_char: 30,
            ..fast()
        })
        .await;
        let mut c = translation(&sim).await;
        c.send(json!({"type": "session.update", "session": {"audio": {
            "input": {"transcription": {"model": "gpt-live-transcribe"}}, "output": {"language": target}}}}))
            .await;
        c.until("session.updated").await;
        let mut audio = speech(1000, -20.0);
        audio.extend(silence(2000));
        feed(&mut c, &audio, 200, &mut Vec::new()).await;
        let evs = frames(&mut c, 15).await;
        let loud = of_type(&evs, "session.output_audio.delta")
            .iter()
            .any(|d| rms(&decode(d)) > 0.0);
        let out_text = concat(&evs, "session.output_transcript.delta");
        if silent {
            assert!(!loud, "same-language speech must give silence");
            assert_eq!(out_text, "");
        } else {
            assert!(loud);
            assert_eq!(out_text, "(fr) Hola a todos");
        }
        // The source transcript does not depend on the target.
        assert_eq!(
            concat(&evs, "session.input_transcript.delta"),
            "Hola a todos"
        );
        sim.shutdown().await;
        validate("server", "translation", &c.log);
    }
}

#[tokio::test]
async fn translation_refuses_what_upstream_refuses() {
    let sim = start(fast()).await;
    let mut c = translation(&sim).await;
    let refusals = [
        (
            json!({"type": "session.update", "session": {"audio": {"output": {"language": "nl"}}}}),
            "invalid_value",
            "session.audio.output.language",
        ),
        (
            json!({"type": "session.update", "session": {"audio": {"input": {"language": "en"}}}}),
            "unknown_parameter",
            "session.audio.input.language",
        ),
        (
            json!({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}),
            "unknown_parameter",
            "session.audio.input.format",
        ),
        (
            json!({"type": "session.update", "session": {"audio": {"output": {"voice": "marin"}}}}),
            "unknown_parameter",
            "session.audio.output.voice",
        ),
        (
            json!({"type": "session.update", "session": {"model": "gpt-realtime-translate"}}),
            "unknown_parameter",
            "session.model",
        ),
        (
            json!({"type": "session.update", "session": {"type": "translation"}}),
            "unknown_parameter",
            "session.type",
        ),
        (
            json!({"type": "session.update", "session": {"audio": {"input": {"noise_reduction": {"type": "far_field", "strength": 1.5}}}}}),
            "invalid_value",
            "session.audio.input.noise_reduction.strength",
        ),
        (
            json!({"type": "input_audio_buffer.append", "audio": "AAAA"}),
            "invalid_value",
            "type",
        ),
        (json!({"type": "response.create"}), "invalid_value", "type"),
        (
            json!({"type": "session.input_audio_buffer.append", "audio": "not base64!"}),
            "invalid_value",
            "audio",
        ),
        (
            json!({"type": "session.input_audio_buffer.append", "audio": B64.encode(b"RIFF\x24\x00\x00\x00WAVEfmt ")}),
            "invalid_value",
            "audio",
        ),
        (
            json!({"type": "session.input_audio_buffer.append"}),
            "missing_required_parameter",
            "audio",
        ),
        (
            json!({"type": "session.close", "reason": "x"}),
            "unknown_parameter",
            "reason",
        ),
    ];
    for (i, (ev, code, param)) in refusals.into_iter().enumerate() {
        let mut ev = ev;
        ev["event_id"] = json!(format!("evt_{i}"));
        c.send(ev.clone()).await;
        let e = c.expect_error(code).await;
        assert_eq!(e["error"]["param"], param, "{ev} -> {e}");
        assert_eq!(e["error"]["event_id"], format!("evt_{i}"));
    }
    // The session is still open and unchanged.
    c.send(json!({"type": "session.update", "session": {"audio": {"output": {"language": "ko"}}}}))
        .await;
    let upd = c.until("session.updated").await.pop().unwrap();
    assert_eq!(upd["session"]["audio"]["output"]["language"], "ko");
    assert!(upd["session"]["audio"]["input"]["noise_reduction"].is_null());
    assert!(of_type(&c.log, "session.output_audio.delta").is_empty());
    sim.shutdown().await;
    validate("server", "translation", &c.log);
}

#[tokio::test]
async fn translation_close_drains_output_then_closes() {
    let sim = start(SimConfig {
        user_transcripts: vec!["Dit is een test".into()],
        translation_outputs: vec!["This is a rather long translated sentence".into()],
        ms_per_char: 40,
        record_client_events: true,
        ..fast()
    })
    .await;
    let mut c = translation(&sim).await;
    // 500 ms of speech (two and a half frames), then close at once: the half frame is flushed
    // and the 1.7 s translation is spoken to its end before session.closed.
    let mut sent = Vec::new();
    feed(&mut c, &speech(500, -20.0), 100, &mut sent).await;
    c.send(json!({"type": "session.close", "event_id": "evt_close"}))
        .await;
    sent.push(json!({"type": "session.close", "event_id": "evt_close"}));
    let mut evs = Vec::new();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), c.ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                evs.push(serde_json::from_str::<Value>(t.as_str()).unwrap());
            }
            Some(Ok(Message::Close(f))) => break f,
            other => panic!("unexpected {other:?}"),
        }
    };
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(
        evs.last().unwrap()["type"],
        "session.closed",
        "{:?}",
        types(&evs)
    );
    assert_eq!(of_type(&evs, "session.closed").len(), 1);
    assert_eq!(
        concat(&evs, "session.output_transcript.delta"),
        "This is a rather long translated sentence"
    );
    let out = of_type(&evs, "session.output_audio.delta");
    // 41 chars × 40 ms = 1.64 s of speech starting at frame 3: at least 11 frames.
    assert!(out.len() >= 11, "{}", out.len());
    assert!(out
        .iter()
        .enumerate()
        .all(|(k, d)| d["elapsed_ms"] == (k as u64 + 1) * 200));
    // The last frame with speech is the last frame or close to it (no long silent tail).
    let last_loud = out.iter().rposition(|d| rms(&decode(d)) > 0.0).unwrap();
    assert!(out.len() - last_loud <= 4, "{} {last_loud}", out.len());
    // Reading on sends tungstenite's automatic close reply (the closing handshake).
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), c.ws.next()).await {}
    tokio::time::sleep(Duration::from_millis(100)).await;
    let closes = sim.closes();
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(closes[0].kind, SessionKind::Translation);
    assert!(closes[0].by_server);
    assert_eq!(closes[0].client_code, Some(1000));
    assert!(sim
        .events_log()
        .iter()
        .all(|e| e.kind == SessionKind::Translation));
    sim.shutdown().await;
    validate("server", "translation", &evs);
    validate("client", "translation", &sent);
}

// ---- faults -----------------------------------------------------------------------------------

/// Reads until the socket ends; returns the events and whether a close frame came.
async fn drain(c: &mut Client) -> (Vec<Value>, Option<u16>) {
    let mut evs = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => evs.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(f))) => return (evs, f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (evs, None),
        }
    }
}

#[tokio::test]
async fn faults_apply_to_transcription_and_translation() {
    // drop_after_events: the socket drops after that many server events, without a close frame.
    let sim = start(SimConfig {
        drop_after_events: Some(4),
        ..fast()
    })
    .await;
    let mut c = translation(&sim).await;
    feed(&mut c, &speech(2000, -20.0), 200, &mut Vec::new()).await;
    let (evs, code) = drain(&mut c).await;
    assert_eq!(evs.len(), 3, "{:?}", types(&evs));
    assert_eq!(code, None);
    let mut c = transcription(&sim).await;
    c.send(json!({"type": "input_audio_buffer.clear"})).await;
    c.send(json!({"type": "input_audio_buffer.clear"})).await;
    c.send(json!({"type": "input_audio_buffer.clear"})).await;
    c.send(json!({"type": "input_audio_buffer.clear"})).await;
    let (evs, code) = drain(&mut c).await;
    assert_eq!((evs.len(), code), (3, None));
    sim.shutdown().await;

    // error_after_events: one server_error right after that many events.
    let sim = start(SimConfig {
        error_after_events: Some(2),
        user_transcripts: vec!["one two three".into()],
        ..fast()
    })
    .await;
    let mut c = transcription(&sim).await;
    c.send(whisper_session(false)).await;
    c.append(
        &speech(300, -20.0)
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .await;
    c.send(json!({"type": "input_audio_buffer.commit"})).await;
    let evs = c
        .until("conversation.item.input_audio_transcription.completed")
        .await;
    let all = c.log.clone();
    assert_eq!(
        types(&all)[..3],
        ["session.created", "session.updated", "error"]
    );
    assert_eq!(all[2]["error"]["type"], "server_error");
    assert_eq!(of_type(&all, "error").len(), 1, "{evs:?}");
    validate("server", "ga", &all);
    let mut t = translation(&sim).await;
    t.send(json!({"type": "session.update", "session": {"audio": {"output": {"language": "de"}}}}))
        .await;
    assert_eq!(t.recv().await["type"], "session.updated");
    let e = t.recv().await;
    assert_eq!(e["error"]["type"], "server_error", "{e}");
    validate("server", "translation", &t.log);
    sim.shutdown().await;

    // session_max_duration_ms: session_expired, then close 1001 with upstream's reason.
    let sim = start(SimConfig {
        session_max_duration_ms: Some(300),
        ..fast()
    })
    .await;
    for url in [sim.transcription_url(), sim.translation_url(TRANSLATE)] {
        let (mut c, _) = open(&url).await;
        let t0 = Instant::now();
        let (evs, code) = drain(&mut c).await;
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            evs.last().unwrap()["error"]["code"],
            "session_expired",
            "{evs:?}"
        );
        assert_eq!(code, Some(1001));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let kinds: Vec<SessionKind> = sim.closes().iter().map(|r| r.kind).collect();
    assert_eq!(kinds.len(), 2);
    assert!(
        kinds.contains(&SessionKind::Transcription) && kinds.contains(&SessionKind::Translation)
    );
    assert!(sim.closes().iter().all(|r| r.by_server));
    sim.shutdown().await;
}

#[tokio::test]
async fn realtime_factor_paces_the_companion_output() {
    // 10 frames at factor 4: one frame per 50 ms of wall clock.
    let sim = start(SimConfig {
        realtime_factor: 4.0,
        ..Default::default()
    })
    .await;
    let mut c = translation(&sim).await;
    let t0 = Instant::now();
    c.send(json!({"type": "session.input_audio_buffer.append", "audio": pcm_b64(&silence(2000))}))
        .await;
    let evs = frames(&mut c, 10).await;
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_millis(2000), "{took:?}");
    assert_eq!(of_type(&evs, "session.output_audio.delta").len(), 10);
    // Transcript deltas of a transcription session are paced too (chunk_ms 100 / 4 = 25 ms each).
    let mut c = transcription(&sim).await;
    c.send(whisper_session(false)).await;
    c.append(
        &speech(400, -20.0)
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .await;
    c.until("session.updated").await;
    let t0 = Instant::now();
    c.send(json!({"type": "input_audio_buffer.commit"})).await;
    let evs = c
        .until("conversation.item.input_audio_transcription.completed")
        .await;
    let n = of_type(&evs, "conversation.item.input_audio_transcription.delta").len() as u32 + 1;
    assert!(
        t0.elapsed() >= Duration::from_millis(25) * n - Duration::from_millis(10),
        "{:?} for {n}",
        t0.elapsed()
    );
    sim.shutdown().await;
}
