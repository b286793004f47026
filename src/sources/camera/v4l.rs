//! V4L2 camera source (USB/UVC cameras; CSI cameras through libcamera's
//! V4L2 compatibility layer), through the `v4l` crate.
//!
//! Owns device discovery, pixel-format negotiation, memory-mapped streaming,
//! pacing to `camera.fps` and conversion (via [`super::convert`]). Recovery
//! from unplugs is [`super::live::run`]'s job: every failure here is an
//! error returned to it, never a panic or an exit.
//!
//! Ran here: format choice, the reconnect loop (with a fake source) and the
//! conversions. Real capture needs a `/dev/video*` device (docs/sensors.md,
//! tests/hardware/camera.sh).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use v4l::buffer::Type;
use v4l::capability::Flags as CapFlags;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::video::Capture;
use v4l::{Device, Format, FourCC};

use super::convert::{self, PixelFormat, RawYuv};
use super::live::{self, CaptureError, FrameSource, LiveOptions, Pacer};
use super::{Frame, FrameQueue, Pixels};
use crate::config::CameraConfig;
use crate::record::now_ms;
use crate::state::Shared;

/// Memory-mapped buffers asked of the driver: enough to keep capturing
/// while one is being converted, few enough to keep latency low.
const BUFFERS: u32 = 4;
/// No frame for this long means the device stalled or vanished.
const STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// One wait for a buffer; between waits the stop flag is checked.
const POLL_TIMEOUT: Duration = Duration::from_millis(250);

/// One `/dev/video*` node and what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub path: PathBuf,
    pub driver: String,
    pub card: String,
    pub bus: String,
    /// Single-planar video capture with streaming I/O: what we can use.
    pub usable: bool,
    /// Capture formats as `FOURCC (description)`.
    pub formats: Vec<String>,
    /// Formats with their frame sizes and rates; filled by [`inventory`]
    /// only (the log lines need just the names).
    pub details: Vec<FormatInfo>,
    /// Set when the node could not be queried.
    pub error: Option<String>,
}

/// Most nodes, formats, sizes and rates [`inventory`] reports: a driver
/// that enumerates without end cannot grow the answer without bound.
pub const MAX_NODES: usize = 64;
pub const MAX_FORMATS: usize = 32;
pub const MAX_SIZES: usize = 64;
pub const MAX_RATES: usize = 16;

/// One capture format of a node (`VIDIOC_ENUM_FMT`) with its frame sizes
/// (`VIDIOC_ENUM_FRAMESIZES`) and, per discrete size, its frame intervals
/// (`VIDIOC_ENUM_FRAMEINTERVALS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatInfo {
    pub fourcc: String,
    pub description: String,
    /// sparkd converts this format.
    pub supported: bool,
    pub sizes: Vec<SizeInfo>,
    /// More sizes (or rates) than the report bounds were left out.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeInfo {
    /// One size; `intervals` are frame periods as (numerator, denominator)
    /// seconds, fastest first as the driver lists them. A stepwise interval
    /// range is given as its two ends.
    Discrete { width: u32, height: u32, intervals: Vec<(u32, u32)> },
    /// Any size in a range (stepwise or continuous drivers, libcamera).
    Range { min_width: u32, min_height: u32, max_width: u32, max_height: u32, step_width: u32, step_height: u32 },
}

/// Frames per second of a frame period `num/den` seconds; `None` for 0.
pub fn fps_of((num, den): (u32, u32)) -> Option<f64> {
    (num > 0 && den > 0).then(|| den as f64 / num as f64)
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(e) => write!(f, "{}: {e}", self.path.display()),
            None => write!(
                f,
                "{} ({}: {}, {}){} formats [{}]",
                self.path.display(),
                self.driver,
                self.card,
                self.bus,
                if self.usable { "" } else { " not a capture device;" },
                self.formats.join(", ")
            ),
        }
    }
}

