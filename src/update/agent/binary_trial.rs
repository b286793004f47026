//! Binary updates: staged into the inactive slot, then the daemon restarts
//! into it; a new binary on trial is confirmed after READY plus
//! `update.binary_health_secs`, and the launcher's rollbacks are reported.

use std::time::Duration;

use super::{Agent, Request};
use crate::update::{Kind, Phase, UpdateError, UpdateRecord, binary};

impl Agent {
    /// Binary: `pending.json` for the launcher, then a restart to try it.
    pub(super) fn activate_binary(&mut self, rec: UpdateRecord) {
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
    pub(super) fn resume_binary(&mut self) {
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

    /// READY was sent: a binary on trial is confirmed if it is still up
    /// after `update.binary_health_secs`.
    pub(super) fn start_health_period(&mut self) {
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

    pub(super) fn confirm_binary(&mut self, update_id: &str) {
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
}
