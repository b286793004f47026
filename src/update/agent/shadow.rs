//! Shadow evaluation of a model update (`spark-fleet sign --shadow`): the
//! staged pack is loaded on the CPU (ONNX Runtime, one intra-op thread)
//! and handed to the inference stage's [`ShadowTap`], which runs it beside
//! the live model; this agent reports the comparison on `update/state`
//! every `update.shadow_report_secs`.
//!
//! Owns the shadow's lifecycle: start (replacing any running shadow), end
//! (a real model push, a new shadow), and the record's phases `shadow`,
//! `shadow_failed`, `shadow_ended`. A shadow is never activated: `current`,
//! `installed.json` and the highest accepted version do not move, so the
//! same version can be pushed for real afterwards.
//!
//! [`ShadowTap`]: crate::inference::shadow_tap::ShadowTap

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Agent;
use crate::inference::engine::Engine;
use crate::inference::engine::onnx::OnnxEngine;
use crate::inference::shadow_tap::StartError;
use crate::record::now_ms;
use crate::update::{Phase, ShadowFigures, ShadowReport, UpdateRecord};

/// How often the agent checks whether a shadow report is due.
pub(super) const TICK: Duration = Duration::from_millis(250);

/// The shadow the agent runs.
pub(super) struct ShadowRun {
    rec: UpdateRecord,
    last_report: Instant,
}

/// Why a shadow model did not start. Its `code` is the report's.
#[derive(Debug, thiserror::Error)]
pub(super) enum ShadowError {
    #[error("this daemon runs no camera, so there is no live model to compare with")]
    NoCamera,
    #[error("the pack: {0}")]
    BadPack(String),
    #[error("ONNX Runtime does not load the model: {0}")]
    EngineLoad(String),
    #[error("the model does not fit its manifest: {0}")]
    ModelMismatch(String),
    #[error("starting the shadow thread")]
    Thread(#[source] std::io::Error),
    #[error("the shadow thread ended while loading the model")]
    Died,
}

impl ShadowError {
    pub(super) fn code(&self) -> &'static str {
        match self {
            ShadowError::NoCamera => "no_camera",
            ShadowError::BadPack(_) => "bad_pack",
            ShadowError::EngineLoad(_) => "engine_load",
            ShadowError::ModelMismatch(_) => "model_mismatch",
            ShadowError::Thread(_) | ShadowError::Died => "thread",
        }
    }
}

impl Agent {
    /// Whether the signed manifest of `rec` asks for a shadow evaluation.
    pub(super) fn is_shadow(&self, rec: &UpdateRecord) -> bool {
        self.updater.manifest_of(&rec.update_id).is_ok_and(|m| m.shadow)
    }

    /// A staged shadow pack: loaded and started beside the live model, or
    /// reported `shadow_failed` (the live model untouched either way).
    pub(super) fn start_shadow(&mut self, rec: UpdateRecord) {
        let reason = format!("replaced by the shadow of {} {} ({})", rec.name, rec.version, rec.update_id);
        self.end_shadow(&reason);
        if let Err(e) = self.load_shadow(&rec) {
            let reason = crate::error_chain(&e);
            tracing::warn!(update_id = %rec.update_id, code = e.code(), %reason, "shadow model not started; live model untouched");
            let phase = Phase::ShadowFailed { code: e.code().into(), reason };
            match self.updater.abandon(&rec.update_id, phase) {
                Ok(r) => self.report(&r),
                Err(e) => self.io_failure(&rec.update_id, &e),
            }
            return;
        }
        match crate::update::store::set_record_phase(&self.deps.state_dir, &rec.update_id, Phase::Shadow) {
            Ok(Some(r)) => {
                tracing::info!(update_id = %r.update_id, name = %r.name, version = %r.version, "shadow evaluation started");
                self.report(&r);
                self.shadow = Some(ShadowRun { rec: r, last_report: Instant::now() });
            }
            Ok(None) => {}
            Err(e) => {
                if let Some(tap) = &self.deps.shadow {
                    tap.stop();
                }
                self.io_failure(&rec.update_id, &e);
            }
        }
    }

