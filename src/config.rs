//! Daemon configuration: the typed TOML schema, its defaults, and validation.
//!
//! Owns parsing and checking only; it opens no device, socket or store.
//! Every key has a default, unknown keys are errors, and every error names
//! the file, the line and the key (`sparkd check-config` prints them).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the packaged daemon reads its config when `--config` is not given
/// under systemd. Without `--config`, `sparkd run` uses [`Config::demo`].
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sparkd/sparkd.toml";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Device identity used in topics and records. Empty: derived from
    /// `/etc/machine-id` (see [`crate::sys::identity`]).
    pub device_id: String,
    /// Group used for fleet update topics.
    pub group: String,
    /// Directory for the outbox, staged updates and the model store.
    /// Empty: `$STATE_DIRECTORY` under systemd, else `/var/lib/sparkd`.
    pub state_dir: PathBuf,
    /// Control socket. Empty: `$RUNTIME_DIRECTORY/sparkd.sock` under
    /// systemd, else `<state_dir>/sparkd.sock`.
    pub socket_path: PathBuf,
    /// `[camera]` (one camera, id `cam0`) or `[[camera]]` tables (several,
    /// each with its own `id`); read through [`Config::cameras`].
    pub camera: CameraSection,
    pub model: ModelConfig,
    pub telemetry: TelemetryConfig,
    pub store: StoreConfig,
    pub mqtt: MqttConfig,
    pub link: LinkConfig,
    pub log: LogConfig,
    pub load: LoadConfig,
    pub audio: AudioConfig,
    pub hailo: HailoConfig,
    pub update: UpdateConfig,
    pub inference: InferenceConfig,
    pub tracking: TrackingConfig,
    pub events: EventsConfig,
    /// `[[zone]]` tables: the events stage's zones.
    #[serde(rename = "zone")]
    pub zones: Vec<ZoneConfig>,
    /// `[[line]]` tables: the events stage's counting lines.
    #[serde(rename = "line")]
    pub lines: Vec<LineConfig>,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CameraSource {
    /// Loop over the image files of `replay_dir`.
    Replay,
    /// A V4L2 capture device (USB/UVC camera, or a CSI camera through
    /// libcamera's V4L2 compatibility layer).
    V4l,
    /// Loop over the frames of a recorded MJPEG stream (`mjpeg_file`).
    #[serde(alias = "mjpeg_file")]
    MjpegFile,
    /// No camera: the daemon only samples telemetry.
    None,
}

/// The `camera` key: one `[camera]` table or an array of `[[camera]]` tables.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum CameraSection {
    One(CameraConfig),
    Many(Vec<CameraConfig>),
}

impl Default for CameraSection {
    fn default() -> Self {
        CameraSection::One(CameraConfig::default())
    }
}

// By hand rather than `untagged`: a mistake inside a camera table keeps its
// own message and line instead of "did not match any variant".
impl<'de> Deserialize<'de> for CameraSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Section;
        impl<'de> serde::de::Visitor<'de> for Section {
            type Value = CameraSection;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a [camera] table or [[camera]] tables")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<CameraSection, A::Error> {
                CameraConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(CameraSection::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<CameraSection, A::Error> {
                Vec::<CameraConfig>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(CameraSection::Many)
            }
        }
        d.deserialize_any(Section)
    }
}

/// Most cameras one device serves.
pub const MAX_CAMERAS: usize = 16;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// Names the camera in records, status and `camera snapshot --camera`;
    /// `cam0` for a single `[camera]` table.
    pub id: String,
    pub source: CameraSource,
    /// Folder of JPEG/PNG files for the replay source.
    pub replay_dir: PathBuf,
    /// Frames per second offered to inference.
    pub fps: f64,
    /// Frames waiting for inference; when full the oldest is dropped.
    pub queue_frames: usize,
    /// V4L2 device for `source = "v4l"`.
    pub device: PathBuf,
    /// Capture size asked of the device (it may pick the nearest).
    pub width: u32,
    pub height: u32,
    /// `auto` (MJPEG, YUYV, NV12, YU12: the first offered), or one of
    /// `mjpeg`, `yuyv`, `nv12`, `yu12`.
    pub pixel_format: String,
    /// Recorded MJPEG stream (concatenated JPEGs) for `source = "mjpeg-file"`.
    pub mjpeg_file: PathBuf,
}

/// Most ONNX Runtime sessions the CPU engine runs side by side.
pub const MAX_CPU_SESSIONS: usize = 8;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model manifest (TOML) naming the ONNX/HEF files, input and decoder.
    pub manifest: PathBuf,
    /// Path to `libonnxruntime.so`. Empty: `$ORT_DYLIB_PATH`, then the
    /// usual install locations (see [`crate::inference::engine::onnx::library_candidates`]).
    pub onnxruntime_library: PathBuf,
    /// Threads ONNX Runtime may use for one inference.
    pub intra_threads: usize,
    /// ONNX Runtime sessions running frames side by side on the CPU, each
    /// with `intra_threads` threads (and its own copy of the model).
    pub cpu_sessions: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub interval_secs: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Upper bound of the outbox on disk.
    pub max_megabytes: u64,
    /// Most appends and acks folded into one durable transaction.
    pub commit_batch_max: usize,
    /// Retention drops streams in this order when the bound is reached,
    /// lowest priority first. Must name every stream once.
    pub drop_order: Vec<String>,
    pub ttl_secs: StreamTtl,
    /// Budget of the `snapshots` stream (evidence JPEGs) inside
    /// `max_megabytes`; pictures are always the first to be dropped.
    pub snapshots_max_megabytes: u64,
}

/// Time-to-live of stored records per stream; 0 keeps them until sent (or
/// until the byte bound drops them).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StreamTtl {
    pub telemetry: u64,
    pub inference: u64,
    pub events: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub topic_prefix: String,
    /// Empty: `sparkd-<device_id>`.
    pub client_id: String,
    pub keep_alive_secs: u64,
    /// Publishes awaiting PUBACK at once.
    pub inflight_window: u16,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Records per MQTT message: 1 publishes each record alone; more sends
    /// `{"records": [...]}` batches of up to this many records of one stream.
    pub batch_max_records: usize,
    /// Byte cap of one batched message.
    pub batch_max_bytes: usize,
    /// How often the retained status message is refreshed.
    pub status_interval_secs: u64,
    pub username: String,
    /// File holding the password (never inline). Relative names are looked
    /// up in `$CREDENTIALS_DIRECTORY` first.
    pub password_file: PathBuf,
    /// PEM CA bundle that signs the broker's certificate (`mqtts://`).
    /// Empty: the broker's certificate cannot be verified, so TLS refuses.
    pub ca_file: PathBuf,
    /// PEM client certificate chain for mutual TLS (empty: none).
    pub client_cert_file: PathBuf,
    /// PEM private key of the client certificate; a credential (relative
    /// names looked up in `$CREDENTIALS_DIRECTORY` first).
    pub client_key_file: PathBuf,
    /// Name checked against the broker's certificate; empty: the URL's host.
    pub tls_server_name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    /// WireGuard interface gating the uplink. Empty: no VPN gate.
    pub vpn_interface: String,
    /// The link counts as down when the latest handshake is older than this.
    pub handshake_max_age_secs: u64,
    /// How often the link monitor looks.
    pub check_interval_ms: u64,
}

