//! The persisted update state machine, the chunk stager and the model,
//! config and binary stores.
//!
//! Layout under the state directory:
//!
//! ```text
//! updates/installed.json          kind/name -> active, previous, highest version
//! updates/clock.json              trusted-time high-water mark
//! updates/<id>/state.json         UpdateRecord (phase), written atomically
//! updates/<id>/envelope.json      the signed envelope as received
//! updates/<id>/chunks/<index>     received chunks (Received)
//! updates/<id>/artifact           reassembled, verified artifact (Verified)
//! models/<name>/<version>-<id8>/  staged version: <file_name>, manifest.json, envelope.json
//! models/<name>/current           symlink to the active version directory
//! models/<name>/previous          symlink to the one before it (rollback target)
//! configs/<name>/...              the same for config updates
//! bin/slot-a, bin/slot-b          binary slots; bin/active -> the running slot
//! bin/pending.json                binary activation request for the next start
//! bin/trial.json                  the pending binary is being tried (src/update/binary.rs)
//! bin/report.json                 a binary outcome the next agent must report
//! ```
//!
//! Phases: `Received` (signed manifest accepted, chunks arriving) →
//! `Verified` (artifact whole; length and SHA-256 match) → `Staged` (in its
//! version directory or inactive slot) → `Activating` → `Active`; or
//! `Rejected`, `RolledBack`. Each step is made durable before the phase that
//! names it is written, so [`Updater::open`] after a crash resumes forward
//! (a verified artifact is placed again, an interrupted activation is
//! completed) and `current` always points at a whole version.

mod install;
mod stager;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fsio::{remove_any, write_atomic};
use super::manifest::{Installed, InstalledEntry, Kind, TrustedKeys, Version};
use super::wire::StateReport;
use super::{Rejection, UpdateError};
use crate::record::now_ms;

/// `models/.selected`: a symlink to the name of the model the device runs
/// (a model update may switch between names). Model names cannot start with
/// `.`, so it never collides with a model's folder.
pub const SELECTED: &str = ".selected";
/// `models/.selected-previous`: the model selected before, for a rollback.
const SELECTED_PREVIOUS: &str = ".selected-previous";

/// The name of the model the fleet selected on this device, if any.
pub fn selected_model(state_dir: &Path) -> Option<String> {
    let link = fs::read_link(state_dir.join("models").join(SELECTED)).ok()?;
    let name = link.to_str()?;
    super::check_plain_name("models/.selected", name).ok()?;
    Some(name.to_string())
}

/// Where an update is in its life. Serialized as `{"state": "...", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    Received,
    Verified,
    Staged,
    Activating,
    Active,
    /// Was active; a newer version of the same name is active now.
    Superseded,
    Rejected {
        code: String,
        reason: String,
    },
    RolledBack {
        reason: String,
    },
    /// A shadow model: staged and evaluated beside the live one, never
    /// activated (`current` does not move).
    Shadow,
    /// A shadow model that could not run (its pack, ONNX Runtime, or its
    /// fit to its manifest); the live model is untouched.
    ShadowFailed {
        code: String,
        reason: String,
    },
    /// A shadow evaluation that ended: replaced by another shadow, ended by
    /// a real model update, or the daemon runs no camera. Its files are gone.
    ShadowEnded {
        reason: String,
    },
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Received => "received",
            Phase::Verified => "verified",
            Phase::Staged => "staged",
            Phase::Activating => "activating",
            Phase::Active => "active",
            Phase::Superseded => "superseded",
            Phase::Rejected { .. } => "rejected",
            Phase::RolledBack { .. } => "rolled_back",
            Phase::Shadow => "shadow",
            Phase::ShadowFailed { .. } => "shadow_failed",
            Phase::ShadowEnded { .. } => "shadow_ended",
        }
    }

    /// Received, Verified, Staged or Activating: the update is under way.
    pub fn in_progress(&self) -> bool {
        matches!(self, Phase::Received | Phase::Verified | Phase::Staged | Phase::Activating)
    }

    fn rejected(r: &Rejection) -> Self {
        Phase::Rejected { code: r.code().into(), reason: r.to_string() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BinarySlot {
    SlotA,
    SlotB,
}

impl BinarySlot {
    pub fn dir_name(self) -> &'static str {
        match self {
            BinarySlot::SlotA => "slot-a",
            BinarySlot::SlotB => "slot-b",
        }
    }
}

/// The persisted record of one update (`updates/<id>/state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRecord {
    pub update_id: String,
    pub kind: Kind,
    pub name: String,
    pub version: Version,
    pub file_name: String,
    pub length: u64,
    pub sha256: String,
    pub phase: Phase,
    /// Chunk count, fixed by the first chunk received.
    #[serde(default)]
    pub total_chunks: Option<u32>,
    /// Binary kind: the slot it was staged into.
    #[serde(default)]
    pub slot: Option<BinarySlot>,
    pub updated_ms: u64,
}

