//! Live camera sources without a camera: back-pressure from a slow engine,
//! and the V4L2 source and daemon waiting out a missing device.
//!
//! Real V4L2 capture needs hardware (tests/hardware/camera.sh); what runs
//! here is everything around it: the reconnect loop over the real
//! `V4lSource` (whose opens fail), the drop-oldest queue in front of a
//! deliberately slow engine, and the real `sparkd` with `source = "v4l"`.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use image::RgbImage;
use spark_edge::config::CameraConfig;
use spark_edge::inference::engine::{Engine, EngineError, EngineKind, Output};
use spark_edge::inference::model::Model;
use spark_edge::inference::vision::Tensor;
use spark_edge::outbox::{Outbox, OutboxOptions, spawn_writer};
use spark_edge::record::Stream;
use spark_edge::sources::camera::convert::{PixelFormat, RawYuv};
use spark_edge::sources::camera::live::{self, CaptureError, FrameSource, LiveOptions};
use spark_edge::sources::camera::{CameraQueues, Frame, FrameQueue, Pixels};
use spark_edge::state::Shared;

/// An engine that takes `delay` per frame and returns CenterFace-shaped
/// empty outputs (no detections).
struct SlowEngine {
    delay: Duration,
    runs: Arc<AtomicU64>,
}

impl Engine for SlowEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::OnnxCpu
    }

    fn run(&mut self, input: &Tensor) -> Result<Vec<Output>, EngineError> {
        // The scenario: inference is this slow.
        std::thread::sleep(self.delay);
        self.runs.fetch_add(1, Ordering::Relaxed);
        let (h, w) = (input.shape[2] / 4, input.shape[3] / 4);
        let out =
            |name: &str, c: usize| Output { name: name.into(), shape: vec![1, c, h, w], data: vec![0.0; c * h * w] };
        Ok(vec![out("heatmap", 1), out("scale", 2), out("offset", 2), out("landmarks", 10)])
    }
}

/// A camera delivering 640x480 frames as fast as it is asked.
struct FastCamera {
    number: u64,
}

impl FrameSource for FastCamera {
    fn name(&self) -> String {
        "fast".into()
    }
    fn open(&mut self) -> Result<(), CaptureError> {
        Ok(())
    }
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        // The scenario: a 2000 fps camera (far faster than the engine).
        std::thread::sleep(Duration::from_micros(500));
        self.number += 1;
        Ok(Frame {
            number: self.number,
            captured_at: Instant::now(),
            captured_ms: 0,
            origin: "fast".into(),
            pixels: RgbImage::from_raw(640, 480, vec![(self.number % 251) as u8; 640 * 480 * 3]).unwrap().into(),
        })
    }
    fn close(&mut self) {}
}

/// A UVC-like camera delivering raw 640x480 YUYV frames as fast as it is
/// asked, copying each into a buffer its queue recycles, as `V4lSource`
/// does; `fresh` counts the frames that needed a new allocation.
struct FastYuvCamera {
    number: u64,
    queue: Arc<FrameQueue>,
    fresh: Arc<AtomicU64>,
}

impl FrameSource for FastYuvCamera {
    fn name(&self) -> String {
        "fast-yuv".into()
    }
    fn open(&mut self) -> Result<(), CaptureError> {
        Ok(())
    }
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        std::thread::sleep(Duration::from_micros(500));
        self.number += 1;
        let mut data = self.queue.spare_buffer();
        if data.capacity() == 0 {
            self.fresh.fetch_add(1, Ordering::Relaxed);
        }
        data.resize(640 * 480 * 2, (self.number % 251) as u8);
        let raw = RawYuv::new(PixelFormat::Yuyv, data, 640, 480, 1280).expect("a well-formed YUYV frame");
        Ok(Frame {
            number: self.number,
            captured_at: Instant::now(),
            captured_ms: 0,
            origin: "fast-yuv".into(),
            pixels: Pixels::Yuv(raw),
        })
    }
    fn close(&mut self) {}
}

/// Anonymous resident memory (heap; not the outbox's file-backed map).
fn rss_kib_self() -> u64 {
    rss_kib(std::process::id() as i32).1
}

