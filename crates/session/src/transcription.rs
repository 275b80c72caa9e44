//! The transcription leg ("GPT Realtime Whisper"): a second upstream session with
//! `intent=transcription` fed the same input audio as the conversation, for a transcript to trust —
//! the shadow of a conversation (`SessionStart.shadow_transcription`) or the whole of a
//! `SESSION_KIND_TRANSCRIPTION` session.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`plan`] | `LegPlan`: the leg's validated settings and its `session.update` |
//! | [`leg`] | the handle the session feeds, and the task that owns the leg's socket (commits, offsets, reconnects) |
//! | [`segmenter`] | where a segment ends when no turn detection says so (energy, hangover, cap) |
//! | [`runner`] | a transcription-only session: host audio in, the leg's transcripts out |

pub mod leg;
pub mod plan;
pub mod runner;
pub mod segmenter;

pub use leg::{Leg, LegEvent, LegSettings};
pub use plan::LegPlan;
