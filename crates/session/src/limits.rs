//! Per-session limits on what a peer can make the session spend: automatic tool rounds per turn,
//! `response.create` and `Control` rates, input audio faster than real time, repeated warnings.
//!
//! Each is a small pure machine on `tokio::time::Instant` (tests run on paused time); the
//! conversation decides what happens when one bites (a typed error, a metric, a dropped frame).

use std::time::Duration;
use tokio::time::Instant;

/// Sidecar-wide settings of the per-session limits (see the README's configuration table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Automatic tool rounds (a `response.create` after tool outputs) between two user inputs.
    pub max_tool_rounds_per_turn: u32,
    /// `response.create` events per minute (token bucket; burst [`CREATE_BURST`] or the rate).
    pub response_creates_per_minute: u32,
    /// Host `Control` messages per second (token bucket; burst twice the rate).
    pub controls_per_second: u32,
    /// Input audio accepted ahead of real time.
    pub audio_burst: Duration,
}

/// At most this many creates back to back before the per-minute rate applies.
pub const CREATE_BURST: u32 = 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tool_rounds_per_turn: 8,
            response_creates_per_minute: 60,
            controls_per_second: 10,
            audio_burst: Duration::from_secs(2),
        }
    }
}

/// A token bucket: `capacity` tokens, refilled continuously at `per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(capacity: u32, per_sec: f64, now: Instant) -> Self {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            capacity,
            per_sec: per_sec.max(1e-6),
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        self.at = now;
    }

    /// Takes a token if one is there.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        // A hair under one token counts as one: float refill must not leave a "ready" bucket empty
        // (which would make `ready_at` answer "now" forever: a busy loop).
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }

    /// When the next token is there (now if one is).
    pub fn ready_at(&self, now: Instant) -> Instant {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        let tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        if tokens >= 1.0 - 1e-9 {
            now
        } else {
            // Whole milliseconds, rounded up (timers have millisecond resolution): at that moment
            // `take` succeeds.
            let ms = ((1.0 - tokens) / self.per_sec * 1000.0).ceil().max(1.0);
            now + Duration::from_millis(ms as u64)
        }
    }
}

/// What the tool-round cap says about the create of one more automatic round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundVerdict {
    /// Within the cap: an ordinary create.
    Allow,
    /// The first round past the cap: one create that tells the model tools are off for this turn.
    LastWithoutTools,
    /// Past the cap and already told: no create.
    Refuse,
}

/// Automatic tool rounds since the user last spoke or the host last sent text.
#[derive(Debug, Clone)]
pub struct ToolRoundCap {
    cap: u32,
    rounds: u32,
}

impl ToolRoundCap {
    pub fn new(cap: u32) -> Self {
        ToolRoundCap { cap, rounds: 0 }
    }

    /// One more round's create is about to be sent.
    pub fn next_round(&mut self) -> RoundVerdict {
        self.rounds = self.rounds.saturating_add(1);
        match self.rounds.cmp(&self.cap.saturating_add(1)) {
            std::cmp::Ordering::Less => RoundVerdict::Allow,
            std::cmp::Ordering::Equal => RoundVerdict::LastWithoutTools,
            std::cmp::Ordering::Greater => RoundVerdict::Refuse,
        }
    }

    /// The user spoke or the host sent text: a new turn.
    pub fn new_turn(&mut self) {
        self.rounds = 0;
    }

    pub fn capped(&self) -> bool {
        self.rounds > self.cap
    }
}

/// Input audio held to real time plus a burst allowance. Per frame: one subtraction and a compare
/// (no allocation).
#[derive(Debug, Clone)]
pub struct AudioBudget {
    burst_us: i64,
    /// Audio that may still be accepted, µs.
    credit_us: i64,
    at: Instant,
}

impl AudioBudget {
    pub fn new(burst: Duration, now: Instant) -> Self {
        let burst_us = i64::try_from(burst.as_micros()).unwrap_or(i64::MAX);
        AudioBudget {
            burst_us,
            credit_us: burst_us,
            at: now,
        }
    }

    /// Whether `audio` more of input fits; if it does, it is spent.
    #[inline]
    pub fn admit(&mut self, audio: Duration, now: Instant) -> bool {
        let dt =
            i64::try_from(now.saturating_duration_since(self.at).as_micros()).unwrap_or(i64::MAX);
        self.at = now;
        self.credit_us = self.credit_us.saturating_add(dt).min(self.burst_us);
        let need = i64::try_from(audio.as_micros()).unwrap_or(i64::MAX);
        if need <= self.credit_us {
            self.credit_us -= need;
            true
        } else {
            false
        }
    }
}

