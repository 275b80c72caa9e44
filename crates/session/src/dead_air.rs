//! Dead air: spans in which the user waits and hears nothing from the assistant.
//!
//! A span opens when the user's turn ends (`after_user`) or when a tool call starts with nothing
//! audible (`tool_call`, opening when the last audible audio ends), and closes at the next assistant
//! audio the host receives (or when the user speaks again). Closed spans feed
//! `voice_silence_seconds{phase}`; an open `tool_call` span past the threshold fires the silence guard
//! once.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    AfterUser,
    ToolCall,
}

impl Phase {
    /// Every phase (the `voice_silence_seconds{phase}` values).
    pub const ALL: [Phase; 2] = [Phase::AfterUser, Phase::ToolCall];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::AfterUser => "after_user",
            Phase::ToolCall => "tool_call",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: Instant,
    phase: Phase,
    guard_fired: bool,
}

#[derive(Debug, Default)]
pub struct DeadAir {
    span: Option<Span>,
}

/// A finished span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Closed {
    pub phase: Phase,
    pub duration: Duration,
}

impl DeadAir {
    pub fn new() -> Self {
        Self::default()
    }

    /// The user's turn ended at `at`.
    pub fn user_turn_ended(&mut self, at: Instant) {
        if self.span.is_none() {
            self.span = Some(Span {
                start: at,
                phase: Phase::AfterUser,
                guard_fired: false,
            });
        }
    }

    /// A tool call started; `silent_from` is when audible assistant audio ends (or now). An open
    /// `after_user` span is closed and returned: from here on the wait is the tool's.
    pub fn tool_started(&mut self, now: Instant, silent_from: Instant) -> Option<Closed> {
        match self.span {
            Some(s) if s.phase == Phase::ToolCall => None,
            other => {
                self.span = Some(Span {
                    start: silent_from.max(now),
                    phase: Phase::ToolCall,
                    guard_fired: false,
                });
                other.map(|s| Closed {
                    phase: s.phase,
                    duration: now.saturating_duration_since(s.start),
                })
            }
        }
    }

    /// Assistant audio reached the host (or the user spoke): closes the span if it has begun.
    pub fn audio_released(&mut self, now: Instant) -> Option<Closed> {
        let s = self.span?;
        if now < s.start {
            // Audio still playing from before the span: the span never began, but audio keeps coming.
            self.span = None;
            return None;
        }
        self.span = None;
        Some(Closed {
            phase: s.phase,
            duration: now - s.start,
        })
    }

    /// When the guard should fire for the open tool span, if it has not fired yet.
    pub fn guard_deadline(&self, threshold: Duration) -> Option<Instant> {
        match self.span {
            Some(s) if s.phase == Phase::ToolCall && !s.guard_fired => Some(s.start + threshold),
            _ => None,
        }
    }

    /// Marks the guard as fired for this span (once per wait).
    pub fn guard_fired(&mut self) {
        if let Some(s) = self.span.as_mut() {
            s.guard_fired = true;
        }
    }

    pub fn is_open(&self) -> bool {
        self.span.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_user_span_closes_on_audio() {
        let t = Instant::now();
        let mut d = DeadAir::new();
        d.user_turn_ended(t);
        let c = d.audio_released(t + Duration::from_millis(700)).unwrap();
        assert_eq!(
            c,
            Closed {
                phase: Phase::AfterUser,
                duration: Duration::from_millis(700)
            }
        );
        assert!(d.audio_released(t + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn tool_span_starts_when_preamble_audio_ends_and_guard_fires_once() {
        let t = Instant::now();
        let mut d = DeadAir::new();
        d.user_turn_ended(t);
        let closed = d
            .tool_started(
                t + Duration::from_millis(300),
                t + Duration::from_millis(1300),
            )
            .unwrap();
        assert_eq!(closed.phase, Phase::AfterUser);
        let th = Duration::from_millis(1500);
        assert_eq!(d.guard_deadline(th), Some(t + Duration::from_millis(2800)));
        d.guard_fired();
        assert_eq!(d.guard_deadline(th), None);
        let c = d.audio_released(t + Duration::from_millis(3000)).unwrap();
        assert_eq!(c.phase, Phase::ToolCall);
        assert_eq!(c.duration, Duration::from_millis(1700));
    }
}
