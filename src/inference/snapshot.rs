//! The model-input tap behind `sparkctl camera snapshot`.
//!
//! Owns the requests waiting for "the next frame as the model sees it" and
//! the hand-over of that picture. The control socket files a request; the
//! inference thread, after preparing the next frame it pops, turns the very
//! tensor the engine got back into RGB ([`crate::inference::vision::tensor_to_rgb`])
//! and answers every request filed before that pop. Bounded: at most
//! [`MAX_WAITING`] requests wait; a requester that gave up is dropped. No IO.

use std::sync::Mutex;
use std::time::Instant;

use image::RgbImage;
use tokio::sync::oneshot;

/// Requests waiting for a frame at once; more are refused (busy).
pub const MAX_WAITING: usize = 8;

/// A model input turned back into a picture, and where it came from.
#[derive(Debug, Clone)]
pub struct ModelView {
    /// The camera the frame came from.
    pub camera: String,
    /// The input tensor de-normalised to RGB: the model's size, padding included.
    pub image: RgbImage,
    /// Size of the frame inside it (top-left; the rest is padding).
    pub content: (u32, u32),
    pub frame_origin: String,
    pub frame_number: u64,
    pub frame_size: (u32, u32),
    pub captured_ms: u64,
    /// `name version` of the model.
    pub model: String,
    /// `letterbox` or `stretch`.
    pub resize: String,
}

/// The prepared input cannot be shown as the manifest's picture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the prepared input has shape {shape:?}, not the manifest's")]
pub struct ViewError {
    pub shape: Vec<usize>,
}

pub type Reply = Result<ModelView, ViewError>;

struct Waiter {
    filed: Instant,
    /// Only a frame of this camera answers it; `None`: any camera.
    camera: Option<String>,
    reply: oneshot::Sender<Reply>,
}

#[derive(Debug, thiserror::Error)]
#[error("{MAX_WAITING} snapshot requests are already waiting for a frame")]
pub struct TapFull;

#[derive(Default)]
pub struct SnapshotTap {
    waiting: Mutex<Vec<Waiter>>,
}

impl SnapshotTap {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Files a request for the next frame popped from now on.
    pub fn request(&self, camera: Option<String>) -> Result<oneshot::Receiver<Reply>, TapFull> {
        let mut w = self.lock();
        w.retain(|x| !x.reply.is_closed());
        if w.len() >= MAX_WAITING {
            return Err(TapFull);
        }
        let (tx, rx) = oneshot::channel();
        w.push(Waiter { filed: Instant::now(), camera, reply: tx });
        Ok(rx)
    }

    /// Called by the inference thread after preparing a frame of `camera` it
    /// popped at `popped_at`: answers the requests for that camera (or any)
    /// filed before then; `view` runs only when someone is waiting.
    pub fn serve(&self, popped_at: Instant, camera: &str, view: impl FnOnce() -> Reply) {
        let due: Vec<Waiter> = {
            let mut w = self.lock();
            if w.is_empty() {
                return;
            }
            let (due, later) =
                w.drain(..).partition(|x| x.filed <= popped_at && x.camera.as_deref().is_none_or(|c| c == camera));
            *w = later;
            due
        };
        let due: Vec<Waiter> = due.into_iter().filter(|x| !x.reply.is_closed()).collect();
        if due.is_empty() {
            return;
        }
        let v = view();
        for x in due {
            let _ = x.reply.send(v.clone());
        }
    }

    pub fn waiting(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: u64) -> Reply {
        Ok(ModelView {
            camera: "cam0".into(),
            image: RgbImage::new(2, 2),
            content: (2, 1),
            frame_origin: "x".into(),
            frame_number: n,
            frame_size: (4, 2),
            captured_ms: 0,
            model: "m 1".into(),
            resize: "letterbox".into(),
        })
    }

    #[test]
    fn a_request_is_answered_by_the_first_frame_popped_after_it() {
        let tap = SnapshotTap::default();
        let before = Instant::now();
        let mut rx = tap.request(None).unwrap();
        // A frame popped before the request does not answer it.
        tap.serve(before, "cam0", || view(1));
        assert!(rx.try_recv().is_err());
        tap.serve(Instant::now(), "cam0", || view(2));
        assert_eq!(rx.try_recv().unwrap().unwrap().frame_number, 2);
        assert_eq!(tap.waiting(), 0);
    }

    #[test]
    fn a_request_for_one_camera_waits_for_that_camera() {
        let tap = SnapshotTap::default();
        let mut yard = tap.request(Some("yard".into())).unwrap();
        let mut any = tap.request(None).unwrap();
        tap.serve(Instant::now(), "door", || view(1));
        assert_eq!(any.try_recv().unwrap().unwrap().frame_number, 1);
        assert!(yard.try_recv().is_err(), "a door frame answered the yard request");
        tap.serve(Instant::now(), "yard", || view(2));
        assert_eq!(yard.try_recv().unwrap().unwrap().frame_number, 2);
        assert_eq!(tap.waiting(), 0);
    }

    #[test]
    fn nobody_waiting_builds_no_view_and_the_tap_is_bounded() {
        let tap = SnapshotTap::default();
        tap.serve(Instant::now(), "cam0", || panic!("view built for nobody"));
        let held: Vec<_> = (0..MAX_WAITING).map(|_| tap.request(None).unwrap()).collect();
        assert!(tap.request(None).is_err());
        drop(held); // requesters that gave up free their places
        assert!(tap.request(None).is_ok());
        assert_eq!(tap.waiting(), 1);
    }
}
