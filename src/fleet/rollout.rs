//! Staged rollouts (`spark-fleet rollout`): the decision core and the
//! operator-side state file.
//!
//! Owns: checking a rollout's input before anything is pushed (waves,
//! soak, halt rule, target group), the deterministic order of devices and
//! their waves, what each device's update reports mean for the rollout,
//! the figures of a wave and the decision taken on them, and the state file
//! (`<state-dir>/<id>.json`, written atomically after every step that
//! matters). Pure apart from the state file: no MQTT, no clock (callers pass
//! `now_ms`). The MQTT side is `fleet::rollout_run`.
//!
//! **Invariant:** a device is marked `pushing` in the state file before its
//! manifest is published and `pushed` once the broker acknowledged every
//! message of it, so a rollout resumed after a crash never pushes again to
//! a device marked `pushed`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::devices::{Device, Online};
use super::halt_rule::{Rule, RuleError, Shares, Truth};
use crate::update::{Phase as UpdatePhase, ShadowReport, StateReport};

/// Largest `update/state` payload read; a device's real one is a few hundred
/// bytes. Larger ones mark the device `unknown`.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;

/// Input refused before anything is pushed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--waves {text:?}: {why}")]
    Waves { text: String, why: &'static str },
    #[error("duration {text:?}: expected a number with a unit s, m or h (e.g. 2s, 10m, 1h)")]
    Duration { text: String },
    #[error("--halt-when: {0}")]
    HaltRule(#[from] RuleError),
    #[error("no online device {} among the {statuses} retained statuses", match .group { Some(g) => format!("in group {g:?}"), None => "at all".into() })]
    NoDevices { group: Option<String>, statuses: usize },
}

/// `1%,10%,50%,100%` → `[1, 10, 50, 100]`: strictly increasing, ending at 100.
pub fn parse_waves(text: &str) -> Result<Vec<u8>, PlanError> {
    let bad = |why| PlanError::Waves { text: text.to_string(), why };
    let mut out: Vec<u8> = Vec::new();
    for part in text.split(',') {
        let p = part.trim();
        let n = p.strip_suffix('%').unwrap_or(p).trim();
        let v: u8 = n.parse().map_err(|_| bad("each wave is a whole percentage 1%..100%"))?;
        if v == 0 || v > 100 {
            return Err(bad("each wave is a whole percentage 1%..100%"));
        }
        if out.last().is_some_and(|l| *l >= v) {
            return Err(bad("waves must be strictly increasing"));
        }
        out.push(v);
    }
    if out.last() != Some(&100) {
        return Err(bad("the last wave must be 100%"));
    }
    Ok(out)
}

/// `2s`, `10m`, `1h` (or plain seconds).
pub fn parse_duration(text: &str) -> Result<Duration, PlanError> {
    let t = text.trim();
    let bad = || PlanError::Duration { text: text.to_string() };
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    // A week is more than any soak; the bound keeps Instant arithmetic safe.
    if secs > 7 * 86_400 {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

/// The devices of the rollout in their deterministic order: by SHA-256 of
/// the id (ties, which do not happen, by id). A device's place does not
/// depend on the other devices, so adding one to the group moves no one.
pub fn order_devices(mut ids: Vec<String>) -> Vec<String> {
    let key = |id: &str| -> [u8; 32] { Sha256::digest(id.as_bytes()).into() };
    ids.sort_by_cached_key(|id| (key(id), id.clone()));
    ids.dedup();
    ids
}

/// How many devices have been pushed once wave `i` is done: ceil(n·p/100),
/// at least one in the first wave.
pub fn cumulative_sizes(n: usize, waves: &[u8]) -> Vec<usize> {
    waves.iter().map(|p| (n * usize::from(*p)).div_ceil(100).max(1).min(n)).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Push {
    Pending,
    /// Marked before publishing; not known to have reached the broker.
    Pushing,
    /// The broker acknowledged the manifest and every chunk.
    Pushed,
}

/// What a device's reports say about this rollout's update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing heard yet.
    None,
    /// Received, verified, staged or activating.
    InProgress,
    Active,
    /// Refused as not newer: the device already runs this version (a
    /// replayed push) or a newer one. Not a failure.
    AlreadyCurrent,
    RolledBack {
        reason: String,
    },
    /// Refused for another reason (`code` is the device's rejection code).
    Failed {
        code: String,
    },
    /// The device answered with something unreadable.
    Unknown {
        problem: String,
    },
}

impl Outcome {
    /// No later report changes the judgement (a readable report still
    /// replaces `Unknown`).
    fn is_final(&self) -> bool {
        matches!(self, Outcome::Active | Outcome::AlreadyCurrent | Outcome::RolledBack { .. } | Outcome::Failed { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub id: String,
    /// Index into `waves`.
    pub wave: usize,
    pub push: Push,
    pub outcome: Outcome,
    /// The `--rollback-on-halt` push, when the rollout halted in this device's wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Push>,
    /// The latest shadow comparison this device reported for the update
    /// (a `--shadow` push): agreement and the frames behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSeen>,
}

/// A device's shadow agreement (pooled F1 against its live model, docs/updates.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShadowSeen {
    pub agreement: f64,
    pub frames: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RolloutPhase {
    Running,
    Halted { wave: usize, reason: String },
    Completed,
    Aborted,
}

impl RolloutPhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            RolloutPhase::Running => "running",
            RolloutPhase::Halted { .. } => "halted",
            RolloutPhase::Completed => "completed",
            RolloutPhase::Aborted => "aborted",
        }
    }
}

/// The figures a wave was judged on. Each share is over `judged` (the
/// wave's devices minus the `unknown` ones); a device can count in several.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub devices: usize,
    pub judged: usize,
    pub unknown: usize,
    pub active: usize,
    pub rolled_back: usize,
    pub failed: usize,
    pub fallback: usize,
    pub offline: usize,
    /// Online, no final report by the end of the report timeout (in `failed`).
    pub no_report: usize,
    /// Shadow agreement of the judged devices that compared frames, weighted
    /// by their frames; `None` when none did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// Devices behind `agreement`.
    #[serde(default)]
    pub agreement_devices: usize,
}

impl Figures {
    pub fn shares(&self) -> Shares {
        let share = |n: usize| (self.judged > 0).then(|| n as f64 / self.judged as f64);
        Shares {
            rolled_back: share(self.rolled_back),
            failed: share(self.failed),
            fallback: share(self.fallback),
            offline: share(self.offline),
            agreement: self.agreement,
        }
    }

    pub fn summary(&self) -> String {
        let pct = |n: usize| if self.judged == 0 { 0.0 } else { 100.0 * n as f64 / self.judged as f64 };
        format!(
            "{} devices, {} judged, {} unknown: active {}, rolled_back {} ({:.1}%), failed {} ({:.1}%, {} without a report), fallback {} ({:.1}%), offline {} ({:.1}%)",
            self.devices,
            self.judged,
            self.unknown,
            self.active,
            self.rolled_back,
            pct(self.rolled_back),
            self.failed,
            pct(self.failed),
            self.no_report,
            self.fallback,
            pct(self.fallback),
            self.offline,
            pct(self.offline),
        ) + &match self.agreement {
            Some(a) => format!(", shadow agreement {a:.3} over {} devices", self.agreement_devices),
            None => String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Proceed,
    Halt,
}

/// One decision, with the figures that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub wave: usize,
    pub percent: u8,
    /// When the wave's soak began (its last push acknowledged); `None` for
    /// a wave no device joins.
    #[serde(default)]
    pub soak_started_ms: Option<u64>,
    pub at_ms: u64,
    pub figures: Figures,
    pub verdict: Verdict,
    /// `true`, `false` or `unknown` (a metric no device reported).
    pub rule: String,
    pub text: String,
}

/// What the caller is to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Mark `pushing`, publish the bundle to this device, mark `pushed`.
    Push(String),
    /// Same for the `--rollback-on-halt` bundle.
    PushRollback(String),
    /// Every device of the wave is pushed: the soak starts now.
    StartSoak,
    /// Nothing to do before this time (or a report that settles the wave).
    WaitUntil(u64),
    /// Judge the current wave now.
    Judge,
    /// Completed, halted (rollback pushed) or aborted.
    Finished,
}

/// How `rollout start` reached the broker, besides the URL
/// ([`Rollout::broker`]): kept in the state file so `resume` reconnects the
/// same way. Paths and names only: the password stays in its file and the
/// client key in its own; neither is ever read into the state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Connection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The file the password is read from on every connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// Everything `spark-fleet rollout start` was given, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub bundle: PathBuf,
    pub update_id: String,
    pub kind: String,
    pub name: String,
    pub version: String,
    pub rollback_bundle: Option<PathBuf>,
    pub rollback_update_id: Option<String>,
    pub group: Option<String>,
    pub broker: String,
    pub connection: Connection,
    pub prefix: String,
    pub waves: Vec<u8>,
    pub soak: Duration,
    pub report_timeout: Duration,
    pub halt_when: String,
}

/// The persisted rollout (`<state-dir>/<id>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub created_ms: u64,
    pub bundle: PathBuf,
    pub update_id: String,
    pub kind: String,
    pub name: String,
    pub version: String,
    pub rollback_bundle: Option<PathBuf>,
    pub rollback_update_id: Option<String>,
    pub group: Option<String>,
    pub broker: String,
    /// Absent from state files written before it existed: `resume` then
    /// needs the flags again.
    #[serde(default)]
    pub connection: Connection,
    pub prefix: String,
    pub waves: Vec<u8>,
    pub soak_ms: u64,
    pub report_timeout_ms: u64,
    pub halt_when: String,
    /// In rollout order.
    pub devices: Vec<DeviceEntry>,
    /// The wave under way (or the last one, once finished).
    pub wave: usize,
    pub soak_started_ms: Option<u64>,
    pub phase: RolloutPhase,
    pub decisions: Vec<Decision>,
}

