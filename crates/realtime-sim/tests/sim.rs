//! End-to-end tests of the simulator over real loopback WebSockets, in both dialects.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use voice_realtime_sim::{Dialect, ScriptStep, SimConfig, WireAudioFormat};

const BOTH: [Dialect; 2] = [Dialect::Ga, Dialect::Beta];

#[tokio::test]
async fn handshake_auth_model_and_dialect() {
    let sim = start(SimConfig {
        api_key: Some("sk-right".into()),
        ..fast()
    })
    .await;
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(()) => 101,
    };
    assert_eq!(
        status(
            tokio_tungstenite::connect_async(request(&sim, Dialect::Ga, None))
                .await
                .map(|_| ())
        ),
        401
    );
    assert_eq!(
        status(
            tokio_tungstenite::connect_async(request(&sim, Dialect::Ga, Some("sk-wrong")))
                .await
                .map(|_| ())
        ),
        401
    );
    let no_model = format!("{}/v1/realtime", sim.base_url());
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(no_model)
            .unwrap();
    req.headers_mut()
        .insert("Authorization", "Bearer sk-right".parse().unwrap());
    assert_eq!(
        status(tokio_tungstenite::connect_async(req).await.map(|_| ())),
        400
    );

    for dialect in BOTH {
        let (ws, _) = tokio_tungstenite::connect_async(request(&sim, dialect, Some("sk-right")))
            .await
            .unwrap();
        let mut c = Client {
            ws,
            dialect,
            log: Vec::new(),
        };
        let created = c.recv().await;
        assert_eq!(created["type"], "session.created");
        let s = &created["session"];
        assert!(s["id"].as_str().unwrap().starts_with("sess_"));
        match dialect {
            Dialect::Beta => assert_eq!(s["input_audio_format"], "pcm16"),
            Dialect::Ga => {
                assert_eq!(s["type"], "realtime");
                assert_eq!(s["audio"]["input"]["format"]["type"], "audio/pcm");
            }
        }
    }
    let st = sim.stats();
    assert_eq!(st.rejected_handshakes, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn session_update_validation_keeps_session_alive() {
    let sim = start(fast()).await;
    for dialect in BOTH {
        let mut c = connect(&sim, dialect).await;
        // A field from the other dialect is unknown.
        let bad = c.session_update(
            json!({"type": "realtime", "voice": "alloy"}),
            json!({"audio": {}}),
        );
        let mut bad = bad;
        bad["event_id"] = json!("evt_bad_1");
        c.send(bad).await;
        let e = c.expect_error("unknown_parameter").await;
        assert_eq!(e["error"]["event_id"], "evt_bad_1");
        // Wrong type.
        c.send(c.session_update(
            json!({"type": "realtime", "instructions": 5}),
            json!({"instructions": 5}),
        ))
        .await;
        let e = c.expect_error("invalid_type").await;
        assert_eq!(e["error"]["param"], "session.instructions");
        if dialect == Dialect::Ga {
            c.send(json!({"type": "session.update", "session": {"instructions": "x"}}))
                .await;
            c.expect_error("missing_required_parameter").await;
        }
        c.send(c.session_update(
            json!({"type": "realtime", "instructions": "be brief"}),
            json!({"instructions": "be brief"}),
        ))
        .await;
        let up = c.until("session.updated").await.pop().unwrap();
        assert_eq!(up["session"]["instructions"], "be brief");
    }
    sim.shutdown().await;
}

async fn spoken_turn(dialect: Dialect, format: WireAudioFormat) {
    let reply = "Sure, the simulator can talk.";
    let sim = start(SimConfig {
        script: vec![ScriptStep::say(reply)],
        user_transcripts: vec!["hello there".into()],
        ..fast()
    })
    .await;
    let mut c = connect(&sim, dialect).await;
    let ga_fmt = match format {
        WireAudioFormat::Pcm16 => json!({"type": "audio/pcm", "rate": 24000}),
        WireAudioFormat::G711Ulaw => json!({"type": "audio/pcmu"}),
        WireAudioFormat::G711Alaw => json!({"type": "audio/pcma"}),
    };
    c.send(c.session_update(
        json!({"type": "realtime", "audio": {"input": {"format": ga_fmt, "transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}},
            "output": {"format": ga_fmt}}}),
        json!({"input_audio_format": format.beta_name(), "output_audio_format": format.beta_name(),
            "input_audio_transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}}),
    ))
    .await;
    c.until("session.updated").await;
    let mut audio = silence(500);
    audio.extend(speech(1000, -20.0));
    audio.extend(silence(1000));
    c.append_audio(&audio, format).await;

    let evs = c.until("response.done").await;
    let t = types(&evs);
    let pos = |ty: &str| {
        t.iter()
            .position(|x| x == ty)
            .unwrap_or_else(|| panic!("missing {ty} in {t:?}"))
    };
    let started = &evs[pos("input_audio_buffer.speech_started")];
    let stopped = &evs[pos("input_audio_buffer.speech_stopped")];
    let start_ms = started["audio_start_ms"].as_u64().unwrap();
    let end_ms = stopped["audio_end_ms"].as_u64().unwrap();
    assert!((150..=260).contains(&start_ms), "audio_start_ms {start_ms}");
    assert!((1950..=2100).contains(&end_ms), "audio_end_ms {end_ms}");
    let item_id = started["item_id"].as_str().unwrap();
    assert_eq!(stopped["item_id"], item_id);
    let committed = &evs[pos("input_audio_buffer.committed")];
    assert_eq!(committed["item_id"], item_id);
    let transcript = &evs[pos("conversation.item.input_audio_transcription.completed")];
    assert_eq!(transcript["transcript"], "hello there");
    assert_eq!(transcript["item_id"], item_id);
    match dialect {
        Dialect::Beta => assert!(pos("conversation.item.created") < pos("response.created")),
        Dialect::Ga => assert!(pos("conversation.item.added") < pos("conversation.item.done")),
    }
    // Order of the response flow.
    let order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        c.audio_delta_type(),
        if dialect == Dialect::Ga {
            "response.output_audio.done"
        } else {
            "response.audio.done"
        },
        if dialect == Dialect::Ga {
            "response.output_audio_transcript.done"
        } else {
            "response.audio_transcript.done"
        },
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ];
    let idx: Vec<usize> = order.iter().map(|ty| pos(ty)).collect();
    assert!(
        idx.windows(2).all(|w| w[0] < w[1]),
        "order {order:?} -> {idx:?}"
    );
    let tr_delta = if dialect == Dialect::Ga {
        "response.output_audio_transcript.delta"
    } else {
        "response.audio_transcript.delta"
    };
    let joined: String = evs
        .iter()
        .filter(|e| e["type"] == tr_delta)
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(joined, reply);

    let samples = decode_deltas(&evs, c.audio_delta_type(), format);
    let rate = format.sample_rate() as usize;
    assert_eq!(
        samples.len(),
        reply.chars().count() * 70 * rate / 1000,
        "duration matches transcript length"
    );
    let overall = rms(&samples);
    assert!(overall > 1000.0, "non-silent: rms {overall}");
    let windows: Vec<f64> = samples.chunks(rate / 50).map(rms).collect();
    let mean = windows.iter().sum::<f64>() / windows.len() as f64;
    let var = windows.iter().map(|w| (w - mean).powi(2)).sum::<f64>() / windows.len() as f64;
    assert!(
        var.sqrt() > mean * 0.3,
        "envelope varies (not a constant tone)"
    );

    let done = evs.last().unwrap();
    assert_eq!(done["response"]["status"], "completed");
    assert_eq!(done["response"]["object"], "realtime.response");
    let usage = &done["response"]["usage"];
    assert!(usage["total_tokens"].as_u64().unwrap() > 0);
    assert!(
        usage["output_token_details"]["audio_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(usage["input_token_details"]["cached_tokens_details"]["audio_tokens"].is_u64());
    assert_eq!(
        done["response"]["output"][0]["content"][0]["transcript"],
        reply
    );
    c.until("rate_limits.updated").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn spoken_turn_pcm16_ga() {
    spoken_turn(Dialect::Ga, WireAudioFormat::Pcm16).await;
}

#[tokio::test]
async fn spoken_turn_pcm16_beta() {
    spoken_turn(Dialect::Beta, WireAudioFormat::Pcm16).await;
}

#[tokio::test]
async fn spoken_turn_ulaw_ga() {
    spoken_turn(Dialect::Ga, WireAudioFormat::G711Ulaw).await;
}

#[tokio::test]
async fn spoken_turn_ulaw_beta() {
    spoken_turn(Dialect::Beta, WireAudioFormat::G711Ulaw).await;
}

#[tokio::test]
async fn spoken_turn_alaw_ga() {
    spoken_turn(Dialect::Ga, WireAudioFormat::G711Alaw).await;
}

fn tool_config() -> SimConfig {
    SimConfig {
        script: vec![ScriptStep::tools(
            Some("Let me check that."),
            vec![
                ("get_weather", json!({"city": "Paris"})),
                ("get_time", json!({"tz": "CET"})),
            ],
            "Here you go: {outputs}.",
        )],
        ..fast()
    }
}

fn declare_tools(c: &Client) -> Value {
    let tools = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
                       {"type": "function", "name": "get_time", "parameters": {"type": "object"}}]);
    c.session_update(
        json!({"type": "realtime", "tools": tools}),
        json!({"tools": tools}),
    )
}

async fn user_text(c: &mut Client, text: &str) {
    c.send(
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}]}}),
    )
    .await;
    let ty = if c.dialect == Dialect::Ga {
        "conversation.item.done"
    } else {
        "conversation.item.created"
    };
    c.until(ty).await;
}

