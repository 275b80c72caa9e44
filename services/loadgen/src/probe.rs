//! Observing the system under test from outside: the sidecar's Prometheus `/metrics` (scraped over a
//! plain HTTP/1.0 GET), and per-process CPU time and resident memory from `/proc`.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One scrape: every sample line, `name{labels} value`.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

pub async fn scrape(addr: SocketAddr) -> Result<Scrape> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(std::time::Duration::from_secs(10), fut)
        .await
        .context("scraping /metrics timed out")?
        .with_context(|| format!("scraping http://{addr}/metrics"))?;
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed HTTP response from {addr}");
    };
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1).is_none_or(|c| c != "200") {
        bail!(
            "{addr}/metrics answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(parse(body))
}

pub fn parse(body: &str) -> Scrape {
    let mut samples = Vec::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        samples.push((name.to_string(), labels, value));
    }
    Scrape { samples }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut rest = s;
    while let Some((k, v)) = rest.split_once("=\"") {
        let k = k.trim_start_matches(',').trim();
        // Values may contain escaped quotes.
        let mut end = 0;
        let b = v.as_bytes();
        while end < b.len() && !(b[end] == b'"' && (end == 0 || b[end - 1] != b'\\')) {
            end += 1;
        }
        m.insert(k.to_string(), v[..end].to_string());
        rest = if end < v.len() { &v[end + 1..] } else { "" };
    }
    m
}

impl Scrape {
    /// Sum of a metric's samples whose labels include all of `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && filter
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Per-value sums of `label` across a metric's samples.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (n, l, v) in &self.samples {
            if n == name {
                *m.entry(l.get(label).cloned().unwrap_or_default())
                    .or_insert(0.0) += v;
            }
        }
        m
    }

    /// Cumulative histogram buckets `(le, count)` of `name` restricted to `filter`, summed over any
    /// other labels, sorted by `le` (+Inf last).
    pub fn buckets(&self, name: &str, filter: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let mut m: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let bname = format!("{name}_bucket");
        for (n, l, v) in &self.samples {
            if *n != bname
                || !filter
                    .iter()
                    .all(|(k, fv)| l.get(*k).map(String::as_str) == Some(*fv))
            {
                continue;
            }
            let Some(le) = l.get("le") else { continue };
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            if le.is_nan() {
                continue;
            }
            // Order-preserving key for non-negative floats.
            let e = m.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += v;
        }
        m.into_values().collect()
    }
}

/// Quantiles of the observations made between two scrapes, from the bucket deltas.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistDelta {
    pub count: u64,
    pub mean_s: Option<f64>,
    /// Linear interpolation inside the bucket that holds the rank (like PromQL `histogram_quantile`).
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub p999_s: Option<f64>,
    /// Upper bound of the highest non-empty bucket: the true maximum is at most this (when finite).
    pub max_le_s: Option<f64>,
    /// Observations above the largest finite bucket bound.
    pub over_last_bucket: u64,
    /// Bucket upper bounds ("+Inf" last) and the observations in each (not cumulative).
    pub buckets_le: Vec<String>,
    pub bucket_counts: Vec<u64>,
}

impl HistDelta {
    /// Sum of the observations (seconds).
    pub fn total_s(&self) -> f64 {
        self.mean_s.unwrap_or(0.0) * self.count as f64
    }
}

pub fn hist_delta(
    before: &Scrape,
    after: &Scrape,
    name: &str,
    filter: &[(&str, &str)],
) -> HistDelta {
    let b = before.buckets(name, filter);
    let a = after.buckets(name, filter);
    let cum: Vec<(f64, f64)> = a
        .iter()
        .map(|&(le, c)| {
            let prev = b.iter().find(|(l, _)| *l == le).map_or(0.0, |x| x.1);
            (le, (c - prev).max(0.0))
        })
        .collect();
    let count = cum.last().map_or(0.0, |x| x.1);
    let sum =
        after.sum(&format!("{name}_sum"), filter) - before.sum(&format!("{name}_sum"), filter);
    let mut d = HistDelta {
        count: count as u64,
        mean_s: (count > 0.0).then(|| sum / count),
        ..Default::default()
    };
    let mut prev = 0.0;
    for (le, c) in &cum {
        d.buckets_le.push(if le.is_finite() {
            format!("{le}")
        } else {
            "+Inf".into()
        });
        d.bucket_counts.push((c - prev).max(0.0) as u64);
        if c - prev > 0.0 {
            d.max_le_s = Some(*le);
        }
        prev = *c;
    }
    if let Some(inf) = cum.iter().rev().nth(1) {
        d.over_last_bucket = (count - inf.1).max(0.0) as u64;
    }
    if count > 0.0 {
        let q = |q: f64| quantile(&cum, q);
        d.p50_s = q(0.5);
        d.p90_s = q(0.9);
        d.p99_s = q(0.99);
        d.p999_s = q(0.999);
        if d.max_le_s == Some(f64::INFINITY) {
            d.max_le_s = None;
        }
    }
    d
}

