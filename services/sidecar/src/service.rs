//! The `VoiceSidecar` gRPC service: admits a stream (first message must be a valid `SessionStart`),
//! then hands it to a session task and streams that task's output back.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;
use voice_proto::v1 as pb;
use voice_session::{Defaults, SessionContext, SessionPlan};

pub struct Sidecar {
    pub ctx: Arc<SessionContext>,
    pub defaults: Defaults,
    pub sessions: Arc<Semaphore>,
    pub max_sessions: usize,
    /// Set on SIGTERM: live sessions go on, new ones are refused.
    pub draining: CancellationToken,
}

/// How long a new stream may take to send its `SessionStart`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards a host before the session waits for it to read.
const HOST_QUEUE: usize = 128;

#[tonic::async_trait]
impl pb::voice_sidecar_server::VoiceSidecar for Sidecar {
    type ConverseStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn converse(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<Self::ConverseStream>, Status> {
        if self.draining.is_cancelled() || self.ctx.shutdown.is_cancelled() {
            return Err(Status::unavailable("the sidecar is shutting down"));
        }
        let permit = self.sessions.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the sidecar is at its limit of {} concurrent sessions",
                self.max_sessions
            ))
        })?;
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(START_TIMEOUT, inbound.next()).await {
            Err(_) => {
                return Err(Status::invalid_argument(
                    "no SessionStart received within 10 s",
                ))
            }
            Ok(None) => {
                return Err(Status::invalid_argument(
                    "the stream ended before SessionStart",
                ))
            }
            Ok(Some(Err(s))) => return Err(s),
            Ok(Some(Ok(m))) => m,
        };
        let Some(pb::client_message::Message::Start(start)) = first.message else {
            return Err(Status::invalid_argument(
                "the first message of a Converse stream must be SessionStart",
            ));
        };
        let plan = SessionPlan::from_start(&start, &self.defaults)
            .map_err(|e| Status::invalid_argument(format!("invalid SessionStart: {e}")))?;
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
