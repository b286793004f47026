//! Replay of a recorded MJPEG stream: a `.mjpeg`/`.mjpg` file of
//! concatenated JPEG frames (what `ffmpeg -f mjpeg` or
//! `v4l2-ctl --stream-to` write from a UVC camera), looped at `camera.fps`.
//!
//! Owns splitting the file into frames; decoding goes through the same
//! [`super::convert::mjpeg_to_rgb`] as live capture (so recorded frames
//! without Huffman tables work), and it is a [`FrameSource`], so it runs
//! under the same reconnect loop as a camera ([`super::live::run`]).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::convert;
use super::live::{CaptureError, FrameSource};
use super::{Frame, convert::ConvertError};
use crate::record::now_ms;

/// Byte ranges of the JPEG frames in `data` (SOI … EOI), in order.
/// Bytes between frames (padding, multipart headers) are skipped; a
/// truncated last frame is left out.
pub fn split_frames(data: &[u8]) -> Vec<Range<usize>> {
    let mut frames = Vec::new();
    let mut i = 0;
    while let Some(off) = find_soi(&data[i..]) {
        let start = i + off;
        match frame_end(data, start) {
            Some(end) => {
                frames.push(start..end);
                i = end;
            }
            None => break,
        }
    }
    frames
}

fn find_soi(data: &[u8]) -> Option<usize> {
    data.windows(3).position(|w| w[0] == 0xFF && w[1] == 0xD8 && w[2] == 0xFF)
}

/// End (exclusive, after EOI) of the JPEG starting at `start`.
fn frame_end(data: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 2;
    loop {
        // Header segments up to (and including) a scan header.
        if i + 2 > data.len() || data[i] != 0xFF {
            return None;
        }
        let marker = data[i + 1];
        match marker {
            0xFF => {
                i += 1;
                continue;
            }
            0xD9 => return Some(i + 2),
            0x01 | 0xD0..=0xD7 => {
                i += 2;
                continue;
            }
            _ => {}
        }
        if i + 4 > data.len() {
            return None;
        }
        let len = u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize;
        i += 2 + len;
        if marker != 0xDA {
            continue;
        }
        // Entropy-coded data: runs to the next marker that is neither a
        // stuffed 0xFF00 nor a restart marker.
        loop {
            let ff = data.get(i..)?.iter().position(|&b| b == 0xFF)? + i;
            let next = *data.get(ff + 1)?;
            if next == 0x00 || (0xD0..=0xD7).contains(&next) || next == 0xFF {
                i = ff + 1;
                continue;
            }
            i = ff;
            break;
        }
    }
}

/// Largest recording replayed: the whole file is held in memory.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Opens `path` as the daemon would and returns its frame count: a start-up
/// check for `camera.source = "mjpeg-file"`.
pub fn probe(path: &Path) -> Result<usize, CaptureError> {
    let mut s = MjpegFileSource::new(path, 1.0);
    s.open()?;
    Ok(s.frame_count())
}

/// Loops over the frames of an MJPEG file at `fps`.
pub struct MjpegFileSource {
    path: PathBuf,
    fps: f64,
    data: Vec<u8>,
    frames: Vec<Range<usize>>,
    next_index: usize,
    next_due: Option<Instant>,
    number: u64,
}

impl MjpegFileSource {
    pub fn new(path: &Path, fps: f64) -> Self {
        Self {
            path: path.to_path_buf(),
            fps: if fps.is_finite() && fps > 0.0 { fps } else { 1.0 },
            data: Vec::new(),
            frames: Vec::new(),
            next_index: 0,
            next_due: None,
            number: 0,
        }
    }

    /// Frames found by the last `open`.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

impl FrameSource for MjpegFileSource {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn open(&mut self) -> Result<(), CaptureError> {
        let open_err = |source| CaptureError::Open { device: self.name(), source };
        let size = std::fs::metadata(&self.path).map_err(open_err)?.len();
        if size > MAX_FILE_BYTES {
            return Err(CaptureError::Unsupported {
                device: self.name(),
                message: format!("{size} bytes; recordings of at most {MAX_FILE_BYTES} bytes are replayed"),
            });
        }
        // Capped again: a device node or a growing file reports no true size.
        self.data = crate::sys::capped_read::read_capped(&self.path, MAX_FILE_BYTES).map_err(open_err)?;
        self.frames = split_frames(&self.data);
        if self.frames.is_empty() {
            return Err(CaptureError::Unsupported {
                device: self.name(),
                message: "no JPEG frames in the file".into(),
            });
        }
        self.next_index = 0;
        self.next_due = None;
        Ok(())
    }

    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        if self.frames.is_empty() {
            return Err(CaptureError::Unsupported { device: self.name(), message: "not open".into() });
        }
        // A file has no clock of its own: wait for the frame's turn.
        let period = crate::config::frame_period(self.fps);
        let now = Instant::now();
        let due = self.next_due.unwrap_or(now);
        if due > now {
            std::thread::sleep(due - now);
        }
        // Behind schedule (slow decode): restart from now, no burst.
        self.next_due = Some(now.checked_sub(period).map_or(due, |p| due.max(p)) + period);
        let range = self.frames[self.next_index].clone();
        self.next_index = (self.next_index + 1) % self.frames.len();
        let image = convert::mjpeg_to_rgb(&self.data[range])
            .map_err(|source: ConvertError| CaptureError::Frame { device: self.name(), source })?;
        self.number += 1;
        let origin = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Frame {
            number: self.number,
            captured_at: Instant::now(),
            captured_ms: now_ms(),
            origin,
            pixels: image.into(),
        })
    }

    fn close(&mut self) {
        self.data = Vec::new();
        self.frames.clear();
    }
}

