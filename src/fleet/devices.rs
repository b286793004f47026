//! `spark-fleet devices`: the fleet as its retained status messages tell it.
//!
//! Owns parsing a status payload (`uplink::StatusMessage`, or the last will)
//! into a row, the table of rows, filters, sorting, the summary and the
//! rendering. Pure: no MQTT, no clock (the caller passes `now_ms`).
//!
//! Hostile input: a payload that is not a status object, names another
//! device than its topic, or is larger than [`MAX_STATUS_BYTES`] gives a
//! row in state `unknown` with the reason; the rest of the table is not
//! affected.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Largest status payload read; a device's real one is a few hundred bytes.
pub const MAX_STATUS_BYTES: usize = 16 * 1024;

/// The fields of a status message this view reads. Every field but `online`
/// is optional: older devices and the last will send fewer.
#[derive(Debug, Clone, Deserialize)]
struct Wire {
    online: bool,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(default)]
    engine: Option<String>,
    #[serde(default)]
    pending: Option<u64>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    slot: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    fallbacks: Option<u64>,
    #[serde(default)]
    oldest_age_s: Option<f64>,
    #[serde(default)]
    vpn_up: Option<bool>,
    #[serde(default)]
    reconnects: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Online {
    Online,
    Offline,
    /// The status could not be read (see [`Device::problem`]).
    Unknown,
}

impl Online {
    pub fn as_str(self) -> &'static str {
        match self {
            Online::Online => "online",
            Online::Offline => "offline",
            Online::Unknown => "unknown",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub device_id: String,
    pub state: Online,
    pub group: Option<String>,
    pub version: Option<String>,
    pub slot: Option<String>,
    pub model: Option<String>,
    pub engine: Option<String>,
    pub fallbacks: Option<u64>,
    pub backlog: Option<u64>,
    pub oldest_age_s: Option<f64>,
    /// `up`, `vpn-down`, or `down` (offline); `None` when not reported.
    pub link: Option<&'static str>,
    pub reconnects: Option<u64>,
    /// The device's clock at its last status (Unix ms); 0 in a last will.
    pub last_seen_ms: Option<u64>,
    /// Why the status is `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Device {
    fn unknown(device_id: &str, problem: String) -> Self {
        Device {
            device_id: device_id.to_string(),
            state: Online::Unknown,
            group: None,
            version: None,
            slot: None,
            model: None,
            engine: None,
            fallbacks: None,
            backlog: None,
            oldest_age_s: None,
            link: None,
            reconnects: None,
            last_seen_ms: None,
            problem: Some(problem),
        }
    }

    /// Running on the CPU although the engine fell back at least once.
    pub fn on_cpu_fallback(&self) -> bool {
        self.state == Online::Online && self.engine.as_deref() == Some("onnx-cpu") && self.fallbacks.unwrap_or(0) > 0
    }
}

/// The device a status topic names: `<prefix>/<device>/status`.
pub fn device_of_topic<'t>(prefix: &str, topic: &'t str) -> Option<&'t str> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let device = rest.strip_suffix("/status")?;
    (!device.is_empty() && !device.contains('/')).then_some(device)
}

/// One status payload → a row (never an error: a bad payload is a row in
/// state `unknown`).
pub fn parse_status(device_id: &str, payload: &[u8]) -> Device {
    if payload.len() > MAX_STATUS_BYTES {
        return Device::unknown(device_id, format!("status of {} bytes (limit {MAX_STATUS_BYTES})", payload.len()));
    }
    let w: Wire = match serde_json::from_slice(payload) {
        Ok(w) => w,
        Err(e) => return Device::unknown(device_id, format!("unreadable status: {e}")),
    };
    if let Some(named) = w.device_id.as_deref().filter(|d| *d != device_id) {
        let named: String = named.chars().take(64).collect();
        return Device::unknown(device_id, format!("status names device {named:?}"));
    }
    let link = if !w.online {
        Some("down")
    } else {
        match w.vpn_up {
            Some(true) => Some("up"),
            Some(false) => Some("vpn-down"),
            None => None,
        }
    };
    Device {
        device_id: device_id.to_string(),
        state: if w.online { Online::Online } else { Online::Offline },
        group: w.group,
        version: w.version,
        slot: w.slot,
        model: w.model,
        engine: w.engine,
        fallbacks: w.fallbacks,
        backlog: w.pending,
        oldest_age_s: w.oldest_age_s.filter(|a| a.is_finite() && *a >= 0.0),
        link,
        reconnects: w.reconnects,
        last_seen_ms: w.ts.filter(|t| *t > 0),
        problem: None,
    }
}

