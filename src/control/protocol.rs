//! Control protocol, version 1: length-prefixed JSON over a Unix stream.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON.
//! Requests are bounded ([`MAX_REQUEST_BYTES`]; only `infer`, which carries
//! an image, may use up to [`MAX_UPLOAD_BYTES`]); anything malformed gets an
//! error response, never a crash. These are the only types, with the wire
//! records, that derive `Serialize` for the outside world.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request frame other than `infer`.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest image file `sparkctl infer` sends.
pub const MAX_IMAGE_BYTES: usize = 8 * 1024 * 1024;
/// Largest `infer` frame: the image hex-encoded plus room for the rest.
pub const MAX_UPLOAD_BYTES: usize = 2 * MAX_IMAGE_BYTES + 4096;
/// Largest `update apply` chunk frame: a chunk's JSON (its data base64, at
/// most [`crate::update::CHUNK_MAX_BYTES`]) as a JSON string, plus room.
pub const MAX_CHUNK_FRAME_BYTES: usize = 4 * crate::update::CHUNK_MAX_BYTES.div_ceil(3) + 16 * 1024;
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Every action the control surface can ask for: one closed enum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    Queue,
    Link,
    Engine,
    /// Wake the uplink now (the drain itself is not affected by the gate).
    Sync,
    /// Run every check the daemon can judge from inside.
    Doctor,
    /// The running configuration, secrets redacted.
    ConfigShow,
    /// Re-read the config file through the checks of `sparkd check-config`
    /// and apply what can change live.
    ConfigReload,
    UpdateStatus,
    /// `update apply`, step 1: a bundle's signed envelope (JSON text). The
    /// client reads the file with its own rights and sends the bytes.
    UpdateApplyManifest {
        envelope: String,
    },
    /// `update apply`, step 2..: one chunk, the JSON of an MQTT update chunk
    /// (at most 256 KiB of data). The last one activates the update.
    UpdateApplyChunk {
        chunk: String,
    },
    /// Run one image through the live engine. The client reads the file (with
    /// its own rights, in its own mount namespace) and sends the bytes.
    Infer {
        /// File name, for messages only.
        name: String,
        /// The encoded image (JPEG or PNG), hex.
        image_hex: String,
    },
    /// The V4L2 devices the daemon sees, with formats, sizes and rates.
    CameraList,
    /// The next camera frame as the model sees it (after resize/letterbox).
    CameraSnapshot {
        /// Only a frame of this camera (`[[camera]] id`); absent: the next
        /// frame of any camera.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        camera: Option<String>,
    },
    /// Microphone level windows numbered `from_seq` and later; `None` gives
    /// none, only where the stream is (a meter starts there).
    MicLevel {
        #[serde(default)]
        from_seq: Option<u64>,
    },
    /// Every counter and gauge as Prometheus/OpenMetrics text (`sparkctl metrics`).
    Metrics,
    /// The last event records stored (`sparkctl events`), those with a seq
    /// above `after_seq` only (`--follow` asks from the last one it saw).
    Events {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_seq: Option<u64>,
    },
}

impl Request {
    /// Requests that change the daemon's behaviour (need admin rights).
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Request::Sync
                | Request::ConfigReload
                | Request::UpdateApplyManifest { .. }
                | Request::UpdateApplyChunk { .. }
        )
    }

    /// The command's name as the CLI spells it, for logs and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Queue => "queue",
            Request::Link => "link",
            Request::Engine => "engine",
            Request::Sync => "sync",
            Request::Doctor => "doctor",
            Request::ConfigShow => "config show",
            Request::ConfigReload => "config reload",
            Request::UpdateStatus => "update status",
            Request::UpdateApplyManifest { .. } | Request::UpdateApplyChunk { .. } => "update apply",
            Request::Infer { .. } => "infer",
            Request::CameraList => "camera list",
            Request::CameraSnapshot { .. } => "camera snapshot",
            Request::MicLevel { .. } => "mic level",
            Request::Metrics => "metrics",
            Request::Events { .. } => "events",
        }
    }

    /// Largest frame this request may arrive in.
    pub fn max_frame(&self) -> usize {
        match self {
            Request::Infer { .. } => MAX_UPLOAD_BYTES,
            Request::UpdateApplyChunk { .. } => MAX_CHUNK_FRAME_BYTES,
            _ => MAX_REQUEST_BYTES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    pub v: u32,
    pub request: Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    BadRequest,
    UnsupportedVersion,
    TooLarge,
    Forbidden,
    /// Too many clients or too much heavy work at once; try again.
    Busy,
    /// The request is valid but this daemon cannot serve it now (no engine).
    Unavailable,
    Internal,
    /// A valid request the daemon decided against (an update that fails its checks).
    Refused,
    /// The device's own storage failed (reading or writing the update store).
    Storage,
    /// Stored state on the device is damaged (an unreadable update record).
    Corrupt,
    /// A code this client does not know (a newer daemon).
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
// One response per request, moved once: boxing the big variants buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Response {
    Status(StatusReport),
    Queue(QueueReport),
    Link(LinkView),
    Engine(EngineView),
    SyncStarted {
        pending: u64,
    },
    Doctor(DoctorReport),
    Config(ConfigReport),
    Update(UpdateReport),
    /// The end state of `update apply`.
    UpdateApplied(UpdateApplyReport),
    ConfigReloaded(ConfigReloadReport),
    Inference(InferReport),
    Cameras(CameraListReport),
    Snapshot(SnapshotReport),
    MicLevel(MicLevelReport),
    Metrics(MetricsReport),
    Events(EventsReport),
    Error(ErrorBody),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub v: u32,
    pub response: Response,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamQueue {
    pub pending: u64,
    pub bytes: u64,
    pub dropped: u64,
    /// Appends refused: the disk was full and nothing was left to replace.
    #[serde(default)]
    pub refused: u64,
    pub next_seq: u64,
    pub oldest_age_s: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueReport {
    pub pending: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub oldest_age_s: Option<f64>,
    pub published: u64,
    pub acked: u64,
    /// Records acknowledged per second over the last ten seconds.
    pub drain_rate_per_s: f64,
    /// `pending / drain_rate`; `None` while nothing drains.
    pub eta_s: Option<f64>,
    /// Times the outbox ran out of room (filesystem nearly full, map full).
    pub space_errors: u64,
    /// The filesystem is nearly full right now: new records replace old ones.
    pub disk_low: bool,
    /// Appends refused since start (disk full, nothing left to replace).
    #[serde(default)]
    pub refused: u64,
    pub streams: BTreeMap<String, StreamQueue>,
}

/// The engine that ran a frame, as the wire names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineName {
    #[serde(rename = "hailo")]
    Hailo,
    #[serde(rename = "onnx-cpu")]
    OnnxCpu,
}

impl EngineName {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineName::Hailo => "hailo",
            EngineName::OnnxCpu => "onnx-cpu",
        }
    }
}

