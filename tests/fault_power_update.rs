//! Power cuts during fleet updates: `sparkd`'s state directory lives on
//! crashfs (tests/crashfs, docs/power-loss.md), which forgets every write and
//! directory change that was not synced when power is cut. A campaign per
//! update kind (model, config, binary) picks, at random, where to cut:
//! during the transfer (chunks arriving), at a step of the update (the
//! crash-point hook `SPARK_UPDATE_TEST_CRASH_AT` stops the daemon right
//! after the step is durable, then crashfs cuts), during a model swap, a
//! config trial, confirmation, rollback or `sparkctl config reload`, or a
//! binary's trial, confirmation or rollback. Power comes back: crashfs
//! mounts what survived and `sparkd` starts on it (restarted like systemd
//! would on a failure or on exit 75).
//!
//! Checked after every cut: the device comes back up, on the version it ran
//! before the update or the new one, never neither and never another; what
//! runs is what `sparkctl update status --json` says is active (engine model
//! for models, `config show` for configs, `/proc/PID/exe` for binaries).
//! An update cut short before it finished is pushed again and must end
//! active. At the end, a persistent QoS 1 consumer holds every accepted
//! record of the whole campaign except counted drops.
//!
//! `SPARK_POWER_CUTS=N`: cuts over the three campaigns (default 12; the long
//! run is 200). `SPARK_POWER_SEED=S` replays a run: each campaign prints its
//! seed (one seed replays all three).

mod common;

#[path = "crashfs/harness.rs"]
mod crashfs;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{Lab, fleet, push, s, states, update_id};
use common::*;
use crashfs::CrashFs;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Steps that are not crash points of the update store (see `cut_once`).
const SCENARIOS: [&str; 8] =
    ["transfer", "swap", "canary-miss", "trial", "confirm", "rolled-back", "rollback", "reload"];

const DEV: [&str; 2] = ["--device", "test-dev"];
const HEALTH_SECS: u64 = 2;
/// The telemetry interval of the file config; config version 1.0.N sets
/// 1 + N/1000 s, so `config show` tells which config runs.
const FILE_TELEMETRY: f64 = 1.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Model,
    Config,
    Binary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Config => "config",
            Kind::Binary => "binary",
        }
    }

    /// Where a cut can land. Names of crash points are cut right after that
    /// step; the others are described at [`Campaign::cut_once`].
    fn steps(self) -> &'static [&'static str] {
        match self {
            Kind::Model => &[
                "transfer",
                "received",
                "chunk",
                "verified",
                "staged",
                "activating",
                "previous-linked",
                "swapped",
                "installed",
                "active",
                "swap",
                "canary-miss",
            ],
            Kind::Config => &[
                "transfer",
                "received",
                "chunk",
                "verified",
                "staged",
                "activating",
                "previous-linked",
                "swapped",
                "installed",
                "active",
                "trial",
                "confirm",
                "rolled-back",
                "reload",
            ],
            Kind::Binary => &[
                "transfer",
                "received",
                "chunk",
                "verified",
                "staged",
                "activating",
                "installed",
                "trial",
                "binary-swapped",
                "rollback",
            ],
        }
    }
}

/// One device on crashfs, its broker and consumer, and the versions it runs.
struct Campaign {
    kind: Kind,
    seed: u64,
    rng: Rng,
    broker: Broker,
    c: Consumer,
    lab: Lab,
    cfg: DaemonConfig,
    crashfs_bin: PathBuf,
    backing: PathBuf,
    fs: Option<CrashFs>,
    proc: Option<Child>,
    /// stdout of the current process (crash-point markers).
    out: PathBuf,
    /// `online` messages seen when the current process was started.
    online_before: usize,
    starts: u32,
    /// The version that runs now (`None`: the packaged model / file config / packaged binary).
    running: Option<String>,
    next_minor: u32,
    good_binary: Option<PathBuf>,
}

fn online_count(c: &Consumer) -> usize {
    c.snapshot()
        .into_iter()
        .filter(|m| m.topic.ends_with("/status") && m.json["online"] == true && m.json["device_id"] == "test-dev")
        .count()
}

/// The running binary's version (`installed_version`); `None`: the packaged one.
fn binary_runs(u: &serde_json::Value) -> Option<String> {
    let running = u["installed_version"].as_str().unwrap_or_default().to_string();
    (running != env!("CARGO_PKG_VERSION")).then_some(running)
}

