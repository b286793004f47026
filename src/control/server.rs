//! The daemon's control socket listener.
//!
//! Owns accepting connections, framing, authorization and turning requests
//! into reports from the shared state. Each connection is its own task.
//! Fairness and bounds (issue 15):
//! - slots: at most [`MAX_CLIENTS`], [`ADMIN_SLOTS`] of them for admins only,
//!   [`MAX_CLIENTS_PER_UID`] per other uid; when full, the oldest idle
//!   connection of the uid holding the most slots is closed to make room
//!   (the policy is `admission`); a refused client is answered `busy`;
//! - time: a request must arrive whole within [`READ_DEADLINE`] of its
//!   first byte, be answered within [`HANDLE_DEADLINE`], and a connection
//!   idle for [`READ_DEADLINE`] is closed;
//! - memory: a frame over [`MAX_REQUEST_BYTES`] must name its command in its
//!   first bytes, and is refused unread when larger than that command may be
//!   (`Request::max_frame`) or when the [`MEMORY_BUDGET_BYTES`] shared by
//!   request bodies and image decoding is spent (admins draw on a further
//!   [`ADMIN_MEMORY_BYTES`]). Large frames are parsed into typed fields, never
//!   into a JSON tree; images are checked by their declared size before any
//!   pixel is decoded ([`MAX_IMAGE_PIXELS`]).
//!
//! Work heavier than reading counters (doctor hashes model files, infer
//! decodes an image) runs on the blocking pool, at most [`MAX_HEAVY`] at a
//! time, never on the async workers.
//!
//! **Architecture Invariant:** every request gets exactly one response frame
//! or, when its frame cannot be read, the connection is closed; nothing a
//! client sends can panic or stall the listener.

use std::borrow::Cow;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::UCred;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use super::admission::{Admission, Admit, Refusal};
use super::protocol::{
    self, CameraStatus, ConfigReport, DoctorReport, ErrorBody, ErrorCode, InferDetection, InferReport, InferenceReport,
    MAX_IMAGE_BYTES, MAX_REQUEST_BYTES, MAX_UPLOAD_BYTES, PROTOCOL_VERSION, QueueReport, Request, Response,
    ResponseFrame, SensorReport, StatusReport, StreamQueue,
};
use crate::config::Config;
use crate::inference::pipeline::InferJob;
use crate::outbox::Outbox;
use crate::record::now_ms;
use crate::sources::camera::CameraQueues;
use crate::state::Shared;

/// Connections served at once.
pub const MAX_CLIENTS: usize = 128;
/// Of [`MAX_CLIENTS`], slots only admins (root, the daemon's user, the admin
/// group) may take: a flood from group members never locks them out.
pub const ADMIN_SLOTS: usize = 8;
/// Slots one non-admin uid may hold; its next connection replaces its own
/// oldest idle one.
pub const MAX_CLIENTS_PER_UID: usize = 32;
/// Doctor and infer requests running at once (blocking pool).
pub const MAX_HEAVY: usize = 2;
/// Bytes that large request bodies (over [`MAX_REQUEST_BYTES`]) and image
/// decoding may hold at once. Sized for one 12-megapixel RGBA image with
/// its file (see [`decode_bytes`]) and kept under the 64 MB the daemon may
/// grow by under abuse (issue 15).
pub const MEMORY_BUDGET_BYTES: usize = 54 << 20;
/// Further bytes for admins' large frames (`update apply` chunks), so
/// others' uploads never block an update.
pub const ADMIN_MEMORY_BYTES: usize = 4 << 20;
/// Largest image `sparkctl infer` decodes, by its declared size: 12 MP
/// (4000×3000) is far above any model's input and keeps one decode within
/// [`MEMORY_BUDGET_BYTES`].
pub const MAX_IMAGE_PIXELS: u64 = 12_000_000;
/// `sparkctl infer` images waiting for the inference thread.
pub const INFER_QUEUE: usize = 4;
/// Group whose members may run mutating commands.
pub const ADMIN_GROUP: &str = "sparkd-admin";
/// Overrides [`ADMIN_GROUP`] (a site with another group name; the tests).
pub const ENV_ADMIN_GROUP: &str = "SPARKD_ADMIN_GROUP";

/// A request must arrive whole within this of its first byte; a connection
/// waiting this long for its next request is closed.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);
/// A request must be answered within this (above `update apply`'s 150 s).
pub const HANDLE_DEADLINE: Duration = Duration::from_secs(170);
/// How much of a large frame names its command.
const PREFIX_BYTES: usize = 256;
const HEAVY_WAIT: Duration = Duration::from_secs(20);
const INFER_DEADLINE: Duration = Duration::from_secs(30);

/// What request handlers read from.
pub struct ControlContext {
    pub shared: Arc<Shared>,
    pub outbox: Outbox,
    pub frames: Option<Arc<CameraQueues>>,
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
    /// [`MEMORY_BUDGET_BYTES`] in KiB permits.
    memory: Arc<Semaphore>,
    /// [`ADMIN_MEMORY_BYTES`] in KiB permits.
    admin_memory: Arc<Semaphore>,
}

