//! Structured logging: pretty for humans, JSON for log pipelines, filter from `RUST_LOG`-style strings.

use tracing_subscriber::EnvFilter;

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
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE);
    let r = match format {
        LogFormat::Pretty => b.compact().try_init(),
        LogFormat::Json => b
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    r.map_err(|e| e.to_string())
}
