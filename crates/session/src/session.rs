//! One voice session: the loop that joins a host's `Converse` stream to one upstream Realtime session.
//!
//! A single task per session owns everything (sockets, codecs, tool calls, timers) and reacts to
//! whichever happens first: a host message, an upstream event, a finished tool call, or a timer
//! (pacing, silence guard, in-stream tool deadlines). Owning it all in one place is what lets the
//! rules — one active response, one output per call, one `response.create` per tool round — hold
//! without locks.

use crate::audio_check::AudioCheck;
use crate::dead_air::{Closed, DeadAir, Phase};
use crate::plan::{self, GuardAction, SessionPlan, ToolRoute};
use crate::playout::{Playout, QueuedFrame};
use crate::rounds::ToolRounds;
use crate::scheduler::{CreateReason, PendingCreate, ResponseScheduler};
use crate::tools::{self, ToolChannels, ToolOutcome, ToolStatus};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use metrics::{counter, gauge, histogram};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, info, info_span, warn, Instrument};
use voice_audio::{InputPipeline, OutFrame, OutputPipeline};
use voice_proto::v1 as pb;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime::{
    ApiKey, ClientEvent, ConnectOptions, Item, RealtimeConnection, RealtimeError, ServerEvent,
    Usage,
};
use voice_telemetry as names;

/// Where and how to reach the Realtime API.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub base_url: String,
    pub api_key: ApiKey,
    pub connect_timeout: Duration,
    pub max_message_bytes: usize,
}

/// What every session shares: upstream settings, tool-host channels, the shutdown signal.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub upstream: UpstreamSettings,
    pub channels: ToolChannels,
    pub shutdown: CancellationToken,
    /// How long a session may take to configure upstream before it is failed.
    pub setup_timeout: Duration,
}

pub type HostSender = mpsc::Sender<Result<pb::ServerMessage, Status>>;

const HOLDING_LINE_INSTRUCTIONS: &str =
    "The caller has been waiting in silence while a tool runs. \
Say one short, warm sentence telling them you are still working on it. Do not guess any result and \
do not ask a question.";

/// Why the loop stopped.
#[derive(Debug)]
enum End {
    HostClosed,
    HostRequested,
    HostGone,
    Shutdown,
    Budget,
    Upstream(RealtimeError),
}

impl End {
    fn reason(&self) -> &'static str {
        match self {
            End::HostClosed => "client_closed",
            End::HostRequested => "client_end",
            End::HostGone => "host_gone",
            End::Shutdown => "shutdown",
            End::Budget => "budget_exceeded",
            End::Upstream(RealtimeError::Closed { .. }) => "upstream_closed",
            End::Upstream(_) => "upstream_error",
        }
    }
}

#[derive(Debug, Default)]
struct Summary {
    turns: u32,
    responses: u32,
    latencies_ms: Vec<u32>,
    dead_air: Duration,
    tool_calls: u32,
    interruptions: u32,
    usage: Usage,
}

/// A call running on a host.
#[derive(Debug)]
struct InFlight {
    name: String,
    started: Instant,
    /// In-stream calls only: when to stop waiting.
    deadline: Option<Instant>,
}

struct Session {
    id: String,
    plan: SessionPlan,
    ctx: Arc<SessionContext>,
    out: HostSender,
    conn: RealtimeConnection,
    input: InputPipeline,
    output: OutputPipeline,
    wire_buf: Vec<u8>,
    out_frames: Vec<OutFrame>,
    released: Vec<QueuedFrame>,
    out_seq: u64,
    scheduler: ResponseScheduler,
    rounds: ToolRounds,
    playout: Playout,
    /// A long host stall has been logged (once per session: a stuck host would flood the log).
    host_stall_warned: bool,
    dead_air: DeadAir,
    tools: FuturesUnordered<BoxFuture<'static, ToolOutcome>>,
    in_flight: HashMap<String, InFlight>,
    /// call_id → name from `output_item.added` (beta's arguments.done carries no name).
    call_names: HashMap<String, String>,
    /// In-stream calls that timed out; a late ToolResult for them is dropped (documented policy).
    timed_out: HashSet<String>,
    cancelled: VecDeque<String>,
    audio_response: Option<String>,
    /// The assistant item whose audio is arriving, and how much of it upstream has sent (wire
    /// samples). A truncate may not go past it: an encoder that pads its last frame (Opus) gives the
    /// host slightly more audio than the model produced, and upstream rejects an `audio_end_ms`
    /// beyond the item's audio.
    upstream_item_audio: Option<(String, Duration)>,
    /// End of the user's last turn, until the first assistant audio after it.
    user_turn_end: Option<Instant>,
    latency_by_response: HashMap<String, u32>,
    summary: Summary,
    started: Instant,
    labels: Vec<metrics::Label>,
    audio_check: AudioCheck,
    cost_usd: f64,
    budget_warned: bool,
    /// Tracing spans of responses and tool calls still open.
    response_spans: HashMap<String, tracing::Span>,
    tool_spans: HashMap<String, tracing::Span>,
    /// The tool a `tool_call` dead-air span is attributed to.
    waiting_on_tool: Option<String>,
    /// Recent final transcripts, carried into a new upstream session after a reconnect.
    context: VecDeque<(pb::Role, String)>,
    reconnects: u32,
    /// Calls started on a previous upstream session: their results go in as context, not as
    /// `function_call_output` (the new session does not know their call ids).
    orphaned_calls: HashSet<String>,
}

/// Runs a session to completion. `inbound` yields the host's messages after `SessionStart`.
pub async fn run_session<S>(
    plan: SessionPlan,
    inbound: S,
    out: HostSender,
    ctx: Arc<SessionContext>,
    id: String,
) where
    S: Stream<Item = Result<pb::ClientMessage, Status>> + Unpin + Send,
{
    // Warnings also name the session themselves: at `--log warn` this INFO span is disabled.
    let span =
        info_span!("session", session_id = %id, model = %plan.model, dialect = %plan.dialect);
    async move {
        gauge!(names::SESSIONS_ACTIVE).increment(1.0);
        let outcome = run(plan, inbound, out, ctx, id).await;
        gauge!(names::SESSIONS_ACTIVE).decrement(1.0);
        counter!(names::SESSIONS_TOTAL, "outcome" => outcome).increment(1);
    }
    .instrument(span)
    .await
}

