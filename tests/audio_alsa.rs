//! The microphone path for real, without a sound card: ALSA userspace PCMs
//! feed `cpal`, Silero VAD (ONNX Runtime) finds the speech, and the real
//! `sparkd` publishes `speech` events over MQTT.
//!
//! - Library level: an `.asoundrc` in a test `HOME` makes ALSA's default
//!   capture PCM read a raw file (`type file` with `infile`, over the `null`
//!   PCM). That PCM is not paced and repeats stale data after the file ends,
//!   so reads are bounded by sample count. ALSA reads `.asoundrc` once per
//!   process, so the capture runs in a child process of this test binary.
//! - End to end: PulseAudio with a null sink, read through the ALSA `pulse`
//!   plugin, while `pacat` plays the file into the sink: real-time pacing.
//!
//! Needs `espeak-ng`, `sox`, `pulseaudio`, `pulseaudio-utils` and
//! `libasound2-plugins` (scripts/setup.sh installs them) and the Silero VAD
//! model (models/silero_vad.onnx, also from scripts/setup.sh).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use spark_edge::sources::audio::segment::{Segment, SegmentConfig};
use spark_edge::sources::audio::vad::SileroVad;
use spark_edge::sources::audio::{SILERO_VAD_SHA256, capture, detect_segments, samples_to_ms};

const RATE: u32 = 16_000;
const LEAD_SILENCE_S: f64 = 1.0;
const TAIL_SILENCE_S: f64 = 1.5;
const CHILD_OUT: &str = "SPARK_AUDIO_CHILD_OUT";
const CHILD_SAMPLES: &str = "SPARK_AUDIO_CHILD_SAMPLES";

fn ort_library() -> PathBuf {
    repo().join("deps/onnxruntime/libonnxruntime.so")
}

fn vad_model() -> PathBuf {
    repo().join("models/silero_vad.onnx")
}

fn load_vad() -> SileroVad {
    SileroVad::load(&ort_library(), &vad_model(), SILERO_VAD_SHA256)
        .unwrap_or_else(|e| panic!("Silero VAD: {:#} (run scripts/setup.sh)", anyhow::Error::new(e)))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/setup.sh for espeak-ng/sox)"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A 16 kHz mono S16_LE recording: silence, a spoken sentence, silence.
struct Speech {
    raw: PathBuf,
    samples: Vec<i16>,
    /// First and last sample louder than -34 dBFS: where the speech is.
    speech_start: usize,
    speech_end: usize,
}

impl Speech {
    fn start_ms(&self) -> u64 {
        (self.speech_start as u64 * 1000) / RATE as u64
    }
    fn end_ms(&self) -> u64 {
        (self.speech_end as u64 * 1000) / RATE as u64
    }
}

fn make_speech(dir: &Path) -> Speech {
    let wav = dir.join("speech.wav");
    let sp16 = dir.join("speech16.wav");
    let raw = dir.join("speech.raw");
    run(Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg("The quick brown fox jumps over the lazy dog near the river bank"));
    run(Command::new("sox").arg(&wav).args(["-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer"]).arg(&sp16));
    // Lead and tail silence around the speech, written raw (headerless).
    run(Command::new("sox")
        .arg(&sp16)
        .args(["-t", "raw", "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer"])
        .arg(&raw)
        .args(["pad", &LEAD_SILENCE_S.to_string(), &TAIL_SILENCE_S.to_string()]));
    let bytes = std::fs::read(&raw).expect("raw file");
    let samples: Vec<i16> = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let loud = |s: &i16| (*s as i32).abs() > 655; // 0.02 of full scale
    let speech_start = samples.iter().position(loud).expect("speech in the file");
    let speech_end = samples.iter().rposition(loud).expect("speech in the file");
    Speech { raw, samples, speech_start, speech_end }
}