impl UpdateRecord {
    /// `<version>-<first 8 of update id>`: the version directory's name.
    pub(super) fn version_dir_name(&self) -> String {
        format!("{}-{}", self.version, &self.update_id[..8])
    }
}

pub struct UpdaterOptions {
    pub state_dir: PathBuf,
    pub device_id: String,
    pub group: String,
    pub keys: TrustedKeys,
    pub max_artifact_bytes: u64,
    /// This sparkd's version (for `min_running_version`).
    pub running_version: Version,
    /// Free space left untouched beyond what staging needs.
    pub reserve_bytes: u64,
}

impl UpdaterOptions {
    /// Options from the daemon's config (`[update]`): `device_id` and
    /// `state_dir` are the resolved ones. An empty `trusted_keys_file` trusts
    /// no key, so every update is refused (`unknown_key`).
    pub fn from_config(config: &crate::config::Config, device_id: &str, state_dir: &Path) -> Result<Self, UpdateError> {
        let u = &config.update;
        let keys = if u.trusted_keys_file.as_os_str().is_empty() {
            TrustedKeys::default()
        } else {
            TrustedKeys::load(&u.trusted_keys_file)?
        };
        Ok(Self {
            state_dir: state_dir.to_path_buf(),
            device_id: device_id.into(),
            group: config.group.clone(),
            keys,
            max_artifact_bytes: u.max_artifact_megabytes.saturating_mul(1 << 20),
            running_version: super::binary::running_version(state_dir),
            reserve_bytes: u.reserve_megabytes.saturating_mul(1 << 20),
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockFile {
    high_water: u64,
}

/// `bin/pending.json`: a staged binary to try at the next start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PendingBinary {
    pub update_id: String,
    pub version: Version,
    pub slot: BinarySlot,
    pub requested_ms: u64,
}

/// The device side of fleet updates. Single-threaded: the caller owns it.
pub struct Updater {
    opts: UpdaterOptions,
    installed: Installed,
    high_water: u64,
    /// This device's HailoRT version, for `hailort_version` (see [`Self::set_hailort_version`]).
    hailort: Option<String>,
    /// Activations a crash cut short and [`Self::open`] completed, for the
    /// agent to report (their last report said `activating`).
    recovered: Vec<String>,
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, UpdateError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| UpdateError::CorruptState { path: path.to_path_buf(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(UpdateError::Io { what: "reading", path: path.to_path_buf(), source }),
    }
}

pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), UpdateError> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| UpdateError::CorruptState { path: path.to_path_buf(), message: e.to_string() })?;
    write_atomic(path, &bytes).map_err(UpdateError::io("writing", path))
}

/// Sets the phase of a record without an [`Updater`] (the binary launcher
/// runs before the daemon and needs no keys). `None`: no such record.
pub(super) fn set_record_phase(
    state_dir: &Path,
    update_id: &str,
    phase: Phase,
) -> Result<Option<UpdateRecord>, UpdateError> {
    if !is_update_id(update_id) {
        return Ok(None);
    }
    let path = state_dir.join("updates").join(update_id).join("state.json");
    let Some(mut rec) = read_json::<UpdateRecord>(&path)? else { return Ok(None) };
    rec.phase = phase;
    rec.updated_ms = now_ms();
    write_json(&path, &rec)?;
    Updater::audit(&rec);
    Ok(Some(rec))
}

/// The record of `update_id` read without an [`Updater`].
pub(super) fn read_record(state_dir: &Path, update_id: &str) -> Result<Option<UpdateRecord>, UpdateError> {
    if !is_update_id(update_id) {
        return Ok(None);
    }
    read_json(&state_dir.join("updates").join(update_id).join("state.json"))
}

fn is_update_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The trusted-time high-water mark the store keeps, read without an
/// [`Updater`] and without writing (diagnose requests judge expiry by it).
pub fn read_trusted_time_high_water(state_dir: &Path) -> Result<u64, UpdateError> {
    let path = state_dir.join("updates").join("clock.json");
    Ok(read_json::<ClockFile>(&path)?.unwrap_or_default().high_water)
}

/// Seconds since the epoch from the wall clock (0 if before it).
pub fn wall_clock_secs() -> u64 {
    now_ms() / 1000
}

impl Updater {
    /// Opens the store under `opts.state_dir`, creating it, and recovers
    /// from an interrupted run (see the module documentation).
    pub fn open(opts: UpdaterOptions) -> Result<Self, UpdateError> {
        let updates = opts.state_dir.join("updates");
        crate::sys::durable::create_dir_all_synced(&updates).map_err(UpdateError::io("creating", &updates))?;
        let installed = read_json::<Installed>(&updates.join("installed.json"))?.unwrap_or_default();
        let high_water = read_json::<ClockFile>(&updates.join("clock.json"))?.unwrap_or_default().high_water;
        let mut u = Self { opts, installed, high_water, hailort: None, recovered: Vec::new() };
        u.recover()?;
        Ok(u)
    }