/// The `/dev/video<N>` nodes, in numeric order.
pub fn video_nodes(dev_dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dev_dir) else { return Vec::new() };
    let mut nodes: Vec<(u32, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("video")?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

/// Queries every `/dev/video*` node: driver, card, bus, capture formats.
/// (UVC cameras expose a second node per camera for metadata; it shows up
/// here as not usable.)
pub fn discover() -> Vec<DeviceInfo> {
    video_nodes(Path::new("/dev")).into_iter().map(|p| describe(&p)).collect()
}

/// What one node says about itself.
pub fn describe(path: &Path) -> DeviceInfo {
    let mut info = DeviceInfo {
        path: path.to_path_buf(),
        driver: String::new(),
        card: String::new(),
        bus: String::new(),
        usable: false,
        formats: Vec::new(),
        details: Vec::new(),
        error: None,
    };
    let dev = match Device::with_path(path) {
        Ok(d) => d,
        Err(e) => {
            info.error = Some(format!("cannot open: {e}"));
            return info;
        }
    };
    match dev.query_caps() {
        Ok(caps) => {
            info.driver = caps.driver;
            info.card = caps.card;
            info.bus = caps.bus;
            info.usable = caps.capabilities.contains(CapFlags::VIDEO_CAPTURE | CapFlags::STREAMING);
        }
        Err(e) => {
            info.error = Some(format!("VIDIOC_QUERYCAP: {e}"));
            return info;
        }
    }
    if let (true, Ok(formats)) = (info.usable, dev.enum_formats()) {
        info.formats = formats.iter().map(|f| format!("{} ({})", f.fourcc, f.description)).collect();
    }
    info
}

/// Formats `auto` takes, best first.
///
/// MJPEG first: at 640x480 and above a USB 2 camera often offers 30 fps
/// only in MJPEG, and the JPEG decode costs less than the USB bandwidth
/// YUYV would need. YUYV next (every UVC camera has it). NV12 and YU12
/// last: they are what libcamera's V4L2 layer offers for CSI cameras, half
/// the bytes of YUYV, and as cheap to convert.
pub const AUTO_ORDER: [PixelFormat; 4] = [PixelFormat::Mjpeg, PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::Yu12];

/// Every `/dev/video*` node under `dev_dir` with its formats, frame sizes
/// and rates (`sparkctl camera list`). Read-only ioctls: safe on a node
/// another process (or this daemon) is streaming from.
pub fn inventory(dev_dir: &Path) -> Vec<DeviceInfo> {
    video_nodes(dev_dir).into_iter().take(MAX_NODES).map(|p| describe_formats(describe(&p))).collect()
}

/// Adds the per-format sizes and rates to a described capture node.
fn describe_formats(mut info: DeviceInfo) -> DeviceInfo {
    if info.error.is_some() || !info.usable {
        return info;
    }
    let dev = match Device::with_path(&info.path) {
        Ok(d) => d,
        Err(e) => {
            info.error = Some(format!("cannot open: {e}"));
            return info;
        }
    };
    let formats = match dev.enum_formats() {
        Ok(f) => f,
        Err(e) => {
            info.error = Some(format!("VIDIOC_ENUM_FMT: {e}"));
            return info;
        }
    };
    for f in formats.into_iter().take(MAX_FORMATS) {
        let mut fi = FormatInfo {
            fourcc: f.fourcc.str().map(str::to_string).unwrap_or_else(|_| format!("{:?}", f.fourcc.repr)),
            description: f.description.clone(),
            supported: PixelFormat::from_fourcc(&f.fourcc.repr).is_some(),
            sizes: Vec::new(),
            truncated: false,
        };
        // A driver without VIDIOC_ENUM_FRAMESIZES just has no size list.
        let sizes = dev.enum_framesizes(f.fourcc).unwrap_or_default();
        fi.truncated = sizes.len() > MAX_SIZES;
        for size in sizes.into_iter().take(MAX_SIZES) {
            fi.sizes.push(match size.size {
                FrameSizeEnum::Discrete(d) => {
                    let ivals = dev.enum_frameintervals(f.fourcc, d.width, d.height).unwrap_or_default();
                    fi.truncated |= ivals.len() > MAX_RATES;
                    let intervals = ivals
                        .into_iter()
                        .take(MAX_RATES)
                        .flat_map(|i| match i.interval {
                            FrameIntervalEnum::Discrete(t) => vec![(t.numerator, t.denominator)],
                            FrameIntervalEnum::Stepwise(r) => {
                                vec![(r.min.numerator, r.min.denominator), (r.max.numerator, r.max.denominator)]
                            }
                        })
                        .collect();
                    SizeInfo::Discrete { width: d.width, height: d.height, intervals }
                }
                FrameSizeEnum::Stepwise(r) => SizeInfo::Range {
                    min_width: r.min_width,
                    min_height: r.min_height,
                    max_width: r.max_width,
                    max_height: r.max_height,
                    step_width: r.step_width,
                    step_height: r.step_height,
                },
            });
        }
        info.details.push(fi);
    }
    info
}

/// No offered pixel format is one sparkd converts (or the configured one is
/// not offered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no usable pixel format (camera.pixel_format = {preference:?}; the device offers [{}]; \
     sparkd converts MJPG, YUYV, NV12 and YU12)",
    offered.join(", ")
)]
pub struct NoUsableFormat {
    pub preference: String,
    pub offered: Vec<String>,
}

