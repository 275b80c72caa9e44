//! In-process harness: a session driven over channels by a scripted host and a scripted upstream
//! (in-memory Realtime connections), on paused Tokio time. No sockets, no sleeps: a test that waits
//! for the next message lets time jump to the session's next timer.

#![allow(dead_code)]

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime::{
    ApiKey, ConnectOptions, MemoryPeer, PeerMessage, RealtimeConnection, RealtimeError,
};
use voice_session::{
    run_session, Connect, Defaults, ReconnectPolicy, SessionContext, SessionPlan, ToolChannels,
    UpstreamSettings,
};

/// Hands each connection's far end to the test.
#[derive(Debug)]
pub struct ScriptedConnector {
    peers: mpsc::UnboundedSender<MemoryPeer>,
}

impl Connect for ScriptedConnector {
    fn connect(
        &self,
        opts: ConnectOptions,
    ) -> BoxFuture<'static, Result<RealtimeConnection, RealtimeError>> {
        let (conn, peer) = RealtimeConnection::in_memory(opts.dialect);
        let sent = self.peers.send(peer);
        Box::pin(async move {
            if sent.is_err() {
                return Err(RealtimeError::Connect {
                    url: "memory".into(),
                    reason: "the test's upstream is gone".into(),
                });
            }
            conn.handshake(opts.connect_timeout).await
        })
    }
}

/// The scripted upstream of one connection.
pub struct Upstream {
    pub peer: MemoryPeer,
    next_id: std::cell::Cell<u32>,
}

impl Upstream {
    pub async fn send(&mut self, v: Value) {
        self.peer
            .to_client
            .send(PeerMessage::Text(v.to_string()))
            .await
            .expect("the session dropped its upstream");
    }

    pub async fn close(&mut self) {
        let _ = self
            .peer
            .to_client
            .send(PeerMessage::Close {
                code: Some(1011),
                reason: Some("test".into()),
            })
            .await;
    }

