//! One simulated Realtime conversation session (after `server::run`'s handshake): a single task that
//! owns all session state and multiplexes the socket, the response-streaming timer and the expiry
//! deadline with one `select!`.
//!
//! One task and one reusable timer per connection (no per-response tasks, no channels) keeps a session
//! at a few KiB so 1,000 of them fit on two cores. Responses are state machines advanced by the timer;
//! because the socket is polled between steps, barge-in and `response.cancel` take effect mid-stream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use voice_realtime::{Dialect, WireAudioFormat};

use crate::config::{ScriptStep, SimConfig};
use crate::error::ProtocolError;
use crate::ledger::ClosedBy;
use crate::protocol::{self, ClientEvent};
use crate::server::SessionKind;
use crate::server::{CloseRecord, LoggedClientEvent, SeedRecord, Shared, Truncation};
use crate::session_config::SessionConfig;
use crate::synth::Utterance;
use crate::vad::{InputAudio, VadEvent};
use voice_audio::g711;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Conversation items kept per session; older ones are forgotten (upstream truncates context too).
const MAX_CONVERSATION_ITEMS: usize = 4096;
/// Response steps performed per timer wake-up before the socket is polled again.
const MAX_STEPS_PER_TICK: usize = 16;

static ID_COUNTER: AtomicU64 = AtomicU64::new(1);

/// Process-unique ids in upstream's `prefix_xxx` style; a counter is far cheaper than a UUID per event.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}_sim{:013x}", ID_COUNTER.fetch_add(1, Relaxed))
}

/// Serves one upgraded conversation session to completion (the handshake is `server::run`'s).
pub(crate) async fn serve(
    ws: WebSocketStream<TcpStream>,
    shared: Arc<Shared>,
    dialect: Dialect,
    model: &str,
    ordinal: u64,
    shutdown: watch::Receiver<bool>,
) {
    let mut session = Session::new(shared, dialect, model, ordinal);
    session.event_loop(ws, shutdown).await;
    session.end_seeding();
    let by = if session.dropping {
        ClosedBy::FaultDrop
    } else {
        ClosedBy::Other
    };
    let id = session.id.clone();
    session.shared.ledger(|l| l.closed(&id, Instant::now(), by));
}

enum Planned {
    Message(String),
    Call { name: String, arguments: String },
}

struct MessageRun {
    item_id: String,
    text: String,
    utterance: Option<Utterance>,
    chars_total: usize,
    chars_sent: usize,
    bytes_sent: usize,
}

struct ActiveResponse {
    id: String,
    in_band: bool,
    metadata: Value,
    audio: bool,
    format: WireAudioFormat,
    voice: String,
    queue: VecDeque<Planned>,
    current: Option<MessageRun>,
    output: Vec<Value>,
    next_at: Instant,
    created_sent: bool,
    call_delay_done: bool,
    calls: Vec<String>,
    then: Option<String>,
    out_audio_ms: u64,
    out_text_chars: usize,
}

struct ConvItem {
    id: String,
    value: Value,
    /// Assistant audio generated for this item (what `truncate` may cut back to).
    audio_ms: Option<u64>,
}

struct AwaitingTools {
    calls: Vec<String>,
    outputs: HashMap<String, String>,
    then: String,
}

struct ResponseOpts {
    in_band: bool,
    /// Started by server VAD at the end of a user turn (not by a client `response.create`).
    by_vad: bool,
    instructions: Option<String>,
    metadata: Value,
    tools: Option<Vec<String>>,
    tool_choice_none: bool,
    audio: Option<bool>,
}