/// Picks the pixel format from what the device offers. `preference` is
/// `camera.pixel_format`: `auto` ([`AUTO_ORDER`]), `mjpeg`, `yuyv`, `nv12`
/// or `yu12`.
pub fn choose_format(preference: &str, offered: &[[u8; 4]]) -> Result<PixelFormat, NoUsableFormat> {
    let has = |f: PixelFormat| offered.iter().any(|o| PixelFormat::from_fourcc(o) == Some(f));
    let one;
    let wanted: &[PixelFormat] = match PixelFormat::from_name(preference) {
        Some(f) => {
            one = [f];
            &one
        }
        None => &AUTO_ORDER,
    };
    wanted.iter().copied().find(|f| has(*f)).ok_or_else(|| NoUsableFormat {
        preference: preference.to_string(),
        offered: offered.iter().map(|o| String::from_utf8_lossy(o).into_owned()).collect(),
    })
}

/// What was agreed with the driver.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    format: PixelFormat,
    width: u32,
    height: u32,
    stride: usize,
}

/// A V4L2 capture device as a [`FrameSource`].
pub struct V4lSource {
    config: CameraConfig,
    device: Option<Device>,
    stream: Option<MmapStream<'static>>,
    negotiated: Option<Negotiated>,
    pacer: Pacer,
    number: u64,
    /// When the last buffer arrived (or the stream started).
    last_buffer: Instant,
    /// The daemon's stop flag: a blocked wait for a buffer gives up on it.
    stop: Option<Arc<AtomicBool>>,
    /// Where finished frames' buffers come back: a raw frame is copied
    /// into one of those rather than a new allocation.
    spares: Option<Arc<FrameQueue>>,
}

impl V4lSource {
    pub fn new(config: CameraConfig) -> Self {
        let pacer = Pacer::new(config.fps);
        Self {
            config,
            device: None,
            stream: None,
            negotiated: None,
            pacer,
            number: 0,
            last_buffer: Instant::now(),
            stop: None,
            spares: None,
        }
    }

    /// A source whose waits for a buffer end when `stop` is set, copying
    /// raw frames into the buffers `queue` recycles.
    pub fn for_queue(config: CameraConfig, stop: Arc<AtomicBool>, queue: Arc<FrameQueue>) -> Self {
        Self { stop: Some(stop), spares: Some(queue), ..Self::new(config) }
    }

    fn path(&self) -> String {
        self.config.device.display().to_string()
    }

