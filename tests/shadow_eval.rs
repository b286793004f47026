//! Shadow evaluation of a model update (issue 19 item 3): a real sparkd on
//! the replay camera runs NanoDet; candidates signed with `--shadow` are
//! loaded beside it on the CPU and compared frame by frame, and the device
//! reports the agreement on `update/state`. The expected agreement is
//! computed here from the live model's own records, not hard-coded.
//!
//! The replay folder holds one picture, a 2×2 mosaic of four demo photos
//! (several labels, several scores), so every frame the live model sees is
//! the same and any sample of frames the shadow takes has the same
//! expected figures.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fleet::{Lab, fleet, push, s, states, update_id, wait_online, wait_state_for};
use common::*;

const DEV: [&str; 2] = ["--device", "test-dev"];
const LIVE: &str = "nanodet-g-416";
/// Frames compared before a report's figures are judged.
const MIN_FRAMES: u64 = 3;

/// A pack of NanoDet renamed to `version`, with `edit` applied to its
/// model.toml text and `labels` as its labels file.
fn pack(lab: &Lab, version: &str, edit: impl Fn(String) -> String, labels: &str, onnx: &Path) -> PathBuf {
    let d = lab.dir.path().join(format!("nanodet-{version}"));
    std::fs::create_dir_all(&d).unwrap();
    let toml = std::fs::read_to_string(repo().join("models/nanodet.toml")).unwrap();
    let toml = edit(toml.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")));
    std::fs::write(d.join("model.toml"), toml).unwrap();
    std::fs::write(d.join("coco80.txt"), labels).unwrap();
    let onnx_copy = d.join("nanodet.onnx");
    std::fs::copy(onnx, &onnx_copy).unwrap();
    let out = d.join("nanodet.pack");
    fleet(&["pack", "--model", s(&d.join("model.toml")), "--out", s(&out), s(&onnx_copy), s(&d.join("coco80.txt"))]);
    out
}

fn shadow_bundle(lab: &Lab, artifact: &Path, version: &str) -> PathBuf {
    lab.sign_model(LIVE, version, artifact, &DEV, &["--shadow"], None)
}

fn engine_model(socket: &Path) -> String {
    let (code, out, err) = sparkctl(socket, &["engine", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["model"].as_str().unwrap_or_default().to_string()
}

/// The first shadow figures report of `id` with at least [`MIN_FRAMES`] frames compared.
fn wait_figures(c: &Consumer, id: &str, log: impl Fn() -> String) -> serde_json::Value {
    wait_for(Duration::from_secs(180), || {
        states(c, id)
            .into_iter()
            .find(|j| j["state"] == "shadow" && j["shadow"]["frames"].as_u64().is_some_and(|f| f >= MIN_FRAMES))
    })
    .unwrap_or_else(|| panic!("no shadow figures for {id}; reports: {:#?}\nlog:\n{}", states(c, ""), log()))
}

/// `(label, score)` of each detection in the live record.
fn live_detections(c: &Consumer) -> Vec<(String, f64)> {
    let r = wait_for(Duration::from_secs(90), || {
        c.records("inference").into_iter().find(|r| r["model"] == LIVE && r["model_version"] == "1.0.0")
    })
    .expect("a live NanoDet record");
    r["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["label"].as_str().unwrap().to_string(), d["score"].as_f64().unwrap()))
        .collect()
}

/// Four demo photos, 400×300 each, in one 800×600 picture.
fn mosaic(out: &Path) {
    let mut m = image::RgbImage::new(800, 600);
    for (i, p) in ["motorcycle_left.png", "chelsea.png", "coffee.png", "astronaut.png"].iter().enumerate() {
        let img = image::open(repo().join("models/demo").join(p)).unwrap().to_rgb8();
        let tile = image::imageops::resize(&img, 400, 300, image::imageops::FilterType::Triangle);
        image::imageops::replace(&mut m, &tile, (i as i64 % 2) * 400, (i as i64 / 2) * 300);
    }
    m.save(out).unwrap();
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn shadow_candidates_report_agreement_against_the_live_model_and_never_activate() {
    let broker = Broker::start();
    let lab = Lab::new();
    let photos = lab.dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    mosaic(&photos.join("mosaic.png"));
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.fps = 3.0;
    cfg.images = photos;
    cfg.manifest = repo().join("models/nanodet.toml");
    cfg.extra = format!(
        "[update]\ntrusted_keys_file = \"{}\"\nshadow_every_n_frames = 1\nshadow_report_secs = 1\n",
        lab.public.display()
    );
    let d = Daemon::start(&cfg);
    let c = Consumer::start(broker.port, "spark/#");
    wait_online(&c, "test-dev");
    let log = || d.log_text();
    let onnx = repo().join("models/nanodet.onnx");
    let coco = std::fs::read_to_string(repo().join("models/coco80.txt")).unwrap();

    let live = live_detections(&c);
    eprintln!("live detections on the mosaic: {live:?}");
    let mut scores: Vec<f64> = live.iter().map(|(_, s)| *s).collect();
    scores.sort_by(f64::total_cmp);
    assert!(scores.len() >= 2 && scores[0] < scores[scores.len() - 1], "the photo needs two scores: {live:?}");

    // 1. The live model itself as the candidate: full agreement.
    let same = shadow_bundle(&lab, &pack(&lab, "1.0.1", |t| t, &coco, &onnx), "1.0.1");
    let same_id = update_id(&same);
    push(&broker, &DEV, &same);
    let r = wait_figures(&c, &same_id, log);
    assert_eq!(r["shadow"]["agreement"], 1.0, "{r}");
    assert_eq!(r["shadow"]["errors"], 0, "{r}");
    assert_eq!(r["shadow"]["live_model"], "nanodet-g-416 1.0.0", "{r}");
    assert_eq!(engine_model(&cfg.socket()), "nanodet-g-416 1.0.0", "shadowing is not activation");
    let (code, out, err) = sparkctl(&cfg.socket(), &["update", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        status["installed"].as_array().unwrap().iter().all(|e| e["name"] != LIVE),
        "no version of the model is installed by a shadow: {status}"
    );
    assert!(status["message"].as_str().unwrap().contains("shadow nanodet-g-416 1.0.1"), "{status}");
    assert!(!std::fs::exists(cfg.state_dir().join("models").join(LIVE).join("current")).unwrap());
    let seen: Vec<String> = states(&c, &same_id).iter().map(|j| j["state"].as_str().unwrap().to_string()).collect();
    assert!(!seen.iter().any(|s| s == "activating" || s == "active"), "{seen:?}");

    // 2. A raised score threshold keeps the live detections scoring above
    // it: precision 1, recall kept/all, agreement (F1) 2k / (k + n).
    let raised = (scores[0] + scores[1]) / 2.0;
    let kept = scores.iter().filter(|s| **s >= raised).count() as f64;
    let n = scores.len() as f64;
    let thr = |t: String| t.replace("score_threshold = 0.35", &format!("score_threshold = {raised:.4}"));
    let strict = shadow_bundle(&lab, &pack(&lab, "1.0.2", thr, &coco, &onnx), "1.0.2");
    let strict_id = update_id(&strict);
    push(&broker, &DEV, &strict);
    let r = wait_figures(&c, &strict_id, log);
    let sh = &r["shadow"];
    let want = 2.0 * kept / (kept + n);
    assert!(close(sh["agreement"].as_f64().unwrap(), want), "agreement {} want {want}: {r}", sh["agreement"]);
    assert_eq!(sh["precision"], 1.0, "{r}");
    assert!(close(sh["recall"].as_f64().unwrap(), kept / n), "{r}");
    // The new shadow replaced the first one.
    let ended = wait_state_for(&c, &same_id, "shadow_ended", Duration::from_secs(30), log);
    assert!(ended["reason"].as_str().unwrap().contains("1.0.2"), "{ended}");

    // 3. A label renamed away: each of its live detections is missed (fn)
    // and found under another name (fp): agreement (n - m) / n.
    let (gone, _) = live[0].clone();
    let m = live.iter().filter(|(l, _)| *l == gone).count() as f64;
    let renamed =
        coco.lines().map(|l| if l == gone { format!("{l}-renamed") } else { l.to_string() }).collect::<Vec<_>>();
    let no_label = shadow_bundle(&lab, &pack(&lab, "1.0.3", |t| t, &(renamed.join("\n") + "\n"), &onnx), "1.0.3");
    let no_label_id = update_id(&no_label);
    push(&broker, &DEV, &no_label);
    let r = wait_figures(&c, &no_label_id, log);
    let sh = &r["shadow"];
    assert!(close(sh["agreement"].as_f64().unwrap(), (n - m) / n), "label {gone} ×{m} of {n}: {r}");
    assert_eq!(sh["labels"][&gone]["recall"], 0.0, "{r}");
    assert!(sh["labels"][&gone]["fn"].as_u64().unwrap() >= m as u64, "{r}");

    // 4. A candidate ONNX Runtime cannot load: a shadow error with its
    // code; the live model keeps running and nothing is installed.
    let junk = lab.dir.path().join("junk.onnx");
    std::fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    let sha = spark_edge::inference::model::sha256_hex(&std::fs::read(&junk).unwrap());
    let bad_sha = |t: String| {
        let line = t.lines().find(|l| l.starts_with("sha256 =")).unwrap().to_string();
        t.replace(&line, &format!("sha256 = \"{sha}\""))
    };
    let broken = shadow_bundle(&lab, &pack(&lab, "1.0.4", bad_sha, &coco, &junk), "1.0.4");
    let broken_id = update_id(&broken);
    push(&broker, &DEV, &broken);
    let r = wait_state_for(&c, &broken_id, "shadow_failed", Duration::from_secs(120), log);
    assert_eq!(r["code"], "engine_load", "{r}");
    assert_eq!(engine_model(&cfg.socket()), "nanodet-g-416 1.0.0");
    let before = c.records("inference").len();
    wait_for(Duration::from_secs(60), || (c.records("inference").len() >= before + 3).then_some(()))
        .expect("the live model keeps producing records after the shadow failed");
    assert!(c.records("inference").iter().skip(before).all(|r| r["model_version"] == "1.0.0"));
    assert!(!std::fs::exists(cfg.state_dir().join("models").join(LIVE).join("current")).unwrap());

    // 5. A real push ends the shadow, and the version evaluated in the
    // shadow can itself be promoted (shadowing did not use up its version).
    let artifact = pack(&lab, "1.0.5", |t| t, &coco, &onnx);
    let shadow = shadow_bundle(&lab, &artifact, "1.0.5");
    let shadow_id = update_id(&shadow);
    push(&broker, &DEV, &shadow);
    wait_figures(&c, &shadow_id, log);
    let real = lab.sign_model(LIVE, "1.0.5", &artifact, &DEV, &[], None);
    let real_id = update_id(&real);
    push(&broker, &DEV, &real);
    let ended = wait_state_for(&c, &shadow_id, "shadow_ended", Duration::from_secs(60), log);
    assert!(ended["reason"].as_str().unwrap().contains("model update was pushed"), "{ended}");
    wait_state_for(&c, &real_id, "active", Duration::from_secs(180), log);
    assert_eq!(engine_model(&cfg.socket()), "nanodet-g-416 1.0.5");
}
