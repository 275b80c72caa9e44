//! The assistant's output items, response by response. A GPT Realtime 2 response can hold several
//! assistant messages — a preamble ("Let me pull that up"), function calls, then more speech — so
//! transcripts, barge-in and latency work per item:
//! - each message's **phase**: upstream's `phase` when it sends one (`commentary` / `final_answer`),
//!   else a message followed by a function call in the same response is a preamble, any other an
//!   answer. A message's final transcript is held until its phase is known (the next function call,
//!   or the response's end);
//! - which messages the caller **heard** (some of their audio reached the host): on barge-in, the
//!   ones of the interrupted response that were never heard are deleted from the conversation;
//! - **preamble → answer** time: from the first audio of a preamble to the first audio of the next
//!   answer.
//!
//! Pure and bounded: the last few responses are kept.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;
use voice_proto::v1 as pb;

/// Responses remembered (older ones can no longer be interrupted or need phases).
const MAX_RESPONSES: usize = 8;
/// Items per response kept (a runaway response cannot grow the list).
const MAX_ITEMS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Preamble,
    Answer,
}

impl Phase {
    pub fn to_pb(self) -> pb::Phase {
        match self {
            Phase::Preamble => pb::Phase::Preamble,
            Phase::Answer => pb::Phase::Answer,
        }
    }

