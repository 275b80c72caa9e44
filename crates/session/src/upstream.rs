//! The upstream connection's lifecycle: how a connection is made ([`Connect`]), how one is opened and
//! configured within the setup timeout ([`open`]), and what happens after it drops ([`Reconnect`], an
//! explicit state machine with jittered exponential backoff, after linkerd2-proxy's `reconnect`).
//!
//! The session loop owns the socket and the attempt in progress; this module only decides. While the
//! link is down or backing off the loop goes on serving the host, tool results, timers and shutdown:
//! nothing here sleeps.

use crate::error::{Code, HostError};
use futures_util::future::BoxFuture;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::fmt::Debug;
use std::time::Duration;
use tokio::time::Instant;
use tracing::debug;
use voice_realtime::{ClientEvent, ConnectOptions, RealtimeConnection, RealtimeError, ServerEvent};

/// Makes upstream connections: the WebSocket client in production, in-memory peers in tests.
pub trait Connect: Debug + Send + Sync {
    fn connect(
        &self,
        opts: ConnectOptions,
    ) -> BoxFuture<'static, Result<RealtimeConnection, RealtimeError>>;
}

/// Connects over WebSocket (the Realtime API, a proxy, the simulator).
#[derive(Debug, Clone, Copy, Default)]
pub struct WebSocketConnector;

impl Connect for WebSocketConnector {
    fn connect(
        &self,
        opts: ConnectOptions,
    ) -> BoxFuture<'static, Result<RealtimeConnection, RealtimeError>> {
        Box::pin(async move { RealtimeConnection::connect(&opts).await })
    }
}

/// Opens and configures one upstream session: connect, `session.update`, wait for `session.updated`,
/// all within `setup_timeout` (an upstream that accepts the socket but never confirms the session is
/// given up). Every attempt, first or reconnect, goes through here.
pub async fn open(
    connector: &dyn Connect,
    opts: ConnectOptions,
    session: serde_json::Value,
    setup_timeout: Duration,
) -> Result<RealtimeConnection, HostError> {
    let t0 = Instant::now();
    let attempt = async {
        let mut conn = connector
            .connect(opts)
            .await
            .map_err(|e| HostError::new(Code::UpstreamConnect, e.to_string(), e.is_retryable()))?;
        conn.send(&ClientEvent::SessionUpdate { session })
            .await
            .map_err(|e| HostError::new(Code::UpstreamConnect, e.to_string(), true))?;
        loop {
            match conn.recv().await {
                Ok(ServerEvent::SessionUpdated { .. }) => return Ok(conn),
                Ok(ServerEvent::Error { error }) => {
                    return Err(HostError::new(
                        Code::UpstreamRejectedSession,
                        format!("{}: {}", error.code.unwrap_or(error.kind), error.message),
                        false,
                    ))
                }
                Ok(other) => debug!(event = other.kind(), "event before session.updated"),
                Err(e) => {
                    return Err(HostError::new(
                        Code::UpstreamConnect,
                        e.to_string(),
                        e.is_retryable(),
                    ))
                }
            }
        }
    };
    let conn = tokio::time::timeout(setup_timeout, attempt)
        .await
        .map_err(|_| {
            HostError::new(
                Code::UpstreamTimeout,
                format!("upstream session setup took longer than {setup_timeout:?}"),
                true,
            )
        })??;
    metrics::histogram!(voice_telemetry::UPSTREAM_CONNECT).record(t0.elapsed().as_secs_f64());
    Ok(conn)
}

/// Exponential backoff with jitter: attempt `n` (from 0) waits a uniformly random time in
/// `[d/2, d]` where `d = min(max, base * 2^n)` ("equal jitter": never zero, never in lockstep with the
/// other sessions that lost the same upstream).
#[derive(Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    rng: SmallRng,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            base,
            max,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The ceiling of attempt `n`'s delay.
    pub fn ceiling(&self, n: u32) -> Duration {
        self.base
            .saturating_mul(2u32.saturating_pow(n.min(16)))
            .min(self.max)
    }

    pub fn delay(&mut self, n: u32) -> Duration {
        let d = self.ceiling(n);
        let half = d / 2;
        half + half.mul_f64(self.rng.random::<f64>())
    }
}

/// Reconnect policy: outages per session, attempts per outage, backoff.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_outages: u32,
    pub attempts_per_outage: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_outages: 3,
            attempts_per_outage: 3,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Where the upstream link is.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Connected and configured.
    Up,
    /// Lost; the next attempt (`attempt`, from 0) starts at `until`.
    BackingOff { attempt: u32, until: Instant },
    /// An attempt is in progress (its future lives in the session loop).
    Connecting { attempt: u32 },
    /// Given up: the session ends.
    GaveUp,
}

