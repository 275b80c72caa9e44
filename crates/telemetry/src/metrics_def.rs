//! Metric names, descriptions and bucket layouts, and the exporter that serves them on `/metrics`.

use crate::hot::Direction;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Label, Unit,
};
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
pub const HOST_STALLED: &str = "voice_host_stalled_sessions";
pub const PENDING_STARTS: &str = "voice_pending_starts";
pub const ADMISSION_REFUSED: &str = "voice_admission_refused_total";
pub const TOOL_CHANNELS: &str = "voice_tool_channels";
pub const TOOL_CHANNEL_EVICTIONS: &str = "voice_tool_channel_evictions_total";
pub const LIMITS_HIT: &str = "voice_limits_hit_total";
pub const LOG_SUPPRESSED: &str = "voice_log_suppressed_total";
pub const LABELS_OVERFLOWED: &str = "voice_label_values_overflowed_total";
pub const ROLLOVERS: &str = "voice_upstream_rollovers_total";
pub const ROLLOVER_GAP: &str = "voice_upstream_rollover_gap_seconds";
pub const RECORD_ERRORS: &str = "voice_record_errors_total";
pub const TRANSLATION_AUDIO: &str = "voice_translation_audio_seconds_total";
pub const TRANSLATION_LATENCY: &str = "voice_translation_latency_seconds";
pub const TASKS_ACTIVE: &str = "voice_tasks_active";
pub const SHADOW_SEGMENT_LATENCY: &str = "voice_shadow_segment_latency_seconds";
pub const SHADOW_ERRORS: &str = "voice_shadow_errors_total";
pub const SHADOW_AUDIO: &str = "voice_shadow_audio_seconds_total";

/// What went wrong on a transcription leg: it could not open (or reopen), upstream sent an error or
/// dropped it, a segment's transcription failed, or audio was dropped because the leg lagged or was
/// down.
pub const SHADOW_ERROR_KINDS: &[&str] = &["connect", "upstream", "segment_failed", "audio_dropped"];

/// Why a session-record line was lost: the file could not be opened, a write failed, or the writer's
/// queue was full.
pub const RECORD_ERROR_KINDS: &[&str] = &["open", "write", "dropped"];

/// How a planned rollover ended: switched at a pause, switched at the cap minus the margin, or the
/// old session ended (upstream's cap) before a standby was ready.
pub const ROLLOVER_OUTCOMES: &[&str] = &["natural", "forced", "failed"];

/// Voice-to-voice and dead air: tens of milliseconds to tens of seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
    15.0, 20.0, 30.0, 60.0,
];
/// In-sidecar per-frame cost: microseconds to tens of milliseconds.
const FRAME_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
];

/// Rollover gaps: the last input frame on the old upstream socket to the first on the new one (a
/// frame interval when the switch is clean).
const GAP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5,
];

/// Host stalls: a slow reader is sub-millisecond to seconds behind.
const STALL_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A family's Prometheus type (its `# TYPE` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Which series of a family exist from the first scrape (registered at zero, never observed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// No labels (or only the host's optional session labels): the unlabelled series.
    Unlabelled,
    /// One label whose values are a small fixed set this crate owns: one series per value.
    Values {
        key: &'static str,
        values: &'static [&'static str],
    },
    /// Fixed label sets this crate owns: one series per set.
    Sets(&'static [&'static [(&'static str, &'static str)]]),
    /// Label values owned by the session crate (error codes, session outcomes, silence phases):
    /// registered by `voice_session::register_metrics`.
    Session,
    /// Labels named by hosts (tool names): no series until the first observation, only
    /// `# HELP`/`# TYPE` (added by [`crate::exposition::render`]).
    Open,
}

/// One metric family: everything `/metrics` says about it before anything is observed.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
    pub series: Series,
}

const DIRECTIONS: Series = Series::Values {
    key: "direction",
    values: &[Direction::In.as_str(), Direction::Out.as_str()],
};

/// `voice_tokens_total{kind}`: the usage fields of `response.done`.
pub const TOKEN_KINDS: &[&str] = &[
    "input_text",
    "input_audio",
    "input_cached",
    "output_text",
    "output_audio",
];

/// `voice_responses_total{status}` for a status none of [`RESPONSE_STATUSES`] names.
pub const RESPONSE_STATUS_OTHER: &str = "other";
/// `voice_responses_total{status}`: every value (upstream statuses outside the list count as other).
pub const RESPONSE_STATUSES: &[&str] = &[
    "completed",
    "cancelled",
    "failed",
    "incomplete",
    RESPONSE_STATUS_OTHER,
];

