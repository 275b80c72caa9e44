//! Assistant audio on its way to the host: optional real-time pacing, and the played position of each
//! item, which barge-in needs to truncate the model's memory at what the caller actually heard.
//!
//! With pacing, frames are released on a real-time clock with a small lead, so "released minus lead"
//! is what has been played and the host needs no jitter buffer. Without pacing, frames go out as fast
//! as they come and the played position comes from the host's last `PlaybackMark` advanced by the wall
//! clock since it, or, failing marks, from the wall clock since the item's first frame (capped at what
//! was sent either way).

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;
use voice_proto::v1 as pb;

#[derive(Debug)]
pub struct QueuedFrame {
    pub frame: pb::AudioFrame,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
struct ItemPlay {
    item_id: String,
    /// When the first frame of the item was released to the host.
    first_release: Instant,
    /// Audio of the item released so far.
    released: Duration,
    /// Last `PlaybackMark` from the host, if any, and when it arrived.
    marked: Option<(Duration, Instant)>,
}

#[derive(Debug)]
pub struct Playout {
    lead: Option<Duration>,
    queue: VecDeque<QueuedFrame>,
    /// Real-time position of the end of released audio (pacing clock).
    clock: Option<Instant>,
    current: Option<ItemPlay>,
    /// When released audio stops being audible at the host (assuming real-time playback).
    audible_until: Option<Instant>,
    /// Gaps inside one item: the host ran out of audio mid-utterance (upstream slower than real time).
    underrun: Duration,
}

impl Playout {
    pub fn new(lead: Option<Duration>) -> Self {
        Playout {
            lead,
            queue: VecDeque::new(),
            clock: None,
            current: None,
            audible_until: None,
            underrun: Duration::ZERO,
        }
    }

    pub fn paced(&self) -> bool {
        self.lead.is_some()
    }

    /// Adds a frame; with pacing it waits in the queue, without it is returned for immediate release.
    pub fn push(&mut self, frame: QueuedFrame, now: Instant) -> Option<QueuedFrame> {
        if self.lead.is_some() {
            self.queue.push_back(frame);
            None
        } else {
            self.note_release(&frame, now);
            Some(frame)
        }
    }

    /// Frames due for release at `now` (pacing only).
    pub fn due(&mut self, now: Instant, out: &mut Vec<QueuedFrame>) {
        let Some(lead) = self.lead else { return };
        while let Some(f) = self.queue.front() {
            let clock = match self.clock {
                Some(c) if c > now => c,
                _ => now,
            };
            if clock > now + lead {
                break;
            }
            let d = f.duration;
            let Some(f) = self.queue.pop_front() else {
                break;
            };
            self.clock = Some(clock + d);
            self.note_release(&f, now);
            out.push(f);
        }
    }

    /// When the next paced frame becomes due, if any are queued.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let lead = self.lead?;
        self.queue.front()?;
        Some(match self.clock {
            Some(c) if c > now + lead => c - lead,
            _ => now,
        })
    }

    fn note_release(&mut self, f: &QueuedFrame, now: Instant) {
        let same = self
            .current
            .as_ref()
            .is_some_and(|c| c.item_id == f.frame.item_id);
        if !same {
            self.current = Some(ItemPlay {
                item_id: f.frame.item_id.clone(),
                first_release: now,
                released: Duration::ZERO,
                marked: None,
            });
        }
        if let Some(c) = self.current.as_mut() {
            c.released += f.duration;
        }
        let start = match self.audible_until {
            Some(a) if a > now => a,
            Some(a) if same => {
                self.underrun += now - a;
                now
            }
            _ => now,
        };
        self.audible_until = Some(start + f.duration);
    }

    /// Underrun time accumulated since the last call.
    pub fn take_underrun(&mut self) -> Duration {
        std::mem::take(&mut self.underrun)
    }

    /// The host reports how much of an item it has played (at `now`).
    pub fn mark(&mut self, item_id: &str, played: Duration, now: Instant) {
        if let Some(c) = self.current.as_mut() {
            if c.item_id == item_id {
                c.marked = Some((played, now));
            }
        }
    }

    /// Whether assistant audio is still playing at the host at `now`.
    pub fn is_audible(&self, now: Instant) -> bool {
        !self.queue.is_empty() || self.audible_until.is_some_and(|a| a > now)
    }

    pub fn audible_until(&self) -> Option<Instant> {
        self.audible_until
    }

    /// The item being played and how much of it the caller has heard.
    pub fn played(&self, now: Instant) -> Option<(String, Duration)> {
        let c = self.current.as_ref()?;
        // Audio still ahead of the host's playback is not played yet. This is exact even when the
        // item had a gap (upstream slower than real time) or started behind the previous item's
        // tail, where the time since its first frame overstates what was heard.
        let ahead = self
            .audible_until
            .map_or(Duration::ZERO, |a| a.saturating_duration_since(now));
        let by_clock = now
            .saturating_duration_since(c.first_release)
            .min(c.released.saturating_sub(ahead));
        let played = match (self.lead, c.marked) {
            // Playback goes on after the mark: advance it by the time since, but a host cannot have
            // played more than it was sent.
            (None, Some((m, at))) => (m + now.saturating_duration_since(at)).min(c.released),
            _ => by_clock,
        };
        Some((c.item_id.clone(), played))
    }

