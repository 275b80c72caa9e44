//! The response scheduler: the one place per session that knows whether a model response is active,
//! and the only way a `response.create` leaves the sidecar.
//!
//! Upstream allows one active response per conversation; a create sent into an active response is
//! rejected (`conversation_already_has_active_response`) and, if ignored, a tool round's results are
//! never read back. So every create goes through `request`: it is sent at once when nothing is active,
//! otherwise queued until `response.done`. A create that upstream still rejects (server VAD started a
//! response at the same moment) is put back at the front of the queue, never dropped.
//!
//! Every create resolves, so the scheduler can never wedge:
//! - started: a `response.created` carrying our metadata tag;
//! - collided: put back at the front, sent again after the running response;
//! - failed with a retryable error (`server_error`, `rate_limit_exceeded`, ...) or unanswered for
//!   [`CREATE_ACK_TIMEOUT`]: retried after a backoff, at most [`MAX_ATTEMPTS`] times in all;
//! - failed otherwise, or out of attempts: handed back as [`Resolution::Failed`] for the host to be
//!   told, and the scheduler is free;
//! - an untagged `response.created` while ours is pending (a proxy that drops `metadata`): taken for
//!   ours if the tagged one has not come [`UNTAGGED_FALLBACK`] later.

use serde_json::Value;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Tries per create, the first included.
pub const MAX_ATTEMPTS: u32 = 3;
/// Backoff before the second try; doubled for each further one.
pub const RETRY_BASE: Duration = Duration::from_millis(250);
/// A create upstream neither starts nor rejects within this is retried (or failed).
pub const CREATE_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an untagged `response.created` waits for ours before it is taken for ours.
pub const UNTAGGED_FALLBACK: Duration = Duration::from_secs(2);

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
    /// Results of calls started before a reconnect went in as context; the model continues.
    OrphanedResult,
    /// The host-set call limit is near: the model says the configured line.
    CallLimitWarning,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PendingCreate {
    pub reason: CreateReason,
    /// The `response` object of `response.create`, if any.
    pub response: Option<Value>,
    /// Tries so far.
    attempts: u32,
    /// Not to be sent before this (retry backoff).
    not_before: Option<Instant>,
    /// The tool-round cap has judged this create (retries and resends are not counted again).
    pub(crate) round_counted: bool,
}

