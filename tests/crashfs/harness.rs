//! Test-side driver of the crashfs binary, shared by its own tests
//! (`tests/crashfs/tests/`) and the power-cut fault tests of the root
//! package (`tests/fault_power.rs`), which include it with `#[path]`.
//! Owns starting crashfs, its control commands and cleaning up its mount;
//! knows nothing about what runs on top.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The crashfs binary next to the running test's own target directory,
/// built first if it is not there (`cargo build --workspace` builds it; a
/// lone `cargo test --test NAME` of the root package does not).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
    let bin = profile_dir.join("crashfs");
    if !bin.exists() {
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(p) => p.to_string(),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "--locked", "-p", "crashfs", "--profile", &profile])
            .status()
            .expect("running cargo build -p crashfs");
        assert!(ok.success(), "cargo build -p crashfs failed");
    }
    bin
}

/// A running crashfs: BACKING served at MOUNTPOINT. Dropping it kills
/// crashfs and detaches the mount, so a failed test leaves no dead mount.
pub struct CrashFs {
    child: Option<Child>,
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl CrashFs {
    /// Mounts `backing` at `mountpoint` (both must exist) and waits until
    /// the control socket answers. Fails loudly if FUSE cannot mount: these
    /// tests need root and /dev/fuse, which CI has.
    pub fn mount(bin: &Path, backing: &Path, mountpoint: &Path, extra_args: &[&str]) -> Self {
        let control = mountpoint.with_extension("crashfs.sock");
        let log = mountpoint.with_extension("crashfs.log");
        let _ = std::fs::remove_file(&control);
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("crashfs log");
        let child = Command::new(bin)
            .args(extra_args)
            .arg("--control")
            .arg(&control)
            .arg(backing)
            .arg(mountpoint)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut fs = CrashFs {
            child: Some(child),
            backing: backing.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
            control,
            log,
        };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&fs.control).is_ok() {
                return fs;
            }
            if let Some(Ok(Some(st))) = fs.child.as_mut().map(Child::try_wait) {
                panic!(
                    "crashfs exited ({st}) before mounting: FUSE power-cut tests need root and /dev/fuse.\n{}",
                    fs.log_text()
                );
            }
            assert!(Instant::now() < end, "crashfs did not mount within 20 s:\n{}", fs.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one control command; returns the answer line (asserts `ok`).
    pub fn command(&self, line: &str) -> String {
        let mut s = UnixStream::connect(&self.control)
            .unwrap_or_else(|e| panic!("crashfs control socket: {e}\n{}", self.log_text()));
        s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        writeln!(s, "{line}").expect("send command");
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).expect("crashfs answer");
        assert!(answer.starts_with("ok"), "crashfs `{line}`: {answer}\n{}", self.log_text());
        answer.trim().to_string()
    }

    /// Cuts power (`cut` plus options, e.g. `cut tear=3`) and waits for
    /// crashfs to leave; afterwards BACKING holds only what was durable.
    pub fn cut(mut self, line: &str) -> String {
        assert!(line.starts_with("cut") || line == "stop");
        let answer = self.command(line);
        let mut child = self.child.take().expect("crashfs child");
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    assert!(st.success(), "crashfs exited {st} after `{line}`:\n{}", self.log_text());
                    return answer;
                }
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                _ => panic!("crashfs did not exit after `{line}`:\n{}", self.log_text()),
            }
        }
    }
}

impl Drop for CrashFs {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).stderr(Stdio::null()).status();
        }
    }
}
