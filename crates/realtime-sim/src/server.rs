//! The listening side: binds the socket, accepts connections into per-session tasks, performs the
//! WebSocket handshake and routes each upgrade to its session kind (`/v1/realtime?model=` →
//! conversation, `/v1/realtime?intent=transcription` → transcription, `/v1/realtime/translations?model=`
//! → translation), owns the shared counters and opt-in logs, and shuts everything down on request (or
//! when the handle is dropped).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use voice_realtime::Dialect;

use crate::config::SimConfig;
use crate::error::HandshakeError;
use crate::ledger::{Ledger, LedgerSummary};
use crate::{session, transcription, translation};

/// Which kind of Realtime session a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionKind {
    /// `GET /v1/realtime?model=…`: speech-to-speech conversation (both dialects).
    Conversation,
    /// `GET /v1/realtime?intent=transcription` (no `model`): listen-only transcription, GA dialect.
    Transcription,
    /// `GET /v1/realtime/translations?model=gpt-realtime-translate`: continuous speech translation.
    Translation,
}

/// A snapshot of the simulator's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SimStats {
    /// TCP connections accepted (including rejected handshakes).
    pub connections: u64,
    /// Upgrades refused (bad path, missing model, bad key) or that failed mid-handshake.
    pub rejected_handshakes: u64,
    pub sessions_active: u64,
    /// Client WebSocket messages received (text and binary).
    pub events_in: u64,
    /// Server events sent.
    pub events_out: u64,
    /// `error` events sent.
    pub errors_sent: u64,
    pub responses: u64,
    pub responses_cancelled: u64,
    pub truncations: u64,
    /// `conversation.item.input_audio_transcription.completed` events of transcription sessions.
    pub transcriptions: u64,
    /// 200 ms output frames of translation sessions.
    pub translation_frames: u64,
    /// Responses cancelled because the user started speaking (barge-ins upstream saw).
    pub responses_interrupted: u64,
    /// Sockets dropped and `server_error` events sent by fault injection.
    pub drops_injected: u64,
    pub errors_injected: u64,
    /// Function calls issued.
    pub tool_calls: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub connections: AtomicU64,
    pub rejected_handshakes: AtomicU64,
    pub sessions_active: AtomicU64,
    pub events_in: AtomicU64,
    pub events_out: AtomicU64,
    pub errors_sent: AtomicU64,
    pub responses: AtomicU64,
    pub responses_cancelled: AtomicU64,
    pub truncations: AtomicU64,
    pub transcriptions: AtomicU64,
    pub translation_frames: AtomicU64,
    pub responses_interrupted: AtomicU64,
    pub drops_injected: AtomicU64,
    pub errors_injected: AtomicU64,
    pub tool_calls: AtomicU64,
}

/// A client event as received (when `record_client_events` is on). Unparseable text is kept as a
/// JSON string (first 4,096 characters).
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedClientEvent {
    pub session_id: String,
    pub kind: SessionKind,
    pub event: serde_json::Value,
}

/// An accepted `conversation.item.truncate` (always recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub session_id: String,
    pub item_id: String,
    pub content_index: u64,
    pub audio_end_ms: u64,
}

/// How a session's WebSocket ended (always recorded): who closed it, and whether the closing
/// handshake completed (RFC 6455 §7) — a peer that drops the socket without a close frame is what
/// upstream records as 1006 (abnormal closure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRecord {
    pub session_id: String,
    pub kind: SessionKind,
    /// True when the simulator closed first (session cap, a translation's `session.close`), false
    /// when the client did.
    pub by_server: bool,
    /// The close code in the client's close frame (its own close, or its reply to ours); `None`
    /// when the client sent none (abnormal closure).
    pub client_code: Option<u16>,
    pub client_reason: String,
}

/// What a session was seeded with: the items the client created before its first input audio or
/// `response.create` (always recorded), and the instructions in force then. A rollover or a
/// reconnect carries the conversation into a new session this way.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedRecord {
    pub session_id: String,
    pub instructions: String,
    pub items: Vec<serde_json::Value>,
}

pub(crate) struct Shared {
    pub config: SimConfig,
    pub counters: Counters,
    log: Mutex<VecDeque<LoggedClientEvent>>,
    truncations: Mutex<VecDeque<Truncation>>,
    closes: Mutex<VecDeque<CloseRecord>>,
    seeds: Mutex<VecDeque<SeedRecord>>,
    ledger: Option<Mutex<Ledger>>,
    /// Client events refused with an `error` event, by code (at most 64 codes).
    client_errors: Mutex<std::collections::BTreeMap<String, u64>>,
}

fn push_bounded<T>(m: &Mutex<VecDeque<T>>, cap: usize, v: T) {
    // A poisoned lock only means another session panicked mid-push; the log is still usable.
    let mut q = m.lock().unwrap_or_else(PoisonError::into_inner);
    if q.len() >= cap.max(1) {
        q.pop_front();
    }
    q.push_back(v);
}

impl Shared {
    pub fn record(&self, e: LoggedClientEvent) {
        push_bounded(&self.log, self.config.log_capacity, e);
    }

