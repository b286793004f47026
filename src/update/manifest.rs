//! The signed update manifest, its envelope, the trusted keys, and
//! [`verify`]: the pure decision whether a manifest may be applied here.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::clock::TrustedNow;
use super::{Rejection, UpdateError};
use crate::inference::model::sha256_hex;

/// What an update replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Model,
    Config,
    Binary,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Config => "config",
            Kind::Binary => "binary",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not an update kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {0:?} (model, config or binary)")]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        match s {
            "model" => Ok(Kind::Model),
            "config" => Ok(Kind::Config),
            "binary" => Ok(Kind::Binary),
            _ => Err(UnknownKind(s.to_string())),
        }
    }
}

/// `MAJOR.MINOR.PATCH`, compared numerically (`1.10.0` > `1.9.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

/// Text that is not `MAJOR.MINOR.PATCH` (each part 1 to 9 digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {0:?} is not MAJOR.MINOR.PATCH")]
pub struct BadVersion(pub String);

impl FromStr for Version {
    type Err = BadVersion;
    fn from_str(s: &str) -> Result<Self, BadVersion> {
        let bad = || BadVersion(s.to_string());
        let num = |p: &str| -> Result<u64, BadVersion> {
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        match s.split('.').collect::<Vec<_>>().as_slice() {
            [a, b, c] => Ok(Version { major: num(a)?, minor: num(b)?, patch: num(c)? }),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Version {
    type Error = BadVersion;
    fn try_from(s: String) -> Result<Self, BadVersion> {
        s.parse()
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.to_string()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What is wrong with a trusted-keys file (lines count from 1).
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("line {line}: expected `<key_id> <public key>`")]
    Shape { line: usize },
    #[error("line {line}: key id {id:?} must be 1-64 characters of [A-Za-z0-9_.-]")]
    KeyId { line: usize, id: String },
    #[error("line {line}: key is not 32 bytes of hex or base64")]
    KeyBytes { line: usize },
    #[error("line {line}: not an ed25519 public key")]
    NotEd25519 {
        line: usize,
        #[source]
        source: ed25519_dalek::SignatureError,
    },
    #[error("line {line}: key id {id} appears twice")]
    Duplicate { line: usize, id: String },
    #[error("no keys")]
    Empty,
}

/// Who the update is for: listed devices, and/or every device of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSpec {
    /// Plain file name the artifact is stored under (no `/`, no `..`).
    pub file_name: String,
    pub length: u64,
    /// Lower-case hex SHA-256 of the whole artifact.
    pub sha256: String,
}

/// For model updates: the expected top result on a known input shipped with
/// the model. Carried and verified as part of the manifest; running it is
/// the engine's job (not done here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub input: String,
    pub label: String,
    pub min_score: f32,
}

/// The signed statement. Its exact JSON bytes are what is signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateManifest {
    pub kind: Kind,
    pub name: String,
    pub version: Version,
    pub targets: Targets,
    pub artifact: ArtifactSpec,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; judged against trusted time (see [`super::trusted_now`]).
    pub expires_at: u64,
    /// Oldest `sparkd` version that may apply this update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_running_version: Option<Version>,
    /// Model kind: HailoRT version its HEF was compiled for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hailort_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Model kind: evaluate beside the live model, never activate (see
    /// docs/updates.md). Signed like every field, so it cannot be added or
    /// removed in transit; a device that predates it refuses the manifest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// What travels: the manifest's bytes (base64) and signatures over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub manifest: String,
    pub signatures: Vec<SignatureEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    pub key_id: String,
    /// Hex of the 64-byte ed25519 signature.
    pub sig: String,
}

/// Signs `manifest_json` (the exact bytes that will ship) and returns the
/// envelope's JSON bytes.
pub fn sign_envelope(manifest_json: &[u8], signers: &[(&str, &SigningKey)]) -> Vec<u8> {
    let env = Envelope {
        manifest: B64.encode(manifest_json),
        signatures: signers
            .iter()
            .map(|(id, key)| SignatureEntry {
                key_id: id.to_string(),
                sig: hex::encode(key.sign(manifest_json).to_bytes()),
            })
            .collect(),
    };
    serde_json::to_vec(&env).expect("an envelope serializes")
}

/// The id chunks use to name their update: the first 32 hex digits of the
/// SHA-256 of the signed manifest bytes.
pub fn update_id_of(manifest_bytes: &[u8]) -> String {
    sha256_hex(manifest_bytes)[..32].to_string()
}

#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key_id: String,
    pub key: VerifyingKey,
}

