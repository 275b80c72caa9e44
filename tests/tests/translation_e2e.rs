//! Translation and interpreter sessions end to end, over the real binaries: the sidecar speaks the
//! translations protocol to the simulator (`/v1/realtime/translations`), the host hears translated
//! audio in its own format with both transcripts, the cost is metered from audio minutes, an
//! interpreter call with two speakers comes back tagged per speaker, bad starts are refused, and an
//! upstream that keeps dropping ends the call with a typed error. Every client event the sidecar
//! sent validates against the openai 3.57.0 translation models.

use base64::Engine as _;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_realtime_sim::{SimConfig, SimHandle};

const T: Duration = Duration::from_secs(20);

async fn sim(sources: &[&str], translations: &[&str]) -> SimHandle {
    start_sim(SimConfig {
        user_transcripts: sources.iter().map(|s| (*s).to_string()).collect(),
        translation_outputs: translations.iter().map(|s| (*s).to_string()).collect(),
        record_client_events: true,
        ms_per_char: 30,
        ..Default::default()
    })
    .await
}

/// Every client event the sidecar sent validates, and appends are 200 ms of 24 kHz PCM16.
fn sent_events_validate(sim: &SimHandle) -> Vec<Value> {
    let events: Vec<Value> = sim.events_log().into_iter().map(|e| e.event).collect();
    assert!(!events.is_empty());
    validate_client_events("translation", &events);
    for e in &events {
        let t = e["type"].as_str().unwrap_or_default();
        assert!(
            [
                "session.update",
                "session.input_audio_buffer.append",
                "session.close"
            ]
            .contains(&t),
            "{e}"
        );
        if t == "session.input_audio_buffer.append" {
            let pcm = base64::engine::general_purpose::STANDARD
                .decode(e["audio"].as_str().unwrap())
                .unwrap();
            assert_eq!(pcm.len(), 9600, "200 ms of 24 kHz PCM16");
        }
    }
    events
}

fn transcripts(
    h: &HostSession,
    source: pb::TranscriptSource,
    speaker: &str,
) -> Vec<pb::Transcript> {
    h.events
        .iter()
        .filter_map(|(_, e)| match e {
            Out::Transcript(t) if t.source == source as i32 && t.speaker == speaker => {
                Some(t.clone())
            }
            _ => None,
        })
        .collect()
}

