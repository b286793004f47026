//! `sparkctl`: the field technician's CLI. Talks to `sparkd` over its Unix
//! socket. Exit codes: 0 ok, 1 failed check, 2 usage error, 3 daemon unreachable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use spark_edge::control::client::{self, ClientError};
use spark_edge::control::protocol::{QueueReport, Request, Response, StatusReport};
use spark_edge::state::{EngineState, LinkState};

#[derive(Parser)]
#[command(name = "sparkctl", version, about = "Inspect and control the local sparkd")]
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
    /// Ask the uplink to drain now; with --wait, show progress until the backlog is empty.
    Sync {
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 1).
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        timeout_secs: u64,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let socket = client::find_socket(cli.socket.as_deref());
    let request = match cli.command {
        Command::Status => Request::Status,
        Command::Queue => Request::Queue,
        Command::Link => Request::Link,
        Command::Engine => Request::Engine,
        Command::Sync { .. } => Request::Sync,
    };
    let wait = match cli.command {
        Command::Sync { wait: true, timeout_secs } => Some(Duration::from_secs(timeout_secs)),
        _ => None,
    };
    let response = match client::request(&socket, &request, Duration::from_secs(10)) {
        Ok(r) => r,
        Err(e @ ClientError::Unreachable { .. }) => {
            eprintln!("sparkctl: {e}");
            eprintln!("hint: is sparkd running? (systemctl status sparkd, or pass --socket PATH / set SPARKD_SOCKET)");
            return ExitCode::from(3);
        }
        Err(e) => {
            eprintln!("sparkctl: {e}");
            return ExitCode::from(3);
        }
    };
    if let Response::Error(err) = &response {
        if cli.json {
            println!("{}", serde_json::json!({"error": err}));
        } else {
            eprintln!("sparkctl: daemon refused the request ({:?}): {}", err.code, err.message);
        }
        return ExitCode::from(1);
    }
    if let (Some(timeout), Response::SyncStarted { pending }) = (wait, &response) {
        return sync_wait(&socket, *pending, timeout, cli.json);
    }
    if cli.json {
        let v = match &response {
            Response::Status(s) => serde_json::to_value(s),
            Response::Queue(q) => serde_json::to_value(q),
            Response::Link(l) => serde_json::to_value(l),
            Response::Engine(e) => serde_json::to_value(e),
            other => serde_json::to_value(other),
        };
        match v {
            Ok(v) => println!("{v}"),
            Err(e) => {
                eprintln!("sparkctl: {e}");
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }
    match response {
        Response::Status(s) => print_status(&s),
        Response::Queue(q) => print_queue(&q),
        Response::Link(l) => print_link(&l),
        Response::Engine(e) => print_engine(&e),
        Response::SyncStarted { pending } => println!("uplink woken; {pending} records pending"),
        Response::Error(_) => {}
    }
    ExitCode::SUCCESS
}

/// Polls the queue until it is empty, drawing a progress bar on a terminal.
fn sync_wait(socket: &std::path::Path, start_pending: u64, timeout: Duration, json: bool) -> ExitCode {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal() && !json;
    let started = std::time::Instant::now();
    let mut total = start_pending.max(1);
    loop {
        let q = match client::request(socket, &Request::Queue, Duration::from_secs(10)) {
            Ok(Response::Queue(q)) => q,
            Ok(other) => {
                eprintln!("sparkctl: unexpected answer {other:?}");
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("sparkctl: {e}");
                return ExitCode::from(3);
            }
        };
        total = total.max(q.pending);
        if tty {
            let done = total - q.pending.min(total);
            let width = 30usize;
            let filled = (done as f64 / total as f64 * width as f64) as usize;
            let eta = q.eta_s.map(|e| format!("{e:.0} s")).unwrap_or_else(|| "-".into());
            eprint!(
                "\r[{}{}] {done}/{total} sent, {:.0} rec/s, ETA {eta}   ",
                "#".repeat(filled),
                ".".repeat(width - filled),
                q.drain_rate_per_s
            );
            let _ = std::io::stderr().flush();
        }
        if q.pending == 0 {
            if tty {
                eprintln!();
            }
            if json {
                println!("{}", serde_json::json!({"synced": true, "pending": 0, "seconds": started.elapsed().as_secs_f64()}));
            } else {
                println!("outbox empty: everything sent and acknowledged");
            }
            return ExitCode::SUCCESS;
        }
        if started.elapsed() > timeout {
            if tty {
                eprintln!();
            }
            if json {
                println!("{}", serde_json::json!({"synced": false, "pending": q.pending}));
            } else {
                eprintln!("sparkctl: {} records still pending after {} s", q.pending, timeout.as_secs());
            }
            return ExitCode::from(1);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn rows(pairs: &[(&str, String)]) {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        println!("{k:<w$}  {v}");
    }
}

fn age(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 60.0 => format!("{s:.0} s ago"),
        Some(s) if s < 3600.0 => format!("{:.0} min ago", s / 60.0),
        Some(s) if s < 86400.0 => format!("{:.1} h ago", s / 3600.0),
        Some(s) => format!("{:.1} days ago", s / 86400.0),
    }
}

fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", U[i]) }
}

fn print_status(s: &StatusReport) {
    rows(&[
        ("device", s.device_id.clone()),
        ("version", s.version.clone()),
        ("uptime", format!("{} s", s.uptime_s)),
        ("engine", s.engine.active.map(|k| k.to_string()).unwrap_or_else(|| "none".into())),
        ("model", s.engine.model.clone()),
        ("inferences", format!("{} ok, {} failed, last {:.1} ms", s.inference.total, s.inference.failed, s.inference.last_latency_ms)),
        ("frames", format!("{} captured, {} dropped", s.inference.frames_captured, s.inference.frames_dropped)),
        ("queue", format!("{} pending ({}), oldest {}, {} dropped", s.queue.pending, bytes(s.queue.bytes), age(s.queue.oldest_age_s), s.queue.dropped)),
        ("link", format!("vpn {}, broker {}", up(s.link.vpn_up), if s.link.broker_connected { "connected" } else { "disconnected" })),
        ("records lost", s.records_lost.to_string()),
    ]);
}

fn up(b: bool) -> &'static str {
    if b { "up" } else { "down" }
}

