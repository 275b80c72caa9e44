//! Translation sessions ("GPT Realtime Translate"): `SESSION_KIND_TRANSLATION` (host audio in, the
//! host's words translated into `target_language` out, as audio in the host's output format and as
//! transcripts) and `SESSION_KIND_INTERPRETER` (two such legs, one per direction, the host's frames
//! routed by `AudioFrame.speaker` and each leg's output tagged with the speaker whose words it
//! carries).
//!
//! The protocol is not the conversation's: no turns, responses or tools; input goes up as 24 kHz
//! PCM16 in 200 ms appends, with silence while the host is quiet; the end is `session.close` and a
//! drain until `session.closed`. The model reports no usage: the sidecar meters the audio it sends
//! (per-minute price) into the session's cost and budget.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`plan`] | `TranslationPlan`: target language(s), model, source transcription, price and budget, validated from `SessionStart`; each leg's `session.update` |
//! | [`leg`] | one leg's task: its upstream socket, 200 ms chunking and silence clock, output conversion, transcripts, reconnect, close and drain |
//! | [`runner`] | the session's task: host stream, input conversion and routing by speaker, metering, the end |

pub mod leg;
pub mod plan;
pub mod runner;

pub use plan::{LegPlan, TranslationPlan};
