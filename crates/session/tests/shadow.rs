//! The transcription leg in-process, on paused time: a conversation's shadow leg gets the same
//! audio, commits where the conversation's speech stopped and tags each transcript with its segment's
//! offsets; a leg that fails mid-call reconnects or gives up with a typed error while the
//! conversation goes on; G.711 calls feed it 24 kHz PCM16; a transcription-only session segments on
//! its own and delivers the last segment's text before it ends.

mod support;

use base64::Engine;
use serde_json::{json, Value};
use std::time::Duration;
use support::{Harness, Upstream};
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v["audio"].as_str().unwrap())
        .unwrap()
}

/// 20 ms of PCM16 24 kHz: a tone at `amplitude` (0 = silence), sample values numbered by `frame`.
fn frame(frame: u32, amplitude: f64) -> Vec<u8> {
    (0..480u32)
        .flat_map(|i| {
            let n = f64::from(frame * 480 + i);
            ((amplitude * 32767.0 * (n * 0.0523).sin()) as i16).to_le_bytes()
        })
        .collect()
}

async fn send_audio(h: &Harness, from: u32, frames: u32, amplitude: f64) {
    for f in from..from + frames {
        h.host
            .send(In::Audio(pb::AudioFrame {
                data: frame(f, amplitude),
                ..Default::default()
            }))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The audio appends and other events a peer has received so far.
fn received(up: &mut Upstream) -> (Vec<u8>, Vec<Value>) {
    let mut audio = Vec::new();
    let mut other = Vec::new();
    for v in up.drain_now() {
        if v["type"] == "input_audio_buffer.append" {
            audio.extend(b64(&v));
        } else {
            other.push(v);
        }
    }
    (audio, other)
}

fn shadow(t: pb::Transcription) -> pb::SessionStart {
    pb::SessionStart {
        instructions: "Be brief.".into(),
        shadow_transcription: Some(t),
        ..Default::default()
    }
}

/// Accepts the leg's transcription session and returns its `session.update`.
async fn accept_leg(h: &mut Harness) -> (Upstream, Value) {
    let mut leg = h.connection().await;
    let update = leg.accept().await;
    (leg, update)
}

async fn shadow_transcript(h: &mut Harness) -> pb::Transcript {
    h.host
        .until(|m| match m {
            Out::Transcript(t)
                if t.source == pb::TranscriptSource::SourceShadow as i32 && t.r#final =>
            {
                Some(t.clone())
            }
            _ => None,
        })
        .await
}

#[tokio::test(start_paused = true)]
async fn the_shadow_leg_gets_the_same_audio_and_commits_where_speech_stopped() {
    let (mut h, mut conv) = Harness::start(shadow(pb::Transcription {
        include_logprobs: true,
        ..Default::default()
    }))
    .await;
    let (mut leg, update) = accept_leg(&mut h).await;
    assert_eq!(
        update["session"],
        json!({"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-realtime-whisper"},
            "turn_detection": null}},
            "include": ["item.input_audio_transcription.logprobs"]})
    );
    send_audio(&h, 0, 50, 0.3).await;
    let (conv_audio, _) = received(&mut conv);
    let (leg_audio, _) = received(&mut leg);
    assert_eq!(conv_audio.len(), 50 * 960);
    assert_eq!(
        leg_audio, conv_audio,
        "one conversion, two sinks: the same bytes"
    );

    // The conversation's VAD says the user stopped: the leg's segment ends there.
    conv.speech_stopped().await;
    let (commit, _) = leg.until("input_audio_buffer.commit").await;
    assert_eq!(commit["type"], "input_audio_buffer.commit");
    leg.send(
        json!({"type": "input_audio_buffer.committed", "event_id": "e1",
        "item_id": "seg_1", "previous_item_id": null}),
    )
    .await;
    leg.send(
        json!({"type": "conversation.item.input_audio_transcription.delta",
        "event_id": "e2", "item_id": "seg_1", "content_index": 0, "delta": "Where is"}),
    )
    .await;
    leg.send(
        json!({"type": "conversation.item.input_audio_transcription.completed",
        "event_id": "e3", "item_id": "seg_1", "content_index": 0,
        "transcript": "Where is my order?",
        "logprobs": [{"token": "Where", "logprob": -0.1, "bytes": [87]}],
        "usage": {"type": "duration", "seconds": 1.0}}),
    )
    .await;
    let delta = h
        .host
        .until(|m| match m {
            Out::Transcript(t) if t.source == pb::TranscriptSource::SourceShadow as i32 => {
                Some(t.clone())
            }
            _ => None,
        })
        .await;
    assert!(!delta.r#final);
    assert_eq!(delta.text, "Where is");
    let t = shadow_transcript(&mut h).await;
    assert_eq!(t.text, "Where is my order?");
    assert_eq!(t.role, pb::Role::User as i32);
    assert_eq!((t.audio_start_ms, t.audio_end_ms), (0, 1000));
    assert_eq!(t.logprobs.len(), 1);

    // The next segment starts where the last one ended.
    send_audio(&h, 50, 25, 0.3).await;
    conv.speech_stopped().await;
    leg.until("input_audio_buffer.commit").await;
    leg.send(
        json!({"type": "input_audio_buffer.committed", "event_id": "e4",
        "item_id": "seg_2", "previous_item_id": "seg_1"}),
    )
    .await;
    leg.send(
        json!({"type": "conversation.item.input_audio_transcription.completed",
        "event_id": "e5", "item_id": "seg_2", "content_index": 0, "transcript": "Thanks.",
        "usage": {"type": "duration", "seconds": 0.5}}),
    )
    .await;
    let t = shadow_transcript(&mut h).await;
    assert_eq!((t.audio_start_ms, t.audio_end_ms), (1000, 1500));

    // The end: the leg's billed audio is in the session's cost.
    h.host.control(pb::control::Action::End(pb::Empty {})).await;
    let ended = h.host.ended().await;
    assert_eq!(ended.reason, "client_end");
}

