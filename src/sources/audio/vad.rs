//! The Silero VAD model (v6, ONNX) through ONNX Runtime.
//!
//! Owns the model's calling convention: 512 new samples at 16 kHz per call,
//! prefixed with the previous call's last 64 samples (input `[1, 576]`), the
//! recurrent `state` `[2, 1, 128]` carried from `stateN` of the previous
//! call, and `sr` (int64 scalar 16000). Output `[1, 1]` is the speech
//! probability of the window. Uses the process-wide ONNX Runtime
//! environment of [`crate::inference::engine::onnx::load_runtime`] with its own
//! single-threaded session; runs only on the caller's (audio) thread.

use std::path::Path;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::AudioError;

/// The model's sample rate.
pub const SAMPLE_RATE: u32 = 16_000;
/// New samples per call.
pub const WINDOW: usize = 512;
/// Samples of the previous call prepended to each window.
pub const CONTEXT: usize = 64;
const STATE_LEN: usize = 2 * 128;

fn ort_err<R>(what: &'static str) -> impl Fn(ort::Error<R>) -> AudioError
where
    ort::Error: From<ort::Error<R>>,
{
    move |e| AudioError::Ort { what, source: e.into() }
}

/// A loaded Silero VAD with its streaming state.
pub struct SileroVad {
    session: Session,
    /// `CONTEXT` samples of history followed by the current window.
    input: Vec<f32>,
    state: Vec<f32>,
}

impl SileroVad {
    /// Loads the model from `path`; when `expected_sha256` is not empty the
    /// file must have that SHA-256. `library` is `model.onnxruntime_library`.
    pub fn load(library: &Path, path: &Path, expected_sha256: &str) -> Result<Self, AudioError> {
        let bytes = std::fs::read(path).map_err(|source| AudioError::ReadModel { path: path.to_path_buf(), source })?;
        if !expected_sha256.is_empty() {
            let actual = crate::inference::model::sha256_hex(&bytes);
            if !actual.eq_ignore_ascii_case(expected_sha256) {
                return Err(AudioError::ModelChecksum {
                    path: path.to_path_buf(),
                    expected: expected_sha256.to_string(),
                    actual,
                });
            }
        }
        Self::from_bytes(library, &bytes)
    }

    pub fn from_bytes(library: &Path, bytes: &[u8]) -> Result<Self, AudioError> {
        let (_, env) = crate::inference::engine::onnx::load_runtime(library)?;
        let session = Session::builder(env)
            .map_err(ort_err("creating a session builder"))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(ort_err("setting the optimisation level"))?
            .with_intra_threads(1)
            .map_err(ort_err("setting intra-op threads"))?
            .with_inter_threads(1)
            .map_err(ort_err("setting inter-op threads"))?
            .commit_from_memory(bytes)
            .map_err(ort_err("loading the VAD model"))?;
        let names = |v: Vec<String>| v.join(", ");
        let inputs: Vec<String> = session.inputs().iter().map(|i| i.name().to_string()).collect();
        let outputs: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        for want in ["input", "state", "sr"] {
            if !inputs.iter().any(|i| i == want) {
                return Err(AudioError::ModelMismatch(format!(
                    "the VAD model has no input {want:?} (inputs: {}); expected Silero VAD v5/v6",
                    names(inputs)
                )));
            }
        }
        for want in ["output", "stateN"] {
            if !outputs.iter().any(|o| o == want) {
                return Err(AudioError::ModelMismatch(format!(
                    "the VAD model has no output {want:?} (outputs: {}); expected Silero VAD v5/v6",
                    names(outputs)
                )));
            }
        }
        Ok(Self { session, input: vec![0.0; CONTEXT + WINDOW], state: vec![0.0; STATE_LEN] })
    }

    /// Clears the recurrent state and context (a new stream).
    pub fn reset(&mut self) {
        self.input.fill(0.0);
        self.state.fill(0.0);
    }

    /// Speech probability of the next `WINDOW` samples (16 kHz, -1..1).
    pub fn process(&mut self, window: &[f32]) -> Result<f32, AudioError> {
        if window.len() != WINDOW {
            return Err(AudioError::ModelMismatch(format!(
                "window of {} samples, the model takes {WINDOW}",
                window.len()
            )));
        }
        self.input[CONTEXT..].copy_from_slice(window);
        let sr = [SAMPLE_RATE as i64];
        let ort = ort_err::<()>;
        let input = TensorRef::from_array_view(([1usize, CONTEXT + WINDOW], &self.input[..]))
            .map_err(ort("wrapping the input"))?;
        let state =
            TensorRef::from_array_view(([2usize, 1, 128], &self.state[..])).map_err(ort("wrapping the state"))?;
        let sr = TensorRef::from_array_view(((), &sr[..])).map_err(ort("wrapping the sample rate"))?;
        let outputs = self
            .session
            .run(ort::inputs!["input" => input, "state" => state, "sr" => sr])
            .map_err(ort("running the VAD model"))?;
        let (_, prob) = outputs
            .get("output")
            .ok_or_else(|| AudioError::ModelMismatch("output missing from the run".into()))?
            .try_extract_tensor::<f32>()
            .map_err(ort("reading the probability"))?;
        let prob = *prob.first().ok_or_else(|| AudioError::ModelMismatch("empty output".into()))?;
        let (_, new_state) = outputs
            .get("stateN")
            .ok_or_else(|| AudioError::ModelMismatch("stateN missing from the run".into()))?
            .try_extract_tensor::<f32>()
            .map_err(ort("reading the state"))?;
        if new_state.len() != STATE_LEN {
            return Err(AudioError::ModelMismatch(format!(
                "stateN has {} values, expected {STATE_LEN}",
                new_state.len()
            )));
        }
        let new_state: Vec<f32> = new_state.to_vec();
        drop(outputs);
        self.state.copy_from_slice(&new_state);
        // The next call's context is the end of this window.
        self.input.copy_within(WINDOW.., 0);
        Ok(prob)
    }
}
