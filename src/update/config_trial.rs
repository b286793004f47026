//! The trial of a fleet-activated config: which config a start uses, and
//! when a fleet config counts as good.
//!
//! A config update can be valid and still stop the daemon from starting (a
//! model path that is not there, a broker it cannot reach at start, a bug
//! the new values trigger). So an activated config is on trial, like a
//! binary: `configs/sparkd/trial.json` is written (durably) before
//! `current` moves, and its state goes
//!
//! ```text
//! pending ──(a start uses it)──▶ started ──(READY + update.binary_health_secs)──▶ removed: confirmed
//!                                   │
//!     a start finds it `started`,   ▼
//!     or the config does not load ─▶ failed{reason} ──(update agent: store rollback, report)──▶ removed
//! ```
//!
//! A `failed` trial makes every start use the fallback (the `previous`
//! config, else the file) until the update agent has rolled the store back
//! and reported `rolled_back`, so a crash between the two steps cannot
//! bring the bad config back.
//!
//! **Architecture Invariant:** a start never uses a fleet config whose
//! trial is `started` or `failed`: the second start after a crash-looping
//! config runs the previous one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fsio::{fsync_dir, remove_any};
use super::store::{read_json, write_json};
use super::{UpdateError, UpdateManifest};
use crate::config::{Config, ConfigError};

/// The name of the daemon's config in config updates (`--kind config --name sparkd`).
pub const CONFIG_NAME: &str = "sparkd";

/// Why a trial that never confirmed is rolled back.
pub const NOT_HEALTHY: &str = "sparkd did not stay up for update.binary_health_secs after READY with this config \
     (it exited, crashed, hung or was killed): the previous config runs";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum TrialState {
    /// Activated; no start has used it yet.
    Pending,
    /// A start uses it; not confirmed yet.
    Started,
    /// Rolled back at start; the update agent finishes the rollback.
    Failed { reason: String },
}

/// `configs/sparkd/trial.json` (serde cannot deny unknown fields beside a
/// flattened enum; the state tag is checked by the enum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigTrial {
    pub update_id: String,
    /// The version folder `current` points at while this trial runs.
    pub version_dir: String,
    #[serde(flatten)]
    pub state: TrialState,
}

fn config_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("configs").join(CONFIG_NAME)
}

fn trial_path(state_dir: &Path) -> PathBuf {
    config_dir(state_dir).join("trial.json")
}

pub fn read(state_dir: &Path) -> Result<Option<ConfigTrial>, UpdateError> {
    read_json(&trial_path(state_dir))
}

fn write(state_dir: &Path, trial: &ConfigTrial) -> Result<(), UpdateError> {
    let dir = config_dir(state_dir);
    crate::sys::durable::create_dir_all_synced(&dir).map_err(UpdateError::io("creating", &dir))?;
    // Atomic and durable, the folder synced too (write_atomic).
    write_json(&trial_path(state_dir), trial)
}

/// Ends the trial (confirmed, or its rollback finished).
pub fn clear(state_dir: &Path) -> Result<(), UpdateError> {
    let (dir, path) = (config_dir(state_dir), trial_path(state_dir));
    remove_any(&path).map_err(UpdateError::io("removing", &path))?;
    fsync_dir(&dir).map_err(UpdateError::io("syncing", &dir))
}

/// Puts the config version `version_dir` of `update_id` on trial; called
/// before `current` moves to it.
pub fn begin(state_dir: &Path, update_id: &str, version_dir: &str) -> Result<(), UpdateError> {
    write(
        state_dir,
        &ConfigTrial { update_id: update_id.into(), version_dir: version_dir.into(), state: TrialState::Pending },
    )
}

/// A fleet config version folder (`current` or `previous`) and its file.
fn fleet_config_at(link: &Path) -> Option<(String, PathBuf)> {
    let target = std::fs::read_link(link).ok()?;
    let dir = link.parent()?.join(&target);
    let bytes = std::fs::read(dir.join("manifest.json")).ok()?;
    let m = serde_json::from_slice::<UpdateManifest>(&bytes).ok()?;
    Some((target.to_string_lossy().into_owned(), dir.join(&m.artifact.file_name)))
}

/// Which config a start uses, and why.
#[derive(Debug)]
pub struct StartChoice {
    pub config: Config,
    /// The fleet config file chosen; `None`: the file (or demo) config.
    pub fleet_path: Option<PathBuf>,
    /// The trial this start runs, to confirm after the health period.
    pub on_trial: Option<ConfigTrial>,
    /// A trial this start decided to roll back (and why).
    pub rolled_back: Option<ConfigTrial>,
}

