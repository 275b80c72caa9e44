//! Configuration: CLI flags, each with an environment twin, over an optional TOML file, over defaults.
//!
//! Precedence is flag/env > file > built-in default, so a platform team can ship a file in a ConfigMap
//! and still override one value per pod with an env var.

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use voice_realtime::{ApiKey, Dialect};
use voice_telemetry::LogFormat;

use crate::auth::AuthToken;

pub const DEFAULT_REALTIME_URL: &str = "wss://api.openai.com";

#[derive(Debug, Parser)]
#[command(
    name = "voice-sidecar",
    version,
    about = "gRPC sidecar for real-time voice sessions with the OpenAI Realtime API"
)]
pub struct Args {
    /// Address of the gRPC server.
    #[arg(long, env = "VOICE_SIDECAR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Upstream: `openai` (the real API) or `sim` (the embedded offline simulator).
    /// Default: `openai` when an API key is configured, else `sim`.
    #[arg(long, env = "VOICE_SIDECAR_BACKEND")]
    pub backend: Option<String>,
    /// Realtime API base URL (`wss://…`, or `ws://` for loopback tests and proxies).
    #[arg(long, env = "VOICE_SIDECAR_REALTIME_URL")]
    pub realtime_url: Option<String>,
    /// Protocol dialect: `ga` or `beta`.
    #[arg(long, env = "VOICE_SIDECAR_DIALECT")]
    pub dialect: Option<String>,
    /// Default model (hosts may override per session).
    #[arg(long, env = "VOICE_SIDECAR_MODEL")]
    pub model: Option<String>,
    /// Capabilities assumed for a model not in the model table (a proxy's or an Azure deployment's
    /// name): those of this known conversation model.
    #[arg(long, env = "VOICE_SIDECAR_UNKNOWN_MODEL_LIKE")]
    pub unknown_model_like: Option<String>,
    /// Default voice.
    #[arg(long, env = "VOICE_SIDECAR_VOICE")]
    pub voice: Option<String>,
    /// File holding the API key (e.g. a mounted secret). Else `OPENAI_API_KEY` is used.
    #[arg(long, env = "VOICE_SIDECAR_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Optional TOML config file with the same keys as the flags (snake_case).
    #[arg(long, env = "VOICE_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Prometheus `/metrics` address, or `off`.
    #[arg(long, env = "VOICE_SIDECAR_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log format: `pretty` or `json`.
    #[arg(long, env = "VOICE_SIDECAR_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. `info` or `voice_session=debug,info`.
    #[arg(long, env = "VOICE_SIDECAR_LOG")]
    pub log: Option<String>,
    /// Default ToolHost address for callback-mode tools, e.g. http://127.0.0.1:50061.
    #[arg(long, env = "VOICE_SIDECAR_TOOL_HOST")]
    pub tool_host: Option<String>,
    /// Default tool timeout in milliseconds.
    #[arg(long, env = "VOICE_SIDECAR_TOOL_TIMEOUT_MS")]
    pub tool_timeout_ms: Option<u64>,
    /// Largest accepted input audio frame, bytes.
    #[arg(long, env = "VOICE_SIDECAR_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Largest tool output passed to the model, bytes.
    #[arg(long, env = "VOICE_SIDECAR_MAX_TOOL_OUTPUT_BYTES")]
    pub max_tool_output_bytes: Option<usize>,
    /// Concurrent sessions accepted before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "VOICE_SIDECAR_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// On SIGTERM, how long live sessions may continue before they are ended, seconds.
    #[arg(long, env = "VOICE_SIDECAR_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Streams waiting for their `SessionStart` at once (they never count against --max-sessions);
    /// past it the oldest waiting stream is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "VOICE_SIDECAR_MAX_PENDING_STARTS")]
    pub max_pending_starts: Option<usize>,
    /// How long a new stream may take to send its `SessionStart`, milliseconds.
    #[arg(long, env = "VOICE_SIDECAR_START_TIMEOUT_MS")]
    pub start_timeout_ms: Option<u64>,
    /// How long a session waits for a host that has stopped reading its `Converse` stream (the
    /// stream's queue is full) before it ends the session with `host_stalled`, milliseconds.
    #[arg(long, env = "VOICE_SIDECAR_HOST_STALL_TIMEOUT_MS")]
    pub host_stall_timeout_ms: Option<u64>,
    /// Consecutive failures to reach the upstream (connect errors, setup timeouts) after which
    /// readiness (gRPC health of `voice.v1.VoiceSidecar`) turns NOT_SERVING; liveness is untouched.
    #[arg(long, env = "VOICE_SIDECAR_UPSTREAM_UNREADY_AFTER")]
    pub upstream_unready_after: Option<u32>,
    /// While the upstream is unreachable, how often the sidecar probes it (a handshake, then a
    /// close), seconds; the first success makes it ready again.
    #[arg(long, env = "VOICE_SIDECAR_UPSTREAM_PROBE_SECS")]
    pub upstream_probe_secs: Option<u64>,
    /// Largest gRPC message accepted from a host (or a tool host), bytes.
    #[arg(long, env = "VOICE_SIDECAR_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Callback addresses a `SessionStart` may name in `tool_routing.callback_address`: a
    /// comma-separated list of `host`, `host:port`, `loopback`, or `*` (anything). Default:
    /// `loopback`; the --tool-host address is always allowed.
    #[arg(long, env = "VOICE_SIDECAR_TOOL_HOST_ALLOW", value_delimiter = ',')]
    pub tool_host_allow: Option<Vec<String>>,
    /// Tool-host channels kept open at once (least recently used closed first).
    #[arg(long, env = "VOICE_SIDECAR_MAX_TOOL_CHANNELS")]
    pub max_tool_channels: Option<usize>,
    /// Simulator script/config (JSON or TOML) for `--backend sim`.
    #[arg(long, env = "VOICE_SIDECAR_SIM_CONFIG")]
    pub sim_config: Option<PathBuf>,
    /// Automatic tool rounds per turn (without user input in between) before tools are turned off for the turn.
    #[arg(long, env = "VOICE_SIDECAR_MAX_TOOL_ROUNDS_PER_TURN")]
    pub max_tool_rounds_per_turn: Option<u32>,
    /// `response.create` events per session per minute (bursts of up to 20); further ones wait.
    #[arg(long, env = "VOICE_SIDECAR_MAX_RESPONSE_CREATES_PER_MINUTE")]
    pub max_response_creates_per_minute: Option<u32>,
    /// Host `Control` messages per session per second (bursts of twice that); the excess is dropped.
    #[arg(long, env = "VOICE_SIDECAR_MAX_CONTROLS_PER_SECOND")]
    pub max_controls_per_second: Option<u32>,
    /// Input audio accepted ahead of real time, ms; audio further ahead is dropped.
    #[arg(long, env = "VOICE_SIDECAR_INPUT_AUDIO_BURST_MS")]
    pub input_audio_burst_ms: Option<u64>,
    /// Tools a `SessionStart` may declare.
    #[arg(long, env = "VOICE_SIDECAR_MAX_TOOLS")]
    pub max_tools: Option<usize>,
    /// Largest `parameters_json_schema` of one tool, bytes.
    #[arg(long, env = "VOICE_SIDECAR_MAX_TOOL_SCHEMA_BYTES")]
    pub max_tool_schema_bytes: Option<usize>,
    /// Deepest nesting (objects and arrays) of one tool schema.
    #[arg(long, env = "VOICE_SIDECAR_MAX_TOOL_SCHEMA_DEPTH")]
    pub max_tool_schema_depth: Option<usize>,
    /// Largest `instructions` (and custom preamble), bytes.
    #[arg(long, env = "VOICE_SIDECAR_MAX_INSTRUCTIONS_BYTES")]
    pub max_instructions_bytes: Option<usize>,
    /// Largest encoded `SessionStart`, bytes.
    #[arg(long, env = "VOICE_SIDECAR_MAX_START_BYTES")]
    pub max_start_bytes: Option<usize>,
    /// Distinct values per `SessionStart.labels` key in metrics; further values are reported as `other`.
    #[arg(long, env = "VOICE_SIDECAR_MAX_LABEL_VALUES")]
    pub max_label_values: Option<usize>,
    /// File holding a bearer token: every RPC except gRPC health must then carry
    /// `authorization: Bearer <token>`, else it gets UNAUTHENTICATED.
    #[arg(long, env = "VOICE_SIDECAR_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, env = "VOICE_SIDECAR_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "VOICE_SIDECAR_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): require client certificates signed by them (mutual TLS; needs --tls-cert).
    #[arg(long, env = "VOICE_SIDECAR_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Age of an upstream session at which the next one is opened and the call rolls over to it at
    /// a natural pause, seconds (fractions allowed; 0 turns rollover off). Default 3300 (55 min).
    #[arg(long, env = "VOICE_SIDECAR_ROLLOVER_AFTER_SECS")]
    pub rollover_after_secs: Option<f64>,
    /// Upstream's session cap, seconds (default 3600, the Realtime API's 60 minutes).
    #[arg(long, env = "VOICE_SIDECAR_UPSTREAM_SESSION_CAP_SECS")]
    pub upstream_session_cap_secs: Option<f64>,
    /// The rollover is forced (no pause waited for) at the cap minus this, seconds (default 60).
    #[arg(long, env = "VOICE_SIDECAR_ROLLOVER_MARGIN_SECS")]
    pub rollover_margin_secs: Option<f64>,
    /// Default call limit for sessions that set no `max_duration_secs`, seconds (0: none, the default).
    #[arg(long, env = "VOICE_SIDECAR_MAX_CALL_SECS")]
    pub max_call_secs: Option<u64>,
    /// Write one JSON-lines record per session here (`<session id>.jsonl`); off by default.
    #[arg(long, env = "VOICE_SIDECAR_RECORDS_DIR")]
    pub records_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub backend: Option<String>,
    pub realtime_url: Option<String>,
    pub dialect: Option<String>,
    pub model: Option<String>,
    pub unknown_model_like: Option<String>,
    pub voice: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub log_format: Option<String>,
    pub log: Option<String>,
    pub tool_host: Option<String>,
    pub tool_timeout_ms: Option<u64>,
    pub max_frame_bytes: Option<usize>,
    pub max_tool_output_bytes: Option<usize>,
    pub max_sessions: Option<usize>,
    pub shutdown_grace_secs: Option<u64>,
    pub max_pending_starts: Option<usize>,
    pub start_timeout_ms: Option<u64>,
    pub host_stall_timeout_ms: Option<u64>,
    pub upstream_unready_after: Option<u32>,
    pub upstream_probe_secs: Option<u64>,
    pub max_message_bytes: Option<usize>,
    pub tool_host_allow: Option<Vec<String>>,
    pub max_tool_channels: Option<usize>,
    pub sim_config: Option<PathBuf>,
    pub max_tool_rounds_per_turn: Option<u32>,
    pub max_response_creates_per_minute: Option<u32>,
    pub max_controls_per_second: Option<u32>,
    pub input_audio_burst_ms: Option<u64>,
    pub max_tools: Option<usize>,
    pub max_tool_schema_bytes: Option<usize>,
    pub max_tool_schema_depth: Option<usize>,
    pub max_instructions_bytes: Option<usize>,
    pub max_start_bytes: Option<usize>,
    pub max_label_values: Option<usize>,
    pub auth_token_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub rollover_after_secs: Option<f64>,
    pub upstream_session_cap_secs: Option<f64>,
    pub rollover_margin_secs: Option<f64>,
    pub max_call_secs: Option<u64>,
    pub records_dir: Option<PathBuf>,
    /// US dollars per million tokens, for cost metrics and session budgets (file only).
    pub prices: Option<PricesConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesConfig {
    pub input_text: f64,
    pub input_audio: f64,
    pub input_cached: f64,
    pub output_text: f64,
    pub output_audio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    OpenAi,
    Sim,
}

/// The resolved configuration. `Debug` is safe: the key is an `ApiKey`, the token an `AuthToken` and
/// `ServerTlsConfig` prints no key material.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub backend: Backend,
    pub realtime_url: String,
    pub dialect: Dialect,
    pub model: String,
    pub unknown_model_like: String,
    pub voice: Option<String>,
    pub api_key: Option<ApiKey>,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub log: String,
    pub tool_host: Option<String>,
    pub tool_timeout: Duration,
    pub max_frame_bytes: usize,
    pub max_tool_output_bytes: usize,
    pub max_sessions: usize,
    pub shutdown_grace: Duration,
    pub max_pending_starts: usize,
    pub start_timeout: Duration,
    pub host_stall_timeout: Duration,
    pub upstream_unready_after: u32,
    pub upstream_probe: Duration,
    pub max_message_bytes: usize,
    pub tool_host_allow: voice_session::CallbackAllowlist,
    pub max_tool_channels: usize,
    pub sim_config: Option<PathBuf>,
    pub prices: Option<voice_session::Prices>,
    /// Per-session limits (tool rounds, create and Control rates, input audio burst).
    pub limits: voice_session::Limits,
    /// What a `SessionStart` may cost.
    pub start_limits: voice_session::StartLimits,
    pub max_label_values: usize,
    /// Bearer token required on every RPC but health (`--auth-token-file`).
    pub auth_token: Option<AuthToken>,
    /// TLS for the gRPC port (`--tls-cert`/`--tls-key`, optionally `--tls-client-ca`).
    pub tls: Option<Tls>,
    /// Hot-standby rollover before upstream's session cap.
    pub rollover: voice_session::RolloverPolicy,
    /// Default call limit (`--max-call-secs`).
    pub max_call: Option<Duration>,
    /// Session records (`--records-dir`).
    pub records_dir: Option<PathBuf>,
}

