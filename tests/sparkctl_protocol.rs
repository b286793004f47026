//! The control socket of the real `sparkd` under hostile and crowded use:
//! garbage, truncated and oversized frames get an error or a closed
//! connection, never a crash or a hang; many clients at once are all served;
//! slow clients do not block anyone.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use spark_edge::control::protocol::{
    self, ErrorCode, MAX_REQUEST_BYTES, MAX_UPLOAD_BYTES, PROTOCOL_VERSION, Request, RequestFrame, Response,
    ResponseFrame,
};

fn daemon() -> (DaemonConfig, Daemon) {
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{}", free_port()));
    cfg.camera_off = true;
    cfg.telemetry_secs = 1.0;
    let d = Daemon::start(&cfg);
    (cfg, d)
}

fn connect(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Reads one response frame, or `None` when the daemon closed the connection.
fn read_response(s: &mut UnixStream) -> Option<Response> {
    let mut header = [0u8; 4];
    match s.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof || e.kind() == std::io::ErrorKind::ConnectionReset => {
            return None;
        }
        Err(e) => panic!("daemon neither answered nor closed within the deadline: {e}"),
    }
    let len = u32::from_be_bytes(header) as usize;
    assert!(len < 1 << 20, "response length {len}");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("response body");
    let frame: ResponseFrame = serde_json::from_slice(&body).expect("response frame is JSON");
    assert_eq!(frame.v, PROTOCOL_VERSION);
    Some(frame.response)
}

fn error_code(r: Option<Response>) -> Option<ErrorCode> {
    match r {
        Some(Response::Error(e)) => Some(e.code),
        Some(other) => panic!("expected an error, got {other:?}"),
        None => None,
    }
}

fn status_ok(socket: &Path) {
    let mut s = connect(socket);
    match protocol::call(&mut s, &Request::Status) {
        Ok(Response::Status(st)) => assert_eq!(st.device_id, "test-dev"),
        other => panic!("status after abuse: {other:?}"),
    }
}

