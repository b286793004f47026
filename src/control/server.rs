//! The daemon's control socket listener.
//!
//! Owns accepting connections, framing, authorization and turning requests
//! into reports from the shared state. Each connection is its own task with a
//! read deadline, and at most [`MAX_CLIENTS`] are served at once, so a slow or
//! hostile client cannot block the daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore, watch};

use super::protocol::{
    self, ErrorBody, ErrorCode, InferenceReport, MAX_REQUEST_BYTES, PROTOCOL_VERSION, QueueReport, Request, Response,
    ResponseFrame, StatusReport, StreamQueue,
};
use crate::outbox::Outbox;
use crate::record::now_ms;
use crate::source::FrameQueue;
use crate::state::Shared;

pub const MAX_CLIENTS: usize = 32;
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// What request handlers read from.
pub struct ControlContext {
    pub shared: Arc<Shared>,
    pub outbox: Outbox,
    pub frames: Option<Arc<FrameQueue>>,
    pub uplink_wake: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("creating the socket directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another sparkd is already listening on {path}")]
    InUse { path: PathBuf },
    #[error("binding the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket, replacing a stale file left by a crashed daemon.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::Dir { path: dir.to_path_buf(), source })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse { path: path.to_path_buf() });
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind { path: path.to_path_buf(), source })?;
    // Group `sparkd` may read status; the daemon checks rights per request.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    Ok(listener)
}

pub async fn serve(listener: UnixListener, ctx: Arc<ControlContext>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!("control socket: too many clients; refusing one");
                        continue;
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        handle_connection(stream, &ctx).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn handle_connection(mut stream: UnixStream, ctx: &ControlContext) {
    let peer = stream.peer_cred().ok();
    loop {
        let mut header = [0u8; 4];
        match tokio::time::timeout(READ_DEADLINE, stream.read_exact(&mut header)).await {
            Ok(Ok(_)) => {}
            _ => return, // EOF, error or idle client
        }
        let response = match protocol::check_len(header, MAX_REQUEST_BYTES) {
            Err(e) => {
                let _ = reply(&mut stream, Response::Error(ErrorBody { code: ErrorCode::TooLarge, message: e.to_string() })).await;
                return; // the rest of the stream cannot be framed
            }
            Ok(len) => {
                let mut body = vec![0u8; len];
                match tokio::time::timeout(READ_DEADLINE, stream.read_exact(&mut body)).await {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
                match protocol::decode_request(&body) {
                    Err(e) => Response::Error(e),
                    Ok(req) => authorize(&req, peer.as_ref()).unwrap_or_else(|| handle(&req, ctx, peer.as_ref())),
                }
            }
        };
        if reply(&mut stream, response).await.is_err() {
            return;
        }
    }
}

async fn reply(stream: &mut UnixStream, response: Response) -> std::io::Result<()> {
    let bytes = protocol::encode(&ResponseFrame { v: PROTOCOL_VERSION, response })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio::time::timeout(READ_DEADLINE, stream.write_all(&bytes))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Mutating requests need root or the daemon's own user; `None` = allowed.
fn authorize(req: &Request, peer: Option<&tokio::net::unix::UCred>) -> Option<Response> {
    if !req.is_mutating() {
        return None;
    }
    let own = rustix_euid();
    match peer {
        Some(p) if p.uid() == 0 || p.uid() == own => None,
        _ => Some(Response::Error(ErrorBody {
            code: ErrorCode::Forbidden,
            message: "this command needs root or the sparkd user".into(),
        })),
    }
}

fn rustix_euid() -> u32 {
    // /proc/self avoids a libc dependency for one number.
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0)
}

fn handle(req: &Request, ctx: &ControlContext, peer: Option<&tokio::net::unix::UCred>) -> Response {
    if req.is_mutating() {
        tracing::info!(
            uid = peer.map(|p| p.uid()),
            pid = peer.and_then(|p| p.pid()),
            request = ?req,
            "control: mutating request"
        );
    }
    match req {
        Request::Status => match status_report(ctx) {
            Ok(r) => Response::Status(r),
            Err(e) => internal(e),
        },
        Request::Queue => match queue_report(ctx) {
            Ok(r) => Response::Queue(r),
            Err(e) => internal(e),
        },
        Request::Link => Response::Link(ctx.shared.link()),
        Request::Engine => Response::Engine(ctx.shared.engine()),
        Request::Sync => {
            ctx.uplink_wake.notify_one();
            let pending = ctx.outbox.counters().iter().map(|c| c.pending).sum();
            Response::SyncStarted { pending }
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    Response::Error(ErrorBody { code: ErrorCode::Internal, message: e.to_string() })
}

pub fn queue_report(ctx: &ControlContext) -> Result<QueueReport, crate::outbox::OutboxError> {
    let stats = ctx.outbox.stats()?;
    let now = now_ms();
    let age = |ts: Option<u64>| ts.map(|t| now.saturating_sub(t) as f64 / 1000.0);
    Ok(QueueReport {
        pending: stats.pending,
        bytes: stats.bytes,
        dropped: stats.dropped,
        oldest_age_s: age(stats.oldest_ts_ms),
        published: Shared::count(&ctx.shared.published),
        acked: Shared::count(&ctx.shared.acked),
        drain_rate_per_s: ctx.shared.drain_rate(),
        space_errors: ctx.outbox.space_errors(),
        disk_low: ctx.outbox.is_disk_low(),
        eta_s: {
            let rate = ctx.shared.drain_rate();
            (rate > 0.0).then(|| stats.pending as f64 / rate)
        },
        streams: stats
            .streams
            .iter()
            .map(|(name, s)| {
                (
                    name.to_string(),
                    StreamQueue {
                        pending: s.pending,
                        bytes: s.bytes,
                        dropped: s.dropped,
                        next_seq: s.next_seq,
                        oldest_age_s: age(s.oldest_ts_ms),
                    },
                )
            })
            .collect(),
    })
}

pub fn status_report(ctx: &ControlContext) -> Result<StatusReport, crate::outbox::OutboxError> {
    let s = &ctx.shared;
    let (captured, dropped) = ctx
        .frames
        .as_ref()
        .map(|q| (Shared::count(&q.captured), Shared::count(&q.dropped)))
        .unwrap_or((0, 0));
    Ok(StatusReport {
        device_id: s.device_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s: s.started.elapsed().as_secs(),
        engine: s.engine(),
        queue: queue_report(ctx)?,
        link: s.link(),
        inference: InferenceReport {
            total: Shared::count(&s.inference_total),
            failed: Shared::count(&s.inference_failed),
            frames_captured: captured,
            frames_dropped: dropped,
            last_latency_ms: Shared::count(&s.last_latency_us) as f64 / 1000.0,
        },
        records_lost: Shared::count(&s.records_lost),
        telemetry_samples: Shared::count(&s.telemetry_samples),
    })
}
