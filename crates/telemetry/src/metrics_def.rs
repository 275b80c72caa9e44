//! Metric names, descriptions and bucket layouts, and the exporter that serves them on `/metrics`.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;

pub const SESSIONS_ACTIVE: &str = "voice_sessions_active";
pub const SESSIONS_TOTAL: &str = "voice_sessions_total";
pub const RESPONSE_LATENCY: &str = "voice_response_latency_seconds";
pub const SILENCE: &str = "voice_silence_seconds";
pub const TOOL_CALL_DURATION: &str = "voice_tool_call_duration_seconds";
pub const TOOL_CALLS_IN_FLIGHT: &str = "voice_tool_calls_in_flight";
pub const TOOL_CALLS_TOTAL: &str = "voice_tool_calls_total";
pub const UPSTREAM_CONNECT: &str = "voice_upstream_connect_seconds";
pub const UPSTREAM_RECONNECTS: &str = "voice_upstream_reconnects_total";
pub const UPSTREAM_ERRORS: &str = "voice_upstream_errors_total";
pub const UPSTREAM_EVENTS_UNKNOWN: &str = "voice_upstream_unknown_events_total";
pub const AUDIO_FRAMES: &str = "voice_audio_frames_total";
pub const AUDIO_BYTES: &str = "voice_audio_bytes_total";
pub const FRAME_PROCESSING: &str = "voice_frame_processing_seconds";
pub const INTERRUPTIONS: &str = "voice_interruptions_total";
pub const TOKENS: &str = "voice_tokens_total";
pub const HOST_ERRORS: &str = "voice_host_errors_total";
pub const RESPONSES_TOTAL: &str = "voice_responses_total";
pub const DEAD_AIR: &str = "voice_dead_air_seconds";
pub const AUDIO_ANOMALIES: &str = "voice_output_audio_anomalies_total";
pub const COST: &str = "voice_cost_microdollars_total";
pub const BUDGET_EXCEEDED: &str = "voice_budget_exceeded_total";
pub const HOST_STALL: &str = "voice_host_stall_seconds";
pub const AUDIO_DROPPED: &str = "voice_audio_dropped_total";
pub const PREAMBLE_TO_ANSWER: &str = "voice_preamble_to_answer_seconds";
pub const IDLE_TIMEOUTS: &str = "voice_idle_timeouts_total";
pub const QUIET_MODE: &str = "voice_quiet_mode_total";
pub const QUIET_SUPPRESSED: &str = "voice_quiet_suppressed_responses_total";
pub const MODEL_DEPRECATED: &str = "voice_model_deprecated_sessions_total";
pub const LIMITS_HIT: &str = "voice_limits_hit_total";
pub const LOG_SUPPRESSED: &str = "voice_log_suppressed_total";
pub const LABELS_OVERFLOWED: &str = "voice_label_values_overflowed_total";

/// Voice-to-voice and dead air: tens of milliseconds to tens of seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
    15.0, 20.0, 30.0, 60.0,
];
/// In-sidecar per-frame cost: microseconds to tens of milliseconds.
const FRAME_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
];

