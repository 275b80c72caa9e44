//! One transcription leg: the handle the session feeds ([`Leg`]) and the task that owns the leg's
//! upstream socket ([`run`]).
//!
//! The session hands the leg the same wire audio it sends the conversation (converted to 24 kHz
//! PCM16 here when the conversation's wire is G.711: a transcription session takes PCM only) and
//! says where segments end; the task appends, commits, matches each `input_audio_buffer.committed`
//! to the segment it closed, and turns deltas and completions into `Transcript{source: SHADOW}` with
//! the segment's audio offsets. The leg never holds the conversation up: audio goes through a bounded
//! queue (a full queue drops the audio, counted), a failed leg reconnects with backoff on its own and,
//! after [`MAX_ATTEMPTS`] failed opens in a row, gives up with one `Error` — the conversation goes on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, histogram};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use voice_audio::{Codec, HostFormat, InputPipeline, WireFormat};
use voice_proto::v1 as pb;
use voice_realtime::{ClientEvent, ConnectOptions, RealtimeConnection, ServerEvent};
use voice_telemetry as names;

use crate::error::{Code, HostError};
use crate::transcription::segmenter::Segmenter;
use crate::transcription::LegPlan;
use crate::upstream::{self, Backoff, Connect};

/// Audio queued for the leg's task at most (20 ms frames: 10 s).
const QUEUE: usize = 500;
/// Events queued for the session at most.
const EVENTS: usize = 256;
/// Failed opens in a row (at the start, or after a loss) before the leg gives up.
pub const MAX_ATTEMPTS: u32 = 4;
/// How long the end of a session waits for the last segments' text.
pub const DRAIN: Duration = Duration::from_secs(5);
/// Upstream refuses to commit less audio than this (`input_audio_buffer_commit_empty`).
const MIN_COMMIT: Duration = Duration::from_millis(100);
/// PCM16 24 kHz mono.
const BYTES_PER_MS: u64 = 48;

/// What the session tells the task.
#[derive(Debug)]
enum Input {
    Audio(Vec<u8>),
    /// A segment ends here (ms of input audio since the start).
    Commit(u64),
    /// The session is ending: commit what is left (if it holds speech: up to here), deliver the
    /// last texts, close.
    Finish(Option<u64>),
}

/// What the leg reports to the session.
#[derive(Debug, Clone, PartialEq)]
pub enum LegEvent {
    Transcript(pb::Transcript),
    /// A typed error for the host: retryable while the leg reconnects, not once it gave up.
    Error(HostError),
    /// Audio the leg sent upstream since the last report (billed per minute).
    Billed(Duration),
    /// The leg moved to a new upstream session ahead of upstream's session cap.
    RolledOver(pb::SessionRolledOver),
}

/// How the task reaches upstream.
#[derive(Clone)]
pub struct LegSettings {
    pub connector: Arc<dyn Connect>,
    pub opts: ConnectOptions,
    pub setup_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub seed: u64,
    pub session_id: String,
    /// Roll over to a new upstream session at this age (at the next segment boundary), forced at
    /// `cap - margin`; `None`: the cap is met by a reopen after upstream closes.
    pub rollover: crate::RolloverPolicy,
}

/// The session's end of a leg: cheap, never blocking.
#[derive(Debug)]
pub struct Leg {
    tx: Option<mpsc::Sender<Input>>,
    events: mpsc::Receiver<LegEvent>,
    /// G.711 wire audio to 24 kHz PCM16 (none when the wire already is).
    convert: Option<InputPipeline>,
    pcm: Vec<u8>,
    /// PCM16 bytes fed so far (dropped ones included: offsets follow the session's input).
    fed: u64,
    /// Where speech is: the leg commits on it when nobody else says where segments end.
    segmenter: Segmenter,
    segment_itself: bool,
    /// Speech since the last commit (the end commits the rest only then: trailing silence is
    /// not worth a billed segment, and a model given only silence may invent words).
    heard: bool,
    dropped: u64,
}

