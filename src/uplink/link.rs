//! Link monitor: decides whether the uplink may drain (the VPN gate).
//!
//! Owns watching the configured WireGuard interface and publishing `true`
//! (open) / `false` (closed) on a watch channel, plus the VPN half of
//! [`LinkState`](crate::state::LinkState). It does not own the broker
//! connection (that is [`crate::uplink`], which drains only while the gate is
//! open) and never changes the interface: it only reads.
//!
//! The gate is open only while the interface exists, is administratively up
//! (`IFF_UP` in `/sys/class/net/<if>/flags`: WireGuard's `operstate` stays
//! `unknown`), and the peer has shown life within `handshake_max_age_secs`.
//! Life is the latest completed handshake, or, because WireGuard re-keys only
//! every two minutes on a healthy link, growth of the peer's authenticated
//! `rx_bytes` seen by this monitor (persistent keepalive makes it grow every
//! few seconds). A peer that never completed a handshake, or a device whose
//! handshake nobody can tell us, keeps the gate closed.
//!
//! The handshake is read without running any program: first from the kernel
//! over generic netlink (`WG_CMD_GET_DEVICE` of family `wireguard`), then from
//! the userspace implementation's UAPI socket `/var/run/wireguard/<if>.sock`
//! (wireguard-go, boringtun). `handshake_max_age_secs = 0` turns the handshake
//! requirement off (interface-only gate, for a VPN that is not WireGuard).
//!
//! Layout: a pure core (parsing, [`decide`], [`Assessor`]) that does no IO
//! and is unit-tested; the probes ([`probe`], [`netlink_device`],
//! [`uapi_device`]) that do blocking reads; and [`spawn_gate`], which runs a
//! probe every `check_interval_ms` on the blocking pool and applies the
//! result. Transitions are logged once, not on every check.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::config::LinkConfig;
use crate::record::now_ms;
use crate::state::Shared;

/// `IFF_UP` from `<linux/if.h>`.
pub const IFF_UP: u32 = 0x1;
/// Where WireGuard userspace implementations put their control sockets.
pub const UAPI_DIR: &str = "/var/run/wireguard";
/// Longest UAPI answer accepted (a device with thousands of peers stays far below).
const UAPI_MAX_BYTES: usize = 4 << 20;
/// Deadline of one socket exchange (netlink or UAPI).
const IO_TIMEOUT: Duration = Duration::from_millis(800);

// ---------------------------------------------------------------------------
// The gate task
// ---------------------------------------------------------------------------

/// Starts the monitor and returns the gate: `true` while the uplink may drain.
///
/// With an empty `vpn_interface` the gate is always open. Otherwise it starts
/// closed and a task on `rt` probes the interface every `check_interval_ms`
/// until `shutdown` turns `true` (or its sender is dropped).
pub fn spawn_gate(
    rt: &tokio::runtime::Runtime,
    cfg: &LinkConfig,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    if cfg.vpn_interface.is_empty() {
        shared.update_link(|l| {
            l.vpn_up = true;
            l.vpn_interface = None;
            l.handshake_age_s = None;
            l.handshake_source = None;
            l.vpn_down_since_ms = None;
            l.vpn_last_error = None;
        });
        let (tx, rx) = watch::channel(true);
        // The gate never changes: keep the sender alive for the life of the
        // process so `changed()` never fires spuriously.
        std::mem::forget(tx);
        return rx;
    }
    let iface = cfg.vpn_interface.clone();
    let max_age_s = cfg.handshake_max_age_secs;
    let interval = Duration::from_millis(cfg.check_interval_ms.max(100));
    let since = now_ms();
    shared.update_link(|l| {
        l.vpn_up = false;
        l.vpn_interface = Some(iface.clone());
        l.vpn_down_since_ms = Some(since);
        l.vpn_last_error = Some("not checked yet".into());
    });
    let (tx, rx) = watch::channel(false);
    rt.spawn(async move {
        let mut assessor = Assessor::new(iface.clone(), max_age_s);
        let mut logged = TransitionLog::default();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let name = iface.clone();
            let probed = tokio::time::timeout(
                IO_TIMEOUT * 3,
                tokio::task::spawn_blocking(move || probe(&name, Path::new(UAPI_DIR))),
            )
            .await;
            let p = match probed {
                Ok(Ok(p)) => p,
                // A probe that hangs or dies is a link we cannot vouch for.
                Ok(Err(join)) => Probe::failed(format!("link probe failed: {join}")),
                Err(_) => Probe::failed(format!("link probe took longer than {:?}", IO_TIMEOUT * 3)),
            };
            let out = assessor.assess(&p, SystemTime::now(), Instant::now());
            apply(&shared, &tx, &iface, &out, &mut logged);
        }
    });
    rx
}

/// What was last logged, so each transition is logged once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Logged {
    open: bool,
    reason: Option<ClosedKind>,
    source: Option<String>,
}

/// Transition logs: each change once, and at most one line per
/// [`LOG_EVERY`] when the link flaps; skipped lines are counted in the next.
#[derive(Debug, Default)]
struct TransitionLog {
    last: Option<Logged>,
    last_line: Option<Instant>,
    suppressed: u64,
}

const LOG_EVERY: Duration = Duration::from_secs(1);

/// A log line to write now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LogLine {
    /// Open/closed or the reason changed (else only the source did, or this
    /// is the settled state after skipped lines).
    state_changed: bool,
    /// Lines skipped since the last one.
    suppressed: u64,
}

