//! The operator's side of the fleet (`spark-fleet`), apart from signing and
//! pushing one update: `devices` reads the retained status messages;
//! `diagnose` signs a diagnose request and waits for one device's answer;
//! `rollout` (with its `halt_rule` language) decides staged rollouts and
//! keeps their state file, `rollout_run` drives them over MQTT; `snapshots`
//! reassembles and verifies the evidence JPEGs devices publish; `broker`
//! is how every one of them connects (mqtt:// or mqtts://); `signing_key`
//! reads the operator's private key file. Nothing here
//! runs in `sparkd`.

pub mod broker;
pub mod devices;
pub mod diagnose;
pub mod halt_rule;
pub mod rollout;
pub mod rollout_run;
pub mod signing_key;
pub mod snapshots;
