//! The session loop: the one task that joins a host's `Converse` stream to an upstream Realtime
//! session. It owns every piece of I/O — the host's stream, the upstream link and the reconnect
//! attempt in progress, the callback tool calls' futures, the timer — routes what arrives to the
//! [`Conversation`], and performs the actions it asks for from its outbox.
//!
//! Owning it all in one task is what lets the rules (one active response, one output per call, one
//! `response.create` per tool round) hold without locks. Nothing in the loop blocks on the upstream:
//! while the link is down or backing off, host messages, tool results, timers and shutdown are still
//! served (host audio in the gap is dropped and counted in `voice_audio_dropped_total`).

use crate::conversation::{Conversation, End, SwitchSend};
use crate::error::{Code, HostError};
use crate::limits::{Warn, WarnLimiter};
use crate::outbox::{Action, Invocation};
use crate::plan::SessionPlan;
use crate::rollover::{Rollover, Switch};
use crate::scheduler::tagged_response;
use crate::tools::{self, ToolChannels, ToolOutcome};
use crate::transcription::{Leg, LegEvent, LegSettings};
use crate::upstream::{self, Connect, Next, Policy, Reconnect};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use metrics::{counter, gauge, histogram};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, info, info_span, warn, Instrument};
use voice_audio::{InputPipeline, OutputPipeline};
use voice_proto::v1 as pb;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime::{ApiKey, ClientEvent, ConnectOptions, RealtimeConnection, RealtimeError};
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
    /// How long one upstream session may take to open and confirm its configuration (every
    /// attempt: the first and each reconnect).
    pub setup_timeout: Duration,
    /// How upstream connections are made (WebSocket; in-memory in tests).
    pub connector: Arc<dyn Connect>,
    pub reconnect: Policy,
    /// Whether sessions can open upstream sessions (the sidecar's readiness).
    pub reachability: Arc<upstream::Reachability>,
    /// How long a session waits on a host that is not reading its stream before it ends with
    /// `host_stalled` (`--host-stall-timeout-ms`).
    pub host_stall_timeout: Duration,
}

impl SessionContext {
    /// A context that connects over WebSocket with the default reconnect policy.
    pub fn new(
        upstream: UpstreamSettings,
        channels: ToolChannels,
        shutdown: CancellationToken,
        setup_timeout: Duration,
    ) -> Self {
        SessionContext {
            upstream,
            channels,
            shutdown,
            setup_timeout,
            connector: Arc::new(upstream::WebSocketConnector),
            reconnect: Policy::default(),
            reachability: Arc::new(upstream::Reachability::new(3)),
            host_stall_timeout: DEFAULT_HOST_STALL_TIMEOUT,
        }
    }

    fn connect_options(&self, plan: &SessionPlan) -> ConnectOptions {
        ConnectOptions {
            base_url: self.upstream.base_url.clone(),
            model: plan.model.clone(),
            intent: voice_realtime::Intent::Conversation,
            dialect: plan.dialect,
            api_key: self.upstream.api_key.clone(),
            connect_timeout: self.upstream.connect_timeout,
            max_message_bytes: self.upstream.max_message_bytes,
        }
    }
}

/// The default of `--host-stall-timeout-ms`.
pub const DEFAULT_HOST_STALL_TIMEOUT: Duration = Duration::from_secs(10);

pub type HostSender = mpsc::Sender<Result<pb::ServerMessage, Status>>;

type Attempt = BoxFuture<'static, Result<RealtimeConnection, HostError>>;

/// The next upstream session, opened ahead of a rollover (see [`crate::rollover`]).
struct Standby {
    conn: RealtimeConnection,
    /// The session it was configured with.
    configured: serde_json::Value,
    /// The conversation's context cursor when it was seeded.
    cursor: u64,
    seeded_items: u32,
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
        let outcome = match &plan.kind {
            crate::plan::SessionKind::Transcription => {
                crate::transcription::runner::run(plan, inbound, out, ctx, id).await
            }
            crate::plan::SessionKind::Translation(t) => {
                let t = t.clone();
                crate::translation::runner::run(plan, t, inbound, out, ctx, id).await
            }
            crate::plan::SessionKind::Conversation => run(plan, inbound, out, ctx, id).await,
        };
        gauge!(names::SESSIONS_ACTIVE).decrement(1.0);
        counter!(names::SESSIONS_TOTAL, "outcome" => outcome).increment(1);
    }
    .instrument(span)
    .await;
}