impl Limits {
    fn new() -> Self {
        Limits {
            heavy: Arc::new(Semaphore::new(MAX_HEAVY)),
            memory: Arc::new(Semaphore::new(kib(MEMORY_BUDGET_BYTES) as usize)),
            admin_memory: Arc::new(Semaphore::new(kib(ADMIN_MEMORY_BYTES) as usize)),
        }
    }

    /// `bytes` of the budget now, or `None`; admins may use their reserve.
    fn try_charge(&self, bytes: usize, admin: bool) -> Option<OwnedSemaphorePermit> {
        let n = kib(bytes);
        self.memory
            .clone()
            .try_acquire_many_owned(n)
            .ok()
            .or_else(|| admin.then(|| self.admin_memory.clone().try_acquire_many_owned(n).ok()).flatten())
    }
}

/// Permits are KiB so the largest frame fits a `u32` count.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// The slot table and a way to tell an evicted connection to close.
struct Registry {
    inner: Mutex<(Admission, HashMap<u64, Arc<Notify>>)>,
}

/// One admitted connection; frees its slot when dropped.
struct Slot {
    id: u64,
    evicted: Arc<Notify>,
    registry: Arc<Registry>,
}

impl Registry {
    fn new() -> Arc<Self> {
        let admission = Admission::new(MAX_CLIENTS, ADMIN_SLOTS, MAX_CLIENTS_PER_UID);
        Arc::new(Registry { inner: Mutex::new((admission, HashMap::new())) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Admission, HashMap<u64, Arc<Notify>>)> {
        // The table stays consistent across a panic elsewhere: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(self: &Arc<Self>, uid: u32, admin: bool) -> Result<Slot, Refusal> {
        let mut guard = self.lock();
        let (table, evict) = &mut *guard;
        match table.admit(uid, admin) {
            Admit::No(r) => Err(r),
            Admit::Yes { id, evict: victim } => {
                if let Some(n) = victim.and_then(|v| evict.remove(&v)) {
                    n.notify_one();
                }
                let evicted = Arc::new(Notify::new());
                evict.insert(id, evicted.clone());
                Ok(Slot { id, evicted, registry: self.clone() })
            }
        }
    }
}

impl Slot {
    fn set_idle(&self) {
        self.registry.lock().0.set_idle(self.id, std::time::Instant::now());
    }

    /// `false` when the connection lost its slot while idle.
    fn set_busy(&self) -> bool {
        self.registry.lock().0.set_busy(self.id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.registry.lock();
        guard.0.release(self.id);
        guard.1.remove(&self.id);
    }
}

pub async fn serve(listener: UnixListener, ctx: Arc<ControlContext>, mut shutdown: watch::Receiver<bool>) {
    let registry = Registry::new();
    let limits = Arc::new(Limits::new());
    let mut last_busy_log: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let peer = stream.peer_cred().ok();
                    // Unknown credentials count as one anonymous non-admin uid.
                    let uid = peer.as_ref().map_or(u32::MAX, UCred::uid);
                    let admin = is_admin(peer.as_ref());
                    let slot = match registry.admit(uid, admin) {
                        Ok(slot) => slot,
                        Err(refusal) => {
                            // Say so instead of hanging up; never wait on this client.
                            let _ = stream.try_write(&busy_frame(&refusal));
                            if last_busy_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                                tracing::warn!(uid, max = MAX_CLIENTS, %refusal, "control socket: client refused");
                                last_busy_log = Some(std::time::Instant::now());
                            }
                            continue;
                        }
                    };
                    let (ctx, limits) = (ctx.clone(), limits.clone());
                    tokio::spawn(handle_connection(stream, peer, admin, slot, ctx, limits));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

fn busy_frame(refusal: &Refusal) -> Vec<u8> {
    let response = Response::Error(ErrorBody::new(ErrorCode::Busy, refusal.to_string()));
    protocol::encode(&ResponseFrame { v: PROTOCOL_VERSION, response }).unwrap_or_default()
}

/// What one frame turned into.
enum Frame {
    /// A request to serve, with the budget its body still holds.
    Job(Job, Option<OwnedSemaphorePermit>),
    /// Answer this and read the next frame.
    Answer(ErrorBody),
    /// Answer this and close: the rest of the stream cannot be framed.
    Fatal(ErrorBody),
    /// Close without an answer (EOF, an error, the deadline).
    Closed,
}

/// A request, with `infer`'s image already out of its hex.
enum Job {
    Request(Request),
    Infer { name: String, image: Vec<u8> },
}

async fn handle_connection(
    mut stream: UnixStream,
    peer: Option<UCred>,
    admin: bool,
    slot: Slot,
    ctx: Arc<ControlContext>,
    limits: Arc<Limits>,
) {
    loop {
        slot.set_idle();
        // Idle: the first byte of the next request, the idle deadline, or
        // eviction (another client needed the slot).
        let first = tokio::select! {
            read = tokio::time::timeout(READ_DEADLINE, stream.read_u8()) => match read {
                Ok(Ok(b)) => b,
                _ => return,
            },
            _ = slot.evicted.notified() => {
                tracing::debug!(uid = peer.as_ref().map(UCred::uid), "control: idle connection closed to make room");
                return;
            }
        };
        if !slot.set_busy() {
            return;
        }
        let deadline = tokio::time::Instant::now() + READ_DEADLINE;
        let frame = tokio::time::timeout_at(deadline, read_frame(&mut stream, first, admin, &limits))
            .await
            .unwrap_or(Frame::Closed);
        let response = match frame {
            Frame::Closed => return,
            Frame::Fatal(e) => {
                let _ = reply(&mut stream, Response::Error(e)).await;
                return;
            }
            Frame::Answer(e) => Response::Error(e),
            Frame::Job(job, charge) => {
                let served =
                    tokio::time::timeout(HANDLE_DEADLINE, serve_job(job, &ctx, peer.as_ref(), &limits, charge));
                served.await.unwrap_or_else(|_| {
                    Response::Error(ErrorBody::new(
                        ErrorCode::Busy,
                        format!("the request did not finish within {} s", HANDLE_DEADLINE.as_secs()),
                    ))
                })
            }
        };
        if reply(&mut stream, response).await.is_err() {
            return;
        }
    }
}

async fn serve_job(
    job: Job,
    ctx: &Arc<ControlContext>,
    peer: Option<&UCred>,
    limits: &Limits,
    charge: Option<OwnedSemaphorePermit>,
) -> Response {
    match job {
        Job::Infer { name, image } => match infer(ctx, limits, name, image, charge).await {
            Ok(r) => Response::Inference(r),
            Err(e) => Response::Error(e),
        },
        Job::Request(req) => {
            let response = match authorize(&req, peer) {
                Some(refusal) => refusal,
                None => handle(req, ctx, peer, limits).await,
            };
            drop(charge);
            response
        }
    }
}

/// Reads one frame whose first byte is `first`. Small frames are read and
/// decoded whole; a large one must name its command within its first
/// [`PREFIX_BYTES`], is refused unread when that command may not be so
/// large or the memory budget is spent, and is parsed into typed fields.
async fn read_frame(stream: &mut UnixStream, first: u8, admin: bool, limits: &Limits) -> Frame {
    let mut header = [first, 0, 0, 0];
    if stream.read_exact(&mut header[1..]).await.is_err() {
        return Frame::Closed;
    }
    let len = match protocol::check_len(header, MAX_UPLOAD_BYTES) {
        Ok(len) => len,
        Err(e) => return Frame::Fatal(ErrorBody::new(ErrorCode::TooLarge, e.to_string())),
    };
    if len <= MAX_REQUEST_BYTES {
        let mut body = vec![0u8; len];
        if stream.read_exact(&mut body).await.is_err() {
            return Frame::Closed;
        }
        return match protocol::decode_request(&body) {
            Ok(req) => Frame::Job(Job::Request(req), None),
            Err(e) => Frame::Answer(e),
        };
    }
    let mut body = vec![0u8; len.min(PREFIX_BYTES)];
    if stream.read_exact(&mut body).await.is_err() {
        return Frame::Closed;
    }
    let declared = declared_cmd(&body);
    let kind = declared.and_then(LargeKind::of_cmd);
    let max = kind.map_or(MAX_REQUEST_BYTES, LargeKind::max_frame);
    let kind = match (declared, kind) {
        (Some(_), Some(kind)) if len <= max => kind,
        (Some(cmd), _) => {
            return Frame::Fatal(ErrorBody::new(
                ErrorCode::TooLarge,
                format!("a `{cmd}` request may be at most {max} bytes; this frame declares {len}"),
            ));
        }
        (None, _) => {
            return Frame::Fatal(ErrorBody::new(
                ErrorCode::TooLarge,
                format!(
                    "a frame over {MAX_REQUEST_BYTES} bytes ({len} declared) must be an infer or update-apply-chunk \
                     request naming its `cmd` within its first {PREFIX_BYTES} bytes"
                ),
            ));
        }
    };
    let Some(mut charge) = limits.try_charge(kind.peak_bytes(len), admin) else {
        return Frame::Fatal(ErrorBody::new(
            ErrorCode::Busy,
            "the daemon's memory for large requests is in use by other clients; try again",
        ));
    };
    // Fill from the stream: only the bytes that arrived are ever touched.
    let mut rest = stream.take((len - body.len()) as u64);
    body.reserve_exact(len - body.len());
    match rest.read_to_end(&mut body).await {
        Ok(_) if body.len() == len => {}
        _ => return Frame::Closed,
    }
    let job = match parse_large(kind, &body) {
        Ok(job) => job,
        Err(e) => return Frame::Answer(e),
    };
    drop(body);
    // Keep charged only what the request still holds.
    let held = match &job {
        Job::Infer { image, .. } => image.len(),
        Job::Request(Request::UpdateApplyChunk { chunk }) => chunk.len(),
        Job::Request(_) => 0,
    };
    let keep = charge.split(kib(held) as usize);
    drop(charge);
    Frame::Job(job, keep)
}

/// The requests that may come in frames over [`MAX_REQUEST_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LargeKind {
    Infer,
    Chunk,
}

impl LargeKind {
    fn of_cmd(cmd: &str) -> Option<Self> {
        match cmd {
            "infer" => Some(LargeKind::Infer),
            "update-apply-chunk" => Some(LargeKind::Chunk),
            _ => None,
        }
    }

    /// The large kind a frame declares in its first bytes.
    #[cfg(test)]
    fn of(prefix: &[u8]) -> Option<Self> {
        declared_cmd(prefix).and_then(Self::of_cmd)
    }

    /// An example of the request, for the protocol's bounds and names.
    fn example(self) -> Request {
        match self {
            LargeKind::Infer => Request::Infer { name: String::new(), image_hex: String::new() },
            LargeKind::Chunk => Request::UpdateApplyChunk { chunk: String::new() },
        }
    }

    fn max_frame(self) -> usize {
        self.example().max_frame()
    }

    fn name(self) -> &'static str {
        self.example().name()
    }

    /// Most memory reading and parsing a `len`-byte frame holds: the body,
    /// plus the image bytes out of their hex or the chunk text.
    fn peak_bytes(self, len: usize) -> usize {
        match self {
            LargeKind::Infer => len + len / 2,
            LargeKind::Chunk => 2 * len,
        }
    }
}

/// The `cmd` a frame declares in its first bytes (clients send
/// `{"v":1,"request":{"cmd":...`: serde writes the tag first). Only a short
/// lowercase name counts, so the message quoting it stays short.
fn declared_cmd(prefix: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"cmd\"";
    let at = prefix.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = prefix[at..].trim_ascii_start().strip_prefix(b":")?.trim_ascii_start().strip_prefix(b"\"")?;
    let end = rest.iter().take(32).position(|b| *b == b'"')?;
    let name = &rest[..end];
    name.iter().all(|b| b.is_ascii_lowercase() || *b == b'-').then(|| std::str::from_utf8(name).ok()).flatten()
}

/// A large frame's fields, typed: nothing is built but the strings kept
/// (a JSON tree of a 16 MiB frame can take hundreds of MB). `image_hex` is
/// borrowed: hex needs no escapes, and a copy would double the memory.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LargeFrame<'a> {
    v: u64,
    #[serde(borrow)]
    request: LargeRequest<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LargeRequest<'a> {
    #[serde(borrow)]
    cmd: Cow<'a, str>,
    name: Option<String>,
    image_hex: Option<&'a str>,
    chunk: Option<String>,
}