/// A view of the retained statuses: the row of a device, if any.
pub trait Statuses {
    fn status(&self, device: &str) -> Option<&Device>;
}

impl Statuses for BTreeMap<String, Device> {
    fn status(&self, device: &str) -> Option<&Device> {
        self.get(device)
    }
}

impl Rollout {
    /// Checks `plan` against the fleet (`rows`: the retained statuses) and
    /// assigns waves. The target is every online device of the group (every
    /// online device without `--group`); a device whose status is offline or
    /// unreadable is not targeted.
    pub fn plan(plan: Plan, rows: &[&Device], now_ms: u64) -> Result<Rollout, PlanError> {
        Rule::parse(&plan.halt_when)?;
        let targets: Vec<String> = rows
            .iter()
            .filter(|d| d.state == Online::Online)
            .filter(|d| plan.group.as_ref().is_none_or(|g| d.group.as_ref() == Some(g)))
            .map(|d| d.device_id.clone())
            .collect();
        if targets.is_empty() {
            return Err(PlanError::NoDevices { group: plan.group.clone(), statuses: rows.len() });
        }
        let ordered = order_devices(targets);
        let sizes = cumulative_sizes(ordered.len(), &plan.waves);
        let devices = ordered
            .into_iter()
            .enumerate()
            .map(|(i, id)| DeviceEntry {
                id,
                wave: sizes.iter().position(|s| i < *s).unwrap_or(sizes.len() - 1),
                push: Push::Pending,
                outcome: Outcome::None,
                rollback: None,
                shadow: None,
            })
            .collect();
        let digest = Sha256::digest(format!("{}|{:?}|{now_ms}", plan.update_id, plan.group).as_bytes());
        Ok(Rollout {
            id: format!("r-{}", &hex::encode(digest)[..12]),
            created_ms: now_ms,
            bundle: plan.bundle,
            update_id: plan.update_id,
            kind: plan.kind,
            name: plan.name,
            version: plan.version,
            rollback_bundle: plan.rollback_bundle,
            rollback_update_id: plan.rollback_update_id,
            group: plan.group,
            broker: plan.broker,
            connection: plan.connection,
            prefix: plan.prefix,
            waves: plan.waves,
            soak_ms: plan.soak.as_millis() as u64,
            report_timeout_ms: plan.report_timeout.as_millis() as u64,
            halt_when: plan.halt_when,
            devices,
            wave: 0,
            soak_started_ms: None,
            phase: RolloutPhase::Running,
            decisions: Vec::new(),
        })
    }

