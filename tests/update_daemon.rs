//! Fleet updates through the real daemon: `spark-fleet` signs and pushes
//! over a real Mosquitto to real `sparkd` processes, which report on
//! `spark/<device>/update/state`.

mod common;
#[path = "hailo-double/double.rs"]
mod double;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::fleet::{
    Lab, fleet, online_devices, publish, push, s, start_watch, states, update_id, wait_online, wait_state_for,
};
use common::*;

impl Lab {
    /// The demo model as a pack at `version`, with `extra` files (canary images).
    fn pack(&self, version: &str, extra: &[&str]) -> PathBuf {
        let d = self.dir.path().join(format!("pack-{version}"));
        std::fs::create_dir_all(&d).unwrap();
        let toml = std::fs::read_to_string(repo().join("models/centerface.toml")).unwrap();
        let toml = toml.replace("version = \"1.0.0\"", &format!("version = \"{version}\""));
        std::fs::write(d.join("model.toml"), toml).unwrap();
        let out = d.join("centerface.pack");
        let onnx = repo().join("models/centerface.onnx");
        let mut args = vec!["pack", "--model", s(&d.join("model.toml")), "--out", s(&out)]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.push(s(&onnx).into());
        for e in extra {
            args.push(s(&repo().join("models/demo").join(e)).into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fleet(&refs);
        out
    }

    /// Signs `artifact` as model `centerface` `version`; `target` is e.g.
    /// `["--device", "test-dev"]`; `more` adds options (canary, key).
    fn sign(&self, artifact: &Path, version: &str, target: &[&str], more: &[&str], key: Option<&Path>) -> PathBuf {
        self.sign_model("centerface", version, artifact, target, more, key)
    }
}

fn daemon_config(broker: &Broker, lab: &Lab, camera: bool) -> DaemonConfig {
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = !camera;
    cfg.fps = 2.0;
    cfg.telemetry_secs = 2.0;
    cfg.extra = format!("[update]\ntrusted_keys_file = \"{}\"\n", lab.public.display());
    cfg
}

/// Waits for a report of `id` in `state`; panics with every report seen.
fn wait_state(c: &Consumer, id: &str, state: &str, d: &Daemon) -> serde_json::Value {
    wait_state_for(c, id, state, Duration::from_secs(120), || d.log_text())
}

fn engine_model(socket: &Path) -> String {
    let (code, out, err) = sparkctl(socket, &["engine", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["model"].as_str().unwrap_or_default().to_string()
}

fn inference_total(socket: &Path) -> u64 {
    status_json(socket)["inference"]["total"].as_u64().unwrap_or(0)
}

/// After a refused update: the old model is still the one running, and
/// frames keep being inferred.
fn assert_old_model_keeps_running(socket: &Path) {
    assert_eq!(engine_model(socket), "centerface 1.0.0");
    let before = inference_total(socket);
    wait_for(Duration::from_secs(60), || (inference_total(socket) > before).then_some(()))
        .expect("inference stopped after a refused update");
}

const DEV: [&str; 2] = ["--device", "test-dev"];

/// One device under test: a broker, a signing lab, the daemon (camera on or
/// off) and a consumer of everything it publishes, the device online.
struct Rig {
    broker: Broker,
    lab: Lab,
    cfg: DaemonConfig,
    d: Daemon,
    c: Consumer,
}

fn rig(camera: bool) -> Rig {
    let broker = Broker::start();
    let lab = Lab::new();
    let cfg = daemon_config(&broker, &lab, camera);
    let d = Daemon::start(&cfg);
    let c = Consumer::start(broker.port, "spark/#");
    wait_online(&c, "test-dev");
    Rig { broker, lab, cfg, d, c }
}

#[test]
fn pushed_model_update_becomes_active_and_the_engine_runs_the_new_version() {
    let Rig { broker, lab, cfg, d, c } = rig(true);
    assert_eq!(engine_model(&cfg.socket()), "centerface 1.0.0");

    let pack = lab.pack("1.1.0", &["astronaut.png"]);
    let canary = ["--canary-input", "astronaut.png", "--canary-label", "face", "--canary-min-score", "0.5"];
    let bundle = lab.sign(&pack, "1.1.0", &DEV, &canary, None);
    let id = update_id(&bundle);
    push(&broker, &DEV, &bundle);
    wait_state(&c, &id, "active", &d);

    let seen: Vec<String> = states(&c, &id).iter().map(|j| j["state"].as_str().unwrap().to_string()).collect();
    for step in ["received", "verified", "staged", "activating", "active"] {
        assert!(seen.iter().any(|s| s == step), "no {step} report: {seen:?}");
    }
    assert_eq!(engine_model(&cfg.socket()), "centerface 1.1.0");
    // Frames are inferred by the new model: its records name the new version.
    wait_for(Duration::from_secs(60), || {
        c.records("inference").iter().any(|r| r["model_version"] == "1.1.0").then_some(())
    })
    .expect("no inference record from model 1.1.0");

    let (code, out, err) = sparkctl(&cfg.socket(), &["update", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let u: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(u["state"], "idle", "{u}");
    let m = u["installed"].as_array().unwrap().iter().find(|i| i["name"] == "centerface").cloned().unwrap();
    assert_eq!(m["active"], "1.1.0", "{u}");
    assert!(u["updates"].as_array().unwrap().iter().any(|r| r["update_id"] == id && r["state"] == "active"), "{u}");
    let (code, human, _) = sparkctl(&cfg.socket(), &["update", "status"]);
    assert_eq!(code, 0);
    assert!(human.contains("centerface") && human.contains("1.1.0") && human.contains("active"), "{human}");

    // The activated model survives a restart.
    assert!(d.terminate(Duration::from_secs(20)).success());
    let d = Daemon::start(&cfg);
    assert_eq!(engine_model(&cfg.socket()), "centerface 1.1.0", "log:\n{}", d.log_text());
}

#[test]
fn replayed_or_older_model_update_is_rejected_as_not_newer() {
    let Rig { broker, lab, cfg, d, c } = rig(false);
    let pack = lab.pack("1.2.0", &[]);
    let bundle = lab.sign(&pack, "1.2.0", &DEV, &[], None);
    let id = update_id(&bundle);
    push(&broker, &DEV, &bundle);
    wait_state(&c, &id, "active", &d);

    // The same bundle again, and an older version: both refused.
    push(&broker, &DEV, &bundle);
    let older = lab.sign(&lab.pack("1.1.0", &[]), "1.1.0", &DEV, &[], None);
    push(&broker, &DEV, &older);
    let refused = wait_for(Duration::from_secs(60), || {
        let r: Vec<_> = states(&c, "").into_iter().filter(|j| j["code"] == "not_newer").collect();
        (r.len() >= 2).then_some(r)
    })
    .unwrap_or_else(|| panic!("not two not_newer reports: {:#?}", states(&c, "")));
    assert!(refused.iter().all(|j| j["state"] == "rejected"), "{refused:?}");
    let (_, out, _) = sparkctl(&cfg.socket(), &["update", "status", "--json"]);
    let u: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m = u["installed"].as_array().unwrap().iter().find(|i| i["name"] == "centerface").cloned().unwrap();
    assert_eq!(m["active"], "1.2.0", "{u}");
}

#[test]
fn bad_signature_other_device_and_corrupt_artifact_are_rejected_and_the_old_model_keeps_running() {
    let Rig { broker, lab, cfg, d, c } = rig(true);
    let pack = lab.pack("1.1.0", &[]);

    // Bad signature: a different key under the trusted key's id.
    let impostor = lab.dir.path().join("impostor");
    fleet(&["keygen", "--out", s(&impostor), "--key-id", "fleet-test"]);
    let forged = lab.sign(&pack, "1.1.0", &DEV, &[], Some(&impostor.join("fleet-test.key")));
    push(&broker, &DEV, &forged);
    let r = wait_for(Duration::from_secs(60), || states(&c, "").into_iter().find(|j| j["code"] == "bad_signature"))
        .unwrap_or_else(|| panic!("no bad_signature report: {:#?}", states(&c, "")));
    assert_eq!(r["state"], "rejected");

    // Signed for another device, delivered on this device's topic.
    let other = lab.sign(&pack, "1.1.0", &["--device", "other-dev"], &[], None);
    push(&broker, &DEV, &other);
    let r = wait_for(Duration::from_secs(60), || states(&c, "").into_iter().find(|j| j["code"] == "not_targeted"))
        .unwrap_or_else(|| panic!("no not_targeted report: {:#?}", states(&c, "")));
    assert_eq!(r["state"], "rejected");

    // A byte of the artifact flipped after signing: reassembled, then refused.
    // Another version, so its update id is not the forged copy's (the id hashes
    // the manifest, which two signings within one second share).
    let good = lab.sign(&lab.pack("1.1.1", &[]), "1.1.1", &DEV, &[], None);
    let mut bytes = std::fs::read(&good).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0xff;
    let corrupt = lab.dir.path().join("corrupt.bundle");
    std::fs::write(&corrupt, bytes).unwrap();
    let id = update_id(&corrupt);
    assert_ne!(id, update_id(&forged));
    push(&broker, &DEV, &corrupt);
    let r = wait_state(&c, &id, "rejected", &d);
    assert_eq!(r["code"], "artifact_digest", "{r}");

    assert!(!states(&c, "").iter().any(|j| j["state"] == "active"), "{:#?}", states(&c, ""));
    assert_old_model_keeps_running(&cfg.socket());
}

#[test]
fn canary_mismatch_rolls_back_and_the_old_model_keeps_running() {
    let Rig { broker, lab, cfg, d, c } = rig(true);
    // The canary demands a face on a picture of a cup of coffee.
    let pack = lab.pack("1.1.0", &["coffee.png"]);
    let canary = ["--canary-input", "coffee.png", "--canary-label", "face", "--canary-min-score", "0.9"];
    let bundle = lab.sign(&pack, "1.1.0", &DEV, &canary, None);
    let id = update_id(&bundle);
    push(&broker, &DEV, &bundle);
    let r = wait_state(&c, &id, "rolled_back", &d);
    assert!(r["reason"].as_str().unwrap().contains("canary"), "{r}");
    assert!(!states(&c, &id).iter().any(|j| j["state"] == "active"));
    assert_old_model_keeps_running(&cfg.socket());
    let (_, out, _) = sparkctl(&cfg.socket(), &["update", "status", "--json"]);
    let u: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        u["updates"].as_array().unwrap().iter().any(|r| r["update_id"] == id && r["state"] == "rolled_back"),
        "{u}"
    );
}

#[test]
fn sigkill_mid_transfer_then_restart_and_push_again_resumes_and_completes() {
    let broker = Broker::start();
    let lab = Lab::new();
    let cfg = daemon_config(&broker, &lab, false);
    // The update agent stops right after storing its first chunk (test hook).
    let d = Daemon::start_with_env(&cfg, &[(spark_edge::update::CRASH_ENV, std::ffi::OsStr::new("chunk"))]);
    let c = Consumer::start(broker.port, "spark/#");
    wait_online(&c, "test-dev");
    let pack = lab.pack("1.1.0", &[]);
    let bundle = lab.sign(&pack, "1.1.0", &DEV, &[], None);
    let id = update_id(&bundle);
    push(&broker, &DEV, &bundle);
    let chunks = cfg.state_dir().join("updates").join(&id).join("chunks");
    let held = |p: &Path| {
        std::fs::read_dir(p)
            .map(|d| d.filter_map(Result::ok).filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
            .unwrap_or(0)
    };
    wait_for(Duration::from_secs(60), || (held(&chunks) >= 1).then_some(()))
        .unwrap_or_else(|| panic!("no chunk stored; log:\n{}", d.log_text()));
    d.kill9();
    let held_before = held(&chunks);

    let d = Daemon::start(&cfg);
    // Still receiving after the restart, with the chunks it had kept.
    let (_, out, _) = sparkctl(&cfg.socket(), &["update", "status", "--json"]);
    let u: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(u["updates"].as_array().unwrap().iter().any(|r| r["update_id"] == id && r["state"] == "received"), "{u}");
    assert!(held(&chunks) >= held_before, "chunks lost in the restart");
    push(&broker, &DEV, &bundle);
    wait_state(&c, &id, "active", &d);
    let active = cfg.state_dir().join("models/centerface/current/pack/model.toml");
    assert!(std::fs::read_to_string(active).unwrap().contains("version = \"1.1.0\""));
}

#[test]
fn sparkctl_update_apply_installs_a_bundle_file_with_the_same_checks() {
    let broker = Broker::start();
    let lab = Lab::new();
    let cfg = daemon_config(&broker, &lab, true);
    let d = Daemon::start(&cfg);
    let pack = lab.pack("1.1.0", &[]);
    let bundle = lab.sign(&pack, "1.1.0", &DEV, &[], None);
    let (code, out, err) = sparkctl(&cfg.socket(), &["update", "apply", s(&bundle), "--json"]);
    assert_eq!(code, 0, "{out}{err}\nlog:\n{}", d.log_text());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "active", "{v}");
    assert_eq!(engine_model(&cfg.socket()), "centerface 1.1.0");
    // The same file again is a replay: refused, exit 1, nothing changes.
    let (code, _, err) = sparkctl(&cfg.socket(), &["update", "apply", s(&bundle)]);
    assert_eq!(code, 1);
    assert!(err.contains("not_newer"), "{err}");
    assert_eq!(engine_model(&cfg.socket()), "centerface 1.1.0");
}

/// One more `sparkd` with its own device id and no camera (cheap).
fn start_device(broker: &Broker, lab: &Lab, name: &str) -> (DaemonConfig, Child) {
    let cfg = daemon_config(broker, lab, false);
    let child = spawn_sparkd_as(&cfg, name);
    (cfg, child)
}

#[test]
fn fleet_of_twenty_devices_receives_a_group_push_and_watch_shows_every_device_active() {
    const N: usize = 20;
    let broker = Broker::start();
    let lab = Lab::new();
    let devices: Vec<(DaemonConfig, Child)> =
        (0..N).map(|i| start_device(&broker, &lab, &format!("fleet-{i:02}"))).collect();
    for (cfg, _) in &devices {
        let sock = cfg.socket();
        wait_for(Duration::from_secs(60), || std::os::unix::net::UnixStream::connect(&sock).ok())
            .expect("a fleet device did not open its socket");
    }
    // Every device subscribes to its update topics before it publishes its
    // (retained) online status.
    let c = Consumer::start(broker.port, "spark/#");
    wait_for(Duration::from_secs(60), || (online_devices(&c).len() == N).then_some(()))
        .expect("not every device came online");

    let watch_out = lab.dir.path().join("watch.jsonl");
    let watch = start_watch(&broker, &watch_out);
    let bundle = lab.sign(&lab.pack("1.1.0", &[]), "1.1.0", &["--group", "default"], &[], None);
    let id = update_id(&bundle);
    push(&broker, &["--group", "default"], &bundle);

    let active = |c: &Consumer| -> std::collections::BTreeSet<String> {
        states(c, &id)
            .into_iter()
            .filter(|j| j["state"] == "active")
            .filter_map(|j| j["device_id"].as_str().map(String::from))
            .collect()
    };
    wait_for(Duration::from_secs(300), || (active(&c).len() == N).then_some(()))
        .unwrap_or_else(|| panic!("only {:?} of {N} active; reports: {:#?}", active(&c), states(&c, "")));

    // What the operator sees: every device active in `spark-fleet watch`.
    let watched = || -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(&watch_out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|j| j["update_id"] == id && j["state"] == "active")
            .filter_map(|j| j["device_id"].as_str().map(String::from))
            .collect()
    };
    let shown = wait_for(Duration::from_secs(60), || Some(watched()).filter(|w| w.len() == N));
    let mut watch = watch;
    let _ = watch.kill();
    let _ = watch.wait();
    let text = std::fs::read_to_string(&watch_out).unwrap_or_default();
    assert_eq!(shown.map(|w| w.len()), Some(N), "watch showed active: {:?}\n{text}", watched());
    for (_, mut child) in devices {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn update_status(socket: &Path) -> serde_json::Value {
    let (code, out, err) = sparkctl(socket, &["update", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn config_update_is_checked_applied_live_where_possible_and_names_keys_needing_restart() {
    let Rig { broker, lab, cfg, d, c } = rig(false);
    let text = std::fs::read_to_string(cfg.dir.path().join("sparkd.toml")).unwrap();

    // Refused: does not pass check-config; nothing changes.
    let bad = lab.sign_config(&format!("{text}bogus_key = 1\n"), "1.0.0");
    let id = update_id(&bad);
    push(&broker, &DEV, &bad);
    let r = wait_state(&c, &id, "rejected", &d);
    assert_eq!(r["code"], "invalid_config", "{r}");

    // Accepted: the update limit applies at once, the telemetry interval at the next start.
    let new = text.replace("interval_secs = 2.000", "interval_secs = 3.000") + "max_artifact_megabytes = 1\n";
    let good = lab.sign_config(&new, "1.1.0");
    let id = update_id(&good);
    push(&broker, &DEV, &good);
    wait_state(&c, &id, "active", &d);
    let u = update_status(&cfg.socket());
    let restart: Vec<&str> = u["restart_required"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(restart, ["telemetry.interval_secs"], "{u}");

    // Live: a 7 MB model is now over the 1 MB bound.
    let model = lab.sign(&lab.pack("1.1.0", &[]), "1.1.0", &DEV, &[], None);
    push(&broker, &DEV, &model);
    let r = wait_for(Duration::from_secs(60), || states(&c, "").into_iter().find(|j| j["code"] == "oversized"))
        .unwrap_or_else(|| panic!("no oversized report: {:#?}", states(&c, "")));
    assert_eq!(r["state"], "rejected");

    // At the next start the daemon runs the activated config.
    assert!(d.terminate(Duration::from_secs(20)).success());
    let _d = Daemon::start(&cfg);
    let (code, out, _) = sparkctl(&cfg.socket(), &["config", "show", "--json"]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["config"]["telemetry"]["interval_secs"], 3.0, "{shown}");
    assert_eq!(shown["config"]["update"]["max_artifact_megabytes"], 1, "{shown}");
}

#[test]
fn sparkctl_config_reload_applies_the_file_and_names_keys_needing_restart() {
    let broker = Broker::start();
    let lab = Lab::new();
    let cfg = daemon_config(&broker, &lab, false);
    let _d = Daemon::start(&cfg);
    let path = cfg.dir.path().join("sparkd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}max_artifact_megabytes = 5\n").replace("interval_secs = 2.000", "interval_secs = 4.000"),
    )
    .unwrap();
    let (code, out, err) = sparkctl(&cfg.socket(), &["config", "reload", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["applied"], serde_json::json!(["update.max_artifact_megabytes"]), "{v}");
    assert_eq!(v["restart_required"], serde_json::json!(["telemetry.interval_secs"]), "{v}");

    // A file that fails check-config is refused with its file, line and key.
    std::fs::write(&path, format!("{text}bogus_key = 1\n")).unwrap();
    let (code, _, err) = sparkctl(&cfg.socket(), &["config", "reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("bogus_key"), "{err}");
}

#[test]
fn model_built_for_another_hailort_version_is_refused_before_any_chunk() {
    let broker = Broker::start();
    let lab = Lab::new();
    let cfg = daemon_config(&broker, &lab, false);
    // The HailoRT double, loaded as production loads libhailort, says 4.23.0.
    let lib = double::library();
    let d = Daemon::start_with_env(
        &cfg,
        &[("HAILORT_LIBRARY", lib.as_os_str()), ("HAILO_DOUBLE_VERSION", std::ffi::OsStr::new("4.23.0"))],
    );
    let c = Consumer::start(broker.port, "spark/#");
    wait_online(&c, "test-dev");
    let pack = lab.pack("1.1.0", &[]);
    let other = lab.sign(&pack, "1.1.0", &DEV, &["--hailort-version", "4.20.0"], None);
    let id = update_id(&other);
    push(&broker, &DEV, &other);
    let r = wait_for(Duration::from_secs(60), || states(&c, "").into_iter().find(|j| j["code"] == "hailort_mismatch"))
        .unwrap_or_else(|| panic!("no hailort_mismatch report: {:#?}\nlog:\n{}", states(&c, ""), d.log_text()));
    assert_eq!(r["state"], "rejected");
    assert!(!cfg.state_dir().join("updates").join(&id).exists(), "a refused manifest wrote state");

    // The same model for this device's HailoRT (another patch level) is taken.
    let same = lab.sign(&pack, "1.1.0", &DEV, &["--hailort-version", "4.23.1"], None);
    let id = update_id(&same);
    push(&broker, &DEV, &same);
    wait_state(&c, &id, "active", &d);
}

#[test]
fn corrupt_or_malformed_chunks_are_reported_and_the_transfer_goes_on() {
    let Rig { broker, lab, cfg, d, c } = rig(false);
    let bundle = lab.sign(&lab.pack("1.1.0", &[]), "1.1.0", &DEV, &[], None);
    let id = update_id(&bundle);
    let b = spark_edge::update::Bundle::parse(&std::fs::read(&bundle).unwrap()).unwrap();
    publish(&broker, "spark/test-dev/update/manifest", b.envelope.clone());
    wait_state(&c, &id, "received", &d);

    // Not a chunk at all.
    publish(&broker, "spark/test-dev/update/chunk", b"{\"not\":\"a chunk\"}".to_vec());
    // A chunk whose bytes were damaged in transit (its SHA no longer matches).
    let mut chunk = spark_edge::update::chunk_artifact(&id, &b.artifact, spark_edge::update::CHUNK_MAX_BYTES)
        .into_iter()
        .next()
        .unwrap();
    let mut bytes = chunk.bytes().unwrap();
    bytes[10] ^= 0xff;
    chunk.data = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes);
    publish(&broker, "spark/test-dev/update/chunk", serde_json::to_vec(&chunk).unwrap());
    let refused = wait_for(Duration::from_secs(60), || {
        let r: Vec<_> = states(&c, "").into_iter().filter(|j| j["code"] == "corrupt_chunk").collect();
        (r.len() >= 2).then_some(r)
    })
    .unwrap_or_else(|| panic!("not two corrupt_chunk reports: {:#?}", states(&c, "")));
    assert!(refused.iter().any(|j| j["update_id"] == id), "{refused:?}");
    assert!(!cfg.state_dir().join("updates").join(&id).join("chunks/00000000").exists(), "a corrupt chunk was stored");

    // The good copies arrive: the same update completes.
    push(&broker, &DEV, &bundle);
    wait_state(&c, &id, "active", &d);
}

/// Starts `sparkd` (camera on) that stops at update crash point `at`, with
/// stdout in a file so the test sees when it got there.
fn start_crashing(cfg: &DaemonConfig, at: &str) -> (Child, PathBuf) {
    let path = cfg.write();
    let out = cfg.dir.path().join(format!("stdout-{at}.txt"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(cfg.dir.path().join("sparkd.log")).unwrap();
    let child = Command::new(sparkd_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env(spark_edge::update::CRASH_ENV, at)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn sparkd");
    (child, out)
}

#[test]
fn sigkill_at_each_step_of_a_model_update_leaves_a_model_running_and_the_update_completes() {
    let lab = Lab::new();
    let pack = lab.pack("1.1.0", &["astronaut.png"]);
    let canary = ["--canary-input", "astronaut.png", "--canary-label", "face", "--canary-min-score", "0.5"];
    let bundle = lab.sign(&pack, "1.1.0", &DEV, &canary, None);
    for at in ["received", "chunk", "verified", "staged", "activating", "swapped", "installed", "active"] {
        let broker = Broker::start();
        let cfg = daemon_config(&broker, &lab, true);
        let (mut child, stdout) = start_crashing(&cfg, at);
        let c = Consumer::start(broker.port, "spark/#");
        wait_online(&c, "test-dev");
        push(&broker, &DEV, &bundle);
        let line = format!("SPARK_UPDATE_CRASH_POINT {at}");
        wait_for(Duration::from_secs(120), || {
            std::fs::read_to_string(&stdout).unwrap_or_default().contains(&line).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{at}: crash point not reached; log:\n{}",
                std::fs::read_to_string(cfg.dir.path().join("sparkd.log")).unwrap_or_default()
            )
        });
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        // Restarted: it runs the old model or the new one, never neither.
        let d = Daemon::start(&cfg);
        let running = engine_model(&cfg.socket());
        assert!(running == "centerface 1.0.0" || running == "centerface 1.1.0", "{at}: running {running:?}");
        // An activation the crash cut short is completed at start, and said
        // so: its last report was `activating` (regression: it stayed that).
        if ["activating", "swapped", "installed"].contains(&at) {
            wait_state(&c, &update_id(&bundle), "active", &d);
        }
        // A transfer cut short resumes with a new push; a finished one is
        // refused as a replay. Either way 1.1.0 ends up running.
        push(&broker, &DEV, &bundle);
        wait_for(Duration::from_secs(120), || (engine_model(&cfg.socket()) == "centerface 1.1.0").then_some(()))
            .unwrap_or_else(|| {
                panic!("{at}: 1.1.0 never ran; status {}\nlog:\n{}", update_status(&cfg.socket()), d.log_text())
            });
        let u = update_status(&cfg.socket());
        let m = u["installed"].as_array().unwrap().iter().find(|i| i["name"] == "centerface").cloned().unwrap();
        assert_eq!(m["active"], "1.1.0", "{at}: {u}");
    }
}

/// Regression (issue 15): a signed config that passed validation but could
/// not start bricked the device: every later start failed on it. Now it is
/// on trial; the start after the failing one runs the previous config (the
/// file here) and the device reports `rolled_back` with the reason.
#[test]
fn a_config_update_that_cannot_start_is_rolled_back_by_the_next_start() {
    let Rig { broker, lab, cfg, d, c } = rig(false);
    let text = std::fs::read_to_string(cfg.dir.path().join("sparkd.toml")).unwrap();
    assert!(text.contains("[mqtt]\n"), "{text}");
    // Valid, but the password file is not there: the start fails.
    let broken = text.replace("[mqtt]\n", "[mqtt]\nusername = \"u\"\npassword_file = \"/nonexistent/mqtt-password\"\n");
    let bundle = lab.sign_config(&broken, "1.0.0");
    let id = update_id(&bundle);
    push(&broker, &DEV, &bundle);
    wait_state(&c, &id, "active", &d);
    assert!(d.terminate(Duration::from_secs(20)).success());

    // The first start on the new config fails (as systemd would see it).
    let mut first = std::process::Command::new(sparkd_bin())
        .args(["run", "--config"])
        .arg(cfg.dir.path().join("sparkd.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(cfg.dir.path().join("first.log")).unwrap())
        .spawn()
        .unwrap();
    let first_log = || std::fs::read_to_string(cfg.dir.path().join("first.log")).unwrap_or_default();
    let status = wait_for(Duration::from_secs(60), || first.try_wait().ok().flatten())
        .unwrap_or_else(|| panic!("sparkd kept running on the broken config:\n{}", first_log()));
    assert!(!status.success(), "the broken config started: {status}");

    // `check-config --effective` already says what the next start will do.
    let out = std::process::Command::new(sparkd_bin())
        .args(["check-config", "--effective"])
        .arg(cfg.dir.path().join("sparkd.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("will be rolled back"), "{out:?}");

    // The restart runs the file's config and reports the rollback.
    let d = Daemon::start(&cfg);
    let r = wait_state(&c, &id, "rolled_back", &d);
    assert!(r["reason"].as_str().unwrap_or_default().contains("did not stay up"), "{r}");
    let (code, out, _) = sparkctl(&cfg.socket(), &["config", "show", "--json"]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["config"]["mqtt"]["username"], "", "{shown}");
    // And the start after that too: the rollback is final.
    assert!(d.terminate(Duration::from_secs(20)).success());
    let _d = Daemon::start(&cfg);
}

fn link_json(socket: &Path) -> serde_json::Value {
    let (code, out, err) = sparkctl(socket, &["link", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Regression (issue 15): a retained 2 MB message on an update topic is
/// re-sent by the broker on every subscribe; it was above the client's
/// packet limit, so the uplink reconnected about 5 times a second and acks
/// stalled. Now the message is counted, the update topics pause, and the
/// records keep flowing on one connection.
#[test]
fn a_retained_oversized_update_message_does_not_cut_the_uplink_off() {
    let Rig { broker, lab: _lab, cfg, d, c } = rig(false);
    let big = cfg.dir.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 2 << 20]).unwrap();
    for topic in ["spark/test-dev/update/chunk", "spark/group/default/update/chunk"] {
        let st = Command::new("mosquitto_pub")
            .args(["-p", &broker.port.to_string(), "-q", "1", "-r", "-t", topic, "-f"])
            .arg(&big)
            .status()
            .unwrap();
        assert!(st.success(), "mosquitto_pub {topic}");
    }
    // A new start subscribes again and so gets the retained messages.
    assert!(d.terminate(Duration::from_secs(20)).success());
    let d = Daemon::start(&cfg);
    let sock = cfg.socket();
    wait_for(Duration::from_secs(60), || (link_json(&sock)["inbound_discarded"].as_u64()? >= 1).then_some(()))
        .unwrap_or_else(|| panic!("the oversized message was not counted: {}\n{}", link_json(&sock), d.log_text()));
    wait_for(Duration::from_secs(60), || link_json(&sock)["broker_connected"].as_bool().filter(|&b| b))
        .unwrap_or_else(|| panic!("the uplink did not come back: {}", link_json(&sock)));
    // Five more telemetry records (one per 2 s) reach the consumer on the
    // same connection: no reconnect loop, acks flowing.
    let reconnects = link_json(&sock)["reconnects"].as_u64().unwrap();
    let seen = c.seqs("telemetry").into_iter().max().unwrap_or(0);
    wait_for(Duration::from_secs(60), || {
        (c.seqs("telemetry").into_iter().filter(|&s| s > seen).count() >= 5).then_some(())
    })
    .unwrap_or_else(|| panic!("records stopped flowing: {}\n{}", link_json(&sock), d.log_text()));
    let after = link_json(&sock);
    assert_eq!(after["reconnects"].as_u64().unwrap(), reconnects, "the uplink reconnected: {after}");
    assert_eq!(status_json(&sock)["queue"]["pending"].as_u64().unwrap_or(u64::MAX) <= 2, true, "acks stalled");
}
