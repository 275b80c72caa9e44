//! Pre-resolved handles for the per-frame metrics.
//!
//! `counter!`/`histogram!` with labels build a key, hash it and look it up in the recorder's registry
//! on every call. The audio path records three metrics per frame in each direction, so those handles
//! are resolved once, right after the global recorder is installed, and reused. Before that (or in
//! processes that never install one, such as unit tests) the macros are used, so nothing is pinned to
//! a no-op recorder by accident.

use crate::metrics_def::{AUDIO_BYTES, AUDIO_FRAMES, FRAME_PROCESSING};
use metrics::{counter, histogram, Counter, Histogram};
use std::sync::OnceLock;

/// Audio direction, relative to the host: `In` is host → model, `Out` is model → host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

struct FrameMetrics {
    frames: [Counter; 2],
    bytes: [Counter; 2],
    processing: [Histogram; 2],
}

impl FrameMetrics {
    fn resolve() -> FrameMetrics {
        let dirs = [Direction::In, Direction::Out];
        FrameMetrics {
            frames: dirs.map(|d| counter!(AUDIO_FRAMES, "direction" => d.as_str())),
            bytes: dirs.map(|d| counter!(AUDIO_BYTES, "direction" => d.as_str())),
            processing: dirs.map(|d| histogram!(FRAME_PROCESSING, "direction" => d.as_str())),
        }
    }
}

static FRAME_METRICS: OnceLock<FrameMetrics> = OnceLock::new();

/// Resolves the handles against the recorder installed now (called by the `install_*` functions).
pub(crate) fn pin_frame_metrics() {
    FRAME_METRICS.get_or_init(FrameMetrics::resolve);
}

/// Counts one audio frame of `bytes` bytes (`voice_audio_frames_total`, `voice_audio_bytes_total`).
#[inline]
pub fn count_frame(dir: Direction, bytes: usize) {
    match FRAME_METRICS.get() {
        Some(m) => {
            m.frames[dir.index()].increment(1);
            m.bytes[dir.index()].increment(bytes as u64);
        }
        None => {
            counter!(AUDIO_FRAMES, "direction" => dir.as_str()).increment(1);
            counter!(AUDIO_BYTES, "direction" => dir.as_str()).increment(bytes as u64);
        }
    }
}

/// Records the time spent inside the sidecar on one frame (`voice_frame_processing_seconds`).
#[inline]
pub fn record_frame_processing(dir: Direction, secs: f64) {
    match FRAME_METRICS.get() {
        Some(m) => m.processing[dir.index()].record(secs),
        None => histogram!(FRAME_PROCESSING, "direction" => dir.as_str()).record(secs),
    }
}
