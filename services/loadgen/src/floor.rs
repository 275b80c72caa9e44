//! The "physical floor": what forwarding one 20 ms frame upstream costs at minimum — base64-encode the
//! audio, JSON-encode an `input_audio_buffer.append` event, write it as one (masked, client-side) text
//! message to a loopback WebSocket. Measured single-core: the client runs on a current-thread runtime
//! on this thread; a tokio-tungstenite server on another thread reads every message, parses the JSON
//! and base64-decodes the audio (the mirror-image receive floor, measured on that thread).

use anyhow::{Context, Result};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::probe::thread_cpu_ns;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorResult {
    pub frame_bytes: usize,
    pub frames: u64,
    /// Client thread CPU per frame: base64 + JSON + WebSocket write (incl. the write syscall).
    pub send_cpu_ns_per_frame: f64,
    /// Wall time per frame on the client (includes waiting for socket buffer space).
    pub send_wall_ns_per_frame: f64,
    /// Server thread CPU per frame: WebSocket read + JSON parse + base64 decode.
    pub recv_cpu_ns_per_frame: f64,
    pub note: String,
}

#[derive(Serialize)]
struct Append<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    audio: &'a str,
}

#[derive(Deserialize)]
struct AppendIn {
    #[serde(rename = "type")]
    _kind: String,
    audio: String,
}

pub fn run(frame_bytes: usize, frames: u64) -> Result<FloorResult> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let warmup = (frames / 10).max(100);
    let total = frames + warmup;
    let server = std::thread::spawn(move || -> Result<(u64, u64)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener)?;
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            let mut ws = tokio_tungstenite::accept_async(s).await?;
            let mut n = 0u64;
            let mut cpu0 = 0;
            let mut decoded = Vec::with_capacity(frame_bytes);
            while let Some(m) = ws.next().await {
                let m = m?;
                if let Message::Text(t) = m {
                    let ev: AppendIn = serde_json::from_str(t.as_str())?;
                    decoded.clear();
                    base64::engine::general_purpose::STANDARD
                        .decode_vec(ev.audio.as_bytes(), &mut decoded)?;
                    n += 1;
                    if n == warmup {
                        cpu0 = thread_cpu_ns().unwrap_or(0);
                    }
                    if n == total {
                        break;
                    }
                }
            }
            let cpu = thread_cpu_ns().unwrap_or(0).saturating_sub(cpu0);
            anyhow::Ok((n - warmup, cpu))
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cpu_ns, wall_ns) = rt.block_on(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/realtime"))
            .await
            .context("connecting to the loopback WebSocket")?;
        // Varying, incompressible-ish payload like G.711 speech.
        let frame: Vec<u8> = (0..frame_bytes).map(|i| (i * 37 % 251) as u8).collect();
        let mut cpu0 = 0;
        let mut t0 = Instant::now();
        for i in 0..total {
            if i == warmup {
                cpu0 = thread_cpu_ns().unwrap_or(0);
                t0 = Instant::now();
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(&frame);
            let json = serde_json::to_string(&Append {
                kind: "input_audio_buffer.append",
                audio: &b64,
            })?;
            ws.send(Message::text(json)).await?;
        }
        let cpu = thread_cpu_ns().unwrap_or(0).saturating_sub(cpu0);
        let wall = t0.elapsed().as_nanos() as u64;
        let _ = ws.close(None).await;
        anyhow::Ok((cpu, wall))
    })?;
    let (n, recv_cpu) = server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok(FloorResult {
        frame_bytes,
        frames,
        send_cpu_ns_per_frame: cpu_ns as f64 / frames as f64,
        send_wall_ns_per_frame: wall_ns as f64 / frames as f64,
        recv_cpu_ns_per_frame: recv_cpu as f64 / n.max(1) as f64,
        note: "one 20 ms frame: base64 + serde_json struct encode + one tungstenite text message (masked, flushed) on loopback TCP; thread CPU from /proc/thread-self/schedstat".into(),
    })
}