fn installed_active(u: &serde_json::Value, kind: Kind) -> Option<String> {
    u["installed"]
        .as_array()?
        .iter()
        .find(|i| i["kind"] == kind.as_str())
        .and_then(|i| i["active"].as_str().map(String::from))
}

fn record_state(u: &serde_json::Value, id: &str) -> String {
    u["updates"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["update_id"] == id))
        .and_then(|r| r["state"].as_str().map(String::from))
        .unwrap_or_default()
}

fn telemetry_of(version: Option<&str>) -> f64 {
    match version.and_then(|v| v.rsplit('.').next()).and_then(|p| p.parse::<u32>().ok()) {
        Some(n) => 1.0 + f64::from(n) / 1000.0,
        None => FILE_TELEMETRY,
    }
}

impl Campaign {
    fn new(kind: Kind, seed: u64) -> Self {
        let broker = Broker::start();
        let c = Consumer::start(broker.port, "spark/#");
        let lab = Lab::new();
        let mut cfg = DaemonConfig::new(&broker.url());
        cfg.camera_off = kind != Kind::Model;
        cfg.fps = 1.0;
        cfg.telemetry_secs = FILE_TELEMETRY;
        cfg.extra = format!(
            "[update]\ntrusted_keys_file = \"{}\"\nmax_artifact_megabytes = 64\nbinary_health_secs = {HEALTH_SECS}\n\
             [load]\nevents_per_sec = 50.0\n",
            lab.public.display()
        );
        cfg.write();
        let backing = cfg.dir.path().join("backing");
        std::fs::create_dir(&backing).expect("backing dir");
        std::fs::create_dir(cfg.state_dir()).expect("state dir");
        let out = cfg.dir.path().join("stdout-0.txt");
        Campaign {
            kind,
            seed,
            rng: Rng(seed ^ (kind as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            broker,
            c,
            lab,
            cfg,
            crashfs_bin: crashfs::binary(),
            backing,
            fs: None,
            proc: None,
            out,
            online_before: 0,
            starts: 0,
            running: None,
            next_minor: 1,
            good_binary: None,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.cfg.dir.path().join("sparkd.log")).unwrap_or_default()
    }

    fn fail(&self, what: &str) -> ! {
        let log = self.log();
        let tail = &log[log.len().saturating_sub(12_000)..];
        panic!("{} campaign, SPARK_POWER_SEED={}: {what}\nsparkd log (tail):\n{tail}", self.kind.as_str(), self.seed)
    }

    /// crashfs over the state directory: strict POSIX two times in three,
    /// ext4-like (`--journal`) otherwise.
    fn mount(&mut self) {
        if self.fs.is_none() {
            let args: &[&str] = if self.rng.below(3) == 0 { &["--journal"] } else { &[] };
            self.fs = Some(CrashFs::mount(&self.crashfs_bin, &self.backing, &self.cfg.state_dir(), args));
        }
    }

    /// `sparkd run` as the unit starts it, `env` added.
    fn spawn(&mut self, env: &[(&str, &str)]) {
        self.starts += 1;
        self.out = self.cfg.dir.path().join(format!("stdout-{}.txt", self.starts));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cfg.dir.path().join("sparkd.log"))
            .expect("log");
        let mut cmd = Command::new(sparkd_bin());
        cmd.args(["run", "--config"])
            .arg(self.cfg.dir.path().join("sparkd.toml"))
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("SPARKD_SLOT")
            .stdout(std::fs::File::create(&self.out).expect("stdout file"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.online_before = online_count(&self.c);
        self.proc = Some(cmd.spawn().expect("spawn sparkd"));
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.as_mut().and_then(|p| p.try_wait().ok().flatten())
    }

    /// Waits until the daemon serves its socket and is online (subscribed to
    /// its update topics), restarting it like systemd (`Restart=on-failure`,
    /// exit 75) when it exits; `env` goes to every start.
    fn wait_up(&mut self, env: &[(&str, &str)]) {
        let end = Instant::now() + Duration::from_secs(120);
        let mut restarts = 0;
        loop {
            if let Some(st) = self.exited() {
                restarts += 1;
                if restarts > 4 || st.success() {
                    self.fail(&format!("sparkd exited {st} and does not come back up ({restarts} starts)"));
                }
                self.spawn(env);
                continue;
            }
            if std::os::unix::net::UnixStream::connect(self.cfg.socket()).is_ok()
                && online_count(&self.c) > self.online_before
            {
                return;
            }
            if Instant::now() > end {
                self.fail("sparkd did not come up within 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn boot(&mut self, env: &[(&str, &str)]) {
        self.mount();
        self.spawn(env);
        self.wait_up(env);
    }

    /// Power is lost: crashfs keeps only what was synced, the daemon dies.
    fn cut(&mut self) -> String {
        let how = match self.rng.below(4) {
            0 => "cut tear=random".to_string(),
            1 => format!("cut reorder seed={}", self.rng.next()),
            _ => "cut".to_string(),
        };
        let fs = self.fs.take().expect("mounted");
        fs.cut(&how);
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        how
    }

    fn wait_marker(&mut self, point: &str, id: &str) {
        let marker = format!("SPARK_UPDATE_CRASH_POINT {point}");
        let out = self.out.clone();
        let found = wait_for(Duration::from_secs(120), || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            // A step that this update never passes (no `previous` yet):
            // the cut lands after the update ended instead.
            let ended = states(&self.c, id)
                .iter()
                .any(|j| ["active", "rolled_back", "rejected"].contains(&j["state"].as_str().unwrap_or("")));
            (text.contains(&marker) || ended).then_some(())
        });
        if found.is_none() {
            self.fail(&format!("crash point {point} never reached"));
        }
    }

    fn new_version(&mut self) -> String {
        let n = self.next_minor;
        self.next_minor += 1;
        match self.kind {
            Kind::Model => format!("1.1.{n}"),
            Kind::Config => format!("1.0.{n}"),
            Kind::Binary => format!("1.0.{n}"),
        }
    }

    /// A signed bundle of `version`; `broken`: a model whose canary misses,
    /// a config that cannot start, a binary that exits at once.
    fn bundle(&mut self, version: &str, broken: bool) -> PathBuf {
        let dir = self.lab.dir.path().join(format!("v-{version}"));
        std::fs::create_dir_all(&dir).expect("bundle dir");
        let out = dir.join("update.bundle");
        let mut args: Vec<String> = Vec::new();
        match self.kind {
            Kind::Model => {
                let toml = std::fs::read_to_string(repo().join("models/centerface.toml")).expect("model toml");
                std::fs::write(
                    dir.join("model.toml"),
                    toml.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")),
                )
                .expect("model toml");
                let pack = dir.join("centerface.pack");
                fleet(&[
                    "pack",
                    "--model",
                    s(&dir.join("model.toml")),
                    "--out",
                    s(&pack),
                    s(&repo().join("models/centerface.onnx")),
                    s(&repo().join("models/demo/astronaut.png")),
                ]);
                let label = if broken { "no-such-label" } else { "face" };
                args.extend(["--kind", "model", "--name", "centerface", "--artifact", s(&pack)].map(String::from));
                args.extend(
                    ["--canary-input", "astronaut.png", "--canary-label", label, "--canary-min-score", "0.5"]
                        .map(String::from),
                );
            }
            Kind::Config => {
                let text = std::fs::read_to_string(self.cfg.dir.path().join("sparkd.toml")).expect("config");
                let mut text = text.replace(
                    &format!("interval_secs = {FILE_TELEMETRY:.3}"),
                    &format!("interval_secs = {}", telemetry_of(Some(version))),
                );
                if broken {
                    text = text.replace(
                        "[mqtt]\n",
                        "[mqtt]\nusername = \"u\"\npassword_file = \"/nonexistent/mqtt-password\"\n",
                    );
                }
                let file = dir.join("sparkd.toml");
                std::fs::write(&file, text).expect("config");
                args.extend(
                    ["--kind", "config", "--name", "sparkd", "--artifact", s(&file), "--file-name", "sparkd.toml"]
                        .map(String::from),
                );
            }
            Kind::Binary => {
                let file = if broken {
                    let p = dir.join("sparkd-crash");
                    std::fs::write(&p, "#!/bin/sh\necho 'sparkd-crash: exiting 1' >&2\nexit 1\n").expect("script");
                    p
                } else {
                    if self.good_binary.is_none() {
                        let p = self.lab.dir.path().join("sparkd-good");
                        std::fs::copy(sparkd_bin(), &p).expect("copy sparkd");
                        let _ = Command::new("strip").arg(&p).status();
                        self.good_binary = Some(p);
                    }
                    self.good_binary.clone().expect("good binary")
                };
                args.extend(
                    ["--kind", "binary", "--name", "sparkd", "--artifact", s(&file), "--file-name", "sparkd"]
                        .map(String::from),
                );
            }
        }
        let head =
            ["sign", "--key", s(&self.lab.key), "--version", version, "--expires-in-days", "30", "--out", s(&out)];
        let mut all: Vec<String> = head.map(String::from).to_vec();
        all.extend(args);
        all.extend(DEV.map(String::from));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        fleet(&refs);
        out
    }

    /// What runs now: the model the engine runs, the config's telemetry
    /// interval, or the binary's version (from the slot it was started from).
    fn what_runs(&mut self) -> Option<String> {
        let socket = self.cfg.socket();
        match self.kind {
            Kind::Model => {
                let (code, out, err) = sparkctl(&socket, &["engine", "--json"]);
                if code != 0 {
                    self.fail(&format!("sparkctl engine: {err}"));
                }
                let v: serde_json::Value = serde_json::from_str(&out).expect("engine json");
                let m = v["model"].as_str().unwrap_or_default().trim_start_matches("centerface ").to_string();
                (m != "1.0.0").then_some(m)
            }
            Kind::Config => {
                let (code, out, err) = sparkctl(&socket, &["config", "show", "--json"]);
                if code != 0 {
                    self.fail(&format!("sparkctl config show: {err}"));
                }
                let v: serde_json::Value = serde_json::from_str(&out).expect("config json");
                let t = v["config"]["telemetry"]["interval_secs"].as_f64().unwrap_or(-1.0);
                if (t - FILE_TELEMETRY).abs() < 1e-9 {
                    return None;
                }
                let n = ((t - 1.0) * 1000.0).round() as u32;
                Some(format!("1.0.{n}"))
            }
            Kind::Binary => binary_runs(&self.status()),
        }
    }

    /// After a restart on what survived: the device runs `old` or `new`, and
    /// what it runs is what the store says is active (binary: or on trial).
    fn check_runs_old_or_new(&mut self, step: &str, new: &str) -> Option<String> {
        let old = self.running.clone();
        let mut u = self.status();
        // For a binary, one snapshot: the status names the running version.
        let mut runs = if self.kind == Kind::Binary { binary_runs(&u) } else { self.what_runs() };
        // A config activation the store completes at this start (recovery
        // of an interrupted one, or a staged one resumed) takes effect at
        // the next start: the daemon chose its config before. Restart to see it.
        if self.kind == Kind::Config
            && (runs == old || runs.as_deref() == Some(new))
            && runs != installed_active(&u, self.kind)
        {
            self.stop_and_restart();
            u = self.status();
            runs = self.what_runs();
        }
        let active = installed_active(&u, self.kind);
        if runs != old && runs.as_deref() != Some(new) {
            self.fail(&format!("cut at {step}: runs {runs:?}, neither the old {old:?} nor the new {new}\n{u:#}"));
        }
        let on_trial = self.kind == Kind::Binary && runs.as_deref() == Some(new);
        if runs != active && !on_trial {
            self.fail(&format!("cut at {step}: runs {runs:?} but the store says {active:?} is active\n{u:#}"));
        }
        runs
    }

    /// One campaign step: an update of a new version, a cut at `step`,
    /// power back, the checks, then (for an update cut short) the push again
    /// until it is active.
    fn cut_once(&mut self, i: u64, step: &str) {
        let version = self.new_version();
        let broken = matches!(step, "canary-miss" | "rolled-back" | "rollback");
        let bundle = self.bundle(&version, broken);
        let id = update_id(&bundle);
        let crash_env = spark_edge::update::CRASH_ENV;
        // The crash hook, when the cut is at a step of the update itself
        // (a binary's restart into its trial carries it too).
        let hook: Vec<(&str, &str)> = if SCENARIOS.contains(&step) { vec![] } else { vec![(crash_env, step)] };
        self.boot(&hook);
        let what = match step {
            "transfer" => {
                let (broker_url, b) = (self.broker.url(), bundle.clone());
                let pusher = std::thread::spawn(move || {
                    let _ = Command::new(common::fleet::fleet_bin())
                        .args(["push", "--broker", &broker_url, "--device", "test-dev"])
                        .arg(&b)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                });
                std::thread::sleep(Duration::from_millis(self.rng.below(1500)));
                let what = self.cut();
                let _ = pusher.join();
                what
            }
            "swap" | "canary-miss" => {
                push(&self.broker, &DEV, &bundle);
                let c = &self.c;
                let seen = wait_for(Duration::from_secs(120), || {
                    states(c, &id).into_iter().find(|j| j["state"] == "activating" || j["state"] == "rejected")
                });
                if seen.is_none() {
                    self.fail("the model never reached activating");
                }
                std::thread::sleep(Duration::from_millis(self.rng.below(2500)));
                self.cut()
            }
            "trial" | "confirm" => {
                // Activated, then the start that tries it; cut during the
                // health period, or around its end (the confirmation).
                push(&self.broker, &DEV, &bundle);
                if self.kind == Kind::Config {
                    self.run_until_active(&id);
                    self.stop_and_restart();
                } else {
                    self.wait_exit_75();
                    self.spawn(&[]);
                    self.wait_up(&[]);
                }
                let ms = if step == "trial" {
                    self.rng.below(HEALTH_SECS * 800)
                } else {
                    HEALTH_SECS * 800 + self.rng.below(HEALTH_SECS * 400)
                };
                std::thread::sleep(Duration::from_millis(ms));
                self.cut()
            }
            "rolled-back" => {
                // A config that cannot start: active, then a start that fails,
                // then the start that rolls it back, cut there.
                push(&self.broker, &DEV, &bundle);
                self.run_until_active(&id);
                self.terminate();
                self.spawn(&[]);
                self.wait_failure("the config that cannot start");
                self.spawn(&[(crash_env, "rolled-back")]);
                self.wait_marker("rolled-back", &id);
                self.cut()
            }
            "rollback" => {
                // A binary that exits at once: staged, restarted, it dies, the
                // next start rolls back; cut around that start.
                push(&self.broker, &DEV, &bundle);
                self.wait_exit_75();
                self.spawn(&[]);
                self.wait_failure("the crashing binary");
                self.spawn(&[]);
                std::thread::sleep(Duration::from_millis(self.rng.below(600)));
                self.cut()
            }
            "reload" => {
                let path = self.cfg.dir.path().join("sparkd.toml");
                let text = std::fs::read_to_string(&path).expect("config");
                let toggled = if text.contains("max_artifact_megabytes = 64") {
                    text.replace("max_artifact_megabytes = 64", "max_artifact_megabytes = 65")
                } else {
                    text.replace("max_artifact_megabytes = 65", "max_artifact_megabytes = 64")
                };
                std::fs::write(&path, toggled).expect("config");
                let sock = self.cfg.socket();
                let reload = std::thread::spawn(move || sparkctl(&sock, &["config", "reload"]));
                std::thread::sleep(Duration::from_millis(self.rng.below(300)));
                let what = self.cut();
                let _ = reload.join();
                what
            }
            "binary-swapped" => {
                // Staged, restarted into the trial, cut as it confirms.
                push(&self.broker, &DEV, &bundle);
                self.wait_exit_75();
                self.spawn(&hook);
                self.wait_marker(step, &id);
                self.cut()
            }
            point => {
                push(&self.broker, &DEV, &bundle);
                self.wait_marker(point, &id);
                self.cut()
            }
        };

        // Power is back: the survivors are mounted and sparkd starts.
        self.boot(&[]);
        let runs = self.check_runs_old_or_new(step, &version);
        if i < 3 || i % 10 == 9 {
            eprintln!("{} cut {i} at {step} (`{what}`): runs {runs:?}", self.kind.as_str());
        }
        let state = record_state(&self.status(), &id);
        let finished = ["active", "rolled_back", "rejected", "superseded"].contains(&state.as_str());
        if !broken && !matches!(step, "trial" | "confirm" | "reload") && !finished {
            // Cut short: pushed again, it completes.
            push(&self.broker, &DEV, &bundle);
            self.run_until_active(&id);
        }
        self.settle_trials(&id);
        self.running = self.what_runs();
        if broken && self.running.as_deref() == Some(version.as_str()) {
            self.fail(&format!("the broken {version} runs after a cut at {step}"));
        }
        self.terminate();
        self.fs.take().expect("mounted").cut("stop");
    }

    /// `sparkctl update status --json`, restarting the daemon (as systemd
    /// would) when it exits meanwhile: a binary update resumed at start
    /// exits 75 to be tried.
    fn status(&mut self) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = self.exited() {
                if st.success() {
                    self.fail(&format!("sparkd exited {st}"));
                }
                self.spawn(&[]);
                self.wait_up(&[]);
            }
            let (code, out, err) = sparkctl(&self.cfg.socket(), &["update", "status", "--json"]);
            if code == 0 {
                return serde_json::from_str(&out).expect("update status json");
            }
            if Instant::now() > end {
                self.fail(&format!("sparkctl update status keeps failing: {err}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A config or binary left on trial is confirmed (or rolled back) before
    /// the next step, so the next cut starts from a settled device.
    fn settle_trials(&mut self, id: &str) {
        let (marker, kind) = match self.kind {
            Kind::Model => return,
            Kind::Config => (self.cfg.state_dir().join("configs/sparkd/trial.json"), Kind::Config),
            Kind::Binary => (self.cfg.state_dir().join("bin/trial.json"), Kind::Binary),
        };
        if kind == Kind::Config && std::fs::read_to_string(&marker).is_ok_and(|t| t.contains("\"pending\"")) {
            self.stop_and_restart(); // the start that tries it
        }
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let st = record_state(&self.status(), id);
            let busy = ["verified", "staged", "activating"].contains(&st.as_str());
            if !busy && !marker.exists() {
                return;
            }
            if Instant::now() > end {
                self.fail(&format!("{id} stays {st} / on trial"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_failure(&mut self, what: &str) {
        let p = self.proc.as_mut().expect("proc");
        let st = wait_for(Duration::from_secs(60), || p.try_wait().ok().flatten());
        if st.is_none_or(|s| s.success()) {
            self.fail(&format!("{what} did not fail at start: {st:?}"));
        }
    }

    /// Waits until `id` is active and runs, restarting the daemon on exit 75
    /// (a staged binary) and through its trial.
    fn run_until_active(&mut self, id: &str) {
        let end = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(st) = self.exited() {
                if st.code() != Some(75) {
                    self.fail(&format!("sparkd exited {st} while {id} was being applied"));
                }
                self.spawn(&[]);
                self.wait_up(&[]);
            }
            if std::os::unix::net::UnixStream::connect(self.cfg.socket()).is_ok()
                && record_state(&self.status(), id) == "active"
            {
                return;
            }
            if Instant::now() > end {
                self.fail(&format!("{id} did not become active; reports {:#?}", states(&self.c, id)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_exit_75(&mut self) {
        let p = self.proc.as_mut().expect("proc");
        let st = wait_for(Duration::from_secs(120), || p.try_wait().ok().flatten());
        if st.is_none_or(|s| s.code() != Some(75)) {
            self.fail(&format!("a staged binary must end the run with 75, got {st:?}"));
        }
    }

    fn terminate(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = Command::new("kill").args(["-TERM", &p.id().to_string()]).status();
            let st = wait_for(Duration::from_secs(30), || p.try_wait().ok().flatten());
            if st.is_none() {
                let _ = p.kill();
                let _ = p.wait();
                self.fail("sparkd did not stop on SIGTERM");
            }
        }
    }

    fn stop_and_restart(&mut self) {
        self.terminate();
        self.spawn(&[]);
        self.wait_up(&[]);
    }

    /// The last boot: everything accepted over the campaign arrived or was
    /// a counted drop.
    fn finish(mut self) {
        self.boot(&[]);
        let q = wait_drained(&self.cfg.socket(), Duration::from_secs(120));
        assert!(q["streams"]["events"]["next_seq"].as_u64().unwrap_or(0) > 20, "the load generator ran: {q}");
        assert_all_accepted_arrived(&q, &self.c);
        self.terminate();
        self.fs.take().expect("mounted").cut("stop");
    }
}

fn campaign(kind: Kind, share: u64) {
    let total = env_u64("SPARK_POWER_CUTS").unwrap_or(12);
    let cuts = (total * share).div_ceil(12).max(1);
    let seed = env_u64("SPARK_POWER_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    eprintln!("fault_power_update {}: {cuts} cuts, SPARK_POWER_SEED={seed}", kind.as_str());
    let mut c = Campaign::new(kind, seed);
    let steps = kind.steps();
    // Every step once per round, in a random order.
    let mut order: Vec<&str> = Vec::new();
    for i in 0..cuts {
        if order.is_empty() {
            order = steps.to_vec();
            for k in (1..order.len()).rev() {
                let j = c.rng.below(k as u64 + 1) as usize;
                order.swap(k, j);
            }
        }
        let step = order.pop().expect("a step");
        c.cut_once(i, step);
    }
    c.finish();
    eprintln!("fault_power_update {}: {cuts} cuts survived, SPARK_POWER_SEED={seed}", kind.as_str());
}

#[test]
fn model_updates_and_swaps_survive_power_cuts_at_every_step() {
    campaign(Kind::Model, 4);
}

#[test]
fn config_updates_trials_and_reloads_survive_power_cuts_at_every_step() {
    campaign(Kind::Config, 4);
}

#[test]
fn binary_updates_and_trials_survive_power_cuts_at_every_step() {
    campaign(Kind::Binary, 4);
}
