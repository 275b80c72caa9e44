//! The transcription leg ("GPT Realtime Whisper"): a second upstream session with
//! `intent=transcription` fed the same wire audio as the conversation, for a transcript to trust —
//! the shadow of a conversation (`SessionStart.shadow_transcription`) or the whole of a
//! `SESSION_KIND_TRANSCRIPTION` session.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`plan`] | `LegPlan`: the leg's validated settings and its `session.update` |

pub mod plan;

pub use plan::LegPlan;
