//! TRANSLATION and INTERPRETER sessions in-process: a scripted host and scripted translation
//! upstreams over channels, on paused time. Chunking into 200 ms appends, the silence clock, routing
//! by speaker, output conversion and tagging, close and drain, metering into the budget, reconnect
//! and failure.

mod support;

use base64::Engine as _;
use serde_json::{json, Value};
use std::time::Duration;
use support::Harness;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime::{MemoryPeer, PeerMessage};

const CHUNK: usize = 9600; // 200 ms of 24 kHz PCM16

/// The scripted upstream of one translation leg.
struct Peer {
    peer: MemoryPeer,
    /// Every client event received, in order.
    log: Vec<Value>,
}

impl Peer {
    async fn send(&mut self, v: Value) {
        self.peer
            .to_client
            .send(PeerMessage::Text(v.to_string()))
            .await
            .expect("the leg dropped its upstream");
    }

    async fn raw(&mut self, t: &str) {
        let _ = self.peer.to_client.send(PeerMessage::Text(t.into())).await;
    }

    /// The next client event (appends included). Panics after 60 s of paused time.
    async fn next(&mut self) -> Value {
        let t = tokio::time::timeout(Duration::from_secs(60), self.peer.from_client.recv())
            .await
            .expect("no client event within 60 s")
            .expect("the leg closed its upstream");
        let v: Value = serde_json::from_str(&t).expect("client events are JSON");
        self.log.push(v.clone());
        v
    }

    /// `session.created`, then the leg's `session.update` answered with `session.updated`.
    async fn accept(&mut self) -> Value {
        self.send(json!({"type": "session.created", "event_id": "s0",
            "session": {"id": "sess_t", "type": "translation", "model": "gpt-realtime-translate",
                "expires_at": 0, "audio": {}}}))
            .await;
        let update = self.next().await;
        assert_eq!(update["type"], "session.update", "{update}");
        self.send(
            json!({"type": "session.updated", "event_id": "s1", "session": {"id": "sess_t",
            "type": "translation", "model": "gpt-realtime-translate", "expires_at": 0,
            "audio": update["session"]["audio"]}}),
        )
        .await;
        update
    }

    /// Appends until one that is not pure silence (returns its PCM), or `n` appends.
    async fn appends(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while v.len() < n {
            let e = self.next().await;
            assert_eq!(e["type"], "session.input_audio_buffer.append", "{e}");
            v.push(decode(&e["audio"]));
        }
        v
    }

    async fn audio(&mut self, ms: u32, elapsed: u32) {
        let n = ms as usize * 24;
        let pcm: Vec<u8> = (0..n)
            .flat_map(|i| (((i as f32 * 0.05).sin() * 8000.0) as i16).to_le_bytes())
            .collect();
        self.send(
            json!({"type": "session.output_audio.delta", "event_id": "o",
            "delta": base64::engine::general_purpose::STANDARD.encode(pcm),
            "format": "pcm16", "sample_rate": 24000, "channels": 1, "elapsed_ms": elapsed}),
        )
        .await;
    }
}

fn decode(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("audio is a string"))
        .expect("base64")
}

fn silent(pcm: &[u8]) -> bool {
    pcm.iter().all(|&b| b == 0)
}

async fn connection(h: &mut Harness) -> Peer {
    let peer = tokio::time::timeout(Duration::from_secs(60), h.peers.recv())
        .await
        .expect("no upstream connection within 60 s")
        .expect("connector gone");
    Peer {
        peer,
        log: Vec::new(),
    }
}

fn fmt(rate: u32) -> pb::AudioFormat {
    pb::AudioFormat {
        codec: pb::Codec::Pcm16 as i32,
        sample_rate_hz: rate,
        channels: 1,
        frame_ms: 20,
    }
}

fn translation(lang: &str) -> pb::SessionStart {
    pb::SessionStart {
        kind: pb::SessionKind::Translation as i32,
        target_language: lang.into(),
        input_format: Some(fmt(16_000)),
        ..Default::default()
    }
}

/// 20 ms of a 440 Hz tone at 16 kHz, PCM16.
fn tone_frame() -> Vec<u8> {
    (0..320)
        .flat_map(|i| {
            let s = ((i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 16_000.0).sin() * 12_000.0)
                as i16;
            s.to_le_bytes()
        })
        .collect()
}

