//! The logic of one conversation: every event the session loop receives is routed here, to the state
//! machine that owns it, and what must happen next is appended to the [`Outbox`]. Nothing here does
//! I/O or sleeps; time comes in as `now` (`tokio::time::Instant`, so tests run on paused time).
//!
//! Who owns what: the response `scheduler`, `tool_calls` (and through it the tool `rounds`), the
//! `playout` of assistant audio, `barge_in` decisions, `dead_air` spans and the silence guard, the
//! `budget` and the `summary`. Audio conversion (`voice_audio` pipelines) is CPU work, not I/O, so it
//! lives here too; the loop only moves bytes.

use crate::assistant_items::{AssistantItems, Final};
use crate::audio_check::AudioCheck;
use crate::barge_in::{self, Situation, EARCON_ITEM};
use crate::budget::Budget;
use crate::dead_air::{Closed, DeadAir, Phase};
mod companion;
mod long_call;
pub use long_call::{SwitchPlan, SwitchSend, CONTINUATION_NOTE, MAX_REPLAY};

use crate::error::{Code, HostError};
use crate::limits::{
    AudioBudget, RoundVerdict, TokenBucket, ToolRoundCap, Warn, WarnLimiter, CREATE_BURST,
};
use crate::outbox::{Action, Outbox};
use crate::plan::{self, GuardAction, SessionPlan, QUIET_TOOL};
use crate::playout::{Playout, QueuedFrame};
use crate::scheduler::{CreateReason, PendingCreate, Resolution, ResponseScheduler, TAG_KEY};
use crate::session_fields;
use crate::summary::{millis, usage_pb, Summary};
use crate::tool_calls::{context_item, Ctx, ToolCalls};
use crate::tools::ToolOutcome;
use metrics::{counter, histogram};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use voice_audio::{InputPipeline, OutFrame, OutputPipeline};
use voice_proto::v1 as pb;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime::{
    session_update_diff, ClientEvent, Item, RealtimeError, ServerEvent, TurnDetection,
};
use voice_telemetry as names;

/// What tool calls need from the conversation, borrowed field by field (so `self.tools` and
/// `self.out` stay free to borrow mutably beside it).
macro_rules! cx {
    ($s:ident) => {
        Ctx {
            session_id: &$s.id,
            plan: &$s.plan,
            link_up: $s.link_up,
            records: &$s.records,
        }
    };
}

/// Told to the model (a system message, with `tool_choice: "none"`) when a turn runs out of tool rounds.
pub const TOOLS_OFF_MESSAGE: &str = "Tools are unavailable for the rest of this turn: too many tool \
calls in a row. Do not call any tool. Tell the caller briefly what you could not do, and ask how to \
continue.";

const HOLDING_LINE_INSTRUCTIONS: &str =
    "The caller has been waiting in silence while a tool runs. \
Say one short, warm sentence telling them you are still working on it. Do not guess any result and \
do not ask a question.";

/// Final transcripts kept to carry the conversation into a new upstream session.
pub const MAX_CONTEXT_ITEMS: usize = 20;
/// Cancelled response ids remembered (their late events are dropped).
const MAX_CANCELLED: usize = 16;
/// Open response spans at most (a misbehaving upstream cannot grow the map).
const MAX_RESPONSE_SPANS: usize = 64;

/// Why a session stopped.
#[derive(Debug)]
pub enum End {
    HostClosed,
    HostRequested,
    HostGone,
    /// The host sent a message over the gRPC size limit (the stream cannot be read past it).
    MessageTooLarge,
    /// The host sent bytes that do not decode as a `ClientMessage`.
    BadMessage,
    Shutdown,
    Budget,
    /// `SessionStart.max_duration_secs` was reached.
    MaxDuration,
    /// The host stopped reading its stream: output waited on a full stream past the host-stall
    /// timeout (`--host-stall-timeout-ms`).
    HostStalled,
    Upstream(RealtimeError),
}

impl End {
    pub fn reason(&self) -> &'static str {
        match self {
            End::HostClosed => "client_closed",
            End::HostRequested => "client_end",
            End::HostGone => "host_gone",
            End::MessageTooLarge => "message_too_large",
            End::BadMessage => "invalid_message",
            End::Shutdown => "shutdown",
            End::Budget => "budget_exceeded",
            End::MaxDuration => "max_duration",
            End::HostStalled => "host_stalled",
            End::Upstream(RealtimeError::Closed { .. }) => "upstream_closed",
            End::Upstream(_) => "upstream_error",
        }
    }
}

pub struct Conversation {
    pub id: String,
    pub plan: SessionPlan,
    pub out: Outbox,
    input: InputPipeline,
    output: OutputPipeline,
    wire_buf: Vec<u8>,
    out_frames: Vec<OutFrame>,
    released: Vec<QueuedFrame>,
    /// Sequence number of the next audio frame released to the host (from 0, contiguous).
    out_seq: u64,
    scheduler: ResponseScheduler,
    /// A `response.create` is in the outbox and not yet sent.
    create_queued: bool,
    tools: ToolCalls,
    playout: Playout,
    dead_air: DeadAir,
    audio_check: AudioCheck,
    budget: Budget,
    summary: Summary,
    link_up: bool,
    /// A response was running when the link dropped: ask again after the reconnect.
    cut_off: bool,
    cancelled: VecDeque<String>,
    audio_response: Option<String>,
    /// The assistant item whose audio is arriving, and how much of it upstream has sent.
    upstream_item_audio: Option<(String, Duration)>,
    /// Assistant items of an earlier upstream session that the playout still held when the link
    /// was lost or switched: a barge-in on one flushes the host but never truncates it upstream
    /// (the new session does not know the item and would refuse the truncate).
    stale_items: Vec<String>,
    /// End of the user's last turn, until the first assistant audio after it.
    user_turn_end: Option<Instant>,
    latency_by_response: HashMap<String, u32>,
    response_spans: HashMap<String, tracing::Span>,
    /// Responses seen in `response.created` and not yet done (bounded): a `response.done` for any
    /// other response starts none of its function calls.
    created_responses: std::collections::VecDeque<String>,
    /// Recent final transcripts and finished tool calls (with their outputs), carried into a new
    /// upstream session after a reconnect.
    context: VecDeque<ContextItem>,
    labels: Vec<metrics::Label>,
    started: Instant,
    /// The assistant's messages per response: phases, what was heard.
    items: AssistantItems,
    /// The last item whose audio was released (so `items.heard` runs once per item change).
    last_heard: String,
    /// Quiet mode (entered by the model's built-in tool): the wake phrase, normalised.
    quiet: Option<String>,
    /// Quiet-mode tool calls already answered (duplicate sightings).
    quiet_calls: VecDeque<String>,
    /// Upstream said the session expired (its maximum duration): the coming close is that.
    expired: bool,
    /// Automatic tool rounds this turn.
    round_cap: ToolRoundCap,
    /// `response.create` rate, and when a held-back create may go.
    creates: TokenBucket,
    create_wait: Option<Instant>,
    /// The host has been told this turn that creates are held back.
    create_limited: bool,
    /// `Control` rate; the host has been told since the last Control that passed.
    controls: TokenBucket,
    control_limited: bool,
    /// Input audio held to real time plus a burst; the host has been told once.
    audio_budget: AudioBudget,
    audio_too_fast_told: bool,
    /// The `session` object upstream has now (what a `session.update` diff is taken against).
    sent_session: serde_json::Value,
    /// Repeated upstream-error and audio-anomaly warnings.
    warn_upstream: WarnLimiter,
    warn_anomaly: WarnLimiter,
    // --- Long calls (see `long_call`).
    /// Context items recorded so far (a cursor: what a standby seeded earlier has not seen).
    context_seq: u64,
    /// The user is speaking (upstream VAD).
    user_speaking: bool,
    /// The user finished a turn upstream will answer on its own, and no response has started yet.
    awaiting_reply: bool,
    /// The user's last turn ended at this time and its final transcript has not arrived.
    transcript_due: Option<Instant>,
    /// Input audio since the last speech stop, kept while a standby waits.
    replay: Option<long_call::Replay>,
    call_limit: Option<crate::rollover::CallLimit>,
    /// The session record (`--records-dir`), off unless configured.
    records: crate::records::Recorder,
    /// Audio the transcription leg sent upstream (billed per minute).
    shadow_billed: Duration,
}

