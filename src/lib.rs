//! spark-edge: the edge runtime behind `sparkd` and `sparkctl`.
//!
//! Data flow (see ARCHITECTURE.md): sources → inference → outbox → uplink,
//! with the control socket reading shared state beside it.
#![deny(unsafe_code)]

pub mod audio;
pub mod backoff;
pub mod config;
pub mod control;
pub mod credentials;
pub mod daemon;
pub mod detect;
pub mod durable;
pub mod engine;
pub mod identity;
pub mod link;
pub mod loadgen;
pub mod logging;
pub mod memory;
pub mod model;
pub mod notify;
pub mod outbox;
pub mod pipeline;
pub mod record;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod update;
pub mod uplink;
pub mod vision;

/// An error and its whole `#[source]` chain on one line, `outer: inner: …`:
/// the one formatter for logs, reports and the control protocol.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
