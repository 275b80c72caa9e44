//! The sidecar's service edge under hostile or broken peers, over the real binary: idle streams
//! cannot starve admission, messages over the gRPC size limit and undecodable bytes are explained,
//! oversized tool-host answers are `TOOL_STATUS_INVALID_OUTPUT`, a host that stops reading is ended
//! `host_stalled`, and callback addresses must be in the allowlist.

use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_realtime_sim::{ScriptStep, SimConfig};

/// A session declaring one `lookup` tool, routed as given.
fn lookup_tool_start(route: pb::tool_routing::Route) -> pb::SessionStart {
    pb::SessionStart {
        tools: vec![pb::ToolDefinition {
            name: "lookup".into(),
            ..Default::default()
        }],
        tool_routing: Some(pb::ToolRouting { route: Some(route) }),
        ..start_16k_quiet_guard()
    }
}

/// Opens a Converse stream that never sends anything; resolves with the sidecar's answer.
async fn idle_stream(addr: SocketAddr) -> Result<tonic::Streaming<pb::ServerMessage>, Status> {
    let mut c = client(addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ClientMessage>(1);
    let r = c
        .converse(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map(Response::into_inner);
    drop(tx);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_admitted_while_idle_streams_flood_the_sidecar() {
    let sim = start_sim(SimConfig::default()).await;
    let (sidecar, metrics_addr) = start_sidecar_with_metrics(
        &sim.base_url(),
        &[
            "--max-pending-starts",
            "4",
            "--start-timeout-ms",
            "2000",
            "--max-sessions",
            "2",
        ],
    )
    .await;
    let addr = sidecar.addr;
    // 3 × max-pending idle streams at once, then more, one every 20 ms, while the canary runs.
    let mut flood: Vec<_> = (0..12).map(|_| tokio::spawn(idle_stream(addr))).collect();
    let stop = tokio_util_stop();
    let more = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut extra = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                extra.push(tokio::spawn(idle_stream(addr)));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            extra
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The canary gets a real session, though more idle streams wait than --max-sessions allows.
    for _ in 0..2 {
        let mut canary = HostSession::open_started(addr, start_16k_quiet_guard()).await;
        canary.send_text("are you there?").await;
        let done = canary.until_response_done(Duration::from_secs(10)).await;
        assert_eq!(done.status, "completed");
        canary.end().await;
        canary.until_ended(Duration::from_secs(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.extend(more.await.unwrap());
    let t0 = Instant::now();
    let (mut evicted, mut timed_out) = (0, 0);
    for f in flood {
        let err = f
            .await
            .unwrap()
            .expect_err("an idle stream is never admitted");
        match err.code() {
            tonic::Code::ResourceExhausted => {
                assert!(
                    err.message().contains("--max-pending-starts"),
                    "{}",
                    err.message()
                );
                evicted += 1;
            }
            tonic::Code::DeadlineExceeded => {
                assert!(
                    err.message().contains("2000 ms")
                        && err.message().contains("--start-timeout-ms"),
                    "{}",
                    err.message()
                );
                timed_out += 1;
            }
            other => panic!("unexpected {other:?}: {}", err.message()),
        }
    }
    assert!(evicted >= 8, "{evicted} evicted");
    assert!(
        (1..=4).contains(&timed_out),
        "at most --max-pending-starts streams wait out the timeout: {timed_out}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the timeout is short"
    );
    let text = http_get(metrics_addr, "/metrics").await;
    assert!(
        metric(
            &text,
            "voice_admission_refused_total",
            &[("reason", "pending_evicted")]
        ) >= 8.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "voice_admission_refused_total",
            &[("reason", "start_timeout")]
        ) >= 1.0
    );
    assert_eq!(metric(&text, "voice_pending_starts", &[]), 0.0);
    assert_eq!(
        sim.stats().connections,
        2,
        "only the canaries reached upstream"
    );
}

fn tokio_util_stop() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

/// Sends raw bytes as gRPC messages on `Converse`.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf;
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_converse(addr: SocketAddr, first: Vec<u8>) -> Status {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(first).await.unwrap();
    let r = grpc
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            tonic::codegen::http::uri::PathAndQuery::from_static("/voice.v1.VoiceSidecar/Converse"),
            RawCodec,
        )
        .await;
    drop(tx);
    r.expect_err("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_undecodable_messages_are_explained() {
    let sim = start_sim(SimConfig::default()).await;
    let sidecar = start_sidecar(&sim.base_url(), &["--max-message-bytes", "1048576"]).await;

    // Garbage as the first message: INVALID_ARGUMENT, not INTERNAL.
    let err = raw_converse(sidecar.addr, vec![0xff; 64]).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("ClientMessage"), "{}", err.message());
    // A first message over the limit names it.
    let err = raw_converse(sidecar.addr, vec![0; 2 * 1024 * 1024]).await;
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("--max-message-bytes"),
        "{}",
        err.message()
    );

    // A 5 MiB AudioFrame mid-session: an Error naming the limit, then SessionEnded saying why.
    let mut host = HostSession::open_started(sidecar.addr, start_16k_quiet_guard()).await;
    host.send(In::Audio(pb::AudioFrame {
        data: vec![0; 5 * 1024 * 1024],
        seq: 1,
        ..Default::default()
    }))
    .await;
    let e = host.until_error(Duration::from_secs(10)).await;
    assert_eq!(e.code, "message_too_large");
    assert!(e.message.contains("--max-message-bytes"), "{}", e.message);
    assert!(e.message.contains("1048576"), "{}", e.message);
    let ended = host.until_ended(Duration::from_secs(5)).await;
    assert_eq!(ended.reason, "message_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_tool_result_on_the_stream_finishes_the_call_and_says_why() {
    let sim = start_sim(SimConfig {
        script: vec![ScriptStep::tools(
            None,
            vec![("lookup", json!({}))],
            "Got {outputs}",
        )],
        ms_per_char: 10,
        ..Default::default()
    })
    .await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let mut host = HostSession::open_started(
        sidecar.addr,
        lookup_tool_start(pb::tool_routing::Route::InStream(true)),
    )
    .await;
    host.send_text("look it up").await;
    let call = host.until_tool_call(Duration::from_secs(10)).await;
    host.send(In::ToolResult(pb::ToolResult {
        call_id: call.call_id.clone(),
        result: Some(pb::tool_result::Result::OutputJson(format!(
            "\"{}\"",
            "x".repeat(10 * 1024 * 1024)
        ))),
    }))
    .await;
    let e = host.until_error(Duration::from_secs(10)).await;
    assert_eq!(e.code, "message_too_large");
    assert!(e.message.contains("--max-message-bytes"), "{}", e.message);
    let f = host.until_tool_call_finished(Duration::from_secs(5)).await;
    assert_eq!(f.call_id, call.call_id);
    assert_eq!(f.status, pb::ToolStatus::Cancelled as i32);
    assert!(f.error.contains("message_too_large"), "{}", f.error);
    let ended = host.until_ended(Duration::from_secs(5)).await;
    assert_eq!(ended.reason, "message_too_large");
}

/// A ToolHost answering `size` bytes of JSON.
struct BigHost {
    size: usize,
}

#[tonic::async_trait]
impl pb::tool_host_server::ToolHost for BigHost {
    async fn invoke(
        &self,
        _req: Request<pb::ToolInvocation>,
    ) -> Result<Response<pb::ToolOutput>, Status> {
        Ok(Response::new(pb::ToolOutput {
            result: Some(pb::tool_output::Result::OutputJson(format!(
                "\"{}\"",
                "x".repeat(self.size)
            ))),
        }))
    }
}

async fn serve_big(size: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(
                pb::tool_host_server::ToolHostServer::new(BigHost { size })
                    .max_encoding_message_size(64 * 1024 * 1024),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_hosts_oversized_output_is_invalid_output() {
    for size in [100 * 1024, 6 * 1024 * 1024] {
        let sim = start_sim(SimConfig {
            script: vec![ScriptStep::tools(
                None,
                vec![("lookup", json!({}))],
                "Got it",
            )],
            ms_per_char: 10,
            ..Default::default()
        })
        .await;
        let sidecar = start_sidecar(&sim.base_url(), &[]).await;
        let tools = serve_big(size).await;
        let mut host = HostSession::open_started(
            sidecar.addr,
            lookup_tool_start(pb::tool_routing::Route::CallbackAddress(tools)),
        )
        .await;
        host.send_text("look it up").await;
        let f = host.until_tool_call_finished(Duration::from_secs(10)).await;
        assert_eq!(
            f.status,
            pb::ToolStatus::InvalidOutput as i32,
            "{size} bytes: {f:?}"
        );
        assert!(f.error.contains("65536"), "{size} bytes: {}", f.error);
        // The model heard about it and the session goes on.
        host.until_response_done(Duration::from_secs(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_addresses_outside_the_allowlist_are_refused() {
    let sim = start_sim(SimConfig::default()).await;
    let with = |addr: &str| pb::SessionStart {
        tools: vec![pb::ToolDefinition {
            name: "lookup".into(),
            ..Default::default()
        }],
        tool_routing: Some(pb::ToolRouting {
            route: Some(pb::tool_routing::Route::CallbackAddress(addr.into())),
        }),
        ..start_16k_quiet_guard()
    };
    // Default: loopback and --tool-host only.
    let (sidecar, metrics_addr) = start_sidecar_with_metrics(
        &sim.base_url(),
        &["--tool-host", "http://tools.internal:7000"],
    )
    .await;
    for bad in [
        "http://10.1.2.3:22",
        "http://169.254.169.254:80",
        "http://tools.internal:7001",
    ] {
        let err = HostSession::open(sidecar.addr, with(bad))
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("allowlist"), "{}", err.message());
    }
    for good in ["http://127.0.0.1:1", "http://tools.internal:7000"] {
        let host = HostSession::open(sidecar.addr, with(good)).await;
        assert!(host.is_ok(), "{good}: {:?}", host.err());
    }
    let text = http_get(metrics_addr, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "voice_admission_refused_total",
            &[("reason", "callback_not_allowed")]
        ),
        3.0,
        "{text}"
    );
    drop(sidecar);
    // An explicit list replaces the loopback default.
    let sidecar = start_sidecar(&sim.base_url(), &["--tool-host-allow", "tools.svc:50061"]).await;
    assert!(
        HostSession::open(sidecar.addr, with("http://tools.svc:50061"))
            .await
            .is_ok()
    );
    let err = HostSession::open(sidecar.addr, with("http://127.0.0.1:50061"))
        .await
        .err()
        .expect("loopback is no longer allowed");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

/// The gRPC health status of `service` ("" is the server as a whole: liveness).
async fn health(addr: SocketAddr, service: &str) -> i32 {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_upstream_reachability_and_liveness_does_not() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let serving = ServingStatus::Serving as i32;
    // An upstream address with nothing listening yet.
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");
    let sidecar = start_sidecar(
        &url,
        &[
            "--upstream-unready-after",
            "2",
            "--upstream-probe-secs",
            "1",
        ],
    )
    .await;
    assert_eq!(health(sidecar.addr, "voice.v1.VoiceSidecar").await, serving);
    for _ in 0..2 {
        let mut host = HostSession::open(sidecar.addr, start_16k_quiet_guard())
            .await
            .unwrap();
        let e = host.until_error(Duration::from_secs(20)).await;
        assert_eq!(e.code, "upstream_connect", "{e:?}");
        host.until_ended(Duration::from_secs(5)).await;
    }
    let t0 = Instant::now();
    while health(sidecar.addr, "voice.v1.VoiceSidecar").await == serving {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "readiness did not turn off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        health(sidecar.addr, "").await,
        serving,
        "liveness is not the upstream's business"
    );
    // The upstream comes up: the next probe turns readiness back on, and calls work.
    let sim = voice_realtime_sim::SimServer::bind(
        format!("127.0.0.1:{port}").parse().unwrap(),
        SimConfig {
            script: vec![ScriptStep::say("Back.")],
            ..Default::default()
        },
    )
    .await
    .expect("binding the simulator on the reserved port");
    let t0 = Instant::now();
    while health(sidecar.addr, "voice.v1.VoiceSidecar").await != serving {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "readiness did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let host = HostSession::open_started(sidecar.addr, start_16k_quiet_guard()).await;
    drop(host);
    drop(sim);
}

/// A host that stops reading its stream (found by the soak test): the sidecar ends the session
/// `host_stalled` after `--host-stall-timeout-ms` instead of waiting for it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_reading_is_ended_host_stalled() {
    let sim = start_sim(SimConfig {
        default_reply: "This answer is long on purpose, so that its audio fills the stream of a host that has stopped reading. ".repeat(4),
        realtime_factor: 0.0,
        ..Default::default()
    })
    .await;
    let (sidecar, metrics_addr) =
        start_sidecar_with_metrics(&sim.base_url(), &["--host-stall-timeout-ms", "500"]).await;
    // A small receive window, as a real client that stops reading has: the stream fills.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", sidecar.addr))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let start = pb::SessionStart {
        output_format: Some(pcm16(24000)),
        ..start_16k_quiet_guard()
    };
    let mut host =
        HostSession::open_with(pb::voice_sidecar_client::VoiceSidecarClient::new(ch), start)
            .await
            .expect("admitted");
    host.until_started(Duration::from_secs(10)).await;
    host.send_text("say something long").await;
    // Not reading from here on.
    let t0 = Instant::now();
    loop {
        let text = http_get(metrics_addr, "/metrics").await;
        if metric(
            &text,
            "voice_sessions_total",
            &[("outcome", "host_stalled")],
        ) == 1.0
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the session was not ended host_stalled: {}",
            text.lines()
                .filter(|l| l.starts_with("voice_sessions_") || l.starts_with("voice_host_stalled"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reading again: what was queued, then the end of the stream.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = host.rx.message().await {}
    })
    .await;
    assert!(
        drained.is_ok(),
        "the stream is still open after the session ended"
    );
    let text = http_get(metrics_addr, "/metrics").await;
    assert_eq!(metric(&text, "voice_sessions_active", &[]), 0.0);
    assert_eq!(metric(&text, "voice_host_stalled_sessions", &[]), 0.0);
}