/// The latest row per device. A last will (offline, no figures) keeps the
/// figures the device last reported, so an offline row still says what it ran.
#[derive(Debug, Default)]
pub struct Fleet {
    devices: HashMap<String, Device>,
}

impl Fleet {
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Takes one message of `topic`; `false` when the topic is no status topic.
    pub fn apply(&mut self, prefix: &str, topic: &str, payload: &[u8]) -> bool {
        let Some(device) = device_of_topic(prefix, topic) else { return false };
        let mut row = parse_status(device, payload);
        if let Some(old) = self.devices.get(device)
            && row.state == Online::Offline
            && old.state != Online::Unknown
        {
            let fresh = row.clone();
            row = Device {
                state: fresh.state,
                link: fresh.link,
                group: fresh.group.or(old.group.clone()),
                version: fresh.version.or(old.version.clone()),
                slot: fresh.slot.or(old.slot.clone()),
                last_seen_ms: fresh.last_seen_ms.or(old.last_seen_ms),
                ..old.clone()
            };
        }
        self.devices.insert(device.to_string(), row);
        true
    }

    /// The rows that pass `filter`, sorted by `sort` (device id breaks ties).
    pub fn rows(&self, filter: &Filter, sort: SortKey) -> Vec<&Device> {
        let mut rows: Vec<&Device> = self.devices.values().filter(|d| filter.accepts(d)).collect();
        rows.sort_by(|a, b| sort.compare(a, b).then_with(|| a.device_id.cmp(&b.device_id)));
        rows
    }
}

/// `--group`, `--state`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub group: Option<String>,
    pub state: Option<StateFilter>,
    /// Backlog over this many records counts in the summary and `--state backlog`.
    pub backlog_threshold: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFilter {
    Online,
    Offline,
    Unknown,
    /// Online on the CPU after a fallback.
    Fallback,
    /// Backlog over the threshold.
    Backlog,
}