/// What the loop should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Wait until then, then call [`Reconnect::start_attempt`].
    Wait(Instant),
    /// End the session; the string says why.
    GiveUp(String),
}

#[derive(Debug)]
pub struct Reconnect {
    state: State,
    policy: Policy,
    backoff: Backoff,
    outages: u32,
    down_since: Option<Instant>,
}

impl Reconnect {
    pub fn new(policy: Policy, seed: u64) -> Self {
        Reconnect {
            state: State::Up,
            backoff: Backoff::new(policy.backoff_base, policy.backoff_max, seed),
            policy,
            outages: 0,
            down_since: None,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Outages so far (each one a reconnect).
    pub fn outages(&self) -> u32 {
        self.outages
    }

    /// The link dropped (`retryable`: whether the error is worth a reconnect).
    pub fn lost(&mut self, now: Instant, retryable: bool) -> Next {
        if !retryable {
            self.state = State::GaveUp;
            return Next::GiveUp("the upstream failed with an error that is not retryable".into());
        }
        if self.outages >= self.policy.max_outages {
            self.state = State::GaveUp;
            return Next::GiveUp(format!(
                "the upstream dropped {} times; not reconnecting again",
                self.outages + 1
            ));
        }
        self.outages += 1;
        self.down_since = Some(now);
        self.back_off(0, now)
    }

    fn back_off(&mut self, attempt: u32, now: Instant) -> Next {
        let until = now + self.backoff.delay(attempt);
        self.state = State::BackingOff { attempt, until };
        Next::Wait(until)
    }

    /// When the backoff ends, if backing off.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::BackingOff { until, .. } => Some(until),
            _ => None,
        }
    }

    /// If the backoff is over at `now`, moves to `Connecting` and returns the attempt number: the
    /// loop starts an [`open`].
    pub fn start_attempt(&mut self, now: Instant) -> Option<u32> {
        match self.state {
            State::BackingOff { attempt, until } if until <= now => {
                self.state = State::Connecting { attempt };
                Some(attempt)
            }
            _ => None,
        }
    }

    /// The attempt in progress failed.
    pub fn attempt_failed(&mut self, now: Instant, e: &HostError) -> Next {
        let State::Connecting { attempt } = self.state else {
            return Next::GiveUp("no reconnect attempt was in progress".into());
        };
        if !e.retryable || attempt + 1 >= self.policy.attempts_per_outage {
            self.state = State::GaveUp;
            return Next::GiveUp(format!("reconnect failed: {}", e.message));
        }
        self.back_off(attempt + 1, now)
    }