impl Conversation {
    pub fn new(
        id: String,
        plan: SessionPlan,
        input: InputPipeline,
        output: OutputPipeline,
        now: Instant,
    ) -> Self {
        let labels = plan
            .labels
            .iter()
            .map(|(k, v)| metrics::Label::new(k.clone(), v.clone()))
            .collect();
        let limits = plan.limits;
        let records = match &plan.records_dir {
            Some(dir) => crate::records::Recorder::open(dir, &id, now),
            None => crate::records::Recorder::off(),
        };
        let creates_per_sec = f64::from(limits.response_creates_per_minute.max(1)) / 60.0;
        let controls_per_sec = f64::from(limits.controls_per_second.max(1));
        Conversation {
            id,
            round_cap: ToolRoundCap::new(limits.max_tool_rounds_per_turn),
            creates: TokenBucket::new(
                CREATE_BURST.min(limits.response_creates_per_minute.max(1)),
                creates_per_sec,
                now,
            ),
            create_wait: None,
            create_limited: false,
            controls: TokenBucket::new(
                limits.controls_per_second.max(1).saturating_mul(2),
                controls_per_sec,
                now,
            ),
            control_limited: false,
            audio_budget: AudioBudget::new(limits.audio_burst, now),
            audio_too_fast_told: false,
            sent_session: plan.config.to_json(plan.dialect),
            warn_upstream: WarnLimiter::new(),
            warn_anomaly: WarnLimiter::new(),
            playout: Playout::new(plan.pacing_lead),
            call_limit: Conversation::call_limit_for(&plan, now),
            records,
            budget: Budget::new(plan.prices, plan.budget),
            shadow_billed: Duration::ZERO,
            plan,
            out: Outbox::default(),
            input,
            output,
            wire_buf: Vec::with_capacity(8192),
            out_frames: Vec::new(),
            released: Vec::new(),
            out_seq: 0,
            scheduler: ResponseScheduler::new(),
            create_queued: false,
            tools: ToolCalls::new(),
            dead_air: DeadAir::new(),
            audio_check: AudioCheck::new(Duration::from_secs(2), Duration::from_millis(500)),
            summary: Summary::default(),
            link_up: true,
            cut_off: false,
            cancelled: VecDeque::new(),
            audio_response: None,
            upstream_item_audio: None,
            stale_items: Vec::new(),
            user_turn_end: None,
            latency_by_response: HashMap::new(),
            response_spans: HashMap::new(),
            created_responses: std::collections::VecDeque::new(),
            context: VecDeque::new(),
            labels,
            started: now,
            items: AssistantItems::new(),
            last_heard: String::new(),
            quiet: None,
            quiet_calls: VecDeque::new(),
            expired: false,
            context_seq: 0,
            user_speaking: false,
            awaiting_reply: false,
            transcript_due: None,
            replay: None,
        }
    }

    /// The first messages of a session: `SessionStarted`, and a deprecation warning if the model is
    /// (nearly) shut down.
    pub fn start(&mut self) {
        let started = self.started_message();
        if self.records.is_on() {
            let p = &self.plan;
            let mut tools: Vec<&str> = p.tools.names().collect();
            tools.sort_unstable();
            self.records.record(
                "start",
                json!({"session_id": self.id, "model": p.model, "dialect": p.dialect.to_string(),
                    "session": p.config.to_json(p.dialect), "labels": p.labels,
                    "tools": tools, "input_format": format!("{:?}", p.input),
                    "output_format": format!("{:?}", p.output)}),
                self.started,
            );
        }
        self.out.host(Out::Started(started));
        if let Some(why) = self.plan.deprecation.clone() {
            counter!(names::MODEL_DEPRECATED).increment(1);
            warn!(session_id = %self.id, model = %self.plan.model, "{why}");
            self.out
                .host_error(HostError::new(Code::ModelDeprecated, why, false));
        }
    }

    /// `SessionStarted` for the host.
    pub fn started_message(&self) -> pb::SessionStarted {
        pb::SessionStarted {
            session_id: self.id.clone(),
            model: self.plan.model.clone(),
            dialect: match self.plan.dialect {
                voice_realtime::Dialect::Ga => pb::Dialect::Ga as i32,
                voice_realtime::Dialect::Beta => pb::Dialect::Beta as i32,
            },
            upstream_audio_format: self.plan.wire_in_name().to_string(),
            input_passthrough: self.input.is_passthrough(),
            output_passthrough: self.output.is_passthrough(),
            effective_session_json: self.plan.config.to_json(self.plan.dialect).to_string(),
        }
    }

    pub fn is_passthrough(&self) -> (bool, bool) {
        (self.input.is_passthrough(), self.output.is_passthrough())
    }

    /// An event for upstream, if the link is up (while it is down the reconnect restores what
    /// matters: configuration, context, pending responses).
    fn up(&mut self, ev: ClientEvent) {
        if self.link_up {
            self.out.upstream(ev);
        } else {
            debug!(event = ev.kind(), "upstream is down: event not sent");
        }
    }

    // ----------------------------------------------------------------------------------------------
    // Host → sidecar
    // ----------------------------------------------------------------------------------------------

    /// Converts one host audio frame; returns the wire bytes for upstream (empty when the codec
    /// holds them back). Bad audio becomes a typed error for the host.
    pub fn input_audio(&mut self, f: &pb::AudioFrame, now: Instant) -> Option<&[u8]> {
        names::count_frame(names::Direction::In, f.data.len());
        self.wire_buf.clear();
        let seq = (f.seq != 0).then_some(f.seq);
        if let Err(e) = self.input.push(&f.data, seq, &mut self.wire_buf) {
            self.out.host_error(HostError::audio(&e));
            return None;
        }
        // Audio is billed by the second: ahead of real time past the burst, the excess is dropped.
        let audio = self.plan.wire_in.duration_of(self.wire_buf.len());
        if !self.audio_budget.admit(audio, now) {
            self.audio_too_fast(audio);
            return None;
        }
        if self.replay.is_some() {
            let wire = std::mem::take(&mut self.wire_buf);
            self.replay_push(&wire);
            self.wire_buf = wire;
        }
        Some(&self.wire_buf)
    }

    #[cold]
    fn audio_too_fast(&mut self, audio: Duration) {
        counter!(names::AUDIO_DROPPED, "reason" => "too_fast").increment(1);
        counter!(names::LIMITS_HIT, "limit" => "input_audio_rate").increment(1);
        if !std::mem::replace(&mut self.audio_too_fast_told, true) {
            warn!(session_id = %self.id, "input audio faster than real time: the excess is dropped (reported once per session)");
            self.out.host_error(HostError::new(
                Code::InputAudioTooFast,
                format!(
                    "input audio arrives faster than real time: audio more than {} ms ahead is dropped ({} ms just now; reported once)",
                    self.plan.limits.audio_burst.as_millis(),
                    audio.as_millis()
                ),
                true,
            ));
        }
    }