fn parse_large(kind: LargeKind, body: &[u8]) -> Result<Job, ErrorBody> {
    let bad = |m: String| ErrorBody::new(ErrorCode::BadRequest, m);
    let frame: LargeFrame =
        serde_json::from_slice(body).map_err(|e| bad(format!("bad {} request: {e}", kind.name())))?;
    if frame.v != u64::from(PROTOCOL_VERSION) {
        return Err(ErrorBody::new(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {} not supported; this daemon speaks {PROTOCOL_VERSION}", frame.v),
        ));
    }
    let r = frame.request;
    match (kind, r.cmd.as_ref(), r.name, r.image_hex, r.chunk) {
        (LargeKind::Infer, "infer", Some(name), Some(image_hex), None) => {
            Ok(Job::Infer { name, image: image_bytes(image_hex)? })
        }
        (LargeKind::Chunk, "update-apply-chunk", None, None, Some(chunk)) => {
            Ok(Job::Request(Request::UpdateApplyChunk { chunk }))
        }
        _ => Err(bad(format!("bad {} request: its fields do not match its cmd `{}`", kind.name(), r.cmd))),
    }
}

/// `infer`'s hex → the image file's bytes.
fn image_bytes(image_hex: &str) -> Result<Vec<u8>, ErrorBody> {
    let bad = |m: String| ErrorBody::new(ErrorCode::BadRequest, m);
    if image_hex.len() > 2 * MAX_IMAGE_BYTES {
        return Err(bad(format!("image larger than {MAX_IMAGE_BYTES} bytes")));
    }
    hex::decode(image_hex).map_err(|e| bad(format!("image_hex is not hex: {e}")))
}

