//! The module graph points one way (ARCHITECTURE.md, "Module graph"): reads
//! every `crate::` path in the library's code (comments left out) and fails
//! on an arrow that points back up, naming the file and line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The stages and basics, by top-level folder of `src/`.
const STAGES: &[&str] = &["sources", "inference", "events", "outbox", "uplink", "update", "control"];
/// Shared basics: below every stage, importing none of them.
const BASICS: &[&str] = &["config", "record", "sys", "state"];

/// Arrows that exist on purpose, each with the reason (matched on the first
/// two path segments of each side).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "sources::audio",
        "inference::engine",
        "the voice-activity model runs on the same ONNX Runtime loader (engine::onnx)",
    ),
    ("sources::audio", "inference::model", "model::sha256_hex checks the VAD model file"),
    ("state", "inference::engine", "the shared status holds the active EngineKind"),
    ("state", "inference::snapshot", "the shared status holds the model-input tap for `camera snapshot`"),
    ("state", "sources::audio", "the shared status holds the microphone level history"),
];

/// Which top-level modules a file under `from` (a top-level module) must not import.
fn forbidden(from: &str) -> BTreeSet<&'static str> {
    let mut out: BTreeSet<&'static str> = ["daemon"].into();
    // The operator's side (`spark-fleet`): nothing of the daemon uses it.
    if from != "fleet" {
        out.insert("fleet");
    }
    let mut add = |names: &[&'static str]| out.extend(names.iter().copied());
    match from {
        "sources" => add(&["inference", "events", "uplink", "update", "control"]),
        // The events stage plugs into inference through `inference::observe`.
        "inference" => add(&["events", "uplink", "update", "control"]),
        "events" => add(&["uplink", "update", "control"]),
        "outbox" => add(&["sources", "inference", "events", "uplink", "update", "control"]),
        "uplink" => add(&["sources", "inference", "events", "update", "control"]),
        "update" => add(&["control"]),
        f if BASICS.contains(&f) => add(STAGES),
        _ => {}
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/uplink/link.rs` → `uplink::link`; `src/state.rs` → `state`;
/// `src/uplink/mod.rs` → `uplink`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> =
        rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).filter(|c| c != "mod").take(2).collect();
    parts.join("::")
}

fn top(path: &str) -> &str {
    path.split("::").next().unwrap_or(path)
}

/// The first two segments of a path (`inference::engine::onnx` → `inference::engine`).
fn two_segments(after: &str) -> String {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let first = ident(after);
    match after[first.len()..].strip_prefix("::").map(ident) {
        Some(second) if !second.is_empty() => format!("{first}::{second}"),
        _ => first,
    }
}

/// `(line number, imported path's first two segments)` for every `crate::x` outside comments.
fn imports(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name = two_segments(after);
            if !name.is_empty() {
                out.push((i + 1, name));
            }
            rest = after;
        }
        // `use crate::{a, b::c}` groups.
        if let Some(at) = code.find("crate::{") {
            let group = &code[at + "crate::{".len()..];
            for part in group.split([',', '}']) {
                let name = two_segments(part.trim());
                if !name.is_empty() {
                    out.push((i + 1, name));
                }
            }
        }
    }
    out
}

#[test]
fn the_module_graph_points_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.starts_with(src.join("bin")));
    assert!(files.len() > 40, "found only {} files under {}", files.len(), src.display());
    let mut wrong = Vec::new();
    for f in &files {
        let from = module_of(&src, f);
        let text = std::fs::read_to_string(f).unwrap();
        let bad = forbidden(top(&from));
        for (line, to) in imports(&text) {
            let allowed = ALLOWED.iter().any(|(a, b, _)| *a == from && *b == to);
            if top(&to) != top(&from) && bad.contains(top(&to)) && !allowed {
                wrong.push(format!("{}:{line}: {from} -> {to}", f.strip_prefix(&src).unwrap().display()));
            }
        }
    }
    assert!(wrong.is_empty(), "arrows that point back up (see ARCHITECTURE.md, Module graph):\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_use_lines_groups_and_paths_but_not_comments() {
    let text = "use crate::daemon::X;\nuse crate::{uplink, update::agent};\nlet _ = crate::inference::model::f();\n// crate::control\n";
    let got: Vec<(usize, String)> = imports(text);
    let names: Vec<&str> = got.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["daemon::X", "uplink", "update::agent", "inference::model"]);
    assert!(forbidden("uplink").contains("update"));
    assert!(forbidden("sources").contains("inference"));
    assert_eq!(module_of(Path::new("src"), Path::new("src/uplink/mod.rs")), "uplink");
    assert_eq!(module_of(Path::new("src"), Path::new("src/inference/engine/hailo.rs")), "inference::engine");
    assert!(!forbidden("update").contains("uplink"), "update plugs into the uplink's subscription");
    assert!(forbidden("inference").contains("events"), "events plug into inference, not the other way");
    assert!(!forbidden("events").contains("inference"));
}
