//! Validates every server event the simulator emits in full conversations (both dialects) against the
//! official `openai` Python package's pydantic models (`openai==3.57.0`), the protocol's ground truth.
//! If Python or the package is missing the test FAILS, unless `VOICE_SKIP_PY_VALIDATION=1`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};
use voice_realtime_sim::{Dialect, ScriptStep, SimConfig, WireAudioFormat};

/// The shared validator (also used by the end-to-end tests for the sidecar's client events).
const VALIDATOR: &str = include_str!("../../../scripts/validate_realtime_events.py");

async fn conversation(dialect: Dialect) -> Vec<Value> {
    let sim = start(SimConfig {
        script: vec![
            ScriptStep::say("Hello, how can I help?"),
            ScriptStep::tools(
                Some("Checking."),
                vec![("lookup", json!({"q": "a"})), ("lookup", json!({"q": "b"}))],
                "Found {outputs}.",
            ),
            ScriptStep::say(
                "A long answer that will be interrupted by the user speaking over it right now.",
            ),
            ScriptStep::messages(["Part one.", "Part two."]).when_text_contains("two parts"),
        ],
        ..fast()
    })
    .await;
    let mut c = connect(&sim, dialect).await;
    let tools = json!([{"type": "function", "name": "lookup", "description": "d", "parameters": {"type": "object", "properties": {}}}]);
    c.send(c.session_update(
        json!({"type": "realtime", "instructions": "hi", "tools": tools, "audio": {"input": {"transcription": {"model": "whisper-1"},
            "noise_reduction": {"type": "near_field"}}},
            "truncation": {"type": "retention_ratio", "retention_ratio": 0.8, "token_limits": {"post_instructions": 8000}}}),
        json!({"instructions": "hi", "tools": tools, "input_audio_transcription": {"model": "whisper-1"}}),
    ))
    .await;
    c.until("session.updated").await;
    // Spoken turn via VAD.
    let mut audio = silence(300);
    audio.extend(speech(800, -20.0));
    audio.extend(silence(800));
    c.append_audio(&audio, WireAudioFormat::Pcm16).await;
    c.until("rate_limits.updated").await;
    // Tool turn.
    c.send(json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "look both up"}]}})).await;
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until("response.done").await;
    let out = evs.last().unwrap()["response"]["output"]
        .as_array()
        .unwrap()
        .clone();
    for call in out.iter().filter(|i| i["type"] == "function_call") {
        c.send(json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": call["call_id"], "output": "{\"ok\":true}"}})).await;
    }
    c.send(json!({"type": "response.create"})).await;
    c.until("rate_limits.updated").await;
    // Cancelled response, truncate, retrieve, delete, out-of-band text response, errors.
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until(c.audio_delta_type()).await;
    let item_id = evs
        .iter()
        .find(|e| e["type"] == "response.output_item.added")
        .unwrap()["item"]["id"]
        .clone();
    c.send(json!({"type": "response.cancel"})).await;
    c.until("response.done").await;
    c.send(json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 10})).await;
    c.until("conversation.item.truncated").await;
    c.send(json!({"type": "conversation.item.retrieve", "item_id": item_id}))
        .await;
    c.until("conversation.item.retrieved").await;
    c.send(json!({"type": "conversation.item.delete", "item_id": item_id}))
        .await;
    c.until("conversation.item.deleted").await;
    let oob = match dialect {
        Dialect::Ga => {
            json!({"conversation": "none", "output_modalities": ["text"], "metadata": {"k": "v"}})
        }
        Dialect::Beta => {
            json!({"conversation": "none", "modalities": ["text"], "metadata": {"k": "v"}})
        }
    };
    c.send(json!({"type": "response.create", "response": oob}))
        .await;
    c.until("rate_limits.updated").await;
    c.send(json!({"type": "nope"})).await;
    c.until("error").await;
    c.send(json!({"type": "input_audio_buffer.clear"})).await;
    c.until("input_audio_buffer.cleared").await;
    // Several assistant messages in one response.
    c.send(json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "in two parts"}]}})).await;
    c.send(json!({"type": "response.create"})).await;
    c.until("rate_limits.updated").await;
    if dialect == Dialect::Ga {
        // Idle timeout (server_vad only; the beta dialect has none): timeout_triggered, the silent
        // commit and a re-prompt.
        c.send(json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 50}}}}})).await;
        c.until("session.updated").await;
        c.append_audio(&silence(200), WireAudioFormat::Pcm16).await;
        c.send(json!({"type": "response.create"})).await;
        c.until("input_audio_buffer.timeout_triggered").await;
        c.until("rate_limits.updated").await;
        c.send(json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": null}}}})).await;
        c.until("session.updated").await;
    }
    sim.shutdown().await;
    c.log
}

fn validate(dialect: &str, events: &[Value]) -> Result<String, String> {
    run_validator("server", dialect, events)
}

fn run_validator(kind: &str, dialect: &str, events: &[Value]) -> Result<String, String> {
    let mut child = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", VALIDATOR, kind, dialect])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    {
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        for e in events {
            writeln!(stdin, "{e}").map_err(|e| e.to_string())?;
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}\n{stderr}"))
    }
}