fn frame(len: u32, body: &[u8]) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn malformed_frames_get_errors_and_the_daemon_keeps_answering() {
    let (cfg, d) = daemon();
    let sock = cfg.socket();

    // Well-framed nonsense: each gets a named error on the same connection.
    let png = {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(1, 1).write_to(&mut out, image::ImageFormat::Png).unwrap();
        hex::encode(out.into_inner())
    };
    let no_engine = format!(r#"{{"v":1,"request":{{"cmd":"infer","name":"x","image_hex":"{png}"}}}}"#);
    let cases: [(&[u8], ErrorCode); 8] = [
        (b"not json", ErrorCode::BadRequest),
        (b"{}", ErrorCode::BadRequest),
        (br#"{"v":1,"request":{"cmd":"reboot"}}"#, ErrorCode::BadRequest),
        (br#"{"v":9,"request":{"cmd":"status"}}"#, ErrorCode::UnsupportedVersion),
        (br#"{"v":1,"request":{"cmd":"infer","name":"x"}}"#, ErrorCode::BadRequest),
        // A payload that is not hex, or not an image, is a bad request
        // whatever the daemon runs (the header is checked first).
        (br#"{"v":1,"request":{"cmd":"infer","name":"x","image_hex":"zz"}}"#, ErrorCode::BadRequest),
        (br#"{"v":1,"request":{"cmd":"infer","name":"x","image_hex":"00"}}"#, ErrorCode::BadRequest),
        // A real image, but no camera in this daemon: no engine to run it.
        (no_engine.as_bytes(), ErrorCode::Unavailable),
    ];
    let mut s = connect(&sock);
    for (body, want) in cases {
        s.write_all(&frame(body.len() as u32, body)).unwrap();
        assert_eq!(error_code(read_response(&mut s)), Some(want), "{}", String::from_utf8_lossy(body));
    }
    // ... and the connection still serves a real request afterwards.
    assert!(matches!(protocol::call(&mut s, &Request::Queue), Ok(Response::Queue(_))));

    // Oversized lengths are refused before anything is read.
    for len in [u32::MAX, (MAX_UPLOAD_BYTES + 1) as u32] {
        let mut s = connect(&sock);
        s.write_all(&len.to_be_bytes()).unwrap();
        assert_eq!(error_code(read_response(&mut s)), Some(ErrorCode::TooLarge));
        assert!(read_response(&mut s).is_none(), "connection closed after an unframeable length");
    }
    // A small request padded past the small-request bound is too large.
    let pad = " ".repeat(MAX_REQUEST_BYTES);
    let body = format!(r#"{{"v":1,"request":{{"cmd":"status"}}{pad}}}"#);
    let mut s = connect(&sock);
    s.write_all(&frame(body.len() as u32, body.as_bytes())).unwrap();
    assert_eq!(error_code(read_response(&mut s)), Some(ErrorCode::TooLarge));

    // Truncated frames: the client goes away mid-header or mid-body.
    for bytes in [vec![0u8, 0], frame(100, b"{\"v\":1,"), frame(10, b"")] {
        let mut s = connect(&sock);
        s.write_all(&bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(read_response(&mut s).is_none(), "a truncated frame gets no answer, just the close");
    }
    status_ok(&sock);

    // Random bytes, many times: always an error or a close, never a hang.
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let started = Instant::now();
    for i in 0..200 {
        let len = rng.usize(0..600);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if i % 3 == 0 && bytes.len() >= 4 {
            // A plausible length header in front of the junk.
            let n = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&n.to_be_bytes());
        }
        let mut s = connect(&sock);
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        while let Some(r) = read_response(&mut s) {
            assert!(matches!(r, Response::Error(_)), "junk answered with {r:?}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60), "junk took {:?}", started.elapsed());
    status_ok(&sock);
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn fifty_clients_at_once_are_all_served() {
    let (cfg, d) = daemon();
    let sock = cfg.socket();
    let started = Instant::now();
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut s = connect(&sock);
                for _ in 0..5 {
                    let req = if i % 2 == 0 { Request::Status } else { Request::Queue };
                    match protocol::call(&mut s, &req) {
                        Ok(Response::Status(_)) | Ok(Response::Queue(_)) => {}
                        other => panic!("client {i}: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert!(started.elapsed() < Duration::from_secs(20), "50 clients took {:?}", started.elapsed());
    // The CLI too, 50 processes at once.
    let procs: Vec<_> = (0..50)
        .map(|_| {
            std::process::Command::new(sparkctl_bin())
                .arg("--socket")
                .arg(&sock)
                .args(["status", "--json"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in procs {
        let out = p.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["device_id"], "test-dev");
    }
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn slow_clients_do_not_block_others_and_are_dropped_after_the_deadline() {
    let (cfg, d) = daemon();
    let sock = cfg.socket();
    // Silent clients, half-header clients, and half-body clients.
    let mut slow = Vec::new();
    for i in 0..30 {
        let mut s = connect(&sock);
        match i % 3 {
            0 => {}
            1 => s.write_all(&[0, 0]).unwrap(),
            _ => {
                let whole = protocol::encode(&RequestFrame { v: 1, request: Request::Status }).unwrap();
                s.write_all(&whole[..whole.len() / 2]).unwrap();
            }
        }
        slow.push(s);
    }
    // A client that asks and never reads its answers.
    let mut deaf = connect(&sock);
    let req = protocol::encode(&RequestFrame { v: 1, request: Request::Status }).unwrap();
    for _ in 0..50 {
        deaf.write_all(&req).unwrap();
    }
    // Everyone else is served at once.
    for _ in 0..5 {
        let t0 = Instant::now();
        let (code, _, err) = sparkctl(&sock, &["status", "--json"]);
        assert_eq!(code, 0, "{err}");
        assert!(t0.elapsed() < Duration::from_secs(2), "status took {:?} behind slow clients", t0.elapsed());
    }
    // The read deadline (10 s) closes the slow ones.
    let t0 = Instant::now();
    for s in &mut slow {
        assert!(read_response(s).is_none(), "slow client got an answer");
    }
    assert!(t0.elapsed() < Duration::from_secs(14), "slow clients held for {:?}", t0.elapsed());
    status_ok(&sock);
    drop(deaf);
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn a_full_house_of_idle_clients_makes_room_instead_of_locking_everyone_out() {
    let (cfg, d) = daemon();
    let sock = cfg.socket();
    let max = spark_edge::control::server::MAX_CLIENTS;
    // Fill every slot with an idle connection (each is served by the daemon).
    let mut held = Vec::new();
    for _ in 0..max {
        let mut s = connect(&sock);
        assert!(matches!(protocol::call(&mut s, &Request::Status), Ok(Response::Status(_))));
        held.push(s);
    }
    // One more is served, not refused: the oldest idle connection gives way
    // (src/control/admission.rs), so idle clients cannot lock anyone out.
    let (code, _, err) = sparkctl(&sock, &["status"]);
    assert_eq!(code, 0, "{err}");
    let mut extra = connect(&sock);
    assert!(matches!(protocol::call(&mut extra, &Request::Status), Ok(Response::Status(_))));
    // The evicted ones were closed by the daemon (EOF), the newest still work.
    assert!(read_response(&mut held[0]).is_none(), "the oldest idle connection was not closed to make room");
    let last = held.last_mut().unwrap();
    assert!(
        matches!(protocol::call(last, &Request::Status), Ok(Response::Status(_))),
        "the newest idle one was closed"
    );
    drop(held);
    assert!(d.terminate(Duration::from_secs(15)).success());
}