/// TLS settings, read and checked at startup.
#[derive(Debug)]
pub struct Tls {
    pub config: ServerTlsConfig,
    /// Client certificates are required (`--tls-client-ca`).
    pub mtls: bool,
}

impl Config {
    pub fn load(args: &Args) -> Result<Config> {
        let file: FileConfig = match &args.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        macro_rules! pick {
            ($f:ident) => {
                args.$f.clone().or(file.$f.clone())
            };
        }
        let api_key = match pick!(api_key_file) {
            Some(p) => {
                let raw = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading API key file {}", p.display()))?;
                Some(
                    ApiKey::new(raw)
                        .with_context(|| format!("API key file {} is empty", p.display()))?,
                )
            }
            None => std::env::var("OPENAI_API_KEY").ok().and_then(ApiKey::new),
        };
        let backend = match pick!(backend).as_deref() {
            None => {
                if api_key.is_some() {
                    Backend::OpenAi
                } else {
                    Backend::Sim
                }
            }
            Some("openai") => Backend::OpenAi,
            Some("sim") => Backend::Sim,
            Some(other) => bail!("--backend must be `openai` or `sim`, got {other:?}"),
        };
        if backend == Backend::OpenAi && api_key.is_none() {
            bail!("--backend openai needs an API key: set OPENAI_API_KEY or --api-key-file");
        }
        let dialect: Dialect = pick!(dialect)
            .as_deref()
            .unwrap_or("ga")
            .parse()
            .map_err(anyhow::Error::msg)?;
        let metrics_listen = match pick!(metrics_listen).as_deref() {
            Some("off" | "") => None,
            Some(a) => Some(
                a.parse()
                    .with_context(|| format!("--metrics-listen {a:?} is not an address"))?,
            ),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        };
        let log_format: LogFormat = pick!(log_format)
            .as_deref()
            .unwrap_or("pretty")
            .parse()
            .map_err(anyhow::Error::msg)?;
        let realtime_url = pick!(realtime_url).unwrap_or_else(|| DEFAULT_REALTIME_URL.to_string());
        if !(realtime_url.starts_with("ws://") || realtime_url.starts_with("wss://")) {
            bail!("--realtime-url must start with ws:// or wss://, got {realtime_url:?}");
        }
        if let Some(t) = pick!(tool_host) {
            if !(t.starts_with("http://") || t.starts_with("https://")) {
                bail!("--tool-host must be an http:// or https:// URL, got {t:?}");
            }
        }
        let unknown_model_like = pick!(unknown_model_like)
            .unwrap_or_else(|| voice_realtime::models::DEFAULT_MODEL.to_string());
        match voice_realtime::models::lookup(&unknown_model_like) {
            Some(m) if m.kind == voice_realtime::models::Kind::Conversation => {}
            _ => bail!(
                "--unknown-model-like must name a known conversation model (e.g. gpt-realtime-2), got {unknown_model_like:?}"
            ),
        }
        let max_frame_bytes = pick!(max_frame_bytes).unwrap_or(64 * 1024);
        if max_frame_bytes < 160 {
            bail!("--max-frame-bytes must be at least 160");
        }
        let max_message_bytes = pick!(max_message_bytes).unwrap_or(4 * 1024 * 1024);
        if max_message_bytes < max_frame_bytes.saturating_add(1024) {
            bail!(
                "--max-message-bytes ({max_message_bytes}) must be at least --max-frame-bytes ({max_frame_bytes}) + 1024"
            );
        }
        let tool_host = pick!(tool_host);
        let tool_host_allow = voice_session::CallbackAllowlist::new(
            &pick!(tool_host_allow).unwrap_or_else(|| vec!["loopback".to_string()]),
            tool_host.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("--tool-host-allow: {e}"))?;
        let max_pending_starts = pick!(max_pending_starts).unwrap_or(64);
        if max_pending_starts == 0 {
            bail!("--max-pending-starts must be at least 1");
        }
        let start_timeout_ms = pick!(start_timeout_ms).unwrap_or(5000);
        if !(1..=600_000).contains(&start_timeout_ms) {
            bail!("--start-timeout-ms must be within 1..=600000, got {start_timeout_ms}");
        }
        let host_stall_timeout_ms = pick!(host_stall_timeout_ms).unwrap_or(10_000);
        if !(1..=3_600_000).contains(&host_stall_timeout_ms) {
            bail!(
                "--host-stall-timeout-ms must be within 1..=3600000, got {host_stall_timeout_ms}"
            );
        }
        let dl = voice_session::Limits::default();
        let limits = voice_session::Limits {
            max_tool_rounds_per_turn: pick!(max_tool_rounds_per_turn)
                .unwrap_or(dl.max_tool_rounds_per_turn),
            response_creates_per_minute: pick!(max_response_creates_per_minute)
                .unwrap_or(dl.response_creates_per_minute)
                .max(1),
            controls_per_second: pick!(max_controls_per_second)
                .unwrap_or(dl.controls_per_second)
                .max(1),
            audio_burst: pick!(input_audio_burst_ms)
                .map_or(dl.audio_burst, |ms| Duration::from_millis(ms.max(100))),
        };
        let ds = voice_session::StartLimits::default();
        let start_limits = voice_session::StartLimits {
            max_tools: pick!(max_tools).unwrap_or(ds.max_tools),
            max_schema_bytes: pick!(max_tool_schema_bytes).unwrap_or(ds.max_schema_bytes),
            max_schema_depth: pick!(max_tool_schema_depth).unwrap_or(ds.max_schema_depth),
            max_instructions_bytes: pick!(max_instructions_bytes)
                .unwrap_or(ds.max_instructions_bytes),
            max_start_bytes: pick!(max_start_bytes).unwrap_or(ds.max_start_bytes),
        };
        let secs = |flag: &str, v: f64| -> anyhow::Result<Duration> {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                bail!("--{flag} must be within 0..=86400 seconds, got {v}");
            }
            Ok(Duration::from_secs_f64(v))
        };
        let rd = voice_session::RolloverPolicy::default();
        let rollover = voice_session::RolloverPolicy {
            after: match pick!(rollover_after_secs) {
                None => rd.after,
                Some(v) => Some(secs("rollover-after-secs", v)?).filter(|d| !d.is_zero()),
            },
            cap: match pick!(upstream_session_cap_secs) {
                None => rd.cap,
                Some(v) => secs("upstream-session-cap-secs", v)?,
            },
            margin: match pick!(rollover_margin_secs) {
                None => rd.margin,
                Some(v) => secs("rollover-margin-secs", v)?,
            },
        };
        rollover.check().map_err(|e| {
            anyhow::anyhow!(
                "--rollover-after-secs / --upstream-session-cap-secs / --rollover-margin-secs: {e}"
            )
        })?;
        let max_call = pick!(max_call_secs)
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let auth_token = pick!(auth_token_file)
            .map(|p| AuthToken::from_file(&p))
            .transpose()?;
        let tls = load_tls(
            pick!(tls_cert).as_deref(),
            pick!(tls_key).as_deref(),
            pick!(tls_client_ca).as_deref(),
        )?;
        Ok(Config {
            records_dir: pick!(records_dir),
            rollover,
            max_call,
            auth_token,
            tls,
            limits,
            start_limits,
            max_label_values: pick!(max_label_values).unwrap_or(50).max(1),
            listen: pick!(listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051))),
            backend,
            realtime_url,
            dialect,
            model: pick!(model)
                .unwrap_or_else(|| voice_realtime::models::DEFAULT_MODEL.to_string()),
            unknown_model_like,
            voice: pick!(voice),
            api_key,
            metrics_listen,
            log_format,
            log: pick!(log).unwrap_or_else(|| "info".into()),
            tool_host,
            tool_timeout: Duration::from_millis(pick!(tool_timeout_ms).unwrap_or(10_000).max(1)),
            max_frame_bytes,
            max_tool_output_bytes: pick!(max_tool_output_bytes).unwrap_or(64 * 1024),
            max_sessions: pick!(max_sessions).unwrap_or(2000).max(1),
            shutdown_grace: Duration::from_secs(pick!(shutdown_grace_secs).unwrap_or(20)),
            max_pending_starts,
            start_timeout: Duration::from_millis(start_timeout_ms),
            host_stall_timeout: Duration::from_millis(host_stall_timeout_ms),
            upstream_unready_after: pick!(upstream_unready_after).unwrap_or(3).max(1),
            upstream_probe: Duration::from_secs(pick!(upstream_probe_secs).unwrap_or(10).max(1)),
            max_message_bytes,
            tool_host_allow,
            max_tool_channels: pick!(max_tool_channels).unwrap_or(64).max(1),
            sim_config: pick!(sim_config),
            prices: match file.prices {
                None => None,
                Some(p) => {
                    let all = [
                        p.input_text,
                        p.input_audio,
                        p.input_cached,
                        p.output_text,
                        p.output_audio,
                    ];
                    if all.iter().any(|x| !x.is_finite() || *x < 0.0) {
                        bail!("[prices] must be non-negative numbers (USD per million tokens)");
                    }
                    Some(voice_session::Prices {
                        input_text: p.input_text,
                        input_audio: p.input_audio,
                        input_cached: p.input_cached,
                        output_text: p.output_text,
                        output_audio: p.output_audio,
                    })
                }
            },
        })
    }
}