impl Leg {
    /// Starts the leg's task. `segment_itself`: commit on the leg's own energy segmenter (no turn
    /// detection upstream to say where speech stops).
    pub fn spawn(plan: &LegPlan, wire: WireFormat, segment_itself: bool, s: LegSettings) -> Leg {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (etx, events) = mpsc::channel(EVENTS);
        let convert = match wire {
            WireFormat::Pcm16_24k => None,
            WireFormat::Ulaw8k | WireFormat::Alaw8k => {
                let codec = if wire == WireFormat::Ulaw8k {
                    Codec::Mulaw
                } else {
                    Codec::Alaw
                };
                let host = HostFormat {
                    codec,
                    sample_rate: 8000,
                    channels: 1,
                    frame_ms: 20,
                };
                InputPipeline::new(host, WireFormat::Pcm16_24k, usize::MAX).ok()
            }
        };
        tokio::spawn(run(rx, etx, plan.session(), s));
        Leg {
            tx: Some(tx),
            events,
            convert,
            pcm: Vec::new(),
            fed: 0,
            segmenter: Segmenter::new(),
            segment_itself,
            heard: false,
            dropped: 0,
        }
    }

    /// Ms of input audio fed so far.
    pub fn position_ms(&self) -> u64 {
        self.fed / BYTES_PER_MS
    }

    /// The same wire bytes the conversation got.
    pub fn feed(&mut self, wire: &[u8]) {
        let Some(tx) = &self.tx else { return };
        let pcm = match &mut self.convert {
            None => wire.to_vec(),
            Some(c) => {
                self.pcm.clear();
                if c.push(wire, None, &mut self.pcm).is_err() {
                    return;
                }
                self.pcm.clone()
            }
        };
        self.fed += pcm.len() as u64;
        let ended = self.segmenter.push(&pcm);
        self.heard |= ended > 0 || self.segmenter.in_speech();
        if let Err(e) = tx.try_send(Input::Audio(pcm)) {
            if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                // The task gave up (it told the host): stop feeding it.
                self.tx = None;
                return;
            }
            self.dropped += 1;
            counter!(names::SHADOW_ERRORS, "kind" => "audio_dropped").increment(1);
        }
        if ended > 0 && self.segment_itself {
            self.commit();
        }
    }

    /// A segment ends now (the conversation's speech stopped, or the host committed).
    pub fn commit(&mut self) {
        self.segmenter.reset();
        self.heard = false;
        let at = self.position_ms();
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Input::Commit(at));
        }
    }

    /// The next event of the leg (pending forever once the task is gone).
    pub async fn next(&mut self) -> Option<LegEvent> {
        self.events.recv().await
    }

    /// Ends the leg: commits what is left, and returns the events until the task is done (at most
    /// [`DRAIN`] plus the close).
    pub async fn finish(mut self) -> Vec<LegEvent> {
        let at = self.heard.then(|| self.position_ms());
        if let Some(tx) = self.tx.take() {
            // Room is made by the task; if it is stuck the drain deadline below still holds.
            let _ = tokio::time::timeout(DRAIN, tx.send(Input::Finish(at))).await;
        }
        let mut out = Vec::new();
        let deadline = Instant::now() + DRAIN + Duration::from_secs(1);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            out.push(ev);
        }
        out
    }
}

/// A segment committed upstream and not yet transcribed.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start_ms: u64,
    end_ms: u64,
    committed_at: Instant,
}

/// The task's state of its upstream session.
enum Link {
    Up(RealtimeConnection),
    /// Waiting to try again (`attempt` failed opens so far).
    Backoff {
        until: Instant,
        attempt: u32,
    },
    /// Gave up: the rest of the input is dropped.
    Off,
}