    /// The updates whose activation [`Self::open`] completed (once).
    pub fn take_recovered(&mut self) -> Vec<String> {
        std::mem::take(&mut self.recovered)
    }

    fn updates_dir(&self) -> PathBuf {
        self.opts.state_dir.join("updates")
    }

    fn update_dir(&self, id: &str) -> PathBuf {
        self.updates_dir().join(id)
    }

    /// `<state>/models/<name>` or `<state>/configs/<name>`; `None` for binaries.
    pub fn store_dir(&self, kind: Kind, name: &str) -> Option<PathBuf> {
        match kind {
            Kind::Model => Some(self.opts.state_dir.join("models").join(name)),
            Kind::Config => Some(self.opts.state_dir.join("configs").join(name)),
            Kind::Binary => None,
        }
    }

    fn bin_dir(&self) -> PathBuf {
        self.opts.state_dir.join("bin")
    }

    /// The active version directory of a model or config (`current`).
    pub fn current_dir(&self, kind: Kind, name: &str) -> Option<PathBuf> {
        let link = self.store_dir(kind, name)?.join("current");
        let target = fs::read_link(&link).ok()?;
        Some(link.parent()?.join(target))
    }

    /// The active artifact of a model or config: the file the engine (or the
    /// config loader) should read after an activation.
    pub fn current_artifact(&self, kind: Kind, name: &str) -> Option<PathBuf> {
        let dir = self.current_dir(kind, name)?;
        let m: super::UpdateManifest = serde_json::from_slice(&fs::read(dir.join("manifest.json")).ok()?).ok()?;
        Some(dir.join(m.artifact.file_name))
    }

    /// Path of the active model's artifact (see [`Self::current_artifact`]).
    pub fn current_model_manifest(&self, name: &str) -> Option<PathBuf> {
        self.current_artifact(Kind::Model, name)
    }

    /// The HailoRT library version model manifests are checked against
    /// (`None`: no library here; models run on the CPU).
    pub fn set_hailort_version(&mut self, version: Option<String>) {
        self.hailort = version;
    }

