//! Tool calls, from the moment the model asks for one to its single ending.
//!
//! A call is seen (from `function_call_arguments.done`, `output_item.done` or `response.done`,
//! whichever comes first, never started twice), then refused (unknown tool, arguments against the
//! schema, no tool host) or started (callback RPC, or `ToolCall` on the host's stream). It ends exactly
//! once, through [`ToolCalls::end`]: finished (ok, error, invalid output, unreachable), timed out,
//! refused, or cancelled at session end. That one path owns the metrics, the span, the
//! `ToolCallFinished` for the host and the output for the model. A call still running when the
//! upstream is replaced is *orphaned*: the new upstream session does not know its call id, so its
//! result goes in as context (held until the link is back) and the model is asked to continue.
//!
//! Round bookkeeping (one `response.create` per response whose calls all have their outputs) is
//! `rounds`; this module reports when a round completes.

use crate::error::{Code, HostError};
use crate::outbox::{Action, Invocation, Outbox};
use crate::plan::{SessionPlan, ToolRoute};
use crate::rounds::ToolRounds;
use crate::scheduler::CreateReason;
use crate::tools::{self, ToolOutcome, ToolStatus};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use tracing::info;
use voice_proto::v1 as pb;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime::ClientEvent;
use voice_telemetry as names;

/// Where a running call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// On a host: a callback RPC, or an in-stream `ToolCall` awaiting its `ToolResult`.
    Running,
    /// Started on an upstream session that has since been replaced.
    Orphaned,
}

/// A call whose output went to the model: what a reconnect replays so the model knows it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub call_id: String,
    pub name: String,
    pub arguments: String,
    pub output: String,
}

#[derive(Debug)]
struct Call {
    name: String,
    arguments: String,
    started: Instant,
    /// In-stream calls only: when to stop waiting (a callback's timeout lives in its future).
    deadline: Option<Instant>,
    state: CallState,
    span: tracing::Span,
}

/// What a call's handler needs from the session.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub session_id: &'a str,
    pub plan: &'a SessionPlan,
    /// Whether upstream can take a call's output now.
    pub link_up: bool,
    /// The session record (tool calls are recorded where they end).
    pub records: &'a crate::records::Recorder,
}

/// Timed-out call ids kept to recognise late results; bounded so a long session cannot grow it.
const MAX_REMEMBERED_TIMEOUTS: usize = 1024;

#[derive(Debug, Default)]
pub struct ToolCalls {
    calls: HashMap<String, Call>,
    rounds: ToolRounds,
    /// call_id → name from `output_item.added` (beta's `arguments.done` carries no name).
    names: HashMap<String, String>,
    timed_out: HashSet<String>,
    timed_out_order: VecDeque<String>,
    /// Results of orphaned calls that ended while the link was down, for the next upstream session.
    notes: Vec<String>,
    /// The tool the caller is waiting on (dead-air attribution).
    waiting_on: Option<String>,
    /// Names of the calls whose outputs were handed to the loop most recently (to word a note if
    /// the link drops before an output leaves).
    recent: VecDeque<(String, String)>,
    /// Calls whose `function_call_output` was handed to the loop since `take_delivered`.
    delivered: Vec<Delivered>,
}

impl ToolCalls {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn name_seen(&mut self, call_id: String, name: String) {
        if self.names.len() < 1024 {
            self.names.insert(call_id, name);
        }
    }

    pub fn name_of(&mut self, call_id: &str) -> Option<String> {
        self.names.remove(call_id)
    }

    /// Calls whose outputs the model still waits for.
    pub fn pending_count(&self) -> usize {
        self.rounds.pending_count()
    }

    /// A tool round is open (calls without outputs, or responses with calls not done).
    pub fn round_open(&self) -> bool {
        self.rounds.is_open()
    }

    pub fn running(&self) -> usize {
        self.calls.len()
    }