fn attempt(ctx: &SessionContext, plan: &SessionPlan) -> Attempt {
    let connector = ctx.connector.clone();
    let opts = ctx.connect_options(plan);
    let session = plan.config.to_json(plan.dialect);
    let timeout = ctx.setup_timeout;
    Box::pin(async move { upstream::open(connector.as_ref(), opts, session, timeout).await })
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
    let pipelines = InputPipeline::new(plan.input, plan.wire_in, plan.max_frame_bytes)
        .and_then(|i| OutputPipeline::new(plan.wire_out, plan.output).map(|o| (i, o)))
        .map_err(|e| HostError::new(Code::InvalidAudioFormat, e.to_string(), false));
    let setup = match pipelines {
        Ok(p) => {
            let r = attempt(&ctx, &plan).await;
            ctx.reachability.record(r.as_ref().map(|_| ()));
            r.map(|conn| (p, conn))
        }
        Err(e) => Err(e),
    };
    let ((input, output), conn) = match setup {
        Ok(x) => x,
        Err(e) => {
            warn!(session_id = %id, code = e.code.as_str(), message = %e.message, "session setup failed");
            counter!(names::UPSTREAM_ERRORS, "code" => e.code.as_str()).increment(1);
            let _ = out.send(Ok(server(Out::Error(e.to_pb())))).await;
            let _ = out
                .send(Ok(server(Out::Ended(pb::SessionEnded {
                    reason: "upstream_error".into(),
                    summary: None,
                    notes: String::new(),
                }))))
                .await;
            return crate::metrics::SETUP_FAILED;
        }
    };
    let conv = Conversation::new(id, plan, input, output, Instant::now());
    let (pt_in, pt_out) = conv.is_passthrough();
    info!(
        upstream_in = conv.plan.wire_in_name(),
        passthrough_in = pt_in,
        passthrough_out = pt_out,
        "session started"
    );
    let seed = seed_of(&conv.id);
    let mut s = SessionLoop {
        reconnect: Reconnect::new(ctx.reconnect, seed),
        rollover: Rollover::new(conv.plan.rollover, Instant::now()),
        opening: None,
        standby: None,
        last_frame_at: None,
        gap_from: None,
        conv,
        ctx,
        host: out,
        link: Some(conn),
        connecting: None,
        tools: FuturesUnordered::new(),
        host_stall_warned: false,
        bad_events: WarnLimiter::new(),
        shadow: None,
    };
    s.shadow = shadow_leg(&s.ctx, &s.conv.plan, &s.conv.id, seed);
    s.conv.start();
    let end = s.run(&mut inbound).await;
    s.finish(end).await
}

/// How long the end of a call waits for the model's notes.
pub const NOTES_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `SessionEnded.notes`.
pub const MAX_NOTES_BYTES: usize = 4096;
/// What the model is asked for at the end of a call (`SessionStart.extract_notes`).
pub const NOTES_INSTRUCTIONS: &str = "The call is over. List the key facts from it that would help \
in a later call with the same caller: who they are, what they asked for, what was done or promised, \
and anything left open. One short fact per line, at most 12 lines, no greeting, no commentary.";

/// Trimmed, and cut at a character boundary to [`MAX_NOTES_BYTES`].
fn bounded_notes(t: &str) -> String {
    let t = t.trim();
    if t.len() <= MAX_NOTES_BYTES {
        return t.to_string();
    }
    let mut end = MAX_NOTES_BYTES;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    t[..end].to_string()
}

/// Closes a replaced upstream socket with the close handshake, off the session's task.
fn close_in_background(mut conn: RealtimeConnection) {
    tokio::spawn(async move { conn.close().await });
}

/// A per-session seed for backoff jitter (sessions that lost the same upstream do not retry in
/// lockstep).
fn seed_of(id: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(id.as_bytes());
    h.finish()
}

/// What a failed host stream means for the host, if it is the host's fault: the session's end and the
/// error that explains it.
pub(crate) fn host_stream_error(status: &Status) -> Option<(End, HostError)> {
    let msg = status.message();
    if status.code() == tonic::Code::OutOfRange && msg.contains("message length too large") {
        return Some((
            End::MessageTooLarge,
            HostError::new(
                Code::MessageTooLarge,
                format!(
                    "a message over the sidecar's gRPC message limit (--max-message-bytes) was refused \
                     ({msg}); the stream cannot be read past it, so the session ends"
                ),
                false,
            ),
        ));
    }
    if status.code() == tonic::Code::Internal
        && (msg.contains("failed to decode") || msg.contains("compression flag"))
    {
        return Some((
            End::BadMessage,
            HostError::new(
                Code::InvalidMessage,
                format!("a message is not a valid ClientMessage ({msg}); the session ends"),
                false,
            ),
        ));
    }
    None
}

