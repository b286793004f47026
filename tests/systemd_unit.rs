//! The systemd unit and the packaged config, checked with the real tools:
//! `systemd-analyze verify` must print nothing, `systemd-analyze security`
//! must rate the unit at most 2.0, the sysusers/tmpfiles snippets must
//! create what the unit relies on, and `packaging/sparkd.toml` must pass
//! `sparkd check-config` and name every key.
//!
//! These tests fail (never skip) when the systemd tools are missing:
//! scripts/setup.sh installs them (Debian package `systemd`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = "systemd/sparkd.service";
const SYSUSERS: &str = "systemd/sparkd.sysusers";
const TMPFILES: &str = "systemd/sparkd.tmpfiles";
const PACKAGED_CONFIG: &str = "packaging/sparkd.toml";
const MAX_EXPOSURE: f64 = 2.0;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs a systemd tool; a missing tool is a failure that says how to fix it.
fn systemd_tool(name: &str, args: &[&str]) -> Output {
    match Command::new(name).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{name} not found: run scripts/setup.sh (it installs the Debian package `systemd`, \
             which provides {name})"
        ),
        Err(e) => panic!("running {name}: {e}"),
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A throwaway root holding what `systemd-analyze --root=` needs: the host's
/// system units (the targets the unit orders itself against), the unit where
/// the package installs it, and an executable stub at /usr/bin/sparkd (a
/// missing ExecStart binary is an error).
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn with_unit(unit_text: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let units = dir.path().join("usr/lib/systemd/system");
        std::fs::create_dir_all(units.parent().unwrap()).unwrap();
        let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
            .into_iter()
            .find(|p| Path::new(p).join("multi-user.target").exists())
            .expect("no systemd system units on this host: run scripts/setup.sh (Debian package `systemd`)");
        let cp = Command::new("cp").args(["-a", host_units]).arg(&units).output().expect("running cp");
        assert!(cp.status.success(), "copying {host_units}: {}", text(&cp));
        std::fs::write(units.join("sparkd.service"), unit_text).unwrap();

        let bin = dir.path().join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("sparkd"), "#!/bin/sh\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join("sparkd"), std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn arg(&self) -> String {
        format!("--root={}", self.dir.path().display())
    }

    fn verify(&self) -> Output {
        systemd_tool("systemd-analyze", &["verify", &self.arg(), "sparkd.service"])
    }
}

fn unit_text() -> String {
    std::fs::read_to_string(repo(UNIT)).expect("reading the unit")
}

#[test]
fn unit_passes_systemd_analyze_verify_silently() {
    let root = Root::with_unit(&unit_text());
    let out = root.verify();
    let printed = text(&out);
    assert!(out.status.success() && printed.trim().is_empty(), "systemd-analyze verify {UNIT}:\n{printed}");
}

/// Guards the test above: the same harness does report a broken unit.
#[test]
fn verify_harness_reports_unknown_keys() {
    let broken = unit_text().replace("[Service]\n", "[Service]\nNoSuchSetting=yes\n");
    let out = Root::with_unit(&broken).verify();
    assert!(text(&out).contains("NoSuchSetting"), "verify did not report the unknown key:\n{}", text(&out));
}

#[test]
fn unit_security_exposure_is_at_most_2_0() {
    let root = Root::with_unit(&unit_text());
    let out =
        systemd_tool("systemd-analyze", &["security", "--offline=yes", &root.arg(), "--no-pager", "sparkd.service"]);
    let printed = text(&out);
    let marker = "Overall exposure level for sparkd.service:";
    let exposure: f64 = printed
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, rest)| rest.split_whitespace().next().unwrap_or("").to_string()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in systemd-analyze security output:\n{printed}"));
    assert!(exposure <= MAX_EXPOSURE, "exposure {exposure} > {MAX_EXPOSURE}:\n{printed}");
}

#[test]
fn unit_checks_and_runs_the_default_config_path() {
    let unit = unit_text();
    let path = spark_edge::config::DEFAULT_CONFIG_PATH;
    assert!(
        unit.contains(&format!("\nExecStartPre=/usr/bin/sparkd check-config --effective {path}\n")),
        "ExecStartPre"
    );
    assert!(unit.contains(&format!("\nExecStart=/usr/bin/sparkd run --config {path}\n")), "ExecStart");
}