    /// Calls running on a host for the current upstream session (not orphaned), oldest first:
    /// `(call_id, name, arguments)`.
    pub fn running_calls(&self) -> Vec<(String, String, String)> {
        let mut v: Vec<(&Instant, (String, String, String))> = self
            .calls
            .iter()
            .filter(|(_, c)| c.state == CallState::Running)
            .map(|(id, c)| {
                (
                    &c.started,
                    (id.clone(), c.name.clone(), c.arguments.clone()),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1 .0.cmp(&b.1 .0)));
        v.into_iter().map(|(_, c)| c).collect()
    }

    pub fn state(&self, call_id: &str) -> Option<CallState> {
        self.calls.get(call_id).map(|c| c.state)
    }

    pub fn waiting_on(&self) -> Option<&str> {
        self.waiting_on.as_deref()
    }

    /// A call was seen. True if it is new (then [`ToolCalls::launch`] it); false for a duplicate
    /// sighting or a call without an id.
    pub fn seen(&mut self, response_id: &str, call_id: &str) -> bool {
        !call_id.is_empty() && self.rounds.on_call(response_id, call_id)
    }

    /// Starts a new call: `ToolCallStarted` to the host, then a refusal (ended at once) or a run on
    /// the host. Returns the round's response id if a refusal completed a round.
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &mut self,
        cx: Ctx<'_>,
        call_id: String,
        name: String,
        arguments: String,
        now: Instant,
        out: &mut Outbox,
    ) -> Option<CreateReason> {
        gauge_in_flight(1.0);
        out.host(Out::ToolCallStarted(pb::ToolCallStarted {
            call_id: call_id.clone(),
            name: name.clone(),
            arguments_json: arguments.clone(),
        }));
        let span = tracing::info_span!(
            "tool_call",
            %call_id,
            tool = %name,
            status = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        span.in_scope(|| info!("tool call started"));
        self.waiting_on = Some(name.clone());
        let mut call = Call {
            name: name.clone(),
            arguments: arguments.clone(),
            started: now,
            deadline: None,
            state: CallState::Running,
            span,
        };
        let refusal = match cx.plan.tools.check(&name, &arguments) {
            Err(refusal) => Some(refusal.to_string()),
            Ok(def) => match &cx.plan.route {
                ToolRoute::Callback(addr) => {
                    out.push(Action::Invoke(Invocation {
                        addr: addr.clone(),
                        invocation: pb::ToolInvocation {
                            session_id: cx.session_id.to_string(),
                            call_id: call_id.clone(),
                            name: name.clone(),
                            arguments_json: arguments,
                            deadline_ms: u32::try_from(def.timeout.as_millis()).unwrap_or(u32::MAX),
                        },
                        timeout: def.timeout,
                        max_output_bytes: cx.plan.max_tool_output_bytes,
                        span: call.span.clone(),
                    }));
                    None
                }
                ToolRoute::InStream => {
                    out.host(Out::ToolCall(pb::ToolCall {
                        call_id: call_id.clone(),
                        name: name.clone(),
                        arguments_json: arguments,
                        timeout_ms: u32::try_from(def.timeout.as_millis()).unwrap_or(u32::MAX),
                    }));
                    call.deadline = Some(now + def.timeout);
                    None
                }
                ToolRoute::Unroutable => Some("no tool host is configured".to_string()),
            },
        };
        self.calls.insert(call_id.clone(), call);
        let why = refusal?;
        let o = ToolOutcome::failed(call_id, name, ToolStatus::Refused, why, Duration::ZERO);
        self.end(cx, o, now, out)
    }

    /// Every call ends here exactly once: metrics, span, `ToolCallFinished` to the host, and the
    /// output to the model (a `function_call_output`, or context for an orphaned call). Returns the
    /// response to request if this ending completed a round (or delivered an orphaned result).
    /// Outcomes for calls that already ended change nothing.
    pub fn end(
        &mut self,
        cx: Ctx<'_>,
        o: ToolOutcome,
        now: Instant,
        out: &mut Outbox,
    ) -> Option<CreateReason> {
        let call = self.calls.remove(&o.call_id)?;
        gauge_in_flight(-1.0);
        let label = cx.plan.tools.label(&o.name).to_string();
        let status = o.status.as_str();
        metrics::histogram!(names::TOOL_CALL_DURATION, "tool" => label.clone(), "outcome" => status)
            .record(o.duration.as_secs_f64());
        metrics::counter!(names::TOOL_CALLS_TOTAL, "tool" => label, "outcome" => status)
            .increment(1);
        let duration_ms = o.duration.as_millis() as u64;
        call.span.record("status", status);
        call.span.record("duration_ms", duration_ms);
        call.span
            .in_scope(|| info!(status, duration_ms, "tool call finished"));
        if o.status == ToolStatus::Timeout {
            self.remember_timeout(&o.call_id);
        }
        self.waiting_on = Some(o.name.clone());
        let mut create = None;
        match (o.status, call.state) {
            // The session is ending: the model gets nothing more.
            (ToolStatus::Cancelled, _) => {}
            (_, CallState::Orphaned) => {
                let note = format!("Result of the earlier {} tool call: {}", o.name, o.output);
                if cx.link_up {
                    out.upstream(context_item(cx.plan.dialect, pb::Role::User, &note));
                    create = Some(CreateReason::OrphanedResult);
                } else {
                    self.notes.push(note);
                }
            }
            (_, CallState::Running) => {
                out.upstream(ClientEvent::function_output(&o.call_id, &o.output));
                if self.delivered.len() < 64 {
                    self.delivered.push(Delivered {
                        call_id: o.call_id.clone(),
                        name: o.name.clone(),
                        arguments: call.arguments.clone(),
                        output: o.output.clone(),
                    });
                }
                self.recent.push_back((o.call_id.clone(), o.name.clone()));
                if self.recent.len() > 64 {
                    self.recent.pop_front();
                }
            }
        }
        if call.state == CallState::Running && o.status != ToolStatus::Cancelled {
            if let Some(rid) = self.rounds.on_output(&o.call_id) {
                create = Some(CreateReason::ToolRound(rid));
            }
        }
        if cx.records.is_on() {
            let redact = cx
                .plan
                .tools
                .get(&o.name)
                .is_some_and(|t| t.redact_in_records);
            let shown = |s: &str| {
                if redact {
                    crate::records::REDACTED.to_string()
                } else {
                    s.to_string()
                }
            };
            cx.records.record(
                "tool_call",
                serde_json::json!({"call_id": o.call_id, "name": o.name,
                    "arguments": shown(&call.arguments), "output": shown(&o.output),
                    "status": status, "duration_ms": duration_ms,
                    "error": o.error.as_deref().map(shown)}),
                now,
            );
        }
        out.host(Out::ToolCallFinished(pb::ToolCallFinished {
            status: o.status.to_pb() as i32,
            duration_ms: u32::try_from(o.duration.as_millis()).unwrap_or(u32::MAX),
            call_id: o.call_id,
            name: o.name,
            error: o.error.unwrap_or_default(),
        }));
        create
    }

    /// The response a call belongs to is done: its call set is final. Returns the round to request
    /// a response for, if all its outputs are already in.
    pub fn response_done(&mut self, response_id: &str) -> Option<CreateReason> {
        self.rounds
            .on_response_done(response_id)
            .map(CreateReason::ToolRound)
    }

    /// A `ToolResult` from the host (in-stream calls). Late and unknown results are typed errors for
    /// the host; nothing reaches the model twice.
    pub fn host_result(
        &mut self,
        cx: Ctx<'_>,
        r: pb::ToolResult,
        now: Instant,
        out: &mut Outbox,
    ) -> Option<CreateReason> {
        let Some(call) = self.calls.get(&r.call_id).filter(|c| c.deadline.is_some()) else {
            let e = if self.timed_out.contains(&r.call_id) {
                info!(call_id = %r.call_id, "late tool result dropped (the call already timed out)");
                HostError::new(
                    Code::ToolResultLate,
                    format!("call {} already timed out; result dropped", r.call_id),
                    false,
                )
            } else {
                HostError::new(
                    Code::ToolUnknownCall,
                    format!("no pending in-stream tool call {:?}", r.call_id),
                    false,
                )
            };
            out.host_error(e);
            return None;
        };
        let answer = match r.result {
            Some(pb::tool_result::Result::OutputJson(o)) => Ok(o),
            Some(pb::tool_result::Result::Error(e)) => Err(e),
            None => Err("the host sent a ToolResult with neither output nor error".into()),
        };
        let o = tools::outcome_from_answer(
            &r.call_id,
            &call.name,
            answer,
            cx.plan.max_tool_output_bytes,
            now.saturating_duration_since(call.started),
        );
        self.end(cx, o, now, out)
    }

    /// When the next in-stream call times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.calls.values().filter_map(|c| c.deadline).min()
    }