    /// Every host message but audio (which the loop sends on its hot path through `input_audio`).
    pub fn on_host(&mut self, m: pb::ClientMessage, now: Instant) -> Result<(), End> {
        use pb::client_message::Message as In;
        match m.message {
            None => self
                .out
                .host_error(HostError::invalid_message("empty ClientMessage")),
            Some(In::Start(_)) => self.out.host_error(HostError::invalid_message(
                "SessionStart may only be sent once, first",
            )),
            Some(In::Audio(f)) => {
                // The loop sends audio itself; here only for completeness (tests).
                if let Some(w) = self.input_audio(&f, now) {
                    if !w.is_empty() {
                        let audio = w.to_vec();
                        self.up(ClientEvent::InputAudioAppend { audio });
                    }
                }
            }
            Some(In::ToolResult(r)) => {
                let create = self.tools.host_result(cx!(self), r, now, &mut self.out);
                self.record_delivered_calls();
                self.request_opt(create, now);
            }
            Some(In::Control(c)) => return self.on_control(c, now),
            Some(In::PlaybackMark(m)) => {
                self.playout.mark(
                    &m.item_id,
                    Duration::from_millis(u64::from(m.played_ms)),
                    now,
                );
            }
        }
        Ok(())
    }

    fn on_control(&mut self, c: pb::Control, now: Instant) -> Result<(), End> {
        use pb::control::Action as A;
        if !matches!(c.action, Some(A::End(_))) {
            if !self.controls.take(now) {
                counter!(names::LIMITS_HIT, "limit" => "control_rate").increment(1);
                if !std::mem::replace(&mut self.control_limited, true) {
                    self.out.host_error(HostError::new(
                        Code::ControlRateLimited,
                        format!(
                            "Controls arrive faster than {} per second: this one and further ones are dropped until the rate falls",
                            self.plan.limits.controls_per_second
                        ),
                        true,
                    ));
                }
                return Ok(());
            }
            self.control_limited = false;
        }
        if matches!(
            c.action,
            Some(A::Commit(_) | A::SendText(_) | A::Respond(_))
        ) {
            self.new_turn();
        }
        match c.action {
            None => self
                .out
                .host_error(HostError::invalid_control("Control without an action")),
            Some(A::End(_)) => return Err(End::HostRequested),
            Some(A::Commit(_)) => {
                self.up(ClientEvent::InputAudioCommit);
                if self.plan.config.turn_detection == TurnDetection::Disabled
                    && !self.plan.config.listen_only
                {
                    self.user_turn_end = Some(now);
                    self.dead_air.user_turn_ended(now);
                    self.request(CreateReason::Commit, None, now);
                }
            }
            Some(A::ClearInput(_)) => self.up(ClientEvent::InputAudioClear),
            Some(A::CancelResponse(_)) => self.interrupt(false, now),
            Some(A::ListenOnly(on)) => {
                if !on && self.quiet.is_some() {
                    self.leave_quiet("host", None, now);
                    return Ok(());
                }
                self.plan.config.listen_only = on;
                self.push_session_update();
            }
            Some(A::Respond(r)) => {
                let overrides = match session_fields::response_overrides(
                    &r,
                    self.plan.model_info,
                    self.plan.dialect,
                ) {
                    Ok(o) => o,
                    Err(e) => {
                        self.out
                            .host_error(HostError::invalid_control(e.to_string()));
                        return Ok(());
                    }
                };
                if !r.text.trim().is_empty() {
                    self.up(ClientEvent::user_text(&r.text));
                    self.remember(pb::Role::User, &r.text);
                }
                let body = overrides
                    .as_object()
                    .is_some_and(|o| !o.is_empty())
                    .then_some(overrides);
                self.request(CreateReason::UserText, body, now);
            }
            Some(A::SendText(text)) => {
                if text.trim().is_empty() {
                    self.out
                        .host_error(HostError::invalid_control("send_text is empty"));
                    return Ok(());
                }
                self.up(ClientEvent::user_text(&text));
                self.remember(pb::Role::User, &text);
                if !self.plan.config.listen_only {
                    self.request(CreateReason::UserText, None, now);
                }
            }
            Some(A::UpdateSession(u)) => {
                match session_fields::apply_update(
                    &u,
                    self.plan.model_info,
                    self.plan.dialect,
                    &self.plan.config,
                ) {
                    Ok(c) => self.plan.config = c,
                    Err(e) => {
                        self.out
                            .host_error(HostError::invalid_control(e.to_string()));
                        return Ok(());
                    }
                }
                if let Some(td) = &u.turn_detection {
                    match plan::turn_detection(Some(td)) {
                        Ok(t) => self.plan.config.turn_detection = t,
                        Err(e) => {
                            self.out
                                .host_error(HostError::invalid_control(e.to_string()));
                            return Ok(());
                        }
                    }
                }
                if let Some(i) = u.instructions {
                    self.plan.base_instructions = i;
                    self.plan.config.instructions = self
                        .plan
                        .preamble
                        .compose(&self.plan.base_instructions, self.plan.memory.as_deref());
                }
                if let Some(v) = u.voice {
                    self.plan.config.voice = (!v.is_empty()).then_some(v);
                }
                self.push_session_update();
            }
        }
        Ok(())
    }

    /// Tells upstream what changed in the configuration: only the changed fields (a reconnect
    /// sends the whole configuration).
    fn push_session_update(&mut self) {
        let full = self.plan.config.to_json(self.plan.dialect);
        if !self.link_up {
            return;
        }
        if let Some(session) = session_update_diff(&self.sent_session, &full) {
            self.up(ClientEvent::SessionUpdate { session });
        }
        self.sent_session = full;
    }

    /// The user spoke or the host sent input: the tool-round count and the create notice start over.
    fn new_turn(&mut self) {
        self.round_cap.new_turn();
        self.create_limited = false;
    }

    // ----------------------------------------------------------------------------------------------
    // Upstream → sidecar
    // ----------------------------------------------------------------------------------------------

