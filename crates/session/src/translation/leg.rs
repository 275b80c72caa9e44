//! One translation leg: one upstream translation session, owned by one task.
//!
//! The leg gets 24 kHz PCM16 from the runner ([`ToLeg::Audio`]) and appends it upstream in 200 ms
//! chunks. It keeps its own 200 ms clock: while no host audio has come for a frame or more, it sends
//! silence (padding a partial chunk first), because the engine treats a pause in sending as
//! contiguous audio (only when the leg is over a frame behind real time: a host that sends large
//! frames, or ran ahead within its burst allowance, gets no silence inside its speech). Translated
//! audio comes back as 24 kHz PCM16 and leaves in the host's output
//! format; transcript deltas are passed on with their `elapsed_ms`. At [`ToLeg::End`] (or when the
//! runner is gone) the leg flushes its last chunk, sends `session.close`, drains the output until
//! `session.closed` (at most [`DRAIN_TIMEOUT`]), sends the final transcripts and reports
//! [`FromLeg::Done`].
//!
//! A lost upstream is reopened up to [`RECONNECTS`] times with backoff (the host is told
//! `upstream_disconnected`, then `upstream_resumed`), for at most [`MAX_OUTAGES`] losses in a row
//! (a connection that stayed up for [`HEALTHY`] resets the count); past
//! that the leg reports [`FromLeg::Failed`] with `translation_failed`. Audio the host sends while
//! the leg reconnects is queued up to a bound, then dropped (`voice_audio_dropped_total`).

use crate::error::{Code, HostError};
use crate::upstream::Connect;
use metrics::{counter, histogram};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};
use voice_audio::{OutFrame, OutputPipeline};
use voice_proto::v1 as pb;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime::translation::FRAME_MS;
use voice_realtime::{
    ConnectOptions, RealtimeConnection, RealtimeError, TranslationClientEvent as Cev,
    TranslationServerEvent as Sev,
};
use voice_telemetry as names;

/// Bytes of one ms of 24 kHz PCM16 mono.
const BYTES_PER_MS: u64 = 48;
/// Bytes of one 200 ms chunk of 24 kHz PCM16 mono.
pub const CHUNK_BYTES: usize = 24_000 * 2 * FRAME_MS as usize / 1000;
/// The engine's frame, and the leg's silence clock.
pub const FRAME: Duration = Duration::from_millis(FRAME_MS as u64);
/// How long the end of a leg waits for `session.closed` after `session.close`.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Times a lost upstream is reopened before the leg gives up.
pub const RECONNECTS: u32 = 2;
/// Losses in a row a leg survives; the next one ends it (an upstream that keeps dropping is not
/// retried forever).
pub const MAX_OUTAGES: u32 = 3;
/// A connection up this long before it is lost starts the count of losses afresh (a long call may
/// outlive several upstream sessions).
pub const HEALTHY: Duration = Duration::from_secs(60);
/// Backoff before reconnect attempt `n` (from 0).
fn backoff(n: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(n.min(4)))
}
/// A sample louder than this makes translated audio audible (about −36 dBFS), for the latency.
const AUDIBLE: i16 = 512;

/// What the runner sends a leg.
#[derive(Debug)]
pub enum ToLeg {
    /// Host audio already converted to 24 kHz PCM16 mono.
    Audio(Vec<u8>),
    /// The session is ending: close and drain.
    End,
}

/// What a leg tells the runner.
#[derive(Debug)]
pub enum FromLeg {
    /// A message for the host (audio frames come with `seq` 0: the runner numbers them).
    Host(Out),
    /// An error for the host (the session goes on).
    Error(HostError),
    /// Audio sent upstream (metered: the model is billed per minute).
    Sent(Duration),
    /// The leg gave up: the session ends.
    Failed(HostError, RealtimeError),
    /// The leg closed and drained (its final transcripts already sent).
    Done,
}

/// How a leg reaches its upstream and what it configures there.
#[derive(Debug, Clone)]
pub struct LegSetup {
    pub connector: Arc<dyn Connect>,
    pub opts: ConnectOptions,
    pub setup_timeout: Duration,
    /// The `session.update` text's inputs.
    pub language: String,
    pub input_transcription: Option<&'static str>,
}

