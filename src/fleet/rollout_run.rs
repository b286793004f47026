//! `spark-fleet rollout start|resume|status|abort`: the MQTT side of a
//! staged rollout. Owns the broker session (reading the retained statuses,
//! pushing a bundle to one device and waiting for the broker's PUBACKs,
//! taking `update/state` reports), the wall clock, the log lines, and the
//! CLI's subcommands. Every decision is `fleet::rollout`'s; this module
//! feeds it and persists after each step.
//!
//! The session is persistent (`clean_session = false`, client id
//! `spark-fleet-rollout-<id>`) and subscribes at QoS 1, so reports sent
//! while the operator's process is down are queued by the broker and read
//! on `resume`. Acknowledgements are manual: a report is PUBACKed only after
//! the state file holding its outcome is written, so a SIGKILL loses none.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rumqttc::{Client, ConnectionError, Event, Packet, QoS};

use super::broker::{BrokerArgs, BrokerAuth, BrokerError};
use super::devices::{Device, device_of_topic, parse_status};
use super::rollout::{
    Connection, Outcome, Plan, PlanError, Push, Rollout, RolloutPhase, Step, Store, StoreError, parse_duration,
    parse_waves,
};
use crate::config::is_topic_segment;
use crate::update::{Bundle, BundleError, CHUNK_MAX_BYTES, Envelope, UpdateManifest, chunk_artifact, topics};

/// Events read ahead of the rollout loop. Policy when full: block (the
/// MQTT reader waits, TCP pushes back on the broker); nothing is dropped.
const EVENT_QUEUE: usize = 4096;
/// How long the broker has to acknowledge one device's push.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);
/// On resume, how long a push left `pushing` may take to show (a report
/// or the device's status) before it is pushed again.
const RESUME_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading the bundle {path}")]
    ReadBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    NotBundle {
        path: PathBuf,
        #[source]
        source: BundleError,
    },
    #[error("{path}: the envelope's manifest does not decode")]
    Envelope { path: PathBuf },
    #[error("the --rollback-on-halt bundle {path} is {found}, the rollout's is {kind} {name}")]
    RollbackMismatch { path: PathBuf, found: String, kind: String, name: String },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("--topic-prefix {0:?} must be segments of [A-Za-z0-9_.-] joined by '/'")]
    Prefix(String),
    #[error("MQTT request")]
    Client(#[from] rumqttc::ClientError),
    #[error("MQTT connection to {broker}")]
    Connection {
        broker: String,
        // Boxed: rumqttc's error is large and every Result here carries it.
        #[source]
        source: Box<ConnectionError>,
    },
    #[error("the broker did not acknowledge the push to {device} within {} s", ACK_TIMEOUT.as_secs())]
    AckTimeout { device: String },
    #[error("the retained statuses did not all arrive within {0} s")]
    StatusTimeout(u64),
    #[error("rollout {id} is {phase}: nothing to resume")]
    Finished { id: String, phase: &'static str },
}

/// `spark-fleet rollout …`
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Start a staged rollout of BUNDLE over the online devices of a group.
    Start {
        bundle: PathBuf,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Cumulative share of the target devices after each wave; strictly
        /// increasing, ending at 100%.
        #[arg(long, default_value = "1%,10%,50%,100%")]
        waves: String,
        /// Time after a wave's last push before it is judged (`30s`, `10m`, `1h`).
        #[arg(long, default_value = "10m")]
        soak: String,
        /// After the soak, how long to wait more for devices that have not
        /// reported an outcome (they then count as failed).
        #[arg(long, default_value = "5m")]
        report_timeout: String,
        /// The halt rule (docs/updates.md, "Staged rollouts").
        #[arg(long, default_value = "rolled_back > 2% || fallback > 5% || offline > 5%")]
        halt_when: String,
        /// Only devices of this group (default: every online device).
        #[arg(long)]
        group: Option<String>,
        /// On a halt, push this bundle to the halted wave's devices.
        #[arg(long)]
        rollback_on_halt: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, default_value = "spark")]
        topic_prefix: String,
        #[arg(long, default_value_t = CHUNK_MAX_BYTES)]
        chunk_bytes: usize,
        /// How long to wait for the broker's retained statuses.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Continue a rollout from its state file (after a crash or restart).
    /// It reconnects as `start` did (the broker URL, TLS and login flags are
    /// in the state file). TLS or login flags given here replace the stored
    /// ones as a whole (and are stored once they connected).
    Resume {
        id: String,
        #[command(flatten)]
        auth: BrokerAuth,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, default_value_t = CHUNK_MAX_BYTES)]
        chunk_bytes: usize,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Show a rollout (or list them all).
    Status {
        id: Option<String>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Stop a rollout: a running `start`/`resume` stops before its next push.
    Abort {
        id: String,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

/// How a command ended; the binary maps it to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Completed,
    Halted,
    Aborted,
    /// `status` / `abort`.
    Shown,
}

impl Ended {
    /// 0 completed (or shown), 3 halted, 4 aborted; errors are 1.
    pub fn exit_code(self) -> i32 {
        match self {
            Ended::Completed | Ended::Shown => 0,
            Ended::Halted => 3,
            Ended::Aborted => 4,
        }
    }
}

/// `--state-dir`, else `$XDG_STATE_HOME/spark-fleet/rollouts`, else
/// `~/.local/state/spark-fleet/rollouts`, else `./rollouts`.
pub fn default_state_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(x) = env("XDG_STATE_HOME") {
        return x.join("spark-fleet/rollouts");
    }
    match env("HOME") {
        Some(h) => h.join(".local/state/spark-fleet/rollouts"),
        None => PathBuf::from("rollouts"),
    }
}