impl TransitionLog {
    /// Records the state seen at `now`; says whether to log it.
    fn note(&mut self, next: Logged, now: Instant) -> Option<LogLine> {
        let prev = self.last.replace(next.clone());
        let state_changed = prev.as_ref().map(|p| (p.open, p.reason)) != Some((next.open, next.reason));
        let changed = state_changed || prev.as_ref().map(|p| &p.source) != Some(&next.source);
        let due = self.last_line.is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        if changed && !due {
            self.suppressed += 1;
            return None;
        }
        // After a burst of skipped lines, the settled state is logged once.
        let settle = due && self.suppressed > 0;
        if !(changed || settle) {
            return None;
        }
        self.last_line = Some(now);
        Some(LogLine { state_changed, suppressed: std::mem::take(&mut self.suppressed) })
    }
}

fn apply(shared: &Shared, tx: &watch::Sender<bool>, iface: &str, out: &Assessment, log: &mut TransitionLog) {
    let open = out.decision.is_ok();
    let error = out.decision.as_ref().err().map(|c| c.message(iface, &out.source_detail));
    let now_unix_ms = now_ms();
    shared.update_link(|l| {
        l.vpn_up = open;
        l.vpn_interface = Some(iface.to_string());
        l.handshake_age_s = out.handshake_age_s;
        l.handshake_source = Some(out.source_detail.clone());
        if open {
            l.vpn_down_since_ms = None;
        } else if l.vpn_down_since_ms.is_none() {
            l.vpn_down_since_ms = Some(now_unix_ms);
        }
        l.vpn_last_error = error.clone();
    });
    tx.send_if_modified(|v| std::mem::replace(v, open) != open);

    let next = Logged {
        open,
        reason: out.decision.as_ref().err().map(Closed::kind),
        source: out.source.map(|s| s.as_str().to_string()),
    };
    let Some(line) = log.note(next, Instant::now()) else { return };
    let (state_changed, suppressed) = (line.state_changed, line.suppressed);
    match &error {
        None if state_changed || suppressed > 0 => tracing::info!(
            interface = %iface,
            handshake_age_s = out.handshake_age_s,
            source = %out.source_detail,
            suppressed,
            "VPN link up; uplink may drain"
        ),
        Some(reason) if state_changed || suppressed > 0 => {
            tracing::warn!(interface = %iface, reason = %reason, suppressed, "VPN link down; uplink gated")
        }
        _ => tracing::info!(interface = %iface, source = %out.source_detail, "WireGuard handshake source changed"),
    }
}

// ---------------------------------------------------------------------------
// Pure core
// ---------------------------------------------------------------------------

/// What one WireGuard peer reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReading {
    /// Hex of the peer's public key (its identity across checks).
    pub public_key: String,
    /// Time of the latest completed handshake since the Unix epoch; `None`
    /// when the peer never completed one (WireGuard reports 0).
    pub last_handshake: Option<Duration>,
    /// Authenticated bytes received from the peer.
    pub rx_bytes: u64,
}

/// Which interface answered for the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeSource {
    /// The kernel module, over generic netlink.
    Netlink,
    /// A userspace implementation's control socket.
    Uapi,
}

impl HandshakeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Netlink => "netlink",
            Self::Uapi => "uapi",
        }
    }
}

/// The latest handshake over all peers of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Whole seconds since the newest handshake of any peer.
    Age(u64),
    /// Peers exist, none ever completed a handshake.
    Never,
    /// The device has no peers.
    NoPeers,
    /// No source could tell.
    Unknown,
}

/// Newest handshake of `peers`, as an age at wall-clock time `now` (since
/// the epoch). A handshake in the future (clock stepped back) counts as age 0.
pub fn handshake_of(peers: &[PeerReading], now: Duration) -> Handshake {
    if peers.is_empty() {
        return Handshake::NoPeers;
    }
    match peers.iter().filter_map(|p| p.last_handshake).max() {
        Some(t) => Handshake::Age(now.saturating_sub(t).as_secs()),
        None => Handshake::Never,
    }
}

/// Why the gate is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The interface's state could not be read.
    Unreadable(String),
    Missing,
    AdminDown,
    NoPeers,
    NeverHandshaked,
    /// No source could read the handshake (the detail says why).
    HandshakeUnknown,
    /// Nothing from the peer for at least `max_age_s`: the newest handshake
    /// is `handshake_age_s` old, and its traffic last grew `rx_age_s` ago
    /// (`None`: no growth seen since the monitor started watching).
    Stale {
        handshake_age_s: u64,
        rx_age_s: Option<u64>,
        max_age_s: u64,
    },
}

/// [`Closed`] without its numbers: what a log line changes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedKind {
    Unreadable,
    Missing,
    AdminDown,
    NoPeers,
    NeverHandshaked,
    HandshakeUnknown,
    Stale,
}

impl Closed {
    pub fn kind(&self) -> ClosedKind {
        match self {
            Self::Unreadable(_) => ClosedKind::Unreadable,
            Self::Missing => ClosedKind::Missing,
            Self::AdminDown => ClosedKind::AdminDown,
            Self::NoPeers => ClosedKind::NoPeers,
            Self::NeverHandshaked => ClosedKind::NeverHandshaked,
            Self::HandshakeUnknown => ClosedKind::HandshakeUnknown,
            Self::Stale { .. } => ClosedKind::Stale,
        }
    }

