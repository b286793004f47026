//! The kill campaign (issue 15 item 7): the real `sparkd` SIGKILLed again and
//! again at random moments of what a device does (ingest at a synthetic
//! load, a drain after a broker outage, a model update in transfer, a model
//! swap, a config update, a config reload), with the broker stopped and
//! started (cleanly or by SIGKILL) in between. A persistent QoS 1 consumer
//! watches everything; sparkd reaches the broker through the PUBACK witness
//! (`common::witness`), which tells the broker's own loss from sparkd's.
//!
//! Checked at the end, after a quiet drain: for each stream, every accepted
//! `seq` arrived, or it is one of the drops retention counted (`dropped` in
//! `sparkctl queue --json`), or (only after a broker SIGKILL) the broker had
//! acknowledged it; the daemon came back after every kill and never exited
//! by itself; and the device still takes a model and a config update and runs
//! them.
//!
//! `SPARK_KILL_CYCLES=N` sets the number of kills (default 12, every kind of
//! moment at least once; the long run is `SPARK_KILL_CYCLES=100`),
//! `SPARK_KILL_SEED=S` replays a run: the seed is printed at the start.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{Lab, fleet, s, update_id};
use common::witness::PubackWitness;
use common::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The campaign's own Mosquitto: unlike `common::Broker` it can be stopped
/// cleanly (SIGTERM: Mosquitto saves its sessions) as well as SIGKILLed,
/// and started again on the same port and persistence folder.
struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    fn start() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = std::fs::File::create(dir.path().join("mosquitto.conf")).expect("conf");
        // As `common::Broker`: saved once a second. Not on every change
        // (`Broker::start_saving_every_change`): the consumer's session holds
        // the update chunks (MBs), and rewriting them on every change kept a
        // loaded machine's disk so busy that the broker missed keep-alives.
        // A SIGKILL loses what it acknowledged since its last save: the
        // witness counts that.
        writeln!(
            f,
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\nmax_queued_messages 0\n\
             persistence true\npersistence_location {}/\nautosave_interval 1\nlog_dest none",
            dir.path().display()
        )
        .expect("write conf");
        let mut m = Mosquitto { port, dir, child: None };
        m.up();
        m
    }

    fn is_up(&self) -> bool {
        self.child.is_some()
    }

    fn up(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto not installed: run scripts/setup.sh");
        self.child = Some(child);
        wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", self.port)).ok())
            .expect("mosquitto did not start");
    }

    /// Stops the broker: SIGKILL when `hard`, else SIGTERM (it persists).
    fn down(&mut self, hard: bool) {
        let Some(mut child) = self.child.take() else { return };
        if hard {
            let _ = child.kill();
        } else {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        let _ = child.wait();
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the device is doing when the kill lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Moment {
    /// Synthetic events, telemetry and inference being committed.
    Ingest,
    /// The backlog of a broker outage going out.
    Drain,
    /// A model update's chunks arriving.
    ModelTransfer,
    /// A model update being checked (engine, canary) and swapped in.
    ModelSwap,
    /// A config update arriving, activating, or on trial.
    ConfigUpdate,
    /// `sparkctl config reload` in progress.
    ConfigReload,
}

const MOMENTS: [Moment; 6] = [
    Moment::Ingest,
    Moment::Drain,
    Moment::ModelTransfer,
    Moment::ModelSwap,
    Moment::ConfigUpdate,
    Moment::ConfigReload,
];

/// The daemon's settings that differ between the campaign and the final run.
#[derive(Clone, Copy)]
struct Settings {
    events_per_sec: f64,
    telemetry_secs: f64,
    fps: f64,
    /// A key the daemon applies live (`[update]`), changed by reloads and
    /// config updates so that each one has something to apply.
    max_artifact_megabytes: u64,
}

const CAMPAIGN: Settings =
    Settings { events_per_sec: 300.0, telemetry_secs: 0.2, fps: 1.0, max_artifact_megabytes: 64 };
/// Quiet: no synthetic load, no telemetry, a frame every 2 s (the inference
/// thread takes a new engine between frames).
const QUIET: Settings = Settings { events_per_sec: 0.0, telemetry_secs: 3600.0, fps: 0.5, max_artifact_megabytes: 64 };

/// The full config text for `settings`, written to the `--config` file.
/// Fleet config updates carry the same text: a fleet config replaces the
/// file as a whole.
fn write_config(cfg: &mut DaemonConfig, lab: &Lab, st: Settings) -> String {
    cfg.fps = st.fps;
    cfg.telemetry_secs = st.telemetry_secs;
    // An 8 MiB store and 500 B events: an outage over several cycles makes
    // retention drop (and count) records.
    cfg.extra = format!(
        "[store]\nmax_megabytes = 8\ndrop_order = [\"events\", \"inference\", \"telemetry\"]\n[load]\nevents_per_sec = {:.1}\nevent_bytes = 500\n\
         [update]\ntrusted_keys_file = \"{}\"\nbinary_health_secs = 1\nmax_artifact_megabytes = {}\n",
        st.events_per_sec,
        lab.public.display(),
        st.max_artifact_megabytes
    );
    std::fs::read_to_string(cfg.write()).expect("read the config back")
}

/// The demo model as a pack at `version` with its canary input, signed.
fn model_bundle(lab: &Lab, version: &str) -> PathBuf {
    let d = lab.dir.path().join(format!("pack-{version}"));
    std::fs::create_dir_all(&d).unwrap();
    let toml = std::fs::read_to_string(repo().join("models/centerface.toml")).unwrap();
    std::fs::write(d.join("model.toml"), toml.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")))
        .unwrap();
    let pack = d.join("centerface.pack");
    let onnx = repo().join("models/centerface.onnx");
    let canary = repo().join("models/demo/astronaut.png");
    fleet(&["pack", "--model", s(&d.join("model.toml")), "--out", s(&pack), s(&onnx), s(&canary)]);
    let out = lab.dir.path().join(format!("model-{version}.bundle"));
    fleet(&[
        "sign",
        "--key",
        s(&lab.key),
        "--kind",
        "model",
        "--name",
        "centerface",
        "--version",
        version,
        "--artifact",
        s(&pack),
        "--expires-in-days",
        "30",
        "--device",
        "test-dev",
        "--canary-input",
        "astronaut.png",
        "--canary-label",
        "face",
        "--canary-min-score",
        "0.5",
        "--out",
        s(&out),
    ]);
    let _ = std::fs::remove_dir_all(&d);
    out
}

/// `spark-fleet push` in the background (the kill may land while it runs).
fn spawn_push(broker: &Mosquitto, bundle: &Path) -> Child {
    Command::new(common::fleet::fleet_bin())
        .args(["push", "--broker", &broker.url(), "--device", "test-dev"])
        .arg(bundle)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spark-fleet push")
}

/// The states reported so far for update `id` (scanned in place: the
/// consumer holds every record of the campaign).
fn reported(c: &Consumer, id: &str) -> Vec<String> {
    let msgs = c.msgs.lock().unwrap();
    msgs.iter()
        .filter(|m| m.topic.ends_with("/update/state") && m.json["update_id"] == id)
        .filter_map(|m| m.json["state"].as_str().map(String::from))
        .collect()
}

/// Online status messages seen so far (the device publishes one after it
/// subscribed to its update topics on a new connection).
fn online_count(c: &Consumer) -> usize {
    let msgs = c.msgs.lock().unwrap();
    msgs.iter().filter(|m| m.topic.ends_with("/status") && m.json["online"] == true).count()
}

fn acked_total(w: &PubackWitness) -> usize {
    w.acked().values().map(|a| a.len()).sum()
}

fn engine_model(socket: &Path) -> String {
    let v = sparkctl_json(socket, &["engine"], 0);
    v["model"].as_str().unwrap_or_default().to_string()
}

/// The active version of `name` in `sparkctl update status`.
fn installed(socket: &Path, name: &str) -> Option<String> {
    let u = sparkctl_json(socket, &["update", "status"], 0);
    u["installed"].as_array()?.iter().find(|i| i["name"] == name)?["active"].as_str().map(String::from)
}

/// Pushes `bundle` (again every 15 s: a push that reached the broker before
/// the device subscribed is not retained) until the update `id` reports one
/// of `states`; returns the state, or `None` after `timeout`.
fn push_until(broker: &Mosquitto, c: &Consumer, bundle: &Path, states: &[&str], timeout: Duration) -> Option<String> {
    let id = update_id(bundle);
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        let mut p = spawn_push(broker, bundle);
        let got =
            wait_for(Duration::from_secs(15), || reported(c, &id).into_iter().find(|st| states.contains(&st.as_str())));
        let _ = p.wait();
        if got.is_some() {
            return got;
        }
    }
    None
}

/// Seqs neither arrived nor acknowledged by the broker, beyond each
/// stream's counted drops (what the final check waits to reach 0).
fn unexplained(q: &serde_json::Value, c: &Consumer, acked: &common::witness::Acked) -> u64 {
    let sets = c.seq_sets();
    let mut n = 0;
    for (name, st) in q["streams"].as_object().into_iter().flatten() {
        let last = st["next_seq"].as_u64().unwrap_or(1).saturating_sub(1);
        let dropped = st["dropped"].as_u64().unwrap_or(0);
        let (got, acks) = (sets.get(name), acked.get(name));
        let missing = (1..=last)
            .filter(|q| !got.is_some_and(|g| g.contains(q)) && !acks.is_some_and(|a| a.contains(q)))
            .count() as u64;
        n += missing.saturating_sub(dropped);
    }
    n
}

/// Every update id the device reported on.
fn states_ids(c: &Consumer) -> std::collections::BTreeSet<String> {
    let msgs = c.msgs.lock().unwrap();
    msgs.iter()
        .filter(|m| m.topic.ends_with("/update/state"))
        .filter_map(|m| m.json["update_id"].as_str().filter(|s| !s.is_empty()).map(String::from))
        .collect()
}

#[derive(Default)]
struct Tally {
    moments: BTreeMap<String, u64>,
    broker_clean_stops: u64,
    broker_kills: u64,
    model_pushes: u64,
    config_pushes: u64,
    reloads: u64,
    /// Update outcomes seen in reports, by state (`active`, `rolled_back`, ...).
    outcomes: BTreeMap<String, u64>,
}

#[test]
fn every_seq_arrives_or_is_a_counted_drop_across_a_kill_campaign() {
    let cycles = env_u64("SPARK_KILL_CYCLES").unwrap_or(12);
    let seed = env_u64("SPARK_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    eprintln!("fault_kill_campaign: {cycles} cycles, SPARK_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let t0 = Instant::now();

    let mut broker = Mosquitto::start();
    let consumer = Consumer::start(broker.port, "spark/#");
    let witness = PubackWitness::start(broker.port);
    let lab = Lab::new();
    let mut cfg = DaemonConfig::new(&witness.url());
    let mut settings = CAMPAIGN;
    write_config(&mut cfg, &lab, settings);
    let sock = cfg.socket();

    // Every kind of moment once (shuffled), then at random.
    let mut order = MOMENTS.to_vec();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let (mut model_minor, mut config_minor) = (1u64, 1u64);
    let mut tally = Tally::default();
    for cycle in 0..cycles {
        let moment = order.get(cycle as usize).copied().unwrap_or(MOMENTS[rng.below(MOMENTS.len() as u64) as usize]);
        // Updates travel through the broker.
        let needs_broker = matches!(moment, Moment::ModelTransfer | Moment::ModelSwap | Moment::ConfigUpdate);
        if needs_broker && !broker.is_up() {
            broker.up();
        }
        write_config(&mut cfg, &lab, settings);
        let online_before = online_count(&consumer);
        let mut d = Daemon::start(&cfg);
        let mut what = String::new();
        let mut reload: Option<Child> = None;
        match moment {
            // Scenario sleeps: the kill lands at a random moment.
            Moment::Ingest => std::thread::sleep(rng.ms(100, 1500)),
            Moment::Drain => {
                if broker.is_up() {
                    broker.down(false);
                    tally.broker_clean_stops += 1;
                    std::thread::sleep(rng.ms(300, 3000));
                }
                let before = acked_total(&witness);
                broker.up();
                // Once the drain moved, the kill lands somewhere in it.
                wait_for(Duration::from_secs(30), || (acked_total(&witness) > before).then_some(()))
                    .unwrap_or_else(|| panic!("cycle {cycle}: no drain after the outage; log:\n{}", d.log_text()));
                std::thread::sleep(rng.ms(0, 1500));
                what = format!("drained {} before the kill", acked_total(&witness) - before);
            }
            Moment::ModelTransfer | Moment::ModelSwap => {
                let version = format!("1.{model_minor}.0");
                model_minor += 1;
                tally.model_pushes += 1;
                let bundle = model_bundle(&lab, &version);
                let id = update_id(&bundle);
                wait_for(Duration::from_secs(60), || (online_count(&consumer) > online_before).then_some(()))
                    .unwrap_or_else(|| panic!("cycle {cycle}: the device did not come online; log:\n{}", d.log_text()));
                let wanted: &[&str] = if moment == Moment::ModelTransfer {
                    &["received", "verified", "staged", "activating", "active", "rolled_back", "rejected"]
                } else {
                    &["staged", "activating", "active", "rolled_back", "rejected"]
                };
                let got =
                    push_until(&broker, &consumer, &bundle, wanted, Duration::from_secs(90)).unwrap_or_else(|| {
                        panic!("cycle {cycle}: model {version} never reached {wanted:?}; log:\n{}", d.log_text())
                    });
                std::thread::sleep(if moment == Moment::ModelTransfer { rng.ms(0, 600) } else { rng.ms(0, 2000) });
                what = format!("model {version} {id}: {got} when seen");
                let _ = std::fs::remove_file(&bundle);
            }
            Moment::ConfigUpdate => {
                let version = format!("1.{config_minor}.0");
                config_minor += 1;
                tally.config_pushes += 1;
                let mut pushed = CAMPAIGN;
                pushed.max_artifact_megabytes = 64 + config_minor;
                // The `--config` file stays the campaign's; restore it after
                // rendering the pushed text.
                let text = write_config(&mut cfg, &lab, pushed);
                write_config(&mut cfg, &lab, settings);
                let bundle = lab.sign_config(&text, &version);
                wait_for(Duration::from_secs(60), || (online_count(&consumer) > online_before).then_some(()))
                    .unwrap_or_else(|| panic!("cycle {cycle}: the device did not come online; log:\n{}", d.log_text()));
                let mut p = spawn_push(&broker, &bundle);
                // Anywhere from arrival to the end of its 1 s trial.
                std::thread::sleep(rng.ms(0, 3000));
                let _ = p.wait();
                what = format!("config {version}: {:?}", reported(&consumer, &update_id(&bundle)));
            }
            Moment::ConfigReload => {
                tally.reloads += 1;
                let mut file = settings;
                file.max_artifact_megabytes = 32 + rng.below(32);
                write_config(&mut cfg, &lab, file);
                let mut r = Command::new(sparkctl_bin())
                    .arg("--socket")
                    .arg(&sock)
                    .args(["config", "reload", "--json"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn sparkctl config reload");
                std::thread::sleep(rng.ms(0, 300));
                let done = r.try_wait().ok().flatten();
                what = format!("reload finished before the kill: {}", done.is_some());
                reload = Some(r);
            }
        }
        // The backlog at the kill (for the log; a failed query is no finding).
        let (_, out, _) = sparkctl(&sock, &["queue", "--json"]);
        let at_kill: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        // Never expected: the daemon ended before the kill.
        if let Ok(Some(st)) = d.child.try_wait() {
            panic!("cycle {cycle} ({moment:?}): sparkd exited by itself ({st}); log:\n{}", d.log_text());
        }
        d.kill9();
        if let Some(mut r) = reload {
            let _ = r.wait();
        }
        *tally.moments.entry(format!("{moment:?}")).or_default() += 1;

        // Between kills the broker sometimes goes away or comes back.
        if broker.is_up() && rng.below(4) == 0 {
            let hard = rng.below(3) == 0;
            broker.down(hard);
            if hard {
                tally.broker_kills += 1;
            } else {
                tally.broker_clean_stops += 1;
            }
        } else if !broker.is_up() && rng.below(2) == 0 {
            broker.up();
        }
        if cycles <= 20 || cycle % 10 == 9 {
            eprintln!(
                "cycle {cycle}: {moment:?} {what}; {} pending, {} dropped at the kill; broker now {}; {} messages so far",
                at_kill["pending"],
                at_kill["dropped"],
                if broker.is_up() { "up" } else { "down" },
                consumer.len()
            );
        }
    }

    // The device still takes updates and runs them: a model, then a quiet
    // config (no load) for the final drain, used from the next start on.
    if !broker.is_up() {
        broker.up();
    }
    let online_before = online_count(&consumer);
    let d = Daemon::start(&cfg);
    wait_for(Duration::from_secs(60), || (online_count(&consumer) > online_before).then_some(()))
        .unwrap_or_else(|| panic!("final start: the device did not come online; log:\n{}", d.log_text()));
    let running = engine_model(&sock);
    assert!(running.starts_with("centerface 1."), "after the campaign the engine runs {running:?}");
    let final_model = format!("1.{model_minor}.0");
    let bundle = model_bundle(&lab, &final_model);
    let got = push_until(&broker, &consumer, &bundle, &["active", "rolled_back", "rejected"], Duration::from_secs(180));
    assert_eq!(got.as_deref(), Some("active"), "final model {final_model}; log:\n{}", d.log_text());
    assert_eq!(engine_model(&sock), format!("centerface {final_model}"));
    // A config on trial refuses the next one until it is confirmed (1 s).
    std::thread::sleep(Duration::from_secs(2));
    let final_config = format!("1.{}.0", config_minor + 1);
    let text = write_config(&mut cfg, &lab, QUIET);
    let bundle = lab.sign_config(&text, &final_config);
    let got = push_until(&broker, &consumer, &bundle, &["active", "rolled_back", "rejected"], Duration::from_secs(120));
    assert_eq!(got.as_deref(), Some("active"), "final config {final_config}; log:\n{}", d.log_text());
    assert!(d.terminate(Duration::from_secs(20)).success());
    settings = QUIET;
    write_config(&mut cfg, &lab, settings);

    let d = Daemon::start(&cfg);
    let q = wait_drained(&sock, Duration::from_secs(180));
    let shown = sparkctl_json(&sock, &["config", "show"], 0);
    assert_eq!(shown["config"]["telemetry"]["interval_secs"], 3600.0, "not on the final config: {shown}");
    assert_eq!(installed(&sock, "sparkd").as_deref(), Some(final_config.as_str()));
    assert_eq!(installed(&sock, "centerface").as_deref(), Some(final_model.as_str()));
    assert_eq!(engine_model(&sock), format!("centerface {final_model}"));
    let inferred = status_json(&sock)["inference"]["total"].as_u64().unwrap_or(0);
    wait_for(Duration::from_secs(60), || {
        (status_json(&sock)["inference"]["total"].as_u64().unwrap_or(0) > inferred).then_some(())
    })
    .expect("no inference on the final model");

    // The consumer check.
    let acked = witness.acked();
    let _ = wait_for(Duration::from_secs(60), || (unexplained(&q, &consumer, &acked) == 0).then_some(()));
    let sets = consumer.seq_sets();
    let (mut records, mut dropped_total, mut broker_lost) = (0u64, 0u64, 0u64);
    for (name, st) in q["streams"].as_object().expect("streams") {
        let last = st["next_seq"].as_u64().unwrap_or(1).saturating_sub(1);
        let dropped = st["dropped"].as_u64().unwrap_or(0);
        let empty = Default::default();
        let got = sets.get(name).unwrap_or(&empty);
        let missing: Vec<u64> = (1..=last).filter(|q| !got.contains(q)).collect();
        let by_broker: Vec<u64> =
            missing.iter().copied().filter(|q| acked.get(name).is_some_and(|a| a.contains(q))).collect();
        // A seq the broker acknowledged and then lost is the broker's loss,
        // and only a SIGKILLed broker loses one.
        let excused = if tally.broker_kills > 0 { by_broker.len() as u64 } else { 0 };
        assert!(
            missing.len() as u64 <= dropped + excused,
            "SPARK_KILL_SEED={seed}: stream {name}: {} of seqs 1..={last} missing (first: {:?}), but only {dropped} \
             counted as dropped by retention and {excused} acknowledged by a broker that was SIGKILLed",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        eprintln!(
            "stream {name}: {last} accepted, {dropped} dropped by retention, {} not received ({} of them \
             acknowledged by the broker)",
            missing.len(),
            by_broker.len()
        );
        records += last;
        dropped_total += dropped;
        broker_lost += (missing.len() as u64).saturating_sub(dropped).min(by_broker.len() as u64);
    }
    assert!(q["streams"]["events"]["next_seq"].as_u64().unwrap_or(0) > 400, "the load generator ran: {q}");
    // The relay saw the traffic (else the broker-loss figure proves nothing).
    let seen: u64 = acked.values().map(|a| a.len() as u64).sum();
    assert!(seen * 10 >= (records - dropped_total) * 9, "the relay saw PUBACKs for only {seen} of {records}");
    let status = status_json(&sock);
    assert_eq!(status["records_lost"], 0, "{status}");
    for id in states_ids(&consumer) {
        if let Some(last) = reported(&consumer, &id).last() {
            *tally.outcomes.entry(last.clone()).or_default() += 1;
        }
    }
    assert!(d.terminate(Duration::from_secs(20)).success());
    eprintln!(
        "fault_kill_campaign: {cycles} SIGKILLs, SPARK_KILL_SEED={seed}, {:.0} s; {records} records accepted, \
         {dropped_total} dropped by retention (counted), 0 lost by sparkd; broker stopped {} times cleanly and \
         SIGKILLed {} times, losing {broker_lost} records it had acknowledged; moments {:?}; {} model and {} \
         config pushes, {} reloads; last report per update {:?}",
        t0.elapsed().as_secs_f64(),
        tally.broker_clean_stops,
        tally.broker_kills,
        tally.moments,
        tally.model_pushes,
        tally.config_pushes,
        tally.reloads,
        tally.outcomes
    );
}