/// The Hailo-8 accelerator. Used when the library loads, a device is
/// present and the model manifest names a HEF; otherwise the CPU runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HailoConfig {
    /// `false` never touches HailoRT (CPU only).
    pub enabled: bool,
    /// `libhailort.so` to load. Empty: `$HAILORT_LIBRARY`, then the usual
    /// names and library directories (see docs/hailo.md).
    pub library: PathBuf,
    /// Share the device through HailoRT's multi-process service.
    pub multi_process_service: bool,
    /// Longest wait for one inference on the device.
    pub timeout_ms: u32,
    /// Frames kept in flight on the device (0: from the HEF's batch size and
    /// HailoRT's queue size, at least 8; docs/hailo.md).
    pub frames_in_flight: usize,
    /// Threads letterboxing frames for the device (0: half the cores, 1 to 4).
    pub prepare_workers: usize,
    /// Re-probe backoff after the accelerator failed: first and longest wait.
    pub reprobe_min_secs: f64,
    pub reprobe_max_secs: f64,
}

impl Default for HailoConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            library: PathBuf::new(),
            multi_process_service: false,
            timeout_ms: 2000,
            frames_in_flight: 0,
            prepare_workers: 0,
            reprobe_min_secs: 1.0,
            reprobe_max_secs: 60.0,
        }
    }
}

/// Microphone capture and the voice-activity model.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    pub enabled: bool,
    /// ALSA device name as cpal lists it; `default` is ALSA's default PCM.
    pub device: String,
    /// The audio model (Silero VAD, ONNX).
    pub model: PathBuf,
    /// SHA-256 the model file must have; empty: not checked.
    pub model_sha256: String,
    /// Speech probability above which a window counts as speech.
    pub threshold: f32,
    /// Speech shorter than this is not reported.
    pub min_speech_ms: u64,
    /// Silence that ends a speech segment.
    pub min_silence_ms: u64,
    /// Seconds of audio the capture ring buffer holds (bounded; oldest
    /// samples dropped and counted when the model falls behind).
    pub buffer_secs: f64,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            device: "default".into(),
            model: "/usr/share/sparkd/models/silero_vad.onnx".into(),
            model_sha256: String::new(),
            threshold: 0.5,
            min_speech_ms: 250,
            min_silence_ms: 300,
            buffer_secs: 2.0,
        }
    }
}

