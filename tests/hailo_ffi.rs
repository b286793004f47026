//! The Hailo path end to end through the production loader
//! (`hailo_sys::load`, dlopen) against the HailoRT test double
//! (tests/hailo-double/hailort_double.c, built here with `cc`).
//!
//! Each scenario runs in a fresh child process of this test binary with its
//! own environment: the double reads its failure switches from environment
//! variables on every call and keeps process-wide counters, so scenarios must
//! not share a process. The parent asserts that the child ran exactly one
//! test and passed.

#[path = "hailo-double/double.rs"]
mod double;

use std::path::{Path, PathBuf};

use spark_edge::inference::detect::{self, DecodeError, Detection, NmsFault};
use spark_edge::inference::engine::hailo::InputFormat;
use spark_edge::inference::engine::hailo::{
    self, HailoEngine, HailoError, HailoFailure, HailoOptions, HailoStatus, HefSource,
};
use spark_edge::inference::engine::{Engine, EngineError, EngineKind};
use spark_edge::inference::model::{ColorOrder, Decoder, InputSpec, OutputSpec};
use spark_edge::inference::vision::{self, Tensor};

const SCENARIO_ENV: &str = "HAILO_FFI_SCENARIO";

/// Runs `body` as scenario `name` in a child process with `env` set.
fn scenario(name: &str, env: &[(&str, &str)], body: impl FnOnce()) {
    double::run_scenario(SCENARIO_ENV, name, env, None, body);
}

fn run_scenario(name: &str, env: &[(&str, &str)], wrapper: Option<&[&str]>, body: impl FnOnce()) {
    double::run_scenario(SCENARIO_ENV, name, env, wrapper, body);
}

/// The double, as the child sees it.
fn lib() -> PathBuf {
    double::library()
}

fn opts() -> HailoOptions {
    HailoOptions { timeout_ms: 500, ..HailoOptions::default() }
}

fn open(h: u32, w: u32) -> Result<HailoEngine, HailoError> {
    let hef = double::hef_bytes(h, w);
    HailoEngine::try_open(Some(&lib()), HefSource::Bytes(&hef), &opts())
}

fn must_open(h: u32, w: u32) -> HailoEngine {
    open(h, w).unwrap_or_else(|e| panic!("opening the engine on the double: {e}"))
}

/// A deterministic NCHW input whose values differ per element and per `seed`.
fn input(h: usize, w: usize, seed: u64) -> Tensor {
    let mut t = Tensor::zeros(&[1, 3, h, w]);
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    for v in &mut t.data {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *v = ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
    }
    t
}

fn assert_outputs_match(engine: &mut HailoEngine, t: &Tensor) {
    let (h, w) = (t.shape[2], t.shape[3]);
    let got = engine.infer(t).unwrap_or_else(|e| panic!("infer: {e}"));
    let want = double::expected_outputs(&t.data, h, w);
    assert_eq!(got.len(), double::OUTPUTS.len());
    for ((out, (name, f)), expected) in got.iter().zip(double::OUTPUTS).zip(&want) {
        assert_eq!(out.name, name, "outputs must follow the HEF order");
        assert_eq!(out.shape, vec![1, f, h / 4, w / 4], "{name}");
        assert_eq!(out.data.len(), expected.len(), "{name}");
        for (i, (g, e)) in out.data.iter().zip(expected).enumerate() {
            assert!((g - e).abs() <= 1e-4 * e.abs().max(1.0), "{name}[{i}]: got {g}, expected {e}");
        }
    }
}

fn live_handles() -> std::ffi::c_long {
    double::Extras::open(&lib()).live_handles()
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hailo-ffi-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    d
}

// ---- loading ---------------------------------------------------------------------

#[test]
fn hailo_is_available_when_the_double_reports_a_device() {
    scenario("hailo_is_available_when_the_double_reports_a_device", &[], || {
        let info = hailo::probe(Some(&lib())).unwrap_or_else(|e| panic!("probe: {e}"));
        assert_eq!(info.library_path, lib());
        assert_eq!(info.library_version.to_string(), "4.23.0");
        assert_eq!(info.devices, ["0000:01:00.0"]);
        let id = info.identity.as_ref().unwrap_or_else(|| panic!("no identity: {:?}", info.health_error));
        assert_eq!(id.architecture, "HAILO8");
        assert_eq!(id.firmware_version, "4.23.0");
        assert_eq!(id.board_name, "Hailo-8 (test double)");
        assert_eq!(id.serial_number, "HLDDLBT000000001");
        assert_eq!(info.temperature.map(|t| t.max_celsius()), Some(46.25));
        assert!(info.bindings.starts_with("bundled:") || info.bindings.starts_with("system:"));

        let engine = must_open(32, 32);
        assert_eq!(engine.kind(), EngineKind::Hailo);
        assert_eq!(engine.input_shape(), [1, 3, 32, 32]);
        assert_eq!(engine.input_name(), "centerface/input_layer1");
    });
}

