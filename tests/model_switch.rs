//! A fleet switches a device between the two shipped models with signed
//! model packs: CenterFace (faces) → NanoDet (80 COCO classes) → CenterFace,
//! each pack's canary checked on the device before the switch, and the
//! records afterwards carrying the new model's labels.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fleet::{Lab, fleet, push, s, update_id, wait_online, wait_state_for};
use common::*;

const DEV: [&str; 2] = ["--device", "test-dev"];

/// A pack of the shipped model `stem` (`models/<stem>.toml`) renamed to
/// version `version`, holding `files` from `models/` and the canary photo.
fn pack(lab: &Lab, stem: &str, version: &str, files: &[&str], canary: &str) -> PathBuf {
    let d = lab.dir.path().join(format!("{stem}-{version}"));
    std::fs::create_dir_all(&d).unwrap();
    let toml = std::fs::read_to_string(repo().join("models").join(format!("{stem}.toml"))).unwrap();
    std::fs::write(d.join("model.toml"), toml.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")))
        .unwrap();
    let out = d.join(format!("{stem}.pack"));
    let mut args: Vec<String> =
        ["pack", "--model", s(&d.join("model.toml")), "--out", s(&out)].into_iter().map(String::from).collect();
    args.extend(files.iter().map(|f| s(&repo().join("models").join(f)).to_string()));
    args.push(s(&repo().join("models/demo").join(canary)).into());
    fleet(&args.iter().map(String::as_str).collect::<Vec<_>>());
    out
}

/// Signs `artifact` as model `name` `version` with a canary expecting `label`.
fn sign(lab: &Lab, artifact: &Path, name: &str, version: &str, canary: (&str, &str, &str)) -> PathBuf {
    let (input, label, min) = canary;
    let more = ["--canary-input", input, "--canary-label", label, "--canary-min-score", min];
    lab.sign_model(name, version, artifact, &DEV, &more, None)
}

fn engine_model(socket: &Path) -> String {
    let (code, out, err) = sparkctl(socket, &["engine", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["model"].as_str().unwrap_or_default().to_string()
}

/// Waits for an inference record from `model` `version` whose top label is in `labels`.
fn wait_record(c: &Consumer, model: &str, version: &str, labels: &[&str]) -> serde_json::Value {
    wait_for(Duration::from_secs(90), || {
        c.records("inference")
            .into_iter()
            .find(|r| r["model"] == model && r["model_version"] == version && labels.iter().any(|l| r["label"] == *l))
    })
    .unwrap_or_else(|| panic!("no {model} {version} record labelled {labels:?}: {:?}", c.records("inference").last()))
}

#[test]
fn fleet_switches_centerface_to_nanodet_and_back_with_the_canary_checked_each_way() {
    let broker = Broker::start();
    let lab = Lab::new();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.fps = 2.0;
    cfg.extra = format!("[update]\ntrusted_keys_file = \"{}\"\n", lab.public.display());
    let mut d = Daemon::start(&cfg);
    let c = Consumer::start(broker.port, "spark/#");
    wait_online(&c, "test-dev");
    assert_eq!(engine_model(&cfg.socket()), "centerface 1.0.0");
    let wait = |id: &str, state: &str| wait_state_for(&c, id, state, Duration::from_secs(180), || d.log_text());

    // A NanoDet pack whose canary expects a face on the motorcycle: refused, CenterFace keeps running.
    let nd = pack(&lab, "nanodet", "1.0.0", &["nanodet.onnx", "coco80.txt"], "motorcycle_left.png");
    let wrong = sign(&lab, &nd, "nanodet-g-416", "1.0.0", ("motorcycle_left.png", "face", "0.5"));
    let id = update_id(&wrong);
    push(&broker, &DEV, &wrong);
    let r = wait(&id, "rolled_back");
    assert!(r["reason"].as_str().unwrap_or_default().contains("motorcycle"), "the canary names what it saw: {r}");
    assert_eq!(engine_model(&cfg.socket()), "centerface 1.0.0");

    // CenterFace → NanoDet: the canary wants a motorcycle, and gets one.
    let nd = pack(&lab, "nanodet", "1.0.1", &["nanodet.onnx", "coco80.txt"], "motorcycle_left.png");
    let to_nanodet = sign(&lab, &nd, "nanodet-g-416", "1.0.1", ("motorcycle_left.png", "motorcycle", "0.6"));
    let id = update_id(&to_nanodet);
    push(&broker, &DEV, &to_nanodet);
    wait(&id, "active");
    assert_eq!(engine_model(&cfg.socket()), "nanodet-g-416 1.0.1");
    let r = wait_record(&c, "nanodet-g-416", "1.0.1", &["person", "motorcycle", "cup", "cat"]);
    assert!(r["detections"].as_array().is_some_and(|d| !d.is_empty()), "{r}");

    // The switch holds across a restart: the daemon starts the model the fleet selected.
    assert!(d.terminate(Duration::from_secs(30)).success(), "sparkd stops cleanly");
    d = Daemon::start(&cfg);
    wait_for(Duration::from_secs(60), || sparkctl(&cfg.socket(), &["engine", "--json"]).0.eq(&0).then_some(()))
        .expect("sparkd answers after the restart");
    assert_eq!(engine_model(&cfg.socket()), "nanodet-g-416 1.0.1");
    let wait = |id: &str, state: &str| wait_state_for(&c, id, state, Duration::from_secs(180), || d.log_text());

    // NanoDet → CenterFace: the canary wants a face on the astronaut.
    let cf = pack(&lab, "centerface", "1.1.0", &["centerface.onnx"], "astronaut.png");
    let to_centerface = sign(&lab, &cf, "centerface", "1.1.0", ("astronaut.png", "face", "0.5"));
    let id = update_id(&to_centerface);
    push(&broker, &DEV, &to_centerface);
    wait(&id, "active");
    assert_eq!(engine_model(&cfg.socket()), "centerface 1.1.0");
    wait_record(&c, "centerface", "1.1.0", &["face"]);
}
