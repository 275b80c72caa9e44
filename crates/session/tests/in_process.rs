//! The session in-process: a scripted host and a scripted upstream over channels, on paused time.
//! Barge-in, tool timeouts, the silence guard, reconnect backoff and the response scheduler are
//! checked in milliseconds of real time, with no wall-clock sleeps.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{start_with_tool, Harness};
use tokio::time::Instant;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn paced(mut s: pb::SessionStart) -> pb::SessionStart {
    s.pacing = Some(pb::Pacing {
        enabled: true,
        lead_ms: 100,
    });
    s
}

#[tokio::test(start_paused = true)]
async fn barge_in_truncates_at_the_heard_position_without_a_cancel_server_vad_already_sent() {
    let (mut h, mut up) = Harness::start(paced(start_with_tool(5000))).await;
    let rid = up.respond_to_text(&h.host, "tell me a story").await;
    up.audio(&rid, "item_a", 3000).await;
    // Paced: the first frame goes out at once; 1 s of playback later the caller speaks.
    h.host
        .until(|m| matches!(m, Out::Audio(_)).then_some(()))
        .await;
    let t0 = Instant::now();
    tokio::time::sleep(ms(1000)).await;
    up.speech_started().await;
    let interrupted = h.host.interrupted().await;
    let heard = Instant::now() - t0;
    assert_eq!(interrupted.item_id, "item_a");
    // What was heard: the time since the first frame (paced releases are exact).
    assert_eq!(u64::from(interrupted.played_ms), heard.as_millis() as u64);
    let (truncate, before) = up.until("conversation.item.truncate").await;
    assert_eq!(truncate["item_id"], "item_a");
    assert_eq!(truncate["audio_end_ms"], u64::from(interrupted.played_ms));
    assert!(
        before.iter().all(|e| e["type"] != "response.cancel"),
        "server VAD cancels by itself (interrupt_response): no response.cancel, got {before:?}"
    );
    // Upstream's own cancel arrives; the next response's audio is numbered on from the last frame
    // released: the frames dropped by the barge-in did not consume numbers.
    up.done(&rid, "cancelled", json!([])).await;
    let rid2 = up.respond_to_text(&h.host, "again").await;
    up.audio(&rid2, "item_b", 200).await;
    up.done(&rid2, "completed", json!([])).await;
    h.host
        .until(|m| matches!(m, Out::ResponseDone(d) if d.response_id == rid2).then_some(()))
        .await;
    tokio::time::sleep(ms(400)).await;
    h.host.control(pb::control::Action::End(pb::Empty {})).await;
    h.host.ended().await;
    let seqs = h.host.audio_seqs();
    assert_eq!(seqs[0], 0, "output seq starts at 0");
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "contiguous across the barge-in"
    );
}

#[tokio::test(start_paused = true)]
async fn a_host_cancel_does_send_response_cancel() {
    let (mut h, mut up) = Harness::start(paced(start_with_tool(5000))).await;
    let rid = up.respond_to_text(&h.host, "hello").await;
    up.audio(&rid, "item_a", 1000).await;
    h.host
        .until(|m| matches!(m, Out::Audio(_)).then_some(()))
        .await;
    h.host
        .control(pb::control::Action::CancelResponse(pb::Empty {}))
        .await;
    let (_, _) = up.until("response.cancel").await;
    let i = h.host.interrupted().await;
    assert_eq!(i.item_id, "item_a");
}

#[tokio::test(start_paused = true)]
async fn unpaced_played_position_advances_from_the_last_mark() {
    let (mut h, mut up) = Harness::start(start_with_tool(5000)).await;
    let rid = up.respond_to_text(&h.host, "hello").await;
    up.audio(&rid, "item_a", 3000).await;
    // All 3 s arrive at once (no pacing); the host says it has played 500 ms, 700 ms later it is at
    // 1200 ms.
    h.host
        .until(|m| matches!(m, Out::Audio(_)).then_some(()))
        .await;
    h.host
        .send(In::PlaybackMark(pb::PlaybackMark {
            item_id: "item_a".into(),
            played_ms: 500,
        }))
        .await;
    tokio::time::sleep(ms(700)).await;
    up.speech_started().await;
    let i = h.host.interrupted().await;
    assert_eq!(i.played_ms, 1200);
}