    /// The next client event that is not an audio append. Panics after 60 s of (paused) time.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let text = tokio::time::timeout(Duration::from_secs(60), self.peer.from_client.recv())
                .await
                .expect("no client event within 60 s")
                .expect("the session closed its upstream");
            let v: Value = serde_json::from_str(&text).expect("client events are JSON");
            if v["type"] != "input_audio_buffer.append" {
                return v;
            }
        }
    }

    /// The next client event of this type; others before it are returned too, in order.
    pub async fn until(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let v = self.next_event().await;
            if v["type"] == kind {
                return (v, before);
            }
            before.push(v);
        }
    }

    /// Client events already sent, without waiting (audio appends included).
    pub fn drain_now(&mut self) -> Vec<Value> {
        let mut v = Vec::new();
        while let Ok(t) = self.peer.from_client.try_recv() {
            v.push(serde_json::from_str(&t).unwrap());
        }
        v
    }

    /// `session.created`, then answers the session's `session.update` with `session.updated`.
    pub async fn accept(&mut self) -> Value {
        self.send(
            json!({"type": "session.created", "event_id": "s0", "session": {"id": "sess_1"}}),
        )
        .await;
        let (update, _) = self.until("session.update").await;
        self.send(
            json!({"type": "session.updated", "event_id": "s1", "session": update["session"]}),
        )
        .await;
        update
    }

    fn id(&self, p: &str) -> String {
        self.next_id.set(self.next_id.get() + 1);
        format!("{p}_{}", self.next_id.get())
    }

    /// Starts a response as upstream would for a create: `response.created` echoing its metadata.
    pub async fn created_for(&mut self, create: &Value) -> String {
        let rid = self.id("resp");
        let metadata = create["response"]["metadata"].clone();
        self.send(
            json!({"type": "response.created", "event_id": self.id("ev"),
            "response": {"id": rid, "status": "in_progress", "output": [], "metadata": metadata}}),
        )
        .await;
        rid
    }

    /// The host sends text as the user; the session asks for a response and upstream starts it.
    /// Returns the response id.
    pub async fn respond_to_text(&mut self, host: &Host, text: &str) -> String {
        host.control(pb::control::Action::SendText(text.into()))
            .await;
        let (create, _) = self.until("response.create").await;
        self.created_for(&create).await
    }

    /// The response calls the `lookup` tool once, then ends.
    pub async fn call_and_end(&mut self, rid: &str, call_id: &str, args: &str) {
        self.call(rid, call_id, "lookup", args).await;
        self.done(rid, "completed", json!([])).await;
    }

    /// A response upstream started by itself (server VAD): untagged.
    pub async fn created_untagged(&mut self) -> String {
        let rid = self.id("resp");
        self.send(
            json!({"type": "response.created", "event_id": self.id("ev"),
            "response": {"id": rid, "status": "in_progress", "output": []}}),
        )
        .await;
        rid
    }

    /// `ms` of assistant audio (PCM16 24 kHz, a tone) for `item`, in 100 ms deltas.
    pub async fn audio(&mut self, rid: &str, item: &str, ms: u32) {
        use base64::Engine;
        for chunk in 0..ms.div_ceil(100) {
            let n = (ms - chunk * 100).min(100) as usize * 24;
            let pcm: Vec<u8> = (0..n)
                .flat_map(|i| {
                    let s = ((i as f32 * 0.05).sin() * 8000.0) as i16;
                    s.to_le_bytes()
                })
                .collect();
            let b64 = base64::engine::general_purpose::STANDARD.encode(pcm);
            self.send(json!({"type": "response.output_audio.delta", "event_id": self.id("ev"),
                "response_id": rid, "item_id": item, "output_index": 0, "content_index": 0, "delta": b64}))
                .await;
        }
    }

    pub async fn done(&mut self, rid: &str, status: &str, output: Value) {
        self.send(json!({"type": "response.done", "event_id": self.id("ev"),
            "response": {"id": rid, "status": status, "output": output,
                "usage": {"total_tokens": 10, "input_tokens": 5, "output_tokens": 5,
                    "input_token_details": {"text_tokens": 5, "audio_tokens": 0, "cached_tokens": 0},
                    "output_token_details": {"text_tokens": 0, "audio_tokens": 5}}}}))
            .await;
    }

    /// A response that calls `name` with `args`, then ends.
    pub async fn call(&mut self, rid: &str, call_id: &str, name: &str, args: &str) {
        let item = json!({"type": "function_call", "id": self.id("item"), "call_id": call_id,
            "name": name, "arguments": args, "status": "completed"});
        self.send(
            json!({"type": "response.output_item.done", "event_id": self.id("ev"),
            "response_id": rid, "output_index": 0, "item": item}),
        )
        .await;
    }

    pub async fn speech_started(&mut self) {
        self.send(
            json!({"type": "input_audio_buffer.speech_started", "event_id": self.id("ev"),
            "audio_start_ms": 1000, "item_id": self.id("item")}),
        )
        .await;
    }

    pub async fn speech_stopped(&mut self) {
        self.send(
            json!({"type": "input_audio_buffer.speech_stopped", "event_id": self.id("ev"),
            "audio_end_ms": 2000, "item_id": self.id("item")}),
        )
        .await;
    }

    pub async fn error_for(&mut self, event_id: &Value, kind: &str, code: &str) {
        self.send(json!({"type": "error", "event_id": self.id("ev"),
            "error": {"type": kind, "code": code, "message": format!("scripted {code}"), "event_id": event_id}}))
            .await;
    }
}

/// The scripted host: its side of the `Converse` stream.
pub struct Host {
    pub tx: mpsc::Sender<Result<pb::ClientMessage, Status>>,
    pub rx: mpsc::Receiver<Result<pb::ServerMessage, Status>>,
    pub seen: Vec<Out>,
}

impl Host {
    pub async fn send(&self, m: In) {
        self.tx
            .send(Ok(pb::ClientMessage { message: Some(m) }))
            .await
            .expect("session gone");
    }

    pub async fn control(&self, a: pb::control::Action) {
        self.send(In::Control(pb::Control { action: Some(a) }))
            .await;
    }

    /// The next message. Panics after 60 s of (paused) time or if the stream ended.
    pub async fn next(&mut self) -> Out {
        let m = tokio::time::timeout(Duration::from_secs(60), self.rx.recv())
            .await
            .expect("no host message within 60 s")
            .expect("the session closed the host stream")
            .expect("status")
            .message
            .expect("message");
        self.seen.push(m.clone());
        m
    }

    /// Messages until one matches; returns it.
    pub async fn until<T>(&mut self, mut f: impl FnMut(&Out) -> Option<T>) -> T {
        loop {
            let m = self.next().await;
            if let Some(t) = f(&m) {
                return t;
            }
        }
    }

    pub async fn tool_call(&mut self) -> pb::ToolCall {
        self.until(|m| match m {
            Out::ToolCall(c) => Some(c.clone()),
            _ => None,
        })
        .await
    }

