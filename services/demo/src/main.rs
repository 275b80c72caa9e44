//! `voice-demo`: a host application in ~300 lines. It runs a `ToolHost` gRPC server with two tools
//! (a calendar lookup and a CRM update, each with artificial latency), opens one `Converse` stream,
//! streams a speech sample in real time as 16 kHz PCM16, and prints what comes back — transcripts,
//! events, tool calls and timings — then writes the assistant's audio to a WAV file.
//!
//! With `--translate LANG` it opens a translation session instead (`SESSION_KIND_TRANSLATION`):
//! the same sample is translated into LANG, the source and translated transcripts are printed as
//! they stream, and the translated audio is written to the WAV file.

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use voice_proto::v1 as pb;
use voice_proto::v1::client_message::Message as In;
use voice_proto::v1::server_message::Message as Out;

#[derive(Parser, Debug)]
#[command(about = "Demo host for voice-sidecar")]
struct Args {
    /// The sidecar's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    sidecar: String,
    /// Speech sample (mono 16-bit WAV).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample-16k.wav"))]
    wav: PathBuf,
    /// Where to write the assistant's audio.
    #[arg(long, default_value = "demo-reply.wav")]
    out: PathBuf,
    /// Address for this demo's ToolHost server.
    #[arg(long, default_value = "127.0.0.1:50061")]
    tools_listen: SocketAddr,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Run a translation session into this language (es, pt, fr, ja, ru, zh, de, ko, hi, id, vi,
    /// it or en) instead of the conversation.
    #[arg(long, value_name = "LANG")]
    translate: Option<String>,
}

/// The host's tools. Latencies are artificial, to show that parallel calls overlap.
struct DemoTools;

#[tonic::async_trait]
impl pb::tool_host_server::ToolHost for DemoTools {
    async fn invoke(
        &self,
        req: Request<pb::ToolInvocation>,
    ) -> Result<Response<pb::ToolOutput>, Status> {
        let inv = req.into_inner();
        let args: serde_json::Value =
            serde_json::from_str(&inv.arguments_json).unwrap_or(json!({}));
        let output = match inv.name.as_str() {
            "calendar_lookup" => {
                tokio::time::sleep(Duration::from_millis(600)).await;
                json!({"date": args["date"], "events": [
                    {"time": "09:30", "title": "Dentist"},
                    {"time": "14:00", "title": "Project review with Dana"}]})
            }
            "crm_update" => {
                tokio::time::sleep(Duration::from_millis(400)).await;
                json!({"status": "saved", "contact": args["contact"], "note_id": "N-1042"})
            }
            other => {
                return Ok(Response::new(pb::ToolOutput {
                    result: Some(pb::tool_output::Result::Error(format!(
                        "no such tool {other}"
                    ))),
                }))
            }
        };
        Ok(Response::new(pb::ToolOutput {
            result: Some(pb::tool_output::Result::OutputJson(output.to_string())),
        }))
    }
}

fn tools() -> Vec<pb::ToolDefinition> {
    vec![
        pb::ToolDefinition {
            name: "calendar_lookup".into(),
            description: "Look up the caller's calendar events for a date.".into(),
            parameters_json_schema: json!({"type": "object", "properties": {"date": {"type": "string"}}, "required": ["date"]}).to_string(),
            timeout_ms: 5000,
            ..Default::default()
        },
        pb::ToolDefinition {
            name: "crm_update".into(),
            description: "Add a note to the caller's CRM record.".into(),
            parameters_json_schema: json!({"type": "object", "properties": {"contact": {"type": "string"}, "note": {"type": "string"}}, "required": ["contact", "note"]}).to_string(),
            timeout_ms: 5000,
            ..Default::default()
        },
    ]
}

fn read_wav(path: &PathBuf) -> Result<(Vec<i16>, u32)> {
    let mut r =
        hound::WavReader::open(path).with_context(|| format!("opening {}", path.display()))?;
    let spec = r.spec();
    if spec.channels != 1 || spec.bits_per_sample != 16 {
        bail!("{} must be mono 16-bit PCM", path.display());
    }
    let samples = r.samples::<i16>().collect::<Result<Vec<_>, _>>()?;
    Ok((samples, spec.sample_rate))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (samples, rate) = read_wav(&args.wav)?;
    if let Some(lang) = &args.translate {
        return translate(&args, lang, samples, rate).await;
    }

    let tools_addr = args.tools_listen;
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(pb::tool_host_server::ToolHostServer::new(DemoTools))
            .serve(tools_addr)
            .await;
        if let Err(e) = r {
            eprintln!("tool host failed: {e}");
        }
    });

    let mut client = connect(&args.sidecar).await?;
    let (tx, rx) = mpsc::channel::<pb::ClientMessage>(64);
    let fmt = pb::AudioFormat {
        codec: pb::Codec::Pcm16 as i32,
        sample_rate_hz: rate,
        channels: 1,
        frame_ms: 20,
    };
    tx.send(msg(In::Start(pb::SessionStart {
        input_format: Some(fmt),
        output_format: Some(fmt),
        instructions: "You are a helpful phone assistant for a small business.".into(),
        tools: tools(),
        // GPT Realtime 2: a reasoning model that calls the two tools in parallel.
        model: "gpt-realtime-2".into(),
        reasoning: Some(pb::Reasoning {
            effort: pb::ReasoningEffort::Low as i32,
        }),
        parallel_tool_calls: Some(true),
        tool_routing: Some(pb::ToolRouting {
            route: Some(pb::tool_routing::Route::CallbackAddress(format!(
                "http://{tools_addr}"
            ))),
        }),
        ..Default::default()
    })))
    .await?;
    let t0 = Instant::now();
    let mut inbound = client
        .converse(ReceiverStream::new(rx))
        .await
        .context("opening Converse")?
        .into_inner();
    println!(
        "[{:>6} ms] Converse stream open, streaming {:.2} s of speech at {} Hz in 20 ms frames",
        t0.elapsed().as_millis(),
        samples.len() as f64 / f64::from(rate),
        rate
    );

    // The "microphone": the sample in real time, then silence, like a phone line that stays open.
    let mic = tx.clone();
    let frame = (rate / 50) as usize;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let silence = vec![0i16; frame];
        for seq in 1u64.. {
            tick.tick().await;
            let start = (seq as usize - 1) * frame;
            let chunk = if start < samples.len() {
                &samples[start..(start + frame).min(samples.len())]
            } else {
                &silence[..]
            };
            let data: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            if mic
                .send(msg(In::Audio(pb::AudioFrame {
                    data,
                    seq,
                    ..Default::default()
                })))
                .await
                .is_err()
            {
                break;
            }
        }
    });

    let deadline = tokio::time::sleep(Duration::from_secs(args.timeout_secs));
    tokio::pin!(deadline);
    let mut reply: Vec<i16> = Vec::new();
    let mut line = String::new();
    let mut tool_rounds_done = 0;
    let mut pending_tools = 0usize;
    let mut first_audio: Option<u128> = None;
    loop {
        let m = tokio::select! {
            () = &mut deadline => bail!("no end of conversation within {} s", args.timeout_secs),
            m = inbound.message() => m.context("stream failed")?,
        };
        let Some(m) = m.and_then(|m| m.message) else {
            break;
        };
        let ms = t0.elapsed().as_millis();
        match m {
            Out::Started(s) => {
                let cfg: serde_json::Value =
                    serde_json::from_str(&s.effective_session_json).unwrap_or_default();
                println!(
                    "[{ms:>6} ms] session {} started: model {}, reasoning effort {}, parallel tool calls {}, upstream audio {}",
                    s.session_id,
                    s.model,
                    cfg["reasoning"]["effort"].as_str().unwrap_or("default"),
                    cfg["parallel_tool_calls"],
                    s.upstream_audio_format
                );
            }
            Out::SpeechStarted(_) => println!("[{ms:>6} ms] user started speaking"),
            Out::SpeechStopped(s) => println!(
                "[{ms:>6} ms] user stopped speaking (at {} ms of input audio)",
                s.audio_end_ms
            ),
            Out::Transcript(t) if t.role == pb::Role::User as i32 && t.r#final => {
                println!("[{ms:>6} ms] USER:      {}", t.text);
            }
            Out::Transcript(t) if t.role == pb::Role::Assistant as i32 => {
                if t.r#final {
                    let phase = match pb::Phase::try_from(t.phase) {
                        Ok(pb::Phase::Preamble) => " (preamble)",
                        Ok(pb::Phase::Answer) => " (answer)",
                        _ => "",
                    };
                    println!("[{ms:>6} ms] ASSISTANT{phase}: {}", t.text);
                    line.clear();
                } else {
                    line.push_str(&t.text);
                }
            }
            Out::Transcript(_) => {}
            Out::Audio(a) => {
                if first_audio.is_none() {
                    first_audio = Some(ms);
                    println!("[{ms:>6} ms] first assistant audio");
                }
                reply.extend(
                    a.data
                        .chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]])),
                );
            }
            Out::ToolCallStarted(c) => {
                pending_tools += 1;
                println!(
                    "[{ms:>6} ms] tool call  {} {}({})",
                    c.call_id, c.name, c.arguments_json
                );
            }
            Out::ToolCallFinished(c) => {
                pending_tools = pending_tools.saturating_sub(1);
                let status = pb::ToolStatus::try_from(c.status).map_or("?", |s| s.as_str_name());
                println!(
                    "[{ms:>6} ms] tool done  {} {} {} in {} ms",
                    c.call_id, c.name, status, c.duration_ms
                );
                if pending_tools == 0 {
                    tool_rounds_done += 1;
                }
            }
            Out::ResponseDone(r) => {
                let u = r.usage.unwrap_or_default();
                let v2v = if r.voice_to_voice_ms > 0 {
                    format!(", voice-to-voice {} ms", r.voice_to_voice_ms)
                } else {
                    String::new()
                };
                println!(
                    "[{ms:>6} ms] response {} {}{v2v}, tokens in/out {}/{}",
                    r.response_id, r.status, u.input_tokens, u.output_tokens
                );
                if tool_rounds_done > 0 && pending_tools == 0 {
                    tx.send(msg(In::Control(pb::Control {
                        action: Some(pb::control::Action::End(pb::Empty {})),
                    })))
                    .await
                    .ok();
                }
            }
            Out::Error(e) => println!("[{ms:>6} ms] error {}: {}", e.code, e.message),
            Out::Interrupted(i) => println!("[{ms:>6} ms] interrupted at {} ms", i.played_ms),
            Out::ToolCall(c) => println!("[{ms:>6} ms] in-stream tool call {}", c.name),
            Out::IdleTimeout(_) => println!("[{ms:>6} ms] the caller went quiet: re-prompting"),
            Out::QuietMode(q) => println!(
                "[{ms:>6} ms] quiet mode {}",
                if q.on { "on" } else { "off" }
            ),
            Out::RolledOver(r) => println!(
                "[{ms:>6} ms] rolled over to a new upstream session after {} s ({}, {} item(s) carried)",
                r.upstream_age_ms / 1000,
                if r.forced { "forced" } else { "at a pause" },
                r.seeded_items
            ),
            Out::EndingSoon(e) => println!(
                "[{ms:>6} ms] the call ends in {} s",
                e.remaining_ms / 1000
            ),
            Out::Ended(e) => {
                let s = e.summary.unwrap_or_default();
                println!("[{ms:>6} ms] session ended ({}): {} turn(s), {} response(s), {} tool call(s), mean voice-to-voice {} ms, dead air {} ms",
                    e.reason, s.turns, s.responses, s.tool_calls, s.mean_voice_to_voice_ms, s.dead_air_ms);
                break;
            }
        }
    }
    write_wav(&args.out, &reply, rate)?;
    println!(
        "assistant audio: {:.2} s written to {}",
        reply.len() as f64 / f64::from(rate),
        args.out.display()
    );
    Ok(())
}

