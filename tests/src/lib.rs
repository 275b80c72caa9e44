//! Support for the end-to-end tests: building and starting the real binaries (and the simulator) on
//! loopback ports, speech-like test audio, and a small host client that records what a session
//! returns, with typed waits for the messages a test expects.

use serde_json::Value;
use std::fmt::Display;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
pub use voice_proto::v1::server_message::Message as Out;
use voice_realtime_sim::{SimConfig, SimHandle, SimServer};

/// Path of a workspace binary, built once per test process so tests never run a stale one.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root).args([
            "build",
            "-q",
            "-p",
            "voice-sidecar",
            "-p",
            "realtime-sim",
            "-p",
            "voice-demo",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("running cargo build for the binaries");
        assert!(st.success(), "building the binaries failed");
    });
    let p = dir.join(name);
    assert!(p.exists(), "binary {} not found", p.display());
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

pub async fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    let t0 = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            t0.elapsed() < timeout,
            "nothing listening on {addr} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the Realtime simulator in this process on a free loopback port.
pub async fn start_sim(cfg: SimConfig) -> SimHandle {
    SimServer::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .expect("starting the simulator")
}

/// Client events the simulator received of type `kind`, in order.
pub fn sent(sim: &SimHandle, kind: &str) -> Vec<Value> {
    sim.events_log()
        .into_iter()
        .map(|e| e.event)
        .filter(|e| e["type"] == kind)
        .collect()
}

/// Polls `cond` every 20 ms until it holds; panics with `what` if it still does not after `timeout`.
pub async fn eventually<D: Display>(
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    what: impl Fn() -> D,
) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "{}", what());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `voice-sidecar` against an upstream URL (the simulator), with extra flags.
pub async fn start_sidecar(realtime_url: &str, extra: &[&str]) -> Proc {
    spawn_sidecar(realtime_url, extra, "warn", Stdio::inherit()).await
}

/// Like [`start_sidecar`], logging at `log` (a `--log` filter) into a file (pretty format), whose
/// path is returned; read it after the process has exited or been killed.
pub async fn start_sidecar_logged(
    realtime_url: &str,
    extra: &[&str],
    log: &str,
) -> (Proc, PathBuf) {
    let path = std::env::temp_dir().join(format!("voice-e2e-log-{}", free_port()));
    let file = std::fs::File::create(&path).expect("creating the sidecar log file");
    (
        spawn_sidecar(realtime_url, extra, log, Stdio::from(file)).await,
        path,
    )
}

async fn spawn_sidecar(realtime_url: &str, extra: &[&str], log: &str, stderr: Stdio) -> Proc {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let key_file = std::env::temp_dir().join(format!("voice-e2e-key-{port}"));
    std::fs::write(&key_file, "sk-test-e2e-secret\n").unwrap();
    let child = Command::new(binary("voice-sidecar"))
        .args([
            "--backend",
            "openai",
            "--realtime-url",
            realtime_url,
            "--listen",
            &addr.to_string(),
        ])
        .args(if extra.contains(&"--metrics-listen") {
            &[][..]
        } else {
            &["--metrics-listen", "off"][..]
        })
        .args(["--log", log, "--api-key-file"])
        .arg(&key_file)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starting voice-sidecar");
    wait_for_port(addr, Duration::from_secs(20)).await;
    Proc { child, addr }
}

/// Like [`start_sidecar`], with `/metrics` served on a free loopback port, which is returned.
pub async fn start_sidecar_with_metrics(realtime_url: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = metrics.to_string();
    let mut args = vec!["--metrics-listen", listen.as_str()];
    args.extend_from_slice(extra);
    (start_sidecar(realtime_url, &args).await, metrics)
}

/// Speech-like audio, `secs` long at `rate`, about -14 dBFS peak: the signal the load generator sends
/// ([`voice_audio::signal::speech_like`]).
pub fn speech_like(rate: u32, secs: f32) -> Vec<i16> {
    voice_audio::signal::speech_like(rate, (rate as f32 * secs) as usize)
}

/// `secs` of digital silence at `rate`.
pub fn silence(rate: u32, secs: f32) -> Vec<i16> {
    vec![0; (rate as f32 * secs) as usize]
}

pub fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

