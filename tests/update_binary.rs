//! Binary A/B updates through the real daemon: `spark-fleet` pushes a
//! `binary` bundle over a real Mosquitto; `sparkd` stages it and exits 75;
//! the test plays systemd's part (`Restart=on-failure`, see
//! systemd/sparkd.service): it starts the packaged `sparkd run` again
//! whenever the process exits with a failure status. What runs is read from
//! `/proc/<pid>/exe` (the launcher `exec`s the slot binary in place).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{Lab, fleet, online_devices, push, s, start_watch, states, update_id, wait_online, wait_state_for};
use common::*;

impl Lab {
    /// A copy of the test-built `sparkd`, stripped of debug info so the
    /// transfer stays small (the code is the same).
    fn good_binary(&self) -> PathBuf {
        let p = self.dir.path().join("sparkd-good");
        std::fs::copy(sparkd_bin(), &p).expect("copy sparkd");
        let _ = Command::new("strip").arg(&p).status();
        p
    }

    /// A "sparkd" that dies at start.
    fn crashing_binary(&self) -> PathBuf {
        let p = self.dir.path().join("sparkd-crash");
        std::fs::write(&p, "#!/bin/sh\necho 'sparkd-crash: exiting 1' >&2\nexit 1\n").unwrap();
        p
    }

    /// Signs `artifact` as binary `sparkd` `version` for `target`.
    fn sign(&self, artifact: &Path, version: &str, target: &[&str]) -> PathBuf {
        let out = self.dir.path().join(format!("sparkd-{version}-{}.bundle", artifact.display().to_string().len()));
        let mut args = vec![
            "sign",
            "--key",
            s(&self.key),
            "--kind",
            "binary",
            "--name",
            "sparkd",
            "--version",
            version,
            "--artifact",
            s(artifact),
            "--file-name",
            "sparkd",
            "--expires-in-days",
            "30",
            "--out",
            s(&out),
        ];
        args.extend_from_slice(target);
        fleet(&args);
        out
    }
}

const DEV: [&str; 2] = ["--device", "test-dev"];

fn daemon_config(broker: &Broker, lab: &Lab, health_secs: u64) -> DaemonConfig {
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true;
    cfg.telemetry_secs = 2.0;
    cfg.extra = format!(
        "[update]\ntrusted_keys_file = \"{}\"\nmax_artifact_megabytes = 512\nbinary_health_secs = {health_secs}\n",
        lab.public.display()
    );
    cfg
}

/// The unit's `ExecStart=`: the packaged binary, `sparkd run --config`.
fn start(cfg: &DaemonConfig) -> Proc {
    let path = cfg.dir.path().join("sparkd.toml");
    if !path.exists() {
        cfg.write();
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(cfg)).expect("log");
    Command::new(sparkd_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .env_remove("SPARKD_SLOT")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Proc)
        .expect("spawn sparkd")
}

fn log_path(cfg: &DaemonConfig) -> PathBuf {
    cfg.dir.path().join("sparkd.log")
}

fn log_text(cfg: &DaemonConfig) -> String {
    std::fs::read_to_string(log_path(cfg)).unwrap_or_default()
}

fn wait_socket(cfg: &DaemonConfig) {
    let sock = cfg.socket();
    wait_for(Duration::from_secs(60), || std::os::unix::net::UnixStream::connect(&sock).ok())
        .unwrap_or_else(|| panic!("sparkd did not open its socket; log:\n{}", log_text(cfg)));
}

fn wait_exit(child: &mut Child, cfg: &DaemonConfig, timeout: Duration) -> ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("sparkd did not exit within {timeout:?}; log:\n{}", log_text(cfg));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The program a process runs (after the launcher's `exec`, the slot's).
fn exe(child: &Child) -> PathBuf {
    std::fs::read_link(format!("/proc/{}/exe", child.id())).expect("read /proc/PID/exe")
}

fn packaged() -> PathBuf {
    std::fs::canonicalize(sparkd_bin()).unwrap()
}

fn slot_binary(cfg: &DaemonConfig, slot: &str) -> PathBuf {
    std::fs::canonicalize(cfg.state_dir().join("bin").join(slot).join("sparkd")).unwrap()
}