impl PendingCreate {
    pub fn new(reason: CreateReason, response: Option<Value>) -> Self {
        PendingCreate {
            reason,
            response,
            attempts: 0,
            not_before: None,
            round_counted: false,
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// What became of a create after an error, a timeout or a fallback.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// The error was not about our pending create.
    NotOurs,
    /// A response was active upstream: queued again at the front.
    Requeued,
    /// Will be sent again after `after`.
    Retrying { attempt: u32, after: Duration },
    /// Given up: the host must be told; the scheduler is free.
    Failed {
        create: PendingCreate,
        reason: String,
    },
    /// An untagged `response.created` was taken for ours.
    Adopted,
}

#[derive(Debug)]
struct Inflight {
    event_id: String,
    create: PendingCreate,
    sent_at: Instant,
    /// An untagged `response.created` arrived while this was pending.
    untagged_at: Option<Instant>,
}

/// Metadata key that tags our creates, so `response.created` can be attributed: upstream echoes a
/// response's `metadata`, and without the tag a response started by server VAD (whose
/// `response.created` may still be in flight) would be mistaken for ours.
pub const TAG_KEY: &str = "voice_sidecar_create";

#[derive(Debug, Default)]
pub struct ResponseScheduler {
    /// A create we sent that upstream has neither started (tagged `response.created`) nor rejected.
    inflight: Option<Inflight>,
    /// The response upstream is running, from `response.created` to `response.done`.
    running: Option<String>,
    queue: VecDeque<PendingCreate>,
}

impl ResponseScheduler {
    pub fn new() -> Self {
        Self::default()
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

    /// Queues a create. Call `next_to_send` afterwards to learn whether one may go out now. A tool
    /// round's create replaces one still queued for an earlier round: one create reads every output.
    pub fn request(&mut self, create: PendingCreate) {
        if matches!(create.reason, CreateReason::ToolRound(_)) {
            if let Some(q) = self
                .queue
                .iter_mut()
                .find(|c| matches!(c.reason, CreateReason::ToolRound(_)))
            {
                *q = create;
                return;
            }
        }
        self.queue.push_back(create);
    }

    /// If nothing is active and a create is queued (and not backing off), pops it; the caller must
    /// send it (with `tagged_response` for its body) and then call `sent` with the event id it used.
    pub fn next_to_send(&mut self, now: Instant) -> Option<PendingCreate> {
        if self.is_active() {
            return None;
        }
        if self.queue.front()?.not_before.is_some_and(|t| t > now) {
            return None;
        }
        self.queue.pop_front()
    }

    /// A create popped by `next_to_send` that could not be sent: back at the front.
    pub fn put_back(&mut self, create: PendingCreate) {
        self.requeue(create);
    }

    /// Puts a create that was already on its way (popped, sent, rejected, timed out or cut off by a
    /// reconnect) back at the front. A tool round's create absorbs one queued for a later round:
    /// the one create reads every output, so two would start two responses for one set of results.
    /// The survivor keeps this create's history (tries, backoff, round-cap verdict and body) and
    /// takes the later round's name.
    fn requeue(&mut self, mut create: PendingCreate) {
        if matches!(create.reason, CreateReason::ToolRound(_)) {
            if let Some(i) = self
                .queue
                .iter()
                .position(|c| matches!(c.reason, CreateReason::ToolRound(_)))
            {
                if let Some(later) = self.queue.remove(i) {
                    create.reason = later.reason;
                }
            }
        }
        self.queue.push_front(create);
    }

    pub fn sent(&mut self, event_id: String, mut create: PendingCreate, now: Instant) {
        create.attempts += 1;
        create.not_before = None;
        self.inflight = Some(Inflight {
            event_id,
            create,
            sent_at: now,
            untagged_at: None,
        });
    }

    /// `response.created` from upstream; `tag` is the `metadata` tag it carries, if any.
    pub fn on_created(&mut self, response_id: &str, tag: Option<&str>, now: Instant) {
        self.running = Some(response_id.to_string());
        if let Some(f) = self.inflight.as_mut() {
            if tag.is_some_and(|t| t == f.event_id) {
                self.inflight = None;
            } else if tag.is_none() && f.untagged_at.is_none() {
                f.untagged_at = Some(now);
            }
        }
    }

    /// `response.done` from upstream.
    pub fn on_done(&mut self, response_id: &str) {
        if self.running.as_deref() == Some(response_id) {
            self.running = None;
        }
    }

    /// An upstream `error` event. `event_id` is the client event it names; `retryable` whether the
    /// error is transient (server errors, rate limits).
    pub fn on_error(
        &mut self,
        event_id: Option<&str>,
        code: &str,
        retryable: bool,
        now: Instant,
    ) -> Resolution {
        let ours = self
            .inflight
            .as_ref()
            .is_some_and(|f| event_id == Some(f.event_id.as_str()));
        if !ours {
            return Resolution::NotOurs;
        }
        let Some(f) = self.inflight.take() else {
            return Resolution::NotOurs;
        };
        if code == "conversation_already_has_active_response" {
            // Not a failed try: the create never ran.
            let mut c = f.create;
            c.attempts = c.attempts.saturating_sub(1);
            self.requeue(c);
            return Resolution::Requeued;
        }
        self.retry_or_fail(f.create, retryable, code.to_string(), now)
    }

    fn retry_or_fail(
        &mut self,
        mut create: PendingCreate,
        retryable: bool,
        reason: String,
        now: Instant,
    ) -> Resolution {
        if retryable && create.attempts < MAX_ATTEMPTS {
            let after = RETRY_BASE * 2u32.pow(create.attempts.saturating_sub(1));
            create.not_before = Some(now + after);
            let attempt = create.attempts + 1;
            self.requeue(create);
            Resolution::Retrying { attempt, after }
        } else {
            Resolution::Failed { create, reason }
        }
    }

    /// When `on_timer` has something to do: a create's acknowledgement timeout, the untagged
    /// fallback, or the end of a retry backoff.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.inflight {
            Some(f) => Some(match f.untagged_at {
                Some(u) => (u + UNTAGGED_FALLBACK).min(f.sent_at + CREATE_ACK_TIMEOUT),
                None => f.sent_at + CREATE_ACK_TIMEOUT,
            }),
            None if self.running.is_none() => self.queue.front().and_then(|c| c.not_before),
            None => None,
        }
    }

    /// Resolves what is due at `now`. After it, `next_to_send` may have a create to send.
    pub fn on_timer(&mut self, now: Instant) -> Option<Resolution> {
        let f = self.inflight.as_ref()?;
        if f.untagged_at.is_some_and(|u| u + UNTAGGED_FALLBACK <= now) {
            self.inflight = None;
            return Some(Resolution::Adopted);
        }
        if f.sent_at + CREATE_ACK_TIMEOUT <= now {
            let f = self.inflight.take()?;
            let reason = format!(
                "upstream did not acknowledge response.create within {} s",
                CREATE_ACK_TIMEOUT.as_secs()
            );
            return Some(self.retry_or_fail(f.create, true, reason, now));
        }
        None
    }

    /// The upstream connection is gone: nothing is active any more; queued creates are kept, and a
    /// create that was waiting for its acknowledgement is queued again (it asks for the response
    /// anew). Returns whether a running response was cut off with no create of ours to ask again.
    pub fn reset(&mut self) -> bool {
        let cut_off = self.inflight.is_none() && self.running.is_some();
        if let Some(f) = self.inflight.take() {
            let mut c = f.create;
            c.attempts = c.attempts.saturating_sub(1);
            self.requeue(c);
        }
        self.running = None;
        cut_off
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
    use proptest::prelude::*;

    fn c(r: CreateReason) -> PendingCreate {
        PendingCreate::new(r, None)
    }

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn queued_while_active_sent_after_done() {
        let now = t0();
        let mut s = ResponseScheduler::new();
        s.on_created("r1", None, now);
        s.request(c(CreateReason::UserText));
        assert!(s.next_to_send(now).is_none());
        s.on_done("r1");
        let p = s.next_to_send(now).unwrap();
        s.sent("e1".into(), p, now);
        assert!(s.is_active());
        assert!(s.next_to_send(now).is_none());
        s.on_created("r2", Some("e1"), now);
        s.on_done("r2");
        assert!(!s.is_active());
    }

    #[test]
    fn rejection_requeues_not_drops() {
        let now = t0();
        let mut s = ResponseScheduler::new();
        s.request(c(CreateReason::ToolRound("r0".into())));
        let p = s.next_to_send(now).unwrap();
        s.sent("e1".into(), p, now);
        // Server VAD started a response at the same moment; its created arrives first.
        s.on_created("vad", None, now);
        assert_eq!(
            s.on_error(
                Some("e1"),
                "conversation_already_has_active_response",
                false,
                now
            ),
            Resolution::Requeued
        );
        assert_eq!(s.queued(), 1);
        assert!(s.next_to_send(now).is_none());
        s.on_done("vad");
        assert_eq!(
            s.next_to_send(now).unwrap().reason,
            CreateReason::ToolRound("r0".into())
        );
    }

    #[test]
    fn untagged_created_is_not_taken_for_ours_unless_ours_never_comes() {
        let now = t0();
        let mut s = ResponseScheduler::new();
        s.request(c(CreateReason::UserText));
        let p = s.next_to_send(now).unwrap();
        s.sent("e1".into(), p, now);
        // A VAD response's created/done that were in flight before our create reached upstream.
        s.on_created("stale", None, now);
        s.on_done("stale");
        assert!(s.is_active(), "our create is still unresolved");
        s.on_created("r2", Some("e1"), now);
        s.on_done("r2");
        assert!(!s.is_active());
        let t = tagged_response(
            Some(&serde_json::json!({"metadata": {"purpose": "x"}})),
            "e9",
        );
        assert_eq!(t["metadata"]["purpose"], "x");
        assert_eq!(t["metadata"][TAG_KEY], "e9");

        // A proxy that strips metadata: the untagged created is adopted after the fallback.
        s.request(c(CreateReason::UserText));
        let p = s.next_to_send(now).unwrap();
        s.sent("e2".into(), p, now);
        s.on_created("r3", None, now);
        assert_eq!(s.deadline(), Some(now + UNTAGGED_FALLBACK));
        assert_eq!(
            s.on_timer(now + UNTAGGED_FALLBACK),
            Some(Resolution::Adopted)
        );
        s.on_done("r3");
        assert!(!s.is_active());
    }

    #[test]
    fn one_queued_create_serves_every_completed_round() {
        let now = t0();
        let mut s = ResponseScheduler::new();
        s.on_created("busy", None, now);
        s.request(c(CreateReason::UserText));
        s.request(c(CreateReason::ToolRound("r1".into())));
        s.request(c(CreateReason::ToolRound("r2".into())));
        assert_eq!(s.queued(), 2);
        s.on_done("busy");
        assert_eq!(s.next_to_send(now).unwrap().reason, CreateReason::UserText);
        assert_eq!(
            s.next_to_send(now).unwrap().reason,
            CreateReason::ToolRound("r2".into())
        );
    }

    #[test]
    fn a_rejected_round_create_absorbs_the_round_queued_behind_it() {
        // Found by the protocol model in CI: round r1's create was in flight when r2's outputs
        // were sent; a collision put r1 back in front of r2 and both were accepted after the last
        // output, two responses for one set of results.
        let now = t0();
        let mut s = ResponseScheduler::new();
        s.request(c(CreateReason::ToolRound("r1".into())));
        let p = s.next_to_send(now).unwrap();
        s.sent("e1".into(), p, now);
        s.request(c(CreateReason::ToolRound("r2".into())));
        assert_eq!(
            s.on_error(
                Some("e1"),
                "conversation_already_has_active_response",
                false,
                now
            ),
            Resolution::Requeued
        );
        assert_eq!(s.queued(), 1, "one create for both rounds");
        let p = s.next_to_send(now).unwrap();
        assert_eq!(p.reason, CreateReason::ToolRound("r2".into()));
        // A retry and a reconnect merge the same way.
        s.sent("e2".into(), p, now);
        s.request(c(CreateReason::ToolRound("r3".into())));
        assert!(matches!(
            s.on_error(Some("e2"), "server_error", true, now),
            Resolution::Retrying { .. }
        ));
        assert_eq!(s.queued(), 1);
        let later = now + Duration::from_secs(5);
        let p = s.next_to_send(later).unwrap();
        assert_eq!(p.reason, CreateReason::ToolRound("r3".into()));
        assert_eq!(
            p.attempts(),
            1,
            "the survivor keeps the tries of the create it replaced"
        );
        s.sent("e3".into(), p, later);
        s.request(c(CreateReason::UserText));
        s.request(c(CreateReason::ToolRound("r4".into())));
        assert!(!s.reset());
        assert_eq!(s.queued(), 2);
        assert_eq!(
            s.next_to_send(later).unwrap().reason,
            CreateReason::ToolRound("r4".into())
        );
    }

    #[test]
    fn a_failed_create_frees_the_scheduler() {
        let now = t0();
        let mut s = ResponseScheduler::new();
        s.request(c(CreateReason::ToolRound("r0".into())));
        s.request(c(CreateReason::UserText));
        let p = s.next_to_send(now).unwrap();
        s.sent("e1".into(), p, now);
        match s.on_error(Some("e1"), "invalid_value", false, now) {
            Resolution::Failed { create, .. } => {
                assert_eq!(create.reason, CreateReason::ToolRound("r0".into()));
            }
            other => panic!("{other:?}"),
        }
        assert!(!s.is_active());
        assert_eq!(s.next_to_send(now).unwrap().reason, CreateReason::UserText);
    }

    #[test]
    fn retryable_errors_back_off_then_fail() {
        let now = t0();
        let mut s = ResponseScheduler::new();
        s.request(c(CreateReason::UserText));
        let mut t = now;
        for attempt in 1..=MAX_ATTEMPTS {
            let p = s.next_to_send(t).expect("due");
            assert_eq!(p.attempts(), attempt - 1);
            s.sent(format!("e{attempt}"), p, t);
            let r = s.on_error(Some(&format!("e{attempt}")), "server_error", true, t);
            if attempt < MAX_ATTEMPTS {
                let after = RETRY_BASE * 2u32.pow(attempt - 1);
                assert_eq!(
                    r,
                    Resolution::Retrying {
                        attempt: attempt + 1,
                        after
                    }
                );
                assert!(s.next_to_send(t).is_none(), "backing off");
                assert_eq!(s.deadline(), Some(t + after));
                t += after;
            } else {
                assert!(matches!(r, Resolution::Failed { .. }), "{r:?}");
            }
        }
        assert!(!s.is_active());
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn an_unanswered_create_times_out() {
        let now = t0();
        let mut s = ResponseScheduler::new();
        s.request(c(CreateReason::Commit));
        let p = s.next_to_send(now).unwrap();
        s.sent("e1".into(), p, now);
        assert_eq!(s.deadline(), Some(now + CREATE_ACK_TIMEOUT));
        assert!(s.on_timer(now + Duration::from_secs(1)).is_none());
        assert!(matches!(
            s.on_timer(now + CREATE_ACK_TIMEOUT),
            Some(Resolution::Retrying { attempt: 2, .. })
        ));
        assert!(!s.is_active());
    }

    /// How the scripted upstream answers one create.
    #[derive(Debug, Clone)]
    enum Answer {
        Tagged,
        Untagged,
        Collides,
        Retryable,
        Fatal,
        Silent,
        /// A foreign untagged response starts and ends, then ours is tagged.
        StaleThenTagged,
    }

    fn answer() -> impl Strategy<Value = Answer> {
        prop_oneof![
            Just(Answer::Tagged),
            Just(Answer::Untagged),
            Just(Answer::Collides),
            Just(Answer::Retryable),
            Just(Answer::Fatal),
            Just(Answer::Silent),
            Just(Answer::StaleThenTagged),
        ]
    }

    proptest! {
        /// Whatever upstream does with each create (start it, start it untagged, collide, fail
        /// transiently or for good, or never answer), every requested create ends exactly once —
        /// started or reported failed — in bounded time, and the scheduler ends idle.
        #[test]
        fn every_create_resolves(requests in 1usize..6, answers in proptest::collection::vec(answer(), 1..40)) {
            let mut s = ResponseScheduler::new();
            let mut now = Instant::now();
            for i in 0..requests {
                s.request(PendingCreate::new(CreateReason::UserText, Some(serde_json::json!({"n": i}))));
            }
            // After the scripted answers, upstream behaves (a collision loop ends when VAD stops).
            let mut answers = answers.into_iter().chain(std::iter::repeat(Answer::Tagged));
            let (mut started, mut failed, mut sent) = (0usize, 0usize, 0u64);
            let mut steps = 0;
            while started + failed < requests {
                steps += 1;
                prop_assert!(steps < 1000, "scheduler wedged: started {started}, failed {failed}, queued {}", s.queued());
                if let Some(p) = s.next_to_send(now) {
                    sent += 1;
                    let eid = format!("e{sent}");
                    s.sent(eid.clone(), p, now);
                    let rid = format!("r{sent}");
                    match answers.next().unwrap() {
                        Answer::Tagged => { s.on_created(&rid, Some(&eid), now); s.on_done(&rid); started += 1; }
                        Answer::StaleThenTagged => {
                            s.on_created("stale", None, now); s.on_done("stale");
                            s.on_created(&rid, Some(&eid), now); s.on_done(&rid); started += 1;
                        }
                        Answer::Untagged => { s.on_created(&rid, None, now); s.on_done(&rid); started += 1; }
                        Answer::Collides => {
                            s.on_created("vad", None, now);
                            prop_assert_eq!(s.on_error(Some(&eid), "conversation_already_has_active_response", false, now), Resolution::Requeued);
                            s.on_done("vad");
                        }
                        Answer::Retryable => match s.on_error(Some(&eid), "rate_limit_exceeded", true, now) {
                            Resolution::Failed { .. } => failed += 1,
                            Resolution::Retrying { .. } => {}
                            other => prop_assert!(false, "{other:?}"),
                        },
                        Answer::Fatal => match s.on_error(Some(&eid), "invalid_value", false, now) {
                            Resolution::Failed { .. } => failed += 1,
                            other => prop_assert!(false, "{other:?}"),
                        },
                        Answer::Silent => {}
                    }
                    continue;
                }
                // Nothing to send: time must move us on.
                let d = s.deadline();
                prop_assert!(d.is_some(), "nothing to send and nothing due: wedged (queued {})", s.queued());
                now = d.unwrap().max(now);
                if let Some(Resolution::Failed { .. }) = s.on_timer(now) { failed += 1 }
            }
            prop_assert_eq!(s.queued(), 0);
            // An adopted untagged create leaves nothing pending either.
            if let Some(d) = s.deadline() { now = d; let _ = s.on_timer(now); }
            prop_assert!(!s.is_active());
        }
    }
}
