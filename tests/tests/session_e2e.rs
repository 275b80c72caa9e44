//! End to end: the real `voice-sidecar` binary, the simulator on a loopback port, and a host client
//! speaking gRPC. Covers a full spoken turn, stream admission, health/reflection, clean shutdown of the
//! upstream socket, dialects, bad audio and an upstream that drops.

use std::time::Duration;
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime_sim::{ScriptStep, SimConfig, SimServer};

const REPLY: &str = "Hello there, how can I help you today?";

fn sim_config() -> SimConfig {
    SimConfig {
        script: vec![ScriptStep::say(REPLY)],
        user_transcripts: vec!["I would like to book a table".into()],
        ms_per_char: 60,
        record_client_events: true,
        ..Default::default()
    }
}

fn start_16k() -> pb::SessionStart {
    pb::SessionStart {
        input_format: Some(pcm16(16000)),
        output_format: Some(pcm16(16000)),
        instructions: "You are a test assistant.".into(),
        ..Default::default()
    }
}

/// 0.3 s silence, 1.5 s speech-like signal, 1.2 s silence at `rate`.
fn one_utterance(rate: u32) -> Vec<i16> {
    let mut s = vec![0i16; (rate as f32 * 0.3) as usize];
    s.extend(speech_like(rate, 1.5));
    s.extend(vec![0i16; (rate as f32 * 1.2) as usize]);
    s
}

async fn sessions_drain(sim: &voice_realtime_sim::SimHandle) {
    let t0 = std::time::Instant::now();
    while sim.stats().sessions_active > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "upstream session still open: {:?}",
            sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_turn_16k_end_to_end() {
    let sim = SimServer::bind("127.0.0.1:0".parse().unwrap(), sim_config())
        .await
        .unwrap();
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut host = HostSession::open(sidecar.addr, start_16k())
        .await
        .expect("session admitted");

    let Out::Started(st) = host.until(Duration::from_secs(10), |_| true).await else {
        panic!("first message must be SessionStarted")
    };
    assert!(st.session_id.starts_with("vs_"));
    assert_eq!(st.upstream_audio_format, "pcm16");
    assert!(!st.input_passthrough, "16 kHz must be resampled");

    let streamer = host.stream_in_background(one_utterance(16000), 16000, 1);
    let Out::ResponseDone(done) = host
        .until(Duration::from_secs(20), |e| {
            matches!(e, Out::ResponseDone(_))
        })
        .await
    else {
        unreachable!()
    };
    streamer.await.unwrap();

    // Event order as a host sees it.
    let kinds = host.kinds();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(pos("started") < pos("speech_started"), "{kinds:?}");
    assert!(pos("speech_started") < pos("speech_stopped"), "{kinds:?}");
    assert!(pos("speech_stopped") < pos("audio"), "{kinds:?}");
    assert!(
        pos("audio") < pos("transcript.assistant.final"),
        "{kinds:?}"
    );
    assert!(
        pos("transcript.assistant.final") < pos("response_done"),
        "{kinds:?}"
    );

    // Transcripts: the user's, and the assistant's deltas adding up to its final text.
    let texts = |role: pb::Role, fin: bool| -> Vec<String> {
        host.events
            .iter()
            .filter_map(|(_, e)| match e {
                Out::Transcript(t) if t.role == role as i32 && t.r#final == fin => {
                    Some(t.text.clone())
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        texts(pb::Role::User, true),
        vec!["I would like to book a table".to_string()]
    );
    assert_eq!(texts(pb::Role::Assistant, true), vec![REPLY.to_string()]);
    assert_eq!(texts(pb::Role::Assistant, false).concat(), REPLY);

    // Audio in the host's format: 16 kHz PCM16, 20 ms frames, speech-like, of the right length.
    let frames = host.audio_frames();
    assert!(frames.len() > 10);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.data.len() % 2, 0);
        if i + 1 < frames.len() {
            assert_eq!(f.data.len(), 640, "frame {i}: 20 ms at 16 kHz is 640 bytes");
            assert_eq!(f.duration_us, 20_000);
        } else {
            assert!(f.data.len() <= 640);
        }
        assert_eq!(f.seq, i as u64 + 1, "output frames are numbered");
        assert!(!f.item_id.is_empty());
    }
    let samples: Vec<i16> = frames
        .iter()
        .flat_map(|f| {
            f.data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
        })
        .collect();
    let secs = samples.len() as f64 / 16000.0;
    let expected = REPLY.len() as f64 * 0.060;
    assert!(
        secs > expected * 0.8 && secs < expected * 1.25,
        "reply lasts {secs:.2} s, expected about {expected:.2} s"
    );
    let level = rms_dbfs(&samples);
    assert!(level > -35.0, "reply is near-silent: {level:.1} dBFS");
    let distinct: std::collections::HashSet<i16> = samples.iter().copied().collect();
    assert!(
        distinct.len() > 500,
        "reply is not speech-like: {} distinct sample values",
        distinct.len()
    );

    assert_eq!(done.status, "completed");
    assert!(done.usage.unwrap().total_tokens > 0);
    assert!(
        done.voice_to_voice_ms > 0 && done.voice_to_voice_ms < 2000,
        "voice-to-voice {} ms",
        done.voice_to_voice_ms
    );

    // The sidecar sent what upstream expects: session.update first, audio as appends.
    let log = sim.events_log();
    let types: Vec<&str> = log
        .iter()
        .filter_map(|e| e.event["type"].as_str())
        .collect();
    assert_eq!(types.first(), Some(&"session.update"));
    assert!(
        types
            .iter()
            .filter(|t| **t == "input_audio_buffer.append")
            .count()
            > 50
    );
    assert_eq!(
        log[0].event["session"]["audio"]["input"]["format"]["rate"],
        24000
    );

    // Ending from the host side ends the session and closes the upstream socket.
    host.send(In::Control(pb::Control {
        action: Some(pb::control::Action::End(pb::Empty {})),
    }))
    .await;
    let Out::Ended(end) = host
        .until(Duration::from_secs(5), |e| matches!(e, Out::Ended(_)))
        .await
    else {
        unreachable!()
    };
    assert_eq!(end.reason, "client_end");
    let summary = end.summary.unwrap();
    assert_eq!(summary.turns, 1);
    assert_eq!(summary.responses, 1);
    assert!(
        host.rx.message().await.unwrap().is_none(),
        "stream must complete after SessionEnded"
    );
    sessions_drain(&sim).await;
}