    /// The `vpn_last_error` text. `source_detail` is the handshake source
    /// (or why there is none), used where it explains the reason.
    pub fn message(&self, iface: &str, source_detail: &str) -> String {
        match self {
            Self::Unreadable(why) => format!("cannot read the state of {iface}: {why}"),
            Self::Missing => format!("interface {iface} does not exist"),
            Self::AdminDown => format!("interface {iface} is administratively down"),
            Self::NoPeers => format!("interface {iface} has no WireGuard peer"),
            Self::NeverHandshaked => format!("no peer of {iface} has completed a handshake"),
            Self::HandshakeUnknown => format!("handshake age of {iface} unknown: {source_detail}"),
            Self::Stale { handshake_age_s, rx_age_s, max_age_s } => match rx_age_s {
                Some(rx) => format!(
                    "no handshake for {handshake_age_s} s and nothing received for {rx} s (limit {max_age_s} s)"
                ),
                None => format!("no handshake for {handshake_age_s} s (limit {max_age_s} s)"),
            },
        }
    }
}

/// The gate decision, a pure function of what was observed.
///
/// `rx_age_s` is the time since this monitor last saw the peer's received
/// bytes grow (`None`: not seen). Open (`Ok`) only when the interface exists,
/// is administratively up, and the peer showed life (a handshake, or received
/// traffic) less than `max_age_s` ago. `max_age_s == 0` means the handshake
/// is not required.
pub fn decide(
    exists: bool,
    admin_up: bool,
    handshake: Handshake,
    rx_age_s: Option<u64>,
    max_age_s: u64,
) -> Result<(), Closed> {
    if !exists {
        return Err(Closed::Missing);
    }
    if !admin_up {
        return Err(Closed::AdminDown);
    }
    if max_age_s == 0 {
        return Ok(());
    }
    match handshake {
        Handshake::Unknown => Err(Closed::HandshakeUnknown),
        Handshake::NoPeers => Err(Closed::NoPeers),
        Handshake::Never => Err(Closed::NeverHandshaked),
        Handshake::Age(age) => {
            let silent = rx_age_s.map_or(age, |rx| rx.min(age));
            if silent < max_age_s { Ok(()) } else { Err(Closed::Stale { handshake_age_s: age, rx_age_s, max_age_s }) }
        }
    }
}

/// Remembers each peer's `rx_bytes` between checks to tell when it last grew.
#[derive(Debug, Default)]
pub struct RxTracker {
    /// Public key → (rx_bytes at the last check, when it last grew).
    peers: HashMap<String, (u64, Option<Instant>)>,
}

impl RxTracker {
    /// Records a reading at monotonic time `now`; returns the time since the
    /// newest growth of any peer's `rx_bytes`, `None` when none was seen.
    /// The first reading of a peer, or a counter that went backwards (the
    /// device was re-created), is a new baseline, not growth.
    pub fn observe(&mut self, peers: &[PeerReading], now: Instant) -> Option<Duration> {
        let mut next = HashMap::with_capacity(peers.len());
        for p in peers {
            let grew_at = match self.peers.get(&p.public_key) {
                Some(&(rx, _)) if p.rx_bytes > rx => Some(now),
                Some(&(rx, at)) if p.rx_bytes == rx => at,
                _ => None,
            };
            next.insert(p.public_key.clone(), (p.rx_bytes, grew_at));
        }
        self.peers = next;
        self.peers.values().filter_map(|&(_, at)| at).max().map(|at| now.saturating_duration_since(at))
    }

    /// Forgets every peer (the device is gone or unreadable).
    pub fn clear(&mut self) {
        self.peers.clear();
    }
}

/// One probe's outcome: what the IO side saw.
#[derive(Debug)]
pub struct Probe {
    /// Set when the interface's own state could not be read (sysfs error,
    /// probe timeout): the gate stays closed and says so.
    pub failed: Option<String>,
    pub exists: bool,
    pub admin_up: bool,
    /// Peers and who reported them, or why no source could.
    pub device: Result<(HandshakeSource, Vec<PeerReading>), NoPeers>,
}

/// Why no source could list the interface's peers.
#[derive(Debug, thiserror::Error)]
pub enum NoPeers {
    #[error("not read")]
    NotRead,
    #[error("interface {iface} does not exist")]
    NoInterface { iface: String },
    #[error("netlink: {}; uapi: {}", crate::error_chain(.netlink), crate::error_chain(.uapi))]
    NoSource { netlink: NetlinkError, uapi: UapiError },
}

impl Probe {
    fn failed(why: String) -> Self {
        Self { failed: Some(why), exists: false, admin_up: false, device: Err(NoPeers::NotRead) }
    }
}

/// The gate's view after one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub decision: Result<(), Closed>,
    pub handshake_age_s: Option<u64>,
    pub source: Option<HandshakeSource>,
    /// `netlink`, `uapi`, or why neither answered.
    pub source_detail: String,
}

/// Turns probes into decisions; keeps the rx history between them.
#[derive(Debug)]
pub struct Assessor {
    iface: String,
    max_age_s: u64,
    rx: RxTracker,
}

impl Assessor {
    pub fn new(iface: String, max_age_s: u64) -> Self {
        Self { iface, max_age_s, rx: RxTracker::default() }
    }