impl std::fmt::Display for EngineName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `sparkctl engine` and `status.engine`. Wire type: built from the daemon's
/// internal state only in `control::views`, so a refactor inside cannot
/// change what a user's script reads (pinned by `views_json_is_pinned`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineView {
    /// `None` until the first engine is up (or when there is no camera).
    pub active: Option<EngineName>,
    pub hailo_present: bool,
    pub fallbacks: u64,
    pub last_error: Option<String>,
    pub model: String,
    /// Time spent inferring on each engine since start.
    pub hailo_seconds: f64,
    pub cpu_seconds: f64,
    /// The HEF as the accelerator last opened it; `null` before that.
    #[serde(default)]
    pub hef: Option<HefView>,
}

/// The loaded HEF in `sparkctl engine` (wire type, see [`EngineView`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HefView {
    /// `UINT8` (raw pixels, normalised on the chip) or `FLOAT32`.
    pub input_format: String,
    /// HailoRT's host order of the input (`NHWC`, `NCHW`).
    pub input_order: String,
    pub outputs: Vec<HefOutputView>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HefOutputView {
    pub name: String,
    /// HailoRT's format order without `HAILO_FORMAT_ORDER_` (`NHWC`, `HAILO_NMS_BY_CLASS`).
    pub order: String,
    /// `[number_of_classes, max_bboxes_per_class]` of an NMS output.
    pub nms_shape: Option<[u32; 2]>,
}

/// `sparkctl link` and `status.link` (wire type, see [`EngineView`]).
/// The class of a failed broker connection (`LinkView::last_error_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerErrorKind {
    Tls,
    Auth,
    Refused,
    Network,
    Protocol,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    /// True when no VPN gate is configured.
    pub vpn_up: bool,
    pub vpn_interface: Option<String>,
    /// Seconds since the WireGuard peer's latest handshake, when known.
    pub handshake_age_s: Option<u64>,
    /// Where the handshake age came from (`netlink`, `uapi`) or why it is unknown.
    pub handshake_source: Option<String>,
    /// Unix ms since the VPN gate has been closed; `None` while open.
    pub vpn_down_since_ms: Option<u64>,
    pub vpn_last_error: Option<String>,
    pub broker_connected: bool,
    pub broker: String,
    pub last_error: Option<String>,
    /// `tls`, `auth`, `refused`, `network` or `protocol`: the class of `last_error`.
    #[serde(default)]
    pub last_error_kind: Option<BrokerErrorKind>,
    /// Unix ms of the last change of `broker_connected`.
    pub since_ms: u64,
    pub reconnects: u64,
    /// Inbound messages dropped unread (oversized packets).
    #[serde(default)]
    pub inbound_discarded: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InferenceReport {
    pub total: u64,
    pub failed: u64,
    pub frames_captured: u64,
    pub frames_dropped: u64,
    pub last_latency_ms: f64,
    /// Per camera, in config order (the figures above are their sums, and
    /// the latency of the last frame of any camera).
    #[serde(default)]
    pub cameras: Vec<CameraStatus>,
}