/// One camera queue of `capacity` frames, served by `pipeline::run` over a
/// [`SlowEngine`] into a fresh outbox; the camera is the test's own.
struct Rig {
    _dir: tempfile::TempDir,
    outbox: Outbox,
    shared: Arc<Shared>,
    queue: Arc<FrameQueue>,
    runs: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    camera: Option<std::thread::JoinHandle<live::LiveSummary>>,
    inference: Option<std::thread::JoinHandle<()>>,
    writer: Option<spark_edge::outbox::WriterHandle>,
}

impl Rig {
    fn start(capacity: usize, delay: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(
            &dir.path().join("outbox"),
            OutboxOptions {
                device_id: "t".into(),
                max_bytes: 64 << 20,
                drop_order: Stream::ALL.to_vec(),
                snapshots_max_bytes: u64::MAX,
                ttl_ms: [0; Stream::COUNT],
            },
        )
        .unwrap();
        let writer = spawn_writer(outbox.clone(), 256, Arc::new(|| {})).unwrap();
        let model = Arc::new(Model::load(&repo().join("models/centerface.toml")).unwrap());
        let shared = Arc::new(Shared::new("t".into()));
        let queues = CameraQueues::new(&[("cam0", capacity)]);
        let queue = queues.lanes()[0].queue.clone();
        let runs = Arc::new(AtomicU64::new(0));
        let engine = Box::new(SlowEngine { delay, runs: runs.clone() });
        let inference = {
            let (sh, app) = (shared.clone(), writer.appender.clone());
            let abort = Arc::new(AtomicBool::new(false));
            let (jobs_tx, jobs) = crossbeam_channel::bounded(1);
            std::thread::spawn(move || {
                let _keep = jobs_tx;
                spark_edge::inference::pipeline::run(engine, model, queues, app, sh, abort, jobs)
            })
        };
        Self {
            _dir: dir,
            outbox,
            shared,
            queue,
            runs,
            stop: Arc::new(AtomicBool::new(false)),
            camera: None,
            inference: Some(inference),
            writer: Some(writer),
        }
    }

    /// Runs `source` on its own thread, as the daemon's live loop does.
    fn camera(&mut self, source: impl FrameSource + Send + 'static) {
        let (q, sh, st) = (self.queue.clone(), self.shared.clone(), self.stop.clone());
        self.camera = Some(std::thread::spawn(move || live::run(source, LiveOptions::default(), q, sh, st)));
    }

    /// Stops the camera (the closed queue ends inference), then the writer;
    /// returns the camera's summary.
    fn finish(&mut self) -> live::LiveSummary {
        self.stop.store(true, Ordering::Relaxed);
        let summary = self.camera.take().expect("a camera").join().unwrap();
        self.inference.take().expect("inference").join().unwrap();
        self.writer.take().expect("the writer").join();
        summary
    }

