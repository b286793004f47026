//! Inference engines: one trait, one implementation per backend.
//!
//! Owns running a prepared tensor through a network and returning its raw
//! output tensors, in the ONNX model's output order. Pre-processing lives in
//! [`crate::inference::vision`], decoding in [`crate::inference::detect`], so every engine shares
//! them and produces identical records for identical outputs.

pub mod build;
pub mod hailo;
pub mod onnx;
pub mod select;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::inference::model::InputSpec;
use crate::inference::prepare;
use crate::inference::vision::{Letterbox, Tensor};
use crate::sources::camera::{Pixels, PixelsRef};

/// Which backend produced a result. Serialized into every inference record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EngineKind {
    #[serde(rename = "hailo")]
    Hailo,
    #[serde(rename = "onnx-cpu")]
    OnnxCpu,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Hailo => "hailo",
            EngineKind::OnnxCpu => "onnx-cpu",
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "ONNX Runtime library not found; tried: {tried}. Install it with scripts/setup.sh, or set model.onnxruntime_library or ORT_DYLIB_PATH to libonnxruntime.so from the onnxruntime==1.31.1 wheel on PyPI"
    )]
    OrtLibraryMissing { tried: String },
    #[error("loading ONNX Runtime from {path}")]
    OrtLoad {
        path: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("ONNX Runtime {what}")]
    Ort {
        what: &'static str,
        #[source]
        source: ort::Error,
    },
    #[error("model does not fit the manifest: {0}")]
    ModelMismatch(String),
    /// A caller submitted more frames than [`Engine::depth`] allows.
    #[error("{depth} frames already in flight, the most this engine takes")]
    Overfull { depth: usize },
    /// The CPU engine's worker thread is gone (it panicked or could not start).
    #[error("the ONNX Runtime worker thread stopped")]
    WorkerGone,
    /// The accelerator failed; [`EngineError::failure`] says how badly.
    #[error("Hailo-8 ({})", .0.failure())]
    Accelerator(#[from] hailo::HailoError),
}

impl EngineError {
    /// How bad an accelerator failure is (the fallback policy reads this,
    /// never the message); `None` for errors of the CPU engine.
    pub fn failure(&self) -> Option<hailo::HailoFailure> {
        match self {
            EngineError::Accelerator(e) => Some(e.failure()),
            _ => None,
        }
    }
}

/// One raw output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// One frame's outputs and the letterbox that maps its boxes back to the frame.
pub type FrameResult = Result<(Vec<Output>, Letterbox), EngineError>;

/// The result of a frame handed to [`Engine::submit`], matched by its tag.
#[derive(Debug)]
pub struct Completed {
    pub tag: u64,
    /// The engine that produced `result` (the CPU after a fallback).
    pub kind: EngineKind,
    pub result: FrameResult,
}

/// A loaded network ready to run. Engines are driven from the inference
/// thread only (an engine may run its own I/O threads inside).
pub trait Engine: Send {
    fn kind(&self) -> EngineKind;
    /// Runs one input; outputs come in the ONNX model's output order.
    fn run(&mut self, input: &Tensor) -> Result<Vec<Output>, EngineError>;

    /// Prepares `frame` as `spec` says and runs it, returning the outputs and
    /// the letterbox that maps boxes back to the frame. By default the float
    /// NCHW tensor goes into `input` (reused between frames); an engine whose
    /// input takes another form (a UINT8 HEF) prepares that instead and may
    /// leave `input` untouched. Call it with no frame in flight
    /// ([`Engine::submit`]); engines that pipeline finish those first.
    fn run_frame(
        &mut self,
        frame: PixelsRef<'_>,
        spec: &InputSpec,
        input: &mut Tensor,
    ) -> Result<(Vec<Output>, Letterbox), EngineError> {
        let lb = prepare::tensor(frame, spec, input);
        Ok((self.run(input)?, lb))
    }

    /// The loaded HEF's input format, output orders and NMS shapes, for an
    /// accelerator engine; `None` on the CPU.
    fn hef_layout(&self) -> Option<hailo::HefLayout> {
        None
    }

    /// How many frames may be in flight at once (submitted, not yet
    /// collected). It may change after a collect (a fallback to the CPU).
    fn depth(&self) -> usize {
        1
    }

    /// Prepares `frame` on the caller's thread and starts it. A pipelining
    /// engine returns `Ok(None)` and hands the result to [`Engine::collect`],
    /// in submission order; a synchronous one (the default) runs it now and
    /// returns it (only ever with nothing else in flight). Errors: only
    /// [`EngineError::Overfull`] (more than [`Engine::depth`] in flight);
    /// a frame's own failure comes back in its [`Completed`].
    fn submit(&mut self, tag: u64, frame: Arc<Pixels>, spec: &InputSpec) -> Result<Option<Completed>, EngineError> {
        let mut input = Tensor::zeros(&[1]);
        let result = self.run_frame(frame.view(), spec, &mut input);
        Ok(Some(Completed { tag, kind: self.kind(), result }))
    }

    /// The oldest submitted frame's result, waiting up to `timeout`; `None`
    /// when nothing is in flight or it is not done yet.
    fn collect(&mut self, timeout: Duration) -> Option<Completed> {
        let _ = timeout;
        None
    }
}
