//! Engine construction from the config and a model: the CPU engine that is
//! always there, the Hailo-8 opener when the model has a HEF, and the
//! selector between them. Used at start and by a model update's check, so
//! both build exactly the same engine.

use std::sync::Arc;

use super::hailo::{HailoEngine, HailoError, HailoOptions, HefSource};
use super::onnx::OnnxEngine;
use super::select::{Opener, Selector};
use super::{Engine, EngineError};
use crate::config::Config;
use crate::inference::model::Model;
use crate::state::Shared;

/// Builds the engine for `model` from its ONNX bytes, already read and
/// checked against the manifest ([`Model::read_onnx`]): the Hailo-8 when
/// available, else ONNX Runtime on the CPU, switching between them at run
/// time.
///
/// The CPU engine is always built: it is the fallback that keeps inference
/// going, so a broken ONNX model is a start failure.
pub fn build_engine(
    config: &Config,
    model: &Model,
    bytes: Vec<u8>,
    shared: &Arc<Shared>,
) -> Result<Box<dyn Engine>, EngineError> {
    let cpu = OnnxEngine::with_sessions(
        &config.model.onnxruntime_library,
        &bytes,
        &model.manifest.input.name,
        config.model.intra_threads,
        config.model.cpu_sessions,
    )?;
    let opener = hailo_opener(config, model);
    if opener.is_none() && config.hailo.enabled {
        shared.update_engine(|e| e.last_error = Some("model manifest names no HEF: CPU only".into()));
    }
    let engine =
        Selector::new(Box::new(cpu), opener, config.hailo_reprobe().0, config.hailo_reprobe().1, shared.clone());
    drop(bytes);
    crate::sys::memory::release_after_load();
    Ok(Box::new(engine))
}

/// How to open the Hailo engine for this model, if the model has a HEF and
/// Hailo is enabled. The HEF is read and checked on every attempt.
fn hailo_opener(config: &Config, model: &Model) -> Option<Opener> {
    if !config.hailo.enabled {
        return None;
    }
    let hef = model.manifest.hef.clone()?;
    let hef_path = model.hef_path()?;
    let model = model.clone();
    let lib = (!config.hailo.library.as_os_str().is_empty()).then(|| config.hailo.library.clone());
    let opts = HailoOptions {
        multi_process_service: config.hailo.multi_process_service,
        timeout_ms: config.hailo.timeout_ms,
        queue_size: None,
        frames_in_flight: config.hailo.frames_in_flight,
        prepare_workers: config.hailo.prepare_workers,
    };
    Some(Box::new(move || {
        let bytes = match model.read_hef() {
            Some(r) => r.map_err(HailoError::HefFile)?,
            None => return Err(HailoError::NoHef.into()),
        };
        let engine = HailoEngine::open(lib.as_deref(), HefSource::Read { path: &hef_path, bytes: &bytes }, &opts)?;
        if let Some(want) = &hef.hailort_version {
            let have = engine.library_version();
            let have_mm = format!("{}.{}", have.major, have.minor);
            if !want.starts_with(&format!("{have_mm}.")) && want != &have_mm {
                let have = format!("{}.{}.{}", have.major, have.minor, have.revision);
                return Err(HailoError::HailoRtVersion { want: want.clone(), have }.into());
            }
        }
        Ok(Box::new(engine) as Box<dyn Engine>)
    }))
}
