//! CPU engine: ONNX Runtime through `ort`, library loaded at run time.
//!
//! Owns finding `libonnxruntime.so`, creating the session from verified model
//! bytes, and running it. The library is never downloaded: it comes from the
//! `onnxruntime` wheel on PyPI (scripts/setup.sh) or the system.
//!
//! Frames in flight ([`Engine::submit`]): the caller's thread prepares the
//! float tensor, an `onnx-run` worker thread runs the session, and the caller
//! decodes the previous result meanwhile. [`DEPTH`] frames at most, over
//! bounded channels, their tensors reused. The synchronous [`Engine::run`]
//! runs on the caller's thread (the session is shared behind a lock that only
//! one of them holds at a time).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::{Completed, Engine, EngineError, EngineKind, FrameResult, Output};
use crate::inference::model::InputSpec;
use crate::inference::prepare;
use crate::inference::vision::{Letterbox, Tensor};
use crate::sources::camera::Pixels;

/// Frames in flight per session: one running while the next is prepared
/// and the previous decoded on the inference thread (ARCHITECTURE.md
/// decisions).
pub const FRAMES_PER_SESSION: usize = 2;

/// Places searched, in order, when neither the config nor `ORT_DYLIB_PATH`
/// names the library.
pub fn library_candidates(configured: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if !configured.as_os_str().is_empty() {
        out.push(configured.to_path_buf());
        return out;
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
        return out;
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            // Next to the binary, and the repository's deps/ when run from target/.
            out.push(dir.join("libonnxruntime.so"));
            for up in dir.ancestors().skip(1).take(3) {
                out.push(up.join("deps/onnxruntime/libonnxruntime.so"));
            }
        }
    }
    out.push(PathBuf::from("deps/onnxruntime/libonnxruntime.so"));
    for d in
        ["/usr/lib/sparkd", "/usr/local/lib", "/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib"]
    {
        out.push(Path::new(d).join("libonnxruntime.so"));
    }
    out
}

/// Why the runtime could not be loaded; kept so later calls report the same.
#[derive(Debug, Clone)]
enum LoadFailure {
    Missing { tried: String },
    Failed { path: PathBuf, message: String },
}

/// The process-wide ONNX Runtime environment: `ort` binds one library per
/// process, so the first load decides and later calls reuse its outcome.
static ENVIRONMENT: OnceLock<Result<(PathBuf, ort::environment::Environment), LoadFailure>> = OnceLock::new();

/// Loads ONNX Runtime once per process; returns where it came from and the
/// environment sessions are built in.
pub fn load_runtime(configured: &Path) -> Result<(&'static Path, &'static ort::environment::Environment), EngineError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let candidates = library_candidates(configured);
        let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
            let tried = candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            return Err(LoadFailure::Missing { tried });
        };
        let failed = |message: String| LoadFailure::Failed { path: path.clone(), message };
        let env = ort::init_from(&path)
            .map_err(|e| failed(e.to_string()))?
            .with_name("sparkd")
            .build()
            .map_err(|e| failed(e.to_string()))?;
        Ok((path, env))
    });
    match result {
        Ok((path, env)) => Ok((path.as_path(), env)),
        Err(LoadFailure::Missing { tried }) => Err(EngineError::OrtLibraryMissing { tried: tried.clone() }),
        Err(LoadFailure::Failed { path, message }) => {
            Err(EngineError::OrtLoad { path: path.clone(), source: message.clone().into() })
        }
    }
}

/// What the worker runs: the session and its input and output names.
struct Runner {
    session: Mutex<Session>,
    input_name: String,
    output_names: Vec<String>,
}

type Ran = (Result<Vec<Output>, EngineError>, Tensor);

