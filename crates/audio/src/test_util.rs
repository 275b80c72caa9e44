//! Shared helpers for the unit tests: signal generators, a least-squares sine fit for SNR, and a
//! minimal Ogg container reader/writer for the opus-tools interop tests (kept in-tree so the tests
//! need no extra crates).

use std::f64::consts::PI;

pub fn sine(rate: u32, hz: f64, amp: f64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| (amp * (2.0 * PI * hz * i as f64 / f64::from(rate)).sin()).round() as i16)
        .collect()
}

/// Exponential sweep from `f0` to `f1` Hz over `n` samples.
pub fn sweep(rate: u32, f0: f64, f1: f64, amp: f64, n: usize) -> Vec<i16> {
    let dur = n as f64 / f64::from(rate);
    let k = (f1 / f0).ln() / dur;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let phase = 2.0 * PI * f0 * ((k * t).exp() - 1.0) / k;
            (amp * phase.sin()).round() as i16
        })
        .collect()
}

/// Least-squares fit of `a·sin + b·cos + c` at `hz` to `x[range]` (time origin at sample 0).
/// Returns (SNR in dB of the fit against the residual, amplitude, phase in radians).
pub fn fit_sine(x: &[i16], rate: u32, hz: f64, range: std::ops::Range<usize>) -> (f64, f64, f64) {
    let w = 2.0 * PI * hz / f64::from(rate);
    // Normal equations for the 3 basis functions.
    let mut m = [[0.0f64; 3]; 3];
    let mut v = [0.0f64; 3];
    for i in range.clone() {
        let b = [(w * i as f64).sin(), (w * i as f64).cos(), 1.0];
        let y = f64::from(x[i]);
        for r in 0..3 {
            v[r] += b[r] * y;
            for c in 0..3 {
                m[r][c] += b[r] * b[c];
            }
        }
    }
    let sol = solve3(m, v);
    let (mut sig, mut noise) = (0.0, 0.0);
    for i in range {
        let s = sol[0] * (w * i as f64).sin() + sol[1] * (w * i as f64).cos() + sol[2];
        sig += s * s;
        let e = f64::from(x[i]) - s;
        noise += e * e;
    }
    let snr = 10.0 * (sig / noise.max(1e-30)).log10();
    (snr, sol[0].hypot(sol[1]), sol[1].atan2(sol[0]))
}

fn solve3(mut m: [[f64; 3]; 3], mut v: [f64; 3]) -> [f64; 3] {
    for col in 0..3 {
        let p = (col..3)
            .max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
            .unwrap();
        m.swap(col, p);
        v.swap(col, p);
        for r in 0..3 {
            if r != col {
                let f = m[r][col] / m[col][col];
                for c in 0..3 {
                    m[r][c] -= f * m[col][c];
                }
                v[r] -= f * v[col];
            }
        }
    }
    [v[0] / m[0][0], v[1] / m[1][1], v[2] / m[2][2]]
}

/// RMS level relative to a full-scale sine, in dB.
pub fn level_dbfs(x: &[i16]) -> f64 {
    let p: f64 = x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64;
    10.0 * (p.max(1e-30) / (32768.0f64.powi(2) / 2.0)).log10()
}

/// Normalised correlation of equal-length prefixes.
pub fn correlation(a: &[i16], b: &[i16]) -> f64 {
    let n = a.len().min(b.len());
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (f64::from(a[i]), f64::from(b[i]));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt().max(1e-30)
}

/// Best normalised correlation of `b` against `a` over lags `0..=max_lag` (b delayed vs a).
pub fn best_lag_correlation(a: &[i16], b: &[i16], max_lag: usize) -> (usize, f64) {
    (0..=max_lag)
        .map(|lag| (lag, correlation(a, b.get(lag..).unwrap_or(&[]))))
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .unwrap_or((0, 0.0))
}

pub mod ogg {
    //! Just enough of RFC 3533 to pull packets out of, and wrap packets into, an Ogg Opus stream.

    fn crc_table() -> [u32; 256] {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04C1_1DB7
                } else {
                    r << 1
                };
            }
            *e = r;
        }
        t
    }

    fn crc(data: &[u8]) -> u32 {
        let t = crc_table();
        data.iter()
            .fold(0u32, |c, &b| (c << 8) ^ t[((c >> 24) as u8 ^ b) as usize])
    }

    /// All packets of the (single) logical stream, in order, with CRCs verified.
    pub fn read_packets(data: &[u8]) -> Vec<Vec<u8>> {
        let mut packets = Vec::new();
        let mut cur = Vec::new();
        let mut pos = 0;
        while pos + 27 <= data.len() {
            assert_eq!(&data[pos..pos + 4], b"OggS", "bad capture pattern at {pos}");
            let nseg = data[pos + 26] as usize;
            let lacing = &data[pos + 27..pos + 27 + nseg];
            let body_len: usize = lacing.iter().map(|&l| l as usize).sum();
            let header_len = 27 + nseg;
            let page = &data[pos..pos + header_len + body_len];
            let mut check = page.to_vec();
            check[22..26].fill(0);
            let stored = u32::from_le_bytes([page[22], page[23], page[24], page[25]]);
            assert_eq!(crc(&check), stored, "page CRC mismatch at {pos}");
            let mut off = pos + header_len;
            for &l in lacing {
                cur.extend_from_slice(&data[off..off + l as usize]);
                off += l as usize;
                if l < 255 {
                    packets.push(std::mem::take(&mut cur));
                }
            }
            pos += header_len + body_len;
        }
        packets
    }

    fn page(serial: u32, seq: u32, granule: u64, flags: u8, packets: &[&[u8]]) -> Vec<u8> {
        let mut lacing = Vec::new();
        let mut body = Vec::new();
        for p in packets {
            let mut n = p.len();
            while n >= 255 {
                lacing.push(255u8);
                n -= 255;
            }
            lacing.push(n as u8);
            body.extend_from_slice(p);
        }
        let mut out = Vec::new();
        out.extend_from_slice(b"OggS");
        out.push(0);
        out.push(flags);
        out.extend_from_slice(&granule.to_le_bytes());
        out.extend_from_slice(&serial.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(lacing.len() as u8);
        out.extend_from_slice(&lacing);
        out.extend_from_slice(&body);
        let c = crc(&out);
        out[22..26].copy_from_slice(&c.to_le_bytes());
        out
    }

    /// Wraps Opus packets (each `samples_48k` long) into an Ogg Opus file (RFC 7845), one packet per page.
    pub fn write_opus(
        packets: &[Vec<u8>],
        samples_48k: u64,
        channels: u8,
        pre_skip: u16,
    ) -> Vec<u8> {
        let serial = 0x5EED;
        let mut head = b"OpusHead".to_vec();
        head.push(1);
        head.push(channels);
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&24_000u32.to_le_bytes());
        head.extend_from_slice(&0u16.to_le_bytes());
        head.push(0);
        let mut tags = b"OpusTags".to_vec();
        tags.extend_from_slice(&4u32.to_le_bytes());
        tags.extend_from_slice(b"test");
        tags.extend_from_slice(&0u32.to_le_bytes());
        let mut out = page(serial, 0, 0, 0x02, &[&head]);
        out.extend(page(serial, 1, 0, 0, &[&tags]));
        let mut granule = 0;
        for (i, p) in packets.iter().enumerate() {
            granule += samples_48k;
            let flags = if i + 1 == packets.len() { 0x04 } else { 0 };
            out.extend(page(serial, 2 + i as u32, granule, flags, &[p]));
        }
        out
    }
}
