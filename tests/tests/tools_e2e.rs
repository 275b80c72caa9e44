//! Tools end to end: the real sidecar calls a `ToolHost` served by this test process (callback mode)
//! or asks the host on the stream (in-stream mode), against the simulator, which enforces the
//! upstream's rules. Asserts parallelism, matching by call_id, exactly one output per call, exactly one
//! `response.create` per round, and every failure mode turning into an output the model can speak.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime_sim::{ScriptStep, SimConfig, SimHandle};

/// What the test host saw of one invocation.
#[derive(Debug, Clone)]
struct Seen {
    inv: pb::ToolInvocation,
    start: Instant,
    end: Option<Instant>,
    cancelled: bool,
    grpc_timeout: Option<String>,
}

/// A ToolHost whose tools behave as the test says: `(delay, answer)` per tool name.
#[derive(Clone, Default)]
struct TestHost {
    behaviour: Arc<HashMap<String, (Duration, pb::tool_output::Result)>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct CancelGuard {
    seen: Arc<Mutex<Vec<Seen>>>,
    idx: usize,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            self.seen.lock().unwrap()[self.idx].cancelled = true;
        }
    }
}

#[tonic::async_trait]
impl pb::tool_host_server::ToolHost for TestHost {
    async fn invoke(
        &self,
        req: Request<pb::ToolInvocation>,
    ) -> Result<Response<pb::ToolOutput>, Status> {
        let grpc_timeout = req
            .metadata()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let inv = req.into_inner();
        let idx = {
            let mut s = self.seen.lock().unwrap();
            s.push(Seen {
                inv: inv.clone(),
                start: Instant::now(),
                end: None,
                cancelled: false,
                grpc_timeout,
            });
            s.len() - 1
        };
        let mut guard = CancelGuard {
            seen: self.seen.clone(),
            idx,
            done: false,
        };
        let (delay, answer) = self.behaviour.get(&inv.name).cloned().unwrap_or((
            Duration::ZERO,
            pb::tool_output::Result::Error("unknown".into()),
        ));
        tokio::time::sleep(delay).await;
        guard.done = true;
        self.seen.lock().unwrap()[idx].end = Some(Instant::now());
        Ok(Response::new(pb::ToolOutput {
            result: Some(answer),
        }))
    }
}

async fn serve_tools(host: TestHost) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(pb::tool_host_server::ToolHostServer::new(host))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

fn ok(v: &Value) -> pb::tool_output::Result {
    pb::tool_output::Result::OutputJson(v.to_string())
}

fn tool(name: &str, schema: &Value, timeout_ms: u32) -> pb::ToolDefinition {
    pb::ToolDefinition {
        name: name.into(),
        description: format!("test tool {name}"),
        parameters_json_schema: schema.to_string(),
        timeout_ms,
        ..Default::default()
    }
}

