//! Engine selection: the Hailo-8 when it works, ONNX Runtime on the CPU when
//! it does not, and back again when it recovers.
//!
//! Owns the fallback policy only; the engines themselves live in `hailo.rs`
//! and `onnx.rs`.
//!
//! **Invariant:** a frame is never lost to an accelerator failure: the frame
//! in hand is re-run on the CPU, and its record names the engine that really
//! produced it (`kind()` after `run()`).

use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(test)]
use super::hailo::HailoError;
use super::hailo::{HailoFailure, HefLayout};
use super::{Engine, EngineError, EngineKind, Output};
use crate::inference::model::InputSpec;
use crate::inference::vision::{Letterbox, Tensor};
use crate::state::Shared;
use crate::sys::backoff::Backoff;
use image::RgbImage;

/// Opens the accelerator engine; called at start and on every re-probe.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn Engine>, EngineError> + Send>;

pub struct Selector {
    cpu: Box<dyn Engine>,
    accel: Option<Box<dyn Engine>>,
    opener: Option<Opener>,
    last: EngineKind,
    next_probe: Instant,
    backoff: Backoff,
    shared: Arc<Shared>,
}

impl Selector {
    /// `opener`: `None` when the model has no HEF or Hailo is turned off.
    /// Tries the accelerator once right away.
    pub fn new(
        cpu: Box<dyn Engine>,
        opener: Option<Opener>,
        min_backoff: Duration,
        max_backoff: Duration,
        shared: Arc<Shared>,
    ) -> Self {
        let mut s = Self {
            cpu,
            accel: None,
            opener,
            last: EngineKind::OnnxCpu,
            next_probe: Instant::now(),
            backoff: Backoff::new(min_backoff, max_backoff),
            shared,
        };
        s.probe();
        s.last = if s.accel.is_some() { EngineKind::Hailo } else { EngineKind::OnnxCpu };
        s.publish_active();
        s
    }

    /// The engine the next frame will use.
    pub fn active(&self) -> EngineKind {
        if self.accel.is_some() { EngineKind::Hailo } else { EngineKind::OnnxCpu }
    }

    fn publish_active(&self) {
        let active = self.active();
        self.shared.update_engine(|e| {
            e.active = Some(active);
            e.hailo_present = active == EngineKind::Hailo;
        });
    }

    /// Tries to open the accelerator if it is due.
    fn probe(&mut self) {
        if self.accel.is_some() || Instant::now() < self.next_probe {
            return;
        }
        let Some(open) = self.opener.as_mut() else { return };
        match open() {
            Ok(engine) => {
                tracing::info!("Hailo-8 ready; inference runs on the accelerator");
                let hef = engine.hef_layout();
                self.shared.update_engine(|s| s.hef = hef);
                self.accel = Some(engine);
                self.backoff.reset();
                self.publish_active();
            }
            Err(e) => {
                let msg = crate::error_chain(&e);
                // Permanent problems (version mismatch, bad HEF) are retried
                // at the slowest pace: an update or a technician fixes them.
                let permanent = e.failure() == Some(HailoFailure::Permanent);
                if permanent {
                    self.backoff.give_up_pace();
                }
                let wait = self.backoff.next_delay();
                self.next_probe = Instant::now() + wait;
                self.shared.update_engine(|s| s.last_error = Some(msg.clone()));
                tracing::debug!(error = %msg, retry_in_s = wait.as_secs_f64(), "Hailo-8 not available");
            }
        }
    }

    fn account(&self, kind: EngineKind, took: Duration) {
        self.shared.update_engine(|e| match kind {
            EngineKind::Hailo => e.hailo_seconds += took.as_secs_f64(),
            EngineKind::OnnxCpu => e.cpu_seconds += took.as_secs_f64(),
        });
    }
}

impl Engine for Selector {
    fn kind(&self) -> EngineKind {
        self.last
    }

    fn run(&mut self, input: &Tensor) -> Result<Vec<Output>, EngineError> {
        self.dispatch(|engine| engine.run(input))
    }

    /// Each engine prepares the frame its own way: a CPU re-run after an
    /// accelerator failure prepares the float tensor afresh.
    fn run_frame(
        &mut self,
        frame: &RgbImage,
        spec: &InputSpec,
        input: &mut Tensor,
    ) -> Result<(Vec<Output>, Letterbox), EngineError> {
        self.dispatch(|engine| engine.run_frame(frame, spec, input))
    }

    fn hef_layout(&self) -> Option<HefLayout> {
        self.accel.as_ref().and_then(|a| a.hef_layout())
    }
}

