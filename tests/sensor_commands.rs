//! The technician's sensor commands against the real `sparkd`:
//! `sparkctl camera list`, `sparkctl camera snapshot FILE` and
//! `sparkctl mic level`, their `--json`, and exit codes 0/1/2/3.
//!
//! - Snapshots come from the replay source and from an MJPEG recording
//!   selected in the config (`camera.source = "mjpeg-file"`), so the picture
//!   the model gets can be checked pixel by pixel.
//! - The build machines have no camera: `camera list` must say so clearly.
//! - The microphone is an ALSA userspace PCM, as in tests/audio_alsa.rs: a
//!   `type file` PCM whose `infile` is a FIFO this test feeds in real time
//!   (20 ms of 16 kHz samples every 20 ms), so the daemon hears silence or
//!   speech (espeak-ng) when the test says. Needs espeak-ng, sox and the
//!   Silero VAD model (scripts/setup.sh).

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::sparkctl_json as json;
use common::tmux::Tmux;
use common::*;
use image::codecs::jpeg::JpegEncoder;
use spark_edge::control::protocol::{self, MicLevelReport, Request, Response};
use spark_edge::sources::audio::SILERO_VAD_SHA256;

/// The model's input size from the demo manifest.
fn model_input_size() -> (u32, u32) {
    let text = std::fs::read_to_string(repo().join("models/centerface.toml")).expect("models/centerface.toml");
    let v: toml::Value = toml::from_str(&text).expect("manifest TOML");
    let dim = |k: &str| v["input"][k].as_integer().expect("input size") as u32;
    (dim("width"), dim("height"))
}

fn read_png(path: &Path) -> image::RgbImage {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).expect("PNG decodes").to_rgb8()
}

