//! Test client for the simulator: a real tokio-tungstenite WebSocket over loopback, plus audio helpers.
#![allow(dead_code)]

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voice_realtime_sim::{g711, Dialect, SimConfig, SimHandle, SimServer, WireAudioFormat};

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub async fn start(config: SimConfig) -> SimHandle {
    SimServer::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

/// Fast config: no pacing, so tests run in milliseconds.
pub fn fast() -> SimConfig {
    SimConfig {
        realtime_factor: 0.0,
        first_audio_delay_ms: 0,
        ..Default::default()
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub dialect: Dialect,
    /// Every server event received, in order.
    pub log: Vec<Value>,
}

pub fn request(
    sim: &SimHandle,
    dialect: Dialect,
    key: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = sim
        .realtime_url("gpt-realtime")
        .into_client_request()
        .unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {k}").parse().unwrap());
    }
    if dialect == Dialect::Beta {
        req.headers_mut()
            .insert("OpenAI-Beta", "realtime=v1".parse().unwrap());
    }
    req
}

pub async fn connect(sim: &SimHandle, dialect: Dialect) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(request(sim, dialect, Some("sk-test")))
        .await
        .unwrap();
    let mut c = Client {
        ws,
        dialect,
        log: Vec::new(),
    };
    let created = c.recv().await;
    assert_eq!(created["type"], "session.created", "{created}");
    c
}

impl Client {
    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                // Timed out, or the stream ended, failed or was closed.
                Err(_) | Ok(None | Some(Err(_) | Ok(Message::Close(_)))) => return None,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value =
                        serde_json::from_str(t.as_str()).expect("server sent invalid JSON");
                    assert!(
                        v["event_id"].as_str().is_some_and(|s| !s.is_empty()),
                        "event without event_id: {v}"
                    );
                    self.log.push(v.clone());
                    return Some(v);
                }
                Ok(Some(Ok(_))) => {} // ping, pong, binary: keep reading
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        self.try_recv(Duration::from_secs(10))
            .await
            .expect("no server event within 10 s (or socket closed)")
    }

    /// Reads until an event of type `ty`; returns every event read in this call (the last is `ty`).
    pub async fn until(&mut self, ty: &str) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let v = self.recv().await;
            let done = v["type"] == ty;
            got.push(v);
            if done {
                return got;
            }
        }
    }

    pub async fn expect_error(&mut self, code: &str) -> Value {
        let evs = self.until("error").await;
        let e = evs.last().unwrap().clone();
        assert_eq!(e["error"]["code"], code, "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        e
    }

    pub async fn append(&mut self, bytes: &[u8]) {
        self.send(json!({"type": "input_audio_buffer.append", "audio": B64.encode(bytes)}))
            .await;
    }

    /// Appends samples (24 kHz i16, resampled by decimation for 8 kHz formats) in 20 ms chunks.
    pub async fn append_audio(&mut self, samples24: &[i16], format: WireAudioFormat) {
        let bytes: Vec<u8> = match format {
            WireAudioFormat::Pcm16 => samples24.iter().flat_map(|s| s.to_le_bytes()).collect(),
            WireAudioFormat::G711Ulaw => samples24
                .iter()
                .step_by(3)
                .map(|&s| g711::linear_to_ulaw(s))
                .collect(),
            WireAudioFormat::G711Alaw => samples24
                .iter()
                .step_by(3)
                .map(|&s| g711::linear_to_alaw(s))
                .collect(),
        };
        for chunk in bytes.chunks(20 * format.bytes_per_ms()) {
            self.append(chunk).await;
        }
    }

    pub fn audio_delta_type(&self) -> &'static str {
        self.dialect.audio_delta()
    }

    pub fn session_update(&self, ga: Value, beta: Value) -> Value {
        let session = match self.dialect {
            Dialect::Ga => ga,
            Dialect::Beta => beta,
        };
        // Moved in, not serialised by reference as `json!` would (a deep copy).
        let mut event = json!({"type": "session.update"});
        event["session"] = session;
        event
    }
}

/// Speech-like test signal at 24 kHz: 200 Hz fundamental plus two harmonics, at `dbfs` RMS.
pub fn speech(ms: u64, dbfs: f64) -> Vec<i16> {
    let rms = 10f64.powf(dbfs / 20.0) * 32768.0;
    let a = rms / (1.5f64).sqrt(); // three equal-amplitude sines
    (0..ms * 24)
        .map(|n| {
            let t = n as f64 / 24000.0;
            let w = 2.0 * std::f64::consts::PI * 200.0 * t;
            (a * (w.sin() + (2.0 * w).sin() + (3.0 * w).sin())) as i16
        })
        .collect()
}

pub fn silence(ms: u64) -> Vec<i16> {
    vec![0; (ms * 24) as usize]
}

/// Decodes the concatenated audio deltas of `events` to i16 samples in `format`.
pub fn decode_deltas(events: &[Value], delta_type: &str, format: WireAudioFormat) -> Vec<i16> {
    let mut bytes = Vec::new();
    for e in events.iter().filter(|e| e["type"] == delta_type) {
        bytes.extend(B64.decode(e["delta"].as_str().unwrap()).unwrap());
    }
    match format {
        WireAudioFormat::Pcm16 => bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
        WireAudioFormat::G711Ulaw => bytes.iter().map(|&b| g711::ulaw_to_linear(b)).collect(),
        WireAudioFormat::G711Alaw => bytes.iter().map(|&b| g711::alaw_to_linear(b)).collect(),
    }
}

pub fn rms(s: &[i16]) -> f64 {
    (s.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / s.len().max(1) as f64).sqrt()
}

pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}
