//! The session's cost: usage priced by the plan's price table, and the budget it may not pass.
//!
//! Pure: the session adds each response's usage and is told, once, when the estimate first goes over
//! the budget and whether that ends the session.

use crate::plan::Prices;
use voice_realtime::Usage;

/// The budget was passed (reported once per session).
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    pub cost_usd: f64,
    pub budget_usd: f64,
    /// The session asked to be ended when over budget.
    pub end: bool,
}

impl Exceeded {
    pub fn message(&self) -> String {
        format!(
            "estimated cost ${:.4} is over this session's budget of ${:.4}",
            self.cost_usd, self.budget_usd
        )
    }
}

#[derive(Debug, Default)]
pub struct Budget {
    prices: Option<Prices>,
    /// Limit in USD, and whether passing it ends the session.
    limit: Option<(f64, bool)>,
    cost_usd: f64,
    warned: bool,
}

impl Budget {
    pub fn new(prices: Option<Prices>, limit: Option<(f64, bool)>) -> Self {
        Budget {
            prices,
            limit,
            cost_usd: 0.0,
            warned: false,
        }
    }

    /// Estimated cost so far (0 without a price table).
    pub fn cost_usd(&self) -> f64 {
        self.cost_usd
    }

    /// Adds one response's usage. Returns the cost it added (`None` without a price table) and, the
    /// first time the total is over the limit, what to tell the host.
    pub fn add(&mut self, usage: &Usage) -> (Option<f64>, Option<Exceeded>) {
        let Some(prices) = self.prices else {
            return (None, None);
        };
        let cost = prices.cost_usd(usage);
        (Some(cost), self.add_usd(cost))
    }

    /// Adds a cost priced elsewhere (audio minutes of a companion leg or a translation session,
    /// billed per minute with no usage reported). Returns, the first time the total is over the
    /// limit, what to tell the host.
    pub fn add_usd(&mut self, cost: f64) -> Option<Exceeded> {
        self.cost_usd += cost;
        match self.limit {
            Some((budget_usd, end)) if self.cost_usd > budget_usd && !self.warned => {
                self.warned = true;
                Some(Exceeded {
                    cost_usd: self.cost_usd,
                    budget_usd,
                    end,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices() -> Prices {
        Prices {
            input_text: 4.0,
            input_audio: 32.0,
            input_cached: 0.4,
            output_text: 16.0,
            output_audio: 64.0,
        }
    }

    fn usage(audio_out: u64) -> Usage {
        Usage {
            output_audio_tokens: audio_out,
            ..Usage::default()
        }
    }

    #[test]
    fn over_budget_is_reported_once() {
        let mut b = Budget::new(Some(prices()), Some((0.10, true)));
        // 1,000 audio output tokens = $0.064.
        let (c, e) = b.add(&usage(1000));
        assert!((c.unwrap() - 0.064).abs() < 1e-9);
        assert!(e.is_none());
        let (_, e) = b.add(&usage(1000));
        let e = e.expect("0.128 > 0.10");
        assert!(e.end);
        assert!((e.cost_usd - 0.128).abs() < 1e-9);
        assert!(e.message().contains("$0.1280") && e.message().contains("$0.1000"));
        assert!(b.add(&usage(1000)).1.is_none(), "once per session");
        assert!((b.cost_usd() - 0.192).abs() < 1e-9);
    }

    #[test]
    fn priced_costs_count_towards_the_budget_once() {
        // Translation: no price table, the caller prices audio minutes.
        let mut b = Budget::new(None, Some((0.05, false)));
        assert!(b.add_usd(0.034).is_none());
        let e = b.add_usd(0.034).expect("0.068 > 0.05");
        assert!(!e.end);
        assert!(b.add_usd(0.034).is_none(), "once per session");
        assert!((b.cost_usd() - 0.102).abs() < 1e-9);
    }

    #[test]
    fn without_prices_nothing_is_counted() {
        let mut b = Budget::new(None, Some((0.0, true)));
        assert_eq!(b.add(&usage(1_000_000)), (None, None));
        assert_eq!(b.cost_usd(), 0.0);
        let mut b = Budget::new(Some(prices()), None);
        assert!(b.add(&usage(1_000_000)).1.is_none(), "no limit, no warning");
    }
}
