//! The daemon side of fleet updates: one named thread that owns the
//! [`Updater`], fed by the uplink (manifests and chunks from MQTT) and the
//! control socket (`sparkctl update status` / `update apply`), and that
//! reports every step on `<prefix>/<device>/update/state`.
//!
//! Owns the order of a model activation: pack unpacked, model loaded, engine
//! built with [`crate::engine::build::build_engine`] (as at start), warmed up,
//! canary checked, and only then `activate()` and the switch of the inference
//! thread's engine; and of a config activation (the checks of `sparkd
//! check-config`, then the `[update]` keys applied live, the rest reported as
//! needing a restart), shared with `sparkctl config reload`. It does not
//! speak MQTT (the uplink moves the bytes) and does not decide trust (that is
//! [`super::verify`]). A binary update is staged into the inactive slot, then
//! the daemon stops with [`binary::RESTART_EXIT_CODE`] so the service manager
//! starts it again and the launcher ([`binary::prepare_start`]) tries the new
//! binary; on trial, this agent confirms it after READY plus
//! `update.binary_health_secs`, and reports the launcher's rollbacks.
//!
//! It plugs into the uplink through a [`Subscription`]: the uplink knows
//! nothing of updates, and waits on this agent at most
//! [`crate::uplink::INBOUND_WAIT`] per message (then the message is dropped
//! and counted; a transfer resumes when the operator pushes again: held
//! chunks are kept). Retained chunks are ignored here: a broker re-sends a
//! retained message on every subscribe, and a chunk only means something
//! while its push runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::pack::{self, MODEL_MANIFEST};
use super::{Chunk, Installed, Kind, Phase, Rejection, StateReport, UpdateError, UpdateRecord, Updater};
use super::{UpdaterOptions, wall_clock_secs};
use super::{binary, config_trial};
use crate::config::Config;
use crate::model::Model;
use crate::pipeline::EngineSwap;
use crate::state::Shared;
use crate::uplink::{Inbound, Outbound, Subscription};

/// Requests queued for the agent (MQTT messages plus a few control calls);
/// at most ~17 MB of chunk payloads (48 × 256 KiB as base64).
pub const REQUEST_QUEUE: usize = 48;
/// State reports queued for the uplink; beyond it reports are dropped and
/// counted (the records stay on disk and in `sparkctl update status`).
pub const REPORT_QUEUE: usize = 256;
// The largest chunk message (base64 in JSON, plus room for the envelope
// fields) must fit the uplink's inbound packet limit, or every push would
// break the connection.
const _: () = assert!(super::CHUNK_MAX_BYTES * 4 / 3 + 64 * 1024 < crate::uplink::MAX_INBOUND_PACKET);

/// Inbound MQTT messages waiting to be moved into the request queue.
const INBOUND_QUEUE: usize = 4;
/// Folder inside a staged model version that holds the unpacked pack.
pub const UNPACKED: &str = "pack";
/// Progress reports while chunks arrive: at most one per this interval.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long the inference thread may take to pick up a new engine.
const SWAP_DEADLINE: Duration = Duration::from_secs(20);

/// What the agent is asked to do.
pub enum Request {
    /// A message on one of the update topics.
    Mqtt(Inbound),
    Status {
        reply: oneshot::Sender<StatusView>,
    },
    /// `sparkctl config reload`.
    ReloadConfig {
        reply: oneshot::Sender<Result<ConfigChange, AgentFailure>>,
    },
    /// `sparkctl update apply`: the bundle's envelope, sent by the client
    /// (which reads the file with its own rights).
    ApplyManifest {
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<UpdateRecord, AgentFailure>>,
    },
    /// `sparkctl update apply`: one chunk (the MQTT chunk JSON).
    ApplyChunk {
        chunk: Vec<u8>,
        reply: oneshot::Sender<Result<UpdateRecord, AgentFailure>>,
    },
    /// The daemon sent READY: a binary on trial starts its health period.
    Ready,
    /// A binary on trial stayed up for its health period.
    ConfirmBinary {
        update_id: String,
    },
}

/// `sparkctl update status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub installed: Installed,
    pub records: Vec<UpdateRecord>,
    /// Trusted key ids; empty: every update is refused.
    pub trusted_keys: Vec<String>,
    /// Update messages dropped because the agent was busy (push again).
    pub dropped_messages: u64,
    pub hailort_version: Option<String>,
    /// Config keys changed since start that take effect at the next start.
    pub restart_required: Vec<String>,
}