impl LegSetup {
    /// Connects, sends `session.update` and waits for `session.updated`, within the setup timeout.
    pub async fn open(&self) -> Result<RealtimeConnection, HostError> {
        let t0 = Instant::now();
        let attempt = async {
            let mut conn = self
                .connector
                .connect(self.opts.clone())
                .await
                .map_err(|e| {
                    HostError::new(Code::UpstreamConnect, e.to_string(), e.is_retryable())
                })?;
            conn.send_translation(&Cev::SessionUpdate {
                language: &self.language,
                input_transcription: self.input_transcription,
            })
            .await
            .map_err(|e| HostError::new(Code::UpstreamConnect, e.to_string(), true))?;
            loop {
                match conn.recv_translation().await {
                    Ok(Sev::SessionUpdated { .. }) => return Ok(conn),
                    Ok(Sev::Error { error }) => {
                        return Err(HostError::new(
                            Code::UpstreamRejectedSession,
                            format!("{}: {}", error.code.unwrap_or(error.kind), error.message),
                            false,
                        ))
                    }
                    Ok(other) => debug!(event = other.kind(), "event before session.updated"),
                    Err(RealtimeError::Parse(e)) => {
                        debug!(error = %e, "unparseable event before session.updated");
                    }
                    Err(e) => {
                        return Err(HostError::new(
                            Code::UpstreamConnect,
                            e.to_string(),
                            e.is_retryable(),
                        ))
                    }
                }
            }
        };
        let conn = tokio::time::timeout(self.setup_timeout, attempt)
            .await
            .map_err(|_| {
                HostError::new(
                    Code::UpstreamTimeout,
                    format!(
                        "translation session setup took longer than {:?}",
                        self.setup_timeout
                    ),
                    true,
                )
            })??;
        histogram!(names::UPSTREAM_CONNECT).record(t0.elapsed().as_secs_f64());
        Ok(conn)
    }
}

/// The text one source of a leg produced.
#[derive(Debug, Default)]
struct Text {
    all: String,
    last_elapsed_ms: u32,
}

pub struct Leg {
    /// For logs.
    pub session_id: String,
    /// INTERPRETER: whose words this leg carries ("a" or "b"); "" for TRANSLATION.
    pub speaker: String,
    pub setup: LegSetup,
    conn: Option<RealtimeConnection>,
    output: OutputPipeline,
    frames: Vec<OutFrame>,
    /// Input not yet sent (less than a chunk).
    pending: Vec<u8>,
    last_audio: Option<Instant>,
    first_audio: Option<Instant>,
    audible: bool,
    input_text: Text,
    output_text: Text,
    events: mpsc::Sender<FromLeg>,
    /// Unusable output deltas reported (once per leg).
    bad_audio_warned: bool,
    /// Audio sent upstream, ms, and the whole seconds of it already counted in
    /// `voice_translation_audio_seconds_total` (a counter takes whole numbers).
    sent_ms: u64,
    counted_s: u64,
    /// Upstream losses in a row (see [`HEALTHY`]).
    outages: u32,
    /// When the current connection was opened.
    up_since: Instant,
    /// The real-time origin of the audio sent: at `clock_base + sent_ms` the leg is level with real
    /// time (moved on at a reconnect, so an outage is not filled with silence afterwards).
    clock_base: Instant,
}

/// Why a leg stopped its main loop.
enum Stop {
    /// End of the session: close and drain.
    End,
    /// The runner is gone: nothing to report to.
    Gone,
    Failed(HostError, RealtimeError),
}

impl Leg {
    pub fn new(
        session_id: String,
        speaker: String,
        setup: LegSetup,
        conn: RealtimeConnection,
        output: OutputPipeline,
        events: mpsc::Sender<FromLeg>,
    ) -> Leg {
        Leg {
            session_id,
            speaker,
            setup,
            conn: Some(conn),
            output,
            frames: Vec::new(),
            pending: Vec::with_capacity(CHUNK_BYTES * 2),
            last_audio: None,
            first_audio: None,
            audible: false,
            input_text: Text::default(),
            output_text: Text::default(),
            events,
            bad_audio_warned: false,
            outages: 0,
            up_since: Instant::now(),
            sent_ms: 0,
            counted_s: 0,
            clock_base: Instant::now(),
        }
    }

    /// Runs the leg to its end.
    pub async fn run(mut self, mut cmds: mpsc::Receiver<ToLeg>) {
        let stop = self.serve(&mut cmds).await;
        self.run_end(stop).await;
        self.count_audio_rest();
    }

