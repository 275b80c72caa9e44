//! The two streaming conversion chains the session layer drives: [`InputPipeline`] (host frames →
//! wire bytes for `input_audio_buffer.append`) and [`OutputPipeline`] (model audio deltas → host
//! frames of exactly `frame_ms`). They own every piece of cross-frame state — resampler history,
//! Opus codec state, partially filled output frames — so results never depend on how the audio
//! was chunked, and a barge-in `reset` drops all of it at once.

use crate::error::AudioError;
use crate::format::{is_passthrough_pair, Codec, HostFormat, WireFormat};
use crate::opus::{OpusDecoder, OpusEncoder};
use crate::resample::StreamResampler;
use crate::{g711, pcm};

/// Concealment is capped so a huge sequence jump (host restart, counter wrap) cannot make us
/// synthesise seconds of audio; beyond this the gap simply closes up.
pub const MAX_CONCEAL_MS: usize = 120;

/// Decodes wire bytes (mono) to samples.
fn decode_wire(wire: WireFormat, bytes: &[u8], out: &mut Vec<i16>) -> Result<(), AudioError> {
    match wire {
        WireFormat::Pcm16_24k => pcm::le_bytes_to_i16(bytes, out),
        WireFormat::Ulaw8k => {
            g711::decode_ulaw(bytes, out);
            Ok(())
        }
        WireFormat::Alaw8k => {
            g711::decode_alaw(bytes, out);
            Ok(())
        }
    }
}

fn encode_wire(wire: WireFormat, samples: &[i16], out: &mut Vec<u8>) {
    match wire {
        WireFormat::Pcm16_24k => pcm::i16_to_le_bytes(samples, out),
        WireFormat::Ulaw8k => g711::encode_ulaw(samples, out),
        WireFormat::Alaw8k => g711::encode_alaw(samples, out),
    }
}

struct OpusIn {
    dec: OpusDecoder,
    last_seq: Option<u64>,
}

/// Host input → wire bytes.
pub struct InputPipeline {
    host: HostFormat,
    wire: WireFormat,
    max_frame_bytes: usize,
    passthrough: bool,
    opus: Option<OpusIn>,
    resampler: StreamResampler,
    decoded: Vec<i16>,
    mono: Vec<i16>,
    resampled: Vec<i16>,
}

impl std::fmt::Debug for InputPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputPipeline")
            .field("host", &self.host)
            .field("wire", &self.wire)
            .field("passthrough", &self.passthrough)
            .finish()
    }
}

impl InputPipeline {
    /// `host` is normalised here, so callers may pass the raw proto values.
    pub fn new(
        host: HostFormat,
        wire: WireFormat,
        max_frame_bytes: usize,
    ) -> Result<Self, AudioError> {
        let host = host.normalized()?;
        let wire_rate = wire.sample_rate();
        let (opus, source_rate) = if host.codec == Codec::Opus {
            // Decode straight at the wire rate: libopus renders any rate it supports.
            (
                Some(OpusIn {
                    dec: OpusDecoder::new(wire_rate, 1)?,
                    last_seq: None,
                }),
                wire_rate,
            )
        } else {
            (None, host.sample_rate)
        };
        Ok(InputPipeline {
            host,
            wire,
            max_frame_bytes,
            passthrough: is_passthrough_pair(&host, wire),
            opus,
            resampler: StreamResampler::new(source_rate, wire_rate)?,
            decoded: Vec::new(),
            mono: Vec::new(),
            resampled: Vec::new(),
        })
    }

    pub fn host_format(&self) -> HostFormat {
        self.host
    }

    pub fn wire_format(&self) -> WireFormat {
        self.wire
    }

    pub fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    /// Added latency of the conversion in milliseconds (resampler group delay; 0 for pass-through).
    pub fn delay_ms(&self) -> f64 {
        self.resampler.delay_ms()
    }

