//! Rollout decision latency after a wave's soak ends (issue 19).
//!
//! - ours: `spark-fleet rollout start` over simulated devices
//!   (`tests/common/devsim.rs`, answering at once) and a 1 s soak; the time
//!   from the wave's soak end (its `soak_started_ms` in the state file plus
//!   the soak) to this process reading the wave's "decision" line (wall
//!   clock, ms). That is the wake-up at the soak's end, the judgement, the
//!   state file's atomic write (fsync) and the log line through a pipe.
//! - baseline in the same run: the pure judgement alone
//!   (`Rollout::judge` over the same devices, in process), i.e. what the
//!   decision itself costs.
//!
//! `cargo bench --bench fleet_rollout` (needs `mosquitto`; 200 devices, 3
//! rounds of 4 waves, medians). Without `--bench` one round over 50.

mod common;
#[path = "../tests/common/devsim.rs"]
mod devsim;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{Lab, s};
use devsim::{Behaviour, DeviceSim, SimDevice};
use spark_edge::fleet::devices::{Device, parse_status};
use spark_edge::fleet::rollout::{Plan, Push, Rollout};

const SOAK: Duration = Duration::from_secs(1);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One rollout; the latency of each wave's decision after its soak, seconds.
fn one_rollout(url: &str, lab: &Lab, version: &str) -> Vec<f64> {
    let f = lab.dir.path().join("tiny.pack");
    std::fs::write(&f, b"tiny artifact").expect("artifact");
    let bundle = lab.sign_model("centerface", version, &f, &["--group", "default"], &[], None);
    let state = lab.dir.path().join(format!("rollouts-{version}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_spark-fleet"))
        .args(["rollout", "start", s(&bundle), "--broker", url, "--soak", "1s", "--group", "default"])
        .args(["--halt-when", "rolled_back > 2% || fallback > 5% || offline > 5%", "--state-dir", s(&state)])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn spark-fleet rollout");
    let out = child.stdout.take().expect("stdout");
    let mut read_ms = Vec::new();
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if line.contains(": decision: wave") {
            read_ms.push(spark_edge::record::now_ms());
        }
    }
    assert!(child.wait().expect("wait").success(), "the rollout did not complete");
    let file = std::fs::read_dir(&state)
        .expect("state dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("state file");
    let r: Rollout = serde_json::from_slice(&std::fs::read(file).expect("read state")).expect("state");
    r.decisions
        .iter()
        .zip(read_ms)
        .filter_map(|(d, read)| {
            d.soak_started_ms.map(|s| read.saturating_sub(s + SOAK.as_millis() as u64) as f64 / 1e3)
        })
        .collect()
}

/// The pure judgement over `n` devices that all answered active; seconds.
fn judge_in_process(n: usize) -> f64 {
    let statuses: BTreeMap<String, Device> = (0..n)
        .map(|i| format!("pi-{i:05}"))
        .map(|id| {
            let body = format!(r#"{{"online":true,"device_id":"{id}","group":"g","engine":"hailo","fallbacks":0}}"#);
            (id.clone(), parse_status(&id, body.as_bytes()))
        })
        .collect();
    let rows: Vec<&Device> = statuses.values().collect();
    let plan = Plan {
        bundle: "b".into(),
        update_id: "u".into(),
        kind: "model".into(),
        name: "m".into(),
        version: "1.1.0".into(),
        rollback_bundle: None,
        rollback_update_id: None,
        group: None,
        broker: "mqtt://127.0.0.1:1".into(),
        prefix: "spark".into(),
        waves: vec![100],
        soak: SOAK,
        report_timeout: SOAK,
        halt_when: "rolled_back > 2% || fallback > 5% || offline > 5%".into(),
        connection: Default::default(),
    };
    let mut base = Rollout::plan(plan, &rows, 1).expect("plan");
    let ids: Vec<String> = base.devices.iter().map(|d| d.id.clone()).collect();
    for id in &ids {
        base.device_mut(id).expect("device").push = Push::Pushed;
        let r = format!(r#"{{"device_id":"{id}","group":"g","update_id":"u","state":"active","ts":1}}"#);
        base.observe_report(id, r.as_bytes());
    }
    let mut times = Vec::new();
    for _ in 0..21 {
        let mut r = base.clone();
        let t = Instant::now();
        std::hint::black_box(r.judge(2, &statuses));
        times.push(t.elapsed().as_secs_f64());
    }
    median(times)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n, rounds) = if quick { (50, 1) } else { (200, 3) };
    let broker = common::mosquitto();
    let lab = Lab::new();
    let devices = (0..n)
        .map(|i| SimDevice { id: format!("sim-{i:03}"), group: "default".into(), behaviour: Behaviour::Healthy })
        .collect();
    let _sim = DeviceSim::start(broker.port, devices, &lab.public);
    let url = broker.url();
    let mut lat = Vec::new();
    for round in 0..rounds {
        lat.extend(one_rollout(&url, &lab, &format!("1.{}.0", round + 1)));
    }
    let worst = lat.iter().copied().fold(0.0, f64::max);
    let ours = median(lat.clone());
    let pure = judge_in_process(n);
    let pure_10k = judge_in_process(10_000);
    println!("| {n} simulated devices, {} waves | median | worst |", lat.len());
    println!("| --- | --- | --- |");
    println!("| soak end → decision logged (`spark-fleet rollout`) | {:.1} ms | {:.1} ms |", ours * 1e3, worst * 1e3);
    println!("| baseline: `Rollout::judge` alone, {n} devices | {:.3} ms | - |", pure * 1e3);
    println!("| `Rollout::judge` alone, 10,000 devices | {:.3} ms | - |", pure_10k * 1e3);
}
