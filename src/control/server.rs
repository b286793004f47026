//! The daemon's control socket listener.
//!
//! Owns accepting connections, framing, authorization and turning requests
//! into reports from the shared state. Each connection is its own task with
//! read and write deadlines, and at most [`MAX_CLIENTS`] are served at once
//! (one more is answered `busy`, never silently dropped), so a slow or hostile
//! client cannot block the daemon. Work heavier than reading counters (doctor
//! hashes model files, infer decodes an image) runs on the blocking pool, at
//! most [`MAX_HEAVY`] at a time, never on the async workers.
//!
//! **Architecture Invariant:** every request gets exactly one response frame
//! or, when its frame cannot be read, the connection is closed; nothing a
//! client sends can panic or stall the listener.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::UCred;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore, watch};

use super::protocol::{
    self, ConfigReport, DoctorReport, ErrorBody, ErrorCode, InferDetection, InferReport, InferenceReport,
    MAX_IMAGE_BYTES, MAX_REQUEST_BYTES, MAX_UPLOAD_BYTES, PROTOCOL_VERSION, QueueReport, Request, Response,
    ResponseFrame, SensorReport, StatusReport, StreamQueue,
};
use crate::config::Config;
use crate::outbox::Outbox;
use crate::pipeline::InferJob;
use crate::record::now_ms;
use crate::source::FrameQueue;
use crate::state::Shared;

/// Connections served at once.
pub const MAX_CLIENTS: usize = 128;
/// Doctor and infer requests running at once (blocking pool).
pub const MAX_HEAVY: usize = 2;
/// Large (`infer`) frames being read at once: bounds their memory.
pub const MAX_UPLOADS: usize = 2;
/// `sparkctl infer` images waiting for the inference thread.
pub const INFER_QUEUE: usize = 4;
/// Group whose members may run mutating commands.
pub const ADMIN_GROUP: &str = "sparkd-admin";
/// Overrides [`ADMIN_GROUP`] (a site with another group name; the tests).
pub const ENV_ADMIN_GROUP: &str = "SPARKD_ADMIN_GROUP";

const READ_DEADLINE: Duration = Duration::from_secs(10);
const HEAVY_WAIT: Duration = Duration::from_secs(20);
const INFER_DEADLINE: Duration = Duration::from_secs(30);

/// What request handlers read from.
pub struct ControlContext {
    pub shared: Arc<Shared>,
    pub outbox: Outbox,
    pub frames: Option<Arc<FrameQueue>>,
    pub uplink_wake: Arc<Notify>,
    /// The configuration the daemon runs with (for `config show`, `doctor`).
    pub config: Config,
    /// Where `config` came from: its file, a fleet config update, or the demo.
    pub config_source: String,
    pub state_dir: PathBuf,
    /// Images for the live engine (`sparkctl infer`); `None` without a camera.
    pub infer: Option<crossbeam_channel::Sender<InferJob>>,
    /// The fleet update agent; `None` when updates are disabled.
    pub updates: Option<tokio::sync::mpsc::Sender<crate::update::agent::Request>>,
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
    let listener =
        UnixListener::bind(path).map_err(|source| ControlError::Bind { path: path.to_path_buf(), source })?;
    // Group `sparkd` may read status; the daemon checks rights per request.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    Ok(listener)
}

pub(super) struct Limits {
    heavy: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
}