struct Task {
    out: mpsc::Sender<LegEvent>,
    s: LegSettings,
    session: serde_json::Value,
    backoff: Backoff,
    /// Committed, waiting for `input_audio_buffer.committed` (in order).
    committing: VecDeque<Segment>,
    /// Committed and acknowledged, by item id, waiting for their text.
    by_item: HashMap<String, Segment>,
    /// Where the open segment started, and how much of it went upstream.
    seg_start_ms: u64,
    buffered: u64,
    position_ms: u64,
    /// Sent upstream since the last billing report.
    unbilled_bytes: u64,
    finishing: Option<Instant>,
    /// When the current upstream session opened.
    opened_at: Instant,
    /// A rollover is due: the audio since the boundary commit, to send again on the new session.
    replay: Option<Vec<u8>>,
    /// The boundary commit was sent; switch once upstream acknowledged it.
    switch_after_ack: bool,
    /// Ready to switch now (the boundary commit was acknowledged, or a forced switch).
    switch_now: bool,
    /// The previous upstream session, finishing the segments committed on it, until its deadline.
    draining: Option<(RealtimeConnection, Instant)>,
    /// Segments committed on the draining session and not yet transcribed.
    draining_items: std::collections::HashSet<String>,
    rollovers: u32,
}

/// The leg's task: opens the transcription session, then runs until the session finishes it (or
/// drops its handle).
async fn run(
    mut rx: mpsc::Receiver<Input>,
    out: mpsc::Sender<LegEvent>,
    session: serde_json::Value,
    s: LegSettings,
) {
    let mut t = Task {
        backoff: Backoff::new(s.backoff_base, s.backoff_max, s.seed),
        out,
        s,
        session,
        committing: VecDeque::new(),
        by_item: HashMap::new(),
        seg_start_ms: 0,
        buffered: 0,
        position_ms: 0,
        unbilled_bytes: 0,
        finishing: None,
        opened_at: Instant::now(),
        replay: None,
        switch_after_ack: false,
        switch_now: false,
        draining: None,
        draining_items: std::collections::HashSet::new(),
        rollovers: 0,
    };
    let mut link = t.open(0).await;
    loop {
        if matches!(link, Link::Off) {
            // Gave up (the host was told): the handle stops feeding a closed queue.
            break;
        }
        if let Some(deadline) = t.finishing {
            let drained = t.committing.is_empty() && t.by_item.is_empty();
            if drained || Instant::now() >= deadline || !matches!(link, Link::Up(_)) {
                break;
            }
        }
        if t.switch_now && t.finishing.is_none() {
            t.switch(&mut link).await;
        }
        let wake = match &link {
            Link::Backoff { until, .. } => Some(*until),
            Link::Up(_) => [t.finishing, t.force_at(), t.draining.as_ref().map(|d| d.1)]
                .into_iter()
                .flatten()
                .min(),
            Link::Off => t.finishing,
        };
        tokio::select! {
            input = rx.recv(), if t.finishing.is_none() => match input {
                None => break,
                Some(i) => {
                    if let Err(e) = t.input(i, &mut link).await {
                        link = t.lost(&e);
                    }
                }
            },
            ev = recv(&mut link) => match ev {
                Ok(ev) => t.event(ev).await,
                Err(voice_realtime::RealtimeError::Parse(e)) => {
                    debug!(session_id = %t.s.session_id, error = %e, "unparseable transcription-leg event ignored");
                }
                Err(e) => link = t.lost(&e.to_string()),
            },
            ev = recv_draining(&mut t.draining) => match ev {
                Ok(ev) => {
                    t.event(ev).await;
                    if t.draining_items.is_empty() {
                        t.close_draining().await;
                    }
                }
                Err(_) => t.draining = None,
            },
            () = sleep_until(wake), if wake.is_some() => {
                if let Link::Backoff { attempt, .. } = link {
                    link = t.open(attempt).await;
                } else if t.draining.as_ref().is_some_and(|d| Instant::now() >= d.1) {
                    t.close_draining().await;
                } else if t.force_at().is_some_and(|at| Instant::now() >= at) {
                    // No boundary came in time: commit what there is and switch now.
                    let at = t.position_ms;
                    if let Err(e) = t.commit(at, &mut link).await {
                        link = t.lost(&e);
                    }
                    t.switch_now = true;
                }
            }
        }
    }
    t.bill().await;
    t.close_draining().await;
    if let Link::Up(mut conn) = link {
        conn.close().await;
    }
}