/// Every metric the sidecar exports. `describe_all`, the startup registration and the `/metrics`
/// renderer all read this one table.
pub const FAMILIES: &[Family] = &[
    Family {
        name: SESSIONS_ACTIVE,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Voice sessions currently open.",
        series: Series::Unlabelled,
    },
    Family {
        name: SESSIONS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Voice sessions ended, by outcome.",
        series: Series::Session,
    },
    Family {
        name: RESPONSE_LATENCY,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "Voice-to-voice latency: end of the user's speech to the first assistant audio.",
        series: Series::Unlabelled,
    },
    Family {
        name: SILENCE,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "Dead-air spans while the user waits with no assistant audio, by phase.",
        series: Series::Session,
    },
    Family {
        name: TOOL_CALL_DURATION,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "Tool call duration, by tool and outcome.",
        series: Series::Open,
    },
    Family {
        name: TOOL_CALLS_IN_FLIGHT,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Tool calls currently running on hosts.",
        series: Series::Unlabelled,
    },
    Family {
        name: TOOL_CALLS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Tool calls finished, by tool and outcome.",
        series: Series::Open,
    },
    Family {
        name: UPSTREAM_CONNECT,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "Time to open and initialize an upstream Realtime session.",
        series: Series::Unlabelled,
    },
    Family {
        name: UPSTREAM_RECONNECTS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Upstream reconnects after a dropped connection.",
        series: Series::Unlabelled,
    },
    Family {
        name: UPSTREAM_ERRORS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Upstream error events and failures, by code.",
        series: Series::Session,
    },
    Family {
        name: UPSTREAM_EVENTS_UNKNOWN,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Upstream events this build does not know.",
        series: Series::Unlabelled,
    },
    Family {
        name: AUDIO_FRAMES,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Audio frames handled, by direction (in: host to model, out: model to host).",
        series: DIRECTIONS,
    },
    Family {
        name: AUDIO_BYTES,
        kind: Kind::Counter,
        unit: Unit::Bytes,
        help: "Audio bytes received from or sent to hosts, by direction.",
        series: DIRECTIONS,
    },
    Family {
        name: FRAME_PROCESSING,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "Time spent inside the sidecar per audio frame, by direction.",
        series: DIRECTIONS,
    },
    Family {
        name: INTERRUPTIONS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Barge-ins: the user spoke over assistant audio.",
        series: Series::Unlabelled,
    },
    Family {
        name: TOKENS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Tokens used, from response.done usage, by kind.",
        series: Series::Values {
            key: "kind",
            values: TOKEN_KINDS,
        },
    },
    Family {
        name: HOST_ERRORS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Errors reported to hosts on the stream, by code.",
        series: Series::Session,
    },
    Family {
        name: RESPONSES_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Model responses finished, by status.",
        series: Series::Values {
            key: "status",
            values: RESPONSE_STATUSES,
        },
    },
    Family {
        name: DEAD_AIR,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "Dead air the caller heard, by cause (model, tool, reconnect, underrun) and tool.",
        // cause="tool" is labelled with the tool's name: no series until a tool is waited on.
        series: Series::Sets(&[
            &[("cause", "model"), ("tool", "")],
            &[("cause", "underrun"), ("tool", "")],
            &[("cause", "reconnect"), ("tool", "")],
        ]),
    },
    Family {
        name: AUDIO_ANOMALIES,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Assistant audio near-silent or clipped for longer than the threshold, by kind.",
        series: Series::Session,
    },
    Family {
        name: COST,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Estimated spend from token usage and the configured price table, in millionths of a US dollar.",
        series: Series::Unlabelled,
    },
    Family {
        name: BUDGET_EXCEEDED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Sessions that went over their cost budget.",
        series: Series::Unlabelled,
    },
    Family {
        name: PREAMBLE_TO_ANSWER,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "First audio of a preamble message (\"let me check\") to the first audio of the answer.",
        series: Series::Unlabelled,
    },
    Family {
        name: IDLE_TIMEOUTS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Times the user stayed silent past server_vad.idle_timeout_ms and the model re-prompted.",
        series: Series::Unlabelled,
    },
    Family {
        name: QUIET_MODE,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Quiet-mode changes, by how (model_tool, wake_phrase, host) and state (on, off).",
        series: Series::Sets(&[
            &[("how", "model_tool"), ("state", "on")],
            &[("how", "wake_phrase"), ("state", "off")],
            &[("how", "host"), ("state", "off")],
        ]),
    },
    Family {
        name: QUIET_SUPPRESSED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Responses the sidecar did not ask for because the session was in quiet mode.",
        series: Series::Unlabelled,
    },
    Family {
        name: MODEL_DEPRECATED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Sessions started on a model past or within 30 days of its shutdown date.",
        series: Series::Unlabelled,
    },
    Family {
        name: AUDIO_DROPPED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Host audio frames dropped, by reason (upstream_down: while the upstream reconnects; too_fast: ahead of real time past the burst allowance).",
        series: Series::Values {
            key: "reason",
            values: &["upstream_down", "too_fast"],
        },
    },
    Family {
        name: HOST_STALL,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "Time a session waited because the host's stream was full (the host is not reading its Converse responses).",
        series: Series::Unlabelled,
    },
    Family {
        name: HOST_STALLED,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Sessions waiting right now because their host is not reading its Converse stream.",
        series: Series::Unlabelled,
    },
    Family {
        name: PENDING_STARTS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Converse streams open and waiting for their SessionStart (bounded by --max-pending-starts).",
        series: Series::Unlabelled,
    },
    Family {
        name: ADMISSION_REFUSED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Converse streams refused before a session began, by reason (start_timeout, pending_evicted, max_sessions, draining, invalid_start, callback_not_allowed, message_too_large, bad_message).",
        series: Series::Values {
            key: "reason",
            values: &[
                "start_timeout",
                "pending_evicted",
                "max_sessions",
                "draining",
                "invalid_start",
                "callback_not_allowed",
                "message_too_large",
                "bad_message",
            ],
        },
    },
    Family {
        name: TOOL_CHANNELS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Tool-host gRPC channels cached (bounded by --max-tool-channels).",
        series: Series::Unlabelled,
    },
    Family {
        name: TOOL_CHANNEL_EVICTIONS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Tool-host channels closed because the cache was full (least recently used first).",
        series: Series::Unlabelled,
    },
    Family {
        name: LIMITS_HIT,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Times a per-session limit bit, by limit (tool_rounds, response_rate, control_rate, input_audio_rate).",
        series: Series::Values {
            key: "limit",
            values: &["tool_rounds", "response_rate", "control_rate", "input_audio_rate"],
        },
    },
    Family {
        name: LOG_SUPPRESSED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Repeated warnings of one session left out of the log (reported as a suppressed count).",
        series: Series::Unlabelled,
    },
    Family {
        name: LABELS_OVERFLOWED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Session label values reported as `other` (the label key already had its maximum of distinct values).",
        series: Series::Unlabelled,
    },
    Family {
        name: ROLLOVERS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Planned switches to a new upstream session before its duration cap, by outcome.",
        series: Series::Values {
            key: "outcome",
            values: ROLLOVER_OUTCOMES,
        },
    },
    Family {
        name: ROLLOVER_GAP,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "Input audio gap at a rollover: last frame sent on the old upstream socket to the first on the new one.",
        series: Series::Unlabelled,
    },
    Family {
        name: SHADOW_SEGMENT_LATENCY,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "Transcription leg: a segment's end (its commit) to its final text.",
        series: Series::Unlabelled,
    },
    Family {
        name: SHADOW_ERRORS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Transcription-leg failures, by kind; the conversation is not affected.",
        series: Series::Values {
            key: "kind",
            values: SHADOW_ERROR_KINDS,
        },
    },
    Family {
        name: SHADOW_AUDIO,
        kind: Kind::Counter,
        unit: Unit::Seconds,
        help: "Audio sent to transcription legs (billed per minute by the leg's model).",
        series: Series::Unlabelled,
    },
    Family {
        name: RECORD_ERRORS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Session-record failures (--records-dir), by kind; the calls go on without their records.",
        series: Series::Values {
            key: "kind",
            values: RECORD_ERROR_KINDS,
        },
    },
    Family {
        name: TASKS_ACTIVE,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Tokio tasks alive in the sidecar's runtime, taken at each scrape (sessions, connections, tool calls, background closes); flat under steady load, growing only with a leak.",
        series: Series::Unlabelled,
    },
    Family {
        name: TRANSLATION_AUDIO,
        kind: Kind::Counter,
        // Seconds, counted in whole seconds (counters take integers); a `_seconds` unit is for
        // histograms here.
        unit: Unit::Count,
        help: "Seconds of audio sent to translation legs (silence included): what translation sessions are billed by.",
        series: Series::Unlabelled,
    },
    Family {
        name: TRANSLATION_LATENCY,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "A translation leg's first host audio to its first audible translated audio (once per leg).",
        series: Series::Unlabelled,
    },
];

