//! Fleet updates: signed manifests, chunked artifact transfer, and the
//! persisted state machine that stages and activates models, configs and
//! binaries (see `docs/updates.md`).
//!
//! Owns the update's trust decision ([`verify`], a pure function), the
//! staging area under `<state_dir>/updates`, the model/config store under
//! `<state_dir>/models` and `<state_dir>/configs` (a `current` symlink per
//! name, swapped atomically), and the binary slots under `<state_dir>/bin`.
//! It does not speak MQTT (the daemon or `spark-fleet` moves the bytes) and
//! does not reload the engine: it says which files are current.
//!
//! **Architecture Invariant:** nothing from an update touches the disk before
//! [`verify`] accepted its manifest; `current` only ever points at a version
//! whose artifact's length and SHA-256 matched the signed manifest.

pub mod agent;
pub mod binary;
mod clock;
pub mod config_trial;
mod fsio;
mod manifest;
pub mod pack;
mod store;
mod wire;

pub use clock::{TRUSTED_TIME_FLOOR_UNIX, TimeBasis, TrustedNow, trusted_now};
pub use fsio::CRASH_ENV;
pub use manifest::{
    ArtifactSpec, BadVersion, Canary, Envelope, Installed, InstalledEntry, KeysFileError, Kind, SignatureEntry,
    SignedError, Targets, TrustedKey, TrustedKeys, UnknownKind, UpdateManifest, Verified, VerifyContext, Version,
    check_plain_name, decode_key, open_envelope, open_signed, sign_envelope, update_id_of, verify,
};
pub use store::{
    BinarySlot, Phase, UpdateRecord, Updater, UpdaterOptions, read_trusted_time_high_water, selected_model,
    wall_clock_secs,
};
pub use wire::{
    Bundle, BundleError, CHUNK_MAX_BYTES, Chunk, ShadowFigures, ShadowReport, StateReport, chunk_artifact,
    envelope_update_id, topics,
};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Why an update (or one chunk of it) was refused. Every variant is a
/// decision, not an IO failure; the device state is unchanged by it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Rejection {
    #[error("malformed envelope: {detail}")]
    MalformedEnvelope { detail: String },
    #[error("no signature by a trusted key (envelope key ids: {key_ids:?})")]
    UnknownKey { key_ids: Vec<String> },
    #[error("the signature by trusted key {key_id} does not verify")]
    BadSignature { key_id: String },
    #[error("the signed manifest has a field this device does not know: {detail}")]
    UnknownManifestField { detail: String },
    #[error("malformed manifest: {detail}")]
    MalformedManifest { detail: String },
    #[error("unsafe {field} {value:?}: {why}")]
    UnsafeName { field: String, value: String, why: String },
    #[error("expired: expires_at {expires_at} is before the trusted time {trusted_now} (from the {basis})")]
    Expired { expires_at: u64, trusted_now: u64, basis: String },
    #[error("not for this device ({device_id} in group {group}): targets devices {devices:?}, group {target_group:?}")]
    NotTargeted { device_id: String, group: String, devices: Vec<String>, target_group: Option<String> },
    #[error("{kind} {name} {offered} is not newer than {installed}, already accepted here")]
    NotNewer { kind: String, name: String, offered: String, installed: String },
    #[error("needs sparkd {required} or newer, this is {running}")]
    RunningTooOld { required: String, running: String },
    #[error("artifact of {length} bytes is larger than the bound of {max} bytes (update.max_artifact_megabytes)")]
    Oversized { length: u64, max: u64 },
    #[error("not enough free space to stage: {needed} bytes needed, {available} available")]
    InsufficientSpace { needed: u64, available: u64 },
    #[error("artifact is {actual} bytes, the manifest says {expected}")]
    ArtifactLength { expected: u64, actual: u64 },
    #[error("artifact SHA-256 is {actual}, the manifest says {expected}")]
    ArtifactDigest { expected: String, actual: String },
    #[error("chunk {index} of update {update_id} refused: {detail}")]
    CorruptChunk { update_id: String, index: u32, detail: String },
    #[error("the HEF needs HailoRT {required}, this device has {device}")]
    HailortMismatch { required: String, device: String },
    #[error("the model pack cannot be used here: {detail}")]
    BadPack { detail: String },
    #[error("the config does not pass check-config: {detail}")]
    InvalidConfig { detail: String },
    #[error("not supported by this device: {detail}")]
    Unsupported { detail: String },
}

impl Rejection {
    /// Stable machine-readable name (the serde tag).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MalformedEnvelope { .. } => "malformed_envelope",
            Rejection::UnknownKey { .. } => "unknown_key",
            Rejection::BadSignature { .. } => "bad_signature",
            Rejection::UnknownManifestField { .. } => "unknown_manifest_field",
            Rejection::MalformedManifest { .. } => "malformed_manifest",
            Rejection::UnsafeName { .. } => "unsafe_name",
            Rejection::Expired { .. } => "expired",
            Rejection::NotTargeted { .. } => "not_targeted",
            Rejection::NotNewer { .. } => "not_newer",
            Rejection::RunningTooOld { .. } => "running_too_old",
            Rejection::Oversized { .. } => "oversized",
            Rejection::InsufficientSpace { .. } => "insufficient_space",
            Rejection::ArtifactLength { .. } => "artifact_length",
            Rejection::ArtifactDigest { .. } => "artifact_digest",
            Rejection::CorruptChunk { .. } => "corrupt_chunk",
            Rejection::HailortMismatch { .. } => "hailort_mismatch",
            Rejection::BadPack { .. } => "bad_pack",
            Rejection::InvalidConfig { .. } => "invalid_config",
            Rejection::Unsupported { .. } => "unsupported",
        }
    }
}

/// A failed update operation: a refusal, or the IO that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("update refused: {0}")]
    Rejected(#[from] Rejection),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the trusted update keys (update.trusted_keys_file)")]
    ReadKeys(#[source] crate::sys::credentials::CredentialError),
    #[error("the trusted update keys {path}")]
    Keys {
        path: PathBuf,
        #[source]
        source: KeysFileError,
    },
    #[error("no update {update_id} is known here")]
    UnknownUpdate { update_id: String },
    #[error("update {update_id} cannot {action} while it is {phase}")]
    WrongPhase { update_id: String, action: &'static str, phase: String },
    #[error("nothing to roll back to for {kind} {name}")]
    NoPrevious { kind: String, name: String },
    #[error("corrupt update state {path}: {message}")]
    CorruptState { path: PathBuf, message: String },
}

impl UpdateError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| UpdateError::Io { what, path, source }
    }

    /// The refusal, when this error is one.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            UpdateError::Rejected(r) => Some(r),
            _ => None,
        }
    }
}
