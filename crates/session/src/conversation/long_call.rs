//! The conversation's side of a long call: what a pause is, what the standby upstream session is
//! seeded with and told at the switch, the utterance replayed on a forced switch, and the host-set
//! call limit. [`crate::rollover`] decides when; the loop opens the standby and sends what this
//! returns.

use super::{Conversation, End};
use crate::rollover::{CallLimit, LimitStep, Pause};
use crate::scheduler::{CreateReason, PendingCreate};
use crate::summary::millis;
use serde_json::json;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;
use tracing::info;
use voice_proto::v1 as pb;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime::{ClientEvent, TurnDetection};

/// Appended to the instructions of every upstream session after the first, so the model carries on
/// instead of greeting the caller again.
pub const CONTINUATION_NOTE: &str = "This call is already in progress: it continues from an \
earlier session, and the conversation so far is in the items you were given. Do not greet the caller \
again or introduce yourself; carry on from where the conversation left off.";

/// Input audio kept, while a standby waits, to replay an utterance in progress on a forced switch.
pub const MAX_REPLAY: Duration = Duration::from_secs(10);

/// Replayed input goes up in appends of this length.
const REPLAY_CHUNK: Duration = Duration::from_millis(200);

/// A final transcript this late after the user stopped speaking no longer holds the switch back.
const TRANSCRIPT_WAIT: Duration = Duration::from_secs(3);

/// What goes to the standby at the switch, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum SwitchSend {
    Event(ClientEvent),
    /// Input audio in the wire format (the replayed utterance).
    Audio(Vec<u8>),
}

/// What the conversation tells the standby at the switch.
#[derive(Debug, Default)]
pub struct SwitchPlan {
    pub sends: Vec<SwitchSend>,
    /// Tool calls still running whose `function_call` items go into the new session.
    pub calls_carried: u32,
    pub replayed: Duration,
}

/// Input audio since the user's last speech stop, bounded (a ring of wire bytes).
#[derive(Debug)]
pub(super) struct Replay {
    bytes: VecDeque<u8>,
    cap: usize,
}

impl Replay {
    fn push(&mut self, b: &[u8]) {
        self.bytes.extend(b);
        let over = self.bytes.len().saturating_sub(self.cap);
        self.bytes.drain(..over);
    }
}

/// Whether the upstream answers a user turn on its own (server or semantic VAD creating responses).
fn auto_responses(td: &TurnDetection, listen_only: bool) -> bool {
    !listen_only
        && match td {
            TurnDetection::ServerVadDefault => true,
            TurnDetection::ServerVad {
                create_response, ..
            }
            | TurnDetection::SemanticVad {
                create_response, ..
            } => create_response.unwrap_or(true),
            TurnDetection::Disabled => false,
        }
}

impl Conversation {
    // ----------------------------------------------------------------------------------------------
    // What a pause is
    // ----------------------------------------------------------------------------------------------

    pub(super) fn on_speech_started_long(&mut self) {
        self.user_speaking = true;
    }

    pub(super) fn on_speech_stopped_long(&mut self, now: Instant) {
        self.user_speaking = false;
        self.awaiting_reply = self.quiet.is_none()
            && auto_responses(
                &self.plan.config.turn_detection,
                self.plan.config.listen_only,
            );
        if self.plan.config.transcription.is_some() {
            self.transcript_due = Some(now);
        }
        if let Some(r) = self.replay.as_mut() {
            r.bytes.clear();
        }
    }

    /// Where the conversation stands, for the switch decision. A natural pause: no response running,
    /// asked for or about to be started by upstream for what the user just said; no assistant audio
    /// playing or queued; the user not speaking; their last words transcribed (so the new session
    /// is seeded with them).
    pub fn pause(&self, now: Instant) -> Pause {
        let responding = self.scheduler.is_active()
            || self.scheduler.queued() > 0
            || self.create_queued
            || self.awaiting_reply;
        let transcript_until = self
            .transcript_due
            .map(|t| t + TRANSCRIPT_WAIT)
            .filter(|&t| t > now);
        let transcript_pending = transcript_until.is_some();
        let audible_until = self.playout.audible_until().filter(|&t| t > now);
        Pause {
            recheck: [transcript_until, audible_until]
                .into_iter()
                .flatten()
                .min(),
            natural: !responding
                && !self.user_speaking
                && !transcript_pending
                && !self.playout.is_audible(now)
                && self.released.is_empty()
                && self.out.is_empty(),
            responding,
        }
    }