pub async fn serve(listener: UnixListener, ctx: Arc<ControlContext>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let limits =
        Arc::new(Limits { heavy: Arc::new(Semaphore::new(MAX_HEAVY)), uploads: Arc::new(Semaphore::new(MAX_UPLOADS)) });
    let mut last_busy_log: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        // Say so instead of hanging up; never wait on this client.
                        let _ = stream.try_write(&busy_frame());
                        if last_busy_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            tracing::warn!(max = MAX_CLIENTS, "control socket: too many clients; answering busy");
                            last_busy_log = Some(std::time::Instant::now());
                        }
                        continue;
                    };
                    let (ctx, limits) = (ctx.clone(), limits.clone());
                    tokio::spawn(async move {
                        handle_connection(stream, ctx, limits).await;
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

fn busy_frame() -> Vec<u8> {
    let response = Response::Error(ErrorBody::new(ErrorCode::Busy, "too many clients at once; try again"));
    protocol::encode(&ResponseFrame { v: PROTOCOL_VERSION, response }).unwrap_or_default()
}

async fn handle_connection(mut stream: UnixStream, ctx: Arc<ControlContext>, limits: Arc<Limits>) {
    let peer = stream.peer_cred().ok();
    loop {
        let mut header = [0u8; 4];
        match tokio::time::timeout(READ_DEADLINE, stream.read_exact(&mut header)).await {
            Ok(Ok(_)) => {}
            _ => return, // EOF, error or idle client
        }
        let len = match protocol::check_len(header, MAX_UPLOAD_BYTES) {
            Ok(len) => len,
            Err(e) => {
                let _ = reply(&mut stream, Response::Error(ErrorBody::new(ErrorCode::TooLarge, e.to_string()))).await;
                return; // the rest of the stream cannot be framed
            }
        };
        // Only `infer` may be larger than MAX_REQUEST_BYTES; few such frames
        // are read at once so memory stays bounded.
        let _upload = if len > MAX_REQUEST_BYTES {
            match limits.uploads.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let busy = ErrorBody::new(ErrorCode::Busy, "other large requests are being read; try again");
                    let _ = reply(&mut stream, Response::Error(busy)).await;
                    return;
                }
            }
        } else {
            None
        };
        let mut body = vec![0u8; len];
        match tokio::time::timeout(READ_DEADLINE, stream.read_exact(&mut body)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let response = match protocol::decode_request(&body) {
            Err(e) => Response::Error(e),
            Ok(req) => {
                drop(body);
                match authorize(&req, peer.as_ref()) {
                    Some(refusal) => refusal,
                    None => handle(req, &ctx, peer.as_ref(), &limits).await,
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

// ---- authorization -------------------------------------------------------------

/// Mutating requests need root, the daemon's own user, or the admin group
/// (`sparkd-admin`); `None` = allowed. Group membership is the peer's
/// primary group (SO_PEERCRED), its supplementary groups from
/// `/proc/<pid>/status` when visible, or, when it is not (the unit's
/// `ProtectProc=invisible` hides other users' processes), the member list of
/// the group in `/etc/group`.
fn authorize(req: &Request, peer: Option<&UCred>) -> Option<Response> {
    if !req.is_mutating() {
        return None;
    }
    let group = admin_group();
    let forbidden = |why: String| Some(Response::Error(ErrorBody::new(ErrorCode::Forbidden, why)));
    let Some(p) = peer else {
        return forbidden(format!("{} needs root or {group}: the peer's credentials are unknown", req.name()));
    };
    let (uid, gid, pid) = (p.uid(), p.gid(), p.pid());
    if uid == 0 || uid == own_uid() {
        return None;
    }
    let etc_group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    if let Some((admin_gid, members)) = group_entry(&etc_group, &group) {
        let proc_groups = pid
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter(|status| status_uid(status) == Some(uid))
            .map(|status| supplementary_groups(&status));
        let listed = || {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            user_name(&passwd, uid).is_some_and(|name| members.contains(&name))
        };
        if gid == admin_gid || proc_groups.is_some_and(|g| g.contains(&admin_gid)) || listed() {
            return None;
        }
    }
    tracing::warn!(uid, pid, request = req.name(), "control: mutating request refused");
    forbidden(format!("{} needs root or {group} (the admin group); uid {uid} is neither", req.name()))
}

pub fn admin_group() -> String {
    std::env::var(ENV_ADMIN_GROUP).ok().filter(|g| !g.is_empty()).unwrap_or_else(|| ADMIN_GROUP.to_string())
}

fn own_uid() -> u32 {
    // /proc/self avoids a libc dependency for one number.
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0)
}

/// `(gid, members)` of `name` in `/etc/group` text.
pub fn group_entry<'a>(etc_group: &'a str, name: &str) -> Option<(u32, Vec<&'a str>)> {
    etc_group.lines().find_map(|line| {
        let mut f = line.split(':');
        let (n, _pw, gid, members) = (f.next()?, f.next()?, f.next()?, f.next().unwrap_or(""));
        (n == name).then_some(())?;
        let gid = gid.trim().parse().ok()?;
        Some((gid, members.split(',').map(str::trim).filter(|m| !m.is_empty()).collect()))
    })
}

/// The user name of `uid` in `/etc/passwd` text.
pub fn user_name(etc_passwd: &str, uid: u32) -> Option<&str> {
    etc_passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let (name, _pw, u) = (f.next()?, f.next()?, f.next()?);
        (u.trim().parse::<u32>().ok()? == uid).then_some(name)
    })
}

/// The `Groups:` line of `/proc/<pid>/status`.
pub fn supplementary_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|rest| rest.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default()
}

/// The real uid (first field of `Uid:`) in `/proc/<pid>/status`.
pub fn status_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|r| r.split_whitespace().next()?.parse().ok())
}

