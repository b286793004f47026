//! The daemon side of fleet updates: one named thread that owns the
//! [`Updater`], fed by the uplink (manifests and chunks from MQTT) and the
//! control socket (`sparkctl update status` / `update apply`), and that
//! reports every step on `<prefix>/<device>/update/state`.
//!
//! Owns the order of a model activation: pack unpacked, model loaded, engine
//! built with [`crate::inference::engine::build::build_engine`] (as at start), warmed up,
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

mod binary_trial;
mod config_change;
mod model_check;
mod shadow;

use model_check::device_hailort_version;
pub use model_check::startup_model;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Chunk, Installed, Kind, Phase, Rejection, StateReport, UpdateError, UpdateRecord, Updater};
use super::{UpdaterOptions, wall_clock_secs};
use super::{binary, config_trial};
use crate::config::Config;
use crate::inference::pipeline::EngineSwap;
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
    /// The shadow report timer (see [`shadow`]).
    ShadowTick,
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
    /// The shadow model under evaluation, if any.
    #[serde(default)]
    pub shadow: Option<ShadowView>,
}

/// A running shadow evaluation, for `sparkctl update status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowView {
    pub update_id: String,
    pub name: String,
    pub version: String,
    /// Frames compared so far, and their pooled F1 against the live model.
    pub frames: u64,
    pub agreement: f64,
    pub errors: u64,
    pub dropped_busy: u64,
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
    /// The file the running config was read from (`None`: the demo config).
    pub config_path: Option<PathBuf>,
    /// The inference thread's shadow tap; `None` without a camera.
    pub shadow: Option<Arc<crate::inference::shadow_tap::ShadowTap>>,
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
    let has_shadow_tap = deps.shadow.is_some();
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
        shadow: None,
    };
    std::thread::Builder::new()
        .name("update-agent".into())
        .spawn(move || agent.run(req_rx))
        .map_err(AgentError::Thread)?;
    if has_shadow_tap {
        // The shadow report timer: a tick into the queue (skipped when the
        // queue is full; the next one comes soon), until the agent stops.
        let weak = req_tx.downgrade();
        std::thread::Builder::new()
            .name("shadow-timer".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(shadow::TICK);
                    let Some(tx) = weak.upgrade() else { return };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Request::ShadowTick) {
                        return;
                    }
                }
            })
            .map_err(AgentError::Thread)?;
    }
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
    /// The shadow model under evaluation.
    shadow: Option<shadow::ShadowRun>,
}

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
        self.resume_shadow();
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
                Request::ShadowTick => self.shadow_tick(),
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
            shadow: self.shadow_view(),
        }
    }

    fn send(&self, report: StateReport) {
        self.send_json(&report)
    }

    /// Publishes `report` on `update/state` through the uplink's bounded queue.
    fn send_json<T: Serialize>(&self, report: &T) {
        let Ok(payload) = serde_json::to_vec(report) else { return };
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
                if rec.kind == Kind::Model && !self.is_shadow(&rec) {
                    let why = format!("a model update was pushed: {} {} ({})", rec.name, rec.version, rec.update_id);
                    self.end_shadow(&why);
                }
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
        if rec.kind != Kind::Model && self.is_shadow(rec) {
            return Some(Rejection::Unsupported { detail: "only model updates can be shadow-evaluated".into() });
        }
        match rec.kind {
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
        // A shadow is never activated: no `activating` report for it.
        if rec.kind == Kind::Model && self.is_shadow(&rec) {
            return self.start_shadow(rec);
        }
        self.report_as(&rec, Phase::Activating);
        match rec.kind {
            Kind::Model => self.activate_model(rec),
            Kind::Config => self.activate_config(rec),
            Kind::Binary => self.activate_binary(rec),
        }
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
}
