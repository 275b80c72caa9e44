//! The conversation's side of its transcription leg: each leg event becomes a host message (a
//! `Transcript{source: SHADOW}` or a typed `Error`), a record line, and — for the audio the leg sent
//! — cost against the session's budget at the leg model's per-minute price.

use super::{Conversation, End};
use crate::transcription::leg::LegEvent;
use metrics::counter;
use serde_json::json;
use tokio::time::Instant;
use voice_proto::v1::server_message::Message as Out;
use voice_telemetry as names;

impl Conversation {
    pub fn on_shadow(&mut self, ev: LegEvent, now: Instant) -> Result<(), End> {
        match ev {
            LegEvent::Transcript(t) => {
                if t.r#final {
                    self.records.record(
                        "transcript",
                        json!({"role": "user", "source": "shadow", "item_id": t.item_id,
                            "text": t.text, "audio_start_ms": t.audio_start_ms,
                            "audio_end_ms": t.audio_end_ms}),
                        now,
                    );
                }
                self.out.host(Out::Transcript(t));
                Ok(())
            }
            LegEvent::Error(e) => {
                self.out.host_error(e);
                Ok(())
            }
            LegEvent::RolledOver(m) => {
                self.records.record(
                    "rollover",
                    json!({"leg": m.leg, "forced": m.forced, "upstream_age_ms": m.upstream_age_ms,
                        "replayed_audio_ms": m.replayed_audio_ms}),
                    now,
                );
                self.out.host(Out::RolledOver(m));
                Ok(())
            }
            LegEvent::Billed(d) => {
                // Whole seconds as they accumulate (a counter of seconds, fed in parts).
                let before = self.shadow_billed.as_secs();
                self.shadow_billed += d;
                counter!(names::SHADOW_AUDIO).increment(self.shadow_billed.as_secs() - before);
                let Some(price) = self.plan.shadow.as_ref().and_then(|l| l.price_per_minute) else {
                    return Ok(());
                };
                let cost = price * d.as_secs_f64() / 60.0;
                counter!(names::COST).increment((cost * 1_000_000.0).round() as u64);
                match self.budget.add_usd(cost) {
                    Some(e) => self.over_budget(&e),
                    None => Ok(()),
                }
            }
        }
    }
}
