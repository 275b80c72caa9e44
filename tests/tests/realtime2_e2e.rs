//! GPT Realtime 2 end to end, over the real binaries: the reasoning model's session fields (and
//! their refusals, one per validation rule), multi-message responses (preamble/answer phases; a
//! barge-in truncates the playing item and deletes the unheard one), the idle timeout, quiet mode
//! entered by the model and left by the wake phrase, and cost without a price table.

use serde_json::{json, Value};
use std::time::Duration;
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime_sim::{ScriptStep, SimConfig, SimHandle};

async fn sim(script: Vec<ScriptStep>, user_transcripts: &[&str]) -> SimHandle {
    start_sim(SimConfig {
        script,
        user_transcripts: user_transcripts.iter().map(|s| (*s).to_string()).collect(),
        record_client_events: true,
        ms_per_char: 50,
        ..Default::default()
    })
    .await
}

/// Every client event the sidecar sent in this test validates against the openai 3.57.0 models.
fn sent_events_validate(sim: &SimHandle) {
    let events: Vec<Value> = sim.events_log().into_iter().map(|e| e.event).collect();
    assert!(!events.is_empty());
    validate_client_events("ga", &events);
}

fn rt2_start() -> pb::SessionStart {
    pb::SessionStart {
        input_format: Some(pcm16(16000)),
        model: "gpt-realtime-2".into(),
        ..Default::default()
    }
}

