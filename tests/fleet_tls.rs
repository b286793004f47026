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
//! flag; `push` over mutual TLS delivers a bundle whose chunks reassemble;
//! `diagnose` over mutual TLS is answered by a `sparkd` connected over TLS;
//! a rollout started over mutual TLS, SIGKILLed and resumed with no flags
//! reconnects from its state file (flags given to `resume` win). Logins,
//! against a plain broker with a password file (`allow_anonymous false`):
//! the right password connects, a wrong one ends the command naming the
//! refused login (no retrying), a missing or oversized password file is
//! refused naming the file.

mod common;
#[path = "common/devsim.rs"]
mod devsim;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fleet::{Lab, fleet, fleet_bin, s, wait_online};
use common::pki::{Pki, mtls_keys};
use common::*;
use devsim::{Behaviour, DeviceSim, SimDevice};
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

/// A plain broker (`broker.port`) that takes only the login `ops` /
/// `s3cret` (a `mosquitto_passwd` file, `allow_anonymous false`), and a
/// folder for password files.
fn login_broker() -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    let st = Command::new("mosquitto_passwd")
        .args(["-c", "-b", s(&passwd), "ops", "s3cret"])
        .stdout(Stdio::null())
        .status()
        .expect("mosquitto_passwd is not installed: run scripts/setup.sh");
    assert!(st.success(), "mosquitto_passwd: {st:?}");
    // The rig's config allows anonymous clients; a later line overrides it.
    let broker =
        Broker::start_config(free_port(), |_| format!("allow_anonymous false\npassword_file {}\n", passwd.display()));
    (broker, dir)
}

