//! `sparkctl doctor`: the checks a technician would otherwise run by hand,
//! each judged pass / warn / fail with a one-line fix.
//!
//! Owns gathering facts (device nodes, files, sysfs, `statvfs`, the clock)
//! and judging them; it changes nothing. The daemon answers `doctor` with
//! [`system_checks`] and [`live_checks`] over its shared state; `sparkctl`
//! runs [`system_checks`] alone when the daemon cannot be reached. Judgements
//! that need no IO are separate functions so they are unit-tested.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::protocol::{BrokerErrorKind, Check, CheckStatus, StatusReport};
use crate::config::{BrokerUrl, CameraConfig, CameraSource, Config};
use crate::inference::model::Model;

/// The Hailo-8's device node, created by the `hailo_pci` driver.
pub const HAILO_DEVICE: &str = "/dev/hailo0";
/// systemd-timesyncd creates this file once the clock is synchronized.
pub const TIMESYNC_FLAG: &str = "/run/systemd/timesync/synchronized";
/// 2026-11-23 00:00 UTC: when this source was written. A clock before it is
/// certainly wrong. Builds that set `SOURCE_DATE_EPOCH` (the Debian package,
/// scripts/package-deb.sh) use their own date instead.
const SOURCE_FLOOR_S: u64 = 1_795_392_000;

/// Unix seconds before which the wall clock cannot be right: the build date
/// when the build recorded one (`SOURCE_DATE_EPOCH`), else the source's date.
pub fn build_floor_s() -> u64 {
    option_env!("SOURCE_DATE_EPOCH")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&s| s > SOURCE_FLOOR_S)
        .unwrap_or(SOURCE_FLOOR_S)
}

/// Checks that need only the config and the machine, not the running daemon.
pub fn system_checks(config: &Config, state_dir: &Path) -> Vec<Check> {
    let now_ms = crate::record::now_ms();
    vec![
        model_files(config),
        hailo_device(config),
        hailort(config),
        camera(config),
        microphone(config),
        clock(now_ms / 1000, build_floor_s()),
        ntp(Path::new(TIMESYNC_FLAG).exists()),
        disk(config, state_dir),
    ]
}

/// Checks over the daemon's live state; `status` is a fresh status report.
pub fn live_checks(config: &Config, status: &StatusReport) -> Vec<Check> {
    vec![
        Check::pass(
            "daemon",
            format!(
                "sparkd {} running for {}, pid {}",
                status.version,
                duration(status.uptime_s as f64),
                std::process::id()
            ),
        ),
        engine(config, status, Path::new(HAILO_DEVICE).exists()),
        inference(config, status),
        frames(config, status),
        vpn(status),
        broker(config, status),
        outbox(status),
    ]
}

/// Everything the daemon reports, in the order a technician reads it.
pub fn daemon_report(config: &Config, state_dir: &Path, status: &StatusReport) -> Vec<Check> {
    let live = live_checks(config, status);
    let system = system_checks(config, state_dir);
    let order = [
        "daemon",
        "engine",
        "inference",
        "model-files",
        "hailo-device",
        "hailort",
        "camera",
        "frames",
        "microphone",
        "vpn",
        "broker",
        "clock",
        "ntp",
        "disk",
        "outbox",
    ];
    let mut all: Vec<Check> = live.into_iter().chain(system).collect();
    all.sort_by_key(|c| order.iter().position(|n| *n == c.name).unwrap_or(order.len()));
    all
}

// ---- system checks -------------------------------------------------------------

pub fn model_files(config: &Config) -> Check {
    const NAME: &str = "model-files";
    if !config.has_camera() {
        return Check::pass(NAME, "no model in use (camera.source = none)");
    }
    let fix =
        "reinstall the model (apt install --reinstall sparkd) or push it again; check model.manifest in the config";
    let model = match Model::load(&config.model.manifest) {
        Ok(m) => m,
        Err(e) => return Check::fail(NAME, chain(&e), fix),
    };
    let m = &model.manifest;
    let onnx = match model.read_onnx() {
        Ok(bytes) => format!("{} ok ({})", m.onnx.file.display(), human_bytes(bytes.len() as u64)),
        Err(e) => return Check::fail(NAME, chain(&e), fix),
    };
    let hef = match model.read_hef() {
        None => "no HEF (CPU only)".to_string(),
        Some(Ok(bytes)) => format!(
            "{} ok ({})",
            m.hef.as_ref().map(|h| h.file.display().to_string()).unwrap_or_default(),
            human_bytes(bytes.len() as u64)
        ),
        Some(Err(e)) if config.hailo.enabled => return Check::fail(NAME, chain(&e), fix),
        Some(Err(e)) => return Check::warn(NAME, format!("{} (unused: hailo.enabled = false)", chain(&e)), fix),
    };
    Check::pass(NAME, format!("{} {}: checksums match; {onnx}, {hef}", m.name, m.version))
}