    /// Keep input audio for a replay (while a standby waits) or stop.
    pub fn keep_replay(&mut self, on: bool) {
        if !on {
            self.replay = None;
        } else if self.replay.is_none() {
            let cap = self.plan.wire_in.bytes_for(MAX_REPLAY);
            self.replay = Some(Replay {
                bytes: VecDeque::with_capacity(cap.min(64 * 1024)),
                cap,
            });
        }
    }

    pub(super) fn replay_push(&mut self, wire: &[u8]) {
        if let Some(r) = self.replay.as_mut() {
            r.push(wire);
        }
    }

    // ----------------------------------------------------------------------------------------------
    // Seeding and switching
    // ----------------------------------------------------------------------------------------------

    /// Every upstream session after the first is told the call continues (no second greeting). Also
    /// after `Control.update_session` replaced the instructions.
    pub fn mark_continuing(&mut self) {
        let i = &mut self.plan.config.instructions;
        if !i.ends_with(CONTINUATION_NOTE) {
            if !i.is_empty() {
                i.push_str("\n\n");
            }
            i.push_str(CONTINUATION_NOTE);
        }
    }

    /// How many context items have been recorded so far (a cursor for [`Conversation::seed`]).
    pub fn context_cursor(&self) -> u64 {
        self.context_seq
    }

    /// The conversation so far as items for a standby session: recent transcripts, and finished
    /// tool calls with their outputs. Returns the events and the cursor they reach.
    pub fn seed(&self) -> (Vec<ClientEvent>, u64) {
        (self.context_since(0), self.context_seq)
    }

    /// Context recorded after `cursor` (what a standby seeded earlier lacks).
    fn context_since(&self, cursor: u64) -> Vec<ClientEvent> {
        let first = self.context_seq - self.context.len() as u64;
        let skip = cursor.saturating_sub(first) as usize;
        self.context
            .iter()
            .skip(skip)
            .flat_map(|c| c.events(self.plan.dialect))
            .collect()
    }

    /// What the standby needs at the switch: context since it was seeded, the `function_call` items
    /// of calls still running (so their outputs land there), and on a forced switch with the user
    /// speaking, their utterance so far.
    pub fn switch_plan(&self, cursor: u64) -> SwitchPlan {
        let mut sends: Vec<SwitchSend> = self
            .context_since(cursor)
            .into_iter()
            .map(SwitchSend::Event)
            .collect();
        let running = self.tools.running_calls();
        let calls_carried = running.len() as u32;
        for (call_id, name, arguments) in running {
            sends.push(SwitchSend::Event(ClientEvent::ItemCreate {
                item: json!({"type": "function_call", "call_id": call_id, "name": name,
                    "arguments": arguments}),
            }));
        }
        let mut replayed = Duration::ZERO;
        if self.user_speaking {
            if let Some(r) = self.replay.as_ref() {
                let bytes: Vec<u8> = r.bytes.iter().copied().collect();
                replayed = self.plan.wire_in.duration_of(bytes.len());
                let chunk = self.plan.wire_in.bytes_for(REPLAY_CHUNK).max(1);
                sends.extend(bytes.chunks(chunk).map(|c| SwitchSend::Audio(c.to_vec())));
            }
        }
        SwitchPlan {
            sends,
            calls_carried,
            replayed,
        }
    }

