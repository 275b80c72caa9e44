//! Session records end to end: the real sidecar with `--records-dir` writes one JSON-lines file per
//! session while it runs — start, both sides' final transcripts, tool calls (one redacted),
//! interruptions, the end with summary and usage — readable line by line by `jq`; a directory that
//! cannot be written is one `Error{record_write_failed}` and the call goes on.

use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_realtime_sim::{ScriptStep, SimConfig, SimHandle};

async fn sim() -> SimHandle {
    start_sim(SimConfig {
        script: vec![ScriptStep::tools(
            Some("Let me check."),
            vec![
                ("lookup", json!({"q": "order 7"})),
                ("card", json!({"q": "4111 1111"})),
            ],
            "Your order ships Friday.",
        )],
        user_transcripts: vec!["Where is my order?".into()],
        record_client_events: true,
        ms_per_char: 20,
        ..Default::default()
    })
    .await
}

fn tool(name: &str, redact: bool) -> pb::ToolDefinition {
    pb::ToolDefinition {
        name: name.into(),
        description: format!("test tool {name}"),
        parameters_json_schema: json!({"type": "object", "properties": {"q": {"type": "string"}}})
            .to_string(),
        timeout_ms: 5000,
        redact_in_records: redact,
    }
}

fn start() -> pb::SessionStart {
    pb::SessionStart {
        input_format: Some(pcm16(16000)),
        instructions: "You are a support agent.".into(),
        tools: vec![tool("lookup", false), tool("card", true)],
        tool_routing: Some(pb::ToolRouting {
            route: Some(pb::tool_routing::Route::InStream(true)),
        }),
        silence_guard: Some(pb::SilenceGuard {
            action: pb::silence_guard::Action::Off as i32,
            ..Default::default()
        }),
        labels: [("tenant".to_string(), "acme".to_string())].into(),
        ..Default::default()
    }
}

/// One user turn of speech, both tool calls answered, the reply heard, the call ended.
async fn one_call(host: &mut HostSession) -> pb::SessionEnded {
    let mut audio = silence(16000, 0.2);
    audio.extend(speech_like(16000, 1.0));
    audio.extend(silence(16000, 1.5));
    let streamer = host.stream_in_background(audio, 16000, 1);
    let mut calls = Vec::new();
    while calls.len() < 2 {
        calls.push(host.until_tool_call(Duration::from_secs(10)).await);
    }
    for c in &calls {
        host.send(In::ToolResult(pb::ToolResult {
            call_id: c.call_id.clone(),
            result: Some(pb::tool_result::Result::OutputJson(
                json!({"ok": c.name}).to_string(),
            )),
        }))
        .await;
    }
    // The preamble response and the one after the outputs.
    host.until_response_done(Duration::from_secs(10)).await;
    host.until_response_done(Duration::from_secs(10)).await;
    streamer.await.unwrap();
    host.end().await;
    host.until_ended(Duration::from_secs(10)).await
}