    /// `wall` is the wall clock (handshake times are wall-clock), `mono`
    /// the monotonic clock (rx growth is timed by this monitor).
    pub fn assess(&mut self, p: &Probe, wall: SystemTime, mono: Instant) -> Assessment {
        if let Some(why) = &p.failed {
            self.rx.clear();
            return Assessment {
                decision: Err(Closed::Unreadable(why.clone())),
                handshake_age_s: None,
                source: None,
                source_detail: format!("none ({why})"),
            };
        }
        if !p.exists {
            self.rx.clear();
            return Assessment {
                decision: Err(Closed::Missing),
                handshake_age_s: None,
                source: None,
                source_detail: format!("none (interface {} does not exist)", self.iface),
            };
        }
        let now = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let (handshake, rx_age, source, detail) = match &p.device {
            Ok((source, peers)) => {
                let rx_age = self.rx.observe(peers, mono).map(|d| d.as_secs());
                (handshake_of(peers, now), rx_age, Some(*source), source.as_str().to_string())
            }
            Err(why) => {
                self.rx.clear();
                (Handshake::Unknown, None, None, format!("none ({why})"))
            }
        };
        let handshake_age_s = match handshake {
            Handshake::Age(a) => Some(a),
            _ => None,
        };
        Assessment {
            decision: decide(p.exists, p.admin_up, handshake, rx_age, self.max_age_s),
            handshake_age_s,
            source,
            source_detail: detail,
        }
    }
}

/// Parses `/sys/class/net/<if>/flags` (`0x1091`).
pub fn parse_flags(text: &str) -> Result<u32, LinkError> {
    let t = text.trim();
    let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    u32::from_str_radix(hex, 16).map_err(|_| LinkError::Flags { text: t.chars().take(32).collect() })
}

/// `IFF_UP` is set: the interface is administratively up.
pub fn is_admin_up(flags: u32) -> bool {
    flags & IFF_UP != 0
}