fn deltas(h: &HostSession, source: pb::TranscriptSource, speaker: &str) -> String {
    transcripts(h, source, speaker)
        .iter()
        .filter(|t| !t.r#final)
        .map(|t| t.text.as_str())
        .collect()
}

/// Streams PCM16 20 ms frames in real time, each tagged with `speaker`.
async fn stream_speaker(
    tx: &mpsc::Sender<pb::ClientMessage>,
    samples: &[i16],
    rate: u32,
    speaker: &str,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for (i, c) in samples.chunks((rate / 50) as usize).enumerate() {
        tick.tick().await;
        let f = pb::AudioFrame {
            data: pcm_bytes(c),
            seq: i as u64 + 1,
            speaker: speaker.into(),
            ..Default::default()
        };
        if tx.send(msg(In::Audio(f))).await.is_err() {
            break;
        }
    }
}

fn utterance() -> Vec<i16> {
    let mut s = silence(16000, 0.2);
    s.extend(speech_like(16000, 1.2));
    s.extend(silence(16000, 2.0));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translation_session_speaks_the_translation_in_the_host_format_and_meters_minutes() {
    let sim = sim(&["Good morning everyone"], &["Buenos días a todos"]).await;
    let (sidecar, metrics) = start_sidecar_with_metrics(&sim.base_url(), &[]).await;
    let start = pb::SessionStart {
        kind: pb::SessionKind::Translation as i32,
        target_language: "es".into(),
        translation_input_transcript: true,
        input_format: Some(pcm16(16000)),
        // Any codec the conversation supports: µ-law 8 kHz out.
        output_format: Some(audio_format(pb::Codec::Mulaw, 8000)),
        ..Default::default()
    };
    let (mut host, started) = HostSession::open_first_started(sidecar.addr, start).await;
    assert_eq!(started.model, "gpt-realtime-translate");
    assert_eq!(started.upstream_audio_format, "pcm16");
    host.stream_in_background(utterance(), 16000, 1);
    host.until(T, |e| {
        matches!(e, Out::Transcript(t) if t.source == pb::TranscriptSource::SourceTranslationOutput as i32 && t.text.contains("todos"))
    })
    .await;
    assert_eq!(
        deltas(&host, pb::TranscriptSource::SourceTranslationOutput, ""),
        "Buenos días a todos"
    );
    host.end().await;
    let ended = host.until_ended(T).await;
    assert_eq!(ended.reason, "client_end");

    // The source transcript too, and one final per source; elapsed_ms in 200 ms steps.
    assert_eq!(
        deltas(&host, pb::TranscriptSource::SourceTranslationInput, ""),
        "Good morning everyone"
    );
    for source in [
        pb::TranscriptSource::SourceTranslationInput,
        pb::TranscriptSource::SourceTranslationOutput,
    ] {
        let ts = transcripts(&host, source, "");
        let finals: Vec<_> = ts.iter().filter(|t| t.r#final).collect();
        assert_eq!(finals.len(), 1, "{source:?}");
        for t in &ts {
            assert!(t.elapsed_ms > 0 && t.elapsed_ms % 200 == 0, "{t:?}");
        }
    }
    // Translated audio, µ-law 8 kHz in 20 ms frames, audible somewhere.
    let frames = host.audio_frames();
    assert!(frames.len() > 50, "{} frames", frames.len());
    let mut loud = false;
    for f in &frames {
        assert_eq!(f.data.len(), 160);
        assert_eq!(f.duration_us, 20_000);
        let mut pcm = Vec::new();
        voice_audio::g711::decode_ulaw(&f.data, &mut pcm);
        loud |= rms_dbfs(&pcm) > -40.0;
    }
    assert!(loud, "the translation is audible");

    // Cost: the audio sent upstream × $0.034 a minute, and the metrics say the same.
    let events = sent_events_validate(&sim);
    let appends = events
        .iter()
        .filter(|e| e["type"] == "session.input_audio_buffer.append")
        .count();
    assert_eq!(events.last().unwrap()["type"], "session.close");
    let summary = ended.summary.expect("summary");
    let want = appends as f64 * 0.2 / 60.0 * 0.034;
    assert!(
        (summary.cost_usd - want).abs() < 1e-9,
        "{} vs {want}",
        summary.cost_usd
    );
    assert!(summary.duration_ms >= 1000, "{summary:?}");
    let text = http_get(metrics, "/metrics").await;
    assert_eq!(
        metric(&text, "voice_translation_audio_seconds_total", &[]),
        ((appends * 200 + 500) / 1000) as f64,
        "whole seconds, the last fraction rounded"
    );
    assert!(metric(&text, "voice_cost_microdollars_total", &[]) > 0.0);
    assert!(metric(&text, "voice_translation_latency_seconds_count", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interpreter_call_with_two_speakers_comes_back_tagged_per_speaker() {
    // No scripted texts: each simulated leg says "(<its target>) user speech <n>", so the text shows
    // which leg (direction) it came from.
    let sim = sim(&[], &[]).await;
    let records = tempfile::tempdir().unwrap();
    let dir_arg = records.path().display().to_string();
    let sidecar = start_sidecar(&sim.base_url(), &["--records-dir", &dir_arg]).await;
    let start = pb::SessionStart {
        kind: pb::SessionKind::Interpreter as i32,
        interpreter: Some(pb::Interpreter {
            language_a: "en".into(),
            language_b: "es".into(),
        }),
        input_format: Some(pcm16(16000)),
        ..Default::default()
    };
    let (mut host, started) = HostSession::open_first_started(sidecar.addr, start).await;
    let eff: Value = serde_json::from_str(&started.effective_session_json).unwrap();
    assert_eq!(eff["a"]["audio"]["output"]["language"], "es");
    assert_eq!(eff["b"]["audio"]["output"]["language"], "en");
    // Speaker a, then speaker b (a's leg only ever hears a, b's only b).
    let tx = host.tx.clone();
    let talk = tokio::spawn(async move {
        stream_speaker(&tx, &utterance(), 16000, "a").await;
        stream_speaker(&tx, &utterance(), 16000, "b").await;
    });
    host.until(
        T,
        |e| matches!(e, Out::Transcript(t) if t.speaker == "b" && t.text.contains("speech")),
    )
    .await;
    talk.await.unwrap();
    // A frame without a speaker is refused (typed), the call goes on.
    host.send(In::Audio(pb::AudioFrame {
        data: pcm_bytes(&silence(16000, 0.02)),
        ..Default::default()
    }))
    .await;
    let e = host.until_error(T).await;
    assert_eq!(e.code, "invalid_message");
    host.end().await;
    let ended = host.until_ended(T).await;
    assert_eq!(ended.reason, "client_end");

    let out = pb::TranscriptSource::SourceTranslationOutput;
    // a's words in b's language, b's in a's.
    assert_eq!(deltas(&host, out, "a"), "(es) user speech 1");
    assert_eq!(deltas(&host, out, "b"), "(en) user speech 1");
    // Each speaker's translated audio is tagged; both legs spoke.
    for speaker in ["a", "b"] {
        let mut loud = 0;
        for f in host.audio_frames().iter().filter(|f| f.speaker == speaker) {
            let pcm: Vec<i16> = f
                .data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            loud += usize::from(rms_dbfs(&pcm) > -40.0);
        }
        assert!(loud > 10, "speaker {speaker}: {loud} audible frames");
    }
    assert!(host
        .audio_frames()
        .iter()
        .all(|f| f.speaker == "a" || f.speaker == "b"));
    // Two upstream sessions, one per direction, each closed at the end.
    let log = sim.events_log();
    let sessions: std::collections::BTreeSet<_> =
        log.iter().map(|e| e.session_id.clone()).collect();
    assert_eq!(sessions.len(), 2);
    let closes = log
        .iter()
        .filter(|e| e.event["type"] == "session.close")
        .count();
    assert_eq!(closes, 2);
    sent_events_validate(&sim);

    // The session record: start (both legs' configuration), each leg's final transcripts, the end.
    let path = records.path().join(format!("{}.jsonl", started.session_id));
    let mut lines = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON lines"))
            .collect();
        if lines.last().is_some_and(|l| l["type"] == "end") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines.first().unwrap()["type"], "start", "{lines:?}");
    assert_eq!(lines[0]["kind"], "interpreter");
    assert_eq!(
        lines[0]["session"]["b"]["audio"]["output"]["language"],
        "en"
    );
    let end = lines.last().unwrap();
    assert_eq!(end["type"], "end");
    assert_eq!(end["reason"], "client_end");
    let cost = ended.summary.as_ref().unwrap().cost_usd;
    assert!((end["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12);
    let finals: Vec<(String, String)> = lines
        .iter()
        .filter(|l| l["type"] == "transcript" && l["source"] == "translation_output")
        .map(|l| {
            (
                l["speaker"].as_str().unwrap().into(),
                l["text"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        finals.contains(&("a".into(), "(es) user speech 1".into())),
        "{finals:?}"
    );
    assert!(
        finals.contains(&("b".into(), "(en) user speech 1".into())),
        "{finals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_translation_starts_are_invalid_argument() {
    let sim = sim(&[], &[]).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let translation = |lang: &str| pb::SessionStart {
        kind: pb::SessionKind::Translation as i32,
        target_language: lang.into(),
        ..Default::default()
    };
    let interpreter = |a: &str, b: &str| pb::SessionStart {
        kind: pb::SessionKind::Interpreter as i32,
        interpreter: Some(pb::Interpreter {
            language_a: a.into(),
            language_b: b.into(),
        }),
        ..Default::default()
    };
    let with_tool = pb::SessionStart {
        tools: vec![pb::ToolDefinition {
            name: "lookup".into(),
            parameters_json_schema: r#"{"type":"object"}"#.into(),
            ..Default::default()
        }],
        tool_routing: Some(pb::ToolRouting {
            route: Some(pb::tool_routing::Route::InStream(true)),
        }),
        ..translation("es")
    };
    for (start, needle) in [
        (translation("nl"), "target_language"),
        (translation(""), "target_language"),
        (interpreter("en", "en"), "must differ"),
        (interpreter("en", "xx"), "interpreter.language_b"),
        (with_tool, "tools"),
    ] {
        match HostSession::open(sidecar.addr, start).await {
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s}");
                assert!(s.message().contains(needle), "{needle}: {}", s.message());
            }
            Ok(mut h) => {
                let m = h.next(T).await;
                panic!("expected INVALID_ARGUMENT ({needle}), got {}", kind(&m));
            }
        }
    }
    assert!(
        sim.events_log().is_empty(),
        "no upstream session was opened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_keeps_dropping_ends_the_call_with_translation_failed() {
    let sim = start_sim(SimConfig {
        drop_after_events: Some(6),
        ..Default::default()
    })
    .await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let start = pb::SessionStart {
        kind: pb::SessionKind::Translation as i32,
        target_language: "ja".into(),
        ..Default::default()
    };
    let (mut host, _) = HostSession::open_first_started(sidecar.addr, start).await;
    let e = host
        .until(
            T,
            |e| matches!(e, Out::Error(e) if e.code == "upstream_disconnected"),
        )
        .await;
    assert!(matches!(e, Out::Error(e) if e.retryable));
    let failed = host
        .until(
            T,
            |e| matches!(e, Out::Error(e) if e.code == "translation_failed"),
        )
        .await;
    assert!(matches!(failed, Out::Error(e) if !e.retryable));
    let ended = host.until_ended(T).await;
    assert_eq!(ended.reason, "upstream_closed");
    assert!(host
        .events
        .iter()
        .any(|(_, e)| matches!(e, Out::Error(e) if e.code == "upstream_resumed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_a_translation_session() {
    let sim = sim(
        &["Can you check my calendar"],
        &["¿Puedes revisar mi calendario?"],
    )
    .await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("translation.wav");
    let out = tokio::process::Command::new(binary("voice-demo"))
        .args([
            "--sidecar",
            &format!("http://{}", sidecar.addr),
            "--translate",
            "es",
        ])
        .arg("--out")
        .arg(&wav)
        .args(["--timeout-secs", "40"])
        .output()
        .await
        .expect("running voice-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("SPEAKER     (final): Can you check my calendar"),
        "{stdout}"
    );
    assert!(
        stdout.contains("TRANSLATION (final): ¿Puedes revisar mi calendario?"),
        "{stdout}"
    );
    assert!(stdout.contains("session ended (client_end)"), "{stdout}");
    assert!(
        std::fs::metadata(&wav).unwrap().len() > 44,
        "translated audio written"
    );
    sent_events_validate(&sim);
}
