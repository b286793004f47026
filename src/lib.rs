//! spark-edge: the edge runtime behind `sparkd` and `sparkctl`.
//!
//! Data flow (see ARCHITECTURE.md): sources → inference → outbox → uplink,
//! with the control socket reading shared state beside it.
#![deny(unsafe_code)]

pub mod audio;
pub mod config;
pub mod control;
pub mod daemon;
pub mod detect;
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