    /// Appends the wire-format bytes for one host frame to `out`. On error nothing is appended.
    /// `seq`: host frame counter, if any; for Opus a gap (seq > last+1) is concealed before this
    /// packet is decoded, using this packet's FEC data for the last missing packet.
    pub fn push(
        &mut self,
        frame: &[u8],
        seq: Option<u64>,
        out: &mut Vec<u8>,
    ) -> Result<(), AudioError> {
        if frame.is_empty() {
            return Err(AudioError::EmptyFrame);
        }
        if frame.len() > self.max_frame_bytes {
            return Err(AudioError::FrameTooLarge {
                len: frame.len(),
                max: self.max_frame_bytes,
            });
        }
        if let Some(bpf) = self.host.bytes_per_sample_frame() {
            if self.host.codec == Codec::Pcm16 && !frame.len().is_multiple_of(2) {
                return Err(AudioError::OddByteCount { len: frame.len() });
            }
            if !frame.len().is_multiple_of(bpf) {
                return Err(AudioError::MisalignedFrame {
                    len: frame.len(),
                    frame_bytes: bpf,
                });
            }
        }
        if self.passthrough {
            out.extend_from_slice(frame);
            return Ok(());
        }
        self.decoded.clear();
        self.mono.clear();
        self.resampled.clear();
        match self.host.codec {
            Codec::Pcm16 => pcm::le_bytes_to_i16(frame, &mut self.decoded)?,
            Codec::Mulaw => g711::decode_ulaw(frame, &mut self.decoded),
            Codec::Alaw => g711::decode_alaw(frame, &mut self.decoded),
            Codec::Opus => {
                if let Some(o) = self.opus.as_mut() {
                    Self::decode_opus(o, frame, seq, &mut self.mono)?;
                }
            }
        }
        if self.host.codec != Codec::Opus {
            if self.host.channels == 2 {
                pcm::downmix_stereo(&self.decoded, &mut self.mono);
            } else {
                std::mem::swap(&mut self.decoded, &mut self.mono);
            }
        }
        self.resampler.process(&self.mono, &mut self.resampled)?;
        encode_wire(self.wire, &self.resampled, out);
        Ok(())
    }

    fn decode_opus(
        o: &mut OpusIn,
        packet: &[u8],
        seq: Option<u64>,
        out: &mut Vec<i16>,
    ) -> Result<(), AudioError> {
        // Validate the packet before concealing, so a garbage frame cannot trigger synthesis.
        let this_len = o.dec.packet_samples(packet)?;
        let missing = match (o.last_seq, seq) {
            (Some(last), Some(s)) if s > last.saturating_add(1) => s - last - 1,
            _ => 0,
        };
        if let Some(s) = seq {
            o.last_seq = Some(o.last_seq.map_or(s, |l| l.max(s)));
        }
        if missing > 0 {
            let lost_len = match o.dec.last_packet_samples() {
                0 => this_len,
                n => n,
            };
            let budget = o.dec.sample_rate() as usize * MAX_CONCEAL_MS / 1000;
            let count = usize::try_from(missing)
                .unwrap_or(usize::MAX)
                .min(budget / lost_len.max(1));
            for i in 0..count {
                if i + 1 == count {
                    o.dec.decode_fec(packet, lost_len, out)?;
                } else {
                    o.dec.conceal(lost_len, out)?;
                }
            }
        }
        o.dec.decode(packet, out)?;
        Ok(())
    }
}

/// One host-bound frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutFrame {
    pub data: Vec<u8>,
    pub duration_us: u32,
}