#[tokio::test(start_paused = true)]
async fn a_failing_leg_reconnects_then_gives_up_and_the_conversation_goes_on() {
    let (mut h, mut conv) = Harness::start(shadow(pb::Transcription::default())).await;
    let (mut leg, _) = accept_leg(&mut h).await;
    send_audio(&h, 0, 10, 0.3).await;
    leg.close().await;
    let e = h.host.error("shadow_transcription_failed").await;
    assert!(e.retryable, "{e:?}");
    assert!(e.message.contains("reopening"), "{}", e.message);
    // It reopens on its own.
    let (mut leg2, update) = accept_leg(&mut h).await;
    assert_eq!(update["session"]["type"], "transcription");
    send_audio(&h, 10, 10, 0.3).await;
    let (audio, _) = received(&mut leg2);
    assert_eq!(audio.len(), 10 * 960, "the reopened leg gets the audio");

    // Now every reopen fails: after the last attempt the leg gives up, once, not retryable.
    leg2.close().await;
    for _ in 0..voice_session::transcription::leg::MAX_ATTEMPTS {
        let mut l = h.connection().await;
        l.close().await;
    }
    let gave_up = h
        .host
        .until(|m| match m {
            Out::Error(e) if e.code == "shadow_transcription_failed" && !e.retryable => {
                Some(e.clone())
            }
            _ => None,
        })
        .await;
    assert!(gave_up.message.contains("gave up"), "{}", gave_up.message);

    // The conversation never noticed: audio still goes up, a response still plays.
    let (before, _) = received(&mut conv);
    assert_eq!(before.len(), 20 * 960);
    send_audio(&h, 20, 5, 0.3).await;
    let (after, _) = received(&mut conv);
    assert_eq!(after.len(), 5 * 960);
    h.host
        .control(pb::control::Action::SendText("hello".into()))
        .await;
    let (create, _) = conv.until("response.create").await;
    let rid = conv.created_for(&create).await;
    conv.done(&rid, "completed", json!([])).await;
    h.host
        .until(|m| matches!(m, Out::ResponseDone(_)).then_some(()))
        .await;
    h.host.control(pb::control::Action::End(pb::Empty {})).await;
    assert_eq!(h.host.ended().await.reason, "client_end");
}

