//! `spark-fleet diagnose DEVICE [doctor|status|queue|logs N]`: the
//! operator's side of remote diagnostics (docs/diagnostics.md).
//!
//! Owns signing a request with the fleet key, the MQTT exchange (subscribe
//! to the reply topic, publish, wait with a deadline, reassemble the
//! chunks) and printing the answer as `sparkctl` prints it on the device:
//! the same JSON with `--json`, a table otherwise. The wire format and its
//! checks are `control::diagnose`'s.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Packet, QoS};

use super::broker::{BrokerArgs, BrokerError, Session};
use super::signing_key::{KeyFileError, read_signing_key};
use crate::config::is_topic_segment;
use crate::control::diagnose::{self, Answer, Command, DiagRequest, ReassembleError, Reassembly};
use crate::control::doctor::{duration, human_bytes};
use crate::control::protocol::{Check, CheckStatus, QueueReport, StatusReport};

/// Exit codes: the answer came and is good / refused or failed / no answer.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_NO_ANSWER: u8 = 3;

/// What `spark-fleet diagnose` was asked.
#[derive(Debug, Clone)]
pub struct DiagnoseArgs {
    pub broker: BrokerArgs,
    pub prefix: String,
    pub device: String,
    pub command: Command,
    /// The fleet's private key (`spark-fleet keygen`'s `<key_id>.key`).
    pub key: PathBuf,
    /// How long to wait for the whole answer; also the request's lifetime
    /// (capped at [`diagnose::MAX_LIFETIME_SECS`]).
    pub timeout: Duration,
}

/// Why there is no answer to print.
#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error("device id {0:?} must be 1-64 characters of [A-Za-z0-9_.-]")]
    BadDevice(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("reading /dev/urandom for the nonce")]
    Random(#[source] std::io::Error),
    #[error("MQTT connection to {broker}")]
    Connect {
        broker: String,
        #[source]
        source: Box<rumqttc::ConnectionError>,
    },
    #[error("queueing an MQTT request")]
    Client(#[source] rumqttc::ClientError),
    #[error("no answer from {device} within {secs} s (is it online? spark-fleet devices)")]
    NoAnswer { device: String, secs: u64 },
    #[error("the answer from {device} is unusable")]
    BadReply {
        device: String,
        #[source]
        source: ReassembleError,
    },
}

impl DiagnoseError {
    /// The exit code this error means.
    pub fn exit_code(&self) -> u8 {
        match self {
            DiagnoseError::NoAnswer { .. } | DiagnoseError::Connect { .. } => EXIT_NO_ANSWER,
            _ => EXIT_FAILED,
        }
    }
}

/// Words on the command line that are not a diagnose command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected doctor, status, queue or `logs N` (N from 1 to {max})", max = diagnose::MAX_LOG_LINES)]
pub struct BadCommand(pub String);

/// `doctor`, `status`, `queue` or `logs N` (the default: `status`).
pub fn parse_command(words: &[String]) -> Result<Command, BadCommand> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let lines = |n: &str| n.parse::<u32>().ok().filter(|n| (1..=diagnose::MAX_LOG_LINES).contains(n));
    match w.as_slice() {
        [] | ["status"] => Ok(Command::Status),
        ["doctor"] => Ok(Command::Doctor),
        ["queue"] => Ok(Command::Queue),
        ["logs"] => Ok(Command::Logs { lines: 100 }),
        ["logs", n] => lines(n).map(|lines| Command::Logs { lines }).ok_or_else(|| BadCommand(w.join(" "))),
        _ => Err(BadCommand(w.join(" "))),
    }
}

fn random_nonce() -> Result<String, DiagnoseError> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).map_err(DiagnoseError::Random)?;
    Ok(hex::encode(b))
}

/// The signed request for `args` at `now` (Unix seconds) and its nonce.
pub fn signed_request(args: &DiagnoseArgs, now: u64) -> Result<(Vec<u8>, String), DiagnoseError> {
    if !is_topic_segment(&args.device) {
        return Err(DiagnoseError::BadDevice(args.device.clone()));
    }
    let (key_id, key) = read_signing_key(&args.key)?;
    let nonce = random_nonce()?;
    let lifetime = args.timeout.as_secs().clamp(1, diagnose::MAX_LIFETIME_SECS);
    let request = DiagRequest {
        purpose: diagnose::PURPOSE.into(),
        device_id: args.device.clone(),
        nonce: nonce.clone(),
        issued_at: now,
        expires_at: now + lifetime,
        command: args.command,
    };
    Ok((diagnose::sign_request(&request, &[(&key_id, &key)]), nonce))
}