fn wait_state(c: &Consumer, id: &str, state: &str, cfg: &DaemonConfig) -> serde_json::Value {
    wait_state_for(c, id, state, Duration::from_secs(180), || log_text(cfg))
}

/// How many `online` status messages `device` published so far.
fn online_count(c: &Consumer, device: &str) -> usize {
    c.snapshot()
        .into_iter()
        .filter(|m| m.topic.ends_with("/status") && m.json["online"] == true && m.json["device_id"] == device)
        .count()
}

fn update_status(socket: &Path) -> serde_json::Value {
    let (code, out, err) = sparkctl(socket, &["update", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn installed_binary(v: &serde_json::Value) -> serde_json::Value {
    v["installed"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["kind"] == "binary" && i["name"] == "sparkd").cloned())
        .unwrap_or(serde_json::Value::Null)
}

fn record(v: &serde_json::Value, id: &str) -> serde_json::Value {
    v["updates"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["update_id"] == id).cloned())
        .unwrap_or_else(|| panic!("no record of {id} in {v:#}"))
}

/// Pushes `bundle`, waits for the daemon to stage it and exit with 75 (the
/// restart request), and starts it again like systemd would.
fn push_and_restart(broker: &Broker, c: &Consumer, cfg: &DaemonConfig, child: &mut Child, bundle: &Path) -> Proc {
    let id = update_id(bundle);
    push(broker, &DEV, bundle);
    let st = wait_exit(child, cfg, Duration::from_secs(180));
    assert_eq!(st.code(), Some(75), "a staged binary must end the run with 75; log:\n{}", log_text(cfg));
    // Reported before the exit; may reach the test's subscriber just after it.
    wait_state(c, &id, "staged", cfg);
    start(cfg)
}

/// A broker, a fleet lab, a daemon on the packaged binary (health period
/// `health_secs`) that is up and online, and a consumer of all it publishes.
struct Rig {
    broker: Broker,
    lab: Lab,
    cfg: DaemonConfig,
    c: Consumer,
    child: Proc,
}

fn rig(health_secs: u64) -> Rig {
    let broker = Broker::start();
    let lab = Lab::new();
    let cfg = daemon_config(&broker, &lab, health_secs);
    let c = Consumer::start(broker.port, "spark/#");
    let child = start(&cfg);
    wait_socket(&cfg);
    wait_online(&c, "test-dev");
    Rig { broker, lab, cfg, c, child }
}

#[test]
fn good_binary_is_tried_confirmed_after_the_health_period_and_keeps_running_after_restarts() {
    let Rig { broker, lab, cfg, c, mut child } = rig(2);
    assert_eq!(exe(&child), packaged());

    let bundle = lab.sign(&lab.good_binary(), "9.9.9", &DEV);
    let id = update_id(&bundle);
    let mut child = push_and_restart(&broker, &c, &cfg, &mut child, &bundle);
    let active = wait_state(&c, &id, "active", &cfg);
    assert_eq!(active["kind"], "binary");
    assert_eq!(active["version"], "9.9.9");
    assert_eq!(exe(&child), slot_binary(&cfg, "slot-a"), "the new binary runs in place of the packaged one");

    let v = update_status(&cfg.socket());
    let inst = installed_binary(&v);
    assert_eq!(inst["active"], "9.9.9", "{v:#}");
    assert_eq!(v["installed_version"], "9.9.9", "the running binary's version: {v:#}");
    assert_eq!(record(&v, &id)["state"], "active", "{v:#}");
    let (code, text, err) = sparkctl(&cfg.socket(), &["update", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("binary") && text.contains("9.9.9"), "{text}");

    // A replay of the same binary is refused; nothing restarts.
    push(&broker, &DEV, &bundle);
    wait_for(Duration::from_secs(60), || {
        states(&c, &id).into_iter().find(|j| j["state"] == "rejected" && j["code"] == "not_newer")
    })
    .unwrap_or_else(|| panic!("replay not refused; reports: {:#?}", states(&c, "")));
    assert!(child.try_wait().unwrap().is_none(), "a refused binary must not stop the daemon");

    // A plain restart runs the confirmed slot again.
    child.kill_term();
    let st = wait_exit(&mut child, &cfg, Duration::from_secs(60));
    assert_eq!(st.code(), Some(0), "{}", log_text(&cfg));
    let online_before = online_count(&c, "test-dev");
    let mut child = start(&cfg);
    wait_socket(&cfg);
    assert_eq!(exe(&child), slot_binary(&cfg, "slot-a"));
    assert_eq!(record(&update_status(&cfg.socket()), &id)["state"], "active");

    // The next binary goes to the other slot; it crashes, and the rollback
    // returns to the confirmed slot-a binary, not to the packaged one.
    // Pushed once this run is subscribed (it publishes `online` after that).
    wait_for(Duration::from_secs(60), || (online_count(&c, "test-dev") > online_before).then_some(()))
        .expect("the restarted daemon did not come online");
    let bad = lab.sign(&lab.crashing_binary(), "9.9.10", &DEV);
    let bad_id = update_id(&bad);
    let mut child = push_and_restart(&broker, &c, &cfg, &mut child, &bad);
    assert!(cfg.state_dir().join("bin/slot-b/sparkd").exists(), "staged into the inactive slot");
    let st = wait_exit(&mut child, &cfg, Duration::from_secs(60));
    assert!(!st.success(), "the crashing binary exited with {st:?}");
    let child = start(&cfg);
    wait_rolled_back_unhealthy(&c, &bad_id, &cfg);
    assert_eq!(exe(&child), slot_binary(&cfg, "slot-a"), "back on the previous binary");
    let v = update_status(&cfg.socket());
    assert_eq!(installed_binary(&v)["active"], "9.9.9", "{v:#}");
    assert_eq!(record(&v, &id)["state"], "active", "{v:#}");
    assert_eq!(record(&v, &bad_id)["state"], "rolled_back", "{v:#}");
    drop(child);
}

#[test]
fn binary_that_crashes_at_start_is_rolled_back_and_the_previous_binary_runs() {
    let Rig { broker, lab, cfg, c, mut child } = rig(2);

    let bundle = lab.sign(&lab.crashing_binary(), "9.9.9", &DEV);
    let id = update_id(&bundle);
    let mut child = push_and_restart(&broker, &c, &cfg, &mut child, &bundle);
    // The new binary dies at start: a failure, so systemd starts the unit again.
    let st = wait_exit(&mut child, &cfg, Duration::from_secs(60));
    assert!(!st.success(), "the crashing binary exited with {st:?}");
    assert!(log_text(&cfg).contains("sparkd-crash: exiting 1"), "the slot binary did not run:\n{}", log_text(&cfg));
    let child = start(&cfg);
    wait_rolled_back_unhealthy(&c, &id, &cfg);
    assert_eq!(exe(&child), packaged(), "the previous (packaged) binary runs again");
    let v = update_status(&cfg.socket());
    assert_eq!(record(&v, &id)["state"], "rolled_back", "{v:#}");
    assert!(installed_binary(&v)["active"].is_null(), "{v:#}");
    assert!(!cfg.state_dir().join("bin/active").exists(), "bin/active must not name a binary that never confirmed");
    drop(child);
}

#[test]
fn sigkill_during_the_health_period_rolls_back_at_the_next_start() {
    // A health period no test run reaches: the kill always lands inside it.
    let Rig { broker, lab, cfg, c, mut child } = rig(3600);

    let bundle = lab.sign(&lab.good_binary(), "9.9.9", &DEV);
    let id = update_id(&bundle);
    let mut child = push_and_restart(&broker, &c, &cfg, &mut child, &bundle);
    wait_socket(&cfg);
    assert_eq!(exe(&child), slot_binary(&cfg, "slot-a"), "the new binary is on trial");
    assert!(cfg.state_dir().join("bin/trial.json").exists());
    let _ = child.kill();
    let _ = child.wait();

    let child = start(&cfg);
    wait_rolled_back_unhealthy(&c, &id, &cfg);
    assert_eq!(exe(&child), packaged());
    assert_eq!(record(&update_status(&cfg.socket()), &id)["state"], "rolled_back");
    drop(child);
}

/// Waits for update `id` to be reported `rolled_back` because its binary
/// never confirmed itself, then for the restarted daemon's socket.
fn wait_rolled_back_unhealthy(c: &Consumer, id: &str, cfg: &DaemonConfig) {
    let rolled = wait_state(c, id, "rolled_back", cfg);
    assert!(rolled["reason"].as_str().unwrap_or_default().contains("did not report healthy"), "{rolled}");
    wait_socket(cfg);
}

/// A `sparkd` killed when the test ends, also on panic (no strays on CI).
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

trait Term {
    fn kill_term(&self);
}

impl Term for Child {
    fn kill_term(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.id().to_string()]).status();
    }
}

