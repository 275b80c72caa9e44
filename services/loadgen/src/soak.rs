//! `voice-loadgen soak`: keeps `--sessions` sessions running against a sidecar for `--secs`, each a
//! random mix of what real (and hostile) hosts do, and samples the sidecar's RSS, open file
//! descriptors and live tasks meanwhile. `scripts/soak.sh` runs it; `voice-loadgen soak-verdict`
//! (in `verdict.rs`) judges its report together with the simulator's tool ledger.
//!
//! A *slot* runs one session after another, so concurrency stays at `--sessions`. Every
//! `--hostile-every`th session is hostile, in turn: one that never sends its `SessionStart`, one that
//! sends bytes that are not a `ClientMessage`, one that sends an oversized frame and then a message
//! over the gRPC limit, one that stops reading its stream, one that vanishes (connection dropped).
//! Each hostile session has its own HTTP/2 connection (an unread stream holds its connection's
//! window; a vanished host takes its connection with it). The others (*callers*) declare a tool
//! routed back to this process (`ToolHost.Invoke`; most answers fast, some slowly), speak in turns
//! whose pauses are sometimes short enough to talk over the answer (barge-in), live 20-90 s, then
//! go quiet, wait until no tool call is open and nothing has happened for a moment, and end with
//! `Control.end`. Ending only at such a quiet point is what lets the verdict demand that every tool
//! call the simulator issued got its output.

use crate::audio::{Codec, Frames};
use crate::probe;
use anyhow::{Context, Result};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;

pub const TOOL_NAME: &str = "lookup_order";
/// The tool's declared timeout; the slowest answers stay well below it.
const TOOL_TIMEOUT_MS: u32 = 8000;
const FRAME: Duration = Duration::from_millis(20);

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// The sidecar's gRPC address (loopback only).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub sidecar: String,
    /// The sidecar's Prometheus address (loopback only), for `voice_tasks_active`.
    #[arg(long)]
    pub metrics: String,
    /// The sidecar's process id, for RSS and open file descriptors.
    #[arg(long)]
    pub sidecar_pid: u32,
    /// Run time: no session starts after it; running ones are wound down.
    #[arg(long, default_value_t = 600.0)]
    pub secs: f64,
    /// Concurrent sessions.
    #[arg(long, short = 'n', default_value_t = 300)]
    pub sessions: usize,
    /// Seconds between samples of RSS, fds and tasks.
    #[arg(long, default_value_t = 5.0)]
    pub sample_secs: f64,
    /// Every Nth session is hostile (0: none).
    #[arg(long, default_value_t = 8)]
    pub hostile_every: u64,
    /// Shortest and longest caller session, seconds (before winding down).
    #[arg(long, default_value_t = 20.0)]
    pub life_min_secs: f64,
    #[arg(long, default_value_t = 90.0)]
    pub life_max_secs: f64,
    /// Seed of the random choices (sessions' lives, pauses, slow tools, pacing).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the report (counters, samples) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A small deterministic PRNG (xorshift64*): the soak needs reproducible choices, not quality.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `pct`/100.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.range(0, 100) < pct
    }
}

/// The hostile behaviours, in the order they take turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Hostile {
    NoStart,
    Malformed,
    Oversized,
    StopsReading,
    Vanishes,
}

impl Hostile {
    const ALL: [Hostile; 5] = [
        Hostile::NoStart,
        Hostile::Malformed,
        Hostile::Oversized,
        Hostile::StopsReading,
        Hostile::Vanishes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hostile::NoStart => "no_start",
            Hostile::Malformed => "malformed",
            Hostile::Oversized => "oversized",
            Hostile::StopsReading => "stops_reading",
            Hostile::Vanishes => "vanishes",
        }
    }

    /// The outcome that shows the sidecar handled it.
    pub fn expected(self) -> &'static str {
        match self {
            Hostile::NoStart => "grpc_deadlineexceeded",
            Hostile::Malformed => "ended:invalid_message",
            Hostile::Oversized => "ended:message_too_large",
            Hostile::StopsReading => "ended_by_sidecar",
            Hostile::Vanishes => "vanished",
        }
    }
}