pub fn run(cmd: RolloutCommand) -> Result<Ended, RunError> {
    let store = |d: Option<PathBuf>| Store::new(d.unwrap_or_else(default_state_dir));
    match cmd {
        RolloutCommand::Start {
            bundle,
            broker,
            waves,
            soak,
            report_timeout,
            halt_when,
            group,
            rollback_on_halt,
            state_dir,
            topic_prefix,
            chunk_bytes,
            timeout_secs,
        } => {
            let store = store(state_dir);
            // Everything checkable without the broker, before connecting.
            let waves = parse_waves(&waves)?;
            let soak = parse_duration(&soak)?;
            let report_timeout = parse_duration(&report_timeout)?;
            super::halt_rule::Rule::parse(&halt_when).map_err(PlanError::from)?;
            if !topic_prefix.split('/').all(is_topic_segment) {
                return Err(RunError::Prefix(topic_prefix));
            }
            let b = LoadedBundle::read(&bundle)?;
            let rollback = rollback_on_halt.as_deref().map(LoadedBundle::read).transpose()?;
            if let Some(r) = &rollback
                && (r.manifest.kind != b.manifest.kind || r.manifest.name != b.manifest.name)
            {
                return Err(RunError::RollbackMismatch {
                    path: r.path.clone(),
                    found: format!("{} {}", r.manifest.kind, r.manifest.name),
                    kind: b.manifest.kind.to_string(),
                    name: b.manifest.name.clone(),
                });
            }
            let plan = Plan {
                bundle: absolute(&bundle),
                update_id: b.update_id.clone(),
                kind: b.manifest.kind.to_string(),
                name: b.manifest.name.clone(),
                version: b.manifest.version.to_string(),
                rollback_bundle: rollback_on_halt.as_deref().map(absolute),
                rollback_update_id: rollback.as_ref().map(|r| r.update_id.clone()),
                group,
                broker: broker.broker.clone(),
                connection: connection_of(&broker.auth),
                prefix: topic_prefix.clone(),
                waves,
                soak,
                report_timeout,
                halt_when,
            };
            // The statuses are read on a session of their own: the rollout's
            // persistent session is named after its id, known after planning.
            let statuses = {
                let mut s = Session::connect(
                    &broker.broker,
                    &broker.auth,
                    &topic_prefix,
                    &format!("spark-fleet-plan-{}", std::process::id()),
                    true,
                )?;
                s.wait_ready(Duration::from_secs(timeout_secs))?;
                s.disconnect();
                s.statuses
            };
            let rows: Vec<&Device> = statuses.values().collect();
            let rollout = Rollout::plan(plan, &rows, crate::record::now_ms())?;
            store.save(&rollout)?;
            let sizes: Vec<usize> = (0..rollout.waves.len()).map(|w| rollout.wave_devices(w).count()).collect();
            log(
                &rollout.id,
                &format!(
                    "started: {} {} {} (update {}) to {} devices{} in waves {:?} of {:?} devices, soak {} s, halt when `{}`; state {}",
                    rollout.kind,
                    rollout.name,
                    rollout.version,
                    rollout.update_id,
                    rollout.devices.len(),
                    rollout.group.as_ref().map(|g| format!(" of group {g}")).unwrap_or_default(),
                    rollout.waves,
                    sizes,
                    rollout.soak_ms / 1000,
                    rollout.halt_when,
                    store.dir().join(format!("{}.json", rollout.id)).display()
                ),
            );
            drive(rollout, &store, b, rollback, chunk_bytes, timeout_secs)
        }
        RolloutCommand::Resume { id, auth, state_dir, chunk_bytes, timeout_secs } => {
            let store = store(state_dir);
            let mut rollout = store.load(&id)?;
            if rollout.phase != RolloutPhase::Running {
                let pending_rollback = matches!(rollout.phase, RolloutPhase::Halted { .. })
                    && rollout.rollback_bundle.is_some()
                    && rollout.devices.iter().any(|d| d.rollback.is_some_and(|r| r != Push::Pushed));
                if !pending_rollback {
                    return Err(RunError::Finished { id, phase: rollout.phase.as_str() });
                }
            }
            let b = LoadedBundle::read(&rollout.bundle)?;
            let rollback = rollout.rollback_bundle.as_deref().map(LoadedBundle::read).transpose()?;
            // Flags given replace the stored settings whole, not one by one:
            // a merge could not drop a stored setting (a client certificate
            // the broker no longer wants) and could pair one login's user
            // name with another's password file.
            let given = auth != BrokerAuth::default();
            if given {
                rollout.connection = connection_of(&auth);
            }
            let (pushed, total) = rollout.progress();
            log(
                &rollout.id,
                &format!(
                    "resuming at wave {} ({pushed} of {total} devices pushed); connecting to {} with the {}",
                    rollout.wave + 1,
                    rollout.broker,
                    if given { "TLS and login flags given" } else { "connection settings stored by start" }
                ),
            );
            drive(rollout, &store, b, rollback, chunk_bytes, timeout_secs)
        }
        RolloutCommand::Status { id, state_dir, json } => {
            let store = store(state_dir);
            let ids = match id {
                Some(id) => vec![id],
                None => store.list()?,
            };
            let mut out = std::io::stdout().lock();
            for id in ids {
                let r = store.load(&id)?;
                let text = if json { serde_json::to_string(&r).unwrap_or_default() } else { render_status(&r) };
                let _ = writeln!(out, "{text}");
            }
            Ok(Ended::Shown)
        }
        RolloutCommand::Abort { id, state_dir } => {
            let r = store(state_dir).abort(&id)?;
            log(&r.id, "abort requested: a running rollout stops before its next push");
            Ok(Ended::Shown)
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The connection settings the state file keeps: the flags with their paths
/// made absolute, so `resume` finds the same files from any directory (the
/// password file as `--password-file` resolves it, `$CREDENTIALS_DIRECTORY`
/// included). Paths only: nothing is read here.
fn connection_of(auth: &BrokerAuth) -> Connection {
    let abs = |p: &Option<PathBuf>| p.as_deref().map(absolute);
    Connection {
        ca_file: abs(&auth.ca_file),
        client_cert: abs(&auth.client_cert),
        client_key: abs(&auth.client_key),
        tls_server_name: auth.tls_server_name.clone(),
        username: auth.username.clone(),
        password_file: auth.password_file.as_deref().map(|p| absolute(&crate::sys::credentials::credential_path(p))),
    }
}

/// The flags a stored connection stands for.
fn auth_of(c: &Connection) -> BrokerAuth {
    BrokerAuth {
        ca_file: c.ca_file.clone(),
        client_cert: c.client_cert.clone(),
        client_key: c.client_key.clone(),
        tls_server_name: c.tls_server_name.clone(),
        username: c.username.clone(),
        password_file: c.password_file.clone(),
    }
}

/// One log line on stdout: `<UTC time> rollout <id>: <text>`.
fn log(id: &str, text: &str) {
    let ms = crate::record::now_ms();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} rollout {id}: {text}", utc(ms));
    let _ = out.flush();
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from Unix milliseconds (civil-from-days).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem / 60 % 60, rem % 60, ms % 1000)
}

/// `rollout status` as text: the rollout, its waves, its decisions.
pub fn render_status(r: &Rollout) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let (pushed, total) = r.progress();
    let _ = writeln!(
        s,
        "rollout {}: {} {} {} {} (update {}), {} of {} devices pushed, wave {} of {}",
        r.id,
        r.phase.as_str(),
        r.kind,
        r.name,
        r.version,
        r.update_id,
        pushed,
        total,
        r.wave + 1,
        r.waves.len()
    );
    if let RolloutPhase::Halted { reason, .. } = &r.phase {
        let _ = writeln!(s, "  halted: {reason}");
    }
    let _ = writeln!(s, "  halt when: {}", r.halt_when);
    let _ = writeln!(s, "  broker: {}{}", r.broker, describe_connection(&r.connection));
    for d in &r.decisions {
        let _ = writeln!(s, "  {} {}", utc(d.at_ms), d.text);
    }
    let unknown: Vec<&str> =
        r.devices.iter().filter(|d| matches!(d.outcome, Outcome::Unknown { .. })).map(|d| d.id.as_str()).collect();
    if !unknown.is_empty() {
        let _ = writeln!(s, "  unknown (unreadable reports): {}", unknown.join(", "));
    }
    s.trim_end().to_string()
}