/// Signs, publishes, and waits for the whole answer (see the module docs).
pub fn run(args: &DiagnoseArgs) -> Result<Answer, DiagnoseError> {
    let now = crate::record::now_ms() / 1000;
    let (request, nonce) = signed_request(args, now)?;
    let reply_topic = diagnose::topics::reply(&args.prefix, &args.device, &nonce);
    let client_id = format!("spark-fleet-diag-{}-{}", std::process::id(), &nonce[..8]);
    let opts = args.broker.mqtt_options(&Session {
        client_id: &client_id,
        keep_alive: Duration::from_secs(30),
        max_incoming: 4 << 20,
        max_outgoing: 64 << 10,
    })?;
    let (client, mut conn) = Client::new(opts, 16);
    client.subscribe(&reply_topic, QoS::AtLeastOnce).map_err(DiagnoseError::Client)?;
    let deadline = Instant::now() + args.timeout;
    let mut parts = Reassembly::default();
    let mut sent = false;
    let no_answer = || DiagnoseError::NoAnswer { device: args.device.clone(), secs: args.timeout.as_secs() };
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(no_answer());
        }
        let ev = match conn.recv_timeout(left) {
            Ok(ev) => ev,
            Err(_) => break Err(no_answer()),
        };
        match ev {
            // Subscribed before the request goes out, so no reply is missed.
            Ok(Event::Incoming(Packet::SubAck(_))) if !sent => {
                if let Err(e) = client.publish(
                    diagnose::topics::request(&args.prefix, &args.device),
                    QoS::AtLeastOnce,
                    false,
                    request.clone(),
                ) {
                    break Err(DiagnoseError::Client(e));
                }
                sent = true;
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == reply_topic => match parts.add(&p.payload) {
                Ok(Some(answer)) => break Ok(answer),
                Ok(None) => {}
                Err(source) => break Err(DiagnoseError::BadReply { device: args.device.clone(), source }),
            },
            Ok(_) => {}
            Err(e) => {
                break Err(match super::broker::permanent_failure(&args.broker.broker, &e) {
                    Some(fatal) => DiagnoseError::Broker(fatal),
                    None => DiagnoseError::Connect { broker: args.broker.broker.clone(), source: Box::new(e) },
                });
            }
        }
    };
    let _ = client.disconnect();
    outcome
}

/// `spark-fleet diagnose`: parses the command words, runs the exchange,
/// prints the answer (or why there is none) and returns the exit code (2
/// for words that are not a command).
pub fn main(
    broker: BrokerArgs,
    prefix: String,
    device: String,
    words: &[String],
    key: PathBuf,
    timeout: Duration,
    json: bool,
) -> u8 {
    let command = match parse_command(words) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spark-fleet diagnose: {e}");
            return 2;
        }
    };
    let args = DiagnoseArgs { broker, prefix, device, command, key, timeout };
    match run(&args) {
        Ok(answer) => {
            let (out, err, code) = render(command, &answer, json);
            print!("{out}");
            eprint!("{err}");
            code
        }
        Err(e) => {
            if json {
                let code = if e.exit_code() == EXIT_NO_ANSWER { "no_answer" } else { "failed" };
                println!("{}", serde_json::json!({"error": {"code": code, "message": crate::error_chain(&e)}}));
            }
            eprintln!("spark-fleet diagnose: {}", crate::error_chain(&e));
            e.exit_code()
        }
    }
}