// ---- requests ------------------------------------------------------------------

async fn handle(req: Request, ctx: &Arc<ControlContext>, peer: Option<&UCred>, limits: &Limits) -> Response {
    if req.is_mutating() {
        tracing::info!(
            uid = peer.map(|p| p.uid()),
            pid = peer.and_then(|p| p.pid()),
            request = req.name(),
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
        Request::Doctor => {
            let c = ctx.clone();
            match heavy(limits, move || doctor_report(&c)).await {
                Ok(r) => Response::Doctor(r),
                Err(e) => Response::Error(e),
            }
        }
        Request::ConfigShow => Response::Config(redacted_config(&ctx.config, &ctx.config_source)),
        Request::UpdateStatus => {
            let running = crate::update::binary::running_version(&ctx.state_dir).to_string();
            super::update::status(ctx.updates.as_ref(), running).await
        }
        Request::ConfigReload => super::update::config_reload(ctx.updates.as_ref()).await,
        Request::UpdateApplyManifest { envelope } => {
            super::update::apply_manifest(ctx.updates.as_ref(), envelope).await
        }
        Request::UpdateApplyChunk { chunk } => super::update::apply_chunk(ctx.updates.as_ref(), chunk).await,
        Request::Infer { name, image_hex } => match infer(ctx, limits, name, image_hex).await {
            Ok(r) => Response::Inference(r),
            Err(e) => Response::Error(e),
        },
        Request::CameraList => super::sensors::camera_list(ctx, limits).await,
        Request::CameraSnapshot => super::sensors::camera_snapshot(ctx, limits).await,
        Request::MicLevel { from_seq } => super::sensors::mic_level(ctx, from_seq),
    }
}

/// Runs `f` on the blocking pool, at most [`MAX_HEAVY`] at a time.
pub(super) async fn heavy<T: Send + 'static>(
    limits: &Limits,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ErrorBody> {
    let permit = match tokio::time::timeout(HEAVY_WAIT, limits.heavy.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        _ => {
            return Err(ErrorBody::new(
                ErrorCode::Busy,
                "the daemon is busy with other doctor/infer requests; try again",
            ));
        }
    };
    tokio::task::spawn_blocking(move || {
        let out = f();
        drop(permit);
        out
    })
    .await
    .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("request task failed: {e}")))
}

fn internal(e: impl std::fmt::Display) -> Response {
    Response::Error(ErrorBody::new(ErrorCode::Internal, e.to_string()))
}

