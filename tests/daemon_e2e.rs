//! The real `sparkd` against a real Mosquitto: records, seq, status, signals
//! and start-up failures.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn records_arrive_with_envelope_label_and_no_seq_gaps() {
    let broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/#");
    let cfg = DaemonConfig::new(&broker.url());
    let daemon = Daemon::start(&cfg);
    wait_for(Duration::from_secs(60), || {
        (consumer.records("inference").len() >= 8 && consumer.records("telemetry").len() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("too few records: {:?}\n{}", count_by_stream(&consumer), daemon.log_text()));
    assert!(daemon.terminate(Duration::from_secs(15)).success());

    for stream in ["inference", "telemetry"] {
        for r in consumer.records(stream) {
            assert_eq!(r["device_id"], "test-dev");
            assert_eq!(r["stream"], stream);
            assert!(r["ts"].as_u64().is_some_and(|t| t > 1_600_000_000_000), "ts in Unix ms: {r}");
        }
        assert_no_gaps(&consumer.seqs(stream), stream);
    }
    let inf = consumer.records("inference");
    for r in &inf {
        assert_eq!(r["engine"], "onnx-cpu");
        assert_eq!(r["model"], "centerface");
    }
    // Each demo photo's record says what is in it.
    let astronaut = inf.iter().find(|r| r["frame"]["origin"] == "astronaut.png").expect("astronaut frame");
    assert_eq!(astronaut["label"], "face");
    assert!(astronaut["score"].as_f64().unwrap() > 0.8);
    let coffee = inf.iter().find(|r| r["frame"]["origin"] == "coffee.png").expect("coffee frame");
    assert_eq!(coffee["count"], 0);
    assert!(coffee["label"].is_null());
    let t = &consumer.records("telemetry")[0];
    assert!(t["mem_total_bytes"].as_u64().unwrap() > 0);
    assert!(t["uptime_s"].as_u64().is_some());
    // The retained status says online, then offline after a clean stop. (A
    // connection the loaded machine dropped before its first status shows
    // as the last will's offline first: reconnects are allowed, the order
    // online → offline at the end is what is checked.)
    let statuses: Vec<bool> = consumer
        .snapshot()
        .into_iter()
        .filter(|m| m.topic == "spark/test-dev/status")
        .filter_map(|m| m.json["online"].as_bool())
        .collect();
    let first_online = statuses.iter().position(|&o| o).expect("an online status");
    assert_eq!(statuses.last(), Some(&false), "offline after the stop: {statuses:?}");
    assert!(first_online < statuses.len() - 1, "online came before the final offline: {statuses:?}");
}

#[test]
fn restart_continues_seq_where_it_stopped() {
    let broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/+/inference");
    let cfg = DaemonConfig::new(&broker.url());
    let d = Daemon::start(&cfg);
    wait_for(Duration::from_secs(60), || (consumer.seqs("inference").len() >= 3).then_some(()))
        .expect("first run records");
    assert!(d.terminate(Duration::from_secs(15)).success());
    let first_max = *consumer.seqs("inference").iter().max().unwrap();
    let before = consumer.seqs("inference").len();

    let d = Daemon::start(&cfg);
    wait_for(Duration::from_secs(60), || (consumer.seqs("inference").len() >= before + 3).then_some(()))
        .expect("second run records");
    assert!(d.terminate(Duration::from_secs(15)).success());
    let seqs = consumer.seqs("inference");
    assert!(seqs[before..].iter().all(|&s| s > first_max), "second run restarted seq: {seqs:?}");
    assert_no_gaps(&seqs, "inference across restart");
}

#[test]
fn status_json_reports_engine_and_growing_inference_total() {
    let broker = Broker::start();
    let cfg = DaemonConfig::new(&broker.url());
    let d = Daemon::start(&cfg);
    let first = wait_for(Duration::from_secs(60), || {
        let s = status_json(&cfg.socket());
        (s["inference"]["total"].as_u64() >= Some(1)).then_some(s)
    })
    .expect("inference total grows");
    for key in ["device_id", "version", "uptime_s"] {
        assert!(first.get(key).is_some(), "status lacks {key}: {first}");
    }
    assert_eq!(first["device_id"], "test-dev");
    assert_eq!(first["engine"]["active"], "onnx-cpu");
    assert_eq!(first["engine"]["hailo_present"], false);
    assert!(first["engine"]["fallbacks"].is_u64());
    for key in ["pending", "bytes"] {
        assert!(first["queue"][key].is_u64(), "queue.{key}: {first}");
    }
    assert!(first["queue"].get("oldest_age_s").is_some());
    assert!(first["link"]["vpn_up"].as_bool().unwrap());
    let n1 = first["inference"]["total"].as_u64().unwrap();
    wait_for(Duration::from_secs(60), || {
        (status_json(&cfg.socket())["inference"]["total"].as_u64() > Some(n1)).then_some(())
    })
    .expect("total keeps growing");
    let linked = wait_for(Duration::from_secs(20), || {
        let s = status_json(&cfg.socket());
        s["link"]["broker_connected"].as_bool().unwrap_or(false).then_some(s)
    });
    assert!(linked.is_some(), "broker_connected never true");
    // Human output is a table with the same facts.
    let (code, out, _) = sparkctl(&cfg.socket(), &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("onnx-cpu") && out.contains("test-dev"), "{out}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn sparkctl_without_daemon_exits_3_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = sparkctl(&dir.path().join("nope.sock"), &["status"]);
    assert_eq!(code, 3);
    assert!(err.contains("cannot reach sparkd") && err.contains("hint"), "{err}");
    let (code, _, _) = sparkctl(&dir.path().join("nope.sock"), &["no-such-command"]);
    assert_eq!(code, 2);
}

fn run_expect_failure(cfg: &DaemonConfig) -> String {
    let path = cfg.write();
    let out =
        std::process::Command::new(sparkd_bin()).args(["run", "--config"]).arg(&path).output().expect("run sparkd");
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    err
}

#[test]
fn broken_config_is_rejected_naming_line_and_key() {
    let cfg = DaemonConfig::new("mqtt://127.0.0.1:1");
    let path = cfg.dir.path().join("bad.toml");
    std::fs::write(&path, "[mqtt]\nurl = \"mqtt://x\"\ninflight = 5\n").unwrap();
    let out = std::process::Command::new(sparkd_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3") && err.contains("mqtt.inflight"), "{err}");

    let out = std::process::Command::new(sparkd_bin()).arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let good = cfg.write();
    let out = std::process::Command::new(sparkd_bin()).arg("check-config").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn missing_model_file_fails_start_with_a_clear_error() {
    let mut cfg = DaemonConfig::new("mqtt://127.0.0.1:1");
    let models = cfg.dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::copy(repo().join("models/centerface.toml"), models.join("centerface.toml")).unwrap();
    cfg.manifest = models.join("centerface.toml");
    let err = run_expect_failure(&cfg);
    assert!(err.contains("centerface.onnx") && err.contains("missing"), "{err}");
}

#[test]
fn corrupt_model_file_fails_start_with_a_checksum_error() {
    let mut cfg = DaemonConfig::new("mqtt://127.0.0.1:1");
    let models = cfg.dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::copy(repo().join("models/centerface.toml"), models.join("centerface.toml")).unwrap();
    let mut bytes = std::fs::read(repo().join("models/centerface.onnx")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(models.join("centerface.onnx"), bytes).unwrap();
    cfg.manifest = models.join("centerface.toml");
    let err = run_expect_failure(&cfg);
    assert!(err.contains("corrupt") && err.contains("SHA-256"), "{err}");
}

#[test]
fn sigterm_during_broker_outage_still_exits_zero_and_keeps_records() {
    let port = free_port();
    let cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{port}"));
    let d = Daemon::start(&cfg);
    let pending = wait_for(Duration::from_secs(60), || {
        let s = status_json(&cfg.socket());
        (s["queue"]["pending"].as_u64() >= Some(3)).then_some(s["queue"]["pending"].as_u64().unwrap())
    })
    .expect("records pile up while the broker is down");
    assert!(d.terminate(Duration::from_secs(15)).success());
    // They are delivered once a broker appears.
    let broker = Broker::start_on(port);
    let consumer = Consumer::start(broker.port, "spark/#");
    let d = Daemon::start(&cfg);
    wait_for(Duration::from_secs(60), || {
        (consumer.records("inference").len() + consumer.records("telemetry").len() >= pending as usize).then_some(())
    })
    .expect("backlog delivered after restart");
    assert_eq!(consumer.seqs("inference").iter().min(), Some(&1), "oldest record first");
    assert!(d.terminate(Duration::from_secs(15)).success());
}
