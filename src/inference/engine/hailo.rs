//! Hailo-8 engine: the safe wrapper over `hailo-sys`.
//!
//! Owns every HailoRT handle spark-edge creates (vdevice, HEF, the configured
//! network group, input and output vstreams) and their release order; the
//! NCHW to NHWC transposes at the boundary and the input's element type;
//! and turning `hailo_status` codes
//! into [`HailoError`]s that say what failed and whether the device is gone
//! ([`HailoError::failure`]). It does not decide between Hailo and the CPU:
//! the daemon does, from that classification.
//!
//! **Architecture Invariant:** this module and the `hailo-sys` crate are the
//! only places with `unsafe`. Every HailoRT handle is owned by exactly one
//! guard whose `Drop` releases it; guards hold an `Arc` of the loaded library,
//! so the library outlives every handle.
//!
//! Data path per frame (synchronous vstream API, scheduler on): the input
//! vstream takes the HEF's own element type. A UINT8 input (Hailo Model Zoo
//! HEFs, normalisation on the chip) gets uint8 NHWC bytes straight from the
//! resize ([`HailoEngine::infer_frame`]); a FLOAT32 input gets our NCHW `f32`
//! tensor transposed to NHWC, quantised by HailoRT; any other input type is
//! refused at open ([`HailoError::InputFormat`]). Both go to
//! `hailo_vstream_write_raw_buffer`. Each output is de-quantised to float32
//! and read with `hailo_vstream_read_raw_buffer`: tensors are transposed back
//! to NCHW `[1, C, H, W]`; an on-chip NMS output (`HAILO_NMS_BY_CLASS`, or
//! `HAILO_NMS` where an older library names it so) is read whole, at the frame
//! size HailoRT reports, and handed on as shape `[number_of_classes,
//! max_bboxes_per_class]` for the `hailo-nms` decoder, which checks every
//! count against the buffer.
//! Frames in flight ([`Engine::submit`] / [`Engine::collect`]): a pool of
//! prepare workers (`hailo-prep-N`, [`auto_prepare_workers`]) letterboxes each
//! frame into one of `depth` reused buffers; a writer thread (`hailo-write`)
//! puts them back in submission order and writes them to the input vstream, and a reader thread
//! (`hailo-read`) reads each frame's outputs, in the order written, and hands
//! them back tagged, over bounded channels (HailoRT's vstreams_example.c keeps
//! frames in flight the same way from C). After a failure no further frame is
//! written or read: the frames behind it come back as
//! [`HailoError::Abandoned`] (so the caller re-runs them elsewhere), and the
//! vstreams are cleared once nothing is in flight, before the next frame.
//! Outputs come in the HEF's sorted output order
//! (`hailo_hef_get_sorted_output_names`, which for a network compiled from
//! ONNX follows the ONNX model's output order), not the alphabetical order in
//! which HailoRT hands out vstream params. Output names are HailoRT vstream
//! names (`<network group>/<layer>`), not ONNX names.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::{CString, c_char};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use hailo_sys as sys;

use super::{Completed, Engine, EngineError, EngineKind, Output};
use crate::inference::model::InputSpec;
use crate::inference::prepare;
use crate::inference::vision::{self, Tensor};
use crate::sources::camera::{Pixels, PixelsRef};

/// HailoRT arrays are sized for this many streams per network group.
const MAX_STREAMS: usize = sys::HAILO_MAX_STREAMS_COUNT as usize;
/// The most devices a scan reports here (a Pi 5 has one PCIe slot).
const MAX_DEVICES: usize = 16;

// ---- status codes ---------------------------------------------------------

/// A `hailo_status` value, printed with its HailoRT name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HailoStatus(pub u32);

impl HailoStatus {
    pub const SUCCESS: Self = Self(0);
    pub const TIMEOUT: Self = Self(4);
    pub const INVALID_HEF: Self = Self(26);
    pub const DRIVER_OPERATION_FAILED: Self = Self(36);
    pub const DEVICE_IN_USE: Self = Self(73);
    pub const OUT_OF_PHYSICAL_DEVICES: Self = Self(74);
    pub const INVALID_DRIVER_VERSION: Self = Self(76);
    pub const DRIVER_TIMEOUT: Self = Self(87);

    /// HailoRT's name for the code (as in `hailort.h`).
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "HAILO_SUCCESS",
            1 => "HAILO_UNINITIALIZED",
            2 => "HAILO_INVALID_ARGUMENT",
            3 => "HAILO_OUT_OF_HOST_MEMORY",
            4 => "HAILO_TIMEOUT",
            5 => "HAILO_INSUFFICIENT_BUFFER",
            6 => "HAILO_INVALID_OPERATION",
            7 => "HAILO_NOT_IMPLEMENTED",
            8 => "HAILO_INTERNAL_FAILURE",
            9 => "HAILO_DATA_ALIGNMENT_FAILURE",
            10 => "HAILO_CHUNK_TOO_LARGE",
            11 => "HAILO_INVALID_LOGGER_LEVEL",
            12 => "HAILO_CLOSE_FAILURE",
            13 => "HAILO_OPEN_FILE_FAILURE",
            14 => "HAILO_FILE_OPERATION_FAILURE",
            15 => "HAILO_UNSUPPORTED_CONTROL_PROTOCOL_VERSION",
            16 => "HAILO_UNSUPPORTED_FW_VERSION",
            17 => "HAILO_INVALID_CONTROL_RESPONSE",
            18 => "HAILO_FW_CONTROL_FAILURE",
            19 => "HAILO_ETH_FAILURE",
            20 => "HAILO_ETH_INTERFACE_NOT_FOUND",
            21 => "HAILO_ETH_RECV_FAILURE",
            22 => "HAILO_ETH_SEND_FAILURE",
            23 => "HAILO_INVALID_FIRMWARE",
            24 => "HAILO_INVALID_CONTEXT_COUNT",
            25 => "HAILO_INVALID_FRAME",
            26 => "HAILO_INVALID_HEF",
            27 => "HAILO_PCIE_NOT_SUPPORTED_ON_PLATFORM",
            28 => "HAILO_INTERRUPTED_BY_SIGNAL",
            29 => "HAILO_START_VDMA_CHANNEL_FAIL",
            30 => "HAILO_SYNC_VDMA_BUFFER_FAIL",
            31 => "HAILO_STOP_VDMA_CHANNEL_FAIL",
            32 => "HAILO_CLOSE_VDMA_CHANNEL_FAIL",
            33 => "HAILO_ATR_TABLES_CONF_VALIDATION_FAIL",
            34 => "HAILO_EVENT_CREATE_FAIL",
            35 => "HAILO_READ_EVENT_FAIL",
            36 => "HAILO_DRIVER_OPERATION_FAILED",
            37 => "HAILO_INVALID_FIRMWARE_MAGIC",
            38 => "HAILO_INVALID_FIRMWARE_CODE_SIZE",
            39 => "HAILO_INVALID_KEY_CERTIFICATE_SIZE",
            40 => "HAILO_INVALID_CONTENT_CERTIFICATE_SIZE",
            41 => "HAILO_MISMATCHING_FIRMWARE_BUFFER_SIZES",
            42 => "HAILO_INVALID_FIRMWARE_CPU_ID",
            43 => "HAILO_CONTROL_RESPONSE_MD5_MISMATCH",
            44 => "HAILO_GET_CONTROL_RESPONSE_FAIL",
            45 => "HAILO_GET_D2H_EVENT_MESSAGE_FAIL",
            46 => "HAILO_MUTEX_INIT_FAIL",
            47 => "HAILO_OUT_OF_DESCRIPTORS",
            48 => "HAILO_UNSUPPORTED_OPCODE",
            49 => "HAILO_USER_MODE_RATE_LIMITER_NOT_SUPPORTED",
            50 => "HAILO_RATE_LIMIT_MAXIMUM_BANDWIDTH_EXCEEDED",
            51 => "HAILO_ANSI_TO_UTF16_CONVERSION_FAILED",
            52 => "HAILO_UTF16_TO_ANSI_CONVERSION_FAILED",
            53 => "HAILO_UNEXPECTED_INTERFACE_INFO_FAILURE",
            54 => "HAILO_UNEXPECTED_ARP_TABLE_FAILURE",
            55 => "HAILO_MAC_ADDRESS_NOT_FOUND",
            56 => "HAILO_NO_IPV4_INTERFACES_FOUND",
            57 => "HAILO_SHUTDOWN_EVENT_SIGNALED",
            58 => "HAILO_THREAD_ALREADY_ACTIVATED",
            59 => "HAILO_THREAD_NOT_ACTIVATED",
            60 => "HAILO_THREAD_NOT_JOINABLE",
            61 => "HAILO_NOT_FOUND",
            62 => "HAILO_COMMUNICATION_CLOSED",
            63 => "HAILO_STREAM_ABORT",
            64 => "HAILO_DRIVER_NOT_INSTALLED",
            65 => "HAILO_NOT_AVAILABLE",
            66 => "HAILO_TRAFFIC_CONTROL_FAILURE",
            67 => "HAILO_INVALID_SECOND_STAGE",
            68 => "HAILO_INVALID_PIPELINE",
            69 => "HAILO_NETWORK_GROUP_NOT_ACTIVATED",
            70 => "HAILO_VSTREAM_PIPELINE_NOT_ACTIVATED",
            71 => "HAILO_OUT_OF_FW_MEMORY",
            72 => "HAILO_STREAM_NOT_ACTIVATED",
            73 => "HAILO_DEVICE_IN_USE",
            74 => "HAILO_OUT_OF_PHYSICAL_DEVICES",
            75 => "HAILO_INVALID_DEVICE_ARCHITECTURE",
            76 => "HAILO_INVALID_DRIVER_VERSION",
            77 => "HAILO_RPC_FAILED",
            78 => "HAILO_INVALID_SERVICE_VERSION",
            79 => "HAILO_NOT_SUPPORTED",
            80 => "HAILO_NMS_BURST_INVALID_DATA",
            81 => "HAILO_OUT_OF_HOST_CMA_MEMORY",
            82 => "HAILO_QUEUE_IS_FULL",
            83 => "HAILO_DMA_MAPPING_ALREADY_EXISTS",
            84 => "HAILO_CANT_MEET_BUFFER_REQUIREMENTS",
            85 => "HAILO_DRIVER_INVALID_RESPONSE",
            86 => "HAILO_DRIVER_INVALID_IOCTL",
            87 => "HAILO_DRIVER_TIMEOUT",
            88 => "HAILO_DRIVER_INTERRUPTED",
            89 => "HAILO_CONNECTION_REFUSED",
            90 => "HAILO_DRIVER_WAIT_CANCELED",
            91 => "HAILO_HEF_FILE_CORRUPTED",
            92 => "HAILO_HEF_NOT_SUPPORTED",
            93 => "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE",
            94 => "HAILO_INVALID_HEF_USE",
            95 => "HAILO_OPERATION_ABORTED",
            96 => "HAILO_DEVICE_NOT_CONNECTED",
            97 => "HAILO_DEVICE_TEMPORARILY_UNAVAILABLE",
            _ => "HAILO_UNKNOWN_STATUS",
        }
    }

    /// What a failure with this status means for the engine that saw it.
    pub fn failure(self) -> HailoFailure {
        match self.0 {
            // The frame failed; the engine resynchronises and carries on.
            4 | 28 | 63 | 82 | 95 => HailoFailure::Transient,
            // The device, its driver or the HailoRT service went away or is
            // held by someone else: drop the engine, fall back, reopen later.
            36 | 62 | 64 | 65 | 73 | 74 | 77 | 87 | 88 | 89 | 90 | 96 | 97 => HailoFailure::DeviceLost,
            // Wrong versions, bad HEF, invalid use, anything unknown: retrying
            // the same thing will fail the same way until someone acts.
            _ => HailoFailure::Permanent,
        }
    }
}

impl fmt::Display for HailoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// How bad a failure is, for the daemon's fallback decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HailoFailure {
    /// This frame failed (e.g. `HAILO_TIMEOUT`); the engine is still usable.
    Transient,
    /// The device, driver or service is gone or busy: drop the engine, run on
    /// the CPU, and try [`HailoEngine::open`] again later.
    DeviceLost,
    /// Configuration or version problem (library/driver mismatch, bad HEF,
    /// model shape): reopening will fail the same way.
    Permanent,
}

impl HailoFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            HailoFailure::Transient => "transient",
            HailoFailure::DeviceLost => "device-lost",
            HailoFailure::Permanent => "permanent",
        }
    }
}