fn write_wav(path: &PathBuf, samples: &[i16], rate: u32) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("writing {}", path.display()))?;
    for s in samples {
        w.write_sample(*s)?;
    }
    w.finalize()?;
    Ok(())
}

/// Streams 20 ms frames of `samples` in real time, then `tail_secs` of silence (a translation
/// session wants audio all along: the sidecar fills any pause with silence anyway).
fn microphone(tx: mpsc::Sender<pb::ClientMessage>, samples: Vec<i16>, rate: u32, tail_secs: u32) {
    let frame = (rate / 50) as usize;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let total = samples.len().div_ceil(frame) + (tail_secs * 50) as usize;
        let silence = vec![0i16; frame];
        for i in 0..total {
            tick.tick().await;
            let start = i * frame;
            let chunk = if start < samples.len() {
                &samples[start..(start + frame).min(samples.len())]
            } else {
                &silence[..]
            };
            let data: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            let f = pb::AudioFrame {
                data,
                seq: i as u64 + 1,
                ..Default::default()
            };
            if tx.send(msg(In::Audio(f))).await.is_err() {
                return;
            }
        }
        // Done speaking: end the session (the sidecar drains the last translation first).
        let _ = tx
            .send(msg(In::Control(pb::Control {
                action: Some(pb::control::Action::End(pb::Empty {})),
            })))
            .await;
    });
}