/// Counts a session in `voice_host_stalled_sessions` while it waits for its host to read.
struct StalledGuard;

impl StalledGuard {
    fn enter() -> StalledGuard {
        gauge!(names::HOST_STALLED).increment(1.0);
        StalledGuard
    }
}

impl Drop for StalledGuard {
    fn drop(&mut self) {
        gauge!(names::HOST_STALLED).decrement(1.0);
    }
}

/// `Control.commit`: the host ends the user's turn (and the leg's segment).
fn is_commit(m: &pb::ClientMessage) -> bool {
    matches!(
        &m.message,
        Some(pb::client_message::Message::Control(pb::Control {
            action: Some(pb::control::Action::Commit(_))
        }))
    )
}

fn server(m: Out) -> pb::ServerMessage {
    pb::ServerMessage { message: Some(m) }
}

struct SessionLoop {
    conv: Conversation,
    ctx: Arc<SessionContext>,
    host: HostSender,
    /// The upstream connection, while up.
    link: Option<RealtimeConnection>,
    /// A reconnect attempt in progress.
    connecting: Option<Attempt>,
    reconnect: Reconnect,
    tools: FuturesUnordered<BoxFuture<'static, ToolOutcome>>,
    /// A long host stall has been logged (once per session: a stuck host would flood the log).
    host_stall_warned: bool,
    /// Unparseable upstream events: a few warnings per window, the rest counted.
    bad_events: WarnLimiter,
    /// When to open the next upstream session and switch to it.
    rollover: Rollover,
    /// The standby being opened: the attempt, and the session it configures.
    opening: Option<(Attempt, serde_json::Value)>,
    standby: Option<Standby>,
    /// When the last input frame went upstream, and (after a switch) the last one on the old socket.
    last_frame_at: Option<std::time::Instant>,
    gap_from: Option<std::time::Instant>,
    /// The transcription leg (`SessionStart.shadow_transcription`), while it runs.
    shadow: Option<Leg>,
}

/// The session's transcription leg, if it asked for one. It segments on its own when no turn
/// detection upstream says where speech stops.
fn shadow_leg(ctx: &SessionContext, plan: &SessionPlan, id: &str, seed: u64) -> Option<Leg> {
    let leg = plan.shadow.as_ref()?;
    let own_segments = plan.config.turn_detection == voice_realtime::TurnDetection::Disabled;
    Some(Leg::spawn(
        leg,
        plan.wire_in,
        own_segments,
        leg_settings(ctx, plan, id, seed),
    ))
}

/// How a transcription leg reaches upstream: the session's settings, `intent=transcription`.
pub(crate) fn leg_settings(
    ctx: &SessionContext,
    plan: &SessionPlan,
    id: &str,
    seed: u64,
) -> LegSettings {
    let mut opts = ctx.connect_options(plan);
    opts.intent = voice_realtime::Intent::Transcription;
    opts.dialect = voice_realtime::Dialect::Ga;
    if let Some(l) = &plan.shadow {
        opts.model.clone_from(&l.transcription.model);
    }
    LegSettings {
        connector: ctx.connector.clone(),
        opts,
        setup_timeout: ctx.setup_timeout,
        backoff_base: ctx.reconnect.backoff_base,
        backoff_max: ctx.reconnect.backoff_max,
        seed: seed ^ 0x5ead_0f1e,
        session_id: id.to_string(),
        rollover: plan.rollover,
    }
}

