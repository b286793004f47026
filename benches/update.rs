//! Fleet update throughput over loopback MQTT, against a bare baseline in the
//! same run:
//!
//! - baseline: `spark-fleet push` of a ~10 MB bundle to a bare rumqttc QoS 1
//!   subscriber that only counts the chunks (no decode, no disk, no checks);
//! - ours: the same push to a real `sparkd` (camera off) until it reports
//!   `active`: chunks decoded and fsynced, reassembled, SHA-256 checked,
//!   staged, pack unpacked, model files checked, activated;
//! - push to `active` with the camera on (engine built, warmed up, canary run);
//! - push to `active` on 20 `sparkd` instances (group push, camera off).
//!
//! Run: `cargo bench --bench update` (needs `mosquitto`). Prints markdown
//! rows for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DEVICES: usize = 20;

fn fleet(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_spark-fleet")).args(args).output().expect("spark-fleet");
    assert!(out.status.success(), "spark-fleet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A ~10 MB model pack (demo model + filler) signed for `target`.
fn bundle(dir: &Path, target: &[&str], canary: bool) -> (PathBuf, u64) {
    let keys = dir.join("keys");
    if !keys.join("bench.key").exists() {
        fleet(&["keygen", "--out", s(&keys), "--key-id", "bench"]);
    }
    let toml = std::fs::read_to_string(repo().join("models/centerface.toml")).unwrap();
    std::fs::write(dir.join("model.toml"), toml.replace("version = \"1.0.0\"", "version = \"1.1.0\"")).unwrap();
    let filler: Vec<u8> = (0..2_500_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.join("filler.bin"), filler).unwrap();
    let pack = dir.join("model.pack");
    let onnx = repo().join("models/centerface.onnx");
    let img = repo().join("models/demo/astronaut.png");
    fleet(&[
        "pack",
        "--model",
        s(&dir.join("model.toml")),
        s(&onnx),
        s(&dir.join("filler.bin")),
        s(&img),
        "--out",
        s(&pack),
    ]);
    let out = dir.join(format!("b-{}.bundle", target.join("-")));
    let key = keys.join("bench.key");
    let mut args = vec![
        "sign",
        "--key",
        s(&key),
        "--kind",
        "model",
        "--name",
        "centerface",
        "--version",
        "1.1.0",
        "--artifact",
        s(&pack),
        "--expires-in-days",
        "30",
        "--out",
        s(&out),
    ];
    args.extend_from_slice(target);
    if canary {
        args.extend_from_slice(&[
            "--canary-input",
            "astronaut.png",
            "--canary-label",
            "face",
            "--canary-min-score",
            "0.5",
        ]);
    }
    fleet(&args);
    (out, std::fs::metadata(&pack).unwrap().len())
}

fn push(broker: &Broker, target: &[&str], bundle: &Path) {
    let url = broker.url();
    let mut args = vec!["push", "--broker", url.as_str()];
    args.extend_from_slice(target);
    args.push(s(bundle));
    fleet(&args);
}

fn active_count(c: &Consumer) -> usize {
    c.snapshot().iter().filter(|m| m.topic.ends_with("/update/state") && m.json["state"] == "active").count()
}

/// Bare subscriber: counts chunk messages on `topic` until `total` arrived.
fn baseline(broker: &Broker, bundle: &Path) -> Duration {
    let mut opts = rumqttc::MqttOptions::new("bench-raw-sink", "127.0.0.1", broker.port);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut conn) = rumqttc::Client::new(opts, 64);
    let bytes = std::fs::read(bundle).unwrap();
    let b = spark_edge::update::Bundle::parse(&bytes).unwrap();
    let total = b.artifact.len().div_ceil(spark_edge::update::CHUNK_MAX_BYTES);
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut n = 0;
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    client.subscribe("spark/raw-sink/update/#", rumqttc::QoS::AtLeastOnce).unwrap();
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => tx.send(Instant::now()).unwrap(),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) if p.topic.ends_with("/chunk") => {
                    n += 1;
                    if n == total {
                        tx.send(Instant::now()).unwrap();
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("baseline subscriber: {e}"),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("subscribed");
    let t0 = Instant::now();
    push(broker, &["--device", "raw-sink"], bundle);
    let end = rx.recv_timeout(Duration::from_secs(120)).expect("all chunks");
    let _ = t.join();
    end - t0
}

fn device_config(broker: &Broker, keys: &Path, camera: bool, id: &str) -> (DaemonConfig, PathBuf) {
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = !camera;
    cfg.fps = 2.0;
    cfg.telemetry_secs = 5.0;
    cfg.extra = format!("[update]\ntrusted_keys_file = \"{}\"\n", keys.join("bench.pub").display());
    let text = std::fs::read_to_string(cfg.write())
        .unwrap()
        .replace("device_id = \"test-dev\"", &format!("device_id = \"{id}\""));
    let path = cfg.dir.path().join("device.toml");
    std::fs::write(&path, text).unwrap();
    (cfg, path)
}

fn spawn(path: &Path) -> Child {
    Command::new(sparkd_bin())
        .args(["run", "--config"])
        .arg(path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sparkd")
}

/// Push to `target` and time until `n` devices report `active`.
fn push_to_active(broker: &Broker, target: &[&str], bundle: &Path, n: usize) -> Duration {
    let c = Consumer::start(broker.port, "spark/+/update/state");
    let t0 = Instant::now();
    push(broker, target, bundle);
    wait_for(Duration::from_secs(300), || (active_count(&c) >= n).then_some(())).expect("devices did not activate");
    t0.elapsed()
}

fn wait_online(broker: &Broker, n: usize) {
    let c = Consumer::start(broker.port, "spark/+/status");
    wait_for(Duration::from_secs(60), || {
        let online: std::collections::BTreeSet<String> = c
            .snapshot()
            .into_iter()
            .filter(|m| m.json["online"] == true)
            .filter_map(|m| m.json["device_id"].as_str().map(String::from))
            .collect();
        (online.len() >= n).then_some(())
    })
    .expect("devices online");
    std::thread::sleep(Duration::from_millis(500)); // SUBACKs follow the CONNACK
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mb = |bytes: u64, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();

    // 1. Throughput, one device, camera off, against the bare subscriber.
    let broker = Broker::start();
    let (b1, len) = bundle(dir.path(), &["--device", "bench-0"], false);
    let (b_raw, _) = bundle(dir.path(), &["--device", "raw-sink"], false);
    let base = baseline(&broker, &b_raw);
    let (_cfg, path) = device_config(&broker, &dir.path().join("keys"), false, "bench-0");
    let mut d = spawn(&path);
    wait_online(&broker, 1);
    let ours = push_to_active(&broker, &["--device", "bench-0"], &b1, 1);
    let _ = d.kill();
    let _ = d.wait();
    println!(
        "| transfer {:.1} MB, one device, camera off | bare QoS 1 subscriber {:.1} MB/s ({:.2} s) | sparkd to `active` {:.1} MB/s ({:.2} s) | {:.2} |",
        len as f64 / 1e6,
        mb(len, base),
        base.as_secs_f64(),
        mb(len, ours),
        ours.as_secs_f64(),
        base.as_secs_f64() / ours.as_secs_f64()
    );

    // 2. Camera on: engine built, warmed up, canary run before the switch.
    let broker = Broker::start();
    let (b2, _) = bundle(dir.path(), &["--device", "bench-cam"], true);
    let (_cfg, path) = device_config(&broker, &dir.path().join("keys"), true, "bench-cam");
    let mut d = spawn(&path);
    wait_online(&broker, 1);
    let cam = push_to_active(&broker, &["--device", "bench-cam"], &b2, 1);
    let _ = d.kill();
    let _ = d.wait();
    println!(
        "| push to `active`, {:.1} MB model, camera on (engine build + warm-up + canary) | camera off {:.2} s | {:.2} s | {:.2} |",
        len as f64 / 1e6,
        ours.as_secs_f64(),
        cam.as_secs_f64(),
        ours.as_secs_f64() / cam.as_secs_f64()
    );

    // 3. Twenty devices, one group push.
    let broker = Broker::start();
    let (b3, _) = bundle(dir.path(), &["--group", "default"], false);
    let mut fleet_devices = Vec::new();
    for i in 0..DEVICES {
        let (cfg, path) = device_config(&broker, &dir.path().join("keys"), false, &format!("bench-{i:02}"));
        fleet_devices.push((cfg, spawn(&path)));
    }
    wait_online(&broker, DEVICES);
    let all = push_to_active(&broker, &["--group", "default"], &b3, DEVICES);
    for (_, mut c) in fleet_devices {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!(
        "| push to `active`, {:.1} MB model, {DEVICES} devices (group push, camera off) | one device {:.2} s | {:.2} s ({:.1} MB/s delivered in total) | {:.2} |",
        len as f64 / 1e6,
        ours.as_secs_f64(),
        all.as_secs_f64(),
        mb(len * DEVICES as u64, all),
        ours.as_secs_f64() / all.as_secs_f64()
    );
}
