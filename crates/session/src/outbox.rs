//! The outbox: what the session's logic asks the loop to do. Handlers decide and append actions; the
//! loop in `session.rs` performs them in order (the only place that touches a socket), as the
//! simulator's session does with its own outbox.

use crate::error::HostError;
use crate::scheduler::PendingCreate;
use std::collections::VecDeque;
use std::time::Duration;
use voice_proto::v1 as pb;
use voice_proto::v1::server_message::Message as Out;
use voice_realtime::ClientEvent;

/// A tool call for the loop to run on a callback host.
#[derive(Debug)]
pub struct Invocation {
    pub addr: String,
    pub invocation: pb::ToolInvocation,
    pub timeout: Duration,
    pub max_output_bytes: usize,
    pub span: tracing::Span,
}

#[derive(Debug)]
pub enum Action {
    /// A message on the host's stream.
    Host(Out),
    /// An event to upstream (dropped by the loop if the link is down: the logic does not emit any
    /// while it knows the link is down).
    Upstream(ClientEvent),
    /// A `response.create`: the loop tags it with the event id it gets and reports back with
    /// `Conversation::create_sent`.
    CreateResponse(PendingCreate),
    /// Start a callback tool call.
    Invoke(Invocation),
}

#[derive(Debug, Default)]
pub struct Outbox {
    actions: VecDeque<Action>,
}

impl Outbox {
    pub fn host(&mut self, m: Out) {
        self.actions.push_back(Action::Host(m));
    }

    /// An error for the host (counted by code).
    pub fn host_error(&mut self, e: HostError) {
        metrics::counter!(voice_telemetry::HOST_ERRORS, "code" => e.code.as_str()).increment(1);
        tracing::debug!(code = e.code.as_str(), message = %e.message, "error reported to host");
        self.host(Out::Error(e.into_pb()));
    }

    pub fn upstream(&mut self, ev: ClientEvent) {
        self.actions.push_back(Action::Upstream(ev));
    }

    pub fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    pub fn pop(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// Drains everything (tests).
    pub fn drain(&mut self) -> impl Iterator<Item = Action> + '_ {
        self.actions.drain(..)
    }
}
