//! Tool rounds: the calls of one model response, tracked by `call_id` until every one has its output.
//!
//! A round is complete when its response is done (so the set of calls is final) and every call has an
//! output; completion is reported exactly once, which is what makes "exactly one `response.create`
//! per round" true by construction. Calls are started the moment they are seen — from
//! `function_call_arguments.done`, `output_item.done` or `response.done`, whichever comes first — and
//! never twice.

use std::collections::{HashMap, HashSet};

#[derive(Debug, Default)]
struct Round {
    pending: HashSet<String>,
    finished: HashSet<String>,
    response_done: bool,
    completed: bool,
}

#[derive(Debug, Default)]
pub struct ToolRounds {
    rounds: HashMap<String, Round>,
    /// call_id → response_id, for every call ever seen (dedupe and routing of outputs).
    calls: HashMap<String, String>,
}

impl ToolRounds {
    pub fn new() -> Self {
        Self::default()
    }

    /// A call was seen. Returns true if it is new (start it now), false for a duplicate sighting.
    pub fn on_call(&mut self, response_id: &str, call_id: &str) -> bool {
        if self.calls.contains_key(call_id) {
            return false;
        }
        self.calls
            .insert(call_id.to_string(), response_id.to_string());
        self.rounds
            .entry(response_id.to_string())
            .or_default()
            .pending
            .insert(call_id.to_string());
        true
    }

    /// Whether a call id is known and still waiting for its output.
    pub fn is_pending(&self, call_id: &str) -> bool {
        self.calls
            .get(call_id)
            .and_then(|r| self.rounds.get(r))
            .is_some_and(|r| r.pending.contains(call_id))
    }

    pub fn pending_count(&self) -> usize {
        self.rounds.values().map(|r| r.pending.len()).sum()
    }

    /// A call's output has been sent upstream. Returns the round's response id if this completed it.
    /// Outputs for unknown or already-finished calls return `None` and change nothing.
    pub fn on_output(&mut self, call_id: &str) -> Option<String> {
        let rid = self.calls.get(call_id)?.clone();
        let round = self.rounds.get_mut(&rid)?;
        if !round.pending.remove(call_id) {
            return None;
        }
        round.finished.insert(call_id.to_string());
        self.check_complete(&rid)
    }

    /// The response finished; its call set is final. Returns the response id if the round is complete
    /// (all outputs already in). Responses without calls are not rounds.
    pub fn on_response_done(&mut self, response_id: &str) -> Option<String> {
        let round = self.rounds.get_mut(response_id)?;
        round.response_done = true;
        self.check_complete(response_id)
    }

    fn check_complete(&mut self, rid: &str) -> Option<String> {
        let round = self.rounds.get_mut(rid)?;
        if round.response_done && round.pending.is_empty() && !round.completed {
            round.completed = true;
            Some(rid.to_string())
        } else {
            None
        }
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
    }

    #[test]
    fn response_without_calls_is_not_a_round() {
        let mut r = ToolRounds::new();
        assert_eq!(r.on_response_done("r9"), None);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Output(usize),
        Done,
        Dup(usize),
    }

    proptest! {
        /// Any interleaving of outputs (in any order), duplicate sightings and the response's end:
        /// exactly one completion, and only after every call has its output.
        #[test]
        fn exactly_one_completion_per_round(n in 1usize..6, order in proptest::collection::vec(0usize..100, 0..30)) {
            let mut r = ToolRounds::new();
            for i in 0..n { let id = format!("c{i}"); prop_assert!(r.on_call("resp", &id)); }
            let mut evs: Vec<Ev> = (0..n).map(Ev::Output).collect();
            evs.push(Ev::Done);
            for (k, x) in order.iter().enumerate() { evs.push(Ev::Dup(x % n)); let len = evs.len(); evs.swap(k % len, x % len); }
            let mut completions = 0;
            let mut outputs = 0;
            let mut done = false;
            for e in evs {
                let c = match e {
                    Ev::Output(i) => { outputs += 1; r.on_output(&format!("c{i}")) }
                    Ev::Done => { done = true; r.on_response_done("resp") }
                    Ev::Dup(i) => { let id = format!("c{i}"); prop_assert!(!r.on_call("resp", &id)); None }
                };
                if c.is_some() {
                    completions += 1;
                    prop_assert!(done && outputs == n);
                }
            }
            prop_assert_eq!(completions, 1);
        }
    }
}