    fn load_shadow(&self, rec: &UpdateRecord) -> Result<(), ShadowError> {
        let tap = self.deps.shadow.as_ref().ok_or(ShadowError::NoCamera)?;
        let (model, onnx) = self.staged_model(rec).map_err(|p| ShadowError::BadPack(p.0))?;
        tap.set_every_n(self.running.update.shadow_every_n_frames);
        let model = Arc::new(model);
        let lib = self.running.model.onnxruntime_library.clone();
        let m = Arc::clone(&model);
        // Built on the shadow's own thread, at its lower priority. One
        // intra-op thread: the shadow samples, it must not take the live
        // model's cores.
        let build = move || -> Result<Box<dyn Engine>, ShadowError> {
            let mut engine = OnnxEngine::new(&lib, &onnx, &m.manifest.input.name, 1)
                .map_err(|e| ShadowError::EngineLoad(crate::error_chain(&e)))?;
            drop(onnx);
            crate::inference::pipeline::check_fit(&mut engine, &m)
                .map_err(|e| ShadowError::ModelMismatch(e.to_string()))?;
            Ok(Box::new(engine))
        };
        tap.start(model, build).map_err(|e| match e {
            StartError::Build(e) => e,
            StartError::Thread(e) => ShadowError::Thread(e),
            StartError::Died => ShadowError::Died,
        })
    }

    /// Ends the running shadow, if any: a last figures report, then its
    /// record ends `shadow_ended` (files removed).
    pub(super) fn end_shadow(&mut self, reason: &str) {
        let Some(run) = self.shadow.take() else { return };
        if let Some(stats) = self.deps.shadow.as_ref().and_then(|t| t.stop()) {
            self.send_shadow(&run.rec, stats);
        }
        tracing::info!(update_id = %run.rec.update_id, reason, "shadow evaluation ended");
        match self.updater.abandon(&run.rec.update_id, Phase::ShadowEnded { reason: reason.into() }) {
            Ok(r) => self.report(&r),
            Err(e) => self.io_failure(&run.rec.update_id, &e),
        }
    }

    /// At start: the newest record left in `shadow` runs again; older ones end.
    pub(super) fn resume_shadow(&mut self) {
        let mut shadows: Vec<UpdateRecord> =
            self.updater.records().unwrap_or_default().into_iter().filter(|r| r.phase == Phase::Shadow).collect();
        let Some(newest) = shadows.pop() else { return };
        for old in shadows {
            let why = "a newer shadow was running when the daemon stopped".to_string();
            if let Ok(r) = self.updater.abandon(&old.update_id, Phase::ShadowEnded { reason: why }) {
                self.report(&r);
            }
        }
        tracing::info!(update_id = %newest.update_id, "resuming a shadow evaluation after a restart");
        self.start_shadow(newest);
    }

    /// A tick of the report timer: the figures when they are due.
    pub(super) fn shadow_tick(&mut self) {
        let every = Duration::from_secs(self.running.update.shadow_report_secs.max(1));
        let Some(run) = self.shadow.as_mut() else { return };
        if run.last_report.elapsed() < every {
            return;
        }
        run.last_report = Instant::now();
        let rec = run.rec.clone();
        if let Some(stats) = self.deps.shadow.as_ref().and_then(|t| t.stats()) {
            self.send_shadow(&rec, stats);
        }
    }

    fn send_shadow(&self, rec: &UpdateRecord, s: crate::inference::shadow_tap::ShadowStats) {
        let report = ShadowReport {
            device_id: self.deps.device_id.clone(),
            group: self.running.group.clone(),
            update_id: rec.update_id.clone(),
            kind: rec.kind,
            name: rec.name.clone(),
            version: rec.version.to_string(),
            phase: Phase::Shadow,
            shadow: ShadowFigures {
                live_model: self.deps.shared.engine().model,
                figures: s.figures,
                latency_ms_mean: s.latency_ms_mean,
                latency_ms_max: s.latency_ms_max,
                errors: s.errors,
                last_error: s.last_error,
                dropped_busy: s.dropped_busy,
                every_n_frames: self.running.update.shadow_every_n_frames,
                running_secs: s.running_secs,
            },
            ts: now_ms(),
        };
        self.send_json(&report);
    }

    /// `sparkctl update status`: the running shadow, if any.
    pub(super) fn shadow_view(&self) -> Option<super::ShadowView> {
        let run = self.shadow.as_ref()?;
        let s = self.deps.shadow.as_ref()?.stats()?;
        Some(super::ShadowView {
            update_id: run.rec.update_id.clone(),
            name: run.rec.name.clone(),
            version: run.rec.version.to_string(),
            frames: s.figures.frames,
            agreement: s.figures.agreement,
            errors: s.errors,
            dropped_busy: s.dropped_busy,
        })
    }
}