pub fn doctor_report(ctx: &ControlContext) -> DoctorReport {
    use super::doctor;
    let checks = match status_report(ctx) {
        Ok(status) => doctor::daemon_report(&ctx.config, &ctx.state_dir, &status),
        Err(e) => {
            let mut checks = doctor::system_checks(&ctx.config, &ctx.state_dir);
            checks.push(protocol::Check::fail(
                "outbox",
                format!("reading the outbox: {}", doctor::chain(&e)),
                "journalctl -u sparkd -g outbox",
            ));
            checks
        }
    };
    DoctorReport { checks }
}

async fn infer(
    ctx: &Arc<ControlContext>,
    limits: &Limits,
    name: String,
    image_hex: String,
) -> Result<InferReport, ErrorBody> {
    let Some(jobs) = ctx.infer.clone() else {
        return Err(ErrorBody::new(ErrorCode::Unavailable, "no inference engine running (camera.source = none)"));
    };
    let image = heavy(limits, move || decode_image(&image_hex)).await??;
    let (width, height) = image.dimensions();
    let (tx, rx) = tokio::sync::oneshot::channel();
    match jobs.try_send(InferJob { image, reply: tx }) {
        Ok(()) => {}
        Err(crossbeam_channel::TrySendError::Full(_)) => {
            return Err(ErrorBody::new(
                ErrorCode::Busy,
                format!("{INFER_QUEUE} images are already waiting for the engine; try again"),
            ));
        }
        Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
            return Err(ErrorBody::new(ErrorCode::Unavailable, "the inference thread has stopped"));
        }
    }
    let inferred = match tokio::time::timeout(INFER_DEADLINE, rx).await {
        Err(_) => {
            return Err(ErrorBody::new(
                ErrorCode::Busy,
                format!("no answer from the engine within {} s", INFER_DEADLINE.as_secs()),
            ));
        }
        Ok(Err(_)) => {
            return Err(ErrorBody::new(ErrorCode::Unavailable, "the inference thread stopped before answering"));
        }
        Ok(Ok(Err(e))) => return Err(ErrorBody::new(ErrorCode::Internal, format!("inference failed: {e}"))),
        Ok(Ok(Ok(r))) => r,
    };
    let mut detections: Vec<InferDetection> = inferred
        .detections
        .into_iter()
        .map(|d| InferDetection { label: d.label, score: d.score, bbox: d.bbox })
        .collect();
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(InferReport {
        name,
        width,
        height,
        engine: inferred.engine.as_str().to_string(),
        model: ctx.shared.engine().model,
        latency_ms: inferred.latency.as_secs_f64() * 1000.0,
        detections,
    })
}

/// Hex → JPEG/PNG bytes → RGB, with size limits against decompression bombs.
pub fn decode_image(image_hex: &str) -> Result<image::RgbImage, ErrorBody> {
    let bad = |m: String| ErrorBody::new(ErrorCode::BadRequest, m);
    if image_hex.len() > 2 * MAX_IMAGE_BYTES {
        return Err(bad(format!("image larger than {MAX_IMAGE_BYTES} bytes")));
    }
    let bytes = hex::decode(image_hex).map_err(|e| bad(format!("image_hex is not hex: {e}")))?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(format!("reading the image: {e}")))?;
    if reader.format().is_none() {
        return Err(bad("not a JPEG or PNG image".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(8192);
    limits.max_image_height = Some(8192);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(format!("decoding the image: {e}")))?;
    Ok(img.to_rgb8())
}

/// The running config as JSON with secret values replaced by `"<redacted>"`.
pub fn redacted_config(config: &Config, source: &str) -> ConfigReport {
    let mut value = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
    let mut redacted = Vec::new();
    redact(&mut value, "", &mut redacted);
    ConfigReport { config: value, redacted, source: Some(source.to_string()) }
}

/// Keys whose value would be a secret itself. Keys naming a file that holds
/// one (`password_file`, `client_key_file`) are shown: the path is no secret.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let secretish = ["password", "passwd", "secret", "token", "key", "credential"].iter().any(|w| k.contains(w));
    let names_a_file = ["_file", "_files", "_path", "_dir"].iter().any(|s| k.ends_with(s));
    secretish && !names_a_file
}