async fn recv_draining(
    d: &mut Option<(RealtimeConnection, Instant)>,
) -> Result<ServerEvent, voice_realtime::RealtimeError> {
    match d {
        Some((c, _)) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// Audio sent again on the new session after a switch goes up in appends of this many bytes (200 ms).
const REPLAY_CHUNK: usize = 200 * BYTES_PER_MS as usize;
/// Audio kept for the replay at most (the switch follows the boundary commit within milliseconds;
/// this bounds a slow acknowledgement).
const MAX_REPLAY_BYTES: usize = 10_000 * BYTES_PER_MS as usize;

async fn recv(link: &mut Link) -> Result<ServerEvent, voice_realtime::RealtimeError> {
    match link {
        Link::Up(c) => c.recv().await,
        _ => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Task {
    /// Attempt `attempt` (from 0) to open the leg's session.
    async fn open(&mut self, attempt: u32) -> Link {
        let r = upstream::open(
            self.s.connector.as_ref(),
            self.s.opts.clone(),
            self.session.clone(),
            self.s.setup_timeout,
        )
        .await;
        match r {
            Ok(conn) => {
                if attempt > 0 {
                    info!(session_id = %self.s.session_id, "transcription leg reopened");
                }
                // Audio sent before the reopen is gone with the old session: a new segment starts.
                self.seg_start_ms = self.position_ms;
                self.buffered = 0;
                self.opened_at = Instant::now();
                self.replay = None;
                self.switch_after_ack = false;
                self.switch_now = false;
                Link::Up(conn)
            }
            Err(e) => {
                counter!(names::SHADOW_ERRORS, "kind" => "connect").increment(1);
                let give_up = !e.retryable || attempt + 1 >= MAX_ATTEMPTS;
                warn!(session_id = %self.s.session_id, code = e.code.as_str(), error = %e.message, give_up, "transcription leg could not open");
                let why = if give_up {
                    format!(
                        "transcription leg gave up after {} attempt(s): {}",
                        attempt + 1,
                        e.message
                    )
                } else {
                    format!("transcription leg could not open (retrying): {}", e.message)
                };
                self.tell(HostError::new(
                    Code::ShadowTranscriptionFailed,
                    why,
                    !give_up,
                ))
                .await;
                if give_up {
                    Link::Off
                } else {
                    Link::Backoff {
                        until: Instant::now() + self.backoff.delay(attempt),
                        attempt: attempt + 1,
                    }
                }
            }
        }
    }

    async fn tell(&self, e: HostError) {
        let _ = self.out.send(LegEvent::Error(e)).await;
    }

    /// The link dropped: what was in flight is lost (the host is told), and the leg reopens.
    fn lost(&mut self, why: &str) -> Link {
        counter!(names::SHADOW_ERRORS, "kind" => "upstream").increment(1);
        let lost = self.committing.len() + self.by_item.len();
        self.committing.clear();
        self.by_item.clear();
        warn!(session_id = %self.s.session_id, error = %why, lost_segments = lost, "transcription leg lost");
        let e = HostError::new(
            Code::ShadowTranscriptionFailed,
            format!("transcription leg lost ({why}); {lost} segment(s) without text; reopening"),
            true,
        );
        // Not awaited in place: the caller is in the middle of a select arm.
        let _ = self.out.try_send(LegEvent::Error(e));
        if self.finishing.is_some() {
            return Link::Off;
        }
        Link::Backoff {
            until: Instant::now() + self.backoff.delay(0),
            attempt: 0,
        }
    }

    async fn input(&mut self, i: Input, link: &mut Link) -> Result<(), String> {
        match i {
            Input::Audio(pcm) => {
                self.position_ms += pcm.len() as u64 / BYTES_PER_MS;
                let Link::Up(conn) = link else {
                    counter!(names::SHADOW_ERRORS, "kind" => "audio_dropped").increment(1);
                    return Ok(());
                };
                conn.send_audio(&pcm).await.map_err(|e| e.to_string())?;
                if let Some(r) = &mut self.replay {
                    if r.len() + pcm.len() <= MAX_REPLAY_BYTES {
                        r.extend_from_slice(&pcm);
                    }
                }
                self.buffered += pcm.len() as u64;
                self.unbilled_bytes += pcm.len() as u64;
                Ok(())
            }
            Input::Commit(at) => self.commit(at, link).await,
            Input::Finish(at) => {
                self.finishing = Some(Instant::now() + DRAIN);
                match at {
                    Some(at) => self.commit(at, link).await,
                    None => Ok(()),
                }
            }
        }
    }

    /// Closes the open segment at `at_ms` if enough of it went upstream (shorter audio stays in the
    /// buffer and joins the next segment).
    async fn commit(&mut self, at_ms: u64, link: &mut Link) -> Result<(), String> {
        let Link::Up(conn) = link else { return Ok(()) };
        if self.buffered < MIN_COMMIT.as_millis() as u64 * BYTES_PER_MS {
            return Ok(());
        }
        conn.send(&ClientEvent::InputAudioCommit)
            .await
            .map_err(|e| e.to_string())?;
        self.committing.push_back(Segment {
            start_ms: self.seg_start_ms,
            end_ms: at_ms.max(self.seg_start_ms),
            committed_at: Instant::now(),
        });
        self.seg_start_ms = at_ms;
        self.buffered = 0;
        if self.rollover_due() && self.replay.is_none() {
            // A segment boundary after the rollover age: switch once this commit is acknowledged.
            self.replay = Some(Vec::new());
            self.switch_after_ack = true;
        }
        self.bill().await;
        Ok(())
    }

    fn rollover_due(&self) -> bool {
        self.s
            .rollover
            .after
            .is_some_and(|after| self.opened_at.elapsed() >= after)
    }

    /// When a rollover is forced if no boundary came (`cap - margin`), while one is due.
    fn force_at(&self) -> Option<Instant> {
        let p = &self.s.rollover;
        p.after?;
        if self.switch_now || self.switch_after_ack {
            return None;
        }
        Some(self.opened_at + p.cap.saturating_sub(p.margin))
    }

    /// Make-before-break: the next upstream session takes the audio (the audio since the boundary
    /// commit is sent to it again); the old one finishes the segments committed on it.
    async fn switch(&mut self, link: &mut Link) {
        self.switch_now = false;
        self.switch_after_ack = false;
        let replay = self.replay.take().unwrap_or_default();
        let forced =
            self.opened_at.elapsed() >= self.s.rollover.cap.saturating_sub(self.s.rollover.margin);
        let age = self.opened_at.elapsed();
        let r = upstream::open(
            self.s.connector.as_ref(),
            self.s.opts.clone(),
            self.session.clone(),
            self.s.setup_timeout,
        )
        .await;
        let mut new = match r {
            Ok(c) => c,
            Err(e) => {
                // The old session goes on; the next boundary tries again (or upstream's cap ends
                // it and the leg reopens).
                counter!(names::ROLLOVERS, "outcome" => "failed").increment(1);
                warn!(session_id = %self.s.session_id, error = %e.message, "transcription leg: the next session could not open; staying");
                return;
            }
        };
        for chunk in replay.chunks(REPLAY_CHUNK) {
            if new.send_audio(chunk).await.is_err() {
                break;
            }
        }
        let Link::Up(old) = std::mem::replace(link, Link::Up(new)) else {
            return;
        };
        self.close_draining().await;
        self.draining_items = self.by_item.keys().cloned().collect();
        self.draining = Some((old, Instant::now() + DRAIN));
        if self.draining_items.is_empty() {
            self.close_draining().await;
        }
        self.buffered = replay.len() as u64;
        self.seg_start_ms = self
            .position_ms
            .saturating_sub(replay.len() as u64 / BYTES_PER_MS);
        self.opened_at = Instant::now();
        self.rollovers += 1;
        let outcome = if forced { "forced" } else { "natural" };
        counter!(names::ROLLOVERS, "outcome" => outcome).increment(1);
        info!(session_id = %self.s.session_id, forced, age_s = age.as_secs(), "transcription leg rolled over");
        let m = pb::SessionRolledOver {
            forced,
            upstream_age_ms: u32::try_from(age.as_millis()).unwrap_or(u32::MAX),
            replayed_audio_ms: u32::try_from(replay.len() as u64 / BYTES_PER_MS)
                .unwrap_or(u32::MAX),
            rollovers: self.rollovers,
            leg: "shadow_transcription".into(),
            ..Default::default()
        };
        let _ = self.out.send(LegEvent::RolledOver(m)).await;
    }

    async fn close_draining(&mut self) {
        if let Some((mut c, _)) = self.draining.take() {
            let lost = self.draining_items.len();
            for id in self.draining_items.drain() {
                self.by_item.remove(&id);
            }
            if lost > 0 {
                warn!(session_id = %self.s.session_id, lost, "transcription leg: segments of the old session without text at its close");
            }
            c.close().await;
        }
    }

    async fn bill(&mut self) {
        if self.unbilled_bytes > 0 {
            let d = Duration::from_millis(self.unbilled_bytes / BYTES_PER_MS);
            self.unbilled_bytes = 0;
            let _ = self.out.send(LegEvent::Billed(d)).await;
        }
    }

    async fn event(&mut self, ev: ServerEvent) {
        match ev {
            ServerEvent::InputCommitted { item_id, .. } => {
                if let Some(seg) = self.committing.pop_front() {
                    self.by_item.insert(item_id, seg);
                }
                if self.switch_after_ack && self.committing.is_empty() {
                    self.switch_now = true;
                }
            }
            ServerEvent::InputTranscriptionDelta {
                item_id,
                delta,
                logprobs,
            } => {
                let Some(seg) = self.by_item.get(&item_id).copied() else {
                    return;
                };
                let t = transcript(item_id, delta, false, seg, &logprobs);
                let _ = self.out.send(LegEvent::Transcript(t)).await;
            }
            ServerEvent::InputTranscriptionCompleted {
                item_id,
                transcript: text,
                logprobs,
            } => {
                let Some(seg) = self.by_item.remove(&item_id) else {
                    return;
                };
                self.draining_items.remove(&item_id);
                histogram!(names::SHADOW_SEGMENT_LATENCY)
                    .record(seg.committed_at.elapsed().as_secs_f64());
                let t = transcript(item_id, text, true, seg, &logprobs);
                let _ = self.out.send(LegEvent::Transcript(t)).await;
            }
            ServerEvent::InputTranscriptionFailed { item_id, message } => {
                self.by_item.remove(&item_id);
                self.draining_items.remove(&item_id);
                counter!(names::SHADOW_ERRORS, "kind" => "segment_failed").increment(1);
                self.tell(HostError::new(
                    Code::ShadowTranscriptionFailed,
                    format!("a segment could not be transcribed: {message}"),
                    true,
                ))
                .await;
            }
            ServerEvent::Error { error } => {
                counter!(names::SHADOW_ERRORS, "kind" => "upstream").increment(1);
                let code = error.code.clone().unwrap_or(error.kind.clone());
                if code == "input_audio_buffer_commit_empty" {
                    // The commit it refused never gets a `committed`.
                    self.committing.pop_back();
                }
                warn!(session_id = %self.s.session_id, code = %code, message = %error.message, "transcription leg: upstream error");
                self.tell(HostError::new(
                    Code::ShadowTranscriptionFailed,
                    format!("transcription leg: {code}: {}", error.message),
                    true,
                ))
                .await;
            }
            other => debug!(event = other.kind(), "transcription-leg event ignored"),
        }
    }
}

fn transcript(
    item_id: String,
    text: String,
    is_final: bool,
    seg: Segment,
    logprobs: &[voice_realtime::Logprob],
) -> pb::Transcript {
    pb::Transcript {
        role: pb::Role::User as i32,
        item_id,
        text,
        r#final: is_final,
        source: pb::TranscriptSource::SourceShadow as i32,
        audio_start_ms: u32::try_from(seg.start_ms).unwrap_or(u32::MAX),
        audio_end_ms: u32::try_from(seg.end_ms).unwrap_or(u32::MAX),
        logprobs: logprobs
            .iter()
            .map(|l| pb::Logprob {
                token: l.token.clone(),
                logprob: l.logprob,
                bytes: l.bytes.clone(),
            })
            .collect(),
        ..Default::default()
    }
}
