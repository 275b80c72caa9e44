//! Structured logging: pretty for humans, JSON for log pipelines, filter from `RUST_LOG`-style strings.

use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Targets never logged, whatever the filter says: the WebSocket handshake logs the whole request,
/// `Authorization` header (the API key) included, at trace level.
pub const SECRET_TARGETS: &[&str] = &["tungstenite::handshake", "tokio_tungstenite::handshake"];

/// Whether events of this target may be logged (see [`SECRET_TARGETS`]).
pub fn target_allowed(target: &str) -> bool {
    !SECRET_TARGETS.iter().any(|t| target.starts_with(t))
}

fn no_secrets() -> FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    fn allowed(m: &tracing::Metadata<'_>) -> bool {
        target_allowed(m.target())
    }
    filter_fn(allowed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" | "text" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            o => Err(format!(
                "unknown log format {o:?} (expected pretty or json)"
            )),
        }
    }
}

/// Installs the global subscriber; logs go to stderr so stdout stays free for program output.
/// Returns an error string for a bad filter instead of panicking.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(filter).map_err(|e| format!("bad log filter {filter:?}: {e}"))?;
    // Span close events carry each span's recorded fields (a response's voice-to-voice latency, a tool
    // call's status and duration) plus its busy/idle time.
    let b = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE);
    let layer = match format {
        LogFormat::Pretty => b.compact().with_filter(no_secrets()).boxed(),
        LogFormat::Json => b
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(no_secrets())
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_targets_are_never_logged() {
        assert!(!target_allowed("tungstenite::handshake::client"));
        assert!(!target_allowed("tokio_tungstenite::handshake"));
        assert!(target_allowed("tungstenite::protocol"));
        assert!(target_allowed("voice_session::session"));
    }
}
