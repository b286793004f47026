//! Remote diagnostics through the real daemon (issue 19 item 4): requests
//! signed with the fleet key over a real Mosquitto to a real `sparkd`,
//! answered on `spark/<device>/diag/reply/<nonce>`; `spark-fleet diagnose`
//! prints what `sparkctl` prints on the device. Bad requests are refused,
//! counted by reason (`sparkctl status --json`: `diagnostics`) and change
//! nothing on the device.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command as Process;
use std::time::Duration;

use common::fleet::{Lab, fleet_bin, publish, s, wait_online};
use common::*;
use spark_edge::control::diagnose::{self, Answer, Command, DiagRequest, Reassembly};

const DEVICE: &str = "test-dev";

struct Rig {
    broker: Broker,
    consumer: Consumer,
    lab: Lab,
    cfg: DaemonConfig,
    daemon: Daemon,
}

fn start() -> Rig {
    start_after(|_, _| {})
}

/// [`start`], with `before(broker, lab)` run before sparkd starts.
fn start_after(before: impl FnOnce(&Broker, &Lab)) -> Rig {
    let broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/#");
    let lab = Lab::new();
    before(&broker, &lab);
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true;
    cfg.telemetry_secs = 2.0;
    cfg.extra = format!("[update]\ntrusted_keys_file = \"{}\"\n", lab.public.display());
    let daemon = Daemon::start(&cfg);
    wait_online(&consumer, DEVICE);
    Rig { broker, consumer, lab, cfg, daemon }
}

/// `spark-fleet diagnose DEVICE WORDS --broker --key [more]`: (exit code, stdout, stderr).
fn diagnose(r: &Rig, device: &str, words: &[&str], more: &[&str]) -> (i32, String, String) {
    diagnose_with_key(r, &r.lab.key, device, words, more)
}

fn diagnose_with_key(r: &Rig, key: &Path, device: &str, words: &[&str], more: &[&str]) -> (i32, String, String) {
    let url = r.broker.url();
    let out = Process::new(fleet_bin())
        .args(["diagnose", device])
        .args(words)
        .args(["--broker", url.as_str(), "--key", s(key)])
        .args(more)
        .output()
        .expect("run spark-fleet diagnose");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not one JSON object ({e}): {out}"))
}

fn keys_of(v: &serde_json::Value) -> Vec<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn now_s() -> u64 {
    spark_edge::record::now_ms() / 1000
}

fn request(nonce: &str, device: &str, command: Command, issued_at: u64, expires_at: u64) -> DiagRequest {
    DiagRequest {
        purpose: diagnose::PURPOSE.into(),
        device_id: device.into(),
        nonce: nonce.into(),
        issued_at,
        expires_at,
        command,
    }
}

fn sign(r: &DiagRequest, key: &Path) -> Vec<u8> {
    let (id, k) = spark_edge::fleet::signing_key::read_signing_key(key).unwrap();
    diagnose::sign_request(r, &[(&id, &k)])
}

/// Every whole answer on `nonce`'s reply topic, in arrival order.
fn answers(c: &Consumer, nonce: &str) -> Vec<Answer> {
    let topic = diagnose::topics::reply("spark", DEVICE, nonce);
    let mut out = Vec::new();
    let mut parts = Reassembly::default();
    for m in c.snapshot().into_iter().filter(|m| m.topic == topic) {
        if let Some(a) = parts.add(&serde_json::to_vec(&m.json).unwrap()).expect("a reply chunk") {
            out.push(a);
            parts = Reassembly::default();
        }
    }
    out
}

fn wait_answers(c: &Consumer, nonce: &str, n: usize, d: &Daemon) -> Vec<Answer> {
    wait_for(Duration::from_secs(60), || Some(answers(c, nonce)).filter(|a| a.len() >= n))
        .unwrap_or_else(|| panic!("no {n} answers on {nonce}; got {:?}\nlog:\n{}", answers(c, nonce), d.log_text()))
}

fn error_code(a: &Answer) -> &str {
    match a {
        Answer::Error(e) => &e.code,
        Answer::Result(v) => panic!("expected a refusal, got a result: {v}"),
    }
}

fn refused_counts(socket: &Path) -> BTreeMap<String, u64> {
    serde_json::from_value(status_json(socket)["diagnostics"]["refused"].clone()).unwrap_or_default()
}