pub fn rms_dbfs(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return f64::NEG_INFINITY;
    }
    let e: f64 = samples
        .iter()
        .map(|&s| (f64::from(s) / 32768.0).powi(2))
        .sum::<f64>()
        / samples.len() as f64;
    10.0 * e.max(1e-20).log10()
}

pub fn msg(m: In) -> pb::ClientMessage {
    pb::ClientMessage { message: Some(m) }
}

pub fn control(a: pb::control::Action) -> pb::ClientMessage {
    msg(In::Control(pb::Control { action: Some(a) }))
}

/// Streams PCM16 samples as 20 ms frames in real time (seq from `first_seq`). Returns the next seq.
pub async fn stream_pcm(
    tx: &mpsc::Sender<pb::ClientMessage>,
    samples: &[i16],
    rate: u32,
    first_seq: u64,
) -> u64 {
    let frame = (rate / 50) as usize;
    let frames: Vec<_> = samples.chunks(frame).map(|c| Some(pcm_bytes(c))).collect();
    stream_frames(tx, frames, first_seq).await
}

/// Sends one audio frame every 20 ms, numbered from `first_seq`; a `None` is a frame lost in the
/// network (its slot and seq pass, nothing is sent). Stops early if the stream closes. Returns the
/// next seq, so `first_seq + frames` means every frame was taken.
pub async fn stream_frames(
    tx: &mpsc::Sender<pb::ClientMessage>,
    frames: impl IntoIterator<Item = Option<Vec<u8>>>,
    first_seq: u64,
) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut seq = first_seq;
    for data in frames {
        tick.tick().await;
        if let Some(data) = data {
            let frame = pb::AudioFrame {
                data,
                seq,
                ..Default::default()
            };
            if tx.send(msg(In::Audio(frame))).await.is_err() {
                break;
            }
        }
        seq += 1;
    }
    seq
}

/// One open `Converse` stream from the host's side.
pub struct HostSession {
    pub tx: mpsc::Sender<pb::ClientMessage>,
    pub rx: tonic::Streaming<pb::ServerMessage>,
    pub t0: Instant,
    /// Everything received so far, with arrival time.
    pub events: Vec<(Duration, Out)>,
}

pub async fn client(
    addr: SocketAddr,
) -> pb::voice_sidecar_client::VoiceSidecarClient<tonic::transport::Channel> {
    pb::voice_sidecar_client::VoiceSidecarClient::connect(format!("http://{addr}"))
        .await
        .expect("connecting to the sidecar")
}

impl HostSession {
    /// Opens a stream and sends `start`; returns the gRPC status if the sidecar refuses it.
    pub async fn open(
        addr: SocketAddr,
        start: pb::SessionStart,
    ) -> Result<HostSession, tonic::Status> {
        Self::open_with(client(addr).await, start).await
    }

    /// [`HostSession::open`], admitted, once `SessionStarted` has arrived (within 10 s).
    pub async fn open_started(addr: SocketAddr, start: pb::SessionStart) -> HostSession {
        let mut host = Self::open(addr, start).await.expect("session admitted");
        host.until_started(Duration::from_secs(10)).await;
        host
    }

    /// [`HostSession::open`], admitted, requiring the first message to be `SessionStarted` (within
    /// 10 s), which is returned with the session.
    pub async fn open_first_started(
        addr: SocketAddr,
        start: pb::SessionStart,
    ) -> (HostSession, pb::SessionStarted) {
        let mut host = Self::open(addr, start).await.expect("session admitted");
        let started = expect_msg!(host.next(Duration::from_secs(10)).await, Started);
        (host, started)
    }

    /// [`HostSession::open`] over a client the caller set up.
    pub async fn open_with(
        c: pb::voice_sidecar_client::VoiceSidecarClient<tonic::transport::Channel>,
        start: pb::SessionStart,
    ) -> Result<HostSession, tonic::Status> {
        Self::open_with_metadata(c, start, &[]).await
    }