/// A camera thread's body replaying `path` at `fps` until `stop` (same
/// loop, counters and queue policy as a live camera).
pub fn run(
    path: &Path,
    fps: f64,
    queue: std::sync::Arc<super::FrameQueue>,
    shared: std::sync::Arc<crate::state::Shared>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    super::live::run(MjpegFileSource::new(path, fps), super::live::LiveOptions::default(), queue, shared, stop);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use image::RgbImage;
    use image::codecs::jpeg::JpegEncoder;

    use super::*;
    use crate::sources::camera::FrameQueue;
    use crate::sources::camera::live::{self, LiveOptions};
    use crate::state::Shared;

    fn jpeg(colour: [u8; 3]) -> Vec<u8> {
        // A gradient on top of the colour, so the scan data holds 0xFF00
        // stuffing and many codes.
        let img = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([colour[0].saturating_add((x % 8) as u8), colour[1], colour[2].saturating_sub((y % 8) as u8)])
        });
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
        out
    }

    fn strip_dht(j: &[u8]) -> Vec<u8> {
        let mut out = j[..2].to_vec();
        let mut i = 2;
        while j[i + 1] != 0xDA {
            let len = u16::from_be_bytes([j[i + 2], j[i + 3]]) as usize;
            if j[i + 1] != 0xC4 {
                out.extend_from_slice(&j[i..i + 2 + len]);
            }
            i += 2 + len;
        }
        out.extend_from_slice(&j[i..]);
        out
    }

    #[test]
    fn concatenated_jpegs_split_at_their_boundaries() {
        let frames = [jpeg([200, 0, 0]), strip_dht(&jpeg([0, 200, 0])), jpeg([0, 0, 200])];
        let mut file = b"--junk before the first frame--".to_vec();
        let mut expected = Vec::new();
        for f in &frames {
            expected.push(file.len()..file.len() + f.len());
            file.extend_from_slice(f);
            file.extend_from_slice(b"\r\n");
        }
        file.extend_from_slice(&frames[0][..frames[0].len() / 2]); // truncated tail
        assert_eq!(split_frames(&file), expected);
        // Back to back, the last one ending the file.
        let packed = frames.concat();
        assert_eq!(split_frames(&packed).len(), 3);
        assert_eq!(split_frames(&packed)[2].end, packed.len());
    }

    #[test]
    fn mjpeg_file_replays_in_a_loop_through_the_live_loop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mjpeg");
        let colours = [[200u8, 20, 20], [20, 200, 20], [20, 20, 200]];
        let bytes: Vec<u8> = colours
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                let j = jpeg(*c);
                if i == 1 { strip_dht(&j) } else { j } // a UVC-style frame without DHT
            })
            .collect();
        std::fs::write(&path, bytes).unwrap();

        let queue = FrameQueue::new(64);
        let shared = Arc::new(Shared::new("t".into()));
        let stop = Arc::new(AtomicBool::new(false));
        let source = MjpegFileSource::new(&path, 200.0);
        let (q, sh, st) = (queue.clone(), shared.clone(), stop.clone());
        let t = std::thread::spawn(move || live::run(source, LiveOptions::default(), q, sh, st));
        while queue.captured.load(Ordering::Relaxed) < 7 {
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Ordering::Relaxed);
        let summary = t.join().unwrap();
        assert_eq!((summary.errors, summary.bad_frames), (0, 0));
        for n in 0..7 {
            let f = queue.pop(Duration::ZERO).unwrap();
            assert_eq!(f.origin, "clip.mjpeg");
            let p = f.pixels.to_rgb().get_pixel(32, 24).0;
            let want = colours[n % 3];
            // The strong channel of each frame, in file order, looped.
            let strongest = (0..3).max_by_key(|&c| p[c]).unwrap();
            let want_strongest = (0..3).max_by_key(|&c| want[c]).unwrap();
            assert_eq!(strongest, want_strongest, "frame {n}: {p:?}");
        }
    }

    #[test]
    fn a_missing_or_empty_file_is_an_open_error() {
        let mut s = MjpegFileSource::new(Path::new("/nonexistent/clip.mjpeg"), 5.0);
        assert!(matches!(s.open(), Err(CaptureError::Open { .. })));
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"not a jpeg at all").unwrap();
        let mut s = MjpegFileSource::new(f.path(), 5.0);
        assert!(matches!(s.open(), Err(CaptureError::Unsupported { .. })));
        assert!(probe(f.path()).is_err());
        std::fs::write(f.path(), jpeg([1, 2, 3]).repeat(2)).unwrap();
        assert_eq!(probe(f.path()).unwrap(), 2);
    }
}
