//! Engine selection: the Hailo-8 when it works, ONNX Runtime on the CPU when
//! it does not, and back again when it recovers.
//!
//! Owns the fallback policy only; the engines themselves live in `hailo.rs`
//! and `onnx.rs`.
//!
//! **Invariant:** a frame is never lost to an accelerator failure: the frame
//! in hand is re-run on the CPU, and its record names the engine that really
//! produced it (`kind()` after `run()`, [`Completed::kind`] after `collect`).
//! With frames in flight the selector keeps each frame until its result is
//! collected: when the device is lost, every frame submitted to it and not
//! yet collected is re-run on the CPU, in submission order, each once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::hailo::{HailoError, HailoFailure, HefLayout};
use super::{Completed, Engine, EngineError, EngineKind, Output};
use crate::inference::model::InputSpec;
use crate::inference::vision::{Letterbox, Tensor};
use crate::sources::camera::{Pixels, PixelsRef};
use crate::state::Shared;
use crate::sys::backoff::Backoff;

/// Opens the accelerator engine; called at start and on every re-probe.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn Engine>, EngineError> + Send>;

/// Where a frame in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Accel,
    Cpu,
    /// Waiting for room on the CPU engine (a re-run, or a new frame while
    /// re-runs are queued: nothing overtakes them).
    CpuQueued,
}

/// A submitted frame, kept until its result is collected so it can be
/// re-run on the CPU.
struct Pending {
    tag: u64,
    frame: Arc<Pixels>,
    spec: InputSpec,
    at: At,
    submitted: Instant,
}

pub struct Selector {
    cpu: Box<dyn Engine>,
    accel: Option<Box<dyn Engine>>,
    opener: Option<Opener>,
    last: EngineKind,
    next_probe: Instant,
    backoff: Backoff,
    shared: Arc<Shared>,
    /// Frames in flight, oldest first (at most the larger engine depth).
    pending: VecDeque<Pending>,
    /// Frames submitted to the CPU engine and not yet collected from it.
    cpu_in_flight: usize,
    /// Results a synchronous engine returned from `submit`, per engine.
    cpu_early: VecDeque<Completed>,
    accel_early: VecDeque<Completed>,
    /// Results finished while a synchronous call waited for the frames in
    /// flight, handed out by `collect` first.
    finished: VecDeque<Completed>,
    /// When the last result came back, so overlapping frames are not
    /// counted twice in the engines' busy seconds.
    last_done: Instant,
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
            pending: VecDeque::new(),
            cpu_in_flight: 0,
            cpu_early: VecDeque::new(),
            accel_early: VecDeque::new(),
            finished: VecDeque::new(),
            last_done: Instant::now(),
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
        frame: PixelsRef<'_>,
        spec: &InputSpec,
        input: &mut Tensor,
    ) -> Result<(Vec<Output>, Letterbox), EngineError> {
        self.dispatch(|engine| engine.run_frame(frame, spec, input))
    }

    fn hef_layout(&self) -> Option<HefLayout> {
        self.accel.as_ref().and_then(|a| a.hef_layout())
    }

    /// The accelerator's depth while it is in use, else the CPU's.
    fn depth(&self) -> usize {
        match &self.accel {
            Some(a) => a.depth(),
            None => self.cpu.depth(),
        }
    }

    /// Always `Ok(None)`: results come from [`Engine::collect`] in order.
    fn submit(&mut self, tag: u64, frame: Arc<Pixels>, spec: &InputSpec) -> Result<Option<Completed>, EngineError> {
        let depth = self.depth().max(self.cpu.depth());
        if self.pending.len() + self.finished.len() >= depth {
            return Err(EngineError::Overfull { depth });
        }
        // Frames on either engine keep their order, so a recovered
        // accelerator takes new frames even while the CPU still has some.
        self.probe();
        let mut at = At::CpuQueued;
        if let Some(accel) = self.accel.as_mut() {
            match accel.submit(tag, Arc::clone(&frame), spec) {
                Ok(early) => {
                    self.accel_early.extend(early);
                    at = At::Accel;
                }
                Err(e) => self.accel_failed(&e),
            }
        }
        self.pending.push_back(Pending { tag, frame, spec: spec.clone(), at, submitted: Instant::now() });
        self.pump_cpu();
        Ok(None)
    }

    fn collect(&mut self, timeout: Duration) -> Option<Completed> {
        if let Some(done) = self.finished.pop_front() {
            return Some(done);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let front = self.pending.front()?;
            let wait = deadline.saturating_duration_since(Instant::now());
            match front.at {
                At::Accel => {
                    let accel = self.accel.as_mut()?;
                    let done = match self.accel_early.pop_front() {
                        Some(d) => d,
                        None => accel.collect(wait)?,
                    };
                    debug_assert_eq!(done.tag, front.tag, "the accelerator answered out of order");
                    match done.result {
                        Ok(out) => return Some(self.finish(EngineKind::Hailo, Ok(out))),
                        Err(e) => {
                            // This frame (and on a lost device, every frame
                            // still on it) goes to the CPU, in order.
                            self.accel_failed(&e);
                            if let Some(p) = self.pending.front_mut() {
                                p.at = At::CpuQueued;
                            }
                            self.pump_cpu();
                        }
                    }
                }
                At::Cpu => {
                    let done = match self.cpu_early.pop_front() {
                        Some(d) => d,
                        None => self.cpu.collect(wait)?,
                    };
                    debug_assert_eq!(done.tag, front.tag, "the CPU engine answered out of order");
                    self.cpu_in_flight = self.cpu_in_flight.saturating_sub(1);
                    let done = self.finish(EngineKind::OnnxCpu, done.result);
                    self.pump_cpu();
                    return Some(done);
                }
                At::CpuQueued => {
                    self.pump_cpu();
                    if self.pending.front().is_some_and(|p| p.at == At::CpuQueued) {
                        // No room on the CPU although nothing older is on it:
                        // cannot happen with a CPU depth of at least 1.
                        return None;
                    }
                }
            }
        }
    }
}