/// One camera's frames: captured by its source, dropped by its queue
/// (drop-oldest while inference was busy), inferred.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CameraStatus {
    pub id: String,
    pub captured: u64,
    pub dropped: u64,
    pub inferred: u64,
    pub last_latency_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub device_id: String,
    pub version: String,
    pub uptime_s: u64,
    pub engine: EngineView,
    pub queue: QueueReport,
    pub link: LinkView,
    pub inference: InferenceReport,
    pub records_lost: u64,
    pub telemetry_samples: u64,
    #[serde(default)]
    pub sensors: SensorReport,
    /// Diagnose requests over MQTT (docs/diagnostics.md).
    #[serde(default)]
    pub diagnostics: DiagnosticsReport,
    /// Evidence snapshots for events (docs/snapshots.md).
    #[serde(default)]
    pub snapshots: SnapshotsReport,
}

/// Diagnose requests since start: answered, and refused by reason code
/// (`oversized`, `unsigned`, `bad_signature`, `expired`, `replayed`, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticsReport {
    pub answered: u64,
    pub refused: BTreeMap<String, u64>,
}

/// Evidence snapshots since start: stored whole in the outbox, and the
/// events that got none, by reason (retention drops of stored chunks are
/// the queue's `streams.snapshots.dropped`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotsReport {
    pub stored: u64,
    /// Encoded again at a lower quality to fit `max_bytes`.
    pub reencoded: u64,
    /// The encoder's queue was full: the event was stored without one.
    pub dropped_queue_full: u64,
    /// Over `max_bytes` even at the lowest quality.
    pub dropped_oversize: u64,
    /// Encode failures, chunks the outbox refused.
    pub failed: u64,
}

/// Camera and microphone counters since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorReport {
    pub camera_reconnects: u64,
    pub camera_errors: u64,
    pub audio_windows: u64,
    pub audio_windows_dropped: u64,
    pub audio_segments: u64,
    pub audio_errors: u64,
}

/// How one doctor check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

/// One thing a technician would check by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Short stable name (`hailo-device`, `broker`, ...).
    pub name: String,
    pub status: CheckStatus,
    /// What was found, one line.
    pub detail: String,
    /// What to do about a warning or failure, one line; `None` on pass.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self { name: name.into(), status: CheckStatus::Pass, detail: detail.into(), fix: None }
    }

    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), status: CheckStatus::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }

    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), status: CheckStatus::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DoctorReport {
    pub checks: Vec<Check>,
}

impl DoctorReport {
    /// The worst status of all checks (`Pass` when there are none).
    pub fn worst(&self) -> CheckStatus {
        self.checks.iter().map(|c| c.status).max().unwrap_or(CheckStatus::Pass)
    }
}

/// The daemon's running configuration with secret values redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigReport {
    /// The config as the daemon parsed it (every default filled in).
    pub config: serde_json::Value,
    /// Dotted keys whose values were replaced by `"<redacted>"`.
    pub redacted: Vec<String>,
    /// Where the running config came from: the file it was read from, a
    /// fleet config update, or the built-in demo configuration. The config
    /// is the one the daemon started with (`config reload` and config
    /// updates apply only `[update]` live; other changes need a restart).
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateState {
    /// Updates cannot be applied (no trusted keys, or the update store did not open).
    Unavailable,
    /// Ready; nothing under way.
    Idle,
    /// An update is being received, checked or activated.
    InProgress,
    /// A state this client does not know (a newer daemon).
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateReport {
    pub state: UpdateState,
    /// This sparkd's version.
    pub installed_version: String,
    pub message: String,
    /// Versions of each model/config/binary name accepted here.
    #[serde(default)]
    pub installed: Vec<InstalledView>,
    /// Every update this device knows, oldest first.
    #[serde(default)]
    pub updates: Vec<UpdateView>,
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Update messages or reports dropped because the agent was busy.
    #[serde(default)]
    pub dropped_messages: u64,
    /// Config keys changed (config update or reload) that take effect at the next start.
    #[serde(default)]
    pub restart_required: Vec<String>,
}

/// `update apply`: where the update ended (or stands, mid-transfer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateApplyReport {
    pub update: UpdateView,
}