    /// The signed manifest of a known update (read from its envelope).
    pub fn manifest_of(&self, update_id: &str) -> Result<super::UpdateManifest, UpdateError> {
        if !is_update_id(update_id) {
            return Err(UpdateError::UnknownUpdate { update_id: update_id.into() });
        }
        let path = self.update_dir(update_id).join("envelope.json");
        let bytes = fs::read(&path).map_err(UpdateError::io("reading", &path))?;
        let corrupt = |message: String| UpdateError::CorruptState { path: path.clone(), message };
        let env: super::Envelope = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        use base64::Engine as _;
        let m = base64::engine::general_purpose::STANDARD.decode(env.manifest).map_err(|e| corrupt(e.to_string()))?;
        serde_json::from_slice(&m).map_err(|e| corrupt(e.to_string()))
    }

    /// The version folder a staged model or config was placed in.
    pub fn staged_dir(&self, rec: &UpdateRecord) -> Option<PathBuf> {
        Some(self.store_dir(rec.kind, &rec.name)?.join(rec.version_dir_name()))
    }

    /// Gives up an update that has not been activated (a check of the
    /// daemon's failed: HailoRT, pack, canary, config): its chunks and
    /// staged folder are removed and it ends as `phase` (`Rejected` or
    /// `RolledBack`). Nothing active changes and the highest accepted
    /// version does not move, so a fixed build of it can be sent again.
    pub fn abandon(&mut self, update_id: &str, phase: Phase) -> Result<UpdateRecord, UpdateError> {
        let Some(mut rec) = self.record(update_id)? else {
            return Err(UpdateError::UnknownUpdate { update_id: update_id.into() });
        };
        if !matches!(rec.phase, Phase::Received | Phase::Verified | Phase::Staged | Phase::Shadow) {
            return Err(UpdateError::WrongPhase {
                update_id: update_id.into(),
                action: "be abandoned",
                phase: rec.phase.as_str().into(),
            });
        }
        let dir = self.update_dir(update_id);
        for p in [dir.join("chunks"), dir.join("artifact"), dir.join("artifact.partial")] {
            remove_any(&p).map_err(UpdateError::io("removing", &p))?;
        }
        if matches!(rec.phase, Phase::Staged | Phase::Shadow)
            && let Some(staged) = self.staged_dir(&rec)
        {
            remove_any(&staged).map_err(UpdateError::io("removing", &staged))?;
        }
        rec.phase = phase;
        self.save(&mut rec)?;
        Self::audit(&rec);
        Ok(rec)
    }

    pub fn installed(&self) -> &Installed {
        &self.installed
    }

    pub fn trusted_time_high_water(&self) -> u64 {
        self.high_water
    }

    pub fn record(&self, update_id: &str) -> Result<Option<UpdateRecord>, UpdateError> {
        if !is_update_id(update_id) {
            return Ok(None);
        }
        read_json(&self.update_dir(update_id).join("state.json"))
    }

