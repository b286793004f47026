//! Builds the HailoRT test double (`hailort_double.c`) into a shared library
//! named like the real one (`libhailort.so.4.23.0`) and opens its extra,
//! non-HailoRT symbols. Shared by tests/hailo_ffi.rs and benches/hailo_ffi.rs
//! through `#[path]`; needs only the system C compiler (`cc`).

#![allow(dead_code, unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// File name of the built double: the soname HailoRT 4.23.0 installs.
pub const FILE_NAME: &str = "libhailort.so.4.23.0";
/// Set by a parent test for its child processes so they reuse its build.
pub const ENV_PATH: &str = "HAILO_FFI_DOUBLE";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The input of a Hailo Model Zoo detection HEF as a manifest describes it:
/// raw RGB bytes letterboxed with grey (114), the normalisation on the chip.
pub fn zoo_input(name: &str, width: u32, height: u32) -> spark_edge::inference::model::InputSpec {
    spark_edge::inference::model::InputSpec::model_zoo(name, width, height)
}

/// Path of the built double: `$HAILO_FFI_DOUBLE` when a parent already built
/// it, otherwise compiled once per process into the target's test temp dir.
pub fn library() -> PathBuf {
    if let Some(p) = std::env::var_os(ENV_PATH).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

fn build() -> PathBuf {
    let src = manifest_dir().join("tests/hailo-double/hailort_double.c");
    let include = manifest_dir().join("hailo-sys/include");
    // One directory per process: parallel test binaries never race on a file.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hailo-double-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let out = dir.join(FILE_NAME);
    let result = Command::new("cc")
        .args(["-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-fvisibility=hidden"])
        .arg(format!("-I{}", include.display()))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .arg(format!("-Wl,-soname,{FILE_NAME}"))
        .output()
        .unwrap_or_else(|e| panic!("running cc to build the HailoRT double (is a C compiler installed?): {e}"));
    assert!(
        result.status.success(),
        "cc failed building {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// The double's extra symbols, opened from the same file (the dynamic loader
/// hands back the instance hailo_sys::load opened, so counters are shared).
pub struct Extras {
    lib: hailo_sys::libloading::Library,
}

impl Extras {
    pub fn open(path: &Path) -> Self {
        // SAFETY: the file is the test double built above; its constructors
        // have no preconditions.
        let lib = unsafe { hailo_sys::libloading::Library::new(path) }
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        Self { lib }
    }

    /// HEFs, vdevices, network groups and vstreams the double has allocated
    /// and not yet freed.
    pub fn live_handles(&self) -> std::ffi::c_long {
        // SAFETY: the double exports `long hailo_double_live_handles(void)`.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn() -> std::ffi::c_long>(b"hailo_double_live_handles\0")
                .unwrap_or_else(|e| panic!("hailo_double_live_handles: {e}"));
            f()
        }
    }

    /// `int hailo_double_direct_loop(uint32_t h, uint32_t w, uint64_t n)`:
    /// `n` inferences driven from C, without the Rust wrapper. Returns the
    /// first failing `hailo_status`, or 0.
    pub fn direct_loop_fn(&self) -> unsafe extern "C" fn(u32, u32, u64) -> std::ffi::c_int {
        // SAFETY: the double exports the function with exactly this C signature.
        unsafe {
            *self
                .lib
                .get::<unsafe extern "C" fn(u32, u32, u64) -> std::ffi::c_int>(b"hailo_double_direct_loop\0")
                .unwrap_or_else(|e| panic!("hailo_double_direct_loop: {e}"))
        }
    }
}

/// The double's HEF format: `HAILODOUBLE-HEF <height> <width>`.
pub fn hef_bytes(height: u32, width: u32) -> Vec<u8> {
    format!("HAILODOUBLE-HEF {height} {width}").into_bytes()
}

/// A HEF variant: `words` after the size (see HEF VARIANTS in hailort_double.c),
/// e.g. `input=u8 nms=80x100 box=0:0.1,0.2,0.3,0.4,0.9`.
pub fn hef_variant(height: u32, width: u32, words: &str) -> Vec<u8> {
    format!("HAILODOUBLE-HEF {height} {width} {words}").into_bytes()
}

/// The NMS variant's output vstream name.
pub const NMS_OUTPUT: &str = "yolov8s/yolov8_nms_postprocess";

/// Output names in HEF order and their channel counts.
pub const OUTPUTS: [(&str, usize); 4] =
    [("centerface/heatmap", 1), ("centerface/scale", 2), ("centerface/offset", 2), ("centerface/landmarks", 10)];

/// What the double returns for an NCHW input `[1, 3, h, w]`, as NCHW outputs
/// in HEF order (see the formula in hailort_double.c).
pub fn expected_outputs(input: &[f32], h: usize, w: usize) -> Vec<Vec<f32>> {
    let plane = h * w;
    let mut s = 0.0f64;
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let i = (y * w + x) * 3 + c; // NHWC flat index
                s += input[c * plane + y * w + x] as f64 * (1 + i % 7) as f64;
            }
        }
    }
    let (oh, ow) = (h / 4, w / 4);
    OUTPUTS
        .iter()
        .enumerate()
        .map(|(k, (_, f))| {
            let mut out = vec![0.0f32; f * oh * ow];
            for c in 0..*f {
                for y in 0..oh {
                    for x in 0..ow {
                        let j = (y * ow + x) * f + c; // NHWC flat index of the output
                        out[c * oh * ow + y * ow + x] = (s * 0.001 + (k + 1) as f64 + j as f64 * 0.001) as f32;
                    }
                }
            }
            out
        })
        .collect()
}

/// The double's switches: never inherited by a scenario's child process
/// unless the scenario sets them.
pub const SWITCHES: [&str; 10] = [
    "HAILO_DOUBLE_NO_DEVICE",
    "HAILO_DOUBLE_INVALID_HEF",
    "HAILO_DOUBLE_VERSION",
    "HAILO_DOUBLE_TIMEOUT_AT",
    "HAILO_DOUBLE_DEVICE_LOST_AT",
    "HAILO_DOUBLE_RECOVER_FILE",
    "HAILO_DOUBLE_CONTROL",
    "HAILO_DOUBLE_LOST_STATUS",
    "HAILO_DOUBLE_TEMPERATURE",
    "HAILO_DOUBLE_TIMING",
];

/// Runs `body` as scenario `name` (the test function's name) in a child
/// process of this test binary, with the double's switches cleared and `env`
/// set (its switches are process environment and its counters are
/// process-wide). `scenario_env` marks the child, which runs `body` directly.
/// `wrapper` runs the child under another program (valgrind).
pub fn run_scenario(
    scenario_env: &str,
    name: &str,
    env: &[(&str, &str)],
    wrapper: Option<&[&str]>,
    body: impl FnOnce(),
) {
    if std::env::var(scenario_env).as_deref() == Ok(name) {
        body();
        return;
    }
    let lib = library();
    let exe = std::env::current_exe().expect("path of this test binary");
    let mut cmd = match wrapper {
        Some([program, args @ ..]) => {
            let mut c = Command::new(program);
            c.args(args).arg(&exe);
            c
        }
        _ => Command::new(&exe),
    };
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(scenario_env, name)
        .env(ENV_PATH, &lib)
        // Set here so the loader never has to change the environment.
        .env("HAILORT_LOGGER_PATH", "NONE")
        .env_remove("HAILORT_LIBRARY");
    for v in SWITCHES {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap_or_else(|e| panic!("starting scenario {name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "scenario {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}