/// The stored connection flags for `rollout status`: ` (--ca-file …, …)`,
/// empty when none were given.
fn describe_connection(c: &Connection) -> String {
    let path = |flag: &str, p: &Option<PathBuf>| p.as_ref().map(|p| format!("{flag} {}", p.display()));
    let text = |flag: &str, v: &Option<String>| v.as_ref().map(|v| format!("{flag} {v}"));
    let parts: Vec<String> = [
        path("--ca-file", &c.ca_file),
        path("--client-cert", &c.client_cert),
        path("--client-key", &c.client_key),
        text("--tls-server-name", &c.tls_server_name),
        text("--username", &c.username),
        path("--password-file", &c.password_file),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) }
}

/// A bundle read from disk with its chunks serialized once.
pub struct LoadedBundle {
    path: PathBuf,
    envelope: Vec<u8>,
    artifact: Vec<u8>,
    update_id: String,
    manifest: UpdateManifest,
}

impl LoadedBundle {
    pub fn read(path: &Path) -> Result<Self, RunError> {
        let bytes = std::fs::read(path).map_err(|source| RunError::ReadBundle { path: path.to_path_buf(), source })?;
        let b = Bundle::parse(&bytes).map_err(|source| RunError::NotBundle { path: path.to_path_buf(), source })?;
        let bad = || RunError::Envelope { path: path.to_path_buf() };
        let env: Envelope = serde_json::from_slice(&b.envelope).map_err(|_| bad())?;
        let manifest_bytes = base64::engine::general_purpose::STANDARD.decode(env.manifest).map_err(|_| bad())?;
        let manifest: UpdateManifest = serde_json::from_slice(&manifest_bytes).map_err(|_| bad())?;
        let update_id = b.update_id().ok_or_else(bad)?;
        Ok(LoadedBundle { path: path.to_path_buf(), envelope: b.envelope, artifact: b.artifact, update_id, manifest })
    }

