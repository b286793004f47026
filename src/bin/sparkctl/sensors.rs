//! `sparkctl camera list|snapshot` and `sparkctl mic level`: the technician's
//! sensor checks. The daemon does the looking (it has the device rights and
//! holds the devices); this module asks, renders and writes files.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Subcommand;
use spark_edge::control::protocol::{
    CameraDevice, CameraListReport, LevelSample, MicLevelReport, Request, Response, SnapshotReport,
};

use super::{Out, SLOW_TIMEOUT, TIMEOUT, ask, fail_msg, unexpected};

#[derive(Subcommand)]
pub enum CameraAction {
    /// The V4L2 devices (/dev/video*) sparkd sees: driver, card, bus,
    /// formats with frame sizes and rates. Exit 1 when there is no capture
    /// device.
    List {
        /// Look with this user's own rights instead of asking sparkd (for
        /// bring-up with the service stopped; may differ from what sparkd sees).
        #[arg(long)]
        local: bool,
    },
    /// Write the next camera frame as the model sees it (resized and
    /// letterboxed to the model's input) to FILE as PNG.
    Snapshot {
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        /// A frame of this camera (its `[[camera]] id`); default: the next
        /// frame of any camera.
        #[arg(long, value_name = "ID")]
        camera: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum MicAction {
    /// Live level meter (RMS and peak dBFS) of sparkd's microphone capture.
    Level {
        /// How long to watch.
        #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=60))]
        seconds: u64,
    },
}

pub fn camera(socket: &Path, action: CameraAction, out: &Out) -> ExitCode {
    match action {
        CameraAction::List { local } => camera_list(socket, local, out),
        CameraAction::Snapshot { file, force, camera } => snapshot(socket, &file, force, camera, out),
    }
}

pub fn mic(socket: &Path, action: MicAction, out: &Out) -> ExitCode {
    match action {
        MicAction::Level { seconds } => mic_level(socket, Duration::from_secs(seconds), out),
    }
}

// ---- camera list ---------------------------------------------------------------

fn camera_list(socket: &Path, local: bool, out: &Out) -> ExitCode {
    let (report, seen_by) = if local {
        let found = spark_edge::sources::camera::v4l::inventory(Path::new(spark_edge::control::sensors::DEV_DIR));
        // No daemon asked: nothing is "in use", whatever the config says.
        let camera =
            spark_edge::config::CameraConfig { source: spark_edge::config::CameraSource::None, ..Default::default() };
        (spark_edge::control::sensors::camera_report(found, &[camera]), "sparkctl")
    } else {
        match ask(socket, &Request::CameraList, SLOW_TIMEOUT, out) {
            Ok(Response::Cameras(r)) => (r, "sparkd"),
            Ok(other) => return unexpected(&other),
            Err(code) => {
                if code == ExitCode::from(3) && !out.json {
                    eprintln!("hint: sparkctl camera list --local looks with your own rights, without sparkd");
                }
                return code;
            }
        }
    };
    let capture = report.devices.iter().filter(|d| d.capture).count();
    if out.json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["capture_devices"] = capture.into();
        v["seen_by"] = seen_by.into();
        println!("{v}");
    } else {
        print_cameras(&report, seen_by, out);
    }
    if capture == 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

fn print_cameras(r: &CameraListReport, seen_by: &str, o: &Out) {
    for d in &r.devices {
        print_device(d, o);
    }
    if !r.devices.iter().any(|d| d.capture) {
        let nodes = if r.devices.is_empty() { "no /dev/video* nodes".to_string() } else { "none can capture".into() };
        println!("{}", o.bad(&format!("no V4L2 capture devices found ({nodes}, as {seen_by} sees /dev)")));
        println!(
            "USB camera: plug it in, then check lsusb and dmesg for uvcvideo. CSI camera: run sparkd under \
             libcamerify (docs/sensors.md)."
        );
        if seen_by == "sparkd" {
            println!("sparkd sees devices with its own rights (group video); compare: sparkctl camera list --local");
        }
    } else if seen_by == "sparkctl" {
        println!("(listed with your own rights; sparkd may see more or less: sparkctl camera list)");
    }
}

fn print_device(d: &CameraDevice, o: &Out) {
    for line in device_lines(d, o) {
        println!("{line}");
    }
}

/// One node: a heading line, then one line per pixel format with its sizes.
fn device_lines(d: &CameraDevice, o: &Out) -> Vec<String> {
    if let Some(e) = &d.error {
        return vec![format!("{}  {}", o.bold(&d.path), o.bad(e))];
    }
    let what = match (d.capture, d.in_use) {
        (true, true) => o.good("capture, streaming to sparkd"),
        (true, false) => "capture".to_string(),
        (false, _) => o.warn("not a capture device (e.g. UVC metadata node)"),
    };
    let mut lines = vec![format!("{}  {} ({}, {})  {what}", o.bold(&d.path), d.card, d.driver, d.bus)];
    let w = d.formats.iter().map(|f| f.description.len()).max().unwrap_or(0);
    for f in &d.formats {
        let sizes: Vec<String> = f
            .sizes
            .iter()
            .map(|s| match &s.range {
                Some(r) => format!(
                    "{}x{} to {}x{} (steps {}x{})",
                    s.width, s.height, r.max_width, r.max_height, r.step_width, r.step_height
                ),
                None if s.fps.is_empty() => format!("{}x{}", s.width, s.height),
                None => format!(
                    "{}x{} @ {} fps",
                    s.width,
                    s.height,
                    s.fps.iter().map(|f| format!("{f}")).collect::<Vec<_>>().join("/")
                ),
            })
            .collect();
        let mark = if f.supported { String::new() } else { o.warn(" (sparkd does not convert this)") };
        let more = if f.truncated { ", ..." } else { "" };
        lines.push(format!("  {:<4}  {:<w$}  {}{more}{mark}", f.fourcc, f.description, sizes.join(", ")));
    }
    lines
}

// ---- camera snapshot -----------------------------------------------------------

fn snapshot(socket: &Path, file: &Path, force: bool, camera: Option<String>, out: &Out) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("sparkctl: {msg}");
        ExitCode::from(2)
    };
    if file.exists() && !force {
        return usage(format!("{} exists; pass --force to replace it", file.display()));
    }
    if file.is_dir() {
        return usage(format!("{} is a directory", file.display()));
    }
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return usage(format!("{}: no such directory", dir.display()));
    }
    let r = match ask(socket, &Request::CameraSnapshot { camera }, SLOW_TIMEOUT, out) {
        Ok(Response::Snapshot(r)) => r,
        Ok(other) => return unexpected(&other),
        Err(code) => return code,
    };
    let png = match encode_png(&r) {
        Ok(p) => p,
        Err(e) => return fail_msg(&e),
    };
    if let Err(e) = write_file(file, &png, force) {
        return fail_msg(&format!("writing {}: {e}", file.display()));
    }
    if out.json {
        println!(
            "{}",
            serde_json::json!({
                "path": file,
                "camera": r.camera,
                "bytes": png.len(),
                "width": r.width,
                "height": r.height,
                "model": r.model,
                "resize": r.resize,
                "content_width": r.content_width,
                "content_height": r.content_height,
                "frame": {
                    "origin": r.frame_origin,
                    "number": r.frame_number,
                    "width": r.frame_width,
                    "height": r.frame_height,
                    "captured_ms": r.captured_ms,
                },
            })
        );
    } else {
        println!("wrote {}: {}x{}, the input of {} ({})", file.display(), r.width, r.height, r.model, r.resize);
        let padding = if (r.content_width, r.content_height) == (r.width, r.height) {
            String::new()
        } else {
            "; the rest is padding".to_string()
        };
        println!(
            "frame #{} from {} ({}x{}) fills {}x{} at the top left{padding}",
            r.frame_number, r.frame_origin, r.frame_width, r.frame_height, r.content_width, r.content_height
        );
    }
    ExitCode::SUCCESS
}

