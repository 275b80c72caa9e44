//! One simulated caller: one `Converse` stream driven by one Tokio task. The task opens the stream,
//! waits for `SessionStarted`, then hands the *sending* to its pacer (`crate::pacer`), which pushes
//! the next pre-encoded frame (speech turn, then silence turn, forever) every 20 ms. The task itself
//! has no timer: it only reads whatever the sidecar sends back, answers in-stream tool calls, and,
//! when told to stop, takes back its send counters from the pacer and ends the session with
//! `Control.end`.

use crate::audio::Frames;
use crate::pacer::{self, SendStats, SpeechEnd};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;

pub const TOOL_NAME: &str = "lookup_order";

/// Shared, read-only session parameters.
pub struct Plan {
    pub frames: Frames,
    pub start: pb::SessionStart,
    pub setup_timeout: Duration,
    pub end_timeout: Duration,
    pub established: AtomicUsize,
    pub failed: AtomicUsize,
}

/// A coarse latency histogram: 100 µs buckets up to 100 ms, then 10 ms buckets up to 10 s.
#[derive(Debug, Clone)]
pub struct Hist {
    pub fine: Vec<u32>,   // [0, 100ms) in 100 µs steps
    pub coarse: Vec<u32>, // [100ms, 10s) in 10 ms steps, last bucket open-ended
    pub n: u64,
    pub max_us: u64,
    pub sum_us: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            fine: vec![0; 1000],
            coarse: vec![0; 991],
            n: 0,
            max_us: 0,
            sum_us: 0,
        }
    }
}

impl Hist {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros() as u64;
        self.n += 1;
        self.sum_us += us;
        self.max_us = self.max_us.max(us);
        if us < 100_000 {
            self.fine[(us / 100) as usize] += 1;
        } else {
            let i = ((us - 100_000) / 10_000).min(990) as usize;
            self.coarse[i] += 1;
        }
    }

    pub fn merge(&mut self, o: &Hist) {
        self.n += o.n;
        self.sum_us += o.sum_us;
        self.max_us = self.max_us.max(o.max_us);
        self.fine.iter_mut().zip(&o.fine).for_each(|(a, b)| *a += b);
        self.coarse
            .iter_mut()
            .zip(&o.coarse)
            .for_each(|(a, b)| *a += b);
    }

    /// Upper edge of the bucket holding quantile `q`, in microseconds.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).max(1);
        let mut c = 0u64;
        for (i, &n) in self.fine.iter().enumerate() {
            c += u64::from(n);
            if c >= rank {
                return Some(((i as u64 + 1) * 100).min(self.max_us));
            }
        }
        for (i, &n) in self.coarse.iter().enumerate() {
            c += u64::from(n);
            if c >= rank {
                return Some((100_000 + (i as u64 + 1) * 10_000).min(self.max_us));
            }
        }
        Some(self.max_us)
    }
}

/// What one session saw.
#[derive(Debug, Default)]
pub struct SessionStats {
    pub established: bool,
    /// Still alive when the hold period ended.
    pub held: bool,
    /// Established, then ended by the sidecar (or the stream failed) before the end of the hold.
    pub dropped: bool,
    /// Got `SessionEnded` (or a clean stream end) after our `Control.end`.
    pub clean_end: bool,
    pub frames_sent: u64,
    pub frames_skipped: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub responses: u64,
    pub turns_spoken: u64,
    pub tool_calls: u64,
    pub interruptions: u64,
    pub errors: BTreeMap<String, u64>,
    pub end_reason: Option<String>,
    /// Time from starting `Converse` to `SessionStarted`.
    pub setup: Option<Duration>,
    /// Client-observed: last speech frame sent -> first assistant audio frame received.
    pub turn_latency: Hist,
    /// Sidecar-reported `ResponseDone.voice_to_voice_ms`.
    pub v2v_reported: Hist,
    /// Gap between consecutive assistant audio frames within one response (client-observed jitter).
    pub out_gap: Hist,
}

impl SessionStats {
    fn err(&mut self, code: impl Into<String>) {
        *self.errors.entry(code.into()).or_insert(0) += 1;
    }

    /// Takes over the counters the pacer kept while it sent this session's frames.
    fn add_sends(&mut self, s: &SendStats) {
        self.frames_sent += s.frames_sent;
        self.frames_skipped += s.frames_skipped;
        self.turns_spoken += s.turns_spoken;
    }
}

fn msg(m: In) -> pb::ClientMessage {
    pb::ClientMessage { message: Some(m) }
}

fn code_name(c: tonic::Code) -> String {
    format!("grpc_{c:?}").to_lowercase()
}

