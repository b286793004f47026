//! Live daemon state shared between the pipeline threads, the uplink and the
//! control socket: counters and small status snapshots. Owns no IO.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::EngineKind;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineState {
    /// `None` until the first engine is up (or when there is no camera).
    pub active: Option<EngineKind>,
    pub hailo_present: bool,
    pub fallbacks: u64,
    pub last_error: Option<String>,
    pub model: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LinkState {
    /// True when no VPN gate is configured.
    pub vpn_up: bool,
    pub vpn_interface: Option<String>,
    pub broker_connected: bool,
    pub broker: String,
    pub last_error: Option<String>,
    /// Unix ms of the last change of `broker_connected`.
    pub since_ms: u64,
    pub reconnects: u64,
}

/// Counters are monotonic for the life of the process.
pub struct Shared {
    pub started: Instant,
    pub device_id: String,
    pub inference_total: AtomicU64,
    pub inference_failed: AtomicU64,
    /// Records a producer could not store (commit failed); logged and counted.
    pub records_lost: AtomicU64,
    pub telemetry_samples: AtomicU64,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub last_latency_us: AtomicU64,
    pub shutting_down: AtomicBool,
    pub engine: Mutex<EngineState>,
    pub link: Mutex<LinkState>,
}

impl Shared {
    pub fn new(device_id: String) -> Self {
        Self {
            started: Instant::now(),
            device_id,
            inference_total: AtomicU64::new(0),
            inference_failed: AtomicU64::new(0),
            records_lost: AtomicU64::new(0),
            telemetry_samples: AtomicU64::new(0),
            published: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            last_latency_us: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            engine: Mutex::new(EngineState::default()),
            link: Mutex::new(LinkState::default()),
        }
    }

    pub fn engine(&self) -> EngineState {
        self.engine.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update_engine(&self, f: impl FnOnce(&mut EngineState)) {
        f(&mut self.engine.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn link(&self) -> LinkState {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update_link(&self, f: impl FnOnce(&mut LinkState)) {
        f(&mut self.link.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