/// The report's RGB rows as PNG bytes.
fn encode_png(r: &SnapshotReport) -> Result<Vec<u8>, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&r.rgb_base64)
        .map_err(|e| format!("sparkd sent a snapshot that is not base64: {e}"))?;
    let img = image::RgbImage::from_raw(r.width, r.height, raw)
        .ok_or_else(|| format!("sparkd sent a snapshot whose size is not {}x{} RGB", r.width, r.height))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| format!("encoding the PNG: {e}"))?;
    Ok(png)
}

/// Without `force` the file must not exist (checked again at creation, so
/// a file appearing meanwhile is not overwritten); with it, the new file
/// replaces the old one in one rename.
fn write_file(file: &Path, bytes: &[u8], force: bool) -> std::io::Result<()> {
    if !force {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(file)?;
        return f.write_all(bytes);
    }
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = file.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, file));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

// ---- mic level -----------------------------------------------------------------

/// Poll interval: a few windows per answer, a smooth bar.
const POLL: Duration = Duration::from_millis(100);
/// The bar spans this many dB below full scale.
const BAR_RANGE_DB: f32 = 60.0;
const BAR_WIDTH: usize = 40;

fn mic_level(socket: &Path, seconds: Duration, out: &Out) -> ExitCode {
    let tty = std::io::stdout().is_terminal() && !out.json;
    let mut report = match ask(socket, &Request::MicLevel { from_seq: None }, TIMEOUT, out) {
        Ok(Response::MicLevel(r)) => r,
        Ok(other) => return unexpected(&other),
        Err(code) => return code,
    };
    let started = Instant::now();
    let mut samples: Vec<LevelSample> = Vec::new();
    let mut missed = 0u64;
    while started.elapsed() < seconds {
        std::thread::sleep(POLL);
        let next = report.next_seq;
        report = match ask(socket, &Request::MicLevel { from_seq: Some(next) }, TIMEOUT, out) {
            Ok(Response::MicLevel(r)) => r,
            Ok(other) => return unexpected(&other),
            Err(code) => return code,
        };
        // The daemon keeps a few seconds of windows; a gap means we lagged.
        missed += report.windows.first().map_or(0, |w| w.seq.saturating_sub(next));
        for w in &report.windows {
            if tty {
                print!("\r{}\x1b[K", meter_line(w, out));
                let _ = std::io::stdout().flush();
            } else if !out.json {
                println!("rms {:>6.1} dBFS  peak {:>6.1} dBFS", w.rms_dbfs, w.peak_dbfs);
            }
        }
        samples.extend_from_slice(&report.windows);
    }
    if tty {
        println!();
    }
    let summary = Summary::of(&samples);
    if out.json {
        let mut v = serde_json::json!({
            "device": report.device,
            "pcm": report.pcm,
            "sample_rate": report.sample_rate,
            "window_ms": report.window_ms,
            "seconds": seconds.as_secs(),
            "samples": samples,
            "missed_windows": missed,
        });
        if let Some(s) = &summary {
            v["rms_dbfs"] = s.rms_dbfs.into();
            v["peak_dbfs"] = s.peak_dbfs.into();
        } else {
            v["error"] = no_audio(&report, seconds).into();
        }
        println!("{v}");
    }
    let Some(s) = summary else {
        if !out.json {
            eprintln!("sparkctl: {}", no_audio(&report, seconds));
        }
        return ExitCode::from(1);
    };
    if !out.json {
        println!(
            "{} over {:.1} s ({} windows of {} ms, {} at {} Hz): rms {:.1} dBFS, peak {:.1} dBFS",
            report.device,
            seconds.as_secs_f64(),
            samples.len(),
            report.window_ms,
            report.pcm.as_deref().unwrap_or("?"),
            report.sample_rate,
            s.rms_dbfs,
            s.peak_dbfs
        );
        if s.peak_dbfs >= -0.1 {
            println!("{}", out.warn("clipping: the input reaches full scale; lower the capture gain (alsamixer)"));
        } else if s.rms_dbfs < -60.0 {
            println!("{}", out.warn("very quiet: is the microphone muted, or audio.device the wrong input?"));
        }
    }
    ExitCode::SUCCESS
}

