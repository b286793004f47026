//! The shadow tap: a candidate model run beside the live one, on its own
//! `shadow-eval` thread, on one frame in `every_n`, compared with what the
//! live model found on that frame ([`super::shadow`]).
//!
//! Owns the shadow's thread, its bounded queue and its running tally. Does
//! not decide what runs in the shadow or when it ends (the update agent
//! does, through [`ShadowTap::start`] / [`ShadowTap::stop`]), and never
//! touches the live engine.
//!
//! **Policy:** the queue holds [`QUEUE`] frame; a frame offered while it is
//! full (the shadow is still busy) is not copied and is counted in
//! `dropped_busy` (drop-newest). The inference thread never waits on the
//! shadow: [`ShadowTap::offer`] is a counter on most frames and at most one
//! picture copy and a `try_send` on the sampled ones.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use super::detect::Detection;
use super::engine::Engine;
use super::model::Model;
use super::shadow::{Figures, Tally};
use super::vision::Tensor;
use crate::sources::camera::{Pixels, PixelsRef};

/// Frames waiting for the shadow: one (the shadow samples; it does not catch up).
pub const QUEUE: usize = 1;
/// The shadow's nice value: under CPU contention the live pipeline (nice 0)
/// gets about ten times its share, so the shadow skips frames (counted)
/// rather than slowing the live model.
pub const NICE: i32 = 10;

/// Why a shadow did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError<E: std::error::Error + 'static> {
    #[error("starting the shadow thread")]
    Thread(#[source] std::io::Error),
    #[error("the shadow thread ended while building its engine")]
    Died,
    #[error("building the shadow's engine")]
    Build(#[source] E),
}

/// Lowers this thread's CPU priority (Linux nice is per thread). A failure
/// leaves it at the daemon's priority: logged, not fatal.
fn lower_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), NICE) {
        tracing::warn!(error = %e, "could not lower the shadow thread's priority");
    }
}

struct Job {
    pixels: Pixels,
    live: Vec<Detection>,
}

/// What the shadow thread has done since it started.
#[derive(Debug, Default)]
struct Progress {
    tally: Tally,
    errors: u64,
    last_error: Option<String>,
    latency_total: Duration,
    latency_max: Duration,
}

struct Running {
    feed: Sender<Job>,
    progress: Arc<Mutex<Progress>>,
    label: String,
    started: Instant,
}

/// A snapshot of the running shadow, for reports and `sparkctl`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowStats {
    /// `<name> <version>` of the candidate.
    pub model: String,
    pub figures: Figures,
    /// Mean and largest candidate inference time (prepare + run + decode).
    pub latency_ms_mean: Option<f64>,
    pub latency_ms_max: Option<f64>,
    /// Frames the candidate failed on (engine or decode error).
    pub errors: u64,
    pub last_error: Option<String>,
    /// Sampled frames not compared because the shadow was still busy.
    pub dropped_busy: u64,
    pub running_secs: u64,
}

/// Shared by the inference thread (which offers frames) and the update
/// agent (which starts, stops and reads the shadow).
pub struct ShadowTap {
    every_n: AtomicU64,
    seen: AtomicU64,
    /// Set while a shadow runs: the inference thread's only check on most frames.
    active: AtomicBool,
    /// Sampled frames not handed over since the shadow started (queue full,
    /// or the agent was reading the shadow at that instant).
    dropped_busy: AtomicU64,
    running: Mutex<Option<Running>>,
}

impl ShadowTap {
    pub fn new(every_n: u64) -> Arc<Self> {
        Arc::new(Self {
            every_n: AtomicU64::new(every_n.max(1)),
            seen: AtomicU64::new(0),
            active: AtomicBool::new(false),
            dropped_busy: AtomicU64::new(0),
            running: Mutex::new(None),
        })
    }

    /// `update.shadow_every_n_frames`, applied live.
    pub fn set_every_n(&self, n: u64) {
        self.every_n.store(n.max(1), Ordering::Relaxed);
    }