async fn run<S>(
    plan: SessionPlan,
    mut inbound: S,
    out: HostSender,
    ctx: Arc<SessionContext>,
    id: String,
) -> &'static str
where
    S: Stream<Item = Result<pb::ClientMessage, Status>> + Unpin + Send,
{
    let setup = async {
        let input = InputPipeline::new(plan.input, plan.wire_in, plan.max_frame_bytes)
            .map_err(|e| ("invalid_audio_format", e.to_string(), false))?;
        let output = OutputPipeline::new(plan.wire_out, plan.output)
            .map_err(|e| ("invalid_audio_format", e.to_string(), false))?;
        let conn = open_upstream(&plan, &ctx).await?;
        Ok::<_, (&'static str, String, bool)>((conn, input, output))
    };
    let (conn, input, output) = match tokio::time::timeout(ctx.setup_timeout, setup).await {
        Ok(Ok(x)) => x,
        Ok(Err((code, message, retryable))) => {
            warn!(session_id = %id, code, %message, "session setup failed");
            counter!(names::UPSTREAM_ERRORS, "code" => code).increment(1);
            let _ = out
                .send(Ok(server(Out::Error(pb::Error {
                    code: code.into(),
                    message,
                    retryable,
                }))))
                .await;
            let _ = out
                .send(Ok(server(Out::Ended(pb::SessionEnded {
                    reason: "upstream_error".into(),
                    summary: None,
                }))))
                .await;
            return "setup_failed";
        }
        Err(_) => {
            let message = format!(
                "upstream session setup took longer than {:?}",
                ctx.setup_timeout
            );
            let _ = out
                .send(Ok(server(Out::Error(pb::Error {
                    code: "upstream_timeout".into(),
                    message,
                    retryable: true,
                }))))
                .await;
            let _ = out
                .send(Ok(server(Out::Ended(pb::SessionEnded {
                    reason: "upstream_error".into(),
                    summary: None,
                }))))
                .await;
            return "setup_failed";
        }
    };
    info!(
        upstream_in = plan.wire_in_name(),
        passthrough_in = input.is_passthrough(),
        passthrough_out = output.is_passthrough(),
        "session started"
    );
    let labels: Vec<metrics::Label> = plan
        .labels
        .iter()
        .map(|(k, v)| metrics::Label::new(k.clone(), v.clone()))
        .collect();
    let mut s = Session {
        id,
        playout: Playout::new(plan.pacing_lead),
        host_stall_warned: false,
        plan,
        ctx,
        out,
        conn,
        input,
        output,
        wire_buf: Vec::with_capacity(8192),
        out_frames: Vec::new(),
        released: Vec::new(),
        out_seq: 0,
        scheduler: ResponseScheduler::new(),
        rounds: ToolRounds::new(),
        dead_air: DeadAir::new(),
        tools: FuturesUnordered::new(),
        in_flight: HashMap::new(),
        call_names: HashMap::new(),
        timed_out: HashSet::new(),
        cancelled: VecDeque::new(),
        audio_response: None,
        upstream_item_audio: None,
        user_turn_end: None,
        latency_by_response: HashMap::new(),
        summary: Summary::default(),
        started: Instant::now(),
        labels,
        audio_check: AudioCheck::new(Duration::from_secs(2), Duration::from_millis(500)),
        cost_usd: 0.0,
        budget_warned: false,
        response_spans: HashMap::new(),
        tool_spans: HashMap::new(),
        waiting_on_tool: None,
        context: VecDeque::new(),
        reconnects: 0,
        orphaned_calls: HashSet::new(),
    };
    let started = pb::SessionStarted {
        session_id: s.id.clone(),
        model: s.plan.model.clone(),
        dialect: match s.plan.dialect {
            voice_realtime::Dialect::Ga => pb::Dialect::Ga as i32,
            voice_realtime::Dialect::Beta => pb::Dialect::Beta as i32,
        },
        upstream_audio_format: s.plan.wire_in_name().to_string(),
        input_passthrough: s.input.is_passthrough(),
        output_passthrough: s.output.is_passthrough(),
    };
    let end = match s.emit(Out::Started(started)).await {
        Ok(()) => s.run_loop(&mut inbound).await,
        Err(e) => e,
    };
    s.finish(end).await
}

/// Opens and configures one upstream session: connect, `session.update`, wait for `session.updated`.
/// Errors are `(code, message, retryable)` for the host.
async fn open_upstream(
    plan: &SessionPlan,
    ctx: &SessionContext,
) -> Result<RealtimeConnection, (&'static str, String, bool)> {
    let t0 = Instant::now();
    let opts = ConnectOptions {
        base_url: ctx.upstream.base_url.clone(),
        model: plan.model.clone(),
        dialect: plan.dialect,
        api_key: ctx.upstream.api_key.clone(),
        connect_timeout: ctx.upstream.connect_timeout,
        max_message_bytes: ctx.upstream.max_message_bytes,
    };
    let mut conn = RealtimeConnection::connect(&opts)
        .await
        .map_err(|e| ("upstream_connect", e.to_string(), e.is_retryable()))?;
    conn.send(&ClientEvent::SessionUpdate {
        session: plan.config.to_json(plan.dialect),
    })
    .await
    .map_err(|e| ("upstream_connect", e.to_string(), true))?;
    loop {
        match conn.recv().await {
            Ok(ServerEvent::SessionUpdated { .. }) => break,
            Ok(ServerEvent::Error { error }) => {
                return Err((
                    "upstream_rejected_session",
                    format!("{}: {}", error.code.unwrap_or(error.kind), error.message),
                    false,
                ))
            }
            Ok(other) => debug!(event = other.kind(), "event before session.updated"),
            Err(e) => return Err(("upstream_connect", e.to_string(), e.is_retryable())),
        }
    }
    histogram!(names::UPSTREAM_CONNECT).record(t0.elapsed().as_secs_f64());
    Ok(conn)
}

fn server(m: Out) -> pb::ServerMessage {
    pb::ServerMessage { message: Some(m) }
}

impl SessionPlan {
    fn wire_in_name(&self) -> &'static str {
        plan::wire_audio(self.wire_in).beta_name()
    }
}

impl Session {
    async fn emit(&mut self, m: Out) -> Result<(), End> {
        use mpsc::error::TrySendError;
        match self.out.try_send(Ok(server(m))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(End::HostGone),
            // The host is not draining its stream: wait (backpressure, nothing is dropped), and
            // record how long, so a slow host shows up as such and not as sidecar latency.
            Err(TrySendError::Full(m)) => {
                let t0 = Instant::now();
                let r = self.out.send(m).await.map_err(|_| End::HostGone);
                let waited = t0.elapsed();
                histogram!(names::HOST_STALL).record(waited.as_secs_f64());
                if waited >= Duration::from_secs(1) && !self.host_stall_warned {
                    self.host_stall_warned = true;
                    warn!(
                        session_id = %self.id,
                        waited_ms = waited.as_millis() as u64,
                        "the host is not reading its Converse stream; output was held back (reported once per session)"
                    );
                }
                r
            }
        }
    }