/// What to print for `answer` and the exit code, as `sparkctl <cmd>` would
/// on the device: `(stdout, stderr, code)`.
pub fn render(command: Command, answer: &Answer, json: bool) -> (String, String, u8) {
    let v = match answer {
        Answer::Error(e) if json => {
            return (format!("{}\n", serde_json::json!({ "error": e })), String::new(), EXIT_FAILED);
        }
        Answer::Error(e) => {
            return (String::new(), format!("device refused: {} ({})\n", e.message, e.code), EXIT_FAILED);
        }
        Answer::Result(v) => v,
    };
    // sparkctl doctor exits 1 when a check failed.
    let code = match command {
        Command::Doctor if v["ok"] == false => EXIT_FAILED,
        _ => EXIT_OK,
    };
    if json {
        return (format!("{v}\n"), String::new(), code);
    }
    let unreadable = |what: &str, e: serde_json::Error| {
        (format!("{v:#}\n"), format!("the {what} answer has an unexpected shape ({e}); shown as JSON\n"), code)
    };
    let text = match command {
        Command::Status => match serde_json::from_value::<StatusReport>(v.clone()) {
            Ok(s) => status_table(&s),
            Err(e) => return unreadable("status", e),
        },
        Command::Queue => match serde_json::from_value::<QueueReport>(v.clone()) {
            Ok(q) => queue_table(&q),
            Err(e) => return unreadable("queue", e),
        },
        Command::Doctor => match serde_json::from_value::<Vec<Check>>(v["checks"].clone()) {
            Ok(checks) => doctor_table(&checks),
            Err(e) => return unreadable("doctor", e),
        },
        Command::Logs { .. } => match v["lines"].as_array() {
            Some(lines) => lines.iter().filter_map(|l| l.as_str()).map(|l| format!("{l}\n")).collect(),
            None => return (format!("{v:#}\n"), String::new(), code),
        },
    };
    (text, String::new(), code)
}

fn rows(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs.iter().map(|(k, v)| format!("{k:<w$}  {v}\n")).collect()
}

fn ago(s: Option<f64>) -> String {
    s.map(|s| format!("{} ago", duration(s))).unwrap_or_else(|| "-".into())
}

/// `sparkctl status`'s table (without colour).
pub fn status_table(s: &StatusReport) -> String {
    let engine = match s.engine.active {
        Some(k) => format!("{} ({})", k.as_str(), s.engine.model),
        None => "none".into(),
    };
    let l = &s.link;
    let vpn = match (&l.vpn_interface, l.vpn_up) {
        (None, _) => "no vpn gate".to_string(),
        (Some(i), up) => format!("vpn {i} {}", if up { "up" } else { "down" }),
    };
    let broker = if l.broker_connected { "connected" } else { "disconnected" };
    let mut table: Vec<(&str, String)> = vec![
        ("device", s.device_id.clone()),
        ("version", s.version.clone()),
        ("uptime", duration(s.uptime_s as f64)),
        ("engine", engine),
        (
            "inferences",
            format!(
                "{} ok, {} failed, last {:.1} ms",
                s.inference.total, s.inference.failed, s.inference.last_latency_ms
            ),
        ),
        ("frames", format!("{} captured, {} dropped", s.inference.frames_captured, s.inference.frames_dropped)),
    ];
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
        ("link", format!("{vpn}, broker {broker} ({})", l.broker)),
        ("records lost", s.records_lost.to_string()),
    ]);
    rows(&table)
}

/// `sparkctl queue`'s table.
pub fn queue_table(q: &QueueReport) -> String {
    let line =
        |a: &str, b: String, c: String, d: String, e: String| format!("{a:<10} {b:>10} {c:>12} {d:>10} {e:>16}\n");
    let mut out = line("STREAM", "PENDING".into(), "BYTES".into(), "DROPPED".into(), "OLDEST".into());
    for (name, s) in &q.streams {
        out += &line(name, s.pending.to_string(), human_bytes(s.bytes), s.dropped.to_string(), ago(s.oldest_age_s));
    }
    out += &line("total", q.pending.to_string(), human_bytes(q.bytes), q.dropped.to_string(), ago(q.oldest_age_s));
    let eta = q.eta_s.map(duration).unwrap_or_else(|| "-".into());
    out += &format!(
        "drain rate {:.0} rec/s, time to empty {eta}; published {} acked {}\n",
        q.drain_rate_per_s, q.published, q.acked
    );
    if q.disk_low || q.space_errors > 0 {
        out += &format!("disk low: {}; space errors: {} (see sparkctl doctor)\n", q.disk_low, q.space_errors);
    }
    out
}

