//! Plumbing shared by the companion session kinds (transcription and translation; the conversation
//! loop in `session.rs` keeps its own): a paced outbox with the fault injection the conversation
//! sessions have (`drop_after_events`, `error_after_events`, `session_max_duration_ms`), client-event
//! intake (size limit, JSON parsing, recording), and one `select!` loop per session that multiplexes
//! the socket, the outbox's release times and the expiry deadline.
//!
//! Server events are queued with a release instant so a kind can pace its output (transcript deltas,
//! 200 ms translation frames) by `realtime_factor` without timers of its own; events are released in
//! the order they were queued, and the fault counters count released events, as the client sees them.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::config::SimConfig;
use crate::error::ProtocolError;
use crate::server::{CloseRecord, LoggedClientEvent, SessionKind, Shared};
use crate::session::new_id;

/// One companion session kind, driven by [`run`].
pub(crate) trait Companion {
    /// The `session` object of `session.created`.
    fn created(&self) -> Value;
    /// Handles one parsed client event; an error becomes an `error` event (the session stays open).
    fn on_event(&mut self, w: &mut Wire, v: &Value) -> Result<(), ProtocolError>;
}

/// `session.created`'s `expires_at` (unix seconds) and the local expiry instant, from
/// `session_max_duration_ms` (upstream's 60 minutes without it).
pub(crate) fn expiry(config: &SimConfig) -> (u64, Option<Instant>) {
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let max_ms = config.session_max_duration_ms;
    (
        now_unix + max_ms.map_or(3600, |m| m / 1000),
        max_ms.map(|m| Instant::now() + Duration::from_millis(m)),
    )
}

/// A committed turn's (or a translation segment's) source text: the next of `user_transcripts`,
/// else `fallback`. `pos` counts the texts handed out so far in this session.
pub(crate) fn next_user_text(config: &SimConfig, pos: &mut usize, fallback: String) -> String {
    *pos += 1;
    config
        .user_transcripts
        .get(*pos - 1)
        .cloned()
        .unwrap_or(fallback)
}

/// Append-only deltas of `text`: its words, each but the first with its leading space, so the
/// concatenation is exactly `text`.
pub(crate) fn word_deltas(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_whitespace() && !cur.trim().is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        match out.last_mut() {
            Some(last) if cur.trim().is_empty() => last.push_str(&cur),
            _ => out.push(cur),
        }
    }
    out
}

/// Wall-clock time `ms` of audio takes at the configured `realtime_factor` (zero: no pacing).
pub(crate) fn paced(config: &SimConfig, ms: u64) -> Duration {
    let f = config.realtime_factor;
    if f > 0.0 && f.is_finite() {
        Duration::from_secs_f64(ms as f64 / 1000.0 / f)
    } else {
        Duration::ZERO
    }
}

/// The outbound side of one companion session plus its fault state.
pub(crate) struct Wire {
    pub shared: Arc<Shared>,
    pub session_id: String,
    kind: SessionKind,
    queue: VecDeque<(Instant, String)>,
    last_release: Instant,
    outbox: Vec<String>,
    emitted: u64,
    error_injected: bool,
    dropping: bool,
    expires_at: Option<Instant>,
    /// A server-initiated close to perform once the queue is empty (translation's `session.close`).
    close_when_drained: Option<CloseFrame>,
    /// A server-initiated close to perform now (the session cap).
    closing: Option<CloseFrame>,
}

impl Wire {
    pub fn new(
        shared: Arc<Shared>,
        session_id: String,
        kind: SessionKind,
        expires_at: Option<Instant>,
    ) -> Self {
        Wire {
            shared,
            session_id,
            kind,
            queue: VecDeque::new(),
            last_release: Instant::now(),
            outbox: Vec::new(),
            emitted: 0,
            error_injected: false,
            dropping: false,
            expires_at,
            close_when_drained: None,
            closing: None,
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Queues `v` (an `event_id` is added) for release `gap` after the previously queued event (or
    /// now, whichever is later).
    pub fn emit_after(&mut self, mut v: Value, gap: Duration) {
        if let Some(o) = v.as_object_mut() {
            o.insert("event_id".into(), Value::String(new_id("event")));
        }
        let at = self.last_release.max(Instant::now()) + gap;
        self.last_release = at;
        self.queue.push_back((at, v.to_string()));
    }

    /// Queues `v` behind whatever is already queued, with no extra delay.
    pub fn emit(&mut self, v: Value) {
        self.emit_after(v, Duration::ZERO);
    }

    pub fn send_error(&mut self, client_event_id: Option<&str>, e: &ProtocolError) {
        tracing::debug!(session = %self.session_id, code = e.code, message = %e.message, "client error");
        self.emit(
            json!({"type": "error", "error": {"type": "invalid_request_error", "code": e.code,
            "message": e.message, "param": e.param, "event_id": client_event_id}}),
        );
    }

    /// After the queued events, close the socket normally (1000) with `reason`.
    pub fn close_after_queue(&mut self, reason: &str) {
        self.close_when_drained = Some(CloseFrame {
            code: CloseCode::Normal,
            reason: reason.to_owned().into(),
        });
    }

    /// Moves every event due by `now` to the outbox, applying the fault knobs per released event.
    fn release_due(&mut self, now: Instant) {
        while self.queue.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, s)) = self.queue.pop_front() {
                self.push_raw(s);
            }
        }
    }