#[test]
fn a_login_from_a_password_file_connects_and_a_wrong_missing_or_oversized_one_is_refused() {
    let (broker, dir) = login_broker();
    let url = broker.url();
    let pw = |name: &str, text: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        s(&p).to_string()
    };
    let login = |file: &str| vec!["--username".to_string(), "ops".into(), "--password-file".into(), file.into()];
    let devices = ["devices", "--broker", &url, "--json", "--timeout-secs", "20"];

    // The right password (the file's trailing newline is not part of it).
    let right = pw("right", b"s3cret\n");
    let (code, out, err) = run_fleet(&args(&devices, &login(&right)));
    assert_eq!(code, 0, "the right login failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert!(v["devices"].is_array(), "{v}");

    // The broker does require a login: without one it refuses.
    let (code, _, err) = run_fleet(&args(&devices, &[]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused the connection"), "{err}");

    // A wrong password ends the command: `watch` without --timeout-secs
    // would retry for ever on a failure it takes for a network one.
    let wrong = pw("wrong", b"not-the-password\n");
    for cmd in [&devices[..], &["watch", "--broker", &url]] {
        let (code, _, err) = run_fleet(&args(cmd, &login(&wrong)));
        assert_eq!(code, 1, "{cmd:?}: {err}");
        assert!(err.contains("refused the connection") && err.contains("--password-file"), "{cmd:?}: {err}");
        assert!(!err.contains("not-the-password"), "the password is never printed: {err}");
        eprintln!("fleet_tls: wrong password: {}", err.trim());
    }

    // A password file that is not there, or too large to be one, is named.
    let missing = dir.path().join("no-such-file");
    let mut big = b"s3cret\n".to_vec();
    big.resize(64 * 1024 + 1, b'x');
    let oversized = pw("oversized", &big);
    for file in [s(&missing).to_string(), oversized] {
        let (code, _, err) = run_fleet(&args(&devices, &login(&file)));
        assert_eq!(code, 1, "{file}: {err}");
        assert!(err.contains("--password-file") && err.contains(&file), "{file}: {err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}

#[test]
fn diagnose_over_mutual_tls_is_answered_by_a_sparkd_connected_over_tls() {
    let (pki, broker, consumer) = rig();
    let lab = Lab::new();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true;
    cfg.mqtt_extra = mtls_keys(&pki, "ca", "client").iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    cfg.extra = format!("[update]\ntrusted_keys_file = \"{}\"\n", lab.public.display());
    let d = Daemon::start(&cfg);
    wait_online(&consumer, "test-dev");

    let diagnose = ["diagnose", "test-dev", "status", "--json", "--broker", &broker.url(), "--key", s(&lab.key)];
    let (code, out, err) = run_fleet(&args(&diagnose, &tls_flags(&pki, "ca")));
    assert_eq!(code, 0, "diagnose over mqtts failed: {out}{err}\nsparkd log:\n{}", d.log_text());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(v["device_id"], "test-dev", "{v}");
    let keys = |v: &serde_json::Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys(&v), keys(&status_json(&cfg.socket())), "the answer has sparkctl status --json's fields");

    // A broker certificate the CA file did not sign: exit 1 (not 3, "no
    // answer"), naming the problem.
    let (code, _, err) = run_fleet(&args(&diagnose, &tls_flags(&pki, "rogue-ca")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not signed by a CA in --ca-file"), "{err}");
    let st = d.terminate(Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
}

#[test]
fn a_rollout_started_over_mutual_tls_and_sigkilled_resumes_over_tls_with_no_flags() {
    const N: usize = 6;
    let (pki, broker, _consumer) = rig();
    let lab = Lab::new();
    let ids: Vec<String> = (0..N).map(|i| format!("tls-sim-{i}")).collect();
    let sims = ids
        .iter()
        .map(|id| SimDevice { id: id.clone(), group: "default".into(), behaviour: Behaviour::Healthy })
        .collect();
    // The simulated devices use the plain listener; the rollout the TLS one.
    let sim = DeviceSim::start(broker.broker.port, sims, &lab.public);
    let art = lab.dir.path().join("tiny.pack");
    std::fs::write(&art, b"tiny artifact for simulated devices").unwrap();
    let bundle = lab.sign_model("centerface", "1.1.0", &art, &["--group", "default"], &[], None);
    let state = lab.dir.path().join("rollouts");
    let log = std::fs::File::create(state.with_extension("log")).unwrap();
    let mut start = Command::new(fleet_bin())
        .args(["rollout", "start", s(&bundle), "--broker", &broker.url(), "--waves", "50%,100%", "--soak", "3s"])
        .args(["--report-timeout", "60s", "--halt-when", "failed > 0%", "--group", "default"])
        .args(["--state-dir", s(&state)])
        .args(tls_flags(&pki, "ca"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn spark-fleet rollout start");
    let state_file = || -> Option<(std::path::PathBuf, serde_json::Value)> {
        let p = std::fs::read_dir(&state)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "json"))?;
        let v = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
        Some((p, v))
    };
    // Killed while the first wave soaks: no push is in flight.
    let soaking = wait_for(Duration::from_secs(60), || {
        let soaking = state_file().filter(|(_, v)| v["wave"] == 0 && v["soak_started_ms"].is_u64());
        match soaking {
            Some(s) => Some(Some(s)),
            // Ended (an error) before soaking: nothing to wait for.
            None => start.try_wait().ok().flatten().map(|_| None),
        }
    })
    .flatten();
    let _ = start.kill();
    let _ = start.wait();
    let start_log = std::fs::read_to_string(state.with_extension("log")).unwrap_or_default();
    let (path, before) = soaking.unwrap_or_else(|| panic!("the first wave did not soak; log:\n{start_log}"));
    assert_eq!(before["phase"]["state"], "running", "{start_log}");
    let id = before["id"].as_str().unwrap().to_string();

    // The state file holds the flags as absolute paths, not what they name.
    let c = &before["connection"];
    assert_eq!(c["ca_file"], s(&pki.cert("ca")), "{before}");
    assert_eq!(c["client_cert"], s(&pki.cert("client")), "{before}");
    assert_eq!(c["client_key"], s(&pki.key("client")), "{before}");
    let text = std::fs::read_to_string(&path).unwrap();
    let key_pem = std::fs::read_to_string(pki.key("client")).unwrap();
    let key_body = key_pem.lines().find(|l| !l.starts_with("-----")).unwrap();
    assert!(!text.contains("PRIVATE KEY") && !text.contains(key_body), "key material in the state file: {text}");

    // Flags given to resume win over the stored ones: trusting only the
    // rogue CA fails the handshake, and the stored settings stay as they were.
    let out = Command::new(fleet_bin())
        .args(["rollout", "resume", &id, "--state-dir", s(&state)])
        .args(tls_flags(&pki, "rogue-ca"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not signed by a CA in --ca-file"), "{err}");
    assert_eq!(state_file().unwrap().1["connection"], before["connection"], "failed flags were stored");

    // No connection flags: the mqtts:// URL would be refused without the
    // stored --ca-file, and the broker requires the stored client certificate.
    let out = Command::new(fleet_bin()).args(["rollout", "resume", &id, "--state-dir", s(&state)]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}\nbroker log:\n{}", broker.log_text());
    assert!(text.contains("with the connection settings stored by start"), "{text}");
    let (_, after) = state_file().unwrap();
    assert_eq!(after["phase"]["state"], "completed", "{text}");
    assert_eq!(after["decisions"].as_array().map(Vec::len), Some(2), "{text}");
    assert_eq!(after["decisions"][1]["figures"]["active"], N / 2, "{text}");
    assert_eq!(after["connection"], before["connection"], "a resume without flags keeps the stored ones");
    let manifests = sim.manifests.lock().unwrap().clone();
    assert_eq!(manifests.len(), N, "{manifests:?}\n{text}");
    assert!(manifests.values().all(|n| *n == 1), "a device was pushed twice: {manifests:?}\n{text}");
    let shown = fleet(&["rollout", "status", &id, "--state-dir", s(&state)]);
    assert!(shown.contains(&format!("--ca-file {}", s(&pki.cert("ca")))), "{shown}");
}