/// What a [`WarnLimiter`] says about one more warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warn {
    /// Log it; `suppressed` similar warnings were left out since the last one logged.
    Log { suppressed: u64 },
    /// Leave it out (counted).
    Suppress,
}

/// Repeated warnings of one kind from one session: at most `per_window` per `window`, the rest
/// counted and reported with the next one logged (and at the end of the session).
#[derive(Debug, Clone)]
pub struct WarnLimiter {
    per_window: u32,
    window: Duration,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl WarnLimiter {
    /// Five per ten seconds.
    pub fn new() -> Self {
        WarnLimiter::with(5, Duration::from_secs(10))
    }

    pub fn with(per_window: u32, window: Duration) -> Self {
        WarnLimiter {
            per_window,
            window,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    pub fn check(&mut self, now: Instant) -> Warn {
        let fresh = self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.per_window {
            self.in_window += 1;
            Warn::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            metrics::counter!(voice_telemetry::LOG_SUPPRESSED).increment(1);
            Warn::Suppress
        }
    }

    /// Warnings left out and not yet reported (for a summary at the end).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_bucket_is_ready_strictly_later_and_then_gives_a_token() {
        // Rates whose refill time is no whole number of nanoseconds (2 per minute, 3 per 7 s, ...):
        // waiting until `ready_at` must always yield a token, never an answer of "now" while empty
        // (the session loop would spin on it).
        for per_sec in [2.0 / 60.0, 3.0 / 7.0, 1.0 / 3.0, 10.0, 0.123_456] {
            let mut now = Instant::now();
            let mut b = TokenBucket::new(2, per_sec, now);
            for _ in 0..50 {
                while b.take(now) {}
                let at = b.ready_at(now);
                assert!(at > now, "empty bucket said ready now (rate {per_sec})");
                now = at;
                assert!(b.take(now), "no token at ready_at (rate {per_sec})");
            }
        }
    }

    #[test]
    fn the_round_cap_allows_cap_rounds_then_one_without_tools_then_none() {
        let mut c = ToolRoundCap::new(3);
        let v: Vec<_> = (0..6).map(|_| c.next_round()).collect();
        assert_eq!(
            v,
            [
                RoundVerdict::Allow,
                RoundVerdict::Allow,
                RoundVerdict::Allow,
                RoundVerdict::LastWithoutTools,
                RoundVerdict::Refuse,
                RoundVerdict::Refuse
            ]
        );
        assert!(c.capped());
        c.new_turn();
        assert_eq!(c.next_round(), RoundVerdict::Allow);
    }

    #[test]
    fn a_bucket_bursts_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, 1.0, t0);
        assert!(b.take(t0));
        assert!(b.take(t0));
        assert!(!b.take(t0));
        assert_eq!(b.ready_at(t0), t0 + Duration::from_secs(1));
        assert!(b.take(t0 + Duration::from_secs(1)));
        assert!(!b.take(t0 + Duration::from_millis(1500)));
        assert!(b.take(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn audio_is_held_to_real_time_plus_the_burst() {
        let t0 = Instant::now();
        let mut a = AudioBudget::new(Duration::from_secs(2), t0);
        let f = Duration::from_millis(20);
        // 2 s at once is fine, the next frame is not.
        assert!((0..100).all(|_| a.admit(f, t0)));
        assert!(!a.admit(f, t0));
        // Real time goes through indefinitely.
        for i in 1..=1000u64 {
            assert!(a.admit(f, t0 + f * u32::try_from(i).unwrap()));
        }
        // Idle time refills at most the burst.
        let later = t0 + Duration::from_secs(100);
        assert!((0..100).all(|_| a.admit(f, later)));
        assert!(!a.admit(f, later));
    }

    #[test]
    fn warnings_are_limited_per_window_with_a_suppressed_count() {
        let t0 = Instant::now();
        let mut w = WarnLimiter::with(2, Duration::from_secs(10));
        assert_eq!(w.check(t0), Warn::Log { suppressed: 0 });
        assert_eq!(w.check(t0), Warn::Log { suppressed: 0 });
        for _ in 0..20_000 {
            assert_eq!(w.check(t0), Warn::Suppress);
        }
        assert_eq!(
            w.check(t0 + Duration::from_secs(10)),
            Warn::Log { suppressed: 20_000 }
        );
        assert_eq!(w.take_suppressed(), 0);
    }
}