#[test]
fn library_is_found_through_hailort_library_env() {
    let lib_str = double::library().to_string_lossy().into_owned();
    scenario("library_is_found_through_hailort_library_env", &[("HAILORT_LIBRARY", &lib_str)], || {
        let (_, path) = hailo_sys::load(None).unwrap_or_else(|e| panic!("load: {e}"));
        assert_eq!(path, lib());
        // An explicit path that does not load falls through to the next candidate.
        let (_, path) = hailo_sys::load(Some(Path::new("/nonexistent/libhailort.so.4.23.0")))
            .unwrap_or_else(|e| panic!("load: {e}"));
        assert_eq!(path, lib());
    });
}

#[test]
fn library_search_order_and_failure_report_every_path() {
    scenario(
        "library_search_order_and_failure_report_every_path",
        &[("HAILORT_LIBRARY", "/nonexistent/env/libhailort.so")],
        || {
            let explicit = Path::new("/nonexistent/explicit/libhailort.so.4.23.0");
            let c = hailo_sys::candidates(Some(explicit));
            assert_eq!(c[0], explicit);
            assert_eq!(c[1], Path::new("/nonexistent/env/libhailort.so"));
            assert_eq!(c[2], Path::new("libhailort.so"));
            assert_eq!(c[3], Path::new("libhailort.so.4"));
            let Err(e) = hailo_sys::load_from(&c[..2]) else { panic!("loaded a nonexistent library") };
            let msg = e.to_string();
            assert!(
                msg.contains("/nonexistent/explicit/libhailort.so.4.23.0")
                    && msg.contains("/nonexistent/env/libhailort.so"),
                "{msg}"
            );
            assert!(msg.contains("HAILORT_LIBRARY"), "the message says how to fix it: {msg}");
        },
    );
}

#[test]
fn version_mismatch_is_refused_naming_both_versions() {
    scenario("version_mismatch_is_refused_naming_both_versions", &[("HAILO_DOUBLE_VERSION", "4.18.0")], || {
        let Err(e) = hailo_sys::load(Some(&lib())) else { panic!("a 4.18 library was accepted") };
        assert!(matches!(e, hailo_sys::LoadError::VersionMismatch { found, .. } if found.minor == 18));
        let msg = e.to_string();
        assert!(msg.contains("4.18.0") && msg.contains("4.21-4.23"), "{msg}");

        let Err(e) = open(32, 32) else { panic!("engine opened on a 4.18 library") };
        assert_eq!(e.failure(), HailoFailure::Permanent);
        let ee = EngineError::from(e);
        assert_eq!(ee.failure(), Some(HailoFailure::Permanent));
        assert!(spark_edge::error_chain(&ee).contains("4.18.0"), "{ee}");
    });
}

#[test]
fn library_versions_4_21_and_4_22_share_layouts_and_load() {
    for v in ["4.21.0", "4.22.0"] {
        scenario("library_versions_4_21_and_4_22_share_layouts_and_load", &[("HAILO_DOUBLE_VERSION", v)], || {
            let (lib, _) = hailo_sys::load(Some(&lib())).unwrap_or_else(|e| panic!("load: {e}"));
            let found = hailo_sys::library_version(&lib).unwrap_or_else(|s| panic!("status {s}"));
            assert!(found.is_supported(), "{found}");
        });
    }
}

// ---- opening failures --------------------------------------------------------------

#[test]
fn no_device_is_a_typed_device_lost_error() {
    scenario("no_device_is_a_typed_device_lost_error", &[("HAILO_DOUBLE_NO_DEVICE", "1")], || {
        let info = hailo::probe(Some(&lib())).unwrap_or_else(|e| panic!("probe: {e}"));
        assert!(info.devices.is_empty() && info.identity.is_none());

        let Err(e) = open(32, 32) else { panic!("opened without a device") };
        assert!(matches!(e, HailoError::NoDevice { .. }), "{e}");
        assert!(e.is_device_lost() && e.is_fatal());
        assert!(e.to_string().contains("/dev/hailo0"), "{e}");

        let hef = double::hef_bytes(32, 32);
        let Err(ee) = HailoEngine::open(Some(&lib()), HefSource::Bytes(&hef), &opts()) else { panic!("opened") };
        assert_eq!(ee.failure(), Some(HailoFailure::DeviceLost));
        assert_eq!(live_handles(), 0);
    });
}

#[test]
fn invalid_hef_is_a_typed_permanent_error() {
    scenario("invalid_hef_is_a_typed_permanent_error", &[("HAILO_DOUBLE_INVALID_HEF", "1")], || {
        let Err(e) = open(32, 32) else { panic!("opened an invalid HEF") };
        assert_eq!(e.status(), Some(HailoStatus::INVALID_HEF));
        assert!(matches!(e, HailoError::Status { call: "hailo_create_hef_buffer", .. }), "{e}");
        assert!(e.to_string().contains("HAILO_INVALID_HEF (26)"), "{e}");
        assert_eq!(e.failure(), HailoFailure::Permanent);
        // The vdevice taken before the HEF failed was released again.
        assert_eq!(live_handles(), 0);
    });
}

