//! Fault test (c): the VPN goes away and comes back while records keep coming.
//!
//! The test builds its own two-host network out of two network namespaces:
//! `spk-dev-<pid>` runs the real `sparkd`, `spk-cloud-<pid>` runs Mosquitto
//! and a `mosquitto_sub` consumer; a veth pair joins them (10.213.0.1/30 ↔
//! 10.213.0.2/30), and a userspace WireGuard tunnel (`wireguard-go` on both
//! sides, 10.213.1.1 ↔ 10.213.1.2, persistent keepalive 1 s) runs over it. The
//! broker listens only on the cloud's tunnel address (plus a loopback
//! listener inside the cloud namespace for the consumer), so records can only
//! arrive through the tunnel. `sparkd` gates on its WireGuard interface with
//! `handshake_max_age_secs = 5`.
//!
//! Faults, three cycles: the cloud side's interface goes down (the peer falls
//! silent: the gate closes on handshake age), the device's own interface goes
//! down (the gate closes on `IFF_UP`), and the cloud side again. Each time the
//! test checks `sparkctl link --json` says why, that records pile up in the
//! outbox and nothing is published; then the link comes back and drains. At
//! the end every seq of every stream, up to the last one accepted, reached
//! the consumer.
//!
//! WireGuard is required: when the tunnel cannot be built (no `wireguard-go`
//! or `wg`, no `/dev/net/tun`, no handshake) the test fails and says why;
//! `scripts/setup.sh` installs both tools. It used to fall back to a plain
//! veth, which let the handshake gate regress with the test still green.
//! `SPARK_FAULT_VPN_KEEP=1` keeps the logs (sparkd, mosquitto,
//! wireguard-go, consumer) and config.
//!
//! Needs root (namespaces). Every process and namespace is removed by a drop
//! guard, also when an assertion fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_no_gaps, sparkctl, sparkd_bin, wait_for};

const DEV_UNDERLAY: &str = "10.213.0.1";
const CLOUD_UNDERLAY: &str = "10.213.0.2";
const DEV_TUNNEL: &str = "10.213.1.1";
const CLOUD_TUNNEL: &str = "10.213.1.2";
const WG_PORT: u16 = 51820;
const MAX_AGE_S: u64 = 5;

/// Writes past the harness's capture, so the progress shows in every run.
fn banner(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Runs a command to completion; `Err` carries its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let desc = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{desc}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{desc}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

fn in_ns(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]);
    c
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Dev,
    Cloud,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The network under the tunnel breaks (the cloud end of the veth goes
    /// down): the tunnel interface stays up, the peer falls silent. Back up,
    /// the old session carries on without a new handshake.
    UnderlayCut,
    /// The device's gated interface is taken down (`IFF_UP` clears).
    DeviceDown,
    /// The cloud's WireGuard process dies; it is restarted and re-configured,
    /// which makes a fresh handshake.
    CloudRestart,
}

/// Everything the test started; torn down on drop, in reverse.
struct Lab {
    pid: u32,
    dev: String,
    cloud: String,
    veth_dev: String,
    veth_cloud: String,
    wg_dev: String,
    wg_cloud: String,
    dir: tempfile::TempDir,
    /// (name, child): stopped in reverse order on drop.
    children: Vec<(String, Child)>,
    sockets: Vec<PathBuf>,
    /// Private key file and public key per side.
    wg_keys: BTreeMap<Side, (PathBuf, String)>,
}

impl Lab {
    fn new() -> Self {
        let pid = std::process::id();
        let short = pid % 1000;
        Lab {
            pid,
            dev: format!("spk-dev-{pid}"),
            cloud: format!("spk-cloud-{pid}"),
            veth_dev: format!("vd{pid}"),
            veth_cloud: format!("vc{pid}"),
            wg_dev: format!("wgd{short}"),
            wg_cloud: format!("wgc{short}"),
            dir: tempfile::tempdir().expect("tempdir"),
            children: Vec::new(),
            sockets: Vec::new(),
            wg_keys: BTreeMap::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.path(name)).expect("log file")
    }

    fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<(), String> {
        let log = self.log_file(&format!("{name}.log"));
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child =
            cmd.stdin(Stdio::null()).stdout(log).stderr(err).spawn().map_err(|e| format!("starting {name}: {e}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut Child> {
        self.children.iter_mut().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// SIGTERM, a moment to exit, then SIGKILL.
    fn stop(&mut self, name: &str) {
        let Some(i) = self.children.iter().position(|(n, _)| n == name) else { return };
        let (_, mut child) = self.children.remove(i);
        stop_child(&mut child);
    }

    fn underlay(&self) -> Result<(), String> {
        for ns in [&self.dev, &self.cloud] {
            let _ = ip(&["netns", "del", ns]); // a leftover of a killed run with our pid
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link",
            "add",
            &self.veth_dev,
            "netns",
            &self.dev,
            "type",
            "veth",
            "peer",
            "name",
            &self.veth_cloud,
            "netns",
            &self.cloud,
        ])?;
        ip(&["-n", &self.dev, "addr", "add", &format!("{DEV_UNDERLAY}/30"), "dev", &self.veth_dev])?;
        ip(&["-n", &self.cloud, "addr", "add", &format!("{CLOUD_UNDERLAY}/30"), "dev", &self.veth_cloud])?;
        ip(&["-n", &self.dev, "link", "set", &self.veth_dev, "up"])?;
        ip(&["-n", &self.cloud, "link", "set", &self.veth_cloud, "up"])?;
        Ok(())
    }

    /// Builds the WireGuard tunnel and waits for its first handshake.
    fn wireguard(&mut self) -> Result<(), String> {
        for prog in ["wireguard-go", "wg"] {
            run(Command::new("sh").args(["-c", &format!("command -v {prog}")]))
                .map_err(|_| format!("{prog} is not installed (scripts/setup.sh installs it)"))?;
        }
        if !Path::new("/dev/net/tun").exists() {
            return Err("no /dev/net/tun".into());
        }
        for side in [Side::Dev, Side::Cloud] {
            let private = run(Command::new("wg").arg("genkey"))?;
            let mut pubkey = Command::new("wg")
                .arg("pubkey")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("wg pubkey: {e}"))?;
            pubkey
                .stdin
                .take()
                .ok_or("wg pubkey: no stdin")?
                .write_all(private.as_bytes())
                .map_err(|e| format!("wg pubkey: {e}"))?;
            let out = pubkey.wait_with_output().map_err(|e| format!("wg pubkey: {e}"))?;
            let key_file = self.path(&format!("{side:?}.key"));
            std::fs::write(&key_file, &private).map_err(|e| e.to_string())?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
            self.wg_keys.insert(side, (key_file, String::from_utf8_lossy(&out.stdout).trim().to_string()));
        }
        self.wg_side(Side::Dev)?;
        self.wg_side(Side::Cloud)?;
        let (dev_ns, wg_dev) = (self.dev.clone(), self.wg_dev.clone());
        wait_for(Duration::from_secs(10), || {
            let out = run(in_ns(&dev_ns, "wg").args(["show", &wg_dev, "latest-handshakes"])).ok()?;
            out.split_whitespace().nth(1).and_then(|t| t.parse::<u64>().ok()).filter(|&t| t > 0)
        })
        .ok_or("no WireGuard handshake within 10 s")?;
        Ok(())
    }

    /// Starts `wireguard-go` on one side and configures it (again, after a
    /// restart: the interface is new and empty).
    fn wg_side(&mut self, side: Side) -> Result<(), String> {
        let (ns, wg_if, addr, peer, peer_underlay, peer_tunnel) = match side {
            Side::Dev => (self.dev.clone(), self.wg_dev.clone(), DEV_TUNNEL, Side::Cloud, CLOUD_UNDERLAY, CLOUD_TUNNEL),
            Side::Cloud => {
                (self.cloud.clone(), self.wg_cloud.clone(), CLOUD_TUNNEL, Side::Dev, DEV_UNDERLAY, DEV_TUNNEL)
            }
        };
        let name = format!("wireguard-go-{side:?}");
        let sock = PathBuf::from(format!("/var/run/wireguard/{wg_if}.sock"));
        let _ = std::fs::remove_file(&sock);
        if !self.sockets.contains(&sock) {
            self.sockets.push(sock.clone());
        }
        let mut cmd = in_ns(&ns, "wireguard-go");
        cmd.args(["-f", &wg_if]).env("LOG_LEVEL", "error");
        self.spawn(&name, cmd)?;
        wait_for(Duration::from_secs(5), || {
            if let Some(Ok(Some(st))) = self.child_mut(&name).map(|c| c.try_wait()) {
                return Some(Err(format!("wireguard-go ({side:?}) exited: {st}")));
            }
            sock.exists().then_some(Ok(()))
        })
        .unwrap_or_else(|| Err(format!("wireguard-go ({side:?}) made no control socket")))?;
        let (key_file, _) = self.wg_keys.get(&side).ok_or("no key")?.clone();
        let (_, peer_pub) = self.wg_keys.get(&peer).ok_or("no key")?.clone();
        run(in_ns(&ns, "wg").args([
            "set",
            &wg_if,
            "listen-port",
            &WG_PORT.to_string(),
            "private-key",
            &key_file.display().to_string(),
            "peer",
            &peer_pub,
            "endpoint",
            &format!("{peer_underlay}:{WG_PORT}"),
            "allowed-ips",
            &format!("{peer_tunnel}/32"),
            "persistent-keepalive",
            "1",
        ]))?;
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &wg_if])?;
        ip(&["-n", &ns, "link", "set", &wg_if, "up"])?;
        Ok(())
    }

    /// Mosquitto in the cloud namespace: `listen_addr:1883` for the device,
    /// `127.0.0.1:local_port` for the consumer.
    fn broker(&mut self, listen_addr: &str, local_port: u16) -> Result<(), String> {
        let conf = self.path("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nallow_anonymous true\nuser root\nmax_queued_messages 0\n\
                 persistence false\nlog_dest none\nlistener 1883 {listen_addr}\nlistener {local_port} 127.0.0.1\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut cmd = in_ns(&self.cloud, "mosquitto");
        cmd.arg("-c").arg(&conf);
        self.spawn("mosquitto", cmd)?;
        let (cloud, port) = (self.cloud.clone(), local_port.to_string());
        wait_for(Duration::from_secs(10), || {
            run(in_ns(&cloud, "mosquitto_pub").args(["-h", "127.0.0.1", "-p", &port, "-t", "spark/probe", "-m", "{}"]))
                .ok()
        })
        .map(|_| ())
        .ok_or_else(|| format!("mosquitto did not start; log: {}", self.read("mosquitto.log")))
    }

    /// `mosquitto_sub` in the cloud namespace, persistent session, QoS 1;
    /// waits until a probe message published through the broker arrives.
    fn consumer(&mut self, local_port: u16) -> Result<(), String> {
        let port = local_port.to_string();
        let id = format!("fault-vpn-consumer-{}", self.pid);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.cloud, "stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port]);
        cmd.args(["-q", "1", "-c", "-i", &id, "-t", "spark/#", "-v"]);
        self.spawn("consumer", cmd)?;
        let (cloud, log) = (self.cloud.clone(), self.path("consumer.log"));
        wait_for(Duration::from_secs(10), || {
            let _ = run(in_ns(&cloud, "mosquitto_pub").args(["-h", "127.0.0.1", "-p", &port, "-q", "1"]).args([
                "-t",
                "spark/probe",
                "-m",
                "{}",
            ]));
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read_to_string(&log).ok().filter(|t| t.contains("spark/probe")).map(|_| ())
        })
        .ok_or_else(|| format!("consumer never saw its probe; log: {}", self.read("consumer.log")))
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

fn stop_child(child: &mut Child) {
    // Never signal a pid that was already reaped: it may be someone else's now.
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).stderr(Stdio::null()).status();
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            stop_child(&mut child);
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
        for ns in [&self.dev, &self.cloud] {
            let _ = ip(&["netns", "del", ns]);
        }
        if std::env::var_os("SPARK_FAULT_VPN_KEEP").is_some()
            && let Ok(spare) = tempfile::tempdir()
        {
            let kept = std::mem::replace(&mut self.dir, spare).keep();
            banner(&format!("fault_vpn: logs and config kept in {}", kept.display()));
        }
    }
}

