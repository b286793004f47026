//! `spark-fleet` for the update tests: running it, and a signing key pair
//! with a folder to build bundles in. Each test file adds its own `impl Lab`
//! methods for the bundles it needs.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn fleet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spark-fleet"))
}

/// Runs `spark-fleet ARGS`, asserts success, returns stdout.
pub fn fleet(args: &[&str]) -> String {
    let out = Command::new(fleet_bin()).args(args).output().expect("run spark-fleet");
    assert!(
        out.status.success(),
        "spark-fleet {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A path as the `&str` a command line takes.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A signing key pair and a place to build bundles.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub public: PathBuf,
}

impl Lab {
    /// `artifact` signed as model `name` `version` with `key` (default: the
    /// lab's); `target` is e.g. `["--device", "test-dev"]`, `more` adds
    /// options (a canary).
    pub fn sign_model(
        &self,
        name: &str,
        version: &str,
        artifact: &Path,
        target: &[&str],
        more: &[&str],
        key: Option<&Path>,
    ) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let out = self.dir.path().join(format!("{name}-{version}-{n}.bundle"));
        let mut args = vec![
            "sign",
            "--key",
            s(key.unwrap_or(&self.key)),
            "--kind",
            "model",
            "--name",
            name,
            "--version",
            version,
            "--artifact",
            s(artifact),
            "--expires-in-days",
            "30",
            "--out",
            s(&out),
        ];
        args.extend_from_slice(target);
        args.extend_from_slice(more);
        fleet(&args);
        out
    }

    /// `text` signed as the config update (`--kind config --name sparkd`)
    /// of `test-dev` at `version`.
    pub fn sign_config(&self, text: &str, version: &str) -> PathBuf {
        let file = self.dir.path().join(format!("sparkd-{version}.toml"));
        std::fs::write(&file, text).unwrap();
        self.sign_config_file(&file, version)
    }

    /// The config file `file` signed as the config update of `test-dev` at `version`.
    pub fn sign_config_file(&self, file: &Path, version: &str) -> PathBuf {
        let out = self.dir.path().join(format!("config-{version}.bundle"));
        fleet(&[
            "sign",
            "--key",
            s(&self.key),
            "--kind",
            "config",
            "--name",
            "sparkd",
            "--version",
            version,
            "--artifact",
            s(file),
            "--file-name",
            "sparkd.toml",
            "--expires-in-days",
            "30",
            "--device",
            "test-dev",
            "--out",
            s(&out),
        ]);
        out
    }

    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fleet(&["keygen", "--out", s(&dir.path().join("keys")), "--key-id", "fleet-test"]);
        let key = dir.path().join("keys/fleet-test.key");
        let public = dir.path().join("keys/fleet-test.pub");
        Lab { dir, key, public }
    }
}

/// Publishes one QoS 1 message and waits for the broker's PUBACK.
pub fn publish(broker: &super::Broker, topic: &str, payload: Vec<u8>) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut o = rumqttc::MqttOptions::new(format!("test-pub-{}-{n}", std::process::id()), "127.0.0.1", broker.port);
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut conn) = rumqttc::Client::new(o, 10);
    client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).unwrap();
    for ev in conn.iter() {
        match ev {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("publishing to {topic}: {e}"),
        }
    }
}

/// Devices whose retained status says online. A device subscribes to its
/// update topics before publishing it, so a push after this is received.
pub fn online_devices(c: &super::Consumer) -> std::collections::BTreeSet<String> {
    c.snapshot()
        .into_iter()
        .filter(|m| m.topic.ends_with("/status") && m.json["online"] == true)
        .filter_map(|m| m.json["device_id"].as_str().map(String::from))
        .collect()
}

pub fn wait_online(c: &super::Consumer, device: &str) {
    super::wait_for(std::time::Duration::from_secs(60), || online_devices(c).contains(device).then_some(()))
        .unwrap_or_else(|| panic!("{device} did not come online"));
}

/// `spark-fleet watch --json` on the default group, its output in `out`,
/// returned once it is subscribed (it has printed a probe report).
pub fn start_watch(broker: &super::Broker, out: &Path) -> std::process::Child {
    let watch = Command::new(fleet_bin())
        .args(["watch", "--broker", &broker.url(), "--group", "default", "--json", "--timeout-secs", "300"])
        .stdout(std::fs::File::create(out).expect("watch output file"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn watch");
    let probe = br#"{"device_id":"probe","group":"default","update_id":"","state":"received","ts":0}"#;
    super::wait_for(std::time::Duration::from_secs(30), || {
        publish(broker, "spark/probe/update/state", probe.to_vec());
        std::fs::read_to_string(out).unwrap_or_default().contains("probe").then_some(())
    })
    .expect("spark-fleet watch did not subscribe");
    watch
}

/// `spark-fleet push` of `bundle` to `target` (`--device ID` or `--group G`).
pub fn push(broker: &super::Broker, target: &[&str], bundle: &Path) {
    let url = broker.url();
    let mut args = vec!["push", "--broker", url.as_str()];
    args.extend_from_slice(target);
    args.push(s(bundle));
    fleet(&args);
}

/// The update id of a bundle, from its envelope line.
pub fn update_id(bundle: &Path) -> String {
    let bytes = std::fs::read(bundle).expect("read the bundle");
    spark_edge::update::Bundle::parse(&bytes).expect("a bundle").update_id().expect("its update id")
}

/// The `update/state` reports for `id` (every report when `id` is empty), in
/// arrival order.
pub fn states(c: &super::Consumer, id: &str) -> Vec<serde_json::Value> {
    c.snapshot()
        .into_iter()
        .filter(|m| m.topic.ends_with("/update/state"))
        .map(|m| m.json)
        .filter(|j| id.is_empty() || j["update_id"] == id)
        .collect()
}

/// Waits up to `timeout` for a report of `id` in `state`; panics with every
/// report seen and the daemon's log (`log` reads it).
pub fn wait_state_for(
    c: &super::Consumer,
    id: &str,
    state: &str,
    timeout: std::time::Duration,
    log: impl Fn() -> String,
) -> serde_json::Value {
    super::wait_for(timeout, || states(c, id).into_iter().find(|j| j["state"] == state))
        .unwrap_or_else(|| panic!("no {state} report for {id}; reports: {:#?}\nlog:\n{}", states(c, ""), log()))
}

/// Publishes every `(topic, payload)` retained at QoS 1 on one connection
/// and returns once the broker acknowledged them all (statuses for the
/// fleet view's test and bench).
pub fn publish_retained_all(broker: &super::Broker, messages: Vec<(String, Vec<u8>)>) {
    let mut o = rumqttc::MqttOptions::new(format!("test-retain-{}", std::process::id()), "127.0.0.1", broker.port);
    o.set_max_packet_size(4 << 20, 128 << 20);
    o.set_inflight(100);
    let (client, mut conn) = rumqttc::Client::new(o, 256);
    let want = messages.len();
    let sender = std::thread::spawn(move || {
        for (topic, payload) in messages {
            client.publish(topic, rumqttc::QoS::AtLeastOnce, true, payload).expect("queue a retained status");
        }
        client
    });
    let mut acked = 0;
    for ev in conn.iter() {
        match ev {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                acked += 1;
                if acked == want {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("publishing retained statuses ({acked} of {want} acknowledged): {e}"),
        }
    }
    let client = sender.join().expect("sender thread");
    let _ = client.disconnect();
}
