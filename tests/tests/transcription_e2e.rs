//! The transcription leg end to end: the real sidecar against the simulator, which serves both the
//! conversation and the `intent=transcription` session. A conversation with a shadow leg gets
//! `Transcript{source: SHADOW}` for the user's speech beside its own; a leg that the upstream drops
//! mid-call costs the host one typed error and the conversation goes on; a transcription-only session
//! returns text for the speech it is sent. Every client event validates against the openai models.

use serde_json::Value;
use std::time::Duration;
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime_sim::{ScriptStep, SessionKind, SimConfig, SimHandle};

async fn sim(extra: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut cfg = SimConfig {
        script: vec![ScriptStep::say("It ships Friday.")],
        user_transcripts: vec!["Where is my order?".into()],
        record_client_events: true,
        ms_per_char: 20,
        ..Default::default()
    };
    extra(&mut cfg);
    start_sim(cfg).await
}

/// 0.2 s of silence, 1.2 s of speech, `tail` s of silence, at 16 kHz.
fn utterance(tail: f32) -> Vec<i16> {
    let mut s = silence(16000, 0.2);
    s.extend(speech_like(16000, 1.2));
    s.extend(silence(16000, tail));
    s
}

fn shadow_finals(host: &HostSession) -> Vec<pb::Transcript> {
    host.events
        .iter()
        .filter_map(|(_, e)| match e {
            Out::Transcript(t)
                if t.source == pb::TranscriptSource::SourceShadow as i32 && t.r#final =>
            {
                Some(t.clone())
            }
            _ => None,
        })
        .collect()
}

