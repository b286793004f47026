//! Generates the HailoRT bindings with bindgen.
//!
//! Header choice, first match wins:
//! 1. `HAILO_SYS_USE_BUNDLED=1`: always the bundled `include/hailort_subset.h`;
//! 2. `$HAILORT_INCLUDE_DIR/hailo/hailort.h`;
//! 3. `/usr/include/hailo/hailort.h` (HailoRT's own packages install it there);
//! 4. the bundled subset header (HailoRT 4.21-4.23 layouts).
//!
//! Only the functions the crate calls are bound, and the output is a struct
//! (`HailoRt`) that opens `libhailort.so` at run time: nothing links against
//! HailoRT, so the crate builds and cross-builds on machines without it.

use std::env;
use std::path::{Path, PathBuf};

/// Every C function spark-edge calls. Keep in sync with include/hailort_subset.h.
const FUNCTIONS: &[&str] = &[
    "hailo_get_library_version",
    "hailo_get_status_message",
    "hailo_scan_devices",
    "hailo_identify",
    "hailo_get_chip_temperature",
    "hailo_init_vdevice_params",
    "hailo_create_vdevice",
    "hailo_configure_vdevice",
    "hailo_get_physical_devices",
    "hailo_release_vdevice",
    "hailo_create_hef_file",
    "hailo_create_hef_buffer",
    "hailo_release_hef",
    "hailo_hef_get_sorted_output_names",
    "hailo_init_configure_params_by_vdevice",
    "hailo_make_input_vstream_params",
    "hailo_make_output_vstream_params",
    "hailo_create_input_vstreams",
    "hailo_create_output_vstreams",
    "hailo_get_input_vstream_frame_size",
    "hailo_get_output_vstream_frame_size",
    "hailo_get_input_vstream_info",
    "hailo_get_output_vstream_info",
    "hailo_get_input_vstream_user_format",
    "hailo_get_output_vstream_user_format",
    "hailo_vstream_write_raw_buffer",
    "hailo_vstream_read_raw_buffer",
    "hailo_clear_input_vstreams",
    "hailo_clear_output_vstreams",
    "hailo_release_input_vstreams",
    "hailo_release_output_vstreams",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=include/hailort_subset.h");
    println!("cargo:rerun-if-env-changed=HAILO_SYS_USE_BUNDLED");
    println!("cargo:rerun-if-env-changed=HAILORT_INCLUDE_DIR");

    let Some(manifest_dir) = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        fail("CARGO_MANIFEST_DIR is not set (build.rs must run under cargo)");
    };
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        fail("OUT_DIR is not set (build.rs must run under cargo)");
    };
    let bundled = manifest_dir.join("include/hailort_subset.h");

    let force_bundled = env::var_os("HAILO_SYS_USE_BUNDLED").is_some_and(|v| v == "1");
    let system = if force_bundled { None } else { system_header() };
    let (header, source) = match &system {
        Some(h) => (h.clone(), "system"),
        None => (bundled.clone(), "bundled"),
    };
    if !header.is_file() {
        fail(&format!("header {} does not exist", header.display()));
    }
    println!("cargo:rerun-if-changed={}", header.display());

    let mut builder = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .dynamic_library_name("HailoRt")
        // Every symbol must resolve when the library is opened: a missing one
        // is an error from `HailoRt::new`, never a panic at the call site.
        .dynamic_link_require_all(true)
        .wrap_unsafe_ops(true)
        .allowlist_type("hailo_.*")
        .allowlist_var("HAILO_.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(true)
        .generate_comments(false)
        .layout_tests(true);
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    if let Some(h) = &system {
        // hailort.h includes "platform.h" from its own directory.
        if let Some(dir) = h.parent() {
            builder = builder.clang_arg(format!("-I{}", dir.display()));
        }
    }
    let bindings = match builder.generate() {
        Ok(b) => b,
        Err(e) => fail(&format!(
            "bindgen failed on {}: {e}. bindgen needs libclang (Debian: apt-get install clang libclang-dev); \
             set HAILO_SYS_USE_BUNDLED=1 to ignore an installed header that does not parse",
            header.display()
        )),
    };
    let out = out_dir.join("bindings.rs");
    if let Err(e) = bindings.write_to_file(&out) {
        fail(&format!("writing {}: {e}", out.display()));
    }

    let described = format!("{source}:{}", header.display());
    println!("cargo:rustc-env=HAILO_SYS_BINDINGS_SOURCE={described}");
    // `links = "hailort"` metadata, visible to dependents as DEP_HAILORT_*.
    println!("cargo:header={}", header.display());
    println!("cargo:bindings_source={source}");
    println!("cargo:abi=4.21-4.23");
    println!("cargo:include={}", manifest_dir.join("include").display());
}

/// The installed HailoRT header, if any. A `HAILORT_INCLUDE_DIR` that does
/// not contain `hailo/hailort.h` is a configuration mistake: stop the build.
fn system_header() -> Option<PathBuf> {
    if let Some(d) = env::var_os("HAILORT_INCLUDE_DIR").filter(|d| !d.is_empty()) {
        let h = PathBuf::from(d).join("hailo/hailort.h");
        if !h.is_file() {
            fail(&format!(
                "HAILORT_INCLUDE_DIR is set but {} does not exist; unset it to use /usr/include or the bundled header",
                h.display()
            ));
        }
        return Some(h);
    }
    Some(Path::new("/usr/include/hailo/hailort.h").to_path_buf()).filter(|p| p.is_file())
}

fn fail(msg: &str) -> ! {
    eprintln!("hailo-sys: {msg}");
    std::process::exit(1);
}
