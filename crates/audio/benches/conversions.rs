//! Single-core throughput of the sidecar's conversion chains (seconds of audio converted per CPU
//! second) and 1 kHz SNR of the rate conversions, side by side with libsoxr HQ (via Python `soxr`)
//! measured in the same run. Writes the markdown table to `crates/audio/BENCH_RESULTS.md`.
//!
//! CPU time comes from `/proc/thread-self/schedstat` so a busy shared machine does not inflate the
//! numbers; elsewhere it falls back to wall-clock time.

#![allow(clippy::needless_range_loop)] // small fixed-size matrix code reads better with indices

use std::f64::consts::PI;
use std::fmt::Write as _;
use std::time::Instant;

use voice_audio::opus::OpusEncoder;
use voice_audio::{
    g711, pcm, Codec, HostFormat, InputPipeline, OutputPipeline, StreamResampler, WireFormat,
};

const SECS: usize = 10;

fn cpu_seconds() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let schedstat_ns = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
    match schedstat_ns {
        Some(ns) => ns as f64 / 1e9,
        None => START.get_or_init(Instant::now).elapsed().as_secs_f64(),
    }
}

/// Runs `f` (which converts `SECS` seconds of audio) repeatedly for ≥ 0.5 CPU-s; returns × real time.
fn throughput(mut f: impl FnMut()) -> f64 {
    f(); // warm-up: table construction, allocations
    let start = cpu_seconds();
    let mut reps = 0;
    loop {
        f();
        reps += 1;
        let el = cpu_seconds() - start;
        if el > 0.5 {
            return (reps * SECS) as f64 / el;
        }
    }
}

fn sine(rate: u32, hz: f64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            (0.9 * 32767.0 * (2.0 * PI * hz * i as f64 / f64::from(rate)).sin()).round() as i16
        })
        .collect()
}

fn fit_snr(y: &[i16], rate: u32, hz: f64) -> f64 {
    let edge = rate as usize / 20;
    let w = 2.0 * PI * hz / f64::from(rate);
    let idx = edge..y.len().saturating_sub(edge);
    let mut m = [[0.0f64; 3]; 3];
    let mut v = [0.0f64; 3];
    for i in idx.clone() {
        let b = [(w * i as f64).sin(), (w * i as f64).cos(), 1.0];
        for r in 0..3 {
            v[r] += b[r] * f64::from(y[i]);
            for c in 0..3 {
                m[r][c] += b[r] * b[c];
            }
        }
    }
    // Gauss-Jordan on the 3×3 normal equations.
    for c in 0..3 {
        for r in 0..3 {
            if r != c {
                let f = m[r][c] / m[c][c];
                for k in 0..3 {
                    m[r][k] -= f * m[c][k];
                }
                v[r] -= f * v[c];
            }
        }
    }
    let s = [v[0] / m[0][0], v[1] / m[1][1], v[2] / m[2][2]];
    let (mut sig, mut noise) = (0.0, 0.0);
    for i in idx {
        let f = s[0] * (w * i as f64).sin() + s[1] * (w * i as f64).cos() + s[2];
        sig += f * f;
        noise += (f64::from(y[i]) - f).powi(2);
    }
    10.0 * (sig / noise.max(1e-30)).log10()
}

fn resampler_snr(fin: u32, fout: u32) -> f64 {
    let mut r = StreamResampler::new(fin, fout).expect("resampler");
    let mut y = Vec::new();
    r.process(&sine(fin, 1000.0, fin as usize * SECS), &mut y)
        .expect("process");
    r.flush(&mut y).expect("flush");
    fit_snr(&y, fout, 1000.0)
}

fn host(codec: Codec, sample_rate: u32) -> HostFormat {
    HostFormat {
        codec,
        sample_rate,
        channels: 1,
        frame_ms: 20,
    }
}

fn input_chain(h: HostFormat, frames: &[Vec<u8>]) -> f64 {
    let mut p = InputPipeline::new(h, WireFormat::Pcm16_24k, 1 << 16).expect("pipeline");
    let mut out = Vec::with_capacity(24_000 * 2 * SECS + 4096);
    throughput(|| {
        out.clear();
        for (i, f) in frames.iter().enumerate() {
            p.push(f, Some(i as u64), &mut out).expect("push");
        }
    })
}

fn output_chain(h: HostFormat, wire_frames: &[Vec<u8>]) -> f64 {
    let mut p = OutputPipeline::new(WireFormat::Pcm16_24k, h).expect("pipeline");
    let mut out = Vec::new();
    throughput(|| {
        out.clear();
        for f in wire_frames {
            p.push(f, &mut out).expect("push");
        }
        p.flush(&mut out);
    })
}

