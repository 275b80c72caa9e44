//! Telemetry: the one list of metric names (with help texts and histogram buckets), the Prometheus
//! exporter, and tracing-subscriber setup.
//!
//! Every family is on `/metrics` from the first scrape ([`FAMILIES`]: registered at zero where the
//! label values are known, `# HELP`/`# TYPE` alone where hosts name them; see [`exposition`]).
//!
//! Metric names live here and nowhere else so dashboards, alerts and code cannot drift apart. Labels
//! are low-cardinality by construction: callers pass values from small fixed sets (direction, phase,
//! outcome, declared tool names), never session or call ids.

pub mod exposition;
pub mod hot;
pub mod metrics_def;
pub mod tracing_setup;

pub use hot::{count_frame, record_frame_processing, Direction};
pub use metrics_def::*;
pub use tracing_setup::{init_tracing, LogFormat};
