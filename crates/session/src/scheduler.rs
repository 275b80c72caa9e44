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
    /// A response was cut off by an upstream reconnect; ask again in the new session.
    Resume,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PendingCreate {
    pub reason: CreateReason,
    /// The `response` object of `response.create`, if any.
    pub response: Option<Value>,
}

/// Metadata key that tags our creates, so `response.created` can be attributed: upstream echoes a
/// response's `metadata`, and without the tag a response started by server VAD (whose
/// `response.created` may still be in flight) would be mistaken for ours.
pub const TAG_KEY: &str = "voice_sidecar_create";

#[derive(Debug)]
pub struct ResponseScheduler {
    /// A create we sent that upstream has neither started (tagged `response.created`) nor rejected.
    inflight: Option<(String, PendingCreate)>,
    /// The response upstream is running, from `response.created` to `response.done`.
    running: Option<String>,
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
            inflight: None,
            running: None,
            queue: VecDeque::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.inflight.is_some() || self.running.is_some()
    }

    /// The id of the running response, when known.
    pub fn running_id(&self) -> Option<&str> {
        self.running.as_deref()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Queues a create. Call `next_to_send` afterwards to learn whether one may go out now.
    pub fn request(&mut self, create: PendingCreate) {
        self.queue.push_back(create);
    }

    /// If nothing is active and a create is queued, pops it; the caller must send it (with
    /// `tagged_response` for its body) and then call `sent` with the event id it used.
    pub fn next_to_send(&mut self) -> Option<PendingCreate> {
        if self.is_active() {
            return None;
        }
        self.queue.pop_front()
    }

    pub fn sent(&mut self, event_id: String, create: PendingCreate) {
        self.inflight = Some((event_id, create));
    }

    /// `response.created` from upstream; `tag` is the `metadata` tag it carries, if any.
    pub fn on_created(&mut self, response_id: &str, tag: Option<&str>) {
        self.running = Some(response_id.to_string());
        if tag.is_some() && self.inflight.as_ref().map(|(e, _)| e.as_str()) == tag {
            self.inflight = None;
        }
    }

    /// `response.done` from upstream.
    pub fn on_done(&mut self, response_id: &str) {
        if self.running.as_deref() == Some(response_id) {
            self.running = None;
        }
    }

    /// Upstream rejected the create with this event id because a response is active: put it back at
    /// the front; it goes out again once that response is done.
    pub fn on_rejected(&mut self, event_id: &str) -> bool {
        match self.inflight.take() {
            Some((e, create)) if e == event_id => {
                self.queue.push_front(create);
                true
            }
            other => {
                self.inflight = other;
                false
            }
        }
    }

    /// The upstream connection is gone: nothing is active any more; queued creates are returned.
    pub fn reset(&mut self) -> Vec<PendingCreate> {
        self.inflight = None;
        self.running = None;
        self.queue.drain(..).collect()
    }
}

/// The `response` body of a create, with our tag merged into its metadata.
pub fn tagged_response(response: Option<&serde_json::Value>, event_id: &str) -> serde_json::Value {
    let mut r = match response {
        Some(serde_json::Value::Object(o)) => serde_json::Value::Object(o.clone()),
        _ => serde_json::json!({}),
    };
    let meta = r
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| serde_json::json!({})));
    if let Some(serde_json::Value::Object(m)) = meta {
        m.insert(
            TAG_KEY.to_string(),
            serde_json::Value::String(event_id.to_string()),
        );
    }
    r
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
        s.on_created("r1", None);
        s.request(c(CreateReason::UserText));
        assert!(s.next_to_send().is_none());
        s.on_done("r1");
        let p = s.next_to_send().unwrap();
        s.sent("e1".into(), p);
        assert!(s.is_active());
        assert!(s.next_to_send().is_none());
        s.on_created("r2", Some("e1"));
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
        s.on_created("vad", None);
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
    fn untagged_created_is_not_taken_for_ours() {
        let mut s = ResponseScheduler::new();
        s.request(c(CreateReason::UserText));
        let p = s.next_to_send().unwrap();
        s.sent("e1".into(), p);
        // A VAD response's created/done that were in flight before our create reached upstream.
        s.on_created("stale", None);
        s.on_done("stale");
        assert!(s.is_active(), "our create is still unresolved");
        s.on_created("r2", Some("e1"));
        s.on_done("r2");
        assert!(!s.is_active());
        let t = tagged_response(
            Some(&serde_json::json!({"metadata": {"purpose": "x"}})),
            "e9",
        );
        assert_eq!(t["metadata"]["purpose"], "x");
        assert_eq!(t["metadata"][TAG_KEY], "e9");
    }
}