/// The table entry for `name`.
pub fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

/// Registers help texts and units for every metric.
pub fn describe_all() {
    for f in FAMILIES {
        match f.kind {
            Kind::Counter => describe_counter!(f.name, f.unit, f.help),
            Kind::Gauge => describe_gauge!(f.name, f.unit, f.help),
            Kind::Histogram => describe_histogram!(f.name, f.unit, f.help),
        }
    }
}

/// Registers one series of the family `name` with the installed recorder, so it is exported (at zero)
/// before anything is recorded. Only registers a handle: no value is recorded, no observation made.
///
/// # Panics
/// If `name` is not in [`FAMILIES`].
pub fn register_series(name: &'static str, labels: &[(&'static str, &'static str)]) {
    let f = family(name).unwrap_or_else(|| panic!("{name} is not in FAMILIES"));
    let labels: Vec<Label> = labels.iter().map(|&(k, v)| Label::new(k, v)).collect();
    match f.kind {
        Kind::Counter => drop(counter!(f.name, labels)),
        Kind::Gauge => drop(gauge!(f.name, labels)),
        Kind::Histogram => drop(histogram!(f.name, labels)),
    }
}

/// Registers every series whose label values this crate knows ([`Series::Unlabelled`],
/// [`Series::Values`], [`Series::Sets`]).
pub fn register_known_series() {
    for f in FAMILIES {
        match f.series {
            Series::Unlabelled => register_series(f.name, &[]),
            Series::Values { key, values } => {
                for v in values {
                    register_series(f.name, &[(key, v)]);
                }
            }
            Series::Sets(sets) => {
                for labels in sets {
                    register_series(f.name, labels);
                }
            }
            Series::Session | Series::Open => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("could not start the Prometheus exporter on {addr}: {reason}")]
    Exporter { addr: SocketAddr, reason: String },
    #[error("could not listen for /metrics on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the Prometheus exporter on {addr} needs a Tokio runtime")]
    NoRuntime { addr: SocketAddr },
}

pub(crate) fn builder() -> PrometheusBuilder {
    let mut b = PrometheusBuilder::new();
    for name in [
        RESPONSE_LATENCY,
        SILENCE,
        TOOL_CALL_DURATION,
        UPSTREAM_CONNECT,
        SHADOW_SEGMENT_LATENCY,
        DEAD_AIR,
        PREAMBLE_TO_ANSWER,
        TRANSLATION_LATENCY,
    ] {
        b = b
            .set_buckets_for_metric(Matcher::Full(name.to_string()), LATENCY_BUCKETS)
            .expect("bucket list is non-empty");
    }
    b.set_buckets_for_metric(Matcher::Full(FRAME_PROCESSING.to_string()), FRAME_BUCKETS)
        .expect("bucket list is non-empty")
        .set_buckets_for_metric(Matcher::Full(HOST_STALL.to_string()), STALL_BUCKETS)
        .expect("bucket list is non-empty")
        .set_buckets_for_metric(Matcher::Full(ROLLOVER_GAP.to_string()), GAP_BUCKETS)
        .expect("bucket list is non-empty")
}

/// Installs the global recorder and serves `/metrics` on `addr` (needs a Tokio runtime).
///
/// Every family in [`FAMILIES`] is on the first scrape: the series this crate knows are registered
/// at zero here, the session crate's with `voice_session::register_metrics`, and families with no
/// series yet (tool-named labels) are listed by their `# HELP`/`# TYPE` lines
/// ([`crate::exposition::render`]).
pub fn install_prometheus(addr: SocketAddr) -> Result<(), TelemetryError> {
    // The listener and the upkeep task are spawned on the caller's runtime.
    tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime { addr })?;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|source| TelemetryError::Listen { addr, source })?;
    let handle = install_recorder().map_err(|e| match e {
        TelemetryError::Exporter { reason, .. } => TelemetryError::Exporter { addr, reason },
        other => other,
    })?;
    crate::exposition::spawn(listener, handle);
    Ok(())
}

