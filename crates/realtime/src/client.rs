//! The WebSocket connection to the Realtime API (or anything speaking it: Azure, a proxy, the simulator).
//!
//! `connect` performs the handshake with the right headers for the dialect, waits for `session.created`,
//! and hands back a connection whose `send` serializes typed events and whose `recv` yields typed
//! events. Secrets stay inside `ApiKey`; URLs and errors we produce never include the key.

use crate::client_events::ClientEvent;
use crate::server_events::{ParseError, ServerEvent};
use crate::{ApiKey, Dialect};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const DEFAULT_BASE_URL: &str = "wss://api.openai.com";

/// Event ids the sidecar gives its client events: `evt_vs_1`, `evt_vs_2`, ...
const EVENT_ID_PREFIX: &str = "evt_vs_";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `wss://api.openai.com`, `ws://127.0.0.1:8765`, ... A URL whose path already ends in `/realtime`
    /// is used as given (Azure-style deployments); otherwise `/v1/realtime` is appended.
    pub base_url: String,
    /// The model (conversation and translation sessions; a transcription session names its model in
    /// its `session.update`, not in the URL).
    pub model: String,
    /// Which kind of session the URL opens.
    pub intent: Intent,
    pub dialect: Dialect,
    pub api_key: ApiKey,
    pub connect_timeout: Duration,
    /// Largest server message accepted, in bytes.
    pub max_message_bytes: usize,
}

/// Which endpoint a connection opens: a conversation (`/v1/realtime?model=…`), a transcription
/// session (`/v1/realtime?intent=transcription`, no model) or a translation session
/// (`/v1/realtime/translations?model=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Intent {
    #[default]
    Conversation,
    Transcription,
    Translation,
}

#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    #[error("invalid realtime URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("could not connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("upstream rejected the connection with HTTP {status} at {url}")]
    Rejected { url: String, status: u16 },
    #[error("timed out after {0:?} waiting for the upstream")]
    Timeout(Duration),
    #[error("upstream closed the connection{}{}", .code.map(|c| format!(" (close code {c})")).unwrap_or_default(), .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed {
        /// The WebSocket close code upstream sent, if it sent a close frame (RFC 6455 §7.4).
        code: Option<u16>,
        reason: Option<String>,
    },
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream refused the session: {0}")]
    Refused(String),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

impl RealtimeError {
    /// Transient conditions worth a reconnect.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RealtimeError::Connect { .. }
                | RealtimeError::Timeout(_)
                | RealtimeError::Closed { .. }
        ) || matches!(self, RealtimeError::Rejected { status, .. } if *status == 429 || *status >= 500)
    }
}

/// Builds the full endpoint URL for a base URL and model.
pub fn endpoint_url(base_url: &str, model: &str) -> Result<String, RealtimeError> {
    intent_url(base_url, model, Intent::Conversation)
}