fn no_audio(r: &MicLevelReport, seconds: Duration) -> String {
    let why = match &r.pcm {
        None => {
            "the microphone is not open (sparkd keeps retrying: sparkctl status shows audio errors; \
                 journalctl -u sparkd -g microphone)"
        }
        Some(_) => "the capture stream delivered nothing",
    };
    format!("no audio from {:?} in {} s: {why}", r.device, seconds.as_secs())
}

/// Levels over a whole run.
struct Summary {
    /// RMS over all windows (mean power, equal-length windows).
    rms_dbfs: f32,
    peak_dbfs: f32,
}

impl Summary {
    fn of(w: &[LevelSample]) -> Option<Self> {
        if w.is_empty() {
            return None;
        }
        let power = w.iter().map(|s| 10f64.powf(s.rms_dbfs as f64 / 10.0)).sum::<f64>() / w.len() as f64;
        let rms_dbfs = ((10.0 * power.log10()) as f32).max(spark_edge::sources::audio::level::FLOOR_DBFS);
        let peak_dbfs = w.iter().map(|s| s.peak_dbfs).fold(f32::MIN, f32::max);
        Some(Self { rms_dbfs, peak_dbfs })
    }
}

/// `rms -23.4 dBFS  peak -8.1 dBFS  [########........|.......]`
fn meter_line(w: &LevelSample, o: &Out) -> String {
    let pos = |db: f32| (((db + BAR_RANGE_DB) / BAR_RANGE_DB).clamp(0.0, 1.0) * BAR_WIDTH as f32).round() as usize;
    let (fill, peak) = (pos(w.rms_dbfs), pos(w.peak_dbfs).min(BAR_WIDTH.saturating_sub(1)));
    let mut bar: Vec<char> = (0..BAR_WIDTH).map(|i| if i < fill { '#' } else { '.' }).collect();
    if peak >= fill {
        bar[peak] = '|';
    }
    let bar: String = bar.into_iter().collect();
    let bar = if w.peak_dbfs >= -0.1 { o.bad(&bar) } else { bar };
    format!("rms {:>6.1} dBFS  peak {:>6.1} dBFS  [{bar}]", w.rms_dbfs, w.peak_dbfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(rms: f32, peak: f32) -> LevelSample {
        LevelSample { seq: 0, ts_ms: 0, rms_dbfs: rms, peak_dbfs: peak }
    }

    #[test]
    fn meter_fills_to_the_rms_and_marks_the_peak() {
        let o = Out { json: false, color: false };
        let line = meter_line(&s(-30.0, -15.0), &o);
        assert!(line.ends_with(&format!("[{}{}|{}]", "#".repeat(20), ".".repeat(10), ".".repeat(9))), "{line}");
        let silent = meter_line(&s(-120.0, -120.0), &o);
        assert!(silent.contains(&format!("[|{}]", ".".repeat(39))), "{silent}");
    }

    #[test]
    fn a_camera_is_one_heading_and_a_line_per_format() {
        use spark_edge::control::protocol::{CameraFormat, CameraSize, SizeRange};
        let o = Out { json: false, color: false };
        let size = |w, h, fps: &[f64]| CameraSize { width: w, height: h, fps: fps.to_vec(), range: None };
        let d = CameraDevice {
            path: "/dev/video0".into(),
            driver: "uvcvideo".into(),
            card: "HD Webcam".into(),
            bus: "usb-xhci-1.2".into(),
            capture: true,
            in_use: true,
            formats: vec![
                CameraFormat {
                    fourcc: "MJPG".into(),
                    description: "Motion-JPEG".into(),
                    supported: true,
                    sizes: vec![size(640, 480, &[30.0, 15.0]), size(1280, 720, &[29.97])],
                    truncated: true,
                },
                CameraFormat {
                    fourcc: "H264".into(),
                    description: "H.264".into(),
                    supported: false,
                    sizes: vec![CameraSize {
                        width: 32,
                        height: 32,
                        fps: vec![],
                        range: Some(SizeRange { max_width: 1920, max_height: 1080, step_width: 2, step_height: 2 }),
                    }],
                    truncated: false,
                },
            ],
            error: None,
        };
        assert_eq!(
            device_lines(&d, &o),
            [
                "/dev/video0  HD Webcam (uvcvideo, usb-xhci-1.2)  capture, streaming to sparkd",
                "  MJPG  Motion-JPEG  640x480 @ 30/15 fps, 1280x720 @ 29.97 fps, ...",
                "  H264  H.264        32x32 to 1920x1080 (steps 2x2) (sparkd does not convert this)",
            ]
        );
        let broken = CameraDevice { error: Some("cannot open: Permission denied".into()), ..d };
        assert_eq!(device_lines(&broken, &o), ["/dev/video0  cannot open: Permission denied"]);
    }

    #[test]
    fn summary_averages_power_not_decibels() {
        // Two windows at -20 and -120 dBFS: half the power of -20, i.e. -23 dBFS.
        let sum = Summary::of(&[s(-20.0, -6.0), s(-120.0, -120.0)]).unwrap();
        assert!((sum.rms_dbfs - -23.01).abs() < 0.01, "{}", sum.rms_dbfs);
        assert_eq!(sum.peak_dbfs, -6.0);
        assert!(Summary::of(&[]).is_none());
    }
}