/// Parses the answer to a UAPI `get=1` request: device keys, then per peer a
/// `public_key=` line followed by its keys, then `errno=N` and a blank line.
/// Keys this monitor does not need (the private key among them) are skipped
/// and never copied; errors name the line and key, never a value.
pub fn parse_uapi_get(text: &str) -> Result<Vec<PeerReading>, UapiParseError> {
    struct Partial {
        key: String,
        sec: u64,
        nsec: u64,
        rx: u64,
    }
    fn finish(p: Partial) -> PeerReading {
        let t = Duration::from_secs(p.sec) + Duration::from_nanos(p.nsec.min(999_999_999));
        PeerReading { public_key: p.key, last_handshake: (!t.is_zero()).then_some(t), rx_bytes: p.rx }
    }
    let mut peers = Vec::new();
    let mut current: Option<Partial> = None;
    let mut errno: Option<i64> = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.is_empty() {
            break; // the blank line ends the answer
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(UapiParseError::Malformed { line: line_no, what: "no `=`".into() });
        };
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| UapiParseError::Malformed { line: line_no, what: format!("`{key}` is not a number") })
        };
        match key {
            "public_key" => {
                if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(UapiParseError::Malformed {
                        line: line_no,
                        what: "public_key is not 64 hex digits".into(),
                    });
                }
                if let Some(p) = current.take() {
                    peers.push(finish(p));
                }
                current = Some(Partial { key: value.to_ascii_lowercase(), sec: 0, nsec: 0, rx: 0 });
            }
            "last_handshake_time_sec" | "last_handshake_time_nsec" | "rx_bytes" => {
                let n = number(value)?;
                let Some(p) = current.as_mut() else {
                    return Err(UapiParseError::Malformed {
                        line: line_no,
                        what: format!("`{key}` before any public_key"),
                    });
                };
                match key {
                    "last_handshake_time_sec" => p.sec = n,
                    "last_handshake_time_nsec" => p.nsec = n,
                    _ => p.rx = n,
                }
            }
            "errno" => {
                let n = value
                    .parse::<i64>()
                    .map_err(|_| UapiParseError::Malformed { line: line_no, what: "`errno` is not a number".into() })?;
                errno = Some(n);
            }
            _ => {}
        }
    }
    match errno {
        None => Err(UapiParseError::NoErrno),
        Some(0) => {
            if let Some(p) = current.take() {
                peers.push(finish(p));
            }
            Ok(peers)
        }
        Some(n) => Err(UapiParseError::Errno(n)),
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("unreadable interface flags {text:?}")]
    Flags { text: String },
    #[error("reading {path}")]
    Sysfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UapiParseError {
    #[error("line {line}: {what}")]
    Malformed { line: usize, what: String },
    #[error("the answer has no errno line")]
    NoErrno,
    #[error("the device answered errno={0}")]
    Errno(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    /// No socket (no userspace WireGuard for this interface), or no
    /// permission: wireguard-go makes it root-only.
    #[error("connecting to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} did not answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("{path} closed the connection mid-answer")]
    Truncated { path: PathBuf },
    #[error("{path} answered more than {max} bytes")]
    TooLarge { path: PathBuf, max: usize },
    #[error("parsing the answer of {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: UapiParseError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a generic netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("no `wireguard` generic netlink family (no kernel WireGuard)")]
    NoFamily,
    /// `ENODEV`, or `EOPNOTSUPP`/`EINVAL` for an interface that is not a
    /// kernel WireGuard device (a userspace one is a tun device).
    #[error("{iface} is not a kernel WireGuard device")]
    NoDevice {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    /// `EPERM`: the kernel answers `WG_CMD_GET_DEVICE` only with `CAP_NET_ADMIN`.
    #[error("kernel WireGuard refused to describe {iface}: reading it needs CAP_NET_ADMIN")]
    NotPermitted { iface: String },
    #[error("netlink {what} failed")]
    Request {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no netlink answer to {what} within {timeout:?}")]
    Timeout { what: &'static str, timeout: Duration },
    #[error("malformed netlink answer to {what}: {detail}")]
    Decode { what: &'static str, detail: String },
}

// ---------------------------------------------------------------------------
// Probes (blocking IO)
// ---------------------------------------------------------------------------

/// Reads everything the gate needs about `iface`: sysfs for existence and
/// `IFF_UP`, then the peers from netlink or, failing that, the UAPI socket
/// in `uapi_dir`.
pub fn probe(iface: &str, uapi_dir: &Path) -> Probe {
    if iface.is_empty() || iface.contains('/') || iface == "." || iface == ".." {
        return Probe::failed(format!("invalid interface name {iface:?}"));
    }
    let dir = Path::new("/sys/class/net").join(iface);
    if !dir.exists() {
        return Probe {
            failed: None,
            exists: false,
            admin_up: false,
            device: Err(NoPeers::NoInterface { iface: iface.to_string() }),
        };
    }
    let admin_up = match read_flags(&dir.join("flags")) {
        Ok(flags) => is_admin_up(flags),
        Err(e) => return Probe::failed(crate::error_chain(&e)),
    };
    Probe { failed: None, exists: true, admin_up, device: read_device(iface, uapi_dir) }
}

fn read_flags(path: &Path) -> Result<u32, LinkError> {
    let text = std::fs::read_to_string(path).map_err(|source| LinkError::Sysfs { path: path.to_path_buf(), source })?;
    parse_flags(&text)
}

/// Netlink first, then UAPI; the error lists why each failed.
fn read_device(iface: &str, uapi_dir: &Path) -> Result<(HandshakeSource, Vec<PeerReading>), NoPeers> {
    let netlink = match netlink_device(iface) {
        Ok(peers) => return Ok((HandshakeSource::Netlink, peers)),
        Err(e) => e,
    };
    match uapi_device(&uapi_dir.join(format!("{iface}.sock"))) {
        Ok(peers) => Ok((HandshakeSource::Uapi, peers)),
        Err(uapi) => Err(NoPeers::NoSource { netlink, uapi }),
    }
}

/// Asks a userspace WireGuard for its device over the control socket at
/// `path` and parses the peers.
pub fn uapi_device(path: &Path) -> Result<Vec<PeerReading>, UapiError> {
    let io = |source| UapiError::Io { path: path.to_path_buf(), source };
    let mut s = UnixStream::connect(path).map_err(|source| UapiError::Connect { path: path.to_path_buf(), source })?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    s.write_all(b"get=1\n\n").map_err(io)?;
    // The answer ends with a blank line; the server keeps the connection
    // open for further requests, so read until "\n\n", not until EOF.
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + IO_TIMEOUT;
    let answer_end = loop {
        if Instant::now() >= deadline {
            return Err(UapiError::Timeout { path: path.to_path_buf(), timeout: IO_TIMEOUT });
        }
        let n = s.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Err(UapiError::Truncated { path: path.to_path_buf() });
        }
        let scan_from = buf.len().saturating_sub(1);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[scan_from..].windows(2).position(|w| w == b"\n\n") {
            break scan_from + i + 2;
        }
        if buf.len() > UAPI_MAX_BYTES {
            return Err(UapiError::TooLarge { path: path.to_path_buf(), max: UAPI_MAX_BYTES });
        }
    };
    let text = String::from_utf8_lossy(&buf[..answer_end]);
    let parsed = parse_uapi_get(&text).map_err(|source| UapiError::Parse { path: path.to_path_buf(), source });
    // The answer carries the private key: do not leave it in freed memory.
    buf.iter_mut().for_each(|b| *b = 0);
    chunk.iter_mut().for_each(|b| *b = 0);
    parsed
}

/// Asks kernel WireGuard for `iface` over generic netlink.
pub fn netlink_device(iface: &str) -> Result<Vec<PeerReading>, NetlinkError> {
    use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use netlink_packet_generic::GenlMessage;
    use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
    use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
    use netlink_packet_wireguard::{WireguardAttribute, WireguardCmd, WireguardMessage, WireguardPeerAttribute};

    let sock = NlSocket::open()?;

    // 1. Resolve the family id of "wireguard".
    const FAMILY: &str = "resolving the wireguard family";
    let mut req = NetlinkMessage::from(GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".into())],
    }));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    req.header.sequence_number = 1;
    req.finalize();
    let mut family = None;
    sock.exchange(&req, FAMILY, |msg: NetlinkMessage<GenlMessage<GenlCtrl>>| match msg.payload {
        NetlinkPayload::InnerMessage(g) => {
            for nla in g.payload.nlas {
                if let GenlCtrlAttrs::FamilyId(id) = nla {
                    family = Some(id);
                }
            }
            Ok(false)
        }
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(true), // the ACK ends the exchange
            Some(code) if code.get() == -ENOENT => Err(NetlinkError::NoFamily),
            Some(_) => Err(NetlinkError::Request { what: FAMILY, source: e.to_io() }),
        },
        NetlinkPayload::Done(_) => Ok(true),
        _ => Ok(false),
    })?;
    let family = family.ok_or(NetlinkError::NoFamily)?;

    // 2. Dump the device; a device with many peers spans several messages.
    const DEVICE: &str = "WG_CMD_GET_DEVICE";
    let mut genl = GenlMessage::from_payload(WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(iface.to_string())],
    });
    genl.set_resolved_family_id(family);
    let mut req = NetlinkMessage::from(genl);
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 2;
    req.finalize();
    let mut peers = Vec::new();
    sock.exchange(&req, DEVICE, |msg: NetlinkMessage<GenlMessage<WireguardMessage>>| match msg.payload {
        NetlinkPayload::InnerMessage(g) => {
            for attr in g.payload.attributes {
                // Every other attribute (the private key among them) is dropped here.
                let WireguardAttribute::Peers(list) = attr else { continue };
                for peer in list {
                    let mut r = PeerReading { public_key: String::new(), last_handshake: None, rx_bytes: 0 };
                    for a in peer.iter() {
                        match a {
                            WireguardPeerAttribute::PublicKey(k) => r.public_key = hex::encode(k),
                            WireguardPeerAttribute::LastHandshake(t) => {
                                let d = Duration::from_secs(t.seconds.max(0) as u64)
                                    + Duration::from_nanos(t.nano_seconds.clamp(0, 999_999_999) as u64);
                                r.last_handshake = (!d.is_zero()).then_some(d);
                            }
                            WireguardPeerAttribute::RxBytes(n) => r.rx_bytes = *n,
                            _ => {}
                        }
                    }
                    peers.push(r);
                }
            }
            Ok(false)
        }
        NetlinkPayload::Done(_) => Ok(true),
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(true),
            Some(code) if code.get() == -EPERM => Err(NetlinkError::NotPermitted { iface: iface.to_string() }),
            Some(code) if [-ENODEV, -EOPNOTSUPP, -EINVAL].contains(&code.get()) => {
                Err(NetlinkError::NoDevice { iface: iface.to_string(), source: e.to_io() })
            }
            Some(_) => Err(NetlinkError::Request { what: DEVICE, source: e.to_io() }),
        },
        _ => Ok(false),
    })?;
    Ok(merge_peers(peers))
}

