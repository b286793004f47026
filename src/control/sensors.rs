//! Sensor requests of the control socket: `camera list`, `camera snapshot`
//! and `mic level`.
//!
//! Owns turning the V4L2 inventory ([`crate::sources::camera::v4l::inventory`]), the
//! model-input tap ([`crate::inference::snapshot`]) and the microphone level history
//! ([`crate::sources::audio::level`]) into protocol reports. The daemon, not the CLI,
//! enumerates the cameras: it answers with the rights and the device
//! sandbox it really captures with (group `video`, `DeviceAllow=`), and
//! knows which node it streams from (docs/sensors.md).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use super::protocol::{
    CameraDevice, CameraFormat, CameraListReport, CameraSize, ErrorBody, ErrorCode, LevelSample, MAX_RESPONSE_BYTES,
    MicLevelReport, Response, SizeRange, SnapshotReport,
};
use super::server::{ControlContext, Limits, heavy};
use crate::config::{CameraConfig, CameraSource};
use crate::sources::audio::level::WINDOW_MS;
use crate::sources::camera::v4l::{self, DeviceInfo, SizeInfo};

/// Where the device nodes are.
pub const DEV_DIR: &str = "/dev";

/// The report of `found` for a daemon running `camera`: marks the node it
/// streams from. Pure; `sparkctl camera list --local` uses it too.
/// The V4L2 nodes found, marked `in_use` when one of `cameras` streams from
/// it; `source` and `configured_device` describe the first camera.
pub fn camera_report(found: Vec<DeviceInfo>, cameras: &[CameraConfig]) -> CameraListReport {
    let first = cameras.first().cloned().unwrap_or_default();
    let source = serde_json::to_value(first.source).ok().and_then(|v| v.as_str().map(String::from));
    // Compare real paths: the config may name a /dev/v4l/by-id/ link.
    let streaming: Vec<std::path::PathBuf> = cameras
        .iter()
        .filter(|c| c.source == CameraSource::V4l)
        .map(|c| std::fs::canonicalize(&c.device).unwrap_or_else(|_| c.device.clone()))
        .collect();
    let devices = found
        .into_iter()
        .map(|d| {
            let real = std::fs::canonicalize(&d.path).unwrap_or_else(|_| d.path.clone());
            CameraDevice {
                path: d.path.display().to_string(),
                in_use: streaming.contains(&real),
                driver: d.driver,
                card: d.card,
                bus: d.bus,
                capture: d.usable,
                formats: d
                    .details
                    .into_iter()
                    .map(|f| CameraFormat {
                        fourcc: f.fourcc,
                        description: f.description,
                        supported: f.supported,
                        truncated: f.truncated,
                        sizes: f.sizes.into_iter().map(size).collect(),
                    })
                    .collect(),
                error: d.error,
            }
        })
        .collect();
    CameraListReport {
        source: source.unwrap_or_default(),
        configured_device: first.device.display().to_string(),
        devices,
    }
}

fn size(s: SizeInfo) -> CameraSize {
    match s {
        SizeInfo::Discrete { width, height, intervals } => CameraSize {
            width,
            height,
            // Two decimals: 29.97, not 29.970029970029973.
            fps: intervals.into_iter().filter_map(v4l::fps_of).map(|f| (f * 100.0).round() / 100.0).collect(),
            range: None,
        },
        SizeInfo::Range { min_width, min_height, max_width, max_height, step_width, step_height } => CameraSize {
            width: min_width,
            height: min_height,
            fps: Vec::new(),
            range: Some(SizeRange { max_width, max_height, step_width, step_height }),
        },
    }
}

pub(super) async fn camera_list(ctx: &Arc<ControlContext>, limits: &Limits) -> Response {
    // Opening nodes and a few hundred ioctls: the blocking pool, not a worker.
    match heavy(limits, || v4l::inventory(Path::new(DEV_DIR))).await {
        Ok(found) => Response::Cameras(camera_report(found, ctx.config.cameras())),
        Err(e) => Response::Error(e),
    }
}

/// How long a snapshot waits for a frame: a few frame periods, at least
/// 10 s (a camera coming back), at most 50 s (sparkctl waits 60).
pub fn snapshot_deadline(fps: f64) -> Duration {
    let period = if fps.is_finite() && fps > 0.0 { 1.0 / fps } else { 1.0 };
    crate::config::seconds((3.0 * period + 2.0).clamp(10.0, 50.0))
}