/// `histogram_quantile` over cumulative `(le, count)` buckets. A rank in the +Inf bucket returns the
/// largest finite bound (a lower bound of the true value).
fn quantile(cum: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = cum.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lo = 0.0;
    let mut lo_c = 0.0;
    for &(le, c) in cum {
        if c >= rank && c > lo_c {
            if le.is_infinite() {
                return Some(lo);
            }
            return Some(lo + (le - lo) * (rank - lo_c) / (c - lo_c));
        }
        lo = if le.is_finite() { le } else { lo };
        lo_c = c;
    }
    Some(lo)
}

/// User+system CPU seconds of a process (`/proc/<pid>/stat` utime+stime).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / clk_tck())
}

/// Machine-wide CPU time from `/proc/stat` (all CPUs, in clock ticks): (total, idle, steal).
/// Steal is time the hypervisor ran something else while a vCPU wanted to run: on a shared cloud VM
/// it makes every process slower at once, which latency tails need to be read against.
pub fn machine_ticks() -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(s.lines().next()?)
}

fn parse_machine_ticks(cpu_line: &str) -> Option<(u64, u64, u64)> {
    let mut f = cpu_line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest times are included in user/nice)
    let v: Vec<u64> = f.take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    Some((v.iter().sum(), v[3] + v[4], v[7]))
}

/// Steal and idle shares of all CPU time between two `machine_ticks` samples.
pub fn machine_shares(a: (u64, u64, u64), b: (u64, u64, u64)) -> Option<(f64, f64)> {
    let total = b.0.checked_sub(a.0)? as f64;
    (total > 0.0).then(|| {
        (
            b.2.saturating_sub(a.2) as f64 / total,
            b.1.saturating_sub(a.1) as f64 / total,
        )
    })
}

fn clk_tck() -> f64 {
    static T: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Resident set size in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Nanoseconds the calling thread has spent on CPU (`/proc/thread-self/schedstat`).
pub fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"# TYPE voice_frame_processing_seconds histogram
voice_frame_processing_seconds_bucket{direction="in",le="0.00001"} 10
voice_frame_processing_seconds_bucket{direction="in",le="0.0001"} 60
voice_frame_processing_seconds_bucket{direction="in",le="0.001"} 100
voice_frame_processing_seconds_bucket{direction="in",le="+Inf"} 100
voice_frame_processing_seconds_sum{direction="in"} 0.01
voice_frame_processing_seconds_count{direction="in"} 100
voice_frame_processing_seconds_bucket{direction="out",le="0.00001"} 5
voice_frame_processing_seconds_bucket{direction="out",le="+Inf"} 5
voice_host_errors_total{code="invalid_audio"} 3
"#;

    #[test]
    fn machine_steal_and_idle_shares() {
        let a = parse_machine_ticks("cpu  100 0 50 800 10 0 5 35 0 0").unwrap();
        assert_eq!(a, (1000, 810, 35));
        let b = parse_machine_ticks("cpu  200 0 100 1500 10 0 10 180 0 0").unwrap();
        let (steal, idle) = machine_shares(a, b).unwrap();
        assert!((steal - 145.0 / 1000.0).abs() < 1e-9, "{steal}");
        assert!((idle - 700.0 / 1000.0).abs() < 1e-9, "{idle}");
        assert!(parse_machine_ticks("cpu0 1 2 3 4 5 6 7 8").is_none());
    }

    #[test]
    fn quantiles_from_bucket_deltas() {
        let before = Scrape::default();
        let after = parse(A);
        let d = hist_delta(
            &before,
            &after,
            "voice_frame_processing_seconds",
            &[("direction", "in")],
        );
        assert_eq!(d.count, 100);
        // rank 50 lies in (10us, 100us]: 10 + 90 * 40/50 = 82us
        assert!((d.p50_s.unwrap() - 82e-6).abs() < 1e-9, "{:?}", d.p50_s);
        assert_eq!(d.max_le_s, Some(0.001));
        assert_eq!(d.over_last_bucket, 0);
        let d2 = hist_delta(
            &after,
            &after,
            "voice_frame_processing_seconds",
            &[("direction", "in")],
        );
        assert_eq!(d2.count, 0);
        assert_eq!(
            after.by_label("voice_host_errors_total", "code")["invalid_audio"],
            3.0
        );
    }
}