    fn push_raw(&mut self, s: String) {
        if self.dropping {
            return;
        }
        if s.contains(r#""type":"error""#) {
            self.shared.counters.errors_sent.fetch_add(1, Relaxed);
        }
        self.outbox.push(s);
        self.emitted += 1;
        let cfg = &self.shared.config;
        let drop_after = cfg.companion_drop_after_events.or(cfg.drop_after_events);
        if drop_after.is_some_and(|n| self.emitted >= n) {
            self.dropping = true;
            return;
        }
        if !self.error_injected && cfg.error_after_events.is_some_and(|n| self.emitted >= n) {
            self.error_injected = true;
            let mut v = json!({"type": "error", "error": {"type": "server_error", "code": "server_error",
                "message": "The server had an error while processing your request (injected fault).",
                "param": null, "event_id": null}});
            v["event_id"] = Value::String(new_id("event"));
            self.push_raw(v.to_string());
        }
    }

    async fn flush(&mut self, ws: &mut WebSocketStream<TcpStream>) -> Result<(), ()> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let n = self.outbox.len() as u64;
        let mut result = Ok(());
        for msg in self.outbox.drain(..) {
            if ws.feed(Message::text(msg)).await.is_err() {
                result = Err(());
                break;
            }
        }
        self.outbox.clear();
        self.shared.counters.events_out.fetch_add(n, Relaxed);
        if result.is_ok() && ws.flush().await.is_err() {
            result = Err(());
        }
        result
    }

    fn record_close(&self, by_server: bool, client: Option<CloseFrame>) {
        self.shared.record_close(CloseRecord {
            session_id: self.session_id.clone(),
            kind: self.kind,
            by_server,
            client_code: client.as_ref().map(|f| u16::from(f.code)),
            client_reason: client.map(|f| f.reason.to_string()).unwrap_or_default(),
        });
    }

    /// Size limit, JSON parsing and recording of one text message; `None` when it was refused.
    fn intake(&mut self, text: &str) -> Option<Value> {
        self.shared.counters.events_in.fetch_add(1, Relaxed);
        let max = self.shared.config.max_message_bytes;
        if text.len() > max {
            self.send_error(
                None,
                &ProtocolError::new(
                    "message_too_large",
                    format!(
                        "Message of {} bytes exceeds the maximum of {max} bytes.",
                        text.len()
                    ),
                    None,
                ),
            );
            return None;
        }
        let parsed: Result<Value, _> = serde_json::from_str(text);
        if self.shared.config.record_client_events {
            let event = match &parsed {
                Ok(v) => v.clone(),
                Err(_) => Value::String(text.chars().take(4096).collect()),
            };
            self.shared.record(LoggedClientEvent {
                session_id: self.session_id.clone(),
                kind: self.kind,
                event,
            });
        }
        match parsed {
            Ok(v) => Some(v),
            Err(e) => {
                self.send_error(
                    None,
                    &ProtocolError::new(
                        "invalid_json",
                        format!("We could not parse the JSON body of your request. ({e})"),
                        None,
                    ),
                );
                None
            }
        }
    }
}

/// Serves one companion session: `session.created`, then client events until a close.
pub(crate) async fn run<K: Companion>(
    mut ws: WebSocketStream<TcpStream>,
    mut w: Wire,
    mut k: K,
    mut shutdown: watch::Receiver<bool>,
) {
    w.emit(json!({"type": "session.created", "session": k.created()}));
    let sleep = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(sleep);
    loop {
        w.release_due(Instant::now());
        if w.flush(&mut ws).await.is_err() || w.dropping {
            // Fault injection or a dead peer: drop the socket without a close frame.
            return;
        }
        if w.closing.is_none() && w.queue.is_empty() {
            w.closing = w.close_when_drained.take();
        }
        if let Some(frame) = w.closing.take() {
            // Close first, then wait for the client's close frame (the closing handshake).
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
            w.record_close(true, reply);
            return;
        }
        let deadline = [w.queue.front().map(|(at, _)| *at), w.expires_at]
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
                    w.record_close(false, None);
                    return;
                }
                Some(Ok(Message::Text(t))) => {
                    if let Some(v) = w.intake(t.as_str()) {
                        let eid = v.get("event_id").and_then(Value::as_str).map(str::to_owned);
                        if let Err(e) = k.on_event(&mut w, &v) {
                            w.send_error(eid.as_deref(), &e);
                        }
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    w.shared.counters.events_in.fetch_add(1, Relaxed);
                    w.send_error(None, &ProtocolError::new(
                        "invalid_request_error",
                        format!("Binary WebSocket frames are not supported ({} bytes received); send JSON text frames.", b.len()),
                        None,
                    ));
                }
                Some(Ok(Message::Close(f))) => {
                    w.record_close(false, f);
                    let _ = ws.close(None).await;
                    return;
                }
                Some(Ok(_)) => {
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
            },
            () = &mut sleep, if deadline.is_some() => {
                if w.expires_at.is_some_and(|e| e <= Instant::now()) {
                    // The session cap, as the conversation sessions end it: an error ahead of any
                    // paced output, then close 1001 with the reason.
                    w.expires_at = None;
                    w.queue.clear();
                    w.close_when_drained = None;
                    let secs = w.shared.config.session_max_duration_ms.unwrap_or(0) as f64 / 1000.0;
                    let reason = format!("Your session hit the maximum duration of {secs} seconds.");
                    let mut v = json!({"type": "error", "error": {"type": "invalid_request_error",
                        "code": "session_expired", "message": reason, "param": null, "event_id": null}});
                    v["event_id"] = Value::String(new_id("event"));
                    w.push_raw(v.to_string());
                    w.closing = Some(CloseFrame { code: CloseCode::Away, reason: reason.into() });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_deltas_concatenate_to_the_text() {
        for t in ["", "one", "Hello there, world.", " lead", "trail ", "a  b"] {
            let d = word_deltas(t);
            assert_eq!(d.concat(), t, "{d:?}");
        }
        assert_eq!(word_deltas("Hello there"), vec!["Hello", " there"]);
    }
}
