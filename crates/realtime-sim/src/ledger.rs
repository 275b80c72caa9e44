//! The tool ledger (opt-in, `SimConfig::tool_ledger`): every function call the simulator issued, and
//! what became of it, across sessions. A soak test reads it to prove that no tool result was lost:
//! each call must get exactly one `function_call_output` on the session that issued it, or, when
//! that session was dropped with the call still open, reach a later session as carried context (a
//! client-created `function_call_output` of the same `call_id`, or a user message that quotes the
//! call id, which is how a client reports a result that came in while it was reconnecting).

use serde::Serialize;
use std::collections::HashMap;
use tokio::time::Instant;

/// How an issuing session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// The simulator dropped the socket (fault injection).
    FaultDrop,
    /// The client closed (or vanished), the session cap or a shutdown ended it.
    Other,
}

#[derive(Debug)]
struct Call {
    session: String,
    issued: Instant,
    live_outputs: u32,
    carried: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    calls: HashMap<String, Call>,
    closed: HashMap<String, (Instant, ClosedBy)>,
}

/// A call that got no output anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unanswered {
    pub call_id: String,
    pub session_id: String,
    /// How long the issuing session stayed open after issuing the call (up to the summary, if it
    /// is still open).
    pub open_after_ms: u64,
    /// How the issuing session ended; `None` while it is still open.
    pub closed_by: Option<ClosedBy>,
}

/// The ledger's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LedgerSummary {
    pub issued: u64,
    /// Calls with exactly one output on the issuing session.
    pub answered_live: u64,
    /// Calls with no output on the issuing session that reached a later session as context.
    pub carried: u64,
    /// Calls with more than one output on the issuing session (each one is a bug).
    pub duplicated: u64,
    pub unanswered: Vec<Unanswered>,
}

impl Ledger {
    pub fn issued(&mut self, call_id: &str, session: &str, now: Instant) {
        self.calls.insert(
            call_id.to_owned(),
            Call {
                session: session.to_owned(),
                issued: now,
                live_outputs: 0,
                carried: false,
            },
        );
    }

    /// A `function_call_output` for `call_id` arrived on `session`.
    pub fn output(&mut self, call_id: &str, session: &str) {
        if let Some(c) = self.calls.get_mut(call_id) {
            if c.session == session {
                c.live_outputs += 1;
            } else {
                c.carried = true;
            }
        }
    }

    /// Text a client put into the conversation: any call id of ours it quotes was reported.
    pub fn text(&mut self, text: &str) {
        let mut rest = text;
        while let Some(i) = rest.find("call_sim") {
            let tail = &rest[i..];
            let end = tail
                .char_indices()
                .skip("call_sim".len())
                .find(|(_, ch)| !ch.is_ascii_hexdigit())
                .map_or(tail.len(), |(b, _)| b);
            if let Some(c) = self.calls.get_mut(&tail[..end]) {
                c.carried = true;
            }
            rest = &tail[end.max(1)..];
        }
    }

    pub fn closed(&mut self, session: &str, now: Instant, by: ClosedBy) {
        self.closed.insert(session.to_owned(), (now, by));
    }

    pub fn summary(&self, now: Instant) -> LedgerSummary {
        let mut s = LedgerSummary {
            issued: self.calls.len() as u64,
            ..LedgerSummary::default()
        };
        for (id, c) in &self.calls {
            match c.live_outputs {
                1 => s.answered_live += 1,
                0 if c.carried => s.carried += 1,
                0 => {
                    let closed = self.closed.get(&c.session);
                    let until = closed.map_or(now, |(t, _)| *t);
                    s.unanswered.push(Unanswered {
                        call_id: id.clone(),
                        session_id: c.session.clone(),
                        open_after_ms: until.saturating_duration_since(c.issued).as_millis() as u64,
                        closed_by: closed.map(|(_, by)| *by),
                    });
                }
                _ => s.duplicated += 1,
            }
        }
        s.unanswered.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn outputs_are_live_on_the_issuing_session_and_carried_elsewhere() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        for id in [
            "call_sim01",
            "call_sim02",
            "call_sim03",
            "call_sim04",
            "call_sim05",
        ] {
            l.issued(id, "s1", t0);
        }
        l.output("call_sim01", "s1");
        l.output("call_sim02", "s1");
        l.output("call_sim02", "s1");
        l.output("call_sim03", "s2");
        l.output("call_unknown", "s1");
        l.text("Result of the earlier lookup tool call: {\"call_id\":\"call_sim04\"} and call_sim");
        l.closed("s1", t0 + Duration::from_millis(1500), ClosedBy::FaultDrop);
        let s = l.summary(t0 + Duration::from_secs(9));
        assert_eq!(
            (s.issued, s.answered_live, s.duplicated, s.carried),
            (5, 1, 1, 2)
        );
        assert_eq!(
            s.unanswered,
            [Unanswered {
                call_id: "call_sim05".into(),
                session_id: "s1".into(),
                open_after_ms: 1500,
                closed_by: Some(ClosedBy::FaultDrop),
            }]
        );
    }
}