impl fmt::Display for HailoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---- errors -------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum HailoError {
    #[error(transparent)]
    Load(#[from] sys::LoadError),
    #[error("{call} failed with {status}{}", .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status { call: &'static str, status: HailoStatus, message: Option<String> },
    #[error(
        "no Hailo device found (hailo_scan_devices reported none): check that /dev/hailo0 exists and the \
         hailo_pci driver is loaded (driver version: {})",
        .driver.as_deref().unwrap_or("not loaded")
    )]
    NoDevice { driver: Option<String> },
    #[error("HEF path {0} contains a NUL byte")]
    HefPath(PathBuf),
    #[error("the HEF does not fit this engine: {0}")]
    UnsupportedModel(String),
    #[error(
        "HEF {hef}: input vstream {vstream} has hailo_vstream_info_t.format.type {value}; only UINT8 and FLOAT32 \
         inputs are supported"
    )]
    InputFormat { hef: String, vstream: String, value: String },
    #[error("input tensor shape {got:?} does not match the HEF input (NCHW {expected:?})")]
    InputShape { got: Vec<usize>, expected: [usize; 4] },
    #[error("the engine is unusable: clearing its vstreams after an earlier failure failed ({cause})")]
    Poisoned { cause: String, failure: HailoFailure },
    #[error("the model manifest names no HEF")]
    NoHef,
    #[error("the model's HEF")]
    HefFile(#[source] crate::inference::model::ModelError),
    #[error("the HEF was compiled for HailoRT {want}, this device has {have}")]
    HailoRtVersion { want: String, have: String },
    /// Never run: a frame written before it failed (`after` is that
    /// failure's class), so it was not read and its outputs were cleared.
    #[error("not run: an earlier frame in flight failed ({after})")]
    Abandoned { after: HailoFailure },
    /// The engine's writer or reader thread is gone.
    #[error("the Hailo engine's I/O thread stopped")]
    IoThreadGone,
    /// A failure made up by a test double of the engine.
    #[cfg(test)]
    #[error("test failure ({0})")]
    Test(HailoFailure),
}

impl HailoError {
    /// The HailoRT status behind this error, if there is one.
    pub fn status(&self) -> Option<HailoStatus> {
        match self {
            HailoError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn failure(&self) -> HailoFailure {
        match self {
            HailoError::Status { status, .. } => status.failure(),
            HailoError::NoDevice { .. } => HailoFailure::DeviceLost,
            HailoError::Poisoned { failure, .. } => match failure {
                HailoFailure::Transient => HailoFailure::DeviceLost,
                other => *other,
            },
            HailoError::Abandoned { after } => *after,
            HailoError::IoThreadGone => HailoFailure::DeviceLost,
            HailoError::Load(_)
            | HailoError::HefPath(_)
            | HailoError::UnsupportedModel(_)
            | HailoError::InputFormat { .. }
            | HailoError::InputShape { .. }
            | HailoError::NoHef
            | HailoError::HefFile(_)
            | HailoError::HailoRtVersion { .. } => HailoFailure::Permanent,
            #[cfg(test)]
            HailoError::Test(f) => *f,
        }
    }

    /// `HAILO_TIMEOUT`: the frame took longer than the vstream timeout.
    pub fn is_timeout(&self) -> bool {
        self.status() == Some(HailoStatus::TIMEOUT)
    }

    /// The device, driver or service went away (or is held elsewhere).
    pub fn is_device_lost(&self) -> bool {
        self.failure() == HailoFailure::DeviceLost
    }

    /// The engine that returned this cannot be used again: drop it.
    /// (An [`HailoError::InputShape`] is the caller's mistake and leaves the
    /// engine usable, but is still reported as permanent.)
    pub fn is_fatal(&self) -> bool {
        self.failure() != HailoFailure::Transient
    }
}

fn check(lib: &sys::HailoRt, call: &'static str, status: sys::hailo_status) -> Result<(), HailoError> {
    if status == 0 {
        return Ok(());
    }
    let status = HailoStatus(status);
    Err(HailoError::Status { call, status, message: sys::status_message(lib, status.0) })
}

// ---- options and results --------------------------------------------------------

/// Where the compiled network comes from.
#[derive(Debug, Clone, Copy)]
pub enum HefSource<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
    /// Bytes already read (and checked) from `path`, which errors name.
    Read {
        path: &'a Path,
        bytes: &'a [u8],
    },
}

impl HefSource<'_> {
    /// How errors name the HEF.
    fn describe(&self) -> String {
        match self {
            HefSource::File(path) | HefSource::Read { path, .. } => path.display().to_string(),
            HefSource::Bytes(b) => format!("(a {}-byte buffer)", b.len()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HailoOptions {
    /// Create the vdevice inside the HailoRT service (`hailort.service`), so
    /// other processes can share the device. Off: this process takes it
    /// exclusively and others get `HAILO_DEVICE_IN_USE`.
    pub multi_process_service: bool,
    /// Longest wait for one vstream write or read, in milliseconds (the
    /// vstream params' `timeout_ms`; HailoRT's own default is 10 000).
    pub timeout_ms: u32,
    /// Frames each vstream may queue; `None`: HailoRT's default (2), raised
    /// to the frames in flight so every frame in flight has a place.
    pub queue_size: Option<u32>,
    /// Frames in flight ([`Engine::depth`]); 0: [`auto_depth`] from the
    /// HEF's batch size and the queue size.
    pub frames_in_flight: usize,
    /// Threads that prepare frames for the chip; 0: [`auto_prepare_workers`].
    pub prepare_workers: usize,
}

impl Default for HailoOptions {
    fn default() -> Self {
        Self {
            multi_process_service: false,
            timeout_ms: 2_000,
            queue_size: None,
            frames_in_flight: 0,
            prepare_workers: 0,
        }
    }
}

/// The most prepare workers: past this the writer, not the preparation,
/// bounds the rate.
pub const MAX_PREPARE_WORKERS: usize = 8;

/// Prepare workers by default: half the cores, 1 to 4. A 720p camera frame
/// takes a Cortex-A76 several milliseconds to letterbox, longer than a small
/// detector's 2 ms on the chip, so one thread cannot keep up; the other half
/// of the cores is left for capture, decode and ONNX Runtime's fallback.
pub fn auto_prepare_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get() / 2).clamp(1, 4)
}

/// HailoRT's default vstream queue size (`HAILO_DEFAULT_VSTREAM_QUEUE_SIZE`).
const DEFAULT_QUEUE_SIZE: u32 = 2;
/// The fewest frames in flight by default. A Hailo-8's latency is about 4x
/// its time per frame, so 4 frames in flight only keep it busy if the host
/// takes no time at all; twice that covers the host's own time per frame
/// (measured through the double's timing model: 4 in flight reach 0.87 of
/// the chip's rate, 8 reach 0.99; BENCHMARKS.md).
pub const MIN_AUTO_DEPTH: usize = 8;
/// The most frames in flight (a vstream queue holds at most this many in
/// the double; a deeper pipeline only adds latency).
pub const MAX_DEPTH: usize = 16;

/// Frames in flight when the config leaves it to the HEF: one batch per
/// frame HailoRT's queues hold, and at least [`MIN_AUTO_DEPTH`].
pub fn auto_depth(batch_size: u16, queue_size: Option<u32>) -> usize {
    let batch = usize::from(batch_size.max(1));
    let queue = queue_size.unwrap_or(DEFAULT_QUEUE_SIZE) as usize;
    (batch * queue).clamp(MIN_AUTO_DEPTH, MAX_DEPTH)
}

/// Chip temperature from the two on-die sensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChipTemperature {
    pub ts0_celsius: f32,
    pub ts1_celsius: f32,
}

impl ChipTemperature {
    pub fn max_celsius(&self) -> f32 {
        self.ts0_celsius.max(self.ts1_celsius)
    }
}

/// What `hailo_identify` reports about the chip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub firmware_version: String,
    pub protocol_version: u32,
    /// `HAILO8`, `HAILO8L`, ... (HailoRT's architecture name without `HAILO_ARCH_`).
    pub architecture: String,
    pub board_name: String,
    pub serial_number: String,
    pub part_number: String,
    pub product_name: String,
}

/// Everything `sparkctl engine` / doctor shows about the Hailo path.
#[derive(Debug, Clone, PartialEq)]
pub struct HailoInfo {
    pub library_path: PathBuf,
    pub library_version: sys::LibraryVersion,
    /// Which header the bindings were generated from.
    pub bindings: &'static str,
    /// `/sys/module/hailo_pci/version`, when the driver is loaded.
    pub driver_version: Option<String>,
    /// Device ids from `hailo_scan_devices` (PCIe BDF).
    pub devices: Vec<String>,
    pub identity: Option<DeviceIdentity>,
    pub temperature: Option<ChipTemperature>,
    /// Why identity or temperature are missing although a device was found
    /// (typically `HAILO_DEVICE_IN_USE` while sparkd holds the device).
    pub health_error: Option<String>,
}

impl HailoInfo {
    /// HailoRT refuses a driver of another version than the library.
    /// `None` when the driver is not loaded.
    pub fn driver_matches_library(&self) -> Option<bool> {
        self.driver_version.as_deref().map(|d| d == self.library_version.to_string())
    }
}

// ---- handle guards ---------------------------------------------------------------
//
// Each guard owns one kind of handle and releases it in Drop. Release
// failures cannot be acted on during drop; they are logged.

struct VDevice {
    lib: Arc<sys::HailoRt>,
    raw: sys::hailo_vdevice,
}

impl VDevice {
    fn create(lib: &Arc<sys::HailoRt>, multi_process_service: bool) -> Result<Self, HailoError> {
        let mut params = sys::hailo_vdevice_params_t::default();
        // SAFETY: `params` is a valid, writable hailo_vdevice_params_t.
        check(lib, "hailo_init_vdevice_params", unsafe { lib.hailo_init_vdevice_params(&mut params) })?;
        params.scheduling_algorithm = sys::HAILO_SCHEDULING_ALGORITHM_ROUND_ROBIN;
        params.multi_process_service = multi_process_service;
        let mut raw: sys::hailo_vdevice = std::ptr::null_mut();
        // SAFETY: `params` was filled by hailo_init_vdevice_params (its
        // group_id points at a static string of the library) and `raw` is a
        // valid out-pointer.
        check(lib, "hailo_create_vdevice", unsafe { lib.hailo_create_vdevice(&mut params, &mut raw) })?;
        Ok(Self { lib: Arc::clone(lib), raw })
    }

    /// The physical devices behind the vdevice; they belong to it.
    fn first_physical_device(&self) -> Result<sys::hailo_device, HailoError> {
        let mut devices: [sys::hailo_device; MAX_DEVICES] = [std::ptr::null_mut(); MAX_DEVICES];
        let mut n = devices.len();
        // SAFETY: `devices` has room for `n` handles and `n` is a valid
        // in/out count; `self.raw` is a live vdevice.
        check(&self.lib, "hailo_get_physical_devices", unsafe {
            self.lib.hailo_get_physical_devices(self.raw, devices.as_mut_ptr(), &mut n)
        })?;
        match devices.get(..n.min(MAX_DEVICES)).and_then(|d| d.first()) {
            Some(d) if !d.is_null() => Ok(*d),
            _ => Err(HailoError::NoDevice { driver: sys::driver_version() }),
        }
    }
}

impl Drop for VDevice {
    fn drop(&mut self) {
        // SAFETY: `raw` came from hailo_create_vdevice and is released exactly
        // once, here. Owners drop every vstream of its network groups first
        // (field order in HailoEngine), and the network groups die with it.
        let status = unsafe { self.lib.hailo_release_vdevice(self.raw) };
        if status != 0 {
            tracing::warn!(status = %HailoStatus(status), "hailo_release_vdevice failed");
        }
    }
}

struct Hef {
    lib: Arc<sys::HailoRt>,
    raw: sys::hailo_hef,
}

impl Hef {
    fn open(lib: &Arc<sys::HailoRt>, source: HefSource<'_>) -> Result<Self, HailoError> {
        let mut raw: sys::hailo_hef = std::ptr::null_mut();
        match source {
            HefSource::File(path) => {
                use std::os::unix::ffi::OsStrExt;
                let c =
                    CString::new(path.as_os_str().as_bytes()).map_err(|_| HailoError::HefPath(path.to_path_buf()))?;
                // SAFETY: `c` is a NUL-terminated path that outlives the call;
                // `raw` is a valid out-pointer.
                check(lib, "hailo_create_hef_file", unsafe { lib.hailo_create_hef_file(&mut raw, c.as_ptr()) })?;
            }
            HefSource::Bytes(bytes) | HefSource::Read { bytes, .. } => {
                // SAFETY: the pointer and length describe `bytes`, which
                // outlives the call (HailoRT copies what it keeps).
                check(lib, "hailo_create_hef_buffer", unsafe {
                    lib.hailo_create_hef_buffer(&mut raw, bytes.as_ptr().cast(), bytes.len())
                })?;
            }
        }
        Ok(Self { lib: Arc::clone(lib), raw })
    }

