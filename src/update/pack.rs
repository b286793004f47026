//! Model packs: the several files of one model (its `model.toml`, the ONNX
//! file, an optional HEF, the canary input) carried as the single artifact a
//! signed manifest names.
//!
//! Owns the pack format and unpacking it into a folder; knows nothing about
//! engines. The pack is covered as a whole by the manifest's length and
//! SHA-256, so its entries are trusted once the artifact verified; the names
//! are still checked (plain names only) because a signing mistake must not
//! write outside the folder.
//!
//! ```text
//! spark-pack 1\n
//! <name> <length>\n<length bytes>      (repeated; at most MAX_ENTRIES)
//! ```

use std::fs;
use std::io::Write;
use std::path::Path;

use super::manifest::check_plain_name;

const MAGIC: &[u8] = b"spark-pack 1\n";
/// More entries than any model needs; bounds a hostile pack's work.
pub const MAX_ENTRIES: usize = 16;
/// The model manifest every model pack holds.
pub const MODEL_MANIFEST: &str = "model.toml";

/// Why a pack cannot be read or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("not a model pack: {0}")]
    Format(String),
    #[error("writing the unpacked model to {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Builds a pack from `(name, bytes)` entries.
pub fn write_pack(entries: &[(String, Vec<u8>)]) -> Result<Vec<u8>, PackError> {
    if entries.len() > MAX_ENTRIES {
        return Err(PackError::Format(format!("more than {MAX_ENTRIES} files")));
    }
    let mut out = MAGIC.to_vec();
    for (name, bytes) in entries {
        check_plain_name("pack entry", name).map_err(|r| PackError::Format(r.to_string()))?;
        out.extend_from_slice(format!("{name} {}\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// Splits a pack into its entries (borrowed). Refuses duplicate, unsafe or
/// truncated entries.
pub fn parse_pack(bytes: &[u8]) -> Result<Vec<(String, &[u8])>, PackError> {
    let bad = |s: String| PackError::Format(s);
    let mut rest = bytes.strip_prefix(MAGIC).ok_or_else(|| bad("no `spark-pack 1` header".into()))?;
    let mut out: Vec<(String, &[u8])> = Vec::new();
    while !rest.is_empty() {
        if out.len() == MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} files")));
        }
        let nl = rest.iter().take(200).position(|&b| b == b'\n').ok_or_else(|| bad("entry header too long".into()))?;
        let header = std::str::from_utf8(&rest[..nl]).map_err(|_| bad("entry header is not UTF-8".into()))?;
        let (name, len) = header.rsplit_once(' ').ok_or_else(|| bad(format!("entry header {header:?}")))?;
        let len: usize = len.parse().map_err(|_| bad(format!("entry length {len:?}")))?;
        check_plain_name("pack entry", name).map_err(|r| bad(r.to_string()))?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(bad(format!("{name} appears twice")));
        }
        let body = &rest[nl + 1..];
        if body.len() < len {
            return Err(bad(format!("{name} is truncated: {} of {len} bytes", body.len())));
        }
        out.push((name.to_string(), &body[..len]));
        rest = &body[len..];
    }
    if !out.iter().any(|(n, _)| n == MODEL_MANIFEST) {
        return Err(bad(format!("no {MODEL_MANIFEST}")));
    }
    Ok(out)
}

/// Unpacks `pack` into `dest` (which must not exist): written into a
/// temporary sibling, its files and the folder synced, then renamed (and the
/// parent synced), so `dest` is whole or absent, also after a power cut.
pub fn unpack(pack: &[u8], dest: &Path) -> Result<(), PackError> {
    let entries = parse_pack(pack)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    let parent = dest.parent().ok_or_else(|| PackError::Format("no parent folder".into()))?;
    let tmp = parent.join(".unpack.tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    for (name, bytes) in &entries {
        let p = tmp.join(name);
        let mut f = fs::File::create(&p).map_err(io(&p))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io(&p))?;
    }
    // The files' names live in `tmp` itself: without this sync a power cut
    // after the rename leaves `dest` empty (a model `current` names a pack
    // with no model.toml, so the device silently runs the configured model
    // while its store says the new one is active).
    crate::sys::durable::fsync_dir(&tmp).map_err(io(&tmp))?;
    fs::rename(&tmp, dest).map_err(io(dest))?;
    crate::sys::durable::fsync_dir(parent).map_err(io(parent))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_and_refuses_traversal_and_truncation() {
        let p = write_pack(&[("model.toml".into(), b"x".to_vec()), ("m.onnx".into(), vec![1, 2, 3])]).unwrap();
        let e = parse_pack(&p).unwrap();
        assert_eq!(e[1], ("m.onnx".to_string(), &[1u8, 2, 3][..]));
        assert!(parse_pack(&p[..p.len() - 1]).is_err());
        let evil = b"spark-pack 1\n../x 1\nA".to_vec();
        assert!(parse_pack(&evil).is_err());
        assert!(write_pack(&[("../x".into(), vec![])]).is_err());
        let no_manifest = write_pack(&[("m.onnx".into(), vec![])]).unwrap();
        assert!(parse_pack(&no_manifest).is_err());
    }
}
