//! What moves between `spark-fleet` and a device: MQTT topics, chunk and
//! state messages, and the one-file bundle format.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::manifest::{Kind, update_id_of};
use super::store::Phase;
use crate::inference::model::sha256_hex;

/// Default (and largest accepted) size of one chunk's data.
pub const CHUNK_MAX_BYTES: usize = 256 * 1024;

/// The design's update topics. Manifests and chunks are published to
/// `<prefix>/<device>/update/{manifest,chunk}` or
/// `<prefix>/group/<group>/update/{manifest,chunk}`; the device reports on
/// `<prefix>/<device>/update/state` (and ignores that subtopic of its own
/// `update/#` subscription).
pub mod topics {
    pub fn device_manifest(prefix: &str, device: &str) -> String {
        format!("{prefix}/{device}/update/manifest")
    }
    pub fn device_chunk(prefix: &str, device: &str) -> String {
        format!("{prefix}/{device}/update/chunk")
    }
    pub fn group_manifest(prefix: &str, group: &str) -> String {
        format!("{prefix}/group/{group}/update/manifest")
    }
    pub fn group_chunk(prefix: &str, group: &str) -> String {
        format!("{prefix}/group/{group}/update/chunk")
    }
    pub fn state(prefix: &str, device: &str) -> String {
        format!("{prefix}/{device}/update/state")
    }
    /// What a device subscribes to.
    pub fn subscriptions(prefix: &str, device: &str, group: &str) -> [String; 2] {
        [format!("{prefix}/{device}/update/#"), format!("{prefix}/group/{group}/update/#")]
    }
    /// What `spark-fleet watch` subscribes to.
    pub fn all_states(prefix: &str) -> String {
        format!("{prefix}/+/update/state")
    }
}

/// One piece of an artifact. `sha256_of_chunk` only detects transport
/// corruption (anyone can compute it); the signed artifact SHA-256 checked
/// after reassembly is what makes the artifact trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub update_id: String,
    pub index: u32,
    pub total: u32,
    pub sha256_of_chunk: String,
    /// Base64 of the chunk's bytes.
    pub data: String,
}

impl Chunk {
    pub fn new(update_id: &str, index: u32, total: u32, bytes: &[u8]) -> Self {
        Self { update_id: update_id.into(), index, total, sha256_of_chunk: sha256_hex(bytes), data: B64.encode(bytes) }
    }

    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        B64.decode(self.data.as_bytes())
    }
}

/// Splits `artifact` into chunks of at most `chunk_bytes` (one empty chunk
/// for an empty artifact).
pub fn chunk_artifact(update_id: &str, artifact: &[u8], chunk_bytes: usize) -> Vec<Chunk> {
    let size = chunk_bytes.clamp(1, CHUNK_MAX_BYTES);
    if artifact.is_empty() {
        return vec![Chunk::new(update_id, 0, 1, &[])];
    }
    let total = artifact.len().div_ceil(size) as u32;
    artifact.chunks(size).enumerate().map(|(i, c)| Chunk::new(update_id, i as u32, total, c)).collect()
}

/// Body of `<prefix>/<device>/update/state`, one per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateReport {
    pub device_id: String,
    pub group: String,
    /// Empty when the envelope was too broken to name one.
    pub update_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(flatten)]
    pub phase: Phase,
    /// Chunks held so far while receiving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<(u32, u32)>,
    /// Unix milliseconds.
    pub ts: u64,
}

/// Body of `<prefix>/<device>/update/state` while a shadow model runs,
/// every `update.shadow_report_secs`: a [`StateReport`] in state `shadow`
/// (it parses as one) with the comparison's figures under `shadow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    pub device_id: String,
    pub group: String,
    pub update_id: String,
    pub kind: Kind,
    pub name: String,
    pub version: String,
    /// Always [`Phase::Shadow`].
    #[serde(flatten)]
    pub phase: Phase,
    pub shadow: ShadowFigures,
    /// Unix milliseconds.
    pub ts: u64,
}

/// The comparison of a shadow model with the live one since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowFigures {
    /// `<name> <version>` of the live model it is compared with.
    pub live_model: String,
    /// Frames compared, pooled F1 `agreement`, overall and per-label
    /// precision/recall with their tp/fp/fn counts.
    #[serde(flatten)]
    pub figures: crate::inference::shadow::Figures,
    /// The candidate's inference time (prepare, run, decode) on the CPU.
    pub latency_ms_mean: Option<f64>,
    pub latency_ms_max: Option<f64>,
    /// Frames the candidate failed on, and the last reason.
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Sampled frames skipped because the shadow was still busy.
    pub dropped_busy: u64,
    pub every_n_frames: u64,
    pub running_secs: u64,
}

/// The one-file bundle `spark-fleet sign` writes:
///
/// ```text
/// spark-bundle 1\n
/// <envelope JSON, one line>\n
/// <artifact bytes, exactly manifest.artifact.length of them>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub envelope: Vec<u8>,
    pub artifact: Vec<u8>,
}

const MAGIC: &[u8] = b"spark-bundle 1\n";

impl Bundle {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + self.envelope.len() + 1 + self.artifact.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.envelope);
        out.push(b'\n');
        out.extend_from_slice(&self.artifact);
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(BundleError::NoHeader)?;
        let nl = rest.iter().position(|&b| b == b'\n').ok_or(BundleError::NoEnvelopeLine)?;
        Ok(Self { envelope: rest[..nl].to_vec(), artifact: rest[nl + 1..].to_vec() })
    }

    /// The update id of the bundle's manifest, if the envelope decodes.
    pub fn update_id(&self) -> Option<String> {
        envelope_update_id(&self.envelope)
    }
}

/// A file that is not a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("not a spark bundle (no `spark-bundle 1` header)")]
    NoHeader,
    #[error("bundle has no envelope line")]
    NoEnvelopeLine,
}

/// The update id named by an envelope's manifest bytes, if it decodes.
/// Says nothing about whether the envelope is trusted.
pub fn envelope_update_id(envelope: &[u8]) -> Option<String> {
    let env: super::Envelope = serde_json::from_slice(envelope).ok()?;
    Some(update_id_of(&B64.decode(env.manifest).ok()?))
}