/// The uplink's side of the agent: its [`Subscription`], and the task
/// that moves inbound messages into the agent's request queue (the daemon
/// runs it on its async runtime).
pub struct UplinkLink {
    pub subscription: Subscription,
    pub forwarder: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// Everything the agent thread needs from the daemon.
pub struct AgentDeps {
    pub config: Config,
    pub device_id: String,
    pub state_dir: PathBuf,
    pub shared: Arc<Shared>,
    /// The inference thread's engine switch; `None` without a camera.
    pub swap: Option<crossbeam_channel::Sender<EngineSwap>>,
    /// The model the daemon runs (model updates for another name are refused).
    pub model_name: Option<String>,
    /// The file the running config was read from (`None`: the demo config).
    pub config_path: Option<PathBuf>,
}

pub use super::config_trial::CONFIG_NAME;

/// What a config update or `sparkctl config reload` changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// Dotted keys now in effect.
    pub applied: Vec<String>,
    /// Dotted keys that changed but take effect at the next start.
    pub restart_required: Vec<String>,
}

/// Why the agent did not do what the control socket asked. The kind
/// reaches `sparkctl` as its error code (refused, storage, corrupt state).
#[derive(Debug, thiserror::Error)]
pub enum AgentFailure {
    /// The update was checked and refused.
    #[error("{code}: {0}", code = .0.code())]
    Refused(Rejection),
    /// The config does not pass the checks of `sparkd check-config`.
    #[error("the config")]
    InvalidConfig(#[source] crate::config::ConfigError),
    #[error("state_dir cannot change in a running daemon (it holds the update store)")]
    StateDirChanged,
    #[error("sparkd runs the built-in demo configuration: there is no file to reload")]
    NoConfigFile,
    /// The update store could not be read or written, or is damaged.
    #[error("the update store")]
    Store(#[source] UpdateError),
}

impl From<UpdateError> for AgentFailure {
    fn from(e: UpdateError) -> Self {
        match e {
            UpdateError::Rejected(r) => AgentFailure::Refused(r),
            other => AgentFailure::Store(other),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("opening the update store")]
    Open(#[from] UpdateError),
    #[error("starting the update thread")]
    Thread(#[source] std::io::Error),
}

/// Opens the store (recovering from a crash), then runs the agent on its
/// own thread. Returns the control socket's sender and the uplink's link.
pub fn spawn(deps: AgentDeps) -> Result<(mpsc::Sender<Request>, UplinkLink), AgentError> {
    let opts = UpdaterOptions::from_config(&deps.config, &deps.device_id, &deps.state_dir)?;
    let keys: Vec<String> = opts.keys.ids().map(String::from).collect();
    let mut updater = Updater::open(opts)?;
    let hailort = device_hailort_version(&deps.config);
    updater.set_hailort_version(hailort.clone());
    let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE);
    let (rep_tx, rep_rx) = mpsc::channel(REPORT_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let prefix = deps.config.mqtt.topic_prefix.clone();
    let topics = super::topics::subscriptions(&prefix, &deps.device_id, &deps.config.group).to_vec();
    let state_topic = super::topics::state(&prefix, &deps.device_id);
    let mut agent = Agent {
        state_topic,
        running: deps.config.clone(),
        updater,
        deps,
        reports: rep_tx,
        dropped: dropped.clone(),
        keys,
        hailort,
        last_progress: None,
        restart_required: Default::default(),
        own_requests: req_tx.downgrade(),
        trial: None,
    };
    std::thread::Builder::new()
        .name("update-agent".into())
        .spawn(move || agent.run(req_rx))
        .map_err(AgentError::Thread)?;
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(INBOUND_QUEUE);
    let requests = req_tx.clone();
    let forwarder = Box::pin(async move {
        while let Some(m) = in_rx.recv().await {
            if requests.send(Request::Mqtt(m)).await.is_err() {
                return; // the agent stopped
            }
        }
    });
    let subscription = Subscription { topics, inbound: in_tx, outbound: rep_rx, dropped };
    Ok((req_tx, UplinkLink { subscription, forwarder }))
}

/// The HailoRT library's version when Hailo is enabled and a library loads.
fn device_hailort_version(config: &Config) -> Option<String> {
    if !config.hailo.enabled {
        return None;
    }
    let lib = (!config.hailo.library.as_os_str().is_empty()).then_some(config.hailo.library.as_path());
    let (lib, _) = hailo_sys::load(lib).ok()?;
    let v = hailo_sys::library_version(&lib).ok()?;
    Some(format!("{}.{}.{}", v.major, v.minor, v.revision))
}

/// The model the daemon starts with, and its ONNX bytes (read and checked
/// once, here): the fleet-activated version of the configured model
/// (`<state>/models/<name>/current/pack/model.toml`) when there is one and
/// it loads with intact files, else the configured model.
pub fn startup_model(config: &Config, state_dir: &Path) -> Result<(Model, Vec<u8>), crate::model::ModelError> {
    let configured = Model::load(&config.model.manifest)?;
    let current = state_dir.join("models").join(&configured.manifest.name).join("current");
    let path = current.join(UNPACKED).join(MODEL_MANIFEST);
    if path.exists() {
        match Model::load(&path).and_then(|m| m.read_onnx().map(|bytes| (m, bytes))) {
            Ok((m, bytes)) => {
                tracing::info!(model = %m.manifest.name, version = %m.manifest.version, "running the fleet-activated model");
                return Ok((m, bytes));
            }
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "the fleet-activated model does not load; running the configured one");
            }
        }
    }
    let bytes = configured.read_onnx()?;
    Ok((configured, bytes))
}

struct Agent {
    updater: Updater,
    deps: AgentDeps,
    /// State reports, published by the uplink on `state_topic`.
    reports: mpsc::Sender<Outbound>,
    state_topic: String,
    dropped: Arc<AtomicU64>,
    keys: Vec<String>,
    hailort: Option<String>,
    last_progress: Option<Instant>,
    /// The config in effect (the start one, then each applied change).
    running: Config,
    restart_required: std::collections::BTreeSet<String>,
    /// For the health timer of a binary on trial (weak: the queue still
    /// closes when the daemon drops its senders).
    own_requests: mpsc::WeakSender<Request>,
    /// The binary update this process is on trial for, until confirmed.
    trial: Option<String>,
}

/// A new engine that passed warm-up and canary, not yet switched in.
type CheckedEngine = Box<dyn crate::engine::Engine>;

/// Why an activation check failed: refused outright, or tried and rolled back.
enum Failed {
    Reject(Rejection),
    RollBack(String),
}

impl Agent {
    fn run(&mut self, mut requests: mpsc::Receiver<Request>) {
        // Activations a crash cut short, completed when the store opened:
        // their last report said `activating`; say how they ended.
        for id in self.updater.take_recovered() {
            if let Ok(Some(rec)) = self.updater.record(&id) {
                self.report(&rec);
            }
        }
        self.resume_config();
        self.resume_binary();
        // Staged before a crash or restart: finish it now.
        self.resume_staged();
        while let Some(req) = requests.blocking_recv() {
            match req {
                Request::Mqtt(Inbound { topic, payload, retained }) => {
                    if topic.ends_with("/update/manifest") {
                        // A retained manifest is fine: verify() refuses a
                        // stale, expired or already applied one.
                        let _ = self.on_manifest(&payload);
                    } else if topic.ends_with("/update/chunk") && retained {
                        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(topic, dropped = n, "retained update chunk ignored");
                        }
                    } else if topic.ends_with("/update/chunk") {
                        let _ = self.on_chunk(&payload);
                    }
                    // Anything else under update/# (our own update/state) is not ours.
                }
                Request::Status { reply } => {
                    let _ = reply.send(self.status());
                }
                Request::ReloadConfig { reply } => {
                    let _ = reply.send(self.reload_config());
                }
                Request::ApplyManifest { envelope, reply } => {
                    let _ = reply.send(self.on_manifest(&envelope));
                }
                Request::ApplyChunk { chunk, reply } => {
                    let _ = reply.send(self.on_chunk(&chunk));
                }
                Request::Ready => self.start_health_period(),
                Request::ConfirmBinary { update_id } => self.confirm_binary(&update_id),
            }
        }
    }

    fn status(&self) -> StatusView {
        StatusView {
            installed: self.updater.installed().clone(),
            records: self.updater.records().unwrap_or_default(),
            trusted_keys: self.keys.clone(),
            dropped_messages: self.dropped.load(Ordering::Relaxed),
            hailort_version: self.hailort.clone(),
            restart_required: self.restart_required.iter().cloned().collect(),
        }
    }

    fn send(&self, report: StateReport) {
        let Ok(payload) = serde_json::to_vec(&report) else { return };
        if self.reports.try_send(Outbound { topic: self.state_topic.clone(), payload }).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("update state report dropped: the uplink is not taking them");
        }
    }

    fn report(&self, rec: &UpdateRecord) {
        self.send(self.updater.report(rec));
    }

    /// A report of `rec` in `phase` (steps the store passes through in one call).
    fn report_as(&self, rec: &UpdateRecord, phase: Phase) {
        let mut r = self.updater.report(rec);
        r.phase = phase;
        r.chunks = None;
        self.send(r);
    }

    fn reject(&self, update_id: &str, r: &Rejection) {
        tracing::warn!(update_id, code = r.code(), reason = %r, "update refused");
        self.send(self.updater.rejection_report(update_id, r));
    }

    /// The accepted record, or why the manifest was refused.
    fn on_manifest(&mut self, envelope: &[u8]) -> Result<UpdateRecord, AgentFailure> {
        let id = super::envelope_update_id(envelope).unwrap_or_default();
        match self.updater.receive_manifest(envelope, wall_clock_secs()) {
            Ok(rec) => {
                self.last_progress = None;
                self.report(&rec);
                if let Some(r) = self.refusal_before_transfer(&rec) {
                    self.give_up(&rec.update_id, Failed::Reject(r.clone()));
                    return Err(AgentFailure::Refused(r));
                }
                Ok(rec)
            }
            Err(UpdateError::Rejected(r)) => {
                self.reject(&id, &r);
                Err(AgentFailure::Refused(r))
            }
            Err(e) => {
                self.io_failure(&id, &e);
                Err(AgentFailure::Store(e))
            }
        }
    }

    /// Policy of this daemon the pure `verify()` does not know.
    fn refusal_before_transfer(&self, rec: &UpdateRecord) -> Option<Rejection> {
        match rec.kind {
            Kind::Model if self.deps.model_name.as_deref().is_some_and(|n| n != rec.name) => Some(Rejection::BadPack {
                detail: format!("this device runs model {:?}, not {:?}", self.deps.model_name, rec.name),
            }),
            Kind::Config if rec.name != CONFIG_NAME => Some(Rejection::Unsupported {
                detail: format!("the only config this device takes is {CONFIG_NAME:?}, not {:?}", rec.name),
            }),
            Kind::Binary if rec.name != binary::BINARY_NAME => Some(Rejection::Unsupported {
                detail: format!("the only binary this device takes is {:?}, not {:?}", binary::BINARY_NAME, rec.name),
            }),
            Kind::Binary if rec.version <= binary::running_version(&self.deps.state_dir) => Some(Rejection::NotNewer {
                kind: rec.kind.to_string(),
                name: rec.name.clone(),
                offered: rec.version.to_string(),
                installed: binary::running_version(&self.deps.state_dir).to_string(),
            }),
            Kind::Config
                if rec.phase == Phase::Staged && !matches!(config_trial::read(&self.deps.state_dir), Ok(None)) =>
            {
                Some(Rejection::Unsupported {
                    detail: "the config activated before is still on trial (confirmed after its first start has \
                             stayed up for update.binary_health_secs); push again after it"
                        .into(),
                })
            }
            Kind::Binary if rec.phase != Phase::Activating && binary::binary_in_flight(&self.deps.state_dir) => {
                Some(Rejection::Unsupported {
                    detail: "another binary update waits for its restart or is on trial; push again after it".into(),
                })
            }
            _ => None,
        }
    }

    /// The update's record after this chunk (activated when it was the
    /// last), or why the chunk was refused.
    fn on_chunk(&mut self, payload: &[u8]) -> Result<UpdateRecord, AgentFailure> {
        let chunk: Chunk = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                let r =
                    Rejection::CorruptChunk { update_id: String::new(), index: 0, detail: format!("not a chunk: {e}") };
                self.reject("", &r);
                return Err(AgentFailure::Refused(r));
            }
        };
        match self.updater.receive_chunk(&chunk) {
            Ok(rec) if rec.phase == Phase::Staged => {
                self.report_as(&rec, Phase::Verified);
                self.report(&rec);
                self.activate_staged(rec.clone());
                match self.updater.record(&rec.update_id)? {
                    Some(r) => Ok(r),
                    None => Err(AgentFailure::Store(UpdateError::UnknownUpdate { update_id: rec.update_id })),
                }
            }
            Ok(rec) => {
                if rec.phase == Phase::Received && self.last_progress.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                    self.last_progress = Some(Instant::now());
                    self.report(&rec);
                }
                Ok(rec) // receiving, or a late duplicate of a finished update
            }
            Err(UpdateError::Rejected(r)) => {
                // A bad chunk is not stored; an artifact that fails its
                // length or digest ends the update as rejected.
                match self.updater.record(&chunk.update_id) {
                    Ok(Some(rec)) if matches!(rec.phase, Phase::Rejected { .. }) => {
                        tracing::warn!(update_id = %rec.update_id, code = r.code(), reason = %r, "update refused");
                        self.report(&rec)
                    }
                    _ => self.reject(&chunk.update_id, &r),
                }
                Err(AgentFailure::Refused(r))
            }
            Err(e @ UpdateError::UnknownUpdate { .. }) => {
                tracing::debug!(update_id = %chunk.update_id, "chunk for an update with no accepted manifest: dropped");
                Err(AgentFailure::Store(e))
            }
            Err(e) => {
                self.io_failure(&chunk.update_id, &e);
                Err(AgentFailure::Store(e))
            }
        }
    }

    fn io_failure(&self, update_id: &str, e: &UpdateError) {
        let msg = crate::error_chain(e);
        tracing::error!(update_id, error = %msg, "update step failed");
        let r = Rejection::Unsupported { detail: msg.clone() };
        let mut report = self.updater.rejection_report(update_id, &r);
        // Not a decision about the update: the device could not do the step.
        report.phase = Phase::Rejected { code: "device_error".into(), reason: msg };
        self.send(report);
    }

    /// Updates left `Staged` by a restart are activated (or given up) now.
    fn resume_staged(&mut self) {
        let staged: Vec<UpdateRecord> =
            self.updater.records().unwrap_or_default().into_iter().filter(|r| r.phase == Phase::Staged).collect();
        for rec in staged {
            tracing::info!(update_id = %rec.update_id, "resuming a staged update after a restart");
            self.activate_staged(rec);
        }
    }

    /// Model: unpack, load, build, warm up, canary, then activate and swap.
    fn activate_staged(&mut self, rec: UpdateRecord) {
        if let Some(r) = self.refusal_before_transfer(&rec) {
            return self.give_up(&rec.update_id, Failed::Reject(r));
        }
        self.report_as(&rec, Phase::Activating);
        match rec.kind {
            Kind::Model => self.activate_model(rec),
            Kind::Config => self.activate_config(rec),
            Kind::Binary => self.activate_binary(rec),
        }
    }

    /// Binary: `pending.json` for the launcher, then a restart to try it.
    fn activate_binary(&mut self, rec: UpdateRecord) {
        let rec = match self.updater.activate(&rec.update_id) {
            Ok(r) => r,
            Err(UpdateError::Rejected(r)) => return self.report_rejected_record(&rec.update_id, &r),
            Err(e) => return self.io_failure(&rec.update_id, &e),
        };
        tracing::info!(target: "audit", update_id = %rec.update_id, version = %rec.version,
            slot = rec.slot.map(|s| s.dir_name()).unwrap_or("?"), "binary staged; restarting to try it");
        // A moment for the uplink to publish `activating` before it stops.
        std::thread::sleep(Duration::from_secs(1));
        binary::request_restart();
    }

    /// At start: report what the launcher decided, finish an interrupted
    /// confirmation, note a trial, and request again a binary activation
    /// that a crash left without its `pending.json`.
    fn resume_binary(&mut self) {
        let dir = self.deps.state_dir.clone();
        if let Some(id) = binary::take_outcome(&dir)
            && let Ok(Some(rec)) = self.updater.record(&id)
        {
            self.report(&rec);
        }
        match binary::read_trial(&dir) {
            Ok(Some(t)) if binary::active_slot(&dir) == Some(t.slot) => self.confirm_binary(&t.update_id),
            Ok(Some(t)) if binary::running_slot() == Some(t.slot) => {
                tracing::info!(update_id = %t.update_id, version = %t.version, slot = t.slot.dir_name(),
                    "running a new binary on trial: confirmed after READY and update.binary_health_secs");
                self.trial = Some(t.update_id);
            }
            Ok(Some(t)) => {
                // Some other binary runs while a trial is recorded: the
                // trial did not happen or did not last.
                match binary::roll_back(&dir, &t.update_id, "the new binary was not the one that started") {
                    Ok(()) => {
                        if let Ok(Some(rec)) = self.updater.record(&t.update_id) {
                            self.report(&rec);
                        }
                        let _ = binary::take_outcome(&dir);
                    }
                    Err(e) => self.io_failure(&t.update_id, &e),
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %crate::error_chain(&e), "reading the binary trial state"),
        }
        if !binary::binary_in_flight(&dir) {
            let cut: Vec<UpdateRecord> = self
                .updater
                .records()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.kind == Kind::Binary && r.phase == Phase::Activating)
                .collect();
            for rec in cut {
                self.report(&rec);
                self.activate_binary(rec);
            }
        }
    }

    /// At start: finish the rollback of a config trial the start refused
    /// ([`config_trial::start`]) and report it.
    fn resume_config(&mut self) {
        let Some((trial, reason)) = config_trial::failed(&self.deps.state_dir) else { return };
        // Only while `current` still names the failed version: a rollback
        // cut short after its swap (crash, power cut) was completed by the
        // store's recovery, and rolling back again would throw away the
        // good config it returned to (found by tests/fault_power_update.rs).
        let current = self.updater.current_dir(Kind::Config, CONFIG_NAME);
        if current.as_deref().and_then(Path::file_name).is_some_and(|n| n == trial.version_dir.as_str()) {
            match self.updater.rollback(Kind::Config, CONFIG_NAME, &reason) {
                Ok(()) | Err(UpdateError::NoPrevious { .. }) => {}
                Err(e) => return self.io_failure(&trial.update_id, &e),
            }
        }
        match self.updater.records() {
            Ok(records) => {
                for rec in
                    records.iter().filter(|r| r.kind == Kind::Config && r.version_dir_name() == trial.version_dir)
                {
                    self.report(rec);
                }
            }
            Err(e) => return self.io_failure(&trial.update_id, &e),
        }
        if let Err(e) = config_trial::clear(&self.deps.state_dir) {
            tracing::error!(error = %crate::error_chain(&e), "clearing the finished config trial");
        }
    }

    /// READY was sent: a binary on trial is confirmed if it is still up
    /// after `update.binary_health_secs`.
    fn start_health_period(&mut self) {
        let Some(update_id) = self.trial.clone() else { return };
        let secs = self.running.update.binary_health_secs;
        let requests = self.own_requests.clone();
        let spawned = std::thread::Builder::new().name("binary-health".into()).spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            if let Some(tx) = requests.upgrade() {
                let _ = tx.blocking_send(Request::ConfirmBinary { update_id });
            }
        });
        if let Err(e) = spawned {
            // Unconfirmed, the trial is rolled back at the next start.
            tracing::error!(error = %e, "cannot start the binary health timer");
        }
    }

    fn confirm_binary(&mut self, update_id: &str) {
        match self.updater.confirm_binary(update_id) {
            Ok(rec) => {
                tracing::info!(target: "audit", update_id, version = %rec.version, "binary update active");
                self.trial = None;
                self.report(&rec);
            }
            Err(e) => {
                self.io_failure(update_id, &e);
                // Unconfirmed, this binary must not keep running as if it
                // were: restart so the launcher rolls it back.
                if self.trial.is_some() {
                    binary::request_restart();
                }
            }
        }
    }

    /// Config: the same checks as `sparkd check-config`, then activate and
    /// apply what can change live; the rest is reported as needing a restart.
    fn activate_config(&mut self, rec: UpdateRecord) {
        let new = match self.check_config(&rec) {
            Ok(c) => c,
            Err(f) => return self.give_up(&rec.update_id, f),
        };
        // On trial from before `current` moves, so no start can use it unwatched.
        if let Err(e) = config_trial::begin(&self.deps.state_dir, &rec.update_id, &rec.version_dir_name()) {
            return self.io_failure(&rec.update_id, &e);
        }
        let rec = match self.updater.activate(&rec.update_id) {
            Ok(r) => r,
            Err(UpdateError::Rejected(r)) => return self.report_rejected_record(&rec.update_id, &r),
            Err(e) => return self.io_failure(&rec.update_id, &e),
        };
        match self.apply_config(new) {
            Ok(change) => {
                tracing::info!(target: "audit", update_id = %rec.update_id, version = %rec.version,
                    applied = ?change.applied, restart_required = ?change.restart_required, "config update active");
                self.report(&rec);
            }
            Err(why) => self.roll_back(&rec, &crate::error_chain(&why)),
        }
    }

    fn check_config(&self, rec: &UpdateRecord) -> Result<Config, Failed> {
        let bad = |detail: String| Failed::Reject(Rejection::InvalidConfig { detail });
        let dir = self.updater.staged_dir(rec).ok_or_else(|| bad("no store folder".into()))?;
        let path = dir.join(&rec.file_name);
        let new = Config::load(&path).map_err(|e| bad(crate::error_chain(&e)))?;
        self.check_reload(&new).map_err(|e| bad(crate::error_chain(&e)))?;
        Ok(new)
    }

    /// What a new config may not change while running, and whether its
    /// update keys load.
    fn check_reload(&self, new: &Config) -> Result<(), AgentFailure> {
        if new.state_dir != self.running.state_dir {
            return Err(AgentFailure::StateDirChanged);
        }
        UpdaterOptions::from_config(new, &self.deps.device_id, &self.deps.state_dir)?;
        Ok(())
    }

    /// Applies `new` where it can live (today: `[update]`, the update
    /// agent's own settings); every other changed key needs a restart.
    fn apply_config(&mut self, new: Config) -> Result<ConfigChange, AgentFailure> {
        let changed = crate::config::changed_keys(&self.running, &new);
        let (applied, restart_required): (Vec<String>, Vec<String>) =
            changed.into_iter().partition(|k| k.starts_with("update."));
        if !applied.is_empty() {
            let opts = UpdaterOptions::from_config(&new, &self.deps.device_id, &self.deps.state_dir)?;
            self.keys = opts.keys.ids().map(String::from).collect();
            let mut updater = Updater::open(opts)?;
            updater.set_hailort_version(self.hailort.clone());
            self.updater = updater;
        }
        self.restart_required.extend(restart_required.iter().cloned());
        self.running = new;
        Ok(ConfigChange { applied, restart_required })
    }

    /// `sparkctl config reload`: the config file again, through the same checks.
    fn reload_config(&mut self) -> Result<ConfigChange, AgentFailure> {
        let Some(path) = self.deps.config_path.clone() else {
            return Err(AgentFailure::NoConfigFile);
        };
        let new = Config::load(&path).map_err(AgentFailure::InvalidConfig)?;
        self.check_reload(&new)?;
        let change = self.apply_config(new)?;
        tracing::info!(target: "audit", path = %path.display(), applied = ?change.applied,
            restart_required = ?change.restart_required, "config reloaded");
        Ok(change)
    }

    fn activate_model(&mut self, rec: UpdateRecord) {
        let checked = self.check_model(&rec);
        let (engine, model) = match checked {
            Ok(v) => v,
            Err(f) => return self.give_up(&rec.update_id, f),
        };
        let rec = match self.updater.activate(&rec.update_id) {
            Ok(r) => r,
            Err(UpdateError::Rejected(r)) => return self.report_rejected_record(&rec.update_id, &r),
            Err(e) => return self.io_failure(&rec.update_id, &e),
        };
        if let (Some(engine), Some(swap)) = (engine, &self.deps.swap) {
            let label = format!("{} {}", model.manifest.name, model.manifest.version);
            if let Err(why) = switch_engine(swap, engine, model) {
                tracing::error!(reason = %why, "the inference thread did not take the new model; rolling back");
                return self.roll_back(&rec, &why);
            }
            self.deps.shared.update_engine(|e| e.model = label);
        }
        tracing::info!(update_id = %rec.update_id, name = %rec.name, version = %rec.version, "model update active");
        self.report(&rec);
    }

    fn report_rejected_record(&self, update_id: &str, r: &Rejection) {
        match self.updater.record(update_id) {
            Ok(Some(rec)) => self.report(&rec),
            _ => self.reject(update_id, r),
        }
    }

    fn roll_back(&mut self, rec: &UpdateRecord, why: &str) {
        if let Err(e) = self.updater.rollback(rec.kind, &rec.name, why) {
            tracing::error!(error = %e, "rollback failed");
        }
        match self.updater.record(&rec.update_id) {
            Ok(Some(r)) => self.report(&r),
            _ => self.report_as(rec, Phase::RolledBack { reason: why.into() }),
        }
    }

    fn give_up(&mut self, update_id: &str, f: Failed) {
        let phase = match &f {
            Failed::Reject(r) => {
                tracing::warn!(update_id, code = r.code(), reason = %r, "update refused");
                Phase::Rejected { code: r.code().into(), reason: r.to_string() }
            }
            Failed::RollBack(why) => {
                tracing::warn!(update_id, reason = %why, "model update failed its checks; previous model kept");
                Phase::RolledBack { reason: why.clone() }
            }
        };
        match self.updater.abandon(update_id, phase) {
            Ok(rec) => self.report(&rec),
            Err(e) => self.io_failure(update_id, &e),
        }
    }

    /// Everything short of the switch. Returns the warmed-up engine when the
    /// daemon runs one (no camera: the files are checked, nothing is built).
    fn check_model(&self, rec: &UpdateRecord) -> Result<(Option<CheckedEngine>, Arc<Model>), Failed> {
        let bad = |detail: String| Failed::Reject(Rejection::BadPack { detail });
        let dir = self.updater.staged_dir(rec).ok_or_else(|| bad("no store folder".into()))?;
        let unpacked = dir.join(UNPACKED);
        if !unpacked.exists() {
            let bytes = std::fs::read(dir.join(&rec.file_name)).map_err(|e| bad(format!("reading the pack: {e}")))?;
            pack::unpack(&bytes, &unpacked).map_err(|e| bad(crate::error_chain(&e)))?;
        }
        let model = Model::load(&unpacked.join(MODEL_MANIFEST)).map_err(|e| bad(crate::error_chain(&e)))?;
        if model.manifest.name != rec.name || model.manifest.version != rec.version.to_string() {
            return Err(bad(format!(
                "model.toml says {} {}, the signed manifest {} {}",
                model.manifest.name, model.manifest.version, rec.name, rec.version
            )));
        }
        let onnx = model.read_onnx().map_err(|e| bad(crate::error_chain(&e)))?;
        let manifest = self.updater.manifest_of(&rec.update_id).map_err(|e| bad(e.to_string()))?;
        let canary = match &manifest.canary {
            Some(c) => {
                let p = unpacked.join(&c.input);
                let img = image::open(&p)
                    .map_err(|e| bad(format!("canary input {} is not in the pack or not an image: {e}", c.input)))?;
                Some((c.clone(), img.to_rgb8()))
            }
            None => None,
        };
        let model = Arc::new(model);
        if self.deps.swap.is_none() {
            tracing::info!(name = %rec.name, "no camera, so no engine: model files checked, canary not run");
            return Ok((None, model));
        }
        let mut engine = crate::engine::build::build_engine(&self.deps.config, &model, onnx, &self.deps.shared)
            .map_err(|e| Failed::RollBack(format!("the new engine does not build: {}", crate::error_chain(&e))))?;
        let mut input = crate::vision::Tensor::zeros(&[1]);
        // Warm-up: the first run allocates; a failure here is a failure of the model.
        let warm = canary
            .as_ref()
            .map(|(_, img)| img.clone())
            .unwrap_or_else(|| image::RgbImage::new(model.manifest.input.width, model.manifest.input.height));
        crate::pipeline::infer_frame(engine.as_mut(), &model, &warm, &mut input)
            .map_err(|e| Failed::RollBack(format!("warm-up inference failed: {e}")))?;
        if let Some((c, img)) = canary {
            let r = crate::pipeline::infer_frame(engine.as_mut(), &model, &img, &mut input)
                .map_err(|e| Failed::RollBack(format!("canary inference failed: {e}")))?;
            let top = r.detections.iter().max_by(|a, b| a.score.total_cmp(&b.score));
            match top {
                Some(d) if d.label == c.label && d.score >= c.min_score => {
                    tracing::info!(label = %d.label, score = d.score, "canary passed");
                }
                Some(d) => {
                    return Err(Failed::RollBack(format!(
                        "canary missed: {} gave {} {:.3}, expected {} >= {}",
                        c.input, d.label, d.score, c.label, c.min_score
                    )));
                }
                None => {
                    return Err(Failed::RollBack(format!(
                        "canary missed: {} gave no detection, expected {} >= {}",
                        c.input, c.label, c.min_score
                    )));
                }
            }
        }
        Ok((Some(engine), model))
    }
}

/// Hands the new engine to the inference thread and waits until it runs on it.
fn switch_engine(
    swap: &crossbeam_channel::Sender<EngineSwap>,
    engine: Box<dyn crate::engine::Engine>,
    model: Arc<Model>,
) -> Result<(), String> {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    swap.send_timeout(EngineSwap { engine, model, done: done_tx }, SWAP_DEADLINE)
        .map_err(|_| "the inference thread is not running".to_string())?;
    done_rx.recv_timeout(SWAP_DEADLINE).map_err(|_| "the inference thread did not switch in time".to_string())
}