    fn processed(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

#[test]
fn slow_engine_behind_a_fast_camera_drops_oldest_frames_with_bounded_memory() {
    let capacity = 2;
    let mut rig = Rig::start(capacity, Duration::from_millis(40));
    let rss_before = rss_kib_self();
    rig.camera(FastCamera { number: 0 });
    // Sample the queue and memory while the camera outruns the engine: the
    // run lasts 3 s on purpose, sampled every 5 ms.
    let (mut max_len, mut max_rss) = (0, 0);
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        max_len = max_len.max(rig.queue.len());
        max_rss = max_rss.max(rss_kib_self());
        std::thread::sleep(Duration::from_millis(5));
    }
    let summary = rig.finish();

    let captured = rig.queue.captured.load(Ordering::Relaxed);
    let dropped = rig.queue.dropped.load(Ordering::Relaxed);
    let processed = rig.processed();
    eprintln!(
        "captured {captured}, processed {processed}, dropped {dropped}, max queue {max_len}, rss {rss_before} -> max {max_rss} KiB"
    );
    assert_eq!(captured, summary.frames);
    // Every frame was either run or dropped-and-counted; none waits unseen.
    assert_eq!(captured, processed + dropped, "frames unaccounted for");
    assert!(dropped > 10 * processed, "the camera should outrun a 40 ms engine many times over");
    assert!(max_len <= capacity, "queue grew to {max_len}");
    assert_eq!(Shared::count(&rig.shared.inference_total), processed);
    // Bounded memory: thousands of 0.9 MB frames passed through; only the
    // queue's few (plus the one in each thread's hands) are alive at once.
    assert!(captured > 1000, "{captured}");
    assert!(max_rss.saturating_sub(rss_before) < 100 * 1024, "RSS grew {} KiB", max_rss - rss_before);
    assert_eq!(rig.outbox.counters()[Stream::Inference as usize].pending, processed);
}

/// The buffers of frames dropped at the queue and of frames recorded come
/// back to the camera: thousands of frames pass with a handful of
/// allocations.
#[test]
fn a_yuv_camera_reuses_the_buffers_of_dropped_and_recorded_frames() {
    let mut rig = Rig::start(2, Duration::from_millis(10));
    let fresh = Arc::new(AtomicU64::new(0));
    rig.camera(FastYuvCamera { number: 0, queue: rig.queue.clone(), fresh: fresh.clone() });
    let enough = wait_for(Duration::from_secs(60), || {
        (rig.processed() >= 30 && rig.queue.captured.load(Ordering::Relaxed) >= 1000).then_some(())
    });
    rig.finish();
    let (captured, processed) = (rig.queue.captured.load(Ordering::Relaxed), rig.processed());
    assert!(enough.is_some(), "too few frames within 60 s: captured {captured}, processed {processed}");
    let fresh = fresh.load(Ordering::Relaxed);
    eprintln!("captured {captured}, processed {processed}, new buffers {fresh}");
    // The queue's 2, the frame in the engine, the one being recorded, the
    // one being filled, and a spare or two.
    assert!(fresh <= 8, "{fresh} buffers allocated for {captured} frames");
}

#[test]
fn v4l_source_waits_for_a_missing_device_and_stops_promptly() {
    let config = CameraConfig { device: "/dev/video-spark-test-missing".into(), ..CameraConfig::default() };
    let queue = FrameQueue::new(2);
    let shared = Arc::new(Shared::new("t".into()));
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let (q, sh, st) = (queue.clone(), shared.clone(), stop.clone());
        std::thread::spawn(move || spark_edge::sources::camera::v4l::run(config, q, sh, st))
    };
    // It keeps trying (attempts at about 0, 0.25 and 0.75 s: backoff from
    // 250 ms, doubling) and does not give up.
    wait_for(Duration::from_secs(20), || (Shared::count(&shared.camera_errors) >= 3).then_some(()))
        .unwrap_or_else(|| panic!("{} open attempts, then none", Shared::count(&shared.camera_errors)));
    assert!(!t.is_finished(), "the camera thread gave up");
    assert_eq!(Shared::count(&shared.camera_reconnects), 0);
    let t0 = Instant::now();
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    assert!(t0.elapsed() < Duration::from_millis(500), "stop took {:?}", t0.elapsed());
    assert!(queue.is_closed_and_empty());
}

#[test]
fn daemon_with_a_missing_v4l_camera_keeps_running_and_warns_once() {
    let broker = Broker::start();
    let cfg = DaemonConfig::new(&broker.url());
    let path = cfg.write();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("source = \"replay\""));
    let text = text.replace(
        "source = \"replay\"",
        "source = \"v4l\"\ndevice = \"/dev/video-spark-test-missing\"\npixel_format = \"auto\"",
    );
    std::fs::write(&path, text).unwrap();
    let log = cfg.dir.path().join("sparkd.log");
    let child = Command::new(sparkd_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = Daemon { child, log };
    wait_for(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(cfg.socket()).ok())
        .unwrap_or_else(|| panic!("sparkd did not start; log:\n{}", daemon.log_text()));
    // Several open attempts have failed (each would have warned, were it
    // not once per outage).
    let status = wait_for(Duration::from_secs(30), || {
        let s = status_json(&cfg.socket());
        (s["sensors"]["camera_errors"].as_u64() >= Some(3)).then_some(s)
    })
    .unwrap_or_else(|| panic!("the camera was not retried: {}", status_json(&cfg.socket())));
    assert_eq!(status["inference"]["frames_captured"].as_u64(), Some(0), "{status}");
    let text = daemon.log_text();
    assert_eq!(text.matches("camera unavailable").count(), 1, "one warning per outage:\n{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    let st = daemon.terminate(Duration::from_secs(15));
    assert!(st.success(), "exit {st:?}");
}