    async fn run_end(&mut self, stop: Stop) {
        match stop {
            Stop::End => {
                self.drain().await;
                let _ = self.events.send(FromLeg::Done).await;
            }
            Stop::Gone => {
                if let Some(mut c) = self.conn.take() {
                    c.close().await;
                }
            }
            Stop::Failed(e, cause) => {
                let _ = self.events.send(FromLeg::Failed(e, cause)).await;
                self.send_finals().await;
                let _ = self.events.send(FromLeg::Done).await;
            }
        }
    }

    async fn serve(&mut self, cmds: &mut mpsc::Receiver<ToLeg>) -> Stop {
        let mut clock = tokio::time::interval_at(Instant::now() + FRAME, FRAME);
        clock.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let r = tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(ToLeg::Audio(pcm)) => self.on_audio(&pcm).await,
                    Some(ToLeg::End) => return Stop::End,
                    None => return Stop::Gone,
                },
                _ = clock.tick() => {
                    if self.quiet(Instant::now()) {
                        self.send_padded().await
                    } else {
                        Ok(())
                    }
                }
                ev = recv(&mut self.conn) => match ev {
                    Ok(ev) => self.on_event(ev).await,
                    Err(RealtimeError::Parse(e)) => {
                        counter!(names::UPSTREAM_ERRORS, "code" => crate::metrics::BAD_EVENT).increment(1);
                        debug!(error = %e, "unparseable translation event ignored");
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            };
            match r {
                Ok(()) => {}
                Err(e) if self.events.is_closed() => {
                    debug!(error = %e, "translation upstream lost after the runner ended");
                    return Stop::Gone;
                }
                Err(e) => {
                    if let Some(stop) = self.reconnect(e).await {
                        return stop;
                    }
                }
            }
        }
    }

    /// Whether the clock's tick sends silence: the host has sent nothing for a frame or more, and
    /// what the leg sent is over a frame behind real time (a host that sends large frames, or ran
    /// ahead within its burst allowance, gets no silence in the middle of its speech).
    fn quiet(&self, now: Instant) -> bool {
        let idle = self
            .last_audio
            .is_none_or(|t| now.duration_since(t) >= FRAME);
        let level = self.clock_base + Duration::from_millis(self.sent_ms);
        idle && now.saturating_duration_since(level) > FRAME
    }

    async fn on_audio(&mut self, pcm: &[u8]) -> Result<(), RealtimeError> {
        let now = Instant::now();
        self.last_audio = Some(now);
        self.first_audio.get_or_insert(now);
        self.pending.extend_from_slice(pcm);
        while self.pending.len() >= CHUNK_BYTES {
            let chunk: Vec<u8> = self.pending.drain(..CHUNK_BYTES).collect();
            self.append(&chunk).await?;
        }
        Ok(())
    }

    /// The clock's frame while the host is quiet: what is pending, topped up with silence.
    async fn send_padded(&mut self) -> Result<(), RealtimeError> {
        let mut chunk = std::mem::take(&mut self.pending);
        chunk.resize(CHUNK_BYTES, 0);
        let r = self.append(&chunk).await;
        chunk.clear();
        self.pending = chunk;
        r
    }

    async fn append(&mut self, chunk: &[u8]) -> Result<(), RealtimeError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.send_translation(&Cev::Append { audio: chunk }).await?;
        let ms = chunk.len() as u64 / BYTES_PER_MS;
        self.count_audio(ms);
        let _ = self
            .events
            .send(FromLeg::Sent(Duration::from_millis(ms)))
            .await;
        Ok(())
    }

    /// Counts sent audio in whole seconds as they complete.
    fn count_audio(&mut self, ms: u64) {
        self.sent_ms += ms;
        let whole = self.sent_ms / 1000;
        counter!(names::TRANSLATION_AUDIO).increment(whole - self.counted_s);
        self.counted_s = whole;
    }

    /// At the leg's end, the last fraction of a second, rounded (so the counter is not biased low
    /// over many short sessions).
    fn count_audio_rest(&mut self) {
        let rounded = (self.sent_ms + 500) / 1000;
        counter!(names::TRANSLATION_AUDIO).increment(rounded.saturating_sub(self.counted_s));
        self.counted_s = rounded.max(self.counted_s);
    }

    async fn on_event(&mut self, ev: Sev) -> Result<(), RealtimeError> {
        match ev {
            Sev::OutputAudioDelta {
                audio,
                sample_rate,
                channels,
                ..
            } => {
                if sample_rate.is_some_and(|r| r != 24_000) || channels.is_some_and(|c| c != 1) {
                    if !std::mem::replace(&mut self.bad_audio_warned, true) {
                        warn!(session_id = %self.session_id, ?sample_rate, ?channels, "translated audio not 24 kHz mono: dropped");
                    }
                    return Ok(());
                }
                self.on_output_audio(&audio).await;
            }
            Sev::InputTranscriptDelta { delta, elapsed_ms } => {
                self.transcript(
                    pb::TranscriptSource::SourceTranslationInput,
                    delta,
                    elapsed_ms,
                )
                .await;
            }
            Sev::OutputTranscriptDelta { delta, elapsed_ms } => {
                self.transcript(
                    pb::TranscriptSource::SourceTranslationOutput,
                    delta,
                    elapsed_ms,
                )
                .await;
            }
            Sev::Error { error } => {
                let code = crate::conversation::bounded_code(error.code.as_deref().unwrap_or(""));
                counter!(names::UPSTREAM_ERRORS, "code" => code).increment(1);
                warn!(session_id = %self.session_id, code = ?error.code, message = %error.message, "translation upstream reported an error");
                self.error(HostError::new(
                    Code::UpstreamError,
                    format!(
                        "{}: {}",
                        error.code.as_deref().unwrap_or(&error.kind),
                        error.message
                    ),
                    true,
                ))
                .await;
            }
            Sev::SessionClosed => {
                // Not asked for: upstream ended the session.
                return Err(RealtimeError::Closed {
                    code: None,
                    reason: Some("upstream sent session.closed".into()),
                });
            }
            Sev::SessionCreated { .. } | Sev::SessionUpdated { .. } | Sev::Other { .. } => {}
        }
        Ok(())
    }

    async fn on_output_audio(&mut self, pcm: &[u8]) {
        if !self.audible {
            let loud = pcm
                .chunks_exact(2)
                .any(|b| i16::from_le_bytes([b[0], b[1]]).unsigned_abs() > AUDIBLE.unsigned_abs());
            if loud {
                self.audible = true;
                if let Some(t) = self.first_audio {
                    histogram!(names::TRANSLATION_LATENCY).record(t.elapsed().as_secs_f64());
                }
            }
        }
        self.frames.clear();
        if let Err(e) = self.output.push(pcm, &mut self.frames) {
            self.error(HostError::audio(&e)).await;
            return;
        }
        self.send_frames().await;
    }

    async fn send_frames(&mut self) {
        let frames = std::mem::take(&mut self.frames);
        for f in &frames {
            let m = Out::Audio(pb::AudioFrame {
                data: f.data.clone(),
                seq: 0,
                item_id: String::new(),
                duration_us: f.duration_us,
                speaker: self.speaker.clone(),
            });
            self.host(m).await;
        }
        self.frames = frames;
    }

    async fn transcript(
        &mut self,
        source: pb::TranscriptSource,
        delta: String,
        elapsed_ms: Option<u32>,
    ) {
        let text = match source {
            pb::TranscriptSource::SourceTranslationInput => &mut self.input_text,
            _ => &mut self.output_text,
        };
        text.all.push_str(&delta);
        if let Some(e) = elapsed_ms {
            text.last_elapsed_ms = e;
        }
        let elapsed = elapsed_ms.unwrap_or(text.last_elapsed_ms);
        let m = transcript(source, delta, false, elapsed, &self.speaker);
        self.host(m).await;
    }

    async fn host(&mut self, m: Out) {
        let _ = self.events.send(FromLeg::Host(m)).await;
    }

    async fn error(&mut self, e: HostError) {
        let _ = self.events.send(FromLeg::Error(e)).await;
    }

    /// The upstream was lost: reopen it (the host hears of it), or give up.
    async fn reconnect(&mut self, e: RealtimeError) -> Option<Stop> {
        if let Some(mut c) = self.conn.take() {
            tokio::spawn(async move { c.close().await });
        }
        if self.up_since.elapsed() >= HEALTHY {
            self.outages = 0;
        }
        self.outages += 1;
        if self.outages > MAX_OUTAGES {
            warn!(session_id = %self.session_id, speaker = %self.speaker, error = %e, "translation upstream lost again: giving up");
            return Some(Stop::Failed(
                HostError::new(
                    Code::TranslationFailed,
                    format!(
                        "the translation upstream was lost {} times in a row: {e}",
                        self.outages
                    ),
                    false,
                ),
                e,
            ));
        }
        warn!(session_id = %self.session_id, speaker = %self.speaker, error = %e, "translation upstream lost: reconnecting");
        counter!(names::UPSTREAM_RECONNECTS).increment(1);
        self.error(HostError::new(
            Code::UpstreamDisconnected,
            format!("translation upstream lost ({e}); reconnecting"),
            true,
        ))
        .await;
        let mut last = e;
        for n in 0..RECONNECTS {
            tokio::time::sleep(backoff(n)).await;
            match self.setup.open().await {
                Ok(conn) => {
                    self.conn = Some(conn);
                    let now = Instant::now();
                    self.up_since = now;
                    self.clock_base = now
                        .checked_sub(Duration::from_millis(self.sent_ms))
                        .unwrap_or(now);
                    self.error(HostError::new(
                        Code::UpstreamResumed,
                        "a new translation upstream session carries on",
                        true,
                    ))
                    .await;
                    return None;
                }
                Err(err) => {
                    debug!(error = %err, attempt = n + 1, "translation reconnect failed");
                    last = RealtimeError::Closed {
                        code: None,
                        reason: Some(err.to_string()),
                    };
                }
            }
        }
        Some(Stop::Failed(
            HostError::new(
                Code::TranslationFailed,
                format!("the translation upstream could not be reopened after {RECONNECTS} attempts: {last}"),
                false,
            ),
            last,
        ))
    }

    /// The end: the last chunk, `session.close`, the output until `session.closed` (bounded), the
    /// final transcripts.
    async fn drain(&mut self) {
        let flushed = self.pending.is_empty() || self.send_padded().await.is_ok();
        if let Some(mut conn) = self.conn.take() {
            if flushed && conn.send_translation(&Cev::Close).await.is_ok() {
                let deadline = Instant::now() + DRAIN_TIMEOUT;
                loop {
                    match tokio::time::timeout_at(deadline, conn.recv_translation()).await {
                        Err(_) => {
                            warn!(session_id = %self.session_id, "no session.closed within {} s of session.close", DRAIN_TIMEOUT.as_secs());
                            break;
                        }
                        Ok(Ok(Sev::SessionClosed) | Err(_)) => break,
                        Ok(Ok(ev)) => {
                            // A second session.closed cannot come: the arm above ends the loop.
                            let _ = self.on_event(ev).await;
                        }
                    }
                }
            }
            conn.close().await;
        }
        self.finish().await;
    }

    async fn finish(&mut self) {
        self.frames.clear();
        if let Err(e) = self.output.try_flush(&mut self.frames) {
            self.error(HostError::audio(&e)).await;
        }
        self.send_frames().await;
        self.send_finals().await;
    }

    /// One final transcript per source that produced text: the whole text.
    async fn send_finals(&mut self) {
        for (source, text) in [
            (
                pb::TranscriptSource::SourceTranslationInput,
                &self.input_text,
            ),
            (
                pb::TranscriptSource::SourceTranslationOutput,
                &self.output_text,
            ),
        ] {
            if !text.all.is_empty() {
                let m = transcript(
                    source,
                    text.all.clone(),
                    true,
                    text.last_elapsed_ms,
                    &self.speaker,
                );
                let _ = self.events.send(FromLeg::Host(m)).await;
            }
        }
    }
}

async fn recv(conn: &mut Option<RealtimeConnection>) -> Result<Sev, RealtimeError> {
    match conn {
        Some(c) => c.recv_translation().await,
        None => std::future::pending().await,
    }
}

fn transcript(
    source: pb::TranscriptSource,
    text: String,
    final_: bool,
    elapsed_ms: u32,
    speaker: &str,
) -> Out {
    // The source speech is the speaker's (user); the translation is what the sidecar speaks.
    let role = match source {
        pb::TranscriptSource::SourceTranslationInput => pb::Role::User,
        _ => pb::Role::Assistant,
    };
    Out::Transcript(pb::Transcript {
        role: role as i32,
        text,
        r#final: final_,
        source: source as i32,
        elapsed_ms,
        speaker: speaker.to_string(),
        ..Default::default()
    })
}