impl Selector {
    /// Hands the oldest frame's result out, with the engine that made it.
    fn finish(&mut self, kind: EngineKind, result: super::FrameResult) -> Completed {
        let now = Instant::now();
        let (tag, submitted) = match self.pending.pop_front() {
            Some(p) => (p.tag, p.submitted),
            None => (0, now),
        };
        self.account(kind, now.saturating_duration_since(submitted.max(self.last_done)));
        self.last_done = now;
        self.last = kind;
        Completed { tag, kind, result }
    }

    /// Submits queued frames to the CPU engine, oldest first, while it has room.
    fn pump_cpu(&mut self) {
        let room = self.cpu.depth().max(1);
        for p in self.pending.iter_mut() {
            if self.cpu_in_flight >= room {
                break;
            }
            if p.at != At::CpuQueued {
                continue;
            }
            match self.cpu.submit(p.tag, Arc::clone(&p.frame), &p.spec) {
                Ok(early) => self.cpu_early.extend(early),
                // The CPU refused the frame: it ends with that error.
                Err(e) => self.cpu_early.push_back(Completed { tag: p.tag, kind: EngineKind::OnnxCpu, result: Err(e) }),
            }
            p.at = At::Cpu;
            self.cpu_in_flight += 1;
        }
    }

    /// After an accelerator error on a frame: a lost device is dropped and
    /// re-probed with backoff, and every frame still on it queued for the
    /// CPU; a transient failure keeps it.
    fn accel_failed(&mut self, e: &EngineError) {
        let class = e.failure();
        let abandoned = matches!(e, EngineError::Accelerator(HailoError::Abandoned { .. }));
        let msg = crate::error_chain(e);
        let mut dropped = false;
        if class != Some(HailoFailure::Transient) {
            if let Some(accel) = self.accel.take() {
                dropped = true;
                tracing::warn!(error = %msg, "Hailo-8 failed; falling back to the CPU");
                for p in self.pending.iter_mut().filter(|p| p.at == At::Accel) {
                    p.at = At::CpuQueued;
                }
                self.accel_early.clear();
                drop(accel);
                self.backoff.reset();
                self.next_probe = Instant::now() + self.backoff.next_delay();
            }
        } else if !abandoned {
            tracing::warn!(error = %msg, "Hailo-8 frame failed; re-running it on the CPU");
        }
        // One failure, however many frames in flight it takes with it (the
        // first error seen may be a frame abandoned because of it).
        if dropped || !abandoned {
            self.shared.update_engine(|s| {
                s.fallbacks += 1;
                s.last_error = Some(msg);
            });
        }
        self.publish_active();
    }