    /// Ends the in-stream calls whose deadline has passed. Returns the responses to request.
    pub fn expire(&mut self, cx: Ctx<'_>, now: Instant, out: &mut Outbox) -> Vec<CreateReason> {
        let mut expired: Vec<(String, String, Duration, Duration)> = self
            .calls
            .iter()
            .filter_map(|(id, c)| {
                let d = c.deadline.filter(|d| *d <= now)?;
                Some((
                    id.clone(),
                    c.name.clone(),
                    d.saturating_duration_since(c.started),
                    now.saturating_duration_since(c.started),
                ))
            })
            .collect();
        expired.sort();
        expired
            .into_iter()
            .filter_map(|(id, name, timeout, elapsed)| {
                let o = tools::timeout_outcome(&id, &name, timeout, elapsed);
                self.end(cx, o, now, out)
            })
            .collect()
    }

    /// The upstream session was replaced: every running call is orphaned, and the rounds of the old
    /// session are forgotten (their responses will never be done).
    pub fn orphan_all(&mut self) {
        for c in self.calls.values_mut() {
            c.state = CallState::Orphaned;
        }
        self.rounds = ToolRounds::new();
        self.names.clear();
    }

    /// A call's output never left (the link dropped first): it goes to the next upstream session as
    /// context, like an orphaned call's result. Nothing is lost.
    pub fn output_unsent(&mut self, call_id: &str, output: &str) {
        let name = self
            .recent
            .iter()
            .rev()
            .find(|(id, _)| id == call_id)
            .map_or("tool", |(_, n)| n.as_str());
        self.notes
            .push(format!("Result of the earlier {name} tool call: {output}"));
    }