    fn rule(&self) -> Rule {
        // Checked by `plan`; a hand-edited state file that no longer parses
        // halts on the first judgement rather than pushing on.
        Rule::parse(&self.halt_when).unwrap_or(Rule::Cmp {
            metric: super::halt_rule::Metric::Failed,
            op: super::halt_rule::Op::Ge,
            threshold: 0.0,
        })
    }

    pub fn wave_devices(&self, wave: usize) -> impl Iterator<Item = &DeviceEntry> {
        self.devices.iter().filter(move |d| d.wave == wave)
    }

    pub fn device_mut(&mut self, id: &str) -> Option<&mut DeviceEntry> {
        self.devices.iter_mut().find(|d| d.id == id)
    }

    /// The next step at `now_ms`, given the retained statuses.
    pub fn next_step(&self, now_ms: u64, statuses: &dyn Statuses) -> Step {
        match &self.phase {
            RolloutPhase::Running => {}
            RolloutPhase::Halted { wave, .. } => {
                if self.rollback_bundle.is_some()
                    && let Some(d) = self
                        .wave_devices(*wave)
                        .find(|d| d.push != Push::Pending && d.rollback.is_none_or(|r| r != Push::Pushed))
                {
                    return Step::PushRollback(d.id.clone());
                }
                return Step::Finished;
            }
            RolloutPhase::Completed | RolloutPhase::Aborted => return Step::Finished,
        }
        if let Some(d) = self.wave_devices(self.wave).find(|d| d.push != Push::Pushed) {
            return Step::Push(d.id.clone());
        }
        if self.wave_devices(self.wave).next().is_none() {
            // A small group: this percentage adds no device. Nothing to soak.
            return Step::Judge;
        }
        let Some(start) = self.soak_started_ms else { return Step::StartSoak };
        let soak_end = start.saturating_add(self.soak_ms);
        if now_ms < soak_end {
            return Step::WaitUntil(soak_end);
        }
        let timeout = soak_end.saturating_add(self.report_timeout_ms);
        let settled = self.wave_devices(self.wave).all(|d| settled(d, statuses.status(&d.id)));
        if settled || now_ms >= timeout { Step::Judge } else { Step::WaitUntil(timeout) }
    }

    /// Takes one `update/state` payload of `device` (from its topic). Returns
    /// `true` when the device's outcome changed (the caller persists it).
    pub fn observe_report(&mut self, device: &str, payload: &[u8]) -> bool {
        let update_id = self.update_id.clone();
        let Some(d) = self.device_mut(device) else { return false };
        if d.push == Push::Pending {
            return false;
        }
        let next = match classify_report(device, &update_id, payload) {
            Reading::Other => return false,
            Reading::Shadow(seen) => {
                let changed = d.shadow != Some(seen) || !d.outcome.is_final();
                d.shadow = Some(seen);
                d.outcome = Outcome::Active;
                return changed;
            }
            Reading::Garbage(problem) => {
                if d.outcome.is_final() {
                    return false;
                }
                Outcome::Unknown { problem }
            }
            Reading::Outcome(o) => {
                // A replayed push answers not_newer after `active`: keep `active`.
                if d.outcome.is_final() && (o == Outcome::AlreadyCurrent || o == Outcome::InProgress) {
                    return false;
                }
                if o == Outcome::InProgress && matches!(d.outcome, Outcome::Unknown { .. }) {
                    return false;
                }
                o
            }
        };
        if d.outcome == next {
            return false;
        }
        d.outcome = next;
        true
    }