impl Filter {
    pub fn accepts(&self, d: &Device) -> bool {
        let group_ok = self.group.as_ref().is_none_or(|g| d.group.as_ref() == Some(g));
        let state_ok = match self.state {
            None => true,
            Some(StateFilter::Online) => d.state == Online::Online,
            Some(StateFilter::Offline) => d.state == Online::Offline,
            Some(StateFilter::Unknown) => d.state == Online::Unknown,
            Some(StateFilter::Fallback) => d.on_cpu_fallback(),
            Some(StateFilter::Backlog) => d.backlog.unwrap_or(0) > self.backlog_threshold,
        };
        group_ok && state_ok
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SortKey {
    #[default]
    Id,
    State,
    /// Longest unseen first.
    LastSeen,
    /// Largest first.
    Backlog,
    /// Most first.
    Fallbacks,
    Version,
}

impl SortKey {
    fn compare(self, a: &Device, b: &Device) -> std::cmp::Ordering {
        match self {
            SortKey::Id => a.device_id.cmp(&b.device_id),
            SortKey::State => a.state.cmp(&b.state),
            SortKey::LastSeen => a.last_seen_ms.unwrap_or(0).cmp(&b.last_seen_ms.unwrap_or(0)),
            SortKey::Backlog => b.backlog.unwrap_or(0).cmp(&a.backlog.unwrap_or(0)),
            SortKey::Fallbacks => b.fallbacks.unwrap_or(0).cmp(&a.fallbacks.unwrap_or(0)),
            SortKey::Version => a.version.cmp(&b.version),
        }
    }
}

/// The summary line's figures, over the rows shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub devices: usize,
    pub online: usize,
    pub offline: usize,
    pub unknown: usize,
    pub on_cpu_fallback: usize,
    pub backlog_over_threshold: usize,
    pub backlog_threshold: u64,
}

pub fn summary(rows: &[&Device], backlog_threshold: u64) -> Summary {
    let count = |f: &dyn Fn(&Device) -> bool| rows.iter().filter(|d| f(d)).count();
    Summary {
        devices: rows.len(),
        online: count(&|d| d.state == Online::Online),
        offline: count(&|d| d.state == Online::Offline),
        unknown: count(&|d| d.state == Online::Unknown),
        on_cpu_fallback: count(&|d| d.on_cpu_fallback()),
        backlog_over_threshold: count(&|d| d.backlog.unwrap_or(0) > backlog_threshold),
        backlog_threshold,
    }
}

/// `3s`, `4m`, `2h`, `5d`.
fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Table cells cut to `width` characters (ids and versions come from devices).
fn cell(v: Option<&str>, width: usize) -> String {
    let v = v.unwrap_or("-");
    if v.chars().count() > width { v.chars().take(width - 1).chain(['…']).collect() } else { v.to_string() }
}

/// The table with its header and the summary line.
pub fn render_table(rows: &[&Device], s: &Summary, now_ms: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(128 * (rows.len() + 2));
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:<10} {:<7} {:<20} {:<9} {:>5} {:>8} {:>7} {:<9} {:>9}",
        "DEVICE", "STATE", "VERSION", "SLOT", "MODEL", "ENGINE", "FALLB", "BACKLOG", "OLDEST", "LINK", "LAST SEEN"
    );
    for d in rows {
        let fallbacks = d.fallbacks.map(|f| f.to_string());
        let backlog = d.backlog.map(|b| b.to_string());
        let oldest = d.oldest_age_s.map(age);
        let seen = d.last_seen_ms.map(|t| format!("{} ago", age(now_ms.saturating_sub(t) as f64 / 1000.0)));
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:<10} {:<7} {:<20} {:<9} {:>5} {:>8} {:>7} {:<9} {:>9}",
            cell(Some(&d.device_id), 24),
            d.state.as_str(),
            cell(d.version.as_deref(), 10),
            cell(d.slot.as_deref(), 7),
            cell(d.model.as_deref(), 20),
            cell(d.engine.as_deref(), 9),
            cell(fallbacks.as_deref(), 5),
            cell(backlog.as_deref(), 8),
            cell(oldest.as_deref(), 7),
            cell(d.link, 9),
            cell(seen.as_deref(), 9),
        );
        if let Some(p) = &d.problem {
            let p: String = p.chars().take(120).collect();
            let _ = writeln!(out, "  └ {p}");
        }
    }
    let _ = writeln!(
        out,
        "{} devices: {} online, {} offline, {} unknown, {} on CPU fallback, {} with backlog over {}",
        s.devices, s.online, s.offline, s.unknown, s.on_cpu_fallback, s.backlog_over_threshold, s.backlog_threshold
    );
    out
}