    /// Runs `go` on the accelerator when there is one, and on the CPU when
    /// there is none or it failed (the same frame, re-run). Frames in flight
    /// are finished first and kept for `collect`.
    fn dispatch<T>(&mut self, mut go: impl FnMut(&mut dyn Engine) -> Result<T, EngineError>) -> Result<T, EngineError> {
        while !self.pending.is_empty() {
            match self.collect(Duration::from_secs(1)) {
                Some(done) => self.finished.push_back(done),
                None if self.pending.is_empty() => break,
                None => continue,
            }
        }
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
    use image::RgbImage;

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
        let (out, lb) = s.run_frame((&RgbImage::new(16, 12)).into(), &spec, &mut t).unwrap();
        assert_eq!((s.kind(), out[0].name.as_str()), (EngineKind::OnnxCpu, "onnx-cpu"));
        assert_eq!(t.shape, vec![1, 3, 6, 8], "the CPU got the float tensor");
        assert_eq!(lb.to_frame([0.0, 0.0, 8.0, 6.0]), [0.0, 0.0, 16.0, 12.0]);
        assert_eq!(shared.engine().fallbacks, 1);
    }

    /// A pipelining engine: results wait in submission order; frames from
    /// tag `fail_from` on fail with `class` (the device lost mid-stream:
    /// every frame in flight fails), or only tag `fail_from` when transient.
    /// Each output carries the frame's first pixel, so a result handed to
    /// the wrong frame shows.
    struct Piped {
        kind: EngineKind,
        depth: usize,
        queue: VecDeque<Completed>,
        fail_from: u64,
        class: HailoFailure,
        ran: RunLog,
    }

    /// Which engine ran which tag, in order.
    type RunLog = Arc<std::sync::Mutex<Vec<(EngineKind, u64)>>>;

    impl Engine for Piped {
        fn kind(&self) -> EngineKind {
            self.kind
        }
        fn run(&mut self, _: &Tensor) -> Result<Vec<Output>, EngineError> {
            Ok(Vec::new())
        }
        fn depth(&self) -> usize {
            self.depth
        }
        fn submit(&mut self, tag: u64, frame: Arc<Pixels>, spec: &InputSpec) -> Result<Option<Completed>, EngineError> {
            if self.queue.len() >= self.depth {
                return Err(EngineError::Overfull { depth: self.depth });
            }
            let fails = match self.class {
                HailoFailure::Transient => tag == self.fail_from,
                _ => tag >= self.fail_from,
            };
            let result = if fails {
                Err(HailoError::Test(self.class).into())
            } else {
                self.ran.lock().unwrap().push((self.kind, tag));
                let mut t = Tensor::zeros(&[1]);
                let lb = crate::inference::prepare::tensor(&*frame, spec, &mut t);
                let value = frame.to_rgb().get_pixel(0, 0)[0] as f32;
                Ok((vec![Output { name: self.kind.as_str().into(), shape: vec![1], data: vec![value] }], lb))
            };
            self.queue.push_back(Completed { tag, kind: self.kind, result });
            Ok(None)
        }
        fn collect(&mut self, _: Duration) -> Option<Completed> {
            self.queue.pop_front()
        }
    }