    /// The figures of wave `wave` now.
    pub fn figures(&self, wave: usize, statuses: &dyn Statuses) -> Figures {
        let mut f = Figures::default();
        let (mut agreeing, mut frames) = (0.0, 0u64);
        for d in self.wave_devices(wave) {
            f.devices += 1;
            let status = statuses.status(&d.id);
            let state = status.map(|s| s.state);
            let unknown = matches!(d.outcome, Outcome::Unknown { .. })
                || (state == Some(Online::Unknown) && !d.outcome.is_final());
            if unknown {
                f.unknown += 1;
                continue;
            }
            f.judged += 1;
            let offline = state == Some(Online::Offline);
            f.offline += usize::from(offline);
            f.fallback += usize::from(status.is_some_and(|s| s.on_cpu_fallback()));
            if let Some(seen) = d.shadow.filter(|s| s.frames > 0 && s.agreement.is_finite()) {
                agreeing += seen.agreement.clamp(0.0, 1.0) * seen.frames as f64;
                frames = frames.saturating_add(seen.frames);
                f.agreement_devices += 1;
            }
            match &d.outcome {
                Outcome::Active | Outcome::AlreadyCurrent => f.active += 1,
                Outcome::RolledBack { .. } => f.rolled_back += 1,
                Outcome::Failed { .. } => f.failed += 1,
                Outcome::None | Outcome::InProgress | Outcome::Unknown { .. } => {
                    if !offline {
                        f.failed += 1;
                        f.no_report += 1;
                    }
                }
            }
        }
        f.agreement = (frames > 0).then(|| agreeing / frames as f64);
        f
    }

    /// Judges the current wave: records the decision and moves on (next
    /// wave, completed) or halts.
    pub fn judge(&mut self, now_ms: u64, statuses: &dyn Statuses) -> Decision {
        let wave = self.wave;
        let figures = self.figures(wave, statuses);
        let truth = self.rule().eval(&figures.shares());
        let (verdict, why) = if figures.devices == 0 {
            (Verdict::Proceed, "no device joins in this wave".to_string())
        } else if figures.judged == 0 {
            (Verdict::Halt, "no device of the wave could be judged".to_string())
        } else {
            match truth {
                Truth::True => (Verdict::Halt, format!("halt rule `{}` is true", self.halt_when)),
                Truth::False => (Verdict::Proceed, format!("halt rule `{}` is false", self.halt_when)),
                Truth::Unknown => (
                    Verdict::Proceed,
                    format!(
                        "halt rule `{}` is unknown (a metric it reads was not reported); proceeding",
                        self.halt_when
                    ),
                ),
            }
        };
        let percent = self.waves.get(wave).copied().unwrap_or(100);
        let last = wave + 1 >= self.waves.len();
        let next = match verdict {
            Verdict::Halt => {
                format!(
                    "halted{}",
                    if self.rollback_bundle.is_some() { "; pushing the rollback bundle to the wave" } else { "" }
                )
            }
            Verdict::Proceed if last => "rollout completed".to_string(),
            Verdict::Proceed => format!("proceeding to wave {} ({}%)", wave + 2, self.waves[wave + 1]),
        };
        let text = format!("wave {} ({percent}%): {}; {why}: {next}", wave + 1, figures.summary());
        let decision = Decision {
            wave,
            percent,
            soak_started_ms: self.soak_started_ms,
            at_ms: now_ms,
            figures,
            verdict,
            rule: match truth {
                Truth::True => "true",
                Truth::False => "false",
                Truth::Unknown => "unknown",
            }
            .into(),
            text: text.clone(),
        };
        self.decisions.push(decision.clone());
        match verdict {
            Verdict::Halt => self.phase = RolloutPhase::Halted { wave, reason: text },
            Verdict::Proceed if last => self.phase = RolloutPhase::Completed,
            Verdict::Proceed => {
                self.wave += 1;
                self.soak_started_ms = None;
            }
        }
        decision
    }

    /// On resume: a device left `pushing` whose report or status shows the
    /// update reached it counts as pushed (the others are pushed again; a
    /// device ignores a replayed update, and `not_newer` is no failure).
    pub fn settle_interrupted_pushes(&mut self, statuses: &dyn Statuses) -> Vec<String> {
        let running = format!("{} {}", self.name, self.version);
        let (kind, version) = (self.kind.clone(), self.version.clone());
        let mut settled = Vec::new();
        for d in self.devices.iter_mut().filter(|d| d.push == Push::Pushing) {
            let s = statuses.status(&d.id);
            let shows = match kind.as_str() {
                "model" => s.is_some_and(|s| s.model.as_deref() == Some(running.as_str())),
                "binary" => s.is_some_and(|s| s.version.as_deref() == Some(version.as_str())),
                _ => false,
            };
            if d.outcome != Outcome::None || shows {
                d.push = Push::Pushed;
                settled.push(d.id.clone());
            }
        }
        settled
    }

    /// `(pushed, devices)` of the rollout so far.
    pub fn progress(&self) -> (usize, usize) {
        (self.devices.iter().filter(|d| d.push == Push::Pushed).count(), self.devices.len())
    }
}

fn settled(d: &DeviceEntry, status: Option<&Device>) -> bool {
    d.outcome.is_final()
        || matches!(d.outcome, Outcome::Unknown { .. })
        || status.is_some_and(|s| s.state != Online::Online)
}

enum Reading {
    Outcome(Outcome),
    /// A shadow report of this update with its comparison's figures.
    Shadow(ShadowSeen),
    Garbage(String),
    /// A readable report about another update.
    Other,
}