/// Starts `sparkd` on `cfg`'s config with the `[camera]` lines edited by
/// `edit` (the harness writes `source = "replay"`).
fn start_edited(cfg: &DaemonConfig, edit: impl Fn(String) -> String) -> Daemon {
    let text = edit(std::fs::read_to_string(cfg.write()).expect("config"));
    let path = cfg.dir.path().join("sparkd-edited.toml");
    std::fs::write(&path, text).expect("write config");
    let log = cfg.dir.path().join("sparkd.log");
    let child = Command::new(sparkd_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn sparkd");
    let d = Daemon { child, log };
    let sock = cfg.socket();
    wait_for(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(&sock).ok())
        .unwrap_or_else(|| panic!("sparkd did not open its socket; log:\n{}", d.log_text()));
    d
}

#[test]
fn snapshot_writes_the_model_input_as_png_and_refuses_to_overwrite_without_force() {
    let broker = Broker::start();
    let cfg = DaemonConfig::new(&broker.url());
    let d = Daemon::start(&cfg);
    let s = cfg.socket();
    let shot = cfg.dir.path().join("shot.png");
    let shot_arg = shot.to_str().unwrap();

    let r = json(&s, &["camera", "snapshot", shot_arg], 0);
    let (w, h) = model_input_size();
    assert_eq!(read_png(&shot).dimensions(), (w, h), "the PNG has the model's input size");
    assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(w as u64), Some(h as u64)), "{r}");
    assert_eq!(r["resize"], "letterbox");
    assert!(r["model"].as_str().unwrap().starts_with("centerface"), "{r}");
    let origin = r["frame"]["origin"].as_str().unwrap();
    assert!(cfg.images.join(origin).exists(), "frame origin {origin:?} is not a replayed image: {r}");
    assert!(r["content_width"].as_u64() <= Some(w as u64) && r["content_height"].as_u64() <= Some(h as u64));

    // An existing file is refused (usage error) and left alone ...
    std::fs::write(&shot, b"keep me").unwrap();
    let (code, out, err) = sparkctl(&s, &["camera", "snapshot", shot_arg]);
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&shot).unwrap(), b"keep me");
    // ... unless --force; human output names the file and the model.
    let (code, out, err) = sparkctl(&s, &["camera", "snapshot", shot_arg, "--force"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("shot.png") && out.contains("centerface"), "{out}");
    assert_eq!(read_png(&shot).dimensions(), (w, h));
    // A missing directory is a usage error.
    let (code, _, err) = sparkctl(&s, &["camera", "snapshot", "/nonexistent-dir/x.png"]);
    assert_eq!(code, 2, "{err}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

/// A recording of `n` solid-colour JPEG frames of `w`x`h`.
fn mjpeg_recording(path: &Path, w: u32, h: u32, colour: [u8; 3], n: usize) {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(colour));
    let mut frame = Vec::new();
    JpegEncoder::new_with_quality(&mut frame, 95).encode_image(&img).unwrap();
    std::fs::write(path, frame.repeat(n)).unwrap();
}

#[test]
fn snapshot_of_an_mjpeg_recording_from_the_config_is_letterboxed_as_the_model_sees_it() {
    let broker = Broker::start();
    let cfg = DaemonConfig::new(&broker.url());
    // 16:9 frames into the 4:3 model input: scaled to the width, padded below.
    let clip = cfg.dir.path().join("clip.mjpeg");
    let colour = [200u8, 60, 30];
    mjpeg_recording(&clip, 320, 180, colour, 3);
    let d = start_edited(&cfg, |t| {
        t.replace("source = \"replay\"", &format!("source = \"mjpeg-file\"\nmjpeg_file = \"{}\"", clip.display()))
    });
    let s = cfg.socket();
    let shot = cfg.dir.path().join("letterbox.png");

    let r = json(&s, &["camera", "snapshot", shot.to_str().unwrap()], 0);
    let (w, h) = model_input_size();
    let content_h = 180 * w / 320;
    assert_eq!(r["frame"]["origin"], "clip.mjpeg", "{r}");
    assert_eq!((r["frame"]["width"].as_u64(), r["frame"]["height"].as_u64()), (Some(320), Some(180)));
    assert_eq!((r["content_width"].as_u64(), r["content_height"].as_u64()), (Some(w as u64), Some(content_h as u64)));
    let img = read_png(&shot);
    assert_eq!(img.dimensions(), (w, h));
    // The frame's colour (through JPEG) fills the top; the manifest's
    // pad_value (0) fills the rest.
    for (x, y) in [(5, 5), (w / 2, content_h / 2), (w - 5, content_h - 5)] {
        let p = img.get_pixel(x, y).0;
        for c in 0..3 {
            assert!((p[c] as i32 - colour[c] as i32).abs() <= 8, "pixel ({x},{y}) is {p:?}, frame colour {colour:?}");
        }
    }
    for (x, y) in [(0, content_h + 2), (w / 2, h - 1), (w - 1, (content_h + h) / 2)] {
        assert_eq!(img.get_pixel(x, y).0, [0, 0, 0], "padding at ({x},{y})");
    }
    assert!(d.log_text().contains("replaying an MJPEG recording"), "{}", d.log_text());
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn camera_list_on_a_machine_without_cameras_says_so_and_exits_1() {
    let present: Vec<_> = std::fs::read_dir("/dev")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("video"))
        .map(|e| e.path())
        .collect();
    assert!(present.is_empty(), "this test describes a machine without cameras; found {present:?}");
    let broker = Broker::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true;
    let d = Daemon::start(&cfg);
    let s = cfg.socket();

    let (code, out, err) = sparkctl(&s, &["camera", "list"]);
    assert_eq!(code, 1, "a failed check: no camera\nstdout: {out}\nstderr: {err}");
    assert!(out.contains("no V4L2 capture devices found"), "{out}");
    assert!(out.contains("as sparkd sees /dev"), "{out}");
    assert!(!out.contains('\x1b'), "colour codes into a pipe: {out:?}");

    let r = json(&s, &["camera", "list"], 1);
    assert_eq!(r["devices"], serde_json::json!([]), "{r}");
    assert_eq!(r["capture_devices"], 0);
    assert_eq!(r["seen_by"], "sparkd");
    assert_eq!(r["source"], "none");
    assert_eq!(r["configured_device"], "/dev/video0");

    // --local looks without the daemon, with this user's rights.
    let r = json(Path::new("/nonexistent/sparkd.sock"), &["camera", "list", "--local"], 1);
    assert_eq!((r["seen_by"].as_str(), r["capture_devices"].as_u64()), (Some("sparkctl"), Some(0)), "{r}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn sensor_commands_name_the_setting_that_turns_the_sensor_off() {
    let broker = Broker::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true; // and audio is off by default
    let d = Daemon::start(&cfg);
    let s = cfg.socket();

    let (code, out, err) = sparkctl(&s, &["mic", "level", "--seconds", "1"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("audio.enabled"), "{err}");
    let r = json(&s, &["mic", "level"], 1);
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("audio.enabled"), "{r}");

    let shot = cfg.dir.path().join("none.png");
    let (code, _, err) = sparkctl(&s, &["camera", "snapshot", shot.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("camera.source"), "{err}");
    assert!(!shot.exists(), "no file is written when there is no frame");
    // --seconds is bounded: a usage error.
    let (code, _, err) = sparkctl(&s, &["mic", "level", "--seconds", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn sensor_commands_exit_3_when_the_daemon_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("sparkd.sock");
    let shot = dir.path().join("x.png");
    for args in [&["camera", "list"][..], &["camera", "snapshot", shot.to_str().unwrap()], &["mic", "level"]] {
        let (code, out, err) = sparkctl(&gone, args);
        assert_eq!(code, 3, "{args:?}\nstdout: {out}\nstderr: {err}");
        assert!(err.contains("cannot reach sparkd"), "{args:?}: {err}");
    }
    let (_, _, err) = sparkctl(&gone, &["camera", "list"]);
    assert!(err.contains("--local"), "the hint names the way without the daemon: {err}");
    let r = json(&gone, &["camera", "list"], 3);
    assert_eq!(r["error"]["code"], "unreachable", "{r}");
    assert!(!shot.exists());
}

// ---- microphone ------------------------------------------------------------------

const RATE: usize = 16_000;
/// 20 ms of 16-bit mono at 16 kHz.
const CHUNK: usize = RATE / 50 * 2;
const SILENCE: u8 = 0;
const SPEECH: u8 = 1;

/// Feeds a FIFO in real time with silence or looped speech, as `mode` says;
/// reopens it whenever ALSA closes and reopens the PCM.
struct FifoMic {
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FifoMic {
    fn start(fifo: PathBuf, speech: Vec<u8>) -> Self {
        let mode = Arc::new(AtomicU8::new(SILENCE));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, st) = (mode.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
            let (mut at, silence) = (0usize, vec![0u8; CHUNK]);
            while !st.load(Ordering::Relaxed) {
                // Fails (ENXIO) until a reader, the ALSA file PCM, opens it.
                let Ok(mut f) = std::fs::OpenOptions::new().write(true).custom_flags(nonblock).open(&fifo) else {
                    // Polls for the reader, with the test's stop flag checked each turn.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let start = Instant::now();
                for n in 1u32.. {
                    if st.load(Ordering::Relaxed) {
                        return;
                    }
                    let chunk = if m.load(Ordering::Relaxed) == SPEECH {
                        let c = &speech[at..at + CHUNK];
                        at = (at + CHUNK) % (speech.len() - CHUNK);
                        c
                    } else {
                        &silence[..]
                    };
                    match f.write(chunk) {
                        Ok(_) => {}
                        // The reader is behind: this chunk is lost, as a full
                        // sound card buffer would lose it.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break, // the reader closed: reopen
                    }
                    // Real-time pacing, as a sound card delivers samples.
                    let due = start + Duration::from_millis(20) * n;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            }
        });
        Self { mode, stop, thread: Some(thread) }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }
}

impl Drop for FifoMic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The daemon's level windows numbered `from` and later (none with `None`),
/// straight over the control protocol.
fn mic_windows(socket: &Path, from: Option<u64>) -> MicLevelReport {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect to the control socket");
    match protocol::call(&mut stream, &Request::MicLevel { from_seq: from }) {
        Ok(Response::MicLevel(r)) => r,
        other => panic!("mic level: {other:?}"),
    }
}

fn run_tool(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/setup.sh for espeak-ng/sox)"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A sentence from espeak-ng as raw 16 kHz mono S16_LE.
fn speech_raw(dir: &Path) -> Vec<u8> {
    let (wav, raw) = (dir.join("speech.wav"), dir.join("speech.raw"));
    run_tool(Command::new("espeak-ng").arg("-w").arg(&wav).arg("Testing the microphone level, one two three four"));
    run_tool(
        Command::new("sox")
            .arg(&wav)
            .args(["-t", "raw", "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer"])
            .arg(&raw),
    );
    std::fs::read(&raw).expect("raw speech")
}

#[test]
fn mic_level_is_higher_for_speech_than_for_silence() {
    let dir = tempfile::tempdir().unwrap();
    let speech = speech_raw(dir.path());
    let fifo = dir.path().join("mic.fifo");
    run_tool(Command::new("mkfifo").arg(&fifo));
    // ALSA's default capture PCM reads the FIFO (tests/audio_alsa.rs reads a file).
    let home = file_pcm_home(dir.path(), &fifo);
    let mic = FifoMic::start(fifo, speech);

    let broker = Broker::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true;
    cfg.extra = format!(
        "[audio]\nenabled = true\ndevice = \"default\"\nmodel = \"{}\"\nmodel_sha256 = \"{SILERO_VAD_SHA256}\"\n",
        repo().join("models/silero_vad.onnx").display()
    );
    let d = Daemon::start_with_env(&cfg, &[("HOME", home.as_os_str())]);
    wait_for(Duration::from_secs(15), || d.log_text().contains("audio capture started").then_some(()))
        .unwrap_or_else(|| panic!("audio did not start; log:\n{}", d.log_text()));
    let s = cfg.socket();

    let quiet = json(&s, &["mic", "level", "--seconds", "2"], 0);
    mic.set(SPEECH);
    // Measure only once the daemon hears the speech (the silence already
    // queued in the FIFO and the PCM has drained).
    let mut from = mic_windows(&s, None).next_seq;
    wait_for(Duration::from_secs(20), || {
        let r = mic_windows(&s, Some(from));
        from = r.next_seq;
        r.windows.iter().any(|w| w.peak_dbfs > -60.0).then_some(())
    })
    .unwrap_or_else(|| panic!("the daemon never heard the speech; log:\n{}", d.log_text()));
    let loud = json(&s, &["mic", "level", "--seconds", "2"], 0);
    eprintln!(
        "silence: rms {} peak {}; speech: rms {} peak {}",
        quiet["rms_dbfs"], quiet["peak_dbfs"], loud["rms_dbfs"], loud["peak_dbfs"]
    );

    for r in [&quiet, &loud] {
        assert_eq!(r["device"], "default");
        assert_eq!((r["sample_rate"].as_u64(), r["window_ms"].as_u64()), (Some(16_000), Some(100)), "{r}");
        let samples = r["samples"].as_array().unwrap();
        assert!(!samples.is_empty(), "no level windows: {r}");
        assert!(samples.iter().all(|w| w["rms_dbfs"].is_f64() && w["peak_dbfs"].is_f64() && w["seq"].is_u64()));
    }
    let (q_rms, q_peak) = (quiet["rms_dbfs"].as_f64().unwrap(), quiet["peak_dbfs"].as_f64().unwrap());
    let (l_rms, l_peak) = (loud["rms_dbfs"].as_f64().unwrap(), loud["peak_dbfs"].as_f64().unwrap());
    assert!(q_peak <= -90.0, "silence peaks at {q_peak} dBFS");
    assert!(l_rms > q_rms + 40.0, "speech rms {l_rms} dBFS is not well above silence {q_rms} dBFS");
    assert!(l_peak > -30.0, "speech peaks only at {l_peak} dBFS");

    // Without --json and without a terminal: plain lines and a summary.
    let (code, out, err) = sparkctl(&s, &["mic", "level", "--seconds", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("rms ") && l.contains("peak")), "{out}");
    assert!(out.contains("default over 1.0 s"), "{out}");
    assert!(!out.contains('\x1b') && !out.contains('\r'), "terminal codes into a pipe: {out:?}");

    // On a terminal: one bar line redrawn in place, then the summary.
    let tmux =
        Tmux::run("mic", &format!("{} --socket {} mic level --seconds 2", sparkctl_bin().display(), s.display()));
    let screen = tmux.wait_for("__DONE__", Duration::from_secs(20));
    eprintln!("terminal:\n{}", screen.trim_end());
    assert!(screen.contains("__DONE__ 0"), "{screen}");
    let bars: Vec<&str> = screen.lines().filter(|l| l.starts_with("rms ")).collect();
    assert_eq!(bars.len(), 1, "the meter scrolled instead of redrawing one line:\n{screen}");
    let bar = bars[0];
    assert!(bar.contains("dBFS") && bar.contains("[#") && bar.contains('|') && bar.ends_with(']'), "{bar}");
    assert!(screen.contains("default over 2.0 s"), "{screen}");
    drop(d);
    let _ = std::io::stderr().flush();
}
