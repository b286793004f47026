//! The first stage: everything that produces records. Cameras feed frames
//! to inference; the microphone, telemetry sampler and load generator write
//! records of their own. Nothing here knows what happens to its output.

pub mod audio;
pub mod camera;
pub mod loadgen;
pub mod telemetry;
