//! The real `sparkd` choosing between the Hailo-8 (here: the C test double
//! of the HailoRT ABI, loaded exactly as production loads libhailort) and
//! ONNX Runtime on the CPU, falling back mid-stream and recovering.

mod common;
#[path = "hailo-double/double.rs"]
mod double;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A copy of the demo model's manifest that also names a HEF (the double's
/// format, for the model's 640x480 input).
fn manifest_with_hef(dir: &Path, hailort_version: &str) -> PathBuf {
    let hef = double::hef_bytes(480, 640);
    std::fs::write(dir.join("centerface.hef"), &hef).unwrap();
    std::os::unix::fs::symlink(repo().join("models/centerface.onnx"), dir.join("centerface.onnx")).unwrap();
    let mut text = std::fs::read_to_string(repo().join("models/centerface.toml")).unwrap();
    text = text.replace(
        "[input]",
        &format!(
            "[hef]\nfile = \"centerface.hef\"\nsha256 = \"{}\"\nhailort_version = \"{hailort_version}\"\n\n[input]",
            spark_edge::inference::model::sha256_hex(&hef)
        ),
    );
    let p = dir.join("centerface.toml");
    std::fs::write(&p, text).unwrap();
    p
}

struct Setup {
    cfg: DaemonConfig,
    control: PathBuf,
    env: Vec<(String, String)>,
}

fn setup(broker: &Broker, hailort_version: &str) -> Setup {
    let mut cfg = DaemonConfig::new(&broker.url());
    let models = cfg.dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    cfg.manifest = manifest_with_hef(&models, hailort_version);
    cfg.fps = 10.0;
    cfg.extra = "[hailo]\nreprobe_min_secs = 0.2\nreprobe_max_secs = 0.5\n".into();
    let control = cfg.dir.path().join("hailo-control");
    std::fs::write(&control, "ok").unwrap();
    let env = vec![
        ("HAILORT_LIBRARY".to_string(), double::library().display().to_string()),
        ("HAILO_DOUBLE_CONTROL".to_string(), control.display().to_string()),
    ];
    Setup { cfg, control, env }
}

