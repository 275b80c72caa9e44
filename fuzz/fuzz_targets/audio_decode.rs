//! Every audio decoder, through the pipelines the session drives: host input (PCM16 at any allowed
//! rate, G.711 µ-law/A-law, Opus; mono or stereo; every frame duration) into each wire format, and
//! model audio (PCM16 24 kHz, G.711) back out to the host format. Every format the proto allows must
//! build, no frame may panic, and a refused frame must append nothing.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use voice_audio::format::{OPUS_FRAME_MS, PCM16_MAX_RATE, PCM16_MIN_RATE};
use voice_audio::{wire_format_for, Codec, HostFormat, InputPipeline, OutputPipeline, WireFormat};

#[derive(Arbitrary, Debug)]
struct Input {
    codec: u8,
    rate: u16,
    stereo: bool,
    frame_ms: u8,
    wire: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    In { seq: Option<u64>, data: Vec<u8> },
    Out { data: Vec<u8> },
    FlushOut,
    ResetOut,
}

const RATES: [u32; 9] = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000];
const MAX_FRAME_BYTES: usize = 64 * 1024;

fuzz_target!(|inp: Input| {
    let codec = [Codec::Pcm16, Codec::Mulaw, Codec::Alaw, Codec::Opus][usize::from(inp.codec % 4)];
    let sample_rate = match codec {
        Codec::Pcm16 if inp.rate & 1 == 0 => RATES[usize::from(inp.rate >> 1) % RATES.len()],
        Codec::Pcm16 => {
            PCM16_MIN_RATE + u32::from(inp.rate >> 1) % (PCM16_MAX_RATE - PCM16_MIN_RATE + 1)
        }
        Codec::Mulaw | Codec::Alaw => 8000,
        Codec::Opus => 48_000,
    };
    let frame_ms = match codec {
        Codec::Opus => OPUS_FRAME_MS[usize::from(inp.frame_ms) % OPUS_FRAME_MS.len()],
        _ => 10 + u32::from(inp.frame_ms) % 51,
    };
    let host = HostFormat {
        codec,
        sample_rate,
        channels: if inp.stereo { 2 } else { 1 },
        frame_ms,
    };
    let wire = match inp.wire % 4 {
        0 => WireFormat::Pcm16_24k,
        1 => WireFormat::Ulaw8k,
        2 => WireFormat::Alaw8k,
        _ => wire_format_for(&host),
    };
    let mut input = InputPipeline::new(host, wire, MAX_FRAME_BYTES)
        .unwrap_or_else(|e| panic!("{host:?} -> {wire:?} is allowed but refused: {e}"));
    let mut output = OutputPipeline::new(wire, host)
        .unwrap_or_else(|e| panic!("{wire:?} -> {host:?} is allowed but refused: {e}"));
    let mut bytes = Vec::new();
    let mut frames = Vec::new();
    for op in &inp.ops {
        match op {
            Op::In { seq, data } => {
                let before = bytes.len();
                if input.push(data, *seq, &mut bytes).is_err() {
                    assert_eq!(bytes.len(), before, "a refused input frame appended bytes");
                }
            }
            Op::Out { data } => {
                let _ = output.push(data, &mut frames);
            }
            Op::FlushOut => output.flush(&mut frames),
            Op::ResetOut => output.reset(),
        }
        if bytes.len() > 1 << 20 {
            bytes.clear();
        }
        if frames.len() > 256 {
            frames.clear();
        }
    }
    output.flush(&mut frames);
});
