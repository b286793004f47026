//! Model manifests: which files make a model, what input it takes and how its
//! output is decoded. Owns loading and checking a manifest and its files'
//! checksums; runs nothing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub task: String,
    pub labels: Vec<String>,
    pub onnx: Artifact,
    /// The same network compiled for the Hailo-8, when there is one.
    #[serde(default)]
    pub hef: Option<HefArtifact>,
    pub input: InputSpec,
    pub output: OutputSpec,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Relative to the manifest's directory.
    pub file: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HefArtifact {
    pub file: PathBuf,
    pub sha256: String,
    /// HailoRT version the HEF was compiled for (`4.23.0`); a device whose
    /// library's major.minor differs refuses it.
    #[serde(default)]
    pub hailort_version: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Keep the aspect ratio, pad right and bottom.
    Letterbox,
    /// Scale each axis independently.
    Stretch,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub color: ColorOrder,
    pub layout: Layout,
    pub resize: Resize,
    #[serde(default)]
    pub pad_value: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// CenterFace heatmap/scale/offset/landmark heads.
    Centerface,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub decoder: Decoder,
    pub score_threshold: f32,
    pub nms_iou: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("reading model manifest {path}")]
    ReadManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model manifest {path} is invalid: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("model file {path} is missing{hint}")]
    MissingFile { path: PathBuf, hint: String },
    #[error("reading model file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path} is corrupt: SHA-256 is {actual}, the manifest says {expected}")]
    Checksum { path: PathBuf, expected: String, actual: String },
}

/// A manifest with its file paths resolved against its directory.
#[derive(Debug, Clone)]
pub struct Model {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

impl Model {
    pub fn load(manifest_path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(manifest_path)
            .map_err(|source| ModelError::ReadManifest { path: manifest_path.to_path_buf(), source })?;
        let bad = |message: String| ModelError::BadManifest { path: manifest_path.to_path_buf(), message };
        let manifest: Manifest = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].lines().count().max(1)).unwrap_or(0);
            bad(format!("line {line}: {}", e.message()))
        })?;
        let m = &manifest;
        if m.labels.is_empty() {
            return Err(bad("`labels` is empty".into()));
        }
        if m.input.width == 0 || m.input.height == 0 || m.input.width > 8192 || m.input.height > 8192 {
            return Err(bad(format!("input size {}x{} out of range", m.input.width, m.input.height)));
        }
        if m.input.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(bad("input.std must be non-zero".into()));
        }
        if !(0.0..=1.0).contains(&m.output.score_threshold) || !(0.0..=1.0).contains(&m.output.nms_iou) {
            return Err(bad("output thresholds must be in [0, 1]".into()));
        }
        for (what, sha) in
            std::iter::once(("onnx.sha256", &m.onnx.sha256)).chain(m.hef.as_ref().map(|h| ("hef.sha256", &h.sha256)))
        {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("`{what}` is not a SHA-256 hex digest")));
            }
        }
        for f in std::iter::once(&m.onnx.file).chain(m.hef.as_ref().map(|h| &h.file)) {
            if f.is_absolute() || f.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(bad(format!("file {} must be a plain name inside the manifest's folder", f.display())));
            }
        }
        let dir = manifest_path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Self { manifest, dir })
    }

    pub fn onnx_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.onnx.file)
    }

    pub fn hef_path(&self) -> Option<PathBuf> {
        self.manifest.hef.as_ref().map(|h| self.dir.join(&h.file))
    }

    /// Reads the ONNX file and checks it against the manifest's checksum.
    pub fn read_onnx(&self) -> Result<Vec<u8>, ModelError> {
        read_verified(&self.onnx_path(), &self.manifest.onnx.sha256, " (run scripts/setup.sh to fetch the demo model)")
    }

    /// Reads the HEF file, if the manifest names one, and checks it.
    pub fn read_hef(&self) -> Option<Result<Vec<u8>, ModelError>> {
        let hef = self.manifest.hef.as_ref()?;
        Some(read_verified(&self.dir.join(&hef.file), &hef.sha256, ""))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read_verified(path: &Path, expected: &str, hint: &str) -> Result<Vec<u8>, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile { path: path.to_path_buf(), hint: hint.to_string() }
        } else {
            ModelError::ReadFile { path: path.to_path_buf(), source }
        }
    })?;
    let actual = sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ModelError::Checksum { path: path.to_path_buf(), expected: expected.to_string(), actual });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
name = "m"
version = "1"
task = "face-detection"
labels = ["face"]
[onnx]
file = "m.onnx"
sha256 = "SHA"
[input]
name = "x"
width = 64
height = 32
color = "rgb"
layout = "nchw"
resize = "letterbox"
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]
[output]
decoder = "centerface"
score_threshold = 0.5
nms_iou = 0.3
"#;

    fn write(dir: &Path, onnx: &[u8], sha: &str) -> PathBuf {
        std::fs::write(dir.join("m.onnx"), onnx).unwrap();
        let p = dir.join("m.toml");
        std::fs::write(&p, MANIFEST.replace("SHA", sha)).unwrap();
        p
    }

    #[test]
    fn verified_model_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), b"model", &sha256_hex(b"model"));
        assert_eq!(Model::load(&p).unwrap().read_onnx().unwrap(), b"model");
    }

    #[test]
    fn corrupt_model_names_the_file_and_both_digests() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), b"tampered", &sha256_hex(b"model"));
        let e = Model::load(&p).unwrap().read_onnx().unwrap_err().to_string();
        assert!(e.contains("m.onnx") && e.contains("corrupt") && e.contains(&sha256_hex(b"model")), "{e}");
    }

    #[test]
    fn missing_model_file_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), b"x", &sha256_hex(b"x"));
        std::fs::remove_file(d.path().join("m.onnx")).unwrap();
        let e = Model::load(&p).unwrap().read_onnx().unwrap_err();
        assert!(matches!(e, ModelError::MissingFile { .. }));
    }

    #[test]
    fn traversal_in_file_name_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.toml");
        std::fs::write(&p, MANIFEST.replace("m.onnx", "../etc/passwd").replace("SHA", &"a".repeat(64))).unwrap();
        assert!(matches!(Model::load(&p), Err(ModelError::BadManifest { .. })));
    }
}
