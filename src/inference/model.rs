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
    /// Class names in class-index order: inline here, or read from
    /// `labels_file` at load (exactly one of the two). After
    /// [`Model::load`] this always holds the labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// A text file beside the manifest, one label per line.
    #[serde(default)]
    pub labels_file: Option<PathBuf>,
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

impl InputSpec {
    /// The input of a Hailo Model Zoo detection network as a manifest
    /// describes it: raw RGB bytes letterboxed with grey (114), the
    /// normalisation left to the chip (mean 0, std 1).
    pub fn model_zoo(name: &str, width: u32, height: u32) -> Self {
        Self {
            name: name.into(),
            width,
            height,
            color: ColorOrder::Rgb,
            layout: Layout::Nchw,
            resize: Resize::Letterbox,
            pad_value: 114.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }
}

/// The output family of the network: which decoder in [`crate::inference::detect`]
/// reads its tensors.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Decoder {
    /// CenterFace heatmap/scale/offset/landmark heads.
    Centerface,
    /// NanoDet GFL heads: per-stride class scores and box distributions.
    Nanodet,
    /// Raw YOLO heads (anchor-free v8/v11 or anchor-based v5/v7, see [`YoloHead`]).
    Yolo,
    /// One score per class, top-k.
    Classify,
    /// HailoRT on-chip NMS, `HAILO_NMS_BY_CLASS` with float32 user format.
    HailoNms,
}

impl Decoder {
    pub const ALL: [Decoder; 5] =
        [Decoder::Centerface, Decoder::Nanodet, Decoder::Yolo, Decoder::Classify, Decoder::HailoNms];

    pub fn as_str(self) -> &'static str {
        match self {
            Decoder::Centerface => "centerface",
            Decoder::Nanodet => "nanodet",
            Decoder::Yolo => "yolo",
            Decoder::Classify => "classify",
            Decoder::HailoNms => "hailo-nms",
        }
    }
}

impl std::fmt::Display for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// By hand, so an unknown decoder names the field and every known value.
impl<'de> Deserialize<'de> for Decoder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        Decoder::ALL.into_iter().find(|k| k.as_str() == v).ok_or_else(|| {
            let known: Vec<&str> = Decoder::ALL.iter().map(|k| k.as_str()).collect();
            serde::de::Error::custom(format!(
                "`output.decoder` = {v:?} is not a known decoder (one of: {})",
                known.join(", ")
            ))
        })
    }
}

/// YOLO head layouts (`[output] head`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum YoloHead {
    /// v8/v11: `[1, 4+nc, N]` (or transposed `[1, N, 4+nc]`), cx, cy, w, h, class scores.
    AnchorFree,
    /// v5/v7: `[1, N, 5+nc]`, cx, cy, w, h, objectness, class scores.
    AnchorBased,
}

/// What a classifier's output holds (`[output] scores`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ClassScores {
    /// Raw logits: softmax is applied.
    Logits,
    /// Already probabilities: used as they are.
    Probabilities,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub decoder: Decoder,
    pub score_threshold: f32,
    /// Class-wise NMS IoU limit (detectors; unused by `classify`).
    #[serde(default = "default_nms_iou")]
    pub nms_iou: f32,
    /// `nanodet`: the heads' strides, e.g. `[8, 16, 32]`.
    #[serde(default)]
    pub strides: Vec<u32>,
    /// `nanodet`: the top bin of each side's distribution (bins 0..=reg_max).
    #[serde(default)]
    pub reg_max: Option<u32>,
    /// `yolo`: the head layout.
    #[serde(default)]
    pub head: Option<YoloHead>,
    /// `classify`: logits or probabilities.
    #[serde(default)]
    pub scores: Option<ClassScores>,
    /// `classify`: how many classes to report (at most).
    #[serde(default)]
    pub top_k: Option<usize>,
}

fn default_nms_iou() -> f32 {
    0.5
}

