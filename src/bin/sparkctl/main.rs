//! `sparkctl`: the field technician's CLI. Talks to `sparkd` over its Unix
//! socket. Exit codes: 0 ok, 1 failed check (or refused request), 2 usage
//! error, 3 daemon unreachable.
//!
//! Human output is aligned tables, coloured only when stdout is a terminal
//! (and `NO_COLOR` is unset); `--json` prints one JSON object on stdout.

mod sensors;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use spark_edge::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use spark_edge::control::client::{self, ClientError};
use spark_edge::control::doctor::{self, duration, human_bytes};
use spark_edge::control::protocol::{
    Check, CheckStatus, ConfigReport, DoctorReport, ErrorBody, InferReport, MAX_IMAGE_BYTES, QueueReport, Request,
    Response, StatusReport, UpdateReport,
};
use spark_edge::control::protocol::{EngineView, EventView, LinkView};

#[derive(Parser)]
#[command(
    name = "sparkctl",
    version,
    about = "Inspect and control the local sparkd",
    after_help = "Exit status: 0 ok, 1 a check failed or the daemon refused, 2 usage error, 3 sparkd unreachable."
)]
struct Cli {
    /// Control socket (default: $SPARKD_SOCKET, /run/sparkd/sparkd.sock, ./var/sparkd.sock).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print one JSON object on stdout, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Overall health: engine, queue, link, counters.
    Status,
    /// Outbox backlog per stream.
    Queue,
    /// VPN and broker link state.
    Link,
    /// Active inference engine and fallbacks.
    Engine,
    /// Cameras sparkd sees, and a frame as the model sees it.
    Camera {
        #[command(subcommand)]
        action: sensors::CameraAction,
    },
    /// A live level meter of sparkd's microphone.
    Mic {
        #[command(subcommand)]
        action: sensors::MicAction,
    },
    /// Run one JPEG/PNG file through the live engine and show what it found.
    Infer {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Ask the uplink to drain now; with --wait, show progress until the backlog is empty.
    Sync {
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 1).
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        timeout_secs: u64,
    },
    /// Run every check a technician would do by hand; exit 1 if any fails.
    Doctor {
        /// Config file to check (default: /etc/sparkd/sparkd.toml when it exists).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Show the running configuration or check a config file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// This daemon's journal (journalctl -u sparkd).
    Logs {
        /// Keep printing new entries.
        #[arg(short, long)]
        follow: bool,
        /// Show this many of the latest entries.
        #[arg(short = 'n', long, default_value_t = 100, value_name = "N")]
        lines: u32,
    },
    /// Every counter and gauge as Prometheus text (for promtool, node_exporter, a scraper).
    Metrics,
    /// The last events (tracks, zones, lines, counts) and whether each reached the broker.
    Events {
        /// Keep printing new events, polling every second, until interrupted.
        /// A row's DELIVERED is as of when it was printed.
        #[arg(short, long)]
        follow: bool,
        /// Show this many of the latest events (the daemon keeps 256).
        #[arg(short = 'n', long, default_value_t = 20, value_name = "N",
              value_parser = clap::value_parser!(u16).range(1..=256))]
        lines: u16,
    },
    /// Fleet update state.
    Update {
        #[command(subcommand)]
        action: UpdateAction,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), or write every page (sparkctl.1,
    /// sparkctl-status.1, ...) into a directory.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// The daemon's running configuration as TOML (secret values redacted).
    Show,
    /// Make the daemon re-read its config file (same checks as check-config) and
    /// apply what can change live; prints the keys that need a restart. Needs
    /// root or sparkd-admin.
    Reload,
    /// Validate a config file (default: /etc/sparkd/sparkd.toml) without the daemon.
    Check {
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UpdateAction {
    /// What the update subsystem is doing: installed versions and every known update.
    Status,
    /// Apply a signed update bundle (e.g. from a USB stick) with the same checks
    /// as a fleet push: sparkctl reads the file and sends it over the socket.
    /// Needs root or sparkd-admin.
    Apply {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

const TIMEOUT: Duration = Duration::from_secs(10);
/// Doctor hashes model files and probes devices; infer waits for the engine.
const SLOW_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let out = Out::new(cli.json);
    let socket = || client::find_socket(cli.socket.as_deref());
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sparkctl", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { out_dir } => {
            let written = match &out_dir {
                None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
                Some(dir) => std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir)),
            };
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail_msg(&format!("writing the man pages: {e}")),
            }
        }
        Command::Config { action: ConfigAction::Check { path } } => config_check(path.as_deref(), &out),
        Command::Logs { follow, lines } => logs(follow, lines, cli.json),
        Command::Doctor { config } => doctor(&socket(), config.as_deref(), &out),
        Command::Infer { file } => infer(&socket(), &file, &out),
        Command::Camera { action } => sensors::camera(&socket(), action, &out),
        Command::Mic { action } => sensors::mic(&socket(), action, &out),
        Command::Update { action: UpdateAction::Apply { file } } => update_apply(&socket(), &file, &out),
        Command::Config { action: ConfigAction::Reload } => config_reload(&socket(), &out),
        Command::Events { follow, lines } => events(&socket(), follow, usize::from(lines), &out),
        Command::Metrics => match ask(&socket(), &Request::Metrics, TIMEOUT, &out) {
            Ok(Response::Metrics(m)) if out.json => {
                println!("{}", serde_json::json!({ "text": m.text }));
                ExitCode::SUCCESS
            }
            // Raw, as a scraper or `promtool check metrics` reads it.
            Ok(Response::Metrics(m)) => {
                print!("{}", m.text);
                ExitCode::SUCCESS
            }
            Ok(other) => unexpected(&other),
            Err(code) => code,
        },
        Command::Sync { wait, timeout_secs } => {
            let socket = socket();
            let r = match ask(&socket, &Request::Sync, TIMEOUT, &out) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let Response::SyncStarted { pending } = r else { return unexpected(&r) };
            if wait {
                return sync_wait(&socket, pending, Duration::from_secs(timeout_secs), &out);
            }
            if out.json {
                println!("{}", serde_json::json!({"sync": "started", "pending": pending}));
            } else {
                println!("uplink woken; {pending} records pending (sparkctl sync --wait shows the drain)");
            }
            ExitCode::SUCCESS
        }
        cmd => {
            let request = match cmd {
                Command::Status => Request::Status,
                Command::Queue => Request::Queue,
                Command::Link => Request::Link,
                Command::Engine => Request::Engine,
                Command::Config { action: ConfigAction::Show } => Request::ConfigShow,
                Command::Update { action: UpdateAction::Status } => Request::UpdateStatus,
                _ => unreachable!("handled above"),
            };
            let response = match ask(&socket(), &request, TIMEOUT, &out) {
                Ok(r) => r,
                Err(code) => return code,
            };
            if out.json {
                let v = match &response {
                    Response::Status(s) => serde_json::to_value(s),
                    Response::Queue(q) => serde_json::to_value(q),
                    Response::Link(l) => serde_json::to_value(l),
                    Response::Engine(e) => serde_json::to_value(e),
                    Response::Config(c) => serde_json::to_value(c),
                    Response::Update(u) => serde_json::to_value(u),
                    other => serde_json::to_value(other),
                };
                return match v {
                    Ok(v) => {
                        println!("{v}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail_msg(&e.to_string()),
                };
            }
            match &response {
                Response::Status(s) => print_status(s, &out),
                Response::Queue(q) => print_queue(q, &out),
                Response::Link(l) => print_link(l, &out),
                Response::Engine(e) => print_engine(e, &out),
                Response::Config(c) => return print_config(c),
                Response::Update(u) => print_update(u, &out),
                other => return unexpected(other),
            }
            ExitCode::SUCCESS
        }
    }
}

