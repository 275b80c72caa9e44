//! Metrics an SRE can trust: the simulator runs with scripted timing (a known delay to the first
//! response audio, a tool with a known latency), and the scraped `/metrics` must hold those values
//! within a stated tolerance; the scrape must also pass `promtool check metrics`. A fresh sidecar
//! exports every metric family from its first scrape.

use serde_json::json;
use std::time::Duration;
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime_sim::{ScriptStep, SimConfig};

/// Scheduling on a shared 2-core machine adds jitter; every timing assertion allows this much.
const TOL: f64 = 0.15;

/// Writes the price table the cost assertions use (USD per million tokens) and returns its path.
fn price_table() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("voice-e2e-prices-{}.toml", free_port()));
    std::fs::write(&path, "[prices]\ninput_text = 4.0\ninput_audio = 32.0\ninput_cached = 0.4\noutput_text = 16.0\noutput_audio = 64.0\n").unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_match_scripted_timing() {
    let cfg = SimConfig {
        script: vec![
            ScriptStep::say("Hello there."),
            ScriptStep::tools(None, vec![("lookup", json!({}))], "Found {outputs}"),
        ],
        first_audio_delay_ms: 400,
        ms_per_char: 30,
        ..Default::default()
    };
    let sim = start_sim(cfg).await;
    let prices = price_table();
    let (sidecar, metrics_addr) =
        start_sidecar_with_metrics(&sim.base_url(), &["--config", prices.to_str().unwrap()]).await;
    let mut host = HostSession::open_started(
        sidecar.addr,
        pb::SessionStart {
            input_format: Some(pcm16(16000)),
            tools: vec![pb::ToolDefinition {
                name: "lookup".into(),
                timeout_ms: 5000,
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
        },
    )
    .await;

    // Turn 1, spoken: voice-to-voice = the simulator's 400 ms delay to first audio.
    let mut turn = silence(16000, 0.2);
    turn.extend(speech_like(16000, 1.0));
    turn.extend(silence(16000, 1.0));
    let streamer = host.stream_in_background(turn, 16000, 1);
    host.until_response_done(Duration::from_secs(15)).await;
    streamer.await.unwrap();

    // Turn 2, typed, once the first reply has finished playing (it arrives 4x faster than real time;
    // until it has played out the caller is not waiting in silence): a tool answered after 500 ms,
    // then the follow-up's first audio 400 ms later.
    tokio::time::sleep(Duration::from_millis(600)).await;
    host.send_text("look it up").await;
    let call = host.until_tool_call(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    host.send(In::ToolResult(pb::ToolResult {
        call_id: call.call_id,
        result: Some(pb::tool_result::Result::OutputJson("{\"ok\":true}".into())),
    }))
    .await;
    host.until(Duration::from_secs(10), |e| matches!(e, Out::ResponseDone(r) if r.usage.as_ref().is_some_and(|u| u.output_audio_tokens > 0) && r.voice_to_voice_ms == 0)).await;
    host.end().await;
    let end = host.until_ended(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let text = http_get(metrics_addr, "/metrics").await;
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);

    // Voice-to-voice latency: one observation, ~0.4 s.
    assert_eq!(
        m("voice_response_latency_seconds_count", &[]),
        1.0,
        "{text}"
    );
    let v2v = m("voice_response_latency_seconds_sum", &[]);
    assert!(
        (v2v - 0.4).abs() <= TOL,
        "voice-to-voice {v2v:.3} s, scripted 0.4 s"
    );
    // Dead air after the user's turn: the same wait.
    let after_user = m("voice_silence_seconds_sum", &[("phase", "after_user")]);
    assert!(
        (after_user - 0.4).abs() <= TOL,
        "after_user dead air {after_user:.3} s"
    );
    assert_eq!(
        m("voice_dead_air_seconds_count", &[("cause", "model")]),
        m("voice_silence_seconds_count", &[("phase", "after_user")])
    );
    // The tool: 0.5 s, outcome ok; the caller waited tool time plus the follow-up's first-audio delay.
    assert_eq!(
        m(
            "voice_tool_call_duration_seconds_count",
            &[("tool", "lookup"), ("outcome", "ok")]
        ),
        1.0
    );
    let tool = m(
        "voice_tool_call_duration_seconds_sum",
        &[("tool", "lookup"), ("outcome", "ok")],
    );
    assert!(
        (tool - 0.5).abs() <= TOL,
        "tool duration {tool:.3} s, scripted 0.5 s"
    );
    let tool_wait = m("voice_silence_seconds_sum", &[("phase", "tool_call")]);
    assert!(
        (tool_wait - 0.9).abs() <= TOL,
        "tool_call dead air {tool_wait:.3} s, scripted 0.5 + 0.4 s"
    );
    let by_tool = m(
        "voice_dead_air_seconds_sum",
        &[("cause", "tool"), ("tool", "lookup")],
    );
    assert!(
        (by_tool - tool_wait).abs() < 1e-9,
        "dead air attributed to the tool by name"
    );
    // Tokens: the counters equal the usage the host was told about, kind by kind.
    let mut usage = pb::Usage::default();
    for (_, e) in &host.events {
        if let Out::ResponseDone(r) = e {
            let u = r.usage.unwrap_or_default();
            usage.input_text_tokens += u.input_text_tokens;
            usage.input_audio_tokens += u.input_audio_tokens;
            usage.output_text_tokens += u.output_text_tokens;
            usage.output_audio_tokens += u.output_audio_tokens;
        }
    }
    assert!(usage.output_audio_tokens > 0);
    for (kind, n) in [
        ("input_text", usage.input_text_tokens),
        ("input_audio", usage.input_audio_tokens),
        ("output_text", usage.output_text_tokens),
        ("output_audio", usage.output_audio_tokens),
    ] {
        assert_eq!(
            m("voice_tokens_total", &[("kind", kind)]),
            n as f64,
            "tokens {kind}"
        );
    }
    // Cost: the price table applied to that usage (micro-dollars, rounded per response).
    let expected = (usage.input_text_tokens as f64 * 4.0
        + usage.input_audio_tokens as f64 * 32.0
        + usage.output_text_tokens as f64 * 16.0
        + usage.output_audio_tokens as f64 * 64.0)
        / 1e6;
    let cost = m("voice_cost_microdollars_total", &[]) / 1e6;
    assert!((cost - expected).abs() < 1e-5, "cost {cost} vs {expected}");
    assert!((end.summary.as_ref().unwrap().cost_usd - expected).abs() < 1e-9);
    assert_eq!(m("voice_sessions_total", &[("outcome", "client_end")]), 1.0);
    assert_eq!(m("voice_sessions_active", &[]), 0.0);
    assert_eq!(m("voice_interruptions_total", &[]), 0.0);
    assert!(m("voice_audio_frames_total", &[("direction", "in")]) > 100.0);
    // No session or call ids in any label.
    assert!(
        !text.contains("=\"vs_") && !text.contains("=\"call_"),
        "high-cardinality label leaked"
    );

    // promtool's lint on a real scrape.
    promtool_check(&text);
}

/// `promtool check metrics` on a scrape (skipped only with VOICE_SKIP_PROMTOOL set).
fn promtool_check(text: &str) {
    match std::process::Command::new("promtool").args(["check", "metrics"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn() {
        Ok(mut child) => {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "promtool check metrics failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Err(e) => assert!(std::env::var("VOICE_SKIP_PROMTOOL").is_ok(), "promtool not found ({e}): run scripts/bootstrap.sh --test, or set VOICE_SKIP_PROMTOOL=1"),
    }
}

/// The samples of `name` (exactly: a histogram's `_count` is asked for by that name), as (sorted
/// labels, value).
fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lab) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let mut labels: Vec<(String, String)> = lab
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            labels.sort();
            Some((labels, value.parse().unwrap()))
        })
        .collect()
}

/// A fresh sidecar, before any session: every family of the telemetry table is on the first scrape
/// with its HELP and TYPE; the series whose label values are known are there at zero (the live task
/// count is there, above zero); families
/// labelled by tool name have no series; nothing else is exported; promtool accepts it.
#[tokio::test]
async fn every_family_is_exported_from_startup() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use voice_telemetry::{Kind, Series, FAMILIES};
    let sim = start_sim(SimConfig::default()).await;
    let (_sidecar, metrics_addr) = start_sidecar_with_metrics(&sim.base_url(), &[]).await;
    let text = http_get(metrics_addr, "/metrics").await;

    let types: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    assert_eq!(types.len(), FAMILIES.len(), "one TYPE per family:\n{text}");
    let sample_name = |f: &voice_telemetry::Family| match f.kind {
        Kind::Histogram => format!("{}_count", f.name),
        Kind::Counter | Kind::Gauge => f.name.to_string(),
    };
    let has = |f: &voice_telemetry::Family, labels: &[(&str, &str)]| {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        let found = samples(&text, &sample_name(f));
        assert!(
            found.iter().any(|(l, v)| *l == want && *v == 0.0),
            "{} {labels:?} not exported at 0: {found:?}",
            f.name
        );
    };
    for f in FAMILIES {
        assert!(
            types.contains(&format!("{} {}", f.name, f.kind.as_str()).as_str()),
            "no TYPE for {}",
            f.name
        );
        assert!(
            text.lines()
                .any(|l| l == format!("# HELP {} {}", f.name, f.help)),
            "no HELP for {}",
            f.name
        );
        match f.series {
            // A live reading, not a count: the runtime's tasks are never zero.
            Series::Unlabelled if f.name == voice_telemetry::TASKS_ACTIVE => {
                let found = samples(&text, f.name);
                assert!(
                    found.len() == 1 && found[0].0.is_empty() && found[0].1 >= 1.0,
                    "{}: {found:?}",
                    f.name
                );
            }
            Series::Unlabelled => has(f, &[]),
            Series::Values { key, values } => {
                for v in values {
                    has(f, &[(key, v)]);
                }
            }
            Series::Sets(sets) => {
                for labels in sets {
                    has(f, labels);
                }
            }
            Series::Session => assert!(
                !samples(&text, &sample_name(f)).is_empty(),
                "{} has no series",
                f.name
            ),
            Series::Open => assert!(
                !text
                    .lines()
                    .any(|l| !l.starts_with('#') && l.starts_with(f.name)),
                "a series was invented for {}:\n{text}",
                f.name
            ),
        }
    }
    // The session crate's label values, from the lists its code uses.
    let family = |name| voice_telemetry::family(name).unwrap();
    for outcome in voice_session::metrics::session_outcomes() {
        has(
            family(voice_telemetry::SESSIONS_TOTAL),
            &[("outcome", outcome)],
        );
    }
    for code in voice_session::Code::ALL {
        has(
            family(voice_telemetry::HOST_ERRORS),
            &[("code", code.as_str())],
        );
    }
    for code in voice_session::metrics::upstream_error_codes() {
        has(family(voice_telemetry::UPSTREAM_ERRORS), &[("code", code)]);
    }
    has(family(voice_telemetry::SILENCE), &[("phase", "after_user")]);
    has(family(voice_telemetry::SILENCE), &[("phase", "tool_call")]);
    // Nothing observed, nothing counted: every sample is zero (but the live task count).
    for l in text.lines().filter(|l| {
        !l.starts_with('#') && !l.is_empty() && !l.starts_with(voice_telemetry::TASKS_ACTIVE)
    }) {
        assert!(l.ends_with(" 0"), "non-zero at startup: {l}");
    }
    // Every series is one of the table's families (a histogram's by its _bucket/_sum/_count).
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = l.split(['{', ' ']).next().unwrap();
        assert!(
            FAMILIES.iter().any(|f| name == f.name
                || (f.kind == Kind::Histogram
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name == format!("{}{s}", f.name)))),
            "{name} is not in FAMILIES"
        );
    }
    promtool_check(&text);

    // Only /metrics is served.
    let mut s = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
    s.write_all(b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn a_budget_warns_and_can_end_the_session() {
    let sim = start_sim(SimConfig {
        ms_per_char: 20,
        ..Default::default()
    })
    .await;
    let prices = price_table();
    let sidecar = start_sidecar(&sim.base_url(), &["--config", prices.to_str().unwrap()]).await;
    let mut host = HostSession::open_started(
        sidecar.addr,
        pb::SessionStart {
            budget_usd: 0.000001,
            end_on_budget: true,
            ..Default::default()
        },
    )
    .await;
    host.send_text("hi").await;
    let e = host.until_error(Duration::from_secs(10)).await;
    assert_eq!(e.code, "budget_exceeded");
    let end = host.until_ended(Duration::from_secs(5)).await;
    assert_eq!(end.reason, "budget_exceeded");
    assert!(end.summary.unwrap().cost_usd > 0.000001);

    // Without a price table a budget is refused at start for a model the model table does not
    // price (a known model uses its own prices: see realtime2_e2e).
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let err = HostSession::open(
        sidecar.addr,
        pb::SessionStart {
            budget_usd: 1.0,
            model: "my-proxy-deployment".into(),
            ..Default::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("price table"), "{}", err.message());
}
