//! `realtime-sim`: runs the offline Realtime API simulator as a standalone process, for manual testing
//! and as the far end of load benchmarks. Configuration comes from an optional JSON/TOML file. It prints
//! the conversation, transcription and translation URLs it serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use voice_realtime_sim::{SimConfig, SimServer};

#[derive(Debug, Parser)]
#[command(
    name = "realtime-sim",
    about = "Offline simulator of the OpenAI Realtime API (conversation sessions in the GA and beta dialects, transcription and translation sessions)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8765", env = "REALTIME_SIM_LISTEN")]
    listen: SocketAddr,
    /// Simulator configuration (`SimConfig`), JSON or TOML chosen by file extension.
    #[arg(long)]
    config: Option<PathBuf>,
    /// File holding the API key clients must present; without it any non-empty bearer key is accepted.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// At shutdown (SIGTERM/SIGINT), write the counters and, with `tool_ledger` on, the tool
    /// ledger's totals here as JSON.
    #[arg(long)]
    stats_json: Option<PathBuf>,
}

fn load_config(path: &Path) -> anyhow::Result<SimConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("json") => {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
        Some("toml") => {
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
        other => bail!("unsupported config extension {other:?} (expected .json or .toml)"),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(p) => load_config(p)?,
        None => SimConfig::default(),
    };
    if let Some(p) = &args.api_key_file {
        let key = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let key = key.trim();
        if key.is_empty() {
            bail!("{} is empty", p.display());
        }
        config.api_key = Some(key.to_owned());
    }
    let sim = SimServer::bind(args.listen, config)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("{}", sim.realtime_url("gpt-realtime"));
    println!("{}", sim.transcription_url());
    println!("{}", sim.translation_url("gpt-realtime-translate"));
    wait_for_signal().await;
    tracing::info!(stats = ?sim.stats(), "shutting down");
    // Sessions still open are closed first, so the ledger sees how every session ended.
    let handle_stats = sim.stats_source();
    sim.shutdown().await;
    if let Some(p) = &args.stats_json {
        let doc = serde_json::json!({"stats": handle_stats.stats(),
            "client_errors": handle_stats.client_errors(), "ledger": handle_stats.ledger()});
        std::fs::write(p, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