    pub async fn interrupted(&mut self) -> pb::Interrupted {
        self.until(|m| match m {
            Out::Interrupted(i) => Some(i.clone()),
            _ => None,
        })
        .await
    }

    pub async fn tool_finished(&mut self) -> pb::ToolCallFinished {
        self.until(|m| match m {
            Out::ToolCallFinished(f) => Some(f.clone()),
            _ => None,
        })
        .await
    }

    pub async fn error(&mut self, code: &str) -> pb::Error {
        self.until(|m| match m {
            Out::Error(e) if e.code == code => Some(e.clone()),
            _ => None,
        })
        .await
    }

    pub async fn rolled_over(&mut self) -> pb::SessionRolledOver {
        self.until(|m| match m {
            Out::RolledOver(r) => Some(r.clone()),
            _ => None,
        })
        .await
    }

    pub async fn ended(&mut self) -> pb::SessionEnded {
        self.until(|m| match m {
            Out::Ended(e) => Some(e.clone()),
            _ => None,
        })
        .await
    }

    pub fn audio_seqs(&self) -> Vec<u64> {
        self.seen
            .iter()
            .filter_map(|m| match m {
                Out::Audio(f) => Some(f.seq),
                _ => None,
            })
            .collect()
    }
}

pub struct Harness {
    pub host: Host,
    pub peers: mpsc::UnboundedReceiver<MemoryPeer>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Harness {
    /// The next upstream connection the session opens.
    pub async fn connection(&mut self) -> Upstream {
        let peer = tokio::time::timeout(Duration::from_secs(60), self.peers.recv())
            .await
            .expect("no upstream connection within 60 s")
            .expect("connector gone");
        Upstream {
            peer,
            next_id: std::cell::Cell::new(0),
        }
    }

    /// Starts a session from `start` and accepts its first upstream connection.
    pub async fn start(start: pb::SessionStart) -> (Harness, Upstream) {
        Harness::start_with(start, &Defaults::default()).await
    }

    /// [`Harness::start`] with sidecar defaults of the test's choosing.
    pub async fn start_with(start: pb::SessionStart, defaults: &Defaults) -> (Harness, Upstream) {
        let mut h = Harness::spawn_with(&start, defaults);
        let mut up = h.connection().await;
        up.accept().await;
        match h.host.next().await {
            Out::Started(s) => assert!(!s.session_id.is_empty()),
            other => panic!("expected SessionStarted, got {other:?}"),
        }
        (h, up)
    }

    pub fn spawn(start: &pb::SessionStart) -> Harness {
        Harness::spawn_with(start, &Defaults::default())
    }

    pub fn spawn_with(start: &pb::SessionStart, defaults: &Defaults) -> Harness {
        let (peers_tx, peers) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let mut ctx = SessionContext::new(
            UpstreamSettings {
                base_url: "ws://memory".into(),
                api_key: ApiKey::new("sk-test-never-logged").unwrap(),
                connect_timeout: Duration::from_secs(5),
                max_message_bytes: 1 << 20,
            },
            ToolChannels::default(),
            shutdown.clone(),
            Duration::from_secs(3),
        );
        ctx.connector = Arc::new(ScriptedConnector { peers: peers_tx });
        ctx.reconnect = ReconnectPolicy::default();
        let plan = SessionPlan::from_start(start, defaults).expect("valid start");
        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(256);
        let task = tokio::spawn(run_session(
            plan,
            ReceiverStream::new(in_rx),
            out_tx,
            Arc::new(ctx),
            "sess-test".into(),
        ));
        Harness {
            host: Host {
                tx: in_tx,
                rx: out_rx,
                seen: Vec::new(),
            },
            peers,
            shutdown,
            task,
        }
    }
}

/// A `SessionStart` with one in-stream tool `lookup` (timeout `tool_ms`), PCM16 24 kHz.
pub fn start_with_tool(tool_ms: u32) -> pb::SessionStart {
    pb::SessionStart {
        instructions: "Be brief.".into(),
        tools: vec![pb::ToolDefinition {
            name: "lookup".into(),
            description: "Looks something up".into(),
            parameters_json_schema: r#"{"type":"object","properties":{"q":{"type":"string"}}}"#
                .into(),
            timeout_ms: tool_ms,
            ..Default::default()
        }],
        tool_routing: Some(pb::ToolRouting {
            route: Some(pb::tool_routing::Route::InStream(true)),
        }),
        ..Default::default()
    }
}