#[test]
fn hef_loads_from_file_and_garbage_files_are_rejected() {
    scenario("hef_loads_from_file_and_garbage_files_are_rejected", &[], || {
        let dir = temp_dir("hef");
        let good = dir.join("centerface.hef");
        std::fs::write(&good, double::hef_bytes(16, 24)).unwrap_or_else(|e| panic!("{e}"));
        let mut engine = HailoEngine::try_open(Some(&lib()), HefSource::File(&good), &opts())
            .unwrap_or_else(|e| panic!("open from file: {e}"));
        assert_eq!(engine.input_shape(), [1, 3, 16, 24]);
        assert_outputs_match(&mut engine, &input(16, 24, 1));
        drop(engine);

        let bad = dir.join("garbage.hef");
        std::fs::write(&bad, b"\x7fELF not a hef").unwrap_or_else(|e| panic!("{e}"));
        let Err(e) = HailoEngine::try_open(Some(&lib()), HefSource::File(&bad), &opts()) else {
            panic!("garbage HEF opened")
        };
        assert_eq!(e.status(), Some(HailoStatus::INVALID_HEF), "{e}");

        let Err(e) = HailoEngine::try_open(Some(&lib()), HefSource::File(&dir.join("missing.hef")), &opts()) else {
            panic!("missing HEF opened")
        };
        assert_eq!(e.status().map(|s| s.name()), Some("HAILO_OPEN_FILE_FAILURE"), "{e}");
        assert_eq!(live_handles(), 0);
    });
}

#[test]
fn second_exclusive_engine_gets_device_in_use_but_the_service_shares() {
    scenario("second_exclusive_engine_gets_device_in_use_but_the_service_shares", &[], || {
        let first = must_open(16, 16);
        let Err(e) = open(16, 16) else { panic!("two exclusive vdevices") };
        assert_eq!(e.status(), Some(HailoStatus::DEVICE_IN_USE));
        assert!(e.is_device_lost(), "busy counts as unavailable: fall back and retry later");
        // probe still reports the device, and why it could not read its health.
        let info = hailo::probe(Some(&lib())).unwrap_or_else(|e| panic!("probe: {e}"));
        assert_eq!(info.devices.len(), 1);
        assert!(info.health_error.as_deref().is_some_and(|m| m.contains("HAILO_DEVICE_IN_USE")), "{info:?}");
        drop(first);

        let service = HailoOptions { multi_process_service: true, ..opts() };
        let hef = double::hef_bytes(16, 16);
        let a = HailoEngine::try_open(Some(&lib()), HefSource::Bytes(&hef), &service).unwrap_or_else(|e| panic!("{e}"));
        let mut b =
            HailoEngine::try_open(Some(&lib()), HefSource::Bytes(&hef), &service).unwrap_or_else(|e| panic!("{e}"));
        assert_outputs_match(&mut b, &input(16, 16, 9));
        let Err(e) = a.temperature() else { panic!("temperature through the service") };
        assert_eq!(e.status().map(|s| s.name()), Some("HAILO_NOT_SUPPORTED"));
        drop((a, b));
        assert_eq!(live_handles(), 0);
    });
}

// ---- inference ----------------------------------------------------------------------

#[test]
fn outputs_match_the_double_function_in_both_directions() {
    scenario("outputs_match_the_double_function_in_both_directions", &[], || {
        // H != W so a swapped height and width cannot pass.
        let mut engine = must_open(24, 40);
        assert_eq!(
            engine.outputs(),
            double::OUTPUTS.iter().map(|(n, f)| (n.to_string(), vec![1, *f, 6, 10])).collect::<Vec<_>>()
        );
        for seed in 0..5 {
            assert_outputs_match(&mut engine, &input(24, 40, seed));
        }
        // Different inputs give different outputs (the data really went in).
        let a = engine.infer(&input(24, 40, 100)).unwrap_or_else(|e| panic!("{e}"));
        let b = engine.infer(&input(24, 40, 101)).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a[0].data, b[0].data);
        // Through the Engine trait too.
        let dyn_engine: &mut dyn Engine = &mut engine;
        let outs = dyn_engine.run(&input(24, 40, 7)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(outs.len(), 4);
    });
}

#[test]
fn wrong_input_shape_is_rejected_and_the_engine_stays_usable() {
    scenario("wrong_input_shape_is_rejected_and_the_engine_stays_usable", &[], || {
        let mut engine = must_open(16, 16);
        let Err(e) = engine.infer(&Tensor::zeros(&[1, 3, 16, 20])) else { panic!("accepted a wrong shape") };
        assert!(matches!(e, HailoError::InputShape { expected: [1, 3, 16, 16], .. }), "{e}");
        assert_outputs_match(&mut engine, &input(16, 16, 3));
    });
}

