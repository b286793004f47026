//! Model activation: the new model's engine is built as at start, warmed up
//! and canary checked before `activate()`, then swapped into the inference
//! thread; a failure rolls back to the model in `previous`.

use std::path::Path;
use std::sync::Arc;

use super::{Agent, Failed, SWAP_DEADLINE, UNPACKED};
use crate::config::Config;
use crate::inference::model::Model;
use crate::inference::pipeline::EngineSwap;
use crate::update::pack::{self, MODEL_MANIFEST};
use crate::update::{Rejection, UpdateError, UpdateRecord, selected_model};

impl Agent {
    pub(super) fn activate_model(&mut self, rec: UpdateRecord) {
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
            if let Err(e) = switch_engine(swap, engine, model) {
                tracing::error!(reason = %e, "the inference thread did not take the new model; rolling back");
                return self.roll_back(&rec, &e.to_string());
            }
            self.deps.shared.update_engine(|e| e.model = label);
        }
        tracing::info!(update_id = %rec.update_id, name = %rec.name, version = %rec.version, "model update active");
        self.report(&rec);
    }

    /// Everything short of the switch. Returns the warmed-up engine when the
    /// daemon runs one (no camera: the files are checked, nothing is built).
    pub(super) fn check_model(&self, rec: &UpdateRecord) -> Result<(Option<CheckedEngine>, Arc<Model>), Failed> {
        let bad = |detail: String| Failed::Reject(Rejection::BadPack { detail });
        let (model, onnx) = self.staged_model(rec).map_err(|detail| bad(detail.0))?;
        let manifest = self.updater.manifest_of(&rec.update_id).map_err(|e| bad(e.to_string()))?;
        let canary = match &manifest.canary {
            Some(c) => {
                // The pack was unpacked where its model.toml is.
                let p = model.dir.join(&c.input);
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
        let mut engine =
            crate::inference::engine::build::build_engine(&self.deps.config, &model, onnx, &self.deps.shared)
                .map_err(|e| Failed::RollBack(format!("the new engine does not build: {}", crate::error_chain(&e))))?;
        let mut input = crate::inference::vision::Tensor::zeros(&[1]);
        // Warm-up: the first run allocates; a failure here is a failure of the model.
        let warm = canary
            .as_ref()
            .map(|(_, img)| img.clone())
            .unwrap_or_else(|| image::RgbImage::new(model.manifest.input.width, model.manifest.input.height));
        crate::inference::pipeline::infer_frame(engine.as_mut(), &model, &warm, &mut input)
            .map_err(|e| Failed::RollBack(format!("warm-up inference failed: {e}")))?;
        if let Some((c, img)) = canary {
            let r = crate::inference::pipeline::infer_frame(engine.as_mut(), &model, &img, &mut input)
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
pub(super) fn switch_engine(
    swap: &crossbeam_channel::Sender<EngineSwap>,
    engine: Box<dyn crate::inference::engine::Engine>,
    model: Arc<Model>,
) -> Result<(), SwitchError> {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    swap.send_timeout(EngineSwap { engine, model, done: done_tx }, SWAP_DEADLINE)
        .map_err(|_| SwitchError::NotRunning)?;
    done_rx.recv_timeout(SWAP_DEADLINE).map_err(|_| SwitchError::Late)
}

/// Why the inference thread did not take a checked engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum SwitchError {
    #[error("the inference thread is not running")]
    NotRunning,
    #[error("the inference thread did not switch in time")]
    Late,
}

/// The model the daemon starts with, and its ONNX bytes (read and checked
/// once, here): the fleet-activated version of the model the fleet selected
/// (`<state>/models/.selected`, else the configured model's name), from
/// `<state>/models/<name>/current/pack/model.toml`, when there is one and it
/// loads with intact files; else the configured model.
pub fn startup_model(
    config: &Config,
    state_dir: &Path,
) -> Result<(Model, Vec<u8>), crate::inference::model::ModelError> {
    let configured = Model::load(&config.model.manifest)?;
    let name = selected_model(state_dir).unwrap_or_else(|| configured.manifest.name.clone());
    let current = state_dir.join("models").join(&name).join("current");
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

/// The HailoRT library's version when Hailo is enabled and a library loads.
pub(super) fn device_hailort_version(config: &Config) -> Option<String> {
    if !config.hailo.enabled {
        return None;
    }
    let lib = (!config.hailo.library.as_os_str().is_empty()).then_some(config.hailo.library.as_path());
    let (lib, _) = hailo_sys::load(lib).ok()?;
    let v = hailo_sys::library_version(&lib).ok()?;
    Some(format!("{}.{}.{}", v.major, v.minor, v.revision))
}

/// A new engine that passed warm-up and canary, not yet switched in.
pub(super) type CheckedEngine = Box<dyn crate::inference::engine::Engine>;

/// Why a staged model pack cannot be used: what is wrong with it, for the
/// `bad_pack` refusal (model check) or shadow failure that reports it.
#[derive(Debug)]
pub(super) struct PackProblem(pub String);

impl Agent {
    /// The staged pack of `rec` (unpacked once beside it), its model loaded
    /// and checked against the signed manifest's name and version, and its
    /// verified ONNX bytes. Shared by the model check and shadow evaluation.
    pub(super) fn staged_model(&self, rec: &UpdateRecord) -> Result<(Model, Vec<u8>), PackProblem> {
        let bad = PackProblem;
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
        Ok((model, onnx))
    }
}
