//! `sparkctl update status`, `update apply` and `config reload` on the daemon side: asks the
//! update agent (its own thread, owner of the update store) and turns its
//! answer into protocol types. Owns no update logic.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::protocol::{
    ConfigReloadReport, ErrorBody, ErrorCode, InstalledView, Response, UpdateApplyReport, UpdateReport, UpdateState,
    UpdateView,
};
use crate::update::agent::{AgentFailure, Request};
use crate::update::{Phase, UpdateError, UpdateRecord};

/// Waiting for room in the agent's queue (it may be busy with a transfer).
const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// An apply builds and checks a whole engine: allow for a slow model.
const APPLY_DEADLINE: Duration = Duration::from_secs(150);

fn view(r: &UpdateRecord) -> UpdateView {
    let (code, reason) = match &r.phase {
        Phase::Rejected { code, reason } => (Some(code.clone()), Some(reason.clone())),
        Phase::RolledBack { reason } => (None, Some(reason.clone())),
        _ => (None, None),
    };
    UpdateView {
        update_id: r.update_id.clone(),
        kind: r.kind.to_string(),
        name: r.name.clone(),
        version: r.version.to_string(),
        state: r.phase.as_str().into(),
        code,
        reason,
        updated_ms: r.updated_ms,
    }
}

fn unavailable(running: String, message: &str) -> UpdateReport {
    UpdateReport {
        state: UpdateState::Unavailable,
        installed_version: running,
        message: message.into(),
        installed: vec![],
        updates: vec![],
        trusted_keys: vec![],
        dropped_messages: 0,
        restart_required: vec![],
    }
}

async fn ask<T>(
    agent: &mpsc::Sender<Request>,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
    deadline: Duration,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    tokio::time::timeout(QUEUE_WAIT, agent.send(make(tx))).await.ok()?.ok()?;
    tokio::time::timeout(deadline, rx).await.ok()?.ok()
}

/// `running` is the version of the binary this process runs: a slot
/// binary's signed version, or the package's.
pub async fn status(agent: Option<&mpsc::Sender<Request>>, running: String) -> Response {
    let Some(agent) = agent else {
        return Response::Update(unavailable(
            running,
            "fleet updates are disabled: the update store or keys did not load (see the log)",
        ));
    };
    let Some(v) = ask(agent, |reply| Request::Status { reply }, QUEUE_WAIT).await else {
        return Response::Error(ErrorBody::new(ErrorCode::Busy, "the update agent did not answer in time; try again"));
    };
    let busy = v.records.iter().any(|r| r.phase.in_progress());
    let (state, message) = if v.trusted_keys.is_empty() {
        (
            UpdateState::Unavailable,
            "no trusted update keys (update.trusted_keys_file is empty): every update is refused".to_string(),
        )
    } else if busy {
        (UpdateState::InProgress, "an update is under way".to_string())
    } else {
        (UpdateState::Idle, format!("ready; trusted keys: {}", v.trusted_keys.join(", ")))
    };
    // The shadow's record is in `updates` (state `shadow`); its running figures go in the message.
    let message = match &v.shadow {
        Some(sh) => format!(
            "{message}; shadow {} {}: {} frames compared, agreement {:.3}, {} errors",
            sh.name, sh.version, sh.frames, sh.agreement, sh.errors
        ),
        None => message,
    };
    Response::Update(UpdateReport {
        state,
        installed_version: running,
        message,
        installed: v
            .installed
            .iter()
            .map(|(key, e)| {
                let (kind, name) = key.split_once('/').unwrap_or(("", key));
                InstalledView {
                    kind: kind.into(),
                    name: name.into(),
                    active: e.active.map(|v| v.to_string()),
                    previous: e.previous.map(|v| v.to_string()),
                    highest: e.highest.to_string(),
                }
            })
            .collect(),
        updates: v.records.iter().map(view).collect(),
        trusted_keys: v.trusted_keys,
        dropped_messages: v.dropped_messages,
        restart_required: v.restart_required,
    })
}

/// `update apply`, step 1: the signed envelope, checked like an MQTT manifest.
pub async fn apply_manifest(agent: Option<&mpsc::Sender<Request>>, envelope: String) -> Response {
    let envelope = envelope.into_bytes();
    apply(agent, |reply| Request::ApplyManifest { envelope, reply }).await
}

/// `update apply`, step 2..: one chunk; the last one verifies, stages and
/// activates the update before the answer.
pub async fn apply_chunk(agent: Option<&mpsc::Sender<Request>>, chunk: String) -> Response {
    let chunk = chunk.into_bytes();
    apply(agent, |reply| Request::ApplyChunk { chunk, reply }).await
}

async fn apply(
    agent: Option<&mpsc::Sender<Request>>,
    make: impl FnOnce(oneshot::Sender<Result<UpdateRecord, AgentFailure>>) -> Request,
) -> Response {
    let Some(agent) = agent else {
        return Response::Error(ErrorBody::new(ErrorCode::Unavailable, "fleet updates are disabled (see the log)"));
    };
    match ask(agent, make, APPLY_DEADLINE).await {
        Some(Ok(rec)) => Response::UpdateApplied(UpdateApplyReport { update: view(&rec) }),
        Some(Err(why)) => failure(&why),
        None => Response::Error(ErrorBody::new(
            ErrorCode::Busy,
            "the update agent did not answer in time; see `sparkctl update status`",
        )),
    }
}

/// `config reload`: the agent re-reads the file and applies it (the update
/// agent owns the live-applicable settings).
pub async fn config_reload(agent: Option<&mpsc::Sender<Request>>) -> Response {
    let Some(agent) = agent else {
        return Response::Error(ErrorBody::new(
            ErrorCode::Unavailable,
            "the update agent is not running (see the log)",
        ));
    };
    match ask(agent, |reply| Request::ReloadConfig { reply }, QUEUE_WAIT).await {
        Some(Ok(c)) => {
            Response::ConfigReloaded(ConfigReloadReport { applied: c.applied, restart_required: c.restart_required })
        }
        Some(Err(why)) => failure(&why),
        None => Response::Error(ErrorBody::new(ErrorCode::Busy, "the update agent did not answer in time; try again")),
    }
}

/// An agent failure as the protocol names it: its kind decides the code.
fn failure(why: &AgentFailure) -> Response {
    let code = match why {
        AgentFailure::Refused(_)
        | AgentFailure::InvalidConfig(_)
        | AgentFailure::StateDirChanged
        | AgentFailure::NoConfigFile => ErrorCode::Refused,
        AgentFailure::Store(UpdateError::CorruptState { .. }) => ErrorCode::Corrupt,
        AgentFailure::Store(UpdateError::UnknownUpdate { .. } | UpdateError::WrongPhase { .. }) => ErrorCode::Refused,
        AgentFailure::Store(_) => ErrorCode::Storage,
    };
    Response::Error(ErrorBody::new(code, crate::error_chain(why)))
}
