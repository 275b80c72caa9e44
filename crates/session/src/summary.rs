//! The session's own figures, returned to the host in `SessionEnded.summary`.

use std::time::Duration;
use voice_proto::v1 as pb;
use voice_realtime::Usage;

#[derive(Debug, Default)]
pub struct Summary {
    pub turns: u32,
    pub responses: u32,
    latencies_ms: Vec<u32>,
    pub dead_air: Duration,
    pub tool_calls: u32,
    pub interruptions: u32,
    pub usage: Usage,
    pub rollovers: u32,
}

impl Summary {
    pub fn voice_to_voice(&mut self, latency: Duration) -> u32 {
        let ms = u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
        // Bounded: a session holds at most this many samples (a turn every second for 18 hours).
        if self.latencies_ms.len() < 65_536 {
            self.latencies_ms.push(ms);
        }
        ms
    }

    pub fn to_pb(&self, duration: Duration, cost_usd: f64) -> pb::SessionSummary {
        let lat = &self.latencies_ms;
        pb::SessionSummary {
            turns: self.turns,
            responses: self.responses,
            mean_voice_to_voice_ms: if lat.is_empty() {
                0
            } else {
                (lat.iter().map(|&x| u64::from(x)).sum::<u64>() / lat.len() as u64) as u32
            },
            max_voice_to_voice_ms: lat.iter().copied().max().unwrap_or(0),
            dead_air_ms: millis(self.dead_air),
            tool_calls: self.tool_calls,
            interruptions: self.interruptions,
            usage: Some(usage_pb(&self.usage)),
            duration_ms: millis(duration),
            cost_usd,
            rollovers: self.rollovers,
        }
    }
}

pub fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

pub fn usage_pb(u: &Usage) -> pb::Usage {
    pb::Usage {
        total_tokens: u.total_tokens,
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        input_text_tokens: u.input_text_tokens,
        input_audio_tokens: u.input_audio_tokens,
        input_cached_tokens: u.input_cached_tokens,
        output_text_tokens: u.output_text_tokens,
        output_audio_tokens: u.output_audio_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_max_voice_to_voice() {
        let mut s = Summary::default();
        assert_eq!(s.to_pb(Duration::ZERO, 0.0).mean_voice_to_voice_ms, 0);
        assert_eq!(s.voice_to_voice(Duration::from_millis(300)), 300);
        s.voice_to_voice(Duration::from_millis(500));
        s.voice_to_voice(Duration::from_millis(700));
        s.dead_air = Duration::from_millis(1234);
        let p = s.to_pb(Duration::from_secs(5), 0.5);
        assert_eq!(p.mean_voice_to_voice_ms, 500);
        assert_eq!(p.max_voice_to_voice_ms, 700);
        assert_eq!(p.dead_air_ms, 1234);
        assert_eq!(p.duration_ms, 5000);
        assert_eq!(p.cost_usd, 0.5);
    }
}
