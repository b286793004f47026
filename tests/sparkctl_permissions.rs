//! Who may do what over the control socket, with a real non-root user:
//! the socket's group may read, only root or the admin group may change the
//! daemon, and refusals and mutations are logged with the peer's uid.
//!
//! Needs root (it creates a throwaway user and groups and removes them on
//! drop); skipped with a message otherwise.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
        let out = Command::new("runuser")
            .args(["-u", &self.user, "--"])
            .arg(sparkctl_bin())
            .arg("--socket")
            .arg(socket)
            .args(args)
            .output()
            .expect("runuser");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
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

#[test]
fn readers_read_only_admins_mutate_and_every_mutation_is_logged() {
    if !is_root() {
        eprintln!("skipped: needs root to create a test user");
        return;
    }
    let acct = Accounts::create();
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{}", free_port()));
    cfg.camera_off = true;
    let d = Daemon::start_with_env(&cfg, &[("SPARKD_ADMIN_GROUP", std::ffi::OsStr::new(&acct.admin_group))]);
    let sock = cfg.socket();
    // The socket is mode 0660; give it the socket group as systemd gives it
    // `sparkd`, and let the user walk to it.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660, "socket mode");
    run("chgrp", &[&acct.socket_group, sock.to_str().unwrap()]);
    run("chmod", &["0755", cfg.dir.path().to_str().unwrap()]);

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

    // ... but not sync.
    let uid = id("-u", &acct.user);
    let (code, _, err) = acct.sparkctl(&sock, &["sync"]);
    assert_eq!(code, 1, "sync as a reader: {err}");
    assert!(err.contains(&format!("needs root or {}", acct.admin_group)), "{err}");
    let (code, out, _) = acct.sparkctl(&sock, &["sync", "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], "forbidden");
    assert!(d.log_text().contains("mutating request refused"), "{}", d.log_text());

    // The admin group as primary group (SO_PEERCRED's gid) is enough.
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={}", gid_of(&acct.admin_group)))
        .arg(format!("--groups={}", gid_of(&acct.socket_group)))
        .arg(sparkctl_bin())
        .arg("--socket")
        .arg(&sock)
        .arg("sync")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "sync with the admin group as primary: {out:?}");

    // A member of the admin group (supplementary, as after login) may sync,
    // and the daemon logs who did it.
    acct.join(&acct.admin_group);
    let (code, out, err) = acct.sparkctl(&sock, &["sync"]);
    assert_eq!(code, 0, "sync as an admin: {err}");
    assert!(out.contains("uplink woken"), "{out}");
    let log = d.log_text();
    // stderr is a file here, not a terminal: no escape codes in it.
    assert!(!log.contains('\x1b'), "colour codes in a non-terminal log:\n{log:?}");
    let line = log
        .lines()
        .filter(|l| l.contains("control: mutating request") && !l.contains("refused"))
        .find(|l| l.contains(&format!("uid={uid}")))
        .unwrap_or_else(|| panic!("no mutating-request line with uid={uid}:\n{log}"));
    assert!(line.contains("pid=") && line.contains("sync"), "{line}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}