pub fn hailo_device(config: &Config) -> Check {
    const NAME: &str = "hailo-device";
    if !config.hailo.enabled {
        return Check::pass(NAME, "not used (hailo.enabled = false)");
    }
    if Path::new(HAILO_DEVICE).exists() {
        Check::pass(NAME, format!("{HAILO_DEVICE} present"))
    } else {
        Check::warn(
            NAME,
            format!("{HAILO_DEVICE} missing: inference runs on the CPU"),
            "check the Hailo-8 is seated and its driver loaded: lsmod | grep hailo_pci; dmesg | grep -i hailo",
        )
    }
}

/// Library and driver versions. Loads HailoRT once per process and keeps it
/// loaded (unloading a C++ runtime is never worth the risk).
pub fn hailort(config: &Config) -> Check {
    if !config.hailo.enabled {
        return Check::pass("hailort", "not used (hailo.enabled = false)");
    }
    let explicit = (!config.hailo.library.as_os_str().is_empty()).then(|| config.hailo.library.clone());
    let hef_version =
        Model::load(&config.model.manifest).ok().and_then(|m| m.manifest.hef.and_then(|h| h.hailort_version));
    judge_hailort(
        load_hailort(explicit.as_deref()),
        hailo_sys::driver_version(),
        Path::new(HAILO_DEVICE).exists(),
        hef_version.as_deref(),
    )
}

/// What loading HailoRT found: the library's path and version, or why not.
#[derive(Debug, Clone, PartialEq)]
pub enum HailoLoad {
    Loaded { path: PathBuf, version: String },
    NotFound(String),
    Unusable(String),
}

fn load_hailort(explicit: Option<&Path>) -> HailoLoad {
    static CACHE: Mutex<Vec<(Option<PathBuf>, PathBuf, String)>> = Mutex::new(Vec::new());
    let key = explicit.map(Path::to_path_buf);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, path, version)) = cache.iter().find(|(k, _, _)| *k == key) {
        return HailoLoad::Loaded { path: path.clone(), version: version.clone() };
    }
    // `load` sets HAILORT_LOGGER_PATH when it is unset, which is only sound
    // before other threads run; doctor runs late, so it then uses `load_from`,
    // which leaves the environment alone.
    let loaded = if std::env::var_os(hailo_sys::ENV_LOGGER_PATH).is_some() {
        hailo_sys::load(explicit)
    } else {
        hailo_sys::load_from(&hailo_sys::candidates(explicit))
    };
    match loaded {
        Ok((lib, path)) => match hailo_sys::library_version(&lib) {
            Ok(v) => {
                // Keep the library loaded for the life of the process.
                std::mem::forget(lib);
                cache.push((key, path.clone(), v.to_string()));
                HailoLoad::Loaded { path, version: v.to_string() }
            }
            Err(status) => {
                HailoLoad::Unusable(format!("{} did not report its version (status {status})", path.display()))
            }
        },
        Err(e @ hailo_sys::LoadError::NotFound { .. }) => HailoLoad::NotFound(e.to_string()),
        Err(e) => HailoLoad::Unusable(e.to_string()),
    }
}