    /// Every item the playout still knows: the one being played and those with frames queued.
    pub fn item_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.current.iter().map(|c| c.item_id.clone()).collect();
        for f in &self.queue {
            if !ids.contains(&f.frame.item_id) {
                ids.push(f.frame.item_id.clone());
            }
        }
        ids
    }

    /// Barge-in: forget queued audio and the audible horizon.
    pub fn flush(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        self.clock = None;
        self.audible_until = None;
        self.current = None;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(item: &str, ms: u64) -> QueuedFrame {
        QueuedFrame {
            frame: pb::AudioFrame {
                item_id: item.into(),
                ..Default::default()
            },
            duration: Duration::from_millis(ms),
        }
    }

    #[test]
    fn played_position_excludes_a_gap_inside_the_item() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Playout::new(None);
        // 200 ms of audio at once, then 100 ms more only after a 100 ms underrun (at 300 ms).
        for _ in 0..10 {
            p.push(frame("i", 20), t0);
        }
        for _ in 0..5 {
            p.push(frame("i", 20), t0 + ms(300));
        }
        // At 390 ms: 200 ms + 90 ms heard; 300 ms released; wall clock since the first frame 390 ms.
        let (item, played) = p.played(t0 + ms(390)).unwrap();
        assert_eq!(item, "i");
        assert_eq!(played, ms(290));
        assert!(p.is_audible(t0 + ms(390)));
        // A second item released while the first still plays starts after it.
        p.push(frame("j", 20), t0 + ms(390));
        assert_eq!(p.played(t0 + ms(395)).unwrap(), ("j".to_string(), ms(0)));
        assert_eq!(p.played(t0 + ms(415)).unwrap(), ("j".to_string(), ms(15)));
    }

    #[test]
    fn item_ids_lists_the_playing_item_and_the_queued_ones_once_each() {
        let t0 = Instant::now();
        let mut p = Playout::new(Some(Duration::from_millis(20)));
        assert!(p.item_ids().is_empty());
        for item in ["a", "a", "b", "b", "c"] {
            p.push(frame(item, 20), t0);
        }
        let mut out = Vec::new();
        p.due(t0, &mut out);
        assert_eq!(out.len(), 2, "both frames of a are out (20 ms lead)");
        assert_eq!(p.item_ids(), ["a", "b", "c"]);
        p.flush();
        assert!(p.item_ids().is_empty());
    }

    #[test]
    fn pacing_releases_in_real_time_with_lead() {
        let t0 = Instant::now();
        let mut p = Playout::new(Some(Duration::from_millis(100)));
        for _ in 0..50 {
            assert!(p.push(frame("i", 20), t0).is_none());
        }
        let mut out = Vec::new();
        p.due(t0, &mut out);
        // Lead of 100 ms: frames covering [0, 120) ms may be out at t0 (the one starting at 100 ms too).
        assert_eq!(out.len(), 6);
        // The session's timer calls `due` as frames come due.
        let mut t = 0;
        while t < 500 {
            t += 5;
            p.due(t0 + Duration::from_millis(t), &mut out);
        }
        assert_eq!(
            out.len(),
            31,
            "by 500 ms, frames starting up to 600 ms are released"
        );
        assert_eq!(
            p.next_due(t0 + Duration::from_millis(500)),
            Some(t0 + Duration::from_millis(520))
        );
        let (item, played) = p.played(t0 + Duration::from_millis(500)).unwrap();
        assert_eq!(item, "i");
        assert_eq!(played, Duration::from_millis(500));
        assert!(p.is_audible(t0 + Duration::from_millis(500)));
    }

    #[test]
    fn unpaced_uses_marks() {
        let t0 = Instant::now();
        let mut p = Playout::new(None);
        for _ in 0..10 {
            assert!(p.push(frame("i", 20), t0).is_some());
        }
        // A mark at 50 ms says 60 ms were played; 30 ms later, 90 ms are.
        p.mark(
            "i",
            Duration::from_millis(60),
            t0 + Duration::from_millis(50),
        );
        assert_eq!(
            p.played(t0 + Duration::from_millis(80)).unwrap().1,
            Duration::from_millis(90)
        );
        assert_eq!(
            p.played(t0 + Duration::from_secs(1)).unwrap().1,
            Duration::from_millis(200),
            "never beyond the audio delivered"
        );
        p.mark("i", Duration::from_millis(9000), t0);
        assert_eq!(
            p.played(t0).unwrap().1,
            Duration::from_millis(200),
            "capped at what was sent"
        );
        assert_eq!(p.flush(), 0);
        assert!(p.played(t0).is_none());
    }
}