/// Wire bytes (from the model) → host frames of exactly `frame_ms` each (Opus: one packet per frame).
pub struct OutputPipeline {
    wire: WireFormat,
    host: HostFormat,
    passthrough: bool,
    resampler: StreamResampler,
    encoder: Option<OpusEncoder>,
    /// Rate of the samples in `pending` (host rate, or the Opus encoder's input rate).
    rate: u32,
    /// Pass-through: raw wire bytes; otherwise unused.
    pending_bytes: Vec<u8>,
    /// Mono samples at `rate` not yet emitted as a frame.
    pending: Vec<i16>,
    /// Frames emitted since the last reset/flush; frame boundaries are computed cumulatively so
    /// rates like 11025 Hz (110.25 samples per 10 ms) never drift.
    frames: u64,
    scratch: Vec<i16>,
}

impl std::fmt::Debug for OutputPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputPipeline")
            .field("wire", &self.wire)
            .field("host", &self.host)
            .field("passthrough", &self.passthrough)
            .finish()
    }
}

impl OutputPipeline {
    pub fn new(wire: WireFormat, host: HostFormat) -> Result<Self, AudioError> {
        let host = host.normalized()?;
        let wire_rate = wire.sample_rate();
        let (encoder, rate) = if host.codec == Codec::Opus {
            // Encode straight from the wire rate; the packets are rate-agnostic.
            (
                Some(OpusEncoder::new(wire_rate, host.channels, host.frame_ms)?),
                wire_rate,
            )
        } else {
            (None, host.sample_rate)
        };
        Ok(OutputPipeline {
            wire,
            host,
            passthrough: is_passthrough_pair(&host, wire),
            resampler: StreamResampler::new(wire_rate, rate)?,
            encoder,
            rate,
            pending_bytes: Vec::new(),
            pending: Vec::new(),
            frames: 0,
            scratch: Vec::new(),
        })
    }

    pub fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    pub fn host_format(&self) -> HostFormat {
        self.host
    }

    /// Added latency in milliseconds (resampler group delay plus Opus look-ahead).
    pub fn delay_ms(&self) -> f64 {
        let la = self.encoder.as_ref().map_or(0.0, |e| {
            e.lookahead() as f64 * 1000.0 / f64::from(self.rate)
        });
        self.resampler.delay_ms() + la
    }

    /// Samples (per channel, at `rate`) that make up frame number `k`.
    fn frame_len(&self, k: u64) -> usize {
        let per =
            |k: u64| u128::from(k) * u128::from(self.rate) * u128::from(self.host.frame_ms) / 1000;
        usize::try_from(per(k + 1) - per(k)).unwrap_or(usize::MAX)
    }

    fn duration_us(&self, samples: usize) -> u32 {
        let us = samples as u64 * 1_000_000 / u64::from(self.rate.max(1));
        u32::try_from(us).unwrap_or(u32::MAX)
    }

    /// Emits every complete host frame now available. On error nothing is buffered or emitted.
    pub fn push(&mut self, wire: &[u8], out: &mut Vec<OutFrame>) -> Result<(), AudioError> {
        if self.wire == WireFormat::Pcm16_24k && !wire.len().is_multiple_of(2) {
            return Err(AudioError::OddByteCount { len: wire.len() });
        }
        if self.passthrough {
            self.pending_bytes.extend_from_slice(wire);
            self.emit_bytes(out);
            return Ok(());
        }
        self.scratch.clear();
        decode_wire(self.wire, wire, &mut self.scratch)?;
        self.resampler.process(&self.scratch, &mut self.pending)?;
        self.emit(out, false)
    }

    /// End of an utterance: drains the resampler tail and emits the remainder (PCM/G.711: a
    /// shorter final frame; Opus: padded with silence to a full packet). Errors (only possible from
    /// libopus) drop the final frame; use [`try_flush`](Self::try_flush) to observe them.
    pub fn flush(&mut self, out: &mut Vec<OutFrame>) {
        let _ = self.try_flush(out);
    }