/// Installs the global recorder without a listener and returns a handle (for tests and embedding).
/// Render with [`crate::exposition::render`] (the handle's own `render` leaves out families with no
/// series), and call `run_upkeep` on the handle periodically (as the listener above does).
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    let h = builder()
        .install_recorder()
        .map_err(|e| TelemetryError::Exporter {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: e.to_string(),
        })?;
    describe_all();
    crate::hot::pin_frame_metrics();
    register_known_series();
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_name_defined_here_is_in_the_table_once() {
        let defined: Vec<&str> = include_str!("metrics_def.rs")
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \"voice_"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        let in_table: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        assert_eq!(
            in_table.iter().collect::<HashSet<_>>().len(),
            in_table.len(),
            "a family is listed twice"
        );
        let mut a = defined.clone();
        let mut b = in_table.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "metric name constants and FAMILIES differ");
    }

    #[test]
    fn names_follow_the_prometheus_conventions() {
        for f in FAMILIES {
            match f.kind {
                Kind::Counter => assert!(f.name.ends_with("_total"), "{}", f.name),
                Kind::Gauge => assert!(!f.name.ends_with("_total"), "{}", f.name),
                Kind::Histogram => {}
            }
            if f.unit == Unit::Seconds {
                // A counter of seconds is `<name>_seconds_total`.
                let base = f.name.strip_suffix("_total").unwrap_or(f.name);
                assert!(base.ends_with("_seconds"), "{}", f.name);
            }
            assert!(!f.help.is_empty() && !f.help.contains('\n'), "{}", f.name);
        }
    }
}