/// Public keys whose signatures are accepted; several at once for rotation.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    pub fn new(keys: Vec<TrustedKey>) -> Self {
        Self { keys }
    }

    /// Parses the keys file: one key per line, `<key_id> <public key>`, the
    /// key as 64 hex digits or base64 of 32 bytes; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, KeysFileError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut it = line.split_whitespace();
            let (Some(id), Some(k), None) = (it.next(), it.next(), it.next()) else {
                return Err(KeysFileError::Shape { line: n + 1 });
            };
            if !crate::config::is_topic_segment(id) {
                return Err(KeysFileError::KeyId { line: n + 1, id: id.to_string() });
            }
            let bytes = decode_key(k).ok_or(KeysFileError::KeyBytes { line: n + 1 })?;
            let key =
                VerifyingKey::from_bytes(&bytes).map_err(|source| KeysFileError::NotEd25519 { line: n + 1, source })?;
            if keys.iter().any(|t: &TrustedKey| t.key_id == id) {
                return Err(KeysFileError::Duplicate { line: n + 1, id: id.to_string() });
            }
            keys.push(TrustedKey { key_id: id.to_string(), key });
        }
        if keys.is_empty() {
            return Err(KeysFileError::Empty);
        }
        Ok(Self { keys })
    }

    /// Reads the keys file; a relative path is looked up in
    /// `$CREDENTIALS_DIRECTORY` first (like every credential of sparkd).
    pub fn load(path: &Path) -> Result<Self, UpdateError> {
        let text = crate::sys::credentials::read_secret(path).map_err(UpdateError::ReadKeys)?;
        Self::parse(&text).map_err(|source| UpdateError::Keys { path: path.to_path_buf(), source })
    }

    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|k| k.key_id == key_id).map(|k| &k.key)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.key_id.as_str())
    }
}

/// 32 key bytes from 64 hex digits or base64.
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    let v = if s.len() == 64 { hex::decode(s).ok()? } else { B64.decode(s).ok()? };
    v.try_into().ok()
}

/// The accepted versions of one `kind/name`, persisted by the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledEntry {
    /// The version `current` points at.
    pub active: Option<Version>,
    /// The newest version ever accepted for activation: replay and rollback
    /// protection compare against this, so a rolled-back version cannot be
    /// pushed again (ship a newer one).
    pub highest: Version,
    /// The version `previous` points at (the rollback target).
    #[serde(default)]
    pub previous: Option<Version>,
}

/// `"<kind>/<name>"` → versions.
pub type Installed = BTreeMap<String, InstalledEntry>;

pub(crate) fn installed_key(kind: Kind, name: &str) -> String {
    format!("{kind}/{name}")
}

/// Everything [`verify`] needs to know about this device.
pub struct VerifyContext<'a> {
    pub keys: &'a TrustedKeys,
    pub device_id: &'a str,
    pub group: &'a str,
    pub now: TrustedNow,
    /// This sparkd's version, for `min_running_version`.
    pub running_version: Version,
    pub max_artifact_bytes: u64,
    pub installed: &'a Installed,
    /// This device's HailoRT library version (`4.23.0`), when one loads.
    /// `None`: no accelerator library, a model runs on the CPU.
    pub hailort: Option<&'a str>,
}

/// A manifest that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub update_id: String,
    pub manifest: UpdateManifest,
    /// The signed bytes, exactly as shipped.
    pub manifest_bytes: Vec<u8>,
    pub envelope_bytes: Vec<u8>,
    pub key_id: String,
}

/// Checks a file or directory name from a manifest: plain, no `/`, no `..`,
/// no NUL, 1-128 bytes, not hidden.
pub fn check_plain_name(field: &str, value: &str) -> Result<(), Rejection> {
    let why = if value.is_empty() {
        Some("empty")
    } else if value.len() > 128 {
        Some("longer than 128 bytes")
    } else if value.contains('/') || value.contains('\\') {
        Some("contains a path separator")
    } else if value.contains('\0') {
        Some("contains NUL")
    } else if value == "." || value == ".." || value.contains("..") {
        Some("contains `..`")
    } else if value.starts_with('.') {
        Some("starts with `.`")
    } else if value.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match why {
        Some(why) => Err(Rejection::UnsafeName { field: field.into(), value: value.into(), why: why.into() }),
        None => Ok(()),
    }
}

/// Why signed bytes were not accepted: what [`open_signed`] decides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedError {
    #[error("malformed envelope: {detail}")]
    Malformed { detail: String },
    #[error("the envelope carries no signature")]
    NoSignatures,
    #[error("no signature by a trusted key (envelope key ids: {key_ids:?})")]
    UnknownKey { key_ids: Vec<String> },
    #[error("the signature by trusted key {key_id} does not verify")]
    BadSignature { key_id: String },
}