    /// [`flush`](Self::flush) reporting encoder/resampler errors. State is reset either way.
    pub fn try_flush(&mut self, out: &mut Vec<OutFrame>) -> Result<(), AudioError> {
        let r = if self.passthrough {
            self.emit_bytes(out);
            if !self.pending_bytes.is_empty() {
                let data = std::mem::take(&mut self.pending_bytes);
                let samples = data.len() / self.wire.bytes_per_sample();
                out.push(OutFrame {
                    duration_us: self.duration_us(samples),
                    data,
                });
            }
            Ok(())
        } else {
            self.resampler
                .flush(&mut self.pending)
                .and_then(|()| self.emit(out, true))
        };
        self.reset();
        r
    }

    /// Barge-in: drops everything buffered and resets resampler/encoder state.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.pending_bytes.clear();
        self.frames = 0;
        self.resampler.reset();
        if let Some(e) = self.encoder.as_mut() {
            e.reset();
        }
    }

    fn emit_bytes(&mut self, out: &mut Vec<OutFrame>) {
        let bps = self.wire.bytes_per_sample();
        let mut start = 0;
        loop {
            let len = self.frame_len(self.frames);
            let Some(chunk) = self.pending_bytes.get(start..start + len * bps) else {
                break;
            };
            out.push(OutFrame {
                data: chunk.to_vec(),
                duration_us: self.duration_us(len),
            });
            start += len * bps;
            self.frames += 1;
        }
        self.pending_bytes.drain(..start);
    }

    fn emit(&mut self, out: &mut Vec<OutFrame>, final_partial: bool) -> Result<(), AudioError> {
        let mut start = 0;
        let mut frames = Vec::new();
        let mut result = Ok(());
        let pending = std::mem::take(&mut self.pending);
        loop {
            let len = self.frame_len(self.frames);
            let avail = pending.len() - start;
            if avail == 0 || (avail < len && !final_partial) {
                break;
            }
            let take = avail.min(len);
            let samples = pending.get(start..start + take).unwrap_or_default();
            match self.encode_frame(samples, len) {
                Ok(f) => frames.push(f),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            start += take;
            self.frames += 1;
        }
        self.pending = pending;
        self.pending.drain(..start);
        out.extend(frames);
        result
    }

    fn encode_frame(&mut self, samples: &[i16], full_len: usize) -> Result<OutFrame, AudioError> {
        // Opus packets must be full-length, so a short final frame is padded with silence.
        let pad = if self.encoder.is_some() {
            full_len.saturating_sub(samples.len())
        } else {
            0
        };
        let padded: Vec<i16>;
        let mono: &[i16] = if pad > 0 {
            padded = samples
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, pad))
                .collect();
            &padded
        } else {
            samples
        };
        let stereo_buf: Vec<i16>;
        let interleaved: &[i16] = if self.host.channels == 2 {
            let mut b = Vec::with_capacity(mono.len() * 2);
            pcm::mono_to_stereo(mono, &mut b);
            stereo_buf = b;
            &stereo_buf
        } else {
            mono
        };
        let per_channel = interleaved.len() / usize::from(self.host.channels.max(1));
        let duration_us = self.duration_us(per_channel);
        let mut data = Vec::new();
        match (self.host.codec, self.encoder.as_mut()) {
            (Codec::Opus, Some(enc)) => data = enc.encode(interleaved)?,
            (Codec::Mulaw, _) => g711::encode_ulaw(interleaved, &mut data),
            (Codec::Alaw, _) => g711::encode_alaw(interleaved, &mut data),
            _ => pcm::i16_to_le_bytes(interleaved, &mut data),
        }
        Ok(OutFrame { data, duration_us })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{best_lag_correlation, sine, sweep};
    use rand::{Rng, SeedableRng};

    fn hf(codec: Codec, sample_rate: u32, channels: u16, frame_ms: u32) -> HostFormat {
        HostFormat {
            codec,
            sample_rate,
            channels,
            frame_ms,
        }
    }

    fn bytes(samples: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        pcm::i16_to_le_bytes(samples, &mut b);
        b
    }

    fn samples(b: &[u8]) -> Vec<i16> {
        let mut s = Vec::new();
        pcm::le_bytes_to_i16(b, &mut s).unwrap();
        s
    }

    /// Splits `data` into pieces whose sizes are multiples of `align`.
    fn ragged(data: &[u8], align: usize, seed: u64) -> Vec<&[u8]> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = (rng.random_range(1..=400usize) * align).min(rest.len());
            out.push(&rest[..n]);
            rest = &rest[n..];
        }
        out
    }

    fn run_input(p: &mut InputPipeline, frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            p.push(f, None, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn input_frame_edges_are_seamless() {
        for host in [
            hf(Codec::Pcm16, 16_000, 1, 20),
            hf(Codec::Pcm16, 16_000, 2, 20),
            hf(Codec::Mulaw, 8_000, 2, 20),
        ] {
            let mono = sweep(
                host.sample_rate,
                100.0,
                3_500.0,
                12_000.0,
                host.sample_rate as usize * 2,
            );
            let mut inter = Vec::new();
            if host.channels == 2 {
                pcm::mono_to_stereo(&mono, &mut inter);
            } else {
                inter = mono.clone();
            }
            let data = match host.codec {
                Codec::Mulaw => {
                    let mut b = Vec::new();
                    g711::encode_ulaw(&inter, &mut b);
                    b
                }
                _ => bytes(&inter),
            };
            let bpf = host.bytes_per_sample_frame().unwrap();
            let new = || InputPipeline::new(host, WireFormat::Pcm16_24k, 1 << 20).unwrap();
            let whole = run_input(&mut new(), &[&data]);
            // 2 s of input minus at most one 2 ms resampler chunk still buffered.
            assert!(
                whole.len() >= (48_000 - 48 - 200) * 2,
                "{host:?}: {}",
                whole.len()
            );
            for ms in [10usize, 20, 60] {
                let step = host.bytes_per_sec().unwrap() * ms / 1000;
                let frames: Vec<&[u8]> = data.chunks(step).collect();
                assert_eq!(
                    run_input(&mut new(), &frames),
                    whole,
                    "{host:?} {ms} ms frames"
                );
            }
            for seed in 0..3 {
                assert_eq!(
                    run_input(&mut new(), &ragged(&data, bpf, seed)),
                    whole,
                    "{host:?} ragged {seed}"
                );
            }
        }
    }

    fn run_output(p: &mut OutputPipeline, pieces: &[&[u8]]) -> Vec<OutFrame> {
        let mut out = Vec::new();
        for piece in pieces {
            p.push(piece, &mut out).unwrap();
        }
        p.flush(&mut out);
        out
    }

    #[test]
    fn output_frame_edges_are_seamless_and_sized() {
        let src = sweep(24_000, 100.0, 3_500.0, 12_000.0, 24_000 * 2 + 77);
        let data = bytes(&src);
        for rate in [8_000u32, 16_000, 44_100, 48_000, 11_025] {
            for frame_ms in [10u32, 20, 60] {
                let host = hf(Codec::Pcm16, rate, 1, frame_ms);
                let new = || OutputPipeline::new(WireFormat::Pcm16_24k, host).unwrap();
                let whole = run_output(&mut new(), &[&data]);
                let cat =
                    |f: &[OutFrame]| f.iter().flat_map(|x| x.data.clone()).collect::<Vec<u8>>();
                let expected_len = (src.len() as u64 * u64::from(rate) + 12_000) / 24_000;
                assert_eq!(cat(&whole).len() as u64, expected_len * 2, "{rate} Hz");
                for (i, f) in whole.iter().enumerate() {
                    let n = f.data.len() as u64 / 2;
                    let nominal = u64::from(rate) * u64::from(frame_ms) / 1000;
                    if i + 1 < whole.len() {
                        assert!(
                            n == nominal || n == nominal + 1,
                            "{rate} Hz frame {i}: {n} samples"
                        );
                        assert!(
                            f.duration_us.abs_diff(frame_ms * 1000) <= 100,
                            "{}",
                            f.duration_us
                        );
                    } else {
                        assert!(n <= nominal + 1 && n > 0);
                    }
                }
                for seed in 0..2 {
                    let frames = run_output(&mut new(), &ragged(&data, 2, seed));
                    assert_eq!(cat(&frames), cat(&whole), "{rate} Hz {frame_ms} ms ragged");
                }
            }
        }
    }

    #[test]
    fn passthrough_is_byte_exact() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let data: Vec<u8> = (0..8_000).map(|_| rng.random()).collect();
        for (host, wire) in [
            (hf(Codec::Mulaw, 8_000, 1, 20), WireFormat::Ulaw8k),
            (hf(Codec::Pcm16, 24_000, 1, 20), WireFormat::Pcm16_24k),
        ] {
            assert_eq!(crate::wire_format_for(&host), wire);
            let mut ip = InputPipeline::new(host, wire, 4096).unwrap();
            assert!(ip.is_passthrough());
            assert_eq!(
                run_input(&mut ip, &data.chunks(640).collect::<Vec<_>>()),
                data
            );
            let mut op = OutputPipeline::new(wire, host).unwrap();
            assert!(op.is_passthrough());
            let frames = run_output(&mut op, &ragged(&data, 2, 3));
            assert_eq!(
                frames
                    .iter()
                    .flat_map(|f| f.data.clone())
                    .collect::<Vec<_>>(),
                data
            );
            let frame_bytes = host.bytes_per_ms().unwrap() * 20;
            assert!(frames[..frames.len() - 1]
                .iter()
                .all(|f| f.data.len() == frame_bytes && f.duration_us == 20_000));
        }
        assert!(
            !InputPipeline::new(hf(Codec::Mulaw, 8_000, 2, 20), WireFormat::Ulaw8k, 4096)
                .unwrap()
                .is_passthrough()
        );
        assert!(
            !InputPipeline::new(hf(Codec::Pcm16, 16_000, 1, 20), WireFormat::Pcm16_24k, 4096)
                .unwrap()
                .is_passthrough()
        );
    }

    #[test]
    fn g711_wire_and_stereo_output() {
        // PCM16 16 kHz host on a µ-law wire: 1 kHz tone survives the 16k→8k and G.711 steps.
        let mut ip =
            InputPipeline::new(hf(Codec::Pcm16, 16_000, 1, 20), WireFormat::Ulaw8k, 1 << 16)
                .unwrap();
        let x = sine(16_000, 1_000.0, 10_000.0, 16_000);
        let mut wire = Vec::new();
        ip.push(&bytes(&x), None, &mut wire).unwrap();
        let mut dec = Vec::new();
        g711::decode_ulaw(&wire, &mut dec);
        let (snr, amp, _) = crate::test_util::fit_sine(&dec, 8_000, 1_000.0, 400..7_500);
        assert!(
            snr > 30.0 && (amp - 10_000.0).abs() < 300.0,
            "snr {snr} amp {amp}"
        );
        // A-law wire → stereo PCM 48 kHz: both channels identical, frames of 20 ms.
        let mut op =
            OutputPipeline::new(WireFormat::Alaw8k, hf(Codec::Pcm16, 48_000, 2, 20)).unwrap();
        let mut a = Vec::new();
        g711::encode_alaw(&sine(8_000, 500.0, 8_000.0, 8_000), &mut a);
        let frames = run_output(&mut op, &[&a]);
        assert_eq!(frames[0].data.len(), 960 * 2 * 2);
        let s = samples(
            &frames
                .iter()
                .flat_map(|f| f.data.clone())
                .collect::<Vec<_>>(),
        );
        assert_eq!(s.len(), 48_000 * 2);
        assert!(s.chunks_exact(2).all(|p| p[0] == p[1]));
    }

    #[test]
    fn bad_input_is_rejected() {
        let mut p = InputPipeline::new(hf(Codec::Pcm16, 16_000, 1, 20), WireFormat::Pcm16_24k, 640)
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(
            p.push(&[0; 3], None, &mut out).unwrap_err(),
            AudioError::OddByteCount { len: 3 }
        );
        assert_eq!(
            p.push(&[0; 642], None, &mut out).unwrap_err(),
            AudioError::FrameTooLarge { len: 642, max: 640 }
        );
        assert_eq!(
            p.push(&[], None, &mut out).unwrap_err().code(),
            "empty_frame"
        );
        assert!(out.is_empty());
        let mut st =
            InputPipeline::new(hf(Codec::Pcm16, 16_000, 2, 20), WireFormat::Pcm16_24k, 640)
                .unwrap();
        assert_eq!(
            st.push(&[0; 6], None, &mut out).unwrap_err().code(),
            "misaligned_frame"
        );
        let mut pt =
            InputPipeline::new(hf(Codec::Pcm16, 24_000, 1, 20), WireFormat::Pcm16_24k, 640)
                .unwrap();
        assert_eq!(
            pt.push(&[0; 5], None, &mut out).unwrap_err().code(),
            "odd_byte_count"
        );
        let mut op =
            OutputPipeline::new(WireFormat::Pcm16_24k, hf(Codec::Pcm16, 16_000, 1, 20)).unwrap();
        let mut frames = Vec::new();
        assert_eq!(
            op.push(&[0; 7], &mut frames).unwrap_err().code(),
            "odd_byte_count"
        );
        for bad in [
            hf(Codec::Pcm16, 7_000, 1, 20),
            hf(Codec::Pcm16, 96_000, 1, 20),
            hf(Codec::Mulaw, 16_000, 1, 20),
            hf(Codec::Opus, 48_000, 1, 25),
        ] {
            assert!(
                InputPipeline::new(bad, WireFormat::Pcm16_24k, 640).is_err(),
                "{bad:?}"
            );
            assert!(
                OutputPipeline::new(WireFormat::Pcm16_24k, bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn output_reset_drops_buffered_audio() {
        let mut op =
            OutputPipeline::new(WireFormat::Pcm16_24k, hf(Codec::Pcm16, 16_000, 1, 20)).unwrap();
        let mut frames = Vec::new();
        op.push(&bytes(&sine(24_000, 440.0, 9_000.0, 700)), &mut frames)
            .unwrap();
        op.reset();
        frames.clear();
        op.flush(&mut frames);
        assert!(frames.is_empty(), "{} frames after reset", frames.len());
        // After reset the pipeline behaves like a fresh one.
        let src = bytes(&sine(24_000, 440.0, 9_000.0, 4_800));
        let mut a = Vec::new();
        op.push(&src, &mut a).unwrap();
        op.flush(&mut a);
        let mut fresh =
            OutputPipeline::new(WireFormat::Pcm16_24k, hf(Codec::Pcm16, 16_000, 1, 20)).unwrap();
        assert_eq!(a, run_output(&mut fresh, &[&src]));
    }

    fn opus_packets(rate: u32, src: &[i16], frame_ms: u32) -> Vec<Vec<u8>> {
        let mut enc = OpusEncoder::new(rate, 1, frame_ms).unwrap();
        let n = enc.frame_samples();
        src.chunks_exact(n)
            .map(|f| enc.encode(f).unwrap())
            .collect()
    }

    #[test]
    fn opus_input_decodes_and_conceals_gaps() {
        let src = sine(48_000, 440.0, 9_000.0, 48_000);
        let packets = opus_packets(48_000, &src, 20);
        let host = hf(Codec::Opus, 48_000, 1, 20);
        let mut p = InputPipeline::new(host, WireFormat::Pcm16_24k, 4000).unwrap();
        assert!(!p.is_passthrough());
        let mut out = Vec::new();
        for (i, pk) in packets.iter().enumerate() {
            if i == 10 || i == 20 || i == 21 || i == 22 {
                continue; // lost: 1 and then 3 consecutive packets
            }
            p.push(pk, Some(i as u64), &mut out).unwrap();
        }
        // Every packet (received or concealed) is 20 ms = 480 samples at 24 kHz.
        assert_eq!(out.len(), packets.len() * 480 * 2);
        let dec = samples(&out);
        let reference: Vec<i16> = sine(24_000, 440.0, 9_000.0, 24_000);
        let (lag, c) = best_lag_correlation(&reference[..20_000], &dec, 400);
        assert!(c > 0.9, "correlation {c} at lag {lag}");
        // Corrupt packets are errors, not panics, and nothing is appended.
        let before = out.len();
        let e = p.push(&[0x03, 0x31], Some(50), &mut out).unwrap_err();
        assert_eq!(e.code(), "opus_decode");
        assert_eq!(out.len(), before);
    }

    #[test]
    fn opus_output_packets_decode_to_source() {
        let host = hf(Codec::Opus, 48_000, 1, 20);
        let mut op = OutputPipeline::new(WireFormat::Pcm16_24k, host).unwrap();
        let src = sine(24_000, 330.0, 9_000.0, 24_000 + 100);
        let frames = run_output(&mut op, &ragged(&bytes(&src), 2, 9));
        // 1.0042 s → 51 packets, the last padded with silence.
        assert_eq!(frames.len(), 51);
        assert!(frames.iter().all(|f| f.duration_us == 20_000));
        let mut dec = OpusDecoder::new(48_000, 1).unwrap();
        let mut pcm48 = Vec::new();
        for f in &frames {
            assert_eq!(dec.packet_samples(&f.data).unwrap(), 960);
            dec.decode(&f.data, &mut pcm48).unwrap();
        }
        let reference = sine(48_000, 330.0, 9_000.0, 40_000);
        let (lag, c) = best_lag_correlation(&reference, &pcm48, 600);
        assert!(c > 0.9, "correlation {c} at lag {lag}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn random_bytes_never_panic(
            frames in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..1500), 1..12),
            seqs in proptest::collection::vec(0u64..40, 12),
            which in 0usize..7,
        ) {
            let hosts = [
                hf(Codec::Pcm16, 16_000, 1, 20),
                hf(Codec::Pcm16, 44_100, 2, 10),
                hf(Codec::Mulaw, 8_000, 1, 20),
                hf(Codec::Alaw, 8_000, 2, 60),
                hf(Codec::Opus, 48_000, 1, 20),
                hf(Codec::Opus, 48_000, 2, 60),
                hf(Codec::Pcm16, 24_000, 1, 20),
            ];
            let host = hosts[which];
            for wire in [WireFormat::Pcm16_24k, WireFormat::Ulaw8k, WireFormat::Alaw8k] {
                let mut ip = InputPipeline::new(host, wire, 1200).unwrap();
                let mut op = OutputPipeline::new(wire, host).unwrap();
                let mut out = Vec::new();
                let mut oframes = Vec::new();
                for (f, s) in frames.iter().zip(&seqs) {
                    let _ = ip.push(f, Some(*s), &mut out);
                    let _ = op.push(f, &mut oframes);
                }
                op.flush(&mut oframes);
            }
            let mut dec = OpusDecoder::new(24_000, 2).unwrap();
            let mut s = Vec::new();
            for f in &frames {
                let _ = dec.decode(f, &mut s);
                let _ = dec.decode_fec(f, 480, &mut s);
                let _ = dec.packet_samples(f);
                g711::decode_ulaw(f, &mut s);
                g711::decode_alaw(f, &mut s);
                let _ = pcm::le_bytes_to_i16(f, &mut s);
            }
        }
    }
}