fn redact(v: &mut serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    let serde_json::Value::Object(map) = v else { return };
    for (k, child) in map.iter_mut() {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        let empty = matches!(child, serde_json::Value::Null) || child.as_str().is_some_and(str::is_empty);
        if is_secret_key(k) && !empty {
            *child = serde_json::Value::String("<redacted>".into());
            out.push(path);
        } else {
            redact(child, &path, out);
        }
    }
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
    let (captured, dropped) =
        ctx.frames.as_ref().map(|q| (Shared::count(&q.captured), Shared::count(&q.dropped))).unwrap_or((0, 0));
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
        sensors: SensorReport {
            camera_reconnects: Shared::count(&s.camera_reconnects),
            camera_errors: Shared::count(&s.camera_errors),
            audio_windows: Shared::count(&s.audio_windows),
            audio_windows_dropped: Shared::count(&s.audio_windows_dropped),
            audio_segments: Shared::count(&s.audio_segments),
            audio_errors: Shared::count(&s.audio_errors),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_entries_and_members_parse() {
        let g = "root:x:0:\nsparkd:x:998:\nsparkd-admin:x:997:alice, bob\n";
        assert_eq!(group_entry(g, "sparkd-admin"), Some((997, vec!["alice", "bob"])));
        assert_eq!(group_entry(g, "sparkd"), Some((998, vec![])));
        assert_eq!(group_entry(g, "nope"), None);
        assert_eq!(group_entry("broken-line\n", "broken-line"), None);
    }

    #[test]
    fn proc_status_groups_and_uid_parse() {
        let s = "Name:\tsparkctl\nUid:\t1001\t1001\t1001\t1001\nGid:\t100\t100\t100\t100\nGroups:\t100 997 \n";
        assert_eq!(supplementary_groups(s), vec![100, 997]);
        assert_eq!(status_uid(s), Some(1001));
        assert_eq!(supplementary_groups("Groups:\n"), Vec::<u32>::new());
    }

    #[test]
    fn user_names_resolve_from_passwd() {
        let p = "root:x:0:0:root:/root:/bin/bash\nalice:x:1001:100::/home/alice:/bin/sh\n";
        assert_eq!(user_name(p, 1001), Some("alice"));
        assert_eq!(user_name(p, 5), None);
    }

    #[test]
    fn secret_values_are_redacted_but_file_paths_are_shown() {
        assert!(is_secret_key("password") && is_secret_key("api_token") && is_secret_key("signing_keys"));
        assert!(
            !is_secret_key("password_file") && !is_secret_key("client_key_file") && !is_secret_key("keep_alive_secs")
        );
        let mut v = serde_json::json!({"mqtt": {"password": "hunter2", "password_file": "/x", "token": ""}});
        let mut out = Vec::new();
        redact(&mut v, "", &mut out);
        assert_eq!(v["mqtt"]["password"], "<redacted>");
        assert_eq!(v["mqtt"]["password_file"], "/x");
        assert_eq!(v["mqtt"]["token"], "");
        assert_eq!(out, vec!["mqtt.password".to_string()]);
        // The real config has no inline secret today.
        assert!(redacted_config(&Config::default(), "test").redacted.is_empty());
    }

    #[test]
    fn images_decode_with_bounds() {
        let mut png = Vec::new();
        image::RgbImage::new(3, 2).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert_eq!(decode_image(&hex::encode(&png)).unwrap().dimensions(), (3, 2));
        assert_eq!(decode_image("zz").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(decode_image(&hex::encode(b"plain text")).unwrap_err().code, ErrorCode::BadRequest);
    }
}