    fn chunks(&self, chunk_bytes: usize) -> Vec<Vec<u8>> {
        chunk_artifact(&self.update_id, &self.artifact, chunk_bytes)
            .iter()
            .map(|c| serde_json::to_vec(c).unwrap_or_default())
            .collect()
    }
}

/// The rollout loop: asks the core for the next step, does it, persists.
fn drive(
    mut r: Rollout,
    store: &Store,
    bundle: LoadedBundle,
    rollback: Option<LoadedBundle>,
    chunk_bytes: usize,
    timeout_secs: u64,
) -> Result<Ended, RunError> {
    let chunks = bundle.chunks(chunk_bytes);
    let rollback_chunks = rollback.as_ref().map(|b| b.chunks(chunk_bytes));
    // The state file's settings (a `resume`'s flags already in them); they
    // are saved below only once this connection is up.
    let auth = auth_of(&r.connection);
    let mut s = Session::connect(&r.broker, &auth, &r.prefix, &format!("spark-fleet-rollout-{}", r.id), false)?;
    s.wait_ready(Duration::from_secs(timeout_secs))?;
    // Reports queued for this session while no process ran it.
    s.take_reports(&mut r);
    let mut settled = r.settle_interrupted_pushes(&s.statuses);
    // Reports queued for the session can come after the end marker, and a
    // device's new status a moment later: give a push left `pushing` a
    // short grace before pushing it again.
    let grace = Instant::now() + RESUME_GRACE;
    while r.devices.iter().any(|d| d.push == Push::Pushing) && Instant::now() < grace {
        s.pump(Duration::from_millis(100), &mut r)?;
        settled.extend(r.settle_interrupted_pushes(&s.statuses));
    }
    if !settled.is_empty() {
        log(&r.id, &format!("{} interrupted pushes had reached their device: {}", settled.len(), settled.join(", ")));
    }
    for d in r.devices.iter().filter(|d| d.push == Push::Pushing) {
        let model = s.statuses.get(&d.id).and_then(|st| st.model.clone()).unwrap_or_default();
        log(&r.id, &format!("{}: interrupted push not seen (no report, status runs {model:?}): pushing again", d.id));
    }
    store.save(&r)?;
    s.ack_handled()?;
    loop {
        if store.abort_requested(&r.id) && r.phase != RolloutPhase::Aborted {
            r.phase = RolloutPhase::Aborted;
            store.save(&r)?;
            log(&r.id, "aborted");
        }
        let now = crate::record::now_ms();
        match r.next_step(now, &s.statuses) {
            Step::Push(dev) => {
                if let Some(d) = r.device_mut(&dev) {
                    d.push = Push::Pushing;
                }
                store.save(&r)?;
                s.push(&dev, &bundle.envelope, &chunks)?;
                if let Some(d) = r.device_mut(&dev) {
                    d.push = Push::Pushed;
                }
                s.take_reports(&mut r);
                store.save(&r)?;
                s.ack_handled()?;
                let (pushed, total) = r.progress();
                log(&r.id, &format!("wave {}: pushed to {dev} ({pushed}/{total})", r.wave + 1));
            }
            Step::PushRollback(dev) => {
                let (Some(b), Some(c)) = (&rollback, &rollback_chunks) else {
                    return Ok(Ended::Halted);
                };
                if let Some(d) = r.device_mut(&dev) {
                    d.rollback = Some(Push::Pushing);
                }
                store.save(&r)?;
                s.push(&dev, &b.envelope, c)?;
                if let Some(d) = r.device_mut(&dev) {
                    d.rollback = Some(Push::Pushed);
                }
                s.take_reports(&mut r);
                store.save(&r)?;
                s.ack_handled()?;
                log(&r.id, &format!("rollback: pushed {} (update {}) to {dev}", b.path.display(), b.update_id));
            }
            Step::StartSoak => {
                r.soak_started_ms = Some(now);
                store.save(&r)?;
                log(&r.id, &format!("wave {}: every device pushed; soaking {} s", r.wave + 1, r.soak_ms / 1000));
            }
            Step::WaitUntil(t) => {
                let wait = Duration::from_millis(t.saturating_sub(now).min(500));
                if s.pump(wait, &mut r)? {
                    store.save(&r)?;
                }
                s.ack_handled()?;
            }
            Step::Judge => {
                let d = r.judge(now, &s.statuses);
                store.save(&r)?;
                log(&r.id, &format!("decision: {}", d.text));
            }
            Step::Finished => break,
        }
    }
    s.disconnect();
    let (pushed, total) = r.progress();
    log(&r.id, &format!("{} ({pushed} of {total} devices pushed)", r.phase.as_str()));
    Ok(match r.phase {
        RolloutPhase::Completed => Ended::Completed,
        RolloutPhase::Halted { .. } => Ended::Halted,
        RolloutPhase::Aborted | RolloutPhase::Running => Ended::Aborted,
    })
}

