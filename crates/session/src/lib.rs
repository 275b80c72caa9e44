//! Per-call orchestration: one `Converse` stream becomes one upstream Realtime session.
//!
//! Data flows one way through here: host messages → audio pipeline → realtime client, and upstream
//! events → audio pipeline → host messages. One task per session ([`session`]) owns every socket and
//! timer and routes what arrives to the [`conversation`], which hands each event to the state machine
//! that owns it and answers with actions in an [`outbox`]; the loop performs them. Every rule worth
//! testing is a pure machine in its own module.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`session`] | the loop: host stream, upstream link, reconnect attempt, tool futures, timer; performs the outbox |
//! | [`conversation`] | routing of every event to the machines below; context carried across reconnects |
//! | [`outbox`] | the actions the logic asks the loop to perform |
//! | [`rollover`] | long calls: when to open the standby upstream session and switch to it (natural pause or forced), the host-set call limit |
//! | [`upstream`] | opening an upstream session within the setup timeout; reconnect `State` machine with jittered exponential backoff |
//! | [`scheduler`] | the one active response; every `response.create` (queued, retried, failed, timed out) |
//! | [`tool_calls`] | a tool call's whole lifecycle: refused, started, finished, timed out, late, orphaned, cancelled — one ending path |
//! | [`rounds`] | which calls belong to which response; exactly one `response.create` per round |
//! | [`tools`] | declared tools and schemas, callback RPCs, turning any answer into one output |
//! | [`barge_in`] | whether speech interrupts, and the cancel / truncate / flush plan |
//! | [`playout`] | pacing of assistant audio and the played position of each item |
//! | [`dead_air`] | silence spans after the user's turn and during tool calls; the silence guard |
//! | [`audio_check`] | near-silent or clipped assistant audio |
//! | [`budget`] | estimated cost and the session budget |
//! | [`translation`] | TRANSLATION and INTERPRETER sessions: their plan, one task per leg, the runner |
//! | [`records`] | the session record file (`--records-dir`): JSON lines appended off the session's task |
//! | [`summary`] | the session's figures for `SessionEnded.summary` |
//! | [`error`] | every error code a host can receive (`Code`, checked against the proto) |
//! | [`metrics`] | the metric label values this crate owns, registered at zero at startup |
//! | [`plan`] | validating `SessionStart` into a `SessionPlan`; the bounds on what a start may cost |
//! | [`callback_allow`] | which tool-host addresses a session may name (`--tool-host-allow`) |
//! | [`limits`] | per-session limits: tool rounds per turn, create and Control rates, input audio real time, repeated warnings |
//! | [`labels`] | host metric labels with bounded cardinality |

pub mod assistant_items;
pub mod audio_check;
pub mod barge_in;
pub mod budget;
pub mod callback_allow;
pub mod conversation;
pub mod dead_air;
pub mod error;
pub mod labels;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod plan;
pub mod playout;
pub mod records;
pub mod rollover;
pub mod rounds;
pub mod scheduler;
pub mod session;
pub mod session_fields;
pub mod summary;
pub mod tool_calls;
pub mod tools;
pub mod transcription;
pub mod translation;
pub mod upstream;

pub use callback_allow::CallbackAllowlist;
pub use error::{Code, HostError};
pub use limits::Limits;
pub use metrics::register_metrics;
pub use plan::{Defaults, Prices, SessionPlan, StartError, StartLimits};
pub use rollover::RolloverPolicy;
pub use session::{run_session, SessionContext, UpstreamSettings};
pub use tools::ToolChannels;
pub use upstream::{Connect, Policy as ReconnectPolicy, WebSocketConnector};