pub async fn run(
    idx: usize,
    plan: Arc<Plan>,
    mut client: pb::voice_sidecar_client::VoiceSidecarClient<Channel>,
    pacer: pacer::Handle,
    mut stop: watch::Receiver<bool>,
) -> SessionStats {
    let mut st = SessionStats::default();
    let (tx, rx) = mpsc::channel::<pb::ClientMessage>(32);
    let _ = tx.try_send(msg(In::Start(plan.start.clone())));
    let t_open = Instant::now();
    let setup = async {
        let mut inbound = client.converse(ReceiverStream::new(rx)).await?.into_inner();
        loop {
            match inbound.message().await? {
                Some(pb::ServerMessage {
                    message: Some(Out::Started(_)),
                }) => return Ok(inbound),
                Some(pb::ServerMessage {
                    message: Some(Out::Error(e)),
                }) => return Err(tonic::Status::internal(format!("error:{}", e.code))),
                Some(pb::ServerMessage {
                    message: Some(Out::Ended(e)),
                }) => return Err(tonic::Status::internal(format!("ended:{}", e.reason))),
                Some(_) => {} // anything before Started: keep waiting
                None => return Err(tonic::Status::internal("stream_closed_before_started")),
            }
        }
    };
    let mut inbound = match tokio::time::timeout(plan.setup_timeout, setup).await {
        Err(_) => {
            st.err("setup_timeout");
            plan.failed.fetch_add(1, Ordering::Relaxed);
            return st;
        }
        Ok(Err(s)) => {
            if s.code() == tonic::Code::Internal {
                st.err(format!("setup_{}", s.message()));
            } else {
                st.err(code_name(s.code()));
            }
            plan.failed.fetch_add(1, Ordering::Relaxed);
            return st;
        }
        Ok(Ok(i)) => i,
    };
    st.established = true;
    st.setup = Some(t_open.elapsed());
    plan.established.fetch_add(1, Ordering::Relaxed);

    // From here on the pacer sends this session's audio (starting at `(idx * 7) % 10` of the cycle).
    let speech_end = Arc::new(SpeechEnd::new(pacer.base()));
    let mut handover = pacer.join(idx, tx.clone(), speech_end.clone());
    let mut sends: Option<SendStats> = None;
    let mut last_audio: Option<(Instant, String)> = None;

    let alive = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break true,
            m = inbound.message() => {
                match m {
                    Ok(Some(pb::ServerMessage { message: Some(o) })) => {
                        if let Some(ended) = handle(&mut st, &tx, o, Some(&speech_end), &mut last_audio) {
                            st.end_reason = Some(ended);
                            break false;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => { st.err("stream_closed"); st.end_reason = Some("stream_closed".into()); break false; }
                    Err(s) => { st.err(code_name(s.code())); st.end_reason = Some(code_name(s.code())); break false; }
                }
            }
            // The pacer hands the counters back early only when our stream is closed (or, racing
            // with the stop branch above, when it stopped).
            h = &mut handover => match h {
                Ok(h) => {
                    let closed = h.closed;
                    sends = Some(h);
                    if closed {
                        st.err("send_closed"); st.end_reason = Some("send_closed".into()); break false;
                    }
                    break true;
                }
                // Only if the pacer task died: nothing is sent any more, so the session is lost.
                Err(_) => {
                    sends = Some(SendStats::default());
                    st.err("pacer_gone"); st.end_reason = Some("pacer_gone".into()); break false;
                }
            }
        }
    };
    // Take the send counters back. Once the pacer has handed them over it sends nothing more for this
    // session, so no audio frame follows the `Control.end` below.
    let sends = match sends {
        Some(s) => s,
        None => {
            if !alive {
                pacer.leave(idx);
            }
            handover.await.unwrap_or_default()
        }
    };
    st.add_sends(&sends);

    if !alive {
        st.dropped = true;
        return st;
    }
    st.held = true;
    // End the session and wait for SessionEnded.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        tx.send(msg(In::Control(pb::Control {
            action: Some(pb::control::Action::End(pb::Empty {})),
        }))),
    )
    .await;
    let deadline = Instant::now() + plan.end_timeout;
    loop {
        match tokio::time::timeout_at(deadline, inbound.message()).await {
            Err(_) => {
                st.err("end_timeout");
                break;
            }
            Ok(Ok(Some(pb::ServerMessage { message: Some(o) }))) => {
                if let Some(reason) = handle(&mut st, &tx, o, None, &mut None) {
                    st.end_reason = Some(reason);
                    st.clean_end = true;
                    break;
                }
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => {
                st.clean_end = true;
                break;
            }
            Ok(Err(s)) => {
                st.err(format!("end_{}", code_name(s.code())));
                break;
            }
        }
    }
    drop(tx);
    st
}

/// Handles one server message; returns `Some(reason)` when the session ended.
fn handle(
    st: &mut SessionStats,
    tx: &mpsc::Sender<pb::ClientMessage>,
    o: Out,
    speech_end: Option<&SpeechEnd>,
    last_audio: &mut Option<(Instant, String)>,
) -> Option<String> {
    match o {
        Out::Audio(a) => {
            let now = Instant::now();
            st.frames_received += 1;
            st.bytes_received += a.data.len() as u64;
            if let Some(t) = speech_end.and_then(SpeechEnd::take) {
                st.turn_latency.record(now - t);
            }
            match last_audio {
                Some((t, item)) if *item == a.item_id => {
                    st.out_gap.record(now - *t);
                    *t = now;
                }
                _ => *last_audio = Some((now, a.item_id)),
            }
        }
        Out::ToolCall(c) => {
            st.tool_calls += 1;
            let out = serde_json::json!({"order_id": "A-1042", "status": "shipped", "eta_days": 2});
            let r = msg(In::ToolResult(pb::ToolResult {
                call_id: c.call_id,
                result: Some(pb::tool_result::Result::OutputJson(out.to_string())),
            }));
            if tx.try_send(r).is_err() {
                st.err("tool_result_not_sent");
            }
        }
        Out::ResponseDone(r) => {
            st.responses += 1;
            if r.voice_to_voice_ms > 0 {
                st.v2v_reported
                    .record(Duration::from_millis(u64::from(r.voice_to_voice_ms)));
            }
        }
        Out::Interrupted(_) => st.interruptions += 1,
        Out::Error(e) => st.err(e.code),
        Out::Ended(e) => return Some(format!("ended:{}", e.reason)),
        _ => {}
    }
    None
}