fn classify_report(device: &str, update_id: &str, payload: &[u8]) -> Reading {
    if payload.len() > MAX_REPORT_BYTES {
        return Reading::Garbage(format!("update report of {} bytes (limit {MAX_REPORT_BYTES})", payload.len()));
    }
    let r: StateReport = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return Reading::Garbage(format!("unreadable update report: {e}")),
    };
    if r.device_id != device {
        let named: String = r.device_id.chars().take(64).collect();
        return Reading::Garbage(format!("update report names device {named:?}"));
    }
    if r.update_id != update_id {
        return Reading::Other;
    }
    if matches!(r.phase, UpdatePhase::Shadow)
        && let Ok(shadow) = serde_json::from_slice::<ShadowReport>(payload)
    {
        let f = &shadow.shadow.figures;
        return Reading::Shadow(ShadowSeen { agreement: f.agreement, frames: f.frames });
    }
    Reading::Outcome(match r.phase {
        UpdatePhase::Received | UpdatePhase::Verified | UpdatePhase::Staged | UpdatePhase::Activating => {
            Outcome::InProgress
        }
        UpdatePhase::Active | UpdatePhase::Superseded => Outcome::Active,
        UpdatePhase::RolledBack { reason } => Outcome::RolledBack { reason: reason.chars().take(200).collect() },
        UpdatePhase::Rejected { code, .. } if code == "not_newer" => Outcome::AlreadyCurrent,
        UpdatePhase::Rejected { code, .. } => Outcome::Failed { code: code.chars().take(64).collect() },
        // A shadow push took when the device evaluates it (or did until replaced).
        UpdatePhase::Shadow | UpdatePhase::ShadowEnded { .. } => Outcome::Active,
        UpdatePhase::ShadowFailed { code, .. } => Outcome::Failed { code: code.chars().take(64).collect() },
    })
}

/// Reading and writing the state files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rollout state {path} is not readable")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no rollout {id} in {dir}")]
    NotFound { id: String, dir: PathBuf },
    #[error("rollout id {0:?} is not of the form r-<12 hex digits>")]
    BadId(String),
}

