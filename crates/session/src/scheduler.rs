//! The response scheduler: the one place per session that knows whether a model response is active,
//! and the only way a `response.create` leaves the sidecar.
//!
//! Upstream allows one active response per conversation; a create sent into an active response is
//! rejected (`conversation_already_has_active_response`) and, if ignored, a tool round's results are
//! never read back. So every create goes through `request`: it is sent at once when nothing is active,
//! otherwise queued until `response.done`. A create that upstream still rejects (server VAD started a
//! response at the same moment) is put back at the front of the queue, never dropped.

use serde_json::Value;
use std::collections::VecDeque;

/// Why a response is being requested (for logs and tests).
#[derive(Debug, Clone, PartialEq)]
pub enum CreateReason {
    /// All outputs of a tool round are in; the string is the round's response id.
    ToolRound(String),
    /// The host sent text as the user.
    UserText,
    /// The silence guard asks for a holding line (out-of-band).
    HoldingLine,
    /// The host committed input manually.
    Commit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PendingCreate {
    pub reason: CreateReason,
    /// The `response` object of `response.create`, if any.
    pub response: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Active {
    Idle,
    /// We sent a create (its event id); `response.created` not yet seen.
    Requested {
        event_id: String,
        create: PendingCreate,
    },
    /// A response is running (id `None` when upstream rejected our create because of one we have not
    /// seen created yet).
    Running {
        id: Option<String>,
        ours: Option<PendingCreate>,
    },
}

#[derive(Debug)]
pub struct ResponseScheduler {
    active: Active,
    queue: VecDeque<PendingCreate>,
}

impl Default for ResponseScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseScheduler {
    pub fn new() -> Self {
        ResponseScheduler {
            active: Active::Idle,
            queue: VecDeque::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        !matches!(self.active, Active::Idle)
    }

    /// The id of the running response, when known.
    pub fn running_id(&self) -> Option<&str> {
        match &self.active {
            Active::Running { id: Some(id), .. } => Some(id),
            _ => None,
        }
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Queues a create. Call `next_to_send` afterwards to learn whether one may go out now.
    pub fn request(&mut self, create: PendingCreate) {
        self.queue.push_back(create);
    }

    /// If nothing is active and a create is queued, pops it; the caller must send it and then call
    /// `sent` with the event id it used.
    pub fn next_to_send(&mut self) -> Option<PendingCreate> {
        if self.is_active() {
            return None;
        }
        self.queue.pop_front()
    }

    pub fn sent(&mut self, event_id: String, create: PendingCreate) {
        self.active = Active::Requested { event_id, create };
    }

    /// `response.created` from upstream (ours, or started by server VAD).
    pub fn on_created(&mut self, response_id: &str) {
        let ours = match std::mem::replace(&mut self.active, Active::Idle) {
            Active::Requested { create, .. } => Some(create),
            Active::Running { ours, .. } => ours,
            Active::Idle => None,
        };
        self.active = Active::Running {
            id: Some(response_id.to_string()),
            ours,
        };
    }

    /// `response.done` from upstream.
    pub fn on_done(&mut self, response_id: &str) {
        match &self.active {
            Active::Running { id: Some(id), .. } if id == response_id => self.active = Active::Idle,
            Active::Running { id: None, .. } => self.active = Active::Idle,
            // A done for a response we are not tracking (or before ours was created) changes nothing.
            _ => {}
        }
    }

    /// Upstream rejected the create with this event id because a response is active: put it back at
    /// the front and wait for that response to finish.
    pub fn on_rejected(&mut self, event_id: &str) -> bool {
        match std::mem::replace(&mut self.active, Active::Idle) {
            Active::Requested {
                event_id: e,
                create,
            } if e == event_id => {
                self.queue.push_front(create);
                self.active = Active::Running {
                    id: None,
                    ours: None,
                };
                true
            }
            Active::Running {
                id,
                ours: Some(create),
            } if id.is_some() => {
                // We took a VAD response for ours; ours was the one rejected.
                self.queue.push_front(create);
                self.active = Active::Running { id, ours: None };
                true
            }
            other => {
                self.active = other;
                false
            }
        }
    }

    /// The upstream connection is gone: nothing is active any more; queued creates are returned.
    pub fn reset(&mut self) -> Vec<PendingCreate> {
        self.active = Active::Idle;
        self.queue.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(r: CreateReason) -> PendingCreate {
        PendingCreate {
            reason: r,
            response: None,
        }
    }

    #[test]
    fn queued_while_active_sent_after_done() {
        let mut s = ResponseScheduler::new();
        s.on_created("r1");
        s.request(c(CreateReason::UserText));
        assert!(s.next_to_send().is_none());
        s.on_done("r1");
        let p = s.next_to_send().unwrap();
        s.sent("e1".into(), p);
        assert!(s.is_active());
        assert!(s.next_to_send().is_none());
        s.on_created("r2");
        s.on_done("r2");
        assert!(!s.is_active());
    }

    #[test]
    fn rejection_requeues_not_drops() {
        let mut s = ResponseScheduler::new();
        s.request(c(CreateReason::ToolRound("r0".into())));
        let p = s.next_to_send().unwrap();
        s.sent("e1".into(), p);
        // Server VAD started a response at the same moment; its created arrives first.
        s.on_created("vad");
        assert!(s.on_rejected("e1"));
        assert_eq!(s.queued(), 1);
        assert!(s.next_to_send().is_none());
        s.on_done("vad");
        assert_eq!(
            s.next_to_send().unwrap().reason,
            CreateReason::ToolRound("r0".into())
        );
    }

    #[test]
    fn rejection_before_any_created() {
        let mut s = ResponseScheduler::new();
        s.request(c(CreateReason::UserText));
        let p = s.next_to_send().unwrap();
        s.sent("e1".into(), p);
        assert!(s.on_rejected("e1"));
        assert!(
            s.next_to_send().is_none(),
            "must wait for the unseen response to finish"
        );
        s.on_created("vad");
        s.on_done("vad");
        assert!(s.next_to_send().is_some());
    }
}
