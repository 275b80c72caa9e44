//! Pacers: the few tasks that send every session's 20 ms audio frames.
//!
//! Why not a timer per session: with one `tokio::time::interval` per session, every frame costs a
//! timer expiration and a session-task wake-up (50 000 of each per second at 1000 sessions), and
//! the load generator shares the machine with the system under test. There is one pacer per HTTP/2
//! connection (by default one per 100 sessions); it owns the *send* side of that connection's
//! sessions (frame index, `seq`, send counters) and sends their frames from one timer, so the cost
//! per frame drops to a channel push. Because a pacer's sessions share a connection, the frames it
//! sends for one slot can leave in one socket write, which saves far more (see `crate::shards`).
//!
//! What stays the same for the sidecar: each session still gets one frame per 20 ms on its own
//! stream, and frames are not sent in one burst for everybody. Every session has a fixed *phase*
//! inside the 20 ms period (see [`phase`]): the period is cut into [`SLOTS`] slots of 1 ms, a pacer's
//! sessions are dealt round-robin over the slots, and the pacers themselves are staggered inside a
//! slot, so at 1000 sessions (10 pacers) a slot of 5 frames leaves every 100 µs, about 50 frames
//! per millisecond, as with independent callers. (2 ms slots of 10 frames cost the generator a
//! little less but made arrivals burstier: the sidecar's in-direction p99 at 100 sessions went from
//! ~130 to ~270 µs; 1 ms is the compromise.)
//!
//! What stays the same in the report: a pacer that runs late (starved of CPU) sends every missed
//! frame, one per missed 20 ms deadline, and records each frame's lateness (`now - deadline`), like
//! `MissedTickBehavior::Burst` did per session. The report only shows the distribution over all
//! frames, so each pacer keeps one lateness histogram for all its sessions (returned by its task);
//! one per session would cost a cache miss per frame. A full stream drops the frame
//! (`frames_skipped`, a real-time source does not queue); a closed stream ends sending for that
//! session.
//!
//! Hand-over: the session task still does setup, reads inbound messages and ends the session. It
//! [`Handle::join`]s its pacer after `SessionStarted` and gets a oneshot that delivers its
//! [`SendStats`] once the pacer has stopped sending for it: at stop, when its stream was closed, or
//! after [`Handle::leave`]. Because the session waits for that hand-over before it sends
//! `Control.end`, no audio frame can follow the end request.

use crate::session::{Hist, Plan};
use crate::shards::Shards;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;

/// One audio frame per session per period.
pub const PERIOD: Duration = Duration::from_millis(20);
/// Phase slots per period (each `PERIOD / SLOTS` = 1 ms wide).
pub const SLOTS: usize = 20;
const SLOT: Duration = Duration::from_nanos(PERIOD.as_nanos() as u64 / SLOTS as u64);

/// Which pacer sends for session `idx`: round-robin, the same mapping as the connections, so pacer
/// `p` serves exactly the sessions of connection `p`.
pub fn pacer_of(idx: usize, pacers: usize) -> usize {
    idx % pacers
}

/// The phase slot of session `idx` inside its pacer: its pacer's sessions (`idx`, `idx + pacers`,
/// ...) are dealt round-robin over the slots so that each slot holds about the same number.
pub fn slot_of(idx: usize, pacers: usize) -> usize {
    (idx / pacers) % SLOTS
}

/// Session `idx`'s send phase inside the 20 ms period: its slot, plus its pacer's stagger inside the
/// slot (pacer `p` of `n` starts `p/n` of a slot later), so no two pacers fire at the same instant.
pub fn phase(idx: usize, pacers: usize) -> Duration {
    let stagger = SLOT.as_nanos() as u64 * pacer_of(idx, pacers) as u64 / pacers as u64;
    SLOT * slot_of(idx, pacers) as u32 + Duration::from_nanos(stagger)
}