    async fn host_error(
        &mut self,
        code: &'static str,
        message: String,
        retryable: bool,
    ) -> Result<(), End> {
        counter!(names::HOST_ERRORS, "code" => code).increment(1);
        debug!(code, %message, "error reported to host");
        self.emit(Out::Error(pb::Error {
            code: code.into(),
            message,
            retryable,
        }))
        .await
    }

    async fn send_up(&mut self, ev: ClientEvent) -> Result<String, End> {
        self.conn.send(&ev).await.map_err(End::Upstream)
    }

    fn next_timer(&self, now: Instant) -> Option<Instant> {
        let mut t = self.playout.next_due(now);
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if self.plan.guard.action != GuardAction::Off && self.rounds.pending_count() > 0 {
            consider(self.dead_air.guard_deadline(self.plan.guard.threshold));
        }
        consider(self.in_flight.values().filter_map(|f| f.deadline).min());
        t
    }

    async fn run_loop<S>(&mut self, inbound: &mut S) -> End
    where
        S: Stream<Item = Result<pb::ClientMessage, Status>> + Unpin + Send,
    {
        let shutdown = self.ctx.shutdown.clone();
        loop {
            let timer = self.next_timer(Instant::now());
            let r = tokio::select! {
                _ = shutdown.cancelled() => Err(End::Shutdown),
                msg = inbound.next() => match msg {
                    None => Err(End::HostClosed),
                    Some(Err(status)) => {
                        debug!(%status, "host stream failed");
                        Err(End::HostGone)
                    }
                    Some(Ok(m)) => self.on_host(m).await,
                },
                ev = self.conn.recv() => match ev {
                    Ok(ev) => self.on_upstream(ev).await,
                    Err(RealtimeError::Parse(e)) => {
                        counter!(names::UPSTREAM_ERRORS, "code" => "bad_event").increment(1);
                        warn!(session_id = %self.id, error = %e, "unparseable upstream event ignored");
                        Ok(())
                    }
                    Err(e) => self.reconnect(e).await,
                },
                Some(outcome) = self.tools.next(), if !self.tools.is_empty() => self.finish_call(outcome).await,
                _ = sleep_until_opt(timer), if timer.is_some() => self.on_timer().await,
            };
            if let Err(end) = r {
                return end;
            }
        }
    }

    // ----------------------------------------------------------------------------------------------
    // Host → sidecar
    // ----------------------------------------------------------------------------------------------

    async fn on_host(&mut self, m: pb::ClientMessage) -> Result<(), End> {
        use pb::client_message::Message as In;
        match m.message {
            None => {
                self.host_error("invalid_message", "empty ClientMessage".into(), true)
                    .await
            }
            Some(In::Start(_)) => {
                self.host_error(
                    "invalid_message",
                    "SessionStart may only be sent once, first".into(),
                    true,
                )
                .await
            }
            Some(In::Audio(f)) => self.on_audio(f).await,
            Some(In::ToolResult(r)) => self.on_tool_result(r).await,
            Some(In::Control(c)) => self.on_control(c).await,
            Some(In::PlaybackMark(m)) => {
                self.playout
                    .mark(&m.item_id, Duration::from_millis(m.played_ms as u64));
                Ok(())
            }
        }
    }

    async fn on_audio(&mut self, f: pb::AudioFrame) -> Result<(), End> {
        // A frame is handled in one go: Tokio's cooperative budget must not park the task halfway
        // (behind every other session) between accepting the frame and writing it upstream. The
        // task still yields on budget where `run_loop` waits for its next event.
        tokio::task::unconstrained(self.on_audio_frame(f)).await
    }

    async fn on_audio_frame(&mut self, f: pb::AudioFrame) -> Result<(), End> {
        let t0 = Instant::now();
        names::count_frame(names::Direction::In, f.data.len());
        self.wire_buf.clear();
        let seq = (f.seq != 0).then_some(f.seq);
        if let Err(e) = self.input.push(&f.data, seq, &mut self.wire_buf) {
            return self.host_error(e.code(), e.to_string(), true).await;
        }
        if !self.wire_buf.is_empty() {
            self.conn
                .send_audio(&self.wire_buf)
                .await
                .map_err(End::Upstream)?;
        }
        names::record_frame_processing(names::Direction::In, t0.elapsed().as_secs_f64());
        Ok(())
    }

    async fn on_control(&mut self, c: pb::Control) -> Result<(), End> {
        use pb::control::Action;
        match c.action {
            None => {
                self.host_error("invalid_control", "Control without an action".into(), true)
                    .await
            }
            Some(Action::End(_)) => Err(End::HostRequested),
            Some(Action::Commit(_)) => {
                self.send_up(ClientEvent::InputAudioCommit).await?;
                if self.plan.config.turn_detection == voice_realtime::TurnDetection::Disabled
                    && !self.plan.config.listen_only
                {
                    self.user_turn_end = Some(Instant::now());
                    self.dead_air.user_turn_ended(Instant::now());
                    self.request_response(CreateReason::Commit, None).await?;
                }
                Ok(())
            }
            Some(Action::ClearInput(_)) => {
                self.send_up(ClientEvent::InputAudioClear).await.map(drop)
            }
            Some(Action::CancelResponse(_)) => self.interrupt(false).await,
            Some(Action::ListenOnly(on)) => {
                self.plan.config.listen_only = on;
                self.push_session_update().await
            }
            Some(Action::SendText(text)) => {
                if text.trim().is_empty() {
                    return self
                        .host_error("invalid_control", "send_text is empty".into(), true)
                        .await;
                }
                self.send_up(ClientEvent::user_text(&text)).await?;
                self.remember(pb::Role::User, &text);
                if !self.plan.config.listen_only {
                    self.request_response(CreateReason::UserText, None).await?;
                }
                Ok(())
            }
            Some(Action::UpdateSession(u)) => {
                if let Some(td) = &u.turn_detection {
                    match plan::turn_detection(Some(td)) {
                        Ok(t) => self.plan.config.turn_detection = t,
                        Err(e) => {
                            return self
                                .host_error("invalid_control", e.to_string(), true)
                                .await
                        }
                    }
                }
                if let Some(i) = u.instructions {
                    self.plan.base_instructions = i;
                    self.plan.config.instructions =
                        self.plan.preamble.apply(&self.plan.base_instructions);
                }
                if let Some(v) = u.voice {
                    self.plan.config.voice = (!v.is_empty()).then_some(v);
                }
                self.push_session_update().await
            }
        }
    }

    async fn push_session_update(&mut self) -> Result<(), End> {
        let session = self.plan.config.to_json(self.plan.dialect);
        self.send_up(ClientEvent::SessionUpdate { session })
            .await
            .map(drop)
    }

    // ----------------------------------------------------------------------------------------------
    // Upstream → sidecar
    // ----------------------------------------------------------------------------------------------