pub fn judge_hailort(lib: HailoLoad, driver: Option<String>, device: bool, hef_version: Option<&str>) -> Check {
    const NAME: &str = "hailort";
    let same_fix = "install the same version of the hailort and hailort-pcie-driver packages, then reboot";
    let (path, version) = match lib {
        HailoLoad::NotFound(_) if device => {
            return Check::fail(
                NAME,
                format!("{HAILO_DEVICE} is present but the HailoRT library is not installed: CPU only"),
                format!(
                    "apt install hailort (HailoRT {}, the version of the hailo_pci driver)",
                    hailo_sys::SUPPORTED_RANGE
                ),
            );
        }
        HailoLoad::NotFound(_) => {
            return Check::warn(
                NAME,
                "HailoRT library not installed: CPU only",
                format!("for the Hailo-8 install hailort and hailort-pcie-driver {}", hailo_sys::SUPPORTED_RANGE),
            );
        }
        HailoLoad::Unusable(msg) => return Check::fail(NAME, msg, same_fix),
        HailoLoad::Loaded { path, version } => (path, version),
    };
    let mut detail = format!("library {version} ({})", path.display());
    match driver.as_deref() {
        None if device => detail.push_str(", driver version unknown"),
        None => {
            return Check::warn(
                NAME,
                format!("{detail}; driver hailo_pci not loaded"),
                format!("modprobe hailo_pci (package hailort-pcie-driver {version})"),
            );
        }
        Some(d) if d != version => {
            return Check::fail(
                NAME,
                format!("{detail} but driver hailo_pci {d}: HailoRT refuses a driver of another version"),
                same_fix,
            );
        }
        Some(d) => detail.push_str(&format!(", driver {d}")),
    }
    if let Some(want) = hef_version {
        let mm = version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
        if want != mm && !want.starts_with(&format!("{mm}.")) {
            return Check::fail(
                NAME,
                format!("{detail}; the model's HEF was compiled for HailoRT {want}"),
                format!("push a HEF compiled for HailoRT {mm}, or install HailoRT {want}"),
            );
        }
    }
    Check::pass(NAME, detail)
}

/// Every configured camera; with several, one line each (`id: ...`) and
/// the worst status.
pub fn camera(config: &Config) -> Check {
    let cams = config.cameras();
    if let [one] = cams {
        return camera_one(one);
    }
    let checks: Vec<Check> = cams.iter().map(camera_one).collect();
    let status = checks.iter().map(|c| c.status).max().unwrap_or(CheckStatus::Pass);
    let detail =
        cams.iter().zip(&checks).map(|(c, k)| format!("{}: {}", c.id, k.detail)).collect::<Vec<_>>().join("; ");
    let fix = cams.iter().zip(&checks).find_map(|(c, k)| k.fix.as_ref().map(|f| format!("{}: {f}", c.id)));
    Check { name: "camera".into(), status, detail, fix }
}

fn camera_one(cam: &CameraConfig) -> Check {
    const NAME: &str = "camera";
    match cam.source {
        CameraSource::None => Check::pass(NAME, "no camera configured (camera.source = none)"),
        CameraSource::Replay => match crate::sources::camera::replay::list_images(&cam.replay_dir) {
            Ok(files) => Check::pass(NAME, format!("replay of {} images in {}", files.len(), cam.replay_dir.display())),
            Err(e) => Check::fail(NAME, chain(&e), "check camera.replay_dir in the config"),
        },
        CameraSource::MjpegFile => match crate::sources::camera::mjpeg_file::probe(&cam.mjpeg_file) {
            Ok(n) => Check::pass(NAME, format!("replay of {n} MJPEG frames in {}", cam.mjpeg_file.display())),
            Err(e) => Check::fail(NAME, chain(&e), "check camera.mjpeg_file in the config"),
        },
        CameraSource::V4l => {
            let dev = &cam.device;
            // Opening a V4L2 node does not disturb a capture in progress.
            match std::fs::File::open(dev) {
                Ok(_) => Check::pass(NAME, format!("{} opens", dev.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::fail(
                    NAME,
                    format!("{} does not exist", dev.display()),
                    "plug the camera in and check it is seen: ls /dev/video*; v4l2-ctl --list-devices",
                ),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::fail(
                    NAME,
                    format!("{}: permission denied", dev.display()),
                    "the sparkd user needs group video (the package's sysusers file adds it)",
                ),
                Err(e) => Check::fail(NAME, format!("{}: {e}", dev.display()), "check the camera with v4l2-ctl --all"),
            }
        }
    }
}

pub fn microphone(config: &Config) -> Check {
    const NAME: &str = "microphone";
    if !config.audio.enabled {
        return Check::pass(NAME, "audio disabled (audio.enabled = false)");
    }
    let cards = std::fs::read_to_string("/proc/asound/cards").unwrap_or_default();
    let capture: Vec<String> = std::fs::read_dir("/dev/snd")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("pcmC") && n.ends_with('c'))
                .collect()
        })
        .unwrap_or_default();
    judge_microphone(&cards, capture, &config.audio.device)
}