/// One session on its own `onnx-run-N` thread, fed in order.
struct Worker {
    runner: Arc<Runner>,
    jobs: Option<Sender<Tensor>>,
    results: Option<Receiver<Ran>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs = None;
        self.results = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct OnnxEngine {
    /// One per session. Frames go to them in turn, so the oldest frame in
    /// flight is always the next result of its worker.
    workers: Vec<Worker>,
    next_worker: usize,
    /// Tags, letterboxes and workers of the frames in flight, oldest first.
    outstanding: VecDeque<(u64, Letterbox, usize)>,
    /// Results received while finishing the frames in flight for a
    /// synchronous run, handed out by `collect` first.
    ready: VecDeque<Completed>,
    /// Tensors back from the worker, reused for the next frames.
    spare: Vec<Tensor>,
}

impl OnnxEngine {
    /// Builds one session from model bytes already checked against the manifest.
    pub fn new(
        library: &Path,
        model_bytes: &[u8],
        input_name: &str,
        intra_threads: usize,
    ) -> Result<Self, EngineError> {
        Self::with_sessions(library, model_bytes, input_name, intra_threads, 1)
    }

    /// Builds `sessions` sessions of the model (at most
    /// [`MAX_CPU_SESSIONS`](crate::config::MAX_CPU_SESSIONS)),
    /// each with `intra_threads` threads of its own, running frames side by
    /// side: small detectors use several single-threaded runs better than
    /// one run spread over threads. Each session holds its own weights and
    /// activations.
    pub fn with_sessions(
        library: &Path,
        model_bytes: &[u8],
        input_name: &str,
        intra_threads: usize,
        sessions: usize,
    ) -> Result<Self, EngineError> {
        let mut workers = Vec::new();
        for n in 0..sessions.clamp(1, crate::config::MAX_CPU_SESSIONS) {
            let runner = Arc::new(Runner::new(library, model_bytes, input_name, intra_threads)?);
            workers.push(Worker::start(runner, n)?);
        }
        Ok(Self { workers, next_worker: 0, outstanding: VecDeque::new(), ready: VecDeque::new(), spare: Vec::new() })
    }

    /// Frames in flight: [`FRAMES_PER_SESSION`] per session.
    fn capacity(&self) -> usize {
        FRAMES_PER_SESSION * self.workers.len()
    }