#[tokio::test(start_paused = true)]
async fn an_in_stream_tool_times_out_once_and_a_late_result_is_refused() {
    let (mut h, mut up) = Harness::start(start_with_tool(2000)).await;
    let rid = up.respond_to_text(&h.host, "look it up").await;
    up.call(&rid, "call_1", "lookup", r#"{"q":"x"}"#).await;
    up.done(&rid, "completed", json!([])).await;
    let call = h.host.tool_call().await;
    let t0 = Instant::now();
    assert_eq!(call.timeout_ms, 2000);
    // Nobody answers: 2 s later the model gets the timeout as the call's output, then one create.
    let (output, _) = up.until("conversation.item.create").await;
    assert_eq!(Instant::now() - t0, ms(2000));
    assert_eq!(output["item"]["type"], "function_call_output");
    assert_eq!(output["item"]["call_id"], "call_1");
    assert!(output["item"]["output"]
        .as_str()
        .unwrap()
        .contains("did not answer"));
    let finished = h.host.tool_finished().await;
    assert_eq!(finished.status, pb::ToolStatus::Timeout as i32);
    let (create2, _) = up.until("response.create").await;
    assert!(create2["response"]["metadata"]["voice_sidecar_create"].is_string());
    h.host
        .send(In::ToolResult(pb::ToolResult {
            call_id: "call_1".into(),
            result: Some(pb::tool_result::Result::OutputJson("{}".into())),
        }))
        .await;
    let e = h.host.error("tool_result_late").await;
    assert!(!e.retryable);
    h.host
        .send(In::ToolResult(pb::ToolResult {
            call_id: "nope".into(),
            result: Some(pb::tool_result::Result::OutputJson("{}".into())),
        }))
        .await;
    h.host.error("tool_unknown_call").await;
}

#[tokio::test(start_paused = true)]
async fn the_silence_guard_asks_for_one_holding_line_past_the_threshold() {
    let mut start = start_with_tool(10_000);
    start.silence_guard = Some(pb::SilenceGuard {
        action: pb::silence_guard::Action::HoldingLine as i32,
        threshold_ms: 1500,
        earcon: vec![],
    });
    let (mut h, mut up) = Harness::start(start).await;
    let rid = up.respond_to_text(&h.host, "look it up").await;
    up.call_and_end(&rid, "call_1", "{}").await;
    h.host.tool_call().await;
    let t0 = Instant::now();
    let (hold, _) = up.until("response.create").await;
    assert_eq!(Instant::now() - t0, ms(1500));
    assert_eq!(hold["response"]["metadata"]["purpose"], "holding_line");
    assert_eq!(hold["response"]["conversation"], "none");
    let hid = up.created_for(&hold).await;
    up.done(&hid, "completed", json!([])).await;
    // Once per wait: nothing more until the tool answers.
    tokio::time::sleep(ms(5000)).await;
    assert!(up
        .drain_now()
        .iter()
        .all(|e| e["type"] != "response.create"));
    h.host
        .send(In::ToolResult(pb::ToolResult {
            call_id: "call_1".into(),
            result: Some(pb::tool_result::Result::OutputJson(r#"{"ok":true}"#.into())),
        }))
        .await;
    let (out, _) = up.until("conversation.item.create").await;
    assert_eq!(out["item"]["output"], r#"{"ok":true}"#);
    let (round, _) = up.until("response.create").await;
    assert!(round["response"]["metadata"].get("purpose").is_none());
}

#[tokio::test(start_paused = true)]
async fn reconnect_backs_off_with_jitter_and_the_session_is_never_blind() {
    let (mut h, mut up) = Harness::start(start_with_tool(60_000)).await;
    h.host
        .control(pb::control::Action::SendText(
            "remember the number seven".into(),
        ))
        .await;
    let (create, _) = up.until("response.create").await;
    let rid = up.created_for(&create).await;
    up.call_and_end(&rid, "call_1", "{}").await;
    h.host.tool_call().await;
    up.close().await;
    let lost_at = Instant::now();
    let e = h.host.error("upstream_disconnected").await;
    assert!(e.retryable);
    // While the link is down: the tool result is taken, a control is answered, audio is dropped.
    h.host
        .send(In::ToolResult(pb::ToolResult {
            call_id: "call_1".into(),
            result: Some(pb::tool_result::Result::OutputJson(r#"{"n":7}"#.into())),
        }))
        .await;
    let f = h.host.tool_finished().await;
    assert_eq!(f.status, pb::ToolStatus::Ok as i32);
    h.host
        .send(In::Audio(pb::AudioFrame {
            data: vec![0; 960],
            seq: 0,
            ..Default::default()
        }))
        .await;
    h.host
        .control(pb::control::Action::Commit(pb::Empty {}))
        .await;
    h.host
        .control(pb::control::Action::SendText(String::new()))
        .await;
    h.host.error("invalid_control").await;
    assert!(
        Instant::now() - lost_at < ms(100),
        "host messages were served during the backoff"
    );
    // First attempt within the jittered [100, 200] ms; it accepts the socket but never confirms
    // the session: given up after the 3 s setup timeout, then a second attempt.
    let mut a1 = h.connection().await;
    let d1 = Instant::now() - lost_at;
    assert!(d1 >= ms(100) && d1 <= ms(200), "first retry after {d1:?}");
    a1.send(json!({"type": "session.created", "event_id": "x", "session": {}}))
        .await;
    let _ = a1.until("session.update").await;
    let t1 = Instant::now();
    let mut a2 = h.connection().await;
    let d2 = Instant::now() - t1;
    assert!(
        d2 >= ms(3000 + 200) && d2 <= ms(3000 + 400),
        "setup timeout, then the second backoff in [200, 400] ms: {d2:?}"
    );
    a2.accept().await;
    // The new session gets the conversation as context, the tool result as context, and one create.
    let (create, before) = a2.until("response.create").await;
    let texts: Vec<String> = before
        .iter()
        .filter(|e| e["type"] == "conversation.item.create")
        .map(|e| {
            e["item"]["content"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("remember the number seven")),
        "{texts:?}"
    );
    assert!(texts.iter().any(|t| t.contains(r#"{"n":7}"#)), "{texts:?}");
    assert!(create["response"]["metadata"]["voice_sidecar_create"].is_string());
    h.host.error("upstream_resumed").await;
}

/// Regression (found by the soak test): audio of the old upstream session still playing at the host
/// after a reconnect. A barge-in on it must flush the host but never truncate it in the new session,
/// which does not know the item (upstream answers `item_not_found`); an item of the new session is
/// truncated as usual.
#[tokio::test(start_paused = true)]
async fn a_barge_in_after_a_reconnect_never_truncates_an_item_of_the_old_session() {
    let (mut h, mut up) = Harness::start(paced(start_with_tool(5000))).await;
    let rid = up.respond_to_text(&h.host, "tell me a story").await;
    up.audio(&rid, "item_old", 3000).await;
    h.host
        .until(|m| matches!(m, Out::Audio(f) if f.item_id == "item_old").then_some(()))
        .await;
    // The link drops while 3 s of paced audio are still queued for the host.
    up.close().await;
    h.host.error("upstream_disconnected").await;
    let mut up2 = h.connection().await;
    up2.accept().await;
    // The response that was cut off is asked for again on the new session.
    let (create, _) = up2.until("response.create").await;
    h.host.error("upstream_resumed").await;
    // The old item is still audible at the host: the caller speaks over it.
    up2.speech_started().await;
    let i = h.host.interrupted().await;
    assert_eq!(
        i.item_id, "item_old",
        "the host still flushes the old audio"
    );
    assert!(i.played_ms > 0);
    // A response of the new session, interrupted in turn: its item is truncated, and it is the first
    // truncate the new session sees.
    let rid2 = up2.created_for(&create).await;
    up2.audio(&rid2, "item_new", 2000).await;
    h.host
        .until(|m| matches!(m, Out::Audio(f) if f.item_id == "item_new").then_some(()))
        .await;
    tokio::time::sleep(ms(500)).await;
    up2.speech_started().await;
    let i2 = h.host.interrupted().await;
    assert_eq!(i2.item_id, "item_new");
    let (truncate, before) = up2.until("conversation.item.truncate").await;
    assert_eq!(
        truncate["item_id"], "item_new",
        "an item of the old session was truncated on the new one: {truncate}"
    );
    assert_eq!(truncate["audio_end_ms"], u64::from(i2.played_ms));
    assert!(
        before
            .iter()
            .all(|e| e["type"] != "conversation.item.delete" || e["item_id"] != "item_old"),
        "nothing of the old session is deleted on the new one either: {before:?}"
    );
}

/// Regression (found by the soak test): a host that stops reading its stream froze its session for
/// good (the session waited on the full stream forever, holding its upstream socket). It now ends
/// `host_stalled` once output has waited `--host-stall-timeout-ms` (10 s by default).
#[tokio::test(start_paused = true)]
async fn a_host_that_stops_reading_is_ended_after_the_stall_timeout() {
    let (mut h, mut up) = Harness::start(start_with_tool(5000)).await;
    let rid = up.respond_to_text(&h.host, "talk for a long time").await;
    // 20 s of audio, a thousand host frames: far more than the host's stream holds (256 messages),
    // and the host reads none of it.
    up.audio(&rid, "item_a", 20_000).await;
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), &mut h.task)
        .await
        .expect("the session never gave up on a host that does not read")
        .expect("session task");
    let took = Instant::now() - t0;
    assert!(
        took >= ms(10_000) && took < ms(10_100),
        "ended {took:?} after the stream filled, not at the 10 s stall timeout"
    );
    // The upstream socket was closed with the session.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while up.peer.from_client.recv().await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "the upstream connection is still open");
    // Reading again, the host finds what fit in its stream, and then the end of it.
    let mut audio = 0;
    let mut ended = None;
    while let Some(m) = h.host.rx.recv().await {
        match m.expect("no status").message {
            Some(Out::Audio(_)) => audio += 1,
            Some(Out::Ended(e)) => ended = Some(e.reason),
            _ => {}
        }
    }
    assert!(audio > 100 && audio <= 256, "{audio} audio frames");
    // The stream was full when the session ended: no room was left for SessionEnded.
    assert!(
        ended.is_none() || ended.as_deref() == Some("host_stalled"),
        "{ended:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_backoff_ends_the_session_at_once() {
    let (mut h, mut up) = Harness::start(start_with_tool(1000)).await;
    up.close().await;
    h.host.error("upstream_disconnected").await;
    let t0 = Instant::now();
    h.shutdown.cancel();
    let ended = h.host.ended().await;
    assert_eq!(ended.reason, "shutdown");
    assert!(Instant::now() - t0 < ms(10));
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_is_retried_or_reported_and_never_wedges_the_scheduler() {
    let (mut h, mut up) = Harness::start(start_with_tool(1000)).await;
    h.host
        .control(pb::control::Action::SendText("one".into()))
        .await;
    // A transient failure: retried after the backoff, with a new event id.
    let (c1, _) = up.until("response.create").await;
    up.error_for(&c1["event_id"], "server_error", "server_error")
        .await;
    let t0 = Instant::now();
    let (c2, _) = up.until("response.create").await;
    assert_eq!(Instant::now() - t0, ms(250));
    assert_ne!(c1["event_id"], c2["event_id"]);
    // A permanent failure: the host is told, and the next create goes out.
    up.error_for(&c2["event_id"], "invalid_request_error", "invalid_value")
        .await;
    let e = h.host.error("response_failed").await;
    assert!(!e.retryable);
    assert!(e.message.contains("invalid_value"), "{}", e.message);
    h.host
        .control(pb::control::Action::SendText("two".into()))
        .await;
    let (c3, _) = up.until("response.create").await;
    // Upstream starts it but drops the metadata (a proxy): taken for ours after the fallback.
    let r3 = up.created_untagged().await;
    up.done(&r3, "completed", json!([])).await;
    h.host
        .control(pb::control::Action::SendText("three".into()))
        .await;
    let t0 = Instant::now();
    let (c4, _) = up.until("response.create").await;
    assert_eq!(
        Instant::now() - t0,
        voice_session::scheduler::UNTAGGED_FALLBACK
    );
    assert_ne!(c3["event_id"], c4["event_id"]);
    // And a create upstream never answers is retried after the acknowledgement timeout and the
    // first backoff.
    let t0 = Instant::now();
    let (c5, _) = up.until("response.create").await;
    assert_eq!(
        Instant::now() - t0,
        voice_session::scheduler::CREATE_ACK_TIMEOUT + voice_session::scheduler::RETRY_BASE
    );
    assert_eq!(
        c5["response"]["metadata"]["voice_sidecar_create"],
        c5["event_id"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_tool_result_racing_an_upstream_drop_reaches_the_next_session() {
    let (mut h, mut up) = Harness::start(start_with_tool(60_000)).await;
    let rid = up.respond_to_text(&h.host, "look it up").await;
    up.call_and_end(&rid, "call_1", "{}").await;
    h.host.tool_call().await;
    // The upstream vanishes (both directions) just as the host answers: whichever the session sees
    // first, the output must not be lost.
    drop(up);
    h.host
        .send(In::ToolResult(pb::ToolResult {
            call_id: "call_1".into(),
            result: Some(pb::tool_result::Result::OutputJson(
                r#"{"answer":42}"#.into(),
            )),
        }))
        .await;
    h.host.error("upstream_disconnected").await;
    let mut next = h.connection().await;
    next.accept().await;
    let (create, before) = next.until("response.create").await;
    assert!(
        before
            .iter()
            .any(|e| e["type"] == "conversation.item.create"
                && e["item"]["content"][0]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(r#"{"answer":42}"#) && t.contains("lookup"))),
        "the result went in as context: {before:?}"
    );
    assert!(create["response"]["metadata"]["voice_sidecar_create"].is_string());
}

#[tokio::test(start_paused = true)]
async fn calls_spread_over_overlapping_responses_get_one_create_after_the_last_output() {
    let (mut h, mut up) = Harness::start(start_with_tool(60_000)).await;
    let rid = up.respond_to_text(&h.host, "two things please").await;
    // Response 1: a preamble-only message and one call; done while the call runs.
    up.call_and_end(&rid, "call_a", "{}").await;
    let a = h.host.tool_call().await;
    // Server VAD starts response 2 by itself; it makes another call.
    let rid2 = up.created_untagged().await;
    up.call_and_end(&rid2, "call_b", "{}").await;
    let b = h.host.tool_call().await;
    assert_eq!(
        (a.call_id.as_str(), b.call_id.as_str()),
        ("call_a", "call_b")
    );
    for id in ["call_a", "call_b"] {
        h.host
            .send(In::ToolResult(pb::ToolResult {
                call_id: id.into(),
                result: Some(pb::tool_result::Result::OutputJson("{}".into())),
            }))
            .await;
        h.host.tool_finished().await;
    }
    let (create, before) = up.until("response.create").await;
    let outputs = before
        .iter()
        .filter(|e| e["item"]["type"] == "function_call_output")
        .count();
    assert_eq!(outputs, 2, "both outputs before the one create: {before:?}");
    let r3 = up.created_for(&create).await;
    up.done(&r3, "completed", json!([])).await;
    tokio::time::sleep(ms(3000)).await;
    assert!(
        up.drain_now()
            .iter()
            .all(|e| e["type"] != "response.create"),
        "exactly one create for the round"
    );
}

#[tokio::test(start_paused = true)]
async fn a_model_near_its_shutdown_is_warned_once_and_the_session_goes_on() {
    let defaults = voice_session::Defaults {
        today: Some(voice_realtime::models::Date::new(2027, 1, 5)),
        ..voice_session::Defaults::default()
    };
    let start = pb::SessionStart {
        model: "gpt-realtime".into(),
        ..start_with_tool(1000)
    };
    let (mut h, mut up) = Harness::start_with(start, &defaults).await;
    let e = h.host.error("model_deprecated").await;
    assert!(!e.retryable);
    assert!(e.message.contains("2027-01-20"), "{}", e.message);
    let rid = up.respond_to_text(&h.host, "still works?").await;
    up.done(&rid, "completed", json!([])).await;
    let done = h
        .host
        .until(|m| match m {
            Out::ResponseDone(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    assert_eq!(done.response_id, rid);
    assert_eq!(
        h.host
            .seen
            .iter()
            .filter(|m| matches!(m, Out::Error(e) if e.code == "model_deprecated"))
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn an_unknown_model_gets_assumed_capabilities_and_logprobs_reach_the_host() {
    let start = pb::SessionStart {
        model: "my-azure-deployment".into(),
        reasoning: Some(pb::Reasoning {
            effort: pb::ReasoningEffort::Medium as i32,
        }),
        transcription: Some(pb::Transcription {
            include_logprobs: true,
            ..Default::default()
        }),
        ..start_with_tool(1000)
    };
    // Assumed like gpt-realtime-2 (the default): reasoning is accepted, and no deprecation.
    let mut h = Harness::spawn(&start);
    let mut up = h.connection().await;
    let update = up.accept().await;
    assert_eq!(update["session"]["reasoning"]["effort"], "medium");
    assert_eq!(
        update["session"]["include"][0],
        "item.input_audio_transcription.logprobs"
    );
    up.send(
        json!({"type": "conversation.item.input_audio_transcription.completed",
        "event_id": "e1", "item_id": "u1", "content_index": 0, "transcript": "hello",
        "logprobs": [{"token": "hello", "logprob": -0.25, "bytes": [104, 101, 108, 108, 111]}]}),
    )
    .await;
    let t = h
        .host
        .until(|m| match m {
            Out::Transcript(t) if t.r#final => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!(t.logprobs.len(), 1);
    assert_eq!(t.logprobs[0].token, "hello");
    assert!((t.logprobs[0].logprob + 0.25).abs() < 1e-9);
    assert_eq!(t.logprobs[0].bytes, b"hello");
    assert!(!h
        .host
        .seen
        .iter()
        .any(|m| matches!(m, Out::Error(e) if e.code == "model_deprecated")));
}

#[tokio::test(start_paused = true)]
async fn a_drop_right_after_a_tool_round_keeps_the_call_and_its_output_and_runs_nothing_twice() {
    let (mut h, mut up) = Harness::start(start_with_tool(60_000)).await;
    let rid = up.respond_to_text(&h.host, "what's the weather").await;
    up.call_and_end(&rid, "call_1", r#"{"q":"Oslo"}"#).await;
    h.host.tool_call().await;
    h.host
        .send(In::ToolResult(pb::ToolResult {
            call_id: "call_1".into(),
            result: Some(pb::tool_result::Result::OutputJson(r#"{"temp":21}"#.into())),
        }))
        .await;
    // The round's create goes out; upstream drops before answering it.
    let (_, before) = up.until("response.create").await;
    assert!(before
        .iter()
        .any(|e| e["item"]["type"] == "function_call_output"));
    up.close().await;
    h.host.error("upstream_disconnected").await;
    let mut next = h.connection().await;
    next.accept().await;
    let (create, seeded) = next.until("response.create").await;
    let call = seeded
        .iter()
        .find(|e| e["item"]["type"] == "function_call")
        .expect("the call is seeded as an item");
    assert_eq!(call["item"]["call_id"], "call_1");
    assert_eq!(call["item"]["name"], "lookup");
    assert_eq!(call["item"]["arguments"], r#"{"q":"Oslo"}"#);
    let output = seeded
        .iter()
        .find(|e| e["item"]["type"] == "function_call_output")
        .expect("its output too");
    assert_eq!(output["item"]["call_id"], "call_1");
    assert_eq!(output["item"]["output"], r#"{"temp":21}"#);
    let pos = |t: &str| seeded.iter().position(|e| e["item"]["type"] == t).unwrap();
    assert!(pos("function_call") < pos("function_call_output"));
    // One create asks for the answer; nothing runs twice.
    let r = next.created_for(&create).await;
    next.done(&r, "completed", json!([])).await;
    tokio::time::sleep(ms(3000)).await;
    assert!(next
        .drain_now()
        .iter()
        .all(|e| e["type"] != "response.create"));
    assert_eq!(
        h.host
            .seen
            .iter()
            .filter(|m| matches!(m, Out::ToolCall(_)))
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn the_session_cap_is_reported_as_session_expired_and_the_call_goes_on() {
    let (mut h, mut up) = Harness::start(start_with_tool(1000)).await;
    up.send(json!({"type": "error", "event_id": "e9", "error": {"type": "invalid_request_error",
        "code": "session_expired", "message": "Your session hit the maximum duration of 60 minutes."}}))
        .await;
    up.peer
        .to_client
        .send(voice_realtime::PeerMessage::Close {
            code: Some(1001),
            reason: Some("Your session hit the maximum duration of 60 minutes.".into()),
        })
        .await
        .unwrap();
    let e = h.host.error("session_expired").await;
    assert!(e.retryable);
    assert!(e.message.contains("1001"), "{}", e.message);
    assert!(
        !h.host
            .seen
            .iter()
            .any(|m| matches!(m, Out::Error(e) if e.code == "upstream_error" || e.code == "upstream_disconnected")),
        "one typed error, not a generic one"
    );
    let mut next = h.connection().await;
    next.accept().await;
    h.host.error("upstream_resumed").await;
}

#[tokio::test(start_paused = true)]
async fn a_response_done_for_a_response_never_created_runs_none_of_its_calls() {
    let (mut h, mut up) = Harness::start(start_with_tool(1000)).await;
    up.done(
        "resp_ghost",
        "completed",
        json!([{"type": "function_call", "id": "item_ghost", "call_id": "call_ghost",
            "name": "lookup", "arguments": "{}", "status": "completed"}]),
    )
    .await;
    let rid = up.respond_to_text(&h.host, "look it up").await;
    up.call_and_end(&rid, "call_1", "{}").await;
    let c = h.host.tool_call().await;
    assert_eq!(
        c.call_id, "call_1",
        "the ghost response's call must not run"
    );
}

/// Client events until `kind` arrives or `limit` of (paused) time passes without it.
async fn until_or_none(
    up: &mut support::Upstream,
    kind: &str,
    limit: Duration,
) -> Option<(serde_json::Value, Vec<serde_json::Value>)> {
    tokio::time::timeout(limit, up.until(kind)).await.ok()
}

#[tokio::test(start_paused = true)]
async fn a_runaway_tool_loop_gets_at_most_cap_plus_one_creates_and_tools_off_once() {
    let cap = 3;
    let defaults = voice_session::Defaults {
        limits: voice_session::Limits {
            max_tool_rounds_per_turn: cap,
            ..voice_session::Limits::default()
        },
        ..voice_session::Defaults::default()
    };
    let (mut h, mut up) = Harness::start_with(start_with_tool(5000), &defaults).await;
    let mut rid = up.respond_to_text(&h.host, "loop forever").await;
    // Upstream answers every output with another call whose arguments fail the schema.
    let mut round_creates = Vec::new();
    for i in 0..20 {
        up.call_and_end(&rid, &format!("bad{i}"), r#"{"q": 5}"#)
            .await;
        let Some((create, before)) = until_or_none(&mut up, "response.create", ms(30_000)).await
        else {
            break;
        };
        round_creates.push((create.clone(), before));
        rid = up.created_for(&create).await;
    }
    assert_eq!(
        round_creates.len(),
        cap as usize + 1,
        "cap rounds, then one without tools, then none"
    );
    let (last, before) = round_creates.last().unwrap();
    assert_eq!(last["response"]["tool_choice"], "none", "{last}");
    assert!(
        before
            .iter()
            .any(|e| e["type"] == "conversation.item.create"
                && e["item"]["role"] == "system"
                && e["item"]["content"][0]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("Tools are unavailable"))),
        "the model is told tools are off: {before:?}"
    );
    for (c, _) in &round_creates[..cap as usize] {
        assert!(c["response"].get("tool_choice").is_none(), "{c}");
    }
    // Drain what the host got so far.
    while let Ok(Some(Ok(m))) = tokio::time::timeout(ms(10), h.host.rx.recv()).await {
        h.host.seen.extend(m.message);
    }
    let capped = h
        .host
        .seen
        .iter()
        .filter(|m| matches!(m, Out::Error(e) if e.code == "tool_rounds_capped"))
        .count();
    assert_eq!(capped, 1, "the host is told once");

    // The user speaks: a new turn, tool rounds are allowed again.
    up.speech_started().await;
    up.speech_stopped().await;
    let rid = up.created_untagged().await;
    up.call_and_end(&rid, "after_user", r#"{"q": 5}"#).await;
    let (create, _) = until_or_none(&mut up, "response.create", ms(30_000))
        .await
        .expect("a round after the user spoke gets its create");
    assert!(create["response"].get("tool_choice").is_none(), "{create}");
}

#[tokio::test(start_paused = true)]
async fn response_creates_are_rate_limited_and_held_back_not_lost() {
    let defaults = voice_session::Defaults {
        limits: voice_session::Limits {
            response_creates_per_minute: 2,
            ..voice_session::Limits::default()
        },
        ..voice_session::Defaults::default()
    };
    let (mut h, mut up) = Harness::start_with(start_with_tool(5000), &defaults).await;
    // The bucket holds 2: two creates go at once, the third waits ~30 s.
    for i in 0..2 {
        let rid = up.respond_to_text(&h.host, &format!("q{i}")).await;
        up.done(&rid, "completed", json!([])).await;
    }
    let t0 = Instant::now();
    h.host
        .control(pb::control::Action::SendText("q2".into()))
        .await;
    let e = h.host.error("response_rate_limited").await;
    assert!(e.retryable);
    let (create, _) = up.until("response.create").await;
    let waited = t0.elapsed();
    assert!(waited >= ms(25_000), "held back {waited:?}");
    assert!(create["response"].is_object());
    let rid = up.created_for(&create).await;
    up.done(&rid, "completed", json!([])).await;

    // A create held back when the link drops waits for the new session (and its token), no spin.
    h.host
        .control(pb::control::Action::SendText("q3".into()))
        .await;
    tokio::time::sleep(ms(100)).await;
    up.close().await;
    let mut up2 = h.connection().await;
    up2.accept().await;
    let (create, _) = up2.until("response.create").await;
    assert!(create["response"].is_object());
}

#[tokio::test(start_paused = true)]
async fn a_control_that_changes_one_setting_sends_only_that_setting() {
    let mut start = start_with_tool(5000);
    start.instructions = "i".repeat(200_000 / 4);
    let (mut h, mut up) = Harness::start(start).await;
    h.host.control(pb::control::Action::ListenOnly(true)).await;
    let (u, _) = up.until("session.update").await;
    let text = u.to_string();
    assert!(
        text.len() < 2000,
        "only the changed fields: {} bytes",
        text.len()
    );
    assert!(!text.contains("iiii"), "instructions are not resent");
    assert_eq!(u["session"]["type"], "realtime");
    // The same setting again changes nothing: nothing is sent.
    h.host.control(pb::control::Action::ListenOnly(true)).await;
    h.host.control(pb::control::Action::ListenOnly(false)).await;
    let (u2, _) = up.until("session.update").await;
    assert!(u2.to_string().len() < 2000);
    // A reconnect still configures the new session in full.
    up.close().await;
    let mut up2 = h.connection().await;
    let full = up2.accept().await;
    assert!(
        full.to_string().contains("iiii"),
        "the reconnect sends the full config"
    );
}

#[tokio::test(start_paused = true)]
async fn controls_are_rate_limited_with_one_error() {
    let (mut h, mut up) = Harness::start(start_with_tool(5000)).await;
    // Default: 10 per second, bursts of 20. 100 toggles at once: most are dropped.
    for i in 0..100 {
        h.host
            .control(pb::control::Action::ListenOnly(i % 2 == 0))
            .await;
    }
    let e = h.host.error("control_rate_limited").await;
    assert!(e.retryable);
    tokio::time::sleep(ms(100)).await;
    let updates = up
        .drain_now()
        .into_iter()
        .filter(|e| e["type"] == "session.update")
        .count();
    assert!(updates <= 20, "{updates} updates");
    while let Ok(Some(Ok(m))) = tokio::time::timeout(ms(10), h.host.rx.recv()).await {
        h.host.seen.extend(m.message);
    }
    let errors = h
        .host
        .seen
        .iter()
        .filter(|m| matches!(m, Out::Error(e) if e.code == "control_rate_limited"))
        .count();
    assert_eq!(errors, 1);
}

#[tokio::test(start_paused = true)]
async fn input_audio_faster_than_real_time_is_held_to_real_time_plus_the_burst() {
    let (mut h, mut up) = Harness::start(start_with_tool(5000)).await;
    // PCM16 24 kHz mono: 20 ms = 960 bytes. 10 s of audio at once; the burst is 2 s.
    let frame = vec![0u8; 960];
    for _ in 0..500 {
        h.host
            .send(In::Audio(pb::AudioFrame {
                data: frame.clone(),
                ..Default::default()
            }))
            .await;
    }
    let e = h.host.error("input_audio_too_fast").await;
    assert!(e.retryable);
    tokio::time::sleep(ms(10)).await;
    let appended: usize = up
        .drain_now()
        .iter()
        .filter(|e| e["type"] == "input_audio_buffer.append")
        .count();
    assert!(
        (95..=105).contains(&appended),
        "about 2 s (100 frames) forwarded, got {appended}"
    );
    // Real time goes through.
    for _ in 0..50 {
        tokio::time::sleep(ms(20)).await;
        h.host
            .send(In::Audio(pb::AudioFrame {
                data: frame.clone(),
                ..Default::default()
            }))
            .await;
    }
    tokio::time::sleep(ms(10)).await;
    let appended = up
        .drain_now()
        .iter()
        .filter(|e| e["type"] == "input_audio_buffer.append")
        .count();
    assert!(appended >= 49, "real-time audio passes: {appended}");
}

/// Counts WARN events (and those that report suppressed warnings).
struct WarnCount {
    all: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarnCount {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *e.metadata().level() == tracing::Level::WARN {
            self.all.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn twenty_thousand_unparseable_events_write_a_handful_of_warnings() {
    use tracing_subscriber::layer::SubscriberExt;
    let all = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry().with(WarnCount { all: all.clone() });
    let _guard = tracing::subscriber::set_default(subscriber);
    let (mut h, mut up) = Harness::start(start_with_tool(5000)).await;
    for i in 0..20_000 {
        up.send(json!({"not_an_event": i})).await;
    }
    // The session is still fine.
    let rid = up.respond_to_text(&h.host, "still there?").await;
    up.done(&rid, "completed", json!([])).await;
    h.host.control(pb::control::Action::End(pb::Empty {})).await;
    h.host.ended().await;
    let _ = h.task.await;
    let warns = all.load(std::sync::atomic::Ordering::Relaxed);
    // Five per 10 s window, plus the suppressed-count summary at the end.
    assert!((2..=10).contains(&warns), "{warns} warnings logged");
}
