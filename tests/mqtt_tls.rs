//! MQTT over TLS with client certificates (issue #8 part 4), against a real
//! Mosquitto TLS listener and the real `sparkd` binary.
//!
//! Every certificate is made with the `openssl` CLI (tests/common/pki.rs):
//! a test CA, a server certificate for `localhost`/127.0.0.1, a client
//! certificate from the CA, and a second unrelated CA with a client
//! certificate of its own.
//! The consumer reads over a plain listener of the same broker.
//!
//! Behaviours: mutual TLS delivers records (key found through
//! `$CREDENTIALS_DIRECTORY`); a broker certificate from an unknown CA, a
//! client certificate the broker does not trust and a broker certificate for
//! another name are all refused while sparkd keeps running and says why in
//! `sparkctl link --json`; `tls_server_name` verifies against the configured
//! name; a missing CA, no CA at all, or a key that does not match the
//! certificate make `sparkd run` exit 1 naming the file.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::{Pki, mtls_keys, toml_path};
use common::*;

/// A telemetry-only daemon config for `url` with `[mqtt]` TLS keys.
fn config(url: &str, keys: &[(&str, String)]) -> DaemonConfig {
    let mut cfg = DaemonConfig::new(url);
    cfg.camera_off = true;
    cfg.telemetry_secs = 0.2;
    cfg.mqtt_extra = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    cfg
}