    fn io(&self, what: &'static str) -> impl Fn(std::io::Error) -> CaptureError + '_ {
        move |source| CaptureError::Io { what, device: self.path(), source }
    }

    fn negotiate(&self, dev: &Device) -> Result<Negotiated, CaptureError> {
        let unsupported = |message: String| CaptureError::Unsupported { device: self.path(), message };
        let caps = dev.query_caps().map_err(self.io("VIDIOC_QUERYCAP"))?;
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE | CapFlags::STREAMING) {
            let others = discover().into_iter().filter(|d| d.usable).map(|d| d.to_string()).collect::<Vec<_>>();
            return Err(unsupported(format!(
                "{} ({}) is not a single-planar streaming capture device (capabilities {}); capture devices here: [{}]",
                caps.card,
                caps.driver,
                caps.capabilities,
                others.join("; ")
            )));
        }
        let offered: Vec<[u8; 4]> =
            dev.enum_formats().map_err(self.io("VIDIOC_ENUM_FMT"))?.iter().map(|f| f.fourcc.repr).collect();
        let format = choose_format(&self.config.pixel_format, &offered).map_err(|e| unsupported(e.to_string()))?;
        let asked = Format::new(self.config.width, self.config.height, FourCC::new(&format.fourcc()));
        let got = dev.set_format(&asked).map_err(self.io("VIDIOC_S_FMT"))?;
        if got.fourcc.repr != format.fourcc() {
            return Err(unsupported(format!("asked for {}, the driver set {}", asked.fourcc, got.fourcc)));
        }
        if (got.width, got.height) != (self.config.width, self.config.height) {
            tracing::info!(
                device = %self.path(),
                asked = %format!("{}x{}", self.config.width, self.config.height),
                got = %format!("{}x{}", got.width, got.height),
                "camera picked the nearest size it supports"
            );
        }
        // Ask the device for about camera.fps; many UVC cameras only offer
        // 30/15 fps, and the pacer decimates to the exact rate anyway.
        let fps = self.config.fps.ceil().clamp(1.0, 240.0) as u32;
        if let Err(e) = dev.set_params(&v4l::video::capture::Parameters::with_fps(fps)) {
            tracing::debug!(device = %self.path(), error = %e, "camera did not take a frame rate; pacing in software");
        }
        // Drivers may leave bytesperline 0 (or too small); rows are then packed.
        let stride = (got.stride as usize).max(format.min_stride(got.width));
        Ok(Negotiated { format, width: got.width, height: got.height, stride })
    }
}

impl FrameSource for V4lSource {
    fn name(&self) -> String {
        self.path()
    }

    fn open(&mut self) -> Result<(), CaptureError> {
        self.close();
        let dev = Device::with_path(&self.config.device)
            .map_err(|source| CaptureError::Open { device: self.path(), source })?;
        let negotiated = self.negotiate(&dev)?;
        let mut stream =
            MmapStream::with_buffers(&dev, Type::VideoCapture, BUFFERS).map_err(self.io("VIDIOC_REQBUFS/mmap"))?;
        stream.set_timeout(POLL_TIMEOUT);
        tracing::info!(
            device = %self.path(),
            format = %negotiated.format,
            size = %format!("{}x{}", negotiated.width, negotiated.height),
            fps = self.config.fps,
            "camera opened"
        );
        self.device = Some(dev);
        self.stream = Some(stream);
        self.negotiated = Some(negotiated);
        self.pacer.reset();
        self.last_buffer = Instant::now();
        Ok(())
    }

    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        let device = self.path();
        let (Some(stream), Some(n)) = (self.stream.as_mut(), self.negotiated) else {
            return Err(CaptureError::Unsupported { device, message: "not open".into() });
        };
        loop {
            let (buf, meta) = match CaptureStream::next(stream) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    let stopping = self.stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed));
                    if stopping || self.last_buffer.elapsed() >= STALL_TIMEOUT {
                        return Err(CaptureError::Stalled { device, timeout: STALL_TIMEOUT });
                    }
                    continue;
                }
                // Spurious wake-up of the non-blocking fd: poll again.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(source) => return Err(CaptureError::Io { what: "VIDIOC_QBUF/DQBUF", device, source }),
            };
            let now = Instant::now();
            self.last_buffer = now;
            // Drained continuously, converted only when due.
            if !self.pacer.admit(now) {
                continue;
            }
            if meta.flags.contains(v4l::buffer::Flags::ERROR) {
                // The driver says the data is corrupt (USB packet loss).
                return Err(CaptureError::CorruptBuffer { device });
            }
            let used = (meta.bytesused as usize).min(buf.len());
            let data = if used > 0 { &buf[..used] } else { buf };
            // Raw YUV stays as it came: inference samples it straight into
            // the model input, with no RGB copy of the whole frame.
            let pixels = match n.format {
                PixelFormat::Mjpeg => convert::mjpeg_to_rgb(data).map(Pixels::Rgb),
                yuv => {
                    let mut copy = self.spares.as_ref().map(|q| q.spare_buffer()).unwrap_or_default();
                    copy.extend_from_slice(data);
                    RawYuv::new(yuv, copy, n.width, n.height, n.stride).map(Pixels::Yuv)
                }
            }
            .map_err(|source| CaptureError::Frame { device: device.clone(), source })?;
            self.number += 1;
            return Ok(Frame { number: self.number, captured_at: now, captured_ms: now_ms(), origin: device, pixels });
        }
    }

    fn close(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            // The v4l crate's Drop panics when STREAMOFF fails with anything
            // but ENODEV (and a panic aborts the release build). Stop here
            // first; if that fails with another error, leak the buffers
            // (once per outage) rather than abort the daemon.
            match stream.stop() {
                Ok(()) => drop(stream),
                Err(e) if e.raw_os_error() == Some(19) => drop(stream),
                Err(e) => {
                    tracing::warn!(device = %self.path(), error = %e, "VIDIOC_STREAMOFF failed; releasing the buffers is left to exit");
                    std::mem::forget(stream);
                }
            }
        }
        self.device = None;
        self.negotiated = None;
    }
}

