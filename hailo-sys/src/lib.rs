//! Raw bindings to HailoRT 4.x (the Hailo-8 runtime), opened at run time.
//!
//! Owns: the bindgen output ([`HailoRt`], one function pointer per C function
//! spark-edge calls, generated from the installed `hailo/hailort.h` or the
//! bundled `include/hailort_subset.h`), finding and opening `libhailort.so`,
//! and refusing a library whose struct layouts differ from the bindings.
//! Knows nothing about models, tensors or inference: that is the safe wrapper
//! in spark-edge's `engine::hailo`, the only other place with `unsafe`.
//!
//! Nothing links against HailoRT. [`load`] probes for the library, opens it
//! with `dlopen` (through `libloading`), resolves every symbol up front (a
//! missing symbol is a [`LoadError`], never a panic later) and then checks
//! `hailo_get_library_version` against [`SUPPORTED_MINORS`].

use std::ffi::CStr;
use std::fmt;
use std::path::{Path, PathBuf};

#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unused_qualifications,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::pedantic,
    missing_docs
)]
mod bindings {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

pub use bindings::*;
/// Re-exported so tests and benches can open extra symbols of a test double
/// from the same file without depending on `libloading` themselves.
pub use libloading;

/// Environment variable naming the library file; probed right after an
/// explicit path.
pub const ENV_LIBRARY: &str = "HAILORT_LIBRARY";
/// HailoRT's own log destination. Unset, HailoRT writes `hailort.log` into the
/// working directory, which a sandboxed service cannot write.
pub const ENV_LOGGER_PATH: &str = "HAILORT_LOGGER_PATH";
/// Directories searched for versioned file names (`libhailort.so.4.23.0`).
pub const LIBRARY_DIRS: [&str; 3] = ["/usr/lib", "/usr/lib/aarch64-linux-gnu", "/usr/local/lib"];
/// The HailoRT major version the bindings describe.
pub const SUPPORTED_MAJOR: u32 = 4;
/// Minor versions whose struct layouts match the bindings (4.21-4.23 share them;
/// 4.18 and 4.20 differ).
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u32> = 21..=23;
/// Human-readable form of the range above, for messages.
pub const SUPPORTED_RANGE: &str = "4.21-4.23";
/// Where the bindings came from: `system:<header>` or `bundled:<header>`.
pub const BINDINGS_SOURCE: &str = env!("HAILO_SYS_BINDINGS_SOURCE");
/// Where the `hailo_pci` kernel driver publishes its version.
pub const DRIVER_VERSION_FILE: &str = "/sys/module/hailo_pci/version";

/// A HailoRT library version as reported by `hailo_get_library_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LibraryVersion {
    pub major: u32,
    pub minor: u32,
    pub revision: u32,
}

impl LibraryVersion {
    /// True when the library's struct layouts are the ones the bindings use.
    pub fn is_supported(&self) -> bool {
        self.major == SUPPORTED_MAJOR && SUPPORTED_MINORS.contains(&self.minor)
    }
}

impl fmt::Display for LibraryVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)
    }
}

/// One place the loader looked, and why it did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub path: PathBuf,
    pub error: String,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.error)
    }
}

fn join_attempts(tried: &[Attempt]) -> String {
    tried.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "HailoRT library not found; tried: {}. Install HailoRT {SUPPORTED_RANGE} for Hailo-8 (the `hailort` \
         package, the same version as the hailo_pci driver), or name the file with the configured library \
         path or {ENV_LIBRARY}",
        join_attempts(.tried)
    )]
    NotFound { tried: Vec<Attempt> },
    #[error("HailoRT library at {path} did not report its version: hailo_get_library_version returned status {status}")]
    VersionQuery { path: PathBuf, status: u32 },
    #[error(
        "HailoRT library at {path} is version {found}, but these bindings were written for HailoRT \
         {SUPPORTED_RANGE} (struct layouts differ between minor versions); install HailoRT {SUPPORTED_RANGE} \
         or rebuild hailo-sys against the installed header"
    )]
    VersionMismatch { path: PathBuf, found: LibraryVersion },
}

/// Places [`load`] tries, in order: `explicit`, then `$HAILORT_LIBRARY`, then
/// the bare names `libhailort.so` and `libhailort.so.4` (resolved by the
/// dynamic loader's own search), then every `libhailort.so.4.*` file found in
/// [`LIBRARY_DIRS`], newest version first within each directory.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(ENV_LIBRARY).filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    out.push(PathBuf::from("libhailort.so"));
    out.push(PathBuf::from("libhailort.so.4"));
    for dir in LIBRARY_DIRS {
        out.extend(versioned_in(Path::new(dir)));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// `libhailort.so.4.X.Y` files in `dir`, newest first.
fn versioned_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix("libhailort.so.4.")?;
            let mut key = vec![4];
            for part in rest.split('.') {
                key.push(part.parse::<u32>().ok()?);
            }
            Some((key, e.path()))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, p)| p).collect()
}

