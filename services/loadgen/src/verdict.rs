//! `voice-loadgen soak-verdict`: judges a soak run from the load generator's report
//! (`soak --json`), the simulator's `--stats-json` (counters and tool ledger) and the sidecar's log.
//!
//! It passes when:
//! - no tool result was lost: every call the simulator issued got exactly one output on its own
//!   session, or reached a later session as context after a drop. A call without an output is only
//!   excused when its session ended (not by an injected drop) less than `--grace-secs` after the
//!   call: it was still running when its caller hung up. No call got two outputs, and the tool host
//!   was never invoked twice for one call;
//! - the sidecar logged no panic;
//! - RSS, open file descriptors and live tasks are flat: after the warm-up, the mean of the last
//!   third of the samples is within `--rss-growth-pct` (RSS) and 10 % plus a small absolute slack
//!   (fds, tasks) of the mean of the first third;
//! - every hostile host was handled as it should be (refused, ended with the right reason);
//! - at most 2 % of the callers failed (setup refused, ended by the sidecar).

use crate::soak::SoakReport;
use anyhow::{Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct VerdictArgs {
    /// The load generator's report (`voice-loadgen soak --json`).
    #[arg(long)]
    pub report: PathBuf,
    /// The simulator's `--stats-json` (with `tool_ledger = true` in its config).
    #[arg(long)]
    pub sim_stats: PathBuf,
    /// The sidecar's log, searched for panics.
    #[arg(long)]
    pub sidecar_log: PathBuf,
    /// A call without output is excused if its session ended within this many seconds of it.
    #[arg(long, default_value_t = 10.0)]
    pub grace_secs: f64,
    /// Allowed RSS growth, last third against first third, percent.
    #[arg(long, default_value_t = 15.0)]
    pub rss_growth_pct: f64,
    /// Samples before this are warm-up (default: a fifth of the run, at most 60 s).
    #[arg(long)]
    pub warmup_secs: Option<f64>,
    /// Also write the summary (Markdown) here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// Means of the first and last thirds of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    pub first: f64,
    pub last: f64,
}

impl Trend {
    pub fn of(v: &[f64]) -> Option<Trend> {
        let third = v.len() / 3;
        if third < 2 {
            return None;
        }
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        Some(Trend {
            first: mean(&v[..third]),
            last: mean(&v[v.len() - third..]),
        })
    }

    /// Flat: the last third at most `pct` % plus `slack` above the first.
    pub fn flat(self, pct: f64, slack: f64) -> bool {
        self.last <= self.first * (1.0 + pct / 100.0) + slack
    }
}

/// The tool ledger, judged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tools {
    pub issued: u64,
    pub answered_live: u64,
    pub carried: u64,
    pub duplicated: u64,
    /// Calls still running when their caller hung up (excused).
    pub cut_short: u64,
    pub lost: Vec<String>,
}

pub fn judge_ledger(ledger: &Value, grace_ms: u64) -> Tools {
    let n = |k: &str| ledger[k].as_u64().unwrap_or(0);
    let mut t = Tools {
        issued: n("issued"),
        answered_live: n("answered_live"),
        carried: n("carried"),
        duplicated: n("duplicated"),
        ..Tools::default()
    };
    for u in ledger["unanswered"].as_array().into_iter().flatten() {
        let open = u["open_after_ms"].as_u64().unwrap_or(u64::MAX);
        let by = u["closed_by"].as_str();
        if by == Some("other") && open < grace_ms {
            t.cut_short += 1;
        } else {
            t.lost.push(format!(
                "{} (session {}, open {} ms after the call, closed by {})",
                u["call_id"].as_str().unwrap_or("?"),
                u["session_id"].as_str().unwrap_or("?"),
                open,
                by.unwrap_or("nobody: still open")
            ));
        }
    }
    t
}