impl OutputSpec {
    /// A spec for `decoder` with no family-specific keys (tests, benches).
    pub fn new(decoder: Decoder, score_threshold: f32, nms_iou: f32) -> Self {
        Self {
            decoder,
            score_threshold,
            nms_iou,
            strides: vec![],
            reg_max: None,
            head: None,
            scores: None,
            top_k: None,
        }
    }
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
    #[error("model manifest {path} is invalid")]
    Family {
        path: PathBuf,
        #[source]
        source: FamilyError,
    },
    #[error("reading the labels file {path} named by `labels_file`")]
    ReadLabels {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
        let text = crate::sys::capped_read::read_capped_to_string(manifest_path, MAX_MANIFEST_BYTES)
            .map_err(|source| ModelError::ReadManifest { path: manifest_path.to_path_buf(), source })?;
        let bad = |message: String| ModelError::BadManifest { path: manifest_path.to_path_buf(), message };
        let manifest: Manifest = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].lines().count().max(1)).unwrap_or(0);
            bad(format!("line {line}: {}", e.message()))
        })?;
        let mut manifest = manifest;
        let dir = manifest_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let plain =
            |f: &Path| !(f.is_absolute() || f.components().any(|c| matches!(c, std::path::Component::ParentDir)));
        match (&manifest.labels_file, manifest.labels.is_empty()) {
            (Some(_), false) => return Err(bad("give `labels` or `labels_file`, not both".into())),
            (None, true) => return Err(bad("`labels` is empty and there is no `labels_file`".into())),
            (Some(f), true) => {
                if !plain(f) {
                    return Err(bad(format!(
                        "`labels_file` {} must be a plain name inside the manifest's folder",
                        f.display()
                    )));
                }
                let path = dir.join(f);
                let text = crate::sys::capped_read::read_capped_to_string(&path, MAX_MANIFEST_BYTES)
                    .map_err(|source| ModelError::ReadLabels { path: path.clone(), source })?;
                manifest.labels = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
                if manifest.labels.is_empty() {
                    return Err(bad(format!("`labels_file` {} has no labels", path.display())));
                }
            }
            (None, false) => {}
        }
        let m = &manifest;
        if m.labels.len() > MAX_LABELS {
            return Err(bad(format!("{} labels; at most {MAX_LABELS}", m.labels.len())));
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
        check_family(&m.output).map_err(|source| ModelError::Family { path: manifest_path.to_path_buf(), source })?;
        for (what, sha) in
            std::iter::once(("onnx.sha256", &m.onnx.sha256)).chain(m.hef.as_ref().map(|h| ("hef.sha256", &h.sha256)))
        {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("`{what}` is not a SHA-256 hex digest")));
            }
        }
        for f in std::iter::once(&m.onnx.file).chain(m.hef.as_ref().map(|h| &h.file)) {
            if !plain(f) {
                return Err(bad(format!("file {} must be a plain name inside the manifest's folder", f.display())));
            }
        }
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

/// More classes than any real label set (ImageNet-21k has 21,841); bounds a
/// hostile labels file.
pub const MAX_LABELS: usize = 32_768;

/// Largest manifest or labels file read (room for [`MAX_LABELS`] long labels).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A family-specific `[output]` key that is missing, out of range, or
/// belongs to another decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FamilyError {
    #[error("`output.{key}` is for the {used_by} decoder, not {decoder}")]
    StrayKey { key: &'static str, used_by: &'static str, decoder: Decoder },
    #[error("`output.strides` = {0:?}: the nanodet decoder needs 1 to 8 strides in 1..=1024")]
    Strides(Vec<u32>),
    #[error("`output.reg_max` = {0:?}: the nanodet decoder needs it, in 1..=64")]
    RegMax(Option<u32>),
    #[error("`output.head` is missing: the yolo decoder needs \"anchor-free\" or \"anchor-based\"")]
    MissingHead,
    #[error("`output.scores` is missing: the classify decoder needs \"logits\" or \"probabilities\"")]
    MissingScores,
    #[error("`output.top_k` must be at least 1")]
    TopKZero,
}

