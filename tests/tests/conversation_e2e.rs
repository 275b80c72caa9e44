//! Conversation control end to end: barge-in with paced output and with playback marks, the preamble
//! policy, the silence guard during a slow tool, listen-only mode, and the stream controls — each
//! checked in what the host receives and in what the simulator (upstream) was sent.

use serde_json::json;
use std::time::{Duration, Instant};
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime_sim::{ScriptStep, SimConfig, SimHandle};

const LONG: &str = "This is a deliberately long answer so that the caller has plenty of time to interrupt it while it is still playing back.";

async fn sim(script: Vec<ScriptStep>) -> SimHandle {
    let cfg = SimConfig {
        script,
        record_client_events: true,
        ms_per_char: 50,
        ..Default::default()
    };
    start_sim(cfg).await
}

/// speech, then `gap` s of silence, then speech again (the barge-in), then silence.
fn talk_then_interrupt(gap: f32) -> Vec<i16> {
    let mut s = silence(16000, 0.2);
    s.extend(speech_like(16000, 1.2));
    s.extend(silence(16000, gap));
    s.extend(speech_like(16000, 1.0));
    s.extend(silence(16000, 2.0));
    s
}

fn start(pacing: Option<u32>) -> pb::SessionStart {
    pb::SessionStart {
        input_format: Some(pcm16(16000)),
        pacing: pacing.map(|lead_ms| pb::Pacing {
            enabled: true,
            lead_ms,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_with_paced_output_truncates_at_what_was_released() {
    let sim = sim(vec![ScriptStep::say(LONG), ScriptStep::say("Yes?")]).await;
    let (sidecar, metrics_addr) = start_sidecar_with_metrics(&sim.base_url(), &[]).await;
    let lead_ms = 20u32;
    let mut host = HostSession::open_started(sidecar.addr, start(Some(lead_ms))).await;
    let streamer = host.stream_in_background(talk_then_interrupt(3.5), 16000, 1);

    let int = host.until_interrupted(Duration::from_secs(20)).await;
    let int_at = host.events.len();
    // Paced: frames arrived in real time, so the first reply frame is ~played_ms in the past.
    let item_frames: Vec<(Duration, u32)> = host.events[..int_at]
        .iter()
        .filter_map(|(t, e)| match e {
            Out::Audio(a) if a.item_id == int.item_id => Some((*t, a.duration_us)),
            _ => None,
        })
        .collect();
    assert!(
        item_frames.len() > 20,
        "the reply was playing: {} frames",
        item_frames.len()
    );
    let released_ms: u32 = item_frames.iter().map(|(_, d)| d / 1000).sum();
    let span = item_frames.last().unwrap().0 - item_frames[0].0;
    assert!(
        span.as_millis() as u32 + 200 > released_ms,
        "paced output is released in real time, not in bursts ({released_ms} ms in {span:?})"
    );
    let played = i64::from(int.played_ms);
    let expected = i64::from(released_ms) - i64::from(lead_ms);
    assert!(
        (played - expected).abs() <= 30,
        "played_ms {played} vs released {released_ms} minus lead {lead_ms}"
    );

    // Upstream memory matches what the caller heard.
    host.until(Duration::from_secs(10), |e| matches!(e, Out::ResponseDone(r) if r.status == "completed" && !r.response_id.is_empty()) ).await;
    let truncs = sim.truncations();
    assert_eq!(truncs.len(), 1, "{truncs:?}");
    assert_eq!(truncs[0].item_id, int.item_id);
    assert_eq!(truncs[0].audio_end_ms as u32, int.played_ms);
    // Nothing of the interrupted item reaches the host after Interrupted.
    assert!(
        !host.events[int_at..]
            .iter()
            .any(|(_, e)| matches!(e, Out::Audio(a) if a.item_id == int.item_id)),
        "audio of the interrupted response was forwarded after Interrupted"
    );
    let text = http_get(metrics_addr, "/metrics").await;
    assert_eq!(
        metric(&text, "voice_interruptions_total", &[]),
        1.0,
        "one barge-in counted"
    );
    streamer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_without_pacing_uses_playback_marks() {
    let sim = sim(vec![ScriptStep::say(LONG), ScriptStep::say("Yes?")]).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut host = HostSession::open_started(sidecar.addr, start(None)).await;
    let streamer = host.stream_in_background(talk_then_interrupt(3.5), 16000, 1);
    let first = host.until_audio(Duration::from_secs(20)).await;
    // The host reports its own playback position; playback goes on after the mark, so the
    // position at the barge-in is the mark plus the time since it (the proto's contract).
    let marked_at = Instant::now();
    host.send(In::PlaybackMark(pb::PlaybackMark {
        item_id: first.item_id.clone(),
        played_ms: 777,
    }))
    .await;
    let int = host.until_interrupted(Duration::from_secs(20)).await;
    let since_mark = marked_at.elapsed().as_millis() as u32;
    assert_eq!(int.item_id, first.item_id);
    assert!(
        int.played_ms >= 777 && int.played_ms <= 777 + since_mark,
        "played {} ms: not within the mark (777) and the mark plus {since_mark} ms",
        int.played_ms
    );
    eventually(
        Duration::from_secs(3),
        || !sim.truncations().is_empty(),
        || "no truncate reached upstream",
    )
    .await;
    assert_eq!(
        sim.truncations()[0].audio_end_ms,
        u64::from(int.played_ms),
        "upstream is truncated where the host was told it stopped"
    );
    streamer.abort();
}

#[tokio::test]
async fn preamble_policy_default_custom_and_off() {
    let sim = sim(vec![]).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    for (preamble, check) in [
        (
            None,
            Box::new(|i: &str| i.starts_with("Base.") && i.contains("Before you call a tool"))
                as Box<dyn Fn(&str) -> bool>,
        ),
        (
            Some(pb::Preamble {
                mode: pb::preamble::Mode::Custom as i32,
                custom_text: "Always say 'one sec'.".into(),
            }),
            Box::new(|i: &str| i == "Base.\n\nAlways say 'one sec'."),
        ),
        (
            Some(pb::Preamble {
                mode: pb::preamble::Mode::Off as i32,
                custom_text: String::new(),
            }),
            Box::new(|i: &str| i == "Base."),
        ),
    ] {
        let before = sent(&sim, "session.update").len();
        // The session stays open while its session.update is checked.
        let _host = HostSession::open_started(
            sidecar.addr,
            pb::SessionStart {
                instructions: "Base.".into(),
                preamble,
                ..Default::default()
            },
        )
        .await;
        let updates = sent(&sim, "session.update");
        assert_eq!(updates.len(), before + 1);
        let instr = updates.last().unwrap()["session"]["instructions"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(check(&instr), "unexpected instructions: {instr:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_guard_fills_a_slow_tool_and_the_result_is_still_read_back() {
    for action in [
        pb::silence_guard::Action::HoldingLine,
        pb::silence_guard::Action::Earcon,
    ] {
        let sim = sim(vec![ScriptStep::tools(
            None,
            vec![("slow", json!({}))],
            "The answer is {outputs}",
        )])
        .await;
        let sidecar = start_sidecar(&sim.base_url(), &[]).await;
        let earcon = pcm_bytes(&speech_like(16000, 0.3));
        let mut host = HostSession::open_started(
            sidecar.addr,
            pb::SessionStart {
                input_format: Some(pcm16(16000)),
                tools: vec![pb::ToolDefinition {
                    name: "slow".into(),
                    timeout_ms: 10_000,
                    ..Default::default()
                }],
                tool_routing: Some(pb::ToolRouting {
                    route: Some(pb::tool_routing::Route::InStream(true)),
                }),
                silence_guard: Some(pb::SilenceGuard {
                    action: action as i32,
                    threshold_ms: 1000,
                    earcon: earcon.clone(),
                }),
                ..Default::default()
            },
        )
        .await;
        host.send_text("look it up").await;
        let call = host.until_tool_call(Duration::from_secs(10)).await;
        let called_at = host.t0.elapsed();
        // The host hears something before the threshold plus a small margin.
        let a = host.until_audio(Duration::from_secs(3)).await;
        let waited = host.t0.elapsed() - called_at;
        assert!(
            waited >= Duration::from_millis(950) && waited < Duration::from_millis(1600),
            "{action:?}: first sound after {waited:?}"
        );
        if action == pb::silence_guard::Action::Earcon {
            assert_eq!(a.data, earcon, "the configured earcon is played");
        }
        // The slow tool finishes later; its result is still read back, with one create for the round.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        host.send(In::ToolResult(pb::ToolResult {
            call_id: call.call_id,
            result: Some(pb::tool_result::Result::OutputJson("{\"value\":42}".into())),
        }))
        .await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let e = host.until(deadline - Instant::now(), |e| matches!(e, Out::Transcript(t) if t.r#final && t.role == pb::Role::Assistant as i32)).await;
            if let Out::Transcript(t) = e {
                if t.text.contains("42") {
                    break;
                }
            }
        }
        let creates = sent(&sim, "response.create");
        let holding = creates
            .iter()
            .filter(|c| c["response"]["conversation"] == "none")
            .count();
        assert_eq!(
            holding,
            usize::from(action == pb::silence_guard::Action::HoldingLine),
            "{action:?}: {creates:?}"
        );
        assert_eq!(
            creates.len() - holding,
            2,
            "the question and exactly one create for the round"
        );
        assert_eq!(
            sim.stats().errors_sent,
            0,
            "no create collided with an active response"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_only_mode_keeps_transcripts_and_silences_the_assistant() {
    let sim = sim(vec![ScriptStep::say("Now I may speak.")]).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut host = HostSession::open_started(
        sidecar.addr,
        pb::SessionStart {
            input_format: Some(pcm16(16000)),
            listen_only: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        sent(&sim, "session.update")[0]["session"]["audio"]["input"]["turn_detection"]
            ["create_response"],
        false
    );
    let mut turn = silence(16000, 0.2);
    turn.extend(speech_like(16000, 1.0));
    turn.extend(silence(16000, 1.5));
    host.stream_in_background(turn.clone(), 16000, 1)
        .await
        .unwrap();
    host.until(
        Duration::from_secs(5),
        |e| matches!(e, Out::Transcript(t) if t.role == pb::Role::User as i32 && t.r#final),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    host.control(pb::control::Action::ListenOnly(false)).await;
    let seq = host.stream_in_background(turn, 16000, 1000);
    host.until_response_done(Duration::from_secs(10)).await;
    seq.await.unwrap();
    let kinds = host.kinds();
    let first_audio = kinds.iter().position(|k| k == "audio").unwrap();
    let speech_stops: Vec<usize> = kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| *k == "speech_stopped")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(speech_stops.len(), 2, "{kinds:?}");
    assert!(
        first_audio > speech_stops[1],
        "no assistant audio while listen-only was on: {kinds:?}"
    );
    let updates = sent(&sim, "session.update");
    assert_eq!(
        updates.last().unwrap()["session"]["audio"]["input"]["turn_detection"]
            .get("create_response"),
        None
    );
}

#[tokio::test]
async fn controls_map_to_upstream_events() {
    let sim = sim(vec![ScriptStep::say(LONG)]).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut host = HostSession::open_started(
        sidecar.addr,
        pb::SessionStart {
            input_format: Some(pcm16(16000)),
            ..Default::default()
        },
    )
    .await;

    // Manual turn control.
    host.control(pb::control::Action::UpdateSession(pb::SessionUpdate {
        instructions: Some("New rules.".into()),
        voice: Some("marin".into()),
        turn_detection: Some(pb::TurnDetection {
            mode: Some(pb::turn_detection::Mode::Disabled(pb::Disabled {})),
        }),
        ..Default::default()
    }))
    .await;
    host.control(pb::control::Action::ClearInput(pb::Empty {}))
        .await;
    host.stream_in_background(speech_like(16000, 0.5), 16000, 1)
        .await
        .unwrap();
    host.control(pb::control::Action::Commit(pb::Empty {}))
        .await;
    // A manual commit gets a response (turn detection is off); cancel it mid-way.
    host.until_audio(Duration::from_secs(10)).await;
    host.control(pb::control::Action::CancelResponse(pb::Empty {}))
        .await;
    host.until(
        Duration::from_secs(10),
        |e| matches!(e, Out::ResponseDone(r) if r.status == "cancelled"),
    )
    .await;
    host.send_text("hello by text").await;
    host.until_response_done(Duration::from_secs(10)).await;

    // An invalid update is refused on the stream, not sent upstream.
    let updates_before = sent(&sim, "session.update").len();
    host.control(pb::control::Action::UpdateSession(pb::SessionUpdate {
        turn_detection: Some(pb::TurnDetection {
            mode: Some(pb::turn_detection::Mode::ServerVad(pb::ServerVad {
                silence_duration_ms: Some(99_999),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }))
    .await;
    let e = host.until_error(Duration::from_secs(5)).await;
    assert_eq!(e.code, "invalid_control");
    assert!(e.message.contains("silence_duration_ms"), "{}", e.message);
    assert_eq!(sent(&sim, "session.update").len(), updates_before);

    let log: Vec<String> = sim
        .events_log()
        .into_iter()
        .map(|e| e.event["type"].as_str().unwrap().to_string())
        .collect();
    let pos = |k: &str| {
        log.iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("{k} never sent: {log:?}"))
    };
    let update = &sent(&sim, "session.update")[1]["session"];
    assert!(update["instructions"]
        .as_str()
        .unwrap()
        .starts_with("New rules."));
    assert_eq!(update["audio"]["output"]["voice"], "marin");
    assert!(update["audio"]["input"]["turn_detection"].is_null());
    assert!(pos("input_audio_buffer.clear") < pos("input_audio_buffer.commit"));
    assert!(pos("input_audio_buffer.commit") < pos("response.cancel"));
    let texts = sent(&sim, "conversation.item.create");
    assert_eq!(texts[0]["item"]["content"][0]["text"], "hello by text");
    assert_eq!(
        sent(&sim, "response.create").len(),
        2,
        "one for the commit, one for the text"
    );
    assert_eq!(sim.stats().errors_sent, 0);
}

#[tokio::test]
async fn out_of_range_turn_detection_is_refused_at_start() {
    let sim = sim(vec![]).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let err = HostSession::open(
        sidecar.addr,
        pb::SessionStart {
            turn_detection: Some(pb::TurnDetection {
                mode: Some(pb::turn_detection::Mode::SemanticVad(pb::SemanticVad {
                    eagerness: "frantic".into(),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("eagerness"), "{}", err.message());
}

#[tokio::test]
async fn memory_goes_in_as_a_block_and_the_calls_notes_come_back_at_the_end() {
    let sim = sim(vec![
        ScriptStep::say("Hi Ana, what can I do for you?"),
        ScriptStep::Say {
            text: "Ana asked for a refill; ready Friday.".into(),
            when_text_contains: Some("key facts".into()),
        },
    ])
    .await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut host = HostSession::open_started(
        sidecar.addr,
        pb::SessionStart {
            input_format: Some(pcm16(16000)),
            instructions: "You are a pharmacy assistant.".into(),
            memory: "Caller is Ana. Prefers text reminders.".into(),
            extract_notes: true,
            ..Default::default()
        },
    )
    .await;
    host.send_text("hello").await;
    host.until_response_done(Duration::from_secs(10)).await;
    host.end().await;
    let ended = host.until_ended(Duration::from_secs(10)).await;
    assert_eq!(ended.notes, "Ana asked for a refill; ready Friday.");
    let update = &sent(&sim, "session.update")[0];
    let instructions = update["session"]["instructions"].as_str().unwrap();
    assert!(
        instructions.contains("<memory>\nCaller is Ana. Prefers text reminders.\n</memory>"),
        "{instructions}"
    );
    // The notes request is out of band and text only; every event validates against the models.
    let creates = sent(&sim, "response.create");
    let notes = creates.last().unwrap();
    assert_eq!(notes["response"]["conversation"], "none");
    assert_eq!(notes["response"]["output_modalities"], json!(["text"]));
    let all: Vec<serde_json::Value> = sim.events_log().into_iter().map(|e| e.event).collect();
    validate_client_events("ga", &all);
}