/// One sample of the sidecar.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub t_secs: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub tasks: u64,
    pub sessions_active: u64,
}

/// What the soak did, for `soak-verdict`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakReport {
    pub secs: f64,
    pub concurrency: usize,
    pub wall_secs: f64,
    pub callers_started: u64,
    /// Callers that ended with `Control.end` at a quiet point and got `SessionEnded{client_end}`.
    pub callers_completed: u64,
    /// Callers whose wind-down hit its cap (ended with a tool call open or activity going on).
    pub callers_ended_unquiet: u64,
    pub callers_failed: BTreeMap<String, u64>,
    pub hostile: BTreeMap<String, BTreeMap<String, u64>>,
    pub tool_invocations: u64,
    pub tool_slow: u64,
    /// `ToolHost.Invoke` called twice for one call id (a bug).
    pub tool_duplicate_invocations: u64,
    pub barge_ins: u64,
    pub upstream_disconnects_seen: u64,
    pub upstream_resumed_seen: u64,
    pub errors: BTreeMap<String, u64>,
    pub samples: Vec<Sample>,
    /// Machine-wide idle and steal shares over the run (`/proc/stat`).
    pub machine_idle: Option<f64>,
    pub machine_steal: Option<f64>,
}

#[derive(Default)]
struct Counters {
    callers_started: AtomicU64,
    callers_completed: AtomicU64,
    callers_ended_unquiet: AtomicU64,
    tool_invocations: AtomicU64,
    tool_slow: AtomicU64,
    tool_duplicates: AtomicU64,
    barge_ins: AtomicU64,
    disconnects: AtomicU64,
    resumed: AtomicU64,
    next_session: AtomicU64,
}

/// Shared by the slots and the tool host.
struct Soak {
    c: Counters,
    maps: Mutex<Maps>,
    frames: Frames,
    sidecar: SocketAddr,
    tool_addr: SocketAddr,
    hostile_every: u64,
    life: (f64, f64),
}

#[derive(Default)]
struct Maps {
    /// Tool calls open per sidecar session id, and when the last one started or ended.
    open_calls: HashMap<String, (u32, Instant)>,
    seen_calls: HashSet<String>,
    failed: BTreeMap<String, u64>,
    hostile: BTreeMap<String, BTreeMap<String, u64>>,
    errors: BTreeMap<String, u64>,
}

impl Soak {
    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn failed(&self, why: String) {
        *self.maps().failed.entry(why).or_insert(0) += 1;
    }

    fn hostile_outcome(&self, h: Hostile, outcome: String) {
        *self
            .maps()
            .hostile
            .entry(h.as_str().to_owned())
            .or_default()
            .entry(outcome)
            .or_insert(0) += 1;
    }

    fn error(&self, code: &str) {
        let mut m = self.maps();
        if let Some(n) = m.errors.get_mut(code) {
            *n += 1;
        } else if m.errors.len() < 64 {
            m.errors.insert(code.to_owned(), 1);
        }
    }

    /// Tool calls open for this session, and how long since the last one started or ended.
    fn tool_state(&self, session: &str) -> (u32, Option<Duration>) {
        self.maps()
            .open_calls
            .get(session)
            .map_or((0, None), |(n, t)| (*n, Some(t.elapsed())))
    }

    fn forget_session(&self, session: &str) {
        self.maps().open_calls.remove(session);
    }
}

// ------------------------------------------------------------------------------------------------
// The tool host
// ------------------------------------------------------------------------------------------------

/// Closes a call in the open-call map however its RPC ends (answered, or cancelled by the sidecar).
struct Done<'a>(&'a Soak, &'a str);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.0.maps().open_calls.get_mut(self.1) {
            e.0 = e.0.saturating_sub(1);
            e.1 = Instant::now();
        }
    }
}

