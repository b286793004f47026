//! Making directory changes survive a power cut. A file's own fsync does not
//! make its name durable: the directory that holds it must be synced too
//! (POSIX; ext4's journal often hides the difference, crashfs does not).
//! The one place the project syncs directories (outside the update store's
//! own `update::fsio`, which the control socket may not import).

use std::fs::File;
use std::io;
use std::path::Path;

/// Syncs the directory `dir` itself (its entries: creates, renames, unlinks).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, then syncs every directory it created and the parent
/// of the topmost one, so the whole path survives a power cut.
pub fn create_dir_all_synced(dir: &Path) -> io::Result<()> {
    // The ancestors that do not exist yet, deepest first.
    let missing: Vec<&Path> = dir.ancestors().take_while(|p| !p.as_os_str().is_empty() && !p.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for p in missing.iter().rev() {
        fsync_dir(p.parent().filter(|q| !q.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    }
    if let Some(deepest) = missing.first() {
        fsync_dir(deepest)?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that a reader sees the old file or the
/// new one, never a part: written to a hidden sibling (`.<name>.tmp`, which
/// globs such as node_exporter's `*.prom` skip), fsynced, renamed over
/// `path`, and the directory synced. The file is world-readable (0644).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync_dir(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_level_and_accepts_an_existing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dir_all_synced(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_synced(&deep).unwrap();
        assert!(fsync_dir(Path::new("/nonexistent-dir")).is_err());
    }

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temp_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("spark.prom");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("spark.prom")]);
        assert!(write_atomic(&tmp.path().join("missing/x.prom"), b"x").is_err());
    }
}
