//! The OpenAI Realtime API as the sidecar speaks it: the two protocol dialects, typed client and server
//! events, the session configuration builder and the WebSocket client.

pub mod dialect;

pub use dialect::{Dialect, WireAudioFormat};