#[test]
fn timeout_on_the_nth_call_is_typed_and_the_next_frame_is_not_stale() {
    scenario(
        "timeout_on_the_nth_call_is_typed_and_the_next_frame_is_not_stale",
        &[("HAILO_DOUBLE_TIMEOUT_AT", "3")],
        || {
            let mut engine = must_open(16, 16);
            assert_outputs_match(&mut engine, &input(16, 16, 1));
            assert_outputs_match(&mut engine, &input(16, 16, 2));
            let Err(e) = engine.infer(&input(16, 16, 3)) else { panic!("the third frame did not time out") };
            assert!(e.is_timeout(), "{e}");
            assert_eq!(e.failure(), HailoFailure::Transient);
            assert!(!e.is_fatal() && !e.is_device_lost());
            assert!(e.to_string().contains("hailo_vstream_read_raw_buffer failed with HAILO_TIMEOUT (4)"), "{e}");
            // The late third frame was cleared: the fourth gets its own outputs.
            assert_outputs_match(&mut engine, &input(16, 16, 4));
            assert_outputs_match(&mut engine, &input(16, 16, 5));
        },
    );
}

#[test]
fn device_lost_at_run_time_and_back_through_the_control_file() {
    let dir = temp_dir("control");
    let control = dir.join("control");
    write(&control, "ok\n");
    let control_s = control.to_string_lossy().into_owned();
    scenario(
        "device_lost_at_run_time_and_back_through_the_control_file",
        &[("HAILO_DOUBLE_CONTROL", &control_s)],
        || {
            let control = PathBuf::from(std::env::var("HAILO_DOUBLE_CONTROL").unwrap_or_default());
            let mut engine = must_open(16, 16);
            assert_outputs_match(&mut engine, &input(16, 16, 1));

            write(&control, "lost\n");
            let Err(e) = engine.infer(&input(16, 16, 2)) else { panic!("inference on a lost device") };
            assert_eq!(e.status(), Some(HailoStatus::DRIVER_OPERATION_FAILED), "{e}");
            assert!(e.is_device_lost() && e.is_fatal());
            // Clearing failed as well: the engine now refuses frames.
            let Err(e) = engine.infer(&input(16, 16, 3)) else { panic!("poisoned engine ran") };
            assert!(matches!(e, HailoError::Poisoned { .. }) && e.is_device_lost(), "{e}");
            drop(engine);
            assert_eq!(live_handles(), 0);
            let Err(e) = open(16, 16) else { panic!("reopened while lost") };
            assert!(e.is_device_lost(), "{e}");
            assert!(hailo::probe(Some(&lib())).is_ok_and(|i| i.devices.is_empty()));

            write(&control, "timeout\n");
            let mut engine = must_open(16, 16);
            let Err(e) = engine.infer(&input(16, 16, 4)) else { panic!("stalled device answered") };
            assert!(e.is_timeout(), "{e}");

            write(&control, "ok\n");
            assert_outputs_match(&mut engine, &input(16, 16, 5));
        },
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn driver_timeout_counts_as_device_lost() {
    let dir = temp_dir("lost87");
    let control = dir.join("control");
    write(&control, "ok");
    let control_s = control.to_string_lossy().into_owned();
    scenario(
        "driver_timeout_counts_as_device_lost",
        &[("HAILO_DOUBLE_CONTROL", &control_s), ("HAILO_DOUBLE_LOST_STATUS", "87")],
        || {
            let control = PathBuf::from(std::env::var("HAILO_DOUBLE_CONTROL").unwrap_or_default());
            let mut engine = must_open(16, 16);
            write(&control, "lost");
            let Err(e) = engine.infer(&input(16, 16, 1)) else { panic!("ran") };
            assert_eq!(e.status(), Some(HailoStatus::DRIVER_TIMEOUT));
            assert!(e.is_device_lost());
            assert!(e.to_string().contains("HAILO_DRIVER_TIMEOUT (87)"), "{e}");
            let Err(e) = engine.temperature() else { panic!("temperature of a lost device") };
            assert!(e.is_device_lost(), "{e}");
        },
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn device_lost_from_the_nth_inference_until_the_recover_file_exists() {
    let dir = temp_dir("recover");
    let recover = dir.join("recovered");
    let _ = std::fs::remove_file(&recover);
    let recover_s = recover.to_string_lossy().into_owned();
    scenario(
        "device_lost_from_the_nth_inference_until_the_recover_file_exists",
        &[("HAILO_DOUBLE_DEVICE_LOST_AT", "5"), ("HAILO_DOUBLE_RECOVER_FILE", &recover_s)],
        || {
            let recover = PathBuf::from(std::env::var("HAILO_DOUBLE_RECOVER_FILE").unwrap_or_default());
            let mut engine = must_open(16, 16);
            for seed in 1..=4 {
                assert_outputs_match(&mut engine, &input(16, 16, seed));
            }
            let Err(e) = engine.infer(&input(16, 16, 5)) else { panic!("fifth inference ran") };
            assert!(e.is_device_lost(), "{e}");
            drop(engine);
            match open(16, 16) {
                Err(e) => assert!(e.is_device_lost(), "{e}"),
                Ok(_) => panic!("reopened while lost"),
            }
            write(&recover, "");
            let mut engine = must_open(16, 16);
            assert_outputs_match(&mut engine, &input(16, 16, 6));
        },
    );
    let _ = std::fs::remove_dir_all(dir);
}

// ---- health ---------------------------------------------------------------------------

#[test]
fn health_reports_temperature_and_identity() {
    scenario("health_reports_temperature_and_identity", &[("HAILO_DOUBLE_TEMPERATURE", "71.5")], || {
        let engine = must_open(16, 16);
        let t = engine.temperature().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.ts0_celsius, t.ts1_celsius), (71.5, 71.5));
        let id = engine.identity().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.architecture, "HAILO8");
        assert_eq!(id.part_number, "HM218B1C2FAE");
        assert_eq!(id.product_name, "HAILO-8 AI ACCELERATOR M.2 (DOUBLE)");
        assert_eq!(engine.library_version().to_string(), "4.23.0");
    });
}

// ---- soak and leaks -------------------------------------------------------------------

/// `inferences` frames, then `cycles` device-lost/recover cycles, each
/// dropping and reopening the engine; the double must end with no live
/// handles. Sizes come from the environment so the valgrind run can shrink them.
fn soak() {
    let inferences: usize = std::env::var("HAILO_SOAK_INFERENCES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let cycles: usize = std::env::var("HAILO_SOAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let control = PathBuf::from(std::env::var("HAILO_DOUBLE_CONTROL").unwrap_or_default());
    write(&control, "ok");

    let mut engine = must_open(16, 16);
    let t = input(16, 16, 42);
    let want = double::expected_outputs(&t.data, 16, 16);
    for i in 0..inferences {
        let got = engine.infer(&t).unwrap_or_else(|e| panic!("inference {i}: {e}"));
        if i % 1000 == 0 {
            assert_eq!(got[3].data, want[3], "inference {i}");
        }
    }
    drop(engine);
    assert_eq!(live_handles(), 0, "after {inferences} inferences");

    for cycle in 0..cycles {
        let mut engine = must_open(16, 16);
        engine.infer(&t).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        write(&control, "lost");
        assert!(engine.infer(&t).is_err_and(|e| e.is_device_lost()), "cycle {cycle}");
        drop(engine);
        assert!(open(16, 16).is_err_and(|e| e.is_device_lost()), "cycle {cycle}");
        write(&control, "ok");
    }
    assert_eq!(live_handles(), 0, "after {cycles} lost/recover cycles");
}

#[test]
fn soak_10000_inferences_and_100_lost_recover_cycles_leave_no_handles() {
    let dir = temp_dir("soak");
    let control = dir.join("control");
    let control_s = control.to_string_lossy().into_owned();
    scenario(
        "soak_10000_inferences_and_100_lost_recover_cycles_leave_no_handles",
        &[("HAILO_DOUBLE_CONTROL", &control_s)],
        soak,
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The same soak, smaller (2 000 inferences, 100 cycles), under valgrind's
/// leak checker: any definite or indirect leak, or invalid access, in Rust or
/// in the double fails the child.
#[test]
fn soak_under_valgrind_has_no_leaks_or_invalid_accesses() {
    let dir = temp_dir("valgrind");
    let control = dir.join("control");
    let control_s = control.to_string_lossy().into_owned();
    let valgrind =
        ["valgrind", "--quiet", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=1"];
    run_scenario(
        "soak_under_valgrind_has_no_leaks_or_invalid_accesses",
        &[("HAILO_DOUBLE_CONTROL", &control_s), ("HAILO_SOAK_INFERENCES", "2000"), ("HAILO_SOAK_CYCLES", "100")],
        Some(&valgrind),
        soak,
    );
    let _ = std::fs::remove_dir_all(dir);
}

// ---- Model Zoo HEFs: on-chip NMS and UINT8 inputs ----------------------------------------

fn open_variant(h: u32, w: u32, words: &str) -> Result<HailoEngine, HailoError> {
    let hef = double::hef_variant(h, w, words);
    HailoEngine::try_open(Some(&lib()), HefSource::Bytes(&hef), &opts())
}

fn must_open_variant(h: u32, w: u32, words: &str) -> HailoEngine {
    open_variant(h, w, words).unwrap_or_else(|e| panic!("opening the double's `{words}` HEF: {e}"))
}

/// A Zoo-style input: raw RGB pixels, letterboxed, no normalisation.
fn zoo_spec(w: u32, h: u32) -> InputSpec {
    double::zoo_input("images", w, h)
}

/// A frame whose bytes differ per pixel and channel.
fn gradient(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3 + y) as u8, (y * 7 + x) as u8, (x ^ y) as u8]))
}

fn labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("class{i}")).collect()
}