pub fn judge_microphone(cards: &str, mut capture: Vec<String>, device: &str) -> Check {
    const NAME: &str = "microphone";
    let fix = "plug the USB microphone in and check it is listed: arecord -l";
    if cards.trim().is_empty() || cards.contains("no soundcards") {
        return Check::fail(NAME, "no ALSA sound card", fix);
    }
    if capture.is_empty() {
        return Check::fail(NAME, "sound card present but no capture device", fix);
    }
    capture.sort();
    Check::pass(NAME, format!("capture devices {} (ALSA device {device:?})", capture.join(", ")))
}

pub fn clock(now_s: u64, floor_s: u64) -> Check {
    if now_s < floor_s {
        Check::fail(
            "clock",
            format!("the clock says {}, before this build ({})", utc(now_s), utc(floor_s)),
            "set the time: timedatectl set-ntp true and let NTP reach its server (or check the RTC battery)",
        )
    } else {
        Check::pass(
            "clock",
            format!("{} (after this build's date, {})", utc(now_s), utc(floor_s).get(..10).unwrap_or("")),
        )
    }
}

pub fn ntp(synchronized: bool) -> Check {
    if synchronized {
        Check::pass("ntp", "systemd-timesyncd has synchronized the clock")
    } else {
        Check::warn(
            "ntp",
            format!("NTP synchronization not confirmed ({TIMESYNC_FLAG} absent)"),
            "timedatectl timesync-status; timedatectl set-ntp true",
        )
    }
}

/// Free space of the filesystem holding the state directory (or its nearest
/// existing parent), judged against what the daemon itself needs there.
pub fn disk(config: &Config, dir: &Path) -> Check {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => {
                at = Path::new(".");
                break;
            }
        }
    }
    // The outbox's data file already holds its share; only its growth needs
    // free space.
    let stored = std::fs::metadata(dir.join("outbox").join("data.mdb")).map(|m| m.len()).unwrap_or(0);
    let need = DiskNeed {
        outbox_bound: config.store_max_bytes(),
        outbox_stored: stored,
        update_reserve: config.update.reserve_megabytes.saturating_mul(1 << 20),
    };
    match rustix::fs::statvfs(at) {
        Ok(s) => {
            judge_disk(dir, s.f_bavail.saturating_mul(s.f_frsize), s.f_blocks.saturating_mul(s.f_frsize), need)
        }
        Err(e) => Check::fail("disk", format!("statvfs {}: {e}", at.display()), "check the state directory exists"),
    }
}

/// What the daemon may still write to the state filesystem.
#[derive(Debug, Clone, Copy)]
pub struct DiskNeed {
    /// `store.max_megabytes` in bytes.
    pub outbox_bound: u64,
    /// Size of the outbox's data file now.
    pub outbox_stored: u64,
    /// `update.reserve_megabytes` in bytes: staging leaves this untouched.
    pub update_reserve: u64,
}

/// Below this the outbox is about to enter its low-space mode and no update
/// can stage: something else is filling the disk.
const DISK_FAIL_BYTES: u64 = 64 << 20;

/// A share of the disk says nothing on its own (2 GiB free of 250 GiB is
/// plenty for a 1 GiB outbox); what matters is whether the outbox can reach
/// its configured bound with the update reserve still free. Short of that it
/// warns: records will be dropped before the bound the config promises.
pub fn judge_disk(dir: &Path, free: u64, total: u64, need: DiskNeed) -> Check {
    const NAME: &str = "disk";
    let growth = need.outbox_bound.saturating_sub(need.outbox_stored);
    let wanted = growth.saturating_add(need.update_reserve);
    let detail = format!(
        "{} free of {} for {}; the outbox may grow by {} more (store.max_megabytes) plus {} update reserve",
        human_bytes(free),
        human_bytes(total),
        dir.display(),
        human_bytes(growth),
        human_bytes(need.update_reserve)
    );
    let fix = "free space: journalctl --vacuum-size=100M; apt clean; remove old files \
               (or lower store.max_megabytes to what the disk can hold)";
    if free < DISK_FAIL_BYTES {
        Check::fail(NAME, detail, fix)
    } else if free < wanted {
        Check::warn(NAME, detail, fix)
    } else {
        Check::pass(NAME, detail)
    }
}

// ---- live checks ---------------------------------------------------------------