/// A root with only /etc and the snippet installed where the package puts it;
/// the tool runs with --root, as the postinst does under $DPKG_ROOT.
fn apply_snippet(tool: &str, snippet: &str, dir: &str, extra: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let d = root.path().join(dir);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(repo(snippet), d.join("sparkd.conf")).unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let mut args = vec![root_arg.as_str()];
    args.extend_from_slice(extra);
    args.push("sparkd.conf");
    let out = systemd_tool(tool, &args);
    assert!(out.status.success(), "{tool} {snippet}:\n{}", text(&out));
    root
}

#[test]
fn sysusers_creates_the_service_user_in_the_device_groups() {
    let root = apply_snippet("systemd-sysusers", SYSUSERS, "usr/lib/sysusers.d", &[]);
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let user = passwd.lines().find(|l| l.starts_with("sparkd:")).expect("user sparkd");
    assert!(user.ends_with(":/var/lib/sparkd:/usr/sbin/nologin"), "{user}");
    let members = |g: &str| {
        group.lines().find(|l| l.starts_with(&format!("{g}:"))).map(|l| l.rsplit(':').next().unwrap_or("").to_string())
    };
    assert_eq!(members("sparkd").as_deref(), Some(""), "group sparkd:\n{group}");
    assert!(members("sparkd-admin").is_some(), "group sparkd-admin:\n{group}");
    for g in ["video", "audio"] {
        let m = members(g).unwrap_or_else(|| panic!("group {g}:\n{group}"));
        assert!(m.split(',').any(|u| u == "sparkd"), "sparkd not in {g}: {m}");
    }
}

#[test]
fn tmpfiles_creates_a_root_only_credentials_directory() {
    use std::os::unix::fs::PermissionsExt;
    let root = apply_snippet("systemd-tmpfiles", TMPFILES, "usr/lib/tmpfiles.d", &["--create"]);
    let meta = std::fs::metadata(root.path().join("etc/sparkd/credentials")).expect("credentials dir");
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
    // Every LoadCredential= source lives in that directory.
    for line in unit_text().lines().filter(|l| l.starts_with("LoadCredential=")) {
        let (id, src) = line["LoadCredential=".len()..].split_once(':').expect(line);
        assert_eq!(src, format!("/etc/sparkd/credentials/{id}"), "{line}");
        assert!(unit_text().contains(&format!("\nSetCredential={id}:")), "{id} has no SetCredential= default");
    }
}

#[test]
fn packaged_config_passes_check_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_sparkd"))
        .args(["check-config"])
        .arg(repo(PACKAGED_CONFIG))
        .output()
        .expect("running sparkd");
    assert!(out.status.success(), "sparkd check-config {PACKAGED_CONFIG}:\n{}", text(&out));
}

#[test]
fn packaged_config_names_every_key_and_the_packaged_paths() {
    use spark_edge::config::Config;
    let path = repo(PACKAGED_CONFIG);
    let raw: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    fn missing_keys(want: &toml::Table, got: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in want {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match (value, got.get(key)) {
                // Empty by default ([[zone]], [[line]]): shown as comments.
                (toml::Value::Array(a), None) if a.is_empty() => {}
                (_, None) => out.push(path),
                (toml::Value::Table(w), Some(toml::Value::Table(g))) => missing_keys(w, g, &path, out),
                _ => {}
            }
        }
    }
    let mut missing = Vec::new();
    missing_keys(&defaults, &raw, "", &mut missing);
    assert!(missing.is_empty(), "{PACKAGED_CONFIG} lacks keys (add them with their defaults): {missing:?}");

    let c = Config::load(&path).unwrap();
    // The COCO detector is the packaged default (CenterFace ships beside it).
    assert_eq!(c.model.manifest, Path::new("/usr/share/sparkd/models/nanodet.toml"));
    assert_eq!(c.model.onnxruntime_library, Path::new("/usr/lib/sparkd/libonnxruntime.so"));
    assert_eq!(c.cameras()[0].replay_dir, Path::new("/usr/share/sparkd/demo"));
    assert!(c.state_dir.as_os_str().is_empty(), "state_dir must be empty so $STATE_DIRECTORY is used");
    assert!(c.socket_path.as_os_str().is_empty(), "socket_path must be empty so $RUNTIME_DIRECTORY is used");
}
