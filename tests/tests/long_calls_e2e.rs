//! Long calls end to end: the real sidecar against the simulator with a session cap of seconds.
//! A call rolls over to a new upstream session at a natural pause with a tool call in flight and the
//! user speaking around the boundary, or is forced over when the user never pauses; the host-set
//! call limit ends a call. Every input byte, tool output and `response.create` is checked in what the
//! simulator received, session by session.

use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime_sim::{ScriptStep, SimConfig, SimHandle};

const CAP_MS: u64 = 8_000;

/// Rollover after 2 s; upstream cap 8 s (the simulator's); forced at 6 s.
const ROLLOVER_FLAGS: &[&str] = &[
    "--rollover-after-secs",
    "2",
    "--upstream-session-cap-secs",
    "8",
    "--rollover-margin-secs",
    "2",
];

async fn sim(script: Vec<ScriptStep>) -> SimHandle {
    start_sim(SimConfig {
        script,
        record_client_events: true,
        session_max_duration_ms: Some(CAP_MS),
        ..Default::default()
    })
    .await
}

/// 24 kHz PCM16 in (the wire format: what the host sends is what upstream gets), an in-stream
/// `lookup` tool, the silence guard off.
fn start() -> pb::SessionStart {
    pb::SessionStart {
        input_format: Some(pcm16(24_000)),
        instructions: "You are a support agent.".into(),
        tools: vec![pb::ToolDefinition {
            name: "lookup".into(),
            timeout_ms: 30_000,
            ..Default::default()
        }],
        tool_routing: Some(pb::ToolRouting {
            route: Some(pb::tool_routing::Route::InStream(true)),
        }),
        silence_guard: Some(pb::SilenceGuard {
            action: pb::silence_guard::Action::Off as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The simulator's received events, grouped by session in the order sessions first appear.
fn by_session(sim: &SimHandle) -> Vec<(String, Vec<Value>)> {
    let mut order: Vec<String> = Vec::new();
    let mut map: HashMap<String, Vec<Value>> = HashMap::new();
    for e in sim.events_log() {
        if !map.contains_key(&e.session_id) {
            order.push(e.session_id.clone());
        }
        map.entry(e.session_id).or_default().push(e.event);
    }
    order
        .into_iter()
        .map(|s| {
            let v = map.remove(&s).unwrap_or_default();
            (s, v)
        })
        .collect()
}

fn appended_bytes(events: &[Value]) -> usize {
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

fn count(events: &[Value], pred: impl Fn(&Value) -> bool) -> usize {
    events.iter().filter(|e| pred(e)).count()
}

#[tokio::test]
async fn a_call_rolls_over_at_a_pause_with_a_tool_in_flight_and_loses_nothing() {
    let sim = sim(vec![
        ScriptStep::tools(
            None,
            vec![("lookup", json!({"order": 42}))],
            "Order: {outputs}",
        ),
        ScriptStep::say("Still checking, one moment."),
    ])
    .await;
    let (sidecar, metrics) = start_sidecar_with_metrics(&sim.base_url(), ROLLOVER_FLAGS).await;
    let mut host = HostSession::open_started(sidecar.addr, start()).await;
    host.send_text("where is my order").await;
    let call = host.until_tool_call(Duration::from_secs(5)).await;
    // The user speaks while the tool runs (1.0–2.2 s), across the time the standby is opened (2 s);
    // the model answers them; the host keeps streaming (silence) all along.
    let mut audio = silence(24_000, 1.0);
    audio.extend(speech_like(24_000, 1.2));
    audio.extend(silence(24_000, 6.0));
    let frames = audio.len() / 480;
    let streaming = host.stream_in_background(audio, 24_000, 1);
    let rolled = host.until_rolled_over(Duration::from_secs(8)).await;
    assert!(!rolled.forced, "{rolled:?}");
    assert_eq!(rolled.calls_carried, 1);
    assert!(
        (2_000..6_000).contains(&rolled.upstream_age_ms),
        "{rolled:?}"
    );
    // The user's turn was answered before the switch (in the old session).
    let kinds = host.kinds();
    let answered = kinds
        .iter()
        .position(|k| k == "response_done")
        .expect("the user's turn was answered");
    let switched = kinds
        .iter()
        .position(|k| k.starts_with("rolled_over"))
        .unwrap();
    assert!(answered < switched, "{kinds:?}");

    // The tool finishes after the switch: its output goes to the new session, once.
    host.send(In::ToolResult(pb::ToolResult {
        call_id: call.call_id.clone(),
        result: Some(pb::tool_result::Result::OutputJson(
            r#"{"status":"shipped"}"#.into(),
        )),
    }))
    .await;
    let reply = host
        .until(
            Duration::from_secs(8),
            |m| matches!(m, Out::Transcript(t) if t.r#final && t.text.contains("shipped")),
        )
        .await;
    let reply = expect_msg!(reply, Transcript);
    assert!(
        reply.text.starts_with("Thanks for holding."),
        "{}",
        reply.text
    );
    assert_eq!(streaming.await.unwrap(), 1 + frames as u64);
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.end().await;
    let ended = host.until_ended(Duration::from_secs(5)).await;
    // The call rolls over every 2 s of upstream age; every rollover of this call was at a pause.
    let rollovers = ended.summary.unwrap().rollovers as usize;
    assert!(rollovers >= 1);
    let rolled: Vec<pb::SessionRolledOver> = host
        .events
        .iter()
        .filter_map(|(_, m)| match m {
            Out::RolledOver(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(rolled.len(), rollovers);
    assert!(
        rolled.iter().all(|r| !r.forced && r.replayed_audio_ms == 0),
        "{rolled:?}"
    );

    // Sessions in order: the first, one per rollover, perhaps a standby not switched to yet.
    let sessions = by_session(&sim);
    assert!(
        sessions.len() == rollovers + 1 || sessions.len() == rollovers + 2,
        "{}",
        sessions.len()
    );
    let (old_id, old) = &sessions[0];
    let (new_id, new) = &sessions[1];
    // No frame lost or repeated: every byte the host sent went to exactly one session.
    let appended: usize = sessions.iter().map(|(_, e)| appended_bytes(e)).sum();
    assert_eq!(appended, frames * 960, "input audio across the switches");
    // The tool output went to the session after the first switch only, once, followed by one
    // create; no session after a switch was asked for a response before that (no greeting).
    let is_output = |e: &Value| {
        e["type"] == "conversation.item.create" && e["item"]["type"] == "function_call_output"
    };
    assert_eq!(count(old, is_output), 0);
    assert_eq!(count(new, is_output), 1);
    assert_eq!(count(new, |e| e["type"] == "response.create"), 1);
    let first_create = new
        .iter()
        .position(|e| e["type"] == "response.create")
        .unwrap();
    let output_at = new.iter().position(is_output).unwrap();
    assert!(
        output_at < first_create,
        "no response asked for before the output (no greeting)"
    );
    // Later sessions get the finished call as seeded history (the call and its output, before any
    // audio), never as a new result, and are never asked for a response (no greeting).
    let seeds = sim.seeds();
    for (id, later) in &sessions[2..] {
        assert!(count(later, is_output) <= 1);
        let seed = seeds.iter().find(|s| &s.session_id == id).unwrap();
        assert_eq!(
            seed.items
                .iter()
                .filter(|i| i["type"] == "function_call_output")
                .count(),
            count(later, is_output),
            "an output in a later session is part of its seed"
        );
        assert_eq!(
            count(later, |e| e["type"] == "response.create"),
            0,
            "no greeting"
        );
    }
    // Seeded with the conversation: the user's typed turn, and the call still running.
    let seed = sim
        .seeds()
        .into_iter()
        .find(|s| &s.session_id == new_id)
        .expect("the new session's seed is recorded");
    assert!(seed.instructions.starts_with("You are a support agent."));
    assert!(
        seed.instructions.contains("Do not greet the caller again"),
        "{}",
        seed.instructions
    );
    assert!(seed
        .items
        .iter()
        .any(|i| i["role"] == "user" && i["content"][0]["text"] == "where is my order"));
    assert!(seed
        .items
        .iter()
        .any(|i| i["type"] == "function_call" && i["call_id"] == call.call_id.as_str()));
    // A later session is seeded with the finished call and its output (history, not re-run).
    if let Some((third_id, _)) = sessions.get(2) {
        let seed = sim
            .seeds()
            .into_iter()
            .find(|s| &s.session_id == third_id)
            .unwrap();
        assert!(seed.items.iter().any(
            |i| i["type"] == "function_call_output" && i["output"] == r#"{"status":"shipped"}"#
        ));
    }
    // The old session was closed by the sidecar (a clean close), before upstream's cap.
    let closes = sim.closes();
    let old_close = closes.iter().find(|c| &c.session_id == old_id).unwrap();
    assert!(!old_close.by_server, "{old_close:?}");
    assert_eq!(old_close.client_code, Some(1000));
    // Metrics: natural rollovers only; the input gap across each is a frame interval, not more.
    let text = http_get(metrics, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "voice_upstream_rollovers_total",
            &[("outcome", "natural")]
        ),
        rollovers as f64
    );
    let gaps = metric(&text, "voice_upstream_rollover_gap_seconds_count", &[]);
    assert_eq!(gaps, rollovers as f64);
    assert_eq!(
        metric(
            &text,
            "voice_upstream_rollover_gap_seconds_bucket",
            &[("le", "0.1")]
        ),
        gaps,
        "every switch gap under 100 ms"
    );
    let all: Vec<Value> = sessions
        .iter()
        .flat_map(|(_, e)| e.iter().cloned())
        .collect();
    validate_client_events("ga", &all);
}

#[tokio::test]
async fn a_user_who_never_pauses_is_switched_over_at_the_margin_with_the_utterance_replayed() {
    let sim = sim(vec![ScriptStep::say("I hear you.")]).await;
    let (sidecar, metrics) = start_sidecar_with_metrics(&sim.base_url(), ROLLOVER_FLAGS).await;
    let mut host = HostSession::open_started(sidecar.addr, start()).await;
    // Speech from 0.5 s to 7.5 s without a pause, then a little silence.
    let mut audio = silence(24_000, 0.5);
    audio.extend(speech_like(24_000, 7.0));
    audio.extend(silence(24_000, 0.5));
    let frames = audio.len() / 480;
    let streaming = host.stream_in_background(audio, 24_000, 1);
    let rolled = host.until_rolled_over(Duration::from_secs(9)).await;
    assert!(rolled.forced, "{rolled:?}");
    assert!(
        (6_000..7_000).contains(&rolled.upstream_age_ms),
        "forced at the cap minus the margin: {rolled:?}"
    );
    assert!(
        rolled.replayed_audio_ms >= 3_000,
        "the utterance since the standby was ready is replayed: {rolled:?}"
    );
    streaming.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.end().await;
    host.until_ended(Duration::from_secs(5)).await;
    // Two sessions carried audio; a third may be a standby opened 2 s after the switch.
    let sessions = by_session(&sim);
    assert!(sessions.len() >= 2);
    let replayed = rolled.replayed_audio_ms as usize * 48;
    let appended: usize = sessions.iter().map(|(_, e)| appended_bytes(e)).sum();
    assert_eq!(
        appended - replayed,
        frames * 960,
        "every frame went upstream once, beside the replay"
    );
    // The old session never reached upstream's cap: the sidecar closed it.
    let old_close = sim
        .closes()
        .into_iter()
        .find(|c| c.session_id == sessions[0].0)
        .unwrap();
    assert!(!old_close.by_server);
    let text = http_get(metrics, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "voice_upstream_rollovers_total",
            &[("outcome", "forced")]
        ),
        1.0
    );
}

#[tokio::test]
async fn with_rollover_off_upstreams_cap_is_met_by_a_reconnect() {
    let sim = sim(vec![ScriptStep::say("Hello.")]).await;
    let (sidecar, metrics) = start_sidecar_with_metrics(
        &sim.base_url(),
        &[
            "--rollover-after-secs",
            "0",
            "--upstream-session-cap-secs",
            "8",
        ],
    )
    .await;
    let mut host = HostSession::open_started(sidecar.addr, start()).await;
    host.until(
        Duration::from_secs(10),
        |m| matches!(m, Out::Error(e) if e.code == "session_expired"),
    )
    .await;
    host.until(
        Duration::from_secs(10),
        |m| matches!(m, Out::Error(e) if e.code == "upstream_resumed"),
    )
    .await;
    host.end().await;
    host.until_ended(Duration::from_secs(5)).await;
    let text = http_get(metrics, "/metrics").await;
    assert_eq!(metric(&text, "voice_upstream_rollovers_total", &[]), 0.0);
    assert_eq!(metric(&text, "voice_upstream_reconnects_total", &[]), 1.0);
}

#[tokio::test]
async fn the_host_set_limit_ends_the_call_after_a_warning() {
    let sim = sim(vec![ScriptStep::say("Hello.")]).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut s = start();
    s.max_duration_secs = 3;
    s.max_duration_warning_secs = 1;
    let mut host = HostSession::open_started(sidecar.addr, s).await;
    let soon = host.until_ending_soon(Duration::from_secs(5)).await;
    assert!((900..=1_000).contains(&soon.remaining_ms), "{soon:?}");
    assert!(!soon.line_spoken);
    let ended = host.until_ended(Duration::from_secs(5)).await;
    assert_eq!(ended.reason, "max_duration");
    let took = host.t0.elapsed();
    assert!(
        took >= Duration::from_millis(2_900) && took < Duration::from_millis(4_000),
        "{took:?}"
    );
}