    pub fn record_truncation(&self, t: Truncation) {
        push_bounded(&self.truncations, self.config.log_capacity, t);
    }

    pub fn record_close(&self, c: CloseRecord) {
        push_bounded(&self.closes, self.config.log_capacity, c);
    }

    pub fn record_seed(&self, s: SeedRecord) {
        push_bounded(&self.seeds, self.config.log_capacity, s);
    }

    pub fn record_client_error(&self, code: &str) {
        let mut m = self
            .client_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(code) {
            *n += 1;
        } else if m.len() < 64 {
            m.insert(code.to_owned(), 1);
        }
    }

    /// Runs `f` on the tool ledger, when it is kept.
    pub fn ledger(&self, f: impl FnOnce(&mut Ledger)) {
        if let Some(l) = &self.ledger {
            f(&mut l.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }
}

/// Entry point: `SimServer::bind(addr, config)`.
pub struct SimServer;

impl SimServer {
    /// Binds `addr` (port 0 for an ephemeral port) and starts serving in the background.
    pub async fn bind(addr: SocketAddr, config: SimConfig) -> std::io::Result<SimHandle> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            log: Mutex::new(VecDeque::new()),
            truncations: Mutex::new(VecDeque::new()),
            closes: Mutex::new(VecDeque::new()),
            seeds: Mutex::new(VecDeque::new()),
            ledger: config.tool_ledger.then(|| Mutex::new(Ledger::default())),
            client_errors: Mutex::default(),
            config,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        tracing::info!(%local_addr, "realtime simulator listening");
        Ok(SimHandle {
            local_addr,
            shared,
            stop: stop_tx,
            task,
        })
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            // Err means the handle was dropped: stop as if shut down.
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    sessions.spawn(run(stream, shared.clone(), stop.clone()));
                }
                Err(e) => {
                    // Usually fd exhaustion under load; back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), drain)
        .await
        .is_err()
    {
        sessions.abort_all();
    }
}

/// A running simulator. Dropping it stops the server too; call [`SimHandle::shutdown`] to wait for that.
pub struct SimHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SimHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `ws://HOST:PORT` (an unspecified bind address is reported as loopback). Clients connect to
    /// `{base_url}/v1/realtime?model=NAME`.
    pub fn base_url(&self) -> String {
        let mut addr = self.local_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("ws://{addr}")
    }

    /// Full URL for a model, e.g. `ws://127.0.0.1:PORT/v1/realtime?model=gpt-realtime`.
    pub fn realtime_url(&self, model: &str) -> String {
        format!("{}/v1/realtime?model={model}", self.base_url())
    }

    /// `ws://127.0.0.1:PORT/v1/realtime?intent=transcription`, a transcription session (GA dialect).
    pub fn transcription_url(&self) -> String {
        format!("{}/v1/realtime?intent=transcription", self.base_url())
    }

    /// `ws://127.0.0.1:PORT/v1/realtime/translations?model=MODEL`, a translation session.
    pub fn translation_url(&self, model: &str) -> String {
        format!("{}/v1/realtime/translations?model={model}", self.base_url())
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Stops accepting, closes every session with a close frame and waits (at most ~2 s) for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    pub fn stats(&self) -> SimStats {
        self.stats_source().stats()
    }

    /// The tool ledger's totals (`None` unless `tool_ledger` is on).
    pub fn ledger(&self) -> Option<LedgerSummary> {
        self.stats_source().ledger()
    }

    /// A reader of the counters and the ledger that outlives [`SimHandle::shutdown`] (to report
    /// on every session once all are closed).
    pub fn stats_source(&self) -> SimStatsSource {
        SimStatsSource(self.shared.clone())
    }

    /// Client events received by all sessions, oldest first (empty unless `record_client_events`).
    pub fn events_log(&self) -> Vec<LoggedClientEvent> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// What each session was seeded with, in the order their seeding ended.
    pub fn seeds(&self) -> Vec<SeedRecord> {
        self.shared
            .seeds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// How sessions' sockets ended, oldest first.
    pub fn closes(&self) -> Vec<CloseRecord> {
        self.shared
            .closes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Accepted truncations across all sessions, oldest first.
    pub fn truncations(&self) -> Vec<Truncation> {
        self.shared
            .truncations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// Where an accepted upgrade goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Conversation { dialect: Dialect, model: String },
    Transcription,
    Translation { model: String },
}

/// Query parameter `name` (first occurrence; empty values count as absent).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The translation models: `gpt-realtime-translate` and its dated snapshots.
fn is_translation_model(model: &str) -> bool {
    model == "gpt-realtime-translate" || model.starts_with("gpt-realtime-translate-")
}

/// Validates the upgrade request and picks the session kind. A `model` on `/v1/realtime` always makes
/// a conversation session, even beside `intent=transcription` (upstream's realtime-transcription guide:
/// "a model-based URL creates a conversation session").
fn check_request(req: &Request, config: &SimConfig) -> Result<Route, HandshakeError> {
    let uri = req.uri();
    let query = uri.query().unwrap_or_default();
    let model = query_param(query, "model");
    let beta = req
        .headers()
        .get("openai-beta")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == "realtime=v1"));
    let route = match uri.path() {
        "/v1/realtime" => match (model, query_param(query, "intent")) {
            (Some(m), _) => Route::Conversation {
                dialect: if beta { Dialect::Beta } else { Dialect::Ga },
                model: m.to_owned(),
            },
            (None, Some("transcription")) if beta => return Err(HandshakeError::BetaTranscription),
            (None, Some("transcription")) => Route::Transcription,
            (None, Some(other)) => return Err(HandshakeError::InvalidIntent(other.to_owned())),
            (None, None) => return Err(HandshakeError::MissingModel),
        },
        "/v1/realtime/translations" => match model {
            Some(m) if is_translation_model(m) => Route::Translation {
                model: m.to_owned(),
            },
            Some(m) => return Err(HandshakeError::InvalidModel(m.to_owned())),
            None => return Err(HandshakeError::MissingModel),
        },
        other => return Err(HandshakeError::NotFound(other.to_owned())),
    };
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or(HandshakeError::Unauthorized)?;
    if config
        .api_key
        .as_deref()
        .is_some_and(|expected| expected != key)
    {
        return Err(HandshakeError::Unauthorized);
    }
    Ok(route)
}

fn error_response(e: &HandshakeError) -> ErrorResponse {
    let body =
        json!({"error": {"type": "invalid_request_error", "code": null, "message": e.to_string()}});
    let mut r = ErrorResponse::new(Some(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Decrements the active-session gauge however the task ends.
struct ActiveGuard(Arc<Shared>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.counters.sessions_active.fetch_sub(1, Relaxed);
    }
}

/// Serves one TCP connection to completion: the handshake, then the routed session kind.
// The handshake callback's error type is fixed by tungstenite.
#[allow(clippy::result_large_err)]
async fn run(stream: TcpStream, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let ordinal = shared.counters.connections.fetch_add(1, Relaxed) + 1;
    let _ = stream.set_nodelay(true);
    // The socket limit sits above the protocol limit so oversized messages get an error event.
    let limit = shared
        .config
        .max_message_bytes
        .saturating_mul(2)
        .max(1 << 20);
    // An 8 KiB read buffer instead of tungstenite's 128 KiB: each read zero-fills the spare
    // capacity, and at hundreds of sessions that memset was the simulator's top cost.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let mut accepted: Option<Route> = None;
    let callback = |req: &Request, resp: Response| match check_request(req, &shared.config) {
        Ok(route) => {
            accepted = Some(route);
            Ok(resp)
        }
        Err(e) => {
            tracing::debug!(error = %e, "rejecting realtime upgrade");
            Err(error_response(&e))
        }
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config));
    let Ok(Ok(ws)) = tokio::time::timeout(Duration::from_secs(10), handshake).await else {
        shared.counters.rejected_handshakes.fetch_add(1, Relaxed);
        return;
    };
    let Some(route) = accepted else {
        return;
    };
    shared.counters.sessions_active.fetch_add(1, Relaxed);
    let _guard = ActiveGuard(shared.clone());
    match route {
        Route::Conversation { dialect, model } => {
            session::serve(ws, shared, dialect, &model, ordinal, shutdown).await;
        }
        Route::Transcription => transcription::serve(ws, shared, shutdown).await,
        Route::Translation { model } => translation::serve(ws, shared, &model, shutdown).await,
    }
}

/// See [`SimHandle::stats_source`].
#[derive(Clone)]
pub struct SimStatsSource(Arc<Shared>);

impl SimStatsSource {
    pub fn stats(&self) -> SimStats {
        let c = &self.0.counters;
        SimStats {
            connections: c.connections.load(Relaxed),
            rejected_handshakes: c.rejected_handshakes.load(Relaxed),
            sessions_active: c.sessions_active.load(Relaxed),
            events_in: c.events_in.load(Relaxed),
            events_out: c.events_out.load(Relaxed),
            errors_sent: c.errors_sent.load(Relaxed),
            responses: c.responses.load(Relaxed),
            responses_cancelled: c.responses_cancelled.load(Relaxed),
            truncations: c.truncations.load(Relaxed),
            responses_interrupted: c.responses_interrupted.load(Relaxed),
            drops_injected: c.drops_injected.load(Relaxed),
            errors_injected: c.errors_injected.load(Relaxed),
            tool_calls: c.tool_calls.load(Relaxed),
            transcriptions: c.transcriptions.load(Relaxed),
            translation_frames: c.translation_frames.load(Relaxed),
        }
    }

    /// Client events refused with an `error` event (invalid, or not valid at that moment), by code.
    pub fn client_errors(&self) -> std::collections::BTreeMap<String, u64> {
        self.0
            .client_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The tool ledger's totals (`None` unless `tool_ledger` is on).
    pub fn ledger(&self) -> Option<LedgerSummary> {
        let now = tokio::time::Instant::now();
        self.0.ledger.as_ref().map(|l| {
            l.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .summary(now)
        })
    }
}