/// Every line of the file through `jq -c .`, which fails on any line that is not JSON.
fn read_with_jq(path: &Path) -> Vec<Value> {
    let out = std::process::Command::new("jq")
        .arg("-c")
        .arg(".")
        .arg(path)
        .output()
        .expect("jq runs (scripts/bootstrap.sh --test installs it)");
    assert!(
        out.status.success(),
        "jq refused {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_record_holds_the_whole_call_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim().await;
    let dir_arg = dir.path().to_str().unwrap().to_string();
    let sidecar = start_sidecar(&sim.base_url(), &["--records-dir", &dir_arg]).await;
    let (mut host, started) = HostSession::open_first_started(sidecar.addr, start()).await;
    let ended = one_call(&mut host).await;
    assert_eq!(ended.reason, "client_end");

    let path = dir.path().join(format!("{}.jsonl", started.session_id));
    // The end record is written off the session's task: wait for it.
    eventually(
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .last()
                .is_some_and(|l| l.contains("\"type\":\"end\""))
        },
        || format!("no end record in {}", path.display()),
    )
    .await;
    let lines = read_with_jq(&path);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "one file per session"
    );
    // Every line: a type, Unix ms and ms since the start, in order.
    let mut last_t = 0;
    for l in &lines {
        assert!(l["type"].is_string(), "{l}");
        assert!(l["ts_ms"].as_u64().unwrap() > 1_700_000_000_000, "{l}");
        let t = l["t_ms"].as_u64().unwrap();
        assert!(t >= last_t, "records out of order: {lines:?}");
        last_t = t;
    }
    let of = |kind: &str| -> Vec<&Value> { lines.iter().filter(|l| l["type"] == kind).collect() };
    assert_eq!(lines[0]["type"], "start");
    assert_eq!(lines.last().unwrap()["type"], "end");

    let s = of("start");
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["session_id"], started.session_id);
    assert_eq!(s[0]["labels"]["tenant"], "acme");
    assert_eq!(
        s[0]["tools"],
        json!(["card", "lookup"]),
        "declared tools, sorted"
    );
    assert!(s[0]["session"]["instructions"]
        .as_str()
        .unwrap()
        .contains("You are a support agent."));
    // No secret in any line (the simulator's key file is not readable here; the sidecar's key is
    // the test key `sk-test…`).
    let raw = std::fs::read_to_string(&path).unwrap();
    assert!(!raw.contains("sk-"), "a key in the record: {raw}");

    let transcripts = of("transcript");
    let user: Vec<&str> = transcripts
        .iter()
        .filter(|t| t["role"] == "user")
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(user, ["Where is my order?"]);
    let assistant: Vec<&str> = transcripts
        .iter()
        .filter(|t| t["role"] == "assistant")
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(assistant, ["Let me check.", "Your order ships Friday."]);

    let tools = of("tool_call");
    assert_eq!(tools.len(), 2, "{tools:?}");
    let lookup = tools.iter().find(|t| t["name"] == "lookup").unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(lookup["arguments"].as_str().unwrap()).unwrap(),
        json!({"q": "order 7"})
    );
    assert_eq!(
        serde_json::from_str::<Value>(lookup["output"].as_str().unwrap()).unwrap(),
        json!({"ok": "lookup"})
    );
    assert_eq!(lookup["status"], "ok");
    assert!(lookup["duration_ms"].is_u64());
    let card = tools.iter().find(|t| t["name"] == "card").unwrap();
    assert_eq!(card["arguments"], "[redacted]");
    assert_eq!(card["output"], "[redacted]");
    assert!(!raw.contains("4111"), "a redacted argument leaked: {raw}");

    let end = of("end");
    assert_eq!(end[0]["reason"], "client_end");
    assert_eq!(end[0]["summary"]["tool_calls"], 2);
    assert_eq!(
        end[0]["summary"]["responses"].as_u64(),
        ended.summary.as_ref().map(|s| u64::from(s.responses))
    );
    assert!(end[0]["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(end[0]["cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_records_dir_is_one_error_and_the_call_goes_on() {
    // A path under a regular file can never be a directory, even for root.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let dir_arg = file.join("records").to_str().unwrap().to_string();
    let sim = sim().await;
    let (sidecar, metrics_addr) =
        start_sidecar_with_metrics(&sim.base_url(), &["--records-dir", &dir_arg]).await;
    let mut host = HostSession::open_started(sidecar.addr, start()).await;
    let ended = one_call(&mut host).await;
    assert_eq!(ended.reason, "client_end");
    assert_eq!(ended.summary.unwrap().tool_calls, 2);
    let errors: Vec<&pb::Error> = host
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            voice_proto::v1::server_message::Message::Error(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code, "record_write_failed");
    assert!(
        !errors[0].retryable,
        "a broken directory does not heal by retrying"
    );
    let text = http_get(metrics_addr, "/metrics").await;
    assert!(
        metric(&text, "voice_record_errors_total", &[("kind", "open")]) >= 1.0,
        "{text}"
    );
}