/// The first deadline on the grid `base + phase + k * PERIOD` (k >= 0) that is not before `now`.
pub fn first_deadline(base: Instant, phase: Duration, now: Instant) -> Instant {
    let first = base + phase;
    if now <= first {
        return first;
    }
    let period = PERIOD.as_nanos();
    let k = (now - first).as_nanos().div_ceil(period);
    first + Duration::from_nanos((k * period) as u64)
}

/// When the last speech frame of a turn was sent, shared lock-free between the pacer (which sets it)
/// and the session task (which consumes it when the first assistant audio frame arrives, for the
/// client-observed turn latency). Nanoseconds after `base`, plus one; 0 = none pending.
pub struct SpeechEnd {
    base: Instant,
    at: AtomicU64,
}

impl SpeechEnd {
    pub fn new(base: Instant) -> Self {
        SpeechEnd {
            base,
            at: AtomicU64::new(0),
        }
    }

    /// Records `t` (replacing a pending, unconsumed one, as before).
    pub fn mark(&self, t: Instant) {
        let ns = t.saturating_duration_since(self.base).as_nanos() as u64;
        self.at.store(ns + 1, Ordering::Relaxed);
    }

    /// Takes the pending time, if any.
    pub fn take(&self) -> Option<Instant> {
        // Cheap load first: this runs for every received audio frame, almost always with nothing pending.
        if self.at.load(Ordering::Relaxed) == 0 {
            return None;
        }
        match self.at.swap(0, Ordering::Relaxed) {
            0 => None,
            v => Some(self.base + Duration::from_nanos(v - 1)),
        }
    }
}

/// The send-side part of one session's statistics, handed back to the session task.
#[derive(Debug, Default)]
pub struct SendStats {
    pub frames_sent: u64,
    pub frames_skipped: u64,
    pub turns_spoken: u64,
    /// The session's stream was closed while sending (the pacer stopped sending for it).
    pub closed: bool,
}

enum Cmd {
    Join(Member),
    Leave(usize),
}

/// A session's way to its pacer. Cheap to clone; the pacer runs until every handle is dropped.
#[derive(Clone)]
pub struct Handle {
    cmds: mpsc::UnboundedSender<Cmd>,
    pacers: usize,
    base: Instant,
}

impl Handle {
    /// The clock base for [`SpeechEnd`] values shared with this pacer.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// Starts sending session `idx`'s frames on `tx` from its next phase deadline on. The returned
    /// oneshot delivers the session's send counters once the pacer no longer sends for it.
    pub fn join(
        &self,
        idx: usize,
        tx: mpsc::Sender<pb::ClientMessage>,
        speech_end: Arc<SpeechEnd>,
    ) -> oneshot::Receiver<SendStats> {
        let (handover, rx) = oneshot::channel();
        let m = Member {
            idx,
            phase: phase(idx, self.pacers),
            tx,
            speech_end,
            // Sessions start their cycle at slightly different points so turns do not line up perfectly.
            i: (idx as u64 * 7) % 10,
            seq: 1,
            from: self.base,
            stats: SendStats::default(),
            handover,
        };
        // If the pacer is gone, the member (and its oneshot sender) is dropped: the receiver errors.
        let _ = self.cmds.send(Cmd::Join(m));
        rx
    }

    /// Stops sending for session `idx` (it ended on its own); its counters arrive on the oneshot.
    pub fn leave(&self, idx: usize) {
        let _ = self.cmds.send(Cmd::Leave(idx));
    }
}

/// Spawns `pacers` pacer tasks, pacer `p` on shard `p` (like connection `p`); session `idx` must use
/// `handles[pacer_of(idx, pacers)]`. Each task returns the lateness of every frame it sent (how late
/// each frame left relative to its 20 ms deadline: generator health).
pub fn spawn(
    pacers: usize,
    plan: &Arc<Plan>,
    stop: &watch::Receiver<bool>,
    shards: &Shards,
) -> (Vec<Handle>, Vec<tokio::task::JoinHandle<Hist>>) {
    let base = Instant::now();
    let mut handles = Vec::with_capacity(pacers);
    let mut tasks = Vec::with_capacity(pacers);
    for p in 0..pacers {
        let (cmds, rx) = mpsc::unbounded_channel();
        handles.push(Handle { cmds, pacers, base });
        tasks.push(shards.spawn(p, run(base, plan.clone(), rx, stop.clone())));
    }
    (handles, tasks)
}

