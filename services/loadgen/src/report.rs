//! The run report: built from the sessions' stats, the two `/metrics` scrapes and the `/proc` deltas;
//! printed as a table, saved as JSON, and summarized across runs as Markdown with target verdicts.

use crate::floor::FloorResult;
use crate::probe::{hist_delta, HistDelta, Scrape};
use crate::session::{Hist, SessionStats};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

const FRAME_METRIC: &str = "voice_frame_processing_seconds";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcDelta {
    /// CPU seconds (user+system) during the hold.
    pub cpu_secs: f64,
    /// Average cores busy during the hold.
    pub cores: f64,
    /// CPU seconds per session-minute (per session held at the start of the hold).
    pub cpu_secs_per_session_minute: Option<f64>,
    pub rss_baseline_kib: Option<u64>,
    pub rss_hold_kib: Option<u64>,
    /// (RSS during hold − RSS before any session) / sessions.
    pub rss_per_session_kib: Option<f64>,
}

impl ProcDelta {
    pub fn new(cpu_secs: f64, wall: f64, rss0: Option<u64>, rss1: Option<u64>) -> Self {
        ProcDelta {
            cpu_secs,
            cores: cpu_secs / wall.max(1e-9),
            rss_baseline_kib: rss0,
            rss_hold_kib: rss1,
            ..Default::default()
        }
    }