struct Tools {
    soak: Arc<Soak>,
    rng: Mutex<Rng>,
}

#[tonic::async_trait]
impl pb::tool_host_server::ToolHost for Tools {
    async fn invoke(
        &self,
        req: tonic::Request<pb::ToolInvocation>,
    ) -> Result<tonic::Response<pb::ToolOutput>, tonic::Status> {
        let inv = req.into_inner();
        let soak = &self.soak;
        soak.c.tool_invocations.fetch_add(1, Relaxed);
        {
            let mut m = soak.maps();
            if !m.seen_calls.insert(inv.call_id.clone()) {
                soak.c.tool_duplicates.fetch_add(1, Relaxed);
            }
            let e = m
                .open_calls
                .entry(inv.session_id.clone())
                .or_insert((0, Instant::now()));
            e.0 += 1;
            e.1 = Instant::now();
        }
        // Most answers are quick; one in seven keeps the caller waiting past the silence guard.
        let delay = {
            let mut r = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            if r.chance(14) {
                soak.c.tool_slow.fetch_add(1, Relaxed);
                r.range(1500, 3500)
            } else {
                r.range(20, 200)
            }
        };
        let _done = Done(soak, &inv.session_id);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // The call id is in the output so that a result reported as context after a reconnect can
        // still be matched to its call by the simulator's ledger.
        let out = serde_json::json!({"call_id": inv.call_id, "order_id": "A-1042", "status": "shipped", "eta_days": 2});
        Ok(tonic::Response::new(pb::ToolOutput {
            result: Some(pb::tool_output::Result::OutputJson(out.to_string())),
        }))
    }
}

// ------------------------------------------------------------------------------------------------
// Raw frames: a codec that sends bytes as they are, so hostile hosts can send non-messages
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct Raw;

struct RawEncoder;
struct ServerDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ServerDecoder {
    type Item = pb::ServerMessage;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<pb::ServerMessage>, tonic::Status> {
        pb::ServerMessage::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = pb::ServerMessage;
    type Encoder = RawEncoder;
    type Decoder = ServerDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ServerDecoder {
        ServerDecoder
    }
}

fn encoded(m: In) -> Vec<u8> {
    pb::ClientMessage { message: Some(m) }.encode_to_vec()
}

fn msg(m: In) -> pb::ClientMessage {
    pb::ClientMessage { message: Some(m) }
}

fn code_name(c: tonic::Code) -> String {
    format!("grpc_{c:?}").to_lowercase()
}

/// Opens `Converse` with the raw codec on `ch`; the request stream is fed through the returned sender.
/// `first` is queued before the call: the sidecar answers (response headers) only once the first
/// message is in, or its start timeout is over.
async fn raw_converse(
    ch: Channel,
    first: Option<Vec<u8>>,
) -> (
    mpsc::Sender<Vec<u8>>,
    Result<tonic::Streaming<pb::ServerMessage>, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
    if let Some(m) = first {
        let _ = tx.try_send(m);
    }
    let mut grpc = tonic::client::Grpc::new(ch).max_decoding_message_size(64 << 20);
    if let Err(e) = grpc.ready().await {
        return (tx, Err(tonic::Status::unavailable(e.to_string())));
    }
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/voice.v1.VoiceSidecar/Converse");
    let tx2 = tx.clone();
    let r = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, Raw)
        .await
        .map(tonic::Response::into_inner);
    (tx2, r)
}

