//! Long calls: the hot-standby rollover before upstream's session cap, and the host-set call limit.
//!
//! Upstream ends a Realtime session after 60 minutes (close 1001, "maximum duration"). Instead of
//! losing the call, or reconnecting after the fact with a gap, the session opens and configures the
//! *next* upstream session ahead of time and switches to it at a natural pause. [`Rollover`] decides
//! when, as an explicit state machine:
//!
//! ```text
//!   Waiting ──age ≥ after──▶ Opening ──configured──▶ Ready ──pause, or force_at──▶ (switched) Waiting
//!      ▲                        │                      │
//!      └──── Backoff ◀──failed──┘◀──────standby lost───┘
//! ```
//!
//! A *natural* switch needs a pause: no response active or asked for, no assistant audio playing or
//! queued, the user neither speaking nor waiting for the answer to what they just said. From
//! `force_at` (the cap minus the margin) the switch no longer waits for the user or the playout, only
//! for a running response to end; from `hard_at` (the cap minus half the margin) it waits for nothing.
//! The loop opens the connection and sends the events; this module only decides. [`CallLimit`] is
//! the host's own bound on the call (`SessionStart.max_duration_secs`): a warning, then the end.

use std::time::Duration;
use tokio::time::Instant;

/// When to roll over, from the sidecar's flags and `SessionStart.rollover_after_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloverPolicy {
    /// Age of an upstream session at which the next one is opened; `None`: never (the cap is met by
    /// a reconnect after upstream closes).
    pub after: Option<Duration>,
    /// Upstream's session cap.
    pub cap: Duration,
    /// The switch is forced at `cap - margin`.
    pub margin: Duration,
}

impl Default for RolloverPolicy {
    fn default() -> Self {
        RolloverPolicy {
            after: Some(Duration::from_secs(55 * 60)),
            cap: Duration::from_secs(60 * 60),
            margin: Duration::from_secs(60),
        }
    }
}

impl RolloverPolicy {
    /// Checks that the standby opens with room left before the forced switch.
    pub fn check(&self) -> Result<(), String> {
        let Some(after) = self.after else {
            return Ok(());
        };
        if self.margin.is_zero() || self.margin >= self.cap {
            return Err(format!(
                "the rollover margin ({} s) must be above 0 and below the upstream session cap ({} s)",
                self.margin.as_secs_f64(),
                self.cap.as_secs_f64()
            ));
        }
        if after.is_zero() || after >= self.cap - self.margin {
            return Err(format!(
                "rollover after {} s leaves no time before the forced switch at {} s \
                 (the upstream cap minus the margin)",
                after.as_secs_f64(),
                (self.cap - self.margin).as_secs_f64()
            ));
        }
        Ok(())
    }
}

/// Where the rollover of the current upstream session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting until the upstream session is old enough to open the next one.
    Waiting { open_at: Instant },
    /// The next session is being opened and configured.
    Opening,
    /// The next session is configured and seeded; the switch waits for a pause.
    Ready,
    /// Opening failed or the standby dropped: try again at `retry_at`.
    Backoff { retry_at: Instant },
    /// Nothing more to do for this upstream session (rollover off, or no time left to open one).
    Off,
}

/// What the conversation looks like right now, for the switch decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// A natural boundary: nothing playing, nothing asked, nobody speaking or waiting.
    pub natural: bool,
    /// A response is running or asked for upstream.
    pub responding: bool,
    /// When the answer may change with no event (the playout ends, a transcript stops being waited
    /// for): the loop looks again then.
    pub recheck: Option<Instant>,
}

/// How a switch happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Natural,
    Forced,
}

impl Switch {
    pub fn outcome(self) -> &'static str {
        match self {
            Switch::Natural => "natural",
            Switch::Forced => "forced",
        }
    }
}

/// Longest wait between two tries at opening the standby.
const MAX_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Rollover {
    policy: RolloverPolicy,
    state: State,
    /// When the current upstream session was opened.
    born: Instant,
    failures: u32,
}