/// `--json`: one object with the rows and the summary.
pub fn render_json(rows: &[&Device], s: &Summary) -> String {
    serde_json::json!({ "devices": rows, "summary": s }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::StatusMessage;

    fn status(id: &str, online: bool, engine: &str, fallbacks: u64, pending: u64) -> Vec<u8> {
        serde_json::to_vec(&StatusMessage {
            ts: 1_000_000,
            engine: Some(engine),
            pending: Some(pending),
            model: Some("nanodet 1.0.0"),
            fallbacks: Some(fallbacks),
            oldest_age_s: Some(12.5),
            vpn_up: Some(true),
            reconnects: Some(1),
            ..StatusMessage::identity(online, id, "north", Some("slot-a"))
        })
        .unwrap()
    }

    #[test]
    fn the_uplinks_status_and_last_will_parse_into_rows() {
        let d = parse_status("pi-1", &status("pi-1", true, "onnx-cpu", 2, 40));
        assert_eq!(d.state, Online::Online);
        assert_eq!(d.group.as_deref(), Some("north"));
        assert_eq!(d.slot.as_deref(), Some("slot-a"));
        assert_eq!(d.model.as_deref(), Some("nanodet 1.0.0"));
        assert_eq!((d.fallbacks, d.backlog, d.oldest_age_s), (Some(2), Some(40), Some(12.5)));
        assert_eq!((d.link, d.last_seen_ms), (Some("up"), Some(1_000_000)));
        assert!(d.on_cpu_fallback());
        let will = serde_json::to_vec(&StatusMessage::identity(false, "pi-1", "north", None)).unwrap();
        let w = parse_status("pi-1", &will);
        assert_eq!((w.state, w.link, w.last_seen_ms), (Online::Offline, Some("down"), None));
        // The design's minimal last will.
        assert_eq!(parse_status("pi-1", br#"{"online":false}"#).state, Online::Offline);
    }

    #[test]
    fn garbage_oversized_or_misnamed_statuses_are_unknown_rows() {
        for (payload, why) in [
            (b"\xff\x00garbage".to_vec(), "unreadable"),
            (b"[1,2]".to_vec(), "unreadable"),
            (br#"{"online":"yes"}"#.to_vec(), "unreadable"),
            (vec![b' '; MAX_STATUS_BYTES + 1], "limit"),
            (status("pi-2", true, "hailo", 0, 0), "names device"),
        ] {
            let d = parse_status("pi-1", &payload);
            assert_eq!(d.state, Online::Unknown);
            assert!(d.problem.as_deref().unwrap().contains(why), "{:?}", d.problem);
        }
    }

    #[test]
    fn a_last_will_keeps_what_the_device_last_reported() {
        let mut f = Fleet::default();
        assert!(f.apply("spark", "spark/pi-1/status", &status("pi-1", true, "hailo", 0, 7)));
        assert!(f.apply("spark", "spark/pi-1/status", br#"{"online":false,"device_id":"pi-1"}"#));
        let rows = f.rows(&Filter::default(), SortKey::Id);
        assert_eq!(rows[0].state, Online::Offline);
        assert_eq!((rows[0].model.as_deref(), rows[0].last_seen_ms), (Some("nanodet 1.0.0"), Some(1_000_000)));
        assert!(!f.apply("spark", "spark/pi-1/update/state", b"{}"));
        assert!(!f.apply("spark", "other/pi-1/status", b"{}"));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn filters_sorting_and_the_summary_count_what_is_shown() {
        let mut f = Fleet::default();
        f.apply("spark", "spark/a/status", &status("a", true, "hailo", 0, 5));
        f.apply("spark", "spark/b/status", &status("b", true, "onnx-cpu", 3, 500));
        f.apply("spark", "spark/c/status", &status("c", false, "hailo", 0, 0));
        f.apply("spark", "spark/d/status", b"not json");
        let all = f.rows(&Filter::default(), SortKey::Backlog);
        assert_eq!(all.iter().map(|d| d.device_id.as_str()).collect::<Vec<_>>(), ["b", "a", "c", "d"]);
        let s = summary(&all, 100);
        assert_eq!(
            s,
            Summary {
                devices: 4,
                online: 2,
                offline: 1,
                unknown: 1,
                on_cpu_fallback: 1,
                backlog_over_threshold: 1,
                backlog_threshold: 100
            }
        );
        let north = Filter { group: Some("north".into()), ..Filter::default() };
        assert_eq!(f.rows(&north, SortKey::Id).len(), 3, "the unknown row has no group");
        let fallback = Filter { state: Some(StateFilter::Fallback), ..Filter::default() };
        assert_eq!(f.rows(&fallback, SortKey::Id)[0].device_id, "b");
        let table = render_table(&all, &s, 1_003_000);
        assert!(table.lines().nth(1).unwrap().starts_with("b "), "{table}");
        assert!(table.contains("3s ago") && table.contains("unreadable status"), "{table}");
        assert!(
            table.ends_with("4 devices: 2 online, 1 offline, 1 unknown, 1 on CPU fallback, 1 with backlog over 100\n")
        );
        let v: serde_json::Value = serde_json::from_str(&render_json(&all, &s)).unwrap();
        assert_eq!(v["devices"][0]["backlog"], 500);
        assert_eq!(v["summary"]["unknown"], 1);
    }

    #[test]
    fn topics_name_one_device() {
        assert_eq!(device_of_topic("spark", "spark/pi-1/status"), Some("pi-1"));
        assert_eq!(device_of_topic("a/b", "a/b/x/status"), Some("x"));
        assert_eq!(device_of_topic("spark", "spark//status"), None);
        assert_eq!(device_of_topic("spark", "spark/a/b/status"), None);
        assert_eq!(device_of_topic("spark", "sparky/a/status"), None);
    }
}
