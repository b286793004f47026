//! `spark-fleet rollout` against one real Mosquitto and 200 devices: real
//! `sparkd` processes (camera off) for a few of them, the rest simulated by
//! `tests/common/devsim.rs` (one MQTT connection speaking the devices'
//! status and update topics). A subscriber of its own counts the manifests
//! each device was sent.

mod common;
#[path = "common/devsim.rs"]
mod devsim;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fleet::{Lab, fleet, fleet_bin, publish, s};
use common::*;
use devsim::{Behaviour, DeviceSim, SimDevice};
use spark_edge::fleet::rollout::{cumulative_sizes, order_devices};

const DEVICES: usize = 200;
const WAVES: &str = "1%,10%,50%,100%";
const WAVE_PERCENTS: [u8; 4] = [1, 10, 50, 100];
const RULE: &str = "rolled_back > 2% || fallback > 5% || offline > 5%";

fn sim_id(i: usize) -> String {
    format!("sim-{i:03}")
}

fn sims(ids: impl Iterator<Item = String>, behaviour: impl Fn(&str) -> Behaviour) -> Vec<SimDevice> {
    ids.map(|id| SimDevice { behaviour: behaviour(&id), id, group: "default".into() }).collect()
}

/// Counts the manifests published to each device's `update/manifest`.
struct Manifests {
    counts: Arc<Mutex<BTreeMap<String, usize>>>,
    _sub: Subscriber,
}

impl Manifests {
    fn start(broker: &Broker) -> Self {
        let counts: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let c = counts.clone();
        let sub = Subscriber::start(
            broker.port,
            &format!("manifest-counter-{}-{}", std::process::id(), broker.port),
            "spark/+/update/manifest",
            move |p| {
                if let Some(id) = p.topic.strip_prefix("spark/").and_then(|t| t.strip_suffix("/update/manifest")) {
                    *c.lock().unwrap().entry(id.to_string()).or_default() += 1;
                }
            },
        );
        Manifests { counts, _sub: sub }
    }

    /// The counts once a fence published now has come through (every push
    /// acknowledged before it is delivered ahead of it), fence left out.
    fn settled(&self, broker: &Broker) -> BTreeMap<String, usize> {
        publish(broker, "spark/fence/update/manifest", b"{}".to_vec());
        wait_for(Duration::from_secs(60), || self.counts.lock().unwrap().contains_key("fence").then_some(()))
            .expect("the fence did not come through");
        let mut c = self.counts.lock().unwrap().clone();
        c.remove("fence");
        self.counts.lock().unwrap().remove("fence");
        c
    }
}

/// A tiny artifact signed as model centerface 1.1.0 for group `default`
/// (simulated devices only look at the manifest).
fn small_bundle(lab: &Lab) -> PathBuf {
    let f = lab.dir.path().join("tiny.pack");
    std::fs::write(&f, b"tiny artifact for simulated devices").unwrap();
    lab.sign_model("centerface", "1.1.0", &f, &["--group", "default"], &[], None)
}

/// The demo model as a real model pack at 1.1.0, signed for group `default`.
fn real_bundle(lab: &Lab) -> PathBuf {
    let d = lab.dir.path().join("pack-1.1.0");
    std::fs::create_dir_all(&d).unwrap();
    let toml = std::fs::read_to_string(repo().join("models/centerface.toml")).unwrap();
    std::fs::write(d.join("model.toml"), toml.replace("version = \"1.0.0\"", "version = \"1.1.0\"")).unwrap();
    let pack = d.join("centerface.pack");
    let onnx = repo().join("models/centerface.onnx");
    fleet(&["pack", "--model", s(&d.join("model.toml")), "--out", s(&pack), s(&onnx)]);
    lab.sign_model("centerface", "1.1.0", &pack, &["--group", "default"], &[], None)
}

/// A real `sparkd` named `id`, camera off, trusting the lab's key.
fn start_sparkd(broker: &Broker, lab: &Lab, id: &str) -> (DaemonConfig, Child) {
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true;
    cfg.telemetry_secs = 5.0;
    cfg.mqtt_extra = "status_interval_secs = 1\n".into();
    cfg.extra = format!("[update]\ntrusted_keys_file = \"{}\"\n", lab.public.display());
    let child = spawn_sparkd_as(&cfg, id);
    (cfg, child)
}

/// `spark-fleet rollout start BUNDLE …` with the test's waves, a 2 s soak
/// and `extra`, its output in `dir/rollout.log`.
fn start_rollout(broker: &Broker, bundle: &Path, state: &Path, rule: &str, extra: &[&str]) -> Child {
    let log = std::fs::File::create(state.with_extension("log")).unwrap();
    Command::new(fleet_bin())
        .args(["rollout", "start", s(bundle), "--broker", &broker.url(), "--waves", WAVES, "--soak", "2s"])
        .args(["--report-timeout", "120s", "--halt-when", rule, "--group", "default", "--state-dir", s(state)])
        .args(extra)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn spark-fleet rollout")
}