fn client_events(sim: &SimHandle, kind: SessionKind) -> Vec<Value> {
    sim.events_log()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.event)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_with_a_shadow_leg_gets_both_transcripts() {
    let sim = sim(|_| {}).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut host = HostSession::open_started(
        sidecar.addr,
        pb::SessionStart {
            input_format: Some(pcm16(16000)),
            shadow_transcription: Some(pb::Transcription {
                language: "en".into(),
                include_logprobs: true,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let streamer = host.stream_in_background(utterance(2.0), 16000, 1);
    let shadow = host
        .until(Duration::from_secs(15), |e| {
            matches!(e, Out::Transcript(t)
                if t.source == pb::TranscriptSource::SourceShadow as i32 && t.r#final)
        })
        .await;
    let Out::Transcript(shadow) = shadow else {
        unreachable!()
    };
    assert_eq!(shadow.text, "Where is my order?");
    assert_eq!(shadow.role, pb::Role::User as i32);
    assert!(!shadow.logprobs.is_empty(), "logprobs were asked for");
    // The segment spans the speech: it starts at 0 and ends after the speech (1.4 s in), when the
    // conversation's VAD said it stopped.
    assert_eq!(shadow.audio_start_ms, 0);
    assert!(
        (1400..=2600).contains(&shadow.audio_end_ms),
        "{}",
        shadow.audio_end_ms
    );
    // The conversation's own transcript and reply are unaffected.
    host.until_response_done(Duration::from_secs(10)).await;
    let conversation_user = host.events.iter().any(|(_, e)| {
        matches!(e, Out::Transcript(t) if t.source == pb::TranscriptSource::SourceConversation as i32
            && t.role == pb::Role::User as i32 && t.r#final)
    });
    assert!(conversation_user, "{:?}", host.kinds());
    streamer.await.unwrap();
    host.end().await;
    host.until_ended(Duration::from_secs(10)).await;

    // Upstream saw a transcription session fed the conversation's audio, committed by the sidecar.
    let leg = client_events(&sim, SessionKind::Transcription);
    assert_eq!(leg[0]["type"], "session.update");
    assert_eq!(leg[0]["session"]["type"], "transcription");
    assert!(leg.iter().any(|e| e["type"] == "input_audio_buffer.commit"));
    let appended = |evs: &[Value]| {
        evs.iter()
            .filter(|e| e["type"] == "input_audio_buffer.append")
            .count()
    };
    let conv = client_events(&sim, SessionKind::Conversation);
    assert!(
        appended(&leg) >= appended(&conv) - 1,
        "the leg got the same frames"
    );
    validate_client_events("ga", &leg);
    validate_client_events("ga", &conv);
    assert_eq!(shadow_finals(&host).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_leg_dropped_mid_call_is_one_error_and_the_conversation_goes_on() {
    // Every transcription session is dropped after its first few events; the conversation is not.
    let sim = sim(|c| c.companion_drop_after_events = Some(2)).await;
    let (sidecar, metrics_addr) = start_sidecar_with_metrics(&sim.base_url(), &[]).await;
    let mut host = HostSession::open_started(
        sidecar.addr,
        pb::SessionStart {
            input_format: Some(pcm16(16000)),
            shadow_transcription: Some(pb::Transcription::default()),
            ..Default::default()
        },
    )
    .await;
    let streamer = host.stream_in_background(utterance(2.0), 16000, 1);
    let e = host.until_error(Duration::from_secs(15)).await;
    assert_eq!(e.code, "shadow_transcription_failed");
    // The conversation answers as if nothing happened.
    host.until_response_done(Duration::from_secs(15)).await;
    streamer.await.unwrap();
    host.end().await;
    let ended = host.until_ended(Duration::from_secs(15)).await;
    assert_eq!(ended.reason, "client_end");
    let audio_out = host
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Out::Audio(_)))
        .count();
    assert!(audio_out > 0, "the reply was heard");
    let text = http_get(metrics_addr, "/metrics").await;
    assert!(
        metric(&text, "voice_shadow_errors_total", &[("kind", "upstream")]) >= 1.0,
        "{text}"
    );
    // The conversation's session was never dropped (one conversation session, closed by us).
    let conv_updates = client_events(&sim, SessionKind::Conversation)
        .iter()
        .filter(|e| e["type"] == "session.update")
        .count();
    assert_eq!(conv_updates, 1, "no reconnect of the conversation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcription_session_returns_text_for_each_utterance_and_nothing_else() {
    let sim =
        sim(|c| c.user_transcripts = vec!["First utterance.".into(), "Second one.".into()]).await;
    let (sidecar, metrics_addr) = start_sidecar_with_metrics(&sim.base_url(), &[]).await;
    let (mut host, started) = HostSession::open_first_started(
        sidecar.addr,
        pb::SessionStart {
            kind: pb::SessionKind::Transcription as i32,
            input_format: Some(audio_format(pb::Codec::Mulaw, 8000)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(started.model, "gpt-realtime-whisper");
    // Two utterances at 8 kHz µ-law; the second one's end is the end of the stream.
    let mut audio = silence(8000, 0.2);
    audio.extend(speech_like(8000, 1.2));
    audio.extend(silence(8000, 1.5));
    audio.extend(speech_like(8000, 1.0));
    audio.extend(silence(8000, 0.2));
    let mut mulaw = Vec::new();
    voice_audio::g711::encode_ulaw(&audio, &mut mulaw);
    let frames = mulaw.chunks(160).map(|c| Some(c.to_vec())).collect();
    let streamer = host.stream_frames_in_background(frames, 1);
    streamer.await.unwrap();
    host.end().await;
    let ended = host.until_ended(Duration::from_secs(15)).await;
    assert_eq!(ended.reason, "client_end");
    let finals: Vec<String> = shadow_finals(&host).into_iter().map(|t| t.text).collect();
    assert_eq!(finals, ["First utterance.", "Second one."]);
    // No model voice, no responses.
    assert!(!host
        .events
        .iter()
        .any(|(_, e)| matches!(e, Out::Audio(_) | Out::ResponseDone(_))));
    let s = ended.summary.unwrap();
    assert_eq!(s.turns, 2);
    assert!(s.cost_usd > 0.0);
    let text = http_get(metrics_addr, "/metrics").await;
    assert!(metric(&text, "voice_shadow_segment_latency_seconds_count", &[]) >= 2.0);
    let leg = client_events(&sim, SessionKind::Transcription);
    assert_eq!(
        leg.iter()
            .filter(|e| e["type"] == "input_audio_buffer.commit")
            .count(),
        2
    );
    assert!(client_events(&sim, SessionKind::Conversation).is_empty());
    validate_client_events("ga", &leg);
}