impl From<SignedError> for Rejection {
    fn from(e: SignedError) -> Self {
        match e {
            SignedError::Malformed { detail } => Rejection::MalformedEnvelope { detail },
            SignedError::NoSignatures => Rejection::MalformedEnvelope { detail: "no signatures".into() },
            SignedError::UnknownKey { key_ids } => Rejection::UnknownKey { key_ids },
            SignedError::BadSignature { key_id } => Rejection::BadSignature { key_id },
        }
    }
}

/// The envelope's signed bytes and the trusted key that signed them, once
/// one signature by a trusted key verifies. Says nothing about what the
/// bytes mean: update manifests ([`open_envelope`]) and diagnose requests
/// (`control::diagnose`) share this one trust root and envelope.
pub fn open_signed(envelope_bytes: &[u8], keys: &TrustedKeys) -> Result<(Vec<u8>, String), SignedError> {
    let malformed = |detail: String| SignedError::Malformed { detail };
    let env: Envelope = serde_json::from_slice(envelope_bytes).map_err(|e| malformed(e.to_string()))?;
    let signed = B64.decode(env.manifest.as_bytes()).map_err(|e| malformed(format!("manifest is not base64: {e}")))?;
    if env.signatures.is_empty() {
        return Err(SignedError::NoSignatures);
    }
    let mut bad = None;
    for s in &env.signatures {
        let Some(key) = keys.get(&s.key_id) else { continue };
        let ok = hex::decode(&s.sig)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| key.verify_strict(&signed, &Signature::from_bytes(&b)).is_ok())
            .unwrap_or(false);
        if ok {
            return Ok((signed, s.key_id.clone()));
        }
        bad.get_or_insert_with(|| s.key_id.clone());
    }
    match bad {
        Some(key_id) => Err(SignedError::BadSignature { key_id }),
        None => Err(SignedError::UnknownKey { key_ids: env.signatures.iter().map(|s| s.key_id.clone()).collect() }),
    }
}

/// Checks the envelope's shape and signature (before the manifest is parsed
/// at all), then the manifest's fields and names. Pure. This is all the
/// fleet side can check; [`verify`] adds this device's policy.
pub fn open_envelope(envelope_bytes: &[u8], keys: &TrustedKeys) -> Result<Verified, Rejection> {
    let (manifest_bytes, key_id) = open_signed(envelope_bytes, keys)?;

    let m: UpdateManifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        // A field this sparkd does not know is told apart by comparing the
        // keys with the structs' own field lists, not by reading the error.
        match serde_json::from_slice::<serde_json::Value>(&manifest_bytes).ok().and_then(|v| unknown_field(&v)) {
            Some(field) => Rejection::UnknownManifestField { detail: format!("unknown field `{field}`: {e}") },
            None => Rejection::MalformedManifest { detail: e.to_string() },
        }
    })?;
    let bad_manifest = |detail: &str| Rejection::MalformedManifest { detail: detail.into() };

    check_plain_name("name", &m.name)?;
    check_plain_name("artifact.file_name", &m.artifact.file_name)?;
    if let Some(c) = &m.canary {
        check_plain_name("canary.input", &c.input)?;
    }
    if m.artifact.sha256.len() != 64 || !m.artifact.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad_manifest("artifact.sha256 is not 64 hex digits"));
    }
    if m.hailort_version.is_some() && m.kind != Kind::Model {
        return Err(bad_manifest("hailort_version is only for model updates"));
    }
    if m.expires_at < m.issued_at {
        return Err(bad_manifest("expires_at is before issued_at"));
    }
    if m.targets.devices.is_empty() && m.targets.group.is_none() {
        return Err(bad_manifest("targets names no device and no group"));
    }
    Ok(Verified {
        update_id: update_id_of(&manifest_bytes),
        manifest: m,
        manifest_bytes,
        envelope_bytes: envelope_bytes.to_vec(),
        key_id,
    })
}

/// The first key of a manifest (or of its `targets`, `artifact`, `canary`
/// objects) that the manifest structs do not have, as `path.key`.
fn unknown_field(v: &serde_json::Value) -> Option<String> {
    let extra = |v: &serde_json::Value, fields: &[&str], at: &str| -> Option<String> {
        let key = v.as_object()?.keys().find(|k| !fields.contains(&k.as_str()))?;
        Some(format!("{at}{key}"))
    };
    extra(v, field_names::<UpdateManifest>(), "")
        .or_else(|| extra(&v["targets"], field_names::<Targets>(), "targets."))
        .or_else(|| extra(&v["artifact"], field_names::<ArtifactSpec>(), "artifact."))
        .or_else(|| extra(&v["canary"], field_names::<Canary>(), "canary."))
}