/// Folds repeated entries of one peer into one. The kernel continues a peer
/// whose allowed-IP list fills a dump message in the next message, repeating
/// only its public key there (no handshake time, no counters).
pub fn merge_peers(peers: Vec<PeerReading>) -> Vec<PeerReading> {
    let mut out: Vec<PeerReading> = Vec::with_capacity(peers.len());
    for p in peers {
        match out.iter_mut().find(|o| o.public_key == p.public_key) {
            Some(o) => {
                o.last_handshake = o.last_handshake.max(p.last_handshake);
                o.rx_bytes = o.rx_bytes.max(p.rx_bytes);
            }
            None => out.push(p),
        }
    }
    out
}

// Linux errno values seen in netlink error answers.
const EPERM: i32 = 1;
/// What the generic netlink controller answers for an unknown family.
const ENOENT: i32 = 2;
const EINVAL: i32 = 22;
const ENODEV: i32 = 19;
const EOPNOTSUPP: i32 = 95;

/// A non-blocking generic netlink socket with deadline-bound exchanges.
struct NlSocket(netlink_sys::Socket);

impl NlSocket {
    fn open() -> Result<Self, NetlinkError> {
        use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
        let mut s = Socket::new(NETLINK_GENERIC).map_err(NetlinkError::Socket)?;
        s.bind_auto().map_err(NetlinkError::Socket)?;
        s.connect(&SocketAddr::new(0, 0)).map_err(NetlinkError::Socket)?;
        s.set_non_blocking(true).map_err(NetlinkError::Socket)?;
        Ok(Self(s))
    }