/// Plays systemd for a fleet: every device whose `sparkd` exits with a
/// failure status (75 included) is started again.
struct Fleet {
    devices: Vec<FleetDevice>,
}

/// Name, config, the running process, extra environment.
type FleetDevice = (String, DaemonConfig, Option<Child>, Vec<(&'static str, &'static str)>);

impl Fleet {
    fn start_all(&mut self) {
        for i in 0..self.devices.len() {
            self.start(i);
        }
    }

    fn start(&mut self, i: usize) {
        let (_, cfg, child, env) = &mut self.devices[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(cfg)).expect("log");
        let mut cmd = Command::new(sparkd_bin());
        cmd.args(["run", "--config"])
            .arg(cfg.dir.path().join("sparkd.toml"))
            .env("RUST_LOG", "warn")
            .env_remove("JOURNAL_STREAM")
            .env_remove("SPARKD_SLOT")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env.iter() {
            cmd.env(k, v);
        }
        *child = Some(cmd.spawn().expect("spawn sparkd"));
    }

    /// `Restart=on-failure`: restarts every device that exited non-zero.
    fn supervise(&mut self) {
        for i in 0..self.devices.len() {
            let exited = match self.devices[i].2.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(st))) => Some(st),
                _ => None,
            };
            if let Some(st) = exited {
                assert!(!st.success(), "{} exited cleanly; log:\n{}", self.devices[i].0, log_text(&self.devices[i].1));
                self.start(i);
            }
        }
    }

    fn pid(&self, name: &str) -> u32 {
        self.devices.iter().find(|d| d.0 == name).and_then(|d| d.2.as_ref()).map(|c| c.id()).expect("device")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, _, child, _) in &mut self.devices {
            if let Some(c) = child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[test]
fn fleet_binary_push_one_device_whose_binary_fails_rolls_back_while_the_rest_stay_updated() {
    const N: usize = 20;
    const FAILING: &str = "fleet-07";
    let broker = Broker::start();
    let lab = Lab::new();
    // The fleet's binary: a small launcher script for the test-built sparkd
    // (20 copies of a 15 MB binary would make this test about transfer
    // speed), which fails on the device whose environment says so.
    let artifact = lab.dir.path().join("sparkd-fleet");
    std::fs::write(
        &artifact,
        format!(
            "#!/bin/sh\nif [ -n \"$SPARK_TEST_BINARY_FAILS\" ]; then echo 'sparkd-fleet: failing' >&2; exit 1; fi\nexec '{}' \"$@\"\n",
            sparkd_bin().display()
        ),
    )
    .unwrap();
    let mut fleet = Fleet { devices: Vec::new() };
    for i in 0..N {
        let name = format!("fleet-{i:02}");
        let cfg = daemon_config(&broker, &lab, 2);
        let text = std::fs::read_to_string(cfg.write())
            .unwrap()
            .replace("device_id = \"test-dev\"", &format!("device_id = \"{name}\""));
        std::fs::write(cfg.dir.path().join("sparkd.toml"), text).unwrap();
        let env = if name == FAILING { vec![("SPARK_TEST_BINARY_FAILS", "1")] } else { vec![] };
        fleet.devices.push((name, cfg, None, env));
    }
    let c = Consumer::start(broker.port, "spark/#");
    fleet.start_all();
    wait_for(Duration::from_secs(120), || {
        fleet.supervise();
        (online_devices(&c).len() == N).then_some(())
    })
    .expect("not every device came online");

    let watch_out = lab.dir.path().join("watch.jsonl");
    let mut watch = start_watch(&broker, &watch_out);

    let bundle = lab.sign(&artifact, "9.9.9", &["--group", "default"]);
    let id = update_id(&bundle);
    push(&broker, &["--group", "default"], &bundle);

    let outcome = |state: &str| -> std::collections::BTreeSet<String> {
        states(&c, &id)
            .into_iter()
            .filter(|j| j["state"] == state)
            .filter_map(|j| j["device_id"].as_str().map(String::from))
            .collect()
    };
    wait_for(Duration::from_secs(300), || {
        fleet.supervise();
        (outcome("active").len() == N - 1 && outcome("rolled_back").len() == 1).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "active {:?}, rolled back {:?}; reports: {:#?}",
            outcome("active"),
            outcome("rolled_back"),
            states(&c, "")
        )
    });
    assert!(!outcome("active").contains(FAILING));
    assert_eq!(outcome("rolled_back").into_iter().collect::<Vec<_>>(), vec![FAILING.to_string()]);

    // What the operator sees in `spark-fleet watch`.
    let watched = |state: &str| -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(&watch_out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|j| j["update_id"] == id && j["state"] == state)
            .filter_map(|j| j["device_id"].as_str().map(String::from))
            .collect()
    };
    let shown = wait_for(Duration::from_secs(60), || {
        Some((watched("active").len(), watched("rolled_back"))).filter(|(a, r)| *a == N - 1 && r.len() == 1)
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let text = std::fs::read_to_string(&watch_out).unwrap_or_default();
    assert!(shown.is_some(), "watch: active {:?}, rolled back {:?}\n{text}", watched("active"), watched("rolled_back"));

    // Every device runs: the updated ones from the slot (the launcher sets
    // SPARKD_SLOT for the script, which execs sparkd), the failing one the
    // packaged sparkd with no slot.
    fleet.supervise();
    for (name, cfg, _, _) in &fleet.devices {
        let sock = cfg.socket();
        wait_for(Duration::from_secs(60), || std::os::unix::net::UnixStream::connect(&sock).ok())
            .unwrap_or_else(|| panic!("{name} is not running; log:\n{}", log_text(cfg)));
        let v = update_status(&sock);
        let want = if name == FAILING { "rolled_back" } else { "active" };
        assert_eq!(record(&v, &id)["state"], want, "{name}: {v:#}");
        let active = &installed_binary(&v)["active"];
        let environ = std::fs::read(format!("/proc/{}/environ", fleet.pid(name))).unwrap_or_default();
        let from_slot = environ.split(|b| *b == 0).any(|kv| kv == b"SPARKD_SLOT=slot-a");
        if name == FAILING {
            assert!(active.is_null(), "{name}: {v:#}");
            assert!(!from_slot, "{name} must run the packaged sparkd");
        } else {
            assert_eq!(active, "9.9.9", "{name}: {v:#}");
            assert!(from_slot, "{name} must run the binary of slot-a");
        }
    }
}

/// A small "binary" that runs the test-built sparkd (fast to push many times).
fn launcher_script(lab: &Lab) -> PathBuf {
    let p = lab.dir.path().join("sparkd-script");
    std::fs::write(&p, format!("#!/bin/sh\nexec '{}' \"$@\"\n", sparkd_bin().display())).unwrap();
    p
}

/// `start` with extra environment and stdout kept in `out` (crash markers).
fn start_with(cfg: &DaemonConfig, env: &[(&str, &str)], out: &Path) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(cfg)).expect("log");
    let mut cmd = Command::new(sparkd_bin());
    cmd.args(["run", "--config"])
        .arg(cfg.dir.path().join("sparkd.toml"))
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .env_remove("SPARKD_SLOT")
        .stdout(std::fs::File::create(out).expect("stdout file"))
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("spawn sparkd"))
}