impl Rollover {
    pub fn new(policy: RolloverPolicy, now: Instant) -> Self {
        let mut r = Rollover {
            policy,
            state: State::Off,
            born: now,
            failures: 0,
        };
        r.new_link(now);
        r
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Rollover is on for this call (upstream's cap should never be what ends a session).
    pub fn planned(&self) -> bool {
        self.policy.after.is_some()
    }

    /// How long the current upstream session has run.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.born)
    }

    fn force_at(&self) -> Instant {
        self.born + self.policy.cap.saturating_sub(self.policy.margin)
    }

    fn hard_at(&self) -> Instant {
        self.born + self.policy.cap.saturating_sub(self.policy.margin / 2)
    }

    /// When [`Rollover::on_timer`] or [`Rollover::decide`] has something to do.
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Waiting { open_at } => Some(open_at),
            State::Backoff { retry_at } => Some(retry_at),
            State::Ready if now < self.force_at() => Some(self.force_at()),
            State::Ready if now < self.hard_at() => Some(self.hard_at()),
            State::Ready | State::Opening | State::Off => None,
        }
    }

    /// Whether the standby should be opened now (then the state is `Opening`).
    pub fn on_timer(&mut self, now: Instant) -> bool {
        match self.state {
            State::Waiting { open_at } if open_at <= now => {}
            State::Backoff { retry_at } if retry_at <= now => {}
            _ => return false,
        }
        self.state = State::Opening;
        true
    }

    /// The standby is configured and seeded.
    pub fn opened(&mut self) {
        if self.state == State::Opening {
            self.state = State::Ready;
        }
    }

    /// Opening the standby failed, or the standby dropped before the switch: back off and try again
    /// while there is time before the hard switch point. Returns whether another try is planned.
    pub fn failed(&mut self, now: Instant) -> bool {
        self.failures += 1;
        let wait = Duration::from_secs(1 << self.failures.min(5)).min(MAX_RETRY);
        let retry_at = now + wait;
        if retry_at < self.hard_at() {
            self.state = State::Backoff { retry_at };
            true
        } else {
            self.state = State::Off;
            false
        }
    }

    /// A standby is ready: [`Rollover::decide`] wants to see the conversation.
    pub fn ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether to switch to the standby now.
    pub fn decide(&self, now: Instant, pause: Pause) -> Option<Switch> {
        if self.state != State::Ready {
            return None;
        }
        if pause.natural && now < self.force_at() {
            return Some(Switch::Natural);
        }
        if now >= self.hard_at() || (now >= self.force_at() && !pause.responding) {
            return Some(Switch::Forced);
        }
        None
    }

    /// A new upstream session is in use (the switch, or a reconnect after a drop): its clock starts.
    pub fn new_link(&mut self, now: Instant) {
        self.born = now;
        self.failures = 0;
        self.state = match self.policy.after {
            Some(after) => State::Waiting {
                open_at: now + after,
            },
            None => State::Off,
        };
    }

    /// The upstream link dropped: a standby being opened or held is given up (the reconnect opens
    /// the next session; [`Rollover::new_link`] then starts over).
    pub fn link_lost(&mut self) {
        self.state = State::Off;
    }
}

/// What the host-set call limit asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitStep {
    /// Warn the host (and the caller, with a configured line): the call ends in `remaining`.
    Warn { remaining: Duration },
    /// The limit is reached: end the call.
    End,
}

/// `SessionStart.max_duration_secs`: a warning shortly before, then the end.
#[derive(Debug, Clone, Copy)]
pub struct CallLimit {
    end_at: Instant,
    warn_at: Option<Instant>,
}