    pub fn on_upstream(&mut self, ev: ServerEvent, now: Instant) -> Result<(), End> {
        match ev {
            ServerEvent::AudioDelta {
                response_id,
                item_id,
                audio,
            } => self.on_audio_delta(response_id, item_id, &audio, now),
            ServerEvent::AudioDone { .. } => {
                self.output.flush(&mut self.out_frames);
                self.forward_frames(String::new(), now);
            }
            ServerEvent::TranscriptDelta {
                response_id,
                item_id,
                delta,
            } if !self.is_cancelled(&response_id) => {
                self.out
                    .host(transcript(pb::Role::Assistant, item_id, delta, false));
            }
            ServerEvent::TranscriptDone {
                response_id,
                item_id,
                transcript: t,
            } if !self.is_cancelled(&response_id) => {
                if let Some(f) = self.items.transcript_done(&response_id, &item_id, t) {
                    self.final_transcript(f);
                }
            }
            ServerEvent::InputTranscriptionDelta {
                item_id,
                delta,
                logprobs,
            } => {
                let mut m = transcript(pb::Role::User, item_id, delta, false);
                with_logprobs(&mut m, &logprobs);
                self.out.host(m);
            }
            ServerEvent::InputTranscriptionCompleted {
                item_id,
                transcript: t,
                logprobs,
            } => {
                self.transcript_due = None;
                self.remember(pb::Role::User, &t);
                self.records.record(
                    "transcript",
                    json!({"role": "user", "item_id": item_id, "text": t}),
                    now,
                );
                let wake = self
                    .quiet
                    .as_deref()
                    .is_some_and(|w| !w.is_empty() && normalise(&t).contains(w));
                let mut m = transcript(pb::Role::User, item_id, t, true);
                with_logprobs(&mut m, &logprobs);
                self.out.host(m);
                if wake {
                    self.leave_quiet("wake_phrase", Some(CreateReason::UserText), now);
                }
            }
            ServerEvent::TimeoutTriggered {
                item_id,
                audio_start_ms,
                audio_end_ms,
            } => {
                // Upstream commits the silence and re-prompts: an ordinary response follows, so
                // its latency and dead air count from now.
                counter!(names::IDLE_TIMEOUTS).increment(1);
                if !self.plan.config.listen_only {
                    self.user_turn_end = Some(now);
                    self.dead_air.user_turn_ended(now);
                }
                self.out.host(Out::IdleTimeout(pb::IdleTimeout {
                    item_id,
                    audio_start_ms: clamp_u32(audio_start_ms),
                    audio_end_ms: clamp_u32(audio_end_ms),
                }));
            }
            ServerEvent::InputTranscriptionFailed { item_id, message } => {
                self.transcript_due = None;
                self.out.host_error(HostError::new(
                    Code::TranscriptionFailed,
                    format!("item {item_id}: {message}"),
                    true,
                ));
            }
            ServerEvent::SpeechStarted {
                item_id,
                audio_start_ms,
            } => {
                if let Some(c) = self.dead_air.audio_released(now) {
                    self.observe_dead_air(c);
                }
                self.user_turn_end = None;
                self.on_speech_started_long();
                if barge_in::speech_interrupts(
                    self.playout.is_audible(now),
                    self.scheduler.running_id(),
                    self.audio_response.as_deref(),
                ) {
                    self.interrupt(true, now);
                }
                self.out.host(Out::SpeechStarted(pb::SpeechStarted {
                    item_id,
                    audio_start_ms: clamp_u32(audio_start_ms),
                }));
            }
            ServerEvent::SpeechStopped {
                item_id,
                audio_end_ms,
            } => {
                self.summary.turns += 1;
                self.new_turn();
                self.on_speech_stopped_long(now);
                if !self.plan.config.listen_only {
                    self.user_turn_end = Some(now);
                    self.dead_air.user_turn_ended(now);
                }
                self.out.host(Out::SpeechStopped(pb::SpeechStopped {
                    item_id,
                    audio_end_ms: clamp_u32(audio_end_ms),
                }));
            }
            ServerEvent::ResponseCreated { response } => {
                let tag = response
                    .metadata
                    .as_ref()
                    .and_then(|m| m.get(TAG_KEY))
                    .and_then(|t| t.as_str());
                self.scheduler.on_created(&response.id, tag, now);
                self.awaiting_reply = false;
                if self.created_responses.len() >= MAX_RESPONSE_SPANS {
                    self.created_responses.pop_front();
                }
                self.created_responses.push_back(response.id.clone());
                let purpose = response
                    .metadata
                    .as_ref()
                    .and_then(|m| m.get("purpose"))
                    .and_then(|p| p.as_str());
                if purpose == Some("holding_line") {
                    self.items.mark_out_of_band(&response.id);
                }
                let span = tracing::info_span!(
                    "response",
                    response_id = %response.id,
                    status = tracing::field::Empty,
                    voice_to_voice_ms = tracing::field::Empty,
                    output_tokens = tracing::field::Empty,
                );
                if self.response_spans.len() < MAX_RESPONSE_SPANS {
                    self.response_spans.insert(response.id.clone(), span);
                }
            }
            ServerEvent::OutputItemAdded {
                response_id,
                item: Item::FunctionCall { call_id, name, .. },
            } => {
                for f in self.items.call_added(&response_id) {
                    self.final_transcript(f);
                }
                self.record_preamble_times();
                self.tools.name_seen(call_id, name);
            }
            ServerEvent::OutputItemAdded {
                response_id,
                item: Item::Message { id, role, phase },
            } if role == "assistant" => {
                self.items
                    .message_added(&response_id, &id, phase.as_deref());
            }
            ServerEvent::FunctionCallArgumentsDone {
                response_id,
                call_id,
                name,
                arguments,
                ..
            } => {
                let name = name
                    .or_else(|| self.tools.name_of(&call_id))
                    .unwrap_or_default();
                self.start_call(&response_id, call_id, name, arguments, now);
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
            } => self.start_call(&response_id, call_id, name, arguments, now),
            ServerEvent::ResponseDone { response } => return self.on_response_done(&response, now),
            ServerEvent::Error { error } => self.on_upstream_error(error, now),
            ServerEvent::Unknown { kind } => {
                counter!(names::UPSTREAM_EVENTS_UNKNOWN).increment(1);
                debug!(%kind, "unknown upstream event");
            }
            _ => {}
        }
        Ok(())
    }

    fn on_upstream_error(&mut self, error: voice_realtime::ApiError, now: Instant) {
        let code = error.code.clone().unwrap_or_default();
        let retryable = error.kind == "server_error" || code.contains("rate_limit");
        match self
            .scheduler
            .on_error(error.event_id.as_deref(), &code, retryable, now)
        {
            Resolution::Requeued => {
                debug!("response.create collided with a server-started response; queued again");
                return;
            }
            Resolution::Retrying { attempt, after } => {
                counter!(names::UPSTREAM_ERRORS, "code" => bounded_code(&code)).increment(1);
                warn!(session_id = %self.id, code = %code, message = %error.message, attempt,
                    after_ms = after.as_millis() as u64, "response.create failed; retrying");
                return;
            }
            Resolution::Failed { create, reason } => {
                counter!(names::UPSTREAM_ERRORS, "code" => bounded_code(&code)).increment(1);
                warn!(session_id = %self.id, code = %code, message = %error.message,
                    reason = ?create.reason, "response.create failed; giving up");
                self.create_failed(&create, &format!("{reason}: {}", error.message));
                self.pump(now);
                return;
            }
            Resolution::NotOurs | Resolution::Adopted => {}
        }
        if code == "response_cancel_not_active" {
            // The server had already finished or cancelled it: nothing to tell anyone.
            return;
        }
        if code == "session_expired" {
            // The session hit upstream's maximum duration; the close that follows is reported
            // (as session_expired) when the link drops.
            info!(session_id = %self.id, message = %error.message, "upstream session expired");
            self.expired = true;
            return;
        }
        counter!(names::UPSTREAM_ERRORS, "code" => bounded_code(&code)).increment(1);
        if let Warn::Log { suppressed } = self.warn_upstream.check(now) {
            warn!(session_id = %self.id, code = %code, message = %error.message, suppressed, "upstream error");
        }
        let message = if code.is_empty() {
            error.message
        } else {
            format!("{code}: {}", error.message)
        };
        self.out
            .host_error(HostError::new(Code::UpstreamError, message, retryable));
    }

    fn create_failed(&mut self, create: &PendingCreate, why: &str) {
        self.out.host_error(HostError::new(
            Code::ResponseFailed,
            format!(
                "the model could not be asked to respond ({}) after {} attempt(s): {why}",
                reason_name(&create.reason),
                create.attempts()
            ),
            false,
        ));
    }

    fn is_cancelled(&self, response_id: &str) -> bool {
        self.cancelled.iter().any(|r| r == response_id)
    }

