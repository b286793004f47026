//! Footprint budget of the daemon (issue 8), measured on the real binary:
//! start-to-READY=1 (through a `$NOTIFY_SOCKET` of our own, as systemd does)
//! and resident memory when idle, with and without the inference engine.
//! Budgets: READY < 500 ms excluding model load; RSS idle < 40 MB with ONNX
//! Runtime and the demo model; the daemon's own share < 15 MB.
//!
//! Run: `cargo bench --bench footprint` (after scripts/setup.sh). Prints
//! markdown rows for BENCHMARKS.md: measured value and its ratio to budget.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Run {
    child: Child,
    ready_ms: f64,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, camera: bool) -> Run {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let images = dir.join("img");
    std::fs::create_dir_all(&images).unwrap();
    // "Idle": the engine is loaded but no frame arrives (the replay source
    // skips a file it cannot decode), as on a device whose camera is quiet.
    std::fs::write(images.join("idle.png"), b"not an image").unwrap();
    let cfg = dir.join("sparkd.toml");
    std::fs::write(
        &cfg,
        format!(
            "device_id = \"fp\"\nstate_dir = \"{d}/state\"\nsocket_path = \"{d}/s.sock\"\n\
             [camera]\nsource = \"{src}\"\nreplay_dir = \"{img}\"\nfps = 0.001\n\
             [model]\nmanifest = \"{m}\"\nonnxruntime_library = \"{ort}\"\nintra_threads = 2\n\
             [telemetry]\ninterval_secs = 3600\n[mqtt]\nurl = \"mqtt://127.0.0.1:9\"\n[hailo]\nenabled = false\n",
            d = dir.display(),
            src = if camera { "replay" } else { "none" },
            img = images.display(),
            m = repo.join("models/centerface.toml").display(),
            ort = repo.join("deps/onnxruntime/libonnxruntime.so").display(),
        ),
    )
    .unwrap();
    let notify = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify);
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let t0 = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_sparkd"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    loop {
        let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
        if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
            break;
        }
    }
    Run { child, ready_ms: t0.elapsed().as_secs_f64() * 1000.0 }
}

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// RSS after one inference (activation buffers allocated).
fn rss_after_frame() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let r = start(dir.path(), true);
    drop(r);
    let images = dir.path().join("img");
    std::fs::remove_file(images.join("idle.png")).unwrap();
    std::fs::copy(repo.join("models/demo/astronaut.png"), images.join("a.png")).unwrap();
    let cfg = dir.path().join("sparkd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let notify = dir.path().join("n2.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::fs::write(&cfg, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sparkd"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let r = Run { child, ready_ms: 0.0 };
    std::thread::sleep(Duration::from_secs(4));
    rss_mb(r.child.id())
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 1 } else { 5 };
    let (mut ready_bare, mut ready_engine, mut rss_bare, mut rss_engine) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let r = start(dir.path(), false);
        std::thread::sleep(Duration::from_secs(2));
        ready_bare.push(r.ready_ms);
        rss_bare.push(rss_mb(r.child.id()));
        drop(r);
        let dir = tempfile::tempdir().unwrap();
        let r = start(dir.path(), true);
        std::thread::sleep(Duration::from_secs(3));
        ready_engine.push(r.ready_ms);
        rss_engine.push(rss_mb(r.child.id()));
    }
    let (rb, re, mb, me) = (median(ready_bare), median(ready_engine), median(rss_bare), median(rss_engine));
    println!("| start to READY=1, no model (camera off) | budget 500 ms | {rb:.0} ms | {:.2} of budget |", rb / 500.0);
    println!("| start to READY=1 with model load | (no budget) | {re:.0} ms | - |");
    println!("| RSS idle, daemon only (camera off) | budget 15 MB | {mb:.1} MB | {:.2} of budget |", mb / 15.0);
    println!("| RSS idle, ONNX Runtime + demo model loaded | budget 40 MB | {me:.1} MB | {:.2} of budget |", me / 40.0);
    let busy = rss_after_frame();
    println!("| RSS after inferring 640x480 frames (activation arena held) | (no budget) | {busy:.1} MB | - |");
}