/// Files under the state folder (outside the outbox, whose LMDB pages move
/// with every record) with their sizes and modification times.
fn state_files(dir: &Path) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, std::time::SystemTime)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel == "outbox" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                walk(root, &p, out);
            }
            out.insert(rel, (m.len(), m.modified().unwrap()));
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn signed_status_doctor_queue_requests_are_answered_as_sparkctl_prints_them() {
    let r = start();
    let socket = r.cfg.socket();

    // status: the JSON sparkctl prints, from the device.
    let (code, out, err) = diagnose(&r, DEVICE, &["status"], &["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let remote = json(&out);
    let local = status_json(&socket);
    assert_eq!(remote["device_id"], DEVICE);
    assert_eq!(keys_of(&remote), keys_of(&local), "remote status has sparkctl's fields");
    assert_eq!(keys_of(&remote["queue"]), keys_of(&local["queue"]));

    // status, human: sparkctl's table.
    let (code, out, err) = diagnose(&r, DEVICE, &[], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with("device") && l.ends_with(DEVICE)), "{out}");
    assert!(out.lines().any(|l| l.starts_with("queue")), "{out}");

    // doctor: the checks the daemon runs, exit 1 only when one failed (as sparkctl).
    let (code, out, err) = diagnose(&r, DEVICE, &["doctor"], &["--json"]);
    let remote = json(&out);
    let failed = remote["failed"].as_u64().unwrap_or_else(|| panic!("no failed count: {out}{err}"));
    assert_eq!(code, if failed > 0 { 1 } else { 0 }, "{out}{err}");
    let local = sparkctl_json(&socket, &["doctor"], if failed > 0 { 1 } else { 0 });
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
    };
    let local_names = names(&local);
    assert!(!names(&remote).is_empty());
    for n in names(&remote) {
        assert!(local_names.contains(&n), "remote check {n} not in sparkctl doctor's {local_names:?}");
    }
    let (_, out, _) = diagnose(&r, DEVICE, &["doctor"], &[]);
    assert!(out.contains("passed,") && out.contains("failed"), "{out}");

    // queue
    let (code, out, err) = diagnose(&r, DEVICE, &["queue"], &["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(keys_of(&json(&out)), keys_of(&queue_json(&socket)));

    // logs: this sparkd is not under systemd, so the answer says there is no
    // journal for it (exit 1) unless the machine's journal has sparkd lines.
    let (code, out, err) = diagnose(&r, DEVICE, &["logs", "5"], &["--json"]);
    let v = json(&out);
    match code {
        0 => assert!(v["lines"].as_array().is_some_and(|l| !l.is_empty() && l.len() <= 5), "{out}"),
        1 => assert!(["no_journal", "journal_failed"].contains(&v["error"]["code"].as_str().unwrap_or("")), "{out}"),
        _ => panic!("logs: exit {code}: {out}{err}"),
    }

    // Usage: a command the device does not have is refused before sending.
    let (code, _, err) = diagnose(&r, DEVICE, &["reboot"], &[]);
    assert_eq!(code, 2, "{err}");
    // No device answers: exit 3 at the deadline.
    let (code, out, err) = diagnose(&r, "no-such-dev", &["status"], &["--timeout-secs", "2"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("no answer"), "{err}");

    let answered = status_json(&socket)["diagnostics"]["answered"].as_u64().unwrap();
    assert!(answered >= 6, "answered {answered}");
    assert!(refused_counts(&socket).is_empty(), "{:?}", refused_counts(&socket));
}

#[test]
fn unsigned_forged_expired_replayed_oversized_and_foreign_requests_are_refused_counted_and_change_nothing() {
    // A retained request (it would come back on every reconnect) waits on
    // the broker before sparkd subscribes: ignored and counted.
    let n_retained = "7".repeat(32);
    let r = start_after(|broker, lab| {
        let now = now_s();
        let retained = sign(&request(&n_retained, DEVICE, Command::Status, now, now + 120), &lab.key);
        let topic = diagnose::topics::request("spark", DEVICE);
        common::fleet::publish_retained_all(broker, vec![(topic, retained)]);
    });
    let socket = r.cfg.socket();
    let topic = diagnose::topics::request("spark", DEVICE);
    let now = now_s();
    let before_files = state_files(&r.cfg.state_dir());
    let before_update = sparkctl_json(&socket, &["update", "status"], 0);
    let before_config = sparkctl_json(&socket, &["config", "show"], 0);

    // Unsigned: a bare request, not in an envelope.
    let n_unsigned = "1".repeat(32);
    let bare = request(&n_unsigned, DEVICE, Command::Status, now, now + 60);
    publish(&r.broker, &topic, serde_json::to_vec(&bare).unwrap());
    assert_eq!(error_code(&wait_answers(&r.consumer, &n_unsigned, 1, &r.daemon)[0]), "unsigned");

    // Bad signature: another key under the trusted key's id.
    let n_forged = "2".repeat(32);
    let other = Lab::new();
    let forged_key = other.dir.path().join("forged.key");
    let (_, k) = spark_edge::fleet::signing_key::read_signing_key(&other.key).unwrap();
    std::fs::write(&forged_key, format!("fleet-test {}\n", hex::encode(k.to_bytes()))).unwrap();
    let forged = sign(&request(&n_forged, DEVICE, Command::Status, now, now + 60), &forged_key);
    publish(&r.broker, &topic, forged);
    assert_eq!(error_code(&wait_answers(&r.consumer, &n_forged, 1, &r.daemon)[0]), "bad_signature");

    // Expired.
    let n_expired = "3".repeat(32);
    publish(&r.broker, &topic, sign(&request(&n_expired, DEVICE, Command::Status, now - 600, now - 300), &r.lab.key));
    assert_eq!(error_code(&wait_answers(&r.consumer, &n_expired, 1, &r.daemon)[0]), "expired");

    // For another device.
    let n_other = "4".repeat(32);
    publish(&r.broker, &topic, sign(&request(&n_other, "other-dev", Command::Status, now, now + 60), &r.lab.key));
    assert_eq!(error_code(&wait_answers(&r.consumer, &n_other, 1, &r.daemon)[0]), "other_device");

    // Replayed: the same signed bytes twice; the first is answered.
    let n_replay = "5".repeat(32);
    let good = sign(&request(&n_replay, DEVICE, Command::Status, now, now + 120), &r.lab.key);
    publish(&r.broker, &topic, good.clone());
    let first = wait_answers(&r.consumer, &n_replay, 1, &r.daemon);
    assert!(matches!(&first[0], Answer::Result(v) if v["device_id"] == DEVICE), "{first:?}");
    publish(&r.broker, &topic, good);
    let both = wait_answers(&r.consumer, &n_replay, 2, &r.daemon);
    assert_eq!(error_code(&both[1]), "replayed");

    // Oversized: refused unread, so no reply; only counted.
    let mut big = serde_json::to_vec(&request(&"6".repeat(32), DEVICE, Command::Status, now, now + 60)).unwrap();
    big.resize(diagnose::MAX_REQUEST_BYTES * 2, b' ');
    publish(&r.broker, &topic, big);

    // A key the device does not trust, through spark-fleet: exit 1 with the device's code.
    let unknown_key = other.dir.path().join("unknown.key");
    std::fs::write(&unknown_key, format!("other-key {}\n", hex::encode(k.to_bytes()))).unwrap();
    let (code, out, err) = diagnose_with_key(&r, &unknown_key, DEVICE, &["status"], &["--json"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(json(&out)["error"]["code"], "unknown_key", "{out}");

    let want: BTreeMap<String, u64> =
        ["unsigned", "bad_signature", "expired", "other_device", "replayed", "oversized", "unknown_key", "retained"]
            .iter()
            .map(|c| (c.to_string(), 1))
            .collect();
    let got = wait_for(Duration::from_secs(30), || Some(refused_counts(&socket)).filter(|g| *g == want))
        .unwrap_or_else(|| {
            panic!("refusals {:?}, want {want:?}\nlog:\n{}", refused_counts(&socket), r.daemon.log_text())
        });
    assert_eq!(got, want);
    assert_eq!(status_json(&socket)["diagnostics"]["answered"], 1);
    assert!(answers(&r.consumer, &n_retained).is_empty(), "a retained request was answered");

    // Nothing on the device changed: its files, update state and config.
    assert_eq!(state_files(&r.cfg.state_dir()), before_files);
    assert_eq!(sparkctl_json(&socket, &["update", "status"], 0), before_update);
    assert_eq!(sparkctl_json(&socket, &["config", "show"], 0), before_config);
    // And it still answers a good request.
    let (code, out, err) = diagnose(&r, DEVICE, &["queue"], &["--json"]);
    assert_eq!(code, 0, "{out}{err}");
}
