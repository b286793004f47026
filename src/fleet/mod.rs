//! The operator's side of the fleet (`spark-fleet`), apart from signing and
//! pushing one update: `devices` reads the retained status messages;
//! `rollout` (with its `halt_rule` language) decides staged rollouts and
//! keeps their state file, `rollout_run` drives them over MQTT. Nothing
//! here runs in `sparkd`.

pub mod devices;
pub mod halt_rule;
pub mod rollout;