/// `sparkctl doctor`'s list and summary.
pub fn doctor_table(checks: &[Check]) -> String {
    let w = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let status = match c.status {
            CheckStatus::Pass => "pass",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "FAIL",
        };
        out += &format!("{status}  {:<w$}  {}\n", c.name, c.detail);
        if let Some(fix) = &c.fix {
            out += &format!("      {:<w$}  fix: {fix}\n", "");
        }
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    out += &format!(
        "\n{} passed, {} warnings, {} failed\n",
        count(CheckStatus::Pass),
        count(CheckStatus::Warn),
        count(CheckStatus::Fail)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::diagnose::AnswerError;
    use ed25519_dalek::SigningKey;

    #[test]
    fn commands_parse_from_words() {
        let w = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(parse_command(&w("")), Ok(Command::Status));
        assert_eq!(parse_command(&w("doctor")), Ok(Command::Doctor));
        assert_eq!(parse_command(&w("logs 50")), Ok(Command::Logs { lines: 50 }));
        for bad in ["logs 0", "logs 1001", "logs x", "reboot", "status now"] {
            assert!(parse_command(&w(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_print_like_sparkctl_with_its_exit_codes() {
        let doctor = Answer::Result(serde_json::json!({"ok": false, "passed": 1, "warnings": 0, "failed": 1,
            "checks": [{"name": "broker", "status": "pass", "detail": "connected", "fix": null},
                       {"name": "disk", "status": "fail", "detail": "full", "fix": "free space"}]}));
        let (out, _, code) = render(Command::Doctor, &doctor, false);
        assert!(out.contains("FAIL  disk") && out.contains("fix: free space") && out.contains("1 passed"), "{out}");
        assert_eq!(code, EXIT_FAILED);
        let (out, _, code) = render(Command::Doctor, &doctor, true);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["failed"], 1);
        assert_eq!(code, EXIT_FAILED);
        let refused = Answer::Error(AnswerError { code: "expired".into(), message: "expired: ...".into() });
        let (out, err, code) = render(Command::Status, &refused, false);
        assert!(out.is_empty() && err.contains("(expired)"));
        assert_eq!(code, EXIT_FAILED);
        let (out, _, _) = render(Command::Status, &refused, true);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["error"]["code"], "expired");
        let logs = Answer::Result(serde_json::json!({"unit": "sparkd", "lines": ["a", "b"]}));
        assert_eq!(render(Command::Logs { lines: 2 }, &logs, false), ("a\nb\n".into(), String::new(), EXIT_OK));
        // A shape this version does not know is shown as JSON, not lost.
        let (out, err, code) = render(Command::Status, &Answer::Result(serde_json::json!({"x": 1})), false);
        assert!(out.contains("\"x\"") && err.contains("unexpected shape") && code == EXIT_OK);
    }

    #[test]
    fn the_request_is_signed_for_the_device_with_a_fresh_nonce_and_a_bounded_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let path = dir.path().join("k.key");
        std::fs::write(&path, format!("k1 {}\n", hex::encode(key.to_bytes()))).unwrap();
        let mut args = DiagnoseArgs {
            broker: BrokerArgs { broker: "mqtt://127.0.0.1:1".into(), auth: Default::default() },
            prefix: "spark".into(),
            device: "dev-1".into(),
            command: Command::Logs { lines: 10 },
            key: path,
            timeout: Duration::from_secs(3600),
        };
        let keys = crate::update::TrustedKeys::new(vec![crate::update::TrustedKey {
            key_id: "k1".into(),
            key: key.verifying_key(),
        }]);
        let now = crate::update::TRUSTED_TIME_FLOOR_UNIX + 5;
        let (bytes, nonce) = signed_request(&args, now).unwrap();
        let (_, nonce2) = signed_request(&args, now).unwrap();
        assert_ne!(nonce, nonce2);
        let tn = crate::update::TrustedNow { secs: now, basis: crate::update::TimeBasis::WallClock };
        let r = diagnose::verify(&bytes, &keys, "dev-1", tn).unwrap();
        assert_eq!((r.nonce, r.expires_at - r.issued_at), (nonce, diagnose::MAX_LIFETIME_SECS));
        args.device = "a/#".into();
        assert!(matches!(signed_request(&args, now), Err(DiagnoseError::BadDevice(_))));
    }
}