fn obj() -> Value {
    json!({"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})
}

async fn sim_with(script: Vec<ScriptStep>) -> SimHandle {
    start_sim(SimConfig {
        script,
        record_client_events: true,
        ms_per_char: 20,
        first_audio_delay_ms: 50,
        ..Default::default()
    })
    .await
}

/// The simulator running `step`, a sidecar (with `flags`) in front of it, and a started session that
/// offers `tools`, routed by `route`. Keep the sidecar alive as long as the session.
async fn tool_session(
    step: ScriptStep,
    flags: &[&str],
    tools: Vec<pb::ToolDefinition>,
    route: pb::tool_routing::Route,
) -> (SimHandle, Proc, HostSession) {
    let sim = sim_with(vec![step]).await;
    let sidecar = start_sidecar(&sim.base_url(), flags).await;
    let host = HostSession::open_started(sidecar.addr, start(tools, route)).await;
    (sim, sidecar, host)
}

fn start(tools: Vec<pb::ToolDefinition>, route: pb::tool_routing::Route) -> pb::SessionStart {
    pb::SessionStart {
        input_format: Some(pcm16(24000)),
        tools,
        tool_routing: Some(pb::ToolRouting { route: Some(route) }),
        silence_guard: Some(pb::SilenceGuard {
            action: pb::silence_guard::Action::Off as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn outputs(sim: &SimHandle) -> HashMap<String, Value> {
    sent(sim, "conversation.item.create")
        .into_iter()
        .filter(|e| e["item"]["type"] == "function_call_output")
        .map(|e| {
            (
                e["item"]["call_id"].as_str().unwrap().to_string(),
                serde_json::from_str(e["item"]["output"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

fn finished(host: &HostSession) -> Vec<pb::ToolCallFinished> {
    host.events
        .iter()
        .filter_map(|(_, e)| {
            if let Out::ToolCallFinished(f) = e {
                Some(f.clone())
            } else {
                None
            }
        })
        .collect()
}

fn assistant_finals(host: &HostSession) -> Vec<String> {
    host.events
        .iter()
        .filter_map(|(_, e)| match e {
            Out::Transcript(t) if t.role == pb::Role::Assistant as i32 && t.r#final => {
                Some(t.text.clone())
            }
            _ => None,
        })
        .collect()
}

/// Waits until `n` responses are done.
async fn responses(host: &mut HostSession, n: usize) {
    let mut seen = host
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Out::ResponseDone(_)))
        .count();
    while seen < n {
        host.until_response_done(Duration::from_secs(20)).await;
        seen += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_mode_runs_parallel_calls_and_continues_exactly_once() {
    let host_impl = TestHost {
        behaviour: Arc::new(HashMap::from([
            (
                "calendar".to_string(),
                (
                    Duration::from_millis(700),
                    ok(&json!({"events": ["dentist 09:30"]})),
                ),
            ),
            (
                "crm".to_string(),
                (Duration::from_millis(300), ok(&json!({"saved": true}))),
            ),
        ])),
        ..Default::default()
    };
    let tools_addr = serve_tools(host_impl.clone()).await;
    let (sim, _sidecar, mut host) = tool_session(
        ScriptStep::tools(
            Some("One moment."),
            vec![
                ("calendar", json!({"q": "tomorrow"})),
                ("crm", json!({"q": "called"})),
            ],
            "Here you go: {outputs}",
        ),
        &[],
        vec![tool("calendar", &obj(), 5000), tool("crm", &obj(), 5000)],
        pb::tool_routing::Route::CallbackAddress(tools_addr),
    )
    .await;
    host.send_text("check my calendar and update the CRM").await;
    responses(&mut host, 2).await;

    let seen = host_impl.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "each call runs exactly once: {seen:?}");
    let (a, b) = (&seen[0], &seen[1]);
    assert!(
        a.start < b.end.unwrap() && b.start < a.end.unwrap(),
        "the calls must overlap (run in parallel)"
    );
    for s in &seen {
        assert!(s.inv.session_id.starts_with("vs_"));
        assert!(s.inv.call_id.starts_with("call_"));
        assert_eq!(s.inv.deadline_ms, 5000);
        assert!(
            s.grpc_timeout.is_some(),
            "the RPC carries the tool's deadline"
        );
        assert!(serde_json::from_str::<Value>(&s.inv.arguments_json).unwrap()["q"].is_string());
    }

    // Each call: one output upstream, matched by call_id; one ToolCallFinished to the host.
    let outs = outputs(&sim);
    assert_eq!(outs.len(), 2);
    for s in &seen {
        let expected = if s.inv.name == "calendar" {
            json!({"events": ["dentist 09:30"]})
        } else {
            json!({"saved": true})
        };
        assert_eq!(
            outs[&s.inv.call_id], expected,
            "output of {} matched by call_id",
            s.inv.name
        );
    }
    let fin = finished(&host);
    assert_eq!(fin.len(), 2);
    assert!(fin.iter().all(|f| f.status == pb::ToolStatus::Ok as i32));
    let cal = fin.iter().find(|f| f.name == "calendar").unwrap();
    assert!(
        cal.duration_ms >= 650 && cal.duration_ms < 2000,
        "calendar took {} ms",
        cal.duration_ms
    );

    // Exactly one response.create for the round (plus the one for the text question), sent after the
    // last output, and never into an active response.
    let log: Vec<Value> = sim.events_log().into_iter().map(|e| e.event).collect();
    let creates: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, e)| e["type"] == "response.create")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        creates.len(),
        2,
        "one for the question, exactly one for the tool round"
    );
    let last_output = log
        .iter()
        .rposition(|e| e["item"]["type"] == "function_call_output")
        .unwrap();
    assert!(
        creates[1] > last_output,
        "the round's response.create comes after every output"
    );
    assert_eq!(
        sim.stats().errors_sent,
        0,
        "the simulator saw no protocol misuse"
    );

    // The model continued and used the results.
    let finals = assistant_finals(&host);
    assert_eq!(finals[0], "One moment.");
    assert!(
        finals.last().unwrap().contains("dentist 09:30")
            && finals.last().unwrap().contains("saved"),
        "{finals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_stream_mode_matches_results_by_call_id_in_any_order() {
    let (sim, _sidecar, mut host) = tool_session(
        ScriptStep::tools(
            None,
            vec![("first", json!({"q": "1"})), ("second", json!({"q": "2"}))],
            "Got {outputs}",
        ),
        &[],
        vec![tool("first", &obj(), 5000), tool("second", &obj(), 5000)],
        pb::tool_routing::Route::InStream(true),
    )
    .await;
    host.send_text("go").await;
    let mut calls = Vec::new();
    while calls.len() < 2 {
        let c = host.until_tool_call(Duration::from_secs(10)).await;
        assert_eq!(c.timeout_ms, 5000);
        calls.push(c);
    }
    // Answer in reverse order.
    for c in calls.iter().rev() {
        let r = pb::ToolResult {
            call_id: c.call_id.clone(),
            result: Some(pb::tool_result::Result::OutputJson(
                json!({"answer": c.name}).to_string(),
            )),
        };
        host.send(In::ToolResult(r)).await;
    }
    responses(&mut host, 2).await;
    let outs = outputs(&sim);
    for c in &calls {
        assert_eq!(outs[&c.call_id], json!({"answer": c.name}));
    }
    assert_eq!(sent(&sim, "response.create").len(), 2);
    assert_eq!(sim.stats().errors_sent, 0);
    // A result for a call that does not exist is refused on the stream; nothing goes upstream.
    host.send(In::ToolResult(pb::ToolResult {
        call_id: "call_nope".into(),
        result: Some(pb::tool_result::Result::OutputJson("{}".into())),
    }))
    .await;
    let e = host.until_error(Duration::from_secs(5)).await;
    assert_eq!(e.code, "tool_unknown_call");
    assert_eq!(outputs(&sim).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_becomes_an_output_the_model_can_speak_about() {
    let host_impl = TestHost {
        behaviour: Arc::new(HashMap::from([
            (
                "fails".to_string(),
                (
                    Duration::ZERO,
                    pb::tool_output::Result::Error("database is down".into()),
                ),
            ),
            (
                "slow".to_string(),
                (Duration::from_secs(3), ok(&json!({"late": true}))),
            ),
            (
                "garbage".to_string(),
                (
                    Duration::ZERO,
                    pb::tool_output::Result::OutputJson("not json {".into()),
                ),
            ),
            (
                "huge".to_string(),
                (Duration::ZERO, ok(&json!({"blob": "x".repeat(5000)}))),
            ),
            (
                "strict".to_string(),
                (Duration::ZERO, ok(&json!({"never": "called"}))),
            ),
        ])),
        ..Default::default()
    };
    let tools_addr = serve_tools(host_impl.clone()).await;
    let tools = vec![
        tool("fails", &obj(), 2000),
        tool("slow", &obj(), 400),
        tool("garbage", &obj(), 2000),
        tool("huge", &obj(), 2000),
        tool("strict", &obj(), 2000),
    ];
    let (sim, _sidecar, mut host) = tool_session(
        ScriptStep::tools(
            None,
            vec![
                ("fails", json!({"q": "a"})),
                ("slow", json!({"q": "b"})),
                ("garbage", json!({"q": "c"})),
                ("huge", json!({"q": "d"})),
                ("strict", json!({"wrong": 1})),
            ],
            "After failures: {outputs}",
        ),
        &["--max-tool-output-bytes", "1024"],
        tools,
        pb::tool_routing::Route::CallbackAddress(tools_addr),
    )
    .await;
    host.send_text("do everything").await;
    responses(&mut host, 2).await;

    let fin: HashMap<String, pb::ToolCallFinished> = finished(&host)
        .into_iter()
        .map(|f| (f.name.clone(), f))
        .collect();
    let status = |n: &str| pb::ToolStatus::try_from(fin[n].status).unwrap();
    assert_eq!(status("fails"), pb::ToolStatus::Error);
    assert_eq!(status("slow"), pb::ToolStatus::Timeout);
    assert_eq!(status("garbage"), pb::ToolStatus::InvalidOutput);
    assert_eq!(status("huge"), pb::ToolStatus::InvalidOutput);
    assert_eq!(status("strict"), pb::ToolStatus::Refused);
    assert!(
        fin["slow"].duration_ms >= 380 && fin["slow"].duration_ms < 1500,
        "timeout after {} ms",
        fin["slow"].duration_ms
    );

    let outs = outputs(&sim);
    assert_eq!(outs.len(), 5, "every call gets exactly one output");
    for o in outs.values() {
        assert!(
            o["error"].as_str().is_some_and(|m| !m.is_empty()),
            "error outputs carry a message: {o}"
        );
    }
    let seen = host_impl.seen.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|s| s.inv.name == "strict"),
        "schema-breaking arguments never reach the host"
    );
    let slow = seen.iter().find(|s| s.inv.name == "slow").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        host_impl
            .seen
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.inv.name == "slow")
            .unwrap()
            .cancelled,
        "the host sees the timed-out RPC cancelled: {slow:?}"
    );
    assert_eq!(sent(&sim, "response.create").len(), 2);
    assert_eq!(sim.stats().errors_sent, 0);
    let last = assistant_finals(&host).pop().unwrap();
    assert!(
        last.contains("database is down"),
        "the model was told about the failure: {last}"
    );
}

#[tokio::test]
async fn an_unreachable_host_and_a_late_in_stream_result() {
    // Callback to a port nobody listens on.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (_sim, _sidecar, mut host) = tool_session(
        ScriptStep::tools(
            None,
            vec![("lookup", json!({"q": "x"}))],
            "Sorry: {outputs}",
        ),
        &[],
        vec![tool("lookup", &obj(), 2000)],
        pb::tool_routing::Route::CallbackAddress(dead),
    )
    .await;
    host.send_text("look it up").await;
    responses(&mut host, 2).await;
    assert_eq!(
        finished(&host)[0].status,
        pb::ToolStatus::Unreachable as i32
    );
    assert!(assistant_finals(&host)
        .pop()
        .unwrap()
        .contains("unreachable"));

    // In-stream with a short timeout, answered late.
    let (sim, _sidecar, mut host) = tool_session(
        ScriptStep::tools(
            None,
            vec![("lookup", json!({"q": "x"}))],
            "Result: {outputs}",
        ),
        &[],
        vec![tool("lookup", &obj(), 300)],
        pb::tool_routing::Route::InStream(true),
    )
    .await;
    host.send_text("look it up").await;
    let call = host.until_tool_call(Duration::from_secs(10)).await;
    let f = host.until_tool_call_finished(Duration::from_secs(5)).await;
    assert_eq!(f.status, pb::ToolStatus::Timeout as i32);
    host.send(In::ToolResult(pb::ToolResult {
        call_id: call.call_id.clone(),
        result: Some(pb::tool_result::Result::OutputJson("{\"late\":1}".into())),
    }))
    .await;
    let e = host.until_error(Duration::from_secs(5)).await;
    assert_eq!(e.code, "tool_result_late");
    responses(&mut host, 2).await;
    let outs = outputs(&sim);
    assert_eq!(
        outs.len(),
        1,
        "a late result never produces a second output"
    );
    assert!(outs[&call.call_id]["error"]
        .as_str()
        .unwrap()
        .contains("did not answer"));
}

#[tokio::test]
async fn ending_the_session_cancels_running_calls_on_the_host() {
    let host_impl = TestHost {
        behaviour: Arc::new(HashMap::from([(
            "forever".to_string(),
            (Duration::from_secs(30), ok(&json!({}))),
        )])),
        ..Default::default()
    };
    let tools_addr = serve_tools(host_impl.clone()).await;
    let (_sim, _sidecar, mut host) = tool_session(
        ScriptStep::tools(None, vec![("forever", json!({"q": "x"}))], "done"),
        &[],
        vec![tool("forever", &obj(), 60_000)],
        pb::tool_routing::Route::CallbackAddress(tools_addr),
    )
    .await;
    host.send_text("wait").await;
    host.until_tool_call_started(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    host.end().await;
    let f = host.until_tool_call_finished(Duration::from_secs(5)).await;
    assert_eq!(f.status, pb::ToolStatus::Cancelled as i32);
    host.until_ended(Duration::from_secs(5)).await;
    eventually(
        Duration::from_secs(3),
        || host_impl.seen.lock().unwrap()[0].cancelled,
        || "the host never saw the RPC cancelled",
    )
    .await;
}
