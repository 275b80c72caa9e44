//! Session records (`--records-dir DIR`): one JSON-lines file per session, `<dir>/<session id>.jsonl`,
//! appended as the session runs and closed with an `end` record, for compliance and analytics.
//!
//! Each line is one JSON object with `type`, `ts_ms` (Unix time, ms) and `t_ms` (since the session
//! started): `start` (the effective configuration, no secrets), `transcript` (every final transcript,
//! both sides), `tool_call` (arguments, output, status, duration; `"[redacted]"` for a tool declared
//! with `redact_in_records`), `interruption`, `rollover`, `end` (reason, summary, usage, cost, notes).
//!
//! The session never waits on the disk: it hands lines to a writer task through a bounded queue
//! (a full queue drops the line and counts it), and the task appends and flushes each line, so a crash
//! loses at most the line being written. A directory that cannot be written, or a full disk, is an
//! `Error{code: "record_write_failed"}` to the host (once) and `voice_record_errors_total{kind}` —
//! never a failed call.

use metrics::counter;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use voice_telemetry as names;

/// Lines queued for the writer at most (a stalled disk drops the rest, counted).
const QUEUE: usize = 1024;

/// What a redacted argument or output is replaced with.
pub const REDACTED: &str = "[redacted]";

/// A session's record file: cheap to call from the session's logic, never blocking it.
#[derive(Debug)]
pub struct Recorder {
    tx: Option<mpsc::Sender<String>>,
    started: Instant,
    /// The writer failed (set by the writer task); the host is told once.
    failed: Arc<AtomicBool>,
    told: bool,
}

impl Recorder {
    /// No records (the default).
    pub fn off() -> Self {
        Recorder {
            tx: None,
            started: Instant::now(),
            failed: Arc::new(AtomicBool::new(false)),
            told: false,
        }
    }

    /// Records into `dir/<session_id>.jsonl` (the writer task runs on the current runtime).
    pub fn open(dir: &Path, session_id: &str, now: Instant) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let path = dir.join(format!("{}.jsonl", sanitize(session_id)));
        tokio::spawn(write_lines(path, rx, failed.clone()));
        Recorder {
            tx: Some(tx),
            started: now,
            failed,
            told: false,
        }
    }

    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// Appends one record of `kind` with `fields` (an object).
    pub fn record(&self, kind: &str, mut fields: Value, now: Instant) {
        let Some(tx) = &self.tx else { return };
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Value::Object(m) = &mut fields {
            m.insert("type".into(), json!(kind));
            m.insert("ts_ms".into(), json!(ts_ms));
            m.insert(
                "t_ms".into(),
                json!(now.saturating_duration_since(self.started).as_millis() as u64),
            );
        }
        if tx.try_send(fields.to_string()).is_err() {
            counter!(names::RECORD_ERRORS, "kind" => "dropped").increment(1);
        }
    }

    /// The writer failed since the last call and the host has not been told: the message to send.
    pub fn take_failure(&mut self) -> Option<&'static str> {
        if !self.told && self.failed.load(Ordering::Relaxed) {
            self.told = true;
            return Some(
                "the session record cannot be written (see the sidecar's log): the call goes on \
                 without it",
            );
        }
        None
    }

    /// Closes the file after the lines queued so far (the `end` record last).
    pub fn close(&mut self) {
        self.tx = None;
    }
}

/// A session id as a file name: only `[A-Za-z0-9_-]`.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

async fn write_lines(path: PathBuf, mut rx: mpsc::Receiver<String>, failed: Arc<AtomicBool>) {
    let fail = |kind: &'static str, e: std::io::Error| {
        counter!(names::RECORD_ERRORS, "kind" => kind).increment(1);
        tracing::warn!(path = %path.display(), error = %e, "session record: {kind}");
        failed.store(true, Ordering::Relaxed);
    };
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await;
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            fail("open", e);
            // Drain so senders never block; every line is lost (and counted once above).
            while rx.recv().await.is_some() {}
            return;
        }
    };
    while let Some(mut line) = rx.recv().await {
        line.push('\n');
        if let Err(e) = file.write_all(line.as_bytes()).await {
            fail("write", e);
            while rx.recv().await.is_some() {}
            return;
        }
        if let Err(e) = file.flush().await {
            fail("write", e);
            while rx.recv().await.is_some() {}
            return;
        }
    }
    if let Err(e) = file.sync_data().await {
        fail("write", e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_appended_with_times_and_the_file_closes() {
        let dir = tempdir();
        let t0 = Instant::now();
        let mut r = Recorder::open(&dir, "vs_1/../x", t0);
        r.record("start", json!({"model": "m"}), t0);
        r.record("end", json!({"reason": "client_end"}), t0);
        r.close();
        let path = dir.join("vs_1____x.jsonl");
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["type"], "start");
        assert_eq!(lines[0]["model"], "m");
        assert!(lines[0]["ts_ms"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(lines[1]["type"], "end");
        assert!(r.take_failure().is_none());
    }

    #[tokio::test]
    async fn an_unwritable_directory_is_reported_once() {
        let dir = tempdir();
        let file = dir.join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let t0 = Instant::now();
        let mut r = Recorder::open(&file, "vs_2", t0);
        r.record("start", json!({}), t0);
        for _ in 0..100 {
            if r.failed.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(r.take_failure().is_some());
        assert!(r.take_failure().is_none(), "told once");
        // Later lines are accepted and dropped without blocking.
        for _ in 0..2 * QUEUE {
            r.record("transcript", json!({}), t0);
        }
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("voice-records-{}", uuid_like()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn uuid_like() -> String {
        format!(
            "{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )
    }
}