pub(super) async fn camera_snapshot(ctx: &Arc<ControlContext>, limits: &Limits, camera: Option<String>) -> Response {
    let err = |code, m: String| Response::Error(ErrorBody::new(code, m));
    let Some(frames) = ctx.frames.as_ref() else {
        return err(ErrorCode::Unavailable, "no camera: camera.source = \"none\" runs no model on frames".into());
    };
    if let Some(id) = &camera
        && frames.lane(id).is_none()
    {
        let ids: Vec<&str> = frames.lanes().iter().map(|l| &*l.id).collect();
        let shown: String = id.chars().take(64).collect();
        return err(ErrorCode::BadRequest, format!("no camera {shown:?}; this daemon has {}", ids.join(", ")));
    }
    let rx = match ctx.shared.snapshots.request(camera.clone()) {
        Ok(rx) => rx,
        Err(e) => return err(ErrorCode::Busy, format!("{e}; try again")),
    };
    // The asked camera's rate, else the slowest camera's.
    let slowest = ctx
        .config
        .cameras()
        .iter()
        .filter(|c| camera.as_deref().is_none_or(|id| id == c.id))
        .map(|c| c.fps)
        .fold(f64::INFINITY, f64::min);
    let deadline = snapshot_deadline(slowest);
    let view = match tokio::time::timeout(deadline, rx).await {
        Err(_) => {
            return err(
                ErrorCode::Unavailable,
                format!(
                    "no camera frame reached the model within {} s: the camera is not delivering \
                     (sparkctl status shows camera errors; journalctl -u sparkd -g camera)",
                    deadline.as_secs()
                ),
            );
        }
        Ok(Err(_)) => return err(ErrorCode::Unavailable, "the inference thread stopped before answering".into()),
        Ok(Ok(Err(e))) => return err(ErrorCode::Internal, format!("preparing the snapshot: {e}")),
        Ok(Ok(Ok(v))) => v,
    };
    let (width, height) = view.image.dimensions();
    // Base64 is 4/3 of the bytes; leave room for the rest of the frame.
    if view.image.as_raw().len() / 3 * 4 > MAX_RESPONSE_BYTES - 64 * 1024 {
        return err(ErrorCode::TooLarge, format!("a {width}x{height} model input does not fit in one response"));
    }
    let encoded = match heavy(limits, move || {
        let b64 = base64::engine::general_purpose::STANDARD.encode(view.image.as_raw());
        (b64, view)
    })
    .await
    {
        Ok(x) => x,
        Err(e) => return Response::Error(e),
    };
    let (rgb_base64, v) = encoded;
    Response::Snapshot(SnapshotReport {
        camera: v.camera,
        width,
        height,
        rgb_base64,
        model: v.model,
        resize: v.resize,
        content_width: v.content.0,
        content_height: v.content.1,
        frame_origin: v.frame_origin,
        frame_number: v.frame_number,
        frame_width: v.frame_size.0,
        frame_height: v.frame_size.1,
        captured_ms: v.captured_ms,
    })
}

pub(super) fn mic_level(ctx: &ControlContext, from_seq: Option<u64>) -> Response {
    if !ctx.config.audio.enabled {
        return Response::Error(ErrorBody::new(
            ErrorCode::Unavailable,
            "the microphone is off: audio.enabled = false in the config (set audio.enabled = true and \
             audio.device, then restart sparkd)",
        ));
    }
    let (windows, next_seq, capture) = ctx.shared.audio_levels.since(from_seq);
    Response::MicLevel(MicLevelReport {
        device: ctx.config.audio.device.clone(),
        pcm: capture.pcm,
        sample_rate: capture.sample_rate,
        window_ms: WINDOW_MS,
        next_seq,
        windows: windows
            .into_iter()
            .map(|w| LevelSample { seq: w.seq, ts_ms: w.ts_ms, rms_dbfs: w.rms_dbfs, peak_dbfs: w.peak_dbfs })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::camera::v4l::FormatInfo;

    fn node(path: &str) -> DeviceInfo {
        DeviceInfo {
            path: path.into(),
            driver: "uvcvideo".into(),
            card: "Cam".into(),
            bus: "usb-1".into(),
            usable: true,
            formats: vec![],
            details: vec![FormatInfo {
                fourcc: "MJPG".into(),
                description: "Motion-JPEG".into(),
                supported: true,
                sizes: vec![
                    SizeInfo::Discrete { width: 640, height: 480, intervals: vec![(1, 30), (1001, 15000)] },
                    SizeInfo::Range {
                        min_width: 32,
                        min_height: 32,
                        max_width: 1920,
                        max_height: 1080,
                        step_width: 2,
                        step_height: 2,
                    },
                ],
                truncated: false,
            }],
            error: None,
        }
    }

    #[test]
    fn the_node_the_daemon_streams_from_is_marked_and_rates_are_fps() {
        let mut camera = CameraConfig { source: CameraSource::V4l, device: "/dev/video0".into(), ..Default::default() };
        let r = camera_report(vec![node("/dev/video0"), node("/dev/video2")], std::slice::from_ref(&camera));
        assert_eq!(r.source, "v4l");
        assert_eq!(r.devices.iter().map(|d| d.in_use).collect::<Vec<_>>(), [true, false]);
        let sizes = &r.devices[0].formats[0].sizes;
        assert_eq!(sizes[0].fps, [30.0, 14.99]);
        assert_eq!((sizes[1].width, sizes[1].range.as_ref().map(|r| r.max_width)), (32, Some(1920)));
        // Another source streams from no node.
        camera.source = CameraSource::Replay;
        assert!(camera_report(vec![node("/dev/video0")], &[camera]).devices.iter().all(|d| !d.in_use));
    }

    #[test]
    fn snapshot_waits_a_few_frames_within_bounds() {
        assert_eq!(snapshot_deadline(5.0), Duration::from_secs(10));
        assert_eq!(snapshot_deadline(0.1), Duration::from_secs(32));
        assert_eq!(snapshot_deadline(0.01), Duration::from_secs(50));
    }
}
