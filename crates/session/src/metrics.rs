//! The label values this crate owns, registered at zero at startup ([`register_metrics`]) so their
//! series are on the first scrape: session outcomes, host and upstream error codes, silence phases,
//! audio anomaly kinds. Each list is the one the recording code uses, not a copy of it.
//!
//! The families themselves (names, types, help texts, and the label values the telemetry crate
//! owns) are in `voice_telemetry::FAMILIES`.

use crate::audio_check::Anomaly;
use crate::conversation::{bounded_code, End, UPSTREAM_ERROR_CODES, UPSTREAM_ERROR_OTHER};
use crate::dead_air::Phase;
use crate::error::Code;
use voice_realtime::RealtimeError;
use voice_telemetry::{self as names, register_series};

/// `voice_sessions_total{outcome}` of a session whose setup failed (audio formats or the upstream).
pub const SETUP_FAILED: &str = "setup_failed";
/// `voice_upstream_errors_total{code}`: an upstream event that did not parse.
pub const BAD_EVENT: &str = "bad_event";
/// `voice_upstream_errors_total{code}`: the upstream link was lost for good.
pub const DISCONNECTED: &str = "disconnected";
/// The codes a failed session setup counts in `voice_upstream_errors_total{code}` (`session.rs`
/// counts the setup error's own code: audio pipelines, then `upstream::open`).
pub const SETUP_CODES: &[Code] = &[
    Code::InvalidAudioFormat,
    Code::UpstreamConnect,
    Code::UpstreamRejectedSession,
    Code::UpstreamTimeout,
];

/// One `End` of each kind, for their `reason()` strings (the `voice_sessions_total` outcomes).
fn every_end() -> [End; 11] {
    let ends = [
        End::MessageTooLarge,
        End::BadMessage,
        End::HostClosed,
        End::HostRequested,
        End::HostGone,
        End::Shutdown,
        End::Budget,
        End::MaxDuration,
        End::HostStalled,
        End::Upstream(RealtimeError::Closed {
            code: None,
            reason: None,
        }),
        End::Upstream(RealtimeError::Protocol(String::new())),
    ];
    // A new `End` variant fails to compile here until it is added above.
    for e in &ends {
        match e {
            End::MessageTooLarge
            | End::BadMessage
            | End::HostClosed
            | End::HostRequested
            | End::HostGone
            | End::Shutdown
            | End::Budget
            | End::MaxDuration
            | End::HostStalled
            | End::Upstream(_) => {}
        }
    }
    ends
}

/// Every `voice_sessions_total{outcome}` value.
pub fn session_outcomes() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = every_end().iter().map(End::reason).collect();
    v.push(SETUP_FAILED);
    v
}

/// Every `voice_upstream_errors_total{code}` value.
pub fn upstream_error_codes() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = UPSTREAM_ERROR_CODES
        .iter()
        .map(|c| bounded_code(c))
        .collect();
    v.extend([UPSTREAM_ERROR_OTHER, BAD_EVENT, DISCONNECTED]);
    v.extend(SETUP_CODES.iter().map(|c| c.as_str()));
    v
}

/// Registers, at zero, every series whose label values this crate owns. Call right after installing
/// the exporter (`voice_telemetry::install_prometheus`); without a recorder it does nothing.
pub fn register_metrics() {
    for outcome in session_outcomes() {
        register_series(names::SESSIONS_TOTAL, &[("outcome", outcome)]);
    }
    for code in Code::ALL {
        register_series(names::HOST_ERRORS, &[("code", code.as_str())]);
    }
    for code in upstream_error_codes() {
        register_series(names::UPSTREAM_ERRORS, &[("code", code)]);
    }
    for phase in Phase::ALL {
        register_series(names::SILENCE, &[("phase", phase.as_str())]);
    }
    for kind in Anomaly::ALL {
        register_series(names::AUDIO_ANOMALIES, &[("kind", kind.as_str())]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn outcomes_and_codes_are_distinct_and_bounded() {
        for list in [session_outcomes(), upstream_error_codes()] {
            let unique: HashSet<_> = list.iter().collect();
            assert_eq!(unique.len(), list.len(), "{list:?}");
        }
        assert!(session_outcomes().contains(&"client_end"));
        assert!(session_outcomes().contains(&"host_stalled"));
        assert!(session_outcomes().contains(&SETUP_FAILED));
        // Unknown codes are counted as "other", which is registered.
        assert!(upstream_error_codes().contains(&bounded_code("no_such_code")));
        assert!(upstream_error_codes().contains(&Code::UpstreamTimeout.as_str()));
    }

    #[test]
    fn the_families_named_here_are_session_owned_in_the_table() {
        for name in [
            names::SESSIONS_TOTAL,
            names::HOST_ERRORS,
            names::UPSTREAM_ERRORS,
            names::SILENCE,
            names::AUDIO_ANOMALIES,
        ] {
            assert_eq!(
                names::family(name).map(|f| f.series),
                Some(names::Series::Session),
                "{name}"
            );
        }
        let session_owned = names::FAMILIES
            .iter()
            .filter(|f| f.series == names::Series::Session)
            .count();
        assert_eq!(
            session_owned, 5,
            "a Series::Session family is not registered here"
        );
    }

    #[test]
    fn every_end_reason_is_listed_in_the_proto() {
        let proto = include_str!("../../../proto/voice/v1/sidecar.proto");
        let from = proto.find("message SessionEnded {").expect("SessionEnded");
        let doc = &proto[from..from + proto[from..].find("string reason").expect("reason")];
        for e in every_end() {
            assert!(
                doc.contains(&format!("\"{}\"", e.reason())),
                "{} is not in SessionEnded's reason comment",
                e.reason()
            );
        }
    }

    #[test]
    fn registering_without_a_recorder_is_harmless() {
        register_metrics();
    }
}