fn link_json(socket: &Path) -> serde_json::Value {
    let (code, out, err) = sparkctl(socket, &["link", "--json"]);
    assert_eq!(code, 0, "sparkctl link failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("link --json is not JSON ({e}): {out}"))
}

/// Waits for the uplink to report a connection error; returns it.
fn wait_last_error(d: &Daemon, socket: &Path) -> String {
    wait_for(Duration::from_secs(20), || link_json(socket)["last_error"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no uplink error reported: {}; log:\n{}", link_json(socket), d.log_text()))
}

/// A refused connection: sparkd keeps running and retrying, the reason
/// stays in `last_error`, nothing reaches the broker, records wait.
fn assert_refused_and_running(mut d: Daemon, cfg: &DaemonConfig, consumer: &Consumer, expect: &[&str]) -> String {
    let socket = cfg.socket();
    let err = wait_last_error(&d, &socket);
    for e in expect {
        assert!(err.contains(e), "last_error {err:?} should contain {e:?}");
    }
    // Several retries later: still running, still refused, still the reason.
    let retries_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < retries_until {
        assert!(d.child.try_wait().unwrap().is_none(), "sparkd exited; log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let link = link_json(&socket);
    assert_eq!(link["broker_connected"], false, "{link}");
    assert_eq!(link["reconnects"], 0, "never connected: {link}");
    assert_eq!(link["last_error"].as_str(), Some(err.as_str()), "{link}");
    assert_eq!(link["last_error_kind"], "tls", "classed from the client's typed error: {link}");
    assert!(queue_json(&socket)["pending"].as_u64().unwrap_or(0) > 0, "records should wait in the outbox");
    assert_eq!(consumer.len(), 0, "nothing may be delivered: {:?}", consumer.snapshot());
    assert!(d.log_text().contains("uplink connect failed"), "the reason is logged once:\n{}", d.log_text());
    let st = d.terminate(Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    err
}

/// Runs `sparkd run` with `cfg` and expects a start failure: (exit code, stderr).
fn run_expect_exit(cfg: &DaemonConfig) -> (i32, String) {
    let path = cfg.write();
    let mut child = Command::new(sparkd_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .env_remove("JOURNAL_STREAM")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sparkd");
    let st = wait_for(Duration::from_secs(20), || child.try_wait().unwrap()).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("sparkd kept running with a broken TLS config");
    });
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (st.code().unwrap_or(-1), err)
}

/// A fresh PKI, a Mosquitto TLS listener presenting `server`'s certificate
/// (signed by the PKI's CA, client certificates required), and a consumer
/// on the broker's plain loopback port.
fn tls_broker(server: &str) -> (Pki, TlsBroker, Consumer) {
    let pki = Pki::new();
    let broker = Broker::start_tls(&pki.listener(&pki.cert(server), &pki.key(server), &pki.cert("ca")));
    let consumer = Consumer::start(broker.broker.port, "spark/test-dev/telemetry");
    (pki, broker, consumer)
}

#[test]
fn mutual_tls_delivers_records_with_the_key_from_the_credentials_directory() {
    let t0 = Instant::now();
    let pki = Pki::new();
    let (cert, key, ca) = (pki.cert("server"), pki.key("server"), pki.cert("ca"));
    let broker = Broker::start_tls(&pki.listener(&cert, &key, &ca));
    let consumer = Consumer::start(broker.broker.port, "spark/#");
    // The key is named relatively, as a systemd credential.
    let mut keys = mtls_keys(&pki, "ca", "client");
    keys[2].1 = "\"client.key\"".into();
    let cfg = config(&broker.url(), &keys);
    let d = Daemon::start_with_env(&cfg, &[("CREDENTIALS_DIRECTORY", pki.dir.path().as_os_str())]);
    let got = wait_for(Duration::from_secs(20), || {
        let s = consumer.seqs("telemetry");
        (s.len() >= 5).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "no telemetry over mTLS: link {}\nsparkd log:\n{}\nbroker log:\n{}",
            link_json(&cfg.socket()),
            d.log_text(),
            broker.log_text()
        )
    });
    assert_no_gaps(&got, "telemetry over mTLS");
    let link = link_json(&cfg.socket());
    assert_eq!(link["broker_connected"], true, "{link}");
    assert!(link["last_error"].is_null(), "{link}");
    assert_eq!(link["broker"], format!("localhost:{}", broker.tls_port), "{link}");
    let q = wait_drained(&cfg.socket(), Duration::from_secs(10));
    let st = d.terminate(Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    assert_all_accepted_arrived(&q, &consumer);
    eprintln!("mqtt_tls: mTLS delivered {} telemetry records in {:?}", got.len(), t0.elapsed());
}

#[test]
fn broker_certificate_from_an_unknown_ca_is_refused_and_reported() {
    let (pki, broker, consumer) = tls_broker("server");
    // sparkd trusts only the rogue CA, which did not sign the broker.
    let cfg = config(&broker.url(), &mtls_keys(&pki, "rogue-ca", "client"));
    let d = Daemon::start(&cfg);
    let err = assert_refused_and_running(d, &cfg, &consumer, &["UnknownIssuer", "not signed by a CA in mqtt.ca_file"]);
    eprintln!("mqtt_tls: unknown broker CA: {err}");
}

#[test]
fn client_certificate_from_an_unknown_ca_is_refused_by_the_broker() {
    let (pki, broker, consumer) = tls_broker("server");
    let cfg = config(&broker.url(), &mtls_keys(&pki, "ca", "rogue-client"));
    let d = Daemon::start(&cfg);
    let err = assert_refused_and_running(d, &cfg, &consumer, &["client certificate"]);
    eprintln!("mqtt_tls: unknown client CA: {err}");
}

#[test]
fn missing_client_certificate_is_refused_by_a_broker_that_requires_one() {
    let (pki, broker, consumer) = tls_broker("server");
    let cfg = config(&broker.url(), &[("ca_file", toml_path(&pki.cert("ca")))]);
    let d = Daemon::start(&cfg);
    let err = assert_refused_and_running(d, &cfg, &consumer, &["client certificate"]);
    eprintln!("mqtt_tls: no client certificate: {err}");
}

#[test]
fn broker_certificate_for_another_name_is_refused() {
    let (pki, broker, consumer) = tls_broker("other-server");
    let cfg = config(&broker.url(), &mtls_keys(&pki, "ca", "client"));
    let d = Daemon::start(&cfg);
    let err =
        assert_refused_and_running(d, &cfg, &consumer, &["\"localhost\"", "broker.example", "mqtt.tls_server_name"]);
    eprintln!("mqtt_tls: hostname mismatch: {err}");
}

#[test]
fn tls_server_name_checks_the_certificate_against_the_configured_name() {
    let (pki, broker, consumer) = tls_broker("other-server");
    // Connect to 127.0.0.1; the certificate says broker.example.
    let url = format!("mqtts://127.0.0.1:{}", broker.tls_port);
    let mut keys = mtls_keys(&pki, "ca", "client");
    keys.push(("tls_server_name", "\"broker.example\"".into()));
    let cfg = config(&url, &keys);
    let d = Daemon::start(&cfg);
    wait_for(Duration::from_secs(20), || (consumer.seqs("telemetry").len() >= 3).then_some(()))
        .unwrap_or_else(|| panic!("no telemetry: {}\n{}", link_json(&cfg.socket()), d.log_text()));
    let st = d.terminate(Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
}

#[test]
fn tls_server_name_is_a_real_check_not_a_bypass() {
    let (pki, broker, consumer) = tls_broker("other-server");
    // A name the broker's certificate does not carry.
    let mut keys = mtls_keys(&pki, "ca", "client");
    keys.push(("tls_server_name", "\"mqtt.example\"".into()));
    let cfg = config(&format!("mqtts://127.0.0.1:{}", broker.tls_port), &keys);
    let d = Daemon::start(&cfg);
    let err = assert_refused_and_running(d, &cfg, &consumer, &["\"mqtt.example\"", "broker.example"]);
    eprintln!("mqtt_tls: tls_server_name mismatch: {err}");
}

#[test]
fn missing_ca_file_stops_sparkd_at_start_naming_the_file() {
    let pki = Pki::new();
    let missing = pki.path("no-such-ca.pem");
    let mut keys = mtls_keys(&pki, "ca", "client");
    keys[0].1 = toml_path(&missing);
    let (code, err) = run_expect_exit(&config("mqtts://localhost:8883", &keys));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&missing.display().to_string()), "stderr should name the CA file: {err}");
    assert!(err.contains("mqtt.ca_file") && err.contains("No such file"), "{err}");

    // mqtts:// with no CA at all: refused, never "accept any certificate".
    let (code, err) = run_expect_exit(&config("mqtts://localhost:8883", &[]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("mqtt.ca_file is not set"), "{err}");
}

#[test]
fn unusable_client_key_stops_sparkd_at_start_naming_the_file() {
    let pki = Pki::new();
    // The key of another certificate.
    let mut keys = mtls_keys(&pki, "ca", "client");
    keys[2].1 = toml_path(&pki.key("rogue-client"));
    let (code, err) = run_expect_exit(&config("mqtts://localhost:8883", &keys));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not belong to the client certificate"), "{err}");
    assert!(err.contains(&pki.key("rogue-client").display().to_string()), "{err}");

    // A certificate where the key should be.
    let mut keys = mtls_keys(&pki, "ca", "client");
    keys[2].1 = toml_path(&pki.cert("client"));
    let (code, err) = run_expect_exit(&config("mqtts://localhost:8883", &keys));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("holds no PEM private key"), "{err}");

    // A CA file with no certificate in it.
    let mut keys = mtls_keys(&pki, "ca", "client");
    keys[0].1 = toml_path(&pki.key("ca"));
    let (code, err) = run_expect_exit(&config("mqtts://localhost:8883", &keys));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("holds no PEM certificate"), "{err}");
}