/// `config reload`: dotted keys now in effect, and those that changed but
/// take effect at the next start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigReloadReport {
    pub applied: Vec<String>,
    pub restart_required: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstalledView {
    pub kind: String,
    pub name: String,
    pub active: Option<String>,
    pub previous: Option<String>,
    pub highest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateView {
    pub update_id: String,
    pub kind: String,
    pub name: String,
    pub version: String,
    /// `received`, `verified`, `staged`, `activating`, `active`,
    /// `superseded`, `rejected`, `rolled_back`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub updated_ms: u64,
}

/// One detection of `sparkctl infer`, box `[x1, y1, x2, y2]` in image pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferDetection {
    pub label: String,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferReport {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// `hailo` or `onnx-cpu`: the engine that really ran this image.
    pub engine: String,
    pub model: String,
    /// Pre-processing, engine and decoding, as in the inference records.
    pub latency_ms: f64,
    /// Best first.
    pub detections: Vec<InferDetection>,
}

/// `sparkctl camera list`: the `/dev/video*` nodes as the daemon sees them
/// (its rights, its device sandbox).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraListReport {
    /// `camera.source` and `camera.device` of the running daemon.
    pub source: String,
    pub configured_device: String,
    pub devices: Vec<CameraDevice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraDevice {
    pub path: String,
    pub driver: String,
    pub card: String,
    pub bus: String,
    /// Single-planar video capture with streaming I/O: what sparkd can use.
    pub capture: bool,
    /// The node this daemon streams from (`camera.source = "v4l"`).
    pub in_use: bool,
    pub formats: Vec<CameraFormat>,
    /// Why the node could not be queried (permissions, not a V4L2 node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraFormat {
    pub fourcc: String,
    pub description: String,
    /// sparkd converts this format.
    pub supported: bool,
    pub sizes: Vec<CameraSize>,
    /// The driver listed more sizes or rates than the report holds.
    #[serde(default)]
    pub truncated: bool,
}

/// One frame size with its rates; a stepwise/continuous driver gives one
/// entry whose `width`x`height` is the smallest size and `range` the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraSize {
    pub width: u32,
    pub height: u32,
    /// Frames per second offered at this size, as the driver lists them.
    pub fps: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<SizeRange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeRange {
    pub max_width: u32,
    pub max_height: u32,
    pub step_width: u32,
    pub step_height: u32,
}

/// `sparkctl camera snapshot`: the model's input picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// The camera the frame came from.
    #[serde(default)]
    pub camera: String,
    pub width: u32,
    pub height: u32,
    /// RGB8 rows, top to bottom, base64 (the client writes the PNG).
    pub rgb_base64: String,
    pub model: String,
    /// `letterbox` or `stretch`.
    pub resize: String,
    /// The frame's area in the picture (top-left; the rest is padding).
    pub content_width: u32,
    pub content_height: u32,
    pub frame_origin: String,
    pub frame_number: u64,
    pub frame_width: u32,
    pub frame_height: u32,
    pub captured_ms: u64,
}

/// `sparkctl metrics`: the exposition text, ready for promtool or a
/// scraper (format: `control::metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub text: String,
}

/// `sparkctl mic level`: recent level windows of the microphone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MicLevelReport {
    /// `audio.device`.
    pub device: String,
    /// The ALSA PCM open now; `None` while the microphone is unavailable.
    pub pcm: Option<String>,
    pub sample_rate: u32,
    pub window_ms: u32,
    /// The number the next window will get (ask from it next time).
    pub next_seq: u64,
    pub windows: Vec<LevelSample>,
}

/// One level window; dBFS relative to full scale (a full-scale sine is
/// -3 dBFS RMS), -120 for digital silence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LevelSample {
    pub seq: u64,
    pub ts_ms: u64,
    pub rms_dbfs: f32,
    pub peak_dbfs: f32,
}

/// `sparkctl events`: the last event records of this run, oldest first
/// (wire type, see [`EngineView`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventsReport {
    /// The oldest seq of the `events` stream still pending in the outbox
    /// (its next seq when nothing is): every record below it has left it.
    pub pending_from_seq: u64,
    pub events: Vec<EventView>,
}

/// One event record in `sparkctl events`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    /// The record's seq in the `events` stream (as the broker sees it).
    pub seq: u64,
    /// `track_start`, `track_end`, `zone_enter`, `zone_exit`, `line_cross`, `count`.
    pub kind: String,
    pub camera: String,
    pub rule: Option<String>,
    /// `null` on a count record.
    pub label: Option<String>,
    pub track_id: Option<u64>,
    pub time_ms: u64,
    /// A line crossing's named direction.
    pub direction: Option<String>,
    /// No longer pending in the outbox: the broker acknowledged it (or,
    /// rarely, retention dropped it: `queue`'s events `dropped` counts those).
    pub delivered: bool,
    /// The event's evidence snapshot (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// With a snapshot: every chunk has left the outbox (acknowledged, or
    /// dropped by the snapshot budget); `false` while any is pending or it
    /// is not stored (yet, or ever: `status` counts the drops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_delivered: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Validates a length header against `max`.
pub fn check_len(header: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let size = u32::from_be_bytes(header) as usize;
    if size > max { Err(FrameError::TooLarge { size, max }) } else { Ok(size) }
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg)?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a request body, mapping every failure to the error the client sees.
pub fn decode_request(body: &[u8]) -> Result<Request, ErrorBody> {
    // Check the version before the shape so old clients get a useful answer.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ErrorBody { code: ErrorCode::BadRequest, message: format!("malformed JSON: {e}") })?;
    match value.get("v").and_then(|v| v.as_u64()) {
        Some(v) if v == PROTOCOL_VERSION as u64 => {}
        Some(v) => {
            return Err(ErrorBody {
                code: ErrorCode::UnsupportedVersion,
                message: format!("protocol version {v} not supported; this daemon speaks {PROTOCOL_VERSION}"),
            });
        }
        None => return Err(ErrorBody { code: ErrorCode::BadRequest, message: "missing protocol version `v`".into() }),
    }
    let request = serde_json::from_value::<RequestFrame>(value)
        .map(|f| f.request)
        .map_err(|e| ErrorBody { code: ErrorCode::BadRequest, message: format!("bad request: {e}") })?;
    if body.len() > request.max_frame() {
        return Err(ErrorBody {
            code: ErrorCode::TooLarge,
            message: format!(
                "a {} request may be at most {} bytes, got {}",
                request.name(),
                request.max_frame(),
                body.len()
            ),
        });
    }
    Ok(request)
}