pub fn engine(config: &Config, s: &StatusReport, hailo_node: bool) -> Check {
    const NAME: &str = "engine";
    if !config.has_camera() {
        return Check::pass(NAME, "no inference (camera.source = none)");
    }
    let e = &s.engine;
    let Some(active) = e.active else {
        return Check::fail(
            NAME,
            format!("no engine running{}", e.last_error.as_deref().map(|m| format!(": {m}")).unwrap_or_default()),
            "journalctl -u sparkd -b | grep -i engine",
        );
    };
    let mut detail = format!("{active}, model {}", e.model);
    if e.fallbacks > 0 {
        detail.push_str(&format!(", {} fallbacks to the CPU", e.fallbacks));
    }
    if active == super::protocol::EngineName::OnnxCpu && config.hailo.enabled && hailo_node {
        let why = e.last_error.as_deref().unwrap_or("no error recorded");
        return Check::warn(
            NAME,
            format!("{detail}: running on the CPU although {HAILO_DEVICE} is present ({why})"),
            "see the hailort check; journalctl -u sparkd | grep -i hailo",
        );
    }
    Check::pass(NAME, detail)
}

pub fn inference(config: &Config, s: &StatusReport) -> Check {
    const NAME: &str = "inference";
    if !config.has_camera() {
        return Check::pass(NAME, "no inference (camera.source = none)");
    }
    let i = &s.inference;
    let last = s.engine.last_error.as_deref().unwrap_or("-");
    let fix = "journalctl -u sparkd -g 'inference failed'";
    if i.failed > 0 && i.total == 0 {
        return Check::fail(NAME, format!("all {} inferences failed; last error: {last}", i.failed), fix);
    }
    if i.failed > 0 {
        return Check::warn(
            NAME,
            format!("{} of {} inferences failed; last error: {last}", i.failed, i.failed + i.total),
            fix,
        );
    }
    Check::pass(NAME, format!("{} inferences, last took {:.1} ms", i.total, i.last_latency_ms))
}

pub fn frames(config: &Config, s: &StatusReport) -> Check {
    const NAME: &str = "frames";
    if !config.has_camera() {
        return Check::pass(NAME, "no camera");
    }
    let i = &s.inference;
    if i.frames_captured == 0 && s.uptime_s >= 10 {
        return Check::fail(
            NAME,
            format!("no frame captured in {}", duration(s.uptime_s as f64)),
            "check the camera check above and journalctl -u sparkd -g camera",
        );
    }
    Check::pass(
        NAME,
        format!("{} captured, {} dropped (inference slower than the camera)", i.frames_captured, i.frames_dropped),
    )
}

pub fn vpn(s: &StatusReport) -> Check {
    const NAME: &str = "vpn";
    let l = &s.link;
    let Some(iface) = l.vpn_interface.as_deref() else {
        return Check::pass(NAME, "no VPN gate configured (link.vpn_interface is empty)");
    };
    if l.vpn_up {
        let hs = match l.handshake_age_s {
            Some(a) => format!("handshake {} ago", duration(a as f64)),
            None => "handshake age unknown".into(),
        };
        return Check::pass(NAME, format!("{iface} up, {hs} ({})", l.handshake_source.as_deref().unwrap_or("?")));
    }
    let since = l
        .vpn_down_since_ms
        .map(|t| format!(" for {}", duration(crate::record::now_ms().saturating_sub(t) as f64 / 1000.0)))
        .unwrap_or_default();
    Check::fail(
        NAME,
        format!("{iface} down{since}: {}", l.vpn_last_error.as_deref().unwrap_or("no reason recorded")),
        format!("wg show {iface}; systemctl status wg-quick@{iface}; check the peer's endpoint is reachable"),
    )
}

pub fn broker(config: &Config, s: &StatusReport) -> Check {
    const NAME: &str = "broker";
    let l = &s.link;
    let tls = BrokerUrl::parse(&config.mqtt.url).map(|u| (u.tls, u.host)).unwrap_or((false, String::new()));
    if l.broker_connected {
        let since = crate::record::now_ms().saturating_sub(l.since_ms) as f64 / 1000.0;
        let how = if tls.0 { "TLS handshake and authentication ok" } else { "plain TCP, no TLS" };
        let detail = format!("connected to {} for {} ({how})", l.broker, duration(since));
        let local = matches!(tls.1.as_str(), "127.0.0.1" | "localhost" | "::1");
        if !tls.0 && !local {
            return Check::warn(NAME, detail, "use mqtts:// with mqtt.ca_file: records cross the network unencrypted");
        }
        return Check::pass(NAME, detail);
    }
    if !l.vpn_up {
        return Check::warn(NAME, format!("{}: not tried while the VPN gate is closed", l.broker), "see the vpn check");
    }
    let err = l.last_error.as_deref().unwrap_or("not connected yet");
    Check::fail(NAME, format!("not connected to {}: {err}", l.broker), broker_fix(l.last_error_kind))
}

