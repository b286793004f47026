//! Tracking and events end to end, with the real NanoDet model on the CPU:
//! the test builds a replay folder where a person (cut from the
//! scikit-image astronaut photo in models/demo) walks left to right across
//! a plain background and back, over and over, through a counting line and
//! a zone in the middle, and reads what `sparkd` publishes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::walk::*;
use common::*;
use spark_edge::inference::engine::onnx::OnnxEngine;
use spark_edge::inference::model::Model;
use spark_edge::inference::pipeline::infer_frame;
use spark_edge::inference::vision::Tensor;

/// The generated frames show one person where she was pasted: checked
/// directly, so a model miss is not mistaken for a tracking bug below.
#[test]
fn the_generated_walk_shows_the_person_where_she_was_pasted() {
    let dir = tempfile::tempdir().unwrap();
    write_walk(dir.path(), false);
    let model = Model::load(&repo().join("models/nanodet.toml")).expect("manifest");
    let bytes = model.read_onnx().expect("model (run scripts/setup.sh)");
    let lib = repo().join("deps/onnxruntime/libonnxruntime.so");
    let mut engine = OnnxEngine::new(&lib, &bytes, &model.manifest.input.name, 1).expect("engine");
    for n in [1, 8, 16, 24] {
        let img = image::open(dir.path().join(format!("walk-{n:03}.png"))).unwrap().to_rgb8();
        let d = infer_frame(&mut engine, &model, &img, &mut Tensor::zeros(&[1])).expect("inference").detections;
        let p = d
            .iter()
            .filter(|d| d.label == "person" && d.score >= 0.5)
            .max_by(|a, b| a.score.total_cmp(&b.score))
            .unwrap_or_else(|| panic!("frame {n}: no person in {d:?}"));
        let cx = (p.bbox[0] + p.bbox[2]) / 2.0;
        let want = (person_x(n) + PW / 2) as f32;
        assert!((cx - want).abs() < 40.0, "frame {n}: person centred at x {cx}, pasted at {want}: {d:?}");
    }
}

fn kind(e: &serde_json::Value) -> &str {
    e["kind"].as_str().unwrap_or("")
}

fn frame_of(e: &serde_json::Value) -> u64 {
    e["frame"].as_u64().unwrap_or(0)
}

/// 0-based pass of a frame number; even passes go left to right.
fn pass_of(frame: u64) -> u64 {
    (frame - 1) / PASS
}