    /// The attempt in progress succeeded. Returns how long the link was down.
    pub fn connected(&mut self, now: Instant) -> Duration {
        self.state = State::Up;
        self.down_since
            .take()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(retryable: bool) -> HostError {
        HostError::new(Code::UpstreamConnect, "refused", retryable)
    }

    #[test]
    fn backoff_is_exponential_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5), 7);
        for n in 0..10 {
            let ceil = b.ceiling(n);
            assert_eq!(
                ceil,
                (Duration::from_millis(200) * 2u32.pow(n)).min(Duration::from_secs(5))
            );
            let d = b.delay(n);
            assert!(
                d >= ceil / 2 && d <= ceil,
                "attempt {n}: {d:?} not in [{:?}, {ceil:?}]",
                ceil / 2
            );
        }
        // Two sessions with different seeds do not retry in lockstep.
        let mut a = Backoff::new(Duration::from_millis(200), Duration::from_secs(5), 1);
        let mut c = Backoff::new(Duration::from_millis(200), Duration::from_secs(5), 2);
        let da: Vec<_> = (0..4).map(|n| a.delay(n)).collect();
        let dc: Vec<_> = (0..4).map(|n| c.delay(n)).collect();
        assert_ne!(da, dc);
    }

    #[test]
    fn an_outage_backs_off_then_connects() {
        let t = Instant::now();
        let mut r = Reconnect::new(Policy::default(), 3);
        let Next::Wait(until) = r.lost(t, true) else {
            panic!("should reconnect")
        };
        assert!(until > t && until <= t + Duration::from_millis(200));
        assert_eq!(r.start_attempt(t), None, "not before the backoff ends");
        assert_eq!(r.start_attempt(until), Some(0));
        assert_eq!(r.state(), &State::Connecting { attempt: 0 });
        let Next::Wait(until2) = r.attempt_failed(until, &err(true)) else {
            panic!("a second attempt")
        };
        assert!(
            until2 - until >= Duration::from_millis(200)
                && until2 - until <= Duration::from_millis(400)
        );
        assert_eq!(r.start_attempt(until2), Some(1));
        assert_eq!(
            r.connected(until2 + Duration::from_millis(50)),
            until2 + Duration::from_millis(50) - t
        );
        assert!(r.is_up());
        assert_eq!(r.outages(), 1);
    }

    #[test]
    fn gives_up_after_the_attempts_of_an_outage_or_a_fatal_error() {
        let t = Instant::now();
        let mut r = Reconnect::new(Policy::default(), 3);
        r.lost(t, true);
        for attempt in 0..3 {
            let due = r.deadline().unwrap();
            assert_eq!(r.start_attempt(due), Some(attempt));
            let next = r.attempt_failed(due, &err(true));
            if attempt < 2 {
                assert!(matches!(next, Next::Wait(_)));
            } else {
                assert!(matches!(next, Next::GiveUp(_)), "{next:?}");
            }
        }
        assert_eq!(r.state(), &State::GaveUp);

        let mut r = Reconnect::new(Policy::default(), 3);
        r.lost(t, true);
        r.start_attempt(r.deadline().unwrap());
        assert!(matches!(r.attempt_failed(t, &err(false)), Next::GiveUp(_)));
        let mut r = Reconnect::new(Policy::default(), 3);
        assert!(matches!(r.lost(t, false), Next::GiveUp(_)));
    }

    #[test]
    fn at_most_max_outages_per_session() {
        let t = Instant::now();
        let mut r = Reconnect::new(Policy::default(), 3);
        for _ in 0..3 {
            assert!(matches!(r.lost(t, true), Next::Wait(_)));
            r.start_attempt(r.deadline().unwrap());
            r.connected(t);
        }
        assert!(matches!(r.lost(t, true), Next::GiveUp(_)));
    }
}

/// Whether the upstream can be reached, as the sessions see it: consecutive failures to open an
/// upstream session (connect errors and setup timeouts — not a refused configuration, which is the
/// host's doing) past a threshold make it unreachable; the next success makes it reachable again.
/// The sidecar turns this into its readiness (gRPC health of `voice.v1.VoiceSidecar`), never its
/// liveness.
#[derive(Debug)]
pub struct Reachability {
    threshold: u32,
    failures: std::sync::atomic::AtomicU32,
    reachable: tokio::sync::watch::Sender<bool>,
}

impl Reachability {
    pub fn new(threshold: u32) -> Self {
        Reachability {
            threshold: threshold.max(1),
            failures: std::sync::atomic::AtomicU32::new(0),
            reachable: tokio::sync::watch::Sender::new(true),
        }
    }

    /// Records how an attempt to open an upstream session went.
    pub fn record(&self, result: Result<(), &HostError>) {
        use std::sync::atomic::Ordering::Relaxed;
        match result {
            Ok(()) => {
                self.failures.store(0, Relaxed);
                self.reachable
                    .send_if_modified(|r| !std::mem::replace(r, true));
            }
            Err(e) if matches!(e.code, Code::UpstreamConnect | Code::UpstreamTimeout) => {
                let n = self.failures.fetch_add(1, Relaxed).saturating_add(1);
                if n >= self.threshold {
                    self.reachable
                        .send_if_modified(|r| std::mem::replace(r, false));
                }
            }
            Err(_) => {}
        }
    }

    pub fn is_reachable(&self) -> bool {
        *self.reachable.borrow()
    }

    /// Changes of reachability.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.reachable.subscribe()
    }
}

#[cfg(test)]
mod reachability_tests {
    use super::*;

    #[test]
    fn unreachable_after_the_threshold_reachable_after_one_success() {
        let r = Reachability::new(3);
        let connect = HostError::new(Code::UpstreamConnect, "refused", true);
        let rejected = HostError::new(Code::UpstreamRejectedSession, "bad voice", false);
        r.record(Err(&connect));
        r.record(Err(&connect));
        r.record(Err(&rejected));
        assert!(
            r.is_reachable(),
            "two network failures and a host error: still reachable"
        );
        r.record(Err(&connect));
        assert!(!r.is_reachable());
        r.record(Ok(()));
        assert!(r.is_reachable());
        r.record(Err(&connect));
        assert!(r.is_reachable(), "the count starts over after a success");
    }
}
