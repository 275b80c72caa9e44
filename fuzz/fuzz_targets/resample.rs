//! The streaming resampler: arbitrary chunking must not panic, the output for the same input must be
//! identical however the input is chunked (i16 and f32 paths), and after a flush the total output is
//! exactly `round(n · out / in)` samples.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use voice_audio::StreamResampler;

#[derive(Arbitrary, Debug)]
struct Input {
    in_rate: u16,
    out_rate: u16,
    samples: Vec<i16>,
    cuts: Vec<u16>,
}

const RATES: [u32; 9] = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000];

/// Half the time a rate the proto produces, otherwise any rate in 8000..=48000 (which reaches the
/// sinc fallback for ratios with too many polyphase phases).
fn rate(sel: u16) -> u32 {
    if sel & 1 == 0 {
        RATES[usize::from(sel >> 1) % RATES.len()]
    } else {
        8000 + u32::from(sel >> 1) % 40_001
    }
}

fn chunks<'a, T>(mut s: &'a [T], cuts: &[u16]) -> Vec<&'a [T]> {
    let mut out = Vec::new();
    for &c in cuts {
        let n = usize::from(c) % (s.len() + 1);
        let (a, b) = s.split_at(n);
        out.push(a);
        s = b;
    }
    out.push(s);
    out
}

fuzz_target!(|inp: Input| {
    let (fin, fout) = (rate(inp.in_rate), rate(inp.out_rate));
    let x = &inp.samples;

    let mut whole = Vec::new();
    let mut r = StreamResampler::new(fin, fout).expect("rate in range");
    r.process(x, &mut whole).unwrap();
    r.flush(&mut whole).unwrap();

    let mut pieces = Vec::new();
    let mut r = StreamResampler::new(fin, fout).expect("rate in range");
    for c in chunks(x, &inp.cuts) {
        r.process(c, &mut pieces).unwrap();
    }
    r.flush(&mut pieces).unwrap();
    assert_eq!(whole, pieces, "{fin} -> {fout}: output depends on chunking");

    let n = x.len() as u64;
    let want = (n * u64::from(fout) + u64::from(fin / 2)) / u64::from(fin);
    assert_eq!(whole.len() as u64, want, "{fin} -> {fout}: flushed length");

    // The resampler resets on flush: a second stream on the same instance matches a fresh one.
    let mut again = Vec::new();
    r.process(x, &mut again).unwrap();
    r.flush(&mut again).unwrap();
    assert_eq!(whole, again, "{fin} -> {fout}: flush did not reset");

    let xf: Vec<f32> = x.iter().map(|&v| f32::from(v) / 32768.0).collect();
    let mut whole_f = Vec::new();
    let mut r = StreamResampler::new(fin, fout).expect("rate in range");
    r.process_f32(&xf, &mut whole_f).unwrap();
    r.flush_f32(&mut whole_f).unwrap();
    let mut pieces_f = Vec::new();
    let mut r = StreamResampler::new(fin, fout).expect("rate in range");
    for c in chunks(&xf, &inp.cuts) {
        r.process_f32(c, &mut pieces_f).unwrap();
    }
    r.flush_f32(&mut pieces_f).unwrap();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&whole_f),
        bits(&pieces_f),
        "{fin} -> {fout}: f32 output depends on chunking"
    );
});