/// Synthetic load generator, for soak tests and benchmarks on a device.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// Synthetic `events` records per second; 0 turns the generator off.
    pub events_per_sec: f64,
    /// Approximate size of each synthetic record's body.
    pub event_bytes: usize,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self { events_per_sec: 0.0, event_bytes: 200 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `spark_edge=debug`. `RUST_LOG` wins.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            device_id: String::new(),
            group: "default".into(),
            state_dir: PathBuf::new(),
            socket_path: PathBuf::new(),
            camera: CameraSection::default(),
            model: ModelConfig::default(),
            telemetry: TelemetryConfig::default(),
            store: StoreConfig::default(),
            mqtt: MqttConfig::default(),
            link: LinkConfig::default(),
            log: LogConfig::default(),
            load: LoadConfig::default(),
            audio: AudioConfig::default(),
            hailo: HailoConfig::default(),
            update: UpdateConfig::default(),
            inference: InferenceConfig::default(),
            tracking: TrackingConfig::default(),
            events: EventsConfig::default(),
            zones: Vec::new(),
            lines: Vec::new(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            id: "cam0".into(),
            source: CameraSource::Replay,
            replay_dir: "/usr/share/sparkd/demo".into(),
            fps: 5.0,
            queue_frames: 2,
            device: "/dev/video0".into(),
            width: 640,
            height: 480,
            pixel_format: "auto".into(),
            mjpeg_file: PathBuf::new(),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            manifest: "/usr/share/sparkd/models/centerface.toml".into(),
            onnxruntime_library: PathBuf::new(),
            intra_threads: 2,
            cpu_sessions: 1,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { interval_secs: 10.0 }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_megabytes: 1024,
            commit_batch_max: 1024,
            // Per-frame records go first, events last: an event is what an
            // operator asked for, and with `inference.publish` other than
            // every-frame it is all there is (issue 18).
            drop_order: vec!["inference".into(), "telemetry".into(), "events".into()],
            ttl_secs: StreamTtl::default(),
            snapshots_max_megabytes: 256,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            topic_prefix: "spark".into(),
            client_id: String::new(),
            keep_alive_secs: 30,
            inflight_window: 100,
            reconnect_min_ms: 250,
            reconnect_max_ms: 30_000,
            batch_max_records: 1,
            batch_max_bytes: 256 * 1024,
            status_interval_secs: 30,
            username: String::new(),
            password_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            client_cert_file: PathBuf::new(),
            client_key_file: PathBuf::new(),
            tls_server_name: String::new(),
        }
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self { vpn_interface: String::new(), handshake_max_age_secs: 180, check_interval_ms: 1000 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not tied to a line (a missing file).
    pub line: usize,
    /// Dotted key path (`mqtt.url`), empty when unknown.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config:\n{}", .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

impl Config {
    /// The built-in demo configuration: replay camera over `models/demo`, the
    /// demo model, state under `./var`, local broker, no VPN gate.
    pub fn demo() -> Self {
        let mut c = Self::default();
        c.state_dir = "var".into();
        c.socket_path = "var/sparkd.sock".into();
        let cam = &mut c.cameras_mut()[0];
        cam.replay_dir = "models/demo".into();
        cam.fps = 2.0;
        c.model.manifest = "models/nanodet.toml".into();
        c.telemetry.interval_secs = 5.0;
        c
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::sys::capped_read::read_capped_to_string(path, MAX_CONFIG_BYTES)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            let key = key_at(text, e.span().map(|s| s.start));
            ConfigError::Invalid(vec![ConfigIssue {
                file: path.to_path_buf(),
                line,
                key,
                message: e.message().to_string(),
            }])
        })?;
        let issues: Vec<ConfigIssue> = config
            .semantic_issues()
            .into_iter()
            .map(|(key, message)| ConfigIssue {
                file: path.to_path_buf(),
                line: find_key_line(text, &key),
                key,
                message,
            })
            .collect();
        if issues.is_empty() { Ok(config) } else { Err(ConfigError::Invalid(issues)) }
    }

    /// Checks values that parse but cannot work; `(key, message)` pairs.
    ///
    /// **Invariant:** every value accepted here can be used by the daemon
    /// without a panic or a wrapped product: seconds are finite and bounded
    /// (so `Duration` and `Instant` arithmetic cannot overflow), and every
    /// integer that is multiplied (megabytes to bytes, seconds to
    /// milliseconds) has an upper bound that keeps the product in range.
    fn semantic_issues(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |k: &str, m: String| out.push((k.to_string(), m));
        let mut range = |k: &str, v: u64, lo: u64, hi: u64| {
            if !(lo..=hi).contains(&v) {
                out_range(&mut bad, k, &v, &lo, &hi);
            }
        };
        range("model.intra_threads", self.model.intra_threads as u64, 1, 64);
        range("model.cpu_sessions", self.model.cpu_sessions as u64, 1, MAX_CPU_SESSIONS as u64);
        range("store.max_megabytes", self.store.max_megabytes, 4, MAX_STORE_MEGABYTES);
        range("store.commit_batch_max", self.store.commit_batch_max as u64, 1, 100_000);
        range("store.snapshots_max_megabytes", self.store.snapshots_max_megabytes, 1, MAX_STORE_MEGABYTES);
        let snap = &self.events.snapshots;
        range("events.snapshots.jpeg_quality", snap.jpeg_quality as u64, 1, 100);
        range("events.snapshots.max_bytes", snap.max_bytes as u64, 1024, 16 << 20);
        range("events.snapshots.chunk_bytes", snap.chunk_bytes as u64, 4096, MAX_SNAPSHOT_CHUNK_BYTES as u64);
        range("events.snapshots.queue", snap.queue as u64, 1, 64);
        for (stream, ttl) in [
            ("telemetry", self.store.ttl_secs.telemetry),
            ("inference", self.store.ttl_secs.inference),
            ("events", self.store.ttl_secs.events),
        ] {
            range(&format!("store.ttl_secs.{stream}"), ttl, 0, MAX_SECS);
        }
        // MQTT carries the keep-alive in 16 bits.
        range("mqtt.keep_alive_secs", self.mqtt.keep_alive_secs, 5, u16::MAX as u64);
        range("mqtt.inflight_window", self.mqtt.inflight_window as u64, 1, u16::MAX as u64);
        range("mqtt.reconnect_max_ms", self.mqtt.reconnect_max_ms, 1, MAX_RECONNECT_MS);
        range("mqtt.status_interval_secs", self.mqtt.status_interval_secs, 1, 86_400);
        range("mqtt.batch_max_records", self.mqtt.batch_max_records as u64, 1, 10_000);
        range("mqtt.batch_max_bytes", self.mqtt.batch_max_bytes as u64, 1024, 1 << 20);
        range("link.handshake_max_age_secs", self.link.handshake_max_age_secs, 0, MAX_SECS);
        range("link.check_interval_ms", self.link.check_interval_ms, 100, 3_600_000);
        range("hailo.timeout_ms", self.hailo.timeout_ms as u64, 1, 600_000);
        range("hailo.frames_in_flight", self.hailo.frames_in_flight as u64, 0, 16);
        range("hailo.prepare_workers", self.hailo.prepare_workers as u64, 0, 8);
        range("audio.min_speech_ms", self.audio.min_speech_ms, 0, 60_000);
        range("audio.min_silence_ms", self.audio.min_silence_ms, 0, 60_000);
        range("update.binary_health_secs", self.update.binary_health_secs, 1, 3600);
        range("update.max_artifact_megabytes", self.update.max_artifact_megabytes, 1, 16_384);
        range("update.shadow_every_n_frames", self.update.shadow_every_n_frames, 1, 10_000);
        range("update.shadow_report_secs", self.update.shadow_report_secs, 1, 86_400);
        range("metrics.textfile_interval_secs", self.metrics.textfile_interval_secs, 1, 3600);
        range("update.reserve_megabytes", self.update.reserve_megabytes, 0, MAX_STORE_MEGABYTES);
        range("load.event_bytes", self.load.event_bytes as u64, 0, 64 * 1024);
        let mut real = |k: &str, v: f64, lo: f64, hi: f64| {
            // `contains` is false for NaN, so NaN and infinities are refused.
            if !(lo..=hi).contains(&v) {
                out_range(&mut bad, k, &v, &lo, &hi);
            }
        };
        real("telemetry.interval_secs", self.telemetry.interval_secs, 0.1, 86_400.0);
        real("hailo.reprobe_min_secs", self.hailo.reprobe_min_secs, 0.01, 86_400.0);
        real("hailo.reprobe_max_secs", self.hailo.reprobe_max_secs, 0.01, 86_400.0);
        real("load.events_per_sec", self.load.events_per_sec, 0.0, 1_000_000.0);
        real("audio.buffer_secs", self.audio.buffer_secs, 0.01, 60.0);
        real("audio.threshold", self.audio.threshold as f64, 0.0, 1.0);
        real("events.snapshots.crop_margin", self.events.snapshots.crop_margin as f64, 0.0, 4.0);
        for (i, k) in self.events.snapshots.kinds.iter().enumerate() {
            if !SNAPSHOT_KINDS.contains(&k.as_str()) {
                bad("events.snapshots.kinds", format!("entry {i}, {k:?}, is not one of {SNAPSHOT_KINDS:?}"));
            }
        }
        if !self.device_id.is_empty() && !is_topic_segment(&self.device_id) {
            bad("device_id", "must be 1-64 characters of [A-Za-z0-9_.-]".into());
        }
        if !is_topic_segment(&self.group) {
            bad("group", "must be 1-64 characters of [A-Za-z0-9_.-]".into());
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen_addr().is_none() {
            bad(
                "metrics.listen",
                format!(
                    "{:?} is not a loopback address and port (e.g. \"127.0.0.1:9464\" or \"[::1]:9464\"); \
                     metrics are never served on a network interface",
                    self.metrics.listen
                ),
            );
        }
        if !self.metrics.textfile_dir.as_os_str().is_empty() && !self.metrics.textfile_dir.is_absolute() {
            bad("metrics.textfile_dir", "must be an absolute path (node_exporter's textfile directory)".into());
        }
        if let Err(e) = BrokerUrl::parse(&self.mqtt.url) {
            bad("mqtt.url", e.to_string());
        }
        if !self.mqtt.topic_prefix.split('/').all(is_topic_segment) {
            bad("mqtt.topic_prefix", "must be segments of [A-Za-z0-9_.-] joined by '/'".into());
        }
        if self.mqtt.reconnect_min_ms == 0 || self.mqtt.reconnect_min_ms > self.mqtt.reconnect_max_ms {
            bad("mqtt.reconnect_min_ms", "must be > 0 and <= mqtt.reconnect_max_ms".into());
        }
        let mut order = self.store.drop_order.clone();
        order.sort();
        if order != ["events", "inference", "telemetry"] {
            bad("store.drop_order", "must name telemetry, inference and events once each".into());
        }
        if !self.link.vpn_interface.is_empty()
            && (self.link.vpn_interface.len() > 15 || !is_topic_segment(&self.link.vpn_interface))
        {
            bad("link.vpn_interface", "not a valid interface name".into());
        }
        self.camera_issues(&mut bad);
        if self.hailo.reprobe_min_secs > self.hailo.reprobe_max_secs {
            bad("hailo.reprobe_min_secs", "must be <= hailo.reprobe_max_secs".into());
        }
        if self.mqtt.client_cert_file.as_os_str().is_empty() != self.mqtt.client_key_file.as_os_str().is_empty() {
            bad("mqtt.client_cert_file", "client_cert_file and client_key_file go together".into());
        }
        self.events_issues(&mut bad);
        if let Err(e) = crate::sys::logging::check_filter(&self.log.level) {
            bad(
                "log.level",
                format!("not a valid filter ({e}): {:?}", self.log.level.chars().take(80).collect::<String>()),
            );
        } else if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bad("log.level", format!("not a valid filter: {:?}", self.log.level));
        }
        out
    }
}

/// Event kinds that can carry a snapshot (`count` has no box).
pub const SNAPSHOT_KINDS: [&str; 5] = ["track_start", "track_end", "zone_enter", "zone_exit", "line_cross"];
/// Largest `events.snapshots.chunk_bytes`: a chunk's record (base64 data
/// and header) must fit the outbox's record limit.
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 192 * 1024;