    /// Output vstream names in the HEF's order, or `None` if the library
    /// cannot say (then the params order is used).
    fn sorted_output_names(&self) -> Option<Vec<String>> {
        let mut names = vec![sys::hailo_layer_name_t::default(); MAX_STREAMS];
        let mut n = names.len();
        // SAFETY: `names` has room for `n` entries; a NULL network group name
        // means the HEF's first network group.
        let status = unsafe {
            self.lib.hailo_hef_get_sorted_output_names(self.raw, std::ptr::null(), names.as_mut_ptr(), &mut n)
        };
        (status == 0).then(|| names.iter().take(n.min(MAX_STREAMS)).map(|l| c_chars(&l.name)).collect())
    }
}

impl Drop for Hef {
    fn drop(&mut self) {
        // SAFETY: `raw` came from hailo_create_hef_* and is released once.
        let status = unsafe { self.lib.hailo_release_hef(self.raw) };
        if status != 0 {
            tracing::warn!(status = %HailoStatus(status), "hailo_release_hef failed");
        }
    }
}

struct InputVstreams {
    lib: Arc<sys::HailoRt>,
    raw: Vec<sys::hailo_input_vstream>,
}

impl Drop for InputVstreams {
    fn drop(&mut self) {
        // SAFETY: the handles came from one hailo_create_input_vstreams call
        // and are released once, before their vdevice.
        let status = unsafe { self.lib.hailo_release_input_vstreams(self.raw.as_ptr(), self.raw.len()) };
        if status != 0 {
            tracing::warn!(status = %HailoStatus(status), "hailo_release_input_vstreams failed");
        }
    }
}

struct OutputVstreams {
    lib: Arc<sys::HailoRt>,
    raw: Vec<sys::hailo_output_vstream>,
}

impl Drop for OutputVstreams {
    fn drop(&mut self) {
        // SAFETY: the handles came from one hailo_create_output_vstreams call
        // and are released once, before their vdevice.
        let status = unsafe { self.lib.hailo_release_output_vstreams(self.raw.as_ptr(), self.raw.len()) };
        if status != 0 {
            tracing::warn!(status = %HailoStatus(status), "hailo_release_output_vstreams failed");
        }
    }
}

// ---- layouts ---------------------------------------------------------------------------

/// How a vstream's host buffer is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `[H, W, C]`: transposed to/from our NCHW.
    Nhwc,
    /// `[C, H, W]`: copied as is.
    Nchw,
    /// `[C]` (fully connected outputs): shape `[1, C]`.
    Nc,
    /// `[H, W]` (argmax outputs): shape `[1, 1, H, W]`.
    Nhw,
}

/// What one vstream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortKind {
    /// A tensor in `Layout`.
    Frame(Layout),
    /// HailoRT's on-chip NMS result, by class, float32: handed to the
    /// `hailo-nms` decoder as is, with its `nms_shape`.
    Nms { classes: usize, max_per_class: usize },
    /// HailoRT's on-chip NMS result sorted by score (`hailo_detections_t`
    /// bytes, `frame_bytes` long): turned into rows of floats by
    /// [`by_score_rows`] for the `hailo-nms` decoder.
    NmsByScore { classes: usize, max_total: usize, frame_bytes: usize },
}

/// Floats per row of a BY_SCORE frame as handed to the decoder.
pub const BY_SCORE_ROW: usize = 6;
/// `sizeof(hailo_detection_t)`: five float32 and a uint16 class id. hailort.h
/// declares it inside `#pragma pack(push, 1)`: no padding.
const DETECTION_BYTES: usize = 22;
/// Where `hailo_detections_t.detections` starts: right after the uint16
/// count (packed as well).
const DETECTIONS_AT: usize = 2;

/// A BY_SCORE frame (`hailo_detections_t`, packed: a uint16 count, then from
/// byte 2 `hailo_detection_t` of 22 bytes each) as rows of [`BY_SCORE_ROW`]
/// floats, shape `[1, 1 + max_total, 6]`: a header row `[count, rows present,
/// classes, 0, 0, 0]`, then per detection `[y_min, x_min, y_max, x_max,
/// score, class_id]`, zeros after. Nothing is judged here: a count above
/// `max_total` or past the frame's end is left for the decoder to refuse,
/// and only detections wholly inside `bytes` are read (HailoRT's frame
/// size is `2 + 22 × max_total`).
pub fn by_score_rows(bytes: &[u8], classes: usize, max_total: usize) -> Vec<f32> {
    let mut rows = vec![0.0f32; (1 + max_total) * BY_SCORE_ROW];
    let count = match bytes {
        [a, b, ..] => u16::from_ne_bytes([*a, *b]) as usize,
        _ => 0,
    };
    let f32_at = |at: usize| bytes.get(at..at + 4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let mut present = 0;
    for i in 0..count.min(max_total) {
        let at = DETECTIONS_AT + i * DETECTION_BYTES;
        let (Some(values), Some(class)) = (
            (0..5).map(|k| f32_at(at + 4 * k)).collect::<Option<Vec<f32>>>(),
            bytes.get(at + 20..at + 22).map(|b| u16::from_ne_bytes([b[0], b[1]])),
        ) else {
            break;
        };
        let row = &mut rows[(1 + i) * BY_SCORE_ROW..(2 + i) * BY_SCORE_ROW];
        row[..5].copy_from_slice(&values);
        row[5] = f32::from(class);
        present += 1;
    }
    rows[..3].copy_from_slice(&[count as f32, present as f32, classes as f32]);
    rows
}

/// The host-side element type of the HEF's input: it decides how a frame is
/// prepared ([`HailoEngine::infer_frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputFormat {
    /// Raw pixels, normalised on the chip (Hailo Model Zoo HEFs): uint8 NHWC.
    Uint8,
    /// Normalised floats, quantised by HailoRT on the host.
    Float32,
}

impl InputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::Uint8 => "UINT8",
            InputFormat::Float32 => "FLOAT32",
        }
    }

    fn bytes(self) -> usize {
        match self {
            InputFormat::Uint8 => 1,
            InputFormat::Float32 => size_of::<f32>(),
        }
    }
}

/// The loaded HEF as `sparkctl engine` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HefLayout {
    /// `UINT8` or `FLOAT32`.
    pub input_format: String,
    /// HailoRT's host format order of the input (`NHWC`, ...).
    pub input_order: String,
    /// In the order [`HailoEngine::infer`] returns them.
    pub outputs: Vec<HefOutput>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HefOutput {
    pub name: String,
    /// HailoRT's format order name without `HAILO_FORMAT_ORDER_` (`NHWC`, `HAILO_NMS_BY_CLASS`).
    pub order: String,
    /// `[number_of_classes, max_bboxes_per_class]` of an NMS output.
    pub nms_shape: Option<[u32; 2]>,
}

/// HailoRT's name of a `hailo_format_type_t`.
fn format_type_name(t: u32) -> &'static str {
    match t {
        0 => "AUTO",
        1 => "UINT8",
        2 => "UINT16",
        3 => "FLOAT32",
        _ => "unknown",
    }
}

/// HailoRT's name of a `hailo_format_order_t`, without `HAILO_FORMAT_ORDER_`.
fn format_order_name(o: u32) -> &'static str {
    match o {
        0 => "AUTO",
        1 => "NHWC",
        2 => "NHCW",
        3 => "FCR",
        4 => "F8CR",
        5 => "NHW",
        6 => "NC",
        7 => "BAYER_RGB",
        8 => "12_BIT_BAYER_RGB",
        9 => "HAILO_NMS",
        10 => "RGB888",
        11 => "NCHW",
        12 => "YUY2",
        13 => "NV12",
        14 => "NV21",
        15 => "HAILO_YYUV",
        16 => "HAILO_YYVU",
        17 => "RGB4",
        18 => "I420",
        19 => "HAILO_YYYYUV",
        20 => "HAILO_NMS_WITH_BYTE_MASK",
        21 => "HAILO_NMS_ON_CHIP",
        22 => "HAILO_NMS_BY_CLASS",
        23 => "HAILO_NMS_BY_SCORE",
        _ => "unknown",
    }
}

/// The NMS orders whose float32 frame is per class `count, count × {y_min,
/// x_min, y_max, x_max, score}`: BY_CLASS, and the older HAILO_NMS name that
/// libraries before 4.21 report for the same layout.
fn is_nms_by_class(order: u32) -> bool {
    order == sys::HAILO_FORMAT_ORDER_HAILO_NMS || order == sys::HAILO_FORMAT_ORDER_HAILO_NMS_BY_CLASS
}

/// Any NMS-shaped order (its `hailo_vstream_info_t` holds `nms_shape`, not `shape`).
fn is_nms(order: u32) -> bool {
    is_nms_by_class(order)
        || order == sys::HAILO_FORMAT_ORDER_HAILO_NMS_WITH_BYTE_MASK
        || order == sys::HAILO_FORMAT_ORDER_HAILO_NMS_ON_CHIP
        || order == sys::HAILO_FORMAT_ORDER_HAILO_NMS_BY_SCORE
}

/// An NMS frame larger than this is refused at open: a HEF (or library)
/// reporting it would make every frame a huge read.
const MAX_NMS_FRAME_BYTES: usize = 64 << 20;

#[derive(Debug, Clone)]
struct Port {
    name: String,
    kind: PortKind,
    height: usize,
    width: usize,
    channels: usize,
    /// Values per frame: floats, or bytes for a UINT8 input.
    elements: usize,
    /// The host format order, for `sparkctl engine`.
    order: u32,
}

impl Port {
    fn shape(&self) -> Vec<usize> {
        match self.kind {
            PortKind::Frame(Layout::Nhwc | Layout::Nchw) => vec![1, self.channels, self.height, self.width],
            PortKind::Frame(Layout::Nc) => vec![1, self.channels],
            PortKind::Frame(Layout::Nhw) => vec![1, 1, self.height, self.width],
            PortKind::Nms { classes, max_per_class } => vec![classes, max_per_class],
            PortKind::NmsByScore { max_total, .. } => vec![1, 1 + max_total, BY_SCORE_ROW],
        }
    }

    fn layout(&self) -> Option<Layout> {
        match self.kind {
            PortKind::Frame(l) => Some(l),
            PortKind::Nms { .. } | PortKind::NmsByScore { .. } => None,
        }
    }

    /// Checks what HailoRT reports for an output vstream (user format
    /// FLOAT32) and builds its description.
    fn describe(
        info: &sys::hailo_vstream_info_t,
        user: &sys::hailo_format_t,
        frame_bytes: usize,
    ) -> Result<Self, HailoError> {
        let name = c_chars(&info.name);
        if user.type_ != sys::HAILO_FORMAT_TYPE_FLOAT32 {
            return Err(HailoError::UnsupportedModel(format!(
                "vstream {name} has user format type {} (FLOAT32 expected)",
                format_type_name(user.type_)
            )));
        }
        // An AUTO user order takes the HEF's.
        let order = if user.order == sys::HAILO_FORMAT_ORDER_AUTO { info.format.order } else { user.order };
        if is_nms(order) || is_nms(info.format.order) {
            return Self::describe_nms(info, order, frame_bytes);
        }
        let layout = match order {
            sys::HAILO_FORMAT_ORDER_NHWC | sys::HAILO_FORMAT_ORDER_AUTO => Layout::Nhwc,
            sys::HAILO_FORMAT_ORDER_NCHW => Layout::Nchw,
            sys::HAILO_FORMAT_ORDER_NC => Layout::Nc,
            sys::HAILO_FORMAT_ORDER_NHW => Layout::Nhw,
            other => {
                return Err(HailoError::UnsupportedModel(format!(
                    "vstream {name} has host format order {} ({other}; YUV and Bayer outputs are not supported)",
                    format_order_name(other)
                )));
            }
        };
        let (height, width, channels) = image_shape(info);
        let elements = match layout {
            Layout::Nc => channels,
            Layout::Nhw => height * width,
            Layout::Nhwc | Layout::Nchw => height * width * channels,
        };
        if elements == 0 || elements * size_of::<f32>() != frame_bytes {
            return Err(HailoError::UnsupportedModel(format!(
                "vstream {name}: shape {height}x{width}x{channels} does not match its frame size of {frame_bytes} bytes"
            )));
        }
        Ok(Self { name, kind: PortKind::Frame(layout), height, width, channels, elements, order })
    }

