//! The control socket under abuse by group members (issue 15, finding 5),
//! against the real `sparkd`: slow clients of one uid cannot lock others
//! out, frames larger than their request may be are refused unread, images
//! are refused by their declared size without decoding, memory stays within
//! idle + 64 MiB, and an admin's `update apply` gets through while others
//! hold the memory for large requests.
//!
//! Needs root (throwaway users; resetting the daemon's peak RSS), as CI runs.
//! Unprivileged clients are this test binary run again as a throwaway user
//! (`runuser`), in helper mode (`abuse_helper`), driven over its stdin/stdout.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::fleet::{Lab, s};
use common::*;
use spark_edge::control::protocol::{self, ErrorCode, Request, RequestFrame, Response, ResponseFrame};
use spark_edge::control::server::{MAX_CLIENTS, MAX_CLIENTS_PER_UID};

const ENV_MODE: &str = "CONTROL_ABUSE_HELPER";
const ENV_SOCKET: &str = "CONTROL_ABUSE_SOCKET";
const MIB: usize = 1 << 20;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// Throwaway users in a throwaway socket group, deleted on drop.
struct Users {
    group: String,
    names: Vec<String>,
}

impl Users {
    fn create(n: usize) -> Self {
        assert!(is_root(), "control_abuse needs root: it creates throwaway users (run the tests as root, as CI does)");
        // Unique per test, not only per process: the tests of this file run
        // in parallel, and one's cleanup must not delete another's users.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n_test = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}x{n_test}", std::process::id() % 100_000);
        let u = Users { group: format!("spkab{tag}"), names: (0..n).map(|i| format!("spkab{tag}u{i}")).collect() };
        u.remove();
        run("groupadd", &[&u.group]);
        for name in &u.names {
            run("useradd", &["--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name]);
            run("usermod", &["--append", "--groups", &u.group, name]);
        }
        u
    }

    fn remove(&self) {
        for name in &self.names {
            let _ = Command::new("userdel").arg(name).output();
            let _ = Command::new("groupdel").arg(name).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }

    /// Lets the group reach the daemon's socket, as systemd gives it `sparkd`.
    fn open_socket(&self, cfg: &DaemonConfig) {
        run("chgrp", &[&self.group, cfg.socket().to_str().unwrap()]);
        run("chmod", &["0755", cfg.dir.path().to_str().unwrap()]);
    }

    fn sparkctl(&self, user: usize, socket: &Path, args: &[&str]) -> (i32, String, String) {
        sparkctl_as(&self.names[user], socket, args)
    }

    /// This binary in helper `mode` as `user`.
    fn helper(&self, user: usize, mode: &str, socket: &Path) -> Helper {
        let exe = std::env::current_exe().expect("the test binary");
        let child = Command::new("runuser")
            .args(["-u", &self.names[user], "--", "env"])
            .arg(format!("{ENV_MODE}={mode}"))
            .arg(format!("{ENV_SOCKET}={}", socket.display()))
            .arg(exe)
            .args(["--exact", "abuse_helper", "--nocapture", "--test-threads", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the helper");
        Helper::new(child)
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A running helper: send it commands, read its `HELPER ...` lines.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: BufReader<ChildStdout>,
}

impl Helper {
    fn new(mut child: Child) -> Self {
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("helper stdout"));
        Helper { child, stdin, lines }
    }

    /// The next `HELPER` line's words after the marker.
    fn next(&mut self) -> Vec<String> {
        loop {
            let mut line = String::new();
            let n = self.lines.read_line(&mut line).expect("reading the helper");
            assert!(n > 0, "the helper ended early");
            // libtest may have started its own line ("test abuse_helper ... ").
            if let Some(at) = line.find("HELPER ") {
                return line[at + 7..].split_whitespace().map(String::from).collect();
            }
        }
    }

    fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("helper stdin");
        writeln!(stdin, "{cmd}").expect("writing to the helper");
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.stdin.take()); // EOF: the helper ends
        let _ = self.child.wait();
    }
}

/// `HELPER key value`'s value as a number.
fn num(words: &[String], key: &str) -> usize {
    let at = words.iter().position(|w| w == key).unwrap_or_else(|| panic!("no {key} in {words:?}"));
    words[at + 1].parse().unwrap_or_else(|_| panic!("{key} in {words:?}"))
}

fn connect(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn read_response(s: &mut UnixStream) -> Option<Response> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).ok()?;
    let len = protocol::check_len(header, protocol::MAX_RESPONSE_BYTES).ok()?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    serde_json::from_slice::<ResponseFrame>(&body).ok().map(|f| f.response)
}

fn error_of(r: Option<Response>) -> Option<(ErrorCode, String)> {
    match r {
        Some(Response::Error(e)) => Some((e.code, e.message)),
        _ => None,
    }
}

fn status_frame() -> Vec<u8> {
    protocol::encode(&RequestFrame { v: 1, request: Request::Status }).unwrap()
}

/// A frame header declaring `len` bytes, then `prefix` padded with spaces
/// to 256 bytes (what the daemon reads to learn the command).
fn declared(len: usize, prefix: &str) -> Vec<u8> {
    let mut out = (len as u32).to_be_bytes().to_vec();
    out.extend_from_slice(format!("{prefix:<256}").as_bytes());
    out
}

/// A whole `infer` frame of exactly `len` bytes whose image is zeros (not
/// an image: the daemon answers `bad-request` once it has read it all).
fn infer_frame(len: usize) -> Vec<u8> {
    let head = r#"{"v":1,"request":{"cmd":"infer","name":"junk","image_hex":""#;
    let tail = r#""}}"#;
    let hex = (len - head.len() - tail.len()) & !1;
    let body = format!("{head}{}{tail}{}", "0".repeat(hex), " ".repeat(len - head.len() - tail.len() - hex));
    let mut out = (len as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Peak resident memory since the last reset, and the current one (KiB).
fn hwm_and_rss_kib(pid: i32) -> (u64, u64) {
    let [hwm, rss] = proc_status_kib(pid, ["VmHWM:", "VmRSS:"]);
    (hwm, rss)
}

/// The helper side: does nothing in a normal test run.
#[test]
fn abuse_helper() {
    let Ok(mode) = std::env::var(ENV_MODE) else { return };
    let socket = PathBuf::from(std::env::var(ENV_SOCKET).expect("socket"));
    let mut commands = std::io::stdin().lock().lines();
    match mode.as_str() {
        // Many slow clients: open them all (each asks once), then on every
        // `round` ask again on each and say how many were answered.
        "slow" => {
            let mut conns = Vec::new();
            let (mut served, mut refused) = (0, 0);
            for _ in 0..MAX_CLIENTS + 12 {
                let mut c = connect(&socket);
                let _ = c.write_all(&status_frame());
                match read_response(&mut c) {
                    Some(Response::Status(_)) => served += 1,
                    _ => refused += 1,
                }
                conns.push(c);
            }
            println!("HELPER opened served {served} refused {refused}");
            while let Some(Ok(_)) = commands.next() {
                let mut alive = 0;
                for c in &mut conns {
                    if c.write_all(&status_frame()).is_ok() && matches!(read_response(c), Some(Response::Status(_))) {
                        alive += 1;
                    }
                }
                println!("HELPER round alive {alive}");
            }
        }
        // Holds the memory for large requests: frames whose last byte is
        // never sent, as large as the daemon takes, then smaller ones, until
        // it refuses. On `check`, sends each last byte and counts answers.
        "hold" => {
            let mut held = Vec::new();
            let mut bytes = 0;
            let first_byte = std::time::Instant::now();
            for size in [16 * MIB, MIB, 400 * 1024] {
                for _ in 0..MAX_CLIENTS_PER_UID {
                    if held.len() + 1 >= MAX_CLIENTS_PER_UID {
                        break;
                    }
                    let frame = infer_frame(size);
                    let mut c = connect(&socket);
                    // Refused unread: the daemon closes, the write fails.
                    if c.write_all(&frame[..frame.len() - 1]).is_err() {
                        let refusal = error_of(read_response(&mut c));
                        assert!(matches!(refusal, Some((ErrorCode::Busy, _))), "refused how? {refusal:?}");
                        break;
                    }
                    bytes += size;
                    held.push((c, *frame.last().unwrap()));
                }
            }
            println!("HELPER held {} bytes {bytes} ms {}", held.len(), first_byte.elapsed().as_millis());
            if let Some(Ok(_)) = commands.next() {
                let mut answered = 0;
                for (c, last) in &mut held {
                    // Any answer proves the upload was still held (a closed
                    // one reads as None): bad request for the junk image, or
                    // busy when the image memory is taken at that moment.
                    if c.write_all(&[*last]).is_ok()
                        && matches!(error_of(read_response(c)), Some((ErrorCode::BadRequest | ErrorCode::Busy, _)))
                    {
                        answered += 1;
                    }
                }
                println!("HELPER answered {answered}");
            }
        }
        other => panic!("unknown helper mode {other}"),
    }
}

fn daemon_with_users(users: &Users, camera: bool) -> (DaemonConfig, Daemon) {
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{}", free_port()));
    cfg.camera_off = !camera;
    cfg.fps = 1.0;
    let d = Daemon::start(&cfg);
    users.open_socket(&cfg);
    (cfg, d)
}

#[test]
fn slow_clients_of_one_uid_cannot_lock_out_status() {
    let users = Users::create(2);
    let (cfg, d) = daemon_with_users(&users, false);
    let sock = cfg.socket();
    let mut mallory = users.helper(0, "slow", &sock);
    let opened = mallory.next();
    // More clients than the daemon has slots, each asking once: every one
    // was served, each replacing the same uid's oldest idle connection.
    assert_eq!(num(&opened, "served"), MAX_CLIENTS + 12, "{opened:?}");
    for _ in 0..3 {
        mallory.send("round");
        let round = mallory.next();
        let alive = num(&round, "alive");
        assert!((1..=MAX_CLIENTS_PER_UID).contains(&alive), "one uid holds {alive} slots: {round:?}");
        // Another group member and root are served between the rounds.
        let (code, out, err) = users.sparkctl(1, &sock, &["status", "--json"]);
        assert_eq!(code, 0, "status as another uid behind {alive} slow clients: {err}");
        assert!(out.contains("\"device_id\""), "{out}");
        let (code, _, err) = sparkctl(&sock, &["status", "--json"]);
        assert_eq!(code, 0, "status as root: {err}");
    }
    drop(mallory);
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn oversized_frames_and_huge_images_are_refused_unread_and_memory_stays_bounded() {
    let users = Users::create(1);
    let (cfg, d) = daemon_with_users(&users, true);
    let sock = cfg.socket();
    wait_for(Duration::from_secs(60), || (status_json(&sock)["inference"]["total"].as_u64() >= Some(1)).then_some(()))
        .unwrap_or_else(|| panic!("no inference; log:\n{}", d.log_text()));
    let demo = repo().join("models/demo/astronaut.png");
    let (code, _, err) = sparkctl(&sock, &["infer", demo.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "a real image: {err}");
    // Idle memory, then count the peak from here.
    let (_, idle_kib) = hwm_and_rss_kib(d.pid());
    std::fs::write(format!("/proc/{}/clear_refs", d.pid()), "5").expect("resetting the peak RSS (needs root)");

    // A frame declaring more than its command may carry is answered from
    // its first bytes: nothing else of it is ever sent.
    for (prefix, want) in [
        (r#"{"v":1,"request":{"cmd":"status""#, "a `status` request may be at most 65536 bytes"),
        (r#"{"v":1,"request":{"cmd":"update-apply-chunk","chunk":""#, "a `update-apply-chunk` request may be at most"),
        (&"[".repeat(256)[..], "must be an infer or update-apply-chunk request"),
    ] {
        let mut c = connect(&sock);
        c.write_all(&declared(16 * MIB, prefix)).unwrap();
        let (code, message) = error_of(read_response(&mut c)).unwrap_or_else(|| panic!("no answer to {prefix}"));
        assert_eq!(code, ErrorCode::TooLarge, "{message}");
        assert!(message.contains(want) && message.contains(&(16 * MIB).to_string()), "{message}");
    }

    // Whole 16 MiB frames, three at once, and ones whose image is a JSON
    // tree: each answered `bad-request` (not an image) or `busy`.
    let tree = {
        let head = r#"{"v":1,"request":{"cmd":"infer","name":"x","image_hex":["#;
        let n = (16 * MIB - head.len() - 4) / 2;
        let body = format!("{head}{}0]}}}}", "0,".repeat(n));
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body.as_bytes());
        f
    };
    let frames = [infer_frame(16 * MIB), infer_frame(16 * MIB), infer_frame(16 * MIB), tree.clone(), tree];
    let codes: Vec<ErrorCode> = std::thread::scope(|scope| {
        let tasks: Vec<_> = frames
            .iter()
            .map(|f| {
                scope.spawn(|| {
                    let mut c = connect(&sock);
                    let _ = c.write_all(f);
                    error_of(read_response(&mut c)).map(|e| e.0)
                })
            })
            .collect();
        tasks.into_iter().map(|t| t.join().unwrap().expect("an answer to a 16 MiB frame")).collect()
    });
    assert!(codes.iter().all(|c| matches!(c, ErrorCode::BadRequest | ErrorCode::Busy)), "{codes:?}");

    // An image declaring 8192×8192 (a few hundred bytes) is refused from
    // its header, twice at once, naming both sizes.
    let bomb = cfg.dir.path().join("bomb.png");
    std::fs::write(&bomb, png_declaring(8192, 8192)).unwrap();
    run("chmod", &["0644", bomb.to_str().unwrap()]);
    let outs: Vec<_> = std::thread::scope(|scope| {
        let t: Vec<_> =
            (0..2).map(|_| scope.spawn(|| users.sparkctl(0, &sock, &["infer", bomb.to_str().unwrap()]))).collect();
        t.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (code, _, err) in outs {
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("8192×8192") && err.contains("67.1 megapixels") && err.contains("at most 12.0"), "{err}");
    }

    let (peak_kib, now_kib) = hwm_and_rss_kib(d.pid());
    assert!(
        peak_kib <= idle_kib + 64 * 1024,
        "peak RSS {peak_kib} KiB under abuse; idle was {idle_kib} KiB (bound: idle + 64 MiB); now {now_kib} KiB"
    );
    // Still serving.
    let (code, _, err) = sparkctl(&sock, &["infer", demo.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    eprintln!("control_abuse: idle {idle_kib} KiB, peak under abuse {peak_kib} KiB, after {now_kib} KiB");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn an_admins_update_apply_gets_through_while_others_hold_the_large_request_memory() {
    let users = Users::create(1);
    let lab = Lab::new();
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{}", free_port()));
    cfg.camera_off = true;
    cfg.extra = format!("[update]\ntrusted_keys_file = \"{}\"\n", lab.public.display());
    let d = Daemon::start(&cfg);
    users.open_socket(&cfg);
    let sock = cfg.socket();

    // A config update big enough that its first chunk is a large frame.
    let text = cfg.dir.path().join("big.toml");
    let mut toml = std::fs::read_to_string(cfg.dir.path().join("sparkd.toml")).unwrap();
    for i in 0..6000 {
        toml.push_str(&format!("# padding line {i:05} so the artifact spans two chunks ...........\n"));
    }
    assert!(toml.len() > spark_edge::update::CHUNK_MAX_BYTES, "{}", toml.len());
    std::fs::write(&text, toml).unwrap();
    let bundle = lab.sign_config_file(&text, "1.0.1");

    let mut mallory = users.helper(0, "hold", &sock);
    let held = mallory.next();
    // How long the oldest held upload has been open, as of now.
    let held_at = std::time::Instant::now() - Duration::from_millis(num(&held, "ms") as u64);
    assert!(num(&held, "held") >= 2 && num(&held, "bytes") >= 32 * MIB, "{held:?}");
    let (code, out, err) = sparkctl(&sock, &["update", "apply", s(&bundle), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert!(code == 0 && v["state"] == "active", "update apply behind held uploads: {code} {v}\n{err}");
    // The uploads were still held all along: each is answered now. Only
    // provable while they are inside the daemon's whole-request deadline
    // (a slow machine may take longer than that to apply the update; the
    // point of the test, the admin's update getting through, holds anyway).
    let in_deadline = held_at.elapsed() + Duration::from_secs(1) < spark_edge::control::server::READ_DEADLINE;
    mallory.send("check");
    let answered = mallory.next();
    if in_deadline {
        assert_eq!(num(&answered, "answered"), num(&held, "held"), "{answered:?} of {held:?}");
    } else {
        eprintln!("update apply took past the read deadline: held uploads not checked ({answered:?})");
    }
    drop(mallory);
    assert!(d.terminate(Duration::from_secs(15)).success());
}

/// A PNG that declares `w`×`h` but holds no pixels (IHDR, an empty IDAT).
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in bytes {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}
