//! Tool rounds: the calls the model is waiting on, across the whole conversation, tracked by
//! `call_id` until every one has its output.
//!
//! A reasoning model calls tools in parallel and may spread them over overlapping responses (a
//! preamble-only response, then one with calls; or calls in two responses). So a round is not one
//! response's calls: it is every call opened since the last round completed. It completes when every
//! one has an output and every response that made calls is done — reported exactly once, which is
//! what makes "exactly one `response.create` once every open call has its output" true by
//! construction. A create asked for a round that new calls have since re-opened is stale: the session
//! drops it (`is_open`) and the round's next completion asks again. Calls are started the moment they
//! are seen — from `function_call_arguments.done`, `output_item.done` or `response.done`, whichever
//! comes first — and never twice.

use std::collections::{HashSet, VecDeque};

/// Call ids remembered to recognise duplicate sightings (bounded: a long session cannot grow it).
const MAX_SEEN: usize = 4096;

#[derive(Debug, Default)]
pub struct ToolRounds {
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    /// Calls of the open round without an output yet.
    pending: HashSet<String>,
    /// Outputs delivered in the open round.
    answered: usize,
    /// Responses that made calls in the open round and are not done yet.
    open_responses: HashSet<String>,
    /// Responses that made calls in the open round, in order (the round's name).
    responses: Vec<String>,
}

impl ToolRounds {
    pub fn new() -> Self {
        Self::default()
    }

    /// A call was seen. Returns true if it is new (start it now), false for a duplicate sighting.
    pub fn on_call(&mut self, response_id: &str, call_id: &str) -> bool {
        if !self.seen.insert(call_id.to_string()) {
            return false;
        }
        self.seen_order.push_back(call_id.to_string());
        if self.seen_order.len() > MAX_SEEN {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.pending.insert(call_id.to_string());
        self.open_responses.insert(response_id.to_string());
        if !self.responses.iter().any(|r| r == response_id) {
            self.responses.push(response_id.to_string());
        }
        true
    }

    /// Whether a call id is known and still waiting for its output.
    pub fn is_pending(&self, call_id: &str) -> bool {
        self.pending.contains(call_id)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// A round is open: calls without outputs, or responses with calls not done yet. A create asked
    /// for an earlier completion is stale while this holds.
    pub fn is_open(&self) -> bool {
        !self.pending.is_empty() || !self.open_responses.is_empty()
    }

    /// A call's output has been sent upstream. Returns the round's name if this completed it.
    /// Outputs for unknown or already-finished calls return `None` and change nothing.
    pub fn on_output(&mut self, call_id: &str) -> Option<String> {
        if !self.pending.remove(call_id) {
            return None;
        }
        self.answered += 1;
        self.check_complete()
    }

    /// A response finished; its calls are final. Returns the round's name if this completed it.
    pub fn on_response_done(&mut self, response_id: &str) -> Option<String> {
        if !self.open_responses.remove(response_id) {
            return None;
        }
        self.check_complete()
    }

    fn check_complete(&mut self) -> Option<String> {
        if self.is_open() || self.answered == 0 {
            return None;
        }
        self.answered = 0;
        Some(std::mem::take(&mut self.responses).join("+"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn completes_once_after_done_and_all_outputs() {
        let mut r = ToolRounds::new();
        assert!(r.on_call("r1", "a"));
        assert!(r.on_call("r1", "b"));
        assert!(
            !r.on_call("r1", "a"),
            "duplicate sighting must not start a second run"
        );
        assert_eq!(r.on_output("b"), None);
        assert_eq!(r.on_output("a"), None, "response not done yet");
        assert_eq!(r.on_response_done("r1"), Some("r1".into()));
        assert_eq!(r.on_response_done("r1"), None);
        assert_eq!(r.on_output("a"), None);
        assert!(!r.is_open());
    }

    #[test]
    fn response_without_calls_is_not_a_round() {
        let mut r = ToolRounds::new();
        assert_eq!(r.on_response_done("r9"), None);
    }

    #[test]
    fn calls_in_two_overlapping_responses_are_one_round() {
        let mut r = ToolRounds::new();
        r.on_call("r1", "a");
        assert_eq!(r.on_response_done("r1"), None);
        // A second response adds a call while the first call runs.
        r.on_call("r2", "b");
        assert_eq!(r.on_output("a"), None, "b is still open");
        assert_eq!(r.on_response_done("r2"), None);
        assert!(r.is_open());
        assert_eq!(r.on_output("b"), Some("r1+r2".into()));
        // A preamble-only response ending changes nothing.
        assert_eq!(r.on_response_done("r3"), None);
    }

    #[test]
    fn a_call_opening_after_a_completion_makes_the_round_open_again() {
        let mut r = ToolRounds::new();
        r.on_call("r1", "a");
        r.on_response_done("r1");
        assert_eq!(r.on_output("a"), Some("r1".into()));
        assert!(!r.is_open());
        r.on_call("r2", "b");
        assert!(r.is_open(), "a create asked for r1 is now stale");
        r.on_response_done("r2");
        assert_eq!(r.on_output("b"), Some("r2".into()));
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Output(usize),
        Done(usize),
        Dup(usize),
    }

    proptest! {
        /// Calls spread over two responses, outputs in any order, duplicate sightings, the responses'
        /// ends in any order: exactly one completion, and only after every call has its output and
        /// both responses are done.
        #[test]
        fn exactly_one_completion_per_round(n in 1usize..6, split in 0usize..6, order in proptest::collection::vec(0usize..100, 0..30)) {
            let mut r = ToolRounds::new();
            let resp = |i: usize| if i < split.min(n) { "r1" } else { "r2" };
            for i in 0..n { let id = format!("c{i}"); prop_assert!(r.on_call(resp(i), &id)); }
            let mut evs: Vec<Ev> = (0..n).map(Ev::Output).collect();
            evs.push(Ev::Done(1));
            evs.push(Ev::Done(2));
            for (k, x) in order.iter().enumerate() { evs.push(Ev::Dup(x % n)); let len = evs.len(); evs.swap(k % len, x % len); }
            let with_calls = |k: usize| (0..n).any(|i| resp(i) == format!("r{k}"));
            let responses_with_calls = (1..=2).filter(|k| with_calls(*k)).count();
            let mut completions = 0;
            let mut outputs = 0;
            let mut done = 0;
            for e in evs {
                let c = match e {
                    Ev::Output(i) => { outputs += 1; r.on_output(&format!("c{i}")) }
                    Ev::Done(k) => { if with_calls(k) { done += 1; } r.on_response_done(&format!("r{k}")) }
                    Ev::Dup(i) => { let id = format!("c{i}"); prop_assert!(!r.on_call(resp(i), &id)); None }
                };
                if c.is_some() {
                    completions += 1;
                    prop_assert!(done == responses_with_calls && outputs == n);
                }
            }
            prop_assert_eq!(completions, 1);
            prop_assert!(!r.is_open());
        }
    }
}
