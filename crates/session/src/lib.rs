//! Per-call orchestration: one `Converse` stream becomes one upstream Realtime session.
//!
//! Data flows one way through here: host messages → audio pipeline → realtime client, and upstream
//! events → audio pipeline → host messages. The pieces with rules worth testing on their own are pure
//! state machines in their own modules (`scheduler`, `rounds`, `playout`, `dead_air`); `session` wires
//! them to the sockets.

pub mod audio_check;
pub mod dead_air;
pub mod plan;
pub mod playout;
pub mod rounds;
pub mod scheduler;
pub mod session;
pub mod tools;

pub use plan::{Defaults, Prices, SessionPlan, StartError};
pub use session::{run_session, SessionContext, UpstreamSettings};
pub use tools::ToolChannels;