    fn mark_cancelled(&mut self, rid: String) {
        if !self.is_cancelled(&rid) {
            self.cancelled.push_back(rid);
            if self.cancelled.len() > MAX_CANCELLED {
                self.cancelled.pop_front();
            }
        }
    }

    fn on_audio_delta(&mut self, response_id: String, item_id: String, audio: &[u8], now: Instant) {
        if self.is_cancelled(&response_id) {
            return;
        }
        let t0 = std::time::Instant::now();
        if self.audio_response.as_deref() != Some(&response_id) {
            self.audio_response = Some(response_id.clone());
            self.audio_check.reset();
            if let Some(end) = self.user_turn_end.take() {
                let latency = now.saturating_duration_since(end);
                histogram!(names::RESPONSE_LATENCY, self.labels.clone())
                    .record(latency.as_secs_f64());
                let ms = self.summary.voice_to_voice(latency);
                if self.latency_by_response.len() < MAX_RESPONSE_SPANS {
                    self.latency_by_response.insert(response_id, ms);
                }
            }
        }
        let wire_audio = self.plan.wire_out.duration_of(audio.len());
        self.check_audio(audio, wire_audio);
        self.note_upstream_audio(&item_id, wire_audio);
        if let Err(e) = self.output.push(audio, &mut self.out_frames) {
            self.out.host_error(HostError::new(
                Code::of_audio(&e),
                format!("model audio could not be converted: {e}"),
                true,
            ));
            return;
        }
        self.forward_frames(item_id, now);
        names::record_frame_processing(names::Direction::Out, t0.elapsed().as_secs_f64());
    }

