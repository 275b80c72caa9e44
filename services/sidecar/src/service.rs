//! The `VoiceSidecar` gRPC service: admits a stream (first message must be a valid `SessionStart`),
//! then hands it to a session task and streams that task's output back.
//!
//! Admission has two stages, so idle streams cannot starve real calls: a stream waiting for its
//! `SessionStart` holds only a *pending* slot (`--max-pending-starts`, for at most
//! `--start-timeout-ms`); a session permit (`--max-sessions`) is taken once a valid start has arrived.
//! When every pending slot is taken, the stream that has waited longest is refused to make room: a
//! real client sends its `SessionStart` at once and so needs a slot only for a moment, whatever a
//! flood of idle streams does.

use metrics::{counter, gauge};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::info;
use voice_proto::v1 as pb;
use voice_session::{Defaults, SessionContext, SessionPlan};
use voice_telemetry as names;

pub struct Sidecar {
    pub ctx: Arc<SessionContext>,
    pub defaults: Defaults,
    pub sessions: Arc<Semaphore>,
    pub max_sessions: usize,
    pub pending: Arc<PendingStarts>,
    pub start_timeout: Duration,
    pub max_message_bytes: usize,
    /// Set on SIGTERM: live sessions go on, new ones are refused.
    pub draining: CancellationToken,
}

/// Messages queued towards a host before the session waits for it to read.
const HOST_QUEUE: usize = 128;

/// Streams waiting for their `SessionStart`, oldest first.
#[derive(Debug)]
pub struct PendingStarts {
    max: usize,
    inner: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    next: u64,
    /// Arrival order → the token that evicts the stream.
    streams: BTreeMap<u64, CancellationToken>,
}

/// A stream's pending slot; released on drop.
pub struct PendingSlot {
    owner: Arc<PendingStarts>,
    id: u64,
    pub evicted: CancellationToken,
}

impl PendingStarts {
    pub fn new(max: usize) -> PendingStarts {
        PendingStarts {
            max: max.max(1),
            inner: Mutex::new(Waiting::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a slot, evicting the longest-waiting streams when all are taken.
    pub fn enter(self: &Arc<Self>) -> PendingSlot {
        let mut w = self.lock();
        while w.streams.len() >= self.max {
            let Some((_, oldest)) = w.streams.pop_first() else {
                break;
            };
            oldest.cancel();
            counter!(names::ADMISSION_REFUSED, "reason" => "pending_evicted").increment(1);
        }
        let id = w.next;
        w.next += 1;
        let evicted = CancellationToken::new();
        w.streams.insert(id, evicted.clone());
        set_pending_gauge(w.streams.len());
        PendingSlot {
            owner: self.clone(),
            id,
            evicted,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().streams.len()
    }
}

#[allow(clippy::cast_precision_loss)]
fn set_pending_gauge(n: usize) {
    gauge!(names::PENDING_STARTS).set(n as f64);
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut w = self.owner.lock();
        w.streams.remove(&self.id);
        set_pending_gauge(w.streams.len());
    }
}

fn refused(reason: &'static str, status: Status) -> Status {
    counter!(names::ADMISSION_REFUSED, "reason" => reason).increment(1);
    status
}

/// The status for a first message that failed to arrive intact.
fn first_message_error(status: Status, max_message_bytes: usize) -> Status {
    match status.code() {
        Code::OutOfRange if status.message().contains("message length too large") => refused(
            "message_too_large",
            Status::resource_exhausted(format!(
                "the SessionStart is over the sidecar's gRPC message limit of {max_message_bytes} bytes \
                 (--max-message-bytes): {}",
                status.message()
            )),
        ),
        // Bytes that do not decode as a ClientMessage (tonic reports them as INTERNAL).
        Code::Internal => refused(
            "bad_message",
            Status::invalid_argument(format!(
                "the first message is not a valid ClientMessage: {}",
                status.message()
            )),
        ),
        _ => status,
    }
}

#[tonic::async_trait]
impl pb::voice_sidecar_server::VoiceSidecar for Sidecar {
    type ConverseStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn converse(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<Self::ConverseStream>, Status> {
        let shutting_down = || {
            refused(
                "draining",
                Status::unavailable("the sidecar is shutting down"),
            )
        };
        if self.draining.is_cancelled() || self.ctx.shutdown.is_cancelled() {
            return Err(shutting_down());
        }
        let mut inbound = request.into_inner();
        let slot = self.pending.enter();
        let timeout_ms = self.start_timeout.as_millis();
        let first = tokio::select! {
            () = slot.evicted.cancelled() => {
                return Err(Status::resource_exhausted(format!(
                    "too many streams are waiting for their SessionStart (--max-pending-starts {}): \
                     this one waited longest",
                    self.pending.max
                )));
            }
            () = self.draining.cancelled() => return Err(shutting_down()),
            r = tokio::time::timeout(self.start_timeout, inbound.next()) => r,
        };
        drop(slot);
        let first = match first {
            Err(_) => {
                return Err(refused(
                    "start_timeout",
                    Status::deadline_exceeded(format!(
                        "no SessionStart received within {timeout_ms} ms (--start-timeout-ms)"
                    )),
                ))
            }
            Ok(None) => {
                return Err(Status::invalid_argument(
                    "the stream ended before SessionStart",
                ))
            }
            Ok(Some(Err(s))) => return Err(first_message_error(s, self.max_message_bytes)),
            Ok(Some(Ok(m))) => m,
        };
        let Some(pb::client_message::Message::Start(start)) = first.message else {
            return Err(Status::invalid_argument(
                "the first message of a Converse stream must be SessionStart",
            ));
        };
        let plan = SessionPlan::from_start(&start, &self.defaults).map_err(|e| {
            refused(
                "invalid_start",
                Status::invalid_argument(format!("invalid SessionStart: {e}")),
            )
        })?;
        if self.draining.is_cancelled() {
            return Err(shutting_down());
        }
        let permit = self.sessions.clone().try_acquire_owned().map_err(|_| {
            refused(
                "max_sessions",
                Status::resource_exhausted(format!(
                    "the sidecar is at its limit of {} concurrent sessions (--max-sessions)",
                    self.max_sessions
                )),
            )
        })?;
        let id = format!("vs_{}", uuid::Uuid::new_v4().simple());
        info!(session_id = %id, "session admitted");
        let (tx, rx) = mpsc::channel(HOST_QUEUE);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            voice_session::run_session(plan, inbound, tx, ctx, id).await;
            drop(permit);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pending_set_evicts_the_longest_waiting_stream() {
        let p = Arc::new(PendingStarts::new(2));
        let a = p.enter();
        let b = p.enter();
        assert_eq!(p.len(), 2);
        let c = p.enter();
        assert!(a.evicted.is_cancelled(), "the oldest stream makes room");
        assert!(!b.evicted.is_cancelled());
        assert!(!c.evicted.is_cancelled());
        assert_eq!(p.len(), 2);
        drop(a);
        assert_eq!(p.len(), 2, "an evicted slot is already gone");
        drop(b);
        assert_eq!(p.len(), 1);
        drop(c);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn undecodable_first_messages_are_invalid_argument() {
        let s = first_message_error(Status::internal("failed to decode Protobuf message"), 10);
        assert_eq!(s.code(), Code::InvalidArgument);
        let s = first_message_error(
            Status::out_of_range("Error, decoded message length too large: found 9 bytes"),
            4,
        );
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(
            s.message().contains("--max-message-bytes"),
            "{}",
            s.message()
        );
        assert_eq!(
            first_message_error(Status::cancelled("x"), 1).code(),
            Code::Cancelled
        );
    }
}