/// The likeliest fix for an uplink connection error of class `kind`.
pub fn broker_fix(kind: Option<BrokerErrorKind>) -> String {
    match kind {
        Some(BrokerErrorKind::Tls) => {
            "check mqtt.ca_file, mqtt.tls_server_name and the device clock (see the clock check)".into()
        }
        Some(BrokerErrorKind::Auth) => {
            "check mqtt.username and the password in /etc/sparkd/credentials/mqtt-password, then systemctl restart sparkd"
                .into()
        }
        Some(BrokerErrorKind::Refused | BrokerErrorKind::Protocol) => {
            "the broker answered but refused the session: check its log and its MQTT 3.1.1 listener on mqtt.url".into()
        }
        Some(BrokerErrorKind::Network) | None => {
            "check the broker is up and reachable from here: mosquitto_sub -h HOST -p PORT -t '$SYS/#' -C 1 (and mqtt.url)"
                .into()
        }
    }
}

pub fn outbox(s: &StatusReport) -> Check {
    const NAME: &str = "outbox";
    let q = &s.queue;
    let backlog = format!(
        "{} pending ({}), oldest {}",
        q.pending,
        human_bytes(q.bytes),
        q.oldest_age_s.map(|a| format!("{} old", duration(a))).unwrap_or_else(|| "-".into())
    );
    let link_fix = "check the link (sparkctl link), then sparkctl sync --wait";
    if q.disk_low {
        return Check::fail(
            NAME,
            format!("{backlog}; filesystem nearly full: new records replace old ones"),
            "see the disk check",
        );
    }
    if s.records_lost > 0 {
        return Check::fail(
            NAME,
            format!("{backlog}; {} records could not be stored", s.records_lost),
            "journalctl -u sparkd -g 'not stored'",
        );
    }
    match q.oldest_age_s {
        Some(a) if a > 86_400.0 => return Check::fail(NAME, backlog, link_fix),
        Some(a) if a > 900.0 => return Check::warn(NAME, backlog, link_fix),
        _ => {}
    }
    if q.space_errors > 0 || q.dropped > 0 {
        return Check::warn(
            NAME,
            format!("{backlog}; retention dropped {} records, {} space errors", q.dropped, q.space_errors),
            "raise store.max_megabytes or free disk space; check the link keeps up",
        );
    }
    Check::pass(NAME, backlog)
}

// ---- helpers -------------------------------------------------------------------

pub use crate::error_chain as chain;

/// `1.5 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", U[i]) }
}

/// `42 s`, `3 min`, `2 h 5 min`, `3 days 4 h`.
pub fn duration(s: f64) -> String {
    let s = s.max(0.0);
    if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        format!("{:.0} min", (s / 60.0).floor())
    } else if s < 86_400.0 {
        let h = (s / 3600.0).floor();
        format!("{h:.0} h {:.0} min", ((s - h * 3600.0) / 60.0).floor())
    } else {
        let d = (s / 86_400.0).floor();
        format!("{d:.0} days {:.0} h", ((s - d * 86_400.0) / 3600.0).floor())
    }
}