/// One frame through `engine` and the `hailo-nms` decoder, as the pipeline does it.
fn nms_frame(
    engine: &mut HailoEngine,
    frame: &image::RgbImage,
    spec: &InputSpec,
) -> Result<Vec<Detection>, DecodeError> {
    let (outputs, lb) = engine.infer_frame(frame, spec).unwrap_or_else(|e| panic!("infer_frame: {e}"));
    detect::decode(&OutputSpec::new(Decoder::HailoNms, 0.3, 0.5), &labels(3), &outputs, &lb)
}

fn close(a: [f32; 4], b: [f32; 4]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3)
}

#[test]
fn nms_by_class_boxes_come_out_as_frame_pixel_boxes() {
    scenario("nms_by_class_boxes_come_out_as_frame_pixel_boxes", &[], || {
        let words = "input=u8 nms=3x4 box=0:0.25,0.5,0.5,0.75,0.9 box=2:0.1,0.1,0.2,0.2,0.8 box=2:0.5,0.5,0.6,0.6,0.1";
        let mut engine = must_open_variant(64, 64, words);
        let layout = engine.hef_layout();
        assert_eq!((layout.input_format.as_str(), layout.input_order.as_str()), ("UINT8", "NHWC"));
        assert_eq!(layout.outputs.len(), 1);
        assert_eq!(layout.outputs[0].name, double::NMS_OUTPUT);
        assert_eq!(layout.outputs[0].order, "HAILO_NMS_BY_CLASS");
        assert_eq!(layout.outputs[0].nms_shape, Some([3, 4]));
        assert_eq!(engine.outputs(), vec![(double::NMS_OUTPUT.to_string(), vec![3, 4])]);
        // A 128x96 frame into 64x64: scale 0.5, content 64x48, padding below.
        let d = nms_frame(&mut engine, &gradient(128, 96), &zoo_spec(64, 64)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.len(), 2, "the 0.1 box is under the threshold: {d:?}");
        assert_eq!((d[0].label.as_str(), d[0].score), ("class0", 0.9));
        // x 0.5..0.75 of 64 = 32..48 → 64..96; y 0.25..0.5 of 64 = 16..32 → 32..64.
        assert!(close(d[0].bbox, [64.0, 32.0, 96.0, 64.0]), "{d:?}");
        assert_eq!(d[1].label, "class2");
        assert!(close(d[1].bbox, [12.8, 12.8, 25.6, 25.6]), "{d:?}");
        // The record's detections have the CPU path's schema: the same type, serialised the same way.
        let json = serde_json::to_value(&d[0]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json, serde_json::json!({"label": "class0", "score": 0.9f32, "box": [64.0, 32.0, 96.0, 64.0]}));
        // Frame after frame, and through the Engine trait.
        let mut t = Tensor::zeros(&[1]);
        let dyn_engine: &mut dyn Engine = &mut engine;
        let (outputs, lb) = dyn_engine
            .run_frame((&gradient(128, 96)).into(), &zoo_spec(64, 64), &mut t)
            .unwrap_or_else(|e| panic!("{e}"));
        let again = detect::decode(&OutputSpec::new(Decoder::HailoNms, 0.3, 0.5), &labels(3), &outputs, &lb);
        assert_eq!(again, Ok(d));
        drop(engine);
        assert_eq!(live_handles(), 0);
    });
}