    /// The loop switched to the standby (everything in the plan was sent). `configured` is the
    /// session the standby was opened with. Nothing of the old session is active any more; a
    /// response cut off by a forced switch is asked for again.
    pub fn rolled_over(
        &mut self,
        forced: bool,
        age: Duration,
        seeded_items: u32,
        plan: &SwitchPlan,
        configured: serde_json::Value,
        now: Instant,
    ) {
        // A forced switch may leave a response of the old session unfinished: it never ends there,
        // so it is abandoned like one cut off by a drop, and asked for again here.
        self.cut_off |= self.scheduler.reset();
        if let Some(rid) = self.audio_response.take() {
            self.mark_cancelled(rid);
        }
        self.output.reset();
        self.upstream_item_audio = None;
        self.stale_items = self.playout.item_ids();
        self.awaiting_reply = false;
        self.transcript_due = None;
        for rid in std::mem::take(&mut self.created_responses) {
            if let Some(r) = self.tools.response_done(&rid) {
                self.scheduler.request(PendingCreate::new(r, None));
            }
        }
        self.keep_replay(false);
        self.summary.rollovers += 1;
        // What upstream has now; a change made since the standby was opened goes as a diff.
        self.sent_session = configured;
        self.push_session_update();
        if std::mem::take(&mut self.cut_off) {
            self.scheduler
                .request(PendingCreate::new(CreateReason::Resume, None));
        }
        info!(
            forced,
            upstream_age_s = age.as_secs(),
            seeded_items,
            calls_carried = plan.calls_carried,
            replayed_ms = plan.replayed.as_millis() as u64,
            "rolled over to a new upstream session"
        );
        self.records.record(
            "rollover",
            json!({"forced": forced, "upstream_age_ms": millis(age), "seeded_items": seeded_items,
                "calls_carried": plan.calls_carried, "replayed_audio_ms": millis(plan.replayed)}),
            now,
        );
        self.out.host(Out::RolledOver(pb::SessionRolledOver {
            forced,
            upstream_age_ms: millis(age),
            seeded_items,
            calls_carried: plan.calls_carried,
            replayed_audio_ms: millis(plan.replayed),
            rollovers: self.summary.rollovers,
            leg: String::new(),
        }));
        self.pump(now);
    }

    // ----------------------------------------------------------------------------------------------
    // The host-set call limit
    // ----------------------------------------------------------------------------------------------

    pub(super) fn call_limit_for(
        plan: &crate::plan::SessionPlan,
        now: Instant,
    ) -> Option<CallLimit> {
        plan.max_duration.as_ref().map(|l| {
            CallLimit::new(
                now,
                l.max,
                (!l.warn_before.is_zero()).then_some(l.warn_before),
            )
        })
    }

    pub(super) fn call_limit_deadline(&self) -> Option<Instant> {
        self.call_limit.as_ref().map(CallLimit::deadline)
    }

    /// The call limit's timer: the warning (and the model's line), or the end.
    pub(super) fn on_call_limit(&mut self, now: Instant) -> Result<(), End> {
        let Some(step) = self.call_limit.as_mut().and_then(|l| l.on_timer(now)) else {
            return Ok(());
        };
        match step {
            LimitStep::End => {
                info!("call limit reached: ending the session");
                Err(End::MaxDuration)
            }
            LimitStep::Warn { remaining } => {
                let line = self
                    .plan
                    .max_duration
                    .as_ref()
                    .and_then(|l| l.line.clone())
                    .filter(|_| !self.scheduler.is_active() && self.quiet.is_none());
                let spoken = line.is_some();
                if let Some(line) = line {
                    let response = json!({
                        "instructions": format!(
                            "Say exactly this to the caller, and nothing else: {line}"
                        ),
                        "tool_choice": "none",
                        "metadata": {"purpose": "call_limit_warning"},
                    });
                    self.request(CreateReason::CallLimitWarning, Some(response), now);
                }
                self.out.host(Out::EndingSoon(pb::CallEndingSoon {
                    remaining_ms: millis(remaining),
                    line_spoken: spoken,
                }));
                Ok(())
            }
        }
    }
}