    /// An on-chip NMS output. Its frame is read whole (the size HailoRT
    /// reports) and parsed by the decoder, which checks every count against
    /// the buffer; here only what makes the read itself unsafe or absurd is
    /// refused.
    fn describe_nms(info: &sys::hailo_vstream_info_t, order: u32, frame_bytes: usize) -> Result<Self, HailoError> {
        let name = c_chars(&info.name);
        let by_score = order == sys::HAILO_FORMAT_ORDER_HAILO_NMS_BY_SCORE;
        if !is_nms_by_class(order) && !by_score {
            return Err(HailoError::UnsupportedModel(format!(
                "vstream {name} has NMS output order {} ({order}); only HAILO_NMS_BY_CLASS (or HAILO_NMS) \
                 and HAILO_NMS_BY_SCORE with float32 user format are read",
                format_order_name(order)
            )));
        }
        // SAFETY: for the NMS format orders (checked above) HailoRT fills the
        // `nms_shape` member of this union; both members are plain integers,
        // so reading either is defined.
        let nms = unsafe { info.__bindgen_anon_1.nms_shape };
        if by_score {
            let (classes, max_total) = (nms.number_of_classes as usize, nms.max_bboxes_total as usize);
            // HailoRT's own frame size for this shape: a HEF or library
            // claiming more boxes than fit the cap would make every frame's
            // rows a huge allocation, whatever frame size it reports.
            let shape_bytes = max_total.saturating_mul(DETECTION_BYTES).saturating_add(DETECTIONS_AT);
            if classes == 0
                || max_total == 0
                || frame_bytes < 2
                || frame_bytes > MAX_NMS_FRAME_BYTES
                || shape_bytes > MAX_NMS_FRAME_BYTES
            {
                return Err(HailoError::UnsupportedModel(format!(
                    "NMS-by-score vstream {name}: nms_shape {classes} classes, {max_total} boxes in all, with a \
                     frame size of {frame_bytes} bytes cannot be read (want non-zero counts and 2 to \
                     {MAX_NMS_FRAME_BYTES} bytes)"
                )));
            }
            return Ok(Self {
                name,
                kind: PortKind::NmsByScore { classes, max_total, frame_bytes },
                height: 0,
                width: 0,
                channels: 0,
                elements: frame_bytes.div_ceil(size_of::<f32>()),
                order,
            });
        }
        let (classes, max_per_class) = (nms.number_of_classes as usize, nms.max_bboxes_per_class as usize);
        if classes == 0
            || max_per_class == 0
            || frame_bytes == 0
            || !frame_bytes.is_multiple_of(size_of::<f32>())
            || frame_bytes > MAX_NMS_FRAME_BYTES
        {
            return Err(HailoError::UnsupportedModel(format!(
                "NMS vstream {name}: nms_shape {classes} classes x {max_per_class} boxes with a frame size of \
                 {frame_bytes} bytes cannot be read (want non-zero counts and a whole number of float32 values \
                 up to {MAX_NMS_FRAME_BYTES} bytes)"
            )));
        }
        Ok(Self {
            name,
            kind: PortKind::Nms { classes, max_per_class },
            height: 0,
            width: 0,
            channels: 0,
            elements: frame_bytes / size_of::<f32>(),
            order,
        })
    }

    /// Checks the input vstream: the HEF's input type decides the host
    /// format (`hailo_vstream_info_t.format.type`: UINT8 or FLOAT32, anything
    /// else is refused naming `hef`), and the frame must be an image.
    fn describe_input(
        info: &sys::hailo_vstream_info_t,
        user: &sys::hailo_format_t,
        frame_bytes: usize,
        hef: &str,
    ) -> Result<(Self, InputFormat), HailoError> {
        let name = c_chars(&info.name);
        let format = match info.format.type_ {
            sys::HAILO_FORMAT_TYPE_UINT8 => InputFormat::Uint8,
            sys::HAILO_FORMAT_TYPE_FLOAT32 => InputFormat::Float32,
            other => {
                return Err(HailoError::InputFormat {
                    hef: hef.to_string(),
                    vstream: name,
                    value: format!("{} ({other})", format_type_name(other)),
                });
            }
        };
        // The input is created with an AUTO user type, which HailoRT resolves to the HEF's.
        let user_type = if user.type_ == sys::HAILO_FORMAT_TYPE_AUTO { info.format.type_ } else { user.type_ };
        if user_type != info.format.type_ {
            return Err(HailoError::UnsupportedModel(format!(
                "input {name}: HailoRT chose user format type {} for a {} input",
                format_type_name(user_type),
                format.as_str()
            )));
        }
        let order = if user.order == sys::HAILO_FORMAT_ORDER_AUTO { info.format.order } else { user.order };
        let layout = match order {
            sys::HAILO_FORMAT_ORDER_NHWC | sys::HAILO_FORMAT_ORDER_AUTO => Layout::Nhwc,
            sys::HAILO_FORMAT_ORDER_NCHW if format == InputFormat::Float32 => Layout::Nchw,
            other => {
                return Err(HailoError::UnsupportedModel(format!(
                    "input {name} is not an image spark-edge can feed ({} input in host order {})",
                    format.as_str(),
                    format_order_name(other)
                )));
            }
        };
        let (height, width, channels) = image_shape(info);
        let elements = height * width * channels;
        if elements == 0 || elements * format.bytes() != frame_bytes {
            return Err(HailoError::UnsupportedModel(format!(
                "input {name}: shape {height}x{width}x{channels} ({}) does not match its frame size of \
                 {frame_bytes} bytes",
                format.as_str()
            )));
        }
        let order = if order == sys::HAILO_FORMAT_ORDER_AUTO { sys::HAILO_FORMAT_ORDER_NHWC } else { order };
        Ok((Self { name, kind: PortKind::Frame(layout), height, width, channels, elements, order }, format))
    }
}

/// `(height, width, features)` of a non-NMS vstream.
fn image_shape(info: &sys::hailo_vstream_info_t) -> (usize, usize, usize) {
    // SAFETY: callers pass only vstreams whose order is not NMS, for which
    // HailoRT fills the `shape` member of this union; both members are plain
    // integers, so reading either is defined.
    let shape = unsafe { info.__bindgen_anon_1.shape };
    (shape.height as usize, shape.width as usize, shape.features as usize)
}

/// NCHW `src` (`c` planes of `h`x`w`) into NHWC `dst`. Writes each pixel's
/// channels together (contiguous stores, `c` sequential read streams).
/// Public for `benches/hailo_prepare.rs`, which times the FLOAT32 input path.
pub fn nchw_to_nhwc(src: &[f32], c: usize, h: usize, w: usize, dst: &mut Vec<f32>) {
    let plane = h * w;
    dst.clear();
    dst.resize(c * plane, 0.0);
    if c == 3 {
        let (r, rest) = src.split_at(plane);
        let (g, b) = rest.split_at(plane);
        for (((px, r), g), b) in dst.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
            px[0] = *r;
            px[1] = *g;
            px[2] = *b;
        }
        return;
    }
    for (p, px) in dst.chunks_exact_mut(c).enumerate() {
        for (ch, v) in px.iter_mut().enumerate() {
            *v = src[ch * plane + p];
        }
    }
}

