//! `spark-fleet` over `mqtts://`, against a real Mosquitto TLS listener that
//! requires client certificates (the rig and certificates of `mqtt_tls`:
//! `Broker::start_tls`, tests/common/pki.rs) and a real `sparkd` connected
//! to it over mutual TLS. The test's own consumer reads the broker's plain
//! loopback listener.
//!
//! Behaviours: `devices` with the right CA and a client certificate sees the
//! daemon's retained status; a CA that did not sign the broker, or no client
//! certificate, fails with a non-zero exit naming the certificate problem;
//! `mqtts://` without `--ca-file` is refused before connecting, naming the
//! flag; `push` over mutual TLS delivers a bundle whose chunks reassemble.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fleet::{Lab, fleet_bin, s, wait_online};
use common::pki::{Pki, mtls_keys};
use common::*;
use spark_edge::inference::model::sha256_hex;
use spark_edge::update::{Bundle, Chunk, topics};

/// A PKI, a TLS broker presenting `server` (client certificates from `ca`
/// required) and a consumer of `spark/#` on its plain port.
fn rig() -> (Pki, TlsBroker, Consumer) {
    let pki = Pki::new();
    let broker = Broker::start_tls(&pki.listener(&pki.cert("server"), &pki.key("server"), &pki.cert("ca")));
    let consumer = Consumer::start(broker.broker.port, "spark/#");
    (pki, broker, consumer)
}

/// `--ca-file CA --client-cert client.pem --client-key client.key`.
fn tls_flags(pki: &Pki, ca: &str) -> Vec<String> {
    let p = |x: &Path| s(x).to_string();
    vec![
        "--ca-file".into(),
        p(&pki.cert(ca)),
        "--client-cert".into(),
        p(&pki.cert("client")),
        "--client-key".into(),
        p(&pki.key("client")),
    ]
}

/// Runs `spark-fleet ARGS` to its end (killed after a minute):
/// (exit code, stdout, stderr).
fn run_fleet(args: &[String]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(fleet_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn spark-fleet");
    let st = wait_for(Duration::from_secs(60), || child.try_wait().expect("try_wait")).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("spark-fleet {args:?} still running after 60 s; stderr:\n{}", std::fs::read_to_string(&err).unwrap());
    });
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (st.code().unwrap_or(-1), read(&out), read(&err))
}

fn args(words: &[&str], more: &[String]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).chain(more.iter().cloned()).collect()
}

#[test]
fn devices_over_mutual_tls_shows_a_sparkd_connected_over_tls() {
    let (pki, broker, consumer) = rig();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true;
    cfg.mqtt_extra = mtls_keys(&pki, "ca", "client").iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let d = Daemon::start(&cfg);
    wait_online(&consumer, "test-dev");

    let (code, out, err) = run_fleet(&args(
        &["devices", "--broker", &broker.url(), "--json", "--timeout-secs", "30"],
        &tls_flags(&pki, "ca"),
    ));
    assert_eq!(code, 0, "devices over mqtts failed: {err}\nbroker log:\n{}", broker.log_text());
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("devices --json is not JSON ({e}): {out}"));
    let rows = v["devices"].as_array().expect("rows");
    let dev = rows.iter().find(|r| r["device_id"] == "test-dev").unwrap_or_else(|| panic!("no test-dev row: {v}"));
    assert_eq!(dev["state"], "online", "{dev}");
    let st = d.terminate(Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
}

