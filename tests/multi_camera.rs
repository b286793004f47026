//! Several cameras on one model (issue 17): `[[camera]]` tables, each
//! camera's frames served in turn and recorded with its id, a camera whose
//! device is missing stopping only its own stream, and check-config naming
//! the table of a bad key.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;

/// A folder holding one demo photo, for a replay camera that sees only it.
fn one_photo(dir: &Path, name: &str) -> std::path::PathBuf {
    let d = dir.join(name.split('.').next().unwrap_or(name));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(repo().join("models/demo").join(name), d.join(name)).unwrap();
    d
}

#[test]
fn two_replay_cameras_and_a_missing_v4l_one_each_keep_their_own_records() {
    let broker = Broker::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.manifest = repo().join("models/nanodet.toml");
    // Two CPU sessions: frames finish out of order inside the engine, and
    // must still come back to their own camera, in order.
    cfg.model_extra = "cpu_sessions = 2\n".into();
    let people = one_photo(cfg.dir.path(), "astronaut.png");
    let cats = one_photo(cfg.dir.path(), "chelsea.png");
    cfg.camera_tables = Some(format!(
        "[[camera]]\nid = \"people\"\nsource = \"replay\"\nreplay_dir = \"{}\"\nfps = 4.0\n\
         [[camera]]\nid = \"cats\"\nsource = \"replay\"\nreplay_dir = \"{}\"\nfps = 4.0\n\
         [[camera]]\nid = \"usb\"\nsource = \"v4l\"\ndevice = \"/dev/video-spark-test-missing\"\n",
        people.display(),
        cats.display()
    ));
    cfg.write();
    let c = Consumer::start(broker.port, "spark/#");
    let d = Daemon::start(&cfg);

    // Each replay camera sends one distinct photo: a record matched to the
    // wrong camera shows up as the wrong photo and labels.
    let per_camera = |c: &Consumer| {
        let mut by: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for r in c.records("inference") {
            by.entry(r["camera"].as_str().unwrap_or("<none>").to_string()).or_default().push(r);
        }
        by
    };
    let by = wait_for(Duration::from_secs(120), || {
        let by = per_camera(&c);
        (["people", "cats"].iter().all(|k| by.get(*k).is_some_and(|v| v.len() >= 6))).then_some(by)
    })
    .unwrap_or_else(|| {
        panic!("both replay cameras should record; got {:?}\nlog:\n{}", per_camera(&c).keys(), d.log_text())
    });
    assert_eq!(by.keys().collect::<Vec<_>>(), ["cats", "people"], "no record from the missing camera, none unnamed");
    for (camera, photo, label) in [("people", "astronaut.png", "person"), ("cats", "chelsea.png", "cat")] {
        let records = &by[camera];
        for r in records {
            assert_eq!(r["frame"]["origin"], photo, "{camera}'s record carries another camera's frame: {r}");
            let labels: Vec<&str> =
                r["detections"].as_array().into_iter().flatten().filter_map(|d| d["label"].as_str()).collect();
            assert!(labels.contains(&label), "{camera}: the model saw {labels:?} on {photo}: {r}");
        }
        // Each camera's frames in capture order, none twice.
        let numbers: Vec<u64> = records.iter().filter_map(|r| r["frame"]["number"].as_u64()).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{camera}: frame numbers out of order {numbers:?}");
    }
    let seqs: Vec<u64> = c.records("inference").iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_no_gaps(&seqs, "inference");

    // Per-camera figures; the missing device stops only its own stream.
    let s = status_json(&cfg.socket());
    let cams = s["inference"]["cameras"].as_array().expect("inference.cameras");
    let ids: Vec<&str> = cams.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, ["people", "cats", "usb"], "{s}");
    for cam in &cams[..2] {
        assert!(cam["inferred"].as_u64().unwrap_or(0) >= 6, "{cam}");
    }
    assert_eq!(cams[2]["captured"], 0, "{}", cams[2]);
    let sum: u64 = cams.iter().filter_map(|c| c["captured"].as_u64()).sum();
    assert_eq!(s["inference"]["frames_captured"].as_u64(), Some(sum), "the total is the cameras' sum: {s}");
    // The table shows every camera.
    let (code, out, err) = sparkctl(&cfg.socket(), &["status"]);
    assert_eq!(code, 0, "{err}");
    for id in ["people", "cats", "usb"] {
        assert!(out.contains(id), "sparkctl status names camera {id}:\n{out}");
    }
    // A snapshot of one camera waits for that camera's frame.
    let png = cfg.dir.path().join("cats.png");
    let (code, out, err) =
        sparkctl(&cfg.socket(), &["camera", "snapshot", "--camera", "cats", png.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["camera"].as_str(), v["frame"]["origin"].as_str()), (Some("cats"), Some("chelsea.png")), "{v}");
    let attic = cfg.dir.path().join("attic.png");
    let (code, _, err) = sparkctl(&cfg.socket(), &["camera", "snapshot", "--camera", "attic", attic.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("no camera \"attic\"") && err.contains("people, cats, usb"), "{err}");
    assert!(d.terminate(Duration::from_secs(30)).success());
}

fn check_config(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparkd.toml");
    std::fs::write(&p, text).unwrap();
    let out = std::process::Command::new(sparkd_bin()).arg("check-config").arg(&p).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_the_form_it_read_and_the_table_of_a_bad_key() {
    let (ok, out, err) = check_config("[[camera]]\nid = \"a\"\nsource = \"none\"\n");
    assert!(!ok && err.contains("camera[0].source"), "none inside [[camera]] is refused: {out}{err}");

    let two = "[[camera]]\nid = \"door\"\nreplay_dir = \"/tmp\"\n[[camera]]\nid = \"yard\"\nreplay_dir = \"/tmp\"\n";
    let (ok, out, err) = check_config(two);
    assert!(ok, "{err}");
    assert!(out.contains("[[camera]] tables (door, yard)"), "{out}");
    let (ok, out, _) = check_config("[camera]\nreplay_dir = \"/tmp\"\n");
    assert!(ok && out.contains("one [camera] table (id cam0)"), "{out}");

    // Two cameras with the same id: the second table's line, and both names.
    let dup = "[[camera]]\nid = \"door\"\n[[camera]]\nid = \"door\"\n";
    let (ok, _, err) = check_config(dup);
    assert!(!ok, "duplicate ids accepted");
    assert!(err.contains(":4:") && err.contains("camera[1].id") && err.contains("camera[0]"), "{err}");
    // A bad value in the second table points at that table's key.
    let bad = "[[camera]]\nid = \"a\"\n[[camera]]\nid = \"b\"\nfps = 0.0\n";
    let (ok, _, err) = check_config(bad);
    assert!(!ok && err.contains(":5:") && err.contains("camera[1].fps"), "{err}");
    // A mistake inside a table keeps its own message, not "no variant matched".
    let (ok, _, err) = check_config("[[camera]]\nid = \"a\"\nfsp = 3\n");
    assert!(!ok && err.contains("fsp"), "{err}");
    // Both forms at once: refused.
    let (ok, _, err) = check_config("[camera]\nfps = 2.0\n[[camera]]\nid = \"b\"\n");
    assert!(!ok, "both forms accepted: {err}");
}
