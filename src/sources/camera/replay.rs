//! Replay camera: loops over the JPEG/PNG files of a folder at a fixed rate.
//!
//! Stands in for a camera in the demo and in tests; decodes each file on
//! every pass, as a camera would deliver a new frame, so the cost is real.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Frame, FrameQueue};
use crate::record::now_ms;
use crate::sys::backoff::sleep_unless_stopped;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading replay folder {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replay folder {path} holds no .jpg/.jpeg/.png files (run scripts/setup.sh for the demo photos)")]
    Empty { path: PathBuf },
}

/// The image files of `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, ReplayError> {
    let rd = std::fs::read_dir(dir).map_err(|source| ReplayError::ReadDir { path: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ReplayError::Empty { path: dir.to_path_buf() });
    }
    Ok(files)
}

/// Runs until `stop` is set: decodes the next file and pushes it, paced to
/// `fps`. Undecodable files are logged once per pass and skipped.
pub fn run(files: Vec<PathBuf>, fps: f64, queue: Arc<FrameQueue>, stop: Arc<AtomicBool>) {
    let period = crate::config::frame_period(fps);
    let mut next = Instant::now();
    let mut number = 0u64;
    'outer: while !stop.load(Ordering::Relaxed) {
        let mut decoded_any = false;
        for path in &files {
            if stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            let image = match image::open(path) {
                Ok(img) => img.to_rgb8(),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "replay: cannot decode image; skipping");
                    continue;
                }
            };
            decoded_any = true;
            number += 1;
            let origin = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            queue.push(Frame {
                number,
                captured_at: Instant::now(),
                captured_ms: now_ms(),
                origin,
                pixels: image.into(),
            });
            next += period;
            let now = Instant::now();
            if next > now {
                sleep_unless_stopped(next - now, &stop);
            } else {
                next = now; // behind schedule: don't burst to catch up
            }
        }
        if !decoded_any {
            tracing::error!("replay: no file in the folder decodes; camera source idle");
            sleep_unless_stopped(Duration::from_secs(5), &stop);
        }
    }
    queue.close();
}
