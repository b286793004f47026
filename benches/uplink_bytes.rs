//! Uplink bytes per hour (issue 18): what a device sends with a record per
//! frame against what it sends with `inference.publish = "on-change"`,
//! track, zone and line events and their evidence snapshots.
//!
//! The real `sparkd` (NanoDet on ONNX Runtime, the demo's model) at 5
//! frames/s, a real Mosquitto, and a subscriber counting topic + payload
//! bytes per stream. Two scenes:
//! - `demo`: the replay camera over the demo photos (models/demo), as the
//!   built-in demo runs: every frame is another photo;
//! - `walk`: a person walking back and forth through a line and a zone
//!   (tests/common/walk.rs), the scene the events were made for.
//!
//! Per scene, runs of the same frames: `every-frame` (no events, no
//! snapshots: what a device sent before events existed), then `on-change`
//! with events (a line and a zone in the middle) and snapshots of
//! `zone_enter` and `line_cross` at the defaults (whole frame, quality 80),
//! as crops at quality 60, and without snapshots. Bytes per frame are the
//! bytes received once the outbox drained, over the frames inferred; per
//! hour at 5 frames/s. Telemetry and status are the same in both and left
//! out.
//!
//! Run: `cargo bench --bench uplink_bytes -- --bench` (or the test build's
//! binary with `--bench`: the bytes do not depend on the build). Prints
//! markdown rows for BENCHMARKS.md. Without `--bench`, a short smoke run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const FPS: f64 = 5.0;
const RULES: &str = "[[zone]]\nname = \"middle\"\npolygon = [[0.35, 0.0], [0.65, 0.0], [0.65, 1.0], [0.35, 1.0]]\n\
                     [[line]]\nname = \"door\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\n";

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let frames: u64 = if quick { 10 } else { 300 };
    let walk = tempfile::tempdir().expect("a temp dir");
    walk::write_walk(walk.path(), false);
    let scenes: [(&str, PathBuf); 2] = [("demo", repo().join("models/demo")), ("walk", walk.path().to_path_buf())];
    let variants = [
        ("on-change + events + snapshots", format!("[inference]\npublish = \"on-change\"\n{RULES}")),
        (
            "on-change + events + crop snapshots (quality 60)",
            format!(
                "[inference]\npublish = \"on-change\"\n[events.snapshots]\nmode = \"crop\"\njpeg_quality = 60\n{RULES}"
            ),
        ),
        (
            "on-change + events, no snapshots",
            format!("[inference]\npublish = \"on-change\"\n[events.snapshots]\nenabled = false\n{RULES}"),
        ),
    ];
    let per_hour = |b: &Bytes| b.per_frame() * FPS * 3600.0;
    for (scene, images) in &scenes {
        let every = run(
            images,
            frames,
            "[inference]\npublish = \"every-frame\"\n[events]\ntrack_events = false\n[events.snapshots]\nenabled = false\n",
        );
        println!(
            "| {scene} | every-frame | {:.0} B | {:.1} MB | {} | 1 |",
            every.per_frame(),
            per_hour(&every) / 1e6,
            every.breakdown()
        );
        for (name, extra) in &variants {
            let b = run(images, frames, extra);
            println!(
                "| {scene} | {name} | {:.0} B | {:.1} MB | {} | {:.3} |",
                b.per_frame(),
                per_hour(&b) / 1e6,
                b.breakdown(),
                b.per_frame() / every.per_frame()
            );
        }
    }
}

/// Bytes received per stream and the frames they came from.
struct Bytes {
    by_stream: BTreeMap<String, u64>,
    frames: u64,
}

impl Bytes {
    fn records(&self) -> u64 {
        ["inference", "events", "snapshots"].iter().map(|s| self.by_stream.get(*s).copied().unwrap_or(0)).sum()
    }

    fn per_frame(&self) -> f64 {
        self.records() as f64 / self.frames.max(1) as f64
    }

    fn breakdown(&self) -> String {
        ["inference", "events", "snapshots"]
            .iter()
            .map(|s| {
                format!(
                    "{s} {:.0} B/frame",
                    self.by_stream.get(*s).copied().unwrap_or(0) as f64 / self.frames.max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One message: its stream, the highest record seq in it, its bytes.
type Received = (String, u64, u64);

/// One run of at least `frames` frames of `images` with `extra` config: the
/// bytes of every record of the frames inferred when it ends.
fn run(images: &Path, frames: u64, extra: &str) -> Bytes {
    let broker = Broker::start();
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let r = received.clone();
    let _sub = Subscriber::start(broker.port, &format!("bytes-{}", std::process::id()), "spark/#", move |p| {
        let stream = p.topic.rsplit('/').next().unwrap_or_default().to_string();
        let json: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
        // A batch `{"records": [...]}` holds several; its last has the highest seq.
        let seq = json["records"].as_array().and_then(|r| r.last()).unwrap_or(&json)["seq"].as_u64().unwrap_or(0);
        r.lock().expect("received lock").push((stream, seq, (p.topic.len() + p.payload.len()) as u64));
    });
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.manifest = repo().join("models/nanodet.toml");
    cfg.images = images.to_path_buf();
    cfg.fps = FPS;
    cfg.telemetry_secs = 60.0;
    cfg.extra = extra.to_string();
    let d = Daemon::start(&cfg);
    let inferred = || status_json(&cfg.socket())["inference"]["cameras"][0]["inferred"].as_u64().unwrap_or(0);
    let limit = Duration::from_secs_f64(frames as f64 / FPS * 4.0 + 120.0);
    wait_for_every(limit, Duration::from_millis(200), || (inferred() >= frames).then_some(()))
        .unwrap_or_else(|| panic!("{frames} frames not inferred within {limit:?}; log:\n{}", d.log_text()));
    // The frames inferred so far, then every stream's next seq: the records
    // of those frames (and of the few inferred between the two reads) are
    // the ones below it. Wait for them, then count them.
    let frames = inferred();
    let q = queue_json(&cfg.socket());
    wait_drained(&cfg.socket(), Duration::from_secs(120));
    let end = |stream: &str| q["streams"][stream]["next_seq"].as_u64().unwrap_or(0);
    let mut by_stream = BTreeMap::new();
    for (stream, seq, bytes) in received.lock().expect("received lock").iter() {
        if *seq > 0 && *seq < end(stream) {
            *by_stream.entry(stream.clone()).or_default() += bytes;
        }
    }
    assert!(d.terminate(Duration::from_secs(30)).success());
    Bytes { by_stream, frames }
}