/// Builds the full endpoint URL for a base URL, model and session kind.
pub fn intent_url(base_url: &str, model: &str, intent: Intent) -> Result<String, RealtimeError> {
    let base = base_url.trim_end_matches('/');
    if !(base.starts_with("ws://") || base.starts_with("wss://")) {
        return Err(RealtimeError::BadUrl {
            url: base_url.to_string(),
            reason: "must start with ws:// or wss://".into(),
        });
    }
    let (path_part, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    let mut url = if path_part.ends_with("/realtime") {
        path_part.to_string()
    } else {
        format!("{path_part}/v1/realtime")
    };
    if intent == Intent::Translation {
        url.push_str("/translations");
    }
    let mut params: Vec<String> = query.map(|q| vec![q.to_string()]).unwrap_or_default();
    if intent == Intent::Transcription {
        params.push("intent=transcription".into());
    } else if !params.iter().any(|q| {
        q.split('&')
            .any(|kv| kv.starts_with("model=") || kv.starts_with("deployment="))
    }) {
        params.push(format!("model={}", urlencode(model)));
    }
    url.push('?');
    url.push_str(&params.join("&"));
    Ok(url)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How a connection's events travel: a WebSocket, or (for in-process tests of the layers above) a
/// pair of channels to a scripted peer.
enum Transport {
    Ws {
        sink: SplitSink<Ws, Message>,
        stream: SplitStream<Ws>,
    },
    Memory {
        tx: mpsc::Sender<String>,
        rx: mpsc::Receiver<PeerMessage>,
    },
}

/// What a [`MemoryPeer`] sends to its connection.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerMessage {
    /// A server event, as the JSON text upstream would send.
    Text(String),
    /// The peer closes the connection, with an optional close code and reason.
    Close {
        code: Option<u16>,
        reason: Option<String>,
    },
}

/// The far end of an in-memory connection: what a test scripts as "the upstream".
#[derive(Debug)]
pub struct MemoryPeer {
    /// Client events the connection sent, as JSON text.
    pub from_client: mpsc::Receiver<String>,
    /// Server events (or a close) for the connection.
    pub to_client: mpsc::Sender<PeerMessage>,
}

/// An open, initialized Realtime session.
pub struct RealtimeConnection {
    transport: Transport,
    dialect: Dialect,
    next_event: u64,
    /// The `session` object of `session.created`.
    pub initial_session: serde_json::Value,
}

impl std::fmt::Debug for RealtimeConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeConnection")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl RealtimeConnection {
    pub async fn connect(opts: &ConnectOptions) -> Result<RealtimeConnection, RealtimeError> {
        install_crypto_provider();
        let url = intent_url(&opts.base_url, &opts.model, opts.intent)?;
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| RealtimeError::BadUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let auth = format!("Bearer {}", opts.api_key.expose());
        let mut auth_value =
            http::HeaderValue::from_str(&auth).map_err(|_| RealtimeError::BadUrl {
                url: url.clone(),
                reason: "API key contains characters not allowed in an HTTP header".into(),
            })?;
        auth_value.set_sensitive(true);
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, auth_value);
        if opts.dialect == Dialect::Beta {
            req.headers_mut()
                .insert("OpenAI-Beta", http::HeaderValue::from_static("realtime=v1"));
        }
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(opts.max_message_bytes);
        config.max_frame_size = Some(opts.max_message_bytes);
        // tungstenite zero-fills its read buffer on every read; the 128 KiB default cost ~20% CPU and
        // ~128 KiB resident per session under load. Server events are small; 8 KiB is plenty.
        config.read_buffer_size = 8 * 1024;
        let fut = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
        let (ws, _resp) = match tokio::time::timeout(opts.connect_timeout, fut).await {
            Err(_) => return Err(RealtimeError::Timeout(opts.connect_timeout)),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                return Err(RealtimeError::Rejected {
                    url,
                    status: resp.status().as_u16(),
                })
            }
            Ok(Err(e)) => {
                return Err(RealtimeError::Connect {
                    url,
                    reason: e.to_string(),
                })
            }
            Ok(Ok(x)) => x,
        };
        let (sink, stream) = ws.split();
        let conn = RealtimeConnection {
            transport: Transport::Ws { sink, stream },
            dialect: opts.dialect,
            next_event: 0,
            initial_session: serde_json::Value::Null,
        };
        conn.handshake(opts.connect_timeout).await
    }

    /// A connection over channels to a scripted [`MemoryPeer`], not yet initialized: call
    /// [`RealtimeConnection::handshake`] (the peer must send `session.created` first, as upstream
    /// does). For in-process tests of the session layer.
    pub fn in_memory(dialect: Dialect) -> (RealtimeConnection, MemoryPeer) {
        let (client_tx, client_rx) = mpsc::channel(4096);
        let (peer_tx, peer_rx) = mpsc::channel(4096);
        let conn = RealtimeConnection {
            transport: Transport::Memory {
                tx: client_tx,
                rx: peer_rx,
            },
            dialect,
            next_event: 0,
            initial_session: serde_json::Value::Null,
        };
        let peer = MemoryPeer {
            from_client: client_rx,
            to_client: peer_tx,
        };
        (conn, peer)
    }

    /// Waits for `session.created`, the first event of every Realtime session.
    pub async fn handshake(
        mut self,
        timeout: Duration,
    ) -> Result<RealtimeConnection, RealtimeError> {
        let first = tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| RealtimeError::Timeout(timeout))??;
        match first {
            ServerEvent::SessionCreated { session } => {
                self.initial_session = session;
                Ok(self)
            }
            ServerEvent::Error { error } => Err(RealtimeError::Refused(format!(
                "{}: {}",
                error.code.unwrap_or(error.kind),
                error.message
            ))),
            other => Err(RealtimeError::Protocol(format!(
                "expected session.created first, got {}",
                other.kind()
            ))),
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn event_id(&mut self) -> String {
        self.next_event += 1;
        format!("{EVENT_ID_PREFIX}{}", self.next_event)
    }

    /// The `event_id` the next `send` will use (for events that must refer to their own id).
    pub fn next_event_id(&self) -> String {
        format!("{EVENT_ID_PREFIX}{}", self.next_event + 1)
    }

    /// Sends one event; returns the `event_id` it was given.
    pub async fn send(&mut self, ev: &ClientEvent) -> Result<String, RealtimeError> {
        let id = self.event_id();
        let text = match ev {
            ClientEvent::InputAudioAppend { audio } => {
                let mut text = String::new();
                crate::client_events::encode_append(audio, &id, &mut text);
                text
            }
            other => other.to_json(&id),
        };
        self.send_raw(text).await?;
        Ok(id)
    }

    /// Sends an `input_audio_buffer.append` built from wire bytes: the per-frame hot path. The event id
    /// and the base64 audio are written straight into the message text, which is allocated once at
    /// its exact size and handed to the socket without a copy.
    pub async fn send_audio(&mut self, audio: &[u8]) -> Result<(), RealtimeError> {
        self.next_event += 1;
        let mut text = String::new();
        crate::client_events::encode_append_numbered(
            audio,
            EVENT_ID_PREFIX,
            self.next_event,
            &mut text,
        );
        self.send_raw(text).await
    }

    /// Sends one event of a translation session; returns the `event_id` it was given.
    pub async fn send_translation(
        &mut self,
        ev: &crate::translation::TranslationClientEvent<'_>,
    ) -> Result<String, RealtimeError> {
        let id = self.event_id();
        self.send_raw(ev.to_json(&id)).await?;
        Ok(id)
    }

    /// Next server event of a translation session. Malformed JSON or a bad field is
    /// `RealtimeError::Parse` (the connection stays usable); an unknown type is `Other`.
    pub async fn recv_translation(
        &mut self,
    ) -> Result<crate::translation::TranslationServerEvent, RealtimeError> {
        let text = self.recv_text().await?;
        Ok(crate::translation::TranslationServerEvent::parse(&text)?)
    }

    async fn send_raw(&mut self, text: String) -> Result<(), RealtimeError> {
        match &mut self.transport {
            Transport::Ws { sink, .. } => {
                sink.send(Message::text(text))
                    .await
                    .map_err(|e| RealtimeError::Closed {
                        code: None,
                        reason: Some(e.to_string()),
                    })
            }
            Transport::Memory { tx, .. } => {
                tx.send(text).await.map_err(|_| RealtimeError::Closed {
                    code: None,
                    reason: Some("the peer is gone".into()),
                })
            }
        }
    }

    /// Next server event. Pings are answered by tungstenite; non-text frames are a protocol error. A
    /// close frame from upstream is answered with ours before the socket is dropped (RFC 6455 §5.5.1:
    /// otherwise upstream records an abnormal closure, 1006), and its code and reason are returned.
    pub async fn recv(&mut self) -> Result<ServerEvent, RealtimeError> {
        match self.recv_frame().await? {
            Text::Ws(t) => Ok(ServerEvent::parse(t.as_str())?),
            Text::Memory(t) => Ok(ServerEvent::parse(&t)?),
        }
    }

    /// Next server message as JSON text, unparsed: for sessions whose events are not conversation
    /// events (translation). Closes as [`RealtimeConnection::recv`] does.
    pub async fn recv_text(&mut self) -> Result<String, RealtimeError> {
        Ok(match self.recv_frame().await? {
            Text::Ws(t) => t.as_str().to_owned(),
            Text::Memory(t) => t,
        })
    }

    async fn recv_frame(&mut self) -> Result<Text, RealtimeError> {
        let stream = match &mut self.transport {
            Transport::Ws { stream, .. } => stream,
            Transport::Memory { rx, .. } => {
                return match rx.recv().await {
                    Some(PeerMessage::Text(t)) => Ok(Text::Memory(t)),
                    Some(PeerMessage::Close { code, reason }) => {
                        Err(RealtimeError::Closed { code, reason })
                    }
                    None => Err(RealtimeError::Closed {
                        code: None,
                        reason: None,
                    }),
                }
            }
        };
        let frame = loop {
            match stream.next().await {
                None => {
                    return Err(RealtimeError::Closed {
                        code: None,
                        reason: None,
                    })
                }
                Some(Err(e)) => {
                    return Err(RealtimeError::Closed {
                        code: None,
                        reason: Some(e.to_string()),
                    })
                }
                Some(Ok(Message::Text(t))) => return Ok(Text::Ws(t)),
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(Message::Binary(_))) => {
                    return Err(RealtimeError::Protocol("unexpected binary frame".into()))
                }
                Some(Ok(_)) => {} // ping, pong or a raw frame: keep reading
            }
        };
        // tungstenite queued the reply to upstream's close frame; closing the sink sends it.
        if let Transport::Ws { sink, .. } = &mut self.transport {
            let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
        }
        Err(RealtimeError::Closed {
            code: frame.as_ref().map(|f| u16::from(f.code)),
            reason: frame
                .map(|f| f.reason.to_string())
                .filter(|r| !r.is_empty()),
        })
    }

    /// Ends the session: a normal close frame (1000), then a brief wait for upstream's reply so the
    /// closing handshake completes (RFC 6455 §7.1.2).
    pub async fn close(&mut self) {
        match &mut self.transport {
            Transport::Ws { sink, stream } => {
                use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
                use tokio_tungstenite::tungstenite::protocol::CloseFrame;
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "session ended".into(),
                };
                if sink.send(Message::Close(Some(frame))).await.is_err() {
                    return;
                }
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    while let Some(Ok(m)) = stream.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
                let _ = sink.close().await;
            }
            Transport::Memory { rx, .. } => rx.close(),
        }
    }
}