    fn spec() -> InputSpec {
        InputSpec {
            name: "x".into(),
            width: 4,
            height: 4,
            color: crate::inference::model::ColorOrder::Rgb,
            layout: crate::inference::model::Layout::Nchw,
            resize: crate::inference::model::Resize::Letterbox,
            pad_value: 0.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    /// Streams tags 1..=n through `s`, keeping `depth()` frames in flight;
    /// returns (tag, engine, first output value) per collected frame.
    fn stream(s: &mut Selector, n: u64) -> Vec<(u64, EngineKind, f32)> {
        let mut out = Vec::new();
        let mut next = 1;
        let mut in_flight = 0;
        while out.len() < n as usize {
            while next <= n && in_flight < s.depth() {
                let frame = Arc::new(Pixels::Rgb(RgbImage::from_pixel(4, 4, image::Rgb([next as u8, 0, 0]))));
                assert!(s.submit(next, frame, &spec()).unwrap().is_none());
                next += 1;
                in_flight += 1;
            }
            let done = s.collect(Duration::from_secs(1)).expect("a frame in flight completes");
            in_flight -= 1;
            let value = done.result.as_ref().map(|(o, _)| o[0].data[0]).unwrap_or(f32::NAN);
            out.push((done.tag, done.kind, value));
        }
        assert!(s.collect(Duration::ZERO).is_none(), "nothing left over");
        out
    }

    fn piped_selector(class: HailoFailure, fail_from: u64, cpu_depth: usize) -> (Selector, Arc<Shared>, RunLog) {
        let shared = Arc::new(Shared::new("t".into()));
        let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
        let opened = Arc::new(AtomicU32::new(0));
        let r = ran.clone();
        // Opens once: a lost device stays away.
        let opener: Opener = Box::new(move || {
            if opened.fetch_add(1, Ordering::Relaxed) == 0 {
                let accel = Piped {
                    kind: EngineKind::Hailo,
                    depth: 4,
                    queue: VecDeque::new(),
                    fail_from,
                    class,
                    ran: r.clone(),
                };
                Ok(Box::new(accel) as Box<dyn Engine>)
            } else {
                Err(HailoError::NoDevice { driver: None }.into())
            }
        });
        let cpu = Piped {
            kind: EngineKind::OnnxCpu,
            depth: cpu_depth,
            queue: VecDeque::new(),
            fail_from: u64::MAX,
            class: HailoFailure::Transient,
            ran: ran.clone(),
        };
        let s = Selector::new(Box::new(cpu), Some(opener), Duration::ZERO, Duration::ZERO, shared.clone());
        (s, shared, ran)
    }

    #[test]
    fn device_lost_with_frames_in_flight_reruns_each_on_the_cpu_in_order_once() {
        for cpu_depth in [1, 2] {
            let (mut s, shared, ran) = piped_selector(HailoFailure::DeviceLost, 10, cpu_depth);
            assert_eq!(s.depth(), 4);
            let out = stream(&mut s, 30);
            let tags: Vec<u64> = out.iter().map(|o| o.0).collect();
            assert_eq!(tags, (1..=30).collect::<Vec<_>>(), "every frame once, in order");
            for (tag, kind, value) in &out {
                assert_eq!(*value, *tag as f32, "frame {tag} got another frame's result");
                let want = if *tag < 10 { EngineKind::Hailo } else { EngineKind::OnnxCpu };
                assert_eq!(*kind, want, "frame {tag}");
            }
            // Frames 10..13 were in flight on the accelerator when it failed:
            // each ran on the CPU exactly once.
            let cpu_runs: Vec<u64> =
                ran.lock().unwrap().iter().filter(|(k, _)| *k == EngineKind::OnnxCpu).map(|(_, t)| *t).collect();
            assert_eq!(cpu_runs, (10..=30).collect::<Vec<_>>());
            assert_eq!(shared.engine().fallbacks, 1, "one failure");
            assert_eq!(s.depth(), cpu_depth, "the CPU's depth after the fallback");
        }
    }

    #[test]
    fn a_transient_failure_in_flight_reruns_that_frame_only_and_keeps_the_accelerator() {
        let (mut s, shared, _) = piped_selector(HailoFailure::Transient, 5, 2);
        let out = stream(&mut s, 12);
        assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
        for (tag, kind, value) in &out {
            assert_eq!(*value, *tag as f32);
            let want = if *tag == 5 { EngineKind::OnnxCpu } else { EngineKind::Hailo };
            assert_eq!(*kind, want, "frame {tag}");
        }
        assert_eq!(shared.engine().fallbacks, 1);
        assert_eq!(s.active(), EngineKind::Hailo);
    }

    #[test]
    fn more_frames_than_the_depth_are_refused_not_queued_without_bound() {
        let (mut s, _, _) = piped_selector(HailoFailure::DeviceLost, u64::MAX, 2);
        for tag in 0..4 {
            s.submit(tag, Arc::new(Pixels::Rgb(RgbImage::new(4, 4))), &spec()).unwrap();
        }
        let e = s.submit(4, Arc::new(Pixels::Rgb(RgbImage::new(4, 4))), &spec()).unwrap_err();
        assert!(matches!(e, EngineError::Overfull { depth: 4 }), "{e}");
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