    /// Sends `req`, then feeds every answer message (matching its sequence
    /// number) to `on_msg` until it returns `Ok(true)`.
    fn exchange<I, O>(
        &self,
        req: &netlink_packet_core::NetlinkMessage<O>,
        what: &'static str,
        mut on_msg: impl FnMut(netlink_packet_core::NetlinkMessage<I>) -> Result<bool, NetlinkError>,
    ) -> Result<(), NetlinkError>
    where
        I: netlink_packet_core::NetlinkDeserializable,
        O: netlink_packet_core::NetlinkSerializable,
    {
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.0.send(&out, 0).map_err(|source| NetlinkError::Request { what, source })?;
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let buf = match self.0.recv_from_full() {
                Ok((buf, _)) => buf,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(NetlinkError::Timeout { what, timeout: IO_TIMEOUT });
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Err(source) => return Err(NetlinkError::Request { what, source }),
            };
            let mut off = 0;
            while off < buf.len() {
                let rest = &buf[off..];
                let len = netlink_packet_core::NetlinkBuffer::new_checked(rest)
                    .map(|b| b.length() as usize)
                    .map_err(|e| NetlinkError::Decode { what, detail: e.to_string() })?;
                if len == 0 || len > rest.len() {
                    return Err(NetlinkError::Decode { what, detail: format!("message length {len}") });
                }
                let msg = netlink_packet_core::NetlinkMessage::<I>::deserialize(&rest[..len])
                    .map_err(|e| NetlinkError::Decode { what, detail: e.to_string() })?;
                off += (len + 3) & !3;
                if msg.header.sequence_number != req.header.sequence_number {
                    continue;
                }
                if on_msg(msg)? {
                    return Ok(());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const PEER_A: &str = "56d2260a0225ce67ce625ba88ed1d37a338a431b81d9f10e48a0035314b2ca5a";
    const PEER_B: &str = "ee71f1b78ff65d870a61c78e363b0af38ea23f12cea1f24ae41043900fe69bf8";

    /// A real wireguard-go answer (keys replaced) with a second peer that
    /// never completed a handshake.
    fn answer() -> String {
        format!(
            "private_key=0000000000000000000000000000000000000000000000000000000000000001\n\
             listen_port=51820\n\
             public_key={PEER_A}\n\
             preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
             protocol_version=1\n\
             endpoint=10.213.1.2:51821\n\
             last_handshake_time_sec=1795440484\n\
             last_handshake_time_nsec=476785229\n\
             tx_bytes=304\n\
             rx_bytes=212\n\
             persistent_keepalive_interval=1\n\
             allowed_ip=10.213.2.2/32\n\
             public_key={PEER_B}\n\
             last_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\n\
             rx_bytes=0\n\
             errno=0\n\n"
        )
    }

    #[test]
    fn uapi_answer_parses_peers_and_never_handshaked_peer_is_none() {
        let peers = parse_uapi_get(&answer()).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].public_key, PEER_A);
        assert_eq!(peers[0].last_handshake, Some(Duration::new(1_795_440_484, 476_785_229)));
        assert_eq!(peers[0].rx_bytes, 212);
        assert_eq!(peers[1].last_handshake, None);
    }

    #[test]
    fn uapi_answer_with_no_peers_is_empty_and_errors_are_named() {
        assert_eq!(parse_uapi_get("private_key=00\nlisten_port=1\nerrno=0\n\n"), Ok(vec![]));
        assert_eq!(parse_uapi_get("errno=-19\n\n"), Err(UapiParseError::Errno(-19)));
        assert_eq!(parse_uapi_get("listen_port=1\n"), Err(UapiParseError::NoErrno));
        let bad = format!("public_key={PEER_A}\nlast_handshake_time_sec=soon\nerrno=0\n\n");
        assert!(matches!(parse_uapi_get(&bad), Err(UapiParseError::Malformed { line: 2, .. })));
        assert!(matches!(parse_uapi_get("rx_bytes=3\nerrno=0\n"), Err(UapiParseError::Malformed { line: 1, .. })));
        assert!(matches!(parse_uapi_get("garbage\n"), Err(UapiParseError::Malformed { line: 1, .. })));
    }

    #[test]
    fn uapi_parse_errors_never_quote_the_private_key() {
        let text = "private_key=secretsecret\nlisten_port=x1\npublic_key=zz\nerrno=0\n\n";
        let e = parse_uapi_get(text).unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn newest_peer_handshake_wins_and_future_handshake_is_age_zero() {
        let now = Duration::from_secs(1_000);
        let p = |s: Option<u64>| PeerReading {
            public_key: String::new(),
            last_handshake: s.map(Duration::from_secs),
            rx_bytes: 0,
        };
        assert_eq!(handshake_of(&[p(Some(400)), p(Some(990)), p(None)], now), Handshake::Age(10));
        assert_eq!(handshake_of(&[p(None), p(None)], now), Handshake::Never);
        assert_eq!(handshake_of(&[], now), Handshake::NoPeers);
        assert_eq!(handshake_of(&[p(Some(1_005))], now), Handshake::Age(0));
    }

    #[test]
    fn a_peer_continued_across_netlink_messages_is_one_peer() {
        let p = |key: &str, hs: Option<u64>, rx| PeerReading {
            public_key: key.into(),
            last_handshake: hs.map(Duration::from_secs),
            rx_bytes: rx,
        };
        let merged = merge_peers(vec![p(PEER_A, Some(50), 900), p(PEER_B, None, 0), p(PEER_A, None, 0)]);
        assert_eq!(merged, vec![p(PEER_A, Some(50), 900), p(PEER_B, None, 0)]);
    }

    #[test]
    fn flags_parse_and_iff_up_is_bit_zero() {
        assert_eq!(parse_flags("0x1091\n").unwrap(), 0x1091);
        assert!(is_admin_up(parse_flags("0x1091").unwrap()));
        assert!(!is_admin_up(parse_flags("0x1090").unwrap()));
        assert!(parse_flags("up").is_err());
        assert!(parse_flags("").is_err());
    }

    #[test]
    fn gate_decision_table() {
        use Handshake::*;
        assert_eq!(decide(false, true, Age(1), None, 5), Err(Closed::Missing));
        assert_eq!(decide(true, false, Age(1), None, 5), Err(Closed::AdminDown));
        assert_eq!(decide(true, true, Age(4), None, 5), Ok(()));
        assert_eq!(
            decide(true, true, Age(5), None, 5),
            Err(Closed::Stale { handshake_age_s: 5, rx_age_s: None, max_age_s: 5 })
        );
        // Received traffic keeps an old handshake alive ...
        assert_eq!(decide(true, true, Age(100), Some(1), 5), Ok(()));
        // ... until it stops too.
        assert_eq!(
            decide(true, true, Age(100), Some(7), 5),
            Err(Closed::Stale { handshake_age_s: 100, rx_age_s: Some(7), max_age_s: 5 })
        );
        assert_eq!(decide(true, true, Never, Some(0), 5), Err(Closed::NeverHandshaked));
        assert_eq!(decide(true, true, NoPeers, None, 5), Err(Closed::NoPeers));
        assert_eq!(decide(true, true, Unknown, None, 5), Err(Closed::HandshakeUnknown));
        // max age 0: interface-only gate.
        assert_eq!(decide(true, true, Unknown, None, 0), Ok(()));
        assert_eq!(decide(true, false, Unknown, None, 0), Err(Closed::AdminDown));
    }

    #[test]
    fn transitions_are_logged_once_and_flapping_is_rate_limited() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let state = |open, reason| Logged { open, reason, source: Some("uapi".into()) };
        let down = || state(false, Some(ClosedKind::Stale));
        let mut log = TransitionLog::default();
        assert_eq!(log.note(down(), at(0)), Some(LogLine { state_changed: true, suppressed: 0 }));
        assert_eq!(log.note(down(), at(200)), None, "same state: no line");
        assert_eq!(log.note(state(true, None), at(400)), None, "within a second of the last line");
        assert_eq!(log.note(down(), at(600)), None);
        assert_eq!(log.note(down(), at(800)), None);
        // A second after the last line, the settled state is logged with the count.
        assert_eq!(log.note(down(), at(1_000)), Some(LogLine { state_changed: false, suppressed: 2 }));
        assert_eq!(log.note(down(), at(5_000)), None);
        assert_eq!(log.note(state(true, None), at(5_200)), Some(LogLine { state_changed: true, suppressed: 0 }));
    }

    #[test]
    fn closed_messages_say_why() {
        assert_eq!(Closed::Missing.message("wg0", ""), "interface wg0 does not exist");
        let stale = Closed::Stale { handshake_age_s: 412, rx_age_s: None, max_age_s: 180 };
        assert_eq!(stale.message("wg0", "uapi"), "no handshake for 412 s (limit 180 s)");
        assert!(Closed::HandshakeUnknown.message("wg0", "none (netlink: x; uapi: y)").contains("uapi: y"));
    }

    #[test]
    fn rx_growth_is_timed_from_the_check_that_saw_it() {
        let t0 = Instant::now();
        let peer = |rx| PeerReading { public_key: PEER_A.into(), last_handshake: None, rx_bytes: rx };
        let mut t = RxTracker::default();
        assert_eq!(t.observe(&[peer(100)], t0), None, "first reading is a baseline");
        assert_eq!(t.observe(&[peer(100)], t0 + Duration::from_secs(1)), None);
        assert_eq!(t.observe(&[peer(132)], t0 + Duration::from_secs(2)), Some(Duration::ZERO));
        assert_eq!(t.observe(&[peer(132)], t0 + Duration::from_secs(9)), Some(Duration::from_secs(7)));
        assert_eq!(t.observe(&[peer(10)], t0 + Duration::from_secs(10)), None, "counter reset is a new baseline");
    }

    #[test]
    fn assessor_reports_source_and_age() {
        let mut a = Assessor::new("wg0".into(), 5);
        let wall = UNIX_EPOCH + Duration::from_secs(1_795_440_486);
        let peers = parse_uapi_get(&answer()).unwrap();
        let p = Probe { failed: None, exists: true, admin_up: true, device: Ok((HandshakeSource::Uapi, peers)) };
        let out = a.assess(&p, wall, Instant::now());
        assert_eq!(out.decision, Ok(()));
        assert_eq!(out.handshake_age_s, Some(1));
        assert_eq!(out.source_detail, "uapi");

        let none = Probe {
            failed: None,
            exists: true,
            admin_up: true,
            device: Err(NoPeers::NoSource {
                netlink: NetlinkError::NoFamily,
                uapi: UapiError::Truncated { path: "/run/wireguard/wg0.sock".into() },
            }),
        };
        let out = a.assess(&none, wall, Instant::now());
        assert_eq!(out.decision, Err(Closed::HandshakeUnknown));
        let detail = out.source_detail;
        assert!(detail.starts_with("none (netlink: no `wireguard` generic netlink family"), "{detail}");
        assert!(detail.contains("; uapi: ") && detail.contains("/run/wireguard/wg0.sock"), "{detail}");

        let out = a.assess(&Probe::failed("link probe took longer than 2.4s".into()), wall, Instant::now());
        assert_eq!(out.source_detail, "none (link probe took longer than 2.4s)");
        assert_eq!(
            out.decision.unwrap_err().message("wg0", ""),
            "cannot read the state of wg0: link probe took longer than 2.4s"
        );
    }

    #[test]
    fn uapi_exchange_with_a_fake_userspace_wireguard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgt.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let text = answer();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 7];
            s.read_exact(&mut req).unwrap();
            assert_eq!(&req, b"get=1\n\n");
            // In two pieces, and keep the connection open as wireguard-go does.
            let (a, b) = text.as_bytes().split_at(100);
            s.write_all(a).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(b).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        let peers = uapi_device(&path).unwrap();
        assert_eq!(peers.len(), 2);
        server.join().unwrap();
        assert!(matches!(uapi_device(&dir.path().join("absent.sock")), Err(UapiError::Connect { .. })));
    }

    #[test]
    fn netlink_on_a_non_wireguard_interface_is_an_error_not_a_panic() {
        // Without kernel WireGuard: NoFamily; with it: `lo` is no WireGuard device.
        assert!(netlink_device("lo").is_err());
    }

    #[test]
    fn probe_of_a_missing_interface_says_so() {
        let p = probe("spk-absent0", Path::new("/nonexistent"));
        assert!(!p.exists);
        let out = Assessor::new("spk-absent0".into(), 5).assess(&p, SystemTime::now(), Instant::now());
        assert_eq!(out.decision, Err(Closed::Missing));
        assert_eq!(out.decision.unwrap_err().message("spk-absent0", ""), "interface spk-absent0 does not exist");
    }
}
