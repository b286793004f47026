//! Crash-safe file operations for the update store: atomic writes, atomic
//! symlink swaps, free-space checks, and the test-only crash hook (debug
//! builds only).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// **Test-only, debug builds only.** When this environment variable names a
/// crash point (`received`, `verified`, `staged`, `activating`,
/// `previous-linked`, `swapped`, `installed`, `active`, `rolled-back`,
/// `chunk`, `binary-swapped`), the process prints
/// `SPARK_UPDATE_CRASH_POINT <name>` on stdout right after that step is
/// durable and then blocks forever, so a test can SIGKILL it exactly there.
/// Release builds (what ships) compile the hook out: there the variable does
/// nothing. The tests that use it run debug builds (`cargo test`).
pub const CRASH_ENV: &str = "SPARK_UPDATE_TEST_CRASH_AT";

#[cfg(debug_assertions)]
pub(crate) fn crash_point(name: &str) {
    if let Some(v) = std::env::var_os(CRASH_ENV)
        && v == name
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "SPARK_UPDATE_CRASH_POINT {name}");
        let _ = out.flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Release builds: no hook, so a device cannot be made to hang mid-update.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub(crate) fn crash_point(_name: &str) {}

pub(crate) use crate::sys::durable::fsync_dir;

fn tmp_sibling(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `bytes` to `path` so that after a crash `path` holds either the
/// old or the new content: temp file, fsync, rename, fsync of the folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_sibling(path);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Like [`write_atomic`] but without the folder's sync: after a power cut
/// `path` is whole or absent (its data is synced before the rename), but it
/// may be absent even though this returned. For files whose loss costs only
/// a re-send: update chunks (held chunks are counted from the folder, and a
/// push again sends what is missing). Saves a directory sync per chunk.
pub(crate) fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_sibling(path);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// Points the symlink `link` at `target` atomically (a new link renamed over
/// the old one): readers see the old target or the new one, never neither.
pub(crate) fn swap_symlink(link: &Path, target: &Path) -> io::Result<()> {
    let tmp = tmp_sibling(link);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, link)?;
    fsync_dir(link.parent().unwrap_or(Path::new(".")))
}

/// Bytes an unprivileged writer can still use on the filesystem of `dir`.
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Removes `path` (file or folder) if it exists.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
