//! GPT Realtime 2 behaviours the sidecar depends on: several assistant messages in one response,
//! preamble + function calls in order, the server_vad idle timeout, and deleting items of a cancelled
//! or truncated response.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;
use voice_realtime_sim::{Dialect, ScriptStep, SimConfig, WireAudioFormat};

const BOTH: [Dialect; 2] = [Dialect::Ga, Dialect::Beta];

fn of_type<'a>(evs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["type"] == ty).collect()
}

fn transcript_done(d: Dialect) -> &'static str {
    match d {
        Dialect::Ga => "response.output_audio_transcript.done",
        Dialect::Beta => "response.audio_transcript.done",
    }
}

#[tokio::test]
async fn messages_step_speaks_several_items_in_one_response() {
    let texts = [
        "One moment, let me think.",
        "It is sunny.",
        "Anything else?",
    ];
    for dialect in BOTH {
        let sim = start(SimConfig {
            script: vec![ScriptStep::messages(texts)],
            ..fast()
        })
        .await;
        let mut c = connect(&sim, dialect).await;
        c.send(json!({"type": "response.create"})).await;
        let evs = c.until("response.done").await;
        assert_eq!(of_type(&evs, "response.created").len(), 1);
        let response_id = evs.last().unwrap()["response"]["id"].clone();
        let added = of_type(&evs, "response.output_item.added");
        assert_eq!(added.len(), 3);
        let ids: Vec<&str> = added
            .iter()
            .map(|e| e["item"]["id"].as_str().unwrap())
            .collect();
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
        for (i, (a, text)) in added.iter().zip(texts).enumerate() {
            assert_eq!(a["output_index"], i, "{a}");
            assert_eq!(a["item"]["type"], "message");
            assert_eq!(a["response_id"], response_id);
            // Every event of this item carries its id and output_index.
            let mine: Vec<&Value> = evs
                .iter()
                .filter(|e| e["item_id"] == ids[i] || e["item"]["id"] == ids[i])
                .collect();
            assert!(mine
                .iter()
                .all(|e| e["output_index"] == i || e["type"] == "conversation.item.created"));
            let audio = decode_deltas(
                &mine.iter().map(|e| (*e).clone()).collect::<Vec<_>>(),
                c.audio_delta_type(),
                WireAudioFormat::Pcm16,
            );
            assert!(!audio.is_empty(), "item {i} has its own audio");
            let t = mine
                .iter()
                .find(|e| e["type"] == transcript_done(dialect))
                .unwrap();
            assert_eq!(t["transcript"], text);
        }
        // Each item completes before the next starts.
        let pos = |ty: &str, id: &str| {
            evs.iter()
                .position(|e| e["type"] == ty && (e["item"]["id"] == id || e["item_id"] == id))
                .unwrap()
        };
        assert!(
            pos("response.output_item.done", ids[0]) < pos("response.output_item.added", ids[1])
        );
        assert!(
            pos("response.output_item.done", ids[1]) < pos("response.output_item.added", ids[2])
        );
        let output = evs.last().unwrap()["response"]["output"]
            .as_array()
            .unwrap()
            .clone();
        let out_ids: Vec<&str> = output.iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(out_ids, ids);
        for (item, text) in output.iter().zip(texts) {
            assert_eq!(item["status"], "completed");
            assert_eq!(item["content"][0]["transcript"], text);
        }
        // All three are in the conversation.
        for id in &ids {
            c.send(json!({"type": "conversation.item.retrieve", "item_id": id}))
                .await;
            let r = c.until("conversation.item.retrieved").await.pop().unwrap();
            assert_eq!(r["item"]["id"], *id);
        }
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn messages_step_text_only_and_conditional() {
    let sim = start(SimConfig {
        script: vec![
            ScriptStep::say("Plain."),
            ScriptStep::messages(["First.", "Second."]).when_text_contains("two parts"),
        ],
        ..fast()
    })
    .await;
    let mut c = connect(&sim, Dialect::Ga).await;
    c.send(
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "Answer in TWO PARTS please"}]}}),
    )
    .await;
    c.send(json!({"type": "response.create", "response": {"output_modalities": ["text"]}}))
        .await;
    let evs = c.until("response.done").await;
    let texts: Vec<&Value> = of_type(&evs, "response.output_text.done")
        .iter()
        .map(|e| &e["text"])
        .collect();
    assert_eq!(texts, [&json!("First."), &json!("Second.")]);
    let idx: Vec<&Value> = of_type(&evs, "response.output_text.done")
        .iter()
        .map(|e| &e["output_index"])
        .collect();
    assert_eq!(idx, [&json!(0), &json!(1)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn preamble_and_calls_have_increasing_output_index() {
    for dialect in BOTH {
        let sim = start(SimConfig {
            script: vec![ScriptStep::tools(
                Some("Let me check."),
                vec![("lookup", json!({"q": "a"})), ("lookup", json!({"q": "b"}))],
                "Found {outputs}.",
            )],
            ..fast()
        })
        .await;
        let mut c = connect(&sim, dialect).await;
        let tools =
            json!([{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]);
        c.send(c.session_update(
            json!({"type": "realtime", "tools": tools}),
            json!({"tools": tools}),
        ))
        .await;
        c.until("session.updated").await;
        c.send(json!({"type": "response.create"})).await;
        let evs = c.until("response.done").await;
        let added = of_type(&evs, "response.output_item.added");
        let done = of_type(&evs, "response.output_item.done");
        let kinds: Vec<&Value> = added.iter().map(|e| &e["item"]["type"]).collect();
        assert_eq!(
            kinds,
            [
                &json!("message"),
                &json!("function_call"),
                &json!("function_call")
            ]
        );
        for (i, (a, d)) in added.iter().zip(&done).enumerate() {
            assert_eq!(a["output_index"], i);
            assert_eq!(d["output_index"], i);
            assert_eq!(a["item"]["id"], d["item"]["id"]);
        }
        for e in of_type(&evs, "response.function_call_arguments.done") {
            let i = added
                .iter()
                .position(|a| a["item"]["id"] == e["item_id"])
                .unwrap();
            assert_eq!(e["output_index"], i);
        }
        let output = evs.last().unwrap()["response"]["output"]
            .as_array()
            .unwrap()
            .clone();
        let out_ids: Vec<&Value> = output.iter().map(|i| &i["id"]).collect();
        let added_ids: Vec<&Value> = added.iter().map(|a| &a["item"]["id"]).collect();
        assert_eq!(out_ids, added_ids);
        sim.shutdown().await;
    }
}

fn idle_session(c: &Client, idle_ms: u64, modalities: &[&str]) -> Value {
    c.session_update(
        json!({"type": "realtime", "output_modalities": modalities, "audio": {"input": {"turn_detection":
            {"type": "server_vad", "idle_timeout_ms": idle_ms}}}}),
        Value::Null,
    )
}

/// Audio milliseconds in a response's deltas (PCM16 at 24 kHz).
fn audio_ms(evs: &[Value], c: &Client) -> u64 {
    decode_deltas(evs, c.audio_delta_type(), WireAudioFormat::Pcm16).len() as u64 / 24
}

/// Reads events until `quiet_ms` pass without one: none may be an idle timeout.
async fn assert_no_idle_timeout(c: &mut Client, quiet_ms: u64) {
    let mut extra = Vec::new();
    while let Some(e) = c.try_recv(Duration::from_millis(quiet_ms)).await {
        extra.push(e);
    }
    assert!(
        of_type(&extra, "input_audio_buffer.timeout_triggered").is_empty(),
        "{extra:?}"
    );
}

#[tokio::test]
async fn idle_timeout_fires_after_playback_and_reprompts() {
    let sim = start(SimConfig {
        script: vec![
            ScriptStep::say("Hi."),
            ScriptStep::say("Are you still there?"),
        ],
        ..fast()
    })
    .await;
    let mut c = connect(&sim, Dialect::Ga).await;
    let idle = 250;
    c.send(idle_session(&c, idle, &["audio"])).await;
    let up = c.until("session.updated").await.pop().unwrap();
    assert_eq!(
        up["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"],
        idle
    );
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until("response.done").await;
    let done_at = Instant::now();
    let playback = audio_ms(&evs, &c);
    assert!(playback > 150, "the reply has audio ({playback} ms)");
    // The client streams a second of silence: no speech, so the timer keeps running.
    c.append_audio(&silence(1000), WireAudioFormat::Pcm16).await;
    let evs = c.until("input_audio_buffer.timeout_triggered").await;
    let waited = done_at.elapsed();
    // The client's clock starts when it *receives* response.done, after the simulator's did; allow
    // for that delivery delay on a loaded machine (still far from firing at `idle` alone, which is
    // what ignoring playback would do).
    assert!(
        waited + Duration::from_millis(100) >= Duration::from_millis(idle + playback),
        "fired after {waited:?}, expected response.done + {playback} ms playback + {idle} ms"
    );
    assert!(of_type(&evs, "input_audio_buffer.speech_started").is_empty());
    let t = evs.last().unwrap().clone();
    let (start_ms, end_ms) = (
        t["audio_start_ms"].as_u64().unwrap(),
        t["audio_end_ms"].as_u64().unwrap(),
    );
    assert_eq!(end_ms, 1000, "{t}");
    assert_eq!(end_ms - start_ms, idle, "{t}");
    let item_id = t["item_id"].as_str().unwrap().to_owned();
    // The silent audio is committed as a user item, then the model re-prompts.
    let evs = c.until("response.done").await;
    let committed = of_type(&evs, "input_audio_buffer.committed");
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0]["item_id"], item_id);
    let added = of_type(&evs, "conversation.item.added");
    assert_eq!(added[0]["item"]["id"], item_id);
    assert_eq!(added[0]["item"]["role"], "user");
    assert_eq!(added[0]["item"]["content"][0]["type"], "input_audio");
    assert_eq!(of_type(&evs, "response.created").len(), 1);
    assert_eq!(
        evs.last().unwrap()["response"]["output"][0]["content"][0]["transcript"],
        "Are you still there?"
    );
    // It re-arms after the re-prompt; with the script exhausted the default reply follows.
    let evs = c.until("input_audio_buffer.timeout_triggered").await;
    assert!(of_type(&evs, "response.created").is_empty());
    let evs = c.until("response.done").await;
    assert_eq!(
        evs.last().unwrap()["response"]["output"][0]["content"][0]["transcript"],
        SimConfig::default().default_reply
    );
    // Turning the timeout off disarms it.
    c.send(c.session_update(
        json!({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}),
        Value::Null,
    ))
    .await;
    c.until("session.updated").await;
    assert_no_idle_timeout(&mut c, 600).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn speech_or_response_create_cancels_the_idle_timeout() {
    let sim = start(SimConfig {
        script: vec![
            ScriptStep::say("First."),
            ScriptStep::say("Second."),
            ScriptStep::say("Third."),
            ScriptStep::say("Prompting you."),
        ],
        ..fast()
    })
    .await;
    let mut c = connect(&sim, Dialect::Ga).await;
    // Text replies: no playback time, so the timer starts at response.done.
    let idle = 500;
    c.send(idle_session(&c, idle, &["text"])).await;
    c.until("session.updated").await;
    c.send(json!({"type": "response.create"})).await;
    let mut log = c.until("response.done").await;
    // Speech right away: the VAD turn starts the next response, not the timer.
    let mut audio = speech(400, -20.0);
    audio.extend(silence(700));
    c.append_audio(&audio, WireAudioFormat::Pcm16).await;
    let evs = c.until("response.done").await;
    assert_eq!(of_type(&evs, "input_audio_buffer.speech_started").len(), 1);
    log.extend(evs);
    // A client response.create right away also wins over the timer.
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until("response.done").await;
    let started = Instant::now();
    log.extend(evs);
    assert!(
        of_type(&log, "input_audio_buffer.timeout_triggered").is_empty(),
        "{:?}",
        types(&log)
    );
    let texts: Vec<&Value> = of_type(&log, "response.output_text.done")
        .iter()
        .map(|e| &e["text"])
        .collect();
    assert_eq!(
        texts,
        [&json!("First."), &json!("Second."), &json!("Third.")]
    );
    // Left alone, the timer fires idle_timeout_ms after the last response.done.
    let evs = c.until("input_audio_buffer.timeout_triggered").await;
    assert!(started.elapsed() + Duration::from_millis(20) >= Duration::from_millis(idle));
    assert!(of_type(&evs, "response.created").is_empty());
    let evs = c.until("response.done").await;
    assert_eq!(
        of_type(&evs, "response.output_text.done")[0]["text"],
        "Prompting you."
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn no_idle_timeout_without_server_vad_idle_setting() {
    let sim = start(SimConfig {
        script: vec![ScriptStep::say("Only once.")],
        ..fast()
    })
    .await;
    let mut c = connect(&sim, Dialect::Ga).await;
    c.send(c.session_update(
        json!({"type": "realtime", "output_modalities": ["text"], "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}),
        Value::Null,
    ))
    .await;
    c.until("session.updated").await;
    c.send(json!({"type": "response.create"})).await;
    c.until("response.done").await;
    assert_no_idle_timeout(&mut c, 400).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn items_of_cancelled_and_truncated_responses_can_be_deleted() {
    for dialect in BOTH {
        let sim = start(SimConfig {
            script: vec![
                ScriptStep::messages([
                    "A preamble that is long enough to be interrupted while it plays out.",
                    "And an answer that never starts.",
                ]),
                ScriptStep::say("Another rather long answer that gets cancelled by the client."),
            ],
            realtime_factor: 1.0,
            first_audio_delay_ms: 0,
            ..Default::default()
        })
        .await;
        let mut c = connect(&sim, dialect).await;
        for _ in 0..2 {
            c.send(json!({"type": "response.create"})).await;
            let evs = c.until(c.audio_delta_type()).await;
            let item_id = evs
                .iter()
                .find(|e| e["type"] == "response.output_item.added")
                .unwrap()["item"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            c.send(json!({"type": "response.cancel"})).await;
            let done = c.until("response.done").await.pop().unwrap();
            assert_eq!(done["response"]["status"], "cancelled");
            let output = done["response"]["output"].as_array().unwrap();
            assert_eq!(output.len(), 1, "only the interrupted item: {done}");
            assert_eq!(output[0]["id"], item_id.as_str());
            assert_eq!(output[0]["status"], "incomplete");
            c.send(json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 20})).await;
            c.until("conversation.item.truncated").await;
            c.send(json!({"type": "conversation.item.delete", "item_id": item_id, "event_id": "evt_del_1"}))
                .await;
            let d = c.until("conversation.item.deleted").await.pop().unwrap();
            assert_eq!(d["item_id"], item_id.as_str());
            // Gone: retrieve, truncate and a second delete are errors naming the client event.
            c.send(json!({"type": "conversation.item.retrieve", "item_id": item_id}))
                .await;
            c.expect_error("item_not_found").await;
            c.send(json!({"type": "conversation.item.delete", "item_id": item_id, "event_id": "evt_del_2"}))
                .await;
            let e = c.expect_error("item_not_found").await;
            assert_eq!(e["error"]["event_id"], "evt_del_2");
            assert_eq!(e["error"]["param"], "item_id");
        }
        c.send(json!({"type": "conversation.item.delete", "item_id": "item_nope"}))
            .await;
        c.expect_error("item_not_found").await;
        sim.shutdown().await;
    }
}