/// Longest span any `*_secs` key may name: one year.
pub const MAX_SECS: u64 = 365 * 86_400;
/// Largest config file read: real ones are a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Largest outbox (and free-space reserve): 1 TiB, so bytes fit a `u64` with room.
pub const MAX_STORE_MEGABYTES: u64 = 1 << 20;
/// Longest reconnect backoff: one hour.
pub const MAX_RECONNECT_MS: u64 = 3_600_000;
/// Slowest camera: one frame every 100 s.
pub const MIN_FPS: f64 = 0.01;

fn out_range<T: fmt::Display>(bad: &mut impl FnMut(&str, String), key: &str, v: &T, lo: &T, hi: &T) {
    bad(key, format!("must be between {lo} and {hi}, got {v}"));
}

/// Runtime values derived from a validated config, converted in one place
/// with checked arithmetic (the bounds above make every product fit).
impl Config {
    /// `store.max_megabytes` in bytes.
    pub fn store_max_bytes(&self) -> u64 {
        self.store.max_megabytes.saturating_mul(1 << 20)
    }

    /// `store.ttl_secs` in milliseconds, per stream (telemetry, inference,
    /// events; snapshots have none: their byte budget bounds them).
    pub fn store_ttl_ms(&self) -> [u64; crate::record::Stream::COUNT] {
        let t = &self.store.ttl_secs;
        [t.telemetry, t.inference, t.events, 0].map(|s| s.saturating_mul(1000))
    }

    /// `store.snapshots_max_megabytes` in bytes.
    pub fn store_snapshots_max_bytes(&self) -> u64 {
        self.store.snapshots_max_megabytes.saturating_mul(1 << 20)
    }

    /// `hailo.reprobe_min_secs` / `reprobe_max_secs`.
    pub fn hailo_reprobe(&self) -> (std::time::Duration, std::time::Duration) {
        (seconds(self.hailo.reprobe_min_secs), seconds(self.hailo.reprobe_max_secs))
    }

    /// `telemetry.interval_secs`.
    pub fn telemetry_interval(&self) -> std::time::Duration {
        seconds(self.telemetry.interval_secs)
    }

    /// The cameras the daemon runs, in config order (one for `[camera]`);
    /// a single camera with `source = "none"` means no camera.
    pub fn cameras(&self) -> &[CameraConfig] {
        match &self.camera {
            CameraSection::One(c) => std::slice::from_ref(c),
            CameraSection::Many(v) => v,
        }
    }

    pub fn cameras_mut(&mut self) -> &mut [CameraConfig] {
        match &mut self.camera {
            CameraSection::One(c) => std::slice::from_mut(c),
            CameraSection::Many(v) => v,
        }
    }

    /// True when at least one camera delivers frames (and a model runs).
    pub fn has_camera(&self) -> bool {
        self.cameras().iter().any(|c| c.source != CameraSource::None)
    }

    /// Which form the config used, for `check-config`.
    pub fn camera_form(&self) -> &'static str {
        match self.camera {
            CameraSection::One(_) => "one [camera] table (id cam0)",
            CameraSection::Many(_) => "[[camera]] tables",
        }
    }

    /// The dotted key of camera `i`'s `key`: `camera.fps` for `[camera]`,
    /// `camera[i].fps` for `[[camera]]` (what [`key_line`] finds).
    fn camera_key(&self, i: usize, key: &str) -> String {
        match self.camera {
            CameraSection::One(_) => format!("camera.{key}"),
            CameraSection::Many(_) => format!("camera[{i}].{key}"),
        }
    }

    fn camera_issues(&self, bad: &mut impl FnMut(&str, String)) {
        let cams = self.cameras();
        if let CameraSection::Many(v) = &self.camera {
            if v.is_empty() || v.len() > MAX_CAMERAS {
                bad("camera", format!("[[camera]] needs 1 to {MAX_CAMERAS} tables, got {}", v.len()));
            }
        }
        for (i, c) in cams.iter().enumerate() {
            let key = |k: &str| self.camera_key(i, k);
            let mut range = |k: &str, v: u64, lo: u64, hi: u64| {
                if !(lo..=hi).contains(&v) {
                    out_range(bad, &key(k), &v, &lo, &hi);
                }
            };
            range("queue_frames", c.queue_frames as u64, 1, 64);
            range("width", c.width as u64, 1, 8192);
            range("height", c.height as u64, 1, 8192);
            // At least one frame every 100 s: `1 / fps` stays a small Duration.
            // `contains` is false for NaN, so NaN and infinities are refused.
            if !(MIN_FPS..=240.0).contains(&c.fps) {
                out_range(bad, &key("fps"), &c.fps, &MIN_FPS, &240.0);
            }
            if !["auto", "mjpeg", "yuyv", "nv12", "yu12"].contains(&c.pixel_format.as_str()) {
                bad(&key("pixel_format"), "must be auto, mjpeg, yuyv, nv12 or yu12".into());
            }
            if c.source == CameraSource::MjpegFile && c.mjpeg_file.as_os_str().is_empty() {
                bad(&key("mjpeg_file"), "source = \"mjpeg-file\" needs the file to replay".into());
            }
            if !is_topic_segment(&c.id) {
                bad(&key("id"), format!("must be 1-64 characters of [A-Za-z0-9_.-], got {:?}", c.id));
            } else if let Some(j) = cams[..i].iter().position(|o| o.id == c.id) {
                bad(&key("id"), format!("{:?} is also the id of camera[{j}]", c.id));
            }
            if matches!(self.camera, CameraSection::Many(_)) && c.source == CameraSource::None {
                bad(&key("source"), "\"none\" in [[camera]]: leave the table out instead".into());
            }
        }
    }
}

/// Dotted keys whose values differ between two configs (`mqtt.url`).
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => changed_json_keys(&a, &b),
        _ => Vec::new(),
    }
}

/// Dotted paths whose values differ between two JSON trees (config views).
pub fn changed_json_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", a, b, &mut out);
    out
}

/// Float seconds as a `Duration`, never panicking: NaN and negatives are
/// zero, anything above [`MAX_SECS`] is [`MAX_SECS`] (validation refuses
/// both; this is the last line of defence, not the check).
pub fn seconds(secs: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(secs.clamp(0.0, MAX_SECS as f64)).unwrap_or(std::time::Duration::ZERO)
}

/// The period of a frame rate, bounded like [`seconds`]; `fps` below
/// [`MIN_FPS`] (or NaN) is taken as [`MIN_FPS`].
pub fn frame_period(fps: f64) -> std::time::Duration {
    seconds(1.0 / fps.max(MIN_FPS))
}

