//! Interoperability with the reference Opus tools (opus-tools' `opusenc`/`opusdec`): proves our
//! decoder accepts packets from an independent encoder and our encoder's packets play in an
//! independent decoder. These tests FAIL when the tools are missing (a silent skip would hide a
//! broken CI image) unless `VOICE_SKIP_OPUS_TOOLS=1` is set.

use std::path::PathBuf;
use std::process::Command;

use crate::test_util::{best_lag_correlation, ogg};
use crate::{Codec, HostFormat, InputPipeline, OutputPipeline, StreamResampler, WireFormat};

/// Returns false (skip) only when explicitly allowed; panics with install advice otherwise.
fn tools_available() -> bool {
    let ok = ["opusenc", "opusdec"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if ok {
        return true;
    }
    if std::env::var("VOICE_SKIP_OPUS_TOOLS").as_deref() == Ok("1") {
        eprintln!("SKIPPED: opusenc/opusdec not found and VOICE_SKIP_OPUS_TOOLS=1");
        return false;
    }
    panic!(
        "opusenc/opusdec not found on PATH: install opus-tools (apt-get install -y opus-tools) \
         or set VOICE_SKIP_OPUS_TOOLS=1 to skip the Opus interop tests explicitly"
    );
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("voice-audio-{}-{name}", std::process::id()))
}

/// Fundamental of the test vowel. VOIP mode high-passes the input (≈ 60–100 Hz corner), whose
/// phase shift on a low male-voice fundamental alone pulls waveform correlation below 0.9 even at
/// 64 kbit/s; 220 Hz (a typical female voice) keeps the comparison about codec fidelity.
const F0: f64 = 220.0;

/// Vowel-like test signal: an F0 harmonic series with a slow amplitude envelope.
fn speechy(rate: u32, secs: f64) -> Vec<i16> {
    let n = (f64::from(rate) * secs) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let env = 0.6 + 0.4 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
            let v: f64 = (1..=12)
                .map(|h| (2.0 * std::f64::consts::PI * F0 * f64::from(h) * t).sin() / f64::from(h))
                .sum();
            (v * env * 6000.0).round() as i16
        })
        .collect()
}

fn wav(rate: u32, samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2).to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    crate::pcm::i16_to_le_bytes(samples, &mut w);
    w
}

/// Samples of the `data` chunk of a mono 16-bit WAV.
fn wav_samples(w: &[u8]) -> Vec<i16> {
    let mut pos = 12;
    while pos + 8 <= w.len() {
        let id = &w[pos..pos + 4];
        let len = u32::from_le_bytes([w[pos + 4], w[pos + 5], w[pos + 6], w[pos + 7]]) as usize;
        if id == b"data" {
            let end = (pos + 8 + len).min(w.len()) & !1;
            let mut s = Vec::new();
            crate::pcm::le_bytes_to_i16(&w[pos + 8..end], &mut s).unwrap();
            return s;
        }
        pos += 8 + len + (len & 1);
    }
    panic!("no data chunk in WAV output");
}

fn resample(from: u32, to: u32, x: &[i16]) -> Vec<i16> {
    let mut r = StreamResampler::new(from, to).unwrap();
    let mut y = Vec::new();
    r.process(x, &mut y).unwrap();
    r.flush(&mut y).unwrap();
    y
}

#[test]
fn opusenc_packets_decode_through_input_pipeline() {
    if !tools_available() {
        return;
    }
    let src48 = speechy(48_000, 2.0);
    let (wav_path, opus_path) = (tmp("enc-in.wav"), tmp("enc-out.opus"));
    std::fs::write(&wav_path, wav(48_000, &src48)).unwrap();
    let st = Command::new("opusenc")
        .arg("--quiet")
        .arg(&wav_path)
        .arg(&opus_path)
        .status()
        .unwrap();
    assert!(st.success(), "opusenc failed");
    let file = std::fs::read(&opus_path).unwrap();
    let _ = std::fs::remove_file(&wav_path);
    let _ = std::fs::remove_file(&opus_path);
    let packets = ogg::read_packets(&file);
    assert!(packets.len() > 50, "only {} packets", packets.len());
    assert!(packets[0].starts_with(b"OpusHead") && packets[1].starts_with(b"OpusTags"));

    let host = HostFormat {
        codec: Codec::Opus,
        sample_rate: 48_000,
        channels: 1,
        frame_ms: 20,
    };
    let mut p = InputPipeline::new(host, WireFormat::Pcm16_24k, 4000).unwrap();
    let mut out = Vec::new();
    for (seq, pk) in packets[2..].iter().enumerate() {
        p.push(pk, Some(seq as u64), &mut out).unwrap();
    }
    let mut got = Vec::new();
    crate::pcm::le_bytes_to_i16(&out, &mut got).unwrap();
    let reference = resample(48_000, 24_000, &src48);
    assert!(
        got.len() >= reference.len(),
        "decoded {} < source {}",
        got.len(),
        reference.len()
    );
    // opusenc's pre-skip (312 @ 48 kHz = 156 @ 24 kHz) shows up as a lag.
    let (lag, c) = best_lag_correlation(&reference[..40_000], &got, 800);
    eprintln!("opusenc → InputPipeline: correlation {c:.4} at lag {lag}");
    assert!(c >= 0.9, "correlation {c} at lag {lag}");
}

#[test]
fn output_pipeline_packets_decode_with_opusdec() {
    if !tools_available() {
        return;
    }
    let src24 = speechy(24_000, 2.0);
    let host = HostFormat {
        codec: Codec::Opus,
        sample_rate: 48_000,
        channels: 1,
        frame_ms: 20,
    };
    let mut op = OutputPipeline::new(WireFormat::Pcm16_24k, host).unwrap();
    let mut frames = Vec::new();
    let mut bytes = Vec::new();
    crate::pcm::i16_to_le_bytes(&src24, &mut bytes);
    for piece in bytes.chunks(1234) {
        op.push(piece, &mut frames).unwrap();
    }
    op.flush(&mut frames);
    let packets: Vec<Vec<u8>> = frames.into_iter().map(|f| f.data).collect();
    assert_eq!(packets.len(), 100);
    // Opus look-ahead at 24 kHz is 6.5 ms → 312 samples at the 48 kHz granule clock.
    let file = ogg::write_opus(&packets, 960, 1, 312);
    let (opus_path, wav_path) = (tmp("dec-in.opus"), tmp("dec-out.wav"));
    std::fs::write(&opus_path, file).unwrap();
    let st = Command::new("opusdec")
        .args(["--quiet", "--rate", "48000"])
        .arg(&opus_path)
        .arg(&wav_path)
        .status()
        .unwrap();
    let decoded = std::fs::read(&wav_path);
    let _ = std::fs::remove_file(&wav_path);
    let _ = std::fs::remove_file(&opus_path);
    assert!(st.success(), "opusdec rejected our Ogg Opus stream");
    let got48 = wav_samples(&decoded.unwrap());
    assert!(
        got48.len() >= 95_000,
        "opusdec produced {} samples",
        got48.len()
    );
    let got24 = resample(48_000, 24_000, &got48);
    let (lag, c) = best_lag_correlation(&src24[..40_000], &got24, 800);
    eprintln!("OutputPipeline → opusdec: correlation {c:.4} at lag {lag}");
    assert!(c >= 0.9, "correlation {c} at lag {lag}");
}
