//! A `SESSION_KIND_TRANSCRIPTION` session: host audio in, `Transcript{source: SHADOW}` out, nothing
//! else — no conversation upstream, no model voice, no tools, no responses. One task: it converts
//! the host's audio (the same input pipeline a conversation uses), feeds the transcription leg, which
//! commits on its own segmenter and on `Control.commit`, and at the end delivers the last segment's
//! text before `SessionEnded`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use metrics::counter;
use serde_json::json;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tonic::Status;
use tracing::{info, warn};
use voice_audio::InputPipeline;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;
use voice_telemetry as names;

use crate::budget::Budget;
use crate::error::{Code, HostError};
use crate::limits::AudioBudget;
use crate::plan::SessionPlan;
use crate::records::Recorder;
use crate::session::{leg_settings, HostSender, SessionContext};
use crate::transcription::{Leg, LegEvent};

/// How the session ended, as `SessionEnded.reason` and the sessions metric's outcome.
fn ended(r: Result<(), &'static str>) -> &'static str {
    r.err().unwrap_or("client_end")
}

struct Runner {
    id: String,
    plan: SessionPlan,
    host: HostSender,
    input: InputPipeline,
    wire: Vec<u8>,
    audio_budget: AudioBudget,
    too_fast_told: bool,
    budget: Budget,
    billed: Duration,
    records: Recorder,
    started: Instant,
    segments: u32,
}

/// Runs a transcription session to its end; returns the end reason.
pub async fn run<S>(
    plan: SessionPlan,
    mut inbound: S,
    host: HostSender,
    ctx: Arc<SessionContext>,
    id: String,
) -> &'static str
where
    S: Stream<Item = Result<pb::ClientMessage, Status>> + Unpin + Send,
{
    let now = Instant::now();
    let input = match InputPipeline::new(plan.input, plan.wire_in, plan.max_frame_bytes) {
        Ok(i) => i,
        Err(e) => {
            let e = HostError::new(Code::InvalidAudioFormat, e.to_string(), false);
            let _ = host.send(Ok(msg(Out::Error(e.into_pb())))).await;
            return crate::metrics::SETUP_FAILED;
        }
    };
    let leg_plan = plan
        .shadow
        .clone()
        .expect("a transcription session has a leg");
    let seed = id
        .bytes()
        .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    let mut leg = Leg::spawn(
        &leg_plan,
        plan.wire_in,
        true,
        leg_settings(&ctx, &plan, &id, seed),
    );
    let records = match &plan.records_dir {
        Some(dir) => Recorder::open(dir, &id, now),
        None => Recorder::off(),
    };
    let mut r = Runner {
        audio_budget: AudioBudget::new(plan.limits.audio_burst, now),
        budget: Budget::new(None, plan.budget),
        id,
        host,
        input,
        wire: Vec::new(),
        too_fast_told: false,
        billed: Duration::ZERO,
        records,
        started: now,
        segments: 0,
        plan,
    };
    r.records.record(
        "start",
        json!({"session_id": r.id, "kind": "transcription", "session": leg_plan.session(),
            "labels": r.plan.labels, "input_format": format!("{:?}", r.plan.input)}),
        now,
    );
    info!(session_id = %r.id, model = %leg_plan.transcription.model, "transcription session started");
    let started = pb::SessionStarted {
        session_id: r.id.clone(),
        model: leg_plan.transcription.model.clone(),
        dialect: pb::Dialect::Ga as i32,
        upstream_audio_format: "pcm16".into(),
        input_passthrough: false,
        output_passthrough: false,
        effective_session_json: leg_plan.session().to_string(),
    };
    let mut end = r.send(Out::Started(started)).await;
    let shutdown = ctx.shutdown.clone();
    while end.is_ok() {
        end = tokio::select! {
            () = shutdown.cancelled() => Err("shutdown"),
            m = inbound.next() => match m {
                None => Err("client_closed"),
                Some(Err(status)) => match crate::session::host_stream_error(&status) {
                    Some((end, e)) => {
                        let _ = r.error(e).await;
                        Err(end.reason())
                    }
                    None => Err("host_gone"),
                },
                Some(Ok(m)) => r.on_host(m, &mut leg).await,
            },
            ev = leg.next() => match ev {
                Some(ev) => r.on_leg(ev).await,
                // The leg gave up (the host was told why): nothing more can be transcribed.
                None => Err("upstream_error"),
            },
        };
    }
    let reason = ended(end);
    for ev in leg.finish().await {
        if r.on_leg(ev).await == Err("host_gone") {
            break;
        }
    }
    r.finish(reason).await;
    reason
}

fn msg(m: Out) -> pb::ServerMessage {
    pb::ServerMessage { message: Some(m) }
}

impl Runner {
    async fn send(&mut self, m: Out) -> Result<(), &'static str> {
        match self.host.try_send(Ok(msg(m))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err("host_gone"),
            // A host that does not read: wait (nothing is dropped), bounded by its own stall.
            Err(TrySendError::Full(m)) => self.host.send(m).await.map_err(|_| "host_gone"),
        }
    }

    async fn error(&mut self, e: HostError) -> Result<(), &'static str> {
        counter!(names::HOST_ERRORS, "code" => e.code.as_str()).increment(1);
        self.send(Out::Error(e.into_pb())).await
    }

    async fn on_host(&mut self, m: pb::ClientMessage, leg: &mut Leg) -> Result<(), &'static str> {
        match m.message {
            Some(In::Audio(f)) => {
                names::count_frame(names::Direction::In, f.data.len());
                self.wire.clear();
                let seq = (f.seq != 0).then_some(f.seq);
                if let Err(e) = self.input.push(&f.data, seq, &mut self.wire) {
                    return self.error(HostError::audio(&e)).await;
                }
                let audio = self.plan.wire_in.duration_of(self.wire.len());
                if !self.audio_budget.admit(audio, Instant::now()) {
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
                leg.feed(&self.wire);
                Ok(())
            }
            Some(In::Control(pb::Control {
                action: Some(pb::control::Action::Commit(_)),
            })) => {
                leg.commit();
                Ok(())
            }
            Some(In::Control(pb::Control {
                action: Some(pb::control::Action::End(_)),
            })) => Err("client_end"),
            Some(In::Control(pb::Control {
                action: Some(pb::control::Action::ClearInput(_)),
            })) => {
                // Nothing buffered here to clear: the leg keeps every segment it was given.
                Ok(())
            }
            Some(In::Control(c)) => {
                self.error(HostError::new(
                    Code::InvalidControl,
                    format!(
                        "a TRANSCRIPTION session takes only commit, clear_input and end controls, not {:?}",
                        c.action.map_or("none", |a| control_name(&a))
                    ),
                    false,
                ))
                .await
            }
            Some(In::Start(_)) => {
                self.error(HostError::new(
                    Code::InvalidMessage,
                    "a second SessionStart on the same stream",
                    false,
                ))
                .await
            }
            Some(other) => {
                self.error(HostError::new(
                    Code::InvalidMessage,
                    format!(
                        "a TRANSCRIPTION session has no model: {} is not taken",
                        message_name(&other)
                    ),
                    false,
                ))
                .await
            }
            None => {
                self.error(HostError::new(
                    Code::InvalidMessage,
                    "an empty ClientMessage",
                    false,
                ))
                .await
            }
        }
    }

    async fn on_leg(&mut self, ev: LegEvent) -> Result<(), &'static str> {
        match ev {
            LegEvent::Transcript(t) => {
                if t.r#final {
                    self.segments += 1;
                    self.records.record(
                        "transcript",
                        json!({"role": "user", "source": "shadow", "item_id": t.item_id,
                            "text": t.text, "audio_start_ms": t.audio_start_ms,
                            "audio_end_ms": t.audio_end_ms}),
                        Instant::now(),
                    );
                }
                self.send(Out::Transcript(t)).await
            }
            LegEvent::RolledOver(m) => {
                self.records.record(
                    "rollover",
                    json!({"leg": m.leg, "forced": m.forced, "upstream_age_ms": m.upstream_age_ms,
                        "replayed_audio_ms": m.replayed_audio_ms}),
                    Instant::now(),
                );
                self.send(Out::RolledOver(m)).await
            }
            LegEvent::Error(e) => {
                warn!(session_id = %self.id, code = e.code.as_str(), message = %e.message, "transcription leg");
                self.error(e).await
            }
            LegEvent::Billed(d) => {
                let before = self.billed.as_secs();
                self.billed += d;
                counter!(names::SHADOW_AUDIO).increment(self.billed.as_secs() - before);
                let price = self.plan.shadow.as_ref().and_then(|l| l.price_per_minute);
                let Some(price) = price else { return Ok(()) };
                let cost = price * d.as_secs_f64() / 60.0;
                counter!(names::COST).increment((cost * 1_000_000.0).round() as u64);
                match self.budget.add_usd(cost) {
                    None => Ok(()),
                    Some(e) => {
                        counter!(names::BUDGET_EXCEEDED).increment(1);
                        self.error(HostError::new(Code::BudgetExceeded, e.message(), false))
                            .await?;
                        if e.end {
                            Err("budget_exceeded")
                        } else {
                            Ok(())
                        }
                    }
                }
            }
        }
    }

    async fn finish(&mut self, reason: &'static str) {
        let duration = self.started.elapsed();
        let summary = pb::SessionSummary {
            duration_ms: u32::try_from(duration.as_millis()).unwrap_or(u32::MAX),
            turns: self.segments,
            cost_usd: self.budget.cost_usd(),
            ..Default::default()
        };
        self.records.record(
            "end",
            json!({"reason": reason, "cost_usd": summary.cost_usd,
                "summary": {"segments": self.segments, "duration_ms": summary.duration_ms,
                    "audio_ms": u64::try_from(self.billed.as_millis()).unwrap_or(u64::MAX)}}),
            Instant::now(),
        );
        self.records.close();
        if let Some(why) = self.records.take_failure() {
            let _ = self
                .error(HostError::new(Code::RecordWriteFailed, why, false))
                .await;
        }
        let _ = self
            .send(Out::Ended(pb::SessionEnded {
                reason: reason.into(),
                summary: Some(summary),
                notes: String::new(),
            }))
            .await;
        info!(session_id = %self.id, reason, "transcription session ended");
    }
}

fn control_name(a: &pb::control::Action) -> &'static str {
    use pb::control::Action as A;
    match a {
        A::Commit(_) => "commit",
        A::ClearInput(_) => "clear_input",
        A::CancelResponse(_) => "cancel_response",
        A::ListenOnly(_) => "listen_only",
        A::SendText(_) => "send_text",
        A::UpdateSession(_) => "update_session",
        A::End(_) => "end",
        A::Respond(_) => "respond",
    }
}

fn message_name(m: &In) -> &'static str {
    match m {
        In::Start(_) => "SessionStart",
        In::Audio(_) => "AudioFrame",
        In::ToolResult(_) => "ToolResult",
        In::Control(_) => "Control",
        In::PlaybackMark(_) => "PlaybackMark",
    }
}