#[test]
fn a_person_walking_through_a_line_and_a_zone_gives_one_crossing_per_pass_and_counts() {
    let broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/#");
    let mut cfg = DaemonConfig::new(&broker.url());
    write_walk(&cfg.dir.path().join("walk"), false);
    cfg.images = cfg.dir.path().join("walk");
    cfg.manifest = repo().join("models/nanodet.toml");
    cfg.fps = 4.0;
    cfg.telemetry_secs = 5.0;
    cfg.extra = "[events]\ncount_interval_secs = 4\n\
                 [[zone]]\nname = \"middle\"\npolygon = [[0.35, 0.0], [0.65, 0.0], [0.65, 1.0], [0.35, 1.0]]\nlabels = [\"person\"]\n\
                 [[line]]\nname = \"door\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\ndirections = [\"east\", \"west\"]\nlabels = [\"person\"]\n"
        .into();
    let daemon = Daemon::start(&cfg);

    // Three whole passes, and an event from the fourth (events arrive in
    // seq order, so everything about the first three has arrived).
    let events = wait_for(Duration::from_secs(150), || {
        let ev = consumer.records("events");
        ev.iter().any(|e| kind(e) != "count" && pass_of(frame_of(e)) >= 3).then_some(ev)
    })
    .unwrap_or_else(|| {
        panic!("no event from the fourth pass; events: {:?}\nlog:\n{}", consumer.records("events"), daemon.log_text())
    });
    assert_no_gaps(&events.iter().filter_map(|e| e["seq"].as_u64()).collect::<Vec<_>>(), "events");

    let crossings: Vec<&serde_json::Value> =
        events.iter().filter(|e| kind(e) == "line_cross" && pass_of(frame_of(e)) < 3).collect();
    for pass in 0..3 {
        let here: Vec<&&serde_json::Value> = crossings.iter().filter(|e| pass_of(frame_of(e)) == pass).collect();
        let want = if pass % 2 == 0 { "east" } else { "west" };
        assert_eq!(here.len(), 1, "pass {pass}: crossings {here:?}");
        let e = here[0];
        assert_eq!(
            (e["direction"].as_str(), e["rule"].as_str(), e["label"].as_str(), e["camera"].as_str()),
            (Some(want), Some("door"), Some("person"), Some("cam0")),
            "pass {pass}: {e}"
        );
        assert!(e["track_id"].as_u64().is_some() && e["box"].as_array().is_some_and(|b| b.len() == 4), "{e}");
    }
    // One person, one track through the turns.
    let tracks: std::collections::BTreeSet<u64> = crossings.iter().filter_map(|e| e["track_id"].as_u64()).collect();
    assert_eq!(tracks.len(), 1, "{crossings:?}");

    // The zone: entered, then left, once per pass.
    for pass in 0..3 {
        let zone: Vec<(&str, u64)> = events
            .iter()
            .filter(|e| e["rule"] == "middle" && kind(e) != "count" && pass_of(frame_of(e)) == pass)
            .map(|e| (kind(e), e["time_ms"].as_u64().unwrap_or(0)))
            .collect();
        assert_eq!(zone.iter().map(|z| z.0).collect::<Vec<_>>(), ["zone_enter", "zone_exit"], "pass {pass}");
        assert!(zone[0].1 < zone[1].1, "pass {pass}: {zone:?}");
    }

    // Counts: each of the line's intervals holds exactly the crossings
    // whose time falls in it, and at least one interval saw a crossing.
    let all_crossings: Vec<u64> =
        events.iter().filter(|e| kind(e) == "line_cross").filter_map(|e| e["time_ms"].as_u64()).collect();
    let counts: Vec<&serde_json::Value> = events.iter().filter(|e| kind(e) == "count" && e["rule"] == "door").collect();
    assert!(!counts.is_empty(), "no count record for the line: {events:?}");
    for c in &counts {
        let (from, to) = (c["from_ms"].as_u64().unwrap(), c["to_ms"].as_u64().unwrap());
        let want = all_crossings.iter().filter(|t| (from..to).contains(*t)).count() as u64;
        assert_eq!(c["total"].as_u64(), Some(want), "{c}");
        assert_eq!(c["rule_type"], "line");
        let by_dir: u64 = c["by_direction"].as_object().map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
        assert_eq!(by_dir, want, "{c}");
    }
    assert!(counts.iter().any(|c| c["total"].as_u64() >= Some(1)), "{counts:?}");

    // Inference records carry the track on each tracked detection.
    let tracked = consumer.records("inference").iter().any(|r| {
        r["detections"].as_array().is_some_and(|d| {
            d.iter().any(|d| d["label"] == "person" && d["track_id"].as_u64() == tracks.first().copied())
        })
    });
    assert!(tracked, "no inference record with the person's track_id");
    daemon.terminate(Duration::from_secs(20));
}