fn caller_start(tool_addr: SocketAddr, paced: bool) -> pb::SessionStart {
    pb::SessionStart {
        input_format: Some(Codec::Mulaw.format(8000)),
        output_format: Some(Codec::Mulaw.format(8000)),
        instructions: "You are a phone assistant under a soak test. Keep answers short.".into(),
        labels: [("tenant".to_string(), "soak".to_string())].into(),
        tools: vec![pb::ToolDefinition {
            name: TOOL_NAME.into(),
            description: "Look up an order's shipping status by order id.".into(),
            parameters_json_schema: serde_json::json!({"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}).to_string(),
            timeout_ms: TOOL_TIMEOUT_MS,
            ..Default::default()
        }],
        tool_routing: Some(pb::ToolRouting {
            route: Some(pb::tool_routing::Route::CallbackAddress(format!(
                "http://{tool_addr}"
            ))),
        }),
        pacing: paced.then_some(pb::Pacing {
            enabled: true,
            lead_ms: 100,
        }),
        ..Default::default()
    }
}

/// A caller's voice: 1.5 s turns, pauses of 0.7-4 s (the short ones run into the answer).
struct Voice {
    frame: usize,
    silence_left: usize,
    seq: u64,
}

impl Voice {
    fn new() -> Voice {
        Voice {
            frame: 0,
            silence_left: 0,
            seq: 0,
        }
    }

    fn next<'a>(&mut self, f: &'a Frames, rng: &mut Rng, quiet: bool) -> &'a [u8] {
        self.seq += 1;
        if quiet || self.silence_left > 0 {
            self.silence_left = self.silence_left.saturating_sub(1);
            return &f.silence[self.seq as usize % f.silence.len()];
        }
        let out = &f.speech[self.frame];
        self.frame += 1;
        if self.frame == f.speech.len() {
            self.frame = 0;
            self.silence_left = rng.range(35, 200) as usize;
        }
        out
    }

    fn frame(&mut self, f: &Frames, rng: &mut Rng, quiet: bool) -> pb::ClientMessage {
        let data = self.next(f, rng, quiet).to_vec();
        msg(In::Audio(pb::AudioFrame {
            data,
            seq: self.seq,
            ..Default::default()
        }))
    }
}