/// A text frame as it arrived (no copy for the WebSocket's own buffer).
enum Text {
    Ws(tokio_tungstenite::tungstenite::Utf8Bytes),
    Memory(String),
}

/// How long a closing handshake may take before the socket is dropped anyway.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

fn install_crypto_provider() {
    // Several crates may race to install one; whoever wins, a provider is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            endpoint_url("wss://api.openai.com", "gpt-realtime").unwrap(),
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        );
        assert_eq!(
            endpoint_url("ws://127.0.0.1:9/", "a b").unwrap(),
            "ws://127.0.0.1:9/v1/realtime?model=a%20b"
        );
        assert_eq!(
            endpoint_url(
                "wss://x.openai.azure.com/openai/realtime?api-version=1&deployment=d",
                "m"
            )
            .unwrap(),
            "wss://x.openai.azure.com/openai/realtime?api-version=1&deployment=d"
        );
        assert!(endpoint_url("https://api.openai.com", "m").is_err());
    }

    #[test]
    fn companion_urls() {
        assert_eq!(
            intent_url("wss://api.openai.com", "ignored", Intent::Transcription).unwrap(),
            "wss://api.openai.com/v1/realtime?intent=transcription"
        );
        assert_eq!(
            intent_url(
                "wss://api.openai.com/",
                "gpt-realtime-translate",
                Intent::Translation
            )
            .unwrap(),
            "wss://api.openai.com/v1/realtime/translations?model=gpt-realtime-translate"
        );
        assert_eq!(
            intent_url("ws://127.0.0.1:9/v1/realtime", "m", Intent::Translation).unwrap(),
            "ws://127.0.0.1:9/v1/realtime/translations?model=m"
        );
    }

    #[tokio::test]
    async fn refused_connection_is_typed_and_hides_the_key() {
        let opts = ConnectOptions {
            base_url: "ws://127.0.0.1:1".into(),
            model: "m".into(),
            intent: Intent::Conversation,
            dialect: Dialect::Ga,
            api_key: ApiKey::new("sk-very-secret").unwrap(),
            connect_timeout: Duration::from_secs(2),
            max_message_bytes: 1 << 20,
        };
        let err = RealtimeConnection::connect(&opts).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        let text = format!("{err} {err:?} {opts:?}");
        assert!(!text.contains("sk-very-secret"), "{text}");
    }
}
