//! Property test of the tool-round rules against a model of the upstream server, with both directions
//! of the socket as queues so messages cross in flight: server VAD may start responses at any moment,
//! tool results arrive in any order, the user barges in mid-call (cancelling a response), and creates
//! collide with server-started responses. Whatever the interleaving:
//! - every call gets exactly one output;
//! - calls may spread over several responses (server VAD starts responses with calls while earlier
//!   calls still run): a round is every call open since the last round, and a create asked for a round
//!   that new calls re-opened is dropped at send time (as `Conversation::pump` does);
//! - every tool round sent gets exactly one accepted `response.create`; after the last output there
//!   is an accepted round create (no output is left unread), and no two accepted round creates come
//!   without an output between them (never two creates for one round);
//! - the client never sends a create while it knows a response is active;
//! - a create rejected by a collision is retried, never lost.

use proptest::prelude::*;
use std::collections::{HashMap, HashSet, VecDeque};
use tokio::time::Instant;
use voice_session::rounds::ToolRounds;
use voice_session::scheduler::{CreateReason, PendingCreate, Resolution, ResponseScheduler};

#[derive(Debug, Clone)]
enum ToClient {
    /// A response started; the tag echoes the create that asked for it (none for server VAD).
    Created(String, Option<String>),
    /// A response finished, with the call ids it contained.
    Done(String, Vec<String>),
    Rejected(String),
}

#[derive(Debug, Clone)]
enum ToServer {
    Output(String),
    Create(String, CreateReason),
}

#[derive(Default)]
struct Server {
    active: Option<(String, Vec<String>)>,
    next: u32,
    outputs: HashMap<String, u32>,
    accepted_rounds: HashMap<String, u32>,
    /// Every output and accepted round create, in arrival order ("o" / "r").
    log: Vec<char>,
    to_client: VecDeque<ToClient>,
}

impl Server {
    fn start(&mut self, calls: usize, tag: Option<String>) {
        self.next += 1;
        let id = format!("r{}", self.next);
        let calls = (0..calls).map(|i| format!("{id}_c{i}")).collect();
        self.to_client.push_back(ToClient::Created(id.clone(), tag));
        self.active = Some((id, calls));
    }