impl Selector {
    /// Runs `go` on the accelerator when there is one, and on the CPU when
    /// there is none or it failed (the same frame, re-run).
    fn dispatch<T>(&mut self, mut go: impl FnMut(&mut dyn Engine) -> Result<T, EngineError>) -> Result<T, EngineError> {
        self.probe();
        if let Some(accel) = self.accel.as_mut() {
            let t0 = Instant::now();
            match go(accel.as_mut()) {
                Ok(out) => {
                    self.account(EngineKind::Hailo, t0.elapsed());
                    self.last = EngineKind::Hailo;
                    return Ok(out);
                }
                Err(e) => {
                    let class = e.failure();
                    let msg = crate::error_chain(&e);
                    if class != Some(HailoFailure::Transient) {
                        // Device lost, driver error or worse: leave the
                        // accelerator and re-probe it with backoff.
                        self.accel = None;
                        self.backoff.reset();
                        self.next_probe = Instant::now() + self.backoff.next_delay();
                        tracing::warn!(error = %msg, "Hailo-8 failed; falling back to the CPU");
                    } else {
                        tracing::warn!(error = %msg, "Hailo-8 frame failed; re-running it on the CPU");
                    }
                    self.shared.update_engine(|s| {
                        s.fallbacks += 1;
                        s.last_error = Some(msg);
                    });
                    self.publish_active();
                }
            }
        }
        let t0 = Instant::now();
        let out = go(self.cpu.as_mut())?;
        self.account(EngineKind::OnnxCpu, t0.elapsed());
        self.last = EngineKind::OnnxCpu;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// An engine that answers with its kind in the data, or fails on demand.
    struct Fake {
        kind: EngineKind,
        fail: Arc<AtomicU32>, // 0 ok, 1 transient, 2 device lost
    }

    impl Engine for Fake {
        fn kind(&self) -> EngineKind {
            self.kind
        }
        fn run(&mut self, _: &Tensor) -> Result<Vec<Output>, EngineError> {
            match self.fail.load(Ordering::Relaxed) {
                1 => Err(HailoError::Test(HailoFailure::Transient).into()),
                2 => Err(HailoError::Test(HailoFailure::DeviceLost).into()),
                _ => Ok(vec![Output { name: self.kind.as_str().into(), shape: vec![1], data: vec![0.0] }]),
            }
        }
    }

    fn selector(fail: &Arc<AtomicU32>, present: &Arc<AtomicU32>) -> (Selector, Arc<Shared>) {
        let shared = Arc::new(Shared::new("t".into()));
        let (f, p) = (fail.clone(), present.clone());
        let opener: Opener = Box::new(move || {
            if p.load(Ordering::Relaxed) == 1 {
                Ok(Box::new(Fake { kind: EngineKind::Hailo, fail: f.clone() }) as Box<dyn Engine>)
            } else {
                Err(HailoError::NoDevice { driver: None }.into())
            }
        });
        let cpu = Box::new(Fake { kind: EngineKind::OnnxCpu, fail: Arc::new(AtomicU32::new(0)) });
        let s = Selector::new(cpu, Some(opener), Duration::ZERO, Duration::ZERO, shared.clone());
        (s, shared)
    }

    fn run(s: &mut Selector) -> (EngineKind, String) {
        let out = s.run(&Tensor::zeros(&[1])).unwrap();
        (s.kind(), out[0].name.clone())
    }

    #[test]
    fn accelerator_failure_reruns_the_frame_on_cpu_then_recovers() {
        let (fail, present) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(1)));
        let (mut s, shared) = selector(&fail, &present);
        assert_eq!(run(&mut s), (EngineKind::Hailo, "hailo".into()));
        // Device lost: this frame still gets a result, from the CPU.
        fail.store(2, Ordering::Relaxed);
        present.store(0, Ordering::Relaxed);
        assert_eq!(run(&mut s), (EngineKind::OnnxCpu, "onnx-cpu".into()));
        assert_eq!(shared.engine().fallbacks, 1);
        assert_eq!(shared.engine().active, Some(EngineKind::OnnxCpu));
        assert_eq!(run(&mut s).0, EngineKind::OnnxCpu, "re-probe fails while absent");
        // It comes back: the next probe switches to it.
        fail.store(0, Ordering::Relaxed);
        present.store(1, Ordering::Relaxed);
        assert_eq!(run(&mut s), (EngineKind::Hailo, "hailo".into()));
        assert_eq!(shared.engine().active, Some(EngineKind::Hailo));
    }

    #[test]
    fn a_frame_the_accelerator_failed_is_prepared_afresh_for_the_cpu() {
        let (fail, present) = (Arc::new(AtomicU32::new(2)), Arc::new(AtomicU32::new(1)));
        let (mut s, shared) = selector(&fail, &present);
        let spec = InputSpec {
            name: "x".into(),
            width: 8,
            height: 6,
            color: crate::inference::model::ColorOrder::Rgb,
            layout: crate::inference::model::Layout::Nchw,
            resize: crate::inference::model::Resize::Letterbox,
            pad_value: 0.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let mut t = Tensor::zeros(&[1]);
        let (out, lb) = s.run_frame(&RgbImage::new(16, 12), &spec, &mut t).unwrap();
        assert_eq!((s.kind(), out[0].name.as_str()), (EngineKind::OnnxCpu, "onnx-cpu"));
        assert_eq!(t.shape, vec![1, 3, 6, 8], "the CPU got the float tensor");
        assert_eq!(lb.to_frame([0.0, 0.0, 8.0, 6.0]), [0.0, 0.0, 16.0, 12.0]);
        assert_eq!(shared.engine().fallbacks, 1);
    }

    #[test]
    fn transient_failure_keeps_the_accelerator() {
        let (fail, present) = (Arc::new(AtomicU32::new(1)), Arc::new(AtomicU32::new(1)));
        let (mut s, shared) = selector(&fail, &present);
        assert_eq!(run(&mut s).0, EngineKind::OnnxCpu);
        fail.store(0, Ordering::Relaxed);
        assert_eq!(run(&mut s).0, EngineKind::Hailo, "no re-open needed");
        assert_eq!(shared.engine().fallbacks, 1);
    }

    #[test]
    fn no_accelerator_means_cpu_with_the_reason_recorded() {
        let (fail, present) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (mut s, shared) = selector(&fail, &present);
        assert_eq!(run(&mut s).0, EngineKind::OnnxCpu);
        assert!(shared.engine().last_error.unwrap().contains("no Hailo device found"));
        assert!(!shared.engine().hailo_present);
    }
}