impl Default for ResponseOpts {
    fn default() -> Self {
        ResponseOpts {
            in_band: true,
            by_vad: false,
            instructions: None,
            metadata: Value::Null,
            tools: None,
            tool_choice_none: false,
            audio: None,
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    dialect: Dialect,
    id: String,
    conversation_id: String,
    cfg: SessionConfig,
    input: InputAudio,
    vad_events: Vec<VadEvent>,
    speech: Option<(String, u64)>,
    conversation: Vec<ConvItem>,
    known_calls: HashMap<String, String>,
    /// Items the client created before its first input audio or response (see `SeedRecord`).
    seeding: Option<Vec<Value>>,
    /// `function_call` items the client created (calls carried over from an earlier session).
    client_calls: std::collections::HashSet<String>,

    awaiting: Option<AwaitingTools>,
    pending_user_text: Option<String>,
    script_pos: usize,
    transcript_pos: usize,
    input_text_chars: usize,
    input_audio_ms: u64,
    active: Option<ActiveResponse>,
    /// When the idle period began: the last `response.done` plus the playback time of its audio.
    /// With server_vad `idle_timeout_ms` set, the idle timeout fires that long after this instant
    /// unless speech starts or another response begins first (both clear it).
    idle_from: Option<Instant>,
    outbox: Vec<String>,
    emitted: u64,
    /// This session gets the configured faults (see `SimConfig::drop_every_nth_session`).
    fault_drop: bool,
    fault_error: bool,
    error_injected: bool,
    dropping: bool,
    closing: bool,
    expires_at: Option<Instant>,
    in_bytes: Vec<u8>,
    pcm: Vec<i16>,
    out_bytes: Vec<u8>,
    out_b64: String,
}

impl Session {
    fn new(shared: Arc<Shared>, dialect: Dialect, model: &str, ordinal: u64) -> Self {
        let every = |n: Option<u64>| n.is_none_or(|n| n <= 1 || ordinal.is_multiple_of(n));
        let fault_drop = every(shared.config.drop_every_nth_session);
        let fault_error = every(shared.config.error_every_nth_session);
        let id = format!("sess_{}", uuid::Uuid::new_v4().simple());
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let max_ms = shared.config.session_max_duration_ms;
        let expires_unix = now_unix + max_ms.map_or(3600, |m| m / 1000);
        let cfg = SessionConfig::new(dialect, &id, model, expires_unix);
        Session {
            expires_at: max_ms.map(|m| Instant::now() + Duration::from_millis(m)),
            shared,
            dialect,
            id,
            conversation_id: new_id("conv"),
            cfg,
            input: InputAudio::default(),
            vad_events: Vec::new(),
            speech: None,
            conversation: Vec::new(),
            known_calls: HashMap::new(),
            seeding: Some(Vec::new()),
            client_calls: std::collections::HashSet::new(),

            awaiting: None,
            pending_user_text: None,
            script_pos: 0,
            transcript_pos: 0,
            input_text_chars: 0,
            input_audio_ms: 0,
            active: None,
            idle_from: None,
            outbox: Vec::new(),
            emitted: 0,
            fault_drop,
            fault_error,
            error_injected: false,
            dropping: false,
            closing: false,
            in_bytes: Vec::new(),
            pcm: Vec::new(),
            out_bytes: Vec::new(),
            out_b64: String::new(),
        }
    }

    async fn event_loop(
        &mut self,
        mut ws: WebSocketStream<TcpStream>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.emit(json!({"type": "session.created", "session": self.cfg.json()}));
        let sleep = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(sleep);
        loop {
            if self.flush(&mut ws).await.is_err() || self.dropping {
                // Fault injection or a dead peer: drop the socket without a close frame.
                return;
            }
            if self.closing {
                // The session cap, as upstream ends it: close 1001 with the reason, then wait for the
                // client's close frame (the closing handshake).
                let secs = self.shared.config.session_max_duration_ms.unwrap_or(0) as f64 / 1000.0;
                let frame = CloseFrame {
                    code: CloseCode::Away,
                    reason: format!("Your session hit the maximum duration of {secs} seconds.")
                        .into(),
                };
                let _ = ws.close(Some(frame)).await;
                let reply = tokio::time::timeout(Duration::from_secs(2), async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Close(f))) => return f,
                            Some(Ok(_)) => {}
                            None | Some(Err(_)) => return None,
                        }
                    }
                })
                .await
                .ok()
                .flatten();
                self.record_close(true, reply);
                return;
            }
            let deadline = [
                self.active.as_ref().map(|r| r.next_at),
                self.expires_at,
                self.idle_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(d) = deadline {
                sleep.as_mut().reset(d);
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    let _ = ws.close(None).await;
                    return;
                }
                msg = ws.next() => match msg {
                    None | Some(Err(_)) => {
                        // Dropped without a close frame: an abnormal closure (1006).
                        self.record_close(false, None);
                        return;
                    }
                    Some(Ok(Message::Text(t))) => self.on_text(t.as_str()),
                    Some(Ok(Message::Binary(b))) => {
                        self.shared.counters.events_in.fetch_add(1, Relaxed);
                        self.send_error(None, &ProtocolError::new(
                            "invalid_request_error",
                            format!("Binary WebSocket frames are not supported ({} bytes received); send JSON text frames.", b.len()),
                            None,
                        ));
                    }
                    Some(Ok(Message::Close(f))) => {
                        self.record_close(false, f);
                        let _ = ws.close(None).await;
                        return;
                    }
                    // tungstenite queues the pong; flushing sends it even when we have nothing to say.
                    Some(Ok(_)) => {
                        if ws.flush().await.is_err() {
                            return;
                        }
                    }
                },
                () = &mut sleep, if deadline.is_some() => self.on_timer(Instant::now()),
            }
        }
    }

    /// The session's seeding is over (first input audio, first response, or the end).
    fn end_seeding(&mut self) {
        if let Some(items) = self.seeding.take() {
            self.shared.record_seed(SeedRecord {
                session_id: self.id.clone(),
                instructions: self.cfg.derived().instructions.clone(),
                items,
            });
        }
    }

    fn record_close(&self, by_server: bool, client: Option<CloseFrame>) {
        self.shared.record_close(CloseRecord {
            session_id: self.id.clone(),
            kind: SessionKind::Conversation,
            by_server,
            client_code: client.as_ref().map(|f| u16::from(f.code)),
            client_reason: client.map(|f| f.reason.to_string()).unwrap_or_default(),
        });
    }

    async fn flush(&mut self, ws: &mut WebSocketStream<TcpStream>) -> Result<(), ()> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.outbox);
        let n = out.len() as u64;
        let mut result = Ok(());
        for msg in out.drain(..) {
            if ws.feed(Message::text(msg)).await.is_err() {
                result = Err(());
                break;
            }
        }
        self.shared.counters.events_out.fetch_add(n, Relaxed);
        self.outbox = out;
        if result.is_ok() && ws.flush().await.is_err() {
            result = Err(());
        }
        result
    }

    // ---- emission ---------------------------------------------------------------------------------

    fn emit(&mut self, mut v: Value) {
        if let Some(o) = v.as_object_mut() {
            o.insert("event_id".into(), Value::String(new_id("event")));
        }
        self.push_raw(v.to_string());
    }

    fn push_raw(&mut self, s: String) {
        if self.dropping {
            return;
        }
        self.outbox.push(s);
        self.emitted += 1;
        let cfg = &self.shared.config;
        if self.fault_drop && cfg.drop_after_events.is_some_and(|n| self.emitted >= n) {
            self.dropping = true;
            self.shared.counters.drops_injected.fetch_add(1, Relaxed);
            return;
        }
        if self.fault_error
            && !self.error_injected
            && cfg.error_after_events.is_some_and(|n| self.emitted >= n)
        {
            self.error_injected = true;
            self.shared.counters.errors_sent.fetch_add(1, Relaxed);
            self.shared.counters.errors_injected.fetch_add(1, Relaxed);
            self.emit(json!({"type": "error", "error": {"type": "server_error", "code": "server_error",
                "message": "The server had an error while processing your request (injected fault).",
                "param": null, "event_id": null}}));
        }
    }

    fn send_error(&mut self, client_event_id: Option<&str>, e: &ProtocolError) {
        self.shared.counters.errors_sent.fetch_add(1, Relaxed);
        self.shared.record_client_error(e.code);
        tracing::debug!(session = %self.id, code = e.code, message = %e.message, "client error");
        self.emit(
            json!({"type": "error", "error": {"type": "invalid_request_error", "code": e.code,
            "message": e.message, "param": e.param, "event_id": client_event_id}}),
        );
    }

    fn name(&self, beta: &'static str, ga: &'static str) -> &'static str {
        match self.dialect {
            Dialect::Beta => beta,
            Dialect::Ga => ga,
        }
    }

    fn last_item_id(&self) -> Value {
        self.conversation
            .last()
            .map_or(Value::Null, |i| Value::String(i.id.clone()))
    }

    /// Adds an item to the conversation and announces it in the dialect's item lifecycle.
    fn add_item(&mut self, item: Value, audio_ms: Option<u64>) {
        let previous = self.last_item_id();
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match self.dialect {
            Dialect::Beta => {
                self.emit(json!({"type": "conversation.item.created", "previous_item_id": previous, "item": item}));
            }
            Dialect::Ga => {
                self.emit(json!({"type": "conversation.item.added", "previous_item_id": previous, "item": item}));
                self.emit(json!({"type": "conversation.item.done", "previous_item_id": previous, "item": item}));
            }
        }
        self.push_item(ConvItem {
            id,
            value: item,
            audio_ms,
        });
    }

    fn push_item(&mut self, item: ConvItem) {
        if self.conversation.len() >= MAX_CONVERSATION_ITEMS {
            self.conversation.remove(0);
        }
        self.conversation.push(item);
    }

    fn find_item(&mut self, id: &str) -> Option<&mut ConvItem> {
        self.conversation.iter_mut().rev().find(|i| i.id == id)
    }

    // ---- client events ----------------------------------------------------------------------------

    fn on_text(&mut self, text: &str) {
        self.shared.counters.events_in.fetch_add(1, Relaxed);
        if text.len() > self.shared.config.max_message_bytes {
            self.send_error(
                None,
                &ProtocolError::new(
                    "message_too_large",
                    format!(
                        "Message of {} bytes exceeds the maximum of {} bytes.",
                        text.len(),
                        self.shared.config.max_message_bytes
                    ),
                    None,
                ),
            );
            return;
        }
        let parsed: Result<Value, _> = serde_json::from_str(text);
        if self.shared.config.record_client_events {
            let event = match &parsed {
                Ok(v) => v.clone(),
                Err(_) => Value::String(text.chars().take(4096).collect()),
            };
            self.shared.record(LoggedClientEvent {
                session_id: self.id.clone(),
                kind: SessionKind::Conversation,
                event,
            });
        }
        let v = match parsed {
            Ok(v) => v,
            Err(e) => {
                self.send_error(
                    None,
                    &ProtocolError::new(
                        "invalid_json",
                        format!("We could not parse the JSON body of your request. ({e})"),
                        None,
                    ),
                );
                return;
            }
        };
        let event_id = v.get("event_id").and_then(Value::as_str).map(str::to_owned);
        let eid = event_id.as_deref();
        let result = match protocol::parse(&v, self.dialect) {
            Ok(ev) => self.handle(ev, eid),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.send_error(eid, &e);
        }
    }

    fn handle(&mut self, ev: ClientEvent<'_>, eid: Option<&str>) -> Result<(), ProtocolError> {
        match ev {
            ClientEvent::SessionUpdate(s) => {
                self.cfg.apply_update(s)?;
                self.emit(json!({"type": "session.updated", "session": self.cfg.json()}));
            }
            ClientEvent::TranscriptionSessionUpdate => {
                return Err(ProtocolError::new(
                    "invalid_request_error",
                    "transcription_session.update is only valid on transcription sessions.",
                    Some("type"),
                ))
            }
            ClientEvent::OutputAudioBufferClear => {
                return Err(ProtocolError::new(
                    "invalid_request_error",
                    "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
                    Some("type"),
                ))
            }
            ClientEvent::Append(audio) => {
                self.end_seeding();
                self.on_append(audio)?;
            }
            ClientEvent::Commit => self.on_commit()?,
            ClientEvent::Clear => {
                self.input.reset_buffer();
                self.speech = None;
                self.emit(json!({"type": "input_audio_buffer.cleared"}));
            }
            ClientEvent::ItemCreate {
                item,
                previous_item_id,
            } => self.on_item_create(item, previous_item_id)?,
            ClientEvent::ItemDelete(id) => {
                let pos = self
                    .conversation
                    .iter()
                    .position(|i| i.id == id)
                    .ok_or_else(|| item_not_found(id))?;
                self.conversation.remove(pos);
                self.emit(json!({"type": "conversation.item.deleted", "item_id": id}));
            }
            ClientEvent::ItemRetrieve(id) => {
                let item = self
                    .find_item(id)
                    .map(|i| i.value.clone())
                    .ok_or_else(|| item_not_found(id))?;
                self.emit(json!({"type": "conversation.item.retrieved", "item": item}));
            }
            ClientEvent::Truncate {
                item_id,
                content_index,
                audio_end_ms,
            } => self.on_truncate(item_id, content_index, audio_end_ms)?,
            ClientEvent::ResponseCreate(params) => {
                if let Some(r) = &self.active {
                    return Err(ProtocolError::new(
                        "conversation_already_has_active_response",
                        format!("Conversation already has an active response in progress: {}. Wait until the response is finished before creating a new one.", r.id),
                        None,
                    ));
                }
                self.end_seeding();
                let opts = Self::response_opts(params);
                self.start_response(opts);
            }
            ClientEvent::ResponseCancel(id) => {
                let matches = self
                    .active
                    .as_ref()
                    .is_some_and(|r| id.is_none_or(|id| id == r.id));
                if !matches {
                    return Err(ProtocolError::new(
                        "response_cancel_not_active",
                        "Cancellation failed: no active response found.",
                        None,
                    ));
                }
                self.cancel_response("client_cancelled");
            }
        }
        let _ = eid;
        Ok(())
    }

    fn on_append(&mut self, audio: &str) -> Result<(), ProtocolError> {
        let mut buf = std::mem::take(&mut self.in_bytes);
        buf.clear();
        if B64.decode_vec(audio, &mut buf).is_err() {
            self.in_bytes = buf;
            return Err(ProtocolError::new(
                "invalid_value",
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
                Some("audio"),
            ));
        }
        let d = self.cfg.derived();
        let (format, td) = (d.input_format, d.turn_detection);
        let mut events = std::mem::take(&mut self.vad_events);
        self.input
            .feed(&buf, format, td.map(|t| t.vad), &mut events);
        self.in_bytes = buf;
        for ev in events.drain(..) {
            let Some(td) = td else { break };
            match ev {
                VadEvent::Started { audio_start_ms } => {
                    let item_id = new_id("item");
                    self.emit(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": audio_start_ms, "item_id": item_id}));
                    self.speech = Some((item_id, audio_start_ms));
                    if td.interrupt_response && self.active.is_some() {
                        self.shared
                            .counters
                            .responses_interrupted
                            .fetch_add(1, Relaxed);
                        self.cancel_response("turn_detected");
                    }
                    // Speech resets the idle timeout (the cancel above may just have armed it).
                    self.idle_from = None;
                }
                VadEvent::Stopped { audio_end_ms } => {
                    let (item_id, start) = self
                        .speech
                        .take()
                        .unwrap_or_else(|| (new_id("item"), audio_end_ms));
                    self.emit(json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": audio_end_ms, "item_id": item_id}));
                    self.commit_user_audio(&item_id, audio_end_ms.saturating_sub(start), false);
                    if td.create_response {
                        if self.active.is_none() {
                            self.start_response(ResponseOpts {
                                by_vad: true,
                                ..ResponseOpts::default()
                            });
                        } else {
                            tracing::debug!(session = %self.id, "turn ended while a response is active; not starting another");
                        }
                    }
                }
            }
        }
        self.vad_events = events;
        Ok(())
    }

    fn on_commit(&mut self) -> Result<(), ProtocolError> {
        let ms = self.input.buffered_ms();
        if ms < 100 {
            return Err(ProtocolError::new(
                "input_audio_buffer_commit_empty",
                format!("Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, but buffer only has {ms}.00ms of audio."),
                None,
            ));
        }
        self.input.reset_buffer();
        let item_id = self.speech.take().map_or_else(|| new_id("item"), |s| s.0);
        self.commit_user_audio(&item_id, ms, false);
        Ok(())
    }

    /// Commits the buffered audio as a user item. `silent` audio (an idle timeout's) transcribes to
    /// nothing and takes no scripted user transcript.
    fn commit_user_audio(&mut self, item_id: &str, duration_ms: u64, silent: bool) {
        let previous = self.last_item_id();
        self.emit(json!({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous}));
        let item = json!({"id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
            "role": "user", "content": [{"type": "input_audio", "transcript": null}]});
        self.add_item(item, None);
        self.input_audio_ms += duration_ms;
        let cfg = &self.shared.config;
        let transcript = if silent {
            String::new()
        } else {
            self.transcript_pos += 1;
            match cfg.user_transcripts.get(self.transcript_pos - 1) {
                Some(t) => t.clone(),
                None => format!("user speech of {:.1} seconds", duration_ms as f64 / 1000.0),
            }
        };
        if self.cfg.derived().transcription {
            let usage = match self.dialect {
                Dialect::Ga => json!({"type": "duration", "seconds": duration_ms as f64 / 1000.0}),
                Dialect::Beta => {
                    json!({"type": "tokens", "input_tokens": duration_ms / 100, "output_tokens": transcript.len() / 4 + 1,
                    "total_tokens": duration_ms / 100 + transcript.len() as u64 / 4 + 1, "input_token_details": {"audio_tokens": duration_ms / 100, "text_tokens": 0}})
                }
            };
            self.emit(json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                "content_index": 0, "transcript": transcript, "usage": usage}));
            if let Some(i) = self.find_item(item_id) {
                i.value["content"][0]["transcript"] = Value::String(transcript.clone());
            }
        }
        // The "model" understands the audio whether or not the client asked for a transcript.
        if !silent {
            self.pending_user_text = Some(transcript);
        }
    }

    /// When the idle timeout fires, if it is armed and the session's server_vad has `idle_timeout_ms`.
    fn idle_deadline(&self) -> Option<Instant> {
        let from = self.idle_from?;
        let ms = self.cfg.derived().turn_detection?.idle_timeout_ms?;
        Some(from + Duration::from_millis(ms))
    }

    /// No speech within `idle_timeout_ms` of the last response's playback end: announce the timeout,
    /// commit the (silent) audio since then as a user item and let the model re-prompt the user.
    fn on_idle_timeout(&mut self) {
        let timeout_ms = self
            .cfg
            .derived()
            .turn_detection
            .and_then(|t| t.idle_timeout_ms)
            .unwrap_or(0);
        self.idle_from = None;
        if self.active.is_some() || self.speech.is_some() || self.input.is_speaking() {
            return;
        }
        // Offsets on the input sample clock: the timeout's worth of audio before now, but no
        // earlier than the start of what is still in the buffer.
        let end = self.input.clock_ms();
        let start = end
            .saturating_sub(timeout_ms)
            .max(end.saturating_sub(self.input.buffered_ms()));
        let item_id = new_id("item");
        self.emit(
            json!({"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": start,
            "audio_end_ms": end, "item_id": item_id}),
        );
        self.input.reset_buffer();
        self.commit_user_audio(&item_id, end - start, true);
        self.start_response(ResponseOpts::default());
    }

    fn on_item_create(
        &mut self,
        item: &Map<String, Value>,
        previous: Option<&str>,
    ) -> Result<(), ProtocolError> {
        if let Some(p) = previous {
            if p != "root" && !self.conversation.iter().any(|i| i.id == p) {
                return Err(ProtocolError::invalid_value(
                    "previous_item_id",
                    format!("item '{p}' does not exist"),
                ));
            }
        }
        let id = match item.get("id").and_then(Value::as_str) {
            Some(id) if self.conversation.iter().any(|i| i.id == id) => {
                return Err(ProtocolError::new(
                    "item_already_exists",
                    format!("Item with id '{id}' already exists."),
                    Some("item.id"),
                ))
            }
            Some(id) => id.to_owned(),
            None => new_id("item"),
        };
        let ty = item.get("type").and_then(Value::as_str).unwrap_or_default();
        let call_id = item
            .get("call_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match ty {
            "function_call_output" => {
                if !self.known_calls.contains_key(call_id) {
                    return Err(ProtocolError::new(
                        "invalid_tool_call_id",
                        format!("Tool call ID '{call_id}' not found in conversation."),
                        Some("item.call_id"),
                    ));
                }
                let output = item
                    .get("output")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.input_text_chars += output.len();
                let id = &self.id;
                self.shared.ledger(|l| l.output(call_id, id));
                if let Some(aw) = self
                    .awaiting
                    .as_mut()
                    .filter(|a| a.calls.iter().any(|c| c == call_id))
                {
                    aw.outputs.insert(call_id.to_owned(), output.to_owned());
                }
            }
            "function_call" => {
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                self.known_calls.insert(call_id.to_owned(), name.to_owned());
                self.client_calls.insert(call_id.to_owned());
            }
            _ => {
                let text: Vec<&str> = item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        p.get("text")
                            .or_else(|| p.get("transcript"))
                            .and_then(Value::as_str)
                    })
                    .collect();
                let text = text.join(" ");
                self.input_text_chars += text.len();
                if item.get("role").and_then(Value::as_str) == Some("user") {
                    self.shared.ledger(|l| l.text(&text));
                }
                if item.get("role").and_then(Value::as_str) == Some("user") && !text.is_empty() {
                    self.pending_user_text = Some(text);
                }
            }
        }
        if let Some(seed) = self.seeding.as_mut() {
            seed.push(Value::Object(item.clone()));
        }
        let mut echoed = item.clone();
        echoed.insert("id".into(), Value::String(id));
        echoed.insert("object".into(), json!("realtime.item"));
        echoed.entry("status").or_insert(json!("completed"));
        self.add_item(Value::Object(echoed), None);
        Ok(())
    }

    fn on_truncate(
        &mut self,
        item_id: &str,
        content_index: u64,
        audio_end_ms: u64,
    ) -> Result<(), ProtocolError> {
        let item = self
            .find_item(item_id)
            .ok_or_else(|| item_not_found(item_id))?;
        let Some(audio_ms) = item.audio_ms else {
            return Err(ProtocolError::invalid_value(
                "item_id",
                "only assistant messages with audio can be truncated",
            ));
        };
        if content_index != 0 {
            return Err(ProtocolError::invalid_value(
                "content_index",
                format!("item has no content part {content_index}"),
            ));
        }
        if audio_end_ms > audio_ms {
            return Err(ProtocolError::invalid_value(
                "audio_end_ms",
                format!("audio content of {audio_ms}ms is shorter than {audio_end_ms}ms"),
            ));
        }
        item.audio_ms = Some(audio_end_ms);
        // Upstream drops the transcript of a truncated item; the model "forgets" what was not heard.
        if let Some(part) = item.value.get_mut("content").and_then(|c| c.get_mut(0)) {
            part["transcript"] = Value::String(String::new());
        }
        self.shared.counters.truncations.fetch_add(1, Relaxed);
        self.shared.record_truncation(Truncation {
            session_id: self.id.clone(),
            item_id: item_id.to_owned(),
            content_index,
            audio_end_ms,
        });
        self.emit(json!({"type": "conversation.item.truncated", "item_id": item_id, "content_index": content_index, "audio_end_ms": audio_end_ms}));
        Ok(())
    }

    // ---- responses --------------------------------------------------------------------------------

    fn response_opts(params: Option<&Map<String, Value>>) -> ResponseOpts {
        let Some(p) = params else {
            return ResponseOpts::default();
        };
        let modalities = p
            .get("output_modalities")
            .or_else(|| p.get("modalities"))
            .and_then(Value::as_array);
        ResponseOpts {
            in_band: p.get("conversation").and_then(Value::as_str) != Some("none"),
            by_vad: false,
            instructions: p
                .get("instructions")
                .and_then(Value::as_str)
                .map(str::to_owned),
            metadata: p.get("metadata").cloned().unwrap_or(Value::Null),
            tools: p.get("tools").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            }),
            tool_choice_none: p.get("tool_choice").and_then(Value::as_str) == Some("none"),
            audio: modalities.map(|m| m.iter().any(|x| x == "audio")),
        }
    }

    /// Picks what the response says: a pending tool follow-up, a text-matched step, or the next step.
    fn plan(&mut self, opts: &ResponseOpts) -> (VecDeque<Planned>, Option<String>) {
        let shared = self.shared.clone();
        let config = &shared.config;
        // A user turn while tool outputs are still missing is answered as a new turn (a model may
        // call more tools meanwhile); the follow-up waits for the outputs and the client's create.
        let outputs_missing = self
            .awaiting
            .as_ref()
            .is_some_and(|aw| aw.outputs.len() < aw.calls.len());
        if opts.in_band && !(opts.by_vad && outputs_missing) {
            if let Some(aw) = self.awaiting.take() {
                if aw.outputs.len() < aw.calls.len() {
                    tracing::info!(session = %self.id, got = aw.outputs.len(), expected = aw.calls.len(),
                        "response.create before every function_call_output arrived");
                }
                let outputs: Vec<&str> = aw
                    .calls
                    .iter()
                    .filter_map(|c| aw.outputs.get(c).map(String::as_str))
                    .collect();
                return (
                    VecDeque::from([Planned::Message(
                        aw.then.replace("{outputs}", &outputs.join("; ")),
                    )]),
                    None,
                );
            }
        }
        // Outputs of calls carried over from an earlier session (the client created their
        // function_call items) that no message has followed yet: a model reads them now.
        if opts.in_band && !opts.by_vad {
            let mut carried: Vec<&str> = self
                .conversation
                .iter()
                .rev()
                .take_while(|i| i.value["type"] != "message")
                .filter(|i| {
                    i.value["type"] == "function_call_output"
                        && i.value["call_id"]
                            .as_str()
                            .is_some_and(|c| self.client_calls.contains(c))
                })
                .filter_map(|i| i.value["output"].as_str())
                .collect();
            if !carried.is_empty() {
                carried.reverse();
                let text = config
                    .carried_call_reply
                    .replace("{outputs}", &carried.join("; "));
                return (VecDeque::from([Planned::Message(text)]), None);
            }
        }
        let trigger = if opts.in_band {
            self.pending_user_text
                .take()
                .or_else(|| opts.instructions.clone())
        } else {
            opts.instructions.clone()
        };
        let matched = trigger.as_deref().and_then(|t| {
            let t = t.to_lowercase();
            config
                .script
                .iter()
                .find(|s| s.condition().is_some_and(|c| t.contains(&c.to_lowercase())))
        });
        let step = match matched {
            Some(s) => Some(s),
            None if !opts.in_band => None,
            None => self.next_ordinal_step(config),
        };
        let step = match step {
            Some(s) => s,
            None if !opts.in_band => {
                let text = match &opts.instructions {
                    Some(i) => format!(
                        "Out of band reply to: {}",
                        i.chars().take(120).collect::<String>()
                    ),
                    None => config.default_reply.clone(),
                };
                return (VecDeque::from([Planned::Message(text)]), None);
            }
            None => {
                return (
                    VecDeque::from([Planned::Message(config.default_reply.clone())]),
                    None,
                )
            }
        };
        match step {
            ScriptStep::Say { text, .. } => {
                (VecDeque::from([Planned::Message(text.clone())]), None)
            }
            ScriptStep::Messages { texts, .. } => {
                (texts.iter().cloned().map(Planned::Message).collect(), None)
            }
            ScriptStep::Tools {
                preamble,
                calls,
                then,
                ..
            } => {
                let declared = opts.tools.as_ref().unwrap_or(&self.cfg.derived().tools);
                let choice_none = opts.tool_choice_none || self.cfg.derived().tool_choice_none;
                let (ok, missing): (Vec<_>, Vec<_>) = calls
                    .iter()
                    .partition(|c| !choice_none && declared.contains(&c.name));
                let mut plan = VecDeque::new();
                if ok.is_empty() {
                    let names: Vec<&str> = missing.iter().map(|c| c.name.as_str()).collect();
                    let text = format!(
                        "{}I would use {}, but that tool is not available.",
                        preamble
                            .as_deref()
                            .map(|p| format!("{p} "))
                            .unwrap_or_default(),
                        names.join(" and ")
                    );
                    plan.push_back(Planned::Message(text));
                    return (plan, None);
                }
                if !missing.is_empty() {
                    tracing::info!(session = %self.id, "script calls undeclared tools; skipping them");
                }
                if let Some(p) = preamble {
                    plan.push_back(Planned::Message(p.clone()));
                }
                for c in ok {
                    plan.push_back(Planned::Call {
                        name: c.name.clone(),
                        arguments: c.arguments.to_string(),
                    });
                }
                (plan, Some(then.clone()))
            }
        }
    }

    fn next_ordinal_step<'c>(&mut self, config: &'c SimConfig) -> Option<&'c ScriptStep> {
        let n = config.script.len();
        for _ in 0..2 {
            while self.script_pos < n {
                let s = &config.script[self.script_pos];
                self.script_pos += 1;
                if s.condition().is_none() {
                    return Some(s);
                }
            }
            if !config.script_cycle {
                return None;
            }
            self.script_pos = 0;
        }
        None
    }

    fn start_response(&mut self, opts: ResponseOpts) {
        let (queue, then) = self.plan(&opts);
        self.idle_from = None;
        let d = self.cfg.derived();
        self.shared.counters.responses.fetch_add(1, Relaxed);
        self.active = Some(ActiveResponse {
            id: new_id("resp"),
            in_band: opts.in_band,
            metadata: opts.metadata,
            audio: opts.audio.unwrap_or(d.audio_output),
            format: d.output_format,
            voice: d.voice.clone(),
            queue,
            current: None,
            output: Vec::new(),
            next_at: Instant::now() + Duration::from_millis(self.shared.config.response_delay_ms),
            created_sent: false,
            call_delay_done: false,
            calls: Vec::new(),
            then,
            out_audio_ms: 0,
            out_text_chars: 0,
        });
    }

    fn response_json(
        &self,
        r: &ActiveResponse,
        status: &str,
        details: &Value,
        usage: &Value,
    ) -> Value {
        let conversation_id = if r.in_band {
            json!(self.conversation_id)
        } else {
            Value::Null
        };
        let modalities = if r.audio {
            json!(["audio"])
        } else {
            json!(["text"])
        };
        match self.dialect {
            Dialect::Ga => {
                json!({"id": r.id, "object": "realtime.response", "status": status, "status_details": details,
                "output": r.output, "conversation_id": conversation_id, "output_modalities": modalities,
                "max_output_tokens": "inf", "audio": {"output": {"format": r.format.ga_json(), "voice": r.voice}},
                "usage": usage, "metadata": r.metadata})
            }
            Dialect::Beta => {
                json!({"id": r.id, "object": "realtime.response", "status": status, "status_details": details,
                "output": r.output, "conversation_id": conversation_id,
                "modalities": if r.audio { json!(["text", "audio"]) } else { json!(["text"]) },
                "voice": r.voice, "output_audio_format": r.format.beta_name(), "temperature": 0.8,
                "max_output_tokens": "inf", "usage": usage, "metadata": r.metadata})
            }
        }
    }

    fn usage(&self, r: &ActiveResponse) -> Value {
        let text_in =
            (self.cfg.derived().instructions.len() + self.input_text_chars) as u64 / 4 + 1;
        let audio_in = self.input_audio_ms / 100;
        let text_out = r.out_text_chars as u64 / 4 + 1;
        let audio_out = r.out_audio_ms / 50;
        json!({"total_tokens": text_in + audio_in + text_out + audio_out, "input_tokens": text_in + audio_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in, "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0}},
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}})
    }

    fn on_timer(&mut self, now: Instant) {
        if self.expires_at.is_some_and(|e| e <= now) {
            let secs = self.shared.config.session_max_duration_ms.unwrap_or(0) as f64 / 1000.0;
            self.shared.counters.errors_sent.fetch_add(1, Relaxed);
            self.emit(json!({"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired",
                "message": format!("Your session hit the maximum duration of {secs} seconds."), "param": null, "event_id": null}}));
            self.closing = true;
            return;
        }
        if self.idle_deadline().is_some_and(|d| d <= now) {
            self.on_idle_timeout();
        }
        let Some(mut r) = self.active.take() else {
            return;
        };
        for _ in 0..MAX_STEPS_PER_TICK {
            if r.next_at > now || self.dropping {
                break;
            }
            if !self.step(&mut r, now) {
                return;
            }
        }
        self.active = Some(r);
    }

    fn chunk_interval(&self) -> Duration {
        let c = &self.shared.config;
        if c.realtime_factor > 0.0 && c.realtime_factor.is_finite() {
            Duration::from_secs_f64(f64::from(c.chunk_ms.max(1)) / 1000.0 / c.realtime_factor)
        } else {
            Duration::ZERO
        }
    }

    /// Performs one step of the response; returns false once `response.done` has been sent.
    fn step(&mut self, r: &mut ActiveResponse, now: Instant) -> bool {
        if !r.created_sent {
            r.created_sent = true;
            let created = self.response_json(r, "in_progress", &Value::Null, &Value::Null);
            self.emit(json!({"type": "response.created", "response": created}));
            return true;
        }
        if let Some(mut run) = r.current.take() {
            let finished = self.stream_chunk(r, &mut run);
            r.next_at += self.chunk_interval();
            if finished {
                self.finish_message(r, &run, "completed");
            } else {
                r.current = Some(run);
            }
            return true;
        }
        match r.queue.pop_front() {
            Some(Planned::Message(text)) => {
                self.begin_message(r, text);
                r.next_at = now + Duration::from_millis(self.shared.config.first_audio_delay_ms);
                true
            }
            Some(Planned::Call { name, arguments }) => {
                let delay = self.shared.config.tool_call_delay_ms;
                if delay > 0 && !r.call_delay_done {
                    r.call_delay_done = true;
                    r.next_at = now + Duration::from_millis(delay);
                    r.queue.push_front(Planned::Call { name, arguments });
                    return true;
                }
                r.call_delay_done = false;
                self.emit_call(r, name, &arguments);
                true
            }
            None => {
                let usage = self.usage(r);
                let done = self.response_json(r, "completed", &Value::Null, &usage);
                self.emit(json!({"type": "response.done", "response": done}));
                self.emit_rate_limits(r);
                self.idle_from = Some(now + Duration::from_millis(r.out_audio_ms));
                if r.in_band {
                    if let Some(then) = r.then.take() {
                        // Calls made while earlier ones are still open join them: the follow-up
                        // (the latest step's) waits for every output.
                        match self.awaiting.as_mut() {
                            Some(aw) => {
                                aw.calls.extend(r.calls.iter().cloned());
                                aw.then = then;
                            }
                            None => {
                                self.awaiting = Some(AwaitingTools {
                                    calls: r.calls.clone(),
                                    outputs: HashMap::new(),
                                    then,
                                });
                            }
                        }
                    }
                }
                false
            }
        }
    }

    fn emit_rate_limits(&mut self, r: &ActiveResponse) {
        let used = r.out_audio_ms / 50 + r.out_text_chars as u64 / 4;
        self.emit(json!({"type": "rate_limits.updated", "rate_limits": [
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {"name": "tokens", "limit": 400000, "remaining": 400000u64.saturating_sub(used), "reset_seconds": 0.5}]}));
    }

    fn message_item(&self, id: &str, audio: bool, status: &str, text: &str) -> Value {
        let content = match (self.dialect, audio) {
            (Dialect::Beta, true) => json!({"type": "audio", "transcript": text}),
            (Dialect::Beta, false) => json!({"type": "text", "text": text}),
            (Dialect::Ga, true) => json!({"type": "output_audio", "transcript": text}),
            (Dialect::Ga, false) => json!({"type": "output_text", "text": text}),
        };
        let content = if status == "in_progress" {
            json!([])
        } else {
            json!([content])
        };
        json!({"id": id, "object": "realtime.item", "type": "message", "status": status, "role": "assistant", "content": content})
    }

    fn part(audio: bool, text: &str) -> Value {
        if audio {
            json!({"type": "audio", "transcript": text})
        } else {
            json!({"type": "text", "text": text})
        }
    }

    fn begin_message(&mut self, r: &mut ActiveResponse, text: String) {
        let item_id = new_id("item");
        let output_index = r.output.len();
        let item = self.message_item(&item_id, r.audio, "in_progress", "");
        self.emit(json!({"type": "response.output_item.added", "response_id": r.id, "output_index": output_index, "item": item}));
        if r.in_band {
            if self.dialect == Dialect::Beta {
                let previous = self.last_item_id();
                self.emit(json!({"type": "conversation.item.created", "previous_item_id": previous, "item": item}));
            }
            self.push_item(ConvItem {
                id: item_id.clone(),
                value: item,
                audio_ms: r.audio.then_some(0),
            });
        }
        self.emit(
            json!({"type": "response.content_part.added", "response_id": r.id, "item_id": item_id,
            "output_index": output_index, "content_index": 0, "part": Self::part(r.audio, "")}),
        );
        let utterance = r.audio.then(|| {
            Utterance::new(
                &text,
                self.shared.config.ms_per_char,
                r.format.sample_rate(),
            )
        });
        r.current = Some(MessageRun {
            item_id,
            chars_total: text.chars().count(),
            text,
            utterance,
            chars_sent: 0,
            bytes_sent: 0,
        });
    }

    /// Sends one chunk of audio (plus the transcript it covers) or of text; true when the message is complete.
    fn stream_chunk(&mut self, r: &mut ActiveResponse, run: &mut MessageRun) -> bool {
        let cfg = &self.shared.config;
        let mpc = u64::from(cfg.ms_per_char.max(1));
        let output_index = r.output.len();
        let chars_due = match run.utterance.as_mut() {
            Some(u) => {
                let rate = u64::from(u.sample_rate());
                let n = (u64::from(cfg.chunk_ms.max(1)) * rate / 1000) as usize;
                self.pcm.clear();
                u.render(&mut self.pcm, n);
                let ms = u.rendered_samples() * 1000 / rate;
                self.out_bytes.clear();
                match r.format {
                    WireAudioFormat::Pcm16 => self
                        .out_bytes
                        .extend(self.pcm.iter().flat_map(|s| s.to_le_bytes())),
                    WireAudioFormat::G711Ulaw => self
                        .out_bytes
                        .extend(self.pcm.iter().map(|&s| g711::linear_to_ulaw(s))),
                    WireAudioFormat::G711Alaw => self
                        .out_bytes
                        .extend(self.pcm.iter().map(|&s| g711::linear_to_alaw(s))),
                }
                self.out_b64.clear();
                B64.encode_string(&self.out_bytes, &mut self.out_b64);
                let ev = format!(
                    r#"{{"type":"{}","event_id":"{}","response_id":"{}","item_id":"{}","output_index":{},"content_index":0,"delta":"{}"}}"#,
                    self.dialect.audio_delta(),
                    new_id("event"),
                    r.id,
                    run.item_id,
                    output_index,
                    self.out_b64
                );
                self.push_raw(ev);
                r.out_audio_ms = r
                    .out_audio_ms
                    .saturating_add(self.pcm.len() as u64 * 1000 / rate);
                let item_id = run.item_id.clone();
                if r.in_band {
                    if let Some(i) = self.find_item(&item_id) {
                        i.audio_ms = Some(ms);
                    }
                }
                if u.is_finished() {
                    run.chars_total
                } else {
                    (ms.div_ceil(mpc) as usize).min(run.chars_total)
                }
            }
            None => (run.chars_sent + (u64::from(cfg.chunk_ms.max(1)) / mpc).max(1) as usize)
                .min(run.chars_total),
        };
        if chars_due > run.chars_sent {
            let rest = &run.text[run.bytes_sent..];
            let take = chars_due - run.chars_sent;
            let end = rest.char_indices().nth(take).map_or(rest.len(), |(b, _)| b);
            let delta = &rest[..end];
            let ty = if r.audio {
                self.name(
                    "response.audio_transcript.delta",
                    "response.output_audio_transcript.delta",
                )
            } else {
                self.name("response.text.delta", "response.output_text.delta")
            };
            let ev = json!({"type": ty, "response_id": r.id, "item_id": run.item_id, "output_index": output_index,
                "content_index": 0, "delta": delta});
            run.bytes_sent += end;
            run.chars_sent = chars_due;
            r.out_text_chars += take;
            self.emit(ev);
        }
        match &run.utterance {
            Some(u) => u.is_finished(),
            None => run.chars_sent >= run.chars_total,
        }
    }

    fn finish_message(&mut self, r: &mut ActiveResponse, run: &MessageRun, status: &str) {
        let output_index = r.output.len();
        let text = if status == "completed" {
            run.text.as_str()
        } else {
            &run.text[..run.bytes_sent]
        };
        if status == "completed" {
            let common = json!({"response_id": r.id, "item_id": run.item_id, "output_index": output_index, "content_index": 0});
            let with = |mut v: Value, extra: Value| {
                if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                    o.extend(e.clone());
                }
                v
            };
            if r.audio {
                let t = self.name("response.audio.done", "response.output_audio.done");
                self.emit(with(common.clone(), json!({"type": t})));
                let t = self.name(
                    "response.audio_transcript.done",
                    "response.output_audio_transcript.done",
                );
                self.emit(with(common.clone(), json!({"type": t, "transcript": text})));
            } else {
                let t = self.name("response.text.done", "response.output_text.done");
                self.emit(with(common.clone(), json!({"type": t, "text": text})));
            }
            self.emit(with(
                common,
                json!({"type": "response.content_part.done", "part": Self::part(r.audio, text)}),
            ));
        }
        let item = self.message_item(&run.item_id, r.audio, status, text);
        if status == "completed" {
            self.emit(json!({"type": "response.output_item.done", "response_id": r.id, "output_index": output_index, "item": item}));
        }
        if r.in_band {
            if let Some(i) = self.find_item(&run.item_id) {
                i.value = item.clone();
            }
        }
        r.output.push(item);
    }

    fn emit_call(&mut self, r: &mut ActiveResponse, name: String, arguments: &str) {
        let item_id = new_id("item");
        let call_id = new_id("call");
        let output_index = r.output.len();
        let added = json!({"id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
            "call_id": call_id, "name": name, "arguments": ""});
        self.emit(json!({"type": "response.output_item.added", "response_id": r.id, "output_index": output_index, "item": added}));
        if r.in_band && self.dialect == Dialect::Beta {
            let previous = self.last_item_id();
            self.emit(json!({"type": "conversation.item.created", "previous_item_id": previous, "item": added}));
        }
        // Stream the arguments in small pieces, as upstream does token by token.
        let mut rest = arguments;
        while !rest.is_empty() {
            let end = rest.char_indices().nth(24).map_or(rest.len(), |(b, _)| b);
            self.emit(json!({"type": "response.function_call_arguments.delta", "response_id": r.id, "item_id": item_id,
                "output_index": output_index, "call_id": call_id, "delta": &rest[..end]}));
            rest = &rest[end..];
        }
        let mut done = json!({"type": "response.function_call_arguments.done", "response_id": r.id, "item_id": item_id,
            "output_index": output_index, "call_id": call_id, "arguments": arguments});
        if self.dialect == Dialect::Ga {
            done["name"] = json!(name);
        }
        self.emit(done);
        let item = json!({"id": item_id, "object": "realtime.item", "type": "function_call", "status": "completed",
            "call_id": call_id, "name": name, "arguments": arguments});
        self.emit(json!({"type": "response.output_item.done", "response_id": r.id, "output_index": output_index, "item": item}));
        r.out_text_chars += arguments.len();
        self.shared.counters.tool_calls.fetch_add(1, Relaxed);
        let id = &self.id;
        self.shared
            .ledger(|l| l.issued(&call_id, id, Instant::now()));
        if r.in_band {
            self.known_calls.insert(call_id.clone(), name);
            self.push_item(ConvItem {
                id: item_id,
                value: item.clone(),
                audio_ms: None,
            });
        }
        r.calls.push(call_id);
        r.output.push(item);
    }

    fn cancel_response(&mut self, reason: &str) {
        let Some(mut r) = self.active.take() else {
            return;
        };
        if !r.created_sent {
            let created = self.response_json(&r, "in_progress", &Value::Null, &Value::Null);
            self.emit(json!({"type": "response.created", "response": created}));
        }
        if let Some(run) = r.current.take() {
            self.finish_message(&mut r, &run, "incomplete");
        }
        self.shared
            .counters
            .responses_cancelled
            .fetch_add(1, Relaxed);
        let usage = self.usage(&r);
        let done = self.response_json(
            &r,
            "cancelled",
            &json!({"type": "cancelled", "reason": reason}),
            &usage,
        );
        self.emit(json!({"type": "response.done", "response": done}));
        self.idle_from = Some(Instant::now() + Duration::from_millis(r.out_audio_ms));
    }
}

fn item_not_found(id: &str) -> ProtocolError {
    ProtocolError::new(
        "item_not_found",
        format!("Item with item_id not found: {id}"),
        Some("item_id"),
    )
}