async fn recv_leg(leg: &mut Option<Leg>) -> Option<LegEvent> {
    match leg {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

async fn recv_standby(
    s: &mut Option<Standby>,
) -> Result<voice_realtime::ServerEvent, RealtimeError> {
    match s {
        Some(s) => s.conn.recv().await,
        None => std::future::pending().await,
    }
}

async fn opening_done(
    a: &mut Option<(Attempt, serde_json::Value)>,
) -> Result<RealtimeConnection, HostError> {
    match a {
        Some((f, _)) => f.await,
        None => std::future::pending().await,
    }
}

async fn recv(
    link: &mut Option<RealtimeConnection>,
) -> Result<voice_realtime::ServerEvent, RealtimeError> {
    match link {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

async fn attempt_done(a: &mut Option<Attempt>) -> Result<RealtimeConnection, HostError> {
    match a {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl SessionLoop {
    async fn run<S>(&mut self, inbound: &mut S) -> End
    where
        S: Stream<Item = Result<pb::ClientMessage, Status>> + Unpin + Send,
    {
        let shutdown = self.ctx.shutdown.clone();
        loop {
            // What the last event asked for; without a cooperative-budget yield in the middle (a
            // delta's frames reach the host queue together; a full host queue still waits).
            self.conv.poll_records();
            if let Err(end) = tokio::task::unconstrained(self.perform()).await {
                return end;
            }
            let now = Instant::now();
            let mut recheck = None;
            if self.rollover.ready() {
                let pause = self.conv.pause(now);
                if let Some(sw) = self.rollover.decide(now, pause) {
                    self.switch(sw, now).await;
                    continue;
                }
                recheck = pause.recheck;
            }
            let timer = [
                self.conv.next_deadline(now),
                self.reconnect.deadline(),
                self.rollover.deadline(now),
                recheck,
            ]
            .into_iter()
            .flatten()
            .min();
            let r = tokio::select! {
                () = shutdown.cancelled() => Err(End::Shutdown),
                msg = inbound.next() => match msg {
                    None => Err(End::HostClosed),
                    Some(Err(status)) => Err(self.host_stream_failed(&status)),
                    Some(Ok(pb::ClientMessage { message: Some(pb::client_message::Message::Audio(f)) })) => {
                        tokio::task::unconstrained(self.on_audio(f)).await
                    }
                    Some(Ok(m)) => {
                        if is_commit(&m) {
                            if let Some(leg) = &mut self.shadow {
                                leg.commit();
                            }
                        }
                        self.conv.on_host(m, Instant::now())
                    }
                },
                ev = recv(&mut self.link) => match ev {
                    Ok(ev) => {
                        // The conversation's turn detection says where the leg's segments end.
                        if matches!(ev, voice_realtime::ServerEvent::SpeechStopped { .. }) {
                            if let Some(leg) = &mut self.shadow {
                                leg.commit();
                            }
                        }
                        self.conv.on_upstream(ev, Instant::now())
                    }
                    Err(RealtimeError::Parse(e)) => {
                        counter!(names::UPSTREAM_ERRORS, "code" => crate::metrics::BAD_EVENT).increment(1);
                        if let Warn::Log { suppressed } = self.bad_events.check(Instant::now()) {
                            warn!(session_id = %self.conv.id, error = %e, suppressed, "unparseable upstream event ignored");
                        }
                        Ok(())
                    }
                    Err(e) => self.link_lost(e),
                },
                Some(outcome) = self.tools.next(), if !self.tools.is_empty() => {
                    self.conv.on_tool_outcome(outcome, Instant::now());
                    Ok(())
                }
                r = attempt_done(&mut self.connecting), if self.connecting.is_some() => {
                    self.connecting = None;
                    self.attempt_finished(r)
                }
                r = opening_done(&mut self.opening), if self.opening.is_some() => {
                    if let Some((_, configured)) = self.opening.take() {
                        self.standby_opened(r, configured).await;
                    }
                    Ok(())
                }
                ev = recv_leg(&mut self.shadow), if self.shadow.is_some() => match ev {
                    Some(ev) => self.conv.on_shadow(ev, Instant::now()),
                    // The leg gave up (it told the host): the conversation goes on without it.
                    None => {
                        self.shadow = None;
                        Ok(())
                    }
                },
                ev = recv_standby(&mut self.standby), if self.standby.is_some() => {
                    self.standby_event(ev);
                    Ok(())
                }
                () = sleep_until_opt(timer), if timer.is_some() => {
                    let now = Instant::now();
                    let r = self.conv.on_timer(now);
                    if self.reconnect.start_attempt(now).is_some() {
                        self.connecting = Some(attempt(&self.ctx, &self.conv.plan));
                    }
                    if self.link.is_some() && self.rollover.on_timer(now) {
                        self.open_standby();
                    }
                    r
                }
            };
            if let Err(end) = r {
                return end;
            }
        }
    }

    /// The host's stream yielded an error. A message over the size limit or undecodable bytes leave
    /// the stream unreadable past them: the host is told why before the session ends.
    fn host_stream_failed(&mut self, status: &Status) -> End {
        match host_stream_error(status) {
            Some((end, e)) => {
                warn!(session_id = %self.conv.id, code = e.code.as_str(), message = %e.message, "host message refused: ending the session");
                self.conv.out.host_error(e);
                end
            }
            None => {
                debug!(%status, "host stream failed");
                End::HostGone
            }
        }
    }

    /// The hot path: a host frame converted and sent upstream in one go.
    async fn on_audio(&mut self, f: pb::AudioFrame) -> Result<(), End> {
        let t0 = std::time::Instant::now();
        let Some(wire) = self.conv.input_audio(&f, Instant::now()) else {
            return Ok(());
        };
        if wire.is_empty() {
            return Ok(());
        }
        if let Some(leg) = &mut self.shadow {
            leg.feed(wire);
        }
        match self.link.as_mut() {
            Some(conn) => {
                if let Err(e) = conn.send_audio(wire).await {
                    return self.link_lost(e);
                }
                if let Some(from) = self.gap_from.take() {
                    histogram!(names::ROLLOVER_GAP).record(t0.duration_since(from).as_secs_f64());
                }
                self.last_frame_at = Some(t0);
            }
            None => {
                counter!(names::AUDIO_DROPPED, "reason" => "upstream_down").increment(1);
                return Ok(());
            }
        }
        names::record_frame_processing(names::Direction::In, t0.elapsed().as_secs_f64());
        Ok(())
    }

    /// Performs the conversation's outbox, in order.
    async fn perform(&mut self) -> Result<(), End> {
        while let Some(a) = self.conv.out.pop() {
            match a {
                Action::Host(m) => self.emit(m).await?,
                Action::Upstream(ev) => self.send_up(&ev).await?,
                Action::CreateResponse(c) => {
                    let Some(conn) = self.link.as_mut() else {
                        self.conv.create_unsent(c);
                        continue;
                    };
                    // The connection assigns event ids; the tag must carry the id this create gets.
                    let eid = conn.next_event_id();
                    let response = tagged_response(c.response.as_ref(), &eid);
                    match conn
                        .send(&ClientEvent::ResponseCreate {
                            response: Some(response),
                        })
                        .await
                    {
                        Ok(id) => self.conv.create_sent(id, c, Instant::now()),
                        Err(e) => {
                            self.conv.create_unsent(c);
                            self.link_lost(e)?;
                        }
                    }
                }
                Action::Invoke(inv) => self.invoke(inv),
            }
        }
        Ok(())
    }

    async fn send_up(&mut self, ev: &ClientEvent) -> Result<(), End> {
        let Some(conn) = self.link.as_mut() else {
            debug!(event = ev.kind(), "upstream is down: event not sent");
            self.conv.upstream_unsent(ev);
            return Ok(());
        };
        match conn.send(ev).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.conv.upstream_unsent(ev);
                self.link_lost(e)
            }
        }
    }

    fn invoke(&mut self, inv: Invocation) {
        let Invocation {
            addr,
            invocation,
            timeout,
            max_output_bytes,
            span,
        } = inv;
        let fut = tools::invoke_callback(
            self.ctx.channels.clone(),
            addr,
            invocation,
            timeout,
            max_output_bytes,
        )
        .instrument(span);
        self.tools.push(fut.boxed());
    }

    /// The upstream socket failed: reconnect in the background, or end the session.
    fn link_lost(&mut self, e: RealtimeError) -> Result<(), End> {
        self.link = None;
        // A standby being opened or held is given up: the reconnect opens the next session. When
        // upstream ended the session at its cap before a switch, the rollover failed.
        if crate::conversation::is_expiry(&e) && self.rollover.planned() {
            counter!(names::ROLLOVERS, "outcome" => "failed").increment(1);
            warn!(session_id = %self.conv.id, "upstream ended the session at its cap before a rollover could switch");
        }
        self.opening = None;
        self.drop_standby();
        self.rollover.link_lost();
        match self.reconnect.lost(Instant::now(), e.is_retryable()) {
            Next::Wait(_) => {
                counter!(names::UPSTREAM_RECONNECTS).increment(1);
                warn!(session_id = %self.conv.id, error = %e, outage = self.reconnect.outages(), "upstream lost: reconnecting");
                self.conv.on_link_lost(&e);
                Ok(())
            }
            Next::GiveUp(why) => {
                debug!(%why, "not reconnecting");
                Err(End::Upstream(e))
            }
        }
    }

    fn attempt_finished(&mut self, r: Result<RealtimeConnection, HostError>) -> Result<(), End> {
        let now = Instant::now();
        self.ctx.reachability.record(r.as_ref().map(|_| ()));
        match r {
            Ok(conn) => {
                self.link = Some(conn);
                self.rollover.new_link(now);
                let gap = self.reconnect.connected(now);
                self.conv.on_link_resumed(gap, now);
                Ok(())
            }
            Err(e) => match self.reconnect.attempt_failed(now, &e) {
                Next::Wait(until) => {
                    debug!(error = %e, retry_in_ms = until.saturating_duration_since(now).as_millis() as u64, "reconnect attempt failed");
                    Ok(())
                }
                Next::GiveUp(why) => Err(End::Upstream(RealtimeError::Closed {
                    code: None,
                    reason: Some(why),
                })),
            },
        }
    }

    /// Opens the next upstream session in the background (the loop keeps serving meanwhile).
    fn open_standby(&mut self) {
        self.conv.mark_continuing();
        let configured = self.conv.plan.config.to_json(self.conv.plan.dialect);
        debug!(
            age_s = self.rollover.age(Instant::now()).as_secs(),
            "opening the standby upstream session"
        );
        self.opening = Some((attempt(&self.ctx, &self.conv.plan), configured));
    }

    /// The standby is configured: seed it with the conversation so far, then hold it for the switch.
    async fn standby_opened(
        &mut self,
        r: Result<RealtimeConnection, HostError>,
        configured: serde_json::Value,
    ) {
        let now = Instant::now();
        let mut conn = match r {
            Ok(c) => c,
            Err(e) => {
                warn!(session_id = %self.conv.id, code = e.code.as_str(), message = %e.message, "standby upstream session could not be opened");
                self.rollover.failed(now);
                return;
            }
        };
        let (items, cursor) = self.conv.seed();
        for ev in &items {
            if let Err(e) = conn.send(ev).await {
                warn!(session_id = %self.conv.id, error = %e, "standby upstream session lost while seeding");
                self.rollover.failed(now);
                return;
            }
        }
        debug!(items = items.len(), "standby upstream session ready");
        self.standby = Some(Standby {
            conn,
            configured,
            cursor,
            seeded_items: items.len() as u32,
        });
        self.rollover.opened();
        self.conv.keep_replay(true);
    }

    /// An event on the standby before the switch: only its failure matters (acknowledgements of the
    /// seeded items are dropped; an error about them is logged).
    fn standby_event(&mut self, ev: Result<voice_realtime::ServerEvent, RealtimeError>) {
        match ev {
            Ok(voice_realtime::ServerEvent::Error { error }) => {
                counter!(names::UPSTREAM_ERRORS, "code" => crate::conversation::bounded_code(error.code.as_deref().unwrap_or(""))).increment(1);
                warn!(session_id = %self.conv.id, code = ?error.code, message = %error.message, "standby upstream session reported an error");
            }
            Ok(_) | Err(RealtimeError::Parse(_)) => {}
            Err(e) => {
                warn!(session_id = %self.conv.id, error = %e, "standby upstream session lost before the switch");
                self.drop_standby();
                self.rollover.failed(Instant::now());
            }
        }
    }

    fn drop_standby(&mut self) {
        self.conv.keep_replay(false);
        if let Some(sb) = self.standby.take() {
            close_in_background(sb.conn);
        }
    }

    /// Switches to the standby: what it lacks goes first (context since seeding, calls still
    /// running, an utterance in progress), then the link is swapped in this one step — no host frame
    /// is handled in between, so none is lost or reordered. The old socket closes in the background.
    async fn switch(&mut self, how: Switch, now: Instant) {
        let Some(mut sb) = self.standby.take() else {
            return;
        };
        let plan = self.conv.switch_plan(sb.cursor);
        for send in &plan.sends {
            let r = match send {
                SwitchSend::Event(ev) => sb.conn.send(ev).await.map(|_| ()),
                SwitchSend::Audio(a) => sb.conn.send_audio(a).await,
            };
            if let Err(e) = r {
                warn!(session_id = %self.conv.id, error = %e, "standby upstream session lost at the switch; staying on the current one");
                self.conv.keep_replay(false);
                close_in_background(sb.conn);
                self.rollover.failed(now);
                return;
            }
        }
        let age = self.rollover.age(now);
        if let Some(old) = self.link.replace(sb.conn) {
            close_in_background(old);
        }
        self.gap_from = self.last_frame_at;
        if !plan.replayed.is_zero() {
            // The replayed utterance was the first audio on the new socket.
            if let Some(from) = self.gap_from.take() {
                histogram!(names::ROLLOVER_GAP).record(from.elapsed().as_secs_f64());
            }
        }
        self.rollover.new_link(now);
        counter!(names::ROLLOVERS, "outcome" => how.outcome()).increment(1);
        self.conv.rolled_over(
            how == Switch::Forced,
            age,
            sb.seeded_items
                + plan
                    .sends
                    .iter()
                    .filter(|s| matches!(s, SwitchSend::Event(_)))
                    .count() as u32,
            &plan,
            sb.configured,
            now,
        );
    }

    /// Asks the model, out of band (text only, nothing added to the conversation), for the call's key
    /// facts. A response still running (or asked for) is cancelled first, and a create that collides
    /// with one anyway waits for its end and goes again. Gives up after [`NOTES_TIMEOUT`].
    async fn extract_notes(&mut self) -> String {
        use voice_realtime::ServerEvent as Ev;
        let active = self.conv.response_active();
        let dialect = self.conv.plan.dialect;
        let Some(conn) = self.link.as_mut() else {
            return String::new();
        };
        let work = async {
            if active {
                let cancel = conn.send(&ClientEvent::ResponseCancel).await.ok()?;
                // Until it ends, or upstream says nothing is running (or nothing says anything).
                let settle = tokio::time::sleep(Duration::from_secs(1));
                tokio::pin!(settle);
                loop {
                    tokio::select! {
                        ev = conn.recv() => match ev {
                            Ok(Ev::ResponseDone { .. }) => break,
                            Ok(Ev::Error { error }) if error.event_id.as_deref() == Some(cancel.as_str()) => break,
                            Ok(_) | Err(RealtimeError::Parse(_)) => {}
                            Err(_) => return None,
                        },
                        () = &mut settle => break,
                    }
                }
            }
            let modalities = match dialect {
                voice_realtime::Dialect::Ga => "output_modalities",
                voice_realtime::Dialect::Beta => "modalities",
            };
            let mut body = serde_json::json!({
                "conversation": "none",
                "instructions": NOTES_INSTRUCTIONS,
                "tool_choice": "none",
                "metadata": {"purpose": "extract_notes"},
            });
            body[modalities] = serde_json::json!(["text"]);
            for _ in 0..2 {
                let eid = conn.next_event_id();
                let response = tagged_response(Some(&body), &eid);
                conn.send(&ClientEvent::ResponseCreate {
                    response: Some(response),
                })
                .await
                .ok()?;
                let mut ours: Option<String> = None;
                let mut text = String::new();
                let mut collided = false;
                loop {
                    match conn.recv().await {
                        Ok(Ev::ResponseCreated { response }) => {
                            let tag = response
                                .metadata
                                .as_ref()
                                .and_then(|m| m.get(crate::scheduler::TAG_KEY))
                                .and_then(|t| t.as_str());
                            if tag == Some(eid.as_str()) {
                                ours = Some(response.id);
                            }
                        }
                        Ok(Ev::TextDelta {
                            response_id, delta, ..
                        }) if ours.as_deref() == Some(response_id.as_str()) => {
                            if text.len() < MAX_NOTES_BYTES * 2 {
                                text.push_str(&delta);
                            }
                        }
                        Ok(Ev::TextDone {
                            response_id,
                            text: t,
                            ..
                        }) if ours.as_deref() == Some(response_id.as_str()) => {
                            text = t;
                        }
                        Ok(Ev::ResponseDone { response }) => {
                            if ours.as_deref() == Some(response.id.as_str()) {
                                return Some(text);
                            }
                            if collided {
                                break; // the response in the way is over: ask again
                            }
                        }
                        Ok(Ev::Error { error })
                            if error.event_id.as_deref() == Some(eid.as_str()) =>
                        {
                            if error.code.as_deref()
                                == Some("conversation_already_has_active_response")
                            {
                                collided = true;
                                continue;
                            }
                            debug!(code = ?error.code, message = %error.message, "notes request refused");
                            return None;
                        }
                        Ok(_) | Err(RealtimeError::Parse(_)) => {}
                        Err(_) => return None,
                    }
                }
            }
            None
        };
        match tokio::time::timeout(NOTES_TIMEOUT, work).await {
            Ok(Some(t)) => bounded_notes(&t),
            Ok(None) => String::new(),
            Err(_) => {
                warn!(session_id = %self.conv.id, "the model gave no notes within {} s: ending without them", NOTES_TIMEOUT.as_secs());
                String::new()
            }
        }
    }

    async fn emit(&mut self, m: Out) -> Result<(), End> {
        use mpsc::error::TrySendError;
        match self.host.try_send(Ok(server(m))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(End::HostGone),
            // The host is not draining its stream: wait (backpressure, nothing is dropped), and
            // record how long, so a slow host shows up as such and not as sidecar latency.
            Err(TrySendError::Full(m)) => {
                let t0 = Instant::now();
                let limit = self.ctx.host_stall_timeout;
                // Visible while it lasts (the histogram below records it only when it ends).
                let stalled = StalledGuard::enter();
                let r = tokio::time::timeout(limit, self.host.send(m)).await;
                drop(stalled);
                let waited = t0.elapsed();
                histogram!(names::HOST_STALL).record(waited.as_secs_f64());
                let Ok(sent) = r else {
                    // A host that never reads again would hold the session, its upstream socket
                    // and its tool calls forever.
                    warn!(
                        session_id = %self.conv.id,
                        waited_ms = waited.as_millis() as u64,
                        "the host has not read its Converse stream for --host-stall-timeout-ms: ending the session (host_stalled)"
                    );
                    return Err(End::HostStalled);
                };
                if waited >= Duration::from_secs(1) && !self.host_stall_warned {
                    self.host_stall_warned = true;
                    warn!(
                        session_id = %self.conv.id,
                        waited_ms = waited.as_millis() as u64,
                        "the host is not reading its Converse stream; output was held back (reported once per session)"
                    );
                }
                sent.map_err(|_| End::HostGone)
            }
        }
    }

    async fn finish(mut self, end: End) -> &'static str {
        let reason = end.reason();
        match &end {
            End::Upstream(e) => {
                warn!(session_id = %self.conv.id, error = %e, "upstream connection lost");
                counter!(names::UPSTREAM_ERRORS, "code" => crate::metrics::DISCONNECTED)
                    .increment(1);
                let code = if crate::conversation::is_expiry(e) {
                    Code::SessionExpired
                } else {
                    Code::UpstreamDisconnected
                };
                self.conv
                    .out
                    .host_error(HostError::new(code, e.to_string(), e.is_retryable()));
            }
            other => info!(reason = other.reason(), "session ending"),
        }
        self.connecting = None;
        self.opening = None;
        self.drop_standby();
        let stalled = matches!(end, End::HostStalled);
        let notes = match end {
            End::Upstream(_) | End::Budget | End::HostStalled => String::new(),
            _ if self.conv.plan.extract_notes => self.extract_notes().await,
            _ => String::new(),
        };
        // Calls still running are cancelled by dropping their futures (hosts see the RPC cancelled).
        self.tools = FuturesUnordered::new();
        // The leg's last segment, and the texts still due, before SessionEnded.
        if let Some(leg) = self.shadow.take() {
            for ev in leg.finish().await {
                let _ = self.conv.on_shadow(ev, Instant::now());
            }
        }
        self.conv.finish(reason, notes, Instant::now());
        while let Some(a) = self.conv.out.pop() {
            if let Action::Host(m) = a {
                // A host that stalled gets what still fits in its stream (`SessionEnded` if there
                // is room), without another wait.
                let sent = if stalled {
                    self.host
                        .try_send(Ok(server(m)))
                        .map_err(|_| End::HostStalled)
                } else {
                    self.emit(m).await
                };
                if sent.is_err() {
                    break;
                }
            }
        }
        if let Some(mut conn) = self.link.take() {
            conn.close().await;
        }
        let suppressed = self.bad_events.take_suppressed();
        if suppressed > 0 {
            warn!(session_id = %self.conv.id, suppressed, "unparseable upstream events ignored and not logged");
        }
        info!(reason, "session ended");
        reason
    }
}
