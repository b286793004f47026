//! spark-edge: the edge runtime behind `sparkd` and `sparkctl`.
//!
//! Data flow (see ARCHITECTURE.md): sources → inference → outbox → uplink.
#![deny(unsafe_code)]

pub mod config;
pub mod detect;
pub mod engine;
pub mod model;
pub mod outbox;
pub mod record;
pub mod vision;