/// NCHW floats into NHWC bytes, rounded and clamped to 0..=255: a UINT8
/// input fed from a float tensor (the [`HailoEngine::infer`] path).
fn nchw_to_nhwc_u8(src: &[f32], c: usize, h: usize, w: usize, dst: &mut Vec<u8>) {
    let plane = h * w;
    dst.clear();
    dst.resize(c * plane, 0);
    for (p, px) in dst.chunks_exact_mut(c).enumerate() {
        for (ch, v) in px.iter_mut().enumerate() {
            *v = src[ch * plane + p].round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// NHWC `src` (`h`x`w` pixels of `c` channels) into a new NCHW vector.
/// Fills one output plane at a time (contiguous stores).
fn nhwc_to_nchw(src: &[f32], h: usize, w: usize, c: usize) -> Vec<f32> {
    let plane = h * w;
    let mut out = vec![0.0; c * plane];
    if c == 1 {
        out.copy_from_slice(&src[..plane]);
        return out;
    }
    for (ch, dst) in out.chunks_exact_mut(plane).enumerate() {
        for (d, px) in dst.iter_mut().zip(src.chunks_exact(c)) {
            *d = px[ch];
        }
    }
    out
}

/// A fixed-size C string field: up to the first NUL.
fn c_chars(field: &[c_char]) -> String {
    let bytes: Vec<u8> = field.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A length-delimited C string field (HailoRT identity strings are not
/// NUL-terminated).
fn c_chars_len(field: &[c_char], len: u8) -> String {
    let bytes: Vec<u8> = field.iter().take(len as usize).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).trim_end_matches('\0').to_string()
}

fn architecture_name(arch: sys::hailo_device_architecture_t) -> String {
    match arch {
        0 => "HAILO8_A0".into(),
        1 => "HAILO8".into(),
        2 => "HAILO8L".into(),
        3 => "HAILO15H".into(),
        4 => "HAILO15L".into(),
        5 => "HAILO15M".into(),
        6 => "HAILO10H".into(),
        7 => "MARS".into(),
        n => format!("unknown ({n})"),
    }
}

fn identify(lib: &sys::HailoRt, device: sys::hailo_device) -> Result<DeviceIdentity, HailoError> {
    let mut id = sys::hailo_device_identity_t::default();
    // SAFETY: `device` belongs to a live vdevice; `id` is a valid, writable struct.
    check(lib, "hailo_identify", unsafe { lib.hailo_identify(device, &mut id) })?;
    let fw = id.fw_version;
    Ok(DeviceIdentity {
        firmware_version: format!("{}.{}.{}", fw.major, fw.minor, fw.revision),
        protocol_version: id.protocol_version,
        architecture: architecture_name(id.device_architecture),
        board_name: c_chars_len(&id.board_name, id.board_name_length),
        serial_number: c_chars_len(&id.serial_number, id.serial_number_length),
        part_number: c_chars_len(&id.part_number, id.part_number_length),
        product_name: c_chars_len(&id.product_name, id.product_name_length),
    })
}

fn temperature(lib: &sys::HailoRt, device: sys::hailo_device) -> Result<ChipTemperature, HailoError> {
    let mut t = sys::hailo_chip_temperature_info_t::default();
    // SAFETY: `device` belongs to a live vdevice; `t` is a valid, writable struct.
    check(lib, "hailo_get_chip_temperature", unsafe { lib.hailo_get_chip_temperature(device, &mut t) })?;
    Ok(ChipTemperature { ts0_celsius: t.ts0_temperature, ts1_celsius: t.ts1_temperature })
}

/// HailoRT, loaded once per requested path and kept for the life of the
/// process. Unloading it is never worth the risk: it is a C++ runtime that
/// may have started threads, and a device that comes back needs a new
/// vdevice, not a new library. Failures are not cached, so a library
/// installed later is found on the next attempt.
fn shared_library(explicit: Option<&Path>) -> Result<(Arc<sys::HailoRt>, PathBuf), HailoError> {
    type Loaded = (Option<PathBuf>, Arc<sys::HailoRt>, PathBuf);
    static LOADED: Mutex<Vec<Loaded>> = Mutex::new(Vec::new());
    let key = explicit.map(Path::to_path_buf);
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, lib, path)) = loaded.iter().find(|(k, _, _)| *k == key) {
        return Ok((Arc::clone(lib), path.clone()));
    }
    let (lib, path) = sys::load(explicit)?;
    let lib = Arc::new(lib);
    loaded.push((key, Arc::clone(&lib), path.clone()));
    Ok((lib, path))
}

fn library_version(lib: &sys::HailoRt) -> Result<sys::LibraryVersion, HailoError> {
    sys::library_version(lib).map_err(|s| HailoError::Status {
        call: "hailo_get_library_version",
        status: HailoStatus(s),
        message: None,
    })
}

/// Ids of the Hailo devices the library can see (PCIe BDF, e.g. `0000:01:00.0`).
pub fn scan_devices(lib: &sys::HailoRt) -> Result<Vec<String>, HailoError> {
    let mut ids = vec![sys::hailo_device_id_t::default(); MAX_DEVICES];
    let mut n = ids.len();
    // SAFETY: `ids` has room for `n` entries; HailoRT requires NULL params.
    check(lib, "hailo_scan_devices", unsafe {
        lib.hailo_scan_devices(std::ptr::null_mut(), ids.as_mut_ptr(), &mut n)
    })?;
    Ok(ids.iter().take(n.min(MAX_DEVICES)).map(|d| c_chars(&d.id)).collect())
}

/// Loads HailoRT and reports library, driver, devices and, when a device is
/// free, its identity and temperature. For `sparkctl engine` and doctor.
pub fn probe(lib: Option<&Path>) -> Result<HailoInfo, HailoError> {
    let (lib, library_path) = shared_library(lib)?;
    let library_version = library_version(&lib)?;
    let devices = scan_devices(&lib)?;
    let mut info = HailoInfo {
        library_path,
        library_version,
        bindings: sys::BINDINGS_SOURCE,
        driver_version: sys::driver_version(),
        devices,
        identity: None,
        temperature: None,
        health_error: None,
    };
    if info.devices.is_empty() {
        return Ok(info);
    }
    let health = VDevice::create(&lib, false).and_then(|vdev| {
        let device = vdev.first_physical_device()?;
        Ok((identify(&lib, device)?, temperature(&lib, device)?))
    });
    match health {
        Ok((identity, temp)) => {
            info.identity = Some(identity);
            info.temperature = Some(temp);
        }
        Err(e) => info.health_error = Some(e.to_string()),
    }
    Ok(info)
}

// ---- the engine ------------------------------------------------------------------------------

/// One HEF configured on a Hailo vdevice, ready to run frames.
///
/// Fields drop in declaration order: output vstreams, input vstreams, the
/// vdevice (which takes its network group with it), the HEF; the library
/// unloads when the last guard's `Arc` goes.
pub struct HailoEngine {
    /// The I/O threads; stopped and joined in `Drop`, before any handle goes.
    io: Io,
    outputs: OutputVstreams,
    input: InputVstreams,
    vdevice: VDevice,
    _hef: Hef,
    library_path: PathBuf,
    library_version: sys::LibraryVersion,
    input_port: Port,
    input_format: InputFormat,
    output_ports: Vec<Port>,
    /// NHWC staging buffer for a FLOAT32 input frame, reused across frames.
    staging_in: Vec<f32>,
    /// Staging buffer for a UINT8 input frame (NHWC bytes), reused across frames.
    staging_u8: Vec<u8>,
    /// Float tensor for [`HailoEngine::infer_frame`] on a FLOAT32 input.
    staging_tensor: Tensor,
    /// Host buffer for one output read, reused across frames.
    staging_out: Vec<f32>,
    poisoned: Option<(String, HailoFailure)>,
}

// SAFETY: HailoRT handles are not tied to the thread that created them, and
// the engine is only used through `&mut self` (it is not `Sync`), so no two
// threads ever call into HailoRT with the same handles at once.
unsafe impl Send for HailoEngine {}

impl HailoEngine {
    /// Loads HailoRT (see [`hailo_sys::load`] for the search order; once
    /// loaded it stays loaded for the process), takes a device, configures
    /// the HEF and creates its vstreams.
    pub fn open(lib: Option<&Path>, hef: HefSource<'_>, opts: &HailoOptions) -> Result<Self, EngineError> {
        Self::try_open(lib, hef, opts).map_err(EngineError::from)
    }

    /// [`HailoEngine::open`] with the typed error.
    pub fn try_open(lib: Option<&Path>, hef: HefSource<'_>, opts: &HailoOptions) -> Result<Self, HailoError> {
        let hef_name = hef.describe();
        let (lib, library_path) = shared_library(lib)?;
        let library_version = library_version(&lib)?;
        if scan_devices(&lib)?.is_empty() {
            return Err(HailoError::NoDevice { driver: sys::driver_version() });
        }
        let vdevice = VDevice::create(&lib, opts.multi_process_service)?;
        let hef = Hef::open(&lib, hef)?;
        let (network_group, batch_size) = configure(&lib, &vdevice, &hef)?;
        let depth = match opts.frames_in_flight {
            0 => auto_depth(batch_size, opts.queue_size),
            n => n.min(MAX_DEPTH),
        };
        // Every frame in flight needs a place in the output queues, or the
        // chip stalls until the reader catches up.
        let queue_size = opts.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE).max(depth as u32);

        let mut in_params = vec![sys::hailo_input_vstream_params_by_name_t::default(); MAX_STREAMS];
        let mut n_in = in_params.len();
        // SAFETY: `network_group` is live (owned by `vdevice`); `in_params`
        // has room for `n_in` entries.
        check(&lib, "hailo_make_input_vstream_params", unsafe {
            lib.hailo_make_input_vstream_params(
                network_group,
                false,
                sys::HAILO_FORMAT_TYPE_AUTO,
                in_params.as_mut_ptr(),
                &mut n_in,
            )
        })?;
        in_params.truncate(n_in.min(MAX_STREAMS));
        if in_params.len() != 1 {
            return Err(HailoError::UnsupportedModel(format!(
                "{} input vstreams; exactly one is supported",
                in_params.len()
            )));
        }
        let mut out_params = vec![sys::hailo_output_vstream_params_by_name_t::default(); MAX_STREAMS];
        let mut n_out = out_params.len();
        // SAFETY: as above, for the outputs.
        check(&lib, "hailo_make_output_vstream_params", unsafe {
            lib.hailo_make_output_vstream_params(
                network_group,
                false,
                sys::HAILO_FORMAT_TYPE_FLOAT32,
                out_params.as_mut_ptr(),
                &mut n_out,
            )
        })?;
        out_params.truncate(n_out.min(MAX_STREAMS));
        if out_params.is_empty() {
            return Err(HailoError::UnsupportedModel("the HEF has no output vstreams".into()));
        }
        let out_params = hef_order(out_params, hef.sorted_output_names().as_deref());
        let tune = |p: &mut sys::hailo_vstream_params_t, format_type| {
            p.user_buffer_format.type_ = format_type;
            p.timeout_ms = opts.timeout_ms;
            p.queue_size = queue_size;
        };
        // The input takes the HEF's own type (AUTO): UINT8 for HEFs that
        // normalise on the chip, FLOAT32 for those that want floats; any
        // other is refused once HailoRT has said which it is. Outputs are
        // always de-quantised to FLOAT32 (NMS outputs included).
        for p in &mut in_params {
            tune(&mut p.params, sys::HAILO_FORMAT_TYPE_AUTO);
        }
        let mut out_params = out_params;
        for p in &mut out_params {
            tune(&mut p.params, sys::HAILO_FORMAT_TYPE_FLOAT32);
        }

        let mut raw_in = vec![std::ptr::null_mut(); in_params.len()];
        // SAFETY: `in_params` holds `len` initialised params; `raw_in` has
        // room for as many handles.
        check(&lib, "hailo_create_input_vstreams", unsafe {
            lib.hailo_create_input_vstreams(network_group, in_params.as_ptr(), in_params.len(), raw_in.as_mut_ptr())
        })?;
        let input = InputVstreams { lib: Arc::clone(&lib), raw: raw_in };
        let mut raw_out = vec![std::ptr::null_mut(); out_params.len()];
        // SAFETY: as above, for the outputs (all created together, as HailoRT
        // requires for outputs sharing a low-level stream).
        check(&lib, "hailo_create_output_vstreams", unsafe {
            lib.hailo_create_output_vstreams(network_group, out_params.as_ptr(), out_params.len(), raw_out.as_mut_ptr())
        })?;
        let outputs = OutputVstreams { lib: Arc::clone(&lib), raw: raw_out };

        let (input_port, input_format) = describe_input(&lib, input.raw[0], &hef_name)?;
        let output_ports = outputs.raw.iter().map(|v| describe_output(&lib, *v)).collect::<Result<Vec<_>, _>>()?;

        let staging_out = Vec::with_capacity(output_ports.iter().map(|p| p.elements).max().unwrap_or(0));
        let workers = match opts.prepare_workers {
            0 => auto_prepare_workers(),
            n => n.min(MAX_PREPARE_WORKERS),
        };
        let io = Io::start(&lib, &input, &outputs, &output_ports, depth, (input_port.clone(), input_format, workers))?;
        Ok(Self {
            io,
            outputs,
            input,
            vdevice,
            _hef: hef,
            library_path,
            library_version,
            input_port,
            input_format,
            output_ports,
            staging_in: Vec::new(),
            staging_u8: Vec::new(),
            staging_tensor: Tensor::zeros(&[1]),
            staging_out,
            poisoned: None,
        })
    }

    /// Frames this engine keeps in flight.
    pub fn depth(&self) -> usize {
        self.io.depth
    }

    /// Threads preparing frames for the chip.
    pub fn prepare_workers(&self) -> usize {
        self.io.workers
    }

    pub fn library_path(&self) -> &Path {
        &self.library_path
    }

    pub fn library_version(&self) -> sys::LibraryVersion {
        self.library_version
    }

    /// The NCHW shape [`HailoEngine::infer`] expects: `[1, C, H, W]`.
    pub fn input_shape(&self) -> [usize; 4] {
        [1, self.input_port.channels, self.input_port.height, self.input_port.width]
    }

    pub fn input_name(&self) -> &str {
        &self.input_port.name
    }

    /// The HEF input's element type: how frames are prepared for it.
    pub fn input_format(&self) -> InputFormat {
        self.input_format
    }

    /// Output vstream names and shapes, in the order `infer` returns them:
    /// NCHW for tensors, `[number_of_classes, max_bboxes_per_class]` for NMS.
    pub fn outputs(&self) -> Vec<(String, Vec<usize>)> {
        self.output_ports.iter().map(|p| (p.name.clone(), p.shape())).collect()
    }

    /// Input format, output orders and NMS shapes, for `sparkctl engine`.
    pub fn hef_layout(&self) -> HefLayout {
        HefLayout {
            input_format: self.input_format.as_str().into(),
            input_order: format_order_name(self.input_port.order).into(),
            outputs: self
                .output_ports
                .iter()
                .map(|p| HefOutput {
                    name: p.name.clone(),
                    order: format_order_name(p.order).into(),
                    nms_shape: match p.kind {
                        PortKind::Nms { classes, max_per_class } => Some([classes as u32, max_per_class as u32]),
                        PortKind::NmsByScore { classes, max_total, .. } => Some([classes as u32, max_total as u32]),
                        PortKind::Frame(_) => None,
                    },
                })
                .collect(),
        }
    }

    /// Chip temperature of the vdevice's first physical device. Not available
    /// through the multi-process service (`HAILO_NOT_SUPPORTED`).
    pub fn temperature(&self) -> Result<ChipTemperature, HailoError> {
        temperature(&self.vdevice.lib, self.vdevice.first_physical_device()?)
    }

    /// `hailo_identify` on the vdevice's first physical device.
    pub fn identity(&self) -> Result<DeviceIdentity, HailoError> {
        identify(&self.vdevice.lib, self.vdevice.first_physical_device()?)
    }

    /// Runs one frame: `input` is NCHW `[1, C, H, W]`; outputs are NCHW (NMS
    /// outputs: the raw frame, see [`HailoEngine::outputs`]), in HEF order.
    /// A UINT8 input gets the tensor's values rounded to bytes: exact for a
    /// tensor prepared with mean 0 and std 1, which a HEF that normalises on
    /// the chip needs; [`HailoEngine::infer_frame`] skips the floats.
    ///
    /// After a failed frame the vstreams are cleared so the next frame cannot
    /// read this one's late outputs; if clearing fails too, the engine
    /// refuses further frames ([`HailoError::Poisoned`]).
    pub fn infer(&mut self, input: &Tensor) -> Result<Vec<Output>, HailoError> {
        self.settle_in_flight();
        self.check_usable()?;
        let expected = self.input_shape();
        if input.shape.as_slice() != expected.as_slice() || input.data.len() != self.input_port.elements {
            return Err(HailoError::InputShape { got: input.shape.clone(), expected });
        }
        let result = match self.input_format {
            InputFormat::Float32 => self.exchange_f32(input),
            InputFormat::Uint8 => {
                let p = &self.input_port;
                nchw_to_nhwc_u8(&input.data, p.channels, p.height, p.width, &mut self.staging_u8);
                self.exchange_u8()
            }
        };
        self.settle(result)
    }

    /// Prepares `frame` as `spec` says, in the form the HEF input takes, and
    /// runs it. A UINT8 input gets uint8 NHWC straight from the resize
    /// ([`prepare::u8_nhwc`]: no float tensor, no transpose; the
    /// manifest's mean and std are the chip's business); a FLOAT32 input the
    /// normalised tensor. Returns the outputs and the letterbox to map boxes
    /// back to the frame.
    pub fn infer_frame<'a>(
        &mut self,
        frame: impl Into<PixelsRef<'a>>,
        spec: &InputSpec,
    ) -> Result<(Vec<Output>, vision::Letterbox), HailoError> {
        self.settle_in_flight();
        self.check_usable()?;
        let expected = self.input_shape();
        if [3, spec.height as usize, spec.width as usize] != expected[1..] {
            return Err(HailoError::InputShape {
                got: vec![1, 3, spec.height as usize, spec.width as usize],
                expected,
            });
        }
        match self.input_format {
            InputFormat::Uint8 => {
                let lb = prepare::u8_nhwc(frame, spec, &mut self.staging_u8);
                let result = self.exchange_u8();
                self.settle(result).map(|o| (o, lb))
            }
            InputFormat::Float32 => {
                let mut t = std::mem::replace(&mut self.staging_tensor, Tensor::zeros(&[0]));
                let lb = prepare::tensor(frame, spec, &mut t);
                let result = self.exchange_f32(&t);
                self.staging_tensor = t;
                self.settle(result).map(|o| (o, lb))
            }
        }
    }

    fn check_usable(&self) -> Result<(), HailoError> {
        match &self.poisoned {
            Some((cause, failure)) => Err(HailoError::Poisoned { cause: cause.clone(), failure: *failure }),
            None => Ok(()),
        }
    }

    /// After a failed frame: clear the vstreams, or poison the engine.
    fn settle(&mut self, result: Result<Vec<Output>, HailoError>) -> Result<Vec<Output>, HailoError> {
        if let Err(e) = &result
            && let Err(clear) = self.clear_vstreams()
        {
            self.poisoned = Some((clear.to_string(), e.failure()));
        }
        result
    }

    fn exchange_f32(&mut self, input: &Tensor) -> Result<Vec<Output>, HailoError> {
        let port = &self.input_port;
        let frame: &[f32] = match port.layout() {
            Some(Layout::Nhwc) => {
                nchw_to_nhwc(&input.data, port.channels, port.height, port.width, &mut self.staging_in);
                &self.staging_in
            }
            _ => &input.data,
        };
        write_frame(&self.input, frame.as_ptr().cast(), size_of_val(frame))?;
        self.read_outputs()
    }

    fn exchange_u8(&mut self) -> Result<Vec<Output>, HailoError> {
        if self.staging_u8.len() != self.input_port.elements {
            return Err(HailoError::InputShape { got: vec![self.staging_u8.len()], expected: self.input_shape() });
        }
        write_frame(&self.input, self.staging_u8.as_ptr(), self.staging_u8.len())?;
        self.read_outputs()
    }

    fn read_outputs(&mut self) -> Result<Vec<Output>, HailoError> {
        read_outputs(&self.outputs.lib, &self.output_ports, &self.outputs.raw, &mut self.staging_out)
    }

    /// Drops whatever frames are still queued in the vstreams.
    fn clear_vstreams(&mut self) -> Result<(), HailoError> {
        let lib = &self.input.lib;
        // SAFETY: the handle arrays are live and their lengths are exact.
        check(lib, "hailo_clear_input_vstreams", unsafe {
            lib.hailo_clear_input_vstreams(self.input.raw.as_ptr(), self.input.raw.len())
        })?;
        // SAFETY: as above; all outputs are cleared together, as HailoRT requires.
        check(lib, "hailo_clear_output_vstreams", unsafe {
            lib.hailo_clear_output_vstreams(self.outputs.raw.as_ptr(), self.outputs.raw.len())
        })
    }
}