    /// Calls delivered to the model since the last call (for the reconnect context).
    pub fn take_delivered(&mut self) -> Vec<Delivered> {
        std::mem::take(&mut self.delivered)
    }

    /// Results of orphaned calls that ended while the link was down.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// The session is ending: every running call ends as cancelled (the loop drops their futures,
    /// so hosts see their RPCs cancelled).
    /// Ends every open call as cancelled, naming why the session ended.
    pub fn cancel_all(&mut self, cx: Ctx<'_>, now: Instant, out: &mut Outbox, reason: &str) {
        let mut ids: Vec<(String, String, Instant)> = self
            .calls
            .iter()
            .map(|(id, c)| (id.clone(), c.name.clone(), c.started))
            .collect();
        ids.sort();
        for (id, name, started) in ids {
            let o = ToolOutcome::failed(
                &id,
                &name,
                ToolStatus::Cancelled,
                format!("the session ended ({reason})"),
                now.saturating_duration_since(started),
            );
            self.end(cx, o, now, out);
        }
    }

    fn remember_timeout(&mut self, call_id: &str) {
        if self.timed_out.insert(call_id.to_string()) {
            self.timed_out_order.push_back(call_id.to_string());
            if self.timed_out_order.len() > MAX_REMEMBERED_TIMEOUTS {
                if let Some(old) = self.timed_out_order.pop_front() {
                    self.timed_out.remove(&old);
                }
            }
        }
    }
}

fn gauge_in_flight(delta: f64) {
    metrics::gauge!(names::TOOL_CALLS_IN_FLIGHT).increment(delta);
}