/// Decodes one frame held whole in `buf` (header and body) with the server's
/// rules: a short header or body, or a length over [`MAX_UPLOAD_BYTES`], is an
/// error. Returns the request and the bytes the frame used.
pub fn decode_request_frame(buf: &[u8]) -> Result<(Request, usize), ErrorBody> {
    let Some(header) = buf.get(..4) else {
        return Err(ErrorBody::new(ErrorCode::BadRequest, format!("truncated header: {} of 4 bytes", buf.len())));
    };
    let len = check_len([header[0], header[1], header[2], header[3]], MAX_UPLOAD_BYTES)
        .map_err(|e| ErrorBody::new(ErrorCode::TooLarge, e.to_string()))?;
    let Some(body) = buf.get(4..4 + len) else {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("truncated frame: {} of {len} body bytes", buf.len() - 4),
        ));
    };
    decode_request(body).map(|r| (r, 4 + len))
}

/// Blocking round trip, for the CLI.
pub fn call<S: Read + Write>(stream: &mut S, request: &Request) -> Result<Response, FrameError> {
    let written = stream.write_all(&encode(&RequestFrame { v: PROTOCOL_VERSION, request: request.clone() })?);
    // A daemon with no room answers `busy` and closes without reading, so a
    // failed write may still have an answer waiting: read it first.
    let mut header = [0u8; 4];
    if let Err(e) = stream.read_exact(&mut header) {
        return Err(written.err().unwrap_or(e).into());
    }
    let len = check_len(header, MAX_RESPONSE_BYTES)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let frame: ResponseFrame = serde_json::from_slice(&body)?;
    Ok(frame.response)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use proptest::prelude::*;

    /// At least one of every request. A new variant does not compile until
    /// [`with_payload`] (no wildcard arm) names it, and
    /// `the_request_list_names_every_variant` fails until it is listed here.
    fn all_requests() -> Vec<Request> {
        vec![
            Request::Status,
            Request::Queue,
            Request::Link,
            Request::Engine,
            Request::Sync,
            Request::Doctor,
            Request::ConfigShow,
            Request::ConfigReload,
            Request::UpdateStatus,
            Request::UpdateApplyManifest { envelope: r#"{"manifest":"e30=","signatures":[]}"#.into() },
            Request::UpdateApplyChunk { chunk: r#"{"update_id":"u","index":0,"data":""}"#.into() },
            Request::Infer { name: "a.png".into(), image_hex: "89504e47".into() },
            Request::CameraList,
            Request::CameraSnapshot { camera: None },
            Request::MicLevel { from_seq: None },
            Request::MicLevel { from_seq: Some(42) },
            Request::Metrics,
            Request::Events { after_seq: None },
            Request::Events { after_seq: Some(7) },
        ]
    }

    /// `r` with its fields (if any) replaced by `text` and `n`. The match is
    /// exhaustive on purpose: it is what makes a new variant a compile error
    /// in these tests until it is given an example in [`all_requests`].
    fn with_payload(r: Request, text: String, n: Option<u64>) -> Request {
        match r {
            Request::Status
            | Request::Queue
            | Request::Link
            | Request::Engine
            | Request::Sync
            | Request::Doctor
            | Request::ConfigShow
            | Request::ConfigReload
            | Request::UpdateStatus
            | Request::CameraList
            | Request::CameraSnapshot { .. }
            | Request::Metrics => r,
            Request::UpdateApplyManifest { .. } => Request::UpdateApplyManifest { envelope: text },
            Request::UpdateApplyChunk { .. } => Request::UpdateApplyChunk { chunk: text },
            Request::Infer { .. } => Request::Infer { name: text.clone(), image_hex: text },
            Request::MicLevel { .. } => Request::MicLevel { from_seq: n },
            Request::Events { .. } => Request::Events { after_seq: n },
        }
    }

    /// Any request, with arbitrary field contents (kept under the small bound).
    fn any_request() -> impl Strategy<Value = Request> {
        (0..all_requests().len(), ".{0,64}", any::<Option<u64>>())
            .prop_map(|(i, text, n)| with_payload(all_requests()[i].clone(), text, n))
    }

    /// The `cmd` tag `r` goes out with.
    fn tag(r: &Request) -> String {
        let v = serde_json::to_value(r).unwrap();
        v["cmd"].as_str().unwrap_or_else(|| panic!("no cmd tag in {v}")).to_string()
    }

    /// A serde error that keeps the variant list serde names when a tag is
    /// unknown: the enum's own list of variants, as derived.
    #[derive(Debug)]
    struct Variants(Option<&'static [&'static str]>);

    impl std::fmt::Display for Variants {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    impl std::error::Error for Variants {}

    impl serde::de::Error for Variants {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Variants(None)
        }

        fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
            Variants(Some(expected))
        }
    }

    /// Every `cmd` tag `Request` declares, read from its `Deserialize`.
    fn declared_tags() -> &'static [&'static str] {
        let probe = serde::de::value::MapDeserializer::<_, Variants>::new(std::iter::once(("cmd", "\u{0}no-such")));
        match Request::deserialize(probe) {
            Err(Variants(Some(tags))) => tags,
            other => panic!("serde did not name Request's variants: {other:?}"),
        }
    }

    #[test]
    fn the_request_list_names_every_variant() {
        let declared: BTreeSet<&str> = declared_tags().iter().copied().collect();
        assert!(declared.contains("status") && declared.contains("update-apply-chunk"), "{declared:?}");
        let listed: BTreeSet<String> = all_requests().iter().map(tag).collect();
        let listed: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
        assert_eq!(listed, declared, "all_requests() must hold an example of every Request variant");
    }

    #[test]
    fn requests_round_trip_through_json() {
        for r in all_requests() {
            let bytes = encode(&RequestFrame { v: 1, request: r.clone() }).unwrap();
            assert_eq!(decode_request(&bytes[4..]).unwrap(), r);
        }
    }

    #[test]
    fn sync_config_reload_and_update_apply_are_the_only_mutating_requests() {
        let mutating: BTreeSet<String> = all_requests().iter().filter(|r| r.is_mutating()).map(tag).collect();
        let want: BTreeSet<String> =
            ["sync", "config-reload", "update-apply-manifest", "update-apply-chunk"].map(String::from).into();
        assert_eq!(mutating, want);
        let names: BTreeSet<&str> = all_requests().iter().filter(|r| r.is_mutating()).map(Request::name).collect();
        assert_eq!(names, BTreeSet::from(["sync", "config reload", "update apply"]));
    }

    #[test]
    fn only_infer_and_update_chunks_may_exceed_the_small_frame_bound() {
        let pad = " ".repeat(MAX_REQUEST_BYTES);
        for r in all_requests() {
            let body = format!(r#"{{"v":1,"request":{}{pad}}}"#, serde_json::to_string(&r).unwrap());
            let got = decode_request(body.as_bytes());
            match r {
                Request::Infer { .. } | Request::UpdateApplyChunk { .. } => assert_eq!(got, Ok(r)),
                _ => assert_eq!(got.map_err(|e| e.code), Err(ErrorCode::TooLarge), "{}", r.name()),
            }
        }
        let hex = "00".repeat(MAX_REQUEST_BYTES);
        let big_infer = format!(r#"{{"v":1,"request":{{"cmd":"infer","name":"x","image_hex":"{hex}"}}}}"#);
        assert!(matches!(decode_request(big_infer.as_bytes()), Ok(Request::Infer { .. })));
    }

    #[test]
    fn mic_level_without_a_sequence_number_parses_as_none() {
        let r = decode_request(br#"{"v":1,"request":{"cmd":"mic-level"}}"#).unwrap();
        assert_eq!(r, Request::MicLevel { from_seq: None });
        let r = decode_request(br#"{"v":1,"request":{"cmd":"camera-snapshot"}}"#).unwrap();
        assert_eq!(r, Request::CameraSnapshot { camera: None });
    }

    /// `events` is read-only, its `after_seq` optional; the answer's JSON
    /// is pinned key by key (scripts read `sparkctl events --json`).
    #[test]
    fn events_request_and_report_json_are_pinned() {
        let r = decode_request(br#"{"v":1,"request":{"cmd":"events"}}"#).unwrap();
        assert_eq!(r, Request::Events { after_seq: None });
        let r = decode_request(br#"{"v":1,"request":{"cmd":"events","after_seq":41}}"#).unwrap();
        assert_eq!(r, Request::Events { after_seq: Some(41) });
        assert!(!r.is_mutating());
        assert_eq!(r.name(), "events");
        let e = decode_request(br#"{"v":1,"request":{"cmd":"events","after_seq":-1}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
        let e = decode_request(br#"{"v":1,"request":{"cmd":"events","limit":3}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);

        let report = EventsReport {
            pending_from_seq: 43,
            events: vec![
                EventView {
                    seq: 42,
                    kind: "line_cross".into(),
                    camera: "cam0".into(),
                    rule: Some("door".into()),
                    label: Some("person".into()),
                    track_id: Some(3),
                    time_ms: 1_700_000_000_000,
                    direction: Some("east".into()),
                    delivered: true,
                    snapshot_id: Some("0123456789abcdef".into()),
                    snapshot_delivered: Some(false),
                },
                EventView {
                    seq: 43,
                    kind: "count".into(),
                    camera: "cam0".into(),
                    rule: Some("door".into()),
                    label: None,
                    track_id: None,
                    time_ms: 1_700_000_060_000,
                    direction: None,
                    delivered: false,
                    snapshot_id: None,
                    snapshot_delivered: None,
                },
            ],
        };
        let json = serde_json::json!({"kind": "events", "pending_from_seq": 43, "events": [
            {"seq": 42, "kind": "line_cross", "camera": "cam0", "rule": "door", "label": "person",
             "track_id": 3, "time_ms": 1_700_000_000_000u64, "direction": "east", "delivered": true,
             "snapshot_id": "0123456789abcdef", "snapshot_delivered": false},
            {"seq": 43, "kind": "count", "camera": "cam0", "rule": "door", "label": null,
             "track_id": null, "time_ms": 1_700_000_060_000u64, "direction": null, "delivered": false}]});
        let response = Response::Events(report);
        assert_eq!(serde_json::to_value(&response).unwrap(), json);
        assert_eq!(serde_json::from_value::<Response>(json).unwrap(), response);
    }

    #[test]
    fn unknown_error_codes_from_a_newer_daemon_still_parse() {
        let r: Response = serde_json::from_str(r#"{"kind":"error","code":"melted","message":"m"}"#).unwrap();
        assert_eq!(r, Response::Error(ErrorBody::new(ErrorCode::Other, "m")));
    }

    #[test]
    fn whole_frames_decode_and_short_ones_are_errors() {
        let bytes = encode(&RequestFrame { v: 1, request: Request::Doctor }).unwrap();
        assert_eq!(decode_request_frame(&bytes).unwrap(), (Request::Doctor, bytes.len()));
        for cut in 0..bytes.len() {
            let e = decode_request_frame(&bytes[..cut]).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "cut at {cut}: {}", e.message);
        }
        let mut huge = ((MAX_UPLOAD_BYTES + 1) as u32).to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert_eq!(decode_request_frame(&huge).unwrap_err().code, ErrorCode::TooLarge);
    }

    #[test]
    fn unknown_command_and_version_are_named() {
        let e = decode_request(br#"{"v":1,"request":{"cmd":"reboot"}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("reboot"), "{}", e.message);
        let e = decode_request(br#"{"v":7,"request":{"cmd":"status"}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        assert!(matches!(check_len((1u32 << 31).to_be_bytes(), MAX_REQUEST_BYTES), Err(FrameError::TooLarge { .. })));
        assert_eq!(check_len(10u32.to_be_bytes(), MAX_REQUEST_BYTES).unwrap(), 10);
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&bytes);
        }

        #[test]
        fn frame_decoder_answers_every_byte_string_with_a_request_or_an_error(
            bytes in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            // Never a panic; a success consumed a real frame.
            if let Ok((_, used)) = decode_request_frame(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn every_request_round_trips_with_any_field_contents(req in any_request()) {
            let bytes = encode(&RequestFrame { v: 1, request: req.clone() }).unwrap();
            prop_assert_eq!(decode_request_frame(&bytes), Ok((req, bytes.len())));
        }

        #[test]
        fn truncated_frames_are_errors(req in any_request(), cut_frac in 0.0f64..1.0) {
            let bytes = encode(&RequestFrame { v: 1, request: req }).unwrap();
            let cut = ((bytes.len() as f64) * cut_frac) as usize;
            prop_assert!(cut < bytes.len());
            prop_assert!(decode_request_frame(&bytes[..cut]).is_err());
        }

        #[test]
        fn corrupted_requests_are_answered_without_a_panic(
            req in any_request(),
            at_frac in 0.0f64..1.0,
            byte in any::<u8>()
        ) {
            let mut bytes = encode(&RequestFrame { v: 1, request: req }).unwrap();
            let at = ((bytes.len() as f64) * at_frac) as usize;
            bytes[at] = byte;
            if let Ok((_, used)) = decode_request_frame(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn oversized_lengths_are_refused(len in (MAX_UPLOAD_BYTES as u32 + 1)..=u32::MAX, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&tail);
            prop_assert_eq!(decode_request_frame(&bytes).unwrap_err().code, ErrorCode::TooLarge);
        }

        #[test]
        fn decoder_never_panics_on_json_like_input(s in r#"\{"v":[0-9]{1,3},"request":\{"cmd":"[a-z-]{0,12}"[^}]{0,20}\}\}"#) {
            let _ = decode_request(s.as_bytes());
        }

        #[test]
        fn decoder_never_panics_on_real_commands_with_junk_fields(
            cmd in proptest::sample::select(declared_tags()),
            junk in r#"[^}]{0,40}"#
        ) {
            let _ = decode_request(format!(r#"{{"v":1,"request":{{"cmd":"{cmd}"{junk}}}}}"#).as_bytes());
        }
    }

    /// The JSON users' scripts read (`status --json`, `engine --json`,
    /// `link --json`, `queue --json`) is pinned key by key and value by
    /// value: a change here is a change of the wire format, and must be
    /// deliberate (and versioned).
    #[test]
    fn views_json_is_pinned() {
        let engine = EngineView {
            active: Some(EngineName::OnnxCpu),
            hailo_present: false,
            fallbacks: 2,
            last_error: Some("e".into()),
            model: "nanodet 1.0.0".into(),
            hailo_seconds: 0.5,
            cpu_seconds: 1.5,
            hef: None,
        };
        let link = LinkView {
            vpn_up: true,
            vpn_interface: Some("wg0".into()),
            handshake_age_s: Some(3),
            handshake_source: Some("uapi".into()),
            vpn_down_since_ms: None,
            vpn_last_error: None,
            broker_connected: true,
            broker: "b:1883".into(),
            last_error: Some("I/O: refused".into()),
            last_error_kind: Some(BrokerErrorKind::Network),
            since_ms: 7,
            reconnects: 1,
            inbound_discarded: 0,
        };
        let stream = StreamQueue { pending: 1, bytes: 2, dropped: 3, refused: 0, next_seq: 4, oldest_age_s: Some(1.5) };
        let queue = QueueReport {
            pending: 1,
            bytes: 2,
            dropped: 3,
            oldest_age_s: None,
            published: 5,
            acked: 4,
            drain_rate_per_s: 0.0,
            eta_s: None,
            space_errors: 0,
            disk_low: false,
            refused: 0,
            streams: [("events".to_string(), stream)].into(),
        };
        let status = StatusReport {
            device_id: "d".into(),
            version: "0.1.0".into(),
            uptime_s: 9,
            engine: engine.clone(),
            queue: queue.clone(),
            link: link.clone(),
            inference: InferenceReport {
                total: 10,
                failed: 0,
                frames_captured: 11,
                frames_dropped: 1,
                last_latency_ms: 40.5,
                cameras: vec![CameraStatus {
                    id: "cam0".into(),
                    captured: 11,
                    dropped: 1,
                    inferred: 10,
                    last_latency_ms: 40.5,
                }],
            },
            records_lost: 0,
            telemetry_samples: 3,
            sensors: SensorReport::default(),
            diagnostics: DiagnosticsReport { answered: 2, refused: [("expired".to_string(), 1)].into() },
            snapshots: SnapshotsReport {
                stored: 4,
                reencoded: 1,
                dropped_queue_full: 2,
                dropped_oversize: 0,
                failed: 0,
            },
        };
        let engine_json = serde_json::json!({"active": "onnx-cpu", "hailo_present": false, "fallbacks": 2,
            "last_error": "e", "model": "nanodet 1.0.0", "hailo_seconds": 0.5, "cpu_seconds": 1.5, "hef": null});
        // A Zoo detection HEF: UINT8 input, one NMS output.
        let hef = HefView {
            input_format: "UINT8".into(),
            input_order: "NHWC".into(),
            outputs: vec![HefOutputView {
                name: "yolov8s/yolov8_nms_postprocess".into(),
                order: "HAILO_NMS_BY_CLASS".into(),
                nms_shape: Some([80, 100]),
            }],
        };
        let hef_json = serde_json::json!({"input_format": "UINT8", "input_order": "NHWC", "outputs": [
            {"name": "yolov8s/yolov8_nms_postprocess", "order": "HAILO_NMS_BY_CLASS", "nms_shape": [80, 100]}]});
        assert_eq!(serde_json::to_value(&hef).unwrap(), hef_json);
        assert_eq!(serde_json::from_value::<HefView>(hef_json).unwrap(), hef);
        // A daemon from before the field: `hef` reads as absent.
        let mut old = engine_json.clone();
        old.as_object_mut().unwrap().remove("hef");
        assert_eq!(serde_json::from_value::<EngineView>(old).unwrap(), engine);
        let link_json = serde_json::json!({"vpn_up": true, "vpn_interface": "wg0", "handshake_age_s": 3,
            "handshake_source": "uapi", "vpn_down_since_ms": null, "vpn_last_error": null, "broker_connected": true,
            "broker": "b:1883", "last_error": "I/O: refused", "last_error_kind": "network", "since_ms": 7, "reconnects": 1, "inbound_discarded": 0});
        let queue_json = serde_json::json!({"pending": 1, "bytes": 2, "dropped": 3, "oldest_age_s": null,
            "published": 5, "acked": 4, "drain_rate_per_s": 0.0, "eta_s": null, "space_errors": 0,
            "disk_low": false, "refused": 0, "streams": {"events": {"pending": 1, "bytes": 2, "dropped": 3,
            "refused": 0, "next_seq": 4, "oldest_age_s": 1.5}}});
        let status_json = serde_json::json!({"device_id": "d", "version": "0.1.0", "uptime_s": 9,
            "engine": engine_json, "queue": queue_json, "link": link_json,
            "inference": {"total": 10, "failed": 0, "frames_captured": 11, "frames_dropped": 1,
                "cameras": [{"id": "cam0", "captured": 11, "dropped": 1, "inferred": 10, "last_latency_ms": 40.5}],
                "last_latency_ms": 40.5},
            "records_lost": 0, "telemetry_samples": 3,
            "sensors": {"camera_reconnects": 0, "camera_errors": 0, "audio_windows": 0,
                "audio_windows_dropped": 0, "audio_segments": 0, "audio_errors": 0},
            "diagnostics": {"answered": 2, "refused": {"expired": 1}},
            "snapshots": {"stored": 4, "reencoded": 1, "dropped_queue_full": 2, "dropped_oversize": 0, "failed": 0}});
        assert_eq!(serde_json::to_value(&engine).unwrap(), engine_json);
        assert_eq!(serde_json::to_value(&link).unwrap(), link_json);
        assert_eq!(serde_json::to_value(&queue).unwrap(), queue_json);
        assert_eq!(serde_json::to_value(&status).unwrap(), status_json);
        // And they read back (sparkctl parses what the daemon sends).
        assert_eq!(serde_json::from_value::<StatusReport>(status_json).unwrap(), status);
    }
}