/// Writes one input frame of `len` bytes at `data`.
fn write_frame(input: &InputVstreams, data: *const u8, len: usize) -> Result<(), HailoError> {
    write_raw(&input.lib, input.raw[0], data, len)
}

fn write_raw(
    lib: &sys::HailoRt,
    input: sys::hailo_input_vstream,
    data: *const u8,
    len: usize,
) -> Result<(), HailoError> {
    // SAFETY: callers pass a live buffer of exactly the vstream's frame size
    // in bytes (checked against hailo_get_input_vstream_frame_size at open)
    // that outlives the call; the vstream handle is live (the engine joins
    // its I/O threads before releasing it).
    check(lib, "hailo_vstream_write_raw_buffer", unsafe { lib.hailo_vstream_write_raw_buffer(input, data.cast(), len) })
}

/// Reads one frame from every output vstream, in HEF order, into `Output`s.
fn read_outputs(
    lib: &sys::HailoRt,
    ports: &[Port],
    vstreams: &[sys::hailo_output_vstream],
    staging: &mut Vec<f32>,
) -> Result<Vec<Output>, HailoError> {
    let mut out = Vec::with_capacity(ports.len());
    for (port, vstream) in ports.iter().zip(vstreams) {
        staging.clear();
        staging.resize(port.elements, 0.0);
        // A BY_SCORE frame need not be a whole number of floats.
        let bytes = match port.kind {
            PortKind::NmsByScore { frame_bytes, .. } => frame_bytes,
            _ => size_of_val(staging.as_slice()),
        };
        // SAFETY: `staging` holds at least `bytes`, the vstream's frame size
        // (checked at open), and is writable; the handle is live (as above).
        check(lib, "hailo_vstream_read_raw_buffer", unsafe {
            lib.hailo_vstream_read_raw_buffer(*vstream, staging.as_mut_ptr().cast(), bytes)
        })?;
        let data = match port.kind {
            PortKind::Frame(Layout::Nhwc) => nhwc_to_nchw(staging, port.height, port.width, port.channels),
            PortKind::NmsByScore { classes, max_total, frame_bytes } => {
                let raw: Vec<u8> = staging.iter().flat_map(|f| f.to_ne_bytes()).take(frame_bytes).collect();
                by_score_rows(&raw, classes, max_total)
            }
            // NMS frames go to the decoder as read; it checks every count.
            _ => staging.clone(),
        };
        out.push(Output { name: port.name.clone(), shape: port.shape(), data });
    }
    Ok(out)
}

// ---- frames in flight ----------------------------------------------------------------------

