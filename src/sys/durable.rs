//! Making directory changes survive a power cut. A file's own fsync does not
//! make its name durable: the directory that holds it must be synced too
//! (POSIX; ext4's journal often hides the difference, crashfs does not).
//! The one place the project syncs directories.

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
}
