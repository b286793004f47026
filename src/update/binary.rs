//! Binary A/B updates at start: which `sparkd` runs, the trial of a newly
//! staged binary, and its rollback.
//!
//! The packaged `/usr/bin/sparkd run` stays the unit's entry point. Before
//! anything else it calls [`prepare_start`], which reads the persisted
//! binary state under `<state>/bin` and decides:
//!
//! ```text
//! trial.json, bin/active = its slot  → confirmed, finish: exec the slot
//! trial.json, bin/active ≠ its slot  → the trial died before it was confirmed:
//!                                      record RolledBack, report.json, remove
//!                                      trial.json + pending.json; then below
//! pending.json (record Activating)   → write trial.json (fsync), exec the slot
//! bin/active, slot newer than us     → exec the slot
//! otherwise                          → run this (the packaged) binary
//! ```
//!
//! A slot binary is started with [`SLOT_ENV`] set, so it does not run this
//! logic again. The agent of a binary on trial confirms it
//! ([`super::Updater::confirm_binary`]) after READY plus
//! `update.binary_health_secs`; only then does `bin/active` move. So a crash,
//! a hang killed by systemd, or a SIGKILL at any point before that leaves
//! `bin/active` on the old binary, and the next start rolls back.
//!
//! **Architecture Invariant:** `bin/active` only ever names a slot whose
//! binary reached READY and stayed up for the health period.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::fsio::{fsync_dir, remove_any};
use super::store::{PendingBinary, read_json, read_record, set_record_phase, write_json};
use super::{BinarySlot, Phase, UpdateError, UpdateManifest, Version};
use crate::record::now_ms;

/// Set in the environment of a slot binary `exec`ed by the launcher
/// (`slot-a` or `slot-b`): it must not launch again.
pub const SLOT_ENV: &str = "SPARKD_SLOT";
/// `sparkd run` exits with this after staging a binary, so the service
/// manager starts it again (EX_TEMPFAIL; `RestartForceExitStatus=75`).
pub const RESTART_EXIT_CODE: u8 = 75;
/// The only binary name a binary update may carry.
pub const BINARY_NAME: &str = "sparkd";

/// `bin/trial.json`: the pending binary was started and is not confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trial {
    pub update_id: String,
    pub version: Version,
    pub slot: BinarySlot,
    pub started_ms: u64,
}

/// `bin/report.json`: an outcome decided before the agent ran (a rollback
/// by the launcher), for the agent to publish on `update/state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Outcome {
    update_id: String,
}

/// What [`prepare_start`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Run this process (the packaged binary).
    Packaged,
    /// `exec` `path` with [`SLOT_ENV`] = `slot`; `trial`: a new binary on trial.
    Exec { slot: BinarySlot, path: PathBuf, trial: bool, update_id: Option<String> },
}

fn bin_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("bin")
}

fn slot_of(name: &Path) -> Option<BinarySlot> {
    match name.to_str()? {
        "slot-a" => Some(BinarySlot::SlotA),
        "slot-b" => Some(BinarySlot::SlotB),
        _ => None,
    }
}

/// The slot `bin/active` points at.
pub fn active_slot(state_dir: &Path) -> Option<BinarySlot> {
    slot_of(&std::fs::read_link(bin_dir(state_dir).join("active")).ok()?)
}

pub fn read_trial(state_dir: &Path) -> Result<Option<Trial>, UpdateError> {
    read_json(&bin_dir(state_dir).join("trial.json"))
}

pub(super) fn read_pending(state_dir: &Path) -> Result<Option<PendingBinary>, UpdateError> {
    read_json(&bin_dir(state_dir).join("pending.json"))
}

/// A binary update waits for its restart or is on trial.
pub fn binary_in_flight(state_dir: &Path) -> bool {
    let bin = bin_dir(state_dir);
    bin.join("pending.json").exists() || bin.join("trial.json").exists()
}

