//! `voice-sidecar`: the gRPC server binary. Wires configuration, telemetry, the upstream (real API or
//! embedded simulator), health, reflection and graceful shutdown around the session crate.

mod auth;
mod config;
mod service;

use anyhow::{Context, Result};
use clap::Parser;
use config::{Args, Backend, Config};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn};
use voice_proto::v1::voice_sidecar_server::VoiceSidecarServer;
use voice_realtime::ApiKey;
use voice_session::{Defaults, SessionContext, ToolChannels, UpstreamSettings};

/// Cap on messages the sidecar sends; what it accepts is `--max-message-bytes` (audio frames are held
/// to the smaller `--max-frame-bytes` with a typed error on the stream).
const MAX_GRPC_ENCODE: usize = 4 * 1024 * 1024;
/// HTTP/2 connection-level receive window (see `Server::builder` below).
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

#[tokio::main]
async fn main() -> Result<()> {
    let cfg = Config::load(&Args::parse())?;
    voice_telemetry::init_tracing(cfg.log_format, &cfg.log).map_err(anyhow::Error::msg)?;
    if let Some(addr) = cfg.metrics_listen {
        voice_telemetry::install_prometheus(addr)?;
        voice_session::register_metrics();
        info!(%addr, "Prometheus metrics on /metrics");
    }

    // The simulator lives as long as main; its handle must not be dropped early.
    let mut _sim = None;
    let (base_url, api_key) = match cfg.backend {
        Backend::OpenAi => {
            let key = cfg.api_key.clone().context("no API key")?;
            info!(url = %cfg.realtime_url, dialect = %cfg.dialect, model = %cfg.model, "upstream: OpenAI Realtime API");
            (cfg.realtime_url.clone(), key)
        }
        Backend::Sim => {
            if cfg.api_key.is_none() {
                info!("no API key configured: starting with the embedded Realtime simulator (offline)");
            }
            let sim_cfg = match &cfg.sim_config {
                Some(p) => load_sim_config(p)?,
                None => voice_realtime_sim::SimConfig::default(),
            };
            let handle = voice_realtime_sim::SimServer::bind(([127, 0, 0, 1], 0).into(), sim_cfg)
                .await
                .context("starting the embedded simulator")?;
            let url = handle.base_url();
            info!(%url, "upstream: embedded Realtime simulator");
            _sim = Some(handle);
            (url, ApiKey::new("sim-local-key").context("sim key")?)
        }
    };

    let shutdown = CancellationToken::new();
    let mut ctx = SessionContext::new(
        UpstreamSettings {
            base_url,
            api_key,
            connect_timeout: Duration::from_secs(10),
            max_message_bytes: 16 * 1024 * 1024,
        },
        ToolChannels::new(cfg.max_tool_channels),
        shutdown.clone(),
        Duration::from_secs(15),
    );
    ctx.reachability = Arc::new(voice_session::upstream::Reachability::new(
        cfg.upstream_unready_after,
    ));
    ctx.host_stall_timeout = cfg.host_stall_timeout;
    let ctx = Arc::new(ctx);
    let readiness_ctx = ctx.clone();
    let defaults = Defaults {
        model: cfg.model.clone(),
        dialect: cfg.dialect,
        tool_host: cfg.tool_host.clone(),
        callback_allow: cfg.tool_host_allow.clone(),
        tool_timeout: cfg.tool_timeout,
        max_frame_bytes: cfg.max_frame_bytes,
        max_tool_output_bytes: cfg.max_tool_output_bytes,
        voice: cfg.voice.clone(),
        prices: cfg.prices,
        unknown_model_like: cfg.unknown_model_like.clone(),
        today: None,
        limits: cfg.limits,
        start_limits: cfg.start_limits,
        max_label_values: cfg.max_label_values,
        rollover: cfg.rollover,
        max_call: cfg.max_call,
        records_dir: cfg.records_dir.clone(),
    };
    if let Some(dir) = &cfg.records_dir {
        // Not fatal: a volume may be mounted later; sessions report a record they cannot write.
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "--records-dir cannot be created; sessions will report record_write_failed");
        }
    }
    let sessions = Arc::new(Semaphore::new(cfg.max_sessions));
    let draining = CancellationToken::new();
    let svc = service::Sidecar {
        ctx,
        defaults,
        sessions: sessions.clone(),
        max_sessions: cfg.max_sessions,
        pending: Arc::new(service::PendingStarts::new(cfg.max_pending_starts)),
        start_timeout: cfg.start_timeout,
        max_message_bytes: cfg.max_message_bytes,
        draining: draining.clone(),
    };

    let (health_reporter, health_svc) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<VoiceSidecarServer<service::Sidecar>>()
        .await;
    tokio::spawn(readiness(
        health_reporter.clone(),
        readiness_ctx,
        cfg.model.clone(),
        cfg.dialect,
        cfg.upstream_probe,
        draining.clone(),
    ));
    // Both reflection versions: v1, and v1alpha for clients that speak only that (older grpcurl and
    // grpcui builds, several IDE and API-tool plugins).
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(voice_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Each version lists both reflection services.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("building the reflection service (v1)")?;
    let reflection_alpha = reflection_builder()
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;

    // Health stays open (probes); the API and reflection need the token when one is configured.
    let require_token = auth::RequireToken::new(cfg.auth_token.clone());
    let reflection = InterceptedService::new(reflection, require_token.clone());
    let reflection_alpha = InterceptedService::new(reflection_alpha, require_token.clone());
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &cfg.tls {
        builder = builder
            .tls_config(tls.config.clone())
            .context("TLS setup for the gRPC listener")?;
    }

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding gRPC listener on {}", cfg.listen))?;
    let local = listener.local_addr()?;
    info!(
        addr = %local,
        tls = cfg.tls.is_some(),
        client_certs = cfg.tls.as_ref().is_some_and(|t| t.mtls),
        bearer_token = cfg.auth_token.is_some(),
        "voice-sidecar listening (gRPC: voice.v1.VoiceSidecar, grpc.health.v1, reflection)"
    );
    if cfg.auth_token.is_none() && cfg.tls.is_none() && !local.ip().is_loopback() {
        // Info, not warn: the Kubernetes example does this on purpose, behind a NetworkPolicy.
        info!(
            addr = %local,
            "gRPC listens beyond loopback without --auth-token-file or TLS: anyone who can reach it can spend the API key"
        );
    }

    let grace = cfg.shutdown_grace;
    let max_sessions = cfg.max_sessions;
    // On SIGTERM the listener stays open (health answers NOT_SERVING, new Converse streams get
    // UNAVAILABLE, live sessions go on) until the last live session has ended or the grace period is
    // over; only then does the server stop accepting connections and the sessions get `shutdown`.
    let stop = {
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            draining.cancel();
            info!(
                grace_secs = grace.as_secs(),
                "shutdown requested: refusing new sessions, letting live ones finish"
            );
            health_reporter
                .set_not_serving::<VoiceSidecarServer<service::Sidecar>>()
                .await;
            health_reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            let deadline = tokio::time::Instant::now() + grace;
            while sessions.available_permits() < max_sessions
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if sessions.available_permits() < max_sessions {
                warn!("grace period over: ending live sessions");
            }
            shutdown.cancel();
        }
    };

    let server = builder
        .tcp_nodelay(true)
        // Hosts multiplex many calls on one HTTP/2 connection. With the 64 KiB default connection
        // window, one session that stops reading (its stream window full) would stall every other
        // call on that connection; per-stream buffering stays bounded by the 64 KiB stream window.
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(InterceptedService::new(
            VoiceSidecarServer::new(svc)
                .max_decoding_message_size(cfg.max_message_bytes)
                .max_encoding_message_size(MAX_GRPC_ENCODE.max(cfg.max_message_bytes)),
            require_token,
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        );
    // Graceful shutdown waits for every HTTP/2 stream to close; a host that keeps its request stream
    // open after SessionEnded would hold the process forever, so the drain gets a hard limit.
    let hard_stop = async {
        shutdown.cancelled().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::select! {
        r = server => r.context("gRPC server failed")?,
        () = hard_stop => warn!("connections still open 2 s after the sessions ended: exiting anyway"),
    }
    info!("voice-sidecar stopped");
    Ok(())
}

fn load_sim_config(p: &std::path::Path) -> Result<voice_realtime_sim::SimConfig> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("reading simulator config {}", p.display()))?;
    let cfg = if p.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
    } else {
        toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
    };
    Ok(cfg)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Readiness follows upstream reachability: NOT_SERVING for `voice.v1.VoiceSidecar` (the readiness
/// probe's service) once sessions keep failing to reach upstream, probing it meanwhile; SERVING again
/// at the first success. Liveness (the "" service) is never touched here; draining wins.
async fn readiness(
    reporter: tonic_health::server::HealthReporter,
    ctx: Arc<SessionContext>,
    model: String,
    dialect: voice_realtime::Dialect,
    probe_every: Duration,
    draining: CancellationToken,
) {
    let mut rx = ctx.reachability.subscribe();
    loop {
        let reachable = *rx.borrow_and_update();
        if draining.is_cancelled() {
            return;
        }
        if reachable {
            reporter
                .set_serving::<VoiceSidecarServer<service::Sidecar>>()
                .await;
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = draining.cancelled() => return,
            }
            continue;
        }
        warn!("the upstream is unreachable: readiness off until a probe succeeds");
        reporter
            .set_not_serving::<VoiceSidecarServer<service::Sidecar>>()
            .await;
        loop {
            tokio::select! {
                () = tokio::time::sleep(probe_every) => {}
                r = rx.changed() => { if r.is_err() { return } break }
                () = draining.cancelled() => return,
            }
            let opts = voice_realtime::ConnectOptions {
                base_url: ctx.upstream.base_url.clone(),
                model: model.clone(),
                intent: voice_realtime::Intent::Conversation,
                dialect,
                api_key: ctx.upstream.api_key.clone(),
                connect_timeout: ctx.upstream.connect_timeout,
                max_message_bytes: ctx.upstream.max_message_bytes,
            };
            match tokio::time::timeout(ctx.setup_timeout, ctx.connector.connect(opts)).await {
                Ok(Ok(mut conn)) => {
                    conn.close().await;
                    info!("upstream probe succeeded: ready again");
                    ctx.reachability.record(Ok(()));
                    break;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "upstream probe failed"),
                Err(_) => tracing::debug!("upstream probe timed out"),
            }
        }
    }
}