/// Decides the config of a start without changing anything on disk (`sparkd
/// check-config --effective` uses it as is; [`start`] then records it).
pub fn choose(file_config: Config, state_dir: &Path) -> StartChoice {
    let dir = config_dir(state_dir);
    let marker = read(state_dir);
    let current = fleet_config_at(&dir.join("current"));
    let mut choice = StartChoice { config: file_config.clone(), fleet_path: None, on_trial: None, rolled_back: None };
    let Some((version_dir, path)) = current else { return choice };
    let id_of = |v: &str| v.rsplit_once('-').map(|(_, id)| id.to_string()).unwrap_or_default();
    let trial = match marker {
        // A marker for another version is stale (its activation never
        // swapped `current`, or a later update superseded it).
        Ok(t) => t.filter(|t| t.version_dir == version_dir),
        // A trial was running and its state is lost: the safe side is the
        // config before it.
        Err(e) => {
            let reason = format!("the config trial marker is unreadable ({})", crate::error_chain(&e));
            tracing::error!(reason = %reason, "config trial");
            Some(ConfigTrial {
                update_id: id_of(&version_dir),
                version_dir: version_dir.clone(),
                state: TrialState::Failed { reason },
            })
        }
    };
    let fail = |t: Option<&ConfigTrial>, reason: String| {
        t.map(|t| ConfigTrial { state: TrialState::Failed { reason: reason.clone() }, ..t.clone() })
    };
    match trial.as_ref().map(|t| &t.state) {
        Some(TrialState::Started) => choice.rolled_back = fail(trial.as_ref(), NOT_HEALTHY.into()),
        Some(TrialState::Failed { .. }) => choice.rolled_back = trial.clone(),
        Some(TrialState::Pending) | None => match load_fleet(&path, &file_config) {
            Ok(c) => {
                choice.config = c;
                choice.fleet_path = Some(path);
                choice.on_trial = trial.map(|t| ConfigTrial { state: TrialState::Started, ..t });
                return choice;
            }
            Err(e) => {
                let why = crate::error_chain(&e);
                tracing::error!(reason = %why, "the fleet-activated config cannot be used");
                // A confirmed config that no longer loads (say, a newer
                // sparkd checks more) is rolled back the same way.
                let t = trial.clone().or_else(|| {
                    Some(ConfigTrial {
                        update_id: id_of(&version_dir),
                        version_dir: version_dir.clone(),
                        state: TrialState::Pending,
                    })
                });
                choice.rolled_back = fail(t.as_ref(), format!("the config does not load: {why}"));
            }
        },
    }
    // The fallback: the previous fleet config when it loads, else the file.
    if let Some((_, prev)) = fleet_config_at(&dir.join("previous"))
        && let Ok(c) = load_fleet(&prev, &file_config)
    {
        choice.config = c;
        choice.fleet_path = Some(prev);
    }
    choice
}