#[test]
fn nms_under_the_older_hailo_nms_name_reads_the_same() {
    scenario("nms_under_the_older_hailo_nms_name_reads_the_same", &[], || {
        let boxes = "nms=3x4 box=1:0.0,0.0,0.5,0.5,0.7";
        let mut engine = must_open_variant(32, 32, &format!("input=u8 nms-order=legacy {boxes}"));
        assert_eq!(engine.hef_layout().outputs[0].order, "HAILO_NMS");
        let d = nms_frame(&mut engine, &gradient(32, 32), &zoo_spec(32, 32)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.len(), 1);
        assert!(close(d[0].bbox, [0.0, 0.0, 16.0, 16.0]) && d[0].label == "class1", "{d:?}");
        drop(engine);
        assert_eq!(live_handles(), 0);
    });
}

#[test]
fn nms_by_score_detections_come_out_as_the_same_frame_pixel_boxes_as_by_class() {
    scenario("nms_by_score_detections_come_out_as_the_same_frame_pixel_boxes_as_by_class", &[], || {
        let boxes = "nms=3x4 box=0:0.25,0.5,0.5,0.75,0.9 box=2:0.1,0.1,0.2,0.2,0.8 box=2:0.5,0.5,0.6,0.6,0.1";
        let (frame, spec) = (gradient(128, 96), zoo_spec(64, 64));
        let mut by_class = must_open_variant(64, 64, &format!("input=u8 {boxes}"));
        let want = nms_frame(&mut by_class, &frame, &spec).unwrap_or_else(|e| panic!("{e}"));
        drop(by_class);
        let mut engine = must_open_variant(64, 64, &format!("input=u8 nms-order=by-score {boxes}"));
        let layout = engine.hef_layout();
        assert_eq!(layout.outputs[0].order, "HAILO_NMS_BY_SCORE");
        // nms_shape: classes and max_bboxes_total (3 classes x 4 boxes each in the double).
        assert_eq!(layout.outputs[0].nms_shape, Some([3, 12]));
        let d = nms_frame(&mut engine, &frame, &spec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d, want);
        assert_eq!(d.len(), 2, "{d:?}");
        drop(engine);
        assert_eq!(live_handles(), 0);
    });
}

