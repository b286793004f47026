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
    /// `/etc/machine-id` (see [`crate::identity`]).
    pub device_id: String,
    /// Group used for fleet update topics.
    pub group: String,
    /// Directory for the outbox, staged updates and the model store.
    /// Empty: `$STATE_DIRECTORY` under systemd, else `/var/lib/sparkd`.
    pub state_dir: PathBuf,
    /// Control socket. Empty: `$RUNTIME_DIRECTORY/sparkd.sock` under
    /// systemd, else `<state_dir>/sparkd.sock`.
    pub socket_path: PathBuf,
    pub camera: CameraConfig,
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model manifest (TOML) naming the ONNX/HEF files, input and decoder.
    pub manifest: PathBuf,
    /// Path to `libonnxruntime.so`. Empty: `$ORT_DYLIB_PATH`, then the
    /// usual install locations (see [`crate::engine::onnx::library_candidates`]).
    pub onnxruntime_library: PathBuf,
    /// Threads ONNX Runtime may use for one inference.
    pub intra_threads: usize,
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
            camera: CameraConfig::default(),
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
        }
    }
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
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
            drop_order: vec!["events".into(), "inference".into(), "telemetry".into()],
            ttl_secs: StreamTtl::default(),
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
        c.camera.replay_dir = "models/demo".into();
        c.camera.fps = 2.0;
        c.model.manifest = "models/centerface.toml".into();
        c.telemetry.interval_secs = 5.0;
        c
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
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
    fn semantic_issues(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |k: &str, m: String| out.push((k.to_string(), m));
        if !self.device_id.is_empty() && !is_topic_segment(&self.device_id) {
            bad("device_id", "must be 1-64 characters of [A-Za-z0-9_.-]".into());
        }
        if !is_topic_segment(&self.group) {
            bad("group", "must be 1-64 characters of [A-Za-z0-9_.-]".into());
        }
        if !(self.camera.fps > 0.0 && self.camera.fps <= 240.0) {
            bad("camera.fps", format!("must be in (0, 240], got {}", self.camera.fps));
        }
        if self.camera.queue_frames == 0 || self.camera.queue_frames > 64 {
            bad("camera.queue_frames", "must be 1..=64".into());
        }
        if self.model.intra_threads == 0 || self.model.intra_threads > 64 {
            bad("model.intra_threads", "must be 1..=64".into());
        }
        if !(self.telemetry.interval_secs >= 0.1 && self.telemetry.interval_secs <= 86_400.0) {
            bad("telemetry.interval_secs", "must be between 0.1 and 86400".into());
        }
        if self.store.max_megabytes < 4 {
            bad("store.max_megabytes", "must be at least 4".into());
        }
        if self.store.commit_batch_max == 0 || self.store.commit_batch_max > 100_000 {
            bad("store.commit_batch_max", "must be 1..=100000".into());
        }
        if let Err(m) = BrokerUrl::parse(&self.mqtt.url) {
            bad("mqtt.url", m);
        }
        if !self.mqtt.topic_prefix.split('/').all(is_topic_segment) {
            bad("mqtt.topic_prefix", "must be segments of [A-Za-z0-9_.-] joined by '/'".into());
        }
        if self.mqtt.inflight_window == 0 {
            bad("mqtt.inflight_window", "must be at least 1".into());
        }
        if self.mqtt.keep_alive_secs < 5 {
            bad("mqtt.keep_alive_secs", "must be at least 5".into());
        }
        if self.mqtt.reconnect_min_ms == 0 || self.mqtt.reconnect_min_ms > self.mqtt.reconnect_max_ms {
            bad("mqtt.reconnect_min_ms", "must be > 0 and <= mqtt.reconnect_max_ms".into());
        }
        if self.mqtt.status_interval_secs == 0 {
            bad("mqtt.status_interval_secs", "must be at least 1".into());
        }
        let mut order = self.store.drop_order.clone();
        order.sort();
        if order != ["events", "inference", "telemetry"] {
            bad("store.drop_order", "must name telemetry, inference and events once each".into());
        }
        if self.mqtt.batch_max_records == 0 || self.mqtt.batch_max_records > 10_000 {
            bad("mqtt.batch_max_records", "must be 1..=10000".into());
        }
        if self.mqtt.batch_max_bytes < 1024 || self.mqtt.batch_max_bytes > 1 << 20 {
            bad("mqtt.batch_max_bytes", "must be 1024..=1048576".into());
        }
        if !self.link.vpn_interface.is_empty()
            && (self.link.vpn_interface.len() > 15 || !is_topic_segment(&self.link.vpn_interface))
        {
            bad("link.vpn_interface", "not a valid interface name".into());
        }
        if self.link.check_interval_ms < 100 {
            bad("link.check_interval_ms", "must be at least 100".into());
        }
        if !(self.load.events_per_sec >= 0.0 && self.load.events_per_sec <= 1_000_000.0) {
            bad("load.events_per_sec", "must be between 0 and 1000000".into());
        }
        if !["auto", "mjpeg", "yuyv", "nv12", "yu12"].contains(&self.camera.pixel_format.as_str()) {
            bad("camera.pixel_format", "must be auto, mjpeg, yuyv, nv12 or yu12".into());
        }
        if self.camera.source == CameraSource::MjpegFile && self.camera.mjpeg_file.as_os_str().is_empty() {
            bad("camera.mjpeg_file", "camera.source = \"mjpeg-file\" needs the file to replay".into());
        }
        if self.camera.width == 0 || self.camera.height == 0 || self.camera.width > 8192 || self.camera.height > 8192 {
            bad("camera.width", "camera size out of range".into());
        }
        if self.hailo.timeout_ms == 0 {
            bad("hailo.timeout_ms", "must be at least 1".into());
        }
        if !(self.hailo.reprobe_min_secs > 0.0 && self.hailo.reprobe_min_secs <= self.hailo.reprobe_max_secs) {
            bad("hailo.reprobe_min_secs", "must be > 0 and <= hailo.reprobe_max_secs".into());
        }
        if !(0.0..=1.0).contains(&self.audio.threshold) {
            bad("audio.threshold", "must be in [0, 1]".into());
        }
        if !(1..=3600).contains(&self.update.binary_health_secs) {
            bad("update.binary_health_secs", "must be 1..=3600".into());
        }
        if !(self.audio.buffer_secs > 0.0 && self.audio.buffer_secs <= 60.0) {
            bad("audio.buffer_secs", "must be in (0, 60]".into());
        }
        if self.mqtt.client_cert_file.as_os_str().is_empty() != self.mqtt.client_key_file.as_os_str().is_empty() {
            bad("mqtt.client_cert_file", "client_cert_file and client_key_file go together".into());
        }
        if self.load.event_bytes > 64 * 1024 {
            bad("load.event_bytes", "must be at most 65536".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bad("log.level", format!("not a valid filter: {:?}", self.log.level));
        }
        out
    }
}