async fn speak(h: &Harness, frames: usize, speaker: &str) {
    for i in 0..frames {
        h.host
            .send(In::Audio(pb::AudioFrame {
                data: tone_frame(),
                seq: i as u64 + 1,
                speaker: speaker.into(),
                ..Default::default()
            }))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The host closes its side of the stream.
fn hang_up(h: &mut Harness) {
    let (closed, _) = tokio::sync::mpsc::channel(1);
    drop(std::mem::replace(&mut h.host.tx, closed));
}

async fn started(h: &mut Harness) -> pb::SessionStarted {
    match h.host.next().await {
        Out::Started(s) => s,
        other => panic!("expected SessionStarted, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn translation_chunks_pads_with_silence_converts_output_and_drains_at_the_end() {
    let mut h = Harness::spawn(&translation("es"));
    let mut up = connection(&mut h).await;
    let update = up.accept().await;
    assert_eq!(
        update["session"],
        json!({"audio": {"input": {"transcription": null}, "output": {"language": "es"}}})
    );
    let s = started(&mut h).await;
    assert_eq!(s.model, "gpt-realtime-translate");
    assert_eq!(s.upstream_audio_format, "pcm16");
    let effective: Value = serde_json::from_str(&s.effective_session_json).unwrap();
    assert_eq!(effective, update["session"]);

    // 1 s of host speech at 16 kHz becomes 200 ms appends of 24 kHz PCM16.
    speak(&h, 50, "").await;
    let spoken = up.appends(4).await;
    assert!(spoken.iter().all(|c| c.len() == CHUNK && !silent(c)));
    // The host goes quiet: the leg keeps appending (the tail padded, then silence), one per 200 ms.
    let t0 = tokio::time::Instant::now();
    let quiet = up.appends(6).await;
    assert!(quiet.iter().all(|c| c.len() == CHUNK));
    assert!(silent(&quiet[5]), "pure silence once the tail is sent");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_millis(1300),
        "six appends in {took:?}: one per 200 ms"
    );

    // Translated audio comes back in the host's format (16 kHz, 20 ms frames), with transcripts.
    up.audio(200, 200).await;
    up.send(json!({"type": "session.output_transcript.delta", "event_id": "t1", "delta": "Hola", "elapsed_ms": 200})).await;
    up.send(json!({"type": "session.output_transcript.delta", "event_id": "t2", "delta": " mundo", "elapsed_ms": 400})).await;
    let mut frames = Vec::new();
    let mut deltas = Vec::new();
    while deltas.len() < 2 {
        match h.host.next().await {
            Out::Audio(f) => frames.push(f),
            Out::Transcript(t) => deltas.push(t),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(frames.len() >= 8, "{} frames", frames.len());
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.data.len(), 640, "20 ms at 16 kHz");
        assert_eq!(f.duration_us, 20_000);
        assert_eq!(f.seq, i as u64);
        assert_eq!(f.speaker, "");
    }
    assert_eq!(deltas[0].text, "Hola");
    assert!(!deltas[0].r#final);
    assert_eq!(
        deltas[0].source,
        pb::TranscriptSource::SourceTranslationOutput as i32
    );
    assert_eq!(deltas[0].elapsed_ms, 200);
    assert_eq!(deltas[1].elapsed_ms, 400);

    // Unknown and malformed upstream events are ignored.
    up.raw("{not json").await;
    up.send(json!({"type": "session.future_event", "event_id": "x"}))
        .await;
    up.send(json!({"type": "session.output_audio.delta", "event_id": "x", "delta": "%%%"}))
        .await;

    // The end: session.close, the output drained until session.closed, final transcript, summary.
    h.host
        .send(In::Control(pb::Control {
            action: Some(pb::control::Action::End(pb::Empty {})),
        }))
        .await;
    loop {
        let e = up.next().await;
        if e["type"] == "session.close" {
            break;
        }
        assert_eq!(e["type"], "session.input_audio_buffer.append");
        assert_eq!(decode(&e["audio"]).len(), CHUNK);
    }
    up.send(json!({"type": "session.output_transcript.delta", "event_id": "t3", "delta": ".", "elapsed_ms": 600})).await;
    up.audio(100, 600).await;
    up.send(json!({"type": "session.closed", "event_id": "c"}))
        .await;
    let fin = h
        .host
        .until(|m| match m {
            Out::Transcript(t) if t.r#final => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!(fin.text, "Hola mundo.");
    assert_eq!(fin.elapsed_ms, 600);
    assert_eq!(
        fin.source,
        pb::TranscriptSource::SourceTranslationOutput as i32
    );
    let ended = h.host.ended().await;
    assert_eq!(ended.reason, "client_end");
    let summary = ended.summary.expect("summary");
    assert!(summary.duration_ms >= 2000, "{summary:?}");

    // Metering: every append is 200 ms at $0.034 a minute.
    let appends = up
        .log
        .iter()
        .filter(|e| e["type"] == "session.input_audio_buffer.append")
        .count();
    let want = appends as f64 * 0.2 / 60.0 * 0.034;
    assert!(
        (summary.cost_usd - want).abs() < 1e-9,
        "cost {} for {appends} appends, want {want}",
        summary.cost_usd
    );
    // Only the three translation client events, never a conversation one.
    for e in &up.log {
        let t = e["type"].as_str().unwrap();
        assert!(
            [
                "session.update",
                "session.input_audio_buffer.append",
                "session.close"
            ]
            .contains(&t),
            "{t}"
        );
    }
    // The host saw the audio it was sent after the deltas too (drained output reaches it).
    let late_audio = h
        .host
        .seen
        .iter()
        .rev()
        .take_while(|m| !matches!(m, Out::Transcript(t) if t.text == "."))
        .filter(|m| matches!(m, Out::Audio(_)))
        .count();
    assert!(
        late_audio >= 4,
        "drained audio reached the host: {late_audio} frames"
    );
}

#[tokio::test(start_paused = true)]
async fn the_drain_is_bounded_when_upstream_never_confirms_the_close() {
    let mut h = Harness::spawn(&translation("fr"));
    let mut up = connection(&mut h).await;
    up.accept().await;
    started(&mut h).await;
    let t0 = tokio::time::Instant::now();
    h.host
        .send(In::Control(pb::Control {
            action: Some(pb::control::Action::End(pb::Empty {})),
        }))
        .await;
    // Keep reading (so the leg is never blocked) but never send session.closed.
    let reader = tokio::spawn(async move {
        loop {
            let e = up.next().await;
            if e["type"] == "session.close" {
                break;
            }
        }
        // Hold the peer open.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(up);
    });
    let ended = h.host.ended().await;
    assert_eq!(ended.reason, "client_end");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(7),
        "{took:?}"
    );
    reader.abort();
}

#[tokio::test(start_paused = true)]
async fn source_transcripts_come_with_their_elapsed_ms_and_a_final() {
    let mut start = translation("de");
    start.translation_input_transcript = true;
    let mut h = Harness::spawn(&start);
    let mut up = connection(&mut h).await;
    let update = up.accept().await;
    assert_eq!(
        update["session"]["audio"]["input"]["transcription"]["model"],
        "gpt-realtime-whisper"
    );
    started(&mut h).await;
    up.send(json!({"type": "session.input_transcript.delta", "event_id": "i1", "delta": "Good", "elapsed_ms": 200})).await;
    up.send(
        json!({"type": "session.input_transcript.delta", "event_id": "i2", "delta": " morning"}),
    )
    .await;
    let a = h
        .host
        .until(|m| match m {
            Out::Transcript(t) => Some(t.clone()),
            _ => None,
        })
        .await;
    let b = h
        .host
        .until(|m| match m {
            Out::Transcript(t) => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        a.source,
        pb::TranscriptSource::SourceTranslationInput as i32
    );
    assert_eq!(a.role, pb::Role::User as i32);
    assert_eq!((a.text.as_str(), a.elapsed_ms), ("Good", 200));
    // No elapsed_ms on the delta: the last one known.
    assert_eq!((b.text.as_str(), b.elapsed_ms), (" morning", 200));
    hang_up(&mut h);
    loop {
        if up.next().await["type"] == "session.close" {
            break;
        }
    }
    up.send(json!({"type": "session.closed", "event_id": "c"}))
        .await;
    let fin = h
        .host
        .until(|m| match m {
            Out::Transcript(t) if t.r#final => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!(fin.text, "Good morning");
    assert_eq!(
        fin.source,
        pb::TranscriptSource::SourceTranslationInput as i32
    );
    assert_eq!(h.host.ended().await.reason, "client_closed");
}

#[tokio::test(start_paused = true)]
async fn interpreter_routes_each_speaker_to_its_leg_and_tags_the_output() {
    let start = pb::SessionStart {
        kind: pb::SessionKind::Interpreter as i32,
        interpreter: Some(pb::Interpreter {
            language_a: "en".into(),
            language_b: "es".into(),
        }),
        input_format: Some(fmt(16_000)),
        ..Default::default()
    };
    let mut h = Harness::spawn(&start);
    let mut p1 = connection(&mut h).await;
    let mut p2 = connection(&mut h).await;
    let u1 = p1.accept().await;
    let u2 = p2.accept().await;
    // Leg of speaker a speaks b's language, and the reverse.
    let (mut a, mut b) = if u1["session"]["audio"]["output"]["language"] == "es" {
        (p1, p2)
    } else {
        (p2, p1)
    };
    let ua = if u1["session"]["audio"]["output"]["language"] == "es" {
        &u1
    } else {
        &u2
    };
    assert_eq!(ua["session"]["audio"]["output"]["language"], "es");
    let s = started(&mut h).await;
    let eff: Value = serde_json::from_str(&s.effective_session_json).unwrap();
    assert_eq!(eff["a"]["audio"]["output"]["language"], "es");
    assert_eq!(eff["b"]["audio"]["output"]["language"], "en");

    // Speaker a talks for 1 s: a's leg hears speech, b's leg only silence (its own clock).
    speak(&h, 50, "a").await;
    let heard_a = a.appends(4).await;
    assert!(heard_a.iter().all(|c| !silent(c)));
    let heard_b = b.appends(4).await;
    assert!(
        heard_b.iter().all(|c| silent(c)),
        "b's leg keeps its silence clock"
    );
    // Then b talks.
    speak(&h, 50, "b").await;
    let mut speech_b = 0;
    for c in b.appends(8).await {
        speech_b += usize::from(!silent(&c));
    }
    assert!(speech_b >= 4, "{speech_b} speech chunks on b's leg");

    // A frame without a known speaker is refused and dropped.
    h.host
        .send(In::Audio(pb::AudioFrame {
            data: tone_frame(),
            speaker: "c".into(),
            ..Default::default()
        }))
        .await;
    let e = h.host.error("invalid_message").await;
    assert!(e.message.contains("speaker"), "{}", e.message);

    // Each leg's output is tagged with the speaker whose words it carries.
    a.audio(200, 200).await;
    a.send(json!({"type": "session.output_transcript.delta", "event_id": "t", "delta": "Hola", "elapsed_ms": 200})).await;
    let fa = h
        .host
        .until(|m| match m {
            Out::Audio(f) => Some(f.clone()),
            _ => None,
        })
        .await;
    assert_eq!(fa.speaker, "a");
    let ta = h
        .host
        .until(|m| match m {
            Out::Transcript(t) => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!((ta.speaker.as_str(), ta.text.as_str()), ("a", "Hola"));
    b.send(json!({"type": "session.output_transcript.delta", "event_id": "t", "delta": "Hello", "elapsed_ms": 400})).await;
    let tb = h
        .host
        .until(|m| match m {
            Out::Transcript(t) => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (tb.speaker.as_str(), tb.text.as_str(), tb.elapsed_ms),
        ("b", "Hello", 400)
    );

    // The end closes both legs.
    hang_up(&mut h);
    for p in [&mut a, &mut b] {
        loop {
            if p.next().await["type"] == "session.close" {
                break;
            }
        }
        p.send(json!({"type": "session.closed", "event_id": "c"}))
            .await;
    }
    let mut finals = Vec::new();
    let ended = loop {
        match h.host.next().await {
            Out::Transcript(t) if t.r#final => finals.push((t.speaker, t.text)),
            Out::Ended(e) => break e,
            _ => {}
        }
    };
    finals.sort();
    assert_eq!(
        finals,
        vec![
            ("a".to_string(), "Hola".to_string()),
            ("b".to_string(), "Hello".to_string())
        ]
    );
    // Two legs metered: about twice the audio of one for the same time.
    let summary = ended.summary.unwrap();
    let appends = a.log.len() + b.log.len() - 4; // minus two updates and two closes
    let want = appends as f64 * 0.2 / 60.0 * 0.034;
    assert!(
        (summary.cost_usd - want).abs() < 1e-9,
        "{} vs {want}",
        summary.cost_usd
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_ends_a_session_on_metered_audio_minutes() {
    // $0.001 at $0.034 a minute is about 1.76 s of audio: the silence clock alone passes it.
    let start = pb::SessionStart {
        budget_usd: 0.001,
        end_on_budget: true,
        ..translation("it")
    };
    let mut h = Harness::spawn(&start);
    let mut up = connection(&mut h).await;
    up.accept().await;
    started(&mut h).await;
    let reader = tokio::spawn(async move {
        loop {
            if up.next().await["type"] == "session.close" {
                break;
            }
        }
        up.send(json!({"type": "session.closed", "event_id": "c"}))
            .await;
        up
    });
    let e = h.host.error("budget_exceeded").await;
    assert!(!e.retryable);
    let ended = h.host.ended().await;
    assert_eq!(ended.reason, "budget_exceeded");
    let cost = ended.summary.unwrap().cost_usd;
    assert!((0.001..0.0012).contains(&cost), "{cost}");
    let up = reader.await.unwrap();
    let appends = up
        .log
        .iter()
        .filter(|e| e["type"] == "session.input_audio_buffer.append")
        .count();
    assert_eq!(appends, 9, "nine 200 ms appends cost $0.00102");
}

#[tokio::test(start_paused = true)]
async fn a_lost_upstream_is_reopened_then_given_up_with_translation_failed() {
    let mut h = Harness::spawn(&translation("ko"));
    let mut up = connection(&mut h).await;
    up.accept().await;
    started(&mut h).await;
    // Dropped: the leg reconnects and the host hears of it.
    let _ = up
        .peer
        .to_client
        .send(PeerMessage::Close {
            code: Some(1011),
            reason: Some("test".into()),
        })
        .await;
    let e = h.host.error("upstream_disconnected").await;
    assert!(e.retryable);
    let mut up2 = connection(&mut h).await;
    let update = up2.accept().await;
    assert_eq!(update["session"]["audio"]["output"]["language"], "ko");
    h.host.error("upstream_resumed").await;
    // The new session gets the appends.
    up2.appends(2).await;
    // Lost again, and every reconnect fails: translation_failed, then the end.
    let _ = up2
        .peer
        .to_client
        .send(PeerMessage::Close {
            code: Some(1011),
            reason: None,
        })
        .await;
    h.host.error("upstream_disconnected").await;
    for _ in 0..2 {
        drop(connection(&mut h).await);
    }
    let e = h.host.error("translation_failed").await;
    assert!(!e.retryable);
    assert_eq!(h.host.ended().await.reason, "upstream_closed");
}

#[tokio::test(start_paused = true)]
async fn a_refused_session_update_fails_the_setup_with_a_typed_error() {
    let mut h = Harness::spawn(&translation("zh"));
    let mut up = connection(&mut h).await;
    up.send(json!({"type": "session.created", "event_id": "s0", "session": {"id": "s"}}))
        .await;
    assert_eq!(up.next().await["type"], "session.update");
    up.send(json!({"type": "error", "event_id": "e",
        "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "nope"}}))
        .await;
    let e = h.host.error("upstream_rejected_session").await;
    assert!(e.message.contains("nope"));
    assert_eq!(h.host.ended().await.reason, "upstream_error");
}

#[tokio::test(start_paused = true)]
async fn controls_other_than_end_are_refused_and_the_session_goes_on() {
    let mut h = Harness::spawn(&translation("pt"));
    let mut up = connection(&mut h).await;
    up.accept().await;
    started(&mut h).await;
    h.host
        .send(In::Control(pb::Control {
            action: Some(pb::control::Action::Commit(pb::Empty {})),
        }))
        .await;
    let e = h.host.error("invalid_control").await;
    assert!(e.retryable);
    // Still translating.
    up.send(json!({"type": "session.output_transcript.delta", "event_id": "t", "delta": "Olá"}))
        .await;
    let t = h
        .host
        .until(|m| match m {
            Out::Transcript(t) => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!(t.text, "Olá");
    for e in &up.log {
        assert_ne!(e["type"], "input_audio_buffer.commit");
    }
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_keeps_dropping_is_given_up_after_three_losses_in_a_row() {
    let mut h = Harness::spawn(&translation("vi"));
    let mut up = connection(&mut h).await;
    up.accept().await;
    started(&mut h).await;
    for loss in 1..=4 {
        let _ = up
            .peer
            .to_client
            .send(PeerMessage::Close {
                code: Some(1011),
                reason: None,
            })
            .await;
        if loss == 4 {
            break;
        }
        h.host.error("upstream_disconnected").await;
        up = connection(&mut h).await;
        up.accept().await;
        h.host.error("upstream_resumed").await;
    }
    let e = h.host.error("translation_failed").await;
    assert!(e.message.contains("lost 4 times in a row"), "{}", e.message);
    assert_eq!(h.host.ended().await.reason, "upstream_closed");
}

#[tokio::test(start_paused = true)]
async fn telephony_audio_goes_up_as_24k_pcm16_and_comes_back_as_mulaw() {
    // µ-law 8 kHz would pass through to a conversation; translation takes only 24 kHz PCM16.
    let ulaw = pb::AudioFormat {
        codec: pb::Codec::Mulaw as i32,
        sample_rate_hz: 8000,
        channels: 1,
        frame_ms: 20,
    };
    let start = pb::SessionStart {
        input_format: Some(ulaw),
        output_format: Some(ulaw),
        ..translation("hi")
    };
    let mut h = Harness::spawn(&start);
    let mut up = connection(&mut h).await;
    up.accept().await;
    let s = started(&mut h).await;
    assert_eq!(s.upstream_audio_format, "pcm16");
    assert!(!s.input_passthrough && !s.output_passthrough);
    // 400 ms of a µ-law tone (160 bytes a frame).
    let tone: Vec<i16> = (0..3200)
        .map(|i| ((i as f32 * 0.3).sin() * 10_000.0) as i16)
        .collect();
    for (i, c) in tone.chunks(160).enumerate() {
        let mut data = Vec::new();
        voice_audio::g711::encode_ulaw(c, &mut data);
        h.host
            .send(In::Audio(pb::AudioFrame {
                data,
                seq: i as u64 + 1,
                ..Default::default()
            }))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let chunks = up.appends(2).await;
    assert!(chunks.iter().all(|c| c.len() == CHUNK && !silent(c)));
    up.audio(200, 200).await;
    let f = h
        .host
        .until(|m| match m {
            Out::Audio(f) => Some(f.clone()),
            _ => None,
        })
        .await;
    assert_eq!(f.data.len(), 160, "20 ms of µ-law 8 kHz");
}

#[tokio::test(start_paused = true)]
async fn max_duration_and_shutdown_end_a_translation_with_a_drain() {
    let start = pb::SessionStart {
        max_duration_secs: 3,
        ..translation("ru")
    };
    let mut h = Harness::spawn(&start);
    let mut up = connection(&mut h).await;
    up.accept().await;
    started(&mut h).await;
    let t0 = tokio::time::Instant::now();
    loop {
        if up.next().await["type"] == "session.close" {
            break;
        }
    }
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    up.send(json!({"type": "session.closed", "event_id": "c"}))
        .await;
    assert_eq!(h.host.ended().await.reason, "max_duration");

    let mut h = Harness::spawn(&translation("ru"));
    let mut up = connection(&mut h).await;
    up.accept().await;
    started(&mut h).await;
    h.shutdown.cancel();
    loop {
        if up.next().await["type"] == "session.close" {
            break;
        }
    }
    up.send(json!({"type": "session.closed", "event_id": "c"}))
        .await;
    assert_eq!(h.host.ended().await.reason, "shutdown");
}

#[tokio::test(start_paused = true)]
async fn losses_a_minute_apart_do_not_add_up() {
    let mut h = Harness::spawn(&translation("id"));
    let mut up = connection(&mut h).await;
    up.accept().await;
    started(&mut h).await;
    // Five losses, each after 61 s of a healthy connection: always reopened.
    for _ in 0..5 {
        let reader = tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            while t0.elapsed() < Duration::from_secs(61) {
                up.next().await;
            }
            up
        });
        let old = reader.await.unwrap();
        let _ = old
            .peer
            .to_client
            .send(PeerMessage::Close {
                code: Some(1000),
                reason: None,
            })
            .await;
        h.host.error("upstream_disconnected").await;
        up = connection(&mut h).await;
        up.accept().await;
        h.host.error("upstream_resumed").await;
    }
    assert!(!h
        .host
        .seen
        .iter()
        .any(|m| matches!(m, Out::Error(e) if e.code == "translation_failed")));
}

#[tokio::test(start_paused = true)]
async fn input_faster_than_real_time_is_dropped_past_the_burst() {
    let mut h = Harness::spawn(&translation("es"));
    let mut up = connection(&mut h).await;
    up.accept().await;
    started(&mut h).await;
    // 5 s of audio at once, no time passing: the 2 s burst goes up, the rest is dropped.
    for i in 0..250 {
        h.host
            .send(In::Audio(pb::AudioFrame {
                data: tone_frame(),
                seq: i + 1,
                ..Default::default()
            }))
            .await;
    }
    let e = h.host.error("input_audio_too_fast").await;
    assert!(e.retryable);
    let mut speech = 0;
    for c in up.appends(15).await {
        speech += usize::from(!silent(&c));
    }
    assert!(
        (9..=11).contains(&speech),
        "{speech} chunks of speech: about the 2 s burst"
    );
}

#[tokio::test(start_paused = true)]
async fn large_host_frames_get_no_silence_inside_the_speech() {
    let mut h = Harness::spawn(&translation("ja"));
    let mut up = connection(&mut h).await;
    up.accept().await;
    started(&mut h).await;
    // 2.4 s of speech as eight 300 ms frames, one every 300 ms: the host is never quiet for a
    // whole frame's worth of real time, so no chunk in the middle may be silence.
    let frame: Vec<u8> = (0..15).flat_map(|_| tone_frame()).collect();
    for i in 0..8 {
        h.host
            .send(In::Audio(pb::AudioFrame {
                data: frame.clone(),
                seq: i + 1,
                ..Default::default()
            }))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let chunks = up.appends(11).await;
    let silent_inside = chunks[..11].iter().filter(|c| silent(c)).count();
    assert_eq!(silent_inside, 0, "silence inserted into the speech");
    // Then the host is quiet: silence again.
    let after = up.appends(3).await;
    assert!(silent(&after[2]));
}

#[tokio::test(start_paused = true)]
async fn a_host_that_stops_reading_is_ended_host_stalled() {
    let mut h = Harness::spawn(&translation("es"));
    let mut up = connection(&mut h).await;
    up.accept().await;
    started(&mut h).await;
    // The host never reads again; 40 × 200 ms of translation is 400 frames, over its queue.
    let t0 = tokio::time::Instant::now();
    for k in 0..40 {
        up.audio(200, 200 * (k + 1)).await;
    }
    // The session gives up on the host after --host-stall-timeout-ms and closes its upstream.
    loop {
        if up.next().await["type"] == "session.close" {
            break;
        }
    }
    up.send(json!({"type": "session.closed", "event_id": "c"}))
        .await;
    tokio::time::timeout(Duration::from_secs(30), &mut h.task)
        .await
        .expect("the session ends")
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(10),
        "{:?}",
        t0.elapsed()
    );
    // What fitted in the stream was delivered; no SessionEnded was waited for.
    let mut frames = 0;
    while let Ok(m) = h.host.rx.try_recv() {
        frames += usize::from(matches!(m.unwrap().message, Some(Out::Audio(_))));
    }
    assert!(frames >= 200, "{frames} frames delivered before the stall");
}