/// One request; on failure prints why and returns the exit code.
fn ask(socket: &Path, request: &Request, timeout: Duration, out: &Out) -> Result<Response, ExitCode> {
    match client::request(socket, request, timeout) {
        Ok(Response::Error(err)) => {
            print_refusal(&err, out);
            Err(ExitCode::from(1))
        }
        Ok(r) => Ok(r),
        Err(e) => {
            if out.json {
                println!("{}", serde_json::json!({"error": {"code": "unreachable", "message": e.to_string()}}));
            }
            eprintln!("sparkctl: {e}");
            if let ClientError::Unreachable { source, .. } = &e {
                eprintln!("hint: {}", unreachable_fix(source));
            }
            Err(ExitCode::from(3))
        }
    }
}

fn print_refusal(err: &ErrorBody, out: &Out) {
    if out.json {
        println!("{}", serde_json::json!({ "error": err }));
    } else {
        eprintln!("sparkctl: {}", err.message);
    }
}

fn unreachable_fix(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "you may not open the socket: join group sparkd (sudo usermod -aG sparkd $USER) and log in again"
        }
        _ => {
            "is sparkd running? systemctl start sparkd; systemctl status sparkd (or pass --socket PATH / set SPARKD_SOCKET)"
        }
    }
}

fn unexpected(r: &Response) -> ExitCode {
    fail_msg(&format!("unexpected answer from sparkd: {r:?}"))
}

fn fail_msg(msg: &str) -> ExitCode {
    eprintln!("sparkctl: {msg}");
    ExitCode::from(1)
}

// ---- output helpers ------------------------------------------------------------

/// Where output goes and how it looks.
struct Out {
    json: bool,
    color: bool,
}

impl Out {
    fn new(json: bool) -> Self {
        let color = !json
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::env::var("TERM").map_or(true, |t| t != "dumb");
        Self { json, color }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }

    fn good(&self, t: &str) -> String {
        self.paint("32", t)
    }

    fn bad(&self, t: &str) -> String {
        self.paint("31", t)
    }

    fn warn(&self, t: &str) -> String {
        self.paint("33", t)
    }

    fn bold(&self, t: &str) -> String {
        self.paint("1", t)
    }

    fn status(&self, s: CheckStatus) -> String {
        match s {
            CheckStatus::Pass => self.good("pass"),
            CheckStatus::Warn => self.warn("warn"),
            CheckStatus::Fail => self.bad("FAIL"),
        }
    }
}

