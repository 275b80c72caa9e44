//! `voice-realtime-sim`: an offline WebSocket server that speaks the OpenAI Realtime API (GA and beta
//! dialects) faithfully enough for the sidecar's flows — session setup, energy VAD turns, synthesized
//! speech-like responses with transcripts, scripted (parallel) tool calls, barge-in, cancel/truncate,
//! strict validation with upstream-style `error` events, and fault injection. Beside conversations
//! it serves the two companion session kinds: transcription sessions
//! (`/v1/realtime?intent=transcription`, GA dialect) and translation sessions
//! (`/v1/realtime/translations?model=gpt-realtime-translate`), with the same fault knobs.
//!
//! It is the default backend without an API key, the backend of every test and the far end of load
//! benchmarks, so each session is one task with a handful of counters and no per-response buffers.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use voice_realtime_sim::{ScriptStep, SimConfig, SimServer};
//! let config = SimConfig { script: vec![ScriptStep::say("Hi there!")], ..Default::default() };
//! let sim = SimServer::bind("127.0.0.1:0".parse().unwrap(), config).await?;
//! println!("{}/v1/realtime?model=gpt-realtime", sim.base_url());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod companion;
mod config;
mod error;
mod ledger;
/// G.711 comes from the audio crate (the design lets the simulator depend on `audio`).
pub use voice_audio::g711;
mod protocol;
mod server;
mod session;
mod session_config;
pub mod synth;
mod transcription;
mod translation;
pub mod vad;

pub use config::{ScriptStep, ScriptToolCall, SimConfig};
pub use error::{HandshakeError, ProtocolError};
pub use ledger::{ClosedBy, LedgerSummary, Unanswered};
pub use server::{
    CloseRecord, LoggedClientEvent, SeedRecord, SessionKind, SimHandle, SimServer, SimStats,
    SimStatsSource, Truncation,
};
pub use translation::OUTPUT_LANGUAGES as TRANSLATION_OUTPUT_LANGUAGES;
pub use voice_realtime::{Dialect, WireAudioFormat};
