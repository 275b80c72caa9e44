//! Barge-in: whether the caller's speech interrupts the assistant, and what to do about it — cancel
//! the response (only when one runs and upstream has not cancelled it itself), truncate the item at
//! what the caller actually heard, tell the host to flush. Pure; the session performs the plan.

use std::time::Duration;

/// Speech started: does it interrupt? Yes while assistant audio is audible at the host, or while the
/// response whose audio is arriving still runs (its audio may not have reached the host yet).
pub fn speech_interrupts(
    audible: bool,
    running: Option<&str>,
    audio_response: Option<&str>,
) -> bool {
    audible || running.is_some_and(|r| Some(r) == audio_response)
}

/// What the session knows at the moment of an interruption.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    /// The caller spoke over the assistant (false: the host asked to cancel).
    pub by_user: bool,
    /// The response upstream is running, if any.
    pub running: Option<&'a str>,
    /// Upstream cancels the response itself when the caller speaks (server/semantic VAD with
    /// `interrupt_response`): sending `response.cancel` too would be answered with
    /// `response_cancel_not_active`.
    pub upstream_cancels_on_speech: bool,
    /// Assistant audio is still audible at the host.
    pub audible: bool,
    /// The item being played and how much of it was heard.
    pub played: Option<(&'a str, Duration)>,
    /// How much audio upstream has sent for that item (a truncate may not go past it).
    pub item_audio_sent: Option<Duration>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Send `response.cancel`.
    pub cancel: bool,
    /// `conversation.item.truncate` of this item at this many ms.
    pub truncate: Option<(String, u64)>,
    /// Tell the host to flush (`Interrupted{item_id, played_ms}`).
    pub interrupted: Option<(String, u64)>,
    /// Count it as an interruption (the caller barged in on audible audio).
    pub counts: bool,
}

/// Items that are not the model's (the earcon) are never truncated upstream.
pub const EARCON_ITEM: &str = "earcon";

pub fn plan(s: &Situation<'_>) -> Plan {
    let cancel = s.running.is_some() && !(s.by_user && s.upstream_cancels_on_speech);
    let heard = match (s.audible, s.played) {
        (true, Some((item, played))) => {
            // Never past what the model produced for the item: an encoder that pads its last frame
            // (Opus) gives the host slightly more audio than upstream sent.
            let played = s.item_audio_sent.map_or(played, |sent| played.min(sent));
            Some((item.to_string(), played.as_millis() as u64))
        }
        _ => None,
    };
    let truncate = heard
        .as_ref()
        .filter(|(item, _)| !item.is_empty() && item != EARCON_ITEM)
        .cloned();
    Plan {
        cancel,
        truncate,
        counts: s.by_user && heard.is_some(),
        interrupted: heard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    fn base() -> Situation<'static> {
        Situation {
            by_user: true,
            running: Some("r1"),
            upstream_cancels_on_speech: false,
            audible: true,
            played: Some(("item1", ms(1200))),
            item_audio_sent: Some(ms(3000)),
        }
    }

    #[test]
    fn barge_in_on_audible_audio_cancels_truncates_and_flushes() {
        let p = plan(&base());
        assert!(p.cancel);
        assert_eq!(p.truncate, Some(("item1".into(), 1200)));
        assert_eq!(p.interrupted, Some(("item1".into(), 1200)));
        assert!(p.counts);
    }

    #[test]
    fn no_cancel_when_upstream_cancels_itself_or_nothing_runs() {
        let p = plan(&Situation {
            upstream_cancels_on_speech: true,
            ..base()
        });
        assert!(
            !p.cancel,
            "server VAD with interrupt_response already cancelled it"
        );
        assert!(
            p.truncate.is_some(),
            "but the truncate is still ours to send"
        );
        // A host's cancel is not speech: upstream did not cancel anything.
        assert!(
            plan(&Situation {
                by_user: false,
                upstream_cancels_on_speech: true,
                ..base()
            })
            .cancel
        );
        assert!(
            !plan(&Situation {
                running: None,
                ..base()
            })
            .cancel
        );
    }

    #[test]
    fn truncate_never_past_the_items_upstream_audio() {
        let p = plan(&Situation {
            played: Some(("item1", ms(3020))),
            item_audio_sent: Some(ms(3000)),
            ..base()
        });
        assert_eq!(p.truncate, Some(("item1".into(), 3000)));
    }

    #[test]
    fn inaudible_or_earcon_audio_is_not_truncated() {
        let p = plan(&Situation {
            audible: false,
            ..base()
        });
        assert_eq!((p.truncate, p.interrupted, p.counts), (None, None, false));
        assert!(p.cancel);
        let p = plan(&Situation {
            played: Some((EARCON_ITEM, ms(300))),
            ..base()
        });
        assert_eq!(p.truncate, None);
        assert_eq!(p.interrupted, Some((EARCON_ITEM.into(), 300)));
        // A host cancel flushes but is not an interruption by the caller.
        assert!(
            !plan(&Situation {
                by_user: false,
                ..base()
            })
            .counts
        );
    }

    #[test]
    fn speech_interrupts_audible_audio_or_the_streaming_response() {
        assert!(speech_interrupts(true, None, None));
        assert!(speech_interrupts(false, Some("r1"), Some("r1")));
        assert!(!speech_interrupts(false, Some("r2"), Some("r1")));
        assert!(!speech_interrupts(false, None, Some("r1")));
    }
}
