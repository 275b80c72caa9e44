//! Long calls in-process, on paused time: the hot-standby rollover (natural and forced) and the
//! host-set call limit. Upstream sessions are scripted, so what each one received is checked event by
//! event.

mod support;

use base64::Engine;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{start_with_tool, Harness};
use tokio::time::Instant;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;
use voice_session::conversation::CONTINUATION_NOTE;
use voice_session::{Defaults, RolloverPolicy};

fn secs(x: u64) -> Duration {
    Duration::from_secs(x)
}

/// Rollover after 10 s, upstream cap 30 s, forced at 26 s (hard at 28 s).
fn short_sessions() -> Defaults {
    Defaults {
        rollover: RolloverPolicy {
            after: Some(secs(10)),
            cap: secs(30),
            margin: secs(4),
        },
        ..Defaults::default()
    }
}

fn quiet_guard(mut s: pb::SessionStart) -> pb::SessionStart {
    s.silence_guard = Some(pb::SilenceGuard {
        action: pb::silence_guard::Action::Off as i32,
        ..Default::default()
    });
    s
}

fn decoded_appends(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == "input_audio_buffer.append")
        .map(|e| {
            base64::engine::general_purpose::STANDARD
                .decode(e["audio"].as_str().unwrap())
                .unwrap()
                .len()
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn a_planned_rollover_carries_a_running_call_and_its_result_lands_once_in_the_new_session() {
    let t0 = Instant::now();
    let (mut h, mut up) =
        Harness::start_with(quiet_guard(start_with_tool(120_000)), &short_sessions()).await;
    let rid = up.respond_to_text(&h.host, "look up my order").await;
    up.call(&rid, "call_1", "lookup", r#"{"q":"order"}"#).await;
    up.done(&rid, "completed", json!([])).await;
    let call = h.host.tool_call().await;
    assert_eq!(call.call_id, "call_1");

    // At 10 s the standby is opened and configured: the instructions say the call continues.
    let mut next = h.connection().await;
    assert_eq!(Instant::now() - t0, secs(10));
    let update = next.accept().await;
    let instructions = update["session"]["instructions"].as_str().unwrap();
    assert!(instructions.starts_with("Be brief."), "{instructions}");
    assert!(instructions.ends_with(CONTINUATION_NOTE), "{instructions}");
    // Seeded with the conversation, then (at the switch: nothing is playing or asked for) the
    // running call's function_call item, so its output has somewhere to land.
    let (seed, _) = next.until("conversation.item.create").await;
    assert_eq!(seed["item"]["role"], "user");
    assert_eq!(seed["item"]["content"][0]["text"], "look up my order");
    let (carried, _) = next.until("conversation.item.create").await;
    assert_eq!(
        carried["item"],
        json!({"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{\"q\":\"order\"}"})
    );
    let rolled = h.host.rolled_over().await;
    assert!(!rolled.forced);
    assert_eq!(rolled.calls_carried, 1);
    assert_eq!(rolled.seeded_items, 2);
    assert_eq!(rolled.upstream_age_ms, 10_000);
    assert_eq!(rolled.rollovers, 1);

    // The result goes to the new session, once, followed by exactly one create.
    h.host
        .send(In::ToolResult(pb::ToolResult {
            call_id: "call_1".into(),
            result: Some(pb::tool_result::Result::OutputJson(
                r#"{"status":"shipped"}"#.into(),
            )),
        }))
        .await;
    let (output, _) = next.until("conversation.item.create").await;
    assert_eq!(output["item"]["type"], "function_call_output");
    assert_eq!(output["item"]["call_id"], "call_1");
    let (create, before) = next.until("response.create").await;
    assert!(before.is_empty(), "{before:?}");
    assert!(create["response"]["metadata"]["voice_sidecar_create"].is_string());
    // The old session got nothing after the switch, and was closed.
    let old: Vec<Value> = up.drain_now();
    assert!(
        old.iter()
            .all(|e| e["type"] != "conversation.item.create" && e["type"] != "response.create"),
        "{old:?}"
    );
    let rid2 = next.created_for(&create).await;
    next.done(&rid2, "completed", json!([])).await;

    // The next rollover comes 10 s after the switch, on the new session's clock.
    let t1 = Instant::now();
    let mut third = h.connection().await;
    assert!(Instant::now() - t1 <= secs(10));
    third.accept().await;
    let rolled = h.host.rolled_over().await;
    assert_eq!(rolled.rollovers, 2);
    assert_eq!(rolled.calls_carried, 0);
    h.host.control(pb::control::Action::End(pb::Empty {})).await;
    let ended = h.host.ended().await;
    assert_eq!(ended.summary.unwrap().rollovers, 2);
}

#[tokio::test(start_paused = true)]
async fn no_switch_while_the_user_waits_for_an_answer_or_audio_plays() {
    let (mut h, mut up) =
        Harness::start_with(quiet_guard(start_with_tool(5_000)), &short_sessions()).await;
    // The user finished a turn: upstream will answer it on its own (server VAD), so the standby
    // that is ready at 10 s waits for that answer and for its audio to play out.
    up.speech_started().await;
    up.speech_stopped().await;
    let mut next = h.connection().await;
    next.accept().await;
    tokio::time::sleep(secs(2)).await;
    while let Ok(m) = h.host.rx.try_recv() {
        let m = m.unwrap().message.unwrap();
        assert!(
            !matches!(m, Out::RolledOver(_)),
            "switched while a reply was due"
        );
    }
    let rid = up.created_untagged().await;
    up.audio(&rid, "item_a", 2_000).await;
    up.done(&rid, "completed", json!([])).await;
    let t_audio = Instant::now();
    let rolled = h.host.rolled_over().await;
    assert!(!rolled.forced);
    assert!(
        Instant::now() - t_audio >= secs(2),
        "switched before the reply's audio played out ({:?})",
        Instant::now() - t_audio
    );
}

#[tokio::test(start_paused = true)]
async fn forced_switch_when_the_user_never_pauses_replays_the_utterance_and_loses_no_frame() {
    let (mut h, mut up) = Harness::start_with(
        quiet_guard(pb::SessionStart {
            instructions: "Be brief.".into(),
            ..Default::default()
        }),
        &short_sessions(),
    )
    .await;
    // The host streams 20 ms PCM16 frames at real time for 40 s.
    let frame = vec![1u8; 960];
    let sent = Arc::new(AtomicUsize::new(0));
    let tx = h.host.tx.clone();
    let counter = sent.clone();
    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for seq in 1..=2000u64 {
            tick.tick().await;
            let m = In::Audio(pb::AudioFrame {
                data: frame.clone(),
                seq,
                ..Default::default()
            });
            if tx
                .send(Ok(pb::ClientMessage { message: Some(m) }))
                .await
                .is_err()
            {
                break;
            }
            counter.fetch_add(960, Ordering::SeqCst);
        }
    });
    up.speech_started().await;
    let mut next = h.connection().await;
    next.accept().await;
    let rolled = h.host.rolled_over().await;
    assert!(rolled.forced);
    assert_eq!(
        rolled.upstream_age_ms, 26_000,
        "forced at the cap minus the margin"
    );
    // The replay holds at most 10 s: everything since the standby was ready, capped.
    assert!(
        (9_900..=10_000).contains(&rolled.replayed_audio_ms),
        "{}",
        rolled.replayed_audio_ms
    );
    feeder.await.unwrap();
    tokio::time::sleep(secs(1)).await;
    // Old session: everything until the switch. New: the replay, then every later frame.
    let mut old = up.drain_now();
    old.retain(|e| e["type"] == "input_audio_buffer.append");
    let new_events = {
        let mut v = Vec::new();
        while let Ok(t) = next.peer.from_client.try_recv() {
            v.push(serde_json::from_str::<Value>(&t).unwrap());
        }
        v
    };
    let replayed = rolled.replayed_audio_ms as usize * 48;
    let total = sent.load(Ordering::SeqCst);
    assert_eq!(
        decoded_appends(&old) + decoded_appends(&new_events) - replayed,
        total,
        "every host frame went upstream exactly once (beside the replay)"
    );
    // No response was asked for at the switch (nothing was cut off): no greeting.
    assert!(new_events.iter().all(|e| e["type"] != "response.create"));
}

#[tokio::test(start_paused = true)]
async fn the_host_set_limit_warns_speaks_the_line_and_ends_the_call() {
    let t0 = Instant::now();
    let mut start = quiet_guard(pb::SessionStart {
        instructions: "Be brief.".into(),
        ..Default::default()
    });
    start.max_duration_secs = 60;
    start.max_duration_warning_secs = 20;
    start.max_duration_warning_line = "We have about twenty seconds left.".into();
    let (mut h, mut up) = Harness::start(start).await;
    let (create, _) = up.until("response.create").await;
    assert_eq!(Instant::now() - t0, secs(40));
    assert!(create["response"]["instructions"]
        .as_str()
        .unwrap()
        .contains("We have about twenty seconds left."));
    assert_eq!(create["response"]["tool_choice"], "none");
    let soon = h
        .host
        .until(|m| match m {
            Out::EndingSoon(e) => Some(*e),
            _ => None,
        })
        .await;
    assert_eq!(soon.remaining_ms, 20_000);
    assert!(soon.line_spoken);
    let rid = up.created_for(&create).await;
    up.done(&rid, "completed", json!([])).await;
    let ended = h.host.ended().await;
    assert_eq!(ended.reason, "max_duration");
    assert_eq!(Instant::now() - t0, secs(60));
}

#[test]
fn a_rollover_age_past_the_forced_switch_is_refused() {
    let start = pb::SessionStart {
        rollover_after_secs: 3590,
        ..Default::default()
    };
    let e = voice_session::SessionPlan::from_start(&start, &Defaults::default()).unwrap_err();
    assert!(e.to_string().contains("rollover_after_secs"), "{e}");
    let start = pb::SessionStart {
        max_duration_warning_line: "bye".into(),
        ..Default::default()
    };
    let e = voice_session::SessionPlan::from_start(&start, &Defaults::default()).unwrap_err();
    assert!(e.to_string().contains("no call limit"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_standby_that_cannot_be_opened_is_retried_and_the_call_goes_on() {
    let t0 = Instant::now();
    let (mut h, mut up) =
        Harness::start_with(quiet_guard(start_with_tool(5_000)), &short_sessions()).await;
    // The first standby never confirms its session: the setup timeout (3 s) fails it.
    let mut stuck = h.connection().await;
    assert_eq!(Instant::now() - t0, secs(10));
    stuck
        .send(json!({"type": "session.created", "event_id": "s0", "session": {"id": "sess_x"}}))
        .await;
    // Meanwhile the call is served by the current session.
    let rid = up.respond_to_text(&h.host, "still there?").await;
    up.done(&rid, "completed", json!([])).await;
    // Retried 2 s after the failure; that one comes up and the call switches to it.
    let mut next = h.connection().await;
    assert_eq!(Instant::now() - t0, secs(15));
    next.accept().await;
    let rolled = h.host.rolled_over().await;
    assert!(!rolled.forced);
    assert_eq!(rolled.upstream_age_ms, 15_000);
    // The seed carried the typed turn; the failed standby got nothing but its configuration.
    let (seed, _) = next.until("conversation.item.create").await;
    assert_eq!(seed["item"]["content"][0]["text"], "still there?");
    let stuck_events = stuck.drain_now();
    assert!(
        stuck_events.iter().all(|e| e["type"] == "session.update"),
        "{stuck_events:?}"
    );
}

/// Like after a reconnect (see `in_process.rs`): audio of the old upstream session still playing at
/// the host after a forced switch is flushed on a barge-in but never truncated on the new session,
/// which does not know the item; an item of the new session is truncated as usual.
#[tokio::test(start_paused = true)]
async fn a_barge_in_after_a_forced_switch_never_truncates_an_item_of_the_old_session() {
    let mut start = quiet_guard(start_with_tool(5000));
    start.pacing = Some(pb::Pacing {
        enabled: true,
        lead_ms: 100,
    });
    let (mut h, mut up) = Harness::start_with(start, &short_sessions()).await;
    tokio::time::sleep(secs(5)).await;
    // 25 s of paced audio from 5 s on: no natural pause before the forced switch at 26 s.
    let rid = up.respond_to_text(&h.host, "tell me a long story").await;
    up.audio(&rid, "item_old", 25_000).await;
    let mut next = h.connection().await;
    next.accept().await;
    let rolled = h.host.rolled_over().await;
    assert!(rolled.forced);
    // The cut-off response is asked for again on the new session.
    let (create, _) = next.until("response.create").await;
    // The old item is still playing: the caller speaks over it.
    next.speech_started().await;
    let i = h.host.interrupted().await;
    assert_eq!(i.item_id, "item_old");
    let rid2 = next.created_for(&create).await;
    next.audio(&rid2, "item_new", 2000).await;
    h.host
        .until(|m| matches!(m, Out::Audio(f) if f.item_id == "item_new").then_some(()))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    next.speech_started().await;
    let i2 = h.host.interrupted().await;
    assert_eq!(i2.item_id, "item_new");
    let (truncate, _) = next.until("conversation.item.truncate").await;
    assert_eq!(
        truncate["item_id"], "item_new",
        "an item of the old session was truncated on the new one: {truncate}"
    );
}