fn start(s: &Setup, extra_env: &[(&str, &str)]) -> Daemon {
    let path = s.cfg.write();
    let logf = std::fs::OpenOptions::new().create(true).append(true).open(s.cfg.dir.path().join("sparkd.log")).unwrap();
    let mut cmd = Command::new(sparkd_bin());
    cmd.args(["run", "--config"]).arg(&path).stdout(Stdio::null()).stderr(logf).env("RUST_LOG", "info");
    for (k, v) in &s.env {
        cmd.env(k, v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let d = Daemon { child: cmd.spawn().unwrap(), log: s.cfg.dir.path().join("sparkd.log") };
    wait_for(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(s.cfg.socket()).ok())
        .unwrap_or_else(|| panic!("no socket; log:\n{}", d.log_text()));
    d
}

fn engines(c: &Consumer) -> Vec<String> {
    c.records("inference").iter().map(|r| r["engine"].as_str().unwrap_or("?").to_string()).collect()
}

#[test]
fn hailo_is_used_falls_back_mid_stream_without_loss_and_recovers() {
    let broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/#");
    let s = setup(&broker, "4.23.0");
    let d = start(&s, &[]);
    let st = wait_for(Duration::from_secs(30), || {
        let st = status_json(&s.cfg.socket());
        (st["inference"]["total"].as_u64() >= Some(5)).then_some(st)
    })
    .expect("inferences on the accelerator");
    assert_eq!(st["engine"]["active"], "hailo", "{st}");
    assert_eq!(st["engine"]["hailo_present"], true);
    // `sparkctl engine` shows the HEF as the accelerator opened it.
    let hef = &st["engine"]["hef"];
    assert_eq!((hef["input_format"].as_str(), hef["input_order"].as_str()), (Some("FLOAT32"), Some("NHWC")), "{st}");
    let outputs: Vec<_> = hef["outputs"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    assert_eq!(outputs.len(), double::OUTPUTS.len(), "{st}");
    assert_eq!((outputs[0]["name"].as_str(), outputs[0]["order"].as_str()), (Some("centerface/heatmap"), Some("NHWC")));
    assert!(outputs[0]["nms_shape"].is_null());
    let (code, text, _) = sparkctl(&s.cfg.socket(), &["engine"]);
    assert_eq!(code, 0);
    assert!(text.contains("hef input") && text.contains("FLOAT32 NHWC"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("hef output") && l.contains("centerface/landmarks (NHWC)")), "{text}");
    wait_for(Duration::from_secs(20), || engines(&consumer).iter().any(|e| e == "hailo").then_some(()))
        .expect("hailo records");

    // The device disappears mid-stream.
    std::fs::write(&s.control, "lost").unwrap();
    let st = wait_for(Duration::from_secs(30), || {
        let st = status_json(&s.cfg.socket());
        (st["engine"]["active"] == "onnx-cpu" && st["engine"]["fallbacks"].as_u64() >= Some(1)).then_some(st)
    })
    .expect("fell back to the CPU");
    assert!(st["engine"]["last_error"].as_str().unwrap_or("").contains("hailo"), "{st}");
    let n = consumer.records("inference").len();
    wait_for(Duration::from_secs(30), || {
        engines(&consumer)[n.min(engines(&consumer).len())..].iter().any(|e| e == "onnx-cpu").then_some(())
    })
    .expect("cpu records after the loss");

    // It comes back: the daemon switches back by itself.
    std::fs::write(&s.control, "ok").unwrap();
    wait_for(Duration::from_secs(30), || (status_json(&s.cfg.socket())["engine"]["active"] == "hailo").then_some(()))
        .expect("back on the accelerator");
    let n = consumer.records("inference").len();
    wait_for(Duration::from_secs(30), || {
        engines(&consumer)[n.min(engines(&consumer).len())..].iter().any(|e| e == "hailo").then_some(())
    })
    .expect("hailo records after recovery");
    let st = status_json(&s.cfg.socket());
    assert_eq!(st["inference"]["failed"], 0, "no frame lost to the accelerator: {st}");
    assert!(d.terminate(Duration::from_secs(15)).success());
    let seqs = consumer.seqs("inference");
    assert_no_gaps(&seqs, "inference across fallback and recovery");
    assert!(
        st["engine"]["hailo_seconds"].as_f64().unwrap() > 0.0 && st["engine"]["cpu_seconds"].as_f64().unwrap() > 0.0
    );
}

/// The device goes while frames are in flight: the double's latency is 300 ms and the camera
/// runs at 20 fps, so about six frames are on the device at any time (depth 8 by default). Every
/// frame taken gets exactly one record, in capture order; the only frame numbers missing are
/// frames the camera queue dropped (counted), none lost with the device.
#[test]
fn device_lost_with_frames_in_flight_loses_none_and_records_none_twice() {
    let broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/#");
    let mut s = setup(&broker, "4.23.0");
    s.cfg.fps = 20.0;
    let d = start(&s, &[("HAILO_DOUBLE_TIMING", "1000:300000:8")]);
    wait_for(Duration::from_secs(30), || {
        (engines(&consumer).iter().filter(|e| *e == "hailo").count() >= 10).then_some(())
    })
    .unwrap_or_else(|| panic!("hailo records; log:\n{}", d.log_text()));
    std::fs::write(&s.control, "lost").unwrap();
    let n = wait_for(Duration::from_secs(30), || {
        let st = status_json(&s.cfg.socket());
        (st["engine"]["active"] == "onnx-cpu").then(|| consumer.records("inference").len())
    })
    .expect("fell back to the CPU");
    wait_for(Duration::from_secs(60), || (consumer.records("inference").len() >= n + 5).then_some(()))
        .expect("cpu records after the loss");
    // Records first, then the counters (which only grow): every gap must be a counted drop.
    let records = consumer.records("inference");
    let st = status_json(&s.cfg.socket());
    assert!(d.terminate(Duration::from_secs(15)).success());
    let seqs: Vec<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_no_gaps(&seqs, "inference records");
    let numbers: Vec<u64> = records.iter().filter_map(|r| r["frame"]["number"].as_u64()).collect();
    assert_eq!(numbers.len(), records.len());
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "frames in capture order, none twice: {numbers:?}");
    let missing = numbers.last().unwrap() - numbers[0] + 1 - numbers.len() as u64;
    let dropped = st["inference"]["cameras"][0]["dropped"].as_u64().expect("cam0 dropped");
    assert!(missing <= dropped, "{missing} frames missing but only {dropped} dropped by the camera queue: {numbers:?}");
    // One switch, to the CPU, and it stays there (the device is still gone).
    let kinds: Vec<&str> = records.iter().map(|r| r["engine"].as_str().unwrap_or("?")).collect();
    let first_cpu = kinds.iter().position(|k| *k == "onnx-cpu").expect("cpu records");
    assert!(kinds[..first_cpu].iter().all(|k| *k == "hailo") && kinds[first_cpu..].iter().all(|k| *k == "onnx-cpu"));
    assert_eq!(st["inference"]["failed"], 0, "no frame failed: {st}");
    assert_eq!(st["engine"]["fallbacks"], 1, "{st}");
}

fn cpu_with_reason(env: &[(&str, &str)], hailort_version: &str, reason: &str) {
    let broker = Broker::start();
    let s = setup(&broker, hailort_version);
    let d = start(&s, env);
    let st = wait_for(Duration::from_secs(30), || {
        let st = status_json(&s.cfg.socket());
        (st["inference"]["total"].as_u64() >= Some(2)).then_some(st)
    })
    .expect("inference runs");
    assert_eq!(st["engine"]["active"], "onnx-cpu", "{st}");
    assert_eq!(st["engine"]["hailo_present"], false);
    let err = st["engine"]["last_error"].as_str().unwrap_or("").to_string();
    assert!(err.contains(reason), "last_error should mention {reason:?}: {err}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn cpu_is_used_when_the_library_is_missing() {
    cpu_with_reason(
        &[("HAILORT_LIBRARY", "/nonexistent/libhailort.so.4.23.0")],
        "4.23.0",
        "/nonexistent/libhailort.so",
    );
}

#[test]
fn cpu_is_used_when_no_device_is_present() {
    cpu_with_reason(&[("HAILO_DOUBLE_NO_DEVICE", "1")], "4.23.0", "no Hailo device found");
}

#[test]
fn cpu_is_used_when_the_hef_is_invalid() {
    cpu_with_reason(&[("HAILO_DOUBLE_INVALID_HEF", "1")], "4.23.0", "INVALID_HEF");
}

#[test]
fn library_version_mismatch_is_refused_naming_both_versions() {
    cpu_with_reason(&[("HAILO_DOUBLE_VERSION", "4.18.0")], "4.23.0", "4.18");
}

#[test]
fn hef_for_another_hailort_version_is_refused() {
    cpu_with_reason(&[], "4.20.0", "compiled for HailoRT 4.20.0");
}
