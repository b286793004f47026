//! The daemon's diagnose agent: answers signed diagnose requests that
//! arrive over MQTT (`<prefix>/<device>/diag/request`) with what `sparkctl
//! <cmd> --json` would print, on `<prefix>/<device>/diag/reply/<nonce>`.
//!
//! Owns the diagnose [`Subscription`] (the uplink only routes its topic),
//! the in-memory [`ReplayGuard`], and the refusal counters in
//! `state::Shared::diag`. The decision is [`super::diagnose::verify`]'s.
//!
//! **Read-only:** a request reads the same reports the control socket
//! serves (status, queue, doctor) or the journal; nothing on the device
//! changes because of one (no file is written, nonces are not persisted).
//! Requests are answered one at a time on this task (doctor and logs on
//! the blocking pool), so a flood waits in the bounded inbound queue and
//! the uplink drops and counts what does not fit (`uplink::INBOUND_WAIT`).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::diagnose::{self, Answer, AnswerError, Command, ReplayGuard};
use super::protocol::CheckStatus;
use super::server::{ControlContext, doctor_report, queue_report, status_report};
use crate::config::Config;
use crate::update::{TrustedKeys, UpdateError, read_trusted_time_high_water, trusted_now, wall_clock_secs};
use crate::uplink::{Inbound, Outbound, Subscription};

/// Requests waiting for the agent.
const INBOUND_QUEUE: usize = 8;
/// Reply messages waiting for the uplink.
const OUTBOUND_QUEUE: usize = 8;
/// `logs`: journalctl must finish within this.
const JOURNAL_DEADLINE: Duration = Duration::from_secs(15);
/// `logs`: the unit whose journal is read.
const UNIT: &str = "sparkd";