/// Finds, opens and version-checks HailoRT. Returns the bindings and the path
/// that loaded.
///
/// Sets `HAILORT_LOGGER_PATH=NONE` first when it is unset. Changing the
/// environment is only sound while no other thread reads it, so call `load`
/// the first time from start-up code before other threads run, or set the
/// variable in the environment yourself (sparkd's unit does); once it is set,
/// `load` only reads it.
pub fn load(explicit: Option<&Path>) -> Result<(HailoRt, PathBuf), LoadError> {
    quiet_hailort_logger();
    load_from(&candidates(explicit))
}

/// Like [`load`] but over a caller-given candidate list; does not touch the
/// environment.
pub fn load_from(candidates: &[PathBuf]) -> Result<(HailoRt, PathBuf), LoadError> {
    let mut tried = Vec::new();
    for path in candidates {
        // SAFETY: opening a shared library runs its ELF constructors and
        // trusts that its symbols have the types the bindings declare. Only
        // files named as HailoRT (or its test double, which implements the same
        // C ABI) are opened here; their constructors have no preconditions,
        // and the layouts are checked by version right below before any other
        // call is made.
        match unsafe { HailoRt::new(path) } {
            Ok(lib) => {
                let found =
                    library_version(&lib).map_err(|status| LoadError::VersionQuery { path: path.clone(), status })?;
                if !found.is_supported() {
                    return Err(LoadError::VersionMismatch { path: path.clone(), found });
                }
                return Ok((lib, path.clone()));
            }
            Err(e) => tried.push(Attempt { path: path.clone(), error: e.to_string() }),
        }
    }
    Err(LoadError::NotFound { tried })
}

/// Points HailoRT's log at nothing unless the environment already says where.
fn quiet_hailort_logger() {
    if std::env::var_os(ENV_LOGGER_PATH).is_none() {
        // SAFETY: `set_var` races with concurrent environment reads from other
        // threads (C code calling getenv in particular). It runs only while the
        // variable is unset, i.e. on the first `load` of a process that did not
        // set it, and `load` documents that this first call must happen before
        // other threads start. Every later call only reads.
        unsafe { std::env::set_var(ENV_LOGGER_PATH, "NONE") };
    }
}

/// The version the opened library reports, or the failing status.
pub fn library_version(lib: &HailoRt) -> Result<LibraryVersion, u32> {
    let mut v = hailo_version_t::default();
    // SAFETY: `v` is a valid, writable `hailo_version_t` (three u32s in every
    // HailoRT 4.x release) that outlives the call.
    let status = unsafe { lib.hailo_get_library_version(&mut v) };
    if status == 0 { Ok(LibraryVersion { major: v.major, minor: v.minor, revision: v.revision }) } else { Err(status) }
}

/// HailoRT's text for a status code, when it has one.
pub fn status_message(lib: &HailoRt, status: u32) -> Option<String> {
    // SAFETY: the function takes the status by value and returns either NULL
    // or a pointer to a static NUL-terminated string owned by the library.
    let p = unsafe { lib.hailo_get_status_message(status as _) };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated and static (see above); copied at once.
    let s = unsafe { CStr::from_ptr(p) };
    Some(s.to_string_lossy().into_owned())
}

/// The `hailo_pci` driver version from sysfs, when the driver is loaded.
pub fn driver_version() -> Option<String> {
    let s = std::fs::read_to_string(DRIVER_VERSION_FILE).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_range_is_4_21_to_4_23() {
        let v = |minor| LibraryVersion { major: 4, minor, revision: 0 };
        assert!(!v(18).is_supported());
        assert!(!v(20).is_supported());
        assert!(v(21).is_supported());
        assert!(v(23).is_supported());
        assert!(!v(24).is_supported());
        assert!(!LibraryVersion { major: 5, minor: 22, revision: 0 }.is_supported());
    }

    #[test]
    fn explicit_path_comes_first_then_bare_names() {
        let c = candidates(Some(Path::new("/opt/x/libhailort.so.4.23.0")));
        assert_eq!(c[0], PathBuf::from("/opt/x/libhailort.so.4.23.0"));
        let bare = c.iter().position(|p| p == Path::new("libhailort.so"));
        let major = c.iter().position(|p| p == Path::new("libhailort.so.4"));
        assert!(matches!((bare, major), (Some(a), Some(b)) if a < b));
    }

    #[test]
    fn versioned_names_sort_newest_first() {
        let dir = std::env::temp_dir().join(format!("hailo-sys-versioned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for n in ["libhailort.so.4.9.0", "libhailort.so.4.23.0", "libhailort.so.4.21.1", "libhailort.so.4.x", "other"] {
            std::fs::write(dir.join(n), b"").expect("write");
        }
        let names: Vec<String> = versioned_in(&dir)
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(names, ["libhailort.so.4.23.0", "libhailort.so.4.21.1", "libhailort.so.4.9.0"]);
    }

    #[test]
    fn missing_library_lists_every_path_tried() {
        let c = [PathBuf::from("/nonexistent/a/libhailort.so.4.23.0"), PathBuf::from("/nonexistent/b/libhailort.so")];
        let Err(e) = load_from(&c) else { panic!("loaded a library from a nonexistent path") };
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/a/libhailort.so.4.23.0"), "{msg}");
        assert!(msg.contains("/nonexistent/b/libhailort.so"), "{msg}");
        assert!(matches!(e, LoadError::NotFound { ref tried } if tried.len() == 2));
    }
}