/// The signed manifest kept in a slot (version and file name).
fn slot_manifest(state_dir: &Path, slot: BinarySlot) -> Option<UpdateManifest> {
    let bytes = std::fs::read(bin_dir(state_dir).join(slot.dir_name()).join("manifest.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The packaged binary's version (`CARGO_PKG_VERSION`).
pub fn packaged_version() -> Version {
    env!("CARGO_PKG_VERSION").parse().unwrap_or(Version { major: 0, minor: 0, patch: 0 })
}

/// The version this process runs as: the slot's signed version when it was
/// started from a slot, else the packaged one.
pub fn running_version(state_dir: &Path) -> Version {
    let slot = std::env::var_os(SLOT_ENV).and_then(|s| slot_of(Path::new(&s)));
    slot.and_then(|s| slot_manifest(state_dir, s)).map(|m| m.version).unwrap_or_else(packaged_version)
}

/// The slot this process was started from, when it was.
pub fn running_slot() -> Option<BinarySlot> {
    std::env::var_os(SLOT_ENV).and_then(|s| slot_of(Path::new(&s)))
}

/// Decides which binary runs (see the module documentation). Every state
/// change is durable before the decision is returned.
pub fn prepare_start(state_dir: &Path) -> Result<Boot, UpdateError> {
    let bin = bin_dir(state_dir);
    if !bin.exists() {
        return Ok(Boot::Packaged);
    }
    let active = active_slot(state_dir);
    if let Some(t) = read_trial(state_dir)? {
        if active == Some(t.slot) {
            // Confirmed, but the confirmation was cut short: the slot's
            // agent finishes it.
            return Ok(exec_active(state_dir, t.slot, false).unwrap_or(Boot::Packaged));
        }
        roll_back(state_dir, &t.update_id, NOT_HEALTHY)?;
    }
    if let Some(p) = read_pending(state_dir)? {
        let rec = read_record(state_dir, &p.update_id)?;
        match rec {
            Some(rec) if rec.phase == Phase::Activating && rec.slot == Some(p.slot) => {
                let path = bin.join(p.slot.dir_name()).join(&rec.file_name);
                let trial =
                    Trial { update_id: p.update_id.clone(), version: p.version, slot: p.slot, started_ms: now_ms() };
                write_json(&bin.join("trial.json"), &trial)?;
                tracing::info!(target: "audit", update_id = %p.update_id, version = %p.version,
                    slot = p.slot.dir_name(), "starting the new sparkd binary on trial");
                return Ok(Boot::Exec { slot: p.slot, path, trial: true, update_id: Some(p.update_id) });
            }
            _ => {
                // Its update ended (rolled back, superseded): nothing to try.
                remove_any(&bin.join("pending.json")).map_err(UpdateError::io("removing", bin.join("pending.json")))?;
            }
        }
    }
    Ok(active.and_then(|slot| exec_active(state_dir, slot, true)).unwrap_or(Boot::Packaged))
}

/// Why a trial that never confirmed is rolled back.
const NOT_HEALTHY: &str = "the new binary did not report healthy: it exited, crashed, hung or was killed \
     before it had been up for update.binary_health_secs after READY; the previous binary runs";

/// The confirmed slot, when its binary is there and (`newer_only`) newer
/// than the packaged one: an upgraded package wins over an older slot.
fn exec_active(state_dir: &Path, slot: BinarySlot, newer_only: bool) -> Option<Boot> {
    let m = slot_manifest(state_dir, slot)?;
    if newer_only && m.version <= packaged_version() {
        return None;
    }
    let path = bin_dir(state_dir).join(slot.dir_name()).join(&m.artifact.file_name);
    path.exists().then_some(Boot::Exec { slot, path, trial: false, update_id: None })
}

/// Ends a binary trial as `RolledBack`: `bin/active` was never moved, so the
/// previous binary is what runs. Order (each step durable, the whole
/// idempotent): record, `report.json`, then `trial.json` and `pending.json`.
pub fn roll_back(state_dir: &Path, update_id: &str, reason: &str) -> Result<(), UpdateError> {
    let bin = bin_dir(state_dir);
    match read_record(state_dir, update_id)? {
        Some(rec) if rec.phase == Phase::Activating => {
            set_record_phase(state_dir, update_id, Phase::RolledBack { reason: reason.into() })?;
            write_json(&bin.join("report.json"), &Outcome { update_id: update_id.into() })?;
        }
        _ => {}
    }
    for f in ["trial.json", "pending.json"] {
        remove_any(&bin.join(f)).map_err(UpdateError::io("removing", bin.join(f)))?;
    }
    fsync_dir(&bin).map_err(UpdateError::io("syncing", &bin))?;
    tracing::warn!(update_id, reason, "binary update rolled back");
    Ok(())
}

/// The update whose outcome the launcher decided and the agent has not
/// reported yet; the marker is removed.
pub fn take_outcome(state_dir: &Path) -> Option<String> {
    let path = bin_dir(state_dir).join("report.json");
    let o = read_json::<Outcome>(&path).ok().flatten();
    let _ = remove_any(&path);
    o.map(|o| o.update_id)
}

/// `exec`s `path` with this process's arguments and [`SLOT_ENV`]; returns
/// only when the exec failed.
pub fn exec(path: &Path, slot: BinarySlot) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| path.as_os_str().to_os_string());
    std::process::Command::new(path).arg0(argv0).args(args).env(SLOT_ENV, slot.dir_name()).exec()
}

/// Beyond the health period, how long the agent may take to confirm.
pub const CONFIRM_GRACE_SECS: u64 = 30;

/// On trial: if this binary is still unconfirmed `health_secs` +
/// [`CONFIRM_GRACE_SECS`] after READY (its update agent did not start, or
/// the confirmation keeps failing), the daemon restarts so the launcher
/// rolls it back. Returns at once when this binary is not on trial.
pub async fn trial_deadline(state_dir: PathBuf, health_secs: u64) {
    let on_trial = |slot| matches!(read_trial(&state_dir), Ok(Some(t)) if t.slot == slot);
    if let Some(slot) = running_slot()
        && on_trial(slot)
    {
        tokio::time::sleep(std::time::Duration::from_secs(health_secs.saturating_add(CONFIRM_GRACE_SECS))).await;
        if on_trial(slot) && active_slot(&state_dir) != Some(slot) {
            tracing::error!(slot = slot.dir_name(), "this binary was not confirmed in time; restarting to roll back");
            request_restart();
        }
    }
}

fn restart_notify() -> &'static tokio::sync::Notify {
    static N: OnceLock<tokio::sync::Notify> = OnceLock::new();
    N.get_or_init(tokio::sync::Notify::new)
}