#[test]
fn malformed_nms_by_score_frames_are_decode_errors_and_the_next_frame_is_fine() {
    scenario("malformed_nms_by_score_frames_are_decode_errors_and_the_next_frame_is_fine", &[], || {
        assert_malformed_frames_fail_alone(
            "nms=3x4 nms-order=by-score box=0:0.25,0.5,0.5,0.75,0.9 box=2:0.1,0.1,0.2,0.2,0.8",
            [
                ("fault=too-many@2", |f| matches!(f, NmsFault::TooMany { count: 13, max: 12 })),
                ("fault=nan@2", |f| matches!(f, NmsFault::NonFinite { index: 0 })),
                // The library reports a frame 200 bytes short (266 - 200 = 66 bytes: two
                // whole detections and most of a third), then counts all 12.
                ("short=200 fault=truncated@2", |f| matches!(f, NmsFault::PastEnd { needed: 12, len: 2 })),
            ],
        );
    });
}

#[test]
fn malformed_nms_frames_are_decode_errors_and_the_next_frame_is_fine() {
    scenario("malformed_nms_frames_are_decode_errors_and_the_next_frame_is_fine", &[], || {
        assert_malformed_frames_fail_alone(
            "nms=3x4 box=0:0.25,0.5,0.5,0.75,0.9 box=2:0.1,0.1,0.2,0.2,0.8",
            [
                ("fault=too-many@2", |f| matches!(f, NmsFault::TooMany { count: 5, max: 4 })),
                ("fault=nan@2", |f| matches!(f, NmsFault::NonFinite { index: 0 })),
                // The library reports an 18-float frame (the good frames need 13); the last class
                // then claims 4 boxes: its count at float 7, the boxes up to float 28.
                ("short=45 fault=truncated@2", |f| matches!(f, NmsFault::PastEnd { needed: 28, len: 18 })),
            ],
        );
    });
}

type ExpectFault = fn(&NmsFault) -> bool;

/// For each `(words, expected)`: the double's `boxes` HEF with the fault
/// `words` due at the second read. The first frame decodes to both boxes,
/// the second is the expected decode error, the third equals the first.
fn assert_malformed_frames_fail_alone(boxes: &str, cases: [(&str, ExpectFault); 3]) {
    let (frame, spec) = (gradient(64, 64), zoo_spec(64, 64));
    for (fault, expected) in cases {
        let mut engine = must_open_variant(64, 64, &format!("input=u8 {boxes} {fault}"));
        let good = nms_frame(&mut engine, &frame, &spec).unwrap_or_else(|e| panic!("{fault}, frame 1: {e}"));
        assert_eq!(good.len(), 2, "{fault}");
        match nms_frame(&mut engine, &frame, &spec) {
            Err(DecodeError::Nms { fault: f, .. }) if expected(&f) => {}
            other => panic!("{fault}, frame 2: expected that decode error, got {other:?}"),
        }
        assert_eq!(nms_frame(&mut engine, &frame, &spec), Ok(good), "{fault}: the next frame is fine");
    }
    assert_eq!(live_handles(), 0);
}