    /// Called by the inference thread for each decoded live frame.
    pub fn offer<'a>(&self, frame: impl Into<PixelsRef<'a>>, live: &[Detection]) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if !n.is_multiple_of(self.every_n.load(Ordering::Relaxed)) {
            return;
        }
        // Never wait for the lock: the agent may be reading the figures.
        let Ok(guard) = self.running.try_lock() else {
            self.dropped_busy.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(r) = guard.as_ref() else { return };
        // Checked first so a busy shadow costs no picture copy.
        if r.feed.is_full() {
            self.dropped_busy.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match r.feed.try_send(Job { pixels: frame.into().to_pixels(), live: live.to_vec() }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped_busy.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Builds the shadow's engine with `build` on a new `shadow-eval`
    /// thread at a lower CPU priority ([`NICE`]; threads the engine starts,
    /// such as ONNX Runtime's `onnx-run`, inherit it) and runs it with
    /// `model` as the shadow, replacing any shadow that runs (whose thread
    /// ends after its current frame and drops its engine). Returns once the
    /// engine is built, or why it was not.
    pub fn start<E: std::error::Error + Send + 'static>(
        &self,
        model: Arc<Model>,
        build: impl FnOnce() -> Result<Box<dyn Engine>, E> + Send + 'static,
    ) -> Result<(), StartError<E>> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let (built_tx, built_rx) = crossbeam_channel::bounded::<Result<(), E>>(1);
        let progress = Arc::new(Mutex::new(Progress::default()));
        let p = Arc::clone(&progress);
        let label = format!("{} {}", model.manifest.name, model.manifest.version);
        std::thread::Builder::new()
            .name("shadow-eval".into())
            .spawn(move || {
                lower_priority();
                let mut engine = match build() {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                        return;
                    }
                };
                let _ = built_tx.send(Ok(()));
                let mut input = Tensor::zeros(&[1]);
                for job in rx {
                    let t0 = Instant::now();
                    let r = super::pipeline::infer_frame(engine.as_mut(), &model, &job.pixels, &mut input);
                    let took = t0.elapsed();
                    let Ok(mut g) = p.lock() else { return };
                    match r {
                        Ok(r) => {
                            g.tally.add_frame(&job.live, &r.detections);
                            g.latency_total += took;
                            g.latency_max = g.latency_max.max(took);
                        }
                        Err(e) => {
                            g.errors += 1;
                            g.last_error = Some(e.to_string());
                        }
                    }
                }
            })
            .map_err(StartError::Thread)?;
        match built_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::Build(e)),
            Err(_) => return Err(StartError::Died),
        }
        let run = Running { feed: tx, progress, label, started: Instant::now() };
        if let Ok(mut g) = self.running.lock() {
            *g = Some(run);
        }
        self.seen.store(0, Ordering::Relaxed);
        self.dropped_busy.store(0, Ordering::Relaxed);
        self.active.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Ends the shadow (its thread finishes the frame in hand). Returns its
    /// last figures, if one ran.
    pub fn stop(&self) -> Option<ShadowStats> {
        self.active.store(false, Ordering::Relaxed);
        let run = self.running.lock().ok()?.take()?;
        Some(self.stats_of(&run))
    }

    /// The running shadow's figures since it started.
    pub fn stats(&self) -> Option<ShadowStats> {
        let g = self.running.lock().ok()?;
        g.as_ref().map(|r| self.stats_of(r))
    }

    fn stats_of(&self, r: &Running) -> ShadowStats {
        let (figures, errors, last_error, total, max) = match r.progress.lock() {
            Ok(p) => (p.tally.figures(), p.errors, p.last_error.clone(), p.latency_total, p.latency_max),
            Err(_) => (Tally::default().figures(), 0, None, Duration::ZERO, Duration::ZERO),
        };
        let ok_frames = figures.frames;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        ShadowStats {
            model: r.label.clone(),
            latency_ms_mean: (ok_frames > 0).then(|| ms(total) / ok_frames as f64),
            latency_ms_max: (ok_frames > 0).then(|| ms(max)),
            figures,
            errors,
            last_error,
            dropped_busy: self.dropped_busy.load(Ordering::Relaxed),
            running_secs: r.started.elapsed().as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crossbeam_channel::{Receiver, Sender, bounded};

    use super::*;
    use crate::inference::engine::{EngineError, EngineKind, Output};

    /// An engine that says when a frame reaches it, then holds it until released.
    struct Gate {
        reached: Sender<()>,
        release: Receiver<()>,
    }

    impl Engine for Gate {
        fn kind(&self) -> EngineKind {
            EngineKind::OnnxCpu
        }
        fn run(&mut self, _: &Tensor) -> Result<Vec<Output>, EngineError> {
            let _ = self.reached.send(());
            let _ = self.release.recv();
            Err(EngineError::ModelMismatch("held frame".into()))
        }
    }

    fn model() -> Arc<Model> {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        Arc::new(Model::load(&repo.join("models/nanodet.toml")).unwrap())
    }

    #[test]
    fn a_busy_shadow_drops_and_counts_sampled_frames_without_blocking_the_caller() {
        let tap = ShadowTap::new(1);
        let img = image::RgbImage::new(8, 8);
        tap.offer(&img, &[]); // no shadow yet: nothing happens
        let (reached_tx, reached) = bounded(4);
        let (release, release_rx) = bounded(4);
        let build = move || Ok::<_, std::io::Error>(Box::new(Gate { reached: reached_tx, release: release_rx }) as _);
        tap.start(model(), build).unwrap();
        tap.offer(&img, &[]); // taken by the shadow thread
        reached.recv_timeout(Duration::from_secs(10)).expect("the shadow takes the first frame");
        tap.offer(&img, &[]); // waits in the queue of one
        tap.offer(&img, &[]); // queue full: dropped
        tap.offer(&img, &[]); // dropped
        assert_eq!(tap.stats().unwrap().dropped_busy, 2);
        release.send(()).unwrap();
        reached.recv_timeout(Duration::from_secs(10)).expect("the queued frame runs next");
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tap.stats().unwrap().errors < 2 {
            assert!(Instant::now() < deadline, "both frames counted as failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = tap.stop().unwrap();
        assert_eq!((s.errors, s.figures.frames, s.dropped_busy), (2, 0, 2));
        assert_eq!(s.last_error.as_deref(), Some("model does not fit the manifest: held frame"));
        assert!(tap.stats().is_none(), "stopped");
    }

    #[test]
    fn only_one_frame_in_every_n_is_sampled() {
        let tap = ShadowTap::new(3);
        let (reached_tx, reached) = bounded(8);
        let (release, release_rx) = bounded(8);
        let build = move || Ok::<_, std::io::Error>(Box::new(Gate { reached: reached_tx, release: release_rx }) as _);
        tap.start(model(), build).unwrap();
        let img = image::RgbImage::new(8, 8);
        for _ in 0..3 {
            tap.offer(&img, &[]);
        }
        reached.recv_timeout(Duration::from_secs(10)).expect("frame 0 sampled");
        for _ in 0..3 {
            tap.offer(&img, &[]); // frame 3 queued, 4 and 5 not sampled
        }
        assert_eq!(tap.stats().unwrap().dropped_busy, 0);
        tap.offer(&img, &[]); // frame 6: sampled, queue full
        assert_eq!(tap.stats().unwrap().dropped_busy, 1);
        for _ in 0..2 {
            release.send(()).unwrap();
        }
        tap.stop();
    }
}
