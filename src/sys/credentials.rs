//! Secrets and credential files named in the config (MQTT password, TLS
//! client key, update trust keys): where they are looked up and how they are
//! read. Owns the lookup rule only; what a secret means is its user's.
//!
//! Relative names are looked up in `$CREDENTIALS_DIRECTORY` (systemd
//! `LoadCredential=`) first, then as given.

use std::path::{Path, PathBuf};

/// A credential file that could not be read; names the file actually tried.
#[derive(Debug, thiserror::Error)]
#[error("reading the credential file {path}")]
pub struct CredentialError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Where a credential named `path` in the config is read from.
pub fn credential_path(path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() && Path::new(&dir).join(path).exists() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    }
}

/// Largest credential file read (a password, a list of trusted keys).
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Reads a one-line secret (trailing newline removed).
pub fn read_secret(path: &Path) -> Result<String, CredentialError> {
    let candidate = credential_path(path);
    super::capped_read::read_capped_to_string(&candidate, MAX_SECRET_BYTES)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|source| CredentialError { path: candidate, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let e = read_secret(Path::new("/nonexistent/keys.txt")).unwrap_err();
        assert_eq!(e.path, Path::new("/nonexistent/keys.txt"));
        assert!(e.to_string().contains("/nonexistent/keys.txt"), "{e}");
    }

    #[test]
    fn a_secret_path_naming_an_endless_file_is_an_error_not_unbounded_memory() {
        let e = read_secret(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.path, Path::new("/dev/zero"));
        assert_eq!(e.source.kind(), std::io::ErrorKind::FileTooLarge);
    }
}