/// A conversation message carrying earlier context into a new upstream session. Assistant text uses
/// the dialect's output content type (`output_text` GA, `text` beta).
pub fn context_item(dialect: voice_realtime::Dialect, role: pb::Role, text: &str) -> ClientEvent {
    let (role, kind) = match (role, dialect) {
        (pb::Role::Assistant, voice_realtime::Dialect::Ga) => ("assistant", "output_text"),
        (pb::Role::Assistant, voice_realtime::Dialect::Beta) => ("assistant", "text"),
        _ => ("user", "input_text"),
    };
    ClientEvent::ItemCreate {
        item: serde_json::json!({"type": "message", "role": role, "content": [{"type": kind, "text": text}]}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Defaults;

    fn plan() -> SessionPlan {
        let start = pb::SessionStart {
            tools: vec![pb::ToolDefinition {
                name: "lookup".into(),
                description: "d".into(),
                parameters_json_schema:
                    r#"{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}"#
                        .into(),
                timeout_ms: 1000,
                ..Default::default()
            }],
            tool_routing: Some(pb::ToolRouting {
                route: Some(pb::tool_routing::Route::InStream(true)),
            }),
            ..Default::default()
        };
        SessionPlan::from_start(&start, &Defaults::default()).unwrap()
    }

    fn cx(plan: &SessionPlan, link_up: bool) -> Ctx<'_> {
        static OFF: std::sync::OnceLock<crate::records::Recorder> = std::sync::OnceLock::new();
        Ctx {
            session_id: "s",
            plan,
            link_up,
            records: OFF.get_or_init(crate::records::Recorder::off),
        }
    }

    /// (host messages, upstream events) in the outbox, by kind.
    fn drained(out: &mut Outbox) -> (Vec<String>, Vec<String>) {
        let (mut host, mut up) = (Vec::new(), Vec::new());
        for a in out.drain() {
            match a {
                Action::Host(Out::ToolCallStarted(_)) => host.push("started".into()),
                Action::Host(Out::ToolCall(_)) => host.push("call".into()),
                Action::Host(Out::ToolCallFinished(f)) => host.push(format!(
                    "finished:{}",
                    pb::ToolStatus::try_from(f.status).unwrap().as_str_name()
                )),
                Action::Host(Out::Error(e)) => host.push(format!("error:{}", e.code)),
                Action::Host(other) => host.push(format!("{other:?}")),
                Action::Upstream(ev) => up.push(ev.to_json("e")),
                other => up.push(format!("{other:?}")),
            }
        }
        (host, up)
    }

    /// A new call seen on response `rid` and launched at once.
    fn start(
        t: &mut ToolCalls,
        plan: &SessionPlan,
        rid: &str,
        id: &str,
        args: &str,
        now: Instant,
        out: &mut Outbox,
    ) -> Option<CreateReason> {
        assert!(t.seen(rid, id), "{id} is a new call");
        t.launch(
            cx(plan, true),
            id.into(),
            "lookup".into(),
            args.into(),
            now,
            out,
        )
    }

    fn result(call_id: &str, json: &str) -> pb::ToolResult {
        pb::ToolResult {
            call_id: call_id.into(),
            result: Some(pb::tool_result::Result::OutputJson(json.into())),
        }
    }

    #[test]
    fn a_call_with_bad_arguments_is_refused_and_ends_once() {
        let plan = plan();
        let (mut t, mut out, now) = (ToolCalls::new(), Outbox::default(), Instant::now());
        assert!(t.seen("r1", "c1"));
        assert!(
            !t.seen("r1", "c1"),
            "a duplicate sighting is not a new call"
        );
        assert!(!t.seen("r1", ""), "a call without an id is ignored");
        let create = t.launch(
            cx(&plan, true),
            "c1".into(),
            "lookup".into(),
            "{}".into(),
            now,
            &mut out,
        );
        assert_eq!(create, None, "the response is not done yet");
        let (host, up) = drained(&mut out);
        assert_eq!(host, ["started", "finished:TOOL_STATUS_REFUSED"]);
        assert_eq!(up.len(), 1);
        assert!(
            up[0].contains("function_call_output") && up[0].contains("schema"),
            "{up:?}"
        );
        assert_eq!(
            t.response_done("r1"),
            Some(CreateReason::ToolRound("r1".into()))
        );
        assert_eq!(t.running(), 0);
    }

    #[test]
    fn an_in_stream_call_finishes_then_its_round_completes() {
        let plan = plan();
        let (mut t, mut out, now) = (ToolCalls::new(), Outbox::default(), Instant::now());
        for id in ["a", "b"] {
            start(&mut t, &plan, "r1", id, r#"{"q":"x"}"#, now, &mut out);
        }
        assert_eq!(t.response_done("r1"), None);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(1)));
        let _ = drained(&mut out);
        assert_eq!(
            t.host_result(cx(&plan, true), result("a", "{}"), now, &mut out),
            None
        );
        assert_eq!(
            t.host_result(cx(&plan, true), result("b", r#"{"v":1}"#), now, &mut out),
            Some(CreateReason::ToolRound("r1".into()))
        );
        let (host, up) = drained(&mut out);
        assert_eq!(host, ["finished:TOOL_STATUS_OK", "finished:TOOL_STATUS_OK"]);
        assert_eq!(up.len(), 2);
        // A second answer for a finished call is a typed error, and changes nothing.
        assert_eq!(
            t.host_result(cx(&plan, true), result("b", "{}"), now, &mut out),
            None
        );
        assert_eq!(drained(&mut out).0, ["error:tool_unknown_call"]);
    }

    #[test]
    fn a_timed_out_call_answers_the_model_and_refuses_the_late_result() {
        let plan = plan();
        let (mut t, mut out, now) = (ToolCalls::new(), Outbox::default(), Instant::now());
        start(&mut t, &plan, "r1", "c1", r#"{"q":"x"}"#, now, &mut out);
        t.response_done("r1");
        let _ = drained(&mut out);
        assert!(t
            .expire(cx(&plan, true), now + Duration::from_millis(999), &mut out)
            .is_empty());
        assert_eq!(
            t.expire(cx(&plan, true), now + Duration::from_secs(1), &mut out),
            [CreateReason::ToolRound("r1".into())]
        );
        let (host, up) = drained(&mut out);
        assert_eq!(host, ["finished:TOOL_STATUS_TIMEOUT"]);
        assert!(up[0].contains("did not answer within 1000 ms"));
        t.host_result(cx(&plan, true), result("c1", "{}"), now, &mut out);
        assert_eq!(drained(&mut out).0, ["error:tool_result_late"]);
    }

    #[test]
    fn an_orphaned_call_delivers_its_result_as_context_after_the_reconnect() {
        let plan = plan();
        let (mut t, mut out, now) = (ToolCalls::new(), Outbox::default(), Instant::now());
        start(&mut t, &plan, "r1", "c1", r#"{"q":"x"}"#, now, &mut out);
        let _ = drained(&mut out);
        t.orphan_all();
        assert_eq!(t.state("c1"), Some(CallState::Orphaned));
        // The result comes while the link is down: held, not sent, no round (the old one is gone).
        assert_eq!(
            t.host_result(cx(&plan, false), result("c1", r#"{"n":7}"#), now, &mut out),
            None
        );
        let (host, up) = drained(&mut out);
        assert_eq!(host, ["finished:TOOL_STATUS_OK"]);
        assert!(up.is_empty());
        let notes = t.take_notes();
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains(r#"{"n":7}"#));
        // With the link up, an orphan's result goes in at once and asks the model to continue.
        start(&mut t, &plan, "r2", "c2", r#"{"q":"y"}"#, now, &mut out);
        t.orphan_all();
        let _ = drained(&mut out);
        assert_eq!(
            t.host_result(cx(&plan, true), result("c2", "{}"), now, &mut out),
            Some(CreateReason::OrphanedResult)
        );
        let (_, up) = drained(&mut out);
        assert!(up[0].contains("conversation.item.create") && up[0].contains("earlier lookup"));
    }

    #[test]
    fn calls_running_at_the_end_are_cancelled_without_an_output() {
        let plan = plan();
        let (mut t, mut out, now) = (ToolCalls::new(), Outbox::default(), Instant::now());
        start(&mut t, &plan, "r1", "c1", r#"{"q":"x"}"#, now, &mut out);
        let _ = drained(&mut out);
        t.cancel_all(
            cx(&plan, true),
            now + Duration::from_millis(5),
            &mut out,
            "client_end",
        );
        let (host, up) = drained(&mut out);
        assert_eq!(host, ["finished:TOOL_STATUS_CANCELLED"]);
        assert!(
            up.is_empty(),
            "the model gets nothing once the session ends"
        );
        assert_eq!(t.running(), 0);
    }
}