/// `--translate LANG`: a translation session over the same sample.
async fn translate(args: &Args, lang: &str, samples: Vec<i16>, rate: u32) -> Result<()> {
    let mut client = connect(&args.sidecar).await?;
    let (tx, rx) = mpsc::channel::<pb::ClientMessage>(64);
    let fmt = pb::AudioFormat {
        codec: pb::Codec::Pcm16 as i32,
        sample_rate_hz: rate,
        channels: 1,
        frame_ms: 20,
    };
    tx.send(msg(In::Start(pb::SessionStart {
        kind: pb::SessionKind::Translation as i32,
        target_language: lang.to_string(),
        translation_input_transcript: true,
        input_format: Some(fmt),
        output_format: Some(fmt),
        ..Default::default()
    })))
    .await?;
    let t0 = Instant::now();
    let mut inbound = match client.converse(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => bail!(
            "the sidecar refused the translation session: {}",
            s.message()
        ),
    };
    let secs = samples.len() as f64 / f64::from(rate);
    println!(
        "[{:>6} ms] Converse stream open (translation into {lang}), streaming {secs:.2} s of speech at {rate} Hz",
        t0.elapsed().as_millis()
    );
    microphone(tx, samples, rate, 4);
    let deadline = tokio::time::sleep(Duration::from_secs(args.timeout_secs));
    tokio::pin!(deadline);
    let mut audio: Vec<i16> = Vec::new();
    let mut first_audio = false;
    loop {
        let m = tokio::select! {
            () = &mut deadline => bail!("no end of the translation within {} s", args.timeout_secs),
            m = inbound.message() => m.context("stream failed")?,
        };
        let Some(m) = m.and_then(|m| m.message) else {
            break;
        };
        let ms = t0.elapsed().as_millis();
        match m {
            Out::Started(s) => println!(
                "[{ms:>6} ms] session {} started: model {}, upstream audio {}",
                s.session_id, s.model, s.upstream_audio_format
            ),
            Out::Transcript(t) => {
                let who = if t.source == pb::TranscriptSource::SourceTranslationInput as i32 {
                    "SPEAKER"
                } else {
                    "TRANSLATION"
                };
                if t.r#final {
                    println!("[{ms:>6} ms] {who:<11} (final): {}", t.text);
                } else {
                    println!(
                        "[{ms:>6} ms] {who:<11} +{:?} at {} ms",
                        t.text, t.elapsed_ms
                    );
                }
            }
            Out::Audio(a) => {
                let pcm: Vec<i16> = a
                    .data
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                if !first_audio && pcm.iter().any(|s| s.unsigned_abs() > 512) {
                    first_audio = true;
                    println!("[{ms:>6} ms] first translated audio");
                }
                audio.extend(pcm);
            }
            Out::Error(e) => println!("[{ms:>6} ms] error {}: {}", e.code, e.message),
            Out::Ended(e) => {
                let s = e.summary.unwrap_or_default();
                println!(
                    "[{ms:>6} ms] session ended ({}): {:.1} s, estimated cost ${:.5} (audio minutes × the per-minute price)",
                    e.reason,
                    f64::from(s.duration_ms) / 1000.0,
                    s.cost_usd
                );
                break;
            }
            other => println!("[{ms:>6} ms] {other:?}"),
        }
    }
    write_wav(&args.out, &audio, rate)?;
    println!(
        "translated audio: {:.2} s written to {}",
        audio.len() as f64 / f64::from(rate),
        args.out.display()
    );
    Ok(())
}

fn msg(m: In) -> pb::ClientMessage {
    pb::ClientMessage { message: Some(m) }
}

async fn connect(
    addr: &str,
) -> Result<pb::voice_sidecar_client::VoiceSidecarClient<tonic::transport::Channel>> {
    // The sidecar may still be starting: retry for a few seconds.
    let mut last = None;
    for _ in 0..50 {
        match pb::voice_sidecar_client::VoiceSidecarClient::connect(addr.to_string()).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "could not reach the sidecar at {addr}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )
}