#[tokio::test]
async fn parallel_tool_calls_then_follow_up() {
    for dialect in BOTH {
        let sim = start(tool_config()).await;
        let mut c = connect(&sim, dialect).await;
        c.send(declare_tools(&c)).await;
        c.until("session.updated").await;
        user_text(&mut c, "weather and time please").await;
        c.send(json!({"type": "response.create"})).await;
        let evs = c.until("response.done").await;
        let done = evs.last().unwrap();
        let output = done["response"]["output"].as_array().unwrap();
        assert_eq!(output.len(), 3, "preamble + 2 calls: {done}");
        assert_eq!(output[0]["type"], "message");
        let calls: Vec<&Value> = output
            .iter()
            .filter(|i| i["type"] == "function_call")
            .collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["name"], "get_weather");
        assert_eq!(calls[1]["name"], "get_time");
        let args_done: Vec<&Value> = evs
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.done")
            .collect();
        assert_eq!(args_done.len(), 2);
        assert_eq!(
            serde_json::from_str::<Value>(args_done[0]["arguments"].as_str().unwrap()).unwrap(),
            json!({"city": "Paris"})
        );
        if dialect == Dialect::Ga {
            assert_eq!(args_done[0]["name"], "get_weather");
        }
        let deltas: String = evs
            .iter()
            .filter(|e| {
                e["type"] == "response.function_call_arguments.delta"
                    && e["call_id"] == calls[1]["call_id"]
            })
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(deltas, calls[1]["arguments"].as_str().unwrap());

        // Unknown call id.
        c.send(json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "call_nope", "output": "x"}})).await;
        c.expect_error("invalid_tool_call_id").await;

        for (call, out) in calls.iter().zip(["sunny, 21C", "14:05"]) {
            c.send(
                json!({"type": "conversation.item.create", "item": {"type": "function_call_output",
                "call_id": call["call_id"], "output": out}}),
            )
            .await;
        }
        c.send(json!({"type": "response.create"})).await;
        let evs = c.until("response.done").await;
        let done = evs.last().unwrap();
        assert_eq!(
            done["response"]["output"][0]["content"][0]["transcript"],
            "Here you go: sunny, 21C; 14:05."
        );
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn partial_tool_outputs_still_allow_response_create() {
    let sim = start(SimConfig {
        record_client_events: true,
        ..tool_config()
    })
    .await;
    let mut c = connect(&sim, Dialect::Ga).await;
    c.send(declare_tools(&c)).await;
    c.until("session.updated").await;
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until("response.done").await;
    let call_id = evs.last().unwrap()["response"]["output"][1]["call_id"].clone();
    c.send(json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": call_id, "output": "only one"}})).await;
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until("response.done").await;
    assert_eq!(
        evs.last().unwrap()["response"]["output"][0]["content"][0]["transcript"],
        "Here you go: only one."
    );
    let log = sim.events_log();
    assert!(
        log.iter()
            .filter(|e| e.event["type"] == "response.create")
            .count()
            == 2
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn undeclared_tools_are_spoken_about_instead() {
    let sim = start(tool_config()).await;
    let mut c = connect(&sim, Dialect::Beta).await;
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until("response.done").await;
    let out = &evs.last().unwrap()["response"]["output"];
    assert_eq!(out.as_array().unwrap().len(), 1);
    assert_eq!(out[0]["type"], "message");
    sim.shutdown().await;
}

#[tokio::test]
async fn one_active_response_at_a_time() {
    for dialect in BOTH {
        let sim = start(SimConfig {
            realtime_factor: 1.0,
            ..Default::default()
        })
        .await;
        let mut c = connect(&sim, dialect).await;
        c.send(json!({"type": "response.create"})).await;
        c.until("response.created").await;
        c.send(json!({"type": "response.create", "event_id": "evt_2"}))
            .await;
        let e = c
            .expect_error("conversation_already_has_active_response")
            .await;
        assert_eq!(e["error"]["event_id"], "evt_2");
        c.send(json!({"type": "response.create", "response": {"conversation": "none", "instructions": "summarize"}})).await;
        c.expect_error("conversation_already_has_active_response")
            .await;
        c.send(json!({"type": "response.cancel"})).await;
        let done = c.until("response.done").await.pop().unwrap();
        assert_eq!(done["response"]["status"], "cancelled");
        assert_eq!(
            done["response"]["status_details"]["reason"],
            "client_cancelled"
        );
        c.send(json!({"type": "response.cancel"})).await;
        c.expect_error("response_cancel_not_active").await;
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn out_of_band_response_is_not_in_conversation() {
    let sim = start(fast()).await;
    let mut c = connect(&sim, Dialect::Ga).await;
    c.send(json!({"type": "response.create", "response": {"conversation": "none", "instructions": "classify the mood",
        "metadata": {"purpose": "classify"}, "output_modalities": ["text"]}}))
        .await;
    let evs = c.until("response.done").await;
    let done = evs.last().unwrap();
    assert_eq!(done["response"]["metadata"]["purpose"], "classify");
    assert!(done["response"]["conversation_id"].is_null());
    assert!(evs
        .iter()
        .any(|e| e["type"] == "response.output_text.delta"));
    assert!(!evs.iter().any(|e| e["type"] == "conversation.item.added"));
    let item_id = done["response"]["output"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    c.send(json!({"type": "conversation.item.retrieve", "item_id": item_id}))
        .await;
    c.expect_error("item_not_found").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn text_triggered_script_step() {
    let sim = start(SimConfig {
        script: vec![
            ScriptStep::say("first ordinal"),
            ScriptStep::say("It is sunny.").when_text_contains("weather"),
        ],
        ..fast()
    })
    .await;
    let mut c = connect(&sim, Dialect::Beta).await;
    user_text(&mut c, "What's the WEATHER like?").await;
    c.send(json!({"type": "response.create"})).await;
    let done = c.until("response.done").await.pop().unwrap();
    assert_eq!(
        done["response"]["output"][0]["content"][0]["transcript"],
        "It is sunny."
    );
    c.send(json!({"type": "response.create"})).await;
    let done = c.until("response.done").await.pop().unwrap();
    assert_eq!(
        done["response"]["output"][0]["content"][0]["transcript"],
        "first ordinal"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn garbage_input_gets_errors_and_session_survives() {
    for dialect in BOTH {
        let sim = start(SimConfig {
            max_message_bytes: 64 * 1024,
            ..fast()
        })
        .await;
        let mut c = connect(&sim, dialect).await;
        c.ws.send(Message::text("{not json")).await.unwrap();
        c.expect_error("invalid_json").await;
        c.send(json!([1, 2])).await;
        c.expect_error("invalid_type").await;
        c.send(json!({"type": "no.such.event", "event_id": "evt_x"}))
            .await;
        let e = c.expect_error("invalid_value").await;
        assert_eq!(e["error"]["event_id"], "evt_x");
        c.send(json!({"event_id": "e"})).await;
        c.expect_error("missing_required_parameter").await;
        c.send(json!({"type": "input_audio_buffer.append", "audio": "!!!not base64"}))
            .await;
        c.expect_error("invalid_value").await;
        c.ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
        c.expect_error("invalid_request_error").await;
        c.ws.send(Message::text("x".repeat(100 * 1024)))
            .await
            .unwrap();
        c.expect_error("message_too_large").await;
        c.send(json!({"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 10})).await;
        c.expect_error("item_not_found").await;
        c.send(json!({"type": "input_audio_buffer.commit"})).await;
        c.expect_error("input_audio_buffer_commit_empty").await;
        // Still alive.
        c.send(json!({"type": "input_audio_buffer.clear"})).await;
        c.until("input_audio_buffer.cleared").await;
        assert!(sim.stats().errors_sent >= 9);
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn manual_commit_without_turn_detection() {
    let sim = start(fast()).await;
    let mut c = connect(&sim, Dialect::Ga).await;
    c.send(json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": null}}}})).await;
    let up = c.until("session.updated").await.pop().unwrap();
    assert!(up["session"]["audio"]["input"]["turn_detection"].is_null());
    c.append_audio(&speech(300, -20.0), WireAudioFormat::Pcm16)
        .await;
    c.send(json!({"type": "input_audio_buffer.commit"})).await;
    let evs = c.until("conversation.item.done").await;
    assert!(!evs
        .iter()
        .any(|e| e["type"] == "input_audio_buffer.speech_started"));
    assert!(evs
        .iter()
        .any(|e| e["type"] == "input_audio_buffer.committed"));
    // No automatic response in manual mode.
    assert!(c.try_recv(Duration::from_millis(200)).await.is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn barge_in_cancels_and_truncate_is_validated() {
    for dialect in BOTH {
        let sim = start(SimConfig {
            script: vec![ScriptStep::say(
                "This is a rather long answer that the user is going to interrupt quite soon.",
            )],
            realtime_factor: 1.0,
            first_audio_delay_ms: 0,
            ..Default::default()
        })
        .await;
        let mut c = connect(&sim, dialect).await;
        c.send(json!({"type": "response.create"})).await;
        // Let about 300 ms of audio stream, then start talking.
        let mut evs = Vec::new();
        while evs
            .iter()
            .filter(|e: &&Value| e["type"] == c.audio_delta_type())
            .count()
            < 3
        {
            evs.push(c.recv().await);
        }
        let item_id = evs
            .iter()
            .find(|e| e["type"] == "response.output_item.added")
            .unwrap()["item"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        c.append_audio(&speech(200, -20.0), WireAudioFormat::Pcm16)
            .await;
        let evs = c.until("response.done").await;
        assert!(evs
            .iter()
            .any(|e| e["type"] == "input_audio_buffer.speech_started"));
        let done = evs.last().unwrap();
        assert_eq!(done["response"]["status"], "cancelled", "{done}");
        assert_eq!(
            done["response"]["status_details"]["reason"],
            "turn_detected"
        );
        // No more audio for the cancelled response.
        let after = c.try_recv(Duration::from_millis(300)).await;
        assert!(
            after
                .as_ref()
                .is_none_or(|e| e["type"] != c.audio_delta_type()),
            "{after:?}"
        );

        c.send(json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 60_000})).await;
        c.expect_error("invalid_value").await;
        c.send(json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 150})).await;
        let t = c.until("conversation.item.truncated").await.pop().unwrap();
        assert_eq!(t["audio_end_ms"], 150);
        let tr = sim.truncations();
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[0].item_id, item_id);
        assert_eq!(sim.stats().responses_cancelled, 1);
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn fault_drop_after_events() {
    let sim = start(SimConfig {
        drop_after_events: Some(3),
        ..fast()
    })
    .await;
    let mut c = connect(&sim, Dialect::Ga).await; // event 1
    c.send(json!({"type": "session.update", "session": {"type": "realtime"}}))
        .await; // 2
    c.send(json!({"type": "input_audio_buffer.clear"})).await; // 3, then drop
    c.send(json!({"type": "input_audio_buffer.clear"})).await;
    assert_eq!(c.recv().await["type"], "session.updated");
    assert_eq!(c.recv().await["type"], "input_audio_buffer.cleared");
    assert!(
        c.try_recv(Duration::from_secs(2)).await.is_none(),
        "socket should be dropped"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_error_injection_and_expiry() {
    let sim = start(SimConfig {
        error_after_events: Some(2),
        session_max_duration_ms: Some(300),
        ..fast()
    })
    .await;
    let mut c = connect(&sim, Dialect::Beta).await;
    c.send(json!({"type": "input_audio_buffer.clear"})).await;
    c.until("input_audio_buffer.cleared").await;
    let e = c.recv().await;
    assert_eq!(e["error"]["type"], "server_error");
    let e = c.recv().await;
    assert_eq!(e["error"]["code"], "session_expired");
    assert!(
        c.try_recv(Duration::from_secs(2)).await.is_none(),
        "closed after expiry"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn pacing_follows_realtime_factor() {
    // 20 chars × 70 ms = 1.4 s of audio; at 4× that streams in ~350 ms (+150 ms first-delta delay).
    let sim = start(SimConfig {
        script: vec![ScriptStep::say("abcdefghij abcdefghi")],
        ..Default::default()
    })
    .await;
    let mut c = connect(&sim, Dialect::Ga).await;
    let t0 = std::time::Instant::now();
    c.send(json!({"type": "response.create"})).await;
    c.until("response.done").await;
    let el = t0.elapsed();
    assert!(
        el >= Duration::from_millis(400) && el < Duration::from_millis(1500),
        "{el:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn many_concurrent_sessions() {
    let sim = start(SimConfig {
        script: vec![ScriptStep::say("ok")],
        ..fast()
    })
    .await;
    let url = sim.base_url();
    let _ = url;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let req = request(
            &sim,
            if i % 2 == 0 {
                Dialect::Ga
            } else {
                Dialect::Beta
            },
            Some("k"),
        );
        tasks.push(tokio::spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            let mut c = Client {
                ws,
                dialect: Dialect::Ga,
                log: Vec::new(),
            };
            c.recv().await;
            c.send(json!({"type": "response.create"})).await;
            c.until("response.done").await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let st = sim.stats();
    assert_eq!(st.responses, 50);
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_go_to_every_nth_session_only() {
    let sim = start(SimConfig {
        drop_after_events: Some(2),
        drop_every_nth_session: Some(2),
        ..fast()
    })
    .await;
    let mut dropped = Vec::new();
    for _ in 0..4 {
        let mut c = connect(&sim, Dialect::Ga).await; // event 1
        c.send(json!({"type": "input_audio_buffer.clear"})).await; // 2, then the drop if faulted
        c.send(json!({"type": "input_audio_buffer.clear"})).await;
        assert_eq!(c.recv().await["type"], "input_audio_buffer.cleared");
        dropped.push(c.try_recv(Duration::from_secs(2)).await.is_none());
    }
    assert_eq!(dropped, [false, true, false, true]);
    assert_eq!(sim.stats().drops_injected, 2);
    assert!(sim.ledger().is_none(), "no ledger unless asked for");
    sim.shutdown().await;
}

#[tokio::test]
async fn the_tool_ledger_tells_answered_carried_duplicated_and_unanswered_calls() {
    let sim = start(SimConfig {
        tool_ledger: true,
        ..tool_config()
    })
    .await;
    let mut c = connect(&sim, Dialect::Ga).await;
    c.send(declare_tools(&c)).await;
    c.until("session.updated").await;
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until("response.done").await;
    let output = evs.last().unwrap()["response"]["output"].clone();
    let (a, b) = (output[1]["call_id"].clone(), output[2]["call_id"].clone());
    // `a` answered twice on its own session; `b` never there.
    for _ in 0..2 {
        c.send(json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": a, "output": "x"}})).await;
    }
    c.send(json!({"type": "input_audio_buffer.clear"})).await;
    c.until("input_audio_buffer.cleared").await;
    let s = sim.ledger().unwrap();
    assert_eq!((s.issued, s.answered_live, s.duplicated), (2, 0, 1));
    assert_eq!(s.unanswered.len(), 1);
    assert_eq!(s.unanswered[0].call_id, b.as_str().unwrap());
    assert_eq!(s.unanswered[0].closed_by, None, "still open");
    drop(c);
    // A later session reports `b`'s result as context: carried.
    let mut c2 = connect(&sim, Dialect::Ga).await;
    user_text(
        &mut c2,
        &format!(
            "Result of the earlier get_time tool call: {{\"call_id\":\"{}\"}}",
            b.as_str().unwrap()
        ),
    )
    .await;
    let s = sim.ledger().unwrap();
    assert_eq!((s.carried, s.unanswered.len()), (1, 0));
    assert_eq!(sim.stats().tool_calls, 2);
    assert!(sim.stats_source().client_errors().is_empty());
    c2.send(json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "call_nope", "output": "x"}})).await;
    c2.expect_error("invalid_tool_call_id").await;
    assert_eq!(
        sim.stats_source().client_errors(),
        [("invalid_tool_call_id".to_string(), 1)].into()
    );
    sim.shutdown().await;
}