fn wait_crash_point(out: &Path, point: &str, cfg: &DaemonConfig) {
    let marker = format!("SPARK_UPDATE_CRASH_POINT {point}");
    wait_for(Duration::from_secs(120), || {
        std::fs::read_to_string(out).unwrap_or_default().contains(&marker).then_some(())
    })
    .unwrap_or_else(|| panic!("never reached {point}; log:\n{}", log_text(cfg)));
}

fn runs_from_slot(child: &Child) -> bool {
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap_or_default();
    environ.split(|b| *b == 0).any(|kv| kv.starts_with(b"SPARKD_SLOT=slot-"))
}

#[test]
fn sigkill_at_each_step_of_a_binary_update_resumes_and_the_new_binary_ends_active() {
    let crash = spark_edge::update::CRASH_ENV;
    for point in ["activating", "installed", "binary-swapped"] {
        let broker = Broker::start();
        let lab = Lab::new();
        let cfg = daemon_config(&broker, &lab, 2);
        cfg.write();
        let c = Consumer::start(broker.port, "spark/#");
        let out = cfg.dir.path().join("stdout");
        let bundle = lab.sign(&launcher_script(&lab), "9.9.9", &DEV);
        let id = update_id(&bundle);
        // The step is reached by the daemon that stages (activating,
        // installed) or by the new binary confirming itself (binary-swapped).
        let staging_env: Vec<(&str, &str)> = if point == "binary-swapped" { vec![] } else { vec![(crash, point)] };
        let mut child = start_with(&cfg, &staging_env, &out);
        wait_socket(&cfg);
        wait_online(&c, "test-dev");
        push(&broker, &DEV, &bundle);
        if point == "binary-swapped" {
            let st = wait_exit(&mut child, &cfg, Duration::from_secs(120));
            assert_eq!(st.code(), Some(75), "{}", log_text(&cfg));
            child = start_with(&cfg, &[(crash, point)], &out);
        }
        wait_crash_point(&out, point, &cfg);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        // systemd's part from here: start again after every failure exit.
        let mut child = start(&cfg);
        wait_for(Duration::from_secs(180), || {
            if let Ok(Some(st)) = child.try_wait() {
                assert!(!st.success(), "after {point}: sparkd exited cleanly; log:\n{}", log_text(&cfg));
                child = start(&cfg);
            }
            states(&c, &id).into_iter().find(|j| j["state"] == "active")
        })
        .unwrap_or_else(|| {
            panic!("after SIGKILL at {point}: no active report; {:#?}\n{}", states(&c, ""), log_text(&cfg))
        });
        wait_socket(&cfg);
        assert!(runs_from_slot(&child), "after SIGKILL at {point}: not running the new binary");
        let v = update_status(&cfg.socket());
        assert_eq!(installed_binary(&v)["active"], "9.9.9", "after {point}: {v:#}");
        assert_eq!(record(&v, &id)["state"], "active", "after {point}: {v:#}");
        let bin = cfg.state_dir().join("bin");
        assert!(!bin.join("trial.json").exists() && !bin.join("pending.json").exists(), "after {point}");
        assert_eq!(std::fs::read_link(bin.join("active")).unwrap(), PathBuf::from("slot-a"));
    }
}