    fn per_session(&mut self, sessions: usize, hold_secs: f64) {
        if sessions == 0 {
            return;
        }
        self.cpu_secs_per_session_minute =
            Some(self.cpu_secs / (sessions as f64 * hold_secs / 60.0));
        if let (Some(a), Some(b)) = (self.rss_baseline_kib, self.rss_hold_kib) {
            self.rss_per_session_kib = Some((b as f64 - a as f64) / sessions as f64);
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Quantiles {
    pub n: u64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

impl Quantiles {
    /// From a client histogram, in milliseconds.
    fn ms(h: &Hist) -> Self {
        Quantiles {
            n: h.n,
            p50: h.quantile_us(0.5).map(|x| x as f64 / 1000.0),
            p99: h.quantile_us(0.99).map(|x| x as f64 / 1000.0),
            max: (h.n > 0).then(|| h.max_us as f64 / 1000.0),
            mean: (h.n > 0).then(|| h.sum_us as f64 / h.n as f64 / 1000.0),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SidecarMetrics {
    pub note: String,
    pub frame_in: HistDelta,
    pub frame_out: HistDelta,
    /// `voice_audio_frames_total` deltas over the hold.
    pub frames_in: u64,
    pub frames_out: u64,
    pub host_errors: BTreeMap<String, u64>,
    pub upstream_errors: BTreeMap<String, u64>,
    pub sessions_active_at_hold_end: f64,
    /// `voice_host_stall_seconds` over the hold: waits on a full host queue (backpressure: the path
    /// to the host, the sidecar's own HTTP/2 writer included, is not draining).
    #[serde(default)]
    pub host_stall: HistDelta,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientFigures {
    pub note: String,
    /// Converse opened → SessionStarted, ms.
    pub setup_ms: Quantiles,
    /// Last speech frame sent → first assistant audio frame received, ms (includes the VAD's
    /// silence duration and the simulator's think time).
    pub turn_latency_ms: Quantiles,
    /// Sidecar-reported voice-to-voice (ResponseDone), ms.
    pub v2v_reported_ms: Quantiles,
    /// Gap between consecutive assistant frames of one item, ms.
    pub out_frame_gap_ms: Quantiles,
    /// How late each 20 ms frame was sent relative to its deadline, ms (generator health: should
    /// stay ≪ 20).
    pub send_tick_lateness_ms: Quantiles,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub sidecar: String,
    pub codec_in: String,
    pub codec_out: String,
    pub tools: bool,
    pub connections: usize,
    pub ramp_secs: f64,
    pub ramp_done_secs: f64,
    pub hold_secs: f64,
    pub total_secs: f64,

    pub sessions_requested: usize,
    pub sessions_established: usize,
    pub sessions_failed: usize,
    pub sessions_held_at_hold_start: usize,
    pub sessions_held_to_end: usize,
    pub sessions_dropped: usize,
    pub sessions_ended_cleanly: usize,
    pub drop_reasons: BTreeMap<String, u64>,

    pub frames_sent: u64,
    pub frames_skipped_backpressure: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub turns_spoken: u64,
    pub responses: u64,
    pub tool_calls_answered: u64,
    pub interruptions: u64,
    /// Error events (`Error.code`) and client-side failures (grpc_*, setup_*, *_timeout), by code.
    pub errors: BTreeMap<String, u64>,

    pub sidecar_metrics: Option<SidecarMetrics>,
    pub client: ClientFigures,
    pub sidecar_proc: Option<ProcDelta>,
    pub sim_proc: Option<ProcDelta>,
    pub loadgen_proc: Option<ProcDelta>,
    /// Sidecar CPU per audio frame handled (in + out, from its own counters) during the hold, ns.
    pub sidecar_cpu_ns_per_frame: Option<f64>,
    pub loadgen_cpu_total_secs: Option<f64>,
    /// Machine-wide share of CPU time stolen by the hypervisor during the hold (noisy neighbours).
    #[serde(default)]
    pub machine_steal: Option<f64>,
    /// Machine-wide idle share during the hold (how close the box was to saturation).
    #[serde(default)]
    pub machine_idle: Option<f64>,
}

pub struct Inputs {
    pub label: String,
    pub sidecar: String,
    pub sessions_requested: usize,
    pub held_at_hold_start: usize,
    pub codec_in: String,
    pub codec_out: String,
    pub tools: bool,
    pub ramp_secs: f64,
    pub ramp_done_secs: f64,
    pub hold_secs: f64,
    pub total_secs: f64,
    pub connections: usize,
    pub stats: Vec<SessionStats>,
    /// How late each frame was sent relative to its 20 ms deadline, over all sessions (kept by the
    /// pacers).
    pub send_lateness: Hist,
    pub metrics: Option<(Scrape, Scrape)>,
    pub sidecar_proc: Option<ProcDelta>,
    pub sim_proc: Option<ProcDelta>,
    pub loadgen_proc: Option<ProcDelta>,
    pub loadgen_cpu_total: Option<f64>,
    /// Machine-wide (steal, idle) shares of CPU time during the hold.
    pub machine_steal_idle: Option<(f64, f64)>,
}

fn delta_by_label(a: &Scrape, b: &Scrape, name: &str, label: &str) -> BTreeMap<String, u64> {
    let before = a.by_label(name, label);
    b.by_label(name, label)
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, d.max(0.0) as u64)
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

impl Report {
    pub fn build(i: Inputs) -> Report {
        let mut r = Report {
            label: i.label,
            sidecar: i.sidecar,
            codec_in: i.codec_in,
            codec_out: i.codec_out,
            tools: i.tools,
            connections: i.connections,
            ramp_secs: i.ramp_secs,
            ramp_done_secs: i.ramp_done_secs,
            hold_secs: i.hold_secs,
            total_secs: i.total_secs,
            sessions_requested: i.sessions_requested,
            sessions_held_at_hold_start: i.held_at_hold_start,
            loadgen_cpu_total_secs: i.loadgen_cpu_total,
            machine_steal: i.machine_steal_idle.map(|x| x.0),
            machine_idle: i.machine_steal_idle.map(|x| x.1),
            ..Default::default()
        };
        let (mut setup, mut turn, mut v2v, mut gap) = (
            Hist::default(),
            Hist::default(),
            Hist::default(),
            Hist::default(),
        );
        for s in &i.stats {
            r.sessions_established += usize::from(s.established);
            r.sessions_failed += usize::from(!s.established);
            r.sessions_held_to_end += usize::from(s.held);
            r.sessions_dropped += usize::from(s.dropped);
            r.sessions_ended_cleanly += usize::from(s.clean_end);
            if s.dropped {
                *r.drop_reasons
                    .entry(s.end_reason.clone().unwrap_or_default())
                    .or_insert(0) += 1;
            }
            r.frames_sent += s.frames_sent;
            r.frames_skipped_backpressure += s.frames_skipped;
            r.frames_received += s.frames_received;
            r.bytes_received += s.bytes_received;
            r.turns_spoken += s.turns_spoken;
            r.responses += s.responses;
            r.tool_calls_answered += s.tool_calls;
            r.interruptions += s.interruptions;
            for (k, v) in &s.errors {
                *r.errors.entry(k.clone()).or_insert(0) += v;
            }
            if let Some(d) = s.setup {
                setup.record(d);
            }
            turn.merge(&s.turn_latency);
            v2v.merge(&s.v2v_reported);
            gap.merge(&s.out_gap);
        }
        r.client = ClientFigures {
            note: "measured in voice-loadgen (client side, includes loopback gRPC and generator scheduling)".into(),
            setup_ms: Quantiles::ms(&setup),
            turn_latency_ms: Quantiles::ms(&turn),
            v2v_reported_ms: Quantiles::ms(&v2v),
            out_frame_gap_ms: Quantiles::ms(&gap),
            send_tick_lateness_ms: Quantiles::ms(&i.send_lateness),
        };
        if let Some((a, b)) = &i.metrics {
            let dir = |d| hist_delta(a, b, FRAME_METRIC, &[("direction", d)]);
            let frames = |d| {
                (b.sum("voice_audio_frames_total", &[("direction", d)])
                    - a.sum("voice_audio_frames_total", &[("direction", d)]))
                .max(0.0) as u64
            };
            r.sidecar_metrics = Some(SidecarMetrics {
                note: "per-frame in-sidecar time from voice_frame_processing_seconds bucket deltas between two scrapes \
                       bracketing the hold; quantiles are bucket-interpolated (linear within a bucket, bounds 10/25/50/100/250/500 µs, 1/2.5/5/10/25/50 ms) \
                       and max is the upper bound of the highest non-empty bucket. 'out' observations are per upstream audio delta \
                       (one delta = several host frames)."
                    .into(),
                frame_in: dir("in"),
                frame_out: dir("out"),
                frames_in: frames("in"),
                frames_out: frames("out"),
                host_errors: delta_by_label(a, b, "voice_host_errors_total", "code"),
                upstream_errors: delta_by_label(a, b, "voice_upstream_errors_total", "code"),
                sessions_active_at_hold_end: b.sum("voice_sessions_active", &[]),
                host_stall: hist_delta(a, b, "voice_host_stall_seconds", &[]),
            });
        }
        let n = i.held_at_hold_start;
        r.sidecar_proc = i.sidecar_proc.map(|mut p| {
            p.per_session(n, i.hold_secs);
            p
        });
        r.sim_proc = i.sim_proc.map(|mut p| {
            p.per_session(n, i.hold_secs);
            p
        });
        r.loadgen_proc = i.loadgen_proc.map(|mut p| {
            p.per_session(n, i.hold_secs);
            p
        });
        if let (Some(p), Some(m)) = (&r.sidecar_proc, &r.sidecar_metrics) {
            let f = m.frames_in + m.frames_out;
            if f > 0 {
                r.sidecar_cpu_ns_per_frame = Some(p.cpu_secs * 1e9 / f as f64);
            }
        }
        r
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "\n== voice-loadgen report {} ==", self.label);
        let _ = writeln!(
            s,
            "audio in {} / out {}, tools {}, {} connection(s), ramp {:.1} s (done at {:.1} s), hold {:.1} s",
            self.codec_in, self.codec_out, self.tools, self.connections, self.ramp_secs, self.ramp_done_secs, self.hold_secs
        );
        let _ = writeln!(
            s,
            "{:<38} {}",
            "sessions requested", self.sessions_requested
        );
        let _ = writeln!(
            s,
            "{:<38} {}",
            "sessions established", self.sessions_established
        );
        let _ = writeln!(
            s,
            "{:<38} {}",
            "sessions held to the end of the hold", self.sessions_held_to_end
        );
        let _ = writeln!(
            s,
            "{:<38} {} {:?}",
            "sessions dropped", self.sessions_dropped, self.drop_reasons
        );
        let _ = writeln!(
            s,
            "{:<38} {}",
            "sessions ended cleanly (after end)", self.sessions_ended_cleanly
        );
        let _ = writeln!(
            s,
            "{:<38} {} (+{} skipped: stream full)",
            "frames sent", self.frames_sent, self.frames_skipped_backpressure
        );
        let _ = writeln!(s, "{:<38} {}", "frames received", self.frames_received);
        let _ = writeln!(
            s,
            "{:<38} {} / {} / {} / {}",
            "turns / responses / tool calls / barge-ins",
            self.turns_spoken,
            self.responses,
            self.tool_calls_answered,
            self.interruptions
        );
        let _ = writeln!(s, "{:<38} {:?}", "errors by code", self.errors);
        if let Some(m) = &self.sidecar_metrics {
            let _ = writeln!(
                s,
                "-- in-sidecar per-frame time (bucket-interpolated from /metrics) --"
            );
            for (name, h, n) in [
                ("in", &m.frame_in, m.frames_in),
                ("out", &m.frame_out, m.frames_out),
            ] {
                let _ = writeln!(
                    s,
                    "  {:<4} n={:<9} p50 {:>9}  p90 {:>9}  p99 {:>9}  p99.9 {:>9}  max ≤ {:>9}  mean {:>9}  ({} frames)",
                    name, h.count, us(h.p50_s), us(h.p90_s), us(h.p99_s), us(h.p999_s),
                    if h.over_last_bucket > 0 { ">50 ms".into() } else { us(h.max_le_s) }, us(h.mean_s), n
                );
            }
            let st = &m.host_stall;
            let _ = writeln!(
                s,
                "  host stalls (full host queue) n={} total {:.2} s, p50 {} max ≤ {}",
                st.count,
                st.total_s(),
                ms(st.p50_s.map(|x| x * 1e3)),
                ms(st.max_le_s.map(|x| x * 1e3)),
            );
            let _ = writeln!(
                s,
                "  host errors {:?}, upstream errors {:?}",
                m.host_errors, m.upstream_errors
            );
        }
        let c = &self.client;
        let _ = writeln!(s, "-- client-observed (ms) --");
        for (name, q) in [
            ("setup (Converse → started)", &c.setup_ms),
            ("speech end → first audio", &c.turn_latency_ms),
            ("voice-to-voice (sidecar-reported)", &c.v2v_reported_ms),
            ("assistant frame gap", &c.out_frame_gap_ms),
            ("send timer lateness", &c.send_tick_lateness_ms),
        ] {
            let _ = writeln!(
                s,
                "  {:<36} p50 {:>8}  p99 {:>8}  max {:>8}  (n={})",
                name,
                ms(q.p50),
                ms(q.p99),
                ms(q.max),
                q.n
            );
        }
        let _ = writeln!(s, "-- processes during the hold --");
        for (name, p) in [
            ("sidecar", &self.sidecar_proc),
            ("simulator", &self.sim_proc),
            ("loadgen", &self.loadgen_proc),
        ] {
            if let Some(p) = p {
                let _ = writeln!(
                    s,
                    "  {:<10} {:.2} cores, {:.3} CPU-s per session-minute, RSS {} KiB → {} KiB ({} KiB/session)",
                    name,
                    p.cores,
                    p.cpu_secs_per_session_minute.unwrap_or(f64::NAN),
                    p.rss_baseline_kib.map_or("-".into(), |x| x.to_string()),
                    p.rss_hold_kib.map_or("-".into(), |x| x.to_string()),
                    p.rss_per_session_kib.map_or("-".into(), |x| format!("{x:.1}")),
                );
            }
        }
        if let (Some(i), Some(st)) = (self.machine_idle, self.machine_steal) {
            let _ = writeln!(
                s,
                "  machine    {:.0} % idle, {:.1} % stolen by the hypervisor",
                i * 100.0,
                st * 100.0
            );
        }
        if let Some(x) = self.sidecar_cpu_ns_per_frame {
            let _ = writeln!(
                s,
                "  sidecar CPU per audio frame handled (in+out): {x:.0} ns"
            );
        }
        s
    }
}

fn us(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{:.1} µs", x * 1e6),
        _ => "-".into(),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}"))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "✅"
    } else {
        "❌"
    }
}

/// A Markdown table over several runs, with the targets checked.
pub fn markdown(runs: &[Report], floor: Option<&FloorResult>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| sessions (req/est/held/dropped) | frames sent / recv | in p50 / p99 / max | out p50 / p99 / max | out p99.9 · host stalls (n, s) | machine idle / steal | sidecar cores | CPU-s per session-min | sidecar CPU per frame | sidecar RSS KiB/session | sim cores | loadgen cores | speech end → first audio p50/p99 | errors |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in runs {
        let m = r.sidecar_metrics.clone().unwrap_or_default();
        let sp = r.sidecar_proc.clone().unwrap_or_default();
        let fmt_h = |h: &HistDelta| {
            format!(
                "{} / {} / ≤{}",
                us(h.p50_s),
                us(h.p99_s),
                if h.over_last_bucket > 0 {
                    ">50 ms".into()
                } else {
                    us(h.max_le_s)
                }
            )
        };
        let per_frame = match (r.sidecar_cpu_ns_per_frame, floor) {
            (Some(x), Some(f)) => format!(
                "{:.1} µs ({:.0}× floor)",
                x / 1000.0,
                x / f.send_cpu_ns_per_frame
            ),
            (Some(x), None) => format!("{:.1} µs", x / 1000.0),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} / {} / {} / {} | {} / {} | {} | {} | {} · {} ({:.1} s) | {} | {:.2} | {} | {} | {} | {} | {} | {} / {} ms | {} |",
            r.sessions_requested,
            r.sessions_established,
            r.sessions_held_to_end,
            r.sessions_dropped,
            r.frames_sent,
            r.frames_received,
            fmt_h(&m.frame_in),
            fmt_h(&m.frame_out),
            us(m.frame_out.p999_s),
            m.host_stall.count,
            m.host_stall.total_s(),
            match (r.machine_idle, r.machine_steal) {
                (Some(i), Some(st)) => format!("{:.0} % / {:.1} %", i * 100.0, st * 100.0),
                _ => "-".into(),
            },
            sp.cores,
            sp.cpu_secs_per_session_minute.map_or("-".into(), |x| format!("{x:.3}")),
            per_frame,
            sp.rss_per_session_kib.map_or("-".into(), |x| format!("{x:.0}")),
            r.sim_proc.as_ref().map_or("-".into(), |p| format!("{:.2}", p.cores)),
            r.loadgen_proc.as_ref().map_or("-".into(), |p| format!("{:.2}", p.cores)),
            ms(r.client.turn_latency_ms.p50),
            ms(r.client.turn_latency_ms.p99),
            if r.errors.is_empty() { "none".to_string() } else { format!("{:?}", r.errors).replace('|', "/") },
        );
    }
    if let Some(f) = floor {
        let _ = writeln!(
            s,
            "\nPhysical floor ({} B/frame): base64 + JSON + loopback WebSocket write = **{:.0} ns CPU/frame** ({:.0} ns wall); mirror receive (read + parse + base64 decode) {:.0} ns CPU/frame.",
            f.frame_bytes, f.send_cpu_ns_per_frame, f.send_wall_ns_per_frame, f.recv_cpu_ns_per_frame
        );
        for r in runs {
            if let Some(m) = &r.sidecar_metrics {
                if let Some(p50) = m.frame_in.p50_s {
                    let _ = writeln!(
                        s,
                        "- {} sessions: in-direction p50 {} = {:.1}× the floor's per-frame send cost (wall-clock inside the sidecar vs CPU of the floor).",
                        r.sessions_requested,
                        us(Some(p50)),
                        p50 * 1e9 / f.send_cpu_ns_per_frame
                    );
                }
            }
        }
    }
    let _ = writeln!(s, "\nTargets:");
    for r in runs {
        let m = r.sidecar_metrics.clone().unwrap_or_default();
        let p99 = m
            .frame_in
            .p99_s
            .unwrap_or(f64::INFINITY)
            .max(m.frame_out.p99_s.unwrap_or(0.0));
        let sp = r.sidecar_proc.clone().unwrap_or_default();
        if r.sessions_requested >= 1000 {
            let _ = writeln!(
                s,
                "- {} sessions: no drop {} ({} dropped, {} failed) · per-frame p99 < 1 ms {} ({}) · CPU < 1.5 cores {} ({:.2}) · memory < 200 KiB/session {} ({})",
                r.sessions_requested,
                verdict(r.sessions_dropped == 0 && r.sessions_failed == 0),
                r.sessions_dropped,
                r.sessions_failed,
                verdict(p99 < 1e-3),
                us(Some(p99)),
                verdict(sp.cores < 1.5),
                sp.cores,
                verdict(sp.rss_per_session_kib.is_some_and(|x| x < 200.0)),
                sp.rss_per_session_kib.map_or("-".into(), |x| format!("{x:.0} KiB")),
            );
        } else if r.sessions_requested == 100 {
            let _ = writeln!(
                s,
                "- 100 sessions: per-frame p99 < 250 µs {} ({})",
                verdict(p99 < 250e-6),
                us(Some(p99))
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::parse;

    #[test]
    fn host_stalls_over_the_hold_reach_the_table() {
        let before = parse(
            "voice_host_stall_seconds_bucket{le=\"0.5\"} 1\nvoice_host_stall_seconds_bucket{le=\"+Inf\"} 1\nvoice_host_stall_seconds_sum 0.25\nvoice_host_stall_seconds_count 1\n",
        );
        let after = parse(
            "voice_host_stall_seconds_bucket{le=\"0.5\"} 3\nvoice_host_stall_seconds_bucket{le=\"+Inf\"} 4\nvoice_host_stall_seconds_sum 2.25\nvoice_host_stall_seconds_count 4\n",
        );
        let r = Report {
            sessions_requested: 1000,
            sidecar_metrics: Some(SidecarMetrics {
                host_stall: hist_delta(&before, &after, "voice_host_stall_seconds", &[]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let md = markdown(&[r], None);
        // Only what happened between the two scrapes: 3 stalls, 2.0 s in all.
        assert!(md.contains("· 3 (2.0 s)"), "{md}");
    }
}
