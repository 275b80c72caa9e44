//! Audio conversion between what a host application speaks (PCM16 at 8–48 kHz, G.711, Opus; mono
//! or stereo) and what goes on the OpenAI Realtime WebSocket (PCM16 24 kHz or G.711 8 kHz, mono).
//!
//! The session layer validates the host format with [`HostFormat::normalized`], picks the wire
//! format with [`wire_format_for`], and then streams frames through an [`InputPipeline`] (host →
//! model) and an [`OutputPipeline`] (model → host). All state that must survive frame boundaries
//! (resampler history, Opus decoder/encoder) lives in the pipelines, so frame sizes never affect
//! the audio.

pub mod error;
pub mod format;
pub mod g711;
pub mod opus;
pub mod pcm;
pub mod pipeline;
pub mod resample;
pub mod signal;

pub use error::AudioError;
pub use format::{wire_format_for, Codec, HostFormat, WireFormat};
pub use pipeline::{InputPipeline, OutFrame, OutputPipeline};
pub use resample::StreamResampler;

#[cfg(test)]
mod interop_tests;
#[cfg(test)]
#[allow(clippy::needless_range_loop)] // small fixed-size matrix code reads better with indices
pub(crate) mod test_util;