    /// Moves converted frames into the playout (paced) or straight to the host.
    fn forward_frames(&mut self, item_id: String, now: Instant) {
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
            // Every frame needs its own copy of the item id; the last one takes the original.
            let frame_item = if i + 1 == n {
                item_id.take().unwrap_or_default()
            } else {
                item_id.clone().unwrap_or_default()
            };
            let q = QueuedFrame {
                duration: Duration::from_micros(u64::from(f.duration_us)),
                frame: pb::AudioFrame {
                    data: f.data,
                    seq: 0,
                    item_id: frame_item,
                    duration_us: f.duration_us,
                    speaker: String::new(),
                },
            };
            if let Some(q) = self.playout.push(q, now) {
                immediate.push(q);
            }
        }
        self.out_frames = frames;
        self.playout.due(now, &mut immediate);
        self.release(&mut immediate, now);
        self.released = immediate;
    }

    /// Frames leave for the host here, and only here: numbered as they are released, so frames
    /// dropped before release (barge-in) never consume sequence numbers.
    fn release(&mut self, frames: &mut Vec<QueuedFrame>, now: Instant) {
        if frames.is_empty() {
            return;
        }
        if let Some(c) = self.dead_air.audio_released(now) {
            self.observe_dead_air(c);
        }
        let underrun = self.playout.take_underrun();
        if !underrun.is_zero() {
            histogram!(names::DEAD_AIR, "cause" => "underrun", "tool" => "")
                .record(underrun.as_secs_f64());
            self.summary.dead_air += underrun;
        }
        for mut q in frames.drain(..) {
            names::count_frame(names::Direction::Out, q.frame.data.len());
            if q.frame.item_id != self.last_heard {
                self.last_heard.clone_from(&q.frame.item_id);
                self.items.heard(&q.frame.item_id, now);
                self.record_preamble_times();
            }
            q.frame.seq = self.out_seq;
            self.out_seq += 1;
            self.out.host(Out::Audio(q.frame));
        }
    }

    fn observe_dead_air(&mut self, c: Closed) {
        let secs = c.duration.as_secs_f64();
        histogram!(names::SILENCE, "phase" => c.phase.as_str()).record(secs);
        match c.phase {
            Phase::AfterUser => {
                histogram!(names::DEAD_AIR, "cause" => "model", "tool" => "").record(secs);
            }
            Phase::ToolCall => {
                let tool = self
                    .tools
                    .waiting_on()
                    .map_or("_unknown", |t| self.plan.tools.label(t));
                histogram!(names::DEAD_AIR, "cause" => "tool", "tool" => tool.to_string())
                    .record(secs);
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

    /// Counts assistant audio that stays near-silent or clipped (wire samples, before conversion).
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
            if let Warn::Log { suppressed } = self.warn_anomaly.check(Instant::now()) {
                warn!(session_id = %self.id, kind = a.as_str(), suppressed, "assistant audio anomaly");
            }
            counter!(names::AUDIO_ANOMALIES, "kind" => a.as_str()).increment(1);
        }
    }

    /// Whether upstream cancels a running response by itself when the caller speaks.
    fn upstream_cancels_on_speech(&self) -> bool {
        match &self.plan.config.turn_detection {
            TurnDetection::ServerVadDefault => true,
            TurnDetection::ServerVad {
                interrupt_response, ..
            }
            | TurnDetection::SemanticVad {
                interrupt_response, ..
            } => interrupt_response.unwrap_or(true),
            TurnDetection::Disabled => false,
        }
    }

    /// Barge-in (`by_user`) or a host's cancel: performs the `barge_in` plan.
    fn interrupt(&mut self, by_user: bool, now: Instant) {
        let played = self.playout.played(now);
        let item_audio_sent = played.as_ref().and_then(|(item, _)| {
            self.upstream_item_audio
                .as_ref()
                .filter(|(id, _)| id == item)
                .map(|(_, d)| *d)
        });
        let running = self.scheduler.running_id().map(str::to_string);
        let p = barge_in::plan(&Situation {
            by_user,
            running: running.as_deref(),
            upstream_cancels_on_speech: self.upstream_cancels_on_speech(),
            audible: self.playout.is_audible(now),
            played: played.as_ref().map(|(i, d)| (i.as_str(), *d)),
            item_audio_sent,
        });
        if p.cancel {
            self.up(ClientEvent::ResponseCancel);
        }
        // Messages of the interrupted response(s) the caller never heard leave the conversation:
        // the model must not believe it said them.
        let current = played.as_ref().map(|(i, _)| i.as_str());
        let rids: Vec<&str> = [running.as_deref(), self.audio_response.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let deleted = self.items.unheard(&rids, current);
        if let Some(rid) = running {
            self.mark_cancelled(rid);
        }
        if let Some(rid) = self.audio_response.clone() {
            self.mark_cancelled(rid);
        }
        self.playout.flush();
        self.output.reset();
        let truncate = p.truncate.filter(|(item, _)| {
            !self.items.is_out_of_band(item) && !self.stale_items.contains(item)
        });
        // The playout is empty now: nothing of an earlier session can be played any more.
        self.stale_items.clear();
        if let Some((item_id, ms)) = truncate {
            self.up(ClientEvent::ItemTruncate {
                item_id,
                content_index: 0,
                audio_end_ms: ms,
            });
        }
        for item_id in &deleted {
            self.up(ClientEvent::ItemDelete {
                item_id: item_id.clone(),
            });
        }
        if p.counts {
            counter!(names::INTERRUPTIONS).increment(1);
            self.summary.interruptions += 1;
        }
        if let Some((item_id, ms)) = p.interrupted {
            self.records.record(
                "interruption",
                json!({"item_id": item_id, "played_ms": ms, "by_user": by_user,
                    "deleted_item_ids": deleted}),
                now,
            );
            self.out.host(Out::Interrupted(pb::Interrupted {
                item_id,
                played_ms: clamp_u32(ms),
                deleted_item_ids: deleted,
            }));
        }
    }

    fn on_response_done(
        &mut self,
        response: &voice_realtime::ResponseInfo,
        now: Instant,
    ) -> Result<(), End> {
        let created = match self
            .created_responses
            .iter()
            .position(|r| *r == response.id)
        {
            Some(i) => self.created_responses.remove(i).is_some(),
            None => false,
        };
        if !created
            && response
                .output
                .iter()
                .any(|i| matches!(i, Item::FunctionCall { .. }))
        {
            counter!(names::UPSTREAM_ERRORS, "code" => "unknown_response").increment(1);
            debug!(response_id = %response.id, "response.done for a response never created: its function calls are not run");
        }
        for item in response.output.iter().filter(|_| created) {
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
                    now,
                );
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
        let (cost, exceeded) = self.budget.add(&usage);
        if let Some(cost) = cost {
            counter!(names::COST).increment((cost * 1_000_000.0).round() as u64);
        }
        for f in self.items.response_done(&response.id) {
            self.final_transcript(f);
        }
        self.record_preamble_times();
        self.out.host(Out::ResponseDone(pb::ResponseDone {
            response_id: response.id.clone(),
            status: response.status.clone(),
            usage: Some(usage_pb(&usage)),
            voice_to_voice_ms: v2v,
        }));
        let round = self.tools.response_done(&response.id);
        self.request_opt(round, now);
        self.pump(now);
        match exceeded {
            Some(e) => self.over_budget(&e),
            None => Ok(()),
        }
    }

    /// The session went over its budget (once): the host is told, and the session ends if it asked.
    fn over_budget(&mut self, e: &crate::budget::Exceeded) -> Result<(), End> {
        counter!(names::BUDGET_EXCEEDED).increment(1);
        warn!(session_id = %self.id, cost_usd = e.cost_usd, budget_usd = e.budget_usd,
            "session over budget");
        self.out
            .host_error(HostError::new(Code::BudgetExceeded, e.message(), false));
        if e.end {
            return Err(End::Budget);
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------------------
    // Responses and tools
    // ----------------------------------------------------------------------------------------------

    fn request(&mut self, reason: CreateReason, response: Option<serde_json::Value>, now: Instant) {
        self.scheduler.request(PendingCreate::new(reason, response));
        self.pump(now);
    }

    fn request_opt(&mut self, reason: Option<CreateReason>, now: Instant) {
        if let Some(r) = reason {
            self.request(r, None, now);
        }
    }

    /// Hands the next queued `response.create` to the loop, if nothing is active and the link is up.
    fn pump(&mut self, now: Instant) {
        // A create held back by the rate asks again below (a stale wait would spin the timer).
        self.create_wait = None;
        if !self.link_up || self.create_queued {
            return;
        }
        while let Some(c) = self.scheduler.next_to_send(now) {
            if let CreateReason::ToolRound(r) = &c.reason {
                if self.tools.round_open() {
                    // New calls opened since this round completed: the round's next completion
                    // asks again, once every open call has its output.
                    debug!(round = %r, "tool round superseded by calls still open");
                    continue;
                }
            }
            if self.quiet.is_some() {
                counter!(names::QUIET_SUPPRESSED).increment(1);
                debug!(reason = ?c.reason, "quiet mode: response not requested");
                continue;
            }
            let mut c = c;
            if matches!(c.reason, CreateReason::ToolRound(_)) && !c.round_counted {
                c.round_counted = true;
                match self.round_cap.next_round() {
                    RoundVerdict::Allow => {}
                    RoundVerdict::LastWithoutTools => self.tools_off(&mut c),
                    RoundVerdict::Refuse => {
                        debug!(reason = ?c.reason, "tool rounds capped this turn: no response asked for");
                        continue;
                    }
                }
            }
            if !self.creates.take(now) {
                let at = self.creates.ready_at(now);
                self.create_wait = Some(at);
                counter!(names::LIMITS_HIT, "limit" => "response_rate").increment(1);
                if !std::mem::replace(&mut self.create_limited, true) {
                    warn!(session_id = %self.id, "response.create rate reached: held back");
                    self.out.host_error(HostError::new(
                        Code::ResponseRateLimited,
                        format!(
                            "more than {} responses per minute: the next one is held back {} ms",
                            self.plan.limits.response_creates_per_minute,
                            at.saturating_duration_since(now).as_millis()
                        ),
                        true,
                    ));
                }
                self.scheduler.put_back(c);
                return;
            }
            debug!(reason = ?c.reason, "response.create");
            self.create_queued = true;
            self.out.push(Action::CreateResponse(c));
            break;
        }
    }

    /// The first tool round past the cap: the model is told once that tools are off for this turn
    /// (a system message, and `tool_choice: "none"` on this create); the host gets a typed error.
    fn tools_off(&mut self, c: &mut PendingCreate) {
        let cap = self.plan.limits.max_tool_rounds_per_turn;
        counter!(names::LIMITS_HIT, "limit" => "tool_rounds").increment(1);
        warn!(session_id = %self.id, cap, "tool rounds capped for this turn: tools are off until the user speaks");
        self.up(ClientEvent::ItemCreate {
            item: json!({"type": "message", "role": "system",
                "content": [{"type": "input_text", "text": TOOLS_OFF_MESSAGE}]}),
        });
        let mut body = c.response.take().unwrap_or_else(|| json!({}));
        if let Some(o) = body.as_object_mut() {
            o.insert("tool_choice".into(), json!("none"));
        }
        c.response = Some(body);
        self.out.host_error(HostError::new(
            Code::ToolRoundsCapped,
            format!(
                "{cap} automatic tool rounds without user input: tools are off for the rest of this turn"
            ),
            true,
        ));
    }

    /// The loop sent a create with this event id.
    pub fn create_sent(&mut self, event_id: String, c: PendingCreate, now: Instant) {
        self.create_queued = false;
        self.scheduler.sent(event_id, c, now);
    }

    /// The loop could not send a create (the link went down): it waits for the next session.
    pub fn create_unsent(&mut self, c: PendingCreate) {
        self.create_queued = false;
        self.scheduler.put_back(c);
    }

    fn start_call(
        &mut self,
        response_id: &str,
        call_id: String,
        name: String,
        arguments: String,
        now: Instant,
    ) {
        if self.plan.quiet_mode && name == QUIET_TOOL {
            self.quiet_call(&call_id, &arguments, now);
            return;
        }
        if !self.tools.seen(response_id, &call_id) {
            return;
        }
        self.summary.tool_calls += 1;
        let silent_from = self.playout.audible_until().unwrap_or(now);
        if let Some(c) = self.dead_air.tool_started(now, silent_from) {
            self.observe_dead_air(c);
        }
        let create = self
            .tools
            .launch(cx!(self), call_id, name, arguments, now, &mut self.out);
        self.record_delivered_calls();
        self.request_opt(create, now);
    }

    /// A callback call's future finished.
    pub fn on_tool_outcome(&mut self, o: ToolOutcome, now: Instant) {
        let create = self.tools.end(cx!(self), o, now, &mut self.out);
        self.record_delivered_calls();
        self.request_opt(create, now);
    }

    /// Calls whose outputs the model has read become part of the context a reconnect carries.
    fn record_delivered_calls(&mut self) {
        for d in self.tools.take_delivered() {
            self.push_context(ContextItem::Call(d));
        }
    }

    // ----------------------------------------------------------------------------------------------
    // Timers
    // ----------------------------------------------------------------------------------------------

    /// The earliest moment `on_timer` has something to do.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let guard = (self.plan.guard.action != GuardAction::Off && self.tools.pending_count() > 0)
            .then(|| self.dead_air.guard_deadline(self.plan.guard.threshold))
            .flatten();
        [
            self.playout.next_due(now),
            guard,
            self.tools.next_deadline(),
            self.scheduler.deadline(),
            self.create_wait,
            self.call_limit_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn on_timer(&mut self, now: Instant) -> Result<(), End> {
        self.on_call_limit(now)?;
        let mut due = std::mem::take(&mut self.released);
        self.playout.due(now, &mut due);
        self.release(&mut due, now);
        self.released = due;

        for create in self.tools.expire(cx!(self), now, &mut self.out) {
            self.request(create, None, now);
        }
        self.record_delivered_calls();

        if self.plan.guard.action != GuardAction::Off && self.tools.pending_count() > 0 {
            if let Some(at) = self.dead_air.guard_deadline(self.plan.guard.threshold) {
                if at <= now {
                    self.dead_air.guard_fired();
                    self.fire_guard(now);
                }
            }
        }

        match self.scheduler.on_timer(now) {
            Some(Resolution::Failed { create, reason }) => {
                warn!(session_id = %self.id, reason = ?create.reason, "response.create unanswered; giving up");
                self.create_failed(&create, &reason);
            }
            Some(Resolution::Adopted) => {
                debug!("an untagged response.created was taken for our create");
            }
            Some(Resolution::Retrying { attempt, .. }) => {
                warn!(session_id = %self.id, attempt, "response.create unanswered; retrying");
            }
            _ => {}
        }
        self.pump(now);
        Ok(())
    }

    fn fire_guard(&mut self, now: Instant) {
        info!(action = ?self.plan.guard.action, "silence guard: caller has waited past the threshold");
        match self.plan.guard.action {
            GuardAction::Off => {}
            GuardAction::HoldingLine => {
                let response = json!({
                    "conversation": "none",
                    "instructions": HOLDING_LINE_INSTRUCTIONS,
                    "metadata": {"purpose": "holding_line"},
                });
                self.request(CreateReason::HoldingLine, Some(response), now);
            }
            GuardAction::Earcon => {
                let bytes_per_ms = self.plan.output.bytes_per_ms().unwrap_or(0).max(1);
                let duration_us = (self.plan.guard.earcon.len() / bytes_per_ms * 1000) as u32;
                let mut frames = vec![QueuedFrame {
                    duration: Duration::from_micros(u64::from(duration_us)),
                    frame: pb::AudioFrame {
                        data: self.plan.guard.earcon.clone(),
                        seq: 0,
                        item_id: EARCON_ITEM.into(),
                        duration_us,
                        speaker: String::new(),
                    },
                }];
                self.release(&mut frames, now);
            }
        }
    }

    /// Preamble → answer times the assistant items measured (as phases or first audio became known).
    fn record_preamble_times(&mut self) {
        for d in self.items.take_measured() {
            histogram!(names::PREAMBLE_TO_ANSWER).record(d.as_secs_f64());
        }
    }

    /// A final assistant transcript with its phase.
    fn final_transcript(&mut self, f: Final) {
        self.remember(pb::Role::Assistant, &f.text);
        self.records.record(
            "transcript",
            json!({"role": "assistant", "item_id": f.item_id, "text": f.text,
                "phase": format!("{:?}", f.phase).to_lowercase()}),
            Instant::now(),
        );
        let mut m = transcript(pb::Role::Assistant, f.item_id, f.text, true);
        if let Out::Transcript(t) = &mut m {
            t.phase = f.phase.to_pb() as i32;
        }
        self.out.host(m);
    }

    /// The model called the built-in quiet-mode tool: answer it (without asking for a response),
    /// stop automatic responses, tell the host.
    fn quiet_call(&mut self, call_id: &str, arguments: &str, now: Instant) {
        if call_id.is_empty() || self.quiet_calls.iter().any(|c| c == call_id) {
            return;
        }
        self.quiet_calls.push_back(call_id.to_string());
        if self.quiet_calls.len() > 16 {
            self.quiet_calls.pop_front();
        }
        let wake = serde_json::from_str::<serde_json::Value>(arguments)
            .ok()
            .and_then(|v| v.get("wake_phrase").and_then(|w| w.as_str()).map(normalise))
            .unwrap_or_default();
        let shown = wake.trim().to_string();
        self.up(ClientEvent::function_output(
            call_id,
            &json!({"quiet": true, "wake_phrase": shown}).to_string(),
        ));
        let _ = now;
        info!(wake_phrase = %shown, "quiet mode on (asked by the model)");
        counter!(names::QUIET_MODE, "how" => "model_tool", "state" => "on").increment(1);
        self.quiet = Some(wake.clone());
        self.plan.config.listen_only = true;
        self.push_session_update();
        self.out.host(Out::QuietMode(pb::QuietMode {
            on: true,
            wake_phrase: shown,
        }));
    }

    /// Quiet mode ends (`how`: wake_phrase or host); `answer`: ask the model to answer the turn.
    fn leave_quiet(&mut self, how: &'static str, answer: Option<CreateReason>, now: Instant) {
        if self.quiet.take().is_none() {
            return;
        }
        info!(how, "quiet mode off");
        counter!(names::QUIET_MODE, "how" => how, "state" => "off").increment(1);
        self.plan.config.listen_only = false;
        self.push_session_update();
        self.out.host(Out::QuietMode(pb::QuietMode {
            on: false,
            wake_phrase: String::new(),
        }));
        if let Some(r) = answer {
            self.user_turn_end = Some(now);
            self.dead_air.user_turn_ended(now);
            self.request(r, None, now);
        }
    }

    fn remember(&mut self, role: pb::Role, text: &str) {
        if text.trim().is_empty() {
            return;
        }
        self.push_context(ContextItem::Message(role, text.to_string()));
    }

    fn push_context(&mut self, item: ContextItem) {
        self.context_seq += 1;
        self.context.push_back(item);
        while self.context.len() > MAX_CONTEXT_ITEMS {
            self.context.pop_front();
        }
    }

    // ----------------------------------------------------------------------------------------------
    // The upstream link
    // ----------------------------------------------------------------------------------------------

    /// The link dropped and a reconnect is under way: nothing of the old upstream session is active
    /// any more. Running calls keep running (orphaned); their results go in as context later.
    pub fn on_link_lost(&mut self, error: &RealtimeError) {
        self.link_up = false;
        self.mark_continuing();
        self.user_speaking = false;
        self.awaiting_reply = false;
        self.transcript_due = None;
        self.keep_replay(false);
        self.cut_off |= self.scheduler.reset();
        if let Some(rid) = self.audio_response.take() {
            self.mark_cancelled(rid);
        }
        self.output.reset();
        self.upstream_item_audio = None;
        self.stale_items = self.playout.item_ids();
        self.tools.orphan_all();
        let code = if std::mem::take(&mut self.expired) || is_expiry(error) {
            Code::SessionExpired
        } else {
            Code::UpstreamDisconnected
        };
        self.out
            .host_error(HostError::new(code, format!("{error}; reconnecting"), true));
    }

    /// A new upstream session is configured: carry the conversation forward, deliver results that
    /// came in meanwhile, ask again for a response that was cut off.
    pub fn on_link_resumed(&mut self, gap: Duration, now: Instant) {
        self.link_up = true;
        // The new session was configured in full.
        self.sent_session = self.plan.config.to_json(self.plan.dialect);
        let items: Vec<ClientEvent> = self
            .context
            .iter()
            .flat_map(|c| c.events(self.plan.dialect))
            .collect();
        for item in items {
            self.up(item);
        }
        let notes = self.tools.take_notes();
        for note in &notes {
            self.up(context_item(self.plan.dialect, pb::Role::User, note));
        }
        if !notes.is_empty() {
            self.scheduler
                .request(PendingCreate::new(CreateReason::OrphanedResult, None));
        }
        if std::mem::take(&mut self.cut_off) {
            self.scheduler
                .request(PendingCreate::new(CreateReason::Resume, None));
        }
        histogram!(names::DEAD_AIR, "cause" => "reconnect", "tool" => "").record(gap.as_secs_f64());
        info!(
            after_ms = gap.as_millis() as u64,
            context_items = self.context.len(),
            "upstream session resumed"
        );
        self.out.host_error(HostError::new(
            Code::UpstreamResumed,
            format!(
                "reconnected after {} ms; conversation carried forward",
                gap.as_millis()
            ),
            true,
        ));
        self.pump(now);
    }

    /// The loop could not deliver an event: the link dropped first. Tool outputs are never lost —
    /// they go into the next upstream session as context; the rest is restored by the reconnect
    /// (configuration, transcripts) or means nothing to a new session (cancel, truncate, commit).
    pub fn upstream_unsent(&mut self, ev: &ClientEvent) {
        if let ClientEvent::ItemCreate { item } = ev {
            if item["type"] == "function_call_output" {
                let call_id = item["call_id"].as_str().unwrap_or_default();
                let output = item["output"].as_str().unwrap_or_default();
                self.tools.output_unsent(call_id, output);
            }
        }
    }

    /// Tells the host once if the session record cannot be written (the writer fails off the task).
    pub fn poll_records(&mut self) {
        if let Some(why) = self.records.take_failure() {
            warn!(session_id = %self.id, "session record cannot be written; the call goes on without it");
            self.out
                .host_error(HostError::new(Code::RecordWriteFailed, why, false));
        }
    }

    /// A response is running upstream, or one of ours was asked for and not yet started.
    pub fn response_active(&self) -> bool {
        self.scheduler.is_active()
    }

    pub fn link_up(&self) -> bool {
        self.link_up
    }

    // ----------------------------------------------------------------------------------------------
    // The end
    // ----------------------------------------------------------------------------------------------

    /// The session is over: running calls end as cancelled, the host gets `SessionEnded` with the
    /// summary.
    pub fn finish(&mut self, reason: &'static str, notes: String, now: Instant) {
        self.link_up = false;
        self.tools.cancel_all(cx!(self), now, &mut self.out, reason);
        let summary = self.summary.to_pb(
            now.saturating_duration_since(self.started),
            self.budget.cost_usd(),
        );
        if self.records.is_on() {
            let s = &summary;
            self.records.record(
                "end",
                json!({"reason": reason, "notes": notes, "cost_usd": s.cost_usd,
                    "summary": {"turns": s.turns, "responses": s.responses,
                        "mean_voice_to_voice_ms": s.mean_voice_to_voice_ms,
                        "max_voice_to_voice_ms": s.max_voice_to_voice_ms,
                        "dead_air_ms": s.dead_air_ms, "tool_calls": s.tool_calls,
                        "interruptions": s.interruptions, "duration_ms": s.duration_ms,
                        "rollovers": s.rollovers},
                    "usage": s.usage.as_ref().map(|u| json!({"total_tokens": u.total_tokens,
                        "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                        "input_text_tokens": u.input_text_tokens, "input_audio_tokens": u.input_audio_tokens,
                        "input_cached_tokens": u.input_cached_tokens,
                        "output_text_tokens": u.output_text_tokens,
                        "output_audio_tokens": u.output_audio_tokens}))}),
                now,
            );
            self.records.close();
        }
        self.out.host(Out::Ended(pb::SessionEnded {
            reason: reason.into(),
            summary: Some(summary),
            notes,
        }));
    }

    /// Dead air so far, in ms (tests).
    pub fn dead_air_ms(&self) -> u32 {
        millis(self.summary.dead_air)
    }
}

/// What a reconnect carries into the new upstream session.
#[derive(Debug, Clone, PartialEq)]
pub enum ContextItem {
    /// A final transcript (or text the host sent).
    Message(pb::Role, String),
    /// A tool call and the output the model read.
    Call(crate::tool_calls::Delivered),
}

impl ContextItem {
    /// The `conversation.item.create` events that restore it: a message; or the call and its
    /// output as `function_call` + `function_call_output` items (both dialects take them), so the
    /// model knows it already ran the tool and does not call it again.
    fn events(&self, dialect: voice_realtime::Dialect) -> Vec<ClientEvent> {
        match self {
            ContextItem::Message(r, t) => vec![context_item(dialect, *r, t)],
            ContextItem::Call(d) => vec![
                ClientEvent::ItemCreate {
                    item: json!({"type": "function_call", "call_id": d.call_id, "name": d.name,
                        "arguments": d.arguments}),
                },
                ClientEvent::function_output(&d.call_id, &d.output),
            ],
        }
    }
}

/// Upstream's close at its session cap: code 1001 (going away) with "maximum duration" in the reason.
pub fn is_expiry(e: &RealtimeError) -> bool {
    matches!(e, RealtimeError::Closed { code: Some(1001), reason: Some(r) } if r.contains("maximum duration"))
}

fn reason_name(r: &CreateReason) -> &'static str {
    match r {
        CreateReason::ToolRound(_) => "tool results",
        CreateReason::CallLimitWarning => "call limit warning",
        CreateReason::UserText => "text from the host",
        CreateReason::HoldingLine => "holding line",
        CreateReason::Commit => "committed input",
        CreateReason::Resume => "resume after reconnect",
        CreateReason::OrphanedResult => "tool results after reconnect",
    }
}

fn transcript(role: pb::Role, item_id: String, text: String, final_: bool) -> Out {
    Out::Transcript(pb::Transcript {
        role: role as i32,
        item_id,
        text,
        r#final: final_,
        ..Default::default()
    })
}

fn with_logprobs(m: &mut Out, logprobs: &[voice_realtime::Logprob]) {
    if let Out::Transcript(t) = m {
        t.logprobs = logprobs
            .iter()
            .map(|l| pb::Logprob {
                token: l.token.clone(),
                logprob: l.logprob,
                bytes: l.bytes.clone(),
            })
            .collect();
    }
}

/// Lowercase words without punctuation, single-spaced, padded with spaces so `contains` matches
/// whole words: "Back to demo!" and "ok, back  to DEMO" both contain " back to demo ".
pub fn normalise(s: &str) -> String {
    let words: Vec<String> = s
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if words.is_empty() {
        String::new()
    } else {
        format!(" {} ", words.join(" "))
    }
}

fn clamp_u32(x: u64) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// The upstream error codes `voice_upstream_errors_total{code}` names; any other counts as
/// [`UPSTREAM_ERROR_OTHER`].
pub const UPSTREAM_ERROR_CODES: &[&str] = &[
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
pub const UPSTREAM_ERROR_OTHER: &str = "other";

/// Upstream error codes as metric label values: known codes pass, anything else is "other".
pub fn bounded_code(code: &str) -> &'static str {
    UPSTREAM_ERROR_CODES
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or(UPSTREAM_ERROR_OTHER)
}

fn bounded_status(s: &str) -> &'static str {
    names::RESPONSE_STATUSES
        .iter()
        .find(|k| **k == s)
        .copied()
        .unwrap_or(names::RESPONSE_STATUS_OTHER)
}

impl SessionPlan {
    pub(crate) fn wire_in_name(&self) -> &'static str {
        plan::wire_audio(self.wire_in).beta_name()
    }
}