/// `2026-11-23 14:05 UTC` from Unix seconds (proleptic Gregorian calendar).
pub fn utc(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::CheckStatus;

    #[test]
    fn utc_dates_are_right() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(SOURCE_FLOOR_S), "2026-11-23 00:00 UTC");
        assert_eq!(utc(951_782_400 + 3_723), "2000-02-29 01:02 UTC");
    }

    #[test]
    fn a_clock_before_the_build_fails_and_says_both_dates() {
        let c = clock(1_000_000_000, SOURCE_FLOOR_S);
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(c.detail.contains("2001-09-09") && c.detail.contains("2026-11-23"), "{}", c.detail);
        assert_eq!(clock(SOURCE_FLOOR_S + 5, SOURCE_FLOOR_S).status, CheckStatus::Pass);
        assert!(build_floor_s() >= SOURCE_FLOOR_S);
    }

    #[test]
    fn disk_is_judged_against_the_outbox_bound_not_a_share_of_the_disk() {
        let (mib, gib) = (1u64 << 20, 1u64 << 30);
        let need = DiskNeed { outbox_bound: gib, outbox_stored: 100 * mib, update_reserve: 64 * mib };
        // 3 GiB free of 250 GiB (1%) holds a 1 GiB outbox: pass.
        assert_eq!(judge_disk(Path::new("/x"), 3 * gib, 250 * gib, need).status, CheckStatus::Pass);
        // Enough for the remaining growth plus the reserve, exactly: pass.
        assert_eq!(judge_disk(Path::new("/x"), 988 * mib, 250 * gib, need).status, CheckStatus::Pass);
        // Short of it: the outbox would drop records early.
        let short = judge_disk(Path::new("/x"), 987 * mib, 250 * gib, need);
        assert_eq!(short.status, CheckStatus::Warn);
        assert!(short.detail.contains("924.0 MiB") && short.detail.contains("store.max_megabytes"), "{}", short.detail);
        // A full outbox needs only the reserve.
        let full = DiskNeed { outbox_stored: gib, ..need };
        assert_eq!(judge_disk(Path::new("/x"), 100 * mib, 250 * gib, full).status, CheckStatus::Pass);
        assert_eq!(judge_disk(Path::new("/x"), 63 * mib, 250 * gib, full).status, CheckStatus::Fail);
        assert_eq!(judge_disk(Path::new("/x"), 0, 0, need).status, CheckStatus::Fail);
    }

    fn loaded(v: &str) -> HailoLoad {
        HailoLoad::Loaded { path: "/usr/lib/libhailort.so.4.23.0".into(), version: v.into() }
    }

    #[test]
    fn hailort_library_and_driver_must_match() {
        let ok = judge_hailort(loaded("4.23.0"), Some("4.23.0".into()), true, Some("4.23.0"));
        assert_eq!(ok.status, CheckStatus::Pass, "{ok:?}");
        let bad = judge_hailort(loaded("4.23.0"), Some("4.20.0".into()), true, None);
        assert_eq!(bad.status, CheckStatus::Fail);
        assert!(bad.detail.contains("4.20.0") && bad.fix.unwrap().contains("same version"));
        let hef = judge_hailort(loaded("4.23.0"), Some("4.23.0".into()), true, Some("4.21.0"));
        assert_eq!(hef.status, CheckStatus::Fail);
        assert!(hef.detail.contains("4.21.0"));
    }

    #[test]
    fn missing_hailort_is_a_warning_without_a_device_and_a_failure_with_one() {
        let nf = || HailoLoad::NotFound("not found".into());
        assert_eq!(judge_hailort(nf(), None, false, None).status, CheckStatus::Warn);
        assert_eq!(judge_hailort(nf(), None, true, None).status, CheckStatus::Fail);
        assert_eq!(judge_hailort(loaded("4.23.0"), None, false, None).status, CheckStatus::Warn);
    }

    #[test]
    fn microphone_needs_a_capture_node() {
        assert_eq!(judge_microphone("--- no soundcards ---", vec![], "default").status, CheckStatus::Fail);
        assert_eq!(judge_microphone(" 1 [Mic]: USB-Audio", vec![], "default").status, CheckStatus::Fail);
        let ok = judge_microphone(" 1 [Mic]: USB-Audio", vec!["pcmC1D0c".into()], "default");
        assert_eq!(ok.status, CheckStatus::Pass);
    }

    #[test]
    fn broker_fix_follows_the_error() {
        assert!(broker_fix(Some(BrokerErrorKind::Tls)).contains("ca_file"));
        assert!(broker_fix(Some(BrokerErrorKind::Auth)).contains("password"));
        assert!(broker_fix(Some(BrokerErrorKind::Network)).contains("reachable"));
        assert!(broker_fix(None).contains("reachable"));
        assert!(broker_fix(Some(BrokerErrorKind::Refused)).contains("refused"));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(42.4), "42 s");
        assert_eq!(duration(185.0), "3 min");
        assert_eq!(duration(7500.0), "2 h 5 min");
        assert_eq!(duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3 days 4 h");
    }
}