/// The field names a derived `Deserialize` struct accepts, as it tells its
/// deserializer (`deserialize_struct`).
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Names(&'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field names taken")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Names {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut names = Names(&[]);
    let _ = T::deserialize(&mut names);
    names.0
}

/// Decides whether `envelope_bytes` may be applied on this device. Pure: no
/// clock, no disk. Order: envelope shape, signature, manifest fields and
/// names ([`open_envelope`]), then target, expiry, version, running
/// version, size bound.
pub fn verify(envelope_bytes: &[u8], cx: &VerifyContext<'_>) -> Result<Verified, Rejection> {
    let v = open_envelope(envelope_bytes, cx.keys)?;
    let m = &v.manifest;
    let for_me = m.targets.devices.iter().any(|d| d == cx.device_id) || m.targets.group.as_deref() == Some(cx.group);
    if !for_me {
        return Err(Rejection::NotTargeted {
            device_id: cx.device_id.into(),
            group: cx.group.into(),
            devices: m.targets.devices.clone(),
            target_group: m.targets.group.clone(),
        });
    }

    if m.expires_at < cx.now.secs {
        return Err(Rejection::Expired {
            expires_at: m.expires_at,
            trusted_now: cx.now.secs,
            basis: cx.now.basis.as_str().into(),
        });
    }

    if let Some(e) = cx.installed.get(&installed_key(m.kind, &m.name))
        && m.version <= e.highest
    {
        return Err(Rejection::NotNewer {
            kind: m.kind.to_string(),
            name: m.name.clone(),
            offered: m.version.to_string(),
            installed: e.highest.to_string(),
        });
    }

    if let Some(req) = m.min_running_version
        && cx.running_version < req
    {
        return Err(Rejection::RunningTooOld { required: req.to_string(), running: cx.running_version.to_string() });
    }

    if m.artifact.length > cx.max_artifact_bytes {
        return Err(Rejection::Oversized { length: m.artifact.length, max: cx.max_artifact_bytes });
    }

    // HailoRT refuses a HEF built for another major.minor; refuse it before
    // any byte of it is downloaded.
    if let (Some(want), Some(have)) = (&m.hailort_version, cx.hailort)
        && major_minor(want) != major_minor(have)
    {
        return Err(Rejection::HailortMismatch { required: want.clone(), device: have.into() });
    }

    Ok(v)
}

/// `4.23.0` → `4.23`.
fn major_minor(v: &str) -> &str {
    match v.match_indices('.').nth(1) {
        Some((i, _)) => &v[..i],
        None => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_the_structs_own_and_unknown_keys_are_found_at_any_level() {
        let top = field_names::<UpdateManifest>();
        for f in ["kind", "name", "version", "targets", "artifact", "issued_at", "expires_at", "canary"] {
            assert!(top.contains(&f), "{f} missing from {top:?}");
        }
        assert!(field_names::<ArtifactSpec>().contains(&"sha256"));
        let v = serde_json::json!({"kind": "model", "artifact": {"sha256": "x", "extra": 1}});
        assert_eq!(unknown_field(&v).as_deref(), Some("artifact.extra"));
        assert_eq!(unknown_field(&serde_json::json!({"kind": "model", "evil": 1})).as_deref(), Some("evil"));
        assert_eq!(unknown_field(&serde_json::json!({"kind": "model"})), None);
    }

    #[test]
    fn hailort_versions_compare_by_major_minor() {
        assert_eq!(major_minor("4.23.0"), major_minor("4.23.1"));
        assert_ne!(major_minor("4.23.0"), major_minor("4.20.0"));
        assert_eq!(major_minor("4.23"), "4.23");
    }

    #[test]
    fn versions_compare_numerically() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert!(v("1.10.0") > v("1.9.9"));
        assert!(v("2.0.0") > v("1.99.99"));
        assert!("1.2".parse::<Version>().is_err());
        assert!("1.2.x".parse::<Version>().is_err());
        assert!("1.2.3-rc1".parse::<Version>().is_err());
    }

    #[test]
    fn plain_names_refuse_traversal() {
        for bad in ["", "../x", "a/b", "..", "a\0b", ".hidden", "a..b", &"x".repeat(129)] {
            assert!(check_plain_name("f", bad).is_err(), "{bad:?}");
        }
        assert!(check_plain_name("f", "centerface-1.1.0.onnx").is_ok());
    }
}
