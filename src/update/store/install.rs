//! The model, config and binary stores: a verified artifact is placed in its
//! version directory or the inactive binary slot (`Staged`), activation
//! swaps `current`/`previous` (or writes the binary's pending marker), and
//! rollback swaps them back. Old versions beyond `previous` are collected.

use std::fs;
use std::path::{Path, PathBuf};

use super::{
    BinarySlot, PendingBinary, Phase, SELECTED, SELECTED_PREVIOUS, UpdateRecord, Updater, version_of_dir, write_json,
};
use crate::record::now_ms;
use crate::update::fsio::{crash_point, fsync_dir, remove_any, swap_symlink, write_atomic};
use crate::update::manifest::{InstalledEntry, Kind, Version, installed_key};
use crate::update::{Rejection, UpdateError};

impl Updater {
    pub(super) fn inactive_slot(&self) -> BinarySlot {
        match fs::read_link(self.bin_dir().join("active")) {
            Ok(t) if t == Path::new("slot-a") => BinarySlot::SlotB,
            _ => BinarySlot::SlotA,
        }
    }

    /// Puts a verified artifact in its version directory (model, config) or
    /// the inactive slot (binary) and marks it `Staged`. Idempotent.
    pub(super) fn place(&self, rec: &mut UpdateRecord) -> Result<(), UpdateError> {
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
        crate::sys::durable::create_dir_all_synced(&parent).map_err(UpdateError::io("creating", &parent))?;
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
        let env: crate::update::Envelope = serde_json::from_slice(&envelope)
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
    pub(super) fn finish_activation(&mut self, rec: &mut UpdateRecord) -> Result<(), UpdateError> {
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
        if rec.kind == Kind::Model {
            self.select_model(&rec.name)?;
        }
        rec.phase = Phase::Active;
        self.save(rec)?;
        Self::audit(rec);
        crash_point("active");
        self.settle_records(rec.kind, &rec.name)?;
        self.collect_old_versions(&dir, rec.version);
        Ok(())
    }

    /// Makes `name` the model the device runs (`models/.selected`), keeping
    /// the one it replaces in `models/.selected-previous` for a rollback.
    /// Idempotent: a second call with the same name changes nothing.
    fn select_model(&self, name: &str) -> Result<(), UpdateError> {
        let models = self.opts.state_dir.join("models");
        let (sel, sel_prev) = (models.join(SELECTED), models.join(SELECTED_PREVIOUS));
        let old = fs::read_link(&sel).ok();
        if old.as_deref() == Some(Path::new(name)) {
            return Ok(());
        }
        match &old {
            Some(old) => swap_symlink(&sel_prev, old).map_err(UpdateError::io("linking", &sel_prev))?,
            None => remove_any(&sel_prev).map_err(UpdateError::io("removing", &sel_prev))?,
        }
        crash_point("previous-selected");
        swap_symlink(&sel, Path::new(name)).map_err(UpdateError::io("selecting", &sel))?;
        crash_point("selected");
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
    pub(super) fn collect_old_versions(&self, dir: &Path, active: Version) {
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
            // The first version of a model the device switched to: the
            // model it ran before runs again.
            Err(_) if kind == Kind::Model && from.is_some() && self.unselect_model(name)? => {
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

    /// Puts back the model selected before `name`, if `name` is selected
    /// and there was one; `false` when there is nothing to go back to.
    fn unselect_model(&self, name: &str) -> Result<bool, UpdateError> {
        let models = self.opts.state_dir.join("models");
        let (sel, sel_prev) = (models.join(SELECTED), models.join(SELECTED_PREVIOUS));
        if fs::read_link(&sel).ok().as_deref() != Some(Path::new(name)) {
            return Ok(false);
        }
        let Ok(back) = fs::read_link(&sel_prev) else { return Ok(false) };
        swap_symlink(&sel, &back).map_err(UpdateError::io("selecting", &sel))?;
        crash_point("unselected");
        remove_any(&sel_prev).map_err(UpdateError::io("removing", &sel_prev))?;
        Ok(true)
    }

    /// Makes the finished records of `kind/name` agree with `current`: the
    /// one it points at is `Active`, an older formerly active one
    /// `Superseded`, a newer formerly active one `RolledBack` (a rollback
    /// cut short by a crash).
    pub(super) fn settle_records(&self, kind: Kind, name: &str) -> Result<(), UpdateError> {
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
}
