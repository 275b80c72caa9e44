//! The translation session's task: the host's stream on one side, its legs' tasks on the other.
//!
//! It converts each host frame to 24 kHz PCM16 (the one format translation sessions take, whatever
//! the host's codec) with a per-leg input pipeline and hands it to the leg of the frame's speaker;
//! it numbers and forwards what the legs produce, meters the audio they send (per-minute price, into
//! the budget and `voice_cost_microdollars_total`), and at the end asks every leg to close and
//! drain before `SessionEnded`.

use super::leg::{FromLeg, Leg, LegSetup, ToLeg, DRAIN_TIMEOUT};
use super::plan::TranslationPlan;
use crate::budget::Budget;
use crate::conversation::End;
use crate::error::{Code, HostError};
use crate::limits::AudioBudget;
use crate::plan::SessionPlan;
use crate::records::Recorder;
use crate::session::{HostSender, SessionContext};
use futures_util::{Stream, StreamExt};
use metrics::{counter, gauge, histogram};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info, warn};
use voice_audio::{InputPipeline, OutputPipeline, WireFormat};
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime::{ConnectOptions, Intent, RealtimeError};
use voice_telemetry as names;

/// Host frames queued per leg before audio is dropped (a leg reconnecting does not block the
/// session: its audio is dropped and counted instead).
const LEG_QUEUE: usize = 64;

fn server(m: Out) -> pb::ServerMessage {
    pb::ServerMessage { message: Some(m) }
}

struct LegHandle {
    speaker: Option<&'static str>,
    input: InputPipeline,
    /// This speaker's input held to real time plus the burst allowance (`input_audio_too_fast`).
    audio_budget: AudioBudget,
    tx: mpsc::Sender<ToLeg>,
    task: tokio::task::JoinHandle<()>,
}

struct Runner {
    id: String,
    plan: SessionPlan,
    tplan: TranslationPlan,
    host: HostSender,
    legs: Vec<LegHandle>,
    events: mpsc::Receiver<FromLeg>,
    budget: Budget,
    /// Audio sent upstream, all legs.
    sent: Duration,
    seq: u64,
    host_gone: bool,
    buf: Vec<u8>,
    started: Instant,
    /// How long a host may leave its stream unread (`--host-stall-timeout-ms`), and whether it did.
    stall_limit: Duration,
    stalled: bool,
    /// `input_audio_too_fast` was reported (once per session).
    too_fast_told: bool,
    /// The session record (`--records-dir`): start, final transcripts, end.
    records: Recorder,
}