/// The family-specific `[output]` keys: each decoder's required keys are
/// there, and no key of another family is.
fn check_family(o: &OutputSpec) -> Result<(), FamilyError> {
    let decoder = o.decoder;
    let stray = |key, used_by| Err(FamilyError::StrayKey { key, used_by, decoder });
    if decoder != Decoder::Nanodet {
        if !o.strides.is_empty() {
            return stray("strides", "nanodet");
        }
        if o.reg_max.is_some() {
            return stray("reg_max", "nanodet");
        }
    }
    if decoder != Decoder::Yolo && o.head.is_some() {
        return stray("head", "yolo");
    }
    if decoder != Decoder::Classify {
        if o.scores.is_some() {
            return stray("scores", "classify");
        }
        if o.top_k.is_some() {
            return stray("top_k", "classify");
        }
    }
    match decoder {
        Decoder::Nanodet => {
            if o.strides.is_empty() || o.strides.len() > 8 || o.strides.iter().any(|s| !(1..=1024).contains(s)) {
                return Err(FamilyError::Strides(o.strides.clone()));
            }
            match o.reg_max {
                Some(r) if (1..=64).contains(&r) => {}
                other => return Err(FamilyError::RegMax(other)),
            }
        }
        Decoder::Yolo if o.head.is_none() => return Err(FamilyError::MissingHead),
        Decoder::Classify => {
            if o.scores.is_none() {
                return Err(FamilyError::MissingScores);
            }
            if o.top_k == Some(0) {
                return Err(FamilyError::TopKZero);
            }
        }
        _ => {}
    }
    Ok(())
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

    #[test]
    fn a_manifest_path_naming_an_endless_file_is_a_read_error() {
        let err = Model::load(Path::new("/dev/zero")).unwrap_err();
        let ModelError::ReadManifest { source, .. } = &err else { panic!("{err:?}") };
        assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge);
    }

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

    fn bad_message(p: &Path) -> String {
        match Model::load(p) {
            Err(ModelError::BadManifest { path, message }) => format!("{}: {message}", path.display()),
            other => panic!("expected a bad manifest, got {other:?}"),
        }
    }

    #[test]
    fn unknown_decoder_names_the_file_the_field_and_the_value() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.toml");
        std::fs::write(&p, MANIFEST.replace("\"centerface\"", "\"yolo9000\"").replace("SHA", &"a".repeat(64))).unwrap();
        let e = bad_message(&p);
        assert!(e.contains("m.toml") && e.contains("output.decoder") && e.contains("yolo9000"), "{e}");
        assert!(e.contains("nanodet") && e.contains("hailo-nms"), "lists the known decoders: {e}");
    }

    #[test]
    fn labels_come_from_a_file_beside_the_manifest() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.toml");
        let text =
            MANIFEST.replace("labels = [\"face\"]", "labels_file = \"names.txt\"").replace("SHA", &"a".repeat(64));
        std::fs::write(&p, &text).unwrap();
        std::fs::write(d.path().join("names.txt"), "person\nbicycle\n\ncar\n").unwrap();
        assert_eq!(Model::load(&p).unwrap().manifest.labels, ["person", "bicycle", "car"]);
        std::fs::remove_file(d.path().join("names.txt")).unwrap();
        assert!(matches!(Model::load(&p), Err(ModelError::ReadLabels { .. })));
        // Both, or neither, or a path out of the folder: refused.
        std::fs::write(&p, text.replace("labels_file", "labels = [\"x\"]\nlabels_file")).unwrap();
        assert!(bad_message(&p).contains("not both"));
        std::fs::write(&p, text.replace("labels_file = \"names.txt\"", "")).unwrap();
        assert!(bad_message(&p).contains("labels"));
        std::fs::write(&p, text.replace("names.txt", "../names.txt")).unwrap();
        assert!(bad_message(&p).contains("labels_file"));
    }

    #[test]
    fn family_keys_are_checked_against_the_decoder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.toml");
        let base = MANIFEST.replace("SHA", &"a".repeat(64));
        let with = |decoder: &str, extra: &str| {
            std::fs::write(&p, base.replace("decoder = \"centerface\"", &format!("decoder = \"{decoder}\"\n{extra}")))
                .unwrap();
        };
        with("nanodet", "strides = [8, 16, 32]\nreg_max = 7");
        let m = Model::load(&p).unwrap().manifest.output;
        assert_eq!((m.decoder, m.strides, m.reg_max), (Decoder::Nanodet, vec![8, 16, 32], Some(7)));
        let family = |p: &Path| match Model::load(p) {
            Err(ModelError::Family { source, .. }) => source,
            other => panic!("expected a family error, got {other:?}"),
        };
        with("nanodet", "strides = [8]");
        assert_eq!(family(&p), FamilyError::RegMax(None));
        with("nanodet", "strides = [8, 0]\nreg_max = 7");
        assert_eq!(family(&p), FamilyError::Strides(vec![8, 0]));
        with("centerface", "reg_max = 7");
        let e = family(&p);
        assert_eq!(e, FamilyError::StrayKey { key: "reg_max", used_by: "nanodet", decoder: Decoder::Centerface });
        assert!(e.to_string().contains("output.reg_max"), "{e}");
        with("yolo", "");
        assert_eq!(family(&p), FamilyError::MissingHead);
        with("classify", "");
        assert_eq!(family(&p), FamilyError::MissingScores);
        with("classify", "scores = \"logits\"\ntop_k = 0");
        assert_eq!(family(&p), FamilyError::TopKZero);
        with("yolo", "head = \"anchor-free\"");
        assert_eq!(Model::load(&p).unwrap().manifest.output.head, Some(YoloHead::AnchorFree));
        with("classify", "scores = \"logits\"\ntop_k = 3");
        assert_eq!(Model::load(&p).unwrap().manifest.output.top_k, Some(3));
        with("hailo-nms", "");
        assert_eq!(Model::load(&p).unwrap().manifest.output.decoder, Decoder::HailoNms);
    }

    #[test]
    fn shipped_manifests_load() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let n = Model::load(&models.join("nanodet.toml")).unwrap();
        assert_eq!((n.manifest.labels.len(), n.manifest.labels[0].as_str()), (80, "person"));
        assert_eq!(n.manifest.output.decoder, Decoder::Nanodet);
        let c = Model::load(&models.join("centerface.toml")).unwrap();
        assert_eq!(c.manifest.labels, ["face"]);
    }
}
