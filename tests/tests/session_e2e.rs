//! End to end: the real `voice-sidecar` binary, the simulator on a loopback port, and a host client
//! speaking gRPC. Covers a full spoken turn, stream admission, health/reflection, clean shutdown of the
//! upstream socket, dialects, bad audio and an upstream that drops.

use std::time::Duration;
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};
use tonic_reflection::pb::v1alpha as alpha;
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime_sim::{ScriptStep, SimConfig};

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
    let mut s = silence(rate, 0.3);
    s.extend(speech_like(rate, 1.5));
    s.extend(silence(rate, 1.2));
    s
}

async fn sessions_drain(sim: &voice_realtime_sim::SimHandle) {
    eventually(
        Duration::from_secs(5),
        || sim.stats().sessions_active == 0,
        || format!("upstream session still open: {:?}", sim.stats()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_turn_16k_end_to_end() {
    let sim = start_sim(sim_config()).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let (mut host, st) = HostSession::open_first_started(sidecar.addr, start_16k()).await;
    assert!(st.session_id.starts_with("vs_"));
    assert_eq!(st.upstream_audio_format, "pcm16");
    assert!(!st.input_passthrough, "16 kHz must be resampled");

    let streamer = host.stream_in_background(one_utterance(16000), 16000, 1);
    let done = host.until_response_done(Duration::from_secs(20)).await;
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
        assert_eq!(
            f.seq, i as u64,
            "output frames are numbered from 0 (the proto)"
        );
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
    host.end().await;
    let end = host.until_ended(Duration::from_secs(5)).await;
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

#[tokio::test]
async fn streams_must_start_with_a_valid_session_start() {
    let sim = start_sim(sim_config()).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;

    // Audio before SessionStart.
    let mut c = client(sidecar.addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(msg(In::Audio(pb::AudioFrame {
        data: vec![0; 640],
        seq: 1,
        ..Default::default()
    })))
    .await
    .unwrap();
    let err = c
        .converse(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("SessionStart"), "{}", err.message());

    // An empty stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ClientMessage>(4);
    drop(tx);
    let err = c
        .converse(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Invalid SessionStart fields are named.
    for (start, needle) in [
        (
            pb::SessionStart {
                input_format: Some(pcm16(7000)),
                ..Default::default()
            },
            "input_format",
        ),
        (
            pb::SessionStart {
                input_format: Some(pb::AudioFormat {
                    codec: pb::Codec::Mulaw as i32,
                    sample_rate_hz: 16000,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "input_format",
        ),
        (
            pb::SessionStart {
                tools: vec![pb::ToolDefinition {
                    name: "t".into(),
                    parameters_json_schema: "{not json".into(),
                    ..Default::default()
                }],
                tool_routing: Some(pb::ToolRouting {
                    route: Some(pb::tool_routing::Route::InStream(true)),
                }),
                ..Default::default()
            },
            "tools",
        ),
    ] {
        let err = HostSession::open(sidecar.addr, start)
            .await
            .err()
            .expect("must be refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(needle), "{}", err.message());
    }
    assert_eq!(
        sim.stats().connections,
        0,
        "refused sessions must not open upstream sockets"
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let sim = start_sim(sim_config()).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", sidecar.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "voice.v1.VoiceSidecar"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    let mut refl = ServerReflectionClient::new(ch.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "voice.v1.VoiceSidecar",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }

    // A client that speaks only v1alpha.
    let mut refl = alpha::server_reflection_client::ServerReflectionClient::new(ch);
    let req = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("no v1alpha service list")
    };
    assert!(list
        .service
        .iter()
        .any(|s| s.name == "voice.v1.VoiceSidecar"));
}

#[tokio::test]
async fn half_close_from_the_host_ends_the_session_and_the_upstream_socket() {
    let sim = start_sim(sim_config()).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut host = HostSession::open_started(sidecar.addr, start_16k()).await;
    assert_eq!(sim.stats().sessions_active, 1);
    let (dead_tx, _) = tokio::sync::mpsc::channel(1);
    drop(std::mem::replace(&mut host.tx, dead_tx));
    let e = host.until_ended(Duration::from_secs(5)).await;
    assert_eq!(e.reason, "client_closed");
    sessions_drain(&sim).await;
    // The sidecar closed the upstream socket with a normal close frame (RFC 6455), not by dropping it.
    let closes = sim.closes();
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert!(!closes[0].by_server);
    assert_eq!(closes[0].client_code, Some(1000), "{closes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cap_is_answered_with_a_close_frame_and_reported_as_session_expired() {
    let sim = start_sim(SimConfig {
        session_max_duration_ms: Some(1500),
        ..sim_config()
    })
    .await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut host = HostSession::open_started(sidecar.addr, start_16k()).await;
    let e = host.until_error(Duration::from_secs(10)).await;
    assert_eq!(e.code, "session_expired", "{e:?}");
    assert!(e.retryable);
    assert!(
        e.message.contains("1001") && e.message.contains("maximum duration"),
        "{}",
        e.message
    );
    // Upstream's close got the sidecar's close frame back: the handshake completed (no 1006).
    let cap = sim
        .closes()
        .into_iter()
        .find(|c| c.by_server)
        .expect("the simulator closed the capped session");
    assert!(cap.client_code.is_some(), "{cap:?}");
    // And the call goes on on a new upstream session.
    let e = host.until_error(Duration::from_secs(10)).await;
    assert_eq!(e.code, "upstream_resumed");
    host.end().await;
    host.until_ended(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beta_dialect_and_telephony_passthrough() {
    let sim = start_sim(sim_config()).await;
    let sidecar = start_sidecar(&sim.base_url(), &["--dialect", "beta"]).await;
    let start = pb::SessionStart {
        input_format: Some(audio_format(pb::Codec::Mulaw, 8000)),
        ..Default::default()
    };
    let (mut host, st) = HostSession::open_first_started(sidecar.addr, start).await;
    assert_eq!(st.dialect, pb::Dialect::Beta as i32);
    assert_eq!(st.upstream_audio_format, "g711_ulaw");
    assert!(st.input_passthrough && st.output_passthrough);

    // µ-law-encode the utterance and send it in 20 ms frames (160 bytes).
    let codes: Vec<u8> = one_utterance(8000)
        .iter()
        .map(|&s| ulaw_encode(s))
        .collect();
    let frames: Vec<Vec<u8>> = codes.chunks(160).map(<[u8]>::to_vec).collect();
    let sent = frames.clone();
    let streamer = host.stream_frames_in_background(frames.into_iter().map(Some).collect(), 1);
    host.until_response_done(Duration::from_secs(20)).await;
    assert_eq!(
        streamer.await.unwrap(),
        sent.len() as u64 + 1,
        "the sidecar took every frame"
    );

    // Pass-through: the appended bytes upstream are exactly the host's bytes.
    let appended: Vec<u8> = sim
        .events_log()
        .iter()
        .filter(|e| e.event["type"] == "input_audio_buffer.append")
        .flat_map(|e| b64decode(e.event["audio"].as_str().unwrap()))
        .collect();
    assert_eq!(
        appended,
        sent.concat(),
        "µ-law input must reach upstream unchanged"
    );
    assert_eq!(
        sim.events_log()[0].event["session"]["input_audio_format"],
        "g711_ulaw"
    );
    let frames = host.audio_frames();
    assert!(
        frames.iter().rev().skip(1).all(|f| f.data.len() == 160),
        "20 ms of µ-law is 160 bytes"
    );
}

#[tokio::test]
async fn bad_audio_gets_a_typed_error_and_the_session_survives() {
    let sim = start_sim(sim_config()).await;
    let sidecar = start_sidecar(&sim.base_url(), &["--max-frame-bytes", "4000"]).await;
    let mut host = HostSession::open_started(sidecar.addr, start_16k()).await;
    host.send(In::Audio(pb::AudioFrame {
        data: vec![1, 2, 3],
        seq: 1,
        ..Default::default()
    }))
    .await;
    let e = host.until_error(Duration::from_secs(5)).await;
    assert_eq!(e.code, "odd_byte_count");
    host.send(In::Audio(pb::AudioFrame {
        data: vec![0; 6000],
        seq: 2,
        ..Default::default()
    }))
    .await;
    let e = host.until_error(Duration::from_secs(5)).await;
    assert_eq!(e.code, "frame_too_large");
    host.send(In::Control(pb::Control { action: None })).await;
    let e = host.until_error(Duration::from_secs(5)).await;
    assert_eq!(e.code, "invalid_control");
    // Still alive: a normal turn gets answered.
    let streamer = host.stream_in_background(one_utterance(16000), 16000, 3);
    host.until_response_done(Duration::from_secs(20)).await;
    streamer.await.unwrap();
}

#[tokio::test]
async fn an_upstream_that_drops_ends_the_session_with_a_clear_error() {
    let cfg = SimConfig {
        drop_after_events: Some(3),
        ..sim_config()
    };
    let sim = start_sim(cfg).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut host = HostSession::open(sidecar.addr, start_16k()).await.unwrap();
    let streamer = host.stream_in_background(one_utterance(16000), 16000, 1);
    let e = host.until_error(Duration::from_secs(10)).await;
    assert_eq!(e.code, "upstream_disconnected");
    let end = host.until_ended(Duration::from_secs(5)).await;
    assert!(end.reason.starts_with("upstream"), "{}", end.reason);
    streamer.abort();
}

#[tokio::test]
async fn the_api_key_never_reaches_logs() {
    let sim = start_sim(sim_config()).await;
    let port = free_port();
    let key_file = std::env::temp_dir().join(format!("voice-e2e-key-log-{port}"));
    std::fs::write(&key_file, "sk-test-must-not-leak-42\n").unwrap();
    // Logs go to a file: a pipe nobody reads would fill up and stall the process.
    let log_path = std::env::temp_dir().join(format!("voice-e2e-log-{port}"));
    let log_file = std::fs::File::create(&log_path).unwrap();
    // At trace level, every dependency included: the WebSocket handshake to the (simulated) API
    // happens, and its request, Authorization header and all, must not reach the log.
    let mut child = std::process::Command::new(binary("voice-sidecar"))
        .args(["--backend", "openai", "--realtime-url", &sim.base_url()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--metrics-listen",
            "off",
            "--log",
            "trace",
            "--api-key-file",
        ])
        .arg(&key_file)
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr, Duration::from_secs(20)).await;
    let host = HostSession::open_started(addr, start_16k()).await;
    host.end().await;
    drop(host);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    eventually(
        Duration::from_secs(10),
        || child.try_wait().unwrap().is_some(),
        || "sidecar did not exit after SIGTERM",
    )
    .await;
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("session started"),
        "expected the session's logs, got: {logs}"
    );
    assert!(
        logs.contains("tungstenite"),
        "trace logs of the WebSocket library are on (only the handshake is filtered)"
    );
    assert!(!logs.contains("must-not-leak"), "API key leaked into logs");
    assert!(
        !logs.contains("Bearer"),
        "an Authorization header reached the logs"
    );
    drop(sim);
}

fn ulaw_encode(s: i16) -> u8 {
    voice_audio::g711::linear_to_ulaw(s)
}

fn b64decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("upstream audio is base64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_as_kubernetes_expects() {
    let sim = start_sim(sim_config()).await;
    let mut sidecar = start_sidecar(&sim.base_url(), &["--shutdown-grace-secs", "5"]).await;
    let mut host = HostSession::open_started(sidecar.addr, start_16k()).await;
    let t0 = std::time::Instant::now();
    sidecar.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // During the grace period the listener still answers: a probe on a new connection sees
    // NOT_SERVING (overall and for the service) ...
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", sidecar.addr))
        .unwrap()
        .connect()
        .await
        .expect("the listener stays open while draining");
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "voice.v1.VoiceSidecar"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers while draining")
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::NotServing as i32,
            "{service:?}"
        );
    }
    // ... and a new Converse stream gets UNAVAILABLE ...
    let err = HostSession::open_with(
        pb::voice_sidecar_client::VoiceSidecarClient::new(ch),
        start_16k(),
    )
    .await
    .err()
    .expect("a draining sidecar refuses new sessions");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    // ... while the live session goes on: a whole turn.
    host.send_text("still there?").await;
    let done = host.until_response_done(Duration::from_secs(10)).await;
    assert_eq!(done.status, "completed");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the turn ran within the grace period"
    );
    let e = host.until_ended(Duration::from_secs(10)).await;
    assert_eq!(e.reason, "shutdown");
    assert!(
        t0.elapsed() >= Duration::from_millis(4900),
        "the grace period was not honoured"
    );
    // The process exits by itself even though this host keeps its request stream open.
    let mut status = None;
    eventually(
        Duration::from_secs(10),
        || {
            status = sidecar.child.try_wait().unwrap();
            status.is_some()
        },
        || "sidecar did not exit after SIGTERM",
    )
    .await;
    let status = status.unwrap();
    assert!(status.success(), "sidecar exited with {status}");
    sessions_drain(&sim).await;
}

/// Runs "first question" and "second question" as typed turns; returns the simulator's server-event
/// count after each turn.
async fn two_typed_turns(cfg: SimConfig) -> (u64, u64) {
    let sim = start_sim(cfg).await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut host = HostSession::open_started(sidecar.addr, start_16k()).await;
    let mut counts = Vec::new();
    for q in ["first question", "second question"] {
        host.send_text(q).await;
        host.until_response_done(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        counts.push(sim.stats().events_out);
    }
    (counts[0], counts[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_upstream_is_reconnected_with_the_conversation_carried_forward() {
    let base = SimConfig {
        script: vec![ScriptStep::say(
            "Here is a fairly long first answer to make the first turn long.",
        )
        .when_text_contains("first")],
        default_reply: "Okay.".into(),
        ms_per_char: 20,
        record_client_events: true,
        ..Default::default()
    };
    // Measure where the second turn's events fall, then drop the socket in the middle of it.
    let (after_first, after_second) = two_typed_turns(base.clone()).await;
    let drop_at = (after_first + after_second) / 2;
    let cfg = SimConfig {
        drop_after_events: Some(drop_at),
        ..base
    };
    let sim = start_sim(cfg).await;
    let (sidecar, metrics_addr) = start_sidecar_with_metrics(&sim.base_url(), &[]).await;
    let mut host = HostSession::open_started(sidecar.addr, start_16k()).await;
    host.send_text("first question").await;
    host.until_response_done(Duration::from_secs(10)).await;
    host.send_text("second question").await;
    let e = host.until_error(Duration::from_secs(10)).await;
    assert_eq!(e.code, "upstream_disconnected");
    assert!(e.retryable);
    let e = host.until_error(Duration::from_secs(10)).await;
    assert_eq!(e.code, "upstream_resumed", "{}", e.message);
    // The cut-off answer is asked for again in the new session, and arrives.
    host.until(
        Duration::from_secs(10),
        |e| matches!(e, Out::Transcript(t) if t.r#final && t.text == "Okay."),
    )
    .await;
    host.until(
        Duration::from_secs(10),
        |e| matches!(e, Out::ResponseDone(r) if r.status == "completed"),
    )
    .await;
    assert_eq!(sim.stats().connections, 2);

    // The new upstream session got the configuration and the conversation so far as text.
    let log = sim.events_log();
    let first = log[0].session_id.clone();
    let second = log
        .iter()
        .find(|e| e.session_id != first)
        .expect("a second upstream session")
        .session_id
        .clone();
    assert!(log
        .iter()
        .any(|e| e.session_id == second && e.event["type"] == "session.update"));
    let texts: Vec<String> = log
        .iter()
        .filter(|e| e.session_id == second && e.event["type"] == "conversation.item.create")
        .map(|e| {
            format!(
                "{}:{}",
                e.event["item"]["role"].as_str().unwrap(),
                e.event["item"]["content"][0]["text"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        texts,
        vec![
            "user:first question".to_string(),
            "assistant:Here is a fairly long first answer to make the first turn long.".to_string(),
            "user:second question".to_string()
        ]
    );
    let text = http_get(metrics_addr, "/metrics").await;
    assert_eq!(metric(&text, "voice_upstream_reconnects_total", &[]), 1.0);
    assert_eq!(
        metric(
            &text,
            "voice_dead_air_seconds_count",
            &[("cause", "reconnect")]
        ),
        1.0
    );
}

/// A host that stops reading its stream mid-reply: the sidecar waits (nothing dropped, nothing out of
/// order), records the stall in `voice_host_stall_seconds`, and everything arrives once the host reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_reading_loses_nothing_and_the_stall_is_measured() {
    // ~16 s of 48 kHz PCM16 (~1.5 MB), sent by the simulator at 4x real time.
    let long = "This answer is long on purpose, so that a host that stops reading fills every buffer between the model and itself. ".repeat(2);
    let sim = start_sim(SimConfig {
        script: vec![ScriptStep::say(&long)],
        ms_per_char: 70,
        ..Default::default()
    })
    .await;
    let (sidecar, metrics_addr) = start_sidecar_with_metrics(&sim.base_url(), &[]).await;
    // A small HTTP/2 window, so the host's own buffering cannot absorb the whole reply.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", sidecar.addr))
        .unwrap()
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .connect()
        .await
        .unwrap();
    let c = pb::voice_sidecar_client::VoiceSidecarClient::new(ch);
    let start = pb::SessionStart {
        input_format: Some(pcm16(16000)),
        output_format: Some(pcm16(48000)),
        ..Default::default()
    };
    let mut host = HostSession::open_with(c, start).await.unwrap();
    host.until_started(Duration::from_secs(10)).await;
    host.send_text("talk for a while").await;
    // Read until the reply starts, then stop reading while it streams.
    let mut audio: Vec<pb::AudioFrame> = vec![host.until_audio(Duration::from_secs(10)).await];
    // While the host is stuck, the stall is visible (not only once it ends).
    let t_stop = std::time::Instant::now();
    let mut stalled_now = 0.0;
    while t_stop.elapsed() < Duration::from_millis(2500) && stalled_now < 1.0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stalled_now = metric(
            &http_get(metrics_addr, "/metrics").await,
            "voice_host_stalled_sessions",
            &[],
        );
    }
    assert_eq!(
        stalled_now, 1.0,
        "the stuck session is not visible while it is stuck"
    );
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(t_stop.elapsed())).await;
    let next = |m: Option<pb::ServerMessage>| m.and_then(|m| m.message);
    let done = loop {
        let m = tokio::time::timeout(Duration::from_secs(20), host.rx.message())
            .await
            .expect("the rest of the reply after the host resumes reading")
            .unwrap();
        match next(m) {
            Some(Out::Audio(a)) => audio.push(a),
            Some(Out::ResponseDone(d)) => break d,
            Some(Out::Error(e)) => panic!("error while the host was slow: {e:?}"),
            _ => {}
        }
    };
    assert_eq!(done.status, "completed");
    // Every frame, in order, no gap: backpressure, not loss.
    for (i, f) in audio.iter().enumerate() {
        assert_eq!(f.seq, audio[0].seq + i as u64, "frame {i} out of sequence");
    }
    let ms: u64 = audio.iter().map(|f| u64::from(f.duration_us)).sum::<u64>() / 1000;
    let expected_ms = sim_speech_ms(&long, 70);
    assert!(
        ms + 100 >= expected_ms,
        "host received {ms} ms of audio, the reply was {expected_ms} ms"
    );
    let text = http_get(metrics_addr, "/metrics").await;
    assert_eq!(metric(&text, "voice_host_stalled_sessions", &[]), 0.0);
    let stalls = metric(&text, "voice_host_stall_seconds_count", &[]);
    let stalled = metric(&text, "voice_host_stall_seconds_sum", &[]);
    assert!(stalls >= 1.0, "the stall was not recorded:\n{text}");
    assert!(
        stalled > 0.5,
        "the host stopped reading for 3 s, recorded stall {stalled} s"
    );
    drop(host);
}

/// How much audio the simulator speaks for `text` at `ms_per_char`.
fn sim_speech_ms(text: &str, ms_per_char: u64) -> u64 {
    text.chars().count() as u64 * ms_per_char
}

#[tokio::test]
async fn starts_over_a_configured_limit_are_refused_naming_the_flag() {
    let sim = start_sim(sim_config()).await;
    let sidecar = start_sidecar(
        &sim.base_url(),
        &["--max-tools", "2", "--max-instructions-bytes", "100"],
    )
    .await;
    let tool = |name: &str| pb::ToolDefinition {
        name: name.into(),
        ..Default::default()
    };
    let many_tools = pb::SessionStart {
        tools: vec![tool("a"), tool("b"), tool("c")],
        ..start_16k()
    };
    let long_instructions = pb::SessionStart {
        instructions: "x".repeat(101),
        ..start_16k()
    };
    for (start, flag) in [
        (many_tools, "--max-tools"),
        (long_instructions, "--max-instructions-bytes"),
    ] {
        let Err(err) = HostSession::open(sidecar.addr, start).await else {
            panic!("a start over {flag} was admitted");
        };
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(flag), "{}", err.message());
    }
    // Within the limits, a session starts.
    let host = HostSession::open_started(sidecar.addr, start_16k()).await;
    host.end().await;
}