/// `inference.publish = "on-change"`: the one person stays tracked all
/// along, so the only inference record is the frame her track started on.
#[test]
fn on_change_writes_an_inference_record_only_when_the_tracked_labels_change() {
    let broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/#");
    let mut cfg = DaemonConfig::new(&broker.url());
    write_walk(&cfg.dir.path().join("walk"), false);
    cfg.images = cfg.dir.path().join("walk");
    cfg.manifest = repo().join("models/nanodet.toml");
    cfg.fps = 4.0;
    cfg.telemetry_secs = 5.0;
    cfg.extra = "[inference]\npublish = \"on-change\"\n\
                 [[line]]\nname = \"door\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\n"
        .into();
    let daemon = Daemon::start(&cfg);
    // The crossing of the second pass: 17+ frames after the first.
    wait_for(Duration::from_secs(150), || {
        let crossed = consumer.records("events").iter().any(|e| kind(e) == "line_cross" && pass_of(frame_of(e)) >= 1);
        (crossed && !consumer.records("inference").is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no second crossing or no inference record; log:\n{}", daemon.log_text()));
    let inference = consumer.records("inference");
    assert_eq!(inference.len(), 1, "{inference:?}");
    let d = inference[0]["detections"].as_array().cloned().unwrap_or_default();
    assert!(d.iter().any(|d| d["label"] == "person" && d["track_age"] == 0), "{d:?}");
    daemon.terminate(Duration::from_secs(20));
}

/// A rule naming a label the model lacks: `check-config` names the file,
/// line, key and label; `sparkd run` refuses to start with the same words.
#[test]
fn check_config_and_start_refuse_a_label_the_model_does_not_have() {
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{}", free_port()));
    cfg.manifest = repo().join("models/nanodet.toml");
    cfg.extra = "[[line]]\nname = \"door\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\nlabels = [\"persn\"]\n".into();
    let path = cfg.write();
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().position(|l| l.starts_with("labels = [\"persn\"]")).unwrap() + 1;
    let want = "line[0].labels (door) names the label \"persn\", which the model nanodet-g-416 does not have";

    let out = std::process::Command::new(sparkd_bin()).arg("check-config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}:{line}: key `line[0].labels`: {want}", path.display())), "{stderr}");

    let log = cfg.dir.path().join("run.log");
    let mut child = std::process::Command::new(sparkd_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(60), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "sparkd run did not refuse to start: {stderr}");
    assert!(stderr.contains(want), "{stderr}");
}

/// `sparkctl events --json -n 256`: the daemon's last events.
fn recent_events(socket: &Path) -> Vec<serde_json::Value> {
    let v = sparkctl_json(socket, &["events", "-n", "256"], 0);
    v["events"].as_array().cloned().unwrap_or_default()
}

fn by_seq(events: &[serde_json::Value], seq: u64) -> Option<serde_json::Value> {
    events.iter().find(|e| e["seq"].as_u64() == Some(seq)).cloned()
}

/// `sparkctl events` lists a crossing with its rule, label and track, and
/// says whether it reached the broker: delivered once the consumer has it;
/// pending for a crossing stored while the broker is down, delivered again
/// after it returns. `--follow` prints new crossings and ends when its
/// reader goes; with sparkd gone the command exits 3.
#[test]
fn sparkctl_events_lists_crossings_and_tells_when_they_reached_the_broker() {
    let mut broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/#");
    let mut cfg = DaemonConfig::new(&broker.url());
    write_walk(&cfg.dir.path().join("walk"), false);
    cfg.images = cfg.dir.path().join("walk");
    cfg.manifest = repo().join("models/nanodet.toml");
    cfg.fps = 4.0;
    cfg.telemetry_secs = 5.0;
    cfg.extra = "[[line]]\nname = \"door\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\n\
                 directions = [\"east\", \"west\"]\nlabels = [\"person\"]\n"
        .into();
    let daemon = Daemon::start(&cfg);
    let socket = cfg.socket();

    // The first crossing, as sparkctl lists it and as the consumer got it.
    let cross =
        wait_for(Duration::from_secs(150), || recent_events(&socket).into_iter().find(|e| e["kind"] == "line_cross"))
            .unwrap_or_else(|| panic!("no line_cross in sparkctl events; log:\n{}", daemon.log_text()));
    let seq = cross["seq"].as_u64().expect("seq");
    let record = wait_for(Duration::from_secs(60), || {
        consumer.records("events").into_iter().find(|e| e["seq"].as_u64() == Some(seq))
    })
    .unwrap_or_else(|| panic!("the consumer never got events seq {seq}: {cross}"));
    assert_eq!(record["kind"], "line_cross", "{record}");
    for key in ["camera", "rule", "label", "track_id", "time_ms", "direction"] {
        assert_eq!(cross[key], record[key], "{key}: listed {cross}, published {record}");
    }
    assert_eq!((cross["rule"].as_str(), cross["label"].as_str()), (Some("door"), Some("person")), "{cross}");
    assert!(cross["track_id"].as_u64().is_some(), "{cross}");
    // The consumer has it, so the broker took it; its PUBACK follows.
    wait_for(Duration::from_secs(30), || by_seq(&recent_events(&socket), seq).filter(|e| e["delivered"] == true))
        .unwrap_or_else(|| panic!("seq {seq} never shown delivered: {:?}", by_seq(&recent_events(&socket), seq)));

    // `--follow`: the next crossing arrives as a JSON line; closing the
    // pipe ends the command cleanly at its next write.
    let mut follow = std::process::Command::new(sparkctl_bin())
        .arg("--socket")
        .arg(&socket)
        .args(["events", "--follow", "--json", "-n", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sparkctl events --follow");
    let stdout = follow.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let seen: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let later_cross = seen["kind"] == "line_cross" && seen["seq"].as_u64() > Some(seq);
            let _ = lines_tx.send(line);
            if later_cross {
                return; // drops the pipe's read end
            }
        }
    });
    let followed: Vec<String> = lines_rx.iter().collect();
    reader.join().expect("reader");
    let last: serde_json::Value = followed.last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default();
    assert!(last["kind"] == "line_cross" && last["seq"].as_u64() > Some(seq), "followed: {followed:?}");
    let status = wait_for(Duration::from_secs(60), || follow.try_wait().ok().flatten());
    if status.is_none() {
        let _ = follow.kill();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "--follow did not end when its reader went");

    // Broker down: a crossing stored from now on cannot be acknowledged.
    broker.stop();
    let q = queue_json(&socket);
    let from = q["streams"]["events"]["next_seq"].as_u64().expect("events next_seq");
    let stuck = wait_for(Duration::from_secs(60), || {
        recent_events(&socket).into_iter().find(|e| e["kind"] == "line_cross" && e["seq"].as_u64() >= Some(from))
    })
    .unwrap_or_else(|| panic!("no crossing while the broker was down; log:\n{}", daemon.log_text()));
    assert_eq!(stuck["delivered"], false, "{stuck}");
    let (code, table, _) = sparkctl(&socket, &["events", "-n", "256"]);
    assert_eq!(code, 0, "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&utc_prefix(stuck["time_ms"].as_u64().unwrap_or(0))) && l.contains("line_cross"))
        .unwrap_or_else(|| panic!("no row for {stuck} in:\n{table}"));
    assert!(row.contains("door") && row.contains("person") && row.ends_with("pending"), "{row}");

    broker.restart();
    let stuck_seq = stuck["seq"].as_u64().unwrap_or(0);
    wait_for(Duration::from_secs(60), || by_seq(&recent_events(&socket), stuck_seq).filter(|e| e["delivered"] == true))
        .unwrap_or_else(|| {
            panic!("seq {stuck_seq} not delivered after the broker came back; log:\n{}", daemon.log_text())
        });

    daemon.terminate(Duration::from_secs(20));
    let (code, _, err) = sparkctl(&socket, &["events"]);
    assert_eq!(code, 3, "sparkd is gone: {err}");
}

/// The table's time column for `ms` (`YYYY-MM-DD HH:MM:SSZ`), from `date`.
fn utc_prefix(ms: u64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{}", ms / 1000), "+%Y-%m-%d %H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
