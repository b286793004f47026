//! Test harness: real Mosquitto brokers, the real `sparkd` binary, and an
//! MQTT consumer that records every message.
#![allow(dead_code)]

pub mod fleet;
pub mod pki;
pub mod rabbitmq;
pub mod tmux;
pub mod walk;
pub mod witness;
pub mod yuv;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sparkd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sparkd"))
}

pub fn sparkctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sparkctl"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wait_for_every(timeout, Duration::from_millis(50), f)
}

/// [`wait_for`] polling every `every` (benches that time the wait poll
/// faster).
pub fn wait_for_every<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// SIGTERM, then wait up to `timeout` for the exit; SIGKILL if it did not
/// come (and say so on stderr: a bench goes on, a test reads the log).
pub fn sigterm_and_wait(child: &mut Child, what: &str, timeout: Duration) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    if wait_for_every(timeout, Duration::from_millis(20), || child.try_wait().ok().flatten()).is_none() {
        eprintln!("{what} ignored SIGTERM for {timeout:?}: killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A Mosquitto broker on a free loopback port, killed on drop.
pub struct Broker {
    pub port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, "autosave_interval 1")
    }

    /// A broker that writes its persistence file after every change instead
    /// of once a second. Mosquitto sends PUBACK before it persists: a SIGKILL
    /// loses what it acknowledged since its last save and had not yet handed
    /// to a subscriber. That loss is the broker's, and with a save each second
    /// a loaded machine made it visible in the broker-kill test (tens of
    /// records); saving on every change shrinks the window to one pass of
    /// its event loop, so the test measures sparkd, not Mosquitto.
    pub fn start_saving_every_change() -> Self {
        Self::start_with(free_port(), "autosave_on_changes true\nautosave_interval 1")
    }

    fn start_with(port: u16, autosave: &str) -> Self {
        // Persistence keeps consumer sessions across broker restarts in the
        // fault tests.
        Self::start_config(port, |dir| {
            format!("persistence true\npersistence_location {}/\n{autosave}\nlog_dest none\n", dir.display())
        })
    }

    /// A broker on `port` whose config is the lines every rig needs
    /// (listener, anonymous, `user root`, `max_queued_messages 0`) followed
    /// by `rest(dir)`, `dir` being the broker's own folder (for
    /// `persistence_location`, `log_dest file`). Bridge sections go last.
    pub fn start_config(port: u16, rest: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // `user root`: as root, mosquitto would otherwise drop to `mosquitto`
        // and fail on root-owned files. `max_queued_messages 0`: no broker-side
        // drops of a fast QoS 1 stream.
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\nmax_queued_messages 0\n{}",
            rest(dir.path())
        );
        std::fs::write(dir.path().join("mosquitto.conf"), text).expect("write conf");
        Self::spawn(port, dir)
    }

    /// A new broker on `port` reusing a previous broker's persistence folder.
    pub fn restart_in(port: u16, dir: tempfile::TempDir) -> Self {
        Self::spawn(port, dir)
    }

    /// Starts mosquitto with `dir/mosquitto.conf` and waits for its port.
    fn spawn(port: u16, dir: tempfile::TempDir) -> Self {
        let child = launch_mosquitto(&dir.path().join("mosquitto.conf"));
        let b = Broker { port, child, dir };
        wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok())
            .expect("mosquitto did not start");
        b
    }

    /// Starts this broker again, same config, port and persistence, after
    /// [`Broker::kill`] or [`Broker::stop`] (SIGKILLs it first if it still
    /// runs). Waits up to 2 minutes: loading a large persistence file takes
    /// a while.
    pub fn restart(&mut self) {
        self.kill();
        self.child = launch_mosquitto(&self.dir.path().join("mosquitto.conf"));
        let port = self.port;
        wait_for_every(Duration::from_secs(120), Duration::from_millis(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .unwrap_or_else(|| panic!("mosquitto did not reopen port {port}"));
    }

    /// Clean stop (SIGTERM): Mosquitto writes its database on the way out.
    pub fn stop(&mut self) {
        sigterm_and_wait(&mut self.child, &format!("mosquitto on port {}", self.port), Duration::from_secs(120));
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGKILL (no save) and reap; a no-op on a broker already stopped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto -c conf`, output discarded.
fn launch_mosquitto(conf: &Path) -> Child {
    Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto not installed: run scripts/setup.sh")
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub json: serde_json::Value,
}

/// An MQTT subscription on a thread of its own: subscribes to `filter` at
/// QoS 1 with a persistent session (again after every reconnect), hands
/// every publish to `on_publish`, and reconnects on its own while the
/// broker is down. The thread ends at its next event after the drop.
pub struct Subscriber {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// Returns once the first SUBACK arrived.
    pub fn start(
        port: u16,
        client_id: &str,
        filter: &str,
        mut on_publish: impl FnMut(rumqttc::Publish) + Send + 'static,
    ) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_clean_session(false);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut conn) = rumqttc::Client::new(opts, 64);
        let (s, r, filter) = (stop.clone(), ready.clone(), filter.to_string());
        let thread = std::thread::spawn(move || {
            for ev in conn.iter() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => r.store(true, Ordering::Relaxed),
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => on_publish(p),
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        wait_for(Duration::from_secs(20), || ready.load(Ordering::Relaxed).then_some(()))
            .expect("consumer did not subscribe");
        Subscriber { stop, thread: Some(thread) }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // The connection thread ends on its next event (keep-alive at most).
        drop(self.thread.take());
    }
}

/// Subscribes to `spark/#` at QoS 1 with a persistent session and keeps
/// every message. Reconnects on its own while the broker is down.
pub struct Consumer {
    pub msgs: Arc<Mutex<Vec<Msg>>>,
    _sub: Subscriber,
}

impl Consumer {
    pub fn start(port: u16, filter: &str) -> Self {
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let id = format!("test-consumer-{}", std::process::id() as u64 * 1000 + port as u64);
        let m = msgs.clone();
        let sub = Subscriber::start(port, &id, filter, move |p| {
            if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                let mut m = m.lock().unwrap();
                // A batch `{"records": [...]}` is unpacked record by record.
                match json.get("records").and_then(|r| r.as_array()) {
                    Some(records) => m.extend(records.iter().map(|r| Msg { topic: p.topic.clone(), json: r.clone() })),
                    None => m.push(Msg { topic: p.topic.clone(), json }),
                }
            }
        });
        Consumer { msgs, _sub: sub }
    }

    pub fn snapshot(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// Records (not status) of `stream`, in arrival order.
    pub fn records(&self, stream: &str) -> Vec<serde_json::Value> {
        self.snapshot()
            .into_iter()
            .filter(|m| m.topic.ends_with(&format!("/{stream}")) && m.json.get("seq").is_some())
            .map(|m| m.json)
            .collect()
    }

    pub fn seqs(&self, stream: &str) -> Vec<u64> {
        self.records(stream).iter().filter_map(|r| r["seq"].as_u64()).collect()
    }

    /// Distinct seqs per stream (cheap for large runs).
    pub fn seq_sets(&self) -> BTreeMap<String, std::collections::BTreeSet<u64>> {
        let mut out: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for m in self.msgs.lock().unwrap().iter() {
            if let (Some(s), Some(q)) =
                (m.json.get("stream").and_then(|s| s.as_str()), m.json.get("seq").and_then(|q| q.as_u64()))
            {
                out.entry(s.to_string()).or_default().insert(q);
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.msgs.lock().unwrap().len()
    }
}

/// Asserts every seq in 1..=max is present (duplicates allowed); returns max.
pub fn assert_no_gaps(seqs: &[u64], what: &str) -> u64 {
    let set: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    let max = set.iter().next_back().copied().unwrap_or(0);
    let missing: Vec<u64> = (1..=max).filter(|s| !set.contains(s)).take(20).collect();
    assert!(missing.is_empty(), "{what}: missing seqs {missing:?} (max {max}, {} received)", seqs.len());
    max
}

/// A config for `sparkd` in a temp dir, pointing at `broker_url`.
pub struct DaemonConfig {
    pub dir: tempfile::TempDir,
    /// Appended after the `[mqtt]` table: further tables.
    pub extra: String,
    /// Extra keys inside `[mqtt]`.
    pub mqtt_extra: String,
    /// Extra keys inside `[model]`.
    pub model_extra: String,
    pub broker_url: String,
    pub fps: f64,
    pub telemetry_secs: f64,
    pub images: PathBuf,
    pub manifest: PathBuf,
    /// No camera (and so no model): telemetry and synthetic load only.
    pub camera_off: bool,
    /// `[[camera]]` tables written instead of the one `[camera]` table.
    pub camera_tables: Option<String>,
}

impl DaemonConfig {
    pub fn new(broker_url: &str) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            extra: String::new(),
            mqtt_extra: String::new(),
            model_extra: String::new(),
            broker_url: broker_url.to_string(),
            fps: 5.0,
            telemetry_secs: 0.5,
            images: repo().join("models/demo"),
            manifest: repo().join("models/centerface.toml"),
            camera_off: false,
            camera_tables: None,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sparkd.sock")
    }

    pub fn write(&self) -> PathBuf {
        let camera = self.camera_tables.clone().unwrap_or_else(|| {
            format!(
                "[camera]\nsource = \"{src}\"\nreplay_dir = \"{img}\"\nfps = {fps:.3}\n",
                src = if self.camera_off { "none" } else { "replay" },
                img = self.images.display(),
                fps = self.fps,
            )
        });
        let text = format!(
            "device_id = \"test-dev\"\nstate_dir = \"{state}\"\nsocket_path = \"{sock}\"\n\
             {camera}\
             [model]\nmanifest = \"{man}\"\nonnxruntime_library = \"{ort}\"\nintra_threads = 1\n{model_extra}\
             [telemetry]\ninterval_secs = {tel:.3}\n\
             [mqtt]\nurl = \"{url}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\nkeep_alive_secs = 5\n{mqtt_extra}{extra}",
            state = self.state_dir().display(),
            sock = self.socket().display(),
            man = self.manifest.display(),
            ort = repo().join("deps/onnxruntime/libonnxruntime.so").display(),
            tel = self.telemetry_secs,
            url = self.broker_url,
            mqtt_extra = self.mqtt_extra,
            model_extra = self.model_extra,
            extra = self.extra,
        );
        let p = self.dir.path().join("sparkd.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }
}

/// A running `sparkd`.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(cfg: &DaemonConfig) -> Self {
        Self::start_with_env(cfg, &[])
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status();
    }

    /// SIGTERM and wait (up to `timeout`) for the exit status.
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("sparkd did not exit within {timeout:?} of SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sparkctl ARGS` against `socket`; (exit code, stdout, stderr).
pub fn sparkctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(sparkctl_bin());
    cmd.arg("--socket").arg(socket).args(args);
    exit_and_output(cmd)
}

/// `sparkctl ARGS` as `user` (with the groups /etc/group gives it), via runuser.
pub fn sparkctl_as(user: &str, socket: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--"]).arg(sparkctl_bin()).arg("--socket").arg(socket).args(args);
    exit_and_output(cmd)
}

fn exit_and_output(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sparkctl ARGS --json`: asserts the exit code and parses stdout.
pub fn sparkctl_json(socket: &Path, args: &[&str], want_code: i32) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = sparkctl(socket, &all);
    assert_eq!(code, want_code, "sparkctl {args:?}: exit {code}\nstdout: {out}\nstderr: {err}");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("sparkctl {args:?} --json is not one JSON object ({e}): {out}"))
}

pub fn status_json(socket: &Path) -> serde_json::Value {
    let (code, out, err) = sparkctl(socket, &["status", "--json"]);
    assert_eq!(code, 0, "sparkctl status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
}

/// Count of records per stream in a map, for messages.
pub fn count_by_stream(c: &Consumer) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for msg in c.snapshot() {
        if let Some(s) = msg.json.get("stream").and_then(|s| s.as_str()) {
            *m.entry(s.to_string()).or_insert(0) += 1;
        }
    }
    m
}

pub fn queue_json(socket: &Path) -> serde_json::Value {
    let (code, out, err) = sparkctl(socket, &["queue", "--json"]);
    assert_eq!(code, 0, "sparkctl queue failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("queue --json is not JSON ({e}): {out}"))
}

/// Waits until every record the outbox held when the wait began has been
/// acknowledged. A daemon whose load generator keeps producing never shows an
/// empty outbox for long, so the test is per stream: streams drain in order,
/// so the `pending` records are the newest ones, and the backlog is gone once
/// `next_seq - pending` has reached the `next_seq` seen at the start.
pub fn wait_drained(socket: &Path, timeout: Duration) -> serde_json::Value {
    let start = queue_json(socket);
    let backlog_end = |name: &str| start["streams"][name]["next_seq"].as_u64().unwrap_or(0);
    wait_for(timeout, || {
        let q = queue_json(socket);
        let drained = q["pending"].as_u64() == Some(0)
            || q["streams"].as_object().is_some_and(|streams| {
                streams.iter().all(|(name, s)| {
                    let next = s["next_seq"].as_u64().unwrap_or(0);
                    let pending = s["pending"].as_u64().unwrap_or(u64::MAX);
                    next.saturating_sub(pending) >= backlog_end(name)
                })
            });
        drained.then_some(q)
    })
    .unwrap_or_else(|| panic!("outbox backlog {start} not drained within {timeout:?}: {}", queue_json(socket)))
}

/// The consumer check every fault test ends with: for each stream, every
/// accepted seq (1..next_seq) arrived, except the oldest `dropped` ones that
/// retention counted (retention drops oldest first, so they are a prefix).
pub fn assert_all_accepted_arrived(queue: &serde_json::Value, consumer: &Consumer) {
    // The broker may still be handing a long backlog to the consumer: wait
    // (up to a minute) until nothing is missing, then check for real.
    let _ = wait_for(Duration::from_secs(60), || missing_count(queue, consumer).eq(&0).then_some(()));
    let sets = consumer.seq_sets();
    for (name, s) in queue["streams"].as_object().expect("streams") {
        let last = s["next_seq"].as_u64().unwrap_or(1).saturating_sub(1);
        let dropped = s["dropped"].as_u64().unwrap_or(0);
        let empty = std::collections::BTreeSet::new();
        let got = sets.get(name).unwrap_or(&empty);
        let missing: Vec<u64> = (dropped + 1..=last).filter(|q| !got.contains(q)).collect();
        assert!(
            missing.is_empty(),
            "stream {name}: {} of seqs {}..={last} missing (first: {:?}); dropped {dropped}",
            missing.len(),
            dropped + 1,
            &missing[..missing.len().min(10)]
        );
    }
}

/// The consumer check of fault tests that SIGKILL the broker (see
/// [`witness`]): every accepted seq arrived, or the broker acknowledged it
/// (and then lost it: Mosquitto acknowledges before it persists). A seq that
/// did neither was deleted by sparkd without a PUBACK: that fails. Returns
/// how many acknowledged seqs the broker lost.
pub fn assert_accepted_arrived_or_broker_acked(
    queue: &serde_json::Value,
    consumer: &Consumer,
    acked: &witness::Acked,
) -> usize {
    let _ = wait_for(Duration::from_secs(20), || missing_count(queue, consumer).eq(&0).then_some(()));
    let sets = consumer.seq_sets();
    let mut broker_lost = 0;
    for (name, s) in queue["streams"].as_object().expect("streams") {
        let last = s["next_seq"].as_u64().unwrap_or(1).saturating_sub(1);
        let dropped = s["dropped"].as_u64().unwrap_or(0);
        let (got, acks) = (sets.get(name), acked.get(name));
        let missing: Vec<u64> = (dropped + 1..=last).filter(|q| !got.is_some_and(|g| g.contains(q))).collect();
        let unacked: Vec<u64> = missing.iter().copied().filter(|q| !acks.is_some_and(|a| a.contains(q))).collect();
        assert!(
            unacked.is_empty(),
            "stream {name}: {} of seqs {}..={last} neither arrived nor were acknowledged by the broker \
             (first: {:?}); dropped {dropped}",
            unacked.len(),
            dropped + 1,
            &unacked[..unacked.len().min(10)]
        );
        broker_lost += missing.len();
    }
    broker_lost
}

fn missing_count(queue: &serde_json::Value, consumer: &Consumer) -> usize {
    let sets = consumer.seq_sets();
    let mut n = 0;
    for (name, s) in queue["streams"].as_object().into_iter().flatten() {
        let last = s["next_seq"].as_u64().unwrap_or(1).saturating_sub(1);
        let dropped = s["dropped"].as_u64().unwrap_or(0);
        let got = sets.get(name);
        n += (dropped + 1..=last).filter(|q| !got.is_some_and(|g| g.contains(q))).count();
    }
    n
}

/// Memory fields of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`, ...), 0 when absent.
pub fn proc_status_kib<const N: usize>(pid: i32, names: [&str; N]) -> [u64; N] {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    names.map(|name| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// Resident memory of a process: (VmRSS, RssAnon) in KiB.
pub fn rss_kib(pid: i32) -> (u64, u64) {
    let [rss, anon] = proc_status_kib(pid, ["VmRSS:", "RssAnon:"]);
    (rss, anon)
}

/// Files of a Mosquitto TLS listener (PEM).
pub struct TlsListener<'a> {
    pub cafile: &'a Path,
    pub certfile: &'a Path,
    pub keyfile: &'a Path,
    /// Mutual TLS: clients must present a certificate signed by `cafile`.
    pub require_certificate: bool,
}

/// A broker with a TLS listener for the device and a plain listener on
/// another loopback port for the test's consumer (`broker.port`).
pub struct TlsBroker {
    pub broker: Broker,
    pub tls_port: u16,
}

impl TlsBroker {
    /// `mqtts://localhost:<tls_port>` (the test server certificates are
    /// issued for `localhost` and 127.0.0.1).
    pub fn url(&self) -> String {
        format!("mqtts://localhost:{}", self.tls_port)
    }

    /// Mosquitto's own log (connection and TLS errors).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.broker.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Broker {
    pub fn start_tls(tls: &TlsListener) -> TlsBroker {
        let (plain, tls_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        // Listener options (cafile, ...) apply to the listener line above them.
        let text = format!(
            "per_listener_settings false\nallow_anonymous true\nuser root\nmax_queued_messages 0\n\
             log_dest file {log}\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             listener {plain} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate {req}\n",
            log = dir.path().join("mosquitto.log").display(),
            ca = tls.cafile.display(),
            cert = tls.certfile.display(),
            key = tls.keyfile.display(),
            req = tls.require_certificate,
        );
        std::fs::write(&conf, text).expect("write conf");
        let child = launch_mosquitto(&conf);
        let b = TlsBroker { broker: Broker { port: plain, child, dir }, tls_port };
        wait_for(Duration::from_secs(10), || {
            (std::net::TcpStream::connect(("127.0.0.1", plain)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok())
            .then_some(())
        })
        .unwrap_or_else(|| panic!("mosquitto (TLS) did not start; log:\n{}", b.log_text()));
        b
    }
}

impl Daemon {
    /// [`Daemon::start`] with extra environment variables (e.g.
    /// `CREDENTIALS_DIRECTORY`, as systemd's `LoadCredential=` sets it).
    pub fn start_with_env(cfg: &DaemonConfig, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let path = cfg.write();
        let logf =
            std::fs::OpenOptions::new().create(true).append(true).open(cfg.dir.path().join("sparkd.log")).expect("log");
        let mut cmd = Command::new(sparkd_bin());
        cmd.args(["run", "--config"]).arg(&path).env("RUST_LOG", "info").env_remove("JOURNAL_STREAM");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(Stdio::null()).stderr(logf).spawn().expect("spawn sparkd");
        let d = Daemon { child, log: cfg.dir.path().join("sparkd.log") };
        let sock = cfg.socket();
        wait_for(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(&sock).ok())
            .unwrap_or_else(|| panic!("sparkd did not open its socket; log:\n{}", d.log_text()));
        d
    }
}

/// `DIR/home-file/.asoundrc` making ALSA's default capture PCM read `infile` (a
/// file, or a FIFO a test feeds in real time); returns that home.
pub fn file_pcm_home(dir: &Path, infile: &Path) -> PathBuf {
    let home = dir.join("home-file");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join(".asoundrc"),
        format!(
            "pcm.filein {{ type file slave.pcm \"null\" file \"/dev/null\" infile \"{}\" format \"raw\" }}\n\
             pcm.!default {{ type plug slave.pcm \"filein\" }}\n",
            infile.display()
        ),
    )
    .unwrap();
    home
}

/// A `sparkd` of `cfg` under another device id (`device`), its log in
/// `sparkd.log` beside the config: one of several devices of a fleet test.
pub fn spawn_sparkd_as(cfg: &DaemonConfig, device: &str) -> Child {
    let text = std::fs::read_to_string(cfg.write())
        .expect("read the written config")
        .replace("device_id = \"test-dev\"", &format!("device_id = \"{device}\""));
    let path = cfg.dir.path().join("device.toml");
    std::fs::write(&path, text).expect("write the device config");
    let log = std::fs::File::create(cfg.dir.path().join("sparkd.log")).expect("create sparkd.log");
    Command::new(sparkd_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sparkd")
}
