//! `sparkctl metrics` and the node_exporter textfile against a real daemon
//! and broker: the text passes `promtool check metrics`, the counters move
//! as records flow, and the textfile is only ever seen whole.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `promtool` from Debian's `prometheus` package (scripts/setup.sh installs
/// it). Missing is a failure, never a skip: the check is the point.
fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("promtool not found in PATH: run scripts/setup.sh (it installs Debian's `prometheus` package)")
    })
}

/// `promtool check metrics` on `text` (stdin); panics with its findings.
fn assert_promtool_passes(text: &str) {
    use std::io::Write;
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- text ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `series` (name with its labels, as printed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn metrics(socket: &Path) -> String {
    let (code, out, err) = sparkctl(socket, &["metrics"]);
    assert_eq!(code, 0, "sparkctl metrics: {err}");
    out
}

/// A daemon without a camera (no model to load): telemetry and synthetic
/// events only, so records flow fast on a loaded machine.
fn config(broker: &Broker, extra: &str) -> DaemonConfig {
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true;
    cfg.telemetry_secs = 0.2;
    cfg.extra = format!("[load]\nevents_per_sec = 20\n{extra}");
    cfg.write();
    cfg
}

const APPENDED_EVENTS: &str = r#"spark_outbox_records_appended_total{stream="events"}"#;
const ACKED: &str = "spark_uplink_acked_records_total";

#[test]
fn sparkctl_metrics_passes_promtool_and_its_counters_move_as_records_flow() {
    let broker = Broker::start();
    let cfg = config(&broker, "");
    let daemon = Daemon::start(&cfg);
    let first = wait_for(Duration::from_secs(60), || {
        let (code, out, _) = sparkctl(&cfg.socket(), &["metrics"]);
        (code == 0 && value(&out, ACKED).is_some_and(|v| v > 0.0)).then_some(out)
    })
    .unwrap_or_else(|| panic!("no acked records in the metrics within 60 s; log:\n{}", daemon.log_text()));
    assert_promtool_passes(&first);
    assert_eq!(first.lines().last(), Some("# EOF"));
    for series in [
        r#"spark_build_info{device_id="test-dev""#,
        "# TYPE spark_records_dropped_total counter",
        r#"spark_records_dropped_total{stream="events",reason="retention"} 0"#,
        "spark_link_broker_connected 1",
        "# TYPE spark_engine_fallbacks_total counter",
        "# TYPE spark_outbox_pending_bytes gauge",
    ] {
        assert!(first.contains(series), "missing {series:?} in\n{first}");
    }
    let (events0, acked0) = (value(&first, APPENDED_EVENTS).unwrap(), value(&first, ACKED).unwrap());
    let later = wait_for(Duration::from_secs(60), || {
        let m = metrics(&cfg.socket());
        (value(&m, APPENDED_EVENTS)? > events0 + 10.0 && value(&m, ACKED)? > acked0 + 10.0).then_some(m)
    });
    let later = later.unwrap_or_else(|| panic!("counters did not move; first:\n{first}"));
    assert_promtool_passes(&later);
    // The same figures as the status the technician reads.
    let status = status_json(&cfg.socket());
    let published_now = status["queue"]["published"].as_f64().unwrap();
    assert!(published_now >= value(&later, "spark_uplink_published_records_total").unwrap());
}

#[test]
fn the_textfile_is_replaced_whole_every_interval_and_never_seen_partial() {
    let broker = Broker::start();
    let textfile_dir = tempfile::tempdir().unwrap();
    let extra =
        format!("[metrics]\ntextfile_dir = \"{}\"\ntextfile_interval_secs = 1\n", textfile_dir.path().display());
    let cfg = config(&broker, &extra);
    let daemon = Daemon::start(&cfg);
    let path = textfile_dir.path().join("spark.prom");
    wait_for(Duration::from_secs(60), || path.exists().then_some(()))
        .unwrap_or_else(|| panic!("no {} within 60 s; log:\n{}", path.display(), daemon.log_text()));

    // Read as fast as possible while the daemon rewrites it: every read is a
    // whole exposition, and several different versions are seen.
    let mut versions: Vec<String> = Vec::new();
    let (mut reads, deadline) = (0u64, Instant::now() + Duration::from_secs(30));
    while versions.len() < 4 {
        assert!(Instant::now() < deadline, "only {} versions of the textfile in 30 s", versions.len());
        let text = std::fs::read_to_string(&path).expect("the textfile never disappears once written");
        reads += 1;
        assert!(text.ends_with("# EOF\n"), "read {reads} saw a partial file ({} bytes):\n{text}", text.len());
        assert!(text.starts_with("# HELP spark_build_info "), "read {reads} saw a file without its start");
        if versions.last() != Some(&text) {
            versions.push(text);
        }
    }
    let (first, last) = (&versions[0], versions.last().unwrap());
    assert_promtool_passes(last);
    assert!(
        value(last, APPENDED_EVENTS).unwrap() > value(first, APPENDED_EVENTS).unwrap(),
        "the events counter did not move between the first and the last version"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644, "node_exporter (another user) must be able to read it");
    // Only spark.prom (and at most the temp file being written) in the folder.
    for entry in std::fs::read_dir(textfile_dir.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(name == "spark.prom" || name == ".spark.prom.tmp", "unexpected file {name}");
    }
    drop(daemon);
}

/// With the camera on, every inferred frame is timed into the latency
/// histogram: its `_count` follows the frames inferred, and promtool accepts it.
#[test]
fn inferred_frames_fill_the_latency_histogram() {
    let broker = Broker::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.fps = 5.0;
    cfg.write();
    let daemon = Daemon::start(&cfg);
    let count = "spark_inference_latency_seconds_count";
    let m = wait_for(Duration::from_secs(90), || {
        let (code, out, _) = sparkctl(&cfg.socket(), &["metrics"]);
        (code == 0 && value(&out, count).is_some_and(|v| v >= 3.0)).then_some(out)
    })
    .unwrap_or_else(|| panic!("no timed frames in the metrics within 90 s; log:\n{}", daemon.log_text()));
    assert_promtool_passes(&m);
    assert!(m.contains("# TYPE spark_inference_latency_seconds histogram"), "{m}");
    let inf = value(&m, r#"spark_inference_latency_seconds_bucket{le="+Inf"}"#).expect("a +Inf bucket");
    assert_eq!(inf, value(&m, count).unwrap(), "+Inf holds every observation");
    assert!(value(&m, "spark_inference_latency_seconds_sum").unwrap() > 0.0);
}

/// One HTTP/1.1 request to `port`; the whole answer.
fn http(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    out
}

/// `[metrics] listen`: GET /metrics on the loopback port answers the same
/// text as `sparkctl metrics` (promtool accepts it), other paths and
/// methods are refused, and the port is bound to loopback only.
#[test]
fn metrics_are_served_on_the_configured_loopback_port_only() {
    let broker = Broker::start();
    let port = free_port();
    let cfg = config(&broker, &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let daemon = Daemon::start(&cfg);
    let answer = wait_for(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        let a = http(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
        (value(&a, APPENDED_EVENTS).is_some_and(|v| v > 0.0)).then_some(a)
    })
    .unwrap_or_else(|| panic!("no metrics on port {port}; log:\n{}", daemon.log_text()));
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    assert_promtool_passes(body);
    assert!(http(port, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(port, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(http(port, "nonsense\r\n\r\n").starts_with("HTTP/1.1 400"));
    // Bound to 127.0.0.1, not to every interface.
    let listening = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    assert!(listening.lines().any(|l| l.split_whitespace().nth(1) == Some(local.as_str())), "not on 127.0.0.1:{port}");
    let any = format!("00000000:{port:04X}");
    assert!(!listening.lines().any(|l| l.split_whitespace().nth(1) == Some(any.as_str())), "listening on 0.0.0.0");
    drop(daemon);
}