/// Host stalls: a slow reader is sub-millisecond to seconds behind.
const STALL_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Registers help texts and units for every metric.
pub fn describe_all() {
    describe_gauge!(
        SESSIONS_ACTIVE,
        Unit::Count,
        "Voice sessions currently open."
    );
    describe_counter!(
        SESSIONS_TOTAL,
        Unit::Count,
        "Voice sessions ended, by outcome."
    );
    describe_histogram!(
        RESPONSE_LATENCY,
        Unit::Seconds,
        "Voice-to-voice latency: end of the user's speech to the first assistant audio."
    );
    describe_histogram!(
        SILENCE,
        Unit::Seconds,
        "Dead-air spans while the user waits with no assistant audio, by phase."
    );
    describe_histogram!(
        TOOL_CALL_DURATION,
        Unit::Seconds,
        "Tool call duration, by tool and outcome."
    );
    describe_gauge!(
        TOOL_CALLS_IN_FLIGHT,
        Unit::Count,
        "Tool calls currently running on hosts."
    );
    describe_counter!(
        TOOL_CALLS_TOTAL,
        Unit::Count,
        "Tool calls finished, by tool and outcome."
    );
    describe_histogram!(
        UPSTREAM_CONNECT,
        Unit::Seconds,
        "Time to open and initialize an upstream Realtime session."
    );
    describe_counter!(
        UPSTREAM_RECONNECTS,
        Unit::Count,
        "Upstream reconnects after a dropped connection."
    );
    describe_counter!(
        UPSTREAM_ERRORS,
        Unit::Count,
        "Upstream error events and failures, by code."
    );
    describe_counter!(
        UPSTREAM_EVENTS_UNKNOWN,
        Unit::Count,
        "Upstream events this build does not know."
    );
    describe_counter!(
        AUDIO_FRAMES,
        Unit::Count,
        "Audio frames handled, by direction (in: host to model, out: model to host)."
    );
    describe_counter!(
        AUDIO_BYTES,
        Unit::Bytes,
        "Audio bytes received from or sent to hosts, by direction."
    );
    describe_histogram!(
        FRAME_PROCESSING,
        Unit::Seconds,
        "Time spent inside the sidecar per audio frame, by direction."
    );
    describe_counter!(
        INTERRUPTIONS,
        Unit::Count,
        "Barge-ins: the user spoke over assistant audio."
    );
    describe_counter!(
        TOKENS,
        Unit::Count,
        "Tokens used, from response.done usage, by kind."
    );
    describe_counter!(
        HOST_ERRORS,
        Unit::Count,
        "Errors reported to hosts on the stream, by code."
    );
    describe_counter!(
        RESPONSES_TOTAL,
        Unit::Count,
        "Model responses finished, by status."
    );
    describe_histogram!(
        DEAD_AIR,
        Unit::Seconds,
        "Dead air the caller heard, by cause (model, tool, reconnect, underrun) and tool."
    );
    describe_counter!(
        AUDIO_ANOMALIES,
        Unit::Count,
        "Assistant audio near-silent or clipped for longer than the threshold, by kind."
    );
    describe_counter!(
        COST,
        Unit::Count,
        "Estimated spend from token usage and the configured price table, in millionths of a US dollar."
    );
    describe_counter!(
        BUDGET_EXCEEDED,
        Unit::Count,
        "Sessions that went over their cost budget."
    );
    describe_histogram!(
        PREAMBLE_TO_ANSWER,
        Unit::Seconds,
        "First audio of a preamble message (\"let me check\") to the first audio of the answer."
    );
    describe_counter!(
        IDLE_TIMEOUTS,
        Unit::Count,
        "Times the user stayed silent past server_vad.idle_timeout_ms and the model re-prompted."
    );
    describe_counter!(
        QUIET_MODE,
        Unit::Count,
        "Quiet-mode changes, by how (model_tool, wake_phrase, host) and state (on, off)."
    );
    describe_counter!(
        QUIET_SUPPRESSED,
        Unit::Count,
        "Responses the sidecar did not ask for because the session was in quiet mode."
    );
    describe_counter!(
        MODEL_DEPRECATED,
        Unit::Count,
        "Sessions started on a model past or within 30 days of its shutdown date."
    );
    describe_counter!(
        AUDIO_DROPPED,
        Unit::Count,
        "Host audio frames dropped, by reason (upstream_down: while the upstream reconnects; too_fast: ahead of real time past the burst allowance)."
    );
    describe_counter!(
        LIMITS_HIT,
        Unit::Count,
        "Times a per-session limit bit, by limit (tool_rounds, response_rate, control_rate, input_audio_rate)."
    );
    describe_counter!(
        LOG_SUPPRESSED,
        Unit::Count,
        "Repeated warnings of one session left out of the log (reported as a suppressed count)."
    );
    describe_counter!(
        LABELS_OVERFLOWED,
        Unit::Count,
        "Session label values reported as `other` (the label key already had its maximum of distinct values)."
    );
    describe_histogram!(
        HOST_STALL,
        Unit::Seconds,
        "Time a session waited because the host's stream was full (the host is not reading its Converse responses)."
    );
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("could not start the Prometheus exporter on {addr}: {reason}")]
    Exporter { addr: SocketAddr, reason: String },
}

fn builder() -> PrometheusBuilder {
    let mut b = PrometheusBuilder::new();
    for name in [
        RESPONSE_LATENCY,
        SILENCE,
        TOOL_CALL_DURATION,
        UPSTREAM_CONNECT,
        DEAD_AIR,
        PREAMBLE_TO_ANSWER,
    ] {
        b = b
            .set_buckets_for_metric(Matcher::Full(name.to_string()), LATENCY_BUCKETS)
            .expect("bucket list is non-empty");
    }
    b.set_buckets_for_metric(Matcher::Full(FRAME_PROCESSING.to_string()), FRAME_BUCKETS)
        .expect("bucket list is non-empty")
        .set_buckets_for_metric(Matcher::Full(HOST_STALL.to_string()), STALL_BUCKETS)
        .expect("bucket list is non-empty")
}

/// Installs the global recorder and serves `/metrics` on `addr` (needs a Tokio runtime).
pub fn install_prometheus(addr: SocketAddr) -> Result<(), TelemetryError> {
    builder()
        .with_http_listener(addr)
        .install()
        .map_err(|e| TelemetryError::Exporter {
            addr,
            reason: e.to_string(),
        })?;
    describe_all();
    crate::hot::pin_frame_metrics();
    Ok(())
}

/// Installs the global recorder without a listener and returns a handle that renders the text format
/// (for tests and embedding).
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    let h = builder()
        .install_recorder()
        .map_err(|e| TelemetryError::Exporter {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: e.to_string(),
        })?;
    describe_all();
    crate::hot::pin_frame_metrics();
    Ok(h)
}