    fn receive(&mut self, m: ToServer) {
        match m {
            ToServer::Output(c) => {
                *self.outputs.entry(c).or_default() += 1;
                self.log.push('o');
            }
            ToServer::Create(eid, reason) => {
                if self.active.is_some() {
                    self.to_client.push_back(ToClient::Rejected(eid));
                } else {
                    if let CreateReason::ToolRound(r) = reason {
                        *self.accepted_rounds.entry(r).or_default() += 1;
                        self.log.push('r');
                    }
                    self.start(0, Some(eid));
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some((id, calls)) = self.active.take() {
            self.to_client.push_back(ToClient::Done(id, calls));
        }
    }
}

#[derive(Default)]
struct Client {
    sched: ResponseScheduler,
    rounds: ToolRounds,
    running_calls: Vec<String>,
    to_server: VecDeque<ToServer>,
    next_event: u32,
    rounds_seen: HashSet<String>,
}

impl Client {
    fn pump(&mut self) {
        while let Some(c) = self.sched.next_to_send(Instant::now()) {
            if let CreateReason::ToolRound(r) = &c.reason {
                if self.rounds.is_open() {
                    continue; // stale: calls opened since; the round completes again later
                }
                self.rounds_seen.insert(r.clone());
            }
            self.next_event += 1;
            let eid = format!("e{}", self.next_event);
            self.to_server
                .push_back(ToServer::Create(eid.clone(), c.reason.clone()));
            self.sched.sent(eid, c, Instant::now());
            break;
        }
    }

    fn receive(&mut self, m: ToClient) {
        match m {
            ToClient::Created(id, tag) => {
                self.sched.on_created(&id, tag.as_deref(), Instant::now());
            }
            ToClient::Rejected(eid) => assert_eq!(
                self.sched.on_error(
                    Some(&eid),
                    "conversation_already_has_active_response",
                    false,
                    Instant::now()
                ),
                Resolution::Requeued,
                "a rejection for a create we did not send"
            ),
            ToClient::Done(id, calls) => {
                for c in calls {
                    if self.rounds.on_call(&id, &c) {
                        self.running_calls.push(c);
                    }
                }
                self.sched.on_done(&id);
                if let Some(r) = self.rounds.on_response_done(&id) {
                    self.sched
                        .request(PendingCreate::new(CreateReason::ToolRound(r), None));
                }
            }
        }
        self.pump();
    }

    fn finish_call(&mut self, idx: usize) {
        if self.running_calls.is_empty() {
            return;
        }
        let c = self.running_calls.remove(idx % self.running_calls.len());
        self.to_server.push_back(ToServer::Output(c.clone()));
        if let Some(r) = self.rounds.on_output(&c) {
            self.sched
                .request(PendingCreate::new(CreateReason::ToolRound(r), None));
        }
        self.pump();
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Server VAD starts a response with this many tool calls (if none is active).
    VadResponse(usize),
    /// The active response finishes (or is cancelled by a barge-in: same event for the client).
    ServerFinish,
    DeliverToClient,
    DeliverToServer,
    ToolResult(usize),
    /// The user typed something: the client asks for a response.
    UserText,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..4).prop_map(Step::VadResponse),
        Just(Step::ServerFinish),
        Just(Step::DeliverToClient),
        Just(Step::DeliverToServer),
        (0usize..8).prop_map(Step::ToolResult),
        Just(Step::UserText),
    ]
}

/// Plays `steps`, drains, and checks the rules in the header.
fn check(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut s = Server::default();
    let mut c = Client::default();
    for st in steps {
        match st {
            Step::VadResponse(n) => {
                if s.active.is_none() {
                    s.start(n, None);
                }
            }
            Step::ServerFinish => s.finish(),
            Step::DeliverToClient => {
                if let Some(m) = s.to_client.pop_front() {
                    c.receive(m);
                }
            }
            Step::DeliverToServer => {
                if let Some(m) = c.to_server.pop_front() {
                    s.receive(m);
                }
            }
            Step::ToolResult(i) => c.finish_call(i),
            Step::UserText => {
                c.sched
                    .request(PendingCreate::new(CreateReason::UserText, None));
                c.pump();
            }
        }
    }
    // Drain: finish every response, deliver everything, finish every call, until quiet.
    for _ in 0..1000 {
        let quiet = s.to_client.is_empty()
            && c.to_server.is_empty()
            && c.running_calls.is_empty()
            && s.active.is_none()
            && c.sched.queued() == 0
            && !c.sched.is_active();
        if quiet {
            break;
        }
        if let Some(m) = c.to_server.pop_front() {
            s.receive(m);
            continue;
        }
        if let Some(m) = s.to_client.pop_front() {
            c.receive(m);
            continue;
        }
        if !c.running_calls.is_empty() {
            c.finish_call(0);
            continue;
        }
        s.finish();
    }
    prop_assert!(
        s.to_client.is_empty() && c.to_server.is_empty() && c.running_calls.is_empty(),
        "did not drain"
    );
    prop_assert_eq!(c.sched.queued(), 0, "a create was lost in the queue");
    // Every call the server made got exactly one output.
    for (call, n) in &s.outputs {
        prop_assert_eq!(*n, 1, "call {} got {} outputs", call, n);
    }
    prop_assert_eq!(s.outputs.len(), c.rounds.pending_count() + s.outputs.len());
    // A round's create is accepted at most once (a collision re-sends it; a round re-opened by
    // new calls drops it and the next completion asks again).
    for (r, n) in &s.accepted_rounds {
        prop_assert_eq!(*n, 1, "round {} accepted {} times", r, n);
    }
    prop_assert!(s.accepted_rounds.keys().all(|r| c.rounds_seen.contains(r)));
    // No output left unread, and never two round creates for one round.
    if let Some(last_output) = s.log.iter().rposition(|e| *e == 'o') {
        prop_assert!(
            s.log[last_output..].contains(&'r'),
            "outputs after the last round create: {:?}",
            s.log
        );
    }
    let joined: String = s.log.iter().collect();
    prop_assert!(
        !joined.contains("rr"),
        "two round creates without an output between: {}",
        joined
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn rounds_and_creates_hold_under_any_interleaving(steps in proptest::collection::vec(step(), 1..120)) {
        check(steps)?;
    }
}

/// The minimal input CI found (stop 19): round 1's create is in flight when round 2's output is
/// sent, a server-VAD response makes it collide, and the requeued create used to go out in front
/// of round 2's, so both were accepted after the last output.
#[test]
fn a_collided_round_create_and_the_next_round_make_one_create() {
    use Step::*;
    let steps = vec![
        ServerFinish,
        VadResponse(1),
        VadResponse(0),
        VadResponse(0),
        DeliverToClient,
        ServerFinish,
        VadResponse(1),
        ServerFinish,
        VadResponse(0),
        DeliverToClient,
        DeliverToServer,
        ToolResult(0),
        ServerFinish,
        VadResponse(0),
        DeliverToClient,
        DeliverToClient,
        DeliverToClient,
        DeliverToClient,
        DeliverToClient,
        DeliverToClient,
        DeliverToClient,
        ToolResult(0),
    ];
    check(steps).unwrap();
}