    /// The next result, the oldest frame's, waiting up to `timeout`.
    fn receive(&mut self, timeout: Duration) -> Option<Completed> {
        let (tag, lb, w) = *self.outstanding.front()?;
        let got = match self.workers.get(w).and_then(|w| w.results.as_ref()) {
            Some(r) => r.recv_timeout(timeout),
            None => Err(RecvTimeoutError::Disconnected),
        };
        let result: FrameResult = match got {
            Ok((out, tensor)) => {
                self.spare.push(tensor);
                out.map(|o| (o, lb))
            }
            Err(RecvTimeoutError::Timeout) => return None,
            Err(RecvTimeoutError::Disconnected) => Err(EngineError::WorkerGone),
        };
        self.outstanding.pop_front();
        Some(Completed { tag, kind: EngineKind::OnnxCpu, result })
    }
}

impl Worker {
    fn start(runner: Arc<Runner>, n: usize) -> Result<Self, EngineError> {
        let (jobs_tx, jobs_rx) = bounded::<Tensor>(FRAMES_PER_SESSION);
        let (results_tx, results_rx) = bounded::<Ran>(FRAMES_PER_SESSION);
        let r = Arc::clone(&runner);
        let thread = std::thread::Builder::new()
            .name(if n == 0 { "onnx-run".into() } else { format!("onnx-run-{n}") })
            .spawn(move || {
                for input in jobs_rx {
                    let out = r.run(&input);
                    if results_tx.send((out, input)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|_| EngineError::WorkerGone)?;
        Ok(Self { runner, jobs: Some(jobs_tx), results: Some(results_rx), thread: Some(thread) })
    }
}

impl Runner {
    fn new(library: &Path, model_bytes: &[u8], input_name: &str, intra_threads: usize) -> Result<Self, EngineError> {
        let (_, env) = load_runtime(library)?;
        let session = Session::builder(env)
            .map_err(ort_err("creating a session builder"))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(ort_err("setting the optimisation level"))?
            .with_intra_threads(intra_threads)
            .map_err(ort_err("setting intra-op threads"))?
            .with_inter_threads(1)
            .map_err(ort_err("setting inter-op threads"))?
            // Pre-planned memory patterns keep a second copy of every
            // activation buffer; on a 4-8 GB device resident memory matters
            // more than the few percent they save.
            .with_memory_pattern(false)
            .map_err(ort_err("turning off memory patterns"))?
            .commit_from_memory(model_bytes)
            .map_err(ort_err("loading the model"))?;
        let inputs: Vec<String> = session.inputs().iter().map(|i| i.name().to_string()).collect();
        if inputs.len() != 1 || inputs[0] != input_name {
            return Err(EngineError::ModelMismatch(format!("manifest input {input_name:?}, model inputs {inputs:?}")));
        }
        let output_names = session.outputs().iter().map(|o| o.name().to_string()).collect();
        Ok(Self { session: Mutex::new(session), input_name: input_name.to_string(), output_names })
    }
}

impl Runner {
    fn run(&self, input: &Tensor) -> Result<Vec<Output>, EngineError> {
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let view = TensorRef::from_array_view((input.shape.clone(), &input.data[..]))
            .map_err(ort_err("wrapping the input"))?;
        let outputs =
            session.run(ort::inputs![self.input_name.as_str() => view]).map_err(ort_err("running the model"))?;
        let mut out = Vec::with_capacity(self.output_names.len());
        for name in &self.output_names {
            let value = outputs
                .get(name)
                .ok_or_else(|| EngineError::ModelMismatch(format!("output {name} missing from the run")))?;
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(ort_err("reading an output"))?;
            out.push(Output {
                name: name.clone(),
                shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                data: data.to_vec(),
            });
        }
        Ok(out)
    }
}

fn ort_err<R>(what: &'static str) -> impl Fn(ort::Error<R>) -> EngineError
where
    ort::Error: From<ort::Error<R>>,
{
    move |e| EngineError::Ort { what, source: e.into() }
}

impl Engine for OnnxEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::OnnxCpu
    }

    /// On the caller's thread, after the frames in flight (kept for `collect`).
    fn run(&mut self, input: &Tensor) -> Result<Vec<Output>, EngineError> {
        while !self.outstanding.is_empty() {
            if let Some(done) = self.receive(Duration::from_secs(1)) {
                self.ready.push_back(done);
            }
        }
        match self.workers.first() {
            Some(w) => w.runner.run(input),
            None => Err(EngineError::WorkerGone),
        }
    }

    fn depth(&self) -> usize {
        self.capacity()
    }

    fn submit(&mut self, tag: u64, frame: Arc<Pixels>, spec: &InputSpec) -> Result<Option<Completed>, EngineError> {
        if self.outstanding.len() + self.ready.len() >= self.capacity() {
            return Err(EngineError::Overfull { depth: self.capacity() });
        }
        let mut input = self.spare.pop().unwrap_or_else(|| Tensor::zeros(&[1]));
        let lb = prepare::tensor(&*frame, spec, &mut input);
        let w = self.next_worker;
        self.next_worker = (w + 1) % self.workers.len().max(1);
        // A worker that is gone fails this frame in its turn (`receive`).
        if let Some(jobs) = self.workers.get(w).and_then(|w| w.jobs.as_ref()) {
            let _ = jobs.send(input);
        }
        self.outstanding.push_back((tag, lb, w));
        Ok(None)
    }

    fn collect(&mut self, timeout: Duration) -> Option<Completed> {
        match self.ready.pop_front() {
            Some(done) => Some(done),
            None => self.receive(timeout),
        }
    }
}