/// Runs a TRANSLATION or INTERPRETER session to completion; returns its outcome.
pub async fn run<S>(
    plan: SessionPlan,
    tplan: TranslationPlan,
    mut inbound: S,
    out: HostSender,
    ctx: Arc<SessionContext>,
    id: String,
) -> &'static str
where
    S: Stream<Item = Result<pb::ClientMessage, Status>> + Unpin + Send,
{
    let started = Instant::now();
    let (events_tx, events) = mpsc::channel(256);
    let legs = match open_legs(&plan, &tplan, &ctx, &id, &events_tx).await {
        Ok(l) => l,
        Err(e) => {
            warn!(session_id = %id, code = e.code.as_str(), message = %e.message, "translation session setup failed");
            counter!(names::UPSTREAM_ERRORS, "code" => e.code.as_str()).increment(1);
            counter!(names::HOST_ERRORS, "code" => e.code.as_str()).increment(1);
            let _ = out.send(Ok(server(Out::Error(e.into_pb())))).await;
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
    // The legs hold the only senders: the channel closes when every leg's task is over.
    drop(events_tx);
    let records = match &plan.records_dir {
        Some(dir) => Recorder::open(dir, &id, started),
        None => Recorder::off(),
    };
    let mut r = Runner {
        records,
        id,
        budget: Budget::new(None, tplan.budget),
        plan,
        tplan,
        host: out,
        legs,
        events,
        sent: Duration::ZERO,
        seq: 0,
        host_gone: false,
        buf: Vec::new(),
        started,
        too_fast_told: false,
        stall_limit: ctx.host_stall_timeout,
        stalled: false,
    };
    r.records.record(
        "start",
        json!({"session_id": r.id,
            "kind": if r.legs.len() == 1 { "translation" } else { "interpreter" },
            "model": r.tplan.model, "session": r.tplan.effective_session(),
            "labels": r.plan.labels, "input_format": format!("{:?}", r.plan.input),
            "output_format": format!("{:?}", r.plan.output)}),
        Instant::now(),
    );
    let started_msg = r.started_message();
    if r.emit(Out::Started(started_msg)).await.is_err() {
        return r.finish(End::HostGone).await;
    }
    info!(
        legs = r.legs.len(),
        languages = ?r.tplan.legs.iter().map(|l| l.target.as_str()).collect::<Vec<_>>(),
        "translation session started"
    );
    let end = r.serve(&mut inbound, &ctx).await;
    r.finish(end).await
}

/// Opens every leg's upstream session (concurrently) and starts the leg tasks.
async fn open_legs(
    plan: &SessionPlan,
    tplan: &TranslationPlan,
    ctx: &SessionContext,
    id: &str,
    events: &mpsc::Sender<FromLeg>,
) -> Result<Vec<LegHandle>, HostError> {
    let audio =
        |e: voice_audio::AudioError| HostError::new(Code::InvalidAudioFormat, e.to_string(), false);
    let mut pipes = Vec::new();
    for _ in &tplan.legs {
        // The wire format is 24 kHz PCM16 whatever the host's codec (no G.711 pass-through here).
        let input = InputPipeline::new(plan.input, WireFormat::Pcm16_24k, plan.max_frame_bytes)
            .map_err(audio)?;
        let output = OutputPipeline::new(WireFormat::Pcm16_24k, plan.output).map_err(audio)?;
        pipes.push((input, output));
    }
    let setups: Vec<LegSetup> = tplan
        .legs
        .iter()
        .map(|l| LegSetup {
            connector: ctx.connector.clone(),
            opts: ConnectOptions {
                base_url: ctx.upstream.base_url.clone(),
                model: tplan.model.clone(),
                intent: Intent::Translation,
                dialect: voice_realtime::Dialect::Ga,
                api_key: ctx.upstream.api_key.clone(),
                connect_timeout: ctx.upstream.connect_timeout,
                max_message_bytes: ctx.upstream.max_message_bytes,
            },
            setup_timeout: ctx.setup_timeout,
            language: l.target.clone(),
            input_transcription: tplan.input_transcription,
        })
        .collect();
    let opened = futures_util::future::join_all(setups.iter().map(LegSetup::open)).await;
    let mut conns = Vec::new();
    let mut failure = None;
    for r in opened {
        ctx.reachability.record(r.as_ref().map(|_| ()));
        match r {
            Ok(c) => conns.push(c),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(e) = failure {
        for mut c in conns {
            c.close().await;
        }
        return Err(e);
    }
    let mut legs = Vec::new();
    for (((leg_plan, setup), conn), (input, output)) in
        tplan.legs.iter().zip(setups).zip(conns).zip(pipes)
    {
        let (tx, rx) = mpsc::channel(LEG_QUEUE);
        let leg = Leg::new(
            id.to_string(),
            leg_plan.speaker.unwrap_or("").to_string(),
            setup,
            conn,
            output,
            events.clone(),
        );
        legs.push(LegHandle {
            speaker: leg_plan.speaker,
            input,
            audio_budget: AudioBudget::new(plan.limits.audio_burst, Instant::now()),
            tx,
            task: tokio::spawn(leg.run(rx)),
        });
    }
    Ok(legs)
}

impl Runner {
    fn started_message(&self) -> pb::SessionStarted {
        pb::SessionStarted {
            session_id: self.id.clone(),
            model: self.tplan.model.clone(),
            dialect: pb::Dialect::Ga as i32,
            upstream_audio_format: "pcm16".into(),
            input_passthrough: self.legs.iter().all(|l| l.input.is_passthrough()),
            output_passthrough: false,
            effective_session_json: self.tplan.effective_session().to_string(),
        }
    }

    async fn serve<S>(&mut self, inbound: &mut S, ctx: &SessionContext) -> End
    where
        S: Stream<Item = Result<pb::ClientMessage, Status>> + Unpin + Send,
    {
        let shutdown = ctx.shutdown.clone();
        let limit = self
            .plan
            .max_duration
            .as_ref()
            .map(|l| self.started + l.max);
        loop {
            let r = tokio::select! {
                () = shutdown.cancelled() => Err(End::Shutdown),
                () = sleep_until_opt(limit), if limit.is_some() => Err(End::MaxDuration),
                msg = inbound.next() => match msg {
                    None => Err(End::HostClosed),
                    Some(Err(status)) => Err(self.host_stream_failed(&status).await),
                    Some(Ok(m)) => self.on_host(m).await,
                },
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_leg(ev).await,
                    // Every leg is over (cannot happen before the end: each leg waits for End).
                    None => Err(End::Upstream(RealtimeError::Closed { code: None, reason: None })),
                },
            };
            if let Err(end) = r {
                return end;
            }
        }
    }

    async fn host_stream_failed(&mut self, status: &Status) -> End {
        match crate::session::host_stream_error(status) {
            Some((end, e)) => {
                warn!(session_id = %self.id, code = e.code.as_str(), message = %e.message, "host message refused: ending the session");
                let _ = self.error(e).await;
                end
            }
            None => {
                debug!(%status, "host stream failed");
                End::HostGone
            }
        }
    }

    async fn on_host(&mut self, m: pb::ClientMessage) -> Result<(), End> {
        match m.message {
            Some(In::Audio(f)) => self.on_audio(&f).await,
            Some(In::Control(c)) => match c.action {
                Some(pb::control::Action::End(_)) => Err(End::HostRequested),
                Some(_) => {
                    self.error(HostError::invalid_control(
                        "a translation session takes no Control but end (no turns, responses or session updates)",
                    ))
                    .await
                }
                None => {
                    self.error(HostError::invalid_control("a Control without an action"))
                        .await
                }
            },
            // Nothing is paced or truncated here: the played position is not needed.
            Some(In::PlaybackMark(_)) => Ok(()),
            Some(In::Start(_)) => {
                self.error(HostError::invalid_message(
                    "a second SessionStart on the same stream",
                ))
                .await
            }
            Some(other) => {
                let what = match other {
                    In::ToolResult(_) => "a ToolResult (a translation session has no tools)",
                    _ => "a message a translation session does not take",
                };
                self.error(HostError::invalid_message(what)).await
            }
            None => self.error(HostError::invalid_message("an empty ClientMessage")).await,
        }
    }

    /// A host frame: to the leg of its speaker, as 24 kHz PCM16.
    async fn on_audio(&mut self, f: &pb::AudioFrame) -> Result<(), End> {
        let t0 = std::time::Instant::now();
        let leg = if self.legs.len() == 1 {
            Some(0)
        } else {
            self.legs
                .iter()
                .position(|l| l.speaker == Some(f.speaker.as_str()))
        };
        let Some(leg) = leg else {
            return self
                .error(HostError::invalid_message(format!(
                    "an INTERPRETER session needs AudioFrame.speaker \"a\" or \"b\", got {:?}: frame dropped",
                    f.speaker
                )))
                .await;
        };
        names::count_frame(names::Direction::In, f.data.len());
        self.buf.clear();
        let seq = (f.seq > 0).then_some(f.seq);
        let handle = &mut self.legs[leg];
        if let Err(e) = handle.input.push(&f.data, seq, &mut self.buf) {
            return self.error(HostError::audio(&e)).await;
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let audio = WireFormat::Pcm16_24k.duration_of(self.buf.len());
        if !handle.audio_budget.admit(audio, Instant::now()) {
            counter!(names::AUDIO_DROPPED, "reason" => "too_fast").increment(1);
            counter!(names::LIMITS_HIT, "limit" => "input_audio_rate").increment(1);
            if !std::mem::replace(&mut self.too_fast_told, true) {
                return self
                    .error(HostError::new(
                        Code::InputAudioTooFast,
                        "input audio arrives faster than real time: the excess is dropped (reported once)",
                        true,
                    ))
                    .await;
            }
            return Ok(());
        }
        let pcm = std::mem::take(&mut self.buf);
        // Closed: the leg is over (the session is ending); Full: it is reconnecting.
        if let Err(TrySendError::Full(_)) = handle.tx.try_send(ToLeg::Audio(pcm)) {
            counter!(names::AUDIO_DROPPED, "reason" => "upstream_down").increment(1);
        }
        names::record_frame_processing(names::Direction::In, t0.elapsed().as_secs_f64());
        Ok(())
    }

    async fn on_leg(&mut self, ev: FromLeg) -> Result<(), End> {
        match ev {
            FromLeg::Host(m) => self.emit(m).await,
            FromLeg::Error(e) => self.error(e).await,
            FromLeg::Sent(d) => self.meter(d).await,
            FromLeg::Failed(e, cause) => {
                warn!(session_id = %self.id, code = e.code.as_str(), message = %e.message, "translation leg failed: ending the session");
                let _ = self.error(e).await;
                Err(End::Upstream(cause))
            }
            FromLeg::Done => Ok(()),
        }
    }

    /// Audio minutes sent upstream × the per-minute price, into the budget and the cost counter.
    async fn meter(&mut self, d: Duration) -> Result<(), End> {
        self.sent += d;
        let Some(per_minute) = self.tplan.price_per_minute else {
            return Ok(());
        };
        let cost = d.as_secs_f64() / 60.0 * per_minute;
        counter!(names::COST).increment((cost * 1_000_000.0).round() as u64);
        if let Some(e) = self.budget.add_usd(cost) {
            counter!(names::BUDGET_EXCEEDED).increment(1);
            warn!(session_id = %self.id, cost_usd = e.cost_usd, budget_usd = e.budget_usd, "session over budget");
            self.error(HostError::new(Code::BudgetExceeded, e.message(), false))
                .await?;
            if e.end {
                return Err(End::Budget);
            }
        }
        Ok(())
    }

    async fn error(&mut self, e: HostError) -> Result<(), End> {
        counter!(names::HOST_ERRORS, "code" => e.code.as_str()).increment(1);
        debug!(code = e.code.as_str(), message = %e.message, "error reported to host");
        self.emit(Out::Error(e.into_pb())).await
    }

    /// Sends one message to the host (numbering audio, recording final transcripts first, so the
    /// record has them even when the host is gone).
    async fn emit(&mut self, mut m: Out) -> Result<(), End> {
        match &mut m {
            Out::Audio(f) => {
                f.seq = self.seq;
                self.seq += 1;
                names::count_frame(names::Direction::Out, f.data.len());
            }
            Out::Transcript(t) if t.r#final => {
                let source = if t.source == pb::TranscriptSource::SourceTranslationInput as i32 {
                    "translation_input"
                } else {
                    "translation_output"
                };
                let role = if t.role == pb::Role::User as i32 {
                    "user"
                } else {
                    "assistant"
                };
                self.records.record(
                    "transcript",
                    json!({"role": role, "source": source, "speaker": t.speaker,
                        "text": t.text, "elapsed_ms": t.elapsed_ms}),
                    Instant::now(),
                );
            }
            _ => {}
        }
        if self.host_gone {
            return Err(End::HostGone);
        }
        match self.host.try_send(Ok(server(m))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => {
                self.host_gone = true;
                Err(End::HostGone)
            }
            // A host that stalled once gets what still fits, without another wait.
            Err(TrySendError::Full(_)) if self.stalled => Err(End::HostStalled),
            // The host is not reading: wait (backpressure, nothing dropped), at most the limit.
            Err(TrySendError::Full(m)) => {
                let t0 = Instant::now();
                gauge!(names::HOST_STALLED).increment(1.0);
                let r = tokio::time::timeout(self.stall_limit, self.host.send(m)).await;
                gauge!(names::HOST_STALLED).decrement(1.0);
                histogram!(names::HOST_STALL).record(t0.elapsed().as_secs_f64());
                match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => {
                        self.host_gone = true;
                        Err(End::HostGone)
                    }
                    Err(_) => {
                        warn!(session_id = %self.id, "the host has not read its Converse stream for --host-stall-timeout-ms: ending the session (host_stalled)");
                        self.stalled = true;
                        Err(End::HostStalled)
                    }
                }
            }
        }
    }

    /// Every leg closes and drains (their output still reaches the host), then `SessionEnded`.
    async fn finish(mut self, end: End) -> &'static str {
        let reason = end.reason();
        info!(reason, "translation session ending");
        match end {
            End::HostGone => self.host_gone = true,
            End::HostStalled => self.stalled = true,
            _ => {}
        }
        let txs: Vec<mpsc::Sender<ToLeg>> = self.legs.iter().map(|l| l.tx.clone()).collect();
        for tx in txs {
            let _ = tx.send(ToLeg::End).await;
        }
        // Each leg bounds its own drain; this bounds the whole in case one is stuck elsewhere.
        let all_done = async {
            while let Some(ev) = self.events.recv().await {
                match ev {
                    FromLeg::Host(m) => {
                        let _ = self.emit(m).await;
                    }
                    FromLeg::Error(e) | FromLeg::Failed(e, _) => {
                        let _ = self.error(e).await;
                    }
                    FromLeg::Sent(d) => {
                        let _ = self.meter(d).await;
                    }
                    FromLeg::Done => {}
                }
            }
        };
        if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(10), all_done)
            .await
            .is_err()
        {
            warn!(session_id = %self.id, "translation legs did not finish: aborted");
        }
        for l in &self.legs {
            l.task.abort();
        }
        let summary = pb::SessionSummary {
            duration_ms: u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX),
            cost_usd: self.budget.cost_usd(),
            ..Default::default()
        };
        let audio_ms = u64::try_from(self.sent.as_millis()).unwrap_or(u64::MAX);
        self.records.record(
            "end",
            json!({"reason": reason, "cost_usd": summary.cost_usd,
                "summary": {"duration_ms": summary.duration_ms, "audio_ms": audio_ms}}),
            Instant::now(),
        );
        self.records.close();
        if let Some(why) = self.records.take_failure() {
            let _ = self
                .error(HostError::new(Code::RecordWriteFailed, why, false))
                .await;
        }
        info!(
            reason,
            audio_sent_ms = audio_ms,
            cost_usd = summary.cost_usd,
            "translation session ended"
        );
        let _ = self
            .emit(Out::Ended(pb::SessionEnded {
                reason: reason.into(),
                summary: Some(summary),
                notes: String::new(),
            }))
            .await;
        reason
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