fn soxr(pairs: &[(u32, u32)]) -> Result<Vec<(u32, u32, f64, f64)>, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/soxr_bench.py");
    let arg = pairs
        .iter()
        .map(|(a, b)| format!("{a}:{b}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(arg)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            Some((
                v.first()?.parse().ok()?,
                v.get(1)?.parse().ok()?,
                v.get(2)?.parse().ok()?,
                v.get(3)?.parse().ok()?,
            ))
        })
        .collect())
}

fn main() {
    let speech24 = sine(24_000, 1000.0, 24_000 * SECS);
    let chunks = |b: &[u8], n: usize| b.chunks(n).map(<[u8]>::to_vec).collect::<Vec<_>>();

    let mut ulaw = Vec::new();
    g711::encode_ulaw(&sine(8_000, 1000.0, 8_000 * SECS), &mut ulaw);
    let mut pcm16 = Vec::new();
    pcm::i16_to_le_bytes(&sine(16_000, 1000.0, 16_000 * SECS), &mut pcm16);
    let src48 = sine(48_000, 1000.0, 48_000 * SECS);
    let mut enc = OpusEncoder::new(48_000, 1, 20).expect("encoder");
    let opus: Vec<Vec<u8>> = src48
        .chunks_exact(960)
        .map(|f| enc.encode(f).expect("encode"))
        .collect();
    let mut wire24 = Vec::new();
    pcm::i16_to_le_bytes(&speech24, &mut wire24);
    let wire_frames = chunks(&wire24, 960 * 2); // 40 ms model deltas

    // (chain, ours × realtime, rate pair for the soxr comparison, lossy?)
    let rows: Vec<(&str, f64, (u32, u32), bool)> = vec![
        (
            "8k µ-law → 24k PCM16",
            input_chain(host(Codec::Mulaw, 8_000), &chunks(&ulaw, 160)),
            (8_000, 24_000),
            false,
        ),
        (
            "16k PCM16 → 24k PCM16",
            input_chain(host(Codec::Pcm16, 16_000), &chunks(&pcm16, 640)),
            (16_000, 24_000),
            false,
        ),
        (
            "48k Opus → 24k PCM16",
            input_chain(host(Codec::Opus, 48_000), &opus),
            (48_000, 24_000),
            true,
        ),
        (
            "24k PCM16 → 8k µ-law",
            output_chain(host(Codec::Mulaw, 8_000), &wire_frames),
            (24_000, 8_000),
            false,
        ),
        (
            "24k PCM16 → 16k PCM16",
            output_chain(host(Codec::Pcm16, 16_000), &wire_frames),
            (24_000, 16_000),
            false,
        ),
        (
            "24k PCM16 → 48k Opus",
            output_chain(host(Codec::Opus, 48_000), &wire_frames),
            (24_000, 48_000),
            true,
        ),
    ];
    let pairs: Vec<(u32, u32)> = rows.iter().map(|r| r.2).collect();
    let sox = soxr(&pairs);

    let mut md = String::new();
    let _ = writeln!(md, "| Chain | voice-audio (× real time, 1 core) | libsoxr HQ, rate conversion only (× real time) | SNR @1 kHz voice-audio resampler | SNR @1 kHz soxr HQ |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (name, ours, (fin, fout), lossy) in &rows {
        let s = sox
            .as_ref()
            .ok()
            .and_then(|v| v.iter().find(|r| r.0 == *fin && r.1 == *fout).copied());
        let our_snr = resampler_snr(*fin, *fout);
        let note = if *lossy {
            " (StreamResampler alone; the Opus chain itself resamples inside libopus)"
        } else {
            ""
        };
        let _ = writeln!(
            md,
            "| {name} | {ours:.0} | {} | {our_snr:.1} dB{note} | {} |",
            s.map_or("n/a".into(), |r| format!("{:.0} ({fin}→{fout})", r.2)),
            s.map_or("n/a".into(), |r| format!("{:.1} dB", r.3)),
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Opus chains decode/encode directly at 24 kHz (libopus renders any of 8/12/16/24/48 kHz), so they contain no \
         separate resampler; their soxr column shows what a 48k↔24k soxr stage alone would cost. Resampler delay: \
         {:.2} ms (8k→24k), {:.2} ms (16k→24k), {:.2} ms (24k→8k), {:.2} ms (24k→16k).",
        StreamResampler::new(8_000, 24_000).map_or(f64::NAN, |r| r.delay_ms()),
        StreamResampler::new(16_000, 24_000).map_or(f64::NAN, |r| r.delay_ms()),
        StreamResampler::new(24_000, 8_000).map_or(f64::NAN, |r| r.delay_ms()),
        StreamResampler::new(24_000, 16_000).map_or(f64::NAN, |r| r.delay_ms()),
    );
    if let Err(e) = &sox {
        let _ = writeln!(md, "\nsoxr comparison unavailable: {}", e.trim());
    }
    print!("{md}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCH_RESULTS.md");
    if let Err(e) = std::fs::write(path, format!("# voice-audio conversion benchmark\n\n{md}")) {
        eprintln!("could not write {path}: {e}");
    }
}