async fn reply(stream: &mut UnixStream, response: Response) -> std::io::Result<()> {
    let bytes = protocol::encode(&ResponseFrame { v: PROTOCOL_VERSION, response })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio::time::timeout(READ_DEADLINE, stream.write_all(&bytes))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

// ---- authorization -------------------------------------------------------------

/// Mutating requests need an admin (see [`is_admin`]); `None` = allowed.
fn authorize(req: &Request, peer: Option<&UCred>) -> Option<Response> {
    if !req.is_mutating() || is_admin(peer) {
        return None;
    }
    let group = admin_group();
    let forbidden = |why: String| Some(Response::Error(ErrorBody::new(ErrorCode::Forbidden, why)));
    let Some(p) = peer else {
        return forbidden(format!("{} needs root or {group}: the peer's credentials are unknown", req.name()));
    };
    let (uid, pid) = (p.uid(), p.pid());
    tracing::warn!(uid, pid, request = req.name(), "control: mutating request refused");
    forbidden(format!("{} needs root or {group} (the admin group); uid {uid} is neither", req.name()))
}

/// Admins are root, the daemon's own user, or the admin group
/// (`sparkd-admin`). Group membership is the peer's primary group
/// (SO_PEERCRED), its supplementary groups from `/proc/<pid>/status` when
/// visible, or, when it is not (the unit's `ProtectProc=invisible` hides
/// other users' processes), the member list of the group in `/etc/group`.
fn is_admin(peer: Option<&UCred>) -> bool {
    let Some(p) = peer else { return false };
    let (uid, gid, pid) = (p.uid(), p.gid(), p.pid());
    if uid == 0 || uid == own_uid() {
        return true;
    }
    let etc_group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let Some((admin_gid, members)) = group_entry(&etc_group, &admin_group()) else { return false };
    let proc_groups = pid
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter(|status| status_uid(status) == Some(uid))
        .map(|status| supplementary_groups(&status));
    let listed = || {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        user_name(&passwd, uid).is_some_and(|name| members.contains(&name))
    };
    gid == admin_gid || proc_groups.is_some_and(|g| g.contains(&admin_gid)) || listed()
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
        Request::Link => Response::Link(super::views::link_view(ctx.shared.link())),
        Request::Engine => Response::Engine(super::views::engine_view(ctx.shared.engine())),
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
        Request::Infer { name, image_hex } => {
            // A small frame (under MAX_REQUEST_BYTES): not charged to the budget.
            match image_bytes(&image_hex) {
                Ok(image) => match infer(ctx, limits, name, image, None).await {
                    Ok(r) => Response::Inference(r),
                    Err(e) => Response::Error(e),
                },
                Err(e) => Response::Error(e),
            }
        }
        Request::CameraList => super::sensors::camera_list(ctx, limits).await,
        Request::CameraSnapshot { camera } => super::sensors::camera_snapshot(ctx, limits, camera).await,
        Request::MicLevel { from_seq } => super::sensors::mic_level(ctx, from_seq),
        Request::Metrics => match super::metrics::collect(ctx).await {
            Ok(text) => Response::Metrics(protocol::MetricsReport { text }),
            Err(e) => internal(crate::error_chain(&e)),
        },
        Request::Events { after_seq } => match events_report(ctx, after_seq.unwrap_or(0)) {
            Ok(r) => Response::Events(r),
            Err(e) => internal(crate::error_chain(&e)),
        },
    }
}