fn python_models_available() -> Result<(), String> {
    let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", "import openai, pydantic; from openai.types.realtime import RealtimeServerEvent; from openai.types.beta.realtime import RealtimeServerEvent; print(openai.__version__)"])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn server_events_validate_against_openai_models() {
    if let Err(e) = python_models_available() {
        if std::env::var("VOICE_SKIP_PY_VALIDATION").as_deref() == Ok("1") {
            eprintln!("skipping pydantic validation (VOICE_SKIP_PY_VALIDATION=1): {e}");
            return;
        }
        panic!(
            "Python package openai==3.57.0 is required to validate simulator events \
             (pip install openai==3.57.0), or set VOICE_SKIP_PY_VALIDATION=1 to skip. Import error: {e}"
        );
    }
    for (dialect, name) in [(Dialect::Ga, "ga"), (Dialect::Beta, "beta")] {
        let events = conversation(dialect).await;
        let kinds: std::collections::BTreeSet<String> = types(&events).into_iter().collect();
        assert!(
            kinds.len() >= 20,
            "conversation should exercise many event types: {kinds:?}"
        );
        if dialect == Dialect::Ga {
            assert!(kinds.contains("input_audio_buffer.timeout_triggered"));
        }
        match validate(name, &events) {
            Ok(out) => eprintln!("{name}: {out}"),
            Err(e) => panic!("{name} events failed validation:\n{e}"),
        }
    }
}

/// GA client events using the Realtime 2 fields: the simulator accepts each, and so do the SDK's
/// models (so the simulator is not stricter than them on these shapes).
#[tokio::test]
async fn accepted_ga_client_events_validate_against_openai_models() {
    if let Err(e) = python_models_available() {
        if std::env::var("VOICE_SKIP_PY_VALIDATION").as_deref() == Ok("1") {
            eprintln!("skipping pydantic validation (VOICE_SKIP_PY_VALIDATION=1): {e}");
            return;
        }
        panic!("Python package openai==3.57.0 is required (or VOICE_SKIP_PY_VALIDATION=1): {e}");
    }
    let sessions = [
        json!({"type": "realtime", "truncation": {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": {"post_instructions": 4000}}}),
        json!({"type": "realtime", "truncation": "disabled", "reasoning": {"effort": "xhigh"}, "parallel_tool_calls": true}),
        json!({"type": "realtime", "prompt": {"id": "pmpt_1", "version": "2", "variables": {"name": "Ada",
            "t": {"type": "input_text", "text": "x", "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "12h"}},
            "i": {"type": "input_image", "detail": "original", "image_url": "https://x/y.png"},
            "f": {"type": "input_file", "file_id": "file_1", "detail": "high"}}}}),
        json!({"type": "realtime", "tracing": {"workflow_name": "w", "group_id": "g", "metadata": {"k": "v"}}}),
        json!({"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "far_field", "strength": 0.5},
            "transcription": {"model": "gpt-realtime-whisper", "delay": "minimal", "language": "en"},
            "turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000}},
            "output": {"speed": 1.5, "voice": {"id": "voice_123"}}}}),
        json!({"type": "realtime", "audio": {"input": {"transcription": {"model": "gpt-transcribe", "keywords": ["Acme"], "languages": ["en", "fr"]}}}}),
        json!({"type": "realtime", "tools": [{"type": "mcp", "server_label": "s", "connector_id": "connector_gmail",
            "allowed_tools": {"tool_names": ["a"]}, "require_approval": "never", "defer_loading": true}]}),
    ];
    let responses = [
        json!({"output_modalities": ["text"], "reasoning": {"effort": "low"}, "parallel_tool_calls": false,
            "metadata": {"turn": "7"}, "conversation": "none", "prompt": {"id": "pmpt_1"}}),
        json!({"output_modalities": ["text"], "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
            "audio": {"output": {"voice": "marin", "format": {"type": "audio/pcmu"}}}}),
    ];
    let sim = start(fast()).await;
    let mut events = Vec::new();
    for (i, s) in sessions.into_iter().enumerate() {
        // A fresh session each: tracing cannot change once enabled.
        let mut c = connect(&sim, Dialect::Ga).await;
        let mut ev = json!({"type": "session.update", "event_id": format!("evt_{i}")});
        ev["session"] = s;
        c.send(ev.clone()).await;
        let got = c.until("session.updated").await;
        assert!(types(&got).iter().all(|t| t != "error"), "{got:?}");
        events.push(ev);
    }
    let mut c = connect(&sim, Dialect::Ga).await;
    for r in responses {
        let mut ev = json!({"type": "response.create"});
        ev["response"] = r;
        c.send(ev.clone()).await;
        let got = c.until("response.done").await;
        assert!(types(&got).iter().all(|t| t != "error"), "{got:?}");
        events.push(ev);
    }
    sim.shutdown().await;
    match run_validator("client", "ga", &events) {
        Ok(out) => eprintln!("{out}"),
        Err(e) => panic!("client events the simulator accepts fail the SDK models:\n{e}"),
    }
}