/// What `mosquitto_sub -v` wrote: seqs per stream.
fn consumed(lab: &Lab) -> BTreeMap<String, Vec<u64>> {
    let mut by_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in lab.read("consumer.log").lines() {
        let Some((topic, payload)) = line.split_once(' ') else { continue };
        if topic.ends_with("/status") || topic == "spark/probe" {
            continue;
        }
        let Ok(json) = serde_json::from_str::<serde_json::Value>(payload) else { continue };
        let stream = topic.rsplit('/').next().unwrap_or_default().to_string();
        if let Some(seq) = json.get("seq").and_then(|s| s.as_u64()) {
            by_stream.entry(stream).or_default().push(seq);
        }
    }
    by_stream
}

fn consumed_total(lab: &Lab) -> usize {
    consumed(lab).values().map(Vec::len).sum()
}

fn ctl_json(socket: &Path, cmd: &str) -> serde_json::Value {
    let (code, out, err) = sparkctl(socket, &[cmd, "--json"]);
    assert_eq!(code, 0, "sparkctl {cmd} --json failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("sparkctl {cmd} --json is not JSON ({e}): {out}"))
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn records_pile_up_while_the_vpn_is_down_and_all_arrive_after_it_returns() {
    let started = Instant::now();
    assert!(is_root(), "fault_vpn needs root: it builds network namespaces (run the tests as root, as CI does)");
    let mut lab = Lab::new();
    lab.underlay().expect("building the veth underlay");

    lab.wireguard().unwrap_or_else(|e| {
        panic!(
            "fault_vpn needs a WireGuard tunnel and could not build one: {e}\n\
             (scripts/setup.sh installs wireguard-go and wireguard-tools)\n\
             wireguard-go (device side): {}\nwireguard-go (cloud side): {}",
            lab.read("wireguard-go-Dev.log"),
            lab.read("wireguard-go-Cloud.log"),
        )
    });
    banner("fault_vpn: WireGuard tunnel up (first handshake seen)");
    let (gate_if, broker_addr, max_age) = (lab.wg_dev.clone(), CLOUD_TUNNEL, MAX_AGE_S);
    let faults = [Fault::UnderlayCut, Fault::DeviceDown, Fault::CloudRestart];

    let local_port = common::free_port();
    lab.broker(broker_addr, local_port).expect("starting mosquitto");
    lab.consumer(local_port).expect("starting the consumer");

    // sparkd in the device namespace; its control socket is a file, so
    // sparkctl reaches it from here.
    let socket = lab.path("sparkd.sock");
    let config = lab.path("sparkd.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"fault-vpn\"\nstate_dir = \"{state}\"\nsocket_path = \"{sock}\"\n\
             [camera]\nsource = \"none\"\n\
             [telemetry]\ninterval_secs = 0.1\n\
             [load]\nevents_per_sec = 200\n\
             [mqtt]\nurl = \"mqtt://{broker_addr}:1883\"\nkeep_alive_secs = 5\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n\
             [link]\nvpn_interface = \"{gate_if}\"\nhandshake_max_age_secs = {max_age}\ncheck_interval_ms = 200\n",
            state = lab.path("state").display(),
            sock = socket.display(),
        ),
    )
    .expect("write config");
    let mut cmd = in_ns(&lab.dev, &sparkd_bin().display().to_string());
    cmd.args(["run", "--config"]).arg(&config).env("RUST_LOG", "info").env_remove("JOURNAL_STREAM");
    lab.spawn("sparkd", cmd).expect("starting sparkd");
    let sparkd_log = |lab: &Lab| lab.read("sparkd.log");
    wait_for(Duration::from_secs(20), || std::os::unix::net::UnixStream::connect(&socket).ok())
        .unwrap_or_else(|| panic!("sparkd did not open its socket; log:\n{}", sparkd_log(&lab)));

    // Records flow through the tunnel.
    wait_for(Duration::from_secs(20), || (consumed_total(&lab) >= 50).then_some(())).unwrap_or_else(|| {
        panic!("no records arrived; link {}; log:\n{}", ctl_json(&socket, "link"), sparkd_log(&lab))
    });
    let link = ctl_json(&socket, "link");
    assert_eq!(link["vpn_up"], true, "{link}");
    assert_eq!(link["vpn_interface"], gate_if.as_str(), "{link}");
    assert_eq!(link["handshake_source"], "uapi", "wireguard-go answers over its UAPI socket: {link}");
    assert!(link["handshake_age_s"].as_u64().is_some(), "{link}");
    banner(&format!("fault_vpn: records flowing; sparkctl link --json: {link}"));

    for (cycle, &fault) in faults.iter().enumerate() {
        let cycle = cycle + 1;
        let t0 = Instant::now();
        match fault {
            Fault::UnderlayCut => ip(&["-n", &lab.cloud, "link", "set", &lab.veth_cloud, "down"]).map(drop),
            Fault::DeviceDown => ip(&["-n", &lab.dev, "link", "set", &gate_if, "down"]).map(drop),
            Fault::CloudRestart => {
                lab.stop("wireguard-go-Cloud");
                Ok(())
            }
        }
        .expect("injecting the fault");

        // The gate closes, and says why.
        let closed_within = Duration::from_secs(max_age + 5);
        let link = wait_for(closed_within, || {
            let l = ctl_json(&socket, "link");
            (l["vpn_up"] == false).then_some(l)
        })
        .unwrap_or_else(|| {
            panic!("cycle {cycle}: gate still open {closed_within:?} after {fault:?}: {}", ctl_json(&socket, "link"))
        });
        let reason = link["vpn_last_error"].as_str().unwrap_or_default().to_string();
        match fault {
            Fault::UnderlayCut | Fault::CloudRestart => {
                assert!(reason.starts_with("no handshake for "), "cycle {cycle}: {link}");
                let age = link["handshake_age_s"].as_u64().unwrap_or(0);
                assert!(age >= MAX_AGE_S, "cycle {cycle}: handshake age {age} s < {MAX_AGE_S} s: {link}");
                assert!(
                    t0.elapsed() >= Duration::from_secs(MAX_AGE_S - 2),
                    "cycle {cycle}: closed before the peer could be stale"
                );
            }
            Fault::DeviceDown => {
                assert_eq!(reason, format!("interface {gate_if} is administratively down"), "cycle {cycle}: {link}");
            }
        }
        assert!(link["vpn_down_since_ms"].as_u64().is_some(), "cycle {cycle}: {link}");

        // Records pile up; nothing is published.
        std::thread::sleep(Duration::from_millis(400));
        let q0 = ctl_json(&socket, "queue");
        let n0 = consumed_total(&lab);
        std::thread::sleep(Duration::from_secs(2));
        let q1 = ctl_json(&socket, "queue");
        let n1 = consumed_total(&lab);
        assert!(
            u(&q1, "pending") >= u(&q0, "pending") + 10,
            "cycle {cycle}: outbox did not grow while the VPN was down: {} -> {}",
            u(&q0, "pending"),
            u(&q1, "pending")
        );
        assert_eq!(u(&q1, "published"), u(&q0, "published"), "cycle {cycle}: published while the VPN was down");
        assert_eq!(n1, n0, "cycle {cycle}: the consumer received records while the VPN was down");
        assert_eq!(ctl_json(&socket, "link")["vpn_up"], false);
        let piled = u(&q1, "pending");

        // Back up: the gate opens and the backlog drains.
        match fault {
            Fault::UnderlayCut => ip(&["-n", &lab.cloud, "link", "set", &lab.veth_cloud, "up"]).map(drop),
            Fault::DeviceDown => ip(&["-n", &lab.dev, "link", "set", &gate_if, "up"]).map(drop),
            Fault::CloudRestart => lab.wg_side(Side::Cloud),
        }
        .expect("ending the fault");
        let link = wait_for(Duration::from_secs(15), || {
            let l = ctl_json(&socket, "link");
            (l["vpn_up"] == true).then_some(l)
        })
        .unwrap_or_else(|| panic!("cycle {cycle}: gate did not reopen: {}", ctl_json(&socket, "link")));
        assert!(link["vpn_down_since_ms"].is_null() && link["vpn_last_error"].is_null(), "cycle {cycle}: {link}");
        let mut age_after = link["handshake_age_s"].as_u64();
        if fault == Fault::CloudRestart {
            // The gate may open on the restarted peer's first packets (its
            // handshake initiation is received traffic) a moment before the
            // handshake completes and its time is recorded: wait for it.
            let fresh = wait_for(Duration::from_secs(15), || {
                let l = ctl_json(&socket, "link");
                l["handshake_age_s"].as_u64().filter(|&a| a < MAX_AGE_S)
            });
            assert!(
                fresh.is_some(),
                "cycle {cycle}: the restart made no fresh handshake: {}",
                ctl_json(&socket, "link")
            );
            age_after = fresh;
        }
        wait_for(Duration::from_secs(20), || (u(&ctl_json(&socket, "queue"), "pending") < piled / 4).then_some(()))
            .unwrap_or_else(|| {
                panic!("cycle {cycle}: backlog of {piled} did not drain: {}", ctl_json(&socket, "queue"))
            });
        banner(&format!(
            "fault_vpn: cycle {cycle} {fault:?}: closed with {reason:?}; {piled} records piled up; \
             reopened (handshake age {age_after:?} s) and drained; {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
    }

    // Everything accepted so far must reach the consumer.
    let q = ctl_json(&socket, "queue");
    let last: BTreeMap<String, u64> = q["streams"]
        .as_object()
        .expect("streams")
        .iter()
        .map(|(name, s)| (name.clone(), u(s, "next_seq").saturating_sub(1)))
        .collect();
    assert!(last.get("telemetry").copied().unwrap_or(0) > 0, "no telemetry accepted: {q}");
    let covered = |got: &BTreeMap<String, Vec<u64>>| {
        last.iter().all(|(stream, &upto)| {
            let have: BTreeSet<u64> = got.get(stream).map(|v| v.iter().copied().collect()).unwrap_or_default();
            (1..=upto).all(|s| have.contains(&s))
        })
    };
    if wait_for(Duration::from_secs(30), || covered(&consumed(&lab)).then_some(())).is_none() {
        let got = consumed(&lab);
        for (stream, &upto) in &last {
            let have: BTreeSet<u64> = got.get(stream).map(|v| v.iter().copied().collect()).unwrap_or_default();
            let missing: Vec<u64> = (1..=upto).filter(|s| !have.contains(s)).take(20).collect();
            eprintln!("{stream}: accepted up to {upto}, missing {missing:?}");
        }
        panic!("not every accepted record arrived; queue {}; log:\n{}", ctl_json(&socket, "queue"), sparkd_log(&lab));
    }

    // sparkd stops cleanly.
    let pid = lab.child_mut("sparkd").expect("sparkd child").id();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let status =
        wait_for(Duration::from_secs(15), || lab.child_mut("sparkd").and_then(|c| c.try_wait().ok().flatten()))
            .unwrap_or_else(|| panic!("sparkd did not exit within 15 s of SIGTERM; log:\n{}", sparkd_log(&lab)));
    assert!(status.success(), "sparkd exited with {status}; log:\n{}", sparkd_log(&lab));

    let got = consumed(&lab);
    let mut summary = Vec::new();
    for (stream, seqs) in &got {
        let max = assert_no_gaps(seqs, stream);
        summary.push(format!("{stream} 1..={max} ({} received)", seqs.len()));
        assert!(max >= last.get(stream).copied().unwrap_or(0));
    }
    let log = sparkd_log(&lab);
    assert!(!log.contains("panicked"), "sparkd panicked:\n{log}");
    banner(&format!(
        "fault_vpn: passed over WireGuard in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        summary.join(", ")
    ));
}
