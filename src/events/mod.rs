//! The events stage: detections become tracked objects, and tracks moving
//! through zones and across lines become `events` records.
//!
//! `tracker` associates detections frame to frame (pure), `rules` turns
//! track positions into zone, line and count events (pure), `stage` runs
//! both per frame and appends the records to the outbox; `snapshot`
//! encodes an evidence JPEG per event off the inference thread. The stage plugs
//! into the inference loop through [`crate::inference::observe`]: it
//! imports inference's types, inference never imports it.

pub mod rules;
pub mod snapshot;
pub mod stage;
pub mod tracker;