async fn started(
    inbound: &mut tonic::Streaming<pb::ServerMessage>,
    timeout: Duration,
) -> Result<String, String> {
    let wait = async {
        loop {
            match inbound.message().await {
                Ok(Some(pb::ServerMessage {
                    message: Some(Out::Started(s)),
                })) => return Ok(s.session_id),
                Ok(Some(pb::ServerMessage {
                    message: Some(Out::Ended(e)),
                })) => return Err(format!("setup_ended:{}", e.reason)),
                Ok(Some(_)) => {}
                Ok(None) => return Err("setup_stream_closed".to_owned()),
                Err(s) => return Err(format!("setup_{}", code_name(s.code()))),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or_else(|_| Err("setup_timeout".to_owned()))
}

// ------------------------------------------------------------------------------------------------
// A caller
// ------------------------------------------------------------------------------------------------

async fn caller(soak: &Soak, client: &Channel, rng: &mut Rng, stop_at: Instant) {
    soak.c.callers_started.fetch_add(1, Relaxed);
    let paced = rng.chance(50);
    let mut client = pb::voice_sidecar_client::VoiceSidecarClient::new(client.clone());
    let (tx, rx) = mpsc::channel::<pb::ClientMessage>(64);
    let _ = tx.try_send(msg(In::Start(caller_start(soak.tool_addr, paced))));
    let mut inbound = match client.converse(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return soak.failed(code_name(s.code())),
    };
    let sid = match started(&mut inbound, Duration::from_secs(30)).await {
        Ok(id) => id,
        Err(why) => return soak.failed(why),
    };
    let life = Duration::from_secs_f64(
        soak.life.0 + (soak.life.1 - soak.life.0) * (rng.range(0, 1000) as f64 / 1000.0),
    );
    let end_at = (Instant::now() + life).min(stop_at);
    let mut voice = Voice::new();
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_activity = Instant::now();
    let mut winding: Option<Instant> = None;
    let outcome: Result<bool, String> = loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                if winding.is_none() && now >= end_at {
                    winding = Some(now);
                }
                if let Some(w) = winding {
                    let (open, since_tool) = soak.tool_state(&sid);
                    let idle = now - last_activity;
                    let quiet = open == 0
                        && idle >= Duration::from_millis(2500)
                        && since_tool.is_none_or(|d| d >= Duration::from_millis(2500));
                    if quiet || now - w >= Duration::from_secs(25) {
                        break Ok(quiet);
                    }
                }
                // A real-time source drops a frame rather than queue it.
                let _ = tx.try_send(voice.frame(&soak.frames, rng, winding.is_some()));
            }
            m = inbound.message() => match m {
                Ok(Some(pb::ServerMessage { message: Some(o) })) => {
                    match o {
                        Out::Audio(_) | Out::Transcript(_) | Out::ResponseDone(_)
                        | Out::ToolCallStarted(_) | Out::ToolCallFinished(_) => last_activity = Instant::now(),
                        Out::Interrupted(_) => { soak.c.barge_ins.fetch_add(1, Relaxed); last_activity = Instant::now(); }
                        Out::Error(e) => {
                            match e.code.as_str() {
                                "upstream_disconnected" => { soak.c.disconnects.fetch_add(1, Relaxed); }
                                "upstream_resumed" => { soak.c.resumed.fetch_add(1, Relaxed); }
                                _ => {}
                            }
                            soak.error(&e.code);
                            last_activity = Instant::now();
                        }
                        Out::Ended(e) => break Err(format!("ended:{}", e.reason)),
                        _ => {}
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break Err("stream_closed".into()),
                Err(s) => break Err(code_name(s.code())),
            }
        }
    };
    let quiet = match outcome {
        Ok(q) => q,
        Err(why) => {
            soak.forget_session(&sid);
            return soak.failed(why);
        }
    };
    let _ = tx
        .send(msg(In::Control(pb::Control {
            action: Some(pb::control::Action::End(pb::Empty {})),
        })))
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match inbound.message().await {
                Ok(Some(pb::ServerMessage {
                    message: Some(Out::Ended(e)),
                })) => return Some(e.reason),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    })
    .await;
    soak.forget_session(&sid);
    match ended {
        Ok(Some(r)) if r == "client_end" => {
            if quiet {
                soak.c.callers_completed.fetch_add(1, Relaxed);
            } else {
                soak.c.callers_ended_unquiet.fetch_add(1, Relaxed);
            }
        }
        Ok(Some(r)) => soak.failed(format!("end:{r}")),
        Ok(None) => soak.failed("end_stream_closed".into()),
        Err(_) => soak.failed("end_timeout".into()),
    }
}

// ------------------------------------------------------------------------------------------------
// Hostile hosts
// ------------------------------------------------------------------------------------------------

/// A connection of its own, with a small receive window (64 KiB per stream and connection), so
/// that a host that stops reading fills its stream as a real one would.
async fn own_connection(sidecar: SocketAddr) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{sidecar}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .map_err(|_| "connect_failed".to_owned())
}

/// Reads until the stream ends; the outcome names how.
async fn read_to_end(inbound: &mut tonic::Streaming<pb::ServerMessage>, limit: Duration) -> String {
    let r = tokio::time::timeout(limit, async {
        loop {
            match inbound.message().await {
                Ok(Some(pb::ServerMessage {
                    message: Some(Out::Ended(e)),
                })) => return format!("ended:{}", e.reason),
                Ok(Some(_)) => {}
                Ok(None) => return "stream_closed".to_owned(),
                Err(s) => return code_name(s.code()),
            }
        }
    })
    .await;
    r.unwrap_or_else(|_| "still_open".to_owned())
}

fn hostile_start(out: Codec, rate: u32) -> pb::SessionStart {
    pb::SessionStart {
        input_format: Some(Codec::Mulaw.format(8000)),
        output_format: Some(out.format(rate)),
        instructions: "Soak test: a misbehaving host.".into(),
        ..Default::default()
    }
}