/// A parsed `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Why an `mqtt.url` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    #[error("{0:?} must start with mqtt:// or mqtts://")]
    Scheme(String),
    #[error("{url:?} carries credentials: put the user in mqtt.username and the password in mqtt.password_file")]
    Credentials { url: String },
    #[error("bad port {port:?} in {url:?}: must be 1-65535")]
    Port { url: String, port: String },
    #[error("no host in {0:?}")]
    NoHost(String),
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(BrokerUrlError::Scheme(url.into()));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') {
            return Err(BrokerUrlError::Credentials { url: url.into() });
        }
        let (host, port) = match rest.rsplit_once(':').filter(|(h, _)| !h.ends_with(':') || h.starts_with('[')) {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| BrokerUrlError::Port { url: url.into(), port: p.into() })?;
                (h.trim_start_matches('[').trim_end_matches(']').to_string(), port)
            }
            None => (rest.to_string(), if tls { 8883 } else { 1883 }),
        };
        if host.trim().is_empty() || host.contains(['/', ' ', '\t', '?', '#']) {
            return Err(BrokerUrlError::NoHost(url.into()));
        }
        Ok(Self { tls, host, port })
    }
}

/// Topic segments must not contain MQTT wildcards or separators.
pub fn is_topic_segment(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Best-effort dotted key at a byte offset: the enclosing `[table]` plus the
/// key on that line.
fn key_at(text: &str, byte: Option<usize>) -> String {
    let Some(byte) = byte else { return String::new() };
    let upto = &text[..byte.min(text.len())];
    let line_start = upto.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..].find('\n').map_or(text.len(), |i| line_start + i);
    let line = text[line_start..line_end].trim();
    let mut table = String::new();
    for l in upto.lines() {
        let l = l.trim();
        if l.starts_with('[') && l.ends_with(']') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    if line.starts_with('[') {
        return line.trim_matches(|c| c == '[' || c == ']').trim().to_string();
    }
    let key = line.split('=').next().unwrap_or("").trim().trim_matches('"').to_string();
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key,
        (false, false) => format!("{table}.{key}"),
    }
}

/// Line of the dotted `key` (as in [`ConfigIssue::key`], `zone[1].labels`
/// included) in a config file's `text`; 0 if absent. For checks made
/// outside this module (the model's labels in `sparkd check-config`).
pub fn key_line(text: &str, key: &str) -> usize {
    find_key_line(text, key)
}

/// Line of `a.b` in `text` (the `b =` line inside `[a]`), 0 if absent.
fn find_key_line(text: &str, dotted: &str) -> usize {
    if let Some(line) = find_array_key_line(text, dotted) {
        return line;
    }
    let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.starts_with('[') && l.ends_with(']') {
            current = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        if current == table {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return i + 1;
                }
            }
        }
    }
    0
}

/// Line of `name[i].key` (the `key =` line in the i-th `[[name]]` table,
/// else that table's header); `None` when `dotted` has no `[i]`.
fn find_array_key_line(text: &str, dotted: &str) -> Option<usize> {
    let (head, key) = dotted.split_once("].")?;
    let (name, index) = head.split_once('[')?;
    let index: usize = index.parse().ok()?;
    let header = format!("[[{name}]]");
    let mut seen = None::<usize>;
    let mut header_line = 0;
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.starts_with('[') {
            if l.replace(' ', "") == header {
                seen = Some(seen.map_or(0, |n| n + 1));
                if seen == Some(index) {
                    header_line = i + 1;
                }
            } else if seen == Some(index) {
                break;
            }
            continue;
        }
        if seen == Some(index) && l.split_once('=').is_some_and(|(k, _)| k.trim().trim_matches('"') == key) {
            return Some(i + 1);
        }
    }
    Some(header_line)
}

/// Fleet updates (see docs/updates.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Public keys whose signatures updates must carry, one `<key_id> <key>`
    /// per line (several during a rotation). Relative names are looked up in
    /// `$CREDENTIALS_DIRECTORY` first. Empty: every update is refused.
    pub trusted_keys_file: PathBuf,
    /// Largest artifact accepted; staging needs twice this much free space.
    pub max_artifact_megabytes: u64,
    /// Free space staging leaves untouched on the state filesystem.
    pub reserve_megabytes: u64,
    /// A new `sparkd` binary must stay up this long after READY before it
    /// is confirmed; one that exits or is killed sooner is rolled back.
    pub binary_health_secs: u64,
    /// A shadow model (pushed with `spark-fleet sign --shadow`) runs on one
    /// live frame in this many.
    pub shadow_every_n_frames: u64,
    /// How often a running shadow's figures are reported on `update/state`.
    pub shadow_report_secs: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            trusted_keys_file: PathBuf::new(),
            max_artifact_megabytes: 256,
            reserve_megabytes: 64,
            binary_health_secs: 30,
            shadow_every_n_frames: 10,
            shadow_report_secs: 60,
        }
    }
}

/// `sparkctl metrics` is always there; this adds a file for node_exporter.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// node_exporter's textfile-collector directory: `spark.prom` is
    /// replaced there atomically every `textfile_interval_secs`. Empty: off.
    pub textfile_dir: PathBuf,
    pub textfile_interval_secs: u64,
    /// `GET /metrics` served on this loopback address (`127.0.0.1:9464`,
    /// `[::1]:9464`). Empty: no port opened.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { textfile_dir: PathBuf::new(), textfile_interval_secs: 15, listen: String::new() }
    }
}

impl MetricsConfig {
    /// The `listen` address, when set and valid (a loopback IP and a port
    /// other than 0; `check-config` refuses anything else).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        let addr: std::net::SocketAddr = self.listen.parse().ok()?;
        (addr.ip().is_loopback() && addr.port() != 0).then_some(addr)
    }
}

/// Per-frame inference records (`[inference]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    pub publish: Publish,
}

/// Which frames get an `inference` record.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Publish {
    /// One record per frame.
    #[default]
    EveryFrame,
    /// Only frames where the set of tracked labels changed.
    OnChange,
    /// None: events only.
    None,
}

/// The multi-object tracker (`[tracking]`, see `src/events/tracker.rs`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// Frames an object may be missing and keep its track id when seen again.
    pub max_missed_frames: u32,
    /// Detections scoring at least this start tracks and are matched first.
    pub high_score: f32,
    /// Least IoU between a track's predicted box and a high-score detection.
    pub match_iou: f32,
    /// Least IoU for a low-score detection to continue a track.
    pub low_match_iou: f32,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self { max_missed_frames: 10, high_score: 0.5, match_iou: 0.2, low_match_iou: 0.5 }
    }
}

/// Events from tracks (`[events]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Camera id named in every event.
    pub camera: String,
    /// Length of a `count` record's interval; 0: no count records.
    pub count_interval_secs: u64,
    /// `track_start` / `track_end` events (zone and line events are on
    /// whenever a zone or line is configured).
    pub track_events: bool,
    /// `[events.snapshots]`: evidence JPEGs (docs/snapshots.md).
    pub snapshots: SnapshotsConfig,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            camera: "cam0".into(),
            count_interval_secs: 60,
            track_events: true,
            snapshots: SnapshotsConfig::default(),
        }
    }
}

/// What an evidence snapshot shows.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMode {
    /// The whole frame with the event's box drawn.
    #[default]
    Frame,
    /// The event's box with `crop_margin` around it.
    Crop,
}