/// Reads a PEM file that must hold at least one block whose label ends in `label_suffix`.
fn read_pem(flag: &str, path: &Path, label_suffix: &str) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {flag} {}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    let found = text.lines().any(|l| {
        l.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|r| r.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(label_suffix))
    });
    if !found {
        bail!(
            "{flag} {}: no PEM `{label_suffix}` block found (expected `-----BEGIN {label_suffix}-----`)",
            path.display()
        );
    }
    Ok(pem)
}

fn load_tls(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
) -> Result<Option<Tls>> {
    let (cert, key) = match (cert, key) {
        (None, None) => {
            if client_ca.is_some() {
                bail!("--tls-client-ca needs --tls-cert and --tls-key (client certificates only exist with TLS)");
            }
            return Ok(None);
        }
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => bail!("--tls-cert needs --tls-key"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert"),
    };
    let cert_pem = read_pem("--tls-cert", cert, "CERTIFICATE")?;
    let key_pem = read_pem("--tls-key", key, "PRIVATE KEY")?;
    // A peer that opens a connection and never finishes the handshake is dropped after 10 s.
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(Duration::from_secs(10));
    if let Some(ca) = client_ca {
        let ca_pem = read_pem("--tls-client-ca", ca, "CERTIFICATE")?;
        config = config.client_ca_root(Certificate::from_pem(ca_pem));
    }
    // Builds the rustls acceptor now, so an unparseable certificate or key, or a key that does not
    // belong to the certificate, stops startup with the file names instead of failing handshakes.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
        .with_context(|| {
            format!(
                "TLS setup from --tls-cert {} / --tls-key {}{}",
                cert.display(),
                key.display(),
                client_ca.map_or_else(String::new, |c| format!(
                    " / --tls-client-ca {}",
                    c.display()
                ))
            )
        })?;
    Ok(Some(Tls {
        config,
        mtls: client_ca.is_some(),
    }))
}

/// `e: source: source…`, since tonic's transport error says only "transport error" by itself.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Result<Config> {
        let mut all = vec!["voice-sidecar", "--backend", "sim"];
        all.extend_from_slice(args);
        Config::load(&Args::parse_from(all))
    }

    #[test]
    fn edge_limits_have_defaults_and_are_checked() {
        let c = load(&[]).unwrap();
        assert_eq!(c.max_pending_starts, 64);
        assert_eq!(c.start_timeout, Duration::from_millis(5000));
        assert_eq!(c.host_stall_timeout, Duration::from_millis(10_000));
        assert_eq!(
            load(&["--host-stall-timeout-ms", "250"])
                .unwrap()
                .host_stall_timeout,
            Duration::from_millis(250)
        );
        assert!(load(&["--host-stall-timeout-ms", "0"]).is_err());
        assert_eq!(c.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(c.max_tool_channels, 64);
        assert!(c.tool_host_allow.check("http://127.0.0.1:1").is_ok());
        assert!(c.tool_host_allow.check("http://10.0.0.1:1").is_err());
        let c = load(&[
            "--tool-host",
            "http://th:9",
            "--tool-host-allow",
            "a.svc:1,b.svc",
        ])
        .unwrap();
        for ok in ["http://th:9", "http://a.svc:1", "http://b.svc:2"] {
            assert!(c.tool_host_allow.check(ok).is_ok(), "{ok}");
        }
        assert!(c.tool_host_allow.check("http://127.0.0.1:1").is_err());
        assert!(load(&["--max-pending-starts", "0"]).is_err());
        assert!(load(&["--start-timeout-ms", "0"]).is_err());
        assert!(load(&["--max-message-bytes", "1000"]).is_err());
        assert!(load(&["--tool-host-allow", "http://x:notaport"]).is_err());
    }
}