/// Child-process half of the capture test: opens ALSA's default input
/// through the library, keeps the first N samples, writes them as f32 LE
/// plus a line describing the stream.
fn child_capture(out: &str) {
    let n: usize = std::env::var(CHILD_SAMPLES).unwrap().parse().unwrap();
    let got = Arc::new(Mutex::new(Vec::<f32>::with_capacity(n)));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let (g, e) = (got.clone(), errors.clone());
    let input = capture::open_input(
        "default",
        move |s| {
            let mut g = g.lock().unwrap();
            let room = n - g.len().min(n);
            g.extend_from_slice(&s[..s.len().min(room)]);
        },
        move |m| e.lock().unwrap().push(m),
    )
    .unwrap_or_else(|e| panic!("opening ALSA default input: {:#}", anyhow::Error::new(e)));
    let end = Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().len() < n {
        assert!(Instant::now() < end, "only {} of {n} samples captured", got.lock().unwrap().len());
        std::thread::sleep(Duration::from_millis(5));
    }
    let info = input.info.clone();
    drop(input);
    let bytes: Vec<u8> = got.lock().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out, bytes).unwrap();
    std::fs::write(
        format!("{out}.info"),
        format!("{} {} {} {:?}", info.sample_rate, info.channels, info.format, errors.lock().unwrap()),
    )
    .unwrap();
}

fn segments_of(samples: &[f32]) -> Vec<Segment> {
    detect_segments(load_vad(), samples, RATE, SegmentConfig::new(0.5, 250, 300, RATE)).expect("VAD run")
}

#[test]
fn alsa_capture_returns_the_files_samples_and_vad_finds_the_speech() {
    if let Ok(out) = std::env::var(CHILD_OUT) {
        return child_capture(&out);
    }
    let dir = tempfile::tempdir().unwrap();
    let speech = make_speech(dir.path());
    let home = file_pcm_home(dir.path(), &speech.raw);
    let out = dir.path().join("captured.f32");
    let n = speech.samples.len();

    // (1) Through ALSA and cpal, in a child process that sees the test HOME.
    let t0 = Instant::now();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "alsa_capture_returns_the_files_samples_and_vad_finds_the_speech",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("HOME", &home)
        .env(CHILD_OUT, &out)
        .env(CHILD_SAMPLES, n.to_string())
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "capture child failed:\n{}\n{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    let info = std::fs::read_to_string(format!("{}.info", out.display())).unwrap();
    assert!(info.starts_with("16000 1 I16 []"), "stream was {info:?}: expected 16 kHz mono I16 and no errors");
    let captured: Vec<f32> =
        std::fs::read(&out).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(captured.len(), n);
    // i16 → f32 is s / 32768: exact both ways.
    let mismatch = captured.iter().zip(&speech.samples).position(|(f, s)| (f * 32768.0).round() as i32 != *s as i32);
    assert_eq!(mismatch, None, "captured samples differ from the file");
    eprintln!("captured {n} samples through ALSA in {:?}", t0.elapsed());

    // (2) The VAD finds the speech where it is.
    let t0 = Instant::now();
    let segs = segments_of(&captured);
    let vad_time = t0.elapsed();
    let audio_s = n as f64 / RATE as f64;
    eprintln!(
        "speech at {}..{} ms; VAD segments (ms): {:?}; {audio_s:.1} s of audio in {vad_time:?}",
        speech.start_ms(),
        speech.end_ms(),
        segs.iter().map(|s| (samples_to_ms(s.start), samples_to_ms(s.end), s.max_prob)).collect::<Vec<_>>()
    );
    assert!(!segs.is_empty(), "no speech found");
    let (first, last) = (segs[0], segs[segs.len() - 1]);
    let start_err = samples_to_ms(first.start) as i64 - speech.start_ms() as i64;
    let end_err = samples_to_ms(last.end) as i64 - speech.end_ms() as i64;
    assert!((-150..=250).contains(&start_err), "speech starts {start_err} ms off");
    assert!((-300..=500).contains(&end_err), "speech ends {end_err} ms off");
    let covered: u64 = segs.iter().map(|s| s.end - s.start).sum();
    let true_len = (speech.speech_end - speech.speech_start) as u64;
    assert!(covered * 10 >= true_len * 8, "segments cover {covered} of {true_len} speech samples");
    assert!(first.max_prob > 0.8, "{first:?}");
    // Nothing in the lead silence.
    assert!(samples_to_ms(first.start) as f64 >= LEAD_SILENCE_S * 1000.0 - 150.0);
}

