//! The operator's side of the fleet (`spark-fleet`), apart from updates:
//! pure views over what devices publish. `devices` reads the retained
//! status messages. Nothing here runs in `sparkd`.

pub mod devices;