/// Send state of one session, owned by its pacer.
struct Member {
    idx: usize,
    /// Its send phase inside the period ([`phase`]).
    phase: Duration,
    tx: mpsc::Sender<pb::ClientMessage>,
    speech_end: Arc<SpeechEnd>,
    /// Next frame of the speech/silence cycle.
    i: u64,
    seq: u64,
    /// First deadline this session sends at (deadlines of its slot before it joined are not its own).
    from: Instant,
    stats: SendStats,
    handover: oneshot::Sender<SendStats>,
}

impl Member {
    /// Sends the frame due at `deadline`, recording how late it is in `late`.
    fn send(&mut self, plan: &Plan, deadline: Instant, late: &mut Hist) {
        late.record(Instant::now().saturating_duration_since(deadline));
        let (data, last_speech) = plan.frames.frame(self.i);
        self.i += 1;
        let f = pb::ClientMessage {
            message: Some(In::Audio(pb::AudioFrame {
                data: data.to_vec(),
                seq: self.seq,
                ..Default::default()
            })),
        };
        self.seq += 1;
        match self.tx.try_send(f) {
            Ok(()) => {
                self.stats.frames_sent += 1;
                if last_speech {
                    self.stats.turns_spoken += 1;
                    self.speech_end.mark(Instant::now());
                }
            }
            // The stream is not draining: a real-time source drops rather than queues.
            Err(mpsc::error::TrySendError::Full(_)) => self.stats.frames_skipped += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => self.stats.closed = true,
        }
    }

    /// Hands the counters back; dropping `self` also drops the pacer's clone of the stream sender.
    fn finish(self) {
        let _ = self.handover.send(self.stats);
    }
}

/// The sessions sharing one phase slot, and the slot's next deadline (only meaningful while it has
/// members; all of them share the slot's deadline grid).
struct Slot {
    phase: Duration,
    next: Instant,
    members: Vec<Member>,
}

impl Slot {
    /// Sends every member's frames due by `now`: one per 20 ms deadline passed, so a late pacer
    /// catches up with a burst (and the lateness of each frame shows in the histogram).
    fn send_due(&mut self, plan: &Plan, now: Instant, late: &mut Hist) {
        if self.members.is_empty() {
            return;
        }
        let mut closed = false;
        while self.next <= now {
            let d = self.next;
            for m in self
                .members
                .iter_mut()
                .filter(|m| !m.stats.closed && d >= m.from)
            {
                m.send(plan, d, late);
                closed |= m.stats.closed;
            }
            self.next += PERIOD;
        }
        if closed {
            let mut j = 0;
            while j < self.members.len() {
                if self.members[j].stats.closed {
                    self.members.swap_remove(j).finish();
                } else {
                    j += 1;
                }
            }
        }
    }
}