/// A parsed `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => {
                let port = p.parse::<u16>().map_err(|_| format!("bad port {p:?} in {url:?}"))?;
                (h.trim_start_matches('[').trim_end_matches(']').to_string(), port)
            }
            None => (rest.to_string(), if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("no host in {url:?}"));
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

/// Line of `a.b` in `text` (the `b =` line inside `[a]`), 0 if absent.
fn find_key_line(text: &str, dotted: &str) -> usize {
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
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            trusted_keys_file: PathBuf::new(),
            max_artifact_megabytes: 256,
            reserve_megabytes: 64,
            binary_health_secs: 30,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn mjpeg_file_source_needs_its_file_and_takes_both_spellings() {
        let ConfigError::Invalid(issues) = parse("[camera]\nsource = \"mjpeg-file\"\n").unwrap_err() else { panic!() };
        assert_eq!(issues[0].key, "camera.mjpeg_file");
        let c =
            parse("[camera]\nsource = \"mjpeg_file\"\nmjpeg_file = \"/x.mjpeg\"\npixel_format = \"nv12\"\n").unwrap();
        assert_eq!(c.camera.source, CameraSource::MjpegFile);
    }

    #[test]
    fn topic_segments_reject_wildcards() {
        assert!(is_topic_segment("pi-5.a_b"));
        assert!(!is_topic_segment("a/b"));
        assert!(!is_topic_segment("#"));
        assert!(!is_topic_segment(""));
    }
}