async fn hostile(soak: &Soak, kind: Hostile, rng: &mut Rng) -> String {
    let ch = match own_connection(soak.sidecar).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let first = match kind {
        Hostile::NoStart => None,
        Hostile::StopsReading => Some(encoded(In::Start(hostile_start(Codec::Pcm16, 24000)))),
        _ => Some(encoded(In::Start(hostile_start(Codec::Mulaw, 8000)))),
    };
    let (tx, inbound) = raw_converse(ch.clone(), first).await;
    match kind {
        Hostile::NoStart => {
            // Nothing is sent: the sidecar must give up after --start-timeout-ms. `raw_converse`
            // waits for the response headers, which come only with that refusal.
            match inbound {
                Ok(mut i) => read_to_end(&mut i, Duration::from_secs(20)).await,
                Err(s) => code_name(s.code()),
            }
        }
        Hostile::Malformed => {
            let mut inbound = match inbound {
                Ok(i) => i,
                Err(s) => return code_name(s.code()),
            };
            if let Err(e) = started(&mut inbound, Duration::from_secs(30)).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(rng.range(200, 3000))).await;
            // Field 1 as a varint of ten 0xff bytes: not a ClientMessage.
            let _ = tx
                .send(vec![
                    0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ])
                .await;
            read_to_end(&mut inbound, Duration::from_secs(20)).await
        }
        Hostile::Oversized => {
            let mut inbound = match inbound {
                Ok(i) => i,
                Err(s) => return code_name(s.code()),
            };
            if let Err(e) = started(&mut inbound, Duration::from_secs(30)).await {
                return e;
            }
            // A frame over --max-frame-bytes (dropped with an error, the session goes on), then a
            // message over --max-message-bytes (the session ends).
            let _ = tx
                .send(encoded(In::Audio(pb::AudioFrame {
                    data: vec![0x7f; 100_000],
                    seq: 1,
                    ..Default::default()
                })))
                .await;
            tokio::time::sleep(Duration::from_millis(rng.range(200, 2000))).await;
            let _ = tx
                .send(encoded(In::Audio(pb::AudioFrame {
                    data: vec![0x7f; 5 << 20],
                    seq: 2,
                    ..Default::default()
                })))
                .await;
            read_to_end(&mut inbound, Duration::from_secs(30)).await
        }
        Hostile::StopsReading => {
            // 24 kHz PCM16 out (see `first`), so the model's answers fill the stream quickly.
            let mut inbound = match inbound {
                Ok(i) => i,
                Err(s) => return code_name(s.code()),
            };
            if let Err(e) = started(&mut inbound, Duration::from_secs(30)).await {
                return e;
            }
            // Keeps talking (so the model keeps answering) and reads nothing for 35 s.
            let mut voice = Voice::new();
            let until = Instant::now() + Duration::from_secs(35);
            let mut tick = tokio::time::interval(FRAME);
            while Instant::now() < until {
                tick.tick().await;
                let m = voice.frame(&soak.frames, rng, false).encode_to_vec();
                let _ = tx.try_send(m);
            }
            drop(tx);
            // Reading again: what was queued, then the end (the sidecar gave up on the host).
            match read_to_end(&mut inbound, Duration::from_secs(15))
                .await
                .as_str()
            {
                "ended:host_stalled" | "stream_closed" => "ended_by_sidecar".to_owned(),
                other => other.to_owned(),
            }
        }
        Hostile::Vanishes => {
            let mut inbound = match inbound {
                Ok(i) => i,
                Err(s) => return code_name(s.code()),
            };
            if let Err(e) = started(&mut inbound, Duration::from_secs(30)).await {
                return e;
            }
            let mut voice = Voice::new();
            let until = Instant::now() + Duration::from_millis(rng.range(2000, 12_000));
            let mut tick = tokio::time::interval(FRAME);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if Instant::now() >= until { break; }
                        let _ = tx.try_send(voice.frame(&soak.frames, rng, false).encode_to_vec());
                    }
                    m = inbound.message() => match m {
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => return "ended_early".to_owned(),
                    }
                }
            }
            // Gone without a word: stream, request and connection dropped at once.
            drop(inbound);
            drop(tx);
            drop(ch);
            "vanished".to_owned()
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The run
// ------------------------------------------------------------------------------------------------

