//! `voice-loadgen`: opens many concurrent real-time `Converse` sessions against a running voice-sidecar,
//! holds them, ends them, and reports what the sidecar cost (from its `/metrics` and `/proc`).
//!
//! ```text
//! voice-loadgen --sidecar 127.0.0.1:50051 --metrics 127.0.0.1:9464 --sidecar-pid PID --sim-pid PID \
//!     --sessions 100 --ramp-secs 5 --hold-secs 30 --codec mulaw --json out.json
//! voice-loadgen floor --frame-bytes 160 --frames 200000 --json floor.json
//! voice-loadgen summarize --floor floor.json run-*.json     # Markdown table on stdout
//! ```
//!
//! Simulator setup: the sidecar must talk to a `realtime-sim` (or the sidecar's `--backend sim`) whose
//! script produces replies; `services/loadgen/sim-load.toml` is the reference config (short sentences,
//! every fifth reply calls the `lookup_order` tool when the session declared it, `script_cycle = true`).
//! With `--tools`, sessions declare `lookup_order` and run tools in-stream (ToolCall → ToolResult).

mod audio;
mod floor;
mod pacer;
mod probe;
mod report;
mod session;
mod shards;
mod soak;
mod verdict;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use voice_proto::v1 as pb;

use audio::{Codec, Frames};
use report::{ProcDelta, Report};

#[derive(Parser, Debug)]
#[command(
    name = "voice-loadgen",
    about = "Load generator for voice-sidecar",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a load test (the default when no subcommand is given).
    Run(RunArgs),
    /// Measure the physical floor: base64 + JSON + loopback WebSocket write of one frame.
    Floor {
        /// Audio bytes per frame (160 = 20 ms of 8 kHz G.711; 960 = 20 ms of 24 kHz PCM16).
        #[arg(long, default_value_t = 160)]
        frame_bytes: usize,
        #[arg(long, default_value_t = 200_000)]
        frames: u64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Soak test: keep N sessions (callers with tools and barge-ins, hostile hosts) running for a
    /// while and sample the sidecar's RSS, fds and tasks (see `soak.rs`; run by scripts/soak.sh).
    Soak(soak::SoakArgs),
    /// Judge a soak run (its report, the simulator's tool ledger, the sidecar log); exits non-zero
    /// on a failed verdict.
    SoakVerdict(verdict::VerdictArgs),
    /// Turn run (and floor) JSON reports into a Markdown table with target verdicts.
    Summarize {
        #[arg(long)]
        floor: Option<PathBuf>,
        runs: Vec<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// The sidecar's gRPC address (loopback only), e.g. 127.0.0.1:50051 or http://localhost:50051.
    #[arg(long, default_value = "127.0.0.1:50051")]
    sidecar: String,
    /// The sidecar's Prometheus address (loopback only), e.g. 127.0.0.1:9464; "off" skips scraping.
    #[arg(long, default_value = "off")]
    metrics: String,
    /// The sidecar's process id, for CPU and memory figures.
    #[arg(long)]
    sidecar_pid: Option<u32>,
    /// The simulator's process id (it competes for the same CPUs; reported separately).
    #[arg(long)]
    sim_pid: Option<u32>,
    /// Concurrent sessions.
    #[arg(long, short = 'n', default_value_t = 10)]
    sessions: usize,
    /// Sessions are opened evenly over this many seconds.
    #[arg(long, default_value_t = 5.0)]
    ramp_secs: f64,
    /// Seconds all sessions are held (the measurement window).
    #[arg(long, default_value_t = 30.0)]
    hold_secs: f64,
    /// Input codec.
    #[arg(long, value_enum, default_value_t = Codec::Mulaw)]
    codec: Codec,
    /// Input sample rate (PCM16 only; G.711 is 8000, Opus 48000).
    #[arg(long)]
    rate: Option<u32>,
    /// Output codec (default: the input codec).
    #[arg(long, value_enum)]
    out_codec: Option<Codec>,
    /// Output sample rate (PCM16 only).
    #[arg(long)]
    out_rate: Option<u32>,
    /// Speech per caller turn, ms.
    #[arg(long, default_value_t = 1500)]
    speech_ms: u32,
    /// Silence after each caller turn, ms (must exceed the VAD's silence duration, 500 ms by default).
    #[arg(long, default_value_t = 2500)]
    silence_ms: u32,
    /// Declare the `lookup_order` tool and answer ToolCall in-stream.
    #[arg(long)]
    tools: bool,
    /// HTTP/2 connections to spread sessions over (default: one per 100 sessions). Each connection
    /// has one pacer task sending its sessions' frames.
    #[arg(long)]
    connections: Option<usize>,
    /// Load generator threads, each a single-threaded runtime running whole connections (see
    /// `shards.rs`); default: one per CPU, at most one per connection.
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds to wait for SessionStarted.
    #[arg(long, default_value_t = 30)]
    setup_timeout_secs: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Free-form label stored in the report.
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Floor {
            frame_bytes,
            frames,
            json,
        }) => {
            let r = floor::run(frame_bytes, frames)?;
            println!(
                "floor ({} B/frame, {} frames): send {:.0} ns CPU/frame ({:.0} ns wall), receive {:.0} ns CPU/frame",
                r.frame_bytes, r.frames, r.send_cpu_ns_per_frame, r.send_wall_ns_per_frame, r.recv_cpu_ns_per_frame
            );
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&r)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(())
        }
        Some(Cmd::Summarize { floor, runs }) => {
            let floor = match floor {
                Some(p) => Some(serde_json::from_str(
                    &std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )?),
                None => None,
            };
            let mut reports = Vec::new();
            for p in runs {
                let r: Report = serde_json::from_str(
                    &std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )
                .with_context(|| format!("parsing {}", p.display()))?;
                reports.push(r);
            }
            print!("{}", report::markdown(&reports, floor.as_ref()));
            Ok(())
        }
        Some(Cmd::Soak(a)) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(soak::run(a)),
        Some(Cmd::SoakVerdict(a)) => {
            if verdict::run(&a)? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Some(Cmd::Run(a)) => run_blocking(a),
        None => run_blocking(cli.run),
    }
}