    /// [`HostSession::open_with`], the `Converse` call carrying `metadata` (e.g. `authorization`).
    pub async fn open_with_metadata(
        mut c: pb::voice_sidecar_client::VoiceSidecarClient<tonic::transport::Channel>,
        start: pb::SessionStart,
        metadata: &[(&'static str, &str)],
    ) -> Result<HostSession, tonic::Status> {
        let (tx, rx) = mpsc::channel(256);
        tx.send(msg(In::Start(start))).await.unwrap();
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        for (k, v) in metadata {
            req.metadata_mut()
                .insert(*k, v.parse().expect("an ASCII metadata value"));
        }
        let rx = c.converse(req).await?.into_inner();
        Ok(HostSession {
            tx,
            rx,
            t0: Instant::now(),
            events: Vec::new(),
        })
    }

    pub async fn send(&self, m: In) {
        self.tx.send(msg(m)).await.expect("sidecar stream closed");
    }

    pub async fn control(&self, a: pb::control::Action) {
        self.send(In::Control(pb::Control { action: Some(a) }))
            .await;
    }

    /// A typed user turn (`Control.send_text`).
    pub async fn send_text(&self, text: &str) {
        self.control(pb::control::Action::SendText(text.into()))
            .await;
    }

    /// `Control.end`.
    pub async fn end(&self) {
        self.control(pb::control::Action::End(pb::Empty {})).await;
    }

    /// Streams PCM16 in real time from a background task (so the caller can keep receiving).
    pub fn stream_in_background(
        &self,
        samples: Vec<i16>,
        rate: u32,
        first_seq: u64,
    ) -> tokio::task::JoinHandle<u64> {
        let tx = self.tx.clone();
        tokio::spawn(async move { stream_pcm(&tx, &samples, rate, first_seq).await })
    }

    /// Sends encoded 20 ms frames (`None`: lost, see [`stream_frames`]) in real time from a
    /// background task; the task returns the next seq.
    pub fn stream_frames_in_background(
        &self,
        frames: Vec<Option<Vec<u8>>>,
        first_seq: u64,
    ) -> tokio::task::JoinHandle<u64> {
        let tx = self.tx.clone();
        tokio::spawn(async move { stream_frames(&tx, frames, first_seq).await })
    }

    /// Receives until `pred` matches an event (returned) or the timeout passes (panics with the log).
    pub async fn until(&mut self, timeout: Duration, mut pred: impl FnMut(&Out) -> bool) -> Out {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.message()).await;
            match m {
                Err(_) => panic!("timed out after {timeout:?}; received: {:#?}", self.kinds()),
                Ok(Err(s)) => panic!("stream failed: {s}; received: {:#?}", self.kinds()),
                Ok(Ok(None)) => panic!("stream ended; received: {:#?}", self.kinds()),
                Ok(Ok(Some(m))) => {
                    let Some(o) = m.message else { continue };
                    self.events.push((self.t0.elapsed(), o.clone()));
                    if pred(&o) {
                        return o;
                    }
                }
            }
        }
    }

    /// The next message, whatever it is (within `timeout`).
    pub async fn next(&mut self, timeout: Duration) -> Out {
        self.until(timeout, |_| true).await
    }

    /// Short names of received events, audio frames collapsed.
    pub fn kinds(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for (_, e) in &self.events {
            let k = kind(e);
            if k == "audio" && v.last().is_some_and(|l| l.starts_with("audio")) {
                continue;
            }
            v.push(k);
        }
        v
    }

    pub fn audio_frames(&self) -> Vec<&pb::AudioFrame> {
        self.events
            .iter()
            .filter_map(|(_, e)| if let Out::Audio(a) = e { Some(a) } else { None })
            .collect()
    }
}

/// The payload of a server message that must be `Out::$variant`; panics naming what it was instead.
/// `expect_msg!(host.next(t).await, Started)` checks that the first message is `SessionStarted`.
#[macro_export]
macro_rules! expect_msg {
    ($m:expr, $variant:ident) => {
        match $m {
            $crate::Out::$variant(x) => x,
            other => panic!(
                "expected {}, got {}: {:?}",
                stringify!($variant),
                $crate::kind(&other),
                other
            ),
        }
    };
}

/// `HostSession::until_<variant>(timeout)`: receives until a message of that variant arrives (all
/// messages are kept in `events`) and returns its payload.
macro_rules! typed_waits {
    ($($name:ident => $variant:ident($ty:ty)),* $(,)?) => {
        impl HostSession {
            $(
                #[doc = concat!("Receives until `", stringify!($variant), "` arrives and returns it.")]
                pub async fn $name(&mut self, timeout: Duration) -> $ty {
                    let m = self.until(timeout, |e| matches!(e, Out::$variant(_))).await;
                    expect_msg!(m, $variant)
                }
            )*
        }
    };
}