    /// Every update this device knows, oldest first by last change.
    pub fn records(&self) -> Result<Vec<UpdateRecord>, UpdateError> {
        let dir = self.updates_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(UpdateError::io("listing", &dir))? {
            let e = e.map_err(UpdateError::io("listing", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(r) = self.record(&name)? {
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.updated_ms);
        Ok(out)
    }

    fn save(&self, rec: &mut UpdateRecord) -> Result<(), UpdateError> {
        rec.updated_ms = now_ms();
        write_json(&self.update_dir(&rec.update_id).join("state.json"), rec)
    }

    fn save_installed(&self) -> Result<(), UpdateError> {
        write_json(&self.updates_dir().join("installed.json"), &self.installed)
    }

    fn audit(rec: &UpdateRecord) {
        match &rec.phase {
            Phase::Rejected { reason, .. }
            | Phase::RolledBack { reason }
            | Phase::ShadowFailed { reason, .. }
            | Phase::ShadowEnded { reason } => tracing::info!(
                target: "audit", update_id = %rec.update_id, kind = %rec.kind, name = %rec.name,
                version = %rec.version, state = rec.phase.as_str(), reason = %reason, "update {}", rec.phase.as_str()
            ),
            _ => tracing::info!(
                target: "audit", update_id = %rec.update_id, kind = %rec.kind, name = %rec.name,
                version = %rec.version, state = rec.phase.as_str(), "update {}", rec.phase.as_str()
            ),
        }
    }

    /// The `update/state` message for `rec`.
    pub fn report(&self, rec: &UpdateRecord) -> StateReport {
        let chunks = match (&rec.phase, rec.total_chunks) {
            (Phase::Received, Some(t)) => Some((self.chunk_count(&rec.update_id), t)),
            _ => None,
        };
        StateReport {
            device_id: self.opts.device_id.clone(),
            group: self.opts.group.clone(),
            update_id: rec.update_id.clone(),
            kind: Some(rec.kind),
            name: Some(rec.name.clone()),
            version: Some(rec.version.to_string()),
            phase: rec.phase.clone(),
            chunks,
            ts: now_ms(),
        }
    }

    /// The `update/state` message for a manifest refused before it had a record.
    pub fn rejection_report(&self, update_id: &str, r: &Rejection) -> StateReport {
        StateReport {
            device_id: self.opts.device_id.clone(),
            group: self.opts.group.clone(),
            update_id: update_id.into(),
            kind: None,
            name: None,
            version: None,
            phase: Phase::rejected(r),
            chunks: None,
            ts: now_ms(),
        }
    }

    /// Brings the store to a consistent state after a crash: resumes what
    /// can go forward, and makes `installed.json` agree with the symlinks.
    fn recover(&mut self) -> Result<(), UpdateError> {
        for mut rec in self.records()? {
            match rec.phase {
                Phase::Received => {
                    if let Some(t) = rec.total_chunks
                        && self.chunk_count(&rec.update_id) == t
                    {
                        match self.assemble(&mut rec) {
                            Ok(()) | Err(UpdateError::Rejected(_)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Phase::Verified => {
                    if self.update_dir(&rec.update_id).join("artifact").exists() {
                        self.place(&mut rec)?;
                    } else {
                        // Cannot happen by construction; receive it again.
                        rec.phase = Phase::Received;
                        self.save(&mut rec)?;
                    }
                }
                Phase::Activating if rec.kind != Kind::Binary => {
                    tracing::info!(target: "audit", update_id = %rec.update_id, "completing an interrupted activation");
                    self.finish_activation(&mut rec)?;
                    self.recovered.push(rec.update_id.clone());
                }
                _ => {}
            }
        }
        // The symlinks are the truth for active/previous.
        let mut changed = false;
        for (key, e) in self.installed.iter_mut() {
            let Some((kind, name)) = key.split_once('/') else { continue };
            let Ok(kind) = kind.parse::<Kind>() else { continue };
            if kind == Kind::Binary {
                continue;
            }
            let dir = self.opts.state_dir.join(if kind == Kind::Model { "models" } else { "configs" }).join(name);
            let cur = fs::read_link(dir.join("current")).ok();
            let mut prev = fs::read_link(dir.join("previous")).ok();
            if prev.is_some() && prev == cur {
                let _ = remove_any(&dir.join("previous")); // interrupted rollback
                prev = None;
            }
            let (a, p) = (cur.as_deref().and_then(version_of_dir), prev.as_deref().and_then(version_of_dir));
            if e.active != a || e.previous != p {
                e.active = a;
                e.previous = p;
                changed = true;
            }
        }
        if changed {
            self.save_installed()?;
        }
        let names: std::collections::BTreeSet<(Kind, String)> =
            self.records()?.into_iter().filter(|r| r.kind != Kind::Binary).map(|r| (r.kind, r.name)).collect();
        for (kind, name) in names {
            self.settle_records(kind, &name)?;
        }
        Ok(())
    }

    /// Installed versions as a map for `sparkctl update status`.
    pub fn summary(&self) -> BTreeMap<String, InstalledEntry> {
        self.installed.clone()
    }
}

/// `1.2.3-abcdef12` → 1.2.3.
fn version_of_dir(p: &Path) -> Option<Version> {
    p.to_str()?.split_once('-')?.0.parse().ok()
}
