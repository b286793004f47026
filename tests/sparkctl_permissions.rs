//! Who may do what over the control socket, with a real non-root user:
//! the socket's group may read, only root or the admin group may change the
//! daemon (`sync`, `config reload`, `update apply`: every mutating request),
//! and refusals and mutations are logged with the peer's uid.
//!
//! Needs root (it creates a throwaway user and groups and removes them on
//! drop), and fails when not run as root: CI runs the suite as root, so a
//! skip here would hide a broken permission check.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::fleet::{Lab, s};
use common::*;

/// A throwaway user, the socket's group (like `sparkd`) and an admin group
/// (like `sparkd-admin`), deleted on drop.
struct Accounts {
    user: String,
    socket_group: String,
    admin_group: String,
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn id(flag: &str, name: &str) -> u32 {
    let out = Command::new("id").args([flag, name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("id {flag} {name}"))
}

fn gid_of(group: &str) -> u32 {
    let text = std::fs::read_to_string("/etc/group").unwrap();
    spark_edge::control::server::group_entry(&text, group).unwrap_or_else(|| panic!("no group {group}")).0
}

impl Accounts {
    fn create() -> Self {
        let tag = std::process::id() % 100_000;
        let a = Accounts {
            user: format!("spktech{tag}"),
            socket_group: format!("spksock{tag}"),
            admin_group: format!("spkadmin{tag}"),
        };
        // Leftovers of an interrupted run with the same pid.
        a.remove();
        run("groupadd", &[&a.socket_group]);
        run("groupadd", &[&a.admin_group]);
        run("useradd", &["--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", &a.user]);
        a
    }

    fn join(&self, group: &str) {
        run("usermod", &["--append", "--groups", group, &self.user]);
    }

    fn remove(&self) {
        let _ = Command::new("userdel").arg(&self.user).output();
        for g in [&self.user, &self.socket_group, &self.admin_group] {
            let _ = Command::new("groupdel").arg(g).output();
        }
    }

    /// `sparkctl ARGS` as the user, with the groups /etc/group gives it.
    fn sparkctl(&self, socket: &Path, args: &[&str]) -> (i32, String, String) {
        sparkctl_as(&self.user, socket, args)
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        self.remove();
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// Every mutating request as `sparkctl` arguments, with `bundle` for `update apply`.
fn admin_requests(bundle: &Path) -> [Vec<String>; 3] {
    [
        vec!["sync".into()],
        vec!["config".into(), "reload".into()],
        vec!["update".into(), "apply".into(), s(bundle).into()],
    ]
}

/// The request name the daemon logs for these arguments (`Request::name`).
fn request_name(args: &[String]) -> String {
    args.iter().take(2).map(String::as_str).collect::<Vec<_>>().join(" ")
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn readers_read_only_admins_mutate_and_every_mutation_is_logged() {
    assert!(
        is_root(),
        "sparkctl_permissions needs root: it creates a throwaway user and groups (run the tests as root, as CI does)"
    );
    let acct = Accounts::create();
    let lab = Lab::new();
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{}", free_port()));
    cfg.camera_off = true;
    cfg.extra = format!("[update]\ntrusted_keys_file = \"{}\"\n", lab.public.display());
    let d = Daemon::start_with_env(&cfg, &[("SPARKD_ADMIN_GROUP", std::ffi::OsStr::new(&acct.admin_group))]);
    let sock = cfg.socket();
    // The socket is mode 0660; give it the socket group as systemd gives it
    // `sparkd`, and let the user walk to it and read the bundles.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660, "socket mode");
    run("chgrp", &[&acct.socket_group, sock.to_str().unwrap()]);
    run("chmod", &["0755", cfg.dir.path().to_str().unwrap()]);
    run("chmod", &["0755", lab.dir.path().to_str().unwrap()]);

    // Not in the socket's group: cannot even connect; the hint says why.
    let (code, _, err) = acct.sparkctl(&sock, &["status"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("ermission denied") && err.contains("group sparkd"), "{err}");

    // In the socket's group: every read-only command works.
    acct.join(&acct.socket_group);
    for args in [
        &["status", "--json"][..],
        &["queue", "--json"],
        &["link", "--json"],
        &["engine", "--json"],
        &["config", "show", "--json"],
        &["update", "status", "--json"],
    ] {
        let (code, out, err) = acct.sparkctl(&sock, args);
        assert_eq!(code, 0, "{args:?} as {}: {err}", acct.user);
        let _: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
    }
    let (code, out, err) = acct.sparkctl(&sock, &["doctor", "--json"]);
    assert!(code == 0 || code == 1, "doctor as a reader: {code} {err}");
    assert!(out.contains("\"daemon\""), "{out}");

    // ... but no mutating request: each is refused, and the refusal logged
    // with the request and the uid.
    let uid = id("-u", &acct.user);
    let refused_bundle = lab.sign_config_file(&cfg.dir.path().join("sparkd.toml"), "1.0.1");
    for args in admin_requests(&refused_bundle) {
        let name = request_name(&args);
        let (code, _, err) = acct.sparkctl(&sock, &strs(&args));
        assert_eq!(code, 1, "{name} as a reader: {err}");
        assert!(err.contains(&format!("{name} needs root or {}", acct.admin_group)), "{name}: {err}");
        let mut json = strs(&args);
        json.push("--json");
        let (code, out, _) = acct.sparkctl(&sock, &json);
        assert_eq!(code, 1, "{name} --json as a reader: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{name}: {e}: {out}"));
        assert_eq!(v["error"]["code"], "forbidden", "{name}: {v}");
        let log = d.log_text();
        assert!(
            log.lines().any(|l| l.contains("mutating request refused")
                && l.contains(&format!("uid={uid}"))
                && l.contains(&name)),
            "no refusal of {name} logged with uid={uid}:\n{log}"
        );
    }
    // The refused update left nothing behind.
    let (code, out, err) = sparkctl(&sock, &["update", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["updates"], serde_json::json!([]), "a refused update apply was recorded: {v}");

    // Each mutating request gets past the permission check for an admin:
    // `sync` and `config reload` exit 0; the first `update apply` ends with
    // the update active. A later one reaches the update agent too, which
    // refuses it for its own reason (the first config is on trial until the
    // next start): an update report, not a `forbidden` error.
    let with_json = |mut args: Vec<String>| {
        if args[0] == "update" {
            args.push("--json".into());
        }
        args
    };
    let activated = std::cell::Cell::new(false);
    let assert_accepted = |who: &str, args: &[String], (code, out, err): (i32, String, String)| {
        let name = request_name(args);
        let ctx = || format!("{name} as {who}: exit {code}\n{out}{err}\nlog:\n{}", d.log_text());
        match name.as_str() {
            "sync" => assert!(code == 0 && out.contains("uplink woken"), "{}", ctx()),
            "config reload" => assert_eq!(code, 0, "{}", ctx()),
            _ => {
                let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {}", ctx()));
                assert!(v["error"].is_null() && v["update_id"].is_string(), "{}", ctx());
                if !activated.replace(true) {
                    assert!(code == 0 && v["state"] == "active", "{}", ctx());
                } else {
                    assert!(v["state"] == "active" || v["state"] == "rejected", "{}", ctx());
                }
            }
        }
    };

    // The admin group as primary group (SO_PEERCRED's gid) is enough.
    let bundle = lab.sign_config_file(&cfg.dir.path().join("sparkd.toml"), "1.0.2");
    for args in admin_requests(&bundle).map(with_json) {
        let out = Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={}", gid_of(&acct.admin_group)))
            .arg(format!("--groups={}", gid_of(&acct.socket_group)))
            .arg(sparkctl_bin())
            .arg("--socket")
            .arg(&sock)
            .args(&args)
            .output()
            .expect("setpriv");
        let got = (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_accepted("the admin group as primary group", &args, got);
    }

    // A member of the admin group (supplementary, as after login) may do
    // each, and the daemon logs who did it.
    acct.join(&acct.admin_group);
    let bundle = lab.sign_config_file(&cfg.dir.path().join("sparkd.toml"), "1.0.3");
    for args in admin_requests(&bundle).map(with_json) {
        assert_accepted("an admin group member", &args, acct.sparkctl(&sock, &strs(&args)));
        let name = request_name(&args);
        let log = d.log_text();
        let line = log
            .lines()
            .filter(|l| l.contains("control: mutating request") && !l.contains("refused"))
            .filter(|l| l.contains(&format!("uid={uid}")))
            .find(|l| l.contains(&name))
            .unwrap_or_else(|| panic!("no mutating-request line for {name} with uid={uid}:\n{log}"));
        assert!(line.contains("pid="), "{line}");
    }

    // Root may do each.
    let bundle = lab.sign_config_file(&cfg.dir.path().join("sparkd.toml"), "1.0.4");
    for args in admin_requests(&bundle).map(with_json) {
        assert_accepted("root", &args, sparkctl(&sock, &strs(&args)));
    }

    let log = d.log_text();
    // stderr is a file here, not a terminal: no escape codes in it.
    assert!(!log.contains('\x1b'), "colour codes in a non-terminal log:\n{log:?}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}