/// The recent events after `after_seq`, each marked delivered when the
/// outbox no longer holds it. The ring is read first: its entries were
/// committed before the outbox is asked, so none is called delivered early.
fn events_report(ctx: &ControlContext, after_seq: u64) -> Result<protocol::EventsReport, crate::outbox::OutboxError> {
    use crate::record::Stream;
    let entries = ctx.shared.recent_events.after(after_seq);
    let next_seq = ctx.outbox.counters()[Stream::Events as usize].next_seq;
    // An entry below the oldest stored record has left the outbox; one
    // acknowledged out of order behind it reads as pending until that one is.
    let pending_from = ctx.outbox.read_after(Stream::Events, 0, 1)?.first().map_or(next_seq, |p| p.seq);
    let snaps_next = ctx.outbox.counters()[Stream::Snapshots as usize].next_seq;
    let snaps_from = ctx.outbox.read_after(Stream::Snapshots, 0, 1)?.first().map_or(snaps_next, |p| p.seq);
    Ok(super::views::events_report(entries, pending_from, snaps_from))
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

/// `image` (a JPEG or PNG file) through the live engine. `charge` is the
/// budget holding `image`; the decode takes its own share before it starts.
async fn infer(
    ctx: &Arc<ControlContext>,
    limits: &Limits,
    name: String,
    image: Vec<u8>,
    charge: Option<OwnedSemaphorePermit>,
) -> Result<InferReport, ErrorBody> {
    // The header first: an image too large is refused before anything else.
    let header = image_header(&image)?;
    let Some(jobs) = ctx.infer.clone() else {
        return Err(ErrorBody::new(ErrorCode::Unavailable, "no inference engine running (camera.source = none)"));
    };
    let need = header.decode_bytes();
    let held = charge.as_ref().map_or(0, |_| image.len());
    if need + held > MEMORY_BUDGET_BYTES {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!(
                "decoding this {}×{} {:?} image takes {} MiB, more than the daemon's {} MiB for requests; \
                 scale it down or save it as an 8-bit baseline JPEG/PNG",
                header.width,
                header.height,
                header.color,
                need >> 20,
                MEMORY_BUDGET_BYTES >> 20
            ),
        ));
    }
    let decoding = match tokio::time::timeout(HEAVY_WAIT, limits.memory.clone().acquire_many_owned(kib(need))).await {
        Ok(Ok(p)) => p,
        _ => return Err(ErrorBody::new(ErrorCode::Busy, "the daemon's memory for images is in use; try again")),
    };
    let image = heavy(limits, move || decode_image_within(&image, need)).await??;
    drop(charge); // the file is gone; the pixels stay charged to `decoding`
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
    drop(decoding);
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

