//! spark-edge: the edge runtime behind `sparkd` and `sparkctl`.
//!
//! Data flow (see ARCHITECTURE.md): sources → inference (→ events) → outbox → uplink,
//! with the control socket reading shared state beside it.
#![deny(unsafe_code)]

pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod fleet;
pub mod inference;
pub mod outbox;
pub mod record;
pub mod sources;
pub mod state;
pub mod sys;
pub mod update;
pub mod uplink;

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