/// `turns` spoken turns of 1.2 s, each followed by `gap` s of silence.
fn turns(n: usize, gap: f32) -> Vec<i16> {
    let mut s = silence(16000, 0.2);
    for _ in 0..n {
        s.extend(speech_like(16000, 1.2));
        s.extend(silence(16000, gap));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_session_fields_reach_upstream_and_the_host_sees_them() {
    let sim = sim(vec![ScriptStep::say("Hello.")], &[]).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let start = pb::SessionStart {
        reasoning: Some(pb::Reasoning {
            effort: pb::ReasoningEffort::High as i32,
        }),
        parallel_tool_calls: Some(true),
        truncation: Some(pb::Truncation {
            mode: Some(pb::truncation::Mode::RetentionRatio(pb::RetentionRatio {
                ratio: 0.7,
                post_instructions_tokens: Some(4000),
            })),
        }),
        noise_reduction: Some(pb::NoiseReduction {
            r#type: pb::noise_reduction::Type::NearField as i32,
            strength: Some(0.6),
        }),
        speed: Some(1.25),
        transcription: Some(pb::Transcription {
            delay: "low".into(),
            include_logprobs: true,
            ..Default::default()
        }),
        tracing: Some(pb::Tracing {
            mode: Some(pb::tracing::Mode::Auto(pb::Empty {})),
        }),
        ..rt2_start()
    };
    let (mut host, started) = HostSession::open_first_started(sidecar.addr, start).await;
    assert_eq!(started.model, "gpt-realtime-2");
    let eff: Value = serde_json::from_str(&started.effective_session_json).unwrap();
    assert_eq!(eff["reasoning"]["effort"], "high");
    assert_eq!(eff["parallel_tool_calls"], true);
    assert_eq!(eff["truncation"]["retention_ratio"], 0.7);
    assert_eq!(eff["audio"]["output"]["speed"], 1.25);
    assert_eq!(
        eff["audio"]["input"]["transcription"]["model"],
        "gpt-realtime-whisper"
    );
    assert_eq!(eff["audio"]["input"]["transcription"]["delay"], "low");
    // What upstream got (and accepted: the session started) is what the host was shown.
    let updates = sent(&sim, "session.update");
    assert_eq!(updates[0]["session"], eff);
    // Mid-session: an invalid value is a typed error and changes nothing; a valid one is sent.
    host.control(pb::control::Action::UpdateSession(pb::SessionUpdate {
        speed: Some(3.0),
        ..Default::default()
    }))
    .await;
    let e = host.until_error(Duration::from_secs(5)).await;
    assert_eq!(e.code, "invalid_control");
    assert!(e.message.contains("update_session.speed"), "{}", e.message);
    host.control(pb::control::Action::UpdateSession(pb::SessionUpdate {
        reasoning: Some(pb::Reasoning {
            effort: pb::ReasoningEffort::Minimal as i32,
        }),
        ..Default::default()
    }))
    .await;
    eventually(
        Duration::from_secs(5),
        || sent(&sim, "session.update").len() == 2,
        || "the valid update did not reach upstream",
    )
    .await;
    let last = sent(&sim, "session.update").pop().unwrap();
    assert_eq!(last["session"]["reasoning"]["effort"], "minimal");
    // Only the changed field goes up (the refused speed was not applied, so nothing else changed).
    assert!(
        last["session"].get("audio").is_none() && last["session"].get("instructions").is_none(),
        "only the changed fields: {}",
        last["session"]
    );
    // A per-response override.
    host.control(pb::control::Action::Respond(pb::Respond {
        text: "hi".into(),
        reasoning: Some(pb::Reasoning {
            effort: pb::ReasoningEffort::Xhigh as i32,
        }),
        ..Default::default()
    }))
    .await;
    host.until_response_done(Duration::from_secs(10)).await;
    let create = sent(&sim, "response.create").pop().unwrap();
    assert_eq!(create["response"]["reasoning"]["effort"], "xhigh");
    host.end().await;
    host.until_ended(Duration::from_secs(5)).await;
    sent_events_validate(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_refuses_its_field_at_start() {
    let sim = sim(vec![], &[]).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let effort = |e: pb::ReasoningEffort| Some(pb::Reasoning { effort: e as i32 });
    let cases: Vec<(&str, pb::SessionStart)> = vec![
        (
            "reasoning",
            pb::SessionStart {
                model: "gpt-realtime".into(),
                reasoning: effort(pb::ReasoningEffort::Low),
                ..rt2_start()
            },
        ),
        (
            "parallel_tool_calls",
            pb::SessionStart {
                model: "gpt-realtime-mini".into(),
                parallel_tool_calls: Some(true),
                ..rt2_start()
            },
        ),
        (
            "reasoning",
            pb::SessionStart {
                dialect: pb::Dialect::Beta as i32,
                reasoning: effort(pb::ReasoningEffort::Low),
                ..rt2_start()
            },
        ),
        (
            "speed",
            pb::SessionStart {
                speed: Some(0.1),
                ..rt2_start()
            },
        ),
        (
            "noise_reduction.strength",
            pb::SessionStart {
                noise_reduction: Some(pb::NoiseReduction {
                    r#type: pb::noise_reduction::Type::FarField as i32,
                    strength: Some(1.5),
                }),
                ..rt2_start()
            },
        ),
        (
            "truncation.retention_ratio.ratio",
            pb::SessionStart {
                truncation: Some(pb::Truncation {
                    mode: Some(pb::truncation::Mode::RetentionRatio(pb::RetentionRatio {
                        ratio: 1.5,
                        post_instructions_tokens: None,
                    })),
                }),
                ..rt2_start()
            },
        ),
        (
            "prompt.id",
            pb::SessionStart {
                prompt: Some(pb::Prompt::default()),
                ..rt2_start()
            },
        ),
        (
            "transcription.delay",
            pb::SessionStart {
                transcription: Some(pb::Transcription {
                    model: "whisper-1".into(),
                    delay: "low".into(),
                    ..Default::default()
                }),
                ..rt2_start()
            },
        ),
        (
            "transcription.keywords",
            pb::SessionStart {
                transcription: Some(pb::Transcription {
                    model: "gpt-realtime-whisper".into(),
                    keywords: vec!["Acme".into()],
                    ..Default::default()
                }),
                ..rt2_start()
            },
        ),
        (
            "transcription.model",
            pb::SessionStart {
                transcription: Some(pb::Transcription {
                    model: "gpt-realtime-2".into(),
                    ..Default::default()
                }),
                ..rt2_start()
            },
        ),
        (
            "model",
            pb::SessionStart {
                model: "gpt-realtime-whisper".into(),
                ..rt2_start()
            },
        ),
        (
            "enter_quiet_mode",
            pb::SessionStart {
                quiet_mode: true,
                tools: vec![pb::ToolDefinition {
                    name: "enter_quiet_mode".into(),
                    ..Default::default()
                }],
                tool_routing: Some(pb::ToolRouting {
                    route: Some(pb::tool_routing::Route::InStream(true)),
                }),
                ..rt2_start()
            },
        ),
    ];
    for (field, start) in cases {
        let Err(status) = HostSession::open(sidecar.addr, start.clone()).await else {
            panic!("a session with a bad {field} was admitted: {start:?}");
        };
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    assert!(
        sent(&sim, "session.update").is_empty(),
        "nothing reached upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preamble_and_its_answer_are_labelled_and_cost_is_estimated_without_prices() {
    let sim = sim(
        vec![ScriptStep::tools(
            Some("Let me look that up."),
            vec![("lookup", json!({"q": "hours"}))],
            "We are open from nine to five.",
        )],
        &["when are you open"],
    )
    .await;
    let (sidecar, metrics) = start_sidecar_with_metrics(&sim.base_url(), &[]).await;
    let start = pb::SessionStart {
        tools: vec![pb::ToolDefinition {
            name: "lookup".into(),
            description: "Looks up business facts".into(),
            ..Default::default()
        }],
        tool_routing: Some(pb::ToolRouting {
            route: Some(pb::tool_routing::Route::InStream(true)),
        }),
        budget_usd: 5.0,
        ..rt2_start()
    };
    let mut host = HostSession::open_started(sidecar.addr, start).await;
    let _streamer = host.stream_in_background(turns(1, 6.0), 16000, 1);
    let call = host.until_tool_call(Duration::from_secs(20)).await;
    host.send(voice_proto::v1::client_message::Message::ToolResult(
        pb::ToolResult {
            call_id: call.call_id,
            result: Some(pb::tool_result::Result::OutputJson(
                r#"{"hours":"9-5"}"#.into(),
            )),
        },
    ))
    .await;
    // Wait for the answer's final transcript.
    host.until(
        Duration::from_secs(20),
        |e| matches!(e, Out::Transcript(t) if t.r#final && t.text.contains("nine to five")),
    )
    .await;
    let finals: Vec<(String, i32)> = host
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Out::Transcript(t) if t.role == pb::Role::Assistant as i32 && t.r#final => {
                Some((t.text.clone(), t.phase))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        finals,
        [
            (
                "Let me look that up.".to_string(),
                pb::Phase::Preamble as i32
            ),
            (
                "We are open from nine to five.".to_string(),
                pb::Phase::Answer as i32
            ),
        ]
    );
    host.end().await;
    let ended = host.until_ended(Duration::from_secs(5)).await;
    let cost = ended.summary.unwrap().cost_usd;
    assert!(
        cost > 0.0,
        "no [prices] table, yet gpt-realtime-2's own prices apply: {cost}"
    );
    let text = http_get(metrics, "/metrics").await;
    assert!(metric(&text, "voice_cost_microdollars_total", &[]) > 0.0);
    assert_eq!(
        metric(&text, "voice_preamble_to_answer_seconds_count", &[]),
        1.0,
        "one preamble -> answer measured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_during_a_multi_message_answer_truncates_that_item_and_deletes_the_unheard_one() {
    let long = "This second message is deliberately long so that the caller can interrupt it well before it ends.";
    let sim = sim(
        vec![
            ScriptStep::messages(["Sure.", long, "And this third part is never heard."]),
            ScriptStep::say("Yes?"),
        ],
        &[],
    )
    .await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let start = pb::SessionStart {
        pacing: Some(pb::Pacing {
            enabled: true,
            lead_ms: 20,
        }),
        ..rt2_start()
    };
    let mut host = HostSession::open_started(sidecar.addr, start).await;
    // Speech, a pause while the reply plays, then the barge-in.
    let mut audio = turns(1, 3.0);
    audio.extend(speech_like(16000, 1.0));
    audio.extend(silence(16000, 2.0));
    let _streamer = host.stream_in_background(audio, 16000, 1);
    let int = host.until_interrupted(Duration::from_secs(20)).await;
    // The items in the order their audio came.
    let mut items: Vec<String> = Vec::new();
    for (_, e) in &host.events {
        if let Out::Audio(a) = e {
            if items.last() != Some(&a.item_id) {
                items.push(a.item_id.clone());
            }
        }
    }
    assert_eq!(items.len(), 2, "the first two messages played: {items:?}");
    assert_eq!(
        int.item_id, items[1],
        "the playing (second) message is the one cut"
    );
    assert!(int.played_ms > 0);
    assert_eq!(int.deleted_item_ids.len(), 1, "{int:?}");
    eventually(
        Duration::from_secs(3),
        || !sim.truncations().is_empty() && !sent(&sim, "conversation.item.delete").is_empty(),
        || "truncate and delete did not reach upstream",
    )
    .await;
    let t = &sim.truncations()[0];
    assert_eq!(t.item_id, int.item_id);
    assert_eq!(t.audio_end_ms, u64::from(int.played_ms));
    let deleted = sent(&sim, "conversation.item.delete");
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["item_id"], int.deleted_item_ids[0]);
    assert_ne!(int.deleted_item_ids[0], items[0]);
    assert_ne!(int.deleted_item_ids[0], items[1]);
    // No error came back for either.
    assert!(
        !host.events.iter().any(|(_, e)| matches!(e, Out::Error(_))),
        "{:?}",
        host.kinds()
    );
    sent_events_validate(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_reaches_the_host_and_its_re_prompt_is_an_ordinary_response() {
    let sim = sim(
        vec![
            ScriptStep::say("Hi."),
            ScriptStep::say("Are you still there?"),
        ],
        &[],
    )
    .await;
    let (sidecar, metrics) = start_sidecar_with_metrics(&sim.base_url(), &[]).await;
    let start = pb::SessionStart {
        turn_detection: Some(pb::TurnDetection {
            mode: Some(pb::turn_detection::Mode::ServerVad(pb::ServerVad {
                idle_timeout_ms: Some(5000),
                ..Default::default()
            })),
        }),
        ..rt2_start()
    };
    let mut host = HostSession::open_started(sidecar.addr, start).await;
    let _streamer = host.stream_in_background(turns(1, 12.0), 16000, 1);
    host.until_response_done(Duration::from_secs(15)).await;
    let idle = host.until_idle_timeout(Duration::from_secs(15)).await;
    assert!(!idle.item_id.is_empty());
    assert!(idle.audio_end_ms > idle.audio_start_ms);
    let done = host.until_response_done(Duration::from_secs(15)).await;
    assert_eq!(done.status, "completed");
    assert!(
        done.voice_to_voice_ms > 0,
        "latency counts from the timeout like from a user turn"
    );
    let text = http_get(metrics, "/metrics").await;
    assert_eq!(metric(&text, "voice_idle_timeouts_total", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_mode_entered_by_the_model_and_left_by_the_wake_phrase() {
    let sim = sim(
        vec![
            ScriptStep::say("Hello."),
            // The model calls the quiet tool on the trigger phrase; its next response (after the
            // wake phrase) is the follow-up.
            ScriptStep::tools(
                None,
                vec![("enter_quiet_mode", json!({"wake_phrase": "Back to demo"}))],
                "I'm back. What next?",
            )
            .when_text_contains("stay quiet"),
        ],
        &[
            "hello there",
            "please stay quiet until I say back to demo",
            "so this is the dashboard",
            "okay, back to demo!",
        ],
    )
    .await;
    let (sidecar, metrics) = start_sidecar_with_metrics(&sim.base_url(), &[]).await;
    let start = pb::SessionStart {
        quiet_mode: true,
        ..rt2_start()
    };
    let mut host = HostSession::open_started(sidecar.addr, start).await;
    let _streamer = host.stream_in_background(turns(4, 4.0), 16000, 1);
    let on = host.until_quiet_mode(Duration::from_secs(30)).await;
    assert!(on.on);
    assert_eq!(on.wake_phrase, "back to demo");
    let creates_when_quiet = sent(&sim, "response.create").len();
    let off = host.until_quiet_mode(Duration::from_secs(30)).await;
    assert!(!off.on);
    // The turn in between got a transcript and no answer; the wake phrase's turn gets one.
    let between = host
        .events
        .iter()
        .any(|(_, e)| matches!(e, Out::Transcript(t) if t.r#final && t.text.contains("dashboard")));
    assert!(
        between,
        "transcripts flow in quiet mode: {:?}",
        host.kinds()
    );
    host.until(
        Duration::from_secs(20),
        |e| matches!(e, Out::Transcript(t) if t.r#final && t.text.contains("I'm back")),
    )
    .await;
    let creates = sent(&sim, "response.create");
    assert_eq!(
        creates.len(),
        creates_when_quiet + 1,
        "one response after the wake phrase, none while quiet"
    );
    // Automatic responses were off upstream while quiet, back on after.
    let updates = sent(&sim, "session.update");
    let td =
        |u: &Value| u["session"]["audio"]["input"]["turn_detection"]["create_response"].clone();
    assert!(updates.iter().any(|u| td(u) == json!(false)));
    assert_ne!(td(updates.last().unwrap()), json!(false));
    // The quiet tool's output went back without a response being asked for.
    let outputs: Vec<Value> = sent(&sim, "conversation.item.create")
        .into_iter()
        .filter(|e| e["item"]["type"] == "function_call_output")
        .collect();
    assert_eq!(outputs.len(), 1);
    let text = http_get(metrics, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "voice_quiet_mode_total",
            &[("how", "model_tool"), ("state", "on")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "voice_quiet_mode_total",
            &[("how", "wake_phrase"), ("state", "off")]
        ),
        1.0
    );
    sent_events_validate(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_two_overlapping_responses_get_one_create_after_both_outputs() {
    let sim = sim(
        vec![
            ScriptStep::tools(
                Some("Checking."),
                vec![("lookup", json!({"q": "first"}))],
                "unused",
            ),
            ScriptStep::tools(
                None,
                vec![("lookup", json!({"q": "second"}))],
                "Both are done.",
            ),
        ],
        &["look up the first thing", "and the second thing too"],
    )
    .await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let start = pb::SessionStart {
        tools: vec![pb::ToolDefinition {
            name: "lookup".into(),
            description: "Looks things up".into(),
            timeout_ms: 60_000,
            ..Default::default()
        }],
        tool_routing: Some(pb::ToolRouting {
            route: Some(pb::tool_routing::Route::InStream(true)),
        }),
        parallel_tool_calls: Some(true),
        ..rt2_start()
    };
    let mut host = HostSession::open_started(sidecar.addr, start).await;
    // Two spoken turns: the second starts a response (server VAD) while the first call still runs.
    let _streamer = host.stream_in_background(turns(2, 4.0), 16000, 1);
    let first = host.until_tool_call(Duration::from_secs(20)).await;
    let second = host.until_tool_call(Duration::from_secs(20)).await;
    assert_ne!(first.call_id, second.call_id);
    for c in [&first, &second] {
        host.send(voice_proto::v1::client_message::Message::ToolResult(
            pb::ToolResult {
                call_id: c.call_id.clone(),
                result: Some(pb::tool_result::Result::OutputJson(r#"{"ok":true}"#.into())),
            },
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    host.until(
        Duration::from_secs(20),
        |e| matches!(e, Out::Transcript(t) if t.r#final && t.text.contains("Both are done")),
    )
    .await;
    // Upstream saw both outputs, then exactly one create.
    let log: Vec<Value> = sim.events_log().into_iter().map(|e| e.event).collect();
    let first_output = log
        .iter()
        .position(|e| e["item"]["type"] == "function_call_output")
        .expect("outputs sent");
    let after: Vec<&Value> = log[first_output..]
        .iter()
        .filter(|e| e["type"] == "response.create" || e["item"]["type"] == "function_call_output")
        .collect();
    let kinds: Vec<&str> = after
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        [
            "conversation.item.create",
            "conversation.item.create",
            "response.create"
        ],
        "{after:?}"
    );
    // The silence guard's holding line (out of band) was barged in on along the way: it is not in
    // the conversation, so nothing was truncated or deleted upstream and no error came back.
    assert!(
        !host.events.iter().any(|(_, e)| matches!(e, Out::Error(_))),
        "{:?}",
        host.kinds()
    );
    sent_events_validate(&sim);
}
