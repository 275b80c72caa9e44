//! WebRTC-style hosts: Opus in and out through the real sidecar. The host encodes a speech-like signal
//! at 48 kHz into 20 ms Opus packets, skips one (packet loss), sends one corrupt packet, and decodes
//! what comes back.

use base64::Engine;
use std::time::Duration;
use voice_audio::opus::{OpusDecoder, OpusEncoder};
use voice_e2e_tests::*;
use voice_proto::v1 as pb;
use voice_realtime_sim::{ScriptStep, SimConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_in_opus_out_with_loss_and_a_corrupt_packet() {
    let sim = start_sim(SimConfig {
        script: vec![ScriptStep::say("Opus works fine.")],
        ms_per_char: 60,
        record_client_events: true,
        ..Default::default()
    })
    .await;
    let sidecar = start_sidecar(&sim.base_url(), &[]).await;
    let start = pb::SessionStart {
        input_format: Some(audio_format(pb::Codec::Opus, 48000)),
        ..Default::default()
    };
    let (mut host, st) = HostSession::open_first_started(sidecar.addr, start).await;
    assert_eq!(st.upstream_audio_format, "pcm16");

    let mut signal = vec![0i16; 48000 / 5];
    signal.extend(speech_like(48000, 1.2));
    signal.extend(vec![0i16; 48000 * 3 / 2]);
    let mut enc = OpusEncoder::new(48000, 1, 20).unwrap();
    let packets: Vec<Vec<u8>> = signal
        .chunks_exact(960)
        .map(|c| enc.encode(c).unwrap())
        .collect();
    let sent_packets = packets.len();
    let frames = packets
        .into_iter()
        .enumerate()
        .map(|(i, p)| match i as u64 + 1 {
            30 => None,                // lost in the network: the sidecar conceals it
            40 => Some(vec![0xff; 7]), // corrupt
            _ => Some(p),
        });
    let streamer = host.stream_frames_in_background(frames.collect(), 1);
    let e = host.until_error(Duration::from_secs(10)).await;
    assert_eq!(e.code, "opus_decode", "{}", e.message);
    assert!(e.retryable, "a corrupt packet does not end the session");
    host.until_response_done(Duration::from_secs(20)).await;
    streamer.await.unwrap();

    // Upstream got 20 ms (960 bytes at 24 kHz) for every packet but the corrupt one: the lost packet
    // was concealed, not skipped.
    let appended: usize = sim
        .events_log()
        .iter()
        .filter(|e| e.event["type"] == "input_audio_buffer.append")
        .map(|e| {
            base64::engine::general_purpose::STANDARD
                .decode(e.event["audio"].as_str().unwrap())
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        appended,
        (sent_packets - 1) * 960,
        "lost packet concealed, corrupt packet dropped"
    );

    // What came back: one Opus packet per 20 ms frame, decodable, speech-like, of the right length.
    let mut dec = OpusDecoder::new(48000, 1).unwrap();
    let mut pcm = Vec::new();
    let frames = host.audio_frames();
    for f in &frames {
        assert_eq!(f.duration_us, 20_000);
        dec.decode(&f.data, &mut pcm)
            .expect("the sidecar's Opus packets decode");
    }
    let secs = pcm.len() as f64 / 48000.0;
    let expected = "Opus works fine.".len() as f64 * 0.060;
    assert!(
        secs > expected * 0.8 && secs < expected * 1.3,
        "reply {secs:.2} s, expected about {expected:.2} s"
    );
    assert!(
        rms_dbfs(&pcm) > -35.0,
        "reply is near-silent: {:.1} dBFS",
        rms_dbfs(&pcm)
    );
}
