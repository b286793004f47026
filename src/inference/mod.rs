//! The inference stage: a frame's path from the camera queue to detections.
//! `pipeline` runs the loop, `prepare` turns a frame into a model input
//! (`vision` from RGB, `vision_yuv` straight from raw YUV camera buffers,
//! without an RGB copy), `engine` runs the
//! network (Hailo-8 or ONNX Runtime), `detect` decodes its outputs, `model`
//! describes what is loaded, `snapshot` taps the model input for technicians,
//! `observe` is the hook the tracking step plugs into, `shadow` compares a
//! candidate model's detections with the live ones and `shadow_tap` runs
//! that candidate beside the live model.

pub mod detect;
pub mod engine;
pub mod model;
pub mod observe;
pub mod pipeline;
pub mod prepare;
pub mod shadow;
pub mod shadow_tap;
pub mod snapshot;
pub mod vision;
pub mod vision_yuv;