#[test]
fn vad_reports_nothing_in_silence_or_faint_noise() {
    let silence = vec![0.0f32; 5 * RATE as usize];
    assert!(segments_of(&silence).is_empty());
    let mut rng = fastrand::Rng::with_seed(9);
    let noise: Vec<f32> = (0..5 * RATE as usize).map(|_| (rng.f32() - 0.5) * 0.006).collect();
    let segs = segments_of(&noise);
    assert!(segs.is_empty(), "speech in faint noise: {segs:?}");
}

#[test]
fn vad_at_48k_finds_the_same_speech_after_resampling() {
    // A 48 kHz microphone: the same sentence resampled by sox, then back to
    // 16 kHz by the daemon's own resampler.
    let dir = tempfile::tempdir().unwrap();
    let speech = make_speech(dir.path());
    let raw48 = dir.path().join("speech48.raw");
    run(Command::new("sox")
        .args(["-t", "raw", "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer"])
        .arg(&speech.raw)
        .args(["-t", "raw", "-r", "48000", "-c", "2", "-b", "16", "-e", "signed-integer"])
        .arg(&raw48));
    let bytes = std::fs::read(&raw48).unwrap();
    let stereo: Vec<f32> = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0).collect();
    let mut mono = Vec::new();
    spark_edge::sources::audio::resample::mixdown(&stereo, 2, &mut mono);
    let segs = detect_segments(load_vad(), &mono, 48_000, SegmentConfig::new(0.5, 250, 300, RATE)).unwrap();
    assert!(!segs.is_empty());
    let start_err = samples_to_ms(segs[0].start) as i64 - speech.start_ms() as i64;
    let end_err = samples_to_ms(segs[segs.len() - 1].end) as i64 - speech.end_ms() as i64;
    assert!(
        (-150..=250).contains(&start_err) && (-300..=500).contains(&end_err),
        "off by {start_err}/{end_err} ms: {segs:?}"
    );
}

/// A private PulseAudio server with a 16 kHz mono null sink `mic` whose
/// monitor is the default source; killed on drop.
struct Pulse {
    child: Child,
    socket: PathBuf,
    home: PathBuf,
    log: PathBuf,
}

impl Pulse {
    fn start(dir: &Path) -> Self {
        let run_dir = dir.join("pulse-run");
        let home = dir.join("home-pulse");
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let socket = run_dir.join("native");
        let script = dir.join("default.pa");
        std::fs::write(
            &script,
            format!(
                "load-module module-native-protocol-unix auth-anonymous=1 socket={}\n\
                 load-module module-null-sink sink_name=mic rate=16000 channels=1 format=s16le\n\
                 set-default-source mic.monitor\n",
                socket.display()
            ),
        )
        .unwrap();
        std::fs::write(
            home.join(".asoundrc"),
            format!(
                "pcm.!default {{ type pulse server \"unix:{s}\" }}\nctl.!default {{ type pulse server \"unix:{s}\" }}\n",
                s = socket.display()
            ),
        )
        .unwrap();
        let log = dir.join("pulse.log");
        let child = Command::new("pulseaudio")
            .args(["-n", "-F"])
            .arg(&script)
            .args(["--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--log-target=stderr"])
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &run_dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("pulseaudio not installed: run scripts/setup.sh");
        let p = Pulse { child, socket, home, log };
        wait_for(Duration::from_secs(10), || p.socket.exists().then_some(())).unwrap_or_else(|| {
            panic!("pulseaudio did not start: {}", std::fs::read_to_string(&p.log).unwrap_or_default())
        });
        p
    }

