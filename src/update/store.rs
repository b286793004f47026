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

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::clock::trusted_now;
use super::fsio::{crash_point, free_bytes, fsync_dir, remove_any, swap_symlink, write_atomic, write_whole};
use super::manifest::{Installed, InstalledEntry, Kind, TrustedKeys, VerifyContext, Version, installed_key, verify};
use super::wire::{CHUNK_MAX_BYTES, Chunk, StateReport};
use super::{Rejection, UpdateError};
use crate::record::now_ms;

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

/// Seconds since the epoch from the wall clock (0 if before it).
pub fn wall_clock_secs() -> u64 {
    now_ms() / 1000
}

impl Updater {
    /// Opens the store under `opts.state_dir`, creating it, and recovers
    /// from an interrupted run (see the module documentation).
    pub fn open(opts: UpdaterOptions) -> Result<Self, UpdateError> {
        let updates = opts.state_dir.join("updates");
        crate::durable::create_dir_all_synced(&updates).map_err(UpdateError::io("creating", &updates))?;
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
        if !matches!(rec.phase, Phase::Received | Phase::Verified | Phase::Staged) {
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
        if rec.phase == Phase::Staged
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
            Phase::Rejected { reason, .. } | Phase::RolledBack { reason } => tracing::info!(
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

    /// Verifies a signed envelope and, if accepted, records the update as
    /// `Received`. A refusal writes nothing. A manifest whose update is under
    /// way (a redelivery) returns its record unchanged; one that finished is
    /// verified again (so a replay of an applied version is refused, and an
    /// update rejected for a corrupt transfer can be sent again).
    pub fn receive_manifest(&mut self, envelope: &[u8], wall_clock: u64) -> Result<UpdateRecord, UpdateError> {
        if let Some(id) = super::wire::envelope_update_id(envelope)
            && let Some(rec) = self.record(&id)?
            && rec.phase.in_progress()
        {
            return Ok(rec);
        }
        let now = trusted_now(self.high_water, wall_clock);
        let cx = VerifyContext {
            keys: &self.opts.keys,
            device_id: &self.opts.device_id,
            group: &self.opts.group,
            now,
            running_version: self.opts.running_version,
            max_artifact_bytes: self.opts.max_artifact_bytes,
            installed: &self.installed,
            hailort: self.hailort.as_deref(),
        };
        let v = verify(envelope, &cx).inspect_err(|r| {
            tracing::info!(target: "audit", code = r.code(), reason = %r, "update manifest rejected");
        })?;
        let m = &v.manifest;

        // Chunks plus the reassembled artifact, plus the reserve.
        let needed = m.artifact.length.saturating_mul(2).saturating_add(self.opts.reserve_bytes);
        let root = &self.opts.state_dir;
        let available = free_bytes(root).map_err(UpdateError::io("checking free space of", root))?;
        if available < needed {
            let r = Rejection::InsufficientSpace { needed, available };
            tracing::info!(target: "audit", update_id = %v.update_id, code = r.code(), reason = %r, "update manifest rejected");
            return Err(r.into());
        }

        if m.issued_at > self.high_water {
            write_json(&self.updates_dir().join("clock.json"), &ClockFile { high_water: m.issued_at })?;
            self.high_water = m.issued_at;
        }
        let dir = self.update_dir(&v.update_id);
        crate::durable::create_dir_all_synced(&dir.join("chunks")).map_err(UpdateError::io("creating", &dir))?;
        write_atomic(&dir.join("envelope.json"), &v.envelope_bytes).map_err(UpdateError::io("writing", &dir))?;
        let mut rec = UpdateRecord {
            update_id: v.update_id.clone(),
            kind: m.kind,
            name: m.name.clone(),
            version: m.version,
            file_name: m.artifact.file_name.clone(),
            length: m.artifact.length,
            sha256: m.artifact.sha256.to_ascii_lowercase(),
            phase: Phase::Received,
            total_chunks: None,
            slot: None,
            updated_ms: 0,
        };
        self.save(&mut rec)?;
        tracing::info!(target: "audit", update_id = %rec.update_id, kind = %rec.kind, name = %rec.name,
            version = %rec.version, key_id = %v.key_id, "update manifest verified; receiving");
        crash_point("received");
        Ok(rec)
    }

    fn chunk_path(&self, id: &str, index: u32) -> PathBuf {
        self.update_dir(id).join("chunks").join(format!("{index:08}"))
    }

    fn chunk_count(&self, id: &str) -> u32 {
        fs::read_dir(self.update_dir(id).join("chunks"))
            .map(|d| {
                d.filter_map(Result::ok).filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count() as u32
            })
            .unwrap_or(0)
    }

    fn chunk_bytes_held(&self, id: &str) -> u64 {
        fs::read_dir(self.update_dir(id).join("chunks"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Stores one chunk (idempotent: a chunk already held is skipped). When
    /// the last one arrives the artifact is reassembled, verified and staged.
    /// A refused chunk is not stored and the transfer goes on.
    pub fn receive_chunk(&mut self, chunk: &Chunk) -> Result<UpdateRecord, UpdateError> {
        let corrupt = |detail: String| -> UpdateError {
            Rejection::CorruptChunk { update_id: chunk.update_id.clone(), index: chunk.index, detail }.into()
        };
        if !is_update_id(&chunk.update_id) {
            return Err(corrupt("update_id is not 32 lower-case hex digits".into()));
        }
        let Some(mut rec) = self.record(&chunk.update_id)? else {
            return Err(UpdateError::UnknownUpdate { update_id: chunk.update_id.clone() });
        };
        if rec.phase != Phase::Received {
            return Ok(rec); // late duplicate
        }
        let (total, len) = (chunk.total as u64, rec.length);
        if total == 0 || total > len.max(1) || len > total * CHUNK_MAX_BYTES as u64 {
            return Err(corrupt(format!("total {total} does not fit an artifact of {len} bytes")));
        }
        if let Some(t) = rec.total_chunks
            && t != chunk.total
        {
            return Err(corrupt(format!("total {} differs from the transfer's {t}", chunk.total)));
        }
        if chunk.index >= chunk.total {
            return Err(corrupt(format!("index is not below total {}", chunk.total)));
        }
        let bytes = chunk.bytes().map_err(corrupt)?;
        if bytes.len() > CHUNK_MAX_BYTES {
            return Err(corrupt(format!("{} bytes, more than {CHUNK_MAX_BYTES}", bytes.len())));
        }
        let actual = crate::model::sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&chunk.sha256_of_chunk) {
            return Err(corrupt(format!(
                "truncated or corrupt: SHA-256 {actual}, the chunk says {}",
                chunk.sha256_of_chunk
            )));
        }
        let path = self.chunk_path(&rec.update_id, chunk.index);
        if !path.exists() {
            if self.chunk_bytes_held(&rec.update_id) + bytes.len() as u64 > len {
                return Err(corrupt(format!("more data than the artifact's {len} bytes")));
            }
            // Whole or absent after a cut; a lost one is sent again (no folder sync).
            write_whole(&path, &bytes).map_err(UpdateError::io("writing chunk", &path))?;
        }
        if rec.total_chunks.is_none() {
            rec.total_chunks = Some(chunk.total);
            self.save(&mut rec)?;
        }
        crash_point("chunk");
        if self.chunk_count(&rec.update_id) == chunk.total {
            self.assemble(&mut rec)?;
        }
        Ok(rec)
    }

    fn reject(&self, rec: &mut UpdateRecord, r: Rejection) -> Result<UpdateError, UpdateError> {
        let dir = self.update_dir(&rec.update_id);
        for p in [dir.join("chunks"), dir.join("artifact"), dir.join("artifact.partial")] {
            remove_any(&p).map_err(UpdateError::io("removing", &p))?;
        }
        rec.phase = Phase::rejected(&r);
        self.save(rec)?;
        Self::audit(rec);
        Ok(r.into())
    }

    /// Concatenates the chunks, checks length and SHA-256, then stages.
    fn assemble(&self, rec: &mut UpdateRecord) -> Result<(), UpdateError> {
        let dir = self.update_dir(&rec.update_id);
        let total = rec.total_chunks.unwrap_or(0);
        let partial = dir.join("artifact.partial");
        let mut hasher = Sha256::new();
        let mut length = 0u64;
        {
            let mut out = fs::File::create(&partial).map_err(UpdateError::io("creating", &partial))?;
            let mut buf = Vec::new();
            for i in 0..total {
                let p = self.chunk_path(&rec.update_id, i);
                buf.clear();
                fs::File::open(&p)
                    .and_then(|mut f| f.read_to_end(&mut buf))
                    .map_err(UpdateError::io("reading chunk", &p))?;
                hasher.update(&buf);
                length += buf.len() as u64;
                out.write_all(&buf).map_err(UpdateError::io("writing", &partial))?;
            }
            out.sync_all().map_err(UpdateError::io("syncing", &partial))?;
        }
        if length != rec.length {
            return Err(self.reject(rec, Rejection::ArtifactLength { expected: rec.length, actual: length })?);
        }
        let actual = hex::encode(hasher.finalize());
        if actual != rec.sha256 {
            return Err(self.reject(rec, Rejection::ArtifactDigest { expected: rec.sha256.clone(), actual })?);
        }
        let artifact = dir.join("artifact");
        fs::rename(&partial, &artifact).map_err(UpdateError::io("renaming", &partial))?;
        fsync_dir(&dir).map_err(UpdateError::io("syncing", &dir))?;
        rec.phase = Phase::Verified;
        self.save(rec)?;
        Self::audit(rec);
        crash_point("verified");
        remove_any(&dir.join("chunks")).map_err(UpdateError::io("removing chunks of", &dir))?;
        self.place(rec)
    }

    fn inactive_slot(&self) -> BinarySlot {
        match fs::read_link(self.bin_dir().join("active")) {
            Ok(t) if t == Path::new("slot-a") => BinarySlot::SlotB,
            _ => BinarySlot::SlotA,
        }
    }

    /// Puts a verified artifact in its version directory (model, config) or
    /// the inactive slot (binary) and marks it `Staged`. Idempotent.
    fn place(&self, rec: &mut UpdateRecord) -> Result<(), UpdateError> {
        let udir = self.update_dir(&rec.update_id);
        let artifact = udir.join("artifact");
        let (parent, final_name) = match self.store_dir(rec.kind, &rec.name) {
            Some(d) => (d, rec.version_dir_name()),
            None => {
                let slot = self.inactive_slot();
                rec.slot = Some(slot);
                (self.bin_dir(), slot.dir_name().to_string())
            }
        };
        crate::durable::create_dir_all_synced(&parent).map_err(UpdateError::io("creating", &parent))?;
        let tmp = parent.join(format!(".{final_name}.tmp"));
        let fin = parent.join(&final_name);
        remove_any(&tmp).map_err(UpdateError::io("removing", &tmp))?;
        fs::create_dir(&tmp).map_err(UpdateError::io("creating", &tmp))?;
        let dest = tmp.join(&rec.file_name);
        if fs::hard_link(&artifact, &dest).is_err() {
            fs::copy(&artifact, &dest).map_err(UpdateError::io("copying the artifact to", &dest))?;
            fs::File::open(&dest).and_then(|f| f.sync_all()).map_err(UpdateError::io("syncing", &dest))?;
        }
        if rec.kind == Kind::Binary {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).map_err(UpdateError::io("chmod", &dest))?;
        }
        let envelope = fs::read(udir.join("envelope.json")).map_err(UpdateError::io("reading", &udir))?;
        let env: super::Envelope = serde_json::from_slice(&envelope)
            .map_err(|e| UpdateError::CorruptState { path: udir.join("envelope.json"), message: e.to_string() })?;
        use base64::Engine as _;
        let manifest = base64::engine::general_purpose::STANDARD
            .decode(env.manifest)
            .map_err(|e| UpdateError::CorruptState { path: udir.join("envelope.json"), message: e.to_string() })?;
        write_atomic(&tmp.join("manifest.json"), &manifest).map_err(UpdateError::io("writing", &tmp))?;
        write_atomic(&tmp.join("envelope.json"), &envelope).map_err(UpdateError::io("writing", &tmp))?;
        remove_any(&fin).map_err(UpdateError::io("removing", &fin))?;
        fs::rename(&tmp, &fin).map_err(UpdateError::io("renaming", &tmp))?;
        fsync_dir(&parent).map_err(UpdateError::io("syncing", &parent))?;
        rec.phase = Phase::Staged;
        self.save(rec)?;
        Self::audit(rec);
        crash_point("staged");
        remove_any(&artifact).map_err(UpdateError::io("removing", &artifact))?;
        Ok(())
    }

    /// Activates a staged update. Model and config: `previous` is pointed at
    /// the old version, `current` swapped to the new one (atomic rename), the
    /// installed versions written, then `Active`. Binary: writes
    /// `bin/pending.json` for the next start and stays `Activating` (see
    /// docs/updates.md for the systemd side).
    pub fn activate(&mut self, update_id: &str) -> Result<UpdateRecord, UpdateError> {
        let Some(mut rec) = self.record(update_id)? else {
            return Err(UpdateError::UnknownUpdate { update_id: update_id.into() });
        };
        match rec.phase {
            // A binary left `Activating` without its `pending.json` (a crash
            // between the two writes) is requested again.
            Phase::Staged | Phase::Activating => {}
            _ => {
                return Err(UpdateError::WrongPhase {
                    update_id: update_id.into(),
                    action: "activate",
                    phase: rec.phase.as_str().into(),
                });
            }
        }
        let key = installed_key(rec.kind, &rec.name);
        if rec.phase == Phase::Staged
            && let Some(e) = self.installed.get(&key)
            && rec.version <= e.highest
        {
            let r = Rejection::NotNewer {
                kind: rec.kind.to_string(),
                name: rec.name.clone(),
                offered: rec.version.to_string(),
                installed: e.highest.to_string(),
            };
            rec.phase = Phase::rejected(&r);
            self.save(&mut rec)?;
            Self::audit(&rec);
            return Err(r.into());
        }
        if rec.phase == Phase::Staged {
            rec.phase = Phase::Activating;
            self.save(&mut rec)?;
            Self::audit(&rec);
            crash_point("activating");
        }
        if rec.kind == Kind::Binary {
            let slot = rec.slot.unwrap_or(BinarySlot::SlotA);
            let pending =
                PendingBinary { update_id: rec.update_id.clone(), version: rec.version, slot, requested_ms: now_ms() };
            write_json(&self.bin_dir().join("pending.json"), &pending)?;
            let e = self.installed.entry(key).or_insert(InstalledEntry {
                active: None,
                highest: rec.version,
                previous: None,
            });
            e.highest = e.highest.max(rec.version);
            self.save_installed()?;
            crash_point("installed");
            return Ok(rec);
        }
        self.finish_activation(&mut rec)?;
        Ok(rec)
    }

    /// The idempotent tail of a model/config activation; also run by
    /// recovery for an `Activating` record.
    fn finish_activation(&mut self, rec: &mut UpdateRecord) -> Result<(), UpdateError> {
        // The record comes from disk on recovery: a binary record here means
        // a damaged state file, not a reason to panic.
        let dir = self.store_dir(rec.kind, &rec.name).ok_or_else(|| UpdateError::CorruptState {
            path: self.update_dir(&rec.update_id).join("state.json"),
            message: "a binary update in the model/config activation step".into(),
        })?;
        let (cur, prev) = (dir.join("current"), dir.join("previous"));
        let target = PathBuf::from(rec.version_dir_name());
        let old = fs::read_link(&cur).ok();
        if old.as_deref() != Some(target.as_path()) {
            if let Some(old) = &old {
                swap_symlink(&prev, old).map_err(UpdateError::io("linking", &prev))?;
                crash_point("previous-linked");
            }
            swap_symlink(&cur, &target).map_err(UpdateError::io("swapping", &cur))?;
            crash_point("swapped");
        }
        let previous = fs::read_link(&prev).ok().and_then(|t| version_of_dir(&t));
        let e = self.installed.entry(installed_key(rec.kind, &rec.name)).or_insert(InstalledEntry {
            active: None,
            highest: rec.version,
            previous: None,
        });
        e.active = Some(rec.version);
        e.highest = e.highest.max(rec.version);
        e.previous = previous;
        self.save_installed()?;
        crash_point("installed");
        rec.phase = Phase::Active;
        self.save(rec)?;
        Self::audit(rec);
        crash_point("active");
        self.settle_records(rec.kind, &rec.name)?;
        self.collect_old_versions(&dir, rec.version);
        Ok(())
    }

    /// Confirms a binary on trial (it stayed up for the health period): points
    /// `bin/active` at its slot (the truth from then on), records the
    /// versions, marks it `Active` (the binary it replaces `Superseded`),
    /// then removes `trial.json` and `pending.json`. Idempotent, so an
    /// interrupted confirmation is finished at the next start.
    pub fn confirm_binary(&mut self, update_id: &str) -> Result<UpdateRecord, UpdateError> {
        let Some(mut rec) = self.record(update_id)? else {
            return Err(UpdateError::UnknownUpdate { update_id: update_id.into() });
        };
        let slot = match (rec.kind, &rec.phase, rec.slot) {
            (Kind::Binary, Phase::Activating | Phase::Active, Some(slot)) => slot,
            _ => {
                return Err(UpdateError::WrongPhase {
                    update_id: update_id.into(),
                    action: "be confirmed as the running binary",
                    phase: rec.phase.as_str().into(),
                });
            }
        };
        let bin = self.bin_dir();
        swap_symlink(&bin.join("active"), Path::new(slot.dir_name())).map_err(UpdateError::io("swapping", &bin))?;
        crash_point("binary-swapped");
        let e = self.installed.entry(installed_key(rec.kind, &rec.name)).or_insert(InstalledEntry {
            active: None,
            highest: rec.version,
            previous: None,
        });
        if e.active != Some(rec.version) {
            e.previous = e.active;
            e.active = Some(rec.version);
        }
        e.highest = e.highest.max(rec.version);
        self.save_installed()?;
        if rec.phase != Phase::Active {
            rec.phase = Phase::Active;
            self.save(&mut rec)?;
            Self::audit(&rec);
        }
        for mut r in self.records()? {
            if r.kind == Kind::Binary && r.name == rec.name && r.update_id != rec.update_id && r.phase == Phase::Active
            {
                r.phase = Phase::Superseded;
                self.save(&mut r)?;
                Self::audit(&r);
            }
        }
        for f in ["trial.json", "pending.json"] {
            remove_any(&bin.join(f)).map_err(UpdateError::io("removing", bin.join(f)))?;
        }
        fsync_dir(&bin).map_err(UpdateError::io("syncing", &bin))?;
        Ok(rec)
    }

    /// Removes version directories older than `active` other than the
    /// rollback target. Best effort.
    fn collect_old_versions(&self, dir: &Path, active: Version) {
        let keep: Vec<PathBuf> =
            ["current", "previous"].iter().filter_map(|l| fs::read_link(dir.join(l)).ok()).collect();
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.filter_map(Result::ok) {
            let name = PathBuf::from(e.file_name());
            if keep.contains(&name) || e.file_type().map(|t| t.is_symlink()).unwrap_or(true) {
                continue;
            }
            if version_of_dir(&name).is_some_and(|v| v < active) {
                let _ = remove_any(&e.path());
            }
        }
    }

    /// Points `current` back at `previous` and marks the update that was
    /// active `RolledBack`. The rolled-back version stays refused (the
    /// highest accepted version does not go down).
    pub fn rollback(&mut self, kind: Kind, name: &str, reason: &str) -> Result<(), UpdateError> {
        let no_previous = || UpdateError::NoPrevious { kind: kind.to_string(), name: name.into() };
        let dir = self.store_dir(kind, name).ok_or_else(no_previous)?;
        let (cur, prev) = (dir.join("current"), dir.join("previous"));
        let from = fs::read_link(&cur).ok();
        let back = match fs::read_link(&prev) {
            Ok(back) => {
                swap_symlink(&cur, &back).map_err(UpdateError::io("swapping", &cur))?;
                Some(back)
            }
            // A config with nothing before it: the config file runs again.
            Err(_) if kind == Kind::Config && from.is_some() => {
                remove_any(&cur).map_err(UpdateError::io("removing", &cur))?;
                None
            }
            Err(_) => return Err(no_previous()),
        };
        crash_point("rolled-back");
        remove_any(&prev).map_err(UpdateError::io("removing", &prev))?;
        fsync_dir(&dir).map_err(UpdateError::io("syncing", &dir))?;
        if let Some(e) = self.installed.get_mut(&installed_key(kind, name)) {
            e.active = back.as_deref().and_then(version_of_dir);
            e.previous = None;
        }
        self.save_installed()?;
        if let Some(from) = from {
            for mut r in self.records()? {
                if r.kind == kind && r.name == name && Path::new(&r.version_dir_name()) == from {
                    r.phase = Phase::RolledBack { reason: reason.into() };
                    self.save(&mut r)?;
                    Self::audit(&r);
                }
            }
        }
        self.settle_records(kind, name)
    }

    /// Makes the finished records of `kind/name` agree with `current`: the
    /// one it points at is `Active`, an older formerly active one
    /// `Superseded`, a newer formerly active one `RolledBack` (a rollback
    /// cut short by a crash).
    fn settle_records(&self, kind: Kind, name: &str) -> Result<(), UpdateError> {
        let Some(dir) = self.store_dir(kind, name) else { return Ok(()) };
        let Ok(cur) = fs::read_link(dir.join("current")) else { return Ok(()) };
        let cur_version = version_of_dir(&cur);
        for mut r in self.records()? {
            if r.kind != kind || r.name != name {
                continue;
            }
            let is_current = Path::new(&r.version_dir_name()) == cur;
            let next = match &r.phase {
                Phase::Superseded | Phase::RolledBack { .. } if is_current => Phase::Active,
                Phase::Active if !is_current && cur_version.is_some_and(|c| c > r.version) => Phase::Superseded,
                Phase::Active if !is_current => {
                    Phase::RolledBack { reason: "rollback interrupted; completed at start".into() }
                }
                _ => continue,
            };
            r.phase = next;
            self.save(&mut r)?;
            Self::audit(&r);
        }
        Ok(())
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