fn wait_exit(child: &mut Child, state: &Path) -> i32 {
    let st = wait_for(Duration::from_secs(300), || child.try_wait().ok().flatten());
    let log = std::fs::read_to_string(state.with_extension("log")).unwrap_or_default();
    let st = st.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("spark-fleet rollout did not finish; log:\n{log}")
    });
    st.code().unwrap_or_else(|| panic!("killed by a signal; log:\n{log}"))
}

/// The rollout's state file (the only one in `state`), if written.
fn state_file(state: &Path) -> Option<serde_json::Value> {
    let rd = std::fs::read_dir(state).ok()?;
    let p = rd.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "json"))?;
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// Device id → wave index, as the rollout orders them.
fn waves_of(ids: &[String]) -> BTreeMap<String, usize> {
    let ordered = order_devices(ids.to_vec());
    let sizes = cumulative_sizes(ordered.len(), &WAVE_PERCENTS);
    ordered.into_iter().enumerate().map(|(i, id)| (id, sizes.iter().position(|s| i < *s).unwrap())).collect()
}

fn outcome(state: &serde_json::Value, id: &str) -> String {
    let d = state["devices"].as_array().unwrap().iter().find(|d| d["id"] == id).unwrap();
    d["outcome"]["outcome"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_four_wave_rollout_over_200_devices_with_real_daemons_completes_and_a_garbage_answer_is_unknown() {
    const REAL: usize = 5;
    let broker = Broker::start();
    let lab = Lab::new();
    let manifests = Manifests::start(&broker);
    let real: Vec<String> = (0..REAL).map(|i| format!("real-{i}")).collect();
    let daemons: Vec<(DaemonConfig, Child)> = real.iter().map(|id| start_sparkd(&broker, &lab, id)).collect();
    let sim_ids: Vec<String> = (0..DEVICES - REAL).map(sim_id).collect();
    let all: Vec<String> = real.iter().chain(&sim_ids).cloned().collect();
    // One simulated device in the last (largest) wave answers garbage.
    let waves = waves_of(&all);
    let garbage = sim_ids.iter().find(|id| waves[*id] == 3).unwrap().clone();
    let g = garbage.clone();
    let _sim = DeviceSim::start(
        broker.port,
        sims(sim_ids.iter().cloned(), |id| if id == g { Behaviour::Garbage } else { Behaviour::Healthy }),
        &lab.public,
    );
    // Every real device online (it subscribes to its update topics first).
    let url = broker.url();
    wait_for(Duration::from_secs(90), || {
        let v: serde_json::Value =
            serde_json::from_str(&fleet(&["devices", "--broker", &url, "--json", "--state", "online"])).ok()?;
        (v["summary"]["online"] == DEVICES).then_some(())
    })
    .unwrap_or_else(|| panic!("not every device came online; {}", fleet(&["devices", "--broker", &url])));

    let bundle = real_bundle(&lab);
    let state = lab.dir.path().join("rollouts");
    let mut child = start_rollout(&broker, &bundle, &state, RULE, &[]);
    let code = wait_exit(&mut child, &state);
    let log = std::fs::read_to_string(state.with_extension("log")).unwrap();
    let logs = || {
        daemons
            .iter()
            .map(|(c, _)| std::fs::read_to_string(c.dir.path().join("sparkd.log")).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert_eq!(code, 0, "the rollout did not complete; log:\n{log}\nsparkd logs:\n{}", logs());

    let st = state_file(&state).unwrap();
    assert_eq!(st["phase"]["state"], "completed", "{log}");
    let decisions = st["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 4);
    let sizes: Vec<u64> = decisions.iter().map(|d| d["figures"]["devices"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [2, 18, 80, 100]);
    assert!(decisions.iter().all(|d| d["verdict"] == "proceed"), "{decisions:#?}");
    // Every decision is logged with its figures.
    assert_eq!(log.lines().filter(|l| l.contains("decision: wave") && l.contains("rolled_back 0")).count(), 4, "{log}");
    for id in &real {
        assert_eq!(outcome(&st, id), "active", "{id}: {log}\n{}", logs());
    }
    assert_eq!(outcome(&st, &garbage), "unknown");
    assert_eq!(decisions[3]["figures"]["unknown"], 1);
    assert_eq!(decisions[3]["figures"]["judged"], 99);
    assert_eq!(decisions[3]["figures"]["active"], 99);

    let counts = manifests.settled(&broker);
    assert_eq!(counts.len(), DEVICES, "every device was pushed");
    assert!(counts.values().all(|n| *n == 1), "a device was pushed twice: {counts:?}");
    for (_, mut c) in daemons {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn with_a_tenth_of_devices_rolling_back_the_rollout_halts_at_the_first_wave_over_the_rule_and_pushes_no_further() {
    let broker = Broker::start();
    let lab = Lab::new();
    let manifests = Manifests::start(&broker);
    let ids: Vec<String> = (0..DEVICES).map(sim_id).collect();
    let crashing: BTreeSet<String> = ids.iter().step_by(10).cloned().collect();
    let c = crashing.clone();
    let _sim = DeviceSim::start(
        broker.port,
        sims(ids.iter().cloned(), |id| if c.contains(id) { Behaviour::Crashing } else { Behaviour::Healthy }),
        &lab.public,
    );
    // The first wave whose share of crashing devices is over 2%.
    let waves = waves_of(&ids);
    let halt_wave = (0..4)
        .find(|w| {
            let members: Vec<&String> = ids.iter().filter(|id| waves[*id] == *w).collect();
            let bad = members.iter().filter(|id| crashing.contains(**id)).count();
            bad * 100 > 2 * members.len()
        })
        .expect("some wave crosses the rule");

    let state = lab.dir.path().join("rollouts");
    let mut child = start_rollout(&broker, &small_bundle(&lab), &state, "rolled_back > 2%", &[]);
    let code = wait_exit(&mut child, &state);
    let log = std::fs::read_to_string(state.with_extension("log")).unwrap();
    assert_eq!(code, 3, "exit 3 is a halt; log:\n{log}");
    let st = state_file(&state).unwrap();
    assert_eq!(st["phase"]["state"], "halted");
    assert_eq!(st["phase"]["wave"], halt_wave, "{log}");
    let last = st["decisions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["verdict"], "halt");
    assert!(last["figures"]["rolled_back"].as_u64().unwrap() > 0);
    assert!(log.contains("is true: halted"), "the halt is logged with its figures: {log}");

    let counts = manifests.settled(&broker);
    let expected: BTreeSet<String> = ids.iter().filter(|id| waves[*id] <= halt_wave).cloned().collect();
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), expected, "pushed beyond the halted wave");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

#[test]
fn a_sigkilled_rollout_resumes_from_its_state_file_without_pushing_twice() {
    let broker = Broker::start();
    let lab = Lab::new();
    let manifests = Manifests::start(&broker);
    let ids: Vec<String> = (0..DEVICES).map(sim_id).collect();
    let _sim = DeviceSim::start(broker.port, sims(ids.iter().cloned(), |_| Behaviour::Healthy), &lab.public);
    let state = lab.dir.path().join("rollouts");
    let mut child = start_rollout(&broker, &small_bundle(&lab), &state, RULE, &[]);
    // Mid-wave: the last wave has begun pushing (or, on a slow machine that
    // pushed it all already, is soaking).
    let pushed =
        |v: &serde_json::Value| v["devices"].as_array().unwrap().iter().filter(|d| d["push"] == "pushed").count();
    let at_kill =
        wait_for(Duration::from_secs(120), || state_file(&state).filter(|v| v["wave"] == 3 && pushed(v) > 105))
            .expect("the rollout did not reach its last wave");
    child.kill().unwrap();
    let _ = child.wait();
    let before = state_file(&state).unwrap();
    assert_eq!(before["phase"]["state"], "running");
    eprintln!("killed with {} of {DEVICES} devices pushed", pushed(&at_kill).max(pushed(&before)));
    let id = before["id"].as_str().unwrap().to_string();
    for d in before["devices"].as_array().unwrap().iter().filter(|d| d["push"] == "pushing") {
        eprintln!("left pushing by the kill: {d}");
    }

    // status reads the state file with no process running it.
    let shown = fleet(&["rollout", "status", &id, "--state-dir", s(&state)]);
    assert!(shown.starts_with(&format!("rollout {id}: running")), "{shown}");

    let out = Command::new(fleet_bin()).args(["rollout", "resume", &id, "--state-dir", s(&state)]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("resuming at wave 4"), "{text}");
    let st = state_file(&state).unwrap();
    assert_eq!(st["phase"]["state"], "completed", "{text}");
    assert_eq!(st["decisions"].as_array().unwrap().len(), 4);
    assert_eq!(st["decisions"][3]["figures"]["active"], 100, "reports sent while it was down were read: {text}");

    let counts = manifests.settled(&broker);
    assert_eq!(counts.len(), DEVICES);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "pushed twice: {twice:?}\n{text}");
}

#[test]
fn bad_input_is_refused_before_anything_is_pushed() {
    let broker = Broker::start();
    let lab = Lab::new();
    let manifests = Manifests::start(&broker);
    let _sim = DeviceSim::start(broker.port, sims((0..20).map(sim_id), |_| Behaviour::Healthy), &lab.public);
    let bundle = small_bundle(&lab);
    let state = lab.dir.path().join("rollouts");
    let url = broker.url();
    let cases: [(&[&str], &str); 5] = [
        (&["--halt-when", "rolled_back > 2"], "percentage"),
        (&["--halt-when", "crashes > 2% ||"], "unknown metric"),
        (&["--waves", "1%,10%,50%"], "the last wave must be 100%"),
        (&["--waves", "10%,5%,100%"], "strictly increasing"),
        (&["--group", "nobody"], "no online device in group \"nobody\""),
    ];
    for (bad, why) in cases {
        let mut args = vec!["rollout", "start", s(&bundle), "--broker", &url, "--soak", "1s", "--state-dir", s(&state)];
        args.extend_from_slice(bad);
        let out = Command::new(fleet_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {err}");
        assert!(err.contains(why), "{bad:?}: {err}");
        assert!(state_file(&state).is_none(), "{bad:?}: a refused rollout leaves no state");
    }
    assert!(manifests.settled(&broker).is_empty(), "nothing was pushed");
}

#[test]
fn a_halt_with_rollback_on_halt_pushes_the_previous_bundle_to_the_halted_wave_only() {
    let broker = Broker::start();
    let lab = Lab::new();
    let manifests = Manifests::start(&broker);
    let ids: Vec<String> = (0..20).map(sim_id).collect();
    let _sim = DeviceSim::start(broker.port, sims(ids.iter().cloned(), |_| Behaviour::Crashing), &lab.public);
    let f = lab.dir.path().join("previous.pack");
    std::fs::write(&f, b"the previous artifact, signed again at a higher version").unwrap();
    let previous = lab.sign_model("centerface", "1.1.1", &f, &["--group", "default"], &[], None);
    let state = lab.dir.path().join("rollouts");
    let log = std::fs::File::create(state.with_extension("log")).unwrap();
    let mut child = Command::new(fleet_bin())
        .args(["rollout", "start", s(&small_bundle(&lab)), "--broker", &broker.url(), "--waves", "50%,100%"])
        .args(["--soak", "1s", "--halt-when", "rolled_back > 2%", "--group", "default", "--state-dir", s(&state)])
        .args(["--rollback-on-halt", s(&previous)])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    assert_eq!(wait_exit(&mut child, &state), 3);
    let st = state_file(&state).unwrap();
    assert_eq!(st["phase"]["wave"], 0);
    let first: BTreeSet<String> = order_devices(ids.clone()).into_iter().take(10).collect();
    for d in st["devices"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        let want = if first.contains(id) { serde_json::json!("pushed") } else { serde_json::Value::Null };
        assert_eq!(d["rollback"], want, "{id}");
    }
    let counts = manifests.settled(&broker);
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), first, "only the halted wave");
    assert!(counts.values().all(|n| *n == 2), "the bundle and the rollback, once each: {counts:?}");
}

#[test]
fn abort_stops_a_running_rollout_before_its_next_wave() {
    let broker = Broker::start();
    let lab = Lab::new();
    let manifests = Manifests::start(&broker);
    let ids: Vec<String> = (0..20).map(sim_id).collect();
    let _sim = DeviceSim::start(broker.port, sims(ids.iter().cloned(), |_| Behaviour::Healthy), &lab.public);
    let state = lab.dir.path().join("rollouts");
    let log = std::fs::File::create(state.with_extension("log")).unwrap();
    let mut child = Command::new(fleet_bin())
        .args(["rollout", "start", s(&small_bundle(&lab)), "--broker", &broker.url(), "--waves", "50%,100%"])
        .args(["--soak", "10m", "--group", "default", "--state-dir", s(&state)])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let soaking = wait_for(Duration::from_secs(60), || state_file(&state).filter(|v| v["soak_started_ms"].is_u64()))
        .expect("the first wave did not start soaking");
    let id = soaking["id"].as_str().unwrap();
    fleet(&["rollout", "abort", id, "--state-dir", s(&state)]);
    assert_eq!(wait_exit(&mut child, &state), 4, "exit 4 is an abort");
    assert_eq!(state_file(&state).unwrap()["phase"]["state"], "aborted");
    let out = Command::new(fleet_bin()).args(["rollout", "resume", id, "--state-dir", s(&state)]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "an aborted rollout does not resume");
    assert_eq!(manifests.settled(&broker).len(), 10, "the second wave was never pushed");
}
