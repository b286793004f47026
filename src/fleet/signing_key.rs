//! The fleet's private signing key file (`spark-fleet keygen` writes it:
//! `<key_id> <64 hex digits of the seed>`), read for signing updates and
//! diagnose requests. Owns the file's format only; nothing here signs.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use crate::sys::capped_read::read_capped_to_string;
use crate::sys::credentials::MAX_SECRET_BYTES;
use crate::update::decode_key;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading the signing key {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: expected `<key_id> <hex seed>` (spark-fleet keygen)")]
    Malformed { path: PathBuf },
}

/// Reads a private key file: its key id and the key.
pub fn read_signing_key(path: &Path) -> Result<(String, SigningKey), KeyFileError> {
    let text = read_capped_to_string(path, MAX_SECRET_BYTES)
        .map_err(|source| KeyFileError::Read { path: path.to_path_buf(), source })?;
    let mut it = text.split_whitespace();
    let malformed = || KeyFileError::Malformed { path: path.to_path_buf() };
    let (Some(id), Some(k)) = (it.next(), it.next()) else { return Err(malformed()) };
    let seed = decode_key(k).ok_or_else(malformed)?;
    Ok((id.to_string(), SigningKey::from_bytes(&seed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_reads_back_and_junk_or_an_endless_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, format!("ops-1 {}\n", "ab".repeat(32))).unwrap();
        let (id, key) = read_signing_key(&p).unwrap();
        assert_eq!((id.as_str(), key.to_bytes()), ("ops-1", [0xab; 32]));
        std::fs::write(&p, "ops-1 not-hex\n").unwrap();
        assert!(matches!(read_signing_key(&p), Err(KeyFileError::Malformed { .. })));
        let Err(KeyFileError::Read { source, .. }) = read_signing_key(Path::new("/dev/zero")) else { panic!() };
        assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge);
    }
}
