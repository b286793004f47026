//! The module graph points one way (ARCHITECTURE.md, "Module graph"): reads
//! every `crate::` path in the library's code (comments left out) and fails
//! on an arrow that points back up, naming the file and line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const SOURCES: &[&str] = &["source", "audio", "telemetry", "loadgen"];
const INFERENCE: &[&str] = &["engine", "model", "pipeline", "vision", "detect", "snapshot"];
const UPLINK: &[&str] = &["uplink", "link", "tls"];
/// Shared basics: below every stage, importing none of them.
const BASICS: &[&str] =
    &["config", "record", "credentials", "durable", "backoff", "notify", "logging", "memory", "identity"];

/// Arrows that exist on purpose, each with the reason.
const ALLOWED: &[(&str, &str, &str)] = &[
    ("audio", "engine", "the voice-activity model runs on the same ONNX Runtime loader (engine::onnx)"),
    ("audio", "model", "model::sha256_hex checks the VAD model file"),
    ("state", "engine", "the shared status holds the active EngineKind (protocol views: issue 14 item 3)"),
    ("state", "snapshot", "the shared status holds the model-input tap for `camera snapshot`"),
    ("state", "audio", "the shared status holds the microphone level history"),
];

/// Which modules `from` must not import.
fn forbidden(from: &str) -> BTreeSet<&'static str> {
    let mut out: BTreeSet<&'static str> = ["daemon"].into();
    let mut add = |group: &[&'static str]| out.extend(group.iter().copied());
    if SOURCES.contains(&from) {
        add(INFERENCE);
        add(UPLINK);
        add(&["update", "control"]);
    } else if INFERENCE.contains(&from) {
        add(UPLINK);
        add(&["update", "control"]);
    } else if from == "outbox" {
        add(SOURCES);
        add(INFERENCE);
        add(UPLINK);
        add(&["update", "control"]);
    } else if UPLINK.contains(&from) {
        add(SOURCES);
        add(INFERENCE);
        add(&["update", "control"]);
    } else if from == "update" {
        add(&["control"]);
    } else if BASICS.contains(&from) || from == "state" {
        add(SOURCES);
        add(INFERENCE);
        add(UPLINK);
        add(&["outbox", "update", "control"]);
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

/// `src/uplink.rs` → `uplink`; `src/update/agent.rs` → `update`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// `(line number, imported top module)` for every `crate::x` outside comments.
fn imports(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push((i + 1, name));
            }
            rest = after;
        }
        // `use crate::{a, b::c}` groups.
        if let Some(at) = code.find("crate::{") {
            let group = &code[at + "crate::{".len()..];
            for part in group.split([',', '}']) {
                let name: String = part.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
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
        let bad = forbidden(&from);
        for (line, to) in imports(&text) {
            let allowed = ALLOWED.iter().any(|(a, b, _)| *a == from && *b == to);
            if to != from && bad.contains(to.as_str()) && !allowed {
                wrong.push(format!("{}:{line}: {from} -> {to}", f.strip_prefix(&src).unwrap().display()));
            }
        }
    }
    assert!(wrong.is_empty(), "arrows that point back up (see ARCHITECTURE.md, Module graph):\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_use_lines_groups_and_paths_but_not_comments() {
    let text =
        "use crate::daemon::X;\nuse crate::{uplink, update::agent};\nlet _ = crate::model::f();\n// crate::control\n";
    let got: Vec<(usize, String)> = imports(text);
    let names: Vec<&str> = got.iter().map(|(_, n)| n.as_str()).collect();
    assert!(names.contains(&"daemon") && names.contains(&"uplink") && names.contains(&"update"));
    assert!(names.contains(&"model") && !names.contains(&"control"), "{names:?}");
    assert!(forbidden("uplink").contains("update"));
    assert!(forbidden("source").contains("engine"));
    assert!(!forbidden("update").contains("uplink"), "update plugs into the uplink's subscription");
}