/// `[events.snapshots]`: a JPEG per event, stored in the outbox's
/// `snapshots` stream and published in chunks (docs/snapshots.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsConfig {
    pub enabled: bool,
    /// Event kinds that get a snapshot (of [`SNAPSHOT_KINDS`]).
    pub kinds: Vec<String>,
    pub mode: SnapshotMode,
    /// `crop`: margin on each side as a fraction of the box's size.
    pub crop_margin: f32,
    /// JPEG quality (1-100) of the first encode.
    pub jpeg_quality: u8,
    /// Largest JPEG kept: a larger one is re-encoded at lower quality, else
    /// dropped (counted).
    pub max_bytes: usize,
    /// Largest MQTT message a chunk makes (header and base64 data).
    pub chunk_bytes: usize,
    /// Frames waiting for the encoder; when full, an event gets no snapshot
    /// (counted) and is stored at once all the same.
    pub queue: usize,
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kinds: vec!["zone_enter".into(), "line_cross".into()],
            mode: SnapshotMode::Frame,
            crop_margin: 0.25,
            jpeg_quality: 80,
            max_bytes: 512 * 1024,
            chunk_bytes: 128 * 1024,
            queue: 4,
        }
    }
}

/// One `[[zone]]`: a polygon in normalised image coordinates (0..1, y down).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub name: String,
    /// The camera whose frames it watches; `None`: `events.camera`.
    #[serde(default)]
    pub camera: Option<String>,
    /// At least 3 `[x, y]` points, not self-intersecting.
    pub polygon: Vec<[f32; 2]>,
    /// Model labels it applies to; empty: all.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// One `[[line]]`: a counting segment in normalised image coordinates.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    pub name: String,
    /// The camera whose frames it watches; `None`: `events.camera`.
    #[serde(default)]
    pub camera: Option<String>,
    pub from: [f32; 2],
    pub to: [f32; 2],
    /// Names of the two crossing directions: the first is from the right of
    /// `from → to` to its left as drawn on screen (left to right for a line
    /// drawn top to bottom), the second the other way.
    #[serde(default = "default_directions")]
    pub directions: [String; 2],
    #[serde(default)]
    pub labels: Vec<String>,
}

fn default_directions() -> [String; 2] {
    ["in".into(), "out".into()]
}

impl Config {
    /// The camera a zone or line watches: its own `camera`, else `events.camera`.
    pub fn rule_camera<'a>(&'a self, camera: &'a Option<String>) -> &'a str {
        camera.as_deref().unwrap_or(&self.events.camera)
    }

    /// `[inference]`, `[tracking]`, `[events]`, `[[zone]]` and `[[line]]`.
    /// Zone and line keys are `zone[i].key` (0-based), found on the i-th
    /// `[[zone]]` table. Labels are checked against the model at start.
    fn events_issues(&self, bad: &mut impl FnMut(&str, String)) {
        // Zones and lines on a camera that is not there would never fire.
        let ids: Vec<&str> = self.cameras().iter().map(|c| c.id.as_str()).collect();
        let unknown = |id: &str| self.has_camera() && !ids.contains(&id);
        let on_default = self.zones.iter().any(|z| z.camera.is_none()) || self.lines.iter().any(|l| l.camera.is_none());
        if on_default && unknown(&self.events.camera) {
            bad(
                "events.camera",
                format!("{:?} is not a configured camera (cameras: {})", self.events.camera, ids.join(", ")),
            );
        }
        let rule_cameras =
            self.zones.iter().map(|z| ("zone", &z.camera)).chain(self.lines.iter().map(|l| ("line", &l.camera)));
        let mut index = std::collections::BTreeMap::new();
        for (kind, camera) in rule_cameras {
            let i = index.entry(kind).or_insert(0usize);
            if let Some(id) = camera
                && unknown(id)
            {
                bad(
                    &format!("{kind}[{i}].camera"),
                    format!("{id:?} is not a configured camera (cameras: {})", ids.join(", ")),
                );
            }
            *i += 1;
        }
        let t = &self.tracking;
        if t.max_missed_frames > 1000 {
            bad("tracking.max_missed_frames", format!("must be between 0 and 1000, got {}", t.max_missed_frames));
        }
        for (k, v, lo) in [
            ("tracking.high_score", t.high_score, 0.0),
            ("tracking.match_iou", t.match_iou, 0.01),
            ("tracking.low_match_iou", t.low_match_iou, 0.01),
        ] {
            if !(lo..=1.0).contains(&v) {
                bad(k, format!("must be between {lo} and 1, got {v}"));
            }
        }
        if self.events.count_interval_secs > 86_400 {
            bad(
                "events.count_interval_secs",
                format!("must be between 0 and 86400, got {}", self.events.count_interval_secs),
            );
        }
        if !is_topic_segment(&self.events.camera) {
            bad("events.camera", format!("must be 1-64 characters of [A-Za-z0-9_.-], got {:?}", self.events.camera));
        }
        let point_ok = |p: &[f32; 2]| p.iter().all(|c| (0.0..=1.0).contains(c));
        let mut names = std::collections::BTreeSet::new();
        let mut rule_name = |key: String, name: &str, bad: &mut dyn FnMut(&str, String)| {
            if !is_topic_segment(name) {
                bad(&key, format!("must be 1-64 characters of [A-Za-z0-9_.-], got {name:?}"));
            } else if !names.insert(name.to_string()) {
                bad(&key, format!("{name:?} names another zone or line already"));
            }
        };
        let labels_ok = |key: String, labels: &[String], bad: &mut dyn FnMut(&str, String)| {
            if let Some(l) = labels.iter().find(|l| l.trim().is_empty()) {
                bad(&key, format!("an empty label {l:?}"));
            }
        };
        for (i, z) in self.zones.iter().enumerate() {
            rule_name(format!("zone[{i}].name"), &z.name, bad);
            labels_ok(format!("zone[{i}].labels"), &z.labels, bad);
            let key = format!("zone[{i}].polygon");
            if z.polygon.len() < 3 {
                bad(&key, format!("needs at least 3 points, got {}: {:?}", z.polygon.len(), z.polygon));
            } else if z.polygon.len() > 64 {
                bad(&key, format!("at most 64 points, got {}", z.polygon.len()));
            } else if let Some(p) = z.polygon.iter().find(|p| !point_ok(p)) {
                bad(&key, format!("point {p:?} is outside 0..1 (coordinates are fractions of the image)"));
            } else if let Some((a, b)) = crate::sys::geometry::self_intersection(&z.polygon) {
                bad(
                    &key,
                    format!(
                        "self-intersecting: edge {:?}-{:?} crosses edge {:?}-{:?}",
                        z.polygon[a],
                        z.polygon[(a + 1) % z.polygon.len()],
                        z.polygon[b],
                        z.polygon[(b + 1) % z.polygon.len()]
                    ),
                );
            }
        }
        for (i, l) in self.lines.iter().enumerate() {
            rule_name(format!("line[{i}].name"), &l.name, bad);
            labels_ok(format!("line[{i}].labels"), &l.labels, bad);
            for (k, p) in [("from", &l.from), ("to", &l.to)] {
                if !point_ok(p) {
                    bad(
                        &format!("line[{i}].{k}"),
                        format!("point {p:?} is outside 0..1 (coordinates are fractions of the image)"),
                    );
                }
            }
            if l.from == l.to {
                bad(&format!("line[{i}].to"), format!("the same point as `from`: {:?}", l.to));
            }
            let [a, b] = &l.directions;
            if a.trim().is_empty() || b.trim().is_empty() || a == b {
                bad(&format!("line[{i}].directions"), format!("needs two different names, got {:?}", l.directions));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_path_naming_an_endless_file_is_a_read_error_not_unbounded_memory() {
        let ConfigError::Read { path, source } = Config::load(Path::new("/dev/zero")).unwrap_err() else {
            panic!("not a read error")
        };
        assert_eq!(path, Path::new("/dev/zero"));
        assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge);
    }

    #[test]
    fn metrics_listen_takes_only_a_loopback_address() {
        assert_eq!(parse("").unwrap().metrics.listen_addr(), None);
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(c.metrics.listen_addr(), Some("127.0.0.1:9464".parse().unwrap()));
        assert!(parse("[metrics]\nlisten = \"[::1]:9464\"\n").is_ok());
        for bad in ["0.0.0.0:9464", "192.0.2.1:9464", "127.0.0.1:0", "localhost:9464", "9464", "[::]:9464"] {
            let ConfigError::Invalid(issues) = parse(&format!("[metrics]\nlisten = \"{bad}\"\n")).unwrap_err() else {
                panic!("{bad} accepted")
            };
            assert_eq!((issues[0].key.as_str(), issues[0].line), ("metrics.listen", 2), "{bad}: {issues:?}");
            assert!(issues[0].message.contains(bad), "{bad}: {issues:?}");
        }
    }

    #[test]
    fn metrics_textfile_dir_must_be_absolute_and_the_interval_bounded() {
        let c = parse("[metrics]\ntextfile_dir = \"/var/lib/node_exporter/textfile_collector\"\n").unwrap();
        assert_eq!(c.metrics.textfile_interval_secs, 15);
        let ConfigError::Invalid(issues) = parse("[metrics]\ntextfile_dir = \"rel\"\n").unwrap_err() else { panic!() };
        assert_eq!((issues[0].line, issues[0].key.as_str()), (2, "metrics.textfile_dir"));
        let ConfigError::Invalid(issues) = parse("[metrics]\ntextfile_interval_secs = 0\n").unwrap_err() else {
            panic!()
        };
        assert_eq!(issues[0].key, "metrics.textfile_interval_secs");
    }

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("t.toml"))
    }