/// What an image file's header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub width: u32,
    pub height: u32,
    pub color: image::ColorType,
    /// A progressive JPEG: its decoder keeps every coefficient.
    pub progressive: bool,
}

impl ImageHeader {
    /// Most memory decoding this image to RGB8 takes: the decoder's pixels,
    /// an RGB copy unless converted in place (RGB8, RGBA8), and a
    /// progressive JPEG's coefficients (16 bits for each of 3 components).
    pub fn decode_bytes(&self) -> usize {
        let pixels = u64::from(self.width) * u64::from(self.height);
        let native = pixels * u64::from(self.color.bytes_per_pixel());
        let convert =
            if matches!(self.color, image::ColorType::Rgb8 | image::ColorType::Rgba8) { 0 } else { pixels * 3 };
        let coefficients = if self.progressive { pixels * 6 } else { 0 };
        usize::try_from(native + convert + coefficients).unwrap_or(usize::MAX)
    }
}

fn bad_image(m: String) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, m)
}

fn reader(bytes: &[u8]) -> Result<image::ImageReader<std::io::Cursor<&[u8]>>, ErrorBody> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad_image(format!("reading the image: {e}")))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png) => Ok(reader),
        _ => Err(bad_image("not a JPEG or PNG image".into())),
    }
}

/// Reads the header only (no pixel is decoded) and refuses an image that
/// declares more than [`MAX_IMAGE_PIXELS`].
pub fn image_header(bytes: &[u8]) -> Result<ImageHeader, ErrorBody> {
    let progressive = is_progressive_jpeg(bytes);
    let d = reader(bytes)?.into_decoder().map_err(|e| bad_image(format!("reading the image header: {e}")))?;
    let (width, height) = image::ImageDecoder::dimensions(&d);
    let color = image::ImageDecoder::color_type(&d);
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_IMAGE_PIXELS {
        return Err(bad_image(format!(
            "the image declares {width}×{height} pixels ({:.1} megapixels); sparkctl infer takes at most {:.1} \
             megapixels (e.g. 4000×3000): scale it down first",
            pixels as f64 / 1e6,
            MAX_IMAGE_PIXELS as f64 / 1e6
        )));
    }
    Ok(ImageHeader { width, height, color, progressive })
}

/// Whether a JPEG's first frame header is progressive (SOF2, SOF6, SOF10,
/// SOF14). Walks the marker segments before it; `false` for anything else.
fn is_progressive_jpeg(bytes: &[u8]) -> bool {
    let mut at = 2;
    if bytes.get(..2) != Some(&[0xFF, 0xD8]) {
        return false;
    }
    while let (Some(&0xFF), Some(&marker)) = (bytes.get(at), bytes.get(at + 1)) {
        match marker {
            0xFF => at += 1, // fill byte
            0xC2 | 0xC6 | 0xCA | 0xCE => return true,
            0xC0 | 0xC1 | 0xC3 | 0xC5 | 0xC7 | 0xC9 | 0xCB | 0xCD | 0xCF | 0xDA | 0xD9 => return false,
            _ => {
                let Some(len) = bytes.get(at + 2..at + 4) else { return false };
                at += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
        }
    }
    false
}

/// JPEG/PNG bytes → RGB, after the header checks of [`image_header`].
pub fn decode_image(bytes: &[u8]) -> Result<image::RgbImage, ErrorBody> {
    let need = image_header(bytes)?.decode_bytes();
    decode_image_within(bytes, need)
}

/// Decodes with the decoder's own limits set to the header's size and
/// `max_bytes` of allocation, converting RGBA8 to RGB8 in place.
fn decode_image_within(bytes: &[u8], max_bytes: usize) -> Result<image::RgbImage, ErrorBody> {
    let header = image_header(bytes)?;
    let mut reader = reader(bytes)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(header.width);
    limits.max_image_height = Some(header.height);
    limits.max_alloc = Some(max_bytes as u64);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad_image(format!("decoding the image: {e}")))?;
    Ok(match img {
        image::DynamicImage::ImageRgba8(rgba) => rgba_to_rgb_in_place(rgba),
        other => other.into_rgb8(),
    })
}