    fn from_upstream(p: &str) -> Option<Phase> {
        match p {
            "commentary" => Some(Phase::Preamble),
            "final_answer" => Some(Phase::Answer),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Message {
    id: String,
    phase: Option<Phase>,
    /// A final transcript waiting for the phase.
    held: Option<String>,
    first_audio: Option<Instant>,
    heard: bool,
}

#[derive(Debug)]
enum Out {
    Message(Message),
    Call,
}

#[derive(Debug)]
struct Response {
    id: String,
    items: Vec<Out>,
    /// Out of band (`conversation: "none"`, e.g. a holding line): its items are not in the
    /// conversation, so they are never truncated or deleted there.
    out_of_band: bool,
}

/// A final assistant transcript, ready for the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Final {
    pub item_id: String,
    pub text: String,
    pub phase: Phase,
}

#[derive(Debug, Default)]
pub struct AssistantItems {
    responses: VecDeque<Response>,
    /// First audio of the latest preamble not yet followed by an answer.
    preamble_audio: Option<Instant>,
    /// Preamble → answer times measured, for the caller to record.
    measured: Vec<Duration>,
}

impl AssistantItems {
    pub fn new() -> Self {
        Self::default()
    }

    fn response(&mut self, rid: &str) -> &mut Response {
        if let Some(i) = self.responses.iter().position(|r| r.id == rid) {
            return &mut self.responses[i];
        }
        if self.responses.len() >= MAX_RESPONSES {
            self.responses.pop_front();
        }
        self.responses.push_back(Response {
            id: rid.to_string(),
            items: Vec::new(),
            out_of_band: false,
        });
        self.responses.back_mut().expect("just pushed")
    }

    fn message_mut(&mut self, item_id: &str) -> Option<&mut Message> {
        self.responses.iter_mut().rev().find_map(|r| {
            r.items.iter_mut().find_map(|i| match i {
                Out::Message(m) if m.id == item_id => Some(m),
                _ => None,
            })
        })
    }

    /// The response runs out of band (its items are not in the default conversation).
    pub fn mark_out_of_band(&mut self, rid: &str) {
        self.response(rid).out_of_band = true;
    }

    /// Whether the item belongs to an out-of-band response.
    pub fn is_out_of_band(&self, item_id: &str) -> bool {
        self.responses.iter().any(|r| {
            r.out_of_band
                && r.items
                    .iter()
                    .any(|i| matches!(i, Out::Message(m) if m.id == item_id))
        })
    }

    /// An assistant message was added to a response.
    pub fn message_added(&mut self, rid: &str, item_id: &str, phase: Option<&str>) {
        let r = self.response(rid);
        if r.items.len() < MAX_ITEMS {
            r.items.push(Out::Message(Message {
                id: item_id.to_string(),
                phase: phase.and_then(Phase::from_upstream),
                held: None,
                first_audio: None,
                heard: false,
            }));
        }
    }

    /// A function call was added to a response: every message before it without an upstream phase
    /// is a preamble. Returns the finals this releases.
    pub fn call_added(&mut self, rid: &str) -> Vec<Final> {
        let r = self.response(rid);
        if r.items.len() < MAX_ITEMS {
            r.items.push(Out::Call);
        }
        let mut decided = Vec::new();
        for i in &mut r.items {
            if let Out::Message(m) = i {
                if m.phase.is_none() {
                    m.phase = Some(Phase::Preamble);
                    decided.push(m.id.clone());
                }
            }
        }
        self.release(rid, &decided)
    }

    /// A message's final transcript: released now if its phase is known, else held.
    pub fn transcript_done(&mut self, rid: &str, item_id: &str, text: String) -> Option<Final> {
        if self.message_mut(item_id).is_none() {
            // Never announced (an upstream that skips output_item.added): an answer in its response.
            self.message_added(rid, item_id, None);
        }
        let m = self.message_mut(item_id)?;
        match m.phase {
            Some(phase) => Some(Final {
                item_id: item_id.to_string(),
                text,
                phase,
            }),
            None => {
                m.held = Some(text);
                None
            }
        }
    }

    /// The response ended: messages still without a phase are answers. Returns the finals released.
    pub fn response_done(&mut self, rid: &str) -> Vec<Final> {
        let Some(r) = self.responses.iter_mut().find(|r| r.id == rid) else {
            return Vec::new();
        };
        let mut decided = Vec::new();
        for i in &mut r.items {
            if let Out::Message(m) = i {
                if m.phase.is_none() {
                    m.phase = Some(Phase::Answer);
                    decided.push(m.id.clone());
                }
            }
        }
        let mut finals = self.release(rid, &decided);
        // Held finals of messages whose phase came from upstream but were held anyway: none; and
        // answers decided here measure preamble → answer.
        finals.retain(|f| !f.text.is_empty());
        finals
    }

    fn release(&mut self, rid: &str, decided: &[String]) -> Vec<Final> {
        let mut out = Vec::new();
        let Some(r) = self.responses.iter_mut().find(|r| r.id == rid) else {
            return out;
        };
        for i in &mut r.items {
            let Out::Message(m) = i else { continue };
            if !decided.contains(&m.id) {
                continue;
            }
            if let (Some(phase), Some(at)) = (m.phase, m.first_audio) {
                note_phase_audio(&mut self.preamble_audio, &mut self.measured, phase, at);
            }
            if let (Some(text), Some(phase)) = (m.held.take(), m.phase) {
                out.push(Final {
                    item_id: m.id.clone(),
                    text,
                    phase,
                });
            }
        }
        out
    }

    /// Audio of `item_id` reached the host (the caller hears it).
    pub fn heard(&mut self, item_id: &str, now: Instant) {
        let (mut pa, mut measured) = (self.preamble_audio, std::mem::take(&mut self.measured));
        if let Some(m) = self.message_mut(item_id) {
            m.heard = true;
            if m.first_audio.is_none() {
                m.first_audio = Some(now);
                if let Some(phase) = m.phase {
                    note_phase_audio(&mut pa, &mut measured, phase, now);
                }
            }
        }
        self.preamble_audio = pa;
        self.measured = measured;
    }

    /// Preamble → answer times measured since the last call.
    pub fn take_measured(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.measured)
    }

    /// The phase of a message, once known.
    pub fn phase(&self, item_id: &str) -> Option<Phase> {
        self.responses.iter().rev().find_map(|r| {
            r.items.iter().find_map(|i| match i {
                Out::Message(m) if m.id == item_id => m.phase,
                _ => None,
            })
        })
    }

    /// Barge-in: the messages of these responses the caller never heard (other than `current`, which
    /// is truncated instead). They are forgotten here; the caller deletes them upstream.
    pub fn unheard(&mut self, rids: &[&str], current: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        for r in self
            .responses
            .iter_mut()
            .filter(|r| !r.out_of_band && rids.contains(&r.id.as_str()))
        {
            r.items.retain(|i| match i {
                Out::Message(m) if !m.heard && Some(m.id.as_str()) != current => {
                    out.push(m.id.clone());
                    false
                }
                _ => true,
            });
        }
        out
    }
}

fn note_phase_audio(
    preamble_audio: &mut Option<Instant>,
    measured: &mut Vec<Duration>,
    phase: Phase,
    at: Instant,
) {
    match phase {
        Phase::Preamble => {
            if preamble_audio.is_none() {
                *preamble_audio = Some(at);
            }
        }
        Phase::Answer => {
            if let Some(p) = preamble_audio.take() {
                if at >= p {
                    measured.push(at - p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn a_message_before_a_call_is_a_preamble_the_rest_answers() {
        let mut a = AssistantItems::new();
        a.message_added("r1", "m1", None);
        assert_eq!(
            a.transcript_done("r1", "m1", "Let me check.".into()),
            None,
            "held"
        );
        let f = a.call_added("r1");
        assert_eq!(
            f,
            [Final {
                item_id: "m1".into(),
                text: "Let me check.".into(),
                phase: Phase::Preamble
            }]
        );
        assert!(a.response_done("r1").is_empty());
        // The next response answers.
        a.message_added("r2", "m2", None);
        assert_eq!(
            a.transcript_done("r2", "m2", "You have a dentist.".into()),
            None
        );
        let f = a.response_done("r2");
        assert_eq!(f[0].phase, Phase::Answer);
        assert_eq!(a.phase("m1"), Some(Phase::Preamble));
        // Two messages without calls: both answers.
        a.message_added("r3", "m3", None);
        a.message_added("r3", "m4", None);
        a.transcript_done("r3", "m3", "One.".into());
        a.transcript_done("r3", "m4", "Two.".into());
        let f = a.response_done("r3");
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|f| f.phase == Phase::Answer));
    }

    #[test]
    fn upstream_phase_wins_and_releases_at_once() {
        let mut a = AssistantItems::new();
        a.message_added("r1", "m1", Some("commentary"));
        let f = a.transcript_done("r1", "m1", "One moment.".into()).unwrap();
        assert_eq!(f.phase, Phase::Preamble);
        a.message_added("r1", "m2", Some("final_answer"));
        assert_eq!(
            a.transcript_done("r1", "m2", "Done.".into()).unwrap().phase,
            Phase::Answer
        );
        assert!(a.call_added("r1").is_empty());
    }

    #[test]
    fn unheard_messages_of_the_interrupted_response_are_listed_once() {
        let mut a = AssistantItems::new();
        let t = Instant::now();
        a.message_added("r1", "pre", None);
        a.message_added("r1", "ans", None);
        a.message_added("r1", "more", None);
        a.heard("pre", t);
        a.heard("ans", t + ms(500));
        // Barge-in while "ans" plays: "more" was never heard; "ans" is truncated, not deleted.
        assert_eq!(a.unheard(&["r1"], Some("ans")), ["more"]);
        assert!(a.unheard(&["r1"], Some("ans")).is_empty());
        assert!(a.unheard(&["other"], None).is_empty());
    }

    #[test]
    fn preamble_to_answer_is_measured_from_first_audio_to_first_audio() {
        let mut a = AssistantItems::new();
        let t = Instant::now();
        a.message_added("r1", "pre", None);
        a.heard("pre", t);
        a.heard("pre", t + ms(300));
        a.call_added("r1");
        a.response_done("r1");
        assert!(a.take_measured().is_empty());
        a.message_added("r2", "ans", None);
        a.heard("ans", t + ms(1800));
        a.transcript_done("r2", "ans", "Here it is.".into());
        a.response_done("r2");
        assert_eq!(a.take_measured(), [ms(1800)]);
        assert!(a.take_measured().is_empty());
    }

    #[test]
    fn out_of_band_items_are_never_deleted_or_truncated() {
        let mut a = AssistantItems::new();
        a.message_added("hold", "h1", None);
        a.message_added("hold", "h2", None);
        a.mark_out_of_band("hold");
        assert!(a.is_out_of_band("h1"));
        assert!(!a.is_out_of_band("other"));
        assert!(a.unheard(&["hold"], Some("h1")).is_empty());
    }

    #[test]
    fn bounded() {
        let mut a = AssistantItems::new();
        for r in 0..100 {
            for i in 0..100 {
                a.message_added(&format!("r{r}"), &format!("m{r}.{i}"), None);
            }
        }
        assert!(a.responses.len() <= MAX_RESPONSES);
        assert!(a.responses.iter().all(|r| r.items.len() <= MAX_ITEMS));
    }
}