    fn server(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Plays a raw 16 kHz mono S16_LE file into the `mic` sink in real time.
    fn play(&self, raw: &Path) -> std::process::ExitStatus {
        Command::new("pacat")
            .args(["--playback", "-d", "mic", "--format=s16le", "--rate=16000", "--channels=1", "--raw"])
            .arg(raw)
            .env("PULSE_SERVER", self.server())
            .env("HOME", &self.home)
            .status()
            .expect("pacat (pulseaudio-utils) not installed: run scripts/setup.sh")
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn daemon_publishes_a_speech_event_from_a_real_time_microphone() {
    let dir = tempfile::tempdir().unwrap();
    let speech = make_speech(dir.path());
    let pulse = Pulse::start(dir.path());
    let broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/+/events");
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true;
    cfg.extra = format!(
        "[audio]\nenabled = true\ndevice = \"default\"\nmodel = \"{}\"\nmodel_sha256 = \"{SILERO_VAD_SHA256}\"\n\
         threshold = 0.5\nmin_speech_ms = 250\nmin_silence_ms = 300\nbuffer_secs = 2.0\n",
        vad_model().display()
    );
    let daemon =
        Daemon::start_with_env(&cfg, &[("HOME", pulse.home.as_os_str()), ("PULSE_SERVER", pulse.server().as_ref())]);
    wait_for(Duration::from_secs(15), || daemon.log_text().contains("audio capture started").then_some(()))
        .unwrap_or_else(|| panic!("audio did not start; log:\n{}", daemon.log_text()));

    let played_at = spark_edge::record::now_ms();
    assert!(pulse.play(&speech.raw).success());
    let events = wait_for(Duration::from_secs(15), || {
        let e: Vec<_> = consumer.records("events").into_iter().filter(|r| r["kind"] == "speech").collect();
        (!e.is_empty()).then_some(e)
    })
    .unwrap_or_else(|| panic!("no speech event; log:\n{}", daemon.log_text()));
    let e = &events[0];
    eprintln!("speech event: {e}");
    assert_eq!(e["device"], "default");
    assert_eq!(e["stream"], "events");
    let (start, end, duration) =
        (e["start_ms"].as_u64().unwrap(), e["end_ms"].as_u64().unwrap(), e["duration_ms"].as_u64().unwrap());
    assert_eq!(end - start, duration);
    assert!(e["max_prob"].as_f64().unwrap() > 0.8, "{e}");
    // The whole sentence as one segment, about as long as the speech
    // (the pause-free sentence must not be split).
    let true_ms = speech.end_ms() - speech.start_ms();
    assert!((duration as i64 - true_ms as i64).abs() <= 600, "segment {duration} ms, speech {true_ms} ms");
    // Wall-clock placement: playback start plus the lead silence, give or
    // take PulseAudio's buffering.
    let expect = played_at + speech.start_ms();
    assert!((start as i64 - expect as i64).abs() <= 1500, "speech at {start}, expected about {expect}");
    let status = daemon.terminate(Duration::from_secs(15));
    assert!(status.success(), "sparkd exit {status:?}");
}

#[test]
fn daemon_refuses_to_start_with_a_corrupt_vad_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(vad_model()).expect("models/silero_vad.onnx: run scripts/setup.sh");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let corrupt = dir.path().join("silero_vad.onnx");
    std::fs::write(&corrupt, bytes).unwrap();
    let mut cfg = DaemonConfig::new("mqtt://127.0.0.1:1");
    cfg.camera_off = true;
    cfg.extra =
        format!("[audio]\nenabled = true\nmodel = \"{}\"\nmodel_sha256 = \"{SILERO_VAD_SHA256}\"\n", corrupt.display());
    let out = Command::new(sparkd_bin()).args(["run", "--config"]).arg(cfg.write()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("VAD model") && err.contains("SHA-256"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