fn print_queue(q: &QueueReport) {
    println!("{:<10} {:>10} {:>12} {:>10} {:>14}", "STREAM", "PENDING", "BYTES", "DROPPED", "OLDEST");
    for (name, s) in &q.streams {
        println!("{:<10} {:>10} {:>12} {:>10} {:>14}", name, s.pending, bytes(s.bytes), s.dropped, age(s.oldest_age_s));
    }
    println!("{:<10} {:>10} {:>12} {:>10} {:>14}", "total", q.pending, bytes(q.bytes), q.dropped, age(q.oldest_age_s));
    let eta = q.eta_s.map(|e| format!("{e:.0} s")).unwrap_or_else(|| "-".into());
    println!("drain rate {:.0} rec/s, time to empty {eta}; published {} acked {}", q.drain_rate_per_s, q.published, q.acked);
}

fn print_link(l: &LinkState) {
    rows(&[
        ("vpn", format!("{} ({})", up(l.vpn_up), l.vpn_interface.as_deref().unwrap_or("no gate configured"))),
        ("handshake", match l.handshake_age_s {
            Some(a) => format!("{a} s ago ({})", l.handshake_source.as_deref().unwrap_or("?")),
            None => l.handshake_source.clone().unwrap_or_else(|| "-".into()),
        }),
        ("vpn down for", l.vpn_down_since_ms.map(|t| format!("{:.0} s", (spark_edge::record::now_ms().saturating_sub(t)) as f64 / 1000.0)).unwrap_or_else(|| "-".into())),
        ("vpn error", l.vpn_last_error.clone().unwrap_or_else(|| "-".into())),
        ("broker", format!("{} {}", l.broker, if l.broker_connected { "connected" } else { "disconnected" })),
        ("reconnects", l.reconnects.to_string()),
        ("last error", l.last_error.clone().unwrap_or_else(|| "-".into())),
    ]);
}

fn print_engine(e: &EngineState) {
    rows(&[
        ("active", e.active.map(|k| k.to_string()).unwrap_or_else(|| "none".into())),
        ("model", e.model.clone()),
        ("hailo present", e.hailo_present.to_string()),
        ("fallbacks", e.fallbacks.to_string()),
        ("last error", e.last_error.clone().unwrap_or_else(|| "-".into())),
    ]);
}
