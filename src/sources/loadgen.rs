//! Synthetic load: `events` records at a fixed rate, for soak tests and
//! benchmarks on a device (`[load] events_per_sec`). Off by default.
//!
//! Keeps up to [`MAX_OUTSTANDING`] appends in flight so one producer can
//! fill group commits; a record counts only once its commit returned.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::outbox::{Appender, PendingAppend};
use crate::record::{Stream, now_ms};
use crate::state::Shared;

const MAX_OUTSTANDING: usize = 8192;

pub fn run(rate: f64, body_bytes: usize, appender: Appender, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let start = Instant::now();
    let pad = "x".repeat(body_bytes.saturating_sub(60));
    let mut sent = 0u64;
    let mut outstanding: VecDeque<PendingAppend> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due && outstanding.len() < MAX_OUTSTANDING {
            sent += 1;
            let body = format!("{{\"kind\":\"synthetic\",\"n\":{sent},\"pad\":\"{pad}\"}}");
            match appender.submit(Stream::Events, now_ms(), body) {
                Ok(p) => outstanding.push_back(p),
                Err(_) => return, // writer gone: shutting down
            }
        }
        settle(&mut outstanding, &shared, false);
        std::thread::sleep(Duration::from_millis(1));
    }
    settle(&mut outstanding, &shared, true);
}

/// Counts finished appends, oldest first; `all` waits for every one.
fn settle(outstanding: &mut VecDeque<PendingAppend>, shared: &Shared, all: bool) {
    while let Some(front) = outstanding.front_mut() {
        let outcome = if all {
            outstanding.pop_front().map(PendingAppend::wait)
        } else {
            match front.try_wait() {
                Some(r) => {
                    outstanding.pop_front();
                    Some(r)
                }
                None => None,
            }
        };
        match outcome {
            None => return,
            Some(Ok(_)) => {
                shared.events_generated.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(e)) => {
                shared.record_lost("synthetic event", &e);
            }
        }
    }
}