#[test]
fn binary_that_runs_but_never_confirms_is_restarted_and_rolled_back() {
    let broker = Broker::start();
    let lab = Lab::new();
    let cfg = daemon_config(&broker, &lab, 1);
    let path = cfg.write();
    // The new "binary" runs sparkd with a config whose update keys do not
    // load: the daemon is up, but its update agent never starts, so nothing
    // confirms it. Its own deadline (health + CONFIRM_GRACE_SECS) must end it.
    let broken = cfg.dir.path().join("no-agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(&lab.public.display().to_string(), "/nonexistent/keys.pub");
    std::fs::write(&broken, text).unwrap();
    let script = lab.dir.path().join("sparkd-no-agent");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec '{}' run --config '{}'\n", sparkd_bin().display(), broken.display()),
    )
    .unwrap();
    let c = Consumer::start(broker.port, "spark/#");
    let mut child = start(&cfg);
    wait_socket(&cfg);
    wait_online(&c, "test-dev");
    let bundle = lab.sign(&script, "9.9.9", &DEV);
    let id = update_id(&bundle);
    let mut child = push_and_restart(&broker, &c, &cfg, &mut child, &bundle);
    let st = wait_exit(&mut child, &cfg, Duration::from_secs(180));
    assert_eq!(st.code(), Some(75), "the unconfirmed binary asks for a restart; log:\n{}", log_text(&cfg));
    let child = start(&cfg);
    wait_rolled_back_unhealthy(&c, &id, &cfg);
    assert!(!runs_from_slot(&child), "the packaged sparkd runs again");
    drop(child);
}
