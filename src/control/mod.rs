//! The local control API: `sparkctl` ⇄ Unix socket ⇄ daemon.
//!
//! `protocol` holds the request/response types and the framing, shared by
//! both sides; `server` is the daemon's listener and its authorization;
//! `doctor` judges the checks `sparkctl doctor` shows (in the daemon, or in
//! `sparkctl` when the daemon is down); `client` is what `sparkctl` uses; `update` turns the update agent's
//! answers into `update status` / `update apply` responses; `sensors` answers
//! `camera list`, `camera snapshot` and `mic level`; `views` is the one place
//! internal state becomes protocol views; `metrics` renders them as
//! Prometheus text (`sparkctl metrics`, the node_exporter textfile);
//! `diagnose` is the signed MQTT diagnose request and its chunked answer,
//! `diag_agent` the daemon's task answering them (docs/diagnostics.md).

pub mod admission;
pub mod client;
pub mod diag_agent;
pub mod diagnose;
pub mod doctor;
pub mod metrics;
pub mod metrics_http;
pub mod protocol;
pub mod sensors;
pub mod server;
pub mod update;
pub mod views;
