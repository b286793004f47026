//! The real `spark-fleet` binary: keygen → sign → verify, and push/watch
//! against a real Mosquitto, with the pushed chunks reassembled and fed to a
//! device-side `Updater`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Broker, Consumer, wait_for};
use spark_edge::inference::model::sha256_hex;
use spark_edge::update::{
    Bundle, Chunk, Phase, TRUSTED_TIME_FLOOR_UNIX, TrustedKeys, Updater, UpdaterOptions, topics, wall_clock_secs,
};

fn fleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spark-fleet")).args(args).output().expect("run spark-fleet")
}

fn ok(out: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "spark-fleet failed: {text}");
    text
}

fn keygen(dir: &Path, id: &str) -> (PathBuf, PathBuf) {
    ok(&fleet(&["keygen", "--out", dir.to_str().unwrap(), "--key-id", id]));
    (dir.join(format!("{id}.key")), dir.join(format!("{id}.pub")))
}

fn sign(key: &Path, artifact: &Path, target: &[&str], version: &str, out: &Path) {
    let mut args = vec![
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--kind",
        "model",
        "--name",
        "centerface",
        "--version",
        version,
        "--artifact",
        artifact.to_str().unwrap(),
        "--expires-in-days",
        "30",
        "--min-running-version",
        "0.1.0",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(target);
    ok(&fleet(&args));
}

fn test_artifact(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn keygen_sign_verify_round_trip_and_tampering_is_caught() {
    let d = tempfile::tempdir().unwrap();
    let (private, public) = keygen(d.path(), "fleet-2026");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
    // keygen never overwrites a key.
    assert!(!fleet(&["keygen", "--out", d.path().to_str().unwrap(), "--key-id", "fleet-2026"]).status.success());

    let art = d.path().join("centerface.onnx");
    std::fs::write(&art, test_artifact(300_000)).unwrap();
    let bundle = d.path().join("update.bundle");
    sign(&private, &art, &["--device", "dev-1", "--group", "lab"], "1.1.0", &bundle);
    let text = ok(&fleet(&["verify", "--keys", public.to_str().unwrap(), bundle.to_str().unwrap()]));
    assert!(text.contains("OK: model centerface 1.1.0 signed by fleet-2026"), "{text}");

    // The public key file is a valid trusted-keys file for the device.
    let keys = TrustedKeys::parse(&std::fs::read_to_string(&public).unwrap()).unwrap();
    assert_eq!(keys.ids().collect::<Vec<_>>(), ["fleet-2026"]);

    // Another key does not verify it.
    let (_, other_pub) = keygen(d.path(), "someone-else");
    let out = fleet(&["verify", "--keys", other_pub.to_str().unwrap(), bundle.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no signature by a trusted key"));

    // A flipped artifact byte is caught.
    let mut bytes = std::fs::read(&bundle).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    let tampered = d.path().join("tampered.bundle");
    std::fs::write(&tampered, &bytes).unwrap();
    let out = fleet(&["verify", "--keys", public.to_str().unwrap(), tampered.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHA-256"), "{}", String::from_utf8_lossy(&out.stderr));

    // Targets are required; traversal in the stored name is refused.
    let out = fleet(&[
        "sign",
        "--key",
        private.to_str().unwrap(),
        "--kind",
        "model",
        "--name",
        "m",
        "--version",
        "1.0.0",
        "--artifact",
        art.to_str().unwrap(),
        "--expires-in-days",
        "1",
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let out = fleet(&[
        "sign",
        "--key",
        private.to_str().unwrap(),
        "--kind",
        "model",
        "--name",
        "m",
        "--version",
        "1.0.0",
        "--artifact",
        art.to_str().unwrap(),
        "--file-name",
        "../x",
        "--device",
        "d",
        "--expires-in-days",
        "1",
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

fn device(dir: &Path, public: &Path, device: &str, group: &str) -> Updater {
    Updater::open(UpdaterOptions {
        state_dir: dir.to_path_buf(),
        device_id: device.into(),
        group: group.into(),
        keys: TrustedKeys::parse(&std::fs::read_to_string(public).unwrap()).unwrap(),
        max_artifact_bytes: 16 << 20,
        running_version: env!("CARGO_PKG_VERSION").parse().unwrap(),
        reserve_bytes: 0,
    })
    .unwrap()
}

#[test]
fn push_delivers_manifest_and_chunks_that_reassemble_and_stage_on_a_device() {
    assert!(wall_clock_secs() > TRUSTED_TIME_FLOOR_UNIX, "this machine's clock is before the build floor");
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let (private, public) = keygen(d.path(), "k1");
    let art_bytes = test_artifact(700_000); // 3 chunks of 256 KiB
    let art = d.path().join("centerface.onnx");
    std::fs::write(&art, &art_bytes).unwrap();
    let bundle_path = d.path().join("u.bundle");
    sign(&private, &art, &["--group", "lab"], "2.0.0", &bundle_path);
    let bundle = Bundle::parse(&std::fs::read(&bundle_path).unwrap()).unwrap();

    let consumer = Consumer::start(broker.port, "spark/#");
    let out = fleet(&["push", "--broker", &broker.url(), "--group", "lab", bundle_path.to_str().unwrap()]);
    let text = ok(&out);
    assert!(text.contains("3 chunks") && text.contains("all acknowledged"), "{text}");

    let manifest_topic = topics::group_manifest("spark", "lab");
    let chunk_topic = topics::group_chunk("spark", "lab");
    let msgs = wait_for(Duration::from_secs(20), || {
        let m = consumer.snapshot();
        (m.iter().filter(|m| m.topic == chunk_topic).count() == 3).then_some(m)
    })
    .expect("three chunks arrive");
    let manifest = msgs.iter().find(|m| m.topic == manifest_topic).expect("manifest arrives");
    assert_eq!(manifest.json, serde_json::from_slice::<serde_json::Value>(&bundle.envelope).unwrap());

    // Reassemble by index and check the SHA-256.
    let mut chunks: Vec<Chunk> = msgs
        .iter()
        .filter(|m| m.topic == chunk_topic)
        .map(|m| serde_json::from_value(m.json.clone()).unwrap())
        .collect();
    chunks.sort_by_key(|c| c.index);
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.bytes().unwrap()).collect();
    assert_eq!(sha256_hex(&whole), sha256_hex(&art_bytes));

    // A device of the group accepts and stages it from the wire messages.
    let state = tempfile::tempdir().unwrap();
    let mut u = device(state.path(), &public, "dev-7", "lab");
    let envelope = serde_json::to_vec(&manifest.json).unwrap();
    let rec = u.receive_manifest(&envelope, wall_clock_secs()).unwrap();
    let mut last = rec.clone();
    for c in chunks.iter().rev() {
        last = u.receive_chunk(c).unwrap();
    }
    assert_eq!(last.phase, Phase::Staged);
    let rec = u.activate(&rec.update_id).unwrap();
    assert_eq!(std::fs::read(u.current_model_manifest("centerface").unwrap()).unwrap(), art_bytes);

    // A device of another group refuses it.
    let other = tempfile::tempdir().unwrap();
    let mut u2 = device(other.path(), &public, "dev-8", "elsewhere");
    let e = u2.receive_manifest(&envelope, wall_clock_secs()).unwrap_err();
    assert_eq!(e.rejection().unwrap().code(), "not_targeted");

    // watch prints what devices report on spark/<device>/update/state. It
    // is subscribed once it prints a probe report published after its start.
    let out_dir = tempfile::tempdir().unwrap();
    let printed_path = out_dir.path().join("watch.jsonl");
    let mut watch = Command::new(env!("CARGO_BIN_EXE_spark-fleet"))
        .args(["watch", "--broker", &broker.url(), "--json", "--timeout-secs", "120"])
        .stdout(std::fs::File::create(&printed_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let printed = || std::fs::read_to_string(&printed_path).unwrap_or_default();
    let mut opts = rumqttc::MqttOptions::new("test-device", "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 8);
    let mut publish = |device: &str, payload: Vec<u8>| {
        client.publish(topics::state("spark", device), rumqttc::QoS::AtLeastOnce, false, payload).unwrap();
        for ev in conn.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = ev {
                break;
            }
        }
    };
    let probe = br#"{"device_id":"probe","group":"default","update_id":"","state":"received","ts":0}"#;
    wait_for(Duration::from_secs(30), || {
        publish("probe", probe.to_vec());
        printed().contains("probe").then_some(())
    })
    .unwrap_or_else(|| panic!("spark-fleet watch did not subscribe; it printed: {}", printed()));
    publish("dev-7", serde_json::to_vec(&u.report(&rec)).unwrap());
    let line = wait_for(Duration::from_secs(30), || printed().lines().find(|l| l.contains("dev-7")).map(String::from))
        .unwrap_or_else(|| panic!("watch printed: {}", printed()));
    let _ = watch.kill();
    let _ = watch.wait();
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (j["state"].as_str(), j["version"].as_str(), j["group"].as_str()),
        (Some("active"), Some("2.0.0"), Some("lab"))
    );
}
