//! Config changes: a fleet config update (checked like `sparkd
//! check-config`, then put on trial) and `sparkctl config reload` (not an
//! update: the file on disk, re-read) share the same check and the same live
//! application of `[update]` keys; other changed keys are reported as
//! needing a restart.

use std::path::Path;

use super::{Agent, AgentFailure, ConfigChange, Failed};
use crate::config::Config;
use crate::update::config_trial::{self, CONFIG_NAME};
use crate::update::{Kind, Rejection, UpdateError, UpdateRecord, Updater, UpdaterOptions};

impl Agent {
    /// At start: finish the rollback of a config trial the start refused
    /// ([`config_trial::start`]) and report it.
    pub(super) fn resume_config(&mut self) {
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

    /// Config: the same checks as `sparkd check-config`, then activate and
    /// apply what can change live; the rest is reported as needing a restart.
    pub(super) fn activate_config(&mut self, rec: UpdateRecord) {
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

    pub(super) fn check_config(&self, rec: &UpdateRecord) -> Result<Config, Failed> {
        let bad = |detail: String| Failed::Reject(Rejection::InvalidConfig { detail });
        let dir = self.updater.staged_dir(rec).ok_or_else(|| bad("no store folder".into()))?;
        let path = dir.join(&rec.file_name);
        let new = Config::load(&path).map_err(|e| bad(crate::error_chain(&e)))?;
        self.check_reload(&new).map_err(|e| bad(crate::error_chain(&e)))?;
        Ok(new)
    }

    /// What a new config may not change while running, and whether its
    /// update keys load.
    pub(super) fn check_reload(&self, new: &Config) -> Result<(), AgentFailure> {
        if new.state_dir != self.running.state_dir {
            return Err(AgentFailure::StateDirChanged);
        }
        UpdaterOptions::from_config(new, &self.deps.device_id, &self.deps.state_dir)?;
        Ok(())
    }

    /// Applies `new` where it can live (today: `[update]`, the update
    /// agent's own settings); every other changed key needs a restart.
    pub(super) fn apply_config(&mut self, new: Config) -> Result<ConfigChange, AgentFailure> {
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
        if let Some(tap) = &self.deps.shadow {
            tap.set_every_n(new.update.shadow_every_n_frames);
        }
        self.running = new;
        Ok(ConfigChange { applied, restart_required })
    }

    /// `sparkctl config reload`: the config file again, through the same checks.
    pub(super) fn reload_config(&mut self) -> Result<ConfigChange, AgentFailure> {
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
}