impl CallLimit {
    /// A limit of `max` from `start`, with a warning `warn_before` it (`None`: no warning; clamped to
    /// half the limit).
    pub fn new(start: Instant, max: Duration, warn_before: Option<Duration>) -> Self {
        let warn_at = warn_before.map(|w| start + max - w.min(max / 2));
        CallLimit {
            end_at: start + max,
            warn_at,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.warn_at.unwrap_or(self.end_at).min(self.end_at)
    }

    pub fn on_timer(&mut self, now: Instant) -> Option<LimitStep> {
        if now >= self.end_at {
            return Some(LimitStep::End);
        }
        match self.warn_at {
            Some(w) if w <= now => {
                self.warn_at = None;
                Some(LimitStep::Warn {
                    remaining: self.end_at - now,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RolloverPolicy {
        RolloverPolicy {
            after: Some(Duration::from_secs(50)),
            cap: Duration::from_secs(60),
            margin: Duration::from_secs(4),
        }
    }

    const BUSY: Pause = Pause {
        natural: false,
        responding: true,
        recheck: None,
    };
    const USER_TALKING: Pause = Pause {
        natural: false,
        responding: false,
        recheck: None,
    };
    const QUIET: Pause = Pause {
        natural: true,
        responding: false,
        recheck: None,
    };

    #[test]
    fn policy_needs_room_before_the_forced_switch() {
        assert!(RolloverPolicy::default().check().is_ok());
        assert!(policy().check().is_ok());
        let mut p = policy();
        p.after = Some(Duration::from_secs(56));
        assert!(p.check().unwrap_err().contains("forced switch at 56"));
        p.after = Some(Duration::from_secs(10));
        p.margin = Duration::from_secs(60);
        assert!(p.check().is_err());
        p.after = None;
        assert!(p.check().is_ok(), "no margin to check when rollover is off");
    }

    #[test]
    fn opens_at_the_age_then_switches_at_the_first_pause() {
        let t0 = Instant::now();
        let mut r = Rollover::new(policy(), t0);
        assert_eq!(r.deadline(t0), Some(t0 + Duration::from_secs(50)));
        assert!(!r.on_timer(t0 + Duration::from_secs(49)));
        let t = t0 + Duration::from_secs(50);
        assert!(r.on_timer(t));
        assert_eq!(r.state(), State::Opening);
        assert_eq!(r.decide(t, QUIET), None, "nothing to switch to yet");
        r.opened();
        assert_eq!(r.decide(t, BUSY), None);
        assert_eq!(r.decide(t, USER_TALKING), None);
        assert_eq!(r.decide(t, QUIET), Some(Switch::Natural));
        let t = t + Duration::from_secs(1);
        r.new_link(t);
        assert_eq!(r.age(t), Duration::ZERO);
        assert_eq!(
            r.state(),
            State::Waiting {
                open_at: t + Duration::from_secs(50)
            }
        );
    }

    #[test]
    fn forced_at_the_margin_and_regardless_at_half_of_it() {
        let t0 = Instant::now();
        let mut r = Rollover::new(policy(), t0);
        assert!(r.on_timer(t0 + Duration::from_secs(50)));
        r.opened();
        let force = t0 + Duration::from_secs(56);
        assert_eq!(r.deadline(t0 + Duration::from_secs(51)), Some(force));
        assert_eq!(r.decide(force, USER_TALKING), Some(Switch::Forced));
        assert_eq!(
            r.decide(force, BUSY),
            None,
            "a running response may still end"
        );
        assert_eq!(r.deadline(force), Some(t0 + Duration::from_secs(58)));
        assert_eq!(
            r.decide(t0 + Duration::from_secs(58), BUSY),
            Some(Switch::Forced)
        );
        // Past the forced point a pause is still a forced switch (it is counted as such).
        assert_eq!(r.decide(force, QUIET), Some(Switch::Forced));
    }

    #[test]
    fn failures_back_off_until_there_is_no_time_left() {
        let t0 = Instant::now();
        let mut r = Rollover::new(policy(), t0);
        let t = t0 + Duration::from_secs(50);
        assert!(r.on_timer(t));
        assert!(r.failed(t));
        assert_eq!(
            r.state(),
            State::Backoff {
                retry_at: t + Duration::from_secs(2)
            }
        );
        assert!(!r.on_timer(t + Duration::from_secs(1)));
        assert!(r.on_timer(t + Duration::from_secs(2)));
        assert!(
            r.failed(t + Duration::from_secs(2)),
            "retry at 56 s, before the hard point"
        );
        assert!(r.on_timer(t + Duration::from_secs(6)));
        // 8 s more would pass the hard switch point (58 s): no further try for this session.
        assert!(!r.failed(t + Duration::from_secs(6)));
        assert_eq!(r.state(), State::Off);
        assert_eq!(r.deadline(t + Duration::from_secs(6)), None);
        // A reconnect after upstream's close starts a fresh clock.
        r.new_link(t0 + Duration::from_secs(60));
        assert!(matches!(r.state(), State::Waiting { .. }));
    }

    #[test]
    fn off_without_an_age_and_after_a_drop() {
        let t0 = Instant::now();
        let mut p = policy();
        p.after = None;
        let mut r = Rollover::new(p, t0);
        assert_eq!(r.deadline(t0), None);
        assert!(!r.on_timer(t0 + Duration::from_secs(59)));
        let mut r = Rollover::new(policy(), t0);
        assert!(r.on_timer(t0 + Duration::from_secs(50)));
        r.link_lost();
        r.opened();
        assert_eq!(r.decide(t0 + Duration::from_secs(57), QUIET), None);
    }

    #[test]
    fn call_limit_warns_once_then_ends() {
        let t0 = Instant::now();
        let mut l = CallLimit::new(t0, Duration::from_secs(100), Some(Duration::from_secs(30)));
        assert_eq!(l.deadline(), t0 + Duration::from_secs(70));
        assert_eq!(l.on_timer(t0 + Duration::from_secs(69)), None);
        assert_eq!(
            l.on_timer(t0 + Duration::from_secs(70)),
            Some(LimitStep::Warn {
                remaining: Duration::from_secs(30)
            })
        );
        assert_eq!(l.deadline(), t0 + Duration::from_secs(100));
        assert_eq!(l.on_timer(t0 + Duration::from_secs(80)), None);
        assert_eq!(
            l.on_timer(t0 + Duration::from_secs(100)),
            Some(LimitStep::End)
        );
        // The warning is at most half the limit; none at all when not asked for.
        let l = CallLimit::new(t0, Duration::from_secs(10), Some(Duration::from_secs(30)));
        assert_eq!(l.deadline(), t0 + Duration::from_secs(5));
        let l = CallLimit::new(t0, Duration::from_secs(10), None);
        assert_eq!(l.deadline(), t0 + Duration::from_secs(10));
    }
}