typed_waits! {
    until_started => Started(pb::SessionStarted),
    until_audio => Audio(pb::AudioFrame),
    until_tool_call => ToolCall(pb::ToolCall),
    until_tool_call_started => ToolCallStarted(pb::ToolCallStarted),
    until_tool_call_finished => ToolCallFinished(pb::ToolCallFinished),
    until_interrupted => Interrupted(pb::Interrupted),
    until_response_done => ResponseDone(pb::ResponseDone),
    until_error => Error(pb::Error),
    until_ended => Ended(pb::SessionEnded),
    until_idle_timeout => IdleTimeout(pb::IdleTimeout),
    until_quiet_mode => QuietMode(pb::QuietMode),
    until_rolled_over => RolledOver(pb::SessionRolledOver),
    until_ending_soon => EndingSoon(pb::CallEndingSoon),
}

pub fn kind(e: &Out) -> String {
    match e {
        Out::Started(_) => "started".into(),
        Out::Audio(_) => "audio".into(),
        Out::Transcript(t) => format!(
            "transcript.{}{}",
            if t.role == pb::Role::User as i32 {
                "user"
            } else {
                "assistant"
            },
            if t.r#final { ".final" } else { "" }
        ),
        Out::ToolCallStarted(_) => "tool_call_started".into(),
        Out::ToolCallFinished(_) => "tool_call_finished".into(),
        Out::ToolCall(_) => "tool_call".into(),
        Out::Interrupted(_) => "interrupted".into(),
        Out::SpeechStarted(_) => "speech_started".into(),
        Out::SpeechStopped(_) => "speech_stopped".into(),
        Out::ResponseDone(_) => "response_done".into(),
        Out::Error(e) => format!("error:{}", e.code),
        Out::Ended(e) => format!("ended:{}", e.reason),
        Out::IdleTimeout(_) => "idle_timeout".into(),
        Out::QuietMode(q) => format!("quiet_mode:{}", if q.on { "on" } else { "off" }),
        Out::RolledOver(r) => format!(
            "rolled_over:{}",
            if r.forced { "forced" } else { "natural" }
        ),
        Out::EndingSoon(_) => "ending_soon".into(),
    }
}

/// Mono, 20 ms frames.
/// A 16 kHz PCM16 session with the silence guard off (tests whose timing a holding line would
/// disturb).
pub fn start_16k_quiet_guard() -> pb::SessionStart {
    pb::SessionStart {
        input_format: Some(pcm16(16000)),
        silence_guard: Some(pb::SilenceGuard {
            action: pb::silence_guard::Action::Off as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn audio_format(codec: pb::Codec, rate: u32) -> pb::AudioFormat {
    pb::AudioFormat {
        codec: codec as i32,
        sample_rate_hz: rate,
        channels: 1,
        frame_ms: 20,
    }
}

pub fn pcm16(rate: u32) -> pb::AudioFormat {
    audio_format(pb::Codec::Pcm16, rate)
}

/// GET `http://addr/path` over a plain TCP socket (enough for `/metrics`).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the metrics endpoint");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Sum of every sample of `name` whose labels include all of `labels` (Prometheus text format).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lab) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| lab.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The shared validator script (the simulator's tests use it too).
const EVENT_VALIDATOR: &str = include_str!("../../scripts/validate_realtime_events.py");

/// Validates client events the sidecar sent (as the simulator recorded them) against the `openai`
/// package's typed models (3.57.0, installed by `scripts/bootstrap.sh --test`). `dialect`: "ga" or
/// "beta". Returns how many were validated; panics naming every invalid one.
pub fn validate_client_events(dialect: &str, events: &[Value]) -> usize {
    use std::io::Write;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .args(["-c", EVENT_VALIDATOR, "client", dialect])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "python3 with openai==3.57.0 (scripts/bootstrap.sh --test) validates client events",
        );
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for e in events {
            writeln!(stdin, "{e}").expect("writing events to the validator");
        }
    }
    let out = child.wait_with_output().expect("validator output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client events failed the openai models:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    events.len()
}
