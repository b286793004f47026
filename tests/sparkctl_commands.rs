//! Every `sparkctl` command against the real `sparkd` (and a real Mosquitto):
//! `--json` parsed and checked, human output, exit codes 0/1/2/3, and what
//! each command says when the daemon is down.

mod common;

use std::time::Duration;

use common::sparkctl_json as json;
use common::*;

fn check<'a>(doctor: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doctor["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("doctor has no `{name}` check: {doctor}"))
}

fn demo(name: &str) -> String {
    repo().join("models/demo").join(name).display().to_string()
}

#[test]
fn read_only_commands_answer_as_json_and_as_plain_tables() {
    let broker = Broker::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.fps = 2.0;
    let d = Daemon::start(&cfg);
    let s = cfg.socket();
    wait_for(Duration::from_secs(30), || {
        let st = status_json(&s);
        (st["link"]["broker_connected"] == true && st["inference"]["total"].as_u64() >= Some(1)).then_some(())
    })
    .unwrap_or_else(|| panic!("daemon never connected and inferred; log:\n{}", d.log_text()));

    let st = json(&s, &["status"], 0);
    assert_eq!(st["device_id"], "test-dev");
    assert_eq!(st["engine"]["active"], "onnx-cpu");
    let q = json(&s, &["queue"], 0);
    assert!(q["pending"].is_u64() && q["streams"].is_object(), "{q}");
    let l = json(&s, &["link"], 0);
    assert_eq!(l["broker_connected"], true);
    assert_eq!(l["vpn_up"], true);
    let e = json(&s, &["engine"], 0);
    assert_eq!(e["active"], "onnx-cpu");
    assert!(e["fallbacks"].is_u64());

    let u = json(&s, &["update", "status"], 0);
    assert_eq!(u["state"], "unavailable");
    // No trusted update keys in this config: every update would be refused.
    assert!(u["message"].as_str().unwrap().contains("trusted_keys_file"), "{u}");

    let c = json(&s, &["config", "show"], 0);
    assert_eq!(c["config"]["device_id"], "test-dev");
    assert_eq!(c["config"]["mqtt"]["url"], broker.url());
    assert_eq!(c["redacted"], serde_json::json!([]));
    let file = cfg.dir.path().join("sparkd.toml");
    assert_eq!(c["source"], file.display().to_string(), "config show names the file it runs");

    // Human output: aligned tables, no colour when stdout is not a terminal.
    for (args, needle) in [
        (&["status"][..], "test-dev"),
        (&["queue"][..], "STREAM"),
        (&["link"][..], "connected for"),
        (&["engine"][..], "onnx-cpu"),
        (&["update", "status"][..], "unavailable"),
    ] {
        let (code, out, err) = sparkctl(&s, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains(needle), "{args:?} lacks {needle:?}:\n{out}");
        assert!(!out.contains('\x1b'), "{args:?} printed colour codes into a pipe:\n{out:?}");
    }
    let (code, toml_text, _) = sparkctl(&s, &["config", "show"]);
    assert_eq!(code, 0);
    let parsed: toml::Value =
        toml::from_str(&toml_text).unwrap_or_else(|e| panic!("config show is not TOML ({e}):\n{toml_text}"));
    assert!(toml_text.contains(&format!("# from: {}", file.display())), "{toml_text}");
    assert_eq!(parsed["device_id"].as_str(), Some("test-dev"));
    assert_eq!(parsed["mqtt"]["url"].as_str(), Some(broker.url().as_str()));

    // sync (mutating; the test runs as root) and sync --wait.
    let sy = json(&s, &["sync"], 0);
    assert_eq!(sy["sync"], "started");
    assert!(sy["pending"].is_u64());
    let w = json(&s, &["sync", "--wait", "--timeout-secs", "60"], 0);
    assert_eq!(w["synced"], true);
    assert!(d.log_text().contains("control: mutating request"), "sync not logged:\n{}", d.log_text());
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn infer_runs_a_file_through_the_live_engine() {
    let broker = Broker::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.fps = 1.0;
    let d = Daemon::start(&cfg);
    let s = cfg.socket();

    let r = json(&s, &["infer", &demo("astronaut.png")], 0);
    assert_eq!(r["engine"], "onnx-cpu");
    assert_eq!(r["name"], "astronaut.png");
    assert!(r["width"].as_u64() > Some(0) && r["height"].as_u64() > Some(0), "{r}");
    assert!(r["latency_ms"].as_f64() > Some(0.0));
    let top = &r["detections"][0];
    assert_eq!(top["label"], "face", "{r}");
    assert!(top["score"].as_f64() > Some(0.8), "{r}");
    assert_eq!(top["box"].as_array().map(Vec::len), Some(4));
    // Best first.
    let scores: Vec<f64> = r["detections"].as_array().unwrap().iter().map(|d| d["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    let r = json(&s, &["infer", &demo("coffee.png")], 0);
    assert_eq!(r["detections"], serde_json::json!([]));

    let (code, out, err) = sparkctl(&s, &["infer", &demo("astronaut.png")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("face") && out.contains("onnx-cpu") && out.contains("LABEL"), "{out}");

    // A relative path is read by sparkctl itself, from its own directory.
    let out = std::process::Command::new(sparkctl_bin())
        .current_dir(repo().join("models/demo"))
        .args(["--socket"])
        .arg(&s)
        .args(["infer", "astronaut.png", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    // Bad files: usage errors before the daemon is asked, or a refusal.
    let (code, _, err) = sparkctl(&s, &["infer", "/nonexistent/x.png"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = sparkctl(&s, &["infer", cfg.dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    let text = cfg.dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let (code, _, err) = sparkctl(&s, &["infer", text.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a JPEG or PNG"), "{err}");
    let e = json(&s, &["infer", text.to_str().unwrap()], 1);
    assert_eq!(e["error"]["code"], "bad-request");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn infer_without_a_camera_says_no_engine_is_running() {
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{}", free_port()));
    cfg.camera_off = true;
    let d = Daemon::start(&cfg);
    let (code, _, err) = sparkctl(&cfg.socket(), &["infer", &demo("astronaut.png")]);
    assert_eq!(code, 1);
    assert!(err.contains("no inference engine running (camera.source = none)"), "{err}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn doctor_passes_a_healthy_daemon_and_notices_config_drift() {
    let broker = Broker::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.fps = 1.0;
    let d = Daemon::start(&cfg);
    let s = cfg.socket();
    let path = cfg.dir.path().join("sparkd.toml");
    let path_s = path.to_str().unwrap();
    wait_for(Duration::from_secs(30), || (status_json(&s)["link"]["broker_connected"] == true).then_some(()))
        .expect("broker connected");

    let r = json(&s, &["doctor", "--config", path_s], 0);
    assert_eq!(r["failed"], 0, "{r:#}");
    assert_eq!(r["ok"], true);
    for name in [
        "daemon",
        "config",
        "config-applied",
        "engine",
        "inference",
        "model-files",
        "hailo-device",
        "hailort",
        "camera",
        "frames",
        "microphone",
        "vpn",
        "broker",
        "clock",
        "ntp",
        "disk",
        "outbox",
    ] {
        let c = check(&r, name);
        let status = c["status"].as_str().unwrap();
        assert!(["pass", "warn", "fail"].contains(&status), "{c}");
        assert!(!c["detail"].as_str().unwrap().is_empty(), "{c}");
        // Every warning and failure says what to do, on one line.
        if status != "pass" {
            let fix = c["fix"].as_str().unwrap_or_else(|| panic!("{name} has no fix: {c}"));
            assert!(!fix.is_empty() && !fix.contains('\n'), "{c}");
        }
    }
    assert_eq!(check(&r, "model-files")["status"], "pass");
    assert!(check(&r, "model-files")["detail"].as_str().unwrap().contains("checksums match"));
    assert_eq!(check(&r, "broker")["status"], "pass");
    assert_eq!(check(&r, "clock")["status"], "pass");
    assert_eq!(check(&r, "config-applied")["status"], "pass");

    // Human output: one line per check, status first, and a summary.
    let (code, out, _) = sparkctl(&s, &["doctor", "--config", path_s]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("pass  daemon")), "{out}");
    assert!(out.contains("passed,") && out.contains("failed"), "{out}");

    // The file on disk changes: doctor says the daemon does not run it yet.
    let text = std::fs::read_to_string(&path).unwrap().replace("fps = 1.000", "fps = 3.000");
    std::fs::write(&path, text).unwrap();
    let r = json(&s, &["doctor", "--config", path_s], 0);
    let drift = check(&r, "config-applied");
    assert_eq!(drift["status"], "warn", "{drift}");
    assert!(drift["detail"].as_str().unwrap().contains("camera.fps"), "{drift}");
    assert!(drift["fix"].as_str().unwrap().contains("systemctl restart sparkd"), "{drift}");

    // A broken file fails the config check (exit 1) and names line and key.
    std::fs::write(&path, "[camera]\nfps = \"fast\"\n").unwrap();
    let r = json(&s, &["doctor", "--config", path_s], 1);
    let c = check(&r, "config");
    assert_eq!(c["status"], "fail");
    assert!(c["detail"].as_str().unwrap().contains("camera.fps"), "{c}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn doctor_fails_on_an_unreachable_broker_and_a_corrupted_model() {
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{}", free_port()));
    let models = cfg.dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    for f in ["centerface.toml", "centerface.onnx"] {
        std::fs::copy(repo().join("models").join(f), models.join(f)).unwrap();
    }
    cfg.manifest = models.join("centerface.toml");
    cfg.fps = 1.0;
    let d = Daemon::start(&cfg);
    let s = cfg.socket();
    // The model is damaged after the daemon loaded it: only a re-check finds it.
    let mut bytes = std::fs::read(models.join("centerface.onnx")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(models.join("centerface.onnx"), bytes).unwrap();

    let r = wait_for(Duration::from_secs(20), || {
        let r = json(&s, &["doctor"], 1);
        (check(&r, "broker")["status"] == "fail").then_some(r)
    })
    .expect("broker check fails");
    assert_eq!(r["ok"], false);
    let b = check(&r, "broker");
    assert!(b["detail"].as_str().unwrap().contains("not connected"), "{b}");
    assert!(b["fix"].as_str().unwrap().contains("reachable"), "{b}");
    let link = json(&s, &["link"], 0);
    assert_eq!(link["last_error_kind"], "network", "nobody listens on the broker's port: {link}");
    let m = check(&r, "model-files");
    assert_eq!(m["status"], "fail", "{m}");
    assert!(m["detail"].as_str().unwrap().contains("corrupt"), "{m}");
    let (code, out, _) = sparkctl(&s, &["doctor"]);
    assert_eq!(code, 1);
    assert!(out.lines().any(|l| l.starts_with("FAIL  broker")), "{out}");
    assert!(out.contains("fix: "), "{out}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn every_command_exits_3_when_the_daemon_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone.sock");
    let img = demo("astronaut.png");
    for args in [
        &["status"][..],
        &["queue"],
        &["link"],
        &["engine"],
        &["sync"],
        &["sync", "--wait"],
        &["config", "show"],
        &["update", "status"],
        &["infer", &img],
        &["doctor"],
    ] {
        let (code, out, err) = sparkctl(&gone, args);
        assert_eq!(code, 3, "{args:?}: {out}{err}");
        // Doctor reports it as its first (failed) check, the others on stderr.
        let said = if args[0] == "doctor" { &out } else { &err };
        assert!(said.contains("cannot reach sparkd"), "{args:?}: {out}{err}");
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let (code, out, _) = sparkctl(&gone, &with_json);
        assert_eq!(code, 3);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} --json: {e}: {out}"));
        if args[0] != "doctor" {
            assert_eq!(v["error"]["code"], "unreachable", "{v}");
        }
    }
    // A stale socket file (daemon killed) is refused the same way.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert_eq!(sparkctl(&stale, &["status"]).0, 3);
}

#[test]
fn doctor_without_a_daemon_still_checks_the_machine_and_says_how_to_start_it() {
    let cfg = DaemonConfig::new("mqtt://127.0.0.1:1");
    let path = cfg.write();
    let (code, out, _) = sparkctl(&cfg.socket(), &["doctor", "--json", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let d = check(&r, "daemon");
    assert_eq!(d["status"], "fail");
    assert!(d["fix"].as_str().unwrap().contains("systemctl start sparkd"), "{d}");
    assert_eq!(check(&r, "config")["status"], "pass");
    assert_eq!(check(&r, "model-files")["status"], "pass");
    for name in ["hailo-device", "hailort", "camera", "microphone", "clock", "ntp", "disk"] {
        check(&r, name);
    }
    let (code, out, _) = sparkctl(&cfg.socket(), &["doctor", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert!(out.starts_with("FAIL  daemon"), "{out}");
}

#[test]
fn config_check_validates_files_without_the_daemon() {
    let cfg = DaemonConfig::new("mqtt://127.0.0.1:1");
    let good = cfg.write();
    let nosock = cfg.dir.path().join("none.sock");
    let (code, out, _) = sparkctl(&nosock, &["config", "check", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid"), "{out}");
    let v = json(&nosock, &["config", "check", good.to_str().unwrap()], 0);
    assert_eq!(v["valid"], true);

    let bad = cfg.dir.path().join("bad.toml");
    std::fs::write(&bad, "[mqtt]\nurl = \"http://x\"\n\n[camera]\nfps = 0.0\n").unwrap();
    let (code, out, _) = sparkctl(&nosock, &["config", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("bad.toml:2") && out.contains("mqtt.url"), "{out}");
    assert!(out.contains("camera.fps"), "{out}");
    let v = json(&nosock, &["config", "check", bad.to_str().unwrap()], 1);
    assert_eq!(v["valid"], false);
    let keys: Vec<&str> = v["issues"].as_array().unwrap().iter().filter_map(|i| i["key"].as_str()).collect();
    assert!(keys.contains(&"mqtt.url") && keys.contains(&"camera.fps"), "{v}");

    let (code, out, _) = sparkctl(&nosock, &["config", "check", "/nonexistent/sparkd.toml"]);
    assert_eq!(code, 1);
    assert!(out.contains("/nonexistent/sparkd.toml"), "{out}");
}

#[test]
fn logs_reads_the_journal_or_says_why_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = sparkctl(&dir.path().join("x.sock"), &["logs", "-n", "5"]);
    match code {
        // A machine whose journal has sparkd entries.
        0 => assert!(!out.trim().is_empty()),
        1 => assert!(err.contains("journal"), "{err}"),
        other => panic!("logs exited {other}: {out}{err}"),
    }
    // Without journalctl on PATH it says so.
    let out = std::process::Command::new(sparkctl_bin()).args(["logs"]).env("PATH", dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("journalctl not found"), "{out:?}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("x.sock");
    for args in [&["no-such-command"][..], &["infer"], &["config"], &["update", "nope"], &["logs", "-n", "many"]] {
        let (code, out, err) = sparkctl(&s, args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
    }
    let (code, out, _) = sparkctl(&s, &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("doctor") && out.contains("infer") && !out.contains("completions"), "{out}");
}

#[test]
fn file_arguments_that_are_not_regular_files_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("x.sock");
    // /dev/zero never ends: reading it to find its size would fill memory.
    let (code, _, err) = sparkctl(&s, &["update", "apply", "/dev/zero"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/dev/zero: not a regular file"), "{err}");
    let (code, _, err) = sparkctl(&s, &["infer", "/dev/zero"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/dev/zero: not a regular file"), "{err}");
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("x.sock");
    for (shell, needle) in [("bash", "_sparkctl()"), ("zsh", "#compdef sparkctl"), ("fish", "complete -c sparkctl")] {
        let (code, out, err) = sparkctl(&s, &["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(needle), "{shell}: {}", &out[..out.len().min(300)]);
        assert!(out.contains("doctor") && out.contains("infer"), "{shell} lacks subcommands");
    }
    let (code, man, _) = sparkctl(&s, &["man"]);
    assert_eq!(code, 0);
    assert!(man.contains(".TH sparkctl"), "{}", &man[..man.len().min(300)]);
    assert!(man.contains("doctor") && man.contains("Exit status"), "man page lacks commands or exit codes");
    // Every page, for the package: one per command, as the main page refers to them.
    let pages = dir.path().join("man");
    let (code, _, err) = sparkctl(&s, &["man", "--out-dir", pages.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for page in ["sparkctl.1", "sparkctl-doctor.1", "sparkctl-config-check.1", "sparkctl-update-status.1"] {
        let text = std::fs::read_to_string(pages.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
    assert!(!pages.join("sparkctl-completions.1").exists(), "hidden commands get no page");
}