/// The camera thread's body for `camera.source = "v4l"`: streams from
/// `config.device` into `queue` until `stop`, reopening after any failure.
pub fn run(config: CameraConfig, queue: Arc<FrameQueue>, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    if !config.device.exists() {
        let present = discover().iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; ");
        tracing::warn!(
            device = %config.device.display(),
            present = %if present.is_empty() { "no /dev/video* nodes" } else { &present },
            "camera device not present (yet); waiting for it"
        );
    }
    let source = V4lSource::for_queue(config, stop.clone(), Arc::clone(&queue));
    live::run(source, LiveOptions::default(), queue, shared, stop);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_mjpeg_then_yuyv() {
        assert_eq!(choose_format("auto", &[*b"YUYV", *b"MJPG"]), Ok(PixelFormat::Mjpeg));
        assert_eq!(choose_format("auto", &[*b"YUYV", *b"NV12"]), Ok(PixelFormat::Yuyv));
        assert_eq!(choose_format("yuyv", &[*b"MJPG", *b"YUYV"]), Ok(PixelFormat::Yuyv));
    }

    #[test]
    fn an_explicit_format_the_device_lacks_is_an_error_naming_what_it_offers() {
        let e = choose_format("mjpeg", &[*b"YUYV", *b"NV12"]).unwrap_err().to_string();
        assert!(e.contains("YUYV, NV12") && e.contains("\"mjpeg\""), "{e}");
        assert!(choose_format("auto", &[*b"H264"]).is_err());
    }

    #[test]
    fn video_nodes_are_numeric_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["video10", "video2", "video0", "videox", "media0", "video-meta"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let names: Vec<String> =
            video_nodes(dir.path()).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["video0", "video2", "video10"]);
    }

    #[test]
    fn a_missing_device_is_an_open_error_not_a_panic() {
        let c = CameraConfig { device: "/dev/video-does-not-exist".into(), ..CameraConfig::default() };
        let mut s = V4lSource::new(c);
        assert!(matches!(s.open(), Err(CaptureError::Open { .. })));
        assert!(matches!(s.next_frame(), Err(CaptureError::Unsupported { .. })));
        s.close();
        // Describing a regular file reports the failure instead of panicking.
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(describe(f.path()).error.is_some());
    }

    #[test]
    fn inventory_of_no_nodes_is_empty_and_a_bogus_node_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        assert!(inventory(dir.path()).is_empty());
        std::fs::write(dir.path().join("video0"), b"not a device").unwrap();
        let found = inventory(dir.path());
        assert_eq!(found.len(), 1);
        assert!(!found[0].usable && found[0].error.is_some() && found[0].details.is_empty(), "{:?}", found[0]);
    }

    #[test]
    fn frame_periods_become_rates() {
        assert_eq!(fps_of((1, 30)), Some(30.0));
        assert_eq!(fps_of((1001, 30000)).map(|f| (f * 100.0).round()), Some(2997.0));
        assert_eq!(fps_of((0, 30)), None);
        assert_eq!(fps_of((1, 0)), None);
    }

    #[test]
    fn auto_takes_nv12_then_yu12_when_nothing_better_is_offered() {
        assert_eq!(choose_format("auto", &[*b"YU12", *b"NV12", *b"H264"]), Ok(PixelFormat::Nv12));
        assert_eq!(choose_format("auto", &[*b"YU12", *b"RGB3"]), Ok(PixelFormat::Yu12));
        assert_eq!(choose_format("nv12", &[*b"YUYV", *b"NV12"]), Ok(PixelFormat::Nv12));
        assert!(choose_format("yu12", &[*b"NV12"]).unwrap_err().offered.contains(&"NV12".to_string()));
    }
}
