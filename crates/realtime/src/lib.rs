//! The OpenAI Realtime API as the sidecar speaks it: the two protocol dialects, typed client and server
//! events, the session configuration builder and the WebSocket client.
//!
//! Nothing here knows about gRPC or host audio formats: this crate is the upstream edge only.

pub mod client;
pub mod client_events;
pub mod dialect;
pub mod models;
pub mod secret;
pub mod server_events;
pub mod session_config;
pub mod translation;

pub use client::{
    ConnectOptions, Intent, MemoryPeer, PeerMessage, RealtimeConnection, RealtimeError,
};
pub use client_events::ClientEvent;
pub use dialect::{Dialect, WireAudioFormat};
pub use secret::ApiKey;
pub use server_events::{ApiError, Item, Logprob, ParseError, ResponseInfo, ServerEvent, Usage};
pub use session_config::{
    session_update_diff, SessionConfig, ToolSpec, Transcription, TurnDetection,
};
pub use translation::{TranslationClientEvent, TranslationServerEvent};