    #[test]
    fn empty_file_gives_every_default() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[mqtt]\nurl = \"mqtt://a:1\"\nbogus = 3\n").unwrap_err();
        let ConfigError::Invalid(issues) = err else { panic!("wrong error") };
        assert_eq!(issues[0].line, 3);
        assert_eq!(issues[0].key, "mqtt.bogus");
        assert!(issues[0].message.contains("unknown field"), "{}", issues[0].message);
    }

    #[test]
    fn wrong_type_is_reported_with_its_key() {
        let ConfigError::Invalid(issues) = parse("[camera]\nfps = \"fast\"\n").unwrap_err() else { panic!() };
        assert_eq!((issues[0].line, issues[0].key.as_str()), (2, "camera.fps"));
    }

    #[test]
    fn semantic_errors_name_the_key_line() {
        let ConfigError::Invalid(issues) = parse("[mqtt]\n\nurl = \"http://x\"\n").unwrap_err() else { panic!() };
        assert_eq!(issues[0].key, "mqtt.url");
        assert_eq!(issues[0].line, 3);
        assert_eq!(issues[0].to_string(), "t.toml:3: key `mqtt.url`: \"http://x\" must start with mqtt:// or mqtts://");
    }

    #[test]
    fn broker_urls_parse_with_default_ports() {
        assert_eq!(BrokerUrl::parse("mqtt://h").unwrap().port, 1883);
        assert_eq!(BrokerUrl::parse("mqtts://h").unwrap().port, 8883);
        let u = BrokerUrl::parse("mqtt://127.0.0.1:4000").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 4000, false));
        assert!(BrokerUrl::parse("mqtt://h:99999").is_err());
    }

    #[test]
    fn broker_urls_refuse_port_zero_credentials_and_blank_hosts() {
        assert!(matches!(BrokerUrl::parse("mqtt://host:0"), Err(BrokerUrlError::Port { .. })));
        assert!(matches!(BrokerUrl::parse("mqtt://user:pw@host:1883"), Err(BrokerUrlError::Credentials { .. })));
        assert!(matches!(BrokerUrl::parse("mqtt:// :1883"), Err(BrokerUrlError::NoHost(_))));
        assert!(matches!(BrokerUrl::parse("mqtt://"), Err(BrokerUrlError::NoHost(_))));
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:4000").unwrap().host, "::1");
    }

    #[test]
    fn zones_must_name_a_configured_camera() {
        let zone = "[[zone]]\nname = \"bay\"\npolygon = [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]\nlabels = [\"person\"]\n";
        let two = "[[camera]]\nid = \"door\"\n[[camera]]\nid = \"yard\"\n";
        let ConfigError::Invalid(issues) = parse(&format!("{two}{zone}")).unwrap_err() else { panic!() };
        let i = issues.iter().find(|i| i.key == "events.camera").expect("events.camera refused");
        assert!(i.message.contains("\"cam0\"") && i.message.contains("door, yard"), "{}", i.message);
        assert!(parse(&format!("{two}[events]\ncamera = \"yard\"\n{zone}")).is_ok());
        assert!(parse(two).is_ok(), "no rules, no camera needed");
        // A rule naming its own camera needs no events.camera; one naming a
        // camera that is not there is refused on its own key.
        let own = zone.replace("name = \"bay\"", "name = \"bay\"\ncamera = \"yard\"");
        assert!(parse(&format!("{two}{own}")).is_ok());
        let line = "[[line]]\nname = \"gate\"\ncamera = \"gaet\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\n";
        let ConfigError::Invalid(issues) = parse(&format!("{two}{own}{line}")).unwrap_err() else { panic!() };
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "line[0].camera");
        assert!(issues[0].message.contains("\"gaet\"") && issues[0].message.contains("door, yard"), "{issues:?}");
        assert!(issues[0].line > 0, "{issues:?}");
    }

    /// Regression (issue 15): each of these passed `check-config` and then
    /// panicked or wrapped at run time.
    #[test]
    fn values_that_crashed_or_wrapped_at_run_time_are_refused() {
        for (text, key) in [
            ("[camera]\nfps = 1e-300\n", "camera.fps"),
            // Panicked tracing-subscriber's filter parser (found by the `config` fuzz target).
            ("[log]\nlevel = \"a b, c\"\n", "log.level"),
            ("[camera]\nfps = nan\n", "camera.fps"),
            ("[hailo]\nreprobe_max_secs = 1e300\n", "hailo.reprobe_max_secs"),
            ("[hailo]\nreprobe_max_secs = inf\n", "hailo.reprobe_max_secs"),
            ("[mqtt]\nstatus_interval_secs = 18446744073709551615\n", "mqtt.status_interval_secs"),
            ("[store]\nmax_megabytes = 17592186044416\n", "store.max_megabytes"),
            ("[store.ttl_secs]\nevents = 18446744073709551\n", "store.ttl_secs.events"),
            ("[mqtt]\nkeep_alive_secs = 65536\n", "mqtt.keep_alive_secs"),
            ("[mqtt]\nurl = \"mqtt://h:0\"\n", "mqtt.url"),
            ("[telemetry]\ninterval_secs = -1.0\n", "telemetry.interval_secs"),
        ] {
            let Err(ConfigError::Invalid(issues)) = parse(text) else { panic!("{text:?} was accepted") };
            assert!(issues.iter().any(|i| i.key == key), "{text:?}: {issues:?}");
        }
    }

    #[test]
    fn snapshot_keys_are_checked_with_their_line() {
        let text = "[events.snapshots]\nkinds = [\"line_cross\", \"count\"]\nchunk_bytes = 100\njpeg_quality = 0\n\
                    [store]\nsnapshots_max_megabytes = 0\n";
        let ConfigError::Invalid(issues) = parse(text).unwrap_err() else { panic!() };
        let find =
            |k: &str| issues.iter().find(|i| i.key == k).unwrap_or_else(|| panic!("{k} not refused: {issues:?}"));
        assert_eq!(find("events.snapshots.kinds").line, 2);
        assert!(find("events.snapshots.kinds").to_string().contains("entry 1, \"count\", is not one of"), "{issues:?}");
        assert_eq!(find("events.snapshots.chunk_bytes").line, 3);
        assert_eq!(find("events.snapshots.jpeg_quality").line, 4);
        assert_eq!(find("store.snapshots_max_megabytes").line, 6);
        let c = parse("").unwrap();
        assert!(c.events.snapshots.enabled && c.events.snapshots.mode == SnapshotMode::Frame);
        assert_eq!(c.store_snapshots_max_bytes(), 256 << 20);
        assert_eq!(c.store_ttl_ms()[crate::record::Stream::Snapshots as usize], 0);
    }

    #[test]
    fn every_accepted_bound_converts_without_panicking() {
        let c = parse(
            "[camera]\nfps = 0.01\n[store]\nmax_megabytes = 1048576\n[store.ttl_secs]\nevents = 31536000\n\
             [hailo]\nreprobe_min_secs = 86400.0\nreprobe_max_secs = 86400.0\n",
        )
        .unwrap();
        assert_eq!(c.store_max_bytes(), 1 << 40);
        assert_eq!(c.store_ttl_ms()[2], 31_536_000_000);
        assert_eq!(frame_period(c.cameras()[0].fps), std::time::Duration::from_secs(100));
        assert_eq!(c.hailo_reprobe().1, std::time::Duration::from_secs(86_400));
        assert_eq!(seconds(f64::NAN), std::time::Duration::ZERO);
        assert_eq!(frame_period(0.0), std::time::Duration::from_secs(100));
    }

    #[test]
    fn mjpeg_file_source_needs_its_file_and_takes_both_spellings() {
        let ConfigError::Invalid(issues) = parse("[camera]\nsource = \"mjpeg-file\"\n").unwrap_err() else { panic!() };
        assert_eq!(issues[0].key, "camera.mjpeg_file");
        let c =
            parse("[camera]\nsource = \"mjpeg_file\"\nmjpeg_file = \"/x.mjpeg\"\npixel_format = \"nv12\"\n").unwrap();
        assert_eq!(c.cameras()[0].source, CameraSource::MjpegFile);
    }

    #[test]
    fn config_differences_are_named_by_key() {
        let a = serde_json::json!({"mqtt": {"url": "a", "port": 1}, "x": 1});
        let b = serde_json::json!({"mqtt": {"url": "b", "port": 1}, "x": 1, "y": {"z": 2}});
        assert_eq!(changed_json_keys(&a, &b), ["mqtt.url", "y"]);
        let mut c = Config::default();
        c.mqtt.url = "mqtt://other:1883".into();
        assert_eq!(changed_keys(&Config::default(), &c), ["mqtt.url"]);
    }

    #[test]
    fn zones_lines_and_tracking_parse_with_defaults() {
        let c = parse(
            "[tracking]\nmax_missed_frames = 5\n[inference]\npublish = \"on-change\"\n\
             [[zone]]\nname = \"bay\"\npolygon = [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]\nlabels = [\"person\"]\n\
             [[line]]\nname = \"door\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\n",
        )
        .unwrap();
        assert_eq!(c.tracking.max_missed_frames, 5);
        assert_eq!(c.inference.publish, Publish::OnChange);
        assert_eq!(c.zones[0].polygon.len(), 3);
        assert_eq!(c.lines[0].directions, ["in", "out"]);
        assert_eq!(c.events.count_interval_secs, 60);
        assert_eq!(c.events.camera, "cam0");
        assert_eq!(parse("").unwrap().inference.publish, Publish::EveryFrame);
    }

    /// Each bad rule is reported on its own table's line, with the value.
    #[test]
    fn bad_zones_and_lines_name_the_line_and_the_value() {
        let text = "[[zone]]\nname = \"ok\"\npolygon = [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]\n\
                    [[zone]]\nname = \"two\"\npolygon = [[0.1, 0.1], [0.9, 0.1]]\n\
                    [[zone]]\nname = \"bow\"\npolygon = [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]\n\
                    [[zone]]\nname = \"out\"\npolygon = [[0.1, 0.1], [1.5, 0.1], [0.5, 0.9]]\n\
                    [[line]]\nname = \"door\"\nfrom = [0.5, 0.5]\nto = [0.5, 0.5]\n\
                    [[line]]\nname = \"ok\"\nfrom = [0.1, 0.5]\nto = [-0.2, 0.5]\ndirections = [\"a\", \"a\"]\n";
        let ConfigError::Invalid(issues) = parse(text).unwrap_err() else { panic!() };
        let got: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            got,
            [
                "t.toml:6: key `zone[1].polygon`: needs at least 3 points, got 2: [[0.1, 0.1], [0.9, 0.1]]",
                "t.toml:9: key `zone[2].polygon`: self-intersecting: edge [0.0, 0.0]-[1.0, 1.0] crosses edge [1.0, 0.0]-[0.0, 1.0]",
                "t.toml:12: key `zone[3].polygon`: point [1.5, 0.1] is outside 0..1 (coordinates are fractions of the image)",
                "t.toml:16: key `line[0].to`: the same point as `from`: [0.5, 0.5]",
                "t.toml:18: key `line[1].name`: \"ok\" names another zone or line already",
                "t.toml:20: key `line[1].to`: point [-0.2, 0.5] is outside 0..1 (coordinates are fractions of the image)",
                "t.toml:21: key `line[1].directions`: needs two different names, got [\"a\", \"a\"]",
            ]
        );
    }

    #[test]
    fn tracking_and_events_values_are_bounded() {
        for (text, key) in [
            ("[tracking]\nmax_missed_frames = 5000\n", "tracking.max_missed_frames"),
            ("[tracking]\nhigh_score = 1.5\n", "tracking.high_score"),
            ("[tracking]\nmatch_iou = nan\n", "tracking.match_iou"),
            ("[events]\ncount_interval_secs = 100000\n", "events.count_interval_secs"),
            ("[events]\ncamera = \"a/b\"\n", "events.camera"),
            ("[inference]\npublish = \"sometimes\"\n", "inference.publish"),
        ] {
            let Err(ConfigError::Invalid(issues)) = parse(text) else { panic!("{text:?} was accepted") };
            assert!(issues.iter().any(|i| i.key == key && i.line == 2), "{text:?}: {issues:?}");
        }
    }

    #[test]
    fn topic_segments_reject_wildcards() {
        assert!(is_topic_segment("pi-5.a_b"));
        assert!(!is_topic_segment("a/b"));
        assert!(!is_topic_segment("#"));
        assert!(!is_topic_segment(""));
    }
}