/// One MQTT connection: statuses and update reports in, pushes out.
struct Session {
    client: Client,
    events: Receiver<Result<Event, ConnectionError>>,
    broker: String,
    prefix: String,
    marker: String,
    subacks: usize,
    /// The marker came back: the retained statuses (and queued reports) are in.
    ready: bool,
    published: u64,
    acked: u64,
    statuses: BTreeMap<String, Device>,
    /// Reports read before the rollout loop takes them.
    reports: Vec<(String, Vec<u8>)>,
    /// Messages handled but not yet acknowledged (see [`Session::ack_handled`]).
    unacked: Vec<rumqttc::Publish>,
}

impl Session {
    fn connect(broker: &str, auth: &BrokerAuth, prefix: &str, client_id: &str, clean: bool) -> Result<Self, RunError> {
        let mut opts = super::broker::mqtt_options(
            broker,
            auth,
            &super::broker::Session {
                client_id,
                keep_alive: Duration::from_secs(30),
                max_incoming: 4 << 20,
                max_outgoing: 4 << 20,
            },
        )?;
        opts.set_clean_session(clean);
        opts.set_manual_acks(true);
        let (client, mut conn) = Client::new(opts, 1024);
        let (tx, events) = sync_channel(EVENT_QUEUE);
        std::thread::Builder::new()
            .name("rollout-mqtt".into())
            .spawn(move || {
                for ev in conn.iter() {
                    let failed = ev.is_err();
                    if tx.send(ev).is_err() {
                        return;
                    }
                    if failed {
                        // rumqttc reconnects on the next poll; not in a tight loop.
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            })
            .map_err(|source| RunError::Connection {
                broker: broker.into(),
                source: Box::new(ConnectionError::Io(source)),
            })?;
        Ok(Session {
            client,
            events,
            broker: broker.to_string(),
            prefix: prefix.to_string(),
            marker: format!("spark-fleet/{client_id}/end"),
            subacks: 0,
            ready: false,
            published: 0,
            acked: 0,
            statuses: BTreeMap::new(),
            reports: Vec::new(),
            unacked: Vec::new(),
        })
    }

    /// Hands the reports read while pushing (or before the loop) to `r`.
    fn take_reports(&mut self, r: &mut Rollout) {
        for (dev, payload) in std::mem::take(&mut self.reports) {
            r.observe_report(&dev, &payload);
        }
    }

    /// Acknowledges what was handled; call after the state file holding its
    /// effect is written.
    fn ack_handled(&mut self) -> Result<(), RunError> {
        for p in std::mem::take(&mut self.unacked) {
            self.client.ack(&p)?;
        }
        Ok(())
    }

    fn disconnect(&self) {
        let _ = self.client.disconnect();
    }

    /// Handles one event; `true` when it was a report that changed `r`.
    fn handle(&mut self, ev: Result<Event, ConnectionError>, r: Option<&mut Rollout>) -> Result<bool, RunError> {
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                self.subacks = 0;
                // Statuses are retained (sent again on every subscribe): QoS 0,
                // nothing to acknowledge. Reports are QoS 1 and queued for us.
                self.client.try_subscribe(format!("{}/+/status", self.prefix), QoS::AtMostOnce)?;
                self.client.try_subscribe(topics::all_states(&self.prefix), QoS::AtLeastOnce)?;
                self.client.try_subscribe(self.marker.clone(), QoS::AtMostOnce)?;
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                self.subacks += 1;
                if self.subacks == 3 {
                    self.client.try_publish(self.marker.clone(), QoS::AtMostOnce, false, Vec::new())?;
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => self.acked += 1,
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.qos != QoS::AtMostOnce {
                    self.unacked.push(p.clone());
                }
                if p.topic == self.marker {
                    self.ready = true;
                } else if let Some(dev) = device_of_topic(&self.prefix, &p.topic) {
                    self.statuses.insert(dev.to_string(), parse_status(dev, &p.payload));
                } else if let Some(dev) = p
                    .topic
                    .strip_prefix(&self.prefix)
                    .and_then(|t| t.strip_prefix('/'))
                    .and_then(|t| t.strip_suffix("/update/state"))
                    .filter(|d| !d.is_empty() && !d.contains('/'))
                {
                    match r {
                        Some(r) => return Ok(r.observe_report(dev, &p.payload)),
                        None => self.reports.push((dev.to_string(), p.payload.to_vec())),
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                if !self.ready {
                    return Err(match super::broker::permanent_failure(&self.broker, &e) {
                        Some(fatal) => fatal.into(),
                        None => RunError::Connection { broker: self.broker.clone(), source: Box::new(e) },
                    });
                }
                eprintln!("spark-fleet: {}: {e}; reconnecting", self.broker);
            }
        }
        Ok(false)
    }

    /// Until the retained statuses are in (the marker came back).
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), RunError> {
        let end = Instant::now() + timeout;
        while !self.ready {
            match self.events.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(ev) => {
                    self.handle(ev, None)?;
                    // The broker sends a few unacknowledged messages at a
                    // time; the reports are taken and saved right after this.
                    self.ack_handled()?;
                }
                Err(_) => return Err(RunError::StatusTimeout(timeout.as_secs())),
            }
        }
        Ok(())
    }

    /// Takes events for up to `wait`; `true` when a report changed `r`.
    fn pump(&mut self, wait: Duration, r: &mut Rollout) -> Result<bool, RunError> {
        let end = Instant::now() + wait;
        let mut changed = false;
        loop {
            match self.events.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(ev) => changed |= self.handle(ev, Some(r))?,
                Err(RecvTimeoutError::Timeout) => return Ok(changed),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(RunError::Connection {
                        broker: self.broker.clone(),
                        source: Box::new(ConnectionError::RequestsDone),
                    });
                }
            }
            if Instant::now() >= end {
                return Ok(changed);
            }
        }
    }

    /// Publishes the manifest and every chunk to `device` at QoS 1 and waits
    /// for the broker's PUBACK of each. Reports arriving meanwhile are kept
    /// for the loop (they are about devices already pushed).
    fn push(&mut self, device: &str, envelope: &[u8], chunks: &[Vec<u8>]) -> Result<(), RunError> {
        self.client.publish(
            topics::device_manifest(&self.prefix, device),
            QoS::AtLeastOnce,
            false,
            envelope.to_vec(),
        )?;
        self.published += 1;
        let chunk_topic = topics::device_chunk(&self.prefix, device);
        for c in chunks {
            self.client.publish(chunk_topic.clone(), QoS::AtLeastOnce, false, c.clone())?;
            self.published += 1;
        }
        let end = Instant::now() + ACK_TIMEOUT;
        while self.acked < self.published {
            match self.events.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(ev) => {
                    self.handle(ev, None)?;
                }
                Err(_) => return Err(RunError::AckTimeout { device: device.to_string() }),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_unix_milliseconds() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_796_300_000_123), "2026-12-03T12:13:20.123Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn stored_connection_paths_are_absolute_and_stand_for_the_same_flags() {
        let auth = BrokerAuth {
            ca_file: Some("ca.pem".into()),
            client_cert: Some("/etc/fleet/ops.pem".into()),
            client_key: Some("/etc/fleet/ops.key".into()),
            tls_server_name: Some("broker.example".into()),
            username: Some("ops".into()),
            password_file: Some("/etc/fleet/ops.pw".into()),
        };
        let c = connection_of(&auth);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.ca_file.as_deref(), Some(cwd.join("ca.pem").as_path()));
        assert_eq!(auth_of(&c), BrokerAuth { ca_file: Some(cwd.join("ca.pem")), ..auth });
        assert_eq!(connection_of(&BrokerAuth::default()), Connection::default());
        assert_eq!(describe_connection(&Connection::default()), "");
        assert_eq!(
            describe_connection(&Connection { username: Some("ops".into()), ..Connection::default() }),
            " (--username ops)"
        );
    }

    #[test]
    fn exit_codes_tell_halted_from_completed() {
        assert_eq!(Ended::Completed.exit_code(), 0);
        assert_eq!(Ended::Halted.exit_code(), 3);
        assert_eq!(Ended::Aborted.exit_code(), 4);
    }
}