/// Why diagnostics cannot start (the daemon logs it and runs without them).
#[derive(Debug, thiserror::Error)]
pub enum DiagSetupError {
    #[error("loading the trusted keys for diagnose requests")]
    Keys(#[source] UpdateError),
}

/// The agent's half; [`run`] takes it once the control context exists.
pub struct DiagInbox {
    inbound: mpsc::Receiver<Inbound>,
    outbound: mpsc::Sender<Outbound>,
    keys: TrustedKeys,
    device_id: String,
    prefix: String,
    state_dir: PathBuf,
}

/// The diagnose subscription for the uplink and the agent's inbox; `None`
/// when `update.trusted_keys_file` is empty (no trust root: nothing could
/// be verified, so the topic is not even subscribed).
pub fn link(
    config: &Config,
    device_id: &str,
    state_dir: PathBuf,
) -> Result<Option<(Subscription, DiagInbox)>, DiagSetupError> {
    if config.update.trusted_keys_file.as_os_str().is_empty() {
        return Ok(None);
    }
    let keys = TrustedKeys::load(&config.update.trusted_keys_file).map_err(DiagSetupError::Keys)?;
    let prefix = config.mqtt.topic_prefix.clone();
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let subscription = Subscription {
        topics: vec![diagnose::topics::request(&prefix, device_id)],
        inbound: in_tx,
        outbound: out_rx,
        dropped: Arc::default(),
    };
    let inbox =
        DiagInbox { inbound: in_rx, outbound: out_tx, keys, device_id: device_id.to_string(), prefix, state_dir };
    Ok(Some((subscription, inbox)))
}

/// Answers requests until shutdown.
pub async fn run(mut inbox: DiagInbox, ctx: Arc<ControlContext>, mut shutdown: watch::Receiver<bool>) {
    let mut guard = ReplayGuard::default();
    loop {
        let msg = tokio::select! {
            m = inbox.inbound.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        handle(&mut inbox, &mut guard, &ctx, msg).await;
    }
}

async fn handle(inbox: &mut DiagInbox, guard: &mut ReplayGuard, ctx: &Arc<ControlContext>, msg: Inbound) {
    // A retained request would come back on every reconnect: never a real
    // operator's (spark-fleet publishes without retain), so not answered.
    if msg.retained {
        let n = ctx.shared.diag.refuse("retained");
        if n.is_power_of_two() {
            tracing::warn!(refused = n, "retained diagnose request ignored");
        }
        return;
    }
    // Trusted time as the update store judges it; read only, never moved.
    let high_water = read_trusted_time_high_water(&inbox.state_dir).unwrap_or(0);
    let now = trusted_now(high_water, wall_clock_secs());
    let admitted = diagnose::verify(&msg.payload, &inbox.keys, &inbox.device_id, now)
        .and_then(|r| guard.admit(&r, now).map(|()| r));
    let (nonce, answer) = match admitted {
        Ok(r) => {
            tracing::info!(command = r.command.name(), nonce = %r.nonce, "diagnose request answered");
            let answer = answer(r.command, ctx).await;
            ctx.shared.diag.answered.fetch_add(1, Ordering::Relaxed);
            (r.nonce, answer)
        }
        Err(refusal) => {
            let n = ctx.shared.diag.refuse(refusal.code());
            // The world can send these at will: log the 1st, 2nd, 4th, ... of each reason.
            if n.is_power_of_two() {
                tracing::warn!(reason = refusal.code(), refused = n, "diagnose request refused: {refusal}");
            }
            let Some(nonce) = diagnose::reply_nonce(&msg.payload) else { return };
            let error = AnswerError { code: refusal.code().into(), message: refusal.to_string() };
            (nonce, Answer::Error(error))
        }
    };
    let topic = diagnose::topics::reply(&inbox.prefix, &inbox.device_id, &nonce);
    for chunk in diagnose::chunk_answer(&nonce, &inbox.device_id, &answer) {
        let payload = serde_json::to_vec(&chunk).unwrap_or_default();
        // Waits for room: the uplink drains this queue whenever it is connected.
        if inbox.outbound.send(Outbound { topic: topic.clone(), payload }).await.is_err() {
            return;
        }
    }
}

fn failed(code: &str, message: impl Into<String>) -> Answer {
    Answer::Error(AnswerError { code: code.into(), message: message.into() })
}

fn result(v: Result<serde_json::Value, serde_json::Error>) -> Answer {
    match v {
        Ok(v) => Answer::Result(v),
        Err(e) => failed("failed", e.to_string()),
    }
}

/// What `sparkctl <cmd> --json` would print for `command`.
async fn answer(command: Command, ctx: &Arc<ControlContext>) -> Answer {
    match command {
        Command::Status => match status_report(ctx) {
            Ok(s) => result(serde_json::to_value(s)),
            Err(e) => failed("failed", crate::error_chain(&e)),
        },
        Command::Queue => match queue_report(ctx) {
            Ok(q) => result(serde_json::to_value(q)),
            Err(e) => failed("failed", crate::error_chain(&e)),
        },
        Command::Doctor => {
            let ctx = ctx.clone();
            match tokio::task::spawn_blocking(move || doctor_report(&ctx)).await {
                Ok(r) => {
                    let count = |s| r.checks.iter().filter(|c| c.status == s).count();
                    Answer::Result(serde_json::json!({
                        "ok": r.worst() != CheckStatus::Fail,
                        "passed": count(CheckStatus::Pass),
                        "warnings": count(CheckStatus::Warn),
                        "failed": count(CheckStatus::Fail),
                        "checks": r.checks,
                    }))
                }
                Err(e) => failed("failed", format!("doctor did not finish: {e}")),
            }
        }
        Command::Logs { lines } => {
            let job = tokio::task::spawn_blocking(move || journal(lines));
            match tokio::time::timeout(JOURNAL_DEADLINE, job).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => failed("journal_failed", e.to_string()),
                Err(_) => failed("journal_failed", format!("journalctl did not finish within {JOURNAL_DEADLINE:?}")),
            }
        }
    }
}

/// The last `lines` lines of the unit's journal (`journalctl -u sparkd -n
/// N -o cat`), read up to the answer's bound; an error naming why when
/// there is no journal.
fn journal(lines: u32) -> Answer {
    let spawned = std::process::Command::new("journalctl")
        .args(["--unit", UNIT, "--no-pager", "--lines", &lines.to_string(), "--output", "cat"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return failed("no_journal", "journalctl not found: this device has no systemd journal");
        }
        Err(e) => return failed("journal_failed", format!("running journalctl: {e}")),
    };
    let limit = diagnose::MAX_ANSWER_BYTES as u64 + 1;
    let mut out = Vec::new();
    let read = child.stdout.take().map(|s| s.take(limit).read_to_end(&mut out));
    if out.len() as u64 >= limit {
        // More than an answer can carry: stop journalctl rather than wait on a full pipe.
        let _ = child.kill();
    }
    let mut err = Vec::new();
    if let Some(s) = child.stderr.take() {
        let _ = s.take(4096).read_to_end(&mut err);
    }
    let status = child.wait();
    if let Some(Err(e)) = read {
        return failed("journal_failed", format!("reading journalctl's output: {e}"));
    }
    let text = String::from_utf8_lossy(&out);
    let got: Vec<&str> = text.lines().filter(|l| !l.starts_with("-- ")).collect();
    let why = String::from_utf8_lossy(&err).trim().to_string();
    match status {
        Ok(s) if s.success() || out.len() as u64 >= limit => {}
        Ok(_) | Err(_) => return failed("journal_failed", format!("journalctl failed: {why}")),
    }
    if got.is_empty() {
        return failed(
            "no_journal",
            format!(
                "no journal entries for unit {UNIT}{}: sparkd is not running under systemd, or its user may not \
                 read the journal (group systemd-journal)",
                if why.is_empty() { String::new() } else { format!(" ({why})") }
            ),
        );
    }
    Answer::Result(serde_json::json!({ "unit": UNIT, "lines": got }))
}