static RESTART: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks the daemon to stop as on SIGTERM and exit with
/// [`RESTART_EXIT_CODE`] (a staged binary waits for that restart).
pub fn request_restart() {
    RESTART.store(true, std::sync::atomic::Ordering::SeqCst);
    // `notify_one` keeps a permit when nobody waits yet: never lost.
    restart_notify().notify_one();
}

/// Whether [`request_restart`] was called (the exit status to use).
pub fn restart_requested() -> bool {
    RESTART.load(std::sync::atomic::Ordering::SeqCst)
}

/// Resolves when [`request_restart`] is called (the daemon's stop signal).
pub async fn restart_wanted() {
    restart_notify().notified().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec_json(id: &str, phase: &str) -> String {
        format!(
            r#"{{"update_id":"{id}","kind":"binary","name":"sparkd","version":"9.9.9","file_name":"sparkd",
            "length":1,"sha256":"00","phase":{{"state":"{phase}"}},"slot":"slot-a","updated_ms":1}}"#
        )
    }

    fn setup(phase: &str) -> (tempfile::TempDir, String) {
        let d = tempfile::tempdir().unwrap();
        let id = "0123456789abcdef0123456789abcdef".to_string();
        let u = d.path().join("updates").join(&id);
        std::fs::create_dir_all(&u).unwrap();
        std::fs::write(u.join("state.json"), rec_json(&id, phase)).unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir_all(bin.join("slot-a")).unwrap();
        std::fs::write(bin.join("slot-a/sparkd"), "#!/bin/sh\n").unwrap();
        std::fs::write(
            bin.join("pending.json"),
            format!(r#"{{"update_id":"{id}","version":"9.9.9","slot":"slot-a","requested_ms":1}}"#),
        )
        .unwrap();
        (d, id)
    }

    #[test]
    fn pending_binary_is_tried_once_then_rolled_back_if_it_never_confirmed() {
        let (d, id) = setup("activating");
        let first = prepare_start(d.path()).unwrap();
        assert!(matches!(first, Boot::Exec { trial: true, slot: BinarySlot::SlotA, .. }), "{first:?}");
        assert!(read_trial(d.path()).unwrap().is_some());
        // The trial died before confirming: the next start rolls back.
        assert_eq!(prepare_start(d.path()).unwrap(), Boot::Packaged);
        let rec = read_record(d.path(), &id).unwrap().unwrap();
        assert_eq!(rec.phase.as_str(), "rolled_back");
        assert!(!binary_in_flight(d.path()));
        assert_eq!(take_outcome(d.path()).as_deref(), Some(id.as_str()));
        assert_eq!(take_outcome(d.path()), None);
        assert_eq!(prepare_start(d.path()).unwrap(), Boot::Packaged);
    }

    #[test]
    fn a_trial_whose_slot_is_already_active_is_not_rolled_back() {
        let (d, id) = setup("activating");
        std::fs::write(
            d.path().join("bin/slot-a/manifest.json"),
            r#"{"kind":"binary","name":"sparkd","version":"9.9.9","targets":{"group":"g"},
               "artifact":{"file_name":"sparkd","length":1,"sha256":"00"},"issued_at":1,"expires_at":2}"#,
        )
        .unwrap();
        assert!(matches!(prepare_start(d.path()).unwrap(), Boot::Exec { trial: true, .. }));
        std::os::unix::fs::symlink("slot-a", d.path().join("bin/active")).unwrap();
        let again = prepare_start(d.path()).unwrap();
        assert!(matches!(again, Boot::Exec { trial: false, slot: BinarySlot::SlotA, .. }), "{again:?}");
        assert_eq!(read_record(d.path(), &id).unwrap().unwrap().phase.as_str(), "activating");
    }

    #[test]
    fn a_stale_pending_marker_is_dropped() {
        let (d, _) = setup("rolled_back");
        let _ = std::fs::write(
            d.path().join("updates/0123456789abcdef0123456789abcdef/state.json"),
            rec_json("0123456789abcdef0123456789abcdef", "superseded"),
        );
        assert_eq!(prepare_start(d.path()).unwrap(), Boot::Packaged);
        assert!(!binary_in_flight(d.path()));
    }
}