#[tokio::test(start_paused = true)]
async fn a_mulaw_call_feeds_the_leg_24khz_pcm() {
    let start = pb::SessionStart {
        input_format: Some(pb::AudioFormat {
            codec: pb::Codec::Mulaw as i32,
            sample_rate_hz: 8000,
            ..Default::default()
        }),
        ..shadow(pb::Transcription::default())
    };
    let (mut h, mut conv) = Harness::start(start).await;
    let (mut leg, update) = accept_leg(&mut h).await;
    assert_eq!(
        update["session"]["audio"]["input"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );
    for _ in 0..25 {
        h.host
            .send(In::Audio(pb::AudioFrame {
                data: vec![0x55; 160],
                ..Default::default()
            }))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (conv_audio, _) = received(&mut conv);
    let (leg_audio, _) = received(&mut leg);
    assert_eq!(
        conv_audio.len(),
        25 * 160,
        "the conversation gets µ-law as is"
    );
    // 500 ms at 24 kHz PCM16, give or take the resampler's startup.
    let ms = leg_audio.len() / 48;
    assert!((480..=500).contains(&ms), "{ms} ms");
}

#[tokio::test(start_paused = true)]
async fn a_transcription_session_segments_itself_and_ends_with_the_last_text() {
    let start = pb::SessionStart {
        kind: pb::SessionKind::Transcription as i32,
        shadow_transcription: Some(pb::Transcription {
            language: "en".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut h = Harness::spawn(&start);
    // The only upstream session is the transcription leg.
    let (mut leg, update) = accept_leg(&mut h).await;
    assert_eq!(update["session"]["type"], "transcription");
    let started = h
        .host
        .until(|m| match m {
            Out::Started(s) => Some(s.clone()),
            _ => None,
        })
        .await;
    assert_eq!(started.model, "gpt-realtime-whisper");

    // 1 s of speech and 1 s of silence: the segmenter commits after its hangover.
    send_audio(&h, 0, 50, 0.3).await;
    send_audio(&h, 50, 50, 0.0).await;
    let (_, events) = received(&mut leg);
    let commits = events
        .iter()
        .filter(|e| e["type"] == "input_audio_buffer.commit")
        .count();
    assert_eq!(commits, 1, "{events:?}");
    leg.send(
        json!({"type": "input_audio_buffer.committed", "event_id": "e1",
        "item_id": "seg_1", "previous_item_id": null}),
    )
    .await;
    leg.send(
        json!({"type": "conversation.item.input_audio_transcription.completed",
        "event_id": "e2", "item_id": "seg_1", "content_index": 0, "transcript": "First.",
        "usage": {"type": "duration", "seconds": 1.6}}),
    )
    .await;
    let t = shadow_transcript(&mut h).await;
    assert_eq!(t.text, "First.");
    assert!(
        (1500..=1700).contains(&t.audio_end_ms),
        "segment end after the hangover: {}",
        t.audio_end_ms
    );

    // Speech, then the host ends: the last segment is committed and its text arrives first.
    send_audio(&h, 100, 25, 0.3).await;
    h.host.control(pb::control::Action::End(pb::Empty {})).await;
    leg.until("input_audio_buffer.commit").await;
    leg.send(
        json!({"type": "input_audio_buffer.committed", "event_id": "e3",
        "item_id": "seg_2", "previous_item_id": "seg_1"}),
    )
    .await;
    leg.send(
        json!({"type": "conversation.item.input_audio_transcription.completed",
        "event_id": "e4", "item_id": "seg_2", "content_index": 0, "transcript": "Last words.",
        "usage": {"type": "duration", "seconds": 0.5}}),
    )
    .await;
    let t = shadow_transcript(&mut h).await;
    assert_eq!(t.text, "Last words.");
    let ended = h.host.ended().await;
    assert_eq!(ended.reason, "client_end");
    let s = ended.summary.unwrap();
    assert_eq!(s.turns, 2, "two segments");
    assert!(s.cost_usd > 0.0, "billed per minute: {s:?}");

    // Tools and responses have no place in it.
    let refused = voice_session::SessionPlan::from_start(
        &pb::SessionStart {
            tools: vec![pb::ToolDefinition {
                name: "x".into(),
                ..Default::default()
            }],
            ..start
        },
        &voice_session::Defaults::default(),
    );
    assert!(refused.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_transcription_session_refuses_conversation_messages() {
    let start = pb::SessionStart {
        kind: pb::SessionKind::Transcription as i32,
        ..Default::default()
    };
    let mut h = Harness::spawn(&start);
    let _leg = accept_leg(&mut h).await;
    h.host
        .control(pb::control::Action::SendText("hi".into()))
        .await;
    let e = h.host.error("invalid_control").await;
    assert!(e.message.contains("TRANSCRIPTION"), "{}", e.message);
    h.host.send(In::ToolResult(pb::ToolResult::default())).await;
    let e = h.host.error("invalid_message").await;
    assert!(e.message.contains("ToolResult"), "{}", e.message);
    drop(h.host.tx.clone());
    h.host.control(pb::control::Action::End(pb::Empty {})).await;
    assert_eq!(h.host.ended().await.reason, "client_end");
}

/// A transcription session whose leg rolls over after 5 s (cap 20 s, forced at 18 s).
fn rolling() -> (pb::SessionStart, voice_session::Defaults) {
    let start = pb::SessionStart {
        kind: pb::SessionKind::Transcription as i32,
        ..Default::default()
    };
    let defaults = voice_session::Defaults {
        rollover: voice_session::RolloverPolicy {
            after: Some(Duration::from_secs(5)),
            cap: Duration::from_secs(20),
            margin: Duration::from_secs(2),
        },
        ..Default::default()
    };
    (start, defaults)
}

async fn started(h: &mut Harness) {
    h.host
        .until(|m| matches!(m, Out::Started(_)).then_some(()))
        .await;
}

#[tokio::test(start_paused = true)]
async fn the_leg_rolls_over_at_a_segment_boundary_and_the_old_session_finishes_its_text() {
    let (start, defaults) = rolling();
    let mut h = Harness::spawn_with(&start, &defaults);
    let (mut old, _) = accept_leg(&mut h).await;
    started(&mut h).await;
    // Quiet until past the rollover age: no boundary, no switch.
    send_audio(&h, 0, 300, 0.0).await;
    assert!(
        h.peers.try_recv().is_err(),
        "no new session without a boundary"
    );
    // An utterance: its commit is the boundary; the switch follows the acknowledgement.
    send_audio(&h, 300, 50, 0.3).await;
    send_audio(&h, 350, 35, 0.0).await;
    old.until("input_audio_buffer.commit").await;
    old.send(
        json!({"type": "input_audio_buffer.committed", "event_id": "e1",
        "item_id": "seg_1", "previous_item_id": null}),
    )
    .await;
    let (mut new, update) = accept_leg(&mut h).await;
    assert_eq!(update["session"]["type"], "transcription");
    let r = h
        .host
        .until(|m| match m {
            Out::RolledOver(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(r.leg, "shadow_transcription");
    assert!(!r.forced);
    assert_eq!(r.rollovers, 1);
    // The old session still delivers the text of the segment committed on it.
    old.send(
        json!({"type": "conversation.item.input_audio_transcription.completed",
        "event_id": "e2", "item_id": "seg_1", "content_index": 0, "transcript": "Before.",
        "usage": {"type": "duration", "seconds": 1.0}}),
    )
    .await;
    let t = shadow_transcript(&mut h).await;
    assert_eq!(t.text, "Before.");
    // What reached the old session after its boundary commit was sent again to the new one.
    let (after_commit, _) = received(&mut old);
    let (replayed, _) = received(&mut new);
    assert_eq!(replayed.len(), after_commit.len());
    assert_eq!(replayed.len() / 48, r.replayed_audio_ms as usize);
    // The new session takes the audio from here, and the next segment is committed on it.
    send_audio(&h, 385, 50, 0.3).await;
    send_audio(&h, 435, 35, 0.0).await;
    new.until("input_audio_buffer.commit").await;
    let (old_audio, _) = received(&mut old);
    assert!(old_audio.is_empty(), "nothing more goes to the old session");
    new.send(
        json!({"type": "input_audio_buffer.committed", "event_id": "e3",
        "item_id": "seg_2", "previous_item_id": null}),
    )
    .await;
    new.send(
        json!({"type": "conversation.item.input_audio_transcription.completed",
        "event_id": "e4", "item_id": "seg_2", "content_index": 0, "transcript": "After.",
        "usage": {"type": "duration", "seconds": 1.0}}),
    )
    .await;
    let t = shadow_transcript(&mut h).await;
    assert_eq!(t.text, "After.");
    // Offsets run on across the switch: the second utterance started at 7.7 s.
    assert!(
        t.audio_start_ms >= 7000 && t.audio_end_ms > t.audio_start_ms,
        "{t:?}"
    );
    h.host.control(pb::control::Action::End(pb::Empty {})).await;
    assert_eq!(h.host.ended().await.reason, "client_end");
}

#[tokio::test(start_paused = true)]
async fn without_a_boundary_the_leg_is_forced_over_before_the_cap() {
    let (start, defaults) = rolling();
    let mut h = Harness::spawn_with(&start, &defaults);
    let (_old, _) = accept_leg(&mut h).await;
    started(&mut h).await;
    // Speech that never pauses for long enough (a segment is cut only at 30 s): at 18 s the leg
    // commits what it has and moves on.
    send_audio(&h, 0, 920, 0.3).await;
    let (mut new, _) = accept_leg(&mut h).await;
    let r = h
        .host
        .until(|m| match m {
            Out::RolledOver(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert!(r.forced, "{r:?}");
    assert!((18_000..19_000).contains(&r.upstream_age_ms), "{r:?}");
    send_audio(&h, 920, 10, 0.3).await;
    let (audio, _) = received(&mut new);
    assert!(audio.len() >= 10 * 960, "the new session gets the audio");
}