#[test]
fn uint8_input_bytes_arrive_unchanged() {
    scenario("uint8_input_bytes_arrive_unchanged", &[], || {
        let dir = temp_dir("u8");
        let record = dir.join("input.bin");
        // CenterFace-shaped outputs, UINT8 input: 48 high, 64 wide.
        let mut engine = must_open_variant(48, 64, &format!("input=u8 record={}", record.display()));
        assert_eq!(engine.input_format(), InputFormat::Uint8);
        let read = || std::fs::read(&record).unwrap_or_else(|e| panic!("reading {}: {e}", record.display()));
        for (frame, color) in [(gradient(100, 75), ColorOrder::Rgb), (gradient(64, 48), ColorOrder::Bgr)] {
            let mut spec = zoo_spec(64, 48);
            spec.color = color;
            // Mean and std belong to the chip: they must not change a byte.
            spec.mean = [1.0, 2.0, 3.0];
            spec.std = [4.0, 5.0, 6.0];
            let mut want = Vec::new();
            vision::prepare_u8_nhwc(&frame, &spec, &mut want);
            let (outputs, _) = engine.infer_frame(&frame, &spec).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(outputs.len(), double::OUTPUTS.len());
            let got = read();
            assert_eq!(got.len(), 64 * 48 * 3, "one byte per channel, NHWC");
            assert!(got == want, "the double received other bytes than the resize produced");
            // The outputs carry the double's function of those bytes: the data really went in.
            let as_f32: Vec<f32> = {
                let mut t = Tensor::zeros(&[1, 3, 48, 64]);
                for (i, b) in want.iter().enumerate() {
                    let (p, c) = (i / 3, i % 3);
                    t.data[c * 48 * 64 + p] = *b as f32;
                }
                t.data
            };
            let expected = double::expected_outputs(&as_f32, 48, 64);
            assert!((outputs[0].data[0] - expected[0][0]).abs() <= 1e-4 * expected[0][0].abs().max(1.0));
        }
        // A float tensor prepared with mean 0 and std 1 reaches the chip as the same bytes.
        let (frame, spec) = (gradient(100, 75), zoo_spec(64, 48));
        let mut t = Tensor::zeros(&[1]);
        vision::prepare(&frame, &spec, &mut t);
        engine.infer(&t).unwrap_or_else(|e| panic!("{e}"));
        let mut want = Vec::new();
        vision::prepare_u8_nhwc(&frame, &spec, &mut want);
        assert!(read() == want, "the tensor path sent other bytes");
        assert_eq!(engine.hef_layout().input_format, "UINT8");

        // The daemon's own path (`pipeline::infer_frame`) sends the uint8
        // bytes of the resize too, mean and std left to the chip.
        let manifest = dir.join("model.toml");
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/centerface.toml")).unwrap();
        let text = text
            .replace("width = 640", "width = 64")
            .replace("height = 480", "height = 48")
            .replace("mean = [0.0, 0.0, 0.0]", "mean = [1.0, 2.0, 3.0]")
            .replace("std = [1.0, 1.0, 1.0]", "std = [4.0, 5.0, 6.0]");
        std::fs::write(&manifest, text).unwrap();
        let model = spark_edge::inference::model::Model::load(&manifest).unwrap();
        let frame = gradient(90, 70);
        let mut want = Vec::new();
        vision::prepare_u8_nhwc(&frame, &model.manifest.input, &mut want);
        let mut unused = Tensor::zeros(&[1]);
        let r = spark_edge::inference::pipeline::infer_frame(&mut engine, &model, &frame, &mut unused);
        assert!(r.is_ok(), "{:?}", r.err());
        assert!(read() == want, "the daemon path sent other bytes than the uint8 resize");
        drop(engine);
        assert_eq!(live_handles(), 0);
    });
}

#[test]
fn float32_hef_input_still_takes_the_normalised_tensor() {
    scenario("float32_hef_input_still_takes_the_normalised_tensor", &[], || {
        let mut engine = must_open_variant(16, 16, "input=f32");
        assert_eq!(engine.input_format(), InputFormat::Float32);
        assert_eq!(engine.hef_layout().input_format, "FLOAT32");
        let mut spec = zoo_spec(16, 16);
        spec.mean = [100.0, 110.0, 120.0];
        spec.std = [50.0, 60.0, 70.0];
        let frame = gradient(16, 16);
        let mut t = Tensor::zeros(&[1]);
        vision::prepare(&frame, &spec, &mut t);
        let (outputs, _) = engine.infer_frame(&frame, &spec).unwrap_or_else(|e| panic!("{e}"));
        let want = double::expected_outputs(&t.data, 16, 16);
        for (o, w) in outputs.iter().zip(&want) {
            assert!(o.data.iter().zip(w).all(|(a, b)| (a - b).abs() <= 1e-4 * b.abs().max(1.0)), "{}", o.name);
        }
        // Through the Engine trait the caller's tensor holds the prepared input, as on the CPU.
        let mut caller = Tensor::zeros(&[1]);
        let dyn_engine: &mut dyn Engine = &mut engine;
        let (again, _) = dyn_engine.run_frame((&frame).into(), &spec, &mut caller).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(caller, t);
        assert_eq!(again, outputs);
    });
}

#[test]
fn unsupported_input_format_is_refused_at_load_naming_file_field_and_value() {
    scenario("unsupported_input_format_is_refused_at_load_naming_file_field_and_value", &[], || {
        let dir = temp_dir("u16");
        let path = dir.join("yolov8s_u16.hef");
        std::fs::write(&path, double::hef_variant(32, 32, "input=u16 nms=3x4")).unwrap_or_else(|e| panic!("{e}"));
        let Err(e) = HailoEngine::try_open(Some(&lib()), HefSource::File(&path), &opts()) else {
            panic!("a UINT16 input was accepted")
        };
        let HailoError::InputFormat { hef, vstream, value } = &e else { panic!("not an input format error: {e}") };
        assert_eq!(
            (hef.as_str(), vstream.as_str(), value.as_str()),
            (path.to_str().unwrap_or(""), "yolov8s/input_layer1", "UINT16 (2)")
        );
        let msg = e.to_string();
        assert!(msg.contains("hailo_vstream_info_t.format.type"), "{msg}");
        assert_eq!(e.failure(), HailoFailure::Permanent);
        // Bytes read from a named file keep the name in the error.
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let Err(e) = HailoEngine::try_open(Some(&lib()), HefSource::Read { path: &path, bytes: &bytes }, &opts())
        else {
            panic!("a UINT16 input was accepted")
        };
        assert!(e.to_string().contains("yolov8s_u16.hef"), "{e}");
        // Everything opened on the way was released.
        assert_eq!(live_handles(), 0);
    });
}