pub fn run(a: &VerdictArgs) -> Result<bool> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let rep: SoakReport = serde_json::from_str(&read(&a.report)?)
        .with_context(|| format!("parsing {}", a.report.display()))?;
    let sim: Value = serde_json::from_str(&read(&a.sim_stats)?)
        .with_context(|| format!("parsing {}", a.sim_stats.display()))?;
    let log = read(&a.sidecar_log)?;
    let panics = log.lines().filter(|l| l.contains("panicked")).count();

    let mut fails: Vec<String> = Vec::new();
    let ledger = &sim["ledger"];
    if ledger.is_null() {
        fails.push("the simulator kept no tool ledger (tool_ledger = true in its config)".into());
    }
    let tools = judge_ledger(ledger, (a.grace_secs * 1000.0) as u64);
    if tools.issued == 0 {
        fails.push("no tool call was made: the soak did not exercise tools".into());
    }
    if !tools.lost.is_empty() {
        fails.push(format!(
            "{} tool result(s) lost: {}",
            tools.lost.len(),
            tools
                .lost
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if tools.duplicated > 0 {
        fails.push(format!("{} tool call(s) got two outputs", tools.duplicated));
    }
    if rep.tool_duplicate_invocations > 0 {
        fails.push(format!(
            "the tool host was invoked twice for {} call(s)",
            rep.tool_duplicate_invocations
        ));
    }
    if panics > 0 {
        fails.push(format!("{panics} panic(s) in the sidecar log"));
    }

    // Flatness over the steady part: after the warm-up, before the wind-down.
    let warmup = a.warmup_secs.unwrap_or((rep.secs / 5.0).min(60.0));
    let steady: Vec<_> = rep
        .samples
        .iter()
        .filter(|s| s.t_secs >= warmup && s.t_secs <= rep.secs)
        .collect();
    let series = |f: fn(&crate::soak::Sample) -> u64| -> Vec<f64> {
        steady.iter().map(|s| f(s) as f64).collect()
    };
    let rss = Trend::of(&series(|s| s.rss_kib));
    let fds = Trend::of(&series(|s| s.fds));
    let tasks = Trend::of(&series(|s| s.tasks));
    match (rss, fds, tasks) {
        (Some(r), Some(f), Some(t)) => {
            if !r.flat(a.rss_growth_pct, 0.0) {
                fails.push(format!(
                    "RSS grew: {:.0} → {:.0} KiB (more than {} %)",
                    r.first, r.last, a.rss_growth_pct
                ));
            }
            if !f.flat(10.0, 16.0) {
                fails.push(format!("open fds grew: {:.0} → {:.0}", f.first, f.last));
            }
            if !t.flat(10.0, 32.0) {
                fails.push(format!("live tasks grew: {:.0} → {:.0}", t.first, t.last));
            }
        }
        _ => fails.push(format!(
            "too few samples after the {warmup:.0} s warm-up ({}) to judge flatness",
            steady.len()
        )),
    }

    // Hostile hosts.
    let mut hostile_total = 0;
    let mut hostile_lines = Vec::new();
    for h in [
        crate::soak::Hostile::NoStart,
        crate::soak::Hostile::Malformed,
        crate::soak::Hostile::Oversized,
        crate::soak::Hostile::StopsReading,
        crate::soak::Hostile::Vanishes,
    ] {
        let outcomes = rep.hostile.get(h.as_str()).cloned().unwrap_or_default();
        let total: u64 = outcomes.values().sum();
        let ok = outcomes.get(h.expected()).copied().unwrap_or(0);
        hostile_total += total;
        hostile_lines.push(format!("{} {ok}/{total}", h.as_str()));
        if ok < total {
            let other: Vec<String> = outcomes
                .iter()
                .filter(|(k, _)| k.as_str() != h.expected())
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            fails.push(format!(
                "hostile host {}: {} of {total} not handled as expected ({})",
                h.as_str(),
                total - ok,
                other.join(", ")
            ));
        }
    }
    let failed_callers: u64 = rep.callers_failed.values().sum();
    if failed_callers * 50 > rep.callers_started.max(1) {
        fails.push(format!(
            "{failed_callers} of {} callers failed: {:?}",
            rep.callers_started, rep.callers_failed
        ));
    }

    let st = &sim["stats"];
    let sn = |k: &str| st[k].as_u64().unwrap_or(0);
    // Every client event the simulator refused (a truncate of an unknown item, an output for an
    // unknown call, a create over an active response...) is a protocol mistake of the sidecar.
    let refused: Vec<String> = sim["client_errors"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} ×{}", v.as_u64().unwrap_or(0)))
        .collect();
    if !refused.is_empty() {
        fails.push(format!(
            "the simulator refused client events: {}",
            refused.join(", ")
        ));
    }
    let pct = |x: Option<f64>| x.map_or("?".to_owned(), |v| format!("{:.0} %", v * 100.0));
    let trend = |t: Option<Trend>, div: f64, unit: &str| {
        t.map_or("?".to_owned(), |t| {
            format!(
                "{:.1} → {:.1}{unit} ({:+.1} %)",
                t.first / div,
                t.last / div,
                (t.last / t.first.max(1e-9) - 1.0) * 100.0
            )
        })
    };
    let mut md = String::new();
    let _ = writeln!(md, "| figure | value |\n|---|---|");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(md, "| {k} | {v} |");
    };
    row(
        "run",
        format!(
            "{:.0} s ({:.0} s with the wind-down), {} concurrent sessions",
            rep.secs, rep.wall_secs, rep.concurrency
        ),
    );
    row(
        "sessions",
        format!(
            "{} callers completed ({} ended before a quiet point), {} hostile, {} failed{}",
            rep.callers_completed,
            rep.callers_ended_unquiet,
            hostile_total,
            failed_callers,
            if rep.callers_failed.is_empty() {
                String::new()
            } else {
                format!(" {:?}", rep.callers_failed)
            }
        ),
    );
    row(
        "tool calls",
        format!(
            "{} issued upstream, {} invoked on the host ({} slow), {} answered on their session, {} carried across a reconnect, {} cut short by a hang-up",
            tools.issued, rep.tool_invocations, rep.tool_slow, tools.answered_live, tools.carried, tools.cut_short
        ),
    );
    row(
        "lost / duplicated tool results",
        format!(
            "{} / {}",
            tools.lost.len(),
            tools.duplicated + rep.tool_duplicate_invocations
        ),
    );
    row(
        "barge-ins",
        format!(
            "{} (host saw Interrupted), {} responses cut by the caller's speech upstream, {} truncations",
            rep.barge_ins,
            sn("responses_interrupted"),
            sn("truncations")
        ),
    );
    row(
        "upstream faults",
        format!(
            "{} drops and {} server errors injected; the hosts saw {} disconnects, {} resumes",
            sn("drops_injected"),
            sn("errors_injected"),
            rep.upstream_disconnects_seen,
            rep.upstream_resumed_seen
        ),
    );
    row("hostile hosts handled", hostile_lines.join(", "));
    row(
        "client events refused upstream",
        if refused.is_empty() {
            "0".to_owned()
        } else {
            refused.join(", ")
        },
    );
    row("panics", panics.to_string());
    row(
        "sidecar RSS (MiB), first → last third",
        trend(rss, 1024.0, ""),
    );
    row("open fds, first → last third", trend(fds, 1.0, ""));
    row("live tasks, first → last third", trend(tasks, 1.0, ""));
    row(
        "samples",
        format!(
            "{} every ~{:.0} s, {} after the {warmup:.0} s warm-up",
            rep.samples.len(),
            rep.samples
                .windows(2)
                .map(|w| w[1].t_secs - w[0].t_secs)
                .sum::<f64>()
                / rep.samples.len().saturating_sub(1).max(1) as f64,
            steady.len()
        ),
    );
    row(
        "machine idle / steal",
        format!("{} / {}", pct(rep.machine_idle), pct(rep.machine_steal)),
    );
    let pass = fails.is_empty();
    row(
        "verdict",
        if pass {
            "**PASS**".to_owned()
        } else {
            format!("**FAIL**: {}", fails.join("; "))
        },
    );
    print!("{md}");
    if let Some(p) = &a.markdown {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trends_compare_the_first_and_last_thirds() {
        let flat = [100.0, 102.0, 99.0, 101.0, 100.0, 103.0, 98.0, 100.0, 101.0];
        let t = Trend::of(&flat).unwrap();
        assert!((t.first - 100.333).abs() < 0.01 && (t.last - 99.667).abs() < 0.01);
        assert!(t.flat(15.0, 0.0));
        let leak: Vec<f64> = (0..30).map(|i| 100.0 + 2.0 * f64::from(i)).collect();
        let t = Trend::of(&leak).unwrap();
        assert!(!t.flat(15.0, 0.0), "{t:?}");
        assert!(t.flat(100.0, 0.0));
        assert!(Trend::of(&[1.0; 5]).is_none(), "too few samples");
        assert!(
            Trend {
                first: 10.0,
                last: 20.0
            }
            .flat(0.0, 10.0),
            "absolute slack"
        );
    }

    #[test]
    fn a_call_without_output_is_lost_unless_its_caller_hung_up_within_the_grace() {
        let ledger = serde_json::json!({"issued": 5, "answered_live": 2, "carried": 1, "duplicated": 0,
            "unanswered": [
                {"call_id": "call_sim1", "session_id": "s", "open_after_ms": 900, "closed_by": "other"},
                {"call_id": "call_sim2", "session_id": "s", "open_after_ms": 900, "closed_by": "fault_drop"},
                {"call_id": "call_sim3", "session_id": "t", "open_after_ms": 30000, "closed_by": "other"},
                {"call_id": "call_sim4", "session_id": "u", "open_after_ms": 300, "closed_by": null}]});
        let t = judge_ledger(&ledger, 10_000);
        assert_eq!(
            (t.issued, t.answered_live, t.carried, t.cut_short),
            (5, 2, 1, 1)
        );
        assert_eq!(t.lost.len(), 3, "{:?}", t.lost);
        assert!(
            t.lost[0].starts_with("call_sim2"),
            "a drop must carry the call"
        );
    }
}