fn run_blocking(a: RunArgs) -> Result<()> {
    // Shard 0 (see `shards.rs`): single-threaded on purpose.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(a))
}

/// Resolves `addr` (with or without an `http://` scheme) and refuses anything that is not loopback.
fn loopback(what: &str, addr: &str) -> Result<SocketAddr> {
    let hostport = addr.trim_start_matches("http://").trim_end_matches('/');
    if addr.starts_with("https://") || hostport.contains('/') {
        bail!("{what} address {addr:?}: expected HOST:PORT or http://HOST:PORT");
    }
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .with_context(|| format!("{what} address {addr:?} does not resolve (expected HOST:PORT)"))?
        .collect();
    let Some(first) = addrs.first().copied() else {
        bail!("{what} address {addr:?} does not resolve")
    };
    if let Some(bad) = addrs.iter().find(|a| !is_loopback(a.ip())) {
        bail!(
            "refusing to load-test {what} at {addr:?}: it resolves to {} which is not a loopback address. \
             voice-loadgen only targets 127.0.0.0/8 or ::1 (it opens thousands of real-time streams)",
            bad.ip()
        );
    }
    Ok(first)
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => v.is_loopback(),
        IpAddr::V6(v) => v.is_loopback() || v.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

fn proc_snapshot(pid: Option<u32>) -> Option<f64> {
    pid.and_then(probe::cpu_secs)
}

async fn run(a: RunArgs) -> Result<()> {
    let sidecar = loopback("sidecar", &a.sidecar)?;
    let metrics = if a.metrics == "off" {
        None
    } else {
        Some(loopback("metrics", &a.metrics)?)
    };
    if a.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let rate = a.codec.effective_rate(a.rate)?;
    let out_codec = a.out_codec.unwrap_or(a.codec);
    let out_rate = match (a.out_codec, a.out_rate) {
        (None, None) => rate,
        _ => out_codec.effective_rate(a.out_rate)?,
    };
    if a.silence_ms < 600 {
        eprintln!("warning: --silence-ms {} is close to or below the default VAD silence duration (500 ms); turns may not end", a.silence_ms);
    }
    let frames = Frames::build(a.codec, rate, a.speech_ms, a.silence_ms)?;
    let frame_bytes = frames.speech[0].len();

    let mut start = pb::SessionStart {
        input_format: Some(a.codec.format(rate)),
        output_format: Some(out_codec.format(out_rate)),
        instructions: "You are a phone assistant under load test. Keep answers short.".into(),
        labels: [("tenant".to_string(), "loadgen".to_string())].into(),
        ..Default::default()
    };
    if a.tools {
        start.tools = vec![pb::ToolDefinition {
            name: session::TOOL_NAME.into(),
            description: "Look up an order's shipping status by order id.".into(),
            parameters_json_schema: serde_json::json!({"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}).to_string(),
            timeout_ms: 5000,
            ..Default::default()
        }];
        start.tool_routing = Some(pb::ToolRouting {
            route: Some(pb::tool_routing::Route::InStream(true)),
        });
    }
    let plan = Arc::new(session::Plan {
        frames,
        start,
        setup_timeout: Duration::from_secs(a.setup_timeout_secs),
        end_timeout: Duration::from_secs(15),
        established: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });

    // Baselines before any session exists.
    let base_rss = a.sidecar_pid.and_then(probe::rss_kib);
    let base_sim_rss = a.sim_pid.and_then(probe::rss_kib);
    if let Some(pid) = a.sidecar_pid {
        if base_rss.is_none() {
            bail!("--sidecar-pid {pid}: no such process (cannot read /proc/{pid}/status)");
        }
    }

    let conns = a.connections.unwrap_or(a.sessions.div_ceil(100)).max(1);
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let shards = shards::Shards::start(threads.clamp(1, conns))?;
    let mut clients = Vec::with_capacity(conns);
    for c in 0..conns {
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{sidecar}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        // Connected on its shard, so the connection's tasks (h2, per-stream body pipes) run there.
        let ch = shards
            .spawn(c, async move { ep.connect().await })
            .await?
            .with_context(|| format!("connecting to the sidecar at {sidecar}"))?;
        clients.push(pb::voice_sidecar_client::VoiceSidecarClient::new(ch));
    }
    eprintln!(
        "voice-loadgen: {} sessions over {} connection(s) to {sidecar} ({} thread(s)), {:?} {} Hz in ({} B/frame) / {:?} {} Hz out, ramp {} s, hold {} s{}",
        a.sessions, conns, shards.len(), a.codec, rate, frame_bytes, out_codec, out_rate, a.ramp_secs, a.hold_secs,
        if a.tools { ", tools in-stream" } else { "" }
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = Instant::now();
    let self_cpu0 = probe::cpu_secs(std::process::id());
    // One pacer per connection sends its sessions' frames (one timer each instead of one per session).
    let (pacers, pacer_tasks) = pacer::spawn(conns, &plan, &stop_rx, &shards);
    let mut handles = Vec::with_capacity(a.sessions);
    for i in 0..a.sessions {
        let at = t0 + Duration::from_secs_f64(a.ramp_secs * i as f64 / a.sessions as f64);
        tokio::time::sleep_until(at).await;
        // Session, connection and pacer on one shard.
        let c = pacer::pacer_of(i, conns);
        handles.push(shards.spawn(
            c,
            session::run(
                i,
                plan.clone(),
                clients[c].clone(),
                pacers[c].clone(),
                stop_rx.clone(),
            ),
        ));
    }
    // Pacers exit once every session has dropped its handle.
    drop(pacers);
    // Wait for every session to be established or to have failed.
    let settle_deadline = Instant::now() + plan.setup_timeout + Duration::from_secs(1);
    while plan.established.load(Ordering::Relaxed) + plan.failed.load(Ordering::Relaxed)
        < a.sessions
        && Instant::now() < settle_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ramp_done = t0.elapsed();
    eprintln!(
        "voice-loadgen: ramp done in {:.1} s: {} established, {} failed; holding {} s",
        ramp_done.as_secs_f64(),
        plan.established.load(Ordering::Relaxed),
        plan.failed.load(Ordering::Relaxed),
        a.hold_secs
    );
    // Let the last sessions reach a steady state (first turn under way) before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let m0 = match metrics {
        Some(m) => Some(probe::scrape(m).await?),
        None => None,
    };
    let h0 = Instant::now();
    let machine0 = probe::machine_ticks();
    let cpu0 = (
        proc_snapshot(a.sidecar_pid),
        proc_snapshot(a.sim_pid),
        probe::cpu_secs(std::process::id()),
    );
    let held_at_start = plan.established.load(Ordering::Relaxed);

    // Hold, sampling RSS midway and at the end (peak of the two is reported).
    let mut peak_rss = None::<u64>;
    let mut peak_sim_rss = None::<u64>;
    let hold = Duration::from_secs_f64(a.hold_secs);
    for frac in [0.5, 1.0] {
        tokio::time::sleep_until(h0 + hold.mul_f64(frac)).await;
        peak_rss = peak_rss.max(a.sidecar_pid.and_then(probe::rss_kib));
        peak_sim_rss = peak_sim_rss.max(a.sim_pid.and_then(probe::rss_kib));
    }
    let cpu1 = (
        proc_snapshot(a.sidecar_pid),
        proc_snapshot(a.sim_pid),
        probe::cpu_secs(std::process::id()),
    );
    let hold_wall = h0.elapsed().as_secs_f64();
    let machine = machine0
        .zip(probe::machine_ticks())
        .and_then(|(a, b)| probe::machine_shares(a, b));
    let m1 = match metrics {
        Some(m) => Some(probe::scrape(m).await?),
        None => None,
    };
    eprintln!("voice-loadgen: hold over, ending sessions");
    let _ = stop_tx.send(true);

    let mut stats = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(s) => stats.push(s),
            Err(e) => eprintln!("session task failed: {e}"),
        }
    }
    let mut send_lateness = session::Hist::default();
    for p in pacer_tasks {
        match p.await {
            Ok(h) => send_lateness.merge(&h),
            Err(e) => eprintln!("pacer task failed: {e}"),
        }
    }
    drop(clients);
    shards.shutdown();
    let total_wall = t0.elapsed().as_secs_f64();
    let self_cpu1 = probe::cpu_secs(std::process::id());

    let mk = |c0: Option<f64>,
              c1: Option<f64>,
              rss0: Option<u64>,
              rss1: Option<u64>|
     -> Option<ProcDelta> { Some(ProcDelta::new(c1? - c0?, hold_wall, rss0, rss1)) };
    let rep = Report::build(report::Inputs {
        label: a.label.clone(),
        sidecar: sidecar.to_string(),
        sessions_requested: a.sessions,
        held_at_hold_start: held_at_start,
        codec_in: format!("{:?} {} Hz", a.codec, rate).to_lowercase(),
        codec_out: format!("{out_codec:?} {out_rate} Hz").to_lowercase(),
        tools: a.tools,
        ramp_secs: a.ramp_secs,
        ramp_done_secs: ramp_done.as_secs_f64(),
        hold_secs: hold_wall,
        total_secs: total_wall,
        connections: conns,
        stats,
        send_lateness,
        metrics: m0.zip(m1),
        sidecar_proc: mk(cpu0.0, cpu1.0, base_rss, peak_rss),
        sim_proc: mk(cpu0.1, cpu1.1, base_sim_rss, peak_sim_rss),
        loadgen_proc: mk(cpu0.2, cpu1.2, None, None),
        machine_steal_idle: machine,
        loadgen_cpu_total: match (self_cpu0, self_cpu1) {
            (Some(x), Some(y)) => Some(y - x),
            _ => None,
        },
    });
    print!("{}", rep.table());
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rep)?)
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("voice-loadgen: report written to {}", p.display());
    }
    Ok(())
}