/// Two aligned columns: key, value.
fn rows(pairs: &[(&str, String)]) {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        println!("{k:<w$}  {v}");
    }
}

fn ago(s: Option<f64>) -> String {
    s.map(|s| format!("{} ago", duration(s))).unwrap_or_else(|| "-".into())
}

fn since_ms(t: u64) -> f64 {
    spark_edge::record::now_ms().saturating_sub(t) as f64 / 1000.0
}

fn dash(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

// ---- reports -------------------------------------------------------------------

fn print_status(s: &StatusReport, o: &Out) {
    let engine = match s.engine.active {
        Some(k) => format!("{} ({})", o.good(k.as_str()), s.engine.model),
        None => o.warn("none"),
    };
    let failed =
        if s.inference.failed > 0 { o.bad(&format!("{} failed", s.inference.failed)) } else { "0 failed".into() };
    let lost = if s.records_lost > 0 { o.bad(&s.records_lost.to_string()) } else { "0".into() };
    // One row per camera when there are several.
    let cameras: Vec<(String, String)> = match s.inference.cameras.as_slice() {
        [] | [_] => Vec::new(),
        cams => cams
            .iter()
            .map(|c| {
                (
                    format!("  camera {}", c.id),
                    format!(
                        "{} captured, {} dropped, {} inferred, last {:.1} ms",
                        c.captured, c.dropped, c.inferred, c.last_latency_ms
                    ),
                )
            })
            .collect(),
    };
    let mut table: Vec<(&str, String)> = vec![
        ("device", s.device_id.clone()),
        ("version", s.version.clone()),
        ("uptime", duration(s.uptime_s as f64)),
        ("engine", engine),
        ("inferences", format!("{} ok, {failed}, last {:.1} ms", s.inference.total, s.inference.last_latency_ms)),
        ("frames", format!("{} captured, {} dropped", s.inference.frames_captured, s.inference.frames_dropped)),
    ];
    table.extend(cameras.iter().map(|(k, v)| (k.as_str(), v.clone())));
    table.extend([
        (
            "queue",
            format!(
                "{} pending ({}), oldest {}, {} dropped",
                s.queue.pending,
                human_bytes(s.queue.bytes),
                ago(s.queue.oldest_age_s),
                s.queue.dropped
            ),
        ),
        ("link", link_summary(&s.link, o)),
        ("records lost", lost),
    ]);
    rows(&table);
}

fn link_summary(l: &LinkView, o: &Out) -> String {
    let vpn = match (&l.vpn_interface, l.vpn_up) {
        (None, _) => "no vpn gate".to_string(),
        (Some(i), true) => format!("vpn {} {}", i, o.good("up")),
        (Some(i), false) => format!("vpn {} {}", i, o.bad("down")),
    };
    let broker = if l.broker_connected { o.good("connected") } else { o.bad("disconnected") };
    format!("{vpn}, broker {broker} ({})", l.broker)
}

fn print_queue(q: &QueueReport, o: &Out) {
    let line = |a: &str, b: String, c: String, d: String, e: String| format!("{a:<10} {b:>10} {c:>12} {d:>10} {e:>16}");
    println!("{}", o.bold(&line("STREAM", "PENDING".into(), "BYTES".into(), "DROPPED".into(), "OLDEST".into())));
    for (name, s) in &q.streams {
        println!(
            "{}",
            line(name, s.pending.to_string(), human_bytes(s.bytes), s.dropped.to_string(), ago(s.oldest_age_s))
        );
    }
    println!(
        "{}",
        line("total", q.pending.to_string(), human_bytes(q.bytes), q.dropped.to_string(), ago(q.oldest_age_s))
    );
    let eta = q.eta_s.map(duration).unwrap_or_else(|| "-".into());
    println!(
        "drain rate {:.0} rec/s, time to empty {eta}; published {} acked {}",
        q.drain_rate_per_s, q.published, q.acked
    );
    if q.disk_low || q.space_errors > 0 {
        println!(
            "{}",
            o.bad(&format!("disk low: {}; space errors: {} (see sparkctl doctor)", q.disk_low, q.space_errors))
        );
    }
}

fn print_link(l: &LinkView, o: &Out) {
    let vpn = match &l.vpn_interface {
        None => "no gate configured (link.vpn_interface is empty)".to_string(),
        Some(i) => format!("{} ({i})", if l.vpn_up { o.good("up") } else { o.bad("down") }),
    };
    let handshake = match l.handshake_age_s {
        Some(a) => format!("{} ago ({})", duration(a as f64), l.handshake_source.as_deref().unwrap_or("?")),
        None => dash(&l.handshake_source),
    };
    let broker_state = if l.broker_connected {
        format!("{} for {}", o.good("connected"), duration(since_ms(l.since_ms)))
    } else if l.since_ms > 0 {
        format!("{} for {}", o.bad("disconnected"), duration(since_ms(l.since_ms)))
    } else {
        o.bad("disconnected")
    };
    rows(&[
        ("vpn", vpn),
        ("handshake", handshake),
        ("vpn down for", l.vpn_down_since_ms.map(|t| duration(since_ms(t))).unwrap_or_else(|| "-".into())),
        ("vpn error", l.vpn_last_error.as_deref().map(|e| o.bad(e)).unwrap_or_else(|| "-".into())),
        ("broker", format!("{} {broker_state}", l.broker)),
        ("reconnects", l.reconnects.to_string()),
        ("last error", l.last_error.as_deref().map(|e| o.bad(e)).unwrap_or_else(|| "-".into())),
    ]);
}

fn print_engine(e: &EngineView, o: &Out) {
    let mut r = vec![
        ("active", e.active.map(|k| o.good(k.as_str())).unwrap_or_else(|| o.warn("none"))),
        ("model", if e.model.is_empty() { "-".into() } else { e.model.clone() }),
        ("hailo in use", e.hailo_present.to_string()),
        ("fallbacks", e.fallbacks.to_string()),
        ("time on hailo", format!("{:.1} s", e.hailo_seconds)),
        ("time on cpu", format!("{:.1} s", e.cpu_seconds)),
        ("last error", e.last_error.as_deref().map(|m| o.bad(m)).unwrap_or_else(|| "-".into())),
    ];
    // The HEF as the accelerator opened it: what the CPU feeds it and what it returns.
    match &e.hef {
        None => r.push(("hef", "- (not opened on the accelerator)".into())),
        Some(h) => {
            r.push(("hef input", format!("{} {}", h.input_format, h.input_order)));
            for out in &h.outputs {
                let nms = out
                    .nms_shape
                    .map(|[c, m]| format!(", nms_shape {c} classes x {m} boxes per class"))
                    .unwrap_or_default();
                r.push(("hef output", format!("{} ({}{nms})", out.name, out.order)));
            }
        }
    }
    rows(&r);
}

fn print_config(c: &ConfigReport) -> ExitCode {
    match toml::to_string_pretty(&c.config) {
        Ok(text) => {
            println!("# sparkd's running configuration, every default filled in");
            if let Some(source) = &c.source {
                println!("# from: {source}");
            }
            if !c.redacted.is_empty() {
                println!("# redacted: {}", c.redacted.join(", "));
            }
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail_msg(&format!("rendering the config as TOML: {e}")),
    }
}

fn print_update(u: &UpdateReport, o: &Out) {
    let state = serde_json::to_value(u.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    rows(&[("state", o.warn(&state)), ("sparkd", u.installed_version.clone()), ("note", u.message.clone())]);
    if !u.restart_required.is_empty() {
        rows(&[("needs restart", o.warn(&u.restart_required.join(", ")))]);
    }
    if u.dropped_messages > 0 {
        rows(&[("dropped", format!("{} update messages (push again to resume)", u.dropped_messages))]);
    }
    if !u.installed.is_empty() {
        println!();
        println!("{:<8} {:<16} {:<10} {:<10} {:<10}", "KIND", "NAME", "ACTIVE", "PREVIOUS", "HIGHEST");
        for i in &u.installed {
            println!(
                "{:<8} {:<16} {:<10} {:<10} {:<10}",
                i.kind,
                i.name,
                dash(&i.active),
                dash(&i.previous),
                i.highest
            );
        }
    }
    if !u.updates.is_empty() {
        println!();
        println!(
            "{:<32} {:<7} {:<16} {:<10} {:<12} {:<10} DETAIL",
            "UPDATE", "KIND", "NAME", "VERSION", "STATE", "CHANGED"
        );
        for r in &u.updates {
            let state = match r.state.as_str() {
                "active" => o.good(&r.state),
                "rejected" | "rolled_back" => o.bad(&r.state),
                _ => r.state.clone(),
            };
            let detail = match (&r.code, &r.reason) {
                (Some(c), Some(why)) => format!("{c}: {why}"),
                (None, Some(why)) => why.clone(),
                _ => String::new(),
            };
            println!(
                "{:<32} {:<7} {:<16} {:<10} {:<12} {:<10} {detail}",
                r.update_id,
                r.kind,
                r.name,
                r.version,
                state,
                ago(Some(since_ms(r.updated_ms))),
            );
        }
    }
}

/// `config reload`: exit 0 when the file passed and was applied.
fn config_reload(socket: &Path, out: &Out) -> ExitCode {
    let (applied, restart_required) = match ask(socket, &Request::ConfigReload, TIMEOUT, out) {
        Ok(Response::ConfigReloaded(c)) => (c.applied, c.restart_required),
        Ok(r) => return unexpected(&r),
        Err(code) => return code,
    };
    if out.json {
        println!("{}", serde_json::json!({"applied": applied, "restart_required": restart_required}));
    } else {
        let list = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(", ") };
        rows(&[("applied", list(&applied)), ("needs restart", out.warn(&list(&restart_required)))]);
    }
    ExitCode::SUCCESS
}

/// Largest bundle file `update apply` reads (the daemon bounds the artifact
/// again with `update.max_artifact_megabytes`).
const MAX_BUNDLE_BYTES: u64 = 1 << 30;

/// `update apply FILE`: reads the bundle with the technician's rights (a USB
/// stick mounted after sparkd started is invisible to the sandboxed daemon)
/// and sends its envelope, then its chunks, over the socket; the daemon runs
/// the same checks as for a fleet push. Exit 0 only when the update ended active.
fn update_apply(socket: &Path, file: &Path, out: &Out) -> ExitCode {
    let bundle = match std::fs::metadata(file) {
        Ok(m) if !m.is_file() => return fail_msg(&format!("{}: not a regular file", file.display())),
        Ok(m) if m.len() > MAX_BUNDLE_BYTES => return fail_msg(&format!("{}: larger than 1 GiB", file.display())),
        // Capped again: a device node or a growing file reports no true size.
        Ok(_) => match spark_edge::sys::capped_read::read_capped(file, MAX_BUNDLE_BYTES) {
            Ok(b) => b,
            Err(e) => return fail_msg(&format!("reading {}: {e}", file.display())),
        },
        Err(e) => return fail_msg(&format!("{}: {e}", file.display())),
    };
    let b = match spark_edge::update::Bundle::parse(&bundle) {
        Ok(b) => b,
        Err(e) => return fail_msg(&format!("{}: {e}", file.display())),
    };
    drop(bundle);
    let Some(id) = b.update_id() else { return fail_msg(&format!("{}: the envelope does not decode", file.display())) };
    let envelope = String::from_utf8_lossy(&b.envelope).into_owned();
    let mut last = match ask(socket, &Request::UpdateApplyManifest { envelope }, TIMEOUT, out) {
        Ok(Response::UpdateApplied(r)) => r.update,
        Ok(r) => return unexpected(&r),
        Err(code) => return code,
    };
    if last.state == "received" {
        let chunks = spark_edge::update::chunk_artifact(&id, &b.artifact, spark_edge::update::CHUNK_MAX_BYTES);
        let tty = std::io::stderr().is_terminal() && !out.json;
        for (i, c) in chunks.iter().enumerate() {
            let Ok(chunk) = serde_json::to_string(c) else { return fail_msg("encoding a chunk") };
            // The last chunk verifies, checks and activates: allow for it.
            last = match ask(socket, &Request::UpdateApplyChunk { chunk }, Duration::from_secs(180), out) {
                Ok(Response::UpdateApplied(r)) => r.update,
                Ok(r) => return unexpected(&r),
                Err(code) => return code,
            };
            if tty {
                eprint!("\rsent {}/{} chunks\x1b[K", i + 1, chunks.len());
            }
        }
        if tty {
            eprintln!();
        }
    }
    let v = last;
    if out.json {
        println!("{}", serde_json::to_value(&v).unwrap_or_default());
    } else {
        let detail = v.reason.clone().map(|r| format!(" ({r})")).unwrap_or_default();
        println!("{} {} {} ({}): {}{detail}", v.kind, v.name, v.version, v.update_id, v.state);
    }
    if v.state == "active" { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

// ---- events --------------------------------------------------------------------

/// `events --follow` asks this often.
const EVENTS_POLL: Duration = Duration::from_secs(1);

/// The last `n` events; with `follow`, then every new one until stdout
/// closes (exit 0) or the daemon goes away (exit 3).
fn events(socket: &Path, follow: bool, n: usize, out: &Out) -> ExitCode {
    let mut report = match ask(socket, &Request::Events { after_seq: None }, TIMEOUT, out) {
        Ok(Response::Events(r)) => r,
        Ok(other) => return unexpected(&other),
        Err(code) => return code,
    };
    let skip = report.events.len().saturating_sub(n);
    report.events.drain(..skip);
    let mut last_seq = report.events.last().map_or(0, |e| e.seq);
    if out.json && !follow {
        println!("{}", serde_json::to_value(&report).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let widths = EventWidths::of(&report.events);
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (`| head`, the pager quit) ends the command quietly.
    let mut print = |events: &[EventView], header: bool| -> std::io::Result<()> {
        if header && !out.json {
            writeln!(stdout, "{}", out.bold(&widths.header()))?;
        }
        for e in events {
            if out.json {
                writeln!(stdout, "{}", serde_json::to_value(e).unwrap_or_default())?;
            } else {
                writeln!(stdout, "{}", widths.row(e, out))?;
            }
        }
        stdout.flush()
    };
    if print(&report.events, true).is_err() {
        return ExitCode::SUCCESS;
    }
    if !follow {
        if report.events.is_empty() && !out.json {
            eprintln!("no events yet (zones and lines are [[zone]] and [[line]] in the config)");
        }
        return ExitCode::SUCCESS;
    }
    loop {
        std::thread::sleep(EVENTS_POLL);
        let r = match ask(socket, &Request::Events { after_seq: Some(last_seq) }, TIMEOUT, out) {
            Ok(Response::Events(r)) => r,
            Ok(other) => return unexpected(&other),
            Err(code) => return code,
        };
        let Some(last) = r.events.last() else { continue };
        last_seq = last.seq;
        if print(&r.events, false).is_err() {
            return ExitCode::SUCCESS;
        }
    }
}

/// Column widths of the events table, from the rows shown first (follow
/// rows keep them, so the columns stay put).
struct EventWidths {
    camera: usize,
    event: usize,
    rule: usize,
    label: usize,
}

impl EventWidths {
    fn of(events: &[EventView]) -> Self {
        let max = |min: usize, f: &dyn Fn(&EventView) -> usize| events.iter().map(f).max().unwrap_or(0).max(min);
        Self {
            camera: max(8, &|e| e.camera.len()),
            event: max(17, &|e| event_text(e).len()),
            rule: max(8, &|e| e.rule.as_deref().unwrap_or("-").len()),
            label: max(8, &|e| e.label.as_deref().unwrap_or("-").len()),
        }
    }

    fn header(&self) -> String {
        let Self { camera, event, rule, label } = *self;
        format!(
            "{:<20}  {:<camera$}  {:<event$}  {:<rule$}  {:<label$}  {:>6}  DELIVERED  SNAPSHOT",
            "TIME (UTC)", "CAMERA", "EVENT", "RULE", "LABEL", "TRACK"
        )
    }

    fn row(&self, e: &EventView, o: &Out) -> String {
        let Self { camera, event, rule, label } = *self;
        let track = e.track_id.map_or_else(|| "-".to_string(), |t| t.to_string());
        // Padded before colouring: escape codes would count as width.
        let delivered = if e.delivered { o.good("yes      ") } else { o.warn("pending  ") };
        let snapshot = match e.snapshot_delivered {
            None => "-".to_string(),
            Some(true) => o.good("yes"),
            Some(false) => o.warn("pending"),
        };
        format!(
            "{:<20}  {:<camera$}  {:<event$}  {:<rule$}  {:<label$}  {track:>6}  {delivered}  {snapshot}",
            utc(e.time_ms),
            e.camera,
            event_text(e),
            e.rule.as_deref().unwrap_or("-"),
            e.label.as_deref().unwrap_or("-")
        )
    }
}

/// The event's kind, with a crossing's direction.
fn event_text(e: &EventView) -> String {
    match &e.direction {
        Some(d) => format!("{} {d}", e.kind),
        None => e.kind.clone(),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SSZ` (the device and the
/// technician's laptop may not share a time zone).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

// ---- sync --wait ---------------------------------------------------------------

/// Polls the queue until it is empty, drawing a progress bar on a terminal.
fn sync_wait(socket: &Path, start_pending: u64, timeout: Duration, out: &Out) -> ExitCode {
    let tty = std::io::stderr().is_terminal() && !out.json;
    let started = std::time::Instant::now();
    let mut total = start_pending.max(1);
    loop {
        let q = match ask(socket, &Request::Queue, TIMEOUT, out) {
            Ok(Response::Queue(q)) => q,
            Ok(other) => return unexpected(&other),
            Err(code) => return code,
        };
        total = total.max(q.pending);
        if tty {
            eprint!("\r{}\x1b[K", progress_line(total, q.pending, q.drain_rate_per_s, q.eta_s));
            let _ = std::io::stderr().flush();
        }
        if q.pending == 0 {
            if tty {
                eprintln!();
            }
            let secs = started.elapsed().as_secs_f64();
            if out.json {
                println!("{}", serde_json::json!({"synced": true, "pending": 0, "seconds": secs}));
            } else {
                println!("outbox empty: everything sent and acknowledged ({})", duration(secs));
            }
            return ExitCode::SUCCESS;
        }
        if started.elapsed() > timeout {
            if tty {
                eprintln!();
            }
            if out.json {
                println!("{}", serde_json::json!({"synced": false, "pending": q.pending}));
            } else {
                eprintln!("sparkctl: {} records still pending after {}", q.pending, duration(timeout.as_secs_f64()));
            }
            return ExitCode::from(1);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn progress_line(total: u64, pending: u64, rate: f64, eta: Option<f64>) -> String {
    let done = total - pending.min(total);
    let width = 30usize;
    let filled = ((done as f64 / total as f64) * width as f64) as usize;
    let eta = eta.map(duration).unwrap_or_else(|| "-".into());
    format!(
        "[{}{}] {done}/{total} sent, {rate:.0} rec/s, ETA {eta}",
        "#".repeat(filled.min(width)),
        ".".repeat(width - filled.min(width))
    )
}

// ---- infer ---------------------------------------------------------------------

fn infer(socket: &Path, file: &Path, out: &Out) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("sparkctl: {msg}");
        ExitCode::from(2)
    };
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) => return usage(format!("{}: {e}", file.display())),
    };
    if !meta.is_file() {
        return usage(format!("{}: not a regular file", file.display()));
    }
    if meta.len() > MAX_IMAGE_BYTES as u64 {
        return usage(format!(
            "{}: {} is larger than the {} limit",
            file.display(),
            human_bytes(meta.len()),
            human_bytes(MAX_IMAGE_BYTES as u64)
        ));
    }
    let bytes = match spark_edge::sys::capped_read::read_capped(file, MAX_IMAGE_BYTES as u64) {
        Ok(b) => b,
        Err(e) => return usage(format!("reading {}: {e}", file.display())),
    };
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let request = Request::Infer { name, image_hex: hex::encode(&bytes) };
    let r = match ask(socket, &request, SLOW_TIMEOUT, out) {
        Ok(Response::Inference(r)) => r,
        Ok(other) => return unexpected(&other),
        Err(code) => return code,
    };
    if out.json {
        println!("{}", serde_json::to_value(&r).unwrap_or_default());
    } else {
        print_infer(&r, out);
    }
    ExitCode::SUCCESS
}

fn print_infer(r: &InferReport, o: &Out) {
    rows(&[
        ("image", format!("{} ({}x{})", r.name, r.width, r.height)),
        ("engine", format!("{} ({})", o.good(&r.engine), r.model)),
        ("latency", format!("{:.1} ms", r.latency_ms)),
        ("detections", r.detections.len().to_string()),
    ]);
    if r.detections.is_empty() {
        return;
    }
    println!();
    println!("{}", o.bold(&format!("{:>3}  {:<12} {:>6}  {}", "#", "LABEL", "SCORE", "BOX (x1, y1, x2, y2)")));
    const TOP: usize = 10;
    for (i, d) in r.detections.iter().take(TOP).enumerate() {
        let b = d.bbox;
        println!("{:>3}  {:<12} {:>6.3}  {:.0}, {:.0}, {:.0}, {:.0}", i + 1, d.label, d.score, b[0], b[1], b[2], b[3]);
    }
    if r.detections.len() > TOP {
        println!("     ... and {} more (--json lists all)", r.detections.len() - TOP);
    }
}

// ---- config --------------------------------------------------------------------

fn config_check(path: Option<&Path>, out: &Out) -> ExitCode {
    let path = path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
    let issues: Vec<(usize, String, String)> = match Config::load(path) {
        Ok(_) => vec![],
        Err(ConfigError::Invalid(issues)) => {
            issues.into_iter().map(|i| (i.line, i.key.clone(), i.to_string())).collect()
        }
        Err(e) => vec![(0, String::new(), doctor::chain(&e))],
    };
    if out.json {
        let issues: Vec<_> = issues
            .iter()
            .map(|(line, key, msg)| serde_json::json!({"line": line, "key": key, "message": msg}))
            .collect();
        println!("{}", serde_json::json!({"path": path, "valid": issues.is_empty(), "issues": issues}));
    } else if issues.is_empty() {
        println!("{}: {}", path.display(), out.good("valid"));
    } else {
        for (_, _, msg) in &issues {
            println!("{}", out.bad(msg));
        }
    }
    if issues.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

// ---- logs ----------------------------------------------------------------------

/// The systemd unit whose journal `logs` shows.
const UNIT: &str = "sparkd";

fn logs(follow: bool, lines: u32, json: bool) -> ExitCode {
    let mut cmd = std::process::Command::new("journalctl");
    cmd.args(["--unit", UNIT, "--no-pager", "--lines", &lines.to_string(), "--output"]);
    cmd.arg(if json { "json" } else { "short-iso" });
    let missing = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            fail_msg(
                "journalctl not found: sparkd logs to the systemd journal; outside systemd read the daemon's stderr",
            )
        } else {
            fail_msg(&format!("running journalctl: {e}"))
        }
    };
    if follow {
        cmd.arg("--follow");
        return match cmd.status() {
            Ok(s) if s.success() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(e) => missing(e),
        };
    }
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => return missing(e),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let entries = text.lines().filter(|l| !l.starts_with("-- ") && !l.trim().is_empty()).count();
    if !output.status.success() {
        let _ = std::io::stderr().write_all(&output.stderr);
        return fail_msg("journalctl failed");
    }
    if entries == 0 {
        let why = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return fail_msg(&format!(
            "no journal entries for unit {UNIT}{}. Is sparkd running under systemd? Reading its journal needs root or \
             group systemd-journal (or adm)",
            if why.is_empty() { String::new() } else { format!(" ({why})") }
        ));
    }
    print!("{text}");
    ExitCode::SUCCESS
}

// ---- doctor --------------------------------------------------------------------

fn doctor(socket: &Path, config_flag: Option<&Path>, out: &Out) -> ExitCode {
    let path = config_flag.map(Path::to_path_buf).or_else(|| {
        let p = PathBuf::from(DEFAULT_CONFIG_PATH);
        p.exists().then_some(p)
    });
    let mut local = Vec::new();
    let file_config = match &path {
        None => {
            local.push(Check::pass(
                "config",
                format!("no config file ({DEFAULT_CONFIG_PATH} absent): nothing to check"),
            ));
            None
        }
        Some(p) => match Config::load(p) {
            Ok(c) => {
                local.push(Check::pass("config", format!("{} valid", p.display())));
                Some(c)
            }
            Err(e) => {
                let detail = match &e {
                    ConfigError::Invalid(issues) => {
                        issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                    }
                    other => doctor::chain(other),
                };
                local.push(Check::fail(
                    "config",
                    detail,
                    format!("fix the named keys, then: sparkctl config check {}", p.display()),
                ));
                None
            }
        },
    };
    let (mut checks, reachable) = match client::request(socket, &Request::Doctor, SLOW_TIMEOUT) {
        Ok(Response::Doctor(DoctorReport { checks })) => {
            if let Some(c) = &file_config {
                local.push(config_drift(socket, c, path.as_deref().unwrap_or(Path::new(""))));
            }
            (checks, true)
        }
        Ok(Response::Error(e)) => {
            (vec![Check::fail("daemon", format!("sparkd refused doctor: {}", e.message), "try again")], true)
        }
        Ok(other) => return unexpected(&other),
        Err(e) => {
            let fix = match &e {
                ClientError::Unreachable { source, .. } => unreachable_fix(source),
                _ => "systemctl restart sparkd; journalctl -u sparkd -b",
            };
            let mut checks = vec![Check::fail("daemon", e.to_string(), fix)];
            // What can be judged without the daemon, from the config it would use.
            let config = file_config.clone().unwrap_or_default();
            let state_dir = spark_edge::daemon::Paths::resolve(&config).state_dir;
            checks.extend(doctor::system_checks(&config, &state_dir));
            (checks, false)
        }
    };
    // The config checks go right after the daemon line.
    let at = checks.iter().position(|c| c.name == "daemon").map_or(0, |i| i + 1);
    checks.splice(at..at, local);
    let report = DoctorReport { checks };
    print_doctor(&report, out);
    match (reachable, report.worst()) {
        (false, _) => ExitCode::from(3),
        (true, CheckStatus::Fail) => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

/// Warns when the config file on disk differs from what the daemon runs.
fn config_drift(socket: &Path, file: &Config, path: &Path) -> Check {
    let running = match client::request(socket, &Request::ConfigShow, TIMEOUT) {
        Ok(Response::Config(c)) => c.config,
        _ => return Check::warn("config-applied", "could not read the running config", "sparkctl config show"),
    };
    let on_disk = spark_edge::control::server::redacted_config(file, "").config;
    let mut changed = spark_edge::config::changed_json_keys(&on_disk, &running);
    if changed.is_empty() {
        Check::pass("config-applied", format!("the daemon runs {}", path.display()))
    } else {
        changed.truncate(8);
        Check::warn(
            "config-applied",
            format!("{} differs from the running config ({})", path.display(), changed.join(", ")),
            "systemctl restart sparkd to apply it (after sparkctl config check)",
        )
    }
}

fn print_doctor(r: &DoctorReport, o: &Out) {
    if o.json {
        let count = |s| r.checks.iter().filter(|c| c.status == s).count();
        println!(
            "{}",
            serde_json::json!({
                "ok": r.worst() != CheckStatus::Fail,
                "passed": count(CheckStatus::Pass),
                "warnings": count(CheckStatus::Warn),
                "failed": count(CheckStatus::Fail),
                "checks": r.checks,
            })
        );
        return;
    }
    let w = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &r.checks {
        println!("{}  {:<w$}  {}", o.status(c.status), c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("{}  {:<w$}  fix: {fix}", " ".repeat(4), "");
        }
    }
    let count = |s| r.checks.iter().filter(|c| c.status == s).count();
    let (p, wn, f) = (count(CheckStatus::Pass), count(CheckStatus::Warn), count(CheckStatus::Fail));
    let summary = format!("{p} passed, {wn} warnings, {f} failed");
    println!();
    println!(
        "{}",
        if f > 0 {
            o.bad(&summary)
        } else if wn > 0 {
            o.warn(&summary)
        } else {
            o.good(&summary)
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn event_times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_999), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_796_305_060_000), "2026-12-03 13:37:40Z");
    }

    #[test]
    fn events_table_keeps_its_columns() {
        let cross = EventView {
            seq: 1,
            kind: "line_cross".into(),
            camera: "cam0".into(),
            rule: Some("door".into()),
            label: Some("person".into()),
            track_id: Some(12),
            time_ms: 0,
            direction: Some("east".into()),
            delivered: true,
            snapshot_id: Some("0123456789abcdef".into()),
            snapshot_delivered: Some(false),
        };
        let count = EventView {
            kind: "count".into(),
            label: None,
            track_id: None,
            direction: None,
            snapshot_id: None,
            snapshot_delivered: None,
            ..cross.clone()
        };
        let w = EventWidths::of(&[cross.clone(), count.clone()]);
        let o = Out { json: false, color: false };
        let (h, a, b) = (w.header(), w.row(&cross, &o), w.row(&count, &o));
        assert_eq!(h.find("DELIVERED"), a.find("yes"), "{h}\n{a}");
        assert_eq!(a.find("yes"), b.find("yes"), "{a}\n{b}");
        assert!(a.contains("line_cross east") && a.contains("person") && a.contains("    12  "), "{a}");
        assert!(b.contains("count "), "{b}");
        assert_eq!(h.find("SNAPSHOT"), a.find("pending"), "{h}\n{a}");
        assert!(b.trim_end().ends_with('-'), "no snapshot: {b}");
    }

    #[test]
    fn progress_bar_fills_with_the_drain() {
        assert!(progress_line(100, 100, 0.0, None).starts_with("[.............................."));
        let half = progress_line(100, 50, 10.0, Some(5.0));
        assert!(half.starts_with("[###############...............] 50/100 sent"), "{half}");
        assert!(progress_line(100, 0, 10.0, None).starts_with("[##############################] 100/100"));
    }
}