/// One prepared input frame, in the HEF input's element type.
enum Prepared {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

impl Prepared {
    fn bytes(&self) -> (*const u8, usize) {
        match self {
            Prepared::U8(b) => (b.as_ptr(), b.len()),
            Prepared::F32(f) => (f.as_ptr().cast(), size_of_val(f.as_slice())),
        }
    }
}

/// A frame for a prepare worker: the frame and a free buffer to prepare it
/// into, or why it cannot be written. `seq` is the order of submission,
/// which the writer restores.
struct PrepareJob {
    seq: u64,
    tag: u64,
    frame: Arc<Pixels>,
    spec: InputSpec,
    buffer: Result<Prepared, HailoError>,
}

/// A frame for the writer: its buffer, or why it cannot be written.
struct Job {
    tag: u64,
    lb: vision::Letterbox,
    input: Result<Prepared, HailoError>,
}

/// A frame the writer handled, for the reader: written, or why not.
struct Written {
    tag: u64,
    lb: vision::Letterbox,
    status: Result<(), HailoError>,
}

type Done = (u64, Result<(Vec<Output>, vision::Letterbox), HailoError>);

/// Raw vstream handles for one I/O thread.
struct Lane<T> {
    lib: Arc<sys::HailoRt>,
    handles: Vec<T>,
}

// SAFETY: HailoRT's blocking vstream write and read may be called from any
// thread, and a writer and a reader may work on one network group at once
// (HailoRT's own vstreams_example.c writes on one thread and reads on
// others). The input handle is used only by the writer thread and the
// output handles only by the reader thread while frames are in flight; the
// engine's own thread touches them only when both are idle (nothing in
// flight). The engine joins both threads before releasing the vstreams.
unsafe impl<T> Send for Lane<T> {}

/// The writer and reader threads, their bounded channels (each holds at
/// most `depth` frames) and the engine-side bookkeeping.
struct Io {
    depth: usize,
    workers: usize,
    /// To the prepare workers, in submission order (`next_seq`).
    jobs: Option<Sender<PrepareJob>>,
    next_seq: u64,
    /// Prepared-input buffers, `depth` of them, returned by the writer.
    free: Receiver<Prepared>,
    results: Option<Receiver<Done>>,
    /// The class of the first failure since the vstreams were last cleared.
    failed: Arc<Mutex<Option<HailoFailure>>>,
    /// Tags submitted whose result has not been received from the reader,
    /// oldest first.
    outstanding: VecDeque<u64>,
    /// Results received while draining, not yet collected (at most `depth`).
    ready: VecDeque<Done>,
    threads: Vec<JoinHandle<()>>,
}

fn lock_failed(f: &Mutex<Option<HailoFailure>>) -> std::sync::MutexGuard<'_, Option<HailoFailure>> {
    f.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Io {
    fn start(
        lib: &Arc<sys::HailoRt>,
        input: &InputVstreams,
        outputs: &OutputVstreams,
        ports: &[Port],
        depth: usize,
        (input_port, input_format, workers): (Port, InputFormat, usize),
    ) -> Result<Self, HailoError> {
        let depth = depth.max(1);
        let workers = workers.max(1);
        // Each channel holds at most `depth` frames: no more are ever in flight.
        let (jobs_tx, jobs_rx) = bounded::<PrepareJob>(depth);
        let (prepared_tx, prepared_rx) = bounded::<(u64, Job)>(depth);
        let (free_tx, free_rx) = bounded::<Prepared>(depth);
        let (written_tx, written_rx) = bounded::<Written>(depth);
        let (results_tx, results_rx) = bounded::<Done>(depth);
        for _ in 0..depth {
            let _ = free_tx.send(Prepared::U8(Vec::new()));
        }
        let failed = Arc::new(Mutex::new(None));
        let writer_lane = Lane { lib: Arc::clone(lib), handles: input.raw.clone() };
        let reader_lane = Lane { lib: Arc::clone(lib), handles: outputs.raw.clone() };
        let ports = ports.to_vec();
        let mut threads = Vec::with_capacity(workers + 2);
        for i in 0..workers {
            let (port, jobs, prepared) = (input_port.clone(), jobs_rx.clone(), prepared_tx.clone());
            let worker = std::thread::Builder::new()
                .name(format!("hailo-prep-{i}"))
                .spawn(move || prepare_loop(&port, input_format, jobs, prepared))
                .map_err(|_| HailoError::IoThreadGone)?;
            threads.push(worker);
        }
        drop(prepared_tx);
        let wfailed = Arc::clone(&failed);
        let writer = std::thread::Builder::new()
            .name("hailo-write".into())
            .spawn(move || writer_loop(writer_lane, prepared_rx, free_tx, written_tx, wfailed))
            .map_err(|_| HailoError::IoThreadGone)?;
        let rfailed = Arc::clone(&failed);
        let reader = std::thread::Builder::new()
            .name("hailo-read".into())
            .spawn(move || reader_loop(reader_lane, ports, written_rx, results_tx, rfailed))
            .map_err(|_| HailoError::IoThreadGone)?;
        threads.push(writer);
        threads.push(reader);
        Ok(Self {
            depth,
            workers,
            jobs: Some(jobs_tx),
            next_seq: 0,
            free: free_rx,
            results: Some(results_rx),
            failed,
            outstanding: VecDeque::new(),
            ready: VecDeque::new(),
            threads,
        })
    }

    fn in_flight(&self) -> usize {
        self.outstanding.len() + self.ready.len()
    }

    /// The next result from the reader, waiting up to `timeout`; a reader
    /// that is gone fails the frames it owed ([`HailoError::IoThreadGone`]).
    fn receive(&mut self, timeout: Duration) -> Option<Done> {
        let tag = *self.outstanding.front()?;
        let got = match self.results.as_ref() {
            Some(r) => r.recv_timeout(timeout),
            None => Err(crossbeam_channel::RecvTimeoutError::Disconnected),
        };
        let done = match got {
            Ok(done) => done,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => return None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => (tag, Err(HailoError::IoThreadGone)),
        };
        self.outstanding.pop_front();
        Some(done)
    }

    /// Waits for every outstanding result, keeping them for `collect`.
    fn drain(&mut self) {
        while !self.outstanding.is_empty() {
            if let Some(done) = self.receive(Duration::from_secs(1)) {
                self.ready.push_back(done);
            }
        }
    }

    fn take_failure(&self) -> Option<HailoFailure> {
        lock_failed(&self.failed).take()
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        // Closing the job channel stops the prepare workers, then the writer,
        // which closes the reader's;
        // dropping the results lets a reader blocked on a send go too.
        self.jobs = None;
        self.results = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Prepares frames into the buffers they came with, in whatever order the
/// workers finish; the writer puts them back in submission order.
fn prepare_loop(port: &Port, format: InputFormat, jobs: Receiver<PrepareJob>, prepared: Sender<(u64, Job)>) {
    let mut staging = Tensor::zeros(&[1]);
    for job in jobs {
        let (frame_width, frame_height) = job.frame.dimensions();
        let mut lb = vision::Letterbox {
            scale_x: 1.0,
            scale_y: 1.0,
            frame_width,
            frame_height,
            input_width: job.spec.width,
            input_height: job.spec.height,
        };
        let input = job.buffer.map(|buf| {
            let (p, l) = prepare_frame(port, format, buf, job.frame.view(), &job.spec, &mut staging);
            lb = l;
            p
        });
        if prepared.send((job.seq, Job { tag: job.tag, lb, input })).is_err() {
            return;
        }
    }
}

/// Prepares `frame` into `buf` in the HEF input's form (as `infer_frame`).
fn prepare_frame(
    port: &Port,
    format: InputFormat,
    buf: Prepared,
    frame: PixelsRef<'_>,
    spec: &InputSpec,
    staging: &mut Tensor,
) -> (Prepared, vision::Letterbox) {
    match format {
        InputFormat::Uint8 => {
            let mut b = match buf {
                Prepared::U8(b) => b,
                Prepared::F32(_) => Vec::new(),
            };
            let lb = prepare::u8_nhwc(frame, spec, &mut b);
            (Prepared::U8(b), lb)
        }
        InputFormat::Float32 => {
            let mut f = match buf {
                Prepared::F32(f) => f,
                Prepared::U8(_) => Vec::new(),
            };
            let lb = prepare::tensor(frame, spec, staging);
            match port.layout() {
                Some(Layout::Nhwc) => nchw_to_nhwc(&staging.data, port.channels, port.height, port.width, &mut f),
                _ => {
                    f.clear();
                    f.extend_from_slice(&staging.data);
                }
            }
            (Prepared::F32(f), lb)
        }
    }
}

/// Writes prepared frames in submission order: a frame a worker finished
/// early waits (at most `depth` frames exist) for those before it.
fn writer_loop(
    lane: Lane<sys::hailo_input_vstream>,
    prepared: Receiver<(u64, Job)>,
    free: Sender<Prepared>,
    written: Sender<Written>,
    failed: Arc<Mutex<Option<HailoFailure>>>,
) {
    let mut order = InOrder::default();
    for (seq, job) in prepared {
        order.put(seq, job);
        while let Some(job) = order.next() {
            if !write_job(&lane, job, &free, &written, &failed) {
                return;
            }
        }
    }
}

/// Restores submission order: items arrive tagged with their sequence
/// number (from 0, each once) in any order and leave in sequence.
struct InOrder<T> {
    next: u64,
    early: std::collections::BTreeMap<u64, T>,
}

impl<T> Default for InOrder<T> {
    fn default() -> Self {
        Self { next: 0, early: std::collections::BTreeMap::new() }
    }
}

impl<T> InOrder<T> {
    fn put(&mut self, seq: u64, item: T) {
        self.early.insert(seq, item);
    }

    /// The next item in sequence, if it has arrived.
    fn next(&mut self) -> Option<T> {
        let item = self.early.remove(&self.next)?;
        self.next += 1;
        Some(item)
    }
}

/// Writes one frame and hands it to the reader; false when the reader is gone.
fn write_job(
    lane: &Lane<sys::hailo_input_vstream>,
    job: Job,
    free: &Sender<Prepared>,
    written: &Sender<Written>,
    failed: &Mutex<Option<HailoFailure>>,
) -> bool {
    {
        let status = match job.input {
            Err(e) => Err(e),
            Ok(buf) => {
                // After a failure nothing more goes to the chip until the
                // engine has cleared the vstreams.
                let after = *lock_failed(failed);
                let status = match after {
                    Some(after) => Err(HailoError::Abandoned { after }),
                    None => {
                        let (ptr, len) = buf.bytes();
                        let status = write_raw(&lane.lib, lane.handles[0], ptr, len);
                        if let Err(e) = &status {
                            lock_failed(failed).get_or_insert(e.failure());
                        }
                        status
                    }
                };
                let _ = free.send(buf);
                status
            }
        };
        written.send(Written { tag: job.tag, lb: job.lb, status }).is_ok()
    }
}

fn reader_loop(
    lane: Lane<sys::hailo_output_vstream>,
    ports: Vec<Port>,
    written: Receiver<Written>,
    results: Sender<Done>,
    failed: Arc<Mutex<Option<HailoFailure>>>,
) {
    let mut staging = Vec::with_capacity(ports.iter().map(|p| p.elements).max().unwrap_or(0));
    for w in written {
        let after = *lock_failed(&failed);
        let result = match (w.status, after) {
            (Err(e), _) => Err(e),
            // Written before the writer saw the failure: not read, cleared later.
            (Ok(()), Some(after)) => Err(HailoError::Abandoned { after }),
            (Ok(()), None) => read_outputs(&lane.lib, &ports, &lane.handles, &mut staging),
        };
        if let Err(e) = &result {
            lock_failed(&failed).get_or_insert(e.failure());
        }
        if results.send((w.tag, result.map(|o| (o, w.lb)))).is_err() {
            return;
        }
    }
}

impl Engine for HailoEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Hailo
    }

    /// Outputs come in the HEF's order (see the module docs).
    fn run(&mut self, input: &Tensor) -> Result<Vec<Output>, EngineError> {
        self.infer(input).map_err(EngineError::from)
    }

    /// A UINT8 HEF gets bytes, not floats ([`HailoEngine::infer_frame`];
    /// `input` is left as it was); a FLOAT32 HEF the tensor, prepared into
    /// `input` as on the CPU.
    fn run_frame(
        &mut self,
        frame: PixelsRef<'_>,
        spec: &InputSpec,
        input: &mut Tensor,
    ) -> Result<(Vec<Output>, vision::Letterbox), EngineError> {
        match self.input_format {
            InputFormat::Uint8 => self.infer_frame(frame, spec).map_err(EngineError::from),
            InputFormat::Float32 => {
                let lb = prepare::tensor(frame, spec, input);
                Ok((self.infer(input)?, lb))
            }
        }
    }

    fn hef_layout(&self) -> Option<HefLayout> {
        Some(HailoEngine::hef_layout(self))
    }

    fn depth(&self) -> usize {
        self.io.depth
    }

    /// Hands the frame to the prepare workers; the I/O threads write and read.
    fn submit(&mut self, tag: u64, frame: Arc<Pixels>, spec: &InputSpec) -> Result<Option<Completed>, EngineError> {
        if self.io.in_flight() >= self.io.depth {
            return Err(EngineError::Overfull { depth: self.io.depth });
        }
        // A failure earlier in the stream: finish what is in flight, then
        // clear the vstreams before anything new is written.
        if lock_failed(&self.io.failed).is_some() {
            self.settle_in_flight();
        }
        // A frame that cannot be written still goes through the workers and
        // the writer, so its failure comes back in its turn.
        let buffer = match self.check_usable().and_then(|()| self.check_spec(spec)) {
            Err(e) => Err(e),
            Ok(()) => self.io.free.recv().map_err(|_| HailoError::IoThreadGone),
        };
        let Some(jobs) = self.io.jobs.as_ref() else { return Err(HailoError::IoThreadGone.into()) };
        let seq = self.io.next_seq;
        if jobs.send(PrepareJob { seq, tag, frame, spec: spec.clone(), buffer }).is_err() {
            return Err(HailoError::IoThreadGone.into());
        }
        self.io.next_seq += 1;
        self.io.outstanding.push_back(tag);
        Ok(None)
    }

    fn collect(&mut self, timeout: Duration) -> Option<Completed> {
        let done = match self.io.ready.pop_front() {
            Some(d) => d,
            None => self.io.receive(timeout)?,
        };
        let (tag, result) = done;
        Some(Completed { tag, kind: EngineKind::Hailo, result: result.map_err(EngineError::from) })
    }
}

impl HailoEngine {
    /// With nothing in flight (results kept for `collect`): clears the
    /// vstreams if a frame failed since they were last cleared, or poisons
    /// the engine if that fails.
    fn settle_in_flight(&mut self) {
        self.io.drain();
        if let Some(failure) = self.io.take_failure()
            && let Err(clear) = self.clear_vstreams()
        {
            self.poisoned.get_or_insert((clear.to_string(), failure));
        }
    }

    fn check_spec(&self, spec: &InputSpec) -> Result<(), HailoError> {
        let expected = self.input_shape();
        if [3, spec.height as usize, spec.width as usize] != expected[1..] {
            return Err(HailoError::InputShape {
                got: vec![1, 3, spec.height as usize, spec.width as usize],
                expected,
            });
        }
        Ok(())
    }
}

/// The configured network group and its batch size (0: HailoRT's default).
fn configure(
    lib: &sys::HailoRt,
    vdevice: &VDevice,
    hef: &Hef,
) -> Result<(sys::hailo_configured_network_group, u16), HailoError> {
    // About 64 KiB: on the heap.
    let mut params: Box<sys::hailo_configure_params_t> = Box::default();
    // SAFETY: `params` points at a writable hailo_configure_params_t; the HEF
    // and vdevice handles are live.
    check(lib, "hailo_init_configure_params_by_vdevice", unsafe {
        lib.hailo_init_configure_params_by_vdevice(hef.raw, vdevice.raw, &mut *params)
    })?;
    let mut groups: [sys::hailo_configured_network_group; sys::HAILO_MAX_NETWORK_GROUPS as usize] =
        [std::ptr::null_mut(); sys::HAILO_MAX_NETWORK_GROUPS as usize];
    let mut n = groups.len();
    // SAFETY: `params` was filled by HailoRT for this HEF and vdevice;
    // `groups` has room for `n` handles. The configured network groups belong
    // to the vdevice and are freed with it.
    check(lib, "hailo_configure_vdevice", unsafe {
        lib.hailo_configure_vdevice(vdevice.raw, hef.raw, &mut *params, groups.as_mut_ptr(), &mut n)
    })?;
    let batch = params.network_group_params[0].batch_size;
    match n {
        1 if !groups[0].is_null() => Ok((groups[0], batch)),
        _ => Err(HailoError::UnsupportedModel(format!("{n} network groups; exactly one is supported"))),
    }
}

/// Output params reordered to the HEF's sorted output order; names the HEF
/// list does not mention keep their relative order at the end.
fn hef_order(
    params: Vec<sys::hailo_output_vstream_params_by_name_t>,
    sorted: Option<&[String]>,
) -> Vec<sys::hailo_output_vstream_params_by_name_t> {
    let Some(sorted) = sorted else { return params };
    let mut keyed: Vec<(usize, usize, sys::hailo_output_vstream_params_by_name_t)> = params
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let name = c_chars(&p.name);
            let rank = sorted.iter().position(|s| *s == name).unwrap_or(usize::MAX);
            (rank, i, p)
        })
        .collect();
    keyed.sort_by_key(|(rank, i, _)| (*rank, *i));
    keyed.into_iter().map(|(_, _, p)| p).collect()
}

fn describe_input(
    lib: &sys::HailoRt,
    v: sys::hailo_input_vstream,
    hef: &str,
) -> Result<(Port, InputFormat), HailoError> {
    let mut info = sys::hailo_vstream_info_t::default();
    let mut user = sys::hailo_format_t::default();
    let mut frame = 0usize;
    // SAFETY: `v` is a live input vstream; each out-pointer is a valid, writable struct.
    unsafe {
        check(lib, "hailo_get_input_vstream_info", lib.hailo_get_input_vstream_info(v, &mut info))?;
        check(lib, "hailo_get_input_vstream_user_format", lib.hailo_get_input_vstream_user_format(v, &mut user))?;
        check(lib, "hailo_get_input_vstream_frame_size", lib.hailo_get_input_vstream_frame_size(v, &mut frame))?;
    }
    Port::describe_input(&info, &user, frame, hef)
}