async fn run(
    base: Instant,
    plan: Arc<Plan>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    mut stop: watch::Receiver<bool>,
) -> Hist {
    let mut late = Hist::default();
    let mut slots: Vec<Slot> = Vec::with_capacity(SLOTS);
    let sleep = tokio::time::sleep_until(base);
    tokio::pin!(sleep);
    loop {
        // The earliest deadline of any occupied slot.
        let next = slots
            .iter()
            .filter(|s| !s.members.is_empty())
            .map(|s| s.next)
            .min();
        if let Some(n) = next {
            // Re-arm only when needed (a fired `Sleep` stays ready, so re-arm it after every firing).
            if sleep.deadline() != n || sleep.is_elapsed() {
                sleep.as_mut().reset(n);
            }
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            () = &mut sleep, if next.is_some() => {
                let now = Instant::now();
                for s in &mut slots {
                    s.send_due(&plan, now, &mut late);
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Join(mut m)) => {
                    // A pacer's sessions share its stagger, so they fall into at most SLOTS phases;
                    // a slot is created when the first session with its phase joins.
                    let ph = m.phase;
                    let now = Instant::now();
                    m.from = first_deadline(base, ph, now);
                    let slot = match slots.iter_mut().position(|s| s.phase == ph) {
                        Some(k) => &mut slots[k],
                        None => {
                            slots.push(Slot { phase: ph, next: m.from, members: Vec::new() });
                            slots.last_mut().expect("just pushed")
                        }
                    };
                    if slot.members.is_empty() {
                        slot.next = m.from;
                    }
                    slot.members.push(m);
                }
                Some(Cmd::Leave(idx)) => {
                    for s in &mut slots {
                        if let Some(j) = s.members.iter().position(|m| m.idx == idx) {
                            s.members.swap_remove(j).finish();
                            break;
                        }
                    }
                }
                // Every session (and `main`) dropped its handle: nothing left to pace.
                None => return late,
            }
        }
    }
    // Stopped: no more frames. Hand every session its counters so it can end its stream; sessions
    // still in setup that join now get empty counters at once.
    for s in slots {
        s.members.into_iter().for_each(Member::finish);
    }
    while let Some(cmd) = cmds.recv().await {
        if let Cmd::Join(m) = cmd {
            m.finish();
        }
    }
    late
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_balanced_per_pacer() {
        let pacers = 10;
        let mut count = vec![[0usize; SLOTS]; pacers];
        for idx in 0..1000 {
            count[pacer_of(idx, pacers)][slot_of(idx, pacers)] += 1;
        }
        assert!(count.iter().flatten().all(|&c| c == 5), "{count:?}");
    }

    #[test]
    fn phases_spread_over_the_period() {
        let pacers = 10;
        let mut phases: Vec<Duration> = (0..1000).map(|i| phase(i, pacers)).collect();
        assert!(phases.iter().all(|p| *p < PERIOD));
        phases.sort();
        phases.dedup();
        // 20 slots x 10 pacer staggers = 200 distinct phases, 100 µs apart.
        assert_eq!(phases.len(), 200);
        for w in phases.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_micros(100));
        }
        // One pacer: no stagger, plain 1 ms slots.
        assert_eq!(phase(0, 1), Duration::ZERO);
        assert_eq!(phase(3, 1), Duration::from_millis(3));
        assert_eq!(phase(23, 1), Duration::from_millis(3));
    }

    #[test]
    fn first_deadline_is_the_next_grid_point() {
        let base = Instant::now();
        let ph = Duration::from_millis(6);
        let ms = Duration::from_millis;
        assert_eq!(first_deadline(base, ph, base), base + ms(6));
        assert_eq!(first_deadline(base, ph, base + ms(6)), base + ms(6));
        assert_eq!(
            first_deadline(base, ph, base + ms(6) + Duration::from_nanos(1)),
            base + ms(26)
        );
        assert_eq!(first_deadline(base, ph, base + ms(25)), base + ms(26));
        assert_eq!(first_deadline(base, ph, base + ms(1006)), base + ms(1006));
        assert_eq!(first_deadline(base, ph, base + ms(1007)), base + ms(1026));
    }

    #[test]
    fn speech_end_is_taken_once() {
        let base = Instant::now();
        let s = SpeechEnd::new(base);
        assert_eq!(s.take(), None);
        s.mark(base);
        assert_eq!(s.take(), Some(base));
        assert_eq!(s.take(), None);
        let t = base + Duration::from_millis(1500);
        s.mark(base + Duration::from_millis(700));
        s.mark(t);
        assert_eq!(s.take(), Some(t));
    }
}
