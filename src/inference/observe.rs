//! The step after decoding, as the inference loop sees it: a
//! [`FrameObserver`] gets every decoded frame in order and gives each
//! detection its track. Tracking and events (`crate::events`) implement it;
//! inference only calls it, so the module graph stays one-way
//! (events → inference, never back).

use serde::Serialize;

use crate::inference::detect::Detection;
use crate::sources::camera::Frame;

/// The track a detection belongs to, written beside it in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TrackTag {
    pub track_id: u64,
    /// Frames since the track started (0 on its first frame).
    pub track_age: u32,
}

/// What the observer says about one frame.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Observed {
    /// One entry per detection, in order (empty: none tracked).
    pub tags: Vec<Option<TrackTag>>,
    /// The set of tracked labels differs from the previous frame's
    /// (`inference.publish = "on-change"` writes a record only then).
    pub labels_changed: bool,
}

/// Runs on the inference thread after each decoded frame.
pub trait FrameObserver: Send {
    /// `camera` is the frame's camera id.
    fn observe(&mut self, camera: &str, frame: &Frame, detections: &[Detection]) -> Observed;
    /// The loop is stopping (camera closed): close what is open.
    fn finish(&mut self);
}