#[test]
fn a_broker_certificate_from_another_ca_or_no_client_certificate_fails_naming_the_problem() {
    let (pki, broker, _consumer) = rig();
    let devices = ["devices", "--broker", &broker.url(), "--timeout-secs", "20"];

    // Trusting only the rogue CA, which did not sign the broker.
    let (code, _, err) = run_fleet(&args(&devices, &tls_flags(&pki, "rogue-ca")));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("not signed by a CA in --ca-file") && err.contains("UnknownIssuer"), "{err}");
    eprintln!("fleet_tls: unknown broker CA: {}", err.trim());

    // The right CA, but no client certificate for a broker that requires one.
    let ca = s(&pki.cert("ca")).to_string();
    let (code, _, err) = run_fleet(&args(&devices, &["--ca-file".into(), ca]));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("client certificate"), "{err}");
    eprintln!("fleet_tls: no client certificate: {}", err.trim());

    // Every command connects the same way: push refuses the rogue CA too.
    let lab = Lab::new();
    let art = lab.dir.path().join("m.onnx");
    std::fs::write(&art, b"model bytes").unwrap();
    let bundle = lab.sign_model("m", "1.0.0", &art, &["--group", "lab"], &[], None);
    let push = ["push", "--broker", &broker.url(), "--group", "lab", s(&bundle)];
    let (code, _, err) = run_fleet(&args(&push, &tls_flags(&pki, "rogue-ca")));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("not signed by a CA in --ca-file"), "{err}");
}

#[test]
fn mqtts_without_a_ca_file_is_refused_naming_the_flag() {
    // Nothing listens there: the refusal comes before any connection.
    for cmd in [
        vec!["devices", "--broker", "mqtts://localhost:9"],
        vec!["watch", "--broker", "mqtts://localhost:9", "--timeout-secs", "5"],
        vec!["snapshots", "--broker", "mqtts://localhost:9", "--out", "/nonexistent/never-created"],
    ] {
        let (code, _, err) = run_fleet(&args(&cmd, &[]));
        assert_eq!(code, 1, "{cmd:?}: {err}");
        assert!(err.contains("--ca-file is not given"), "{cmd:?}: {err}");
    }
    assert!(!Path::new("/nonexistent/never-created").exists());
}

#[test]
fn push_over_mutual_tls_delivers_the_bundle() {
    let (pki, broker, consumer) = rig();
    let lab = Lab::new();
    let art_bytes: Vec<u8> = (0..600_000).map(|i| (i * 13 % 251) as u8).collect(); // 3 chunks
    let art = lab.dir.path().join("m.onnx");
    std::fs::write(&art, &art_bytes).unwrap();
    let bundle_path = lab.sign_model("m", "1.0.0", &art, &["--group", "lab"], &[], None);
    let bundle = Bundle::parse(&std::fs::read(&bundle_path).unwrap()).unwrap();

    let (code, out, err) = run_fleet(&args(
        &["push", "--broker", &broker.url(), "--group", "lab", s(&bundle_path)],
        &tls_flags(&pki, "ca"),
    ));
    assert_eq!(code, 0, "push over mqtts failed: {err}\nbroker log:\n{}", broker.log_text());
    assert!(out.contains("3 chunks") && out.contains("all acknowledged"), "{out}");

    let (manifest_topic, chunk_topic) = (topics::group_manifest("spark", "lab"), topics::group_chunk("spark", "lab"));
    let msgs = wait_for(Duration::from_secs(20), || {
        let m = consumer.snapshot();
        (m.iter().filter(|m| m.topic == chunk_topic).count() == 3 && m.iter().any(|m| m.topic == manifest_topic))
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("the bundle did not arrive: {:?}", consumer.snapshot().len()));
    let manifest = msgs.iter().find(|m| m.topic == manifest_topic).unwrap();
    assert_eq!(manifest.json, serde_json::from_slice::<serde_json::Value>(&bundle.envelope).unwrap());
    let mut chunks: Vec<Chunk> = msgs
        .iter()
        .filter(|m| m.topic == chunk_topic)
        .map(|m| serde_json::from_value(m.json.clone()).expect("a chunk"))
        .collect();
    chunks.sort_by_key(|c| c.index);
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.bytes().expect("chunk data")).collect();
    assert_eq!(sha256_hex(&whole), sha256_hex(&art_bytes));
}