/// Drops the alpha channel without a second buffer.
fn rgba_to_rgb_in_place(rgba: image::RgbaImage) -> image::RgbImage {
    let (w, h) = rgba.dimensions();
    let mut raw = rgba.into_raw();
    let pixels = raw.len() / 4;
    for i in 0..pixels {
        raw.copy_within(4 * i..4 * i + 3, 3 * i);
    }
    raw.truncate(3 * pixels);
    raw.shrink_to_fit();
    // The length is exactly w*h*3, so this cannot fail; an empty image otherwise.
    image::RgbImage::from_raw(w, h, raw).unwrap_or_default()
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
        refused: stats.refused,
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
                        refused: s.refused,
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
    let cameras: Vec<CameraStatus> = ctx
        .frames
        .iter()
        .flat_map(|q| q.lanes())
        .map(|l| CameraStatus {
            id: l.id.to_string(),
            captured: Shared::count(&l.queue.captured),
            dropped: Shared::count(&l.queue.dropped),
            inferred: Shared::count(&l.inferred),
            last_latency_ms: Shared::count(&l.last_latency_us) as f64 / 1000.0,
        })
        .collect();
    let (captured, dropped) = (cameras.iter().map(|c| c.captured).sum(), cameras.iter().map(|c| c.dropped).sum());
    Ok(StatusReport {
        device_id: s.device_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s: s.started.elapsed().as_secs(),
        engine: super::views::engine_view(s.engine()),
        queue: queue_report(ctx)?,
        link: super::views::link_view(s.link()),
        inference: InferenceReport {
            total: Shared::count(&s.inference_total),
            failed: Shared::count(&s.inference_failed),
            frames_captured: captured,
            frames_dropped: dropped,
            last_latency_ms: Shared::count(&s.last_latency_us) as f64 / 1000.0,
            cameras,
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
        diagnostics: protocol::DiagnosticsReport {
            answered: Shared::count(&s.diag.answered),
            refused: s.diag.refused().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        },
        snapshots: protocol::SnapshotsReport {
            stored: Shared::count(&s.snapshot_counts.stored),
            reencoded: Shared::count(&s.snapshot_counts.reencoded),
            dropped_queue_full: Shared::count(&s.snapshot_counts.dropped_queue_full),
            dropped_oversize: Shared::count(&s.snapshot_counts.dropped_oversize),
            failed: Shared::count(&s.snapshot_counts.failed),
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
        assert_eq!(decode_image(&png).unwrap().dimensions(), (3, 2));
        assert_eq!(image_bytes("zz").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(decode_image(b"plain text").unwrap_err().code, ErrorCode::BadRequest);
    }

    /// A PNG with only a header (IHDR) and an empty IDAT: it declares
    /// `w`×`h` but holds no pixels, like a decompression-bomb probe.
    pub(crate) fn png_declaring(w: u32, h: u32) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for b in bytes {
                crc ^= u32::from(*b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
                }
            }
            !crc
        }
        fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let crc = crc32(&out[start..]);
            out.extend_from_slice(&crc.to_be_bytes());
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(&mut png, b"IEND", &[]);
        png
    }

    #[test]
    fn an_image_declaring_too_many_pixels_is_refused_from_its_header() {
        let e = decode_image(&png_declaring(8192, 8192)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("8192×8192") && e.message.contains("67.1 megapixels"), "{}", e.message);
        assert!(e.message.contains("at most 12.0 megapixels"), "{}", e.message);
        // At the bound the header passes (decoding then fails on the empty data).
        let h = image_header(&png_declaring(4000, 3000)).unwrap();
        assert_eq!((h.width, h.height, h.color, h.progressive), (4000, 3000, image::ColorType::Rgba8, false));
        assert!(image_header(&png_declaring(4000, 3001)).is_err());
    }

    #[test]
    fn decode_memory_counts_pixels_conversion_and_progressive_coefficients() {
        let h = |color, progressive| ImageHeader { width: 1000, height: 1000, color, progressive };
        assert_eq!(h(image::ColorType::Rgb8, false).decode_bytes(), 3_000_000);
        assert_eq!(h(image::ColorType::Rgba8, false).decode_bytes(), 4_000_000);
        assert_eq!(h(image::ColorType::L8, false).decode_bytes(), 4_000_000);
        assert_eq!(h(image::ColorType::Rgba16, false).decode_bytes(), 11_000_000);
        assert_eq!(h(image::ColorType::Rgb8, true).decode_bytes(), 9_000_000);
        // The largest 8-bit RGBA image fits the budget with its file.
        let max = ImageHeader { width: 4000, height: 3000, color: image::ColorType::Rgba8, progressive: false };
        assert!(max.decode_bytes() + MAX_IMAGE_BYTES <= MEMORY_BUDGET_BYTES);
    }

    #[test]
    fn progressive_jpegs_are_told_from_baseline_ones() {
        let mut jpeg = Vec::new();
        image::RgbImage::new(8, 8).write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        assert!(!is_progressive_jpeg(&jpeg));
        // SOI, an APP0 segment, then SOF2.
        let progressive = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00, 0xFF, 0xC2, 0x00, 0x08];
        assert!(is_progressive_jpeg(&progressive));
        assert!(!is_progressive_jpeg(&png_declaring(1, 1)));
        assert!(!is_progressive_jpeg(&[0xFF, 0xD8, 0xFF, 0xE0, 0xFF]));
    }

    #[test]
    fn rgba_becomes_rgb_in_place_as_the_library_converts_it() {
        let rgba = image::RgbaImage::from_fn(5, 3, |x, y| image::Rgba([x as u8, y as u8, (x * y) as u8, 7]));
        let want = image::DynamicImage::ImageRgba8(rgba.clone()).to_rgb8();
        assert_eq!(rgba_to_rgb_in_place(rgba), want);
    }

    fn body(r: &Request) -> Vec<u8> {
        protocol::encode(&protocol::RequestFrame { v: PROTOCOL_VERSION, request: r.clone() }).unwrap()[4..].to_vec()
    }

    #[test]
    fn large_frames_name_their_command_in_their_first_bytes() {
        let infer = Request::Infer { name: "a.png".into(), image_hex: "00".repeat(MAX_REQUEST_BYTES) };
        assert_eq!(LargeKind::of(&body(&infer)[..PREFIX_BYTES]), Some(LargeKind::Infer));
        let chunk = Request::UpdateApplyChunk { chunk: "x".repeat(MAX_REQUEST_BYTES) };
        assert_eq!(LargeKind::of(&body(&chunk)[..PREFIX_BYTES]), Some(LargeKind::Chunk));
        assert_eq!(LargeKind::of(br#"{ "v" : 1, "request" : { "cmd" : "infer""#), Some(LargeKind::Infer));
        assert_eq!(LargeKind::of(&body(&Request::Status)), None);
        assert_eq!(LargeKind::of(&[b'['; PREFIX_BYTES]), None);
        assert_eq!(LargeKind::of(br#"{"v":1,"request":{"cmd":"inf"#), None);
        assert_eq!(declared_cmd(&body(&Request::Status)), Some("status"));
        assert_eq!(declared_cmd(br#"{"cmd":"St\u0061tus"}"#), None);
        // The only requests allowed past the small bound are the large kinds.
        for small in [Request::Status, Request::Doctor, Request::ConfigReload, Request::MicLevel { from_seq: None }] {
            assert_eq!(small.max_frame(), MAX_REQUEST_BYTES, "{}", small.name());
        }
        assert!(LargeKind::Infer.max_frame() > MAX_REQUEST_BYTES && LargeKind::Chunk.max_frame() > MAX_REQUEST_BYTES);
        assert!(LargeKind::Chunk.max_frame() < MAX_UPLOAD_BYTES / 16, "a chunk frame needs far less than an image");
        assert!(LargeKind::Chunk.peak_bytes(LargeKind::Chunk.max_frame()) <= ADMIN_MEMORY_BYTES);
    }

    #[test]
    fn large_frames_parse_into_typed_fields_or_a_clear_error() {
        let png = png_declaring(2, 2);
        let infer = Request::Infer { name: "a.png".into(), image_hex: hex::encode(&png) };
        match parse_large(LargeKind::Infer, &body(&infer)) {
            Ok(Job::Infer { name, image }) => assert_eq!((name.as_str(), image), ("a.png", png)),
            _ => panic!("infer did not parse"),
        }
        let chunk = Request::UpdateApplyChunk { chunk: r#"{"update_id":"u"}"#.into() };
        assert!(matches!(parse_large(LargeKind::Chunk, &body(&chunk)), Ok(Job::Request(r)) if r == chunk));
        let code = |kind, text: &str| match parse_large(kind, text.as_bytes()) {
            Err(e) => e.code,
            Ok(_) => panic!("{text} parsed"),
        };
        // A JSON tree where a string belongs is refused at its first byte.
        let tree = format!(r#"{{"v":1,"request":{{"cmd":"infer","name":"x","image_hex":[{}0]}}}}"#, "0,".repeat(1000));
        assert_eq!(code(LargeKind::Infer, &tree), ErrorCode::BadRequest);
        assert_eq!(
            code(LargeKind::Infer, r#"{"v":1,"request":{"cmd":"infer","name":"x","image_hex":"\u0030"}}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(LargeKind::Infer, r#"{"v":1,"request":{"cmd":"status","name":"x","image_hex":"00"}}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(LargeKind::Chunk, r#"{"v":1,"request":{"cmd":"infer","name":"x","image_hex":"00"}}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(LargeKind::Infer, r#"{"v":2,"request":{"cmd":"infer","name":"x","image_hex":"00"}}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            code(LargeKind::Infer, r#"{"v":1,"request":{"cmd":"infer","name":"x","image_hex":"00"},"x":1}"#),
            ErrorCode::BadRequest
        );
    }

    #[tokio::test]
    async fn admins_draw_on_their_reserve_when_the_budget_is_spent() {
        let limits = Limits::new();
        let all = limits.try_charge(MEMORY_BUDGET_BYTES, false).expect("the whole budget");
        assert!(limits.try_charge(1024, false).is_none(), "a non-admin gets nothing more");
        let admin = limits.try_charge(ADMIN_MEMORY_BYTES, true).expect("the admin reserve");
        assert!(limits.try_charge(1024, true).is_none(), "the reserve is bounded too");
        drop((all, admin));
        assert!(limits.try_charge(MEMORY_BUDGET_BYTES, false).is_some());
    }
}