fn describe_output(lib: &sys::HailoRt, v: sys::hailo_output_vstream) -> Result<Port, HailoError> {
    let mut info = sys::hailo_vstream_info_t::default();
    let mut user = sys::hailo_format_t::default();
    let mut frame = 0usize;
    // SAFETY: `v` is a live output vstream; each out-pointer is a valid, writable struct.
    unsafe {
        check(lib, "hailo_get_output_vstream_info", lib.hailo_get_output_vstream_info(v, &mut info))?;
        check(lib, "hailo_get_output_vstream_user_format", lib.hailo_get_output_vstream_user_format(v, &mut user))?;
        check(lib, "hailo_get_output_vstream_frame_size", lib.hailo_get_output_vstream_frame_size(v, &mut frame))?;
    }
    Port::describe(&info, &user, frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_finished_out_of_order_leave_in_submission_order() {
        let mut order = InOrder::default();
        let mut out = Vec::new();
        for seq in [2u64, 0, 3, 1, 5, 4] {
            order.put(seq, seq * 10);
            while let Some(v) = order.next() {
                out.push(v);
            }
            // Nothing leaves before every earlier item has.
            assert!(out.iter().enumerate().all(|(i, v)| *v == i as u64 * 10), "{out:?}");
        }
        assert_eq!(out, vec![0, 10, 20, 30, 40, 50]);
        assert!(order.early.is_empty());
    }

    #[test]
    fn transposes_are_inverse_and_place_channels_last() {
        let (c, h, w) = (3, 2, 4);
        let nchw: Vec<f32> = (0..c * h * w).map(|i| i as f32).collect();
        let mut nhwc = Vec::new();
        nchw_to_nhwc(&nchw, c, h, w, &mut nhwc);
        // Pixel (y=1, x=2) channel 1 sits at NCHW 1*8 + 1*4 + 2 = 14.
        assert_eq!(nhwc[(1 * w + 2) * c + 1], 14.0);
        assert_eq!(nhwc_to_nchw(&nhwc, h, w, c), nchw);
    }

    #[test]
    fn transposes_match_the_index_formula_for_any_channel_count() {
        let (h, w) = (3, 5);
        for c in [1, 2, 3, 10] {
            let nchw: Vec<f32> = (0..c * h * w).map(|i| i as f32).collect();
            let mut nhwc = Vec::new();
            nchw_to_nhwc(&nchw, c, h, w, &mut nhwc);
            for ch in 0..c {
                for p in 0..h * w {
                    assert_eq!(nhwc[p * c + ch], nchw[ch * h * w + p], "c={c} ch={ch} p={p}");
                }
            }
            assert_eq!(nhwc_to_nchw(&nhwc, h, w, c), nchw, "c={c}");
        }
    }

    #[test]
    fn statuses_are_named_and_classified() {
        assert_eq!(HailoStatus(4).to_string(), "HAILO_TIMEOUT (4)");
        assert_eq!(HailoStatus(26).name(), "HAILO_INVALID_HEF");
        assert_eq!(HailoStatus(76).name(), "HAILO_INVALID_DRIVER_VERSION");
        assert_eq!(HailoStatus(4).failure(), HailoFailure::Transient);
        for lost in [36, 73, 74, 77, 87, 96] {
            assert_eq!(HailoStatus(lost).failure(), HailoFailure::DeviceLost, "{lost}");
        }
        for permanent in [26, 76, 78, 85, 86, 91, 92, 93, 1000] {
            assert_eq!(HailoStatus(permanent).failure(), HailoFailure::Permanent, "{permanent}");
        }
    }

    #[test]
    fn engine_error_keeps_the_class_readable() {
        let e = HailoError::Status { call: "hailo_vstream_read_raw_buffer", status: HailoStatus(87), message: None };
        assert!(e.is_device_lost() && e.is_fatal() && !e.is_timeout());
        let ee = EngineError::from(e);
        assert_eq!(ee.failure(), Some(HailoFailure::DeviceLost));
        assert!(crate::error_chain(&ee).contains("HAILO_DRIVER_TIMEOUT (87)"), "{ee}");
        assert_eq!(EngineError::ModelMismatch("x".into()).failure(), None);
    }

    #[test]
    fn outputs_reorder_to_the_hef_list_with_strangers_last() {
        let p = |n: &str| {
            let mut v = sys::hailo_output_vstream_params_by_name_t::default();
            for (d, s) in v.name.iter_mut().zip(n.bytes()) {
                *d = s as c_char;
            }
            v
        };
        let params = vec![p("g/b"), p("g/x"), p("g/a"), p("g/c")];
        let sorted = ["g/c".to_string(), "g/a".to_string(), "g/b".to_string()];
        let names: Vec<String> = hef_order(params, Some(&sorted)).iter().map(|v| c_chars(&v.name)).collect();
        assert_eq!(names, ["g/c", "g/a", "g/b", "g/x"]);
    }

    fn info(name: &str, type_: u32, order: u32) -> sys::hailo_vstream_info_t {
        let mut i = sys::hailo_vstream_info_t::default();
        for (d, s) in i.name.iter_mut().zip(name.bytes()) {
            *d = s as c_char;
        }
        i.format.type_ = type_;
        i.format.order = order;
        i
    }

    fn user(type_: u32, order: u32) -> sys::hailo_format_t {
        sys::hailo_format_t { type_, order, ..Default::default() }
    }

    fn nms_info(order: u32, classes: u32, max: u32) -> sys::hailo_vstream_info_t {
        let mut i = info("net/nms", sys::HAILO_FORMAT_TYPE_UINT16, order);
        i.__bindgen_anon_1.nms_shape.number_of_classes = classes;
        i.__bindgen_anon_1.nms_shape.max_bboxes_per_class = max;
        i
    }

    #[test]
    fn nms_outputs_by_class_are_read_whole_with_their_nms_shape() {
        let full = 3 * (1 + 5 * 4) * 4;
        let f32_auto = user(sys::HAILO_FORMAT_TYPE_FLOAT32, sys::HAILO_FORMAT_ORDER_AUTO);
        for order in [sys::HAILO_FORMAT_ORDER_HAILO_NMS_BY_CLASS, sys::HAILO_FORMAT_ORDER_HAILO_NMS] {
            let p = Port::describe(&nms_info(order, 3, 4), &f32_auto, full).unwrap();
            assert_eq!(p.kind, PortKind::Nms { classes: 3, max_per_class: 4 });
            assert_eq!((p.shape(), p.elements), (vec![3, 4], 63));
        }
        // The frame size HailoRT reports is what is read, even when short (the decoder checks counts).
        let p = Port::describe(&nms_info(22, 3, 4), &f32_auto, 12).unwrap();
        assert_eq!(p.elements, 3);
        // Byte masks, no classes, a ragged or absurd frame: refused at open.
        let masks = user(sys::HAILO_FORMAT_TYPE_FLOAT32, sys::HAILO_FORMAT_ORDER_HAILO_NMS_WITH_BYTE_MASK);
        let e = Port::describe(&nms_info(22, 3, 4), &masks, full).unwrap_err();
        assert!(e.to_string().contains("HAILO_NMS_WITH_BYTE_MASK"), "{e}");
        for (classes, max, bytes) in
            [(0, 4, full), (3, 0, full), (3, 4, 10), (3, 4, 0), (3, 4, MAX_NMS_FRAME_BYTES + 4)]
        {
            let e = Port::describe(&nms_info(22, classes, max), &f32_auto, bytes).unwrap_err();
            assert!(matches!(e, HailoError::UnsupportedModel(_)), "{classes} {max} {bytes}: {e}");
        }
        // NMS read as UINT8 is not what the decoder reads.
        let u8_user = user(sys::HAILO_FORMAT_TYPE_UINT8, sys::HAILO_FORMAT_ORDER_HAILO_NMS_BY_CLASS);
        assert!(Port::describe(&nms_info(22, 3, 4), &u8_user, full).is_err());
    }

    #[test]
    fn nms_by_score_frames_become_rows_with_a_header_and_nothing_past_the_end_is_read() {
        let mut info = nms_info(23, 3, 4);
        info.__bindgen_anon_1.nms_shape.max_bboxes_total = 5;
        let by_score = user(sys::HAILO_FORMAT_TYPE_FLOAT32, sys::HAILO_FORMAT_ORDER_HAILO_NMS_BY_SCORE);
        let bytes = 2 + 22 * 5;
        let p = Port::describe(&info, &by_score, bytes).unwrap();
        assert_eq!(p.kind, PortKind::NmsByScore { classes: 3, max_total: 5, frame_bytes: bytes });
        assert_eq!((p.shape(), p.elements), (vec![1, 6, BY_SCORE_ROW], 28));
        info.__bindgen_anon_1.nms_shape.max_bboxes_total = 0;
        assert!(Port::describe(&info, &by_score, bytes).is_err());
        // A shape whose frame would be over the cap, with a small frame size reported.
        info.__bindgen_anon_1.nms_shape.max_bboxes_total = u32::MAX;
        assert!(matches!(Port::describe(&info, &by_score, bytes), Err(HailoError::UnsupportedModel(_))));

        // Two detections as hailo_detections_t lays them out.
        let mut frame = vec![0u8; bytes];
        frame[..2].copy_from_slice(&2u16.to_ne_bytes());
        for (i, (v, class)) in [([0.1f32, 0.2, 0.3, 0.4, 0.9], 2u16), ([0.5, 0.5, 0.6, 0.6, 0.7], 0)].iter().enumerate()
        {
            let at = 2 + 22 * i;
            for (k, x) in v.iter().enumerate() {
                frame[at + 4 * k..at + 4 * k + 4].copy_from_slice(&x.to_ne_bytes());
            }
            frame[at + 20..at + 22].copy_from_slice(&class.to_ne_bytes());
        }
        let rows = by_score_rows(&frame, 3, 5);
        assert_eq!(rows.len(), 6 * BY_SCORE_ROW);
        assert_eq!(&rows[..3], &[2.0, 2.0, 3.0]);
        assert_eq!(&rows[6..12], &[0.1, 0.2, 0.3, 0.4, 0.9, 2.0]);
        assert_eq!(&rows[12..18], &[0.5, 0.5, 0.6, 0.6, 0.7, 0.0]);
        assert!(rows[18..].iter().all(|v| *v == 0.0));
        // A count past the frame: only the detections inside it are rows; the
        // header keeps the count so the decoder can refuse the frame.
        frame[..2].copy_from_slice(&900u16.to_ne_bytes());
        let rows = by_score_rows(&frame[..2 + 22 + 10], 3, 5);
        assert_eq!(&rows[..2], &[900.0, 1.0]);
        assert!(by_score_rows(&[], 3, 5)[..2] == [0.0, 0.0]);
    }

    #[test]
    fn input_type_comes_from_the_hef_and_others_are_refused_naming_file_field_and_value() {
        let mut i = info("net/input", sys::HAILO_FORMAT_TYPE_UINT8, sys::HAILO_FORMAT_ORDER_NHWC);
        i.__bindgen_anon_1.shape = sys::hailo_3d_image_shape_t { height: 4, width: 6, features: 3 };
        let auto = user(sys::HAILO_FORMAT_TYPE_AUTO, sys::HAILO_FORMAT_ORDER_AUTO);
        let (p, f) = Port::describe_input(&i, &auto, 72, "a.hef").unwrap();
        assert_eq!((f, p.elements, p.layout()), (InputFormat::Uint8, 72, Some(Layout::Nhwc)));
        // A UINT8 frame of float size is a mismatch.
        assert!(Port::describe_input(&i, &auto, 72 * 4, "a.hef").is_err());
        i.format.type_ = sys::HAILO_FORMAT_TYPE_FLOAT32;
        let (_, f) = Port::describe_input(&i, &auto, 72 * 4, "a.hef").unwrap();
        assert_eq!(f, InputFormat::Float32);
        i.format.type_ = sys::HAILO_FORMAT_TYPE_UINT16;
        let e = Port::describe_input(&i, &auto, 144, "/models/x/model.hef").unwrap_err();
        assert!(
            matches!(&e, HailoError::InputFormat { vstream, value, .. } if vstream == "net/input" && value == "UINT16 (2)")
        );
        let msg = e.to_string();
        assert!(msg.contains("/models/x/model.hef") && msg.contains("format.type") && msg.contains("UINT16"), "{msg}");
        assert_eq!(e.failure(), HailoFailure::Permanent);
    }

    #[test]
    fn float_tensor_to_uint8_nhwc_rounds_and_clamps() {
        let nchw = [0.4, 0.6, 254.5, 300.0, -3.0, 7.0];
        let mut out = Vec::new();
        nchw_to_nhwc_u8(&nchw, 3, 1, 2, &mut out);
        assert_eq!(out, [0, 255, 0, 1, 255, 7]);
    }

    #[test]
    fn identity_strings_use_their_length_not_a_nul() {
        let field: Vec<c_char> = b"HAILO8XXXX".iter().map(|b| *b as c_char).collect();
        assert_eq!(c_chars_len(&field, 6), "HAILO8");
    }
}