async fn slot(soak: Arc<Soak>, client: Channel, mut rng: Rng, stop_at: Instant) {
    while Instant::now() < stop_at {
        let n = soak.c.next_session.fetch_add(1, Relaxed) + 1;
        if soak.hostile_every > 0 && n.is_multiple_of(soak.hostile_every) {
            let kind =
                Hostile::ALL[((n / soak.hostile_every) % Hostile::ALL.len() as u64) as usize];
            let outcome = hostile(&soak, kind, &mut rng).await;
            soak.hostile_outcome(kind, outcome);
        } else {
            caller(&soak, &client, &mut rng, stop_at).await;
        }
    }
}

fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

pub async fn run(a: SoakArgs) -> Result<()> {
    let sidecar = crate::loopback("sidecar", &a.sidecar)?;
    let metrics = crate::loopback("metrics", &a.metrics)?;
    anyhow::ensure!(a.sessions > 0, "--sessions must be at least 1");
    anyhow::ensure!(
        a.life_min_secs > 0.0 && a.life_max_secs >= a.life_min_secs,
        "--life-min-secs must be positive and at most --life-max-secs"
    );
    probe::rss_kib(a.sidecar_pid)
        .with_context(|| format!("--sidecar-pid {}: no such process", a.sidecar_pid))?;
    let frames = Frames::build(Codec::Mulaw, 8000, 1500, 2500)?;

    // The tool host, on an ephemeral loopback port.
    let tool_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tool_addr = tool_listener.local_addr()?;
    let soak = Arc::new(Soak {
        c: Counters::default(),
        maps: Mutex::new(Maps::default()),
        frames,
        sidecar,
        tool_addr,
        hostile_every: a.hostile_every,
        life: (a.life_min_secs, a.life_max_secs),
    });
    let tools = Tools {
        soak: soak.clone(),
        rng: Mutex::new(Rng::new(a.seed ^ 0x7001)),
    };
    let tool_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::tool_host_server::ToolHostServer::new(tools))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                tool_listener,
            )),
    );

    // Callers share connections (100 sessions each, as hosts multiplex calls).
    let conns = a.sessions.div_ceil(100).max(1);
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let ch = Endpoint::from_shared(format!("http://{sidecar}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to the sidecar at {sidecar}"))?;
        clients.push(ch);
    }
    eprintln!(
        "voice-loadgen soak: {} sessions for {} s against {sidecar} (tool host {tool_addr}, every {}th session hostile)",
        a.sessions, a.secs, a.hostile_every
    );

    let t0 = Instant::now();
    let stop_at = t0 + Duration::from_secs_f64(a.secs);
    let machine0 = probe::machine_ticks();
    let mut slots = Vec::with_capacity(a.sessions);
    let mut seeder = Rng::new(a.seed);
    for i in 0..a.sessions {
        // Ramp over the first 10 s (or the run, if shorter).
        let ramp = Duration::from_secs_f64((a.secs / 4.0).min(10.0));
        tokio::time::sleep_until(t0 + ramp.mul_f64(i as f64 / a.sessions as f64)).await;
        let rng = Rng::new(seeder.next_u64());
        slots.push(tokio::spawn(slot(
            soak.clone(),
            clients[i % conns].clone(),
            rng,
            stop_at,
        )));
    }

    // Sample until every slot is done (the run, then the wind-down).
    let mut samples = Vec::new();
    let every = Duration::from_secs_f64(a.sample_secs.max(0.5));
    let mut next = t0;
    let all_done = futures_util::future::join_all(slots);
    tokio::pin!(all_done);
    let hard_stop = stop_at + Duration::from_secs(120);
    loop {
        next += every;
        tokio::select! {
            _ = &mut all_done => break,
            () = tokio::time::sleep_until(next) => {}
            () = tokio::time::sleep_until(hard_stop) => {
                eprintln!("voice-loadgen soak: sessions still running 120 s after the end; reporting anyway");
                break;
            }
        }
        let tasks_and_sessions = probe::scrape(metrics).await.ok().map(|s| {
            (
                s.sum("voice_tasks_active", &[]) as u64,
                s.sum("voice_sessions_active", &[]) as u64,
            )
        });
        let (Some(rss_kib), Some(fds), Some((tasks, sessions_active))) = (
            probe::rss_kib(a.sidecar_pid),
            fd_count(a.sidecar_pid),
            tasks_and_sessions,
        ) else {
            eprintln!("voice-loadgen soak: the sidecar cannot be sampled (gone?)");
            break;
        };
        let s = Sample {
            t_secs: t0.elapsed().as_secs_f64(),
            rss_kib,
            fds,
            tasks,
            sessions_active,
        };
        if samples.len() % 6 == 0 {
            eprintln!(
                "  t={:>5.0}s sessions={:>4} rss={} KiB fds={} tasks={} | callers {} done {} barge-ins {} tools {}",
                s.t_secs, s.sessions_active, s.rss_kib, s.fds, s.tasks,
                soak.c.callers_started.load(Relaxed), soak.c.callers_completed.load(Relaxed),
                soak.c.barge_ins.load(Relaxed), soak.c.tool_invocations.load(Relaxed)
            );
        }
        samples.push(s);
    }
    let machine = machine0
        .zip(probe::machine_ticks())
        .and_then(|(x, y)| probe::machine_shares(x, y));
    tool_server.abort();

    let m = soak.maps();
    let c = &soak.c;
    let report = SoakReport {
        secs: a.secs,
        concurrency: a.sessions,
        wall_secs: t0.elapsed().as_secs_f64(),
        callers_started: c.callers_started.load(Relaxed),
        callers_completed: c.callers_completed.load(Relaxed),
        callers_ended_unquiet: c.callers_ended_unquiet.load(Relaxed),
        callers_failed: m.failed.clone(),
        hostile: m.hostile.clone(),
        tool_invocations: c.tool_invocations.load(Relaxed),
        tool_slow: c.tool_slow.load(Relaxed),
        tool_duplicate_invocations: c.tool_duplicates.load(Relaxed),
        barge_ins: c.barge_ins.load(Relaxed),
        upstream_disconnects_seen: c.disconnects.load(Relaxed),
        upstream_resumed_seen: c.resumed.load(Relaxed),
        errors: m.errors.clone(),
        samples,
        machine_steal: machine.map(|x| x.0),
        machine_idle: machine.map(|x| x.1),
    };
    drop(m);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    eprintln!(
        "voice-loadgen soak: done after {:.0} s: {} callers ({} completed), {} tool calls, {} barge-ins",
        report.wall_secs, report.callers_started, report.callers_completed, report.tool_invocations, report.barge_ins
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            let x = a.range(35, 130);
            assert_eq!(x, b.range(35, 130));
            assert!((35..130).contains(&x));
        }
        assert_eq!(Rng::new(1).range(5, 5), 5);
    }

    #[test]
    fn hostile_kinds_take_turns() {
        let kinds: Vec<Hostile> = (1..=10)
            .map(|k| Hostile::ALL[(k % Hostile::ALL.len() as u64) as usize])
            .collect();
        for h in Hostile::ALL {
            assert_eq!(kinds.iter().filter(|k| **k == h).count(), 2, "{h:?}");
        }
    }
}
