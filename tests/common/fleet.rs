//! `spark-fleet` for the update tests: running it, and a signing key pair
//! with a folder to build bundles in. Each test file adds its own `impl Lab`
//! methods for the bundles it needs.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn fleet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spark-fleet"))
}

/// Runs `spark-fleet ARGS`, asserts success, returns stdout.
pub fn fleet(args: &[&str]) -> String {
    let out = Command::new(fleet_bin()).args(args).output().expect("run spark-fleet");
    assert!(
        out.status.success(),
        "spark-fleet {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A path as the `&str` a command line takes.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A signing key pair and a place to build bundles.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub public: PathBuf,
}

impl Lab {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fleet(&["keygen", "--out", s(&dir.path().join("keys")), "--key-id", "fleet-test"]);
        let key = dir.path().join("keys/fleet-test.key");
        let public = dir.path().join("keys/fleet-test.pub");
        Lab { dir, key, public }
    }
}