    async fn on_upstream(&mut self, ev: ServerEvent) -> Result<(), End> {
        match ev {
            ServerEvent::AudioDelta {
                response_id,
                item_id,
                audio,
            } => self.on_audio_delta(response_id, item_id, audio).await,
            ServerEvent::AudioDone { .. } => {
                self.output.flush(&mut self.out_frames);
                self.forward_frames(
                    self.audio_response.clone().unwrap_or_default(),
                    String::new(),
                )
                .await
            }
            ServerEvent::TranscriptDelta {
                response_id,
                item_id,
                delta,
            } => {
                if self.is_cancelled(&response_id) {
                    return Ok(());
                }
                self.emit(transcript(pb::Role::Assistant, item_id, delta, false))
                    .await
            }
            ServerEvent::TranscriptDone {
                response_id,
                item_id,
                transcript: t,
            } => {
                if self.is_cancelled(&response_id) {
                    return Ok(());
                }
                self.remember(pb::Role::Assistant, &t);
                self.emit(transcript(pb::Role::Assistant, item_id, t, true))
                    .await
            }
            ServerEvent::InputTranscriptionDelta { item_id, delta } => {
                self.emit(transcript(pb::Role::User, item_id, delta, false))
                    .await
            }
            ServerEvent::InputTranscriptionCompleted {
                item_id,
                transcript: t,
            } => {
                self.remember(pb::Role::User, &t);
                self.emit(transcript(pb::Role::User, item_id, t, true))
                    .await
            }
            ServerEvent::InputTranscriptionFailed { item_id, message } => {
                self.host_error(
                    "transcription_failed",
                    format!("item {item_id}: {message}"),
                    true,
                )
                .await
            }
            ServerEvent::SpeechStarted {
                item_id,
                audio_start_ms,
            } => {
                let now = Instant::now();
                if let Some(c) = self.dead_air.audio_released(now) {
                    self.observe_dead_air(c);
                }
                self.user_turn_end = None;
                if self.playout.is_audible(now)
                    || self
                        .scheduler
                        .running_id()
                        .is_some_and(|r| Some(r) == self.audio_response.as_deref())
                {
                    self.interrupt(true).await?;
                }
                self.emit(Out::SpeechStarted(pb::SpeechStarted {
                    item_id,
                    audio_start_ms: clamp_u32(audio_start_ms),
                }))
                .await
            }
            ServerEvent::SpeechStopped {
                item_id,
                audio_end_ms,
            } => {
                let now = Instant::now();
                self.summary.turns += 1;
                if !self.plan.config.listen_only {
                    self.user_turn_end = Some(now);
                    self.dead_air.user_turn_ended(now);
                }
                self.emit(Out::SpeechStopped(pb::SpeechStopped {
                    item_id,
                    audio_end_ms: clamp_u32(audio_end_ms),
                }))
                .await
            }
            ServerEvent::ResponseCreated { response } => {
                let tag = response
                    .metadata
                    .as_ref()
                    .and_then(|m| m.get(crate::scheduler::TAG_KEY))
                    .and_then(|t| t.as_str());
                self.scheduler.on_created(&response.id, tag);
                let span = tracing::info_span!(
                    "response",
                    response_id = %response.id,
                    status = tracing::field::Empty,
                    voice_to_voice_ms = tracing::field::Empty,
                    output_tokens = tracing::field::Empty,
                );
                if self.response_spans.len() < 64 {
                    self.response_spans.insert(response.id.clone(), span);
                }
                Ok(())
            }
            ServerEvent::OutputItemAdded {
                item: Item::FunctionCall { call_id, name, .. },
                ..
            } => {
                self.call_names.insert(call_id, name);
                Ok(())
            }
            ServerEvent::FunctionCallArgumentsDone {
                response_id,
                call_id,
                name,
                arguments,
                ..
            } => {
                let name = name
                    .or_else(|| self.call_names.get(&call_id).cloned())
                    .unwrap_or_default();
                self.start_call(&response_id, call_id, name, arguments)
                    .await
            }
            ServerEvent::OutputItemDone {
                response_id,
                item:
                    Item::FunctionCall {
                        call_id,
                        name,
                        arguments,
                        ..
                    },
            } => {
                self.start_call(&response_id, call_id, name, arguments)
                    .await
            }
            ServerEvent::ResponseDone { response } => self.on_response_done(response).await,
            ServerEvent::Error { error } => {
                let code = error.code.clone().unwrap_or_default();
                if code == "conversation_already_has_active_response" {
                    if let Some(eid) = &error.event_id {
                        if self.scheduler.on_rejected(eid) {
                            debug!("response.create collided with a server-started response; queued again");
                            return Ok(());
                        }
                    }
                }
                if code == "response_cancel_not_active" {
                    // The server already cancelled it (interrupt_response): nothing to tell anyone.
                    return Ok(());
                }
                counter!(names::UPSTREAM_ERRORS, "code" => bounded_code(&code)).increment(1);
                warn!(session_id = %self.id, code = %code, message = %error.message, "upstream error");
                let retryable = error.kind == "server_error" || code.contains("rate_limit");
                let message = if code.is_empty() {
                    error.message
                } else {
                    format!("{code}: {}", error.message)
                };
                self.host_error("upstream_error", message, retryable).await
            }
            ServerEvent::Unknown { kind } => {
                counter!(names::UPSTREAM_EVENTS_UNKNOWN).increment(1);
                debug!(%kind, "unknown upstream event");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn is_cancelled(&self, response_id: &str) -> bool {
        self.cancelled.iter().any(|r| r == response_id)
    }

    async fn on_audio_delta(
        &mut self,
        response_id: String,
        item_id: String,
        audio: Vec<u8>,
    ) -> Result<(), End> {
        // As for `on_audio`: a delta's frames reach the host queue without a cooperative-budget
        // yield in the middle; a full host queue still makes it wait (real backpressure).
        tokio::task::unconstrained(self.on_audio_delta_frames(response_id, item_id, audio)).await
    }

    async fn on_audio_delta_frames(
        &mut self,
        response_id: String,
        item_id: String,
        audio: Vec<u8>,
    ) -> Result<(), End> {
        if self.is_cancelled(&response_id) {
            return Ok(());
        }
        let t0 = Instant::now();
        if self.audio_response.as_deref() != Some(&response_id) {
            self.audio_response = Some(response_id.clone());
            self.audio_check.reset();
            if let Some(end) = self.user_turn_end.take() {
                let latency = t0.saturating_duration_since(end);
                histogram!(names::RESPONSE_LATENCY, self.labels.clone())
                    .record(latency.as_secs_f64());
                let ms = latency.as_millis().min(u32::MAX as u128) as u32;
                self.summary.latencies_ms.push(ms);
                self.latency_by_response.insert(response_id.clone(), ms);
            }
        }
        let wire_audio = self.plan.wire_out.duration_of(audio.len());
        self.check_audio(&audio, wire_audio);
        self.note_upstream_audio(&item_id, wire_audio);
        if let Err(e) = self.output.push(&audio, &mut self.out_frames) {
            return self
                .host_error(
                    e.code(),
                    format!("model audio could not be converted: {e}"),
                    true,
                )
                .await;
        }
        self.forward_frames(response_id, item_id).await?;
        names::record_frame_processing(names::Direction::Out, t0.elapsed().as_secs_f64());
        Ok(())
    }

    /// Moves converted frames into the playout (paced) or straight to the host.
    async fn forward_frames(&mut self, _response_id: String, item_id: String) -> Result<(), End> {
        let now = Instant::now();
        let item_id = if item_id.is_empty() {
            self.playout.played(now).map(|(i, _)| i).unwrap_or_default()
        } else {
            item_id
        };
        // Both buffers are taken and put back so their capacity is reused from delta to delta.
        let mut frames = std::mem::take(&mut self.out_frames);
        let mut immediate = std::mem::take(&mut self.released);
        let n = frames.len();
        let mut item_id = Some(item_id);
        for (i, f) in frames.drain(..).enumerate() {
            self.out_seq += 1;
            // Every frame needs its own copy of the item id; the last one takes the original.
            let frame_item = if i + 1 == n {
                item_id.take().unwrap_or_default()
            } else {
                item_id.clone().unwrap_or_default()
            };
            let q = QueuedFrame {
                duration: Duration::from_micros(f.duration_us as u64),
                frame: pb::AudioFrame {
                    data: f.data,
                    seq: self.out_seq,
                    item_id: frame_item,
                    duration_us: f.duration_us,
                },
            };
            if let Some(q) = self.playout.push(q, now) {
                immediate.push(q);
            }
        }
        self.out_frames = frames;
        self.playout.due(now, &mut immediate);
        let r = self.release(&mut immediate).await;
        self.released = immediate;
        r
    }

    async fn release(&mut self, frames: &mut Vec<QueuedFrame>) -> Result<(), End> {
        if frames.is_empty() {
            return Ok(());
        }
        if let Some(c) = self.dead_air.audio_released(Instant::now()) {
            self.observe_dead_air(c);
        }
        let underrun = self.playout.take_underrun();
        if !underrun.is_zero() {
            histogram!(names::DEAD_AIR, "cause" => "underrun", "tool" => "")
                .record(underrun.as_secs_f64());
            self.summary.dead_air += underrun;
        }
        for q in frames.drain(..) {
            names::count_frame(names::Direction::Out, q.frame.data.len());
            self.emit(Out::Audio(q.frame)).await?;
        }
        Ok(())
    }

    fn observe_dead_air(&mut self, c: Closed) {
        let secs = c.duration.as_secs_f64();
        histogram!(names::SILENCE, "phase" => c.phase.as_str()).record(secs);
        match c.phase {
            Phase::AfterUser => {
                histogram!(names::DEAD_AIR, "cause" => "model", "tool" => "").record(secs)
            }
            Phase::ToolCall => {
                let tool = self
                    .waiting_on_tool
                    .as_deref()
                    .map(|t| self.plan.tools.label(t))
                    .unwrap_or("_unknown");
                histogram!(names::DEAD_AIR, "cause" => "tool", "tool" => tool.to_string())
                    .record(secs)
            }
        }
        self.summary.dead_air += c.duration;
    }

    fn note_upstream_audio(&mut self, item_id: &str, d: Duration) {
        match self.upstream_item_audio.as_mut() {
            Some((id, total)) if id == item_id => *total += d,
            _ => self.upstream_item_audio = Some((item_id.to_string(), d)),
        }
    }

    /// How much of `item_id`'s audio upstream has sent, if it is the item currently arriving.
    fn upstream_audio_of(&self, item_id: &str) -> Option<Duration> {
        self.upstream_item_audio
            .as_ref()
            .filter(|(id, _)| id == item_id)
            .map(|(_, d)| *d)
    }

    /// Counts assistant audio that stays near-silent or clipped (wire samples, before conversion);
    /// `duration` is how much audio `wire` holds.
    fn check_audio(&mut self, wire: &[u8], duration: Duration) {
        use voice_audio::g711;
        use voice_audio::WireFormat;
        // Per-format calls keep `feed` monomorphic: this runs on every upstream audio delta.
        let found = match self.plan.wire_out {
            WireFormat::Pcm16_24k => self.audio_check.feed(
                wire.chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]])),
                duration,
            ),
            WireFormat::Ulaw8k => self
                .audio_check
                .feed(wire.iter().map(|&b| g711::ulaw_to_linear(b)), duration),
            WireFormat::Alaw8k => self
                .audio_check
                .feed(wire.iter().map(|&b| g711::alaw_to_linear(b)), duration),
        };
        if let Some(a) = found {
            warn!(session_id = %self.id, kind = a.as_str(), "assistant audio anomaly");
            counter!(names::AUDIO_ANOMALIES, "kind" => a.as_str()).increment(1);
        }
    }

    /// Barge-in (`by_user`) or a host's cancel: stop the assistant, truncate what was not heard, tell
    /// the host to flush.
    async fn interrupt(&mut self, by_user: bool) -> Result<(), End> {
        let now = Instant::now();
        let played = self.playout.played(now);
        let audible = self.playout.is_audible(now);
        if let Some(rid) = self.scheduler.running_id().map(str::to_string) {
            self.send_up(ClientEvent::ResponseCancel).await?;
            self.mark_cancelled(rid);
        }
        if let Some(rid) = self.audio_response.clone() {
            self.mark_cancelled(rid);
        }
        self.playout.flush();
        self.output.reset();
        if let (true, Some((item_id, played))) = (audible, played) {
            // Never past what the model produced for the item (see `upstream_item_audio`).
            let played = match self.upstream_audio_of(&item_id) {
                Some(sent) => played.min(sent),
                None => played,
            };
            let ms = played.as_millis() as u64;
            if !item_id.is_empty() && item_id != "earcon" {
                self.send_up(ClientEvent::ItemTruncate {
                    item_id: item_id.clone(),
                    content_index: 0,
                    audio_end_ms: ms,
                })
                .await?;
            }
            if by_user {
                counter!(names::INTERRUPTIONS).increment(1);
                self.summary.interruptions += 1;
            }
            self.emit(Out::Interrupted(pb::Interrupted {
                item_id,
                played_ms: clamp_u32(ms),
            }))
            .await?;
        }
        Ok(())
    }

    fn mark_cancelled(&mut self, rid: String) {
        if !self.is_cancelled(&rid) {
            self.cancelled.push_back(rid);
            if self.cancelled.len() > 16 {
                self.cancelled.pop_front();
            }
        }
    }

    async fn on_response_done(
        &mut self,
        response: voice_realtime::ResponseInfo,
    ) -> Result<(), End> {
        for item in &response.output {
            if let Item::FunctionCall {
                call_id,
                name,
                arguments,
                ..
            } = item
            {
                self.start_call(
                    &response.id,
                    call_id.clone(),
                    name.clone(),
                    arguments.clone(),
                )
                .await?;
            }
        }
        self.scheduler.on_done(&response.id);
        self.summary.responses += 1;
        counter!(names::RESPONSES_TOTAL, "status" => bounded_status(&response.status)).increment(1);
        let usage = response.usage.clone().unwrap_or_default();
        for (kind, n) in [
            ("input_text", usage.input_text_tokens),
            ("input_audio", usage.input_audio_tokens),
            ("input_cached", usage.input_cached_tokens),
            ("output_text", usage.output_text_tokens),
            ("output_audio", usage.output_audio_tokens),
        ] {
            if n > 0 {
                counter!(names::TOKENS, "kind" => kind).increment(n);
            }
        }
        self.summary.usage.add(&usage);
        let v2v = self.latency_by_response.remove(&response.id).unwrap_or(0);
        if let Some(span) = self.response_spans.remove(&response.id) {
            span.record("status", response.status.as_str());
            span.record("voice_to_voice_ms", v2v);
            span.record("output_tokens", usage.output_tokens);
            span.in_scope(
                || info!(status = %response.status, voice_to_voice_ms = v2v, "response done"),
            );
        }
        if let Some(prices) = self.plan.prices {
            let cost = prices.cost_usd(&usage);
            self.cost_usd += cost;
            counter!(names::COST).increment((cost * 1_000_000.0).round() as u64);
        }
        self.emit(Out::ResponseDone(pb::ResponseDone {
            response_id: response.id.clone(),
            status: response.status.clone(),
            usage: Some(usage_pb(&usage)),
            voice_to_voice_ms: v2v,
        }))
        .await?;
        if let Some(rid) = self.rounds.on_response_done(&response.id) {
            self.scheduler.request(PendingCreate {
                reason: CreateReason::ToolRound(rid),
                response: None,
            });
        }
        self.pump().await?;
        self.check_budget().await
    }

    /// Over budget: warn the host once, and end the session if it asked for that.
    async fn check_budget(&mut self) -> Result<(), End> {
        let Some((budget, end)) = self.plan.budget else {
            return Ok(());
        };
        if self.cost_usd <= budget || self.budget_warned {
            return Ok(());
        }
        self.budget_warned = true;
        counter!(names::BUDGET_EXCEEDED).increment(1);
        let msg = format!(
            "estimated cost ${:.4} is over this session's budget of ${budget:.4}",
            self.cost_usd
        );
        warn!(
            session_id = %self.id,
            cost_usd = self.cost_usd,
            budget_usd = budget,
            "session over budget"
        );
        self.host_error("budget_exceeded", msg, false).await?;
        if end {
            return Err(End::Budget);
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------------------
    // Responses and tools
    // ----------------------------------------------------------------------------------------------

    async fn request_response(
        &mut self,
        reason: CreateReason,
        response: Option<serde_json::Value>,
    ) -> Result<(), End> {
        self.scheduler.request(PendingCreate { reason, response });
        self.pump().await
    }

    /// Sends the next queued `response.create` if no response is active.
    async fn pump(&mut self) -> Result<(), End> {
        if let Some(c) = self.scheduler.next_to_send() {
            debug!(reason = ?c.reason, "response.create");
            // The connection assigns event ids; the tag must carry the id this create will get.
            let eid = self.conn.next_event_id();
            let response = crate::scheduler::tagged_response(c.response.as_ref(), &eid);
            let id = self
                .send_up(ClientEvent::ResponseCreate {
                    response: Some(response),
                })
                .await?;
            debug_assert_eq!(id, eid);
            self.scheduler.sent(id, c);
        }
        Ok(())
    }

    async fn start_call(
        &mut self,
        response_id: &str,
        call_id: String,
        name: String,
        arguments: String,
    ) -> Result<(), End> {
        if call_id.is_empty() || !self.rounds.on_call(response_id, &call_id) {
            return Ok(());
        }
        let now = Instant::now();
        self.summary.tool_calls += 1;
        gauge!(names::TOOL_CALLS_IN_FLIGHT).increment(1.0);
        let silent_from = self.playout.audible_until().unwrap_or(now);
        if let Some(c) = self.dead_air.tool_started(now, silent_from) {
            self.observe_dead_air(c);
        }
        self.emit(Out::ToolCallStarted(pb::ToolCallStarted {
            call_id: call_id.clone(),
            name: name.clone(),
            arguments_json: arguments.clone(),
        }))
        .await?;
        let span = tracing::info_span!(
            "tool_call",
            %call_id,
            tool = %name,
            status = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        span.in_scope(|| info!("tool call started"));
        self.tool_spans.insert(call_id.clone(), span);
        self.waiting_on_tool = Some(name.clone());
        let def = match self.plan.tools.check(&name, &arguments) {
            Ok(d) => d,
            Err(refusal) => {
                self.refuse_call(call_id, name, now, refusal.to_string());
                return Ok(());
            }
        };
        match self.plan.route.clone() {
            ToolRoute::Callback(addr) => {
                let inv = pb::ToolInvocation {
                    session_id: self.id.clone(),
                    call_id: call_id.clone(),
                    name: name.clone(),
                    arguments_json: arguments,
                    deadline_ms: def.timeout.as_millis() as u32,
                };
                let fut = tools::invoke_callback(
                    self.ctx.channels.clone(),
                    addr,
                    inv,
                    def.timeout,
                    self.plan.max_tool_output_bytes,
                )
                .instrument(
                    self.tool_spans
                        .get(&call_id)
                        .cloned()
                        .unwrap_or_else(tracing::Span::none),
                );
                self.track_call(call_id, name, now, None);
                self.tools.push(fut.boxed());
            }
            ToolRoute::InStream => {
                self.emit(Out::ToolCall(pb::ToolCall {
                    call_id: call_id.clone(),
                    name: name.clone(),
                    arguments_json: arguments,
                    timeout_ms: def.timeout.as_millis() as u32,
                }))
                .await?;
                self.track_call(call_id, name, now, Some(now + def.timeout));
            }
            ToolRoute::Unroutable => {
                self.refuse_call(call_id, name, now, "no tool host is configured".into());
            }
        }
        Ok(())
    }

    /// A call that never reaches a host still ends through `finish_call`, like every other call.
    fn refuse_call(&mut self, call_id: String, name: String, now: Instant, why: String) {
        let o = ToolOutcome::failed(&call_id, &name, ToolStatus::Refused, why, Duration::ZERO);
        self.track_call(call_id, name, now, None);
        self.tools.push(async move { o }.boxed());
    }

    /// Every call is in `in_flight` until `finish_call`; `deadline` only for in-stream calls (a
    /// callback's timeout lives in its future).
    fn track_call(
        &mut self,
        call_id: String,
        name: String,
        now: Instant,
        deadline: Option<Instant>,
    ) {
        self.in_flight.insert(
            call_id,
            InFlight {
                name,
                started: now,
                deadline,
            },
        );
    }

    async fn on_tool_result(&mut self, r: pb::ToolResult) -> Result<(), End> {
        let pending_in_stream = self
            .in_flight
            .get(&r.call_id)
            .is_some_and(|f| f.deadline.is_some());
        if !pending_in_stream {
            if self.timed_out.contains(&r.call_id) {
                info!(call_id = %r.call_id, "late tool result dropped (the call already timed out)");
                return self
                    .host_error(
                        "tool_result_late",
                        format!("call {} already timed out; result dropped", r.call_id),
                        false,
                    )
                    .await;
            }
            return self
                .host_error(
                    "tool_unknown_call",
                    format!("no pending in-stream tool call {:?}", r.call_id),
                    false,
                )
                .await;
        }
        let Some(f) = self.in_flight.get(&r.call_id) else {
            return Ok(());
        };
        let answer = match r.result {
            Some(pb::tool_result::Result::OutputJson(o)) => Ok(o),
            Some(pb::tool_result::Result::Error(e)) => Err(e),
            None => Err("the host sent a ToolResult with neither output nor error".into()),
        };
        let o = tools::outcome_from_answer(
            &r.call_id,
            &f.name.clone(),
            answer,
            self.plan.max_tool_output_bytes,
            f.started.elapsed(),
        );
        self.finish_call(o).await
    }

    /// Every call ends here exactly once: output upstream, event to the host, metrics, round bookkeeping.
    async fn finish_call(&mut self, o: ToolOutcome) -> Result<(), End> {
        if self.in_flight.remove(&o.call_id).is_none() {
            return Ok(());
        }
        gauge!(names::TOOL_CALLS_IN_FLIGHT).decrement(1.0);
        let label = self.plan.tools.label(&o.name).to_string();
        histogram!(names::TOOL_CALL_DURATION, "tool" => label.clone(), "outcome" => o.status.as_str()).record(o.duration.as_secs_f64());
        counter!(names::TOOL_CALLS_TOTAL, "tool" => label, "outcome" => o.status.as_str())
            .increment(1);
        let duration_ms = o.duration.as_millis() as u64;
        let span = self
            .tool_spans
            .remove(&o.call_id)
            .unwrap_or_else(tracing::Span::none);
        span.record("status", o.status.as_str());
        span.record("duration_ms", duration_ms);
        span.in_scope(|| {
            info!(
                status = o.status.as_str(),
                duration_ms, "tool call finished"
            )
        });
        self.waiting_on_tool = Some(o.name.clone());
        if self.orphaned_calls.remove(&o.call_id) {
            // Started before a reconnect: the new upstream session has no such call id, so the result
            // goes in as context and the model is asked to continue.
            let note = format!("Result of the earlier {} tool call: {}", o.name, o.output);
            self.send_up(context_item(self.plan.dialect, pb::Role::User, &note))
                .await?;
            self.request_response(CreateReason::UserText, None).await?;
        } else {
            self.send_up(ClientEvent::function_output(&o.call_id, &o.output))
                .await?;
        }
        self.emit(Out::ToolCallFinished(pb::ToolCallFinished {
            call_id: o.call_id.clone(),
            name: o.name.clone(),
            status: o.status.to_pb() as i32,
            duration_ms: o.duration.as_millis().min(u32::MAX as u128) as u32,
            error: o.error.clone().unwrap_or_default(),
        }))
        .await?;
        if let Some(rid) = self.rounds.on_output(&o.call_id) {
            self.scheduler.request(PendingCreate {
                reason: CreateReason::ToolRound(rid),
                response: None,
            });
            self.pump().await?;
        }
        Ok(())
    }

    async fn on_timer(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let mut due = std::mem::take(&mut self.released);
        self.playout.due(now, &mut due);
        let r = self.release(&mut due).await;
        self.released = due;
        r?;

        let expired: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for call_id in expired {
            let Some(f) = self.in_flight.get(&call_id) else {
                continue;
            };
            let timeout = f
                .deadline
                .map(|d| d.saturating_duration_since(f.started))
                .unwrap_or_default();
            let o = tools::timeout_outcome(&call_id, &f.name.clone(), timeout, f.started.elapsed());
            self.timed_out.insert(call_id);
            self.finish_call(o).await?;
        }

        if self.plan.guard.action != GuardAction::Off && self.rounds.pending_count() > 0 {
            if let Some(at) = self.dead_air.guard_deadline(self.plan.guard.threshold) {
                if at <= now {
                    self.dead_air.guard_fired();
                    self.fire_guard().await?;
                }
            }
        }
        Ok(())
    }

    async fn fire_guard(&mut self) -> Result<(), End> {
        info!(action = ?self.plan.guard.action, "silence guard: caller has waited past the threshold");
        match self.plan.guard.action {
            GuardAction::Off => Ok(()),
            GuardAction::HoldingLine => {
                let response = json!({
                    "conversation": "none",
                    "instructions": HOLDING_LINE_INSTRUCTIONS,
                    "metadata": {"purpose": "holding_line"},
                });
                self.request_response(CreateReason::HoldingLine, Some(response))
                    .await
            }
            GuardAction::Earcon => {
                self.out_seq += 1;
                let bytes_per_ms = self.plan.output.bytes_per_ms().unwrap_or(0).max(1);
                let duration_us = (self.plan.guard.earcon.len() / bytes_per_ms * 1000) as u32;
                let mut frames = vec![QueuedFrame {
                    duration: Duration::from_micros(duration_us as u64),
                    frame: pb::AudioFrame {
                        data: self.plan.guard.earcon.clone(),
                        seq: self.out_seq,
                        item_id: "earcon".into(),
                        duration_us,
                    },
                }];
                self.release(&mut frames).await
            }
        }
    }

    fn remember(&mut self, role: pb::Role, text: &str) {
        if text.trim().is_empty() {
            return;
        }
        self.context.push_back((role, text.to_string()));
        while self.context.len() > MAX_CONTEXT_ITEMS {
            self.context.pop_front();
        }
    }

    /// The upstream socket failed: open a new upstream session (with backoff), restore the session
    /// configuration, carry the conversation forward as text, and tell the host. Calls still running
    /// keep running; their results are delivered as context.
    async fn reconnect(&mut self, e: RealtimeError) -> Result<(), End> {
        if !e.is_retryable() || self.reconnects >= MAX_RECONNECTS {
            return Err(End::Upstream(e));
        }
        self.reconnects += 1;
        counter!(names::UPSTREAM_RECONNECTS).increment(1);
        warn!(session_id = %self.id, error = %e, attempt = self.reconnects, "upstream lost: reconnecting");
        self.host_error("upstream_disconnected", format!("{e}; reconnecting"), true)
            .await?;
        let t0 = Instant::now();
        let mut last = String::new();
        let mut conn = None;
        for attempt in 0..3u32 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            match open_upstream(&self.plan, &self.ctx).await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err((_, m, retryable)) => {
                    last = m;
                    if !retryable {
                        break;
                    }
                }
            }
        }
        let Some(conn) = conn else {
            return Err(End::Upstream(RealtimeError::Closed {
                reason: Some(format!("reconnect failed: {last}")),
            }));
        };
        self.conn = conn;
        // Nothing of the old session is active any more; queued creates are kept, and a response that
        // was cut off is asked for again once the context is restored.
        let cut_off = self.scheduler.is_active();
        for c in self.scheduler.reset() {
            self.scheduler.request(c);
        }
        if let Some(rid) = self.audio_response.take() {
            self.mark_cancelled(rid);
        }
        self.output.reset();
        self.orphaned_calls.extend(self.in_flight.keys().cloned());
        self.rounds = ToolRounds::new();
        let items: Vec<ClientEvent> = self
            .context
            .iter()
            .map(|(r, t)| context_item(self.plan.dialect, *r, t))
            .collect();
        for item in items {
            self.send_up(item).await?;
        }
        if cut_off {
            self.scheduler.request(PendingCreate {
                reason: CreateReason::Resume,
                response: None,
            });
        }
        let gap = t0.elapsed();
        histogram!(names::DEAD_AIR, "cause" => "reconnect", "tool" => "").record(gap.as_secs_f64());
        info!(
            after_ms = gap.as_millis() as u64,
            context_items = self.context.len(),
            "upstream session resumed"
        );
        self.host_error(
            "upstream_resumed",
            format!(
                "reconnected after {} ms; conversation carried forward",
                gap.as_millis()
            ),
            true,
        )
        .await?;
        self.pump().await
    }

    async fn finish(mut self, end: End) -> &'static str {
        let reason = end.reason();
        match &end {
            End::Upstream(e) => {
                warn!(session_id = %self.id, error = %e, "upstream connection lost");
                counter!(names::UPSTREAM_ERRORS, "code" => "disconnected").increment(1);
                let _ = self
                    .host_error("upstream_disconnected", e.to_string(), e.is_retryable())
                    .await;
            }
            other => info!(reason = other.reason(), "session ending"),
        }
        // Calls still running are cancelled by dropping their futures (hosts see the RPC cancelled).
        let running: Vec<(String, InFlight)> = self.in_flight.drain().collect();
        self.tools = FuturesUnordered::new();
        for (call_id, f) in running {
            gauge!(names::TOOL_CALLS_IN_FLIGHT).decrement(1.0);
            let label = self.plan.tools.label(&f.name).to_string();
            counter!(names::TOOL_CALLS_TOTAL, "tool" => label, "outcome" => "cancelled")
                .increment(1);
            let _ = self
                .emit(Out::ToolCallFinished(pb::ToolCallFinished {
                    call_id,
                    name: f.name,
                    status: pb::ToolStatus::Cancelled as i32,
                    duration_ms: f.started.elapsed().as_millis().min(u32::MAX as u128) as u32,
                    error: "the session ended".into(),
                }))
                .await;
        }
        if !matches!(end, End::Upstream(_)) {
            self.conn.close().await;
        }
        let lat = &self.summary.latencies_ms;
        let summary = pb::SessionSummary {
            turns: self.summary.turns,
            responses: self.summary.responses,
            mean_voice_to_voice_ms: if lat.is_empty() {
                0
            } else {
                (lat.iter().map(|&x| x as u64).sum::<u64>() / lat.len() as u64) as u32
            },
            max_voice_to_voice_ms: lat.iter().copied().max().unwrap_or(0),
            dead_air_ms: self.summary.dead_air.as_millis().min(u32::MAX as u128) as u32,
            tool_calls: self.summary.tool_calls,
            interruptions: self.summary.interruptions,
            usage: Some(usage_pb(&self.summary.usage)),
            duration_ms: self.started.elapsed().as_millis().min(u32::MAX as u128) as u32,
            cost_usd: self.cost_usd,
        };
        let _ = self
            .emit(Out::Ended(pb::SessionEnded {
                reason: reason.into(),
                summary: Some(summary),
            }))
            .await;
        info!(reason, "session ended");
        reason
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

const MAX_RECONNECTS: u32 = 3;
const MAX_CONTEXT_ITEMS: usize = 20;

/// A conversation message carrying earlier context into a new upstream session. Assistant text uses
/// the dialect's output content type (`output_text` GA, `text` beta).
fn context_item(dialect: voice_realtime::Dialect, role: pb::Role, text: &str) -> ClientEvent {
    let (role, kind) = match (role, dialect) {
        (pb::Role::Assistant, voice_realtime::Dialect::Ga) => ("assistant", "output_text"),
        (pb::Role::Assistant, voice_realtime::Dialect::Beta) => ("assistant", "text"),
        _ => ("user", "input_text"),
    };
    ClientEvent::ItemCreate {
        item: json!({"type": "message", "role": role, "content": [{"type": kind, "text": text}]}),
    }
}

fn transcript(role: pb::Role, item_id: String, text: String, final_: bool) -> Out {
    Out::Transcript(pb::Transcript {
        role: role as i32,
        item_id,
        text,
        r#final: final_,
    })
}

fn clamp_u32(x: u64) -> u32 {
    x.min(u32::MAX as u64) as u32
}

fn usage_pb(u: &Usage) -> pb::Usage {
    pb::Usage {
        total_tokens: u.total_tokens,
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        input_text_tokens: u.input_text_tokens,
        input_audio_tokens: u.input_audio_tokens,
        input_cached_tokens: u.input_cached_tokens,
        output_text_tokens: u.output_text_tokens,
        output_audio_tokens: u.output_audio_tokens,
    }
}

/// Upstream error codes as metric label values: known codes pass, anything else is "other".
fn bounded_code(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "invalid_value",
        "invalid_event",
        "missing_required_parameter",
        "unknown_parameter",
        "session_expired",
        "rate_limit_exceeded",
        "server_error",
        "conversation_already_has_active_response",
        "input_audio_buffer_commit_empty",
        "invalid_tool_call_id",
    ];
    KNOWN
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or("other")
}

fn bounded_status(s: &str) -> &'static str {
    match s {
        "completed" => "completed",
        "cancelled" => "cancelled",
        "failed" => "failed",
        "incomplete" => "incomplete",
        _ => "other",
    }
}