/// Why a fleet-activated config cannot be used at start.
#[derive(Debug, thiserror::Error)]
enum FleetConfigError {
    #[error(transparent)]
    Load(#[from] ConfigError),
    #[error("it names another state_dir than the config file")]
    OtherStateDir,
}

fn load_fleet(path: &Path, file_config: &Config) -> Result<Config, FleetConfigError> {
    let c = Config::load(path)?;
    if c.state_dir != file_config.state_dir {
        return Err(FleetConfigError::OtherStateDir);
    }
    Ok(c)
}

/// [`choose`], then records the decision durably: a trial config is marked
/// `started`, a rolled-back one `failed` (the update agent finishes it).
pub fn start(file_config: Config, state_dir: &Path) -> StartChoice {
    let choice = choose(file_config, state_dir);
    for t in choice.on_trial.iter().chain(choice.rolled_back.iter()) {
        if let Err(e) = write(state_dir, t) {
            tracing::error!(error = %crate::error_chain(&e), "recording the config trial");
        }
    }
    if let Some(t) = &choice.rolled_back {
        tracing::warn!(target: "audit", update_id = %t.update_id, version = %t.version_dir,
            "fleet config rolled back at start: {}", reason_of(t));
    }
    if let Some(t) = &choice.on_trial {
        tracing::info!(update_id = %t.update_id, version = %t.version_dir,
            "running a fleet config on trial: confirmed after READY and update.binary_health_secs");
    }
    choice
}

fn reason_of(t: &ConfigTrial) -> &str {
    match &t.state {
        TrialState::Failed { reason } => reason,
        _ => "",
    }
}

/// After READY: confirms `trial` once the daemon has stayed up for
/// `health_secs` with it.
pub async fn confirm_after(state_dir: PathBuf, trial: ConfigTrial, health_secs: u64) {
    tokio::time::sleep(std::time::Duration::from_secs(health_secs)).await;
    match read(&state_dir) {
        Ok(Some(t)) if t == trial => match clear(&state_dir) {
            Ok(()) => tracing::info!(target: "audit", update_id = %trial.update_id, version = %trial.version_dir,
                "fleet config confirmed"),
            Err(e) => tracing::error!(error = %crate::error_chain(&e), "confirming the fleet config"),
        },
        _ => {}
    }
}

/// The failed trial the update agent has to finish, with its reason.
pub fn failed(state_dir: &Path) -> Option<(ConfigTrial, String)> {
    let t = read(state_dir).ok().flatten()?;
    let reason = reason_of(&t).to_string();
    matches!(t.state, TrialState::Failed { .. }).then_some((t, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state dir holding config versions `names` (the first is `current`,
    /// the second `previous`), each a config file with `body`.
    fn store(versions: &[(&str, &str)]) -> (tempfile::TempDir, Config) {
        let tmp = tempfile::tempdir().unwrap();
        let mut file_config = Config::default();
        file_config.state_dir = tmp.path().to_path_buf();
        let dir = config_dir(tmp.path());
        std::fs::create_dir_all(&dir).unwrap();
        for (i, (name, body)) in versions.iter().enumerate() {
            let vdir = dir.join(name);
            std::fs::create_dir_all(&vdir).unwrap();
            let state = format!("state_dir = {:?}\n{body}", tmp.path());
            std::fs::write(vdir.join("sparkd.toml"), state).unwrap();
            let manifest = serde_json::json!({
                "kind": "config", "name": "sparkd", "version": "1.0.0",
                "targets": {"devices": ["d"]},
                "artifact": {"file_name": "sparkd.toml", "length": 1, "sha256": "00"},
                "issued_at": 0, "expires_at": 1
            });
            std::fs::write(vdir.join("manifest.json"), manifest.to_string()).unwrap();
            let link = dir.join(if i == 0 { "current" } else { "previous" });
            std::os::unix::fs::symlink(name, link).unwrap();
        }
        (tmp, file_config)
    }

    #[test]
    fn a_pending_trial_is_started_then_rolled_back_by_the_next_start() {
        let (tmp, file) = store(&[("2.0.0-bbbbbbbb", "group = \"new\"\n"), ("1.0.0-aaaaaaaa", "group = \"old\"\n")]);
        begin(tmp.path(), "b".repeat(32).as_str(), "2.0.0-bbbbbbbb").unwrap();
        let first = start(file.clone(), tmp.path());
        assert_eq!(first.config.group, "new");
        assert_eq!(read(tmp.path()).unwrap().unwrap().state, TrialState::Started);
        // That start never confirmed: the next one runs the previous config.
        let second = start(file.clone(), tmp.path());
        assert_eq!(second.config.group, "old");
        assert!(second.on_trial.is_none());
        let (t, reason) = failed(tmp.path()).unwrap();
        assert_eq!(t.version_dir, "2.0.0-bbbbbbbb");
        assert_eq!(reason, NOT_HEALTHY);
        // And so does every start until the agent has finished the rollback.
        assert_eq!(start(file, tmp.path()).config.group, "old");
    }

    #[test]
    fn a_confirmed_config_is_used_without_a_trial() {
        let (tmp, file) = store(&[("2.0.0-bbbbbbbb", "group = \"new\"\n")]);
        let c = start(file, tmp.path());
        assert_eq!(c.config.group, "new");
        assert!(c.on_trial.is_none() && c.rolled_back.is_none());
    }

    #[test]
    fn a_fleet_config_that_does_not_load_falls_back_to_the_file() {
        let (tmp, mut file) = store(&[("2.0.0-bbbbbbbb", "[hailo]\nreprobe_max_secs = 1e300\n")]);
        file.group = "file".into();
        let c = start(file, tmp.path());
        assert_eq!(c.config.group, "file");
        assert!(c.fleet_path.is_none());
        let (t, reason) = failed(tmp.path()).unwrap();
        assert_eq!(t.update_id, "bbbbbbbb");
        assert!(reason.contains("reprobe_max_secs"), "{reason}");
    }

    #[test]
    fn choose_changes_nothing_on_disk() {
        let (tmp, file) = store(&[("2.0.0-bbbbbbbb", "")]);
        begin(tmp.path(), "b".repeat(32).as_str(), "2.0.0-bbbbbbbb").unwrap();
        let _ = choose(file, tmp.path());
        assert_eq!(read(tmp.path()).unwrap().unwrap().state, TrialState::Pending);
    }

    #[test]
    fn an_unreadable_marker_rolls_back_to_the_previous_config() {
        let (tmp, file) = store(&[("2.0.0-bbbbbbbb", "group = \"new\"\n"), ("1.0.0-aaaaaaaa", "group = \"old\"\n")]);
        std::fs::write(trial_path(tmp.path()), b"{ half a marker").unwrap();
        let c = start(file, tmp.path());
        assert_eq!(c.config.group, "old");
        let (t, reason) = failed(tmp.path()).unwrap();
        assert_eq!(t.version_dir, "2.0.0-bbbbbbbb");
        assert!(reason.contains("unreadable"), "{reason}");
    }

    #[test]
    fn a_marker_for_another_version_is_ignored() {
        let (tmp, file) = store(&[("2.0.0-bbbbbbbb", "group = \"new\"\n")]);
        begin(tmp.path(), "c".repeat(32).as_str(), "3.0.0-cccccccc").unwrap();
        let c = start(file, tmp.path());
        assert_eq!(c.config.group, "new");
        assert!(c.on_trial.is_none());
    }
}