/// The folder of state files.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> Result<PathBuf, StoreError> {
        let ok = id.len() == 14 && id.starts_with("r-") && id[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(StoreError::BadId(id.chars().take(64).collect()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    fn abort_marker(&self, id: &str) -> Result<PathBuf, StoreError> {
        Ok(self.path(id)?.with_extension("abort"))
    }

    /// Atomic replace (write, fsync, rename, fsync the folder).
    pub fn save(&self, r: &Rollout) -> Result<(), StoreError> {
        let path = self.path(&r.id)?;
        crate::sys::durable::create_dir_all_synced(&self.dir).map_err(|source| StoreError::Io {
            what: "creating",
            path: self.dir.clone(),
            source,
        })?;
        let bytes =
            serde_json::to_vec_pretty(r).map_err(|source| StoreError::Corrupt { path: path.clone(), source })?;
        crate::sys::durable::write_atomic(&path, &bytes).map_err(|source| StoreError::Io {
            what: "writing",
            path,
            source,
        })
    }

    /// The rollout `id`, marked aborted when `abort` was asked for it.
    pub fn load(&self, id: &str) -> Result<Rollout, StoreError> {
        let path = self.path(id)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { id: id.to_string(), dir: self.dir.clone() });
            }
            Err(source) => return Err(StoreError::Io { what: "reading", path, source }),
        };
        let mut r: Rollout = serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt { path, source })?;
        if self.abort_requested(id) && matches!(r.phase, RolloutPhase::Running | RolloutPhase::Halted { .. }) {
            r.phase = RolloutPhase::Aborted;
        }
        Ok(r)
    }

    /// Every rollout id in the folder, oldest first.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { what: "listing", path: self.dir.clone(), source }),
        };
        let mut out: Vec<(u64, String)> = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && let Ok(r) = self.load(id)
            {
                out.push((r.created_ms, r.id));
            }
        }
        out.sort();
        Ok(out.into_iter().map(|(_, id)| id).collect())
    }

    /// Asks a running `rollout` of `id` to stop before its next push (it
    /// checks for the marker) and marks the state file aborted.
    pub fn abort(&self, id: &str) -> Result<Rollout, StoreError> {
        let mut r = self.load(id)?;
        let marker = self.abort_marker(id)?;
        crate::sys::durable::write_atomic(&marker, b"abort\n").map_err(|source| StoreError::Io {
            what: "writing",
            path: marker,
            source,
        })?;
        if matches!(r.phase, RolloutPhase::Running | RolloutPhase::Halted { .. }) {
            r.phase = RolloutPhase::Aborted;
        }
        self.save(&r)?;
        Ok(r)
    }

    pub fn abort_requested(&self, id: &str) -> bool {
        self.abort_marker(id).is_ok_and(|p| p.exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::devices::parse_status;

    fn online(id: &str, group: &str) -> Device {
        parse_status(
            id,
            format!(r#"{{"online":true,"device_id":"{id}","group":"{group}","engine":"hailo","fallbacks":0}}"#)
                .as_bytes(),
        )
    }

    fn plan(rule: &str) -> Plan {
        Plan {
            bundle: "b.bundle".into(),
            update_id: "u1".into(),
            kind: "model".into(),
            name: "m".into(),
            version: "1.1.0".into(),
            rollback_bundle: None,
            rollback_update_id: None,
            group: Some("north".into()),
            broker: "mqtt://127.0.0.1:1883".into(),
            connection: Connection::default(),
            prefix: "spark".into(),
            waves: vec![1, 10, 50, 100],
            soak: Duration::from_secs(2),
            report_timeout: Duration::from_secs(10),
            halt_when: rule.into(),
        }
    }

    fn fleet(n: usize) -> BTreeMap<String, Device> {
        (0..n).map(|i| format!("d{i:03}")).map(|id| (id.clone(), online(&id, "north"))).collect()
    }

    fn report(id: &str, update: &str, state: &str) -> Vec<u8> {
        format!(r#"{{"device_id":"{id}","group":"north","update_id":"{update}","state":"{state}","reason":"crash","code":"not_newer","ts":1}}"#)
            .into_bytes()
    }

    /// Runs the rollout with `answer(id)` as each pushed device's report;
    /// returns the rollout and every push in order.
    fn run(r: &mut Rollout, statuses: &BTreeMap<String, Device>, answer: &dyn Fn(&str) -> Vec<u8>) -> Vec<String> {
        let mut pushes = Vec::new();
        let mut now = 0;
        for _ in 0..10_000 {
            match r.next_step(now, statuses) {
                Step::Push(id) => {
                    r.device_mut(&id).unwrap().push = Push::Pushed;
                    r.observe_report(&id, &answer(&id));
                    pushes.push(id);
                }
                Step::PushRollback(id) => {
                    r.device_mut(&id).unwrap().rollback = Some(Push::Pushed);
                    pushes.push(format!("rollback {id}"));
                }
                Step::StartSoak => r.soak_started_ms = Some(now),
                Step::WaitUntil(t) => now = t,
                Step::Judge => {
                    r.judge(now, statuses);
                }
                Step::Finished => return pushes,
            }
        }
        panic!("the rollout did not finish");
    }

    #[test]
    fn waves_and_durations_are_checked() {
        assert_eq!(parse_waves("1%,10%,50%,100%").unwrap(), [1, 10, 50, 100]);
        assert_eq!(parse_waves(" 5 , 100% ").unwrap(), [5, 100]);
        for bad in ["1%,10%,50%", "10%,5%,100%", "10%,10%,100%", "0%,100%", "1%,,100%", "x", "", "50%,150%"] {
            assert!(matches!(parse_waves(bad), Err(PlanError::Waves { .. })), "{bad}");
        }
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        for bad in ["", "2x", "m", "-1s", "99999999999h", "2 s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn order_is_by_hash_and_does_not_depend_on_the_other_devices() {
        let all: Vec<String> = (0..50).map(|i| format!("d{i}")).collect();
        let a = order_devices(all.clone());
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(order_devices(rev), a);
        let fewer = order_devices(all.into_iter().filter(|d| d != "d7").collect());
        assert_eq!(fewer, a.iter().filter(|d| *d != "d7").cloned().collect::<Vec<_>>());
        assert_eq!(cumulative_sizes(200, &[1, 10, 50, 100]), [2, 20, 100, 200]);
        assert_eq!(cumulative_sizes(5, &[1, 10, 50, 100]), [1, 1, 3, 5]);
    }

    #[test]
    fn bad_input_is_refused_before_a_plan_exists() {
        let rows = fleet(10);
        let refs: Vec<&Device> = rows.values().collect();
        assert!(matches!(Rollout::plan(plan("rolled_back >"), &refs, 1), Err(PlanError::HaltRule(_))));
        let mut p = plan("rolled_back > 2%");
        p.group = Some("south".into());
        assert!(matches!(Rollout::plan(p, &refs, 1), Err(PlanError::NoDevices { .. })));
        let offline = parse_status("x", br#"{"online":false,"group":"north"}"#);
        assert!(matches!(Rollout::plan(plan("failed > 1%"), &[&offline], 1), Err(PlanError::NoDevices { .. })));
    }

    #[test]
    fn a_healthy_fleet_completes_every_wave_and_each_device_is_pushed_once() {
        let statuses = fleet(200);
        let refs: Vec<&Device> = statuses.values().collect();
        let mut r = Rollout::plan(plan("rolled_back > 2% || offline > 5%"), &refs, 1).unwrap();
        let pushes = run(&mut r, &statuses, &|id| report(id, "u1", "active"));
        assert_eq!(r.phase, RolloutPhase::Completed);
        assert_eq!(pushes.len(), 200);
        assert_eq!(pushes.iter().collect::<std::collections::BTreeSet<_>>().len(), 200);
        let sizes: Vec<usize> = r.decisions.iter().map(|d| d.figures.devices).collect();
        assert_eq!(sizes, [2, 18, 80, 100]);
        assert!(r.decisions.iter().all(|d| d.verdict == Verdict::Proceed && d.figures.active == d.figures.devices));
        // Five devices: 1% and 10% are both the first device; the empty wave passes.
        let small = fleet(5);
        let refs: Vec<&Device> = small.values().collect();
        let mut r = Rollout::plan(plan("rolled_back > 2%"), &refs, 1).unwrap();
        assert_eq!(run(&mut r, &small, &|id| report(id, "u1", "active")).len(), 5);
        assert_eq!(r.phase, RolloutPhase::Completed);
        assert_eq!(r.decisions.iter().map(|d| d.figures.devices).collect::<Vec<_>>(), [1, 0, 2, 2]);
    }

    #[test]
    fn rollbacks_over_the_rule_halt_the_wave_and_nothing_further_is_pushed() {
        let statuses = fleet(200);
        let refs: Vec<&Device> = statuses.values().collect();
        let mut p = plan("rolled_back > 2%");
        p.rollback_bundle = Some("old.bundle".into());
        let mut r = Rollout::plan(p, &refs, 1).unwrap();
        // Every 10th device in rollout order crashes: wave 1 (2 devices) has
        // none, wave 2 (18) has some.
        let order: Vec<String> = r.devices.iter().map(|d| d.id.clone()).collect();
        let crashing = |id: &str| order.iter().position(|d| d == id).unwrap() % 10 == 9;
        let pushes =
            run(&mut r, &statuses, &|id| report(id, "u1", if crashing(id) { "rolled_back" } else { "active" }));
        assert!(matches!(r.phase, RolloutPhase::Halted { wave: 1, .. }), "{:?}", r.phase);
        let d = r.decisions.last().unwrap();
        assert_eq!((d.figures.devices, d.figures.rolled_back, d.verdict), (18, 2, Verdict::Halt));
        assert!(d.text.contains("rolled_back 2 (11.1%)"), "{}", d.text);
        assert_eq!(pushes.iter().filter(|p| !p.starts_with("rollback")).count(), 20);
        assert_eq!(
            pushes.iter().filter(|p| p.starts_with("rollback")).count(),
            18,
            "the halted wave gets the rollback"
        );
    }

    /// A device's `shadow` report as the update agent writes it.
    fn shadow_report(id: &str, agreement: f64, frames: u64) -> Vec<u8> {
        let figures = crate::inference::shadow::Figures {
            frames,
            agreement,
            precision: Some(agreement),
            recall: Some(agreement),
            labels: BTreeMap::new(),
        };
        let r = ShadowReport {
            device_id: id.into(),
            group: "north".into(),
            update_id: "u1".into(),
            kind: crate::update::Kind::Model,
            name: "m".into(),
            version: "1.1.0".into(),
            phase: UpdatePhase::Shadow,
            shadow: crate::update::ShadowFigures {
                live_model: "m 1.0.0".into(),
                figures,
                latency_ms_mean: Some(30.0),
                latency_ms_max: Some(40.0),
                errors: 0,
                last_error: None,
                dropped_busy: 0,
                every_n_frames: 10,
                running_secs: 60,
            },
            ts: 1,
        };
        serde_json::to_vec(&r).unwrap()
    }

    #[test]
    fn shadow_agreement_gates_a_wave() {
        let statuses = fleet(100);
        let refs: Vec<&Device> = statuses.values().collect();
        // Agreement weighted by frames: every device agrees 0.9 on 10 frames,
        // except every 4th in rollout order, which agrees 0.5 on 30.
        let answer = |r: &Rollout, id: &str| {
            let i = r.devices.iter().position(|d| d.id == id).unwrap();
            if i % 4 == 3 { shadow_report(id, 0.5, 30) } else { shadow_report(id, 0.9, 10) }
        };
        let mut r = Rollout::plan(plan("agreement < 0.8"), &refs, 1).unwrap();
        let order = r.clone();
        run(&mut r, &statuses, &|id| answer(&order, id));
        // Wave 1 (1 device, agreeing 0.9) passes; wave 2 (10 devices, two of
        // them at 0.5 on 30 frames) pools to (8 x 9 + 2 x 15) / 140 = 0.729 and halts.
        assert!(matches!(r.phase, RolloutPhase::Halted { wave: 1, .. }), "{:?}", r.phase);
        let d = r.decisions.last().unwrap();
        assert_eq!((d.figures.devices, d.figures.agreement_devices, d.figures.failed), (9, 9, 0));
        let want = (7.0 * 9.0 + 2.0 * 15.0) / 130.0;
        assert!((d.figures.agreement.unwrap() - want).abs() < 1e-9, "{:?}", d.figures);
        assert!(d.text.contains("shadow agreement"), "{}", d.text);
        // The same fleet agreeing 0.9 everywhere completes.
        let mut r = Rollout::plan(plan("agreement < 0.8"), &refs, 1).unwrap();
        run(&mut r, &statuses, &|id| shadow_report(id, 0.9, 10));
        assert_eq!(r.phase, RolloutPhase::Completed);
        assert_eq!(r.decisions.last().unwrap().figures.agreement, Some(0.9));
    }

    #[test]
    fn garbage_marks_a_device_unknown_and_the_others_are_judged() {
        let statuses = fleet(10);
        let refs: Vec<&Device> = statuses.values().collect();
        let mut r = Rollout::plan(plan("failed > 10%"), &refs, 1).unwrap();
        let first = r.devices[0].id.clone();
        run(&mut r, &statuses, &|id| if id == first { b"\xffgarbage".to_vec() } else { report(id, "u1", "active") });
        // Wave 1 is the garbage device alone: nothing could be judged, so it halts.
        assert!(matches!(r.phase, RolloutPhase::Halted { wave: 0, .. }), "{:?}", r.phase);
        assert_eq!(r.decisions[0].figures.unknown, 1);
        // In a wave of five, the garbage device is unknown and the others are judged.
        let mut r = Rollout::plan(plan("failed > 10%"), &refs, 1).unwrap();
        r.waves = vec![50, 100];
        for (i, d) in r.devices.iter_mut().enumerate() {
            d.wave = usize::from(i >= 5);
        }
        run(&mut r, &statuses, &|id| {
            if id == first { vec![b'{'; MAX_REPORT_BYTES + 1] } else { report(id, "u1", "active") }
        });
        assert_eq!(r.phase, RolloutPhase::Completed);
        assert_eq!((r.decisions[0].figures.unknown, r.decisions[0].figures.judged), (1, 4));
    }

    #[test]
    fn a_replayed_push_answered_not_newer_is_no_failure() {
        let statuses = fleet(3);
        let refs: Vec<&Device> = statuses.values().collect();
        let mut r = Rollout::plan(plan("failed > 0%"), &refs, 1).unwrap();
        let id = r.devices[0].id.clone();
        r.device_mut(&id).unwrap().push = Push::Pushed;
        assert!(r.observe_report(&id, &report(&id, "u1", "active")));
        assert!(!r.observe_report(&id, &report(&id, "u1", "rejected")), "not_newer after active keeps active");
        assert!(!r.observe_report(&id, &report(&id, "other", "rolled_back")), "another update is not ours");
        assert_eq!(r.devices[0].outcome, Outcome::Active);
        let other = r.devices[1].id.clone();
        r.device_mut(&other).unwrap().push = Push::Pushed;
        r.observe_report(&other, &report(&other, "u1", "rejected"));
        assert_eq!(r.devices[1].outcome, Outcome::AlreadyCurrent);
    }

    #[test]
    fn an_interrupted_push_counts_as_pushed_once_the_device_shows_it() {
        let mut statuses = fleet(3);
        let refs: Vec<&Device> = statuses.values().collect();
        let mut r = Rollout::plan(plan("failed > 0%"), &refs, 1).unwrap();
        let (a, b) = (r.devices[0].id.clone(), r.devices[1].id.clone());
        r.device_mut(&a).unwrap().push = Push::Pushing;
        r.device_mut(&b).unwrap().push = Push::Pushing;
        let running = format!(r#"{{"online":true,"device_id":"{a}","group":"north","model":"m 1.1.0"}}"#);
        statuses.insert(a.clone(), parse_status(&a, running.as_bytes()));
        assert_eq!(r.settle_interrupted_pushes(&statuses), std::slice::from_ref(&a));
        assert_eq!((r.devices[0].push, r.devices[1].push), (Push::Pushed, Push::Pushing));
        r.wave = r.devices[1].wave;
        assert_eq!(r.next_step(0, &statuses), Step::Push(b), "not shown: pushed again");
    }

    #[test]
    fn the_store_round_trips_and_abort_sticks() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("rollouts"));
        let statuses = fleet(3);
        let refs: Vec<&Device> = statuses.values().collect();
        let r = Rollout::plan(plan("failed > 0%"), &refs, 1).unwrap();
        store.save(&r).unwrap();
        assert_eq!(store.load(&r.id).unwrap(), r);
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&r.id));
        assert!(matches!(store.load("r-000000000000"), Err(StoreError::NotFound { .. })));
        assert!(matches!(store.load("../etc/passwd"), Err(StoreError::BadId(_))));
        assert_eq!(store.abort(&r.id).unwrap().phase, RolloutPhase::Aborted);
        // A runner that saves its own (running) copy afterwards does not undo it.
        store.save(&r).unwrap();
        assert_eq!(store.load(&r.id).unwrap().phase, RolloutPhase::Aborted);
    }

    #[test]
    fn the_connection_settings_round_trip_and_an_old_state_file_without_them_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("rollouts"));
        let statuses = fleet(3);
        let refs: Vec<&Device> = statuses.values().collect();
        let mut p = plan("failed > 0%");
        p.broker = "mqtts://broker.example:8883".into();
        p.connection = Connection {
            ca_file: Some("/etc/fleet/ca.pem".into()),
            client_cert: Some("/etc/fleet/ops.pem".into()),
            client_key: Some("/etc/fleet/ops.key".into()),
            tls_server_name: Some("broker.example".into()),
            username: Some("ops".into()),
            password_file: Some("/etc/fleet/ops.pw".into()),
        };
        let r = Rollout::plan(p.clone(), &refs, 1).unwrap();
        store.save(&r).unwrap();
        let loaded = store.load(&r.id).unwrap();
        assert_eq!(loaded.connection, p.connection);
        assert_eq!(loaded.broker, "mqtts://broker.example:8883");

        // A state file written before the connection was stored.
        let file = store.dir().join(format!("{}.json", r.id));
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert!(v["connection"].is_object(), "{v}");
        v.as_object_mut().unwrap().remove("connection");
        std::fs::write(&file, serde_json::to_vec(&v).unwrap()).unwrap();
        let old = store.load(&r.id).unwrap();
        assert_eq!(old.connection, Connection::default());
        assert_eq!(Rollout { connection: p.connection.clone(), ..old }, r);

        // Only what was given is written; an empty object reads as nothing given.
        let partial = Connection { ca_file: Some("/ca.pem".into()), ..Connection::default() };
        assert_eq!(serde_json::to_string(&partial).unwrap(), r#"{"ca_file":"/ca.pem"}"#);
        assert_eq!(serde_json::from_str::<Connection>("{}").unwrap(), Connection::default());
    }
}
